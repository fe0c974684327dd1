//! Asynchronous buffered aggregation (FedBuff, Nguyen et al. 2022).

use std::sync::Arc;

use tessera_aggregate::{Strategy, UpdateAccumulator};
use tessera_core::{ParameterSet, ParticipantId, Update};

use crate::{EngineError, Plan, PlanBuild, StalenessWeighting};

/// Why an asynchronous update did not count.
#[derive(Debug, Clone, PartialEq)]
pub enum AsyncRejection {
    /// The model it trained from is more than the bound behind.
    Stale {
        /// Steps behind.
        staleness: u32,
        /// The bound.
        bound: u32,
    },
    /// It claims a model version the server has not made yet.
    FromTheFuture(u32),
    /// The update is malformed.
    Invalid(String),
}

impl AsyncRejection {
    /// Its reason as a metric label: `stale`, `wrong_round` or `invalid`.
    pub fn label(&self) -> &'static str {
        match self {
            AsyncRejection::Stale { .. } => "stale",
            AsyncRejection::FromTheFuture(_) => "wrong_round",
            AsyncRejection::Invalid(_) => "invalid",
        }
    }
}

impl std::fmt::Display for AsyncRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AsyncRejection::Stale { staleness, bound } => {
                write!(
                    f,
                    "update is {staleness} steps stale, more than the bound of {bound}"
                )
            }
            AsyncRejection::FromTheFuture(v) => write!(
                f,
                "update claims model version {v}, which does not exist yet"
            ),
            AsyncRejection::Invalid(reason) => write!(f, "invalid update: {reason}"),
        }
    }
}

/// The attendance of every asynchronous step, live or replayed: a step has
/// no cohort, only the updates its buffer held.
const NO_COHORT: tessera_aggregate::Attendance = tessera_aggregate::Attendance {
    cohort: Vec::new(),
    counted: Vec::new(),
    failures: Vec::new(),
};

/// A server step: what the buffer held when it was applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The new model version (steps taken).
    pub version: u32,
    /// Who contributed, in arrival order, with each update's staleness.
    pub contributions: Vec<(ParticipantId, u32)>,
    /// Examples behind the buffered updates.
    pub n_examples: u64,
    /// Weighted mean training loss.
    pub mean_train_loss: f64,
    /// The aggregate the strategy applied (what a restart replays).
    pub aggregate: tessera_aggregate::RoundAggregate,
}

/// The asynchronous engine: participants train from whatever model version
/// they last received; each accepted update enters a buffer weighted by its
/// example count times `s(τ)`, τ its staleness; every `buffer_size` updates
/// the strategy applies the buffer's mean (normalised by examples, so stale
/// updates count less) and the model version advances.
pub struct BufferedEngine {
    strategy: Box<dyn Strategy>,
    global: Arc<ParameterSet>,
    version: u32,
    steps: u32,
    buffer_size: usize,
    max_staleness: u32,
    weighting: StalenessWeighting,
    n_participants: usize,
    accumulator: UpdateAccumulator,
    contributions: Vec<(ParticipantId, u32)>,
}

impl BufferedEngine {
    /// An engine for `plan` (its `rounds` are the server steps) starting from `initial`.
    pub fn new(
        plan: &Plan,
        initial: ParameterSet,
        n_participants: usize,
    ) -> Result<Self, EngineError> {
        let strategy = plan.strategy()?;
        if let Some(aux) = strategy.aux_sum() {
            return Err(EngineError::State(format!(
                "{}'s {aux} needs synchronous rounds",
                strategy.name()
            )));
        }
        let accumulator = UpdateAccumulator::new(&initial, None);
        Ok(Self {
            strategy,
            global: Arc::new(initial),
            version: 0,
            steps: plan.federation.rounds,
            buffer_size: plan.federation.buffer_size,
            max_staleness: plan.federation.max_staleness,
            weighting: plan.federation.staleness,
            n_participants,
            accumulator,
            contributions: Vec::new(),
        })
    }

    /// An engine resuming a run: the stored steps' aggregates are replayed
    /// through the strategy from `initial`, rebuilding its state.
    pub fn resume(
        plan: &Plan,
        initial: ParameterSet,
        n_participants: usize,
        steps: &[tessera_aggregate::RoundAggregate],
    ) -> Result<Self, EngineError> {
        let mut engine = Self::new(plan, initial, n_participants)?;
        for aggregate in steps {
            let next = engine
                .strategy
                .aggregate_fit(&engine.global, aggregate, &NO_COHORT)?;
            engine.global = Arc::new(next);
            engine.version += 1;
        }
        engine.accumulator = UpdateAccumulator::new(&engine.global, None);
        Ok(engine)
    }

    /// What the strategy tells `id` to add to local training from the
    /// current model (FedProx's pull; strategies with state at the sites are
    /// refused in asynchronous runs).
    pub fn instructions_for(
        &self,
        id: &tessera_core::ParticipantId,
    ) -> tessera_aggregate::Instructions {
        self.strategy.configure_fit(&self.global, id)
    }

    /// The run's strategy (its evaluate half aggregates the sites'
    /// evaluations of each step's model).
    pub fn strategy(&self) -> &dyn tessera_aggregate::Strategy {
        self.strategy.as_ref()
    }

    /// The current model and its version.
    pub fn current(&self) -> (Arc<ParameterSet>, u32) {
        (Arc::clone(&self.global), self.version)
    }

    /// Whether every step has been taken.
    pub fn is_finished(&self) -> bool {
        self.version >= self.steps
    }

    /// Updates in the buffer.
    pub fn buffered(&self) -> usize {
        self.contributions.len()
    }

    /// The staleness of an update trained from model version `base`, or why
    /// it is refused (from the future, or past the staleness bound).
    pub fn admit(&self, base: u32) -> Result<u32, AsyncRejection> {
        if base > self.version {
            return Err(AsyncRejection::FromTheFuture(base));
        }
        let staleness = self.version - base;
        if staleness > self.max_staleness {
            return Err(AsyncRejection::Stale {
                staleness,
                bound: self.max_staleness,
            });
        }
        Ok(staleness)
    }

    /// The plan's staleness discount `s(staleness)`: what a securely
    /// aggregated update is multiplied by at its site, before masking.
    pub fn staleness_factor(&self, staleness: u32) -> f64 {
        self.weighting.factor(staleness)
    }

    /// Multiplies `update`'s change by `factor` (a staleness discount), in
    /// `f64` and rounded back, as every site does before masking (at 1 it
    /// is left alone).
    pub fn discount(update: &mut Update, factor: f64) {
        if factor != 1.0 {
            for v in update.delta.values_mut() {
                *v = (f64::from(*v) * factor) as f32;
            }
        }
    }

    /// Updates a step takes.
    pub fn buffer_size(&self) -> usize {
        self.buffer_size
    }

    /// Secure aggregation: takes a step from the sum of a full buffer's
    /// updates, each multiplied by its own staleness discount at its site
    /// (`contributions`: who, with the staleness [`BufferedEngine::admit`]
    /// gave). The step's update is the sum over the contributors' number:
    /// each update counts with weight `s(staleness)`, not by its examples
    /// (the coordinator sees only the sum). A full buffer in simulation; in
    /// deployment the survivors of its secure round, which may be fewer
    /// (members that dropped are left out, as in a synchronous secure
    /// round). Refuses an empty or overfull set, a contributor named twice,
    /// or a sum the strategy cannot apply; on refusal nothing changes.
    pub fn submit_sum(
        &mut self,
        contributions: Vec<(ParticipantId, u32)>,
        sum: &Update,
    ) -> Result<Step, AsyncRejection> {
        if !self.contributions.is_empty() {
            return Err(AsyncRejection::Invalid(
                "a secure buffer's sum cannot join individually submitted updates".into(),
            ));
        }
        let mut who: Vec<&ParticipantId> = contributions.iter().map(|(p, _)| p).collect();
        who.sort();
        who.dedup();
        if contributions.is_empty()
            || contributions.len() > self.buffer_size
            || who.len() != contributions.len()
        {
            return Err(AsyncRejection::Invalid(format!(
                "a secure buffer's sum is of 1 to {} distinct contributors; {} sent, {} distinct",
                self.buffer_size,
                contributions.len(),
                who.len()
            )));
        }
        let mut buffer = UpdateAccumulator::new(&self.global, None);
        buffer
            .add_sum(sum, contributions.len() as u64)
            .map_err(|e| AsyncRejection::Invalid(format!("the securely aggregated sum: {e}")))?;
        self.step(&buffer, contributions)
    }

    /// Applies a full buffer's mean through the strategy: the next version.
    /// On error nothing changes.
    fn step(
        &mut self,
        buffer: &UpdateAccumulator,
        contributions: Vec<(ParticipantId, u32)>,
    ) -> Result<Step, AsyncRejection> {
        let aggregate = buffer
            .finish(self.n_participants)
            .map_err(|e| AsyncRejection::Invalid(e.to_string()))?;
        let next = self
            .strategy
            .aggregate_fit(&self.global, &aggregate, &NO_COHORT)
            .map_err(|e| AsyncRejection::Invalid(e.to_string()))?;
        self.global = Arc::new(next);
        self.version += 1;
        Ok(Step {
            version: self.version,
            contributions,
            n_examples: aggregate.n_examples,
            mean_train_loss: aggregate.mean_train_loss,
            aggregate,
        })
    }

    /// Delivers `from`'s update, trained from model version `base`; returns
    /// the step it completed, if any.
    pub fn submit(
        &mut self,
        from: &ParticipantId,
        base: u32,
        update: &Update,
    ) -> Result<Option<Step>, AsyncRejection> {
        let staleness = self.admit(base)?;
        let examples = self.strategy.weight(update);
        let weight = examples * self.weighting.factor(staleness);
        self.accumulator
            .add_normalized(update, weight, examples)
            .map_err(|e| AsyncRejection::Invalid(e.to_string()))?;
        self.contributions.push((from.clone(), staleness));
        if self.contributions.len() < self.buffer_size {
            return Ok(None);
        }
        let fresh = UpdateAccumulator::new(&self.global, None);
        let buffer = std::mem::replace(&mut self.accumulator, fresh);
        let contributions = std::mem::take(&mut self.contributions);
        self.step(&buffer, contributions).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::{FitStats, Tensor};

    fn plan(buffer: usize, bound: u32) -> Plan {
        let text = format!(
            "[data]\npath = \"d.csv\"\nsite_column = \"s\"\n[data.schema]\ntarget = \"y\"\n[model]\nkind = \"logistic\"\n\
             [federation]\nrounds = 3\nmode = \"async\"\nbuffer_size = {buffer}\nmax_staleness = {bound}\n\
             [privacy]\nsite_metrics = \"clear\"\n"
        );
        Plan::from_toml(&text, "t").unwrap()
    }

    fn update(v: f32, n: u64) -> Update {
        let mut p = ParameterSet::new();
        p.push("w", Tensor::new(vec![1], vec![v]).unwrap()).unwrap();
        Update {
            delta: p,
            n_examples: n,
            aux: None,
            stats: FitStats::default(),
        }
    }

    #[test]
    fn steps_every_k_updates_with_staleness_discount() {
        let mut e = BufferedEngine::new(&plan(2, 1), update(0.0, 1).delta, 3).unwrap();
        let a = ParticipantId::new("a");
        assert_eq!(e.submit(&a, 0, &update(1.0, 1)).unwrap(), None);
        let step = e.submit(&a, 0, &update(3.0, 1)).unwrap().unwrap();
        assert_eq!(step.version, 1);
        // Both fresh: mean 2.
        assert_eq!(e.current().0.values().collect::<Vec<_>>(), [2.0]);
        // One fresh (weight 1), one a step old (weight 1/sqrt 2), normalised by examples (2).
        e.submit(&a, 1, &update(4.0, 1)).unwrap();
        e.submit(&a, 0, &update(4.0, 1)).unwrap();
        let expected = 2.0 + (4.0 + 4.0 / 2f64.sqrt()) / 2.0;
        assert!((f64::from(e.current().0.values().next().unwrap()) - expected).abs() < 1e-5);
        // Two steps behind with a bound of 1: refused.
        assert_eq!(
            e.submit(&a, 0, &update(1.0, 1)),
            Err(AsyncRejection::Stale {
                staleness: 2,
                bound: 1
            })
        );
        assert_eq!(
            e.submit(&a, 9, &update(1.0, 1)),
            Err(AsyncRejection::FromTheFuture(9))
        );
        assert!(e.submit(&a, 2, &update(f32::NAN, 1)).is_err());
        assert_eq!(
            e.buffered(),
            0,
            "a refused update leaves the buffer as it was"
        );
    }

    /// A secure buffer's step (the sum of updates each discounted at its
    /// site) equals the plain step over the same updates when their example
    /// counts are equal; no one, more than the buffer or a site twice is
    /// refused and leaves the engine as it was.
    #[test]
    fn a_secure_buffers_sum_steps_as_its_updates_would() {
        let start = update(0.0, 1).delta;
        let mut plain = BufferedEngine::new(&plan(3, 5), start.clone(), 3).unwrap();
        let mut secure = BufferedEngine::new(&plan(3, 5), start, 3).unwrap();
        let (a, b, c) = (
            ParticipantId::new("a"),
            ParticipantId::new("b"),
            ParticipantId::new("c"),
        );
        // One step first, so that base 0 is a step stale.
        for p in [&a, &b, &c] {
            plain.submit(p, 0, &update(1.0, 7)).unwrap();
        }
        let three = vec![(a.clone(), 0), (b.clone(), 0), (c.clone(), 0)];
        secure.submit_sum(three, &update(3.0, 21)).unwrap();
        assert_eq!(plain.current(), secure.current());
        // Bases 1, 0, 1: staleness 0, 1, 0.
        let inputs = [(&a, 1, 2.0f32), (&b, 0, 4.0), (&c, 1, -1.0)];
        let mut sum = 0.0f64;
        let mut contributions = Vec::new();
        for &(p, base, v) in &inputs {
            plain.submit(p, base, &update(v, 7)).unwrap();
            let staleness = secure.admit(base).unwrap();
            sum += f64::from(v) * secure.staleness_factor(staleness);
            contributions.push((p.clone(), staleness));
        }
        assert_eq!(contributions[1].1, 1);
        // Refused: no one, more than the buffer, a site twice; the engine is unchanged.
        let before = secure.current();
        assert!(secure.submit_sum(Vec::new(), &update(0.0, 21)).is_err());
        let four = [contributions.clone(), vec![(ParticipantId::new("d"), 0)]].concat();
        assert!(secure.submit_sum(four, &update(sum as f32, 28)).is_err());
        let twice = vec![
            contributions[0].clone(),
            contributions[0].clone(),
            contributions[2].clone(),
        ];
        assert!(secure.submit_sum(twice, &update(sum as f32, 21)).is_err());
        assert_eq!(secure.current(), before);
        let step = secure
            .submit_sum(contributions, &update(sum as f32, 21))
            .unwrap();
        assert_eq!(step.version, 2);
        let (p, s) = (plain.current().0, secure.current().0);
        let (p, s) = (p.values().next().unwrap(), s.values().next().unwrap());
        assert!((p - s).abs() < 1e-6, "plain {p}, secure {s}");
    }

    /// A buffer round whose members dropped steps with its survivors' sum
    /// over their number: two of three, each fresh, give their mean.
    #[test]
    fn a_secure_buffers_survivors_step_with_their_mean() {
        let mut engine = BufferedEngine::new(&plan(3, 5), update(0.0, 1).delta, 3).unwrap();
        let two = vec![(ParticipantId::new("a"), 0), (ParticipantId::new("c"), 0)];
        let step = engine.submit_sum(two, &update(5.0, 14)).unwrap();
        assert_eq!(step.contributions.len(), 2);
        assert_eq!(engine.current().0.values().collect::<Vec<_>>(), [2.5]);
    }
}
