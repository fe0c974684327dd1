//! What a plan sets up around the engine, written once for simulation and
//! deployment: the round engine's protections and the downlink.

use std::sync::Arc;

use tessera_core::ParameterSet;

use crate::{Downlink, Plan, PlanError, RoundEngine};

/// Whom a central-DP round's noise is calibrated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpCohort {
    /// A cohort sampled from a federation of this many participants
    /// (`fraction`, at least `min_participants`).
    Sampled(usize),
    /// Every one of this many participants, each round (an aggregator's members).
    Everyone(usize),
}

impl RoundEngine {
    /// The plan's protections on this engine, the same in simulation and at
    /// a coordinator or aggregator: the robust rule and norm bound, and with
    /// central DP the clipping, noise (keyed with `noise_key`; `None`: no
    /// key, no DP) and the ledger, calibrated for `cohort`.
    pub fn protected(
        self,
        plan: &Plan,
        noise_key: Option<[u8; 32]>,
        cohort: DpCohort,
    ) -> Result<Self, PlanError> {
        let engine = self.with_robust(plan.robust.clone());
        let Some(key) = noise_key else {
            return Ok(engine);
        };
        let dp = match cohort {
            DpCohort::Sampled(n) => plan.central_dp(key, n)?,
            DpCohort::Everyone(n) => plan.central_dp_for_cohort(key, n)?,
        };
        Ok(match dp {
            Some((dp, ledger)) => engine.with_privacy(dp, ledger),
            None => engine,
        })
    }
}

impl Downlink {
    /// The downlink of a plan with a download codec, starting from
    /// `initial`; `None` without one (models travel whole).
    pub fn of_plan(plan: &Plan, initial: Arc<ParameterSet>) -> Option<Downlink> {
        let codec = plan.compression.download;
        (!codec.is_identity()).then(|| Downlink::new(codec, plan.seed, initial))
    }
}
