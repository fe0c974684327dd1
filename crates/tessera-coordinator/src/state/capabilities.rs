//! What a participant must be able to do to take part in this run: the
//! capabilities its `Hello` must name, from the plan.

use super::Federation;

impl Federation {
    /// The capabilities the run needs of every participant: the strategy's,
    /// the external model's, secure aggregation's and every codec's.
    pub(super) fn required_capabilities(&self) -> Vec<&'static str> {
        let plan = &self.plan;
        let mut required = tessera_proto::required_capabilities(plan.federation.strategy.as_str());
        required.extend(self.model_capabilities());
        if plan.secure_aggregation.enabled || self.aggregate_only() {
            required.push("secure-aggregation");
            required.push("secure-aggregation-signed");
        }
        if plan.analytics.serve_seconds > 0 {
            required.push("analytics-queries");
            if plan.analytics.per_site {
                required.push("analytics-per-site");
            }
        }
        if plan.personalization.fine_tunes()
            && plan.topology.kind == tessera_engine::TopologyKind::Hierarchical
        {
            required.push("regional-model");
        }
        for codec in plan.compression.upload_codecs() {
            required.extend(tessera_proto::codec_capabilities(&codec));
        }
        required.extend(tessera_proto::model_codec_capabilities(
            &plan.compression.download,
        ));
        required.sort_unstable();
        required.dedup();
        required
    }
}
