//! An aggregator's round below the root of a hierarchy: every member in
//! every round, each told what the plan's strategy tells it, their mean
//! update sent up.

use tessera_aggregate::{
    AggregateError, Attendance, FedAvg, Instructions, RoundAggregate, Strategy,
};
use tessera_core::{ParameterSet, ParticipantId, Update};

use crate::{EngineConfig, EngineError, Plan, PlanBuild, RoundEngine};

impl EngineConfig {
    /// An aggregator's settings below the root: every member in every
    /// round, one update enough, the plan's deadline.
    pub fn below_root(plan: &Plan) -> Self {
        Self {
            fraction: 1.0,
            min_participants: 1,
            quorum: 1,
            ..Self::from_plan(plan)
        }
    }
}

/// An aggregator's strategy: its members get the instructions the plan's
/// strategy gives each of them (FedProx's pull reaches the sites), and
/// their updates combine as FedAvg at server learning rate 1, so that its
/// new model is the round's model plus its members' weighted mean update;
/// the root applies the plan's strategy to what the aggregators send up.
struct Regional {
    plan: Box<dyn Strategy>,
    mean: FedAvg,
}

impl Strategy for Regional {
    fn name(&self) -> &'static str {
        self.mean.name()
    }

    fn configure_fit(&self, global: &ParameterSet, site: &ParticipantId) -> Instructions {
        self.plan.configure_fit(global, site)
    }

    fn check_update(
        &self,
        from: &ParticipantId,
        update: &tessera_core::Update,
    ) -> Result<(), AggregateError> {
        self.plan.check_update(from, update)
    }

    fn aggregate_fit(
        &mut self,
        global: &ParameterSet,
        round: &RoundAggregate,
        attendance: &Attendance,
    ) -> Result<ParameterSet, AggregateError> {
        self.mean.aggregate_fit(global, round, attendance)
    }
}

/// An aggregator's engine for `round` of the model `global` its parent
/// sent (see [`Regional`]).
pub fn aggregator_engine(
    plan: &Plan,
    global: ParameterSet,
    round: u32,
) -> Result<RoundEngine, EngineError> {
    let strategy = Regional {
        plan: plan.strategy()?,
        mean: FedAvg { server_lr: 1.0 },
    };
    Ok(RoundEngine::restore(
        EngineConfig::below_root(plan),
        Box::new(strategy),
        global,
        round.saturating_sub(1),
    ))
}

/// What an aggregator sends up for a completed round: its members' weighted
/// mean update, carrying all their examples (so that the parent's FedAvg
/// weights each site as the flat topology would).
pub fn upward_update(aggregate: RoundAggregate) -> Update {
    Update {
        delta: aggregate.mean_delta,
        n_examples: aggregate.n_examples,
        aux: None,
        stats: tessera_core::FitStats {
            n_steps: 0,
            mean_train_loss: aggregate.mean_train_loss,
            start_loss: None,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn members_get_the_plans_instructions_and_the_mean_moves_the_model() {
        let plan = Plan::from_toml(
            "[data]\npath = \"d.csv\"\nsite_column = \"site\"\n[data.schema]\ntarget = \"y\"\n\
             [model]\nkind = \"logistic\"\n[federation]\nstrategy = \"fedprox\"\n",
            "p.toml",
        )
        .unwrap();
        let mut p = ParameterSet::new();
        p.push("w", tessera_core::Tensor::new(vec![1], vec![1.0]).unwrap())
            .unwrap();
        let mut engine = aggregator_engine(&plan, p, 3).unwrap();
        let site = ParticipantId::new("a");
        engine.register(site.clone());
        assert_eq!(
            engine.instructions_for(&site),
            Instructions::Proximal { mu: 0.01 }
        );
        let start = engine.begin_round(tessera_core::Timestamp::ZERO).unwrap();
        assert_eq!(start.round, 3);
    }
}
