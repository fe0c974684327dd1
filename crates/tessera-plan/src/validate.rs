//! Checking a plan: every section, then the rules across sections and
//! against the federation's size, every problem named at once.

use tessera_aggregate::StrategyKind;
use tessera_learn::OptimizerKind;

use super::{MAX_CLIP_RANGE, MAX_SECONDS, Mode, Plan, PlanError};

/// The reason alone of an `Invalid` error (without its "plan: "), to join
/// with others.
fn invalid_reason(e: PlanError) -> String {
    match e {
        PlanError::Invalid(reason) => reason,
        other => other.to_string(),
    }
}

impl Plan {
    /// Checks every section and their agreement, and names every setting
    /// that cannot work at once.
    pub fn validate(&self) -> Result<(), PlanError> {
        let mut reasons: Vec<String> = Vec::new();
        if let Err(e) = self.data.validate() {
            reasons.push(e.to_string());
        }
        if let Err(e) = self.training.validate() {
            reasons.push(format!("training: {e}"));
        }
        if let Some(Err(e)) = self.baselines.as_ref().map(|b| b.validate()) {
            reasons.push(format!("baselines: {e}"));
        }
        for name in self.strategies.keys() {
            if let Err(e) = name.parse::<StrategyKind>() {
                reasons.push(format!("strategies.{name}: {e}"));
            }
        }
        if let Err(e) = self.strategy_config().build(self.federation.strategy) {
            reasons.push(e.to_string());
        }
        let f = &self.federation;
        let strategy = f.strategy;
        let needs = strategy.needs();
        if f.rounds == 0 {
            reasons.push("federation.rounds must be at least 1".into());
        }
        if !(f.fraction > 0.0 && f.fraction <= 1.0) {
            reasons.push(format!(
                "federation.fraction must be in (0, 1], got {}",
                tessera_core::value(f.fraction)
            ));
        }
        if f.mode == Mode::Async && f.buffer_size == 0 {
            reasons.push("federation.buffer_size must be at least 1".into());
        }
        if f.mode == Mode::Async && needs.sync_rounds {
            reasons.push(format!(
                "{strategy}'s state at the sites needs synchronous rounds; use mode = \"sync\""
            ));
        }
        if f.min_participants == 0 || f.quorum == 0 {
            reasons.push(
                "federation.min_participants and federation.quorum must be at least 1".into(),
            );
        }
        if let Some(d) = f.deadline_seconds
            && !(d > 0.0 && d <= MAX_SECONDS)
        {
            reasons.push(format!(
                "federation.deadline_seconds must be in (0, {MAX_SECONDS:e}], got {}",
                tessera_core::value(d)
            ));
        }
        let s = &self.simulation;
        for (name, r) in [
            ("examples_per_second", s.examples_per_second),
            ("latency_seconds", s.latency_seconds),
        ] {
            if !(r.min.is_finite() && r.max.is_finite() && r.min >= 0.0 && r.min <= r.max) {
                reasons.push(format!(
                    "simulation.{name}: need 0 <= min <= max, got {} and {}",
                    tessera_core::value(r.min),
                    tessera_core::value(r.max)
                ));
            }
        }
        if let Some(gb) = s.max_memory_gb
            && !(gb.is_finite() && gb > 0.0)
        {
            reasons.push(format!(
                "simulation.max_memory_gb must be positive, got {}",
                tessera_core::value(gb)
            ));
        }
        if let Some(r) = s.bandwidth_bytes_per_second
            && !(r.min.is_finite() && r.max.is_finite() && r.min >= 1.0 && r.min <= r.max)
        {
            reasons.push(format!(
                "simulation.bandwidth_bytes_per_second: need 1 <= min <= max, got {} and {}",
                tessera_core::value(r.min),
                tessera_core::value(r.max)
            ));
        }
        if s.examples_per_second.min < 1e-3 {
            reasons.push(format!(
                "simulation.examples_per_second must be at least 0.001, got {}",
                tessera_core::value(s.examples_per_second.min)
            ));
        }
        if s.latency_seconds.max > MAX_SECONDS {
            reasons.push(format!(
                "simulation.latency_seconds must be at most {MAX_SECONDS:e}, got {}",
                tessera_core::value(s.latency_seconds.max)
            ));
        }
        if needs.plain_sgd
            && (self.training.optimizer.optimizer != OptimizerKind::Sgd
                || self.training.optimizer.momentum != 0.0)
        {
            reasons.push(format!(
                "{strategy} needs plain SGD in [training] (no momentum, no Adam): \
                 its local part assumes it"
            ));
        }
        if !(0.0..1.0).contains(&s.dropout) {
            reasons.push(format!(
                "simulation.dropout must be in [0, 1), got {}",
                tessera_core::value(s.dropout)
            ));
        }
        if let Err(e) = self.privacy.validate() {
            reasons.push(e.to_string());
        }
        if let Err(e) = self.robust.validate() {
            reasons.push(format!("robust: {e}"));
        }
        if self.privacy.mode == tessera_privacy::PrivacyMode::Local && f.mode == Mode::Async {
            reasons.push("local DP is accounted per synchronous round; use mode = \"sync\"".into());
        }
        if self.privacy.mode == tessera_privacy::PrivacyMode::Central {
            if let Some(aux) = needs.clear_aux_sum {
                reasons.push(format!(
                    "central DP cannot protect {strategy}'s {aux}s, which would be released \
                     without noise; choose another strategy"
                ));
            }
            if f.mode == Mode::Async {
                reasons.push(
                    "central DP is accounted per synchronous round; use mode = \"sync\"".into(),
                );
            }
            if self.robust.rule.needs_all_updates() {
                reasons.push(format!(
                    "central DP calibrates its noise to the mean of clipped updates; robust rule \
                     '{}' has another sensitivity. Use rule = \"mean\" with norm_bound",
                    self.robust.rule
                ));
            }
        }
        let secagg = &self.secure_aggregation;
        if secagg.enabled {
            if let Err(e) = secagg.validate() {
                reasons.push(e.to_string());
            }
            if self.robust.rule.needs_all_updates() {
                reasons.push(format!(
                    "robust rule '{}' needs every update, but secure aggregation shows the \
                     coordinator only their sum; use rule = \"mean\" (with norm_bound, \
                     applied by each participant before masking)",
                    self.robust.rule
                ));
            }
            if let Some(aux) = needs.clear_aux_sum {
                reasons.push(format!(
                    "{strategy}'s {aux}s are not securely aggregated; choose another strategy \
                     or turn secure aggregation off"
                ));
            }
            if f.mode == Mode::Async {
                reasons.push(
                    "secure aggregation masks a synchronous round's updates together; use mode = \"sync\""
                        .into(),
                );
            }
            if self.privacy.adaptive_clipping.is_some() {
                reasons.push(
                    "adaptive clipping counts clipped updates one by one, which secure \
                     aggregation hides; use a fixed clip_norm"
                        .into(),
                );
            }
        }
        let compression = &self.compression;
        if let Err(e) = compression.validate() {
            reasons.push(format!("compression: {e}"));
        }
        if self.privacy.site_metrics.sums_only() && f.mode == Mode::Async {
            reasons.push(format!(
                "site_metrics = \"{}\" (sums of the sites' evaluations only; the default) is \
                 implemented for synchronous rounds; use mode = \"sync\", or say \
                 site_metrics = \"clear\" in [privacy] to let the coordinator see each site's \
                 evaluation",
                self.privacy.site_metrics.name()
            ));
        }
        if compression.is_active() && f.mode == Mode::Async {
            reasons.push(
                "compression is implemented for synchronous rounds; use mode = \"sync\" or \
                 remove [compression]"
                    .into(),
            );
        }
        if secagg.enabled {
            if compression.adaptive.is_some() {
                reasons.push(
                    "compression.adaptive gives participants different codecs, but secure \
                     aggregation needs every masked vector alike; use one upload codec"
                        .into(),
                );
            }
            let up = compression.upload;
            if matches!(up.sparsifier, Some(tessera_compress::Sparsifier::TopK(_)))
                || up.values != tessera_compress::Values::F32
            {
                reasons.push(format!(
                    "upload codec '{up}' cannot be summed under secure aggregation: top-k picks \
                     different coordinates at each participant and fp16 or qN values cannot be \
                     masked. Use randk:F (coordinates from a shared round seed, quantised into \
                     the masking ring with secure_aggregation.clip_range) or none"
                ));
            }
        }
        if self.topology.kind != crate::TopologyKind::Flat {
            let kind = match self.topology.kind {
                crate::TopologyKind::Gossip => "gossip",
                _ => "hierarchical",
            };
            // Central DP runs at the aggregators whose members are sites:
            // each clips its sites' updates and noises their sum.
            let aggregators_noise = self.topology.kind == crate::TopologyKind::Hierarchical
                && self.privacy.mode == tessera_privacy::PrivacyMode::Central;
            let unsupported = [
                (f.mode == Mode::Async, "asynchronous rounds"),
                (
                    secagg.enabled && self.topology.kind != crate::TopologyKind::Hierarchical,
                    "secure aggregation",
                ),
                (
                    self.privacy.is_on() && !aggregators_noise,
                    if self.topology.kind == crate::TopologyKind::Hierarchical {
                        "local differential privacy (central DP runs at the aggregators)"
                    } else {
                        "differential privacy"
                    },
                ),
                (compression.is_active(), "compression"),
                (
                    self.robust.rule.needs_all_updates() || self.robust.norm_bound.is_some(),
                    "robust aggregation",
                ),
                (needs.flat_only, strategy.as_str()),
            ];
            for (_, what) in unsupported.iter().filter(|(on, _)| *on) {
                reasons.push(format!(
                    "the {kind} topology does not support {what} yet; use kind = \"flat\""
                ));
            }
            if self.privacy.site_metrics.sums_only() {
                reasons.push(format!(
                    "the {kind} topology cannot yet keep the sites' evaluations to their sums \
                     (site_metrics = \"{}\"; \"aggregate-only\" is the default); say \
                     site_metrics = \"clear\" in [privacy] to let the coordinator see each \
                     site's evaluation, or use kind = \"flat\"",
                    self.privacy.site_metrics.name()
                ));
            }
            if self.topology.kind == crate::TopologyKind::Gossip
                && self.federation.strategy != StrategyKind::FedAvg
            {
                reasons.push(
                    "gossip has no server, so no server strategy: use strategy = \"fedavg\"".into(),
                );
            }
        }
        if f.mode == Mode::Async && self.robust.rule.needs_all_updates() {
            reasons.push(format!(
                "robust rule '{}' needs synchronous rounds; use mode = \"sync\"",
                self.robust.rule
            ));
        }
        if self.secure_aggregation.enabled && self.secure_aggregation.clip_range > MAX_CLIP_RANGE {
            reasons.push(format!(
                "secure_aggregation.clip_range {} is too wide: update values are quantised to \
                 at most 2^32 levels over [-clip_range, clip_range], so every update would round \
                 away; at most {MAX_CLIP_RANGE}",
                tessera_core::value(self.secure_aggregation.clip_range)
            ));
        }
        if !self.data.sites.is_empty()
            && let Err(e) = self.check_cohort(self.data.sites.len())
        {
            reasons.push(invalid_reason(e));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(PlanError::Invalid(reasons.join("; ")))
        }
    }

    /// Checks the settings that depend on the federation's size, `sites`
    /// sites, and names every one that cannot work at once: secure
    /// aggregation's neighbours, robust rules against the cohort a round
    /// draws, a quorum or minimum larger than the federation.
    pub fn check_cohort(&self, sites: usize) -> Result<(), PlanError> {
        let f = &self.federation;
        let cohort = ((sites as f64 * f.fraction).ceil() as usize)
            .max(f.min_participants)
            .min(sites);
        let mut reasons = Vec::new();
        if f.min_participants > sites {
            reasons.push(format!(
                "federation.min_participants = {} but the federation has {sites} sites",
                f.min_participants
            ));
        }
        if f.quorum > sites {
            reasons.push(format!(
                "federation.quorum = {} but the federation has {sites} sites",
                f.quorum
            ));
        }
        let secagg = &self.secure_aggregation;
        if secagg.enabled {
            if let Some(k) = secagg.neighbours
                && k >= cohort
            {
                reasons.push(format!(
                    "secure_aggregation.neighbours = {k} but a round's cohort has {cohort} sites: \
                     at most {} neighbours each",
                    cohort.saturating_sub(1)
                ));
            }
            if cohort < 3 {
                reasons.push(format!(
                    "secure aggregation needs at least 3 sites in a round, the plan's rounds have \
                     {cohort}"
                ));
            }
        }
        let robust = &self.robust;
        if matches!(
            robust.rule,
            tessera_aggregate::RobustRule::Krum | tessera_aggregate::RobustRule::MultiKrum
        ) {
            let need = robust.assumed_malicious.saturating_mul(2).saturating_add(3);
            if cohort < need {
                reasons.push(format!(
                    "robust rule '{}' tolerating {} malicious participants needs at least {need} \
                     updates a round, the plan's rounds have {cohort}",
                    robust.rule, robust.assumed_malicious
                ));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(PlanError::Invalid(reasons.join("; ")))
        }
    }
}
