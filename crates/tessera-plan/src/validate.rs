//! Checking a plan: every section on its own, then the rules across
//! sections ([`crate::RULES`]) and against the federation's size, every
//! conflict named at once.

use tessera_aggregate::StrategyKind;

use crate::{
    Conflict, FederationConfig, MAX_CLIP_RANGE, MAX_SECONDS, Mode, Plan, PlanError, RULES,
    SimulationConfig,
};

/// `Ok` without conflicts, else all of them.
fn verdict(conflicts: Vec<Conflict>) -> Result<(), PlanError> {
    if conflicts.is_empty() {
        Ok(())
    } else {
        Err(PlanError::Conflicts(conflicts))
    }
}

/// The most rounds a plan may have: round numbers at 2^30 and above mark
/// secure aggregation's analytics and evaluation rounds.
const MAX_ROUNDS: u32 = 1_000_000;

impl FederationConfig {
    /// Every problem of `[federation]` on its own; empty when it is sound.
    pub fn check(&self) -> Vec<Conflict> {
        let mut out = Vec::new();
        if self.rounds == 0 {
            out.push(Conflict::new(
                &["federation.rounds"],
                "federation.rounds must be at least 1",
            ));
        }
        if self.rounds > MAX_ROUNDS {
            out.push(Conflict::new(
                &["federation.rounds"],
                format!(
                    "federation.rounds is {}, more than {MAX_ROUNDS}: higher round numbers are \
                     reserved (secure aggregation marks evaluation and analytics rounds with high \
                     bits)",
                    self.rounds
                ),
            ));
        }
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            out.push(Conflict::new(
                &["federation.fraction"],
                format!(
                    "federation.fraction must be in (0, 1], got {}",
                    tessera_core::value(self.fraction)
                ),
            ));
        }
        if self.mode == Mode::Async && self.buffer_size == 0 {
            out.push(Conflict::new(
                &["federation.buffer_size"],
                "federation.buffer_size must be at least 1",
            ));
        }
        if self.min_participants == 0 || self.quorum == 0 {
            out.push(Conflict::new(
                &["federation.min_participants", "federation.quorum"],
                "federation.min_participants and federation.quorum must be at least 1",
            ));
        }
        if let Some(d) = self.deadline_seconds
            && !(d > 0.0 && d <= MAX_SECONDS)
        {
            out.push(Conflict::new(
                &["federation.deadline_seconds"],
                format!(
                    "federation.deadline_seconds must be in (0, {MAX_SECONDS:e}], got {}",
                    tessera_core::value(d)
                ),
            ));
        }
        out
    }
}

impl SimulationConfig {
    /// Every problem of `[simulation]` on its own; empty when it is sound.
    pub fn check(&self) -> Vec<Conflict> {
        let mut out = Vec::new();
        for (name, key, r) in [
            (
                "examples_per_second",
                "simulation.examples_per_second",
                self.examples_per_second,
            ),
            (
                "latency_seconds",
                "simulation.latency_seconds",
                self.latency_seconds,
            ),
        ] {
            if !(r.min.is_finite() && r.max.is_finite() && r.min >= 0.0 && r.min <= r.max) {
                out.push(Conflict::new(
                    &[key],
                    format!(
                        "simulation.{name}: need 0 <= min <= max, got {} and {}",
                        tessera_core::value(r.min),
                        tessera_core::value(r.max)
                    ),
                ));
            }
        }
        if let Some(gb) = self.max_memory_gb
            && !(gb.is_finite() && gb > 0.0)
        {
            out.push(Conflict::new(
                &["simulation.max_memory_gb"],
                format!(
                    "simulation.max_memory_gb must be positive, got {}",
                    tessera_core::value(gb)
                ),
            ));
        }
        if let Some(r) = self.bandwidth_bytes_per_second
            && !(r.min.is_finite() && r.max.is_finite() && r.min >= 1.0 && r.min <= r.max)
        {
            out.push(Conflict::new(
                &["simulation.bandwidth_bytes_per_second"],
                format!(
                    "simulation.bandwidth_bytes_per_second: need 1 <= min <= max, got {} and {}",
                    tessera_core::value(r.min),
                    tessera_core::value(r.max)
                ),
            ));
        }
        if self.examples_per_second.min < 1e-3 {
            out.push(Conflict::new(
                &["simulation.examples_per_second"],
                format!(
                    "simulation.examples_per_second must be at least 0.001, got {}",
                    tessera_core::value(self.examples_per_second.min)
                ),
            ));
        }
        if self.latency_seconds.max > MAX_SECONDS {
            out.push(Conflict::new(
                &["simulation.latency_seconds"],
                format!(
                    "simulation.latency_seconds must be at most {MAX_SECONDS:e}, got {}",
                    tessera_core::value(self.latency_seconds.max)
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            out.push(Conflict::new(
                &["simulation.dropout"],
                format!(
                    "simulation.dropout must be in [0, 1), got {}",
                    tessera_core::value(self.dropout)
                ),
            ));
        }
        out
    }
}

impl Plan {
    /// Checks every section and their agreement, and names every setting
    /// that cannot work at once ([`PlanError::Conflicts`]).
    pub fn validate(&self) -> Result<(), PlanError> {
        verdict(self.conflicts())
    }

    /// Every conflict of the plan: each section's own problems, then the
    /// rules across sections ([`RULES`]), then, when the plan lists its
    /// sites, those against the federation's size ([`Plan::check_cohort`]).
    pub fn conflicts(&self) -> Vec<Conflict> {
        let mut out = self.section_conflicts();
        out.extend(self.feature_conflicts());
        out.extend(RULES.iter().filter_map(|rule| (rule.check)(self)));
        if !self.data.sites.is_empty() {
            out.extend(self.cohort_conflicts(self.data.sites.len()));
        }
        out
    }

    /// Each section's problems on its own.
    fn section_conflicts(&self) -> Vec<Conflict> {
        let mut out = Vec::new();
        let mut push = |keys: &[&str], reason: String| out.push(Conflict::new(keys, reason));
        if self.model.kind.is_external() {
            if self.data != crate::no_data() {
                push(
                    &["data", "model.kind"],
                    "an external model's rows stay with each site's learner, so the plan has \
                     no [data]: remove it, or use a built-in model"
                        .into(),
                );
            }
        } else if self.data == crate::no_data() {
            push(
                &["data"],
                "the plan has no [data]: a built-in model trains on the sites' data, so give \
                 [data] (with its [data.schema] target), or say kind = \"external\" in [model] \
                 for a model each site's own learner holds"
                    .into(),
            );
        } else if let Err(e) = self.data.validate() {
            push(&["data"], e.to_string());
        }
        if let Err(e) = self.training.validate() {
            push(&["training"], format!("training: {e}"));
        }
        if let Some(Err(e)) = self.baselines.as_ref().map(|b| b.validate()) {
            push(&["baselines"], format!("baselines: {e}"));
        }
        if let Some(multitask) = &self.multitask {
            for problem in multitask.problems(&self.data.schema.target) {
                push(&["multitask"], problem);
            }
        }
        if let Err(reason) = self.contribution.check() {
            push(&["contribution"], reason);
        }
        if let Err(reason) = self.baseline_choice.check() {
            push(&["baseline_choice"], reason);
        }
        let personalization = &self.personalization;
        if personalization.finetune_epochs > 10_000 {
            push(
                &["personalization.finetune_epochs"],
                format!(
                    "personalization.finetune_epochs = {} is more than 10000",
                    personalization.finetune_epochs
                ),
            );
        }
        let mut named = std::collections::BTreeSet::new();
        for site in &personalization.new_sites {
            if site.trim().is_empty() || !named.insert(site.as_str()) {
                push(
                    &["personalization.new_sites"],
                    format!(
                        "personalization.new_sites names '{site}' {}",
                        if site.trim().is_empty() {
                            "(an empty name)"
                        } else {
                            "twice"
                        }
                    ),
                );
            }
        }
        if let Some(rows) = personalization.finetune_rows
            && (rows == 0 || !personalization.fine_tunes())
        {
            push(
                &[
                    "personalization.finetune_rows",
                    "personalization.finetune_epochs",
                ],
                "personalization.finetune_rows needs at least 1 row and \
                 finetune_epochs > 0"
                    .into(),
            );
        }
        if let Some(column) = &personalization.department
            && (column.trim().is_empty() || !personalization.fine_tunes())
        {
            push(
                &[
                    "personalization.department",
                    "personalization.finetune_epochs",
                ],
                format!(
                    "personalization.department = '{}' needs a column name and \
                     finetune_epochs > 0 (each department fine-tunes its site's model)",
                    tessera_core::shown(column, 100)
                ),
            );
        }
        if let Some(column) = &personalization.department {
            let declared = self.data.schema.columns.iter().find(|c| &c.name == column);
            if *column == self.data.schema.target
                || self.data.site_column.as_ref() == Some(column)
                || declared.is_some_and(|c| c.kind != tessera_data::ColumnKind::Categorical)
                || (declared.is_some_and(|c| c.drop_first)
                    && self.data.schema.missing_policy != tessera_data::MissingPolicy::Drop)
            {
                push(
                    &["personalization.department", "data.schema"],
                    format!(
                        "personalization.department = '{}' must name a categorical feature \
                         column, not the target, the site column, a numeric or an ignored \
                         one, nor one with drop_first unless missing_policy = \"drop\" (its \
                         first level's rows could not be told from rows with a missing value)",
                        tessera_core::shown(column, 100)
                    ),
                );
            }
        }
        if let Some(lr) = personalization.finetune_lr
            && !(lr.is_finite() && lr > 0.0 && personalization.fine_tunes())
        {
            push(
                &[
                    "personalization.finetune_lr",
                    "personalization.finetune_epochs",
                ],
                format!(
                    "personalization.finetune_lr = {} must be a positive number, with \
                     finetune_epochs > 0",
                    tessera_core::value(lr)
                ),
            );
        }
        for name in self.strategies.keys() {
            if let Err(e) = name.parse::<StrategyKind>() {
                push(
                    &[&format!("strategies.{name}")],
                    format!("strategies.{name}: {e}"),
                );
            }
        }
        if let Err(e) = self.strategy_config().build(self.federation.strategy) {
            let key = format!("strategies.{}", self.federation.strategy);
            push(&[&key], e.to_string());
        }
        out.extend(self.federation.check());
        out.extend(self.simulation.check());
        let mut push = |keys: &[&str], reason: String| out.push(Conflict::new(keys, reason));
        if let Err(e) = self.privacy.validate() {
            push(&["privacy"], e.to_string());
        }
        for problem in self.analytics.problems() {
            push(&["analytics"], problem);
        }
        if self.analytics.serve_seconds > 0
            && self.analytics.dp
            && self.privacy.budgets().run.is_none()
        {
            push(
                &["analytics.serve_seconds", "privacy.budget"],
                "[analytics] serve_seconds keeps the sites for DP queries, but [privacy] sets no \
                 budget: nothing would bound how often a query is repeated to average its noise \
                 away; set [privacy] budget (or epsilon)"
                    .into(),
            );
        }
        // Only where there are joins, and never for an absurd number of
        // generated sites (which `[data]`'s own check refuses): naming them
        // would allocate a string for each.
        let within = self
            .data
            .synthetic
            .as_ref()
            .is_none_or(|s| s.sites as u64 <= tessera_data::MAX_DECLARED_SITES);
        let named = if self.analytics.joins.is_empty() || !within {
            Vec::new()
        } else {
            self.data.named_sites()
        };
        for problem in
            tessera_analytics::join_problems(&self.analytics.joins, &self.data.schema, &named)
        {
            push(&["analytics.joins"], problem);
        }
        if let Err(e) = self.robust.validate() {
            push(&["robust"], format!("robust: {e}"));
        }
        let secagg = &self.secure_aggregation;
        if secagg.enabled {
            if let Err(e) = secagg.validate() {
                push(&["secure_aggregation"], e.to_string());
            }
            // Key holders among the plan's `[[data.sites]]`, when it lists
            // them (sites from a site column are checked when read).
            let listed = &self.data.sites;
            if !listed.is_empty()
                && let Some(stranger) = secagg
                    .key_holders
                    .iter()
                    .find(|k| !listed.iter().any(|s| &s.name == *k))
            {
                push(
                    &["secure_aggregation.key_holders"],
                    format!(
                        "key holder '{}' is not one of the plan's [[data.sites]]",
                        stranger.chars().take(64).collect::<String>()
                    ),
                );
            }
            if secagg.clip_range > MAX_CLIP_RANGE {
                push(
                    &["secure_aggregation.clip_range"],
                    format!(
                        "secure_aggregation.clip_range {} is too wide: update values are \
                         quantised to at most 2^32 levels over [-clip_range, clip_range], so \
                         every update would round away; at most {MAX_CLIP_RANGE}",
                        tessera_core::value(secagg.clip_range)
                    ),
                );
            }
        }
        if let Err(e) = self.compression.validate() {
            push(&["compression"], format!("compression: {e}"));
        }
        out
    }

    /// Checks the settings that depend on the federation's size, `sites`
    /// sites, and names every one that cannot work at once: secure
    /// aggregation's neighbours, robust rules against the cohort a round
    /// draws, a quorum or minimum larger than the federation.
    pub fn check_cohort(&self, sites: usize) -> Result<(), PlanError> {
        verdict(self.cohort_conflicts(sites))
    }

    fn cohort_conflicts(&self, sites: usize) -> Vec<Conflict> {
        let f = &self.federation;
        let cohort = ((sites as f64 * f.fraction).ceil() as usize)
            .max(f.min_participants)
            .min(sites);
        let mut out = Vec::new();
        let mut push = |keys: &[&str], reason: String| out.push(Conflict::new(keys, reason));
        if f.min_participants > sites {
            push(
                &["federation.min_participants"],
                format!(
                    "federation.min_participants = {} but the federation has {sites} sites",
                    f.min_participants
                ),
            );
        }
        if f.quorum > sites {
            push(
                &["federation.quorum"],
                format!(
                    "federation.quorum = {} but the federation has {sites} sites",
                    f.quorum
                ),
            );
        }
        let secagg = &self.secure_aggregation;
        if secagg.enabled {
            if let Some(k) = secagg.neighbours
                && k >= cohort
            {
                push(
                    &["secure_aggregation.neighbours", "federation.fraction"],
                    format!(
                        "secure_aggregation.neighbours = {k} but a round's cohort has {cohort} \
                         sites: at most {} neighbours each",
                        cohort.saturating_sub(1)
                    ),
                );
            }
            if cohort < 3 {
                push(
                    &["secure_aggregation.enabled", "federation.fraction"],
                    format!(
                        "secure aggregation needs at least 3 sites in a round, the plan's rounds \
                         have {cohort}"
                    ),
                );
            }
        }
        let robust = &self.robust;
        if matches!(
            robust.rule,
            tessera_aggregate::RobustRule::Krum | tessera_aggregate::RobustRule::MultiKrum
        ) {
            let need = robust.assumed_malicious.saturating_mul(2).saturating_add(3);
            if cohort < need {
                push(
                    &[
                        "robust.rule",
                        "robust.assumed_malicious",
                        "federation.fraction",
                    ],
                    format!(
                        "robust rule '{}' tolerating {} malicious participants needs at least \
                         {need} updates a round, the plan's rounds have {cohort}",
                        robust.rule, robust.assumed_malicious
                    ),
                );
            }
        }
        out
    }
}
