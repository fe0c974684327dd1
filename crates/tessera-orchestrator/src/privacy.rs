//! The privacy book: what a run releases under differential privacy, kept
//! once for simulation and deployment.
//!
//! Three accounts meet here, each checked against the plan's budgets
//! before anything is released:
//!
//! - **local DP** (`mode = "local"`): each participant's DP-SGD, as its
//!   update reports it (rows and steps; the plan fixes the rest). A
//!   reported number is checked against the plan before the update counts
//!   ([`PrivacyBook::check_local`]), and recorded once the update counted
//!   ([`PrivacyBook::record_local`]);
//! - **central DP** (`mode = "central"`): where it runs (every round of a
//!   flat run; in a tree, the aggregators whose members are sites,
//!   [`PrivacyBook::central_cohort`]), the forecast that refuses rounds a
//!   budget could not release ([`PrivacyBook::forecast_central`]), and the
//!   row each release leaves ([`PrivacyBook::central_release`]); the
//!   mechanism and its ledger run inside [`tessera_engine::RoundEngine`];
//! - **DP metrics** (`site_metrics = "dp"`): each noised evaluation's spend
//!   ([`PrivacyBook::release_metrics`]).
//!
//! The book draws no randomness: the noise that protects a site comes from
//! that site's own key (or, for central DP and metrics, the coordinator's),
//! which its driver holds. It never reads a clock, store or network: it is
//! told the time and answers with [`Effect`]s.

use tessera_core::{Timestamp, Update};
use tessera_engine::report::{MetricsPrivacyReport, PrivacyReport};
use tessera_engine::{DpCohort, Plan, PlanError, Tree};
use tessera_learn::{LocalPlan, TrainingConfig};
use tessera_privacy::{
    CentralRelease, DpEvent, Ledger, LedgerEntry, MetricsDp, PrivacyConfig, PrivacyError,
    PrivacyMode, SiteMetrics,
};

use crate::Effect;

/// A release in the privacy ledger, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerRow {
    /// The DP event and the run's epsilon after it.
    pub entry: LedgerEntry,
    /// The delta of that epsilon.
    pub delta: f64,
    /// The clipping norm the release used.
    pub clip_norm: f64,
    /// The clipping norm it left for the next release.
    pub next_clip_norm: f64,
    /// Noise standard deviation on each coordinate of the released mean.
    pub noise_std: f64,
    /// Updates in the release.
    pub updates: u64,
    /// When it was recorded (microseconds on the run clock).
    pub recorded_micros: u64,
}

/// What the book asks its driver to do.
pub type PrivacyEffect = Effect<LedgerRow>;

/// What a participant's update says of its DP-SGD: the rows it trained on
/// and the steps it took. The plan fixes the rest (batch size, noise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalReport {
    /// Training rows (the update's example count).
    pub n_examples: u64,
    /// Optimiser steps.
    pub steps: u64,
}

impl LocalReport {
    /// What `update` reports.
    pub fn of(update: &Update) -> Self {
        Self {
            n_examples: update.n_examples,
            steps: update.stats.n_steps,
        }
    }
}

/// Where a round engine runs, for the rule of where central DP runs.
#[derive(Debug, Clone, Copy)]
pub enum Place<'a> {
    /// The coordinator of a flat federation of this many participants.
    Flat {
        /// Participants in the federation.
        participants: usize,
    },
    /// Node `node` of a hierarchical run's tree (0: the root).
    Node {
        /// The tree.
        tree: &'a Tree,
        /// The node's index in `tree.nodes`.
        node: usize,
    },
}

/// Every DP release of a run: the local ledger, the metrics' spend, and the
/// rules of central DP. See the module's documentation.
#[derive(Debug, Clone)]
pub struct PrivacyBook {
    config: PrivacyConfig,
    rounds: u32,
    training: TrainingConfig,
    /// Local DP: every participant's DP-SGD.
    local: Option<Ledger>,
    /// Local DP: the smallest noise multiplier planned or recorded.
    smallest_sigma: f64,
    /// `site_metrics = "dp"`: the metrics' noise calibration and spend.
    metrics: Option<MetricsDp>,
    /// The metrics' epsilon after the evaluation just released, until its
    /// round's record takes it.
    metrics_released: Option<f64>,
}

impl PrivacyBook {
    /// The book of a run of `rounds` rounds under `config`, whose sites
    /// train locally with `training`.
    pub fn new(
        config: &PrivacyConfig,
        rounds: u32,
        training: TrainingConfig,
    ) -> Result<Self, PrivacyError> {
        let metrics = (config.site_metrics == SiteMetrics::Dp)
            .then(|| MetricsDp::new(config, rounds))
            .transpose()?;
        Ok(Self {
            config: config.clone(),
            rounds,
            training,
            local: (config.mode == PrivacyMode::Local).then(|| config.ledger()),
            smallest_sigma: f64::INFINITY,
            metrics,
            metrics_released: None,
        })
    }

    /// The book of `plan`.
    pub fn of_plan(plan: &Plan) -> Result<Self, PrivacyError> {
        Self::new(&plan.privacy, plan.federation.rounds, plan.local_training())
    }

    /// The plan's privacy settings.
    pub fn config(&self) -> &PrivacyConfig {
        &self.config
    }

    /// Resuming: puts back the local releases among `rows` (read back from
    /// the store; central ones belong to the round engine), without checks.
    pub fn restore(&mut self, rows: &[LedgerRow]) -> Result<(), PrivacyError> {
        let Some(ledger) = self.local.as_mut() else {
            return Ok(());
        };
        for row in rows {
            ledger.restore(row.entry.clone())?;
            self.smallest_sigma = self.smallest_sigma.min(row.entry.event.noise_multiplier);
        }
        Ok(())
    }

    /// Resuming: `released` evaluations were released before, charged
    /// without checks.
    pub fn restore_metrics(&mut self, released: u32) -> Result<(), PrivacyError> {
        match self.metrics.as_mut() {
            Some(dp) => dp.restore(released),
            None => Ok(()),
        }
    }

    // ----- local DP -----

    /// The local ledger, with local DP.
    pub fn local_ledger(&self) -> Option<&Ledger> {
        self.local.as_ref()
    }

    /// What a site training on `n_rows` rows reports when it follows the plan.
    pub fn planned_report(&self, n_rows: u64) -> Result<LocalReport, PrivacyError> {
        let n = rows(n_rows)?;
        let steps = LocalPlan::plain(&self.training)
            .n_steps(n)
            .map_err(|e| PrivacyError::Invalid(e.to_string()))?;
        Ok(LocalReport {
            n_examples: n_rows,
            steps,
        })
    }

    /// The DP event behind `report`, with local DP (`None` without), after
    /// checking each reported number against the plan: rows at least one,
    /// at most the plan's steps for those rows, a sampling rate in (0, 1], a finite
    /// positive noise multiplier, and the run's steps within `u64`.
    pub fn local_event(&self, report: LocalReport) -> Result<Option<DpEvent>, PrivacyError> {
        if self.local.is_none() {
            return Ok(None);
        }
        if report.n_examples == 0 {
            return Err(PrivacyError::Invalid(
                "a DP-SGD release over 0 training rows".into(),
            ));
        }
        let planned = self.planned_report(report.n_examples)?.steps;
        if report.steps > planned {
            return Err(PrivacyError::Invalid(format!(
                "the update reports {} DP-SGD steps; the plan's local training takes at most \
                 {planned} on {} rows",
                report.steps, report.n_examples
            )));
        }
        if report.steps.checked_mul(u64::from(self.rounds)).is_none() {
            return Err(PrivacyError::Invalid(format!(
                "{} DP-SGD steps a round over {} rounds overflow the accountant",
                report.steps, self.rounds
            )));
        }
        let q = LocalPlan::plain(&self.training).sampling_rate(rows(report.n_examples)?);
        if !(q.is_finite() && q > 0.0 && q <= 1.0) {
            return Err(PrivacyError::Invalid(format!(
                "sampling rate {} is not in (0, 1]",
                tessera_core::value(q)
            )));
        }
        let noise_multiplier = self
            .config
            .local_noise_multiplier(q, report.steps, self.rounds)?;
        if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
            return Err(PrivacyError::Invalid(format!(
                "noise multiplier {} is not a finite positive number",
                tessera_core::value(noise_multiplier)
            )));
        }
        let event = DpEvent {
            sampling_rate: q,
            noise_multiplier,
            steps: report.steps,
        };
        event.validate()?;
        Ok(Some(event))
    }

    /// Refuses, before any training, a run whose sites (name and training
    /// rows) would together spend past a budget over the plan's rounds.
    pub fn forecast_local(&mut self, sites: &[(String, u64)]) -> Result<(), PrivacyError> {
        let Some(ledger) = &self.local else {
            return Ok(());
        };
        let mut planned = Vec::with_capacity(sites.len());
        let mut smallest = self.smallest_sigma;
        for (name, n_rows) in sites {
            let Some(event) = self.local_event(self.planned_report(*n_rows)?)? else {
                continue;
            };
            smallest = smallest.min(event.noise_multiplier);
            planned.push((name.clone(), event));
        }
        ledger.check_local_run(self.rounds, &planned)?;
        self.smallest_sigma = smallest;
        Ok(())
    }

    /// Whether `site`'s DP-SGD of `round` is in the ledger already.
    fn recorded(&self, round: u32, site: &str) -> bool {
        self.local.as_ref().is_some_and(|ledger| {
            ledger.entries().iter().any(|e| {
                e.release == round && e.kind == "local" && e.participant.as_deref() == Some(site)
            })
        })
    }

    /// Checks `site`'s report of its DP-SGD in `round` before its update
    /// counts: the numbers (see [`PrivacyBook::local_event`]) and every
    /// budget. A release already recorded passes (it is not counted twice).
    pub fn check_local(
        &self,
        round: u32,
        site: &str,
        report: LocalReport,
    ) -> Result<(), PrivacyError> {
        let (Some(ledger), Some(event)) = (&self.local, self.local_event(report)?) else {
            return Ok(());
        };
        if self.recorded(round, site) {
            return Ok(());
        }
        ledger.check(
            &format!("round {round} at '{site}'"),
            &[],
            &[(site.to_string(), event)],
            &[site.to_string()],
        )
    }

    /// Records `site`'s DP-SGD of `round` once its update counted: the row
    /// to persist before the update is (a crash in between over-counts,
    /// never under), nothing when it is recorded already, `Fatal` when it
    /// cannot be (checked by [`PrivacyBook::check_local`] first, it can).
    pub fn record_local(
        &mut self,
        now: Timestamp,
        round: u32,
        site: &str,
        report: LocalReport,
    ) -> Vec<PrivacyEffect> {
        if self.recorded(round, site) {
            return Vec::new();
        }
        let event = match self.local_event(report) {
            Ok(Some(event)) => event,
            Ok(None) => return Vec::new(),
            Err(e) => return vec![Effect::Fatal(format!("round {round} at '{site}': {e}"))],
        };
        let Some(ledger) = self.local.as_mut() else {
            return Vec::new();
        };
        let entry = match ledger.record_local(round, site, event) {
            Ok(entry) => entry.clone(),
            Err(e) => return vec![Effect::Fatal(e.to_string())],
        };
        self.smallest_sigma = self.smallest_sigma.min(event.noise_multiplier);
        let clip = self.config.clip_norm;
        let expected_batch = (event.sampling_rate * report.n_examples as f64).max(1.0);
        vec![Effect::Persist(LedgerRow {
            entry,
            delta: self.config.delta,
            clip_norm: clip,
            next_clip_norm: clip,
            noise_std: event.noise_multiplier * clip / expected_batch,
            updates: 1,
            recorded_micros: now.0,
        })]
    }

    /// The report of local DP (`None` without), marked simulated; its noise
    /// multiplier is the smallest planned or recorded.
    pub fn local_report(&self) -> Option<PrivacyReport> {
        self.local
            .as_ref()
            .map(|ledger| PrivacyReport::local(&self.config, self.smallest_sigma, ledger))
    }

    // ----- central DP -----

    /// With central DP, checks that a tree can run it: every site belongs
    /// to an aggregator that holds only sites.
    pub fn check_tree(&self, tree: &Tree) -> Result<(), PlanError> {
        if self.config.mode == PrivacyMode::Central {
            tree.check_privacy_layers()?;
        }
        Ok(())
    }

    /// Whether central DP runs at `place`, and for whom its noise is
    /// calibrated: every round of a flat run, over a sampled cohort; in a
    /// tree, at the aggregators whose members are sites, over all of them
    /// each round (an aggregator of aggregators, and the root, add none).
    pub fn central_cohort(&self, place: Place<'_>) -> Option<DpCohort> {
        if self.config.mode != PrivacyMode::Central {
            return None;
        }
        match place {
            Place::Flat { participants } => Some(DpCohort::Sampled(participants)),
            Place::Node { tree, node } => {
                let holds = tree.nodes.get(node).is_some() && tree.holds_sites(node);
                holds.then(|| DpCohort::Everyone(tree.nodes[node].members.len()))
            }
        }
    }

    /// Refuses the rounds still to run when, after the central releases in
    /// `entries` (one per closed round), they would exceed a budget, so
    /// that no work is done that could not be released.
    pub fn forecast_central(&self, entries: &[LedgerEntry]) -> Result<(), PrivacyError> {
        if self.config.mode != PrivacyMode::Central {
            return Ok(());
        }
        let mut ledger = self.config.ledger();
        for entry in entries {
            ledger.restore(entry.clone())?;
        }
        let z = self.config.noise_multiplier_for(self.rounds)?;
        let closed = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        let remaining = self.rounds.saturating_sub(closed);
        ledger.check_central_run(remaining, z)
    }

    /// The ledger row a central release at a round's close leaves: persisted
    /// with the round, in the round's own transaction (so it comes back as
    /// the row itself, not as a separate effect).
    pub fn central_release(
        &self,
        now: Timestamp,
        release: &CentralRelease,
        entry: &LedgerEntry,
    ) -> LedgerRow {
        LedgerRow {
            entry: entry.clone(),
            delta: self.config.delta,
            clip_norm: release.clip_norm,
            next_clip_norm: release.next_clip_norm,
            noise_std: release.noise_std,
            updates: release.updates,
            recorded_micros: now.0,
        }
    }

    // ----- DP metrics -----

    /// With `site_metrics = "dp"`: the metrics' noise calibration.
    pub fn metrics(&self) -> Option<&MetricsDp> {
        self.metrics.as_ref()
    }

    /// Charges the release of a noised evaluation, or refuses it (and
    /// charges nothing) past the metrics' budget; the epsilon after it,
    /// kept for its round's record. `Ok(None)` without DP metrics.
    pub fn release_metrics(&mut self) -> Result<Option<f64>, PrivacyError> {
        let Some(dp) = self.metrics.as_mut() else {
            return Ok(None);
        };
        let epsilon = dp.charge()?;
        self.metrics_released = Some(epsilon);
        Ok(Some(epsilon))
    }

    /// The metrics' epsilon after the last release, for its round's record
    /// (once).
    pub fn take_metrics_released(&mut self) -> Option<f64> {
        self.metrics_released.take()
    }

    /// The report of the metrics' spend (`None` without DP metrics);
    /// `release` as in [`PrivacyReport::release`].
    pub fn metrics_report(&self, release: bool) -> Option<MetricsPrivacyReport> {
        self.metrics
            .as_ref()
            .map(|dp| MetricsPrivacyReport::of(dp, release))
    }
}

/// `n` training rows as a count of rows in memory.
fn rows(n: u64) -> Result<usize, PrivacyError> {
    usize::try_from(n).map_err(|_| PrivacyError::Invalid(format!("{n} training rows")))
}
