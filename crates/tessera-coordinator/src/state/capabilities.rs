//! What a participant must be able to do to take part in this run: the
//! capabilities its `Hello` must name, from the plan.

use tessera_engine::Plan;

use super::Federation;

/// The capabilities a run of `plan` needs of every participant: the
/// strategy's, the external model's, secure aggregation's (and its
/// buffers' in an asynchronous run), the analytics
/// serving's, the regional model's and every codec's (the upload codecs'
/// only when no feature flag limits them to a cohort). Sorted, each once.
pub fn run_capabilities(plan: &Plan) -> Vec<&'static str> {
    capabilities(plan, None)
}

/// The capabilities a run of `plan` needs of `site`'s participant: as
/// [`run_capabilities`], with the upload codecs' where a feature flag's
/// cohort names the site.
pub fn site_capabilities(plan: &Plan, site: &str) -> Vec<&'static str> {
    capabilities(plan, Some(site))
}

fn capabilities(plan: &Plan, site: Option<&str>) -> Vec<&'static str> {
    let mut required = tessera_proto::required_capabilities(plan.federation.strategy.as_str());
    if plan.model.kind.is_external() {
        required.push("external-learners");
    }
    if plan.multitask.is_some() {
        required.extend(["instructions", "personal-models", "multitask"]);
    }
    if plan.secure_aggregation.enabled || plan.privacy.site_metrics.sums_only() {
        required.push("secure-aggregation");
        required.push("secure-aggregation-signed");
    }
    if plan.secure_aggregation.enabled && plan.federation.mode == tessera_engine::Mode::Async {
        // Each buffer a secure round among its contributors.
        required.push("secure-buffers");
    }
    if plan.secure_aggregation.enabled
        && plan.secure_aggregation.scheme == tessera_secagg::Scheme::Homomorphic
    {
        required.extend([
            "homomorphic-aggregation",
            "he-ntt-wire",
            "he-one-modulus",
            "he-half-fetch",
        ]);
    }
    if plan.analytics.serve_seconds > 0 {
        required.push("analytics-queries");
        if plan.analytics.per_site {
            required.push("analytics-per-site");
        }
    }
    // The relay of the sites' own conversations: a participant also checks
    // its coordinator has it; required here so that an older participant
    // is refused at the join, not after it.
    if plan.data.cross_silo.is_some() {
        required.push("cross-silo");
    }
    if !plan.analytics.joins.is_empty() {
        required.push("join-relay");
    }
    if plan.personalization.fine_tunes()
        && plan.topology.kind == tessera_engine::TopologyKind::Hierarchical
    {
        required.push("regional-model");
    }
    if !plan.contribution.is_off() {
        // Each update's test gradient, for the coordinator's attribution.
        required.push("attribution");
    }
    if !plan.features.is_empty() {
        // The plan's `[[features]]`, which an older participant cannot read.
        required.push("feature-flags");
    }
    let upload = match site {
        Some(site) => plan.feature_on("compression.upload", site),
        None => !plan.features.iter().any(|f| f.name == "compression.upload"),
    };
    for codec in plan
        .compression
        .upload_codecs()
        .into_iter()
        .filter(|_| upload)
    {
        required.extend(tessera_proto::codec_capabilities(&codec));
    }
    required.extend(tessera_proto::model_codec_capabilities(
        &plan.compression.download,
    ));
    required.sort_unstable();
    required.dedup();
    required
}

impl Federation {
    /// The capabilities the run needs of `site`'s participant
    /// ([`site_capabilities`] of its plan).
    pub(super) fn required_capabilities_of(&self, site: &str) -> Vec<&'static str> {
        site_capabilities(&self.plan, site)
    }
}
