//! What a plan sets up around the engine, written once for simulation and
//! deployment: the model, the strategy, central DP, the round engine's
//! protections and the downlink.

use std::borrow::Cow;
use std::sync::Arc;

use tessera_aggregate::{Ifca, Multitask, Strategy};
use tessera_core::ParameterSet;
use tessera_privacy::{CentralDp, Ledger};

use crate::{Downlink, Plan, PlanError, RoundEngine};

/// What a [`Plan`] builds: its model, its strategy, its central DP. (The
/// plan describes; the engine's crate builds.)
pub trait PlanBuild {
    /// The learner of the plan's model holding the initial global model
    /// (built from the run seed, the same at every site and the coordinator).
    fn learner(
        &self,
        n_features: usize,
        n_classes: usize,
    ) -> Result<Box<dyn tessera_learn::Learner>, tessera_learn::LearnError>;

    /// The initial global parameters, without building a model (under
    /// IFCA the cluster models stacked: the plan's initial model, then one
    /// drawn from stream [`crate::streams::IFCA`] per further cluster).
    fn initial_parameters(
        &self,
        n_features: usize,
        n_classes: usize,
    ) -> Result<ParameterSet, tessera_learn::LearnError>;

    /// The initial global parameters of a `[multitask]` plan, whose tasks
    /// have `task_classes` classes each: the shared body and one head per
    /// task stacked ([`Multitask::stack`]). The first task's model is the
    /// plan's initial model; each further task's head is drawn from stream
    /// [`crate::streams::MULTITASK`], so that the tasks start apart.
    fn multitask_parameters(
        &self,
        n_features: usize,
        task_classes: &[usize],
    ) -> Result<ParameterSet, tessera_learn::LearnError>;

    /// The one model a run's global parameters serve (evaluated each round,
    /// written as the run's model file): `global` itself, or under IFCA
    /// the cluster of the largest share of the last round's examples.
    /// Under `[multitask]` there is no one model: see [`PlanBuild::served_to`].
    fn served<'a>(&self, global: &'a ParameterSet) -> Result<Cow<'a, ParameterSet>, PlanError>;

    /// The model `global` serves to `site`: under `[multitask]` its task's
    /// (the body and its head), otherwise [`PlanBuild::served`]'s.
    fn served_to<'a>(
        &self,
        global: &'a ParameterSet,
        site: &str,
    ) -> Result<Cow<'a, ParameterSet>, PlanError>;

    /// The chosen strategy, built.
    fn strategy(&self) -> Result<Box<dyn Strategy>, PlanError>;

    /// Central DP of the plan, with its ledger, for a federation of
    /// `n_participants`; `key` seeds the noise and must be secret in
    /// deployment. `None` when the plan has no DP.
    fn central_dp(
        &self,
        key: [u8; 32],
        n_participants: usize,
    ) -> Result<Option<(CentralDp, Ledger)>, PlanError>;

    /// Central DP over cohorts of `cohort` participants (an aggregator's
    /// members below the root, all of them every round).
    fn central_dp_for_cohort(
        &self,
        key: [u8; 32],
        cohort: usize,
    ) -> Result<Option<(CentralDp, Ledger)>, PlanError>;
}

impl PlanBuild for Plan {
    fn learner(
        &self,
        n_features: usize,
        n_classes: usize,
    ) -> Result<Box<dyn tessera_learn::Learner>, tessera_learn::LearnError> {
        tessera_learn::learner(&self.model, n_features, n_classes, self.init_seed())
    }

    fn initial_parameters(
        &self,
        n_features: usize,
        n_classes: usize,
    ) -> Result<ParameterSet, tessera_learn::LearnError> {
        let first = tessera_learn::initial_parameters(
            &self.model,
            n_features,
            n_classes,
            self.init_seed(),
        )?;
        let Some(k) = self.clusters() else {
            return Ok(first);
        };
        let mut clusters = vec![first];
        for j in 1..k {
            let seed = tessera_core::derive_seed(self.seed, &[crate::streams::IFCA, j as u64]);
            clusters.push(tessera_learn::initial_parameters(
                &self.model,
                n_features,
                n_classes,
                seed,
            )?);
        }
        Ifca::stack(&clusters, &vec![0.0; k])
            .map_err(|e| tessera_learn::LearnError::Config(e.to_string()))
    }

    fn multitask_parameters(
        &self,
        n_features: usize,
        task_classes: &[usize],
    ) -> Result<ParameterSet, tessera_learn::LearnError> {
        let invalid =
            |e: tessera_aggregate::AggregateError| tessera_learn::LearnError::Config(e.to_string());
        let Some(&first_classes) = task_classes.first() else {
            return Err(tessera_learn::LearnError::Config(
                "multitask: no tasks' classes".into(),
            ));
        };
        let first = tessera_learn::initial_parameters(
            &self.model,
            n_features,
            first_classes,
            self.init_seed(),
        )?;
        let (body, head) = Multitask::split(&first).map_err(invalid)?;
        let mut heads = vec![head];
        for (t, &classes) in task_classes.iter().enumerate().skip(1) {
            let seed = tessera_core::derive_seed(self.seed, &[crate::streams::MULTITASK, t as u64]);
            let model = tessera_learn::initial_parameters(&self.model, n_features, classes, seed)?;
            heads.push(Multitask::split(&model).map_err(invalid)?.1);
        }
        Multitask::stack(&body, &heads, &vec![0.0; heads.len()]).map_err(invalid)
    }

    fn served_to<'a>(
        &self,
        global: &'a ParameterSet,
        site: &str,
    ) -> Result<Cow<'a, ParameterSet>, PlanError> {
        let Some(multitask) = &self.multitask else {
            return self.served(global);
        };
        let task = multitask.task_of(site).ok_or_else(|| {
            PlanError::Invalid(format!("multitask: site '{site}' is in none of the tasks"))
        })?;
        Multitask::task_model(global, multitask.tasks.len(), task)
            .map(Cow::Owned)
            .map_err(|e| PlanError::Invalid(e.to_string()))
    }

    fn served<'a>(&self, global: &'a ParameterSet) -> Result<Cow<'a, ParameterSet>, PlanError> {
        if self.multitask.is_some() {
            return Err(PlanError::Invalid(
                "multitask: the run serves each task its own model (the body and the task's \
                 head), not one model"
                    .into(),
            ));
        }
        match self.clusters() {
            None => Ok(Cow::Borrowed(global)),
            Some(k) => Ifca::served(global, k)
                .map(Cow::Owned)
                .map_err(|e| PlanError::Invalid(e.to_string())),
        }
    }

    fn strategy(&self) -> Result<Box<dyn Strategy>, PlanError> {
        if let Some(multitask) = &self.multitask {
            return Ok(Box::new(Multitask {
                tasks: multitask.tasks.iter().map(|t| t.sites.clone()).collect(),
                server_lr: self.strategy_config().server_lr.unwrap_or(1.0),
            }));
        }
        self.strategy_config()
            .build(self.federation.strategy)
            .map_err(|e| PlanError::Invalid(e.to_string()))
    }

    fn central_dp(
        &self,
        key: [u8; 32],
        n_participants: usize,
    ) -> Result<Option<(CentralDp, Ledger)>, PlanError> {
        if self.privacy.mode != tessera_privacy::PrivacyMode::Central {
            return Ok(None);
        }
        let cohort = ((n_participants as f64) * self.federation.fraction).ceil() as usize;
        self.central_dp_for_cohort(key, cohort.max(self.federation.min_participants))
    }

    fn central_dp_for_cohort(
        &self,
        key: [u8; 32],
        cohort: usize,
    ) -> Result<Option<(CentralDp, Ledger)>, PlanError> {
        if self.privacy.mode != tessera_privacy::PrivacyMode::Central {
            return Ok(None);
        }
        let invalid = |e: tessera_privacy::PrivacyError| PlanError::Invalid(e.to_string());
        let z = self
            .privacy
            .noise_multiplier_for(self.federation.rounds)
            .map_err(invalid)?;
        let dp = CentralDp::new(
            z,
            self.privacy.clip_norm,
            self.privacy.adaptive_clipping.clone(),
            cohort,
            key,
        )
        .map_err(invalid)?;
        Ok(Some((dp, self.privacy.ledger())))
    }
}

/// Refuses a task's `instructions` that are not those `plan`'s strategy
/// gives `site` (another kind, or other settings: a coordinator asking a
/// site for more local work, another method, or another task's head, than
/// the plan it agreed to).
pub fn check_instructions(
    plan: &Plan,
    global: &tessera_core::ParameterSet,
    instructions: &tessera_aggregate::Instructions,
    site: &str,
) -> Result<(), String> {
    let strategy = plan.strategy().map_err(|e| e.to_string())?;
    let expected = strategy.configure_fit(global, &tessera_core::ParticipantId::new(site));
    if instructions.agrees_with(&expected) {
        Ok(())
    } else {
        Err(format!(
            "the coordinator's task asks for {instructions}, not what the plan's strategy {} \
             gives ({expected}); this site does not train it",
            plan.federation.strategy
        ))
    }
}

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tessera_aggregate::{Instructions, StrategyConfig, StrategyKind};

    use super::*;

    /// A coordinator that asks a site for more head passes than the plan
    /// says, or another method, is refused; the plan's own instructions pass.
    #[test]
    fn instructions_other_than_the_plans_are_refused() {
        let mut plan = Plan::default();
        plan.federation.strategy = StrategyKind::FedRep;
        plan.strategies.insert(
            "fedrep".into(),
            StrategyConfig {
                head_passes: Some(3),
                ..Default::default()
            },
        );
        let global = tessera_core::ParameterSet::new();
        let fedrep = |head_passes| Instructions::FedRep {
            head_layers: 1,
            head_passes,
        };
        assert!(check_instructions(&plan, &global, &fedrep(3), "site").is_ok());
        let e = check_instructions(&plan, &global, &fedrep(100), "site").unwrap_err();
        assert!(e.contains("fedrep (head_layers 1, head_passes 100)"), "{e}");
        assert!(
            e.contains("gives (fedrep (head_layers 1, head_passes 3))"),
            "{e}"
        );
        assert!(check_instructions(&plan, &global, &Instructions::Plain, "site").is_err());
        plan.federation.strategy = StrategyKind::FedAvg;
        assert!(check_instructions(&plan, &global, &Instructions::Plain, "site").is_ok());
        assert!(check_instructions(&plan, &global, &fedrep(3), "site").is_err());
    }
}
