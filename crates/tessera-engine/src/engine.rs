//! The round engine state machine.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tessera_aggregate::{FitInstructions, RoundAggregate, Strategy, UpdateAccumulator};
use tessera_core::{ParameterSet, ParticipantId, SeededRng, Timestamp, Update, duration_from_secs};

use crate::{EngineError, Plan, streams};

/// What the engine needs to know from a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Rounds to run.
    pub rounds: u32,
    /// Share of available participants in each cohort.
    pub fraction: f64,
    /// Smallest cohort.
    pub min_participants: usize,
    /// Fewest accepted updates for a round to count.
    pub quorum: usize,
    /// How long a round waits for updates.
    pub deadline: Option<Duration>,
    /// Run seed (cohort sampling).
    pub seed: u64,
}

impl EngineConfig {
    /// The engine settings of a plan.
    pub fn from_plan(plan: &Plan) -> Self {
        let f = &plan.federation;
        Self {
            rounds: f.rounds,
            fraction: f.fraction,
            min_participants: f.min_participants,
            quorum: f.quorum,
            deadline: f.deadline_seconds.map(duration_from_secs),
            seed: plan.seed,
        }
    }
}

/// What every cohort member receives for a round.
#[derive(Debug, Clone)]
pub struct FitTask {
    /// Round number, from 1.
    pub round: u32,
    /// The global parameters to start from.
    pub global: Arc<ParameterSet>,
    /// What the strategy adds to local training.
    pub instructions: FitInstructions,
    /// When the round stops waiting.
    pub deadline: Option<Timestamp>,
}

/// A round the engine has opened.
#[derive(Debug, Clone)]
pub struct RoundStart {
    /// The cohort, sorted.
    pub cohort: Vec<ParticipantId>,
    /// The task each cohort member runs.
    pub task: FitTask,
}

/// Why an update did not count.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// No round is open, or it is another round.
    WrongRound {
        /// The round the update is for.
        got: u32,
        /// The open round, if any.
        open: Option<u32>,
    },
    /// The sender is not in this round's cohort.
    NotInCohort,
    /// The sender already submitted, dropped out, or was cut off.
    NotPending,
    /// The update arrived after the deadline.
    Late,
    /// The update is malformed: wrong layout, non-finite, out of range.
    Invalid(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::WrongRound {
                got,
                open: Some(open),
            } => write!(f, "update for round {got}, round {open} is open"),
            Rejection::WrongRound { got, open: None } => {
                write!(f, "update for round {got}, no round is open")
            }
            Rejection::NotInCohort => f.write_str("sender is not in this round's cohort"),
            Rejection::NotPending => f.write_str("sender already submitted or left this round"),
            Rejection::Late => f.write_str("update arrived after the round's deadline"),
            Rejection::Invalid(reason) => write!(f, "invalid update: {reason}"),
        }
    }
}

/// How a round ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RoundStatus {
    /// The global model moved.
    Completed,
    /// Too few updates: the model stays as it was.
    QuorumNotMet {
        /// Updates accepted.
        accepted: usize,
        /// Updates needed.
        needed: usize,
    },
    /// Aggregation failed: the model stays as it was.
    Failed(String),
}

/// A closed round.
#[derive(Debug, Clone)]
pub struct RoundOutcome {
    /// Round number.
    pub round: u32,
    /// How it ended.
    pub status: RoundStatus,
    /// The cohort.
    pub cohort: Vec<ParticipantId>,
    /// Whose updates counted.
    pub accepted: Vec<ParticipantId>,
    /// Who had not answered at the deadline (they are told to stop).
    pub stragglers: Vec<ParticipantId>,
    /// Who dropped out.
    pub dropped: Vec<ParticipantId>,
    /// Updates refused, with the reason.
    pub rejected: Vec<(ParticipantId, String)>,
    /// Examples behind the accepted updates.
    pub n_examples: u64,
    /// Weighted mean of the accepted participants' training losses.
    pub mean_train_loss: f64,
    /// When the round opened.
    pub opened_at: Timestamp,
    /// When it closed.
    pub closed_at: Timestamp,
    /// The aggregate the strategy applied (completed rounds): with it a
    /// restarted coordinator replays the strategy's state exactly.
    pub aggregate: Option<RoundAggregate>,
}

struct OpenRound {
    number: u32,
    cohort: Vec<ParticipantId>,
    pending: BTreeSet<ParticipantId>,
    accepted: Vec<ParticipantId>,
    dropped: Vec<ParticipantId>,
    rejected: Vec<(ParticipantId, String)>,
    accumulator: UpdateAccumulator,
    opened_at: Timestamp,
    deadline: Option<Timestamp>,
}

/// The deterministic round engine.
///
/// A driver calls [`RoundEngine::begin_round`], delivers the cohort's updates
/// with [`RoundEngine::submit`] (or reports dropouts), and calls
/// [`RoundEngine::poll`] with the current time; the round closes when every
/// cohort member has answered or the deadline has passed. The engine decides
/// everything else (cohort, acceptance, aggregation) from the plan, the seed
/// and the inputs alone.
pub struct RoundEngine {
    config: EngineConfig,
    strategy: Box<dyn Strategy>,
    global: Arc<ParameterSet>,
    participants: BTreeSet<ParticipantId>,
    rounds_closed: u32,
    open: Option<OpenRound>,
}

impl RoundEngine {
    /// An engine starting from `initial` parameters.
    pub fn new(config: EngineConfig, strategy: Box<dyn Strategy>, initial: ParameterSet) -> Self {
        Self {
            config,
            strategy,
            global: Arc::new(initial),
            participants: BTreeSet::new(),
            rounds_closed: 0,
            open: None,
        }
    }

    /// An engine resuming a run: `strategy` has already replayed the closed
    /// rounds' aggregates (see [`RoundEngine::replay`]), `global` is the
    /// model after `rounds_closed` rounds.
    pub fn restore(
        config: EngineConfig,
        strategy: Box<dyn Strategy>,
        global: ParameterSet,
        rounds_closed: u32,
    ) -> Self {
        let mut engine = Self::new(config, strategy, global);
        engine.rounds_closed = rounds_closed;
        engine
    }

    /// Replays a closed round's aggregate through `strategy` (rebuilding its
    /// state) and returns the parameters it gives.
    pub fn replay(
        strategy: &mut dyn Strategy,
        global: &ParameterSet,
        aggregate: &RoundAggregate,
    ) -> Result<ParameterSet, EngineError> {
        Ok(strategy.aggregate_fit(global, aggregate)?)
    }

    /// Reopens round `number` (the next one) with the cohort and start time it
    /// had before a restart; updates it had accepted are then submitted again.
    pub fn reopen_round(
        &mut self,
        number: u32,
        cohort: Vec<ParticipantId>,
        opened_at: Timestamp,
    ) -> Result<RoundStart, EngineError> {
        if self.open.is_some() || number != self.rounds_closed + 1 {
            return Err(EngineError::State(format!(
                "cannot reopen round {number}: {} rounds are closed",
                self.rounds_closed
            )));
        }
        let mut cohort = cohort;
        cohort.sort();
        cohort.dedup();
        let instructions = self.strategy.configure_fit(&self.global);
        let deadline = self.config.deadline.map(|d| opened_at.plus(d));
        self.open = Some(OpenRound {
            number,
            pending: cohort.iter().cloned().collect(),
            cohort: cohort.clone(),
            accepted: Vec::new(),
            dropped: Vec::new(),
            rejected: Vec::new(),
            accumulator: UpdateAccumulator::new(&self.global, self.strategy.needs_control_deltas()),
            opened_at,
            deadline,
        });
        Ok(RoundStart {
            cohort,
            task: FitTask {
                round: number,
                global: Arc::clone(&self.global),
                instructions,
                deadline,
            },
        })
    }

    /// The participants registered.
    pub fn participants(&self) -> impl Iterator<Item = &ParticipantId> {
        self.participants.iter()
    }

    /// Whether `id` still owes the open round an update.
    pub fn is_pending(&self, id: &ParticipantId) -> bool {
        self.open.as_ref().is_some_and(|r| r.pending.contains(id))
    }

    /// The open round's task, as its cohort received it.
    pub fn open_task(&self) -> Option<FitTask> {
        let open = self.open.as_ref()?;
        Some(FitTask {
            round: open.number,
            global: Arc::clone(&self.global),
            instructions: self.strategy.configure_fit(&self.global),
            deadline: open.deadline,
        })
    }

    /// Adds a participant to the federation (from the next round on).
    pub fn register(&mut self, id: ParticipantId) {
        self.participants.insert(id);
    }

    /// The current global parameters.
    pub fn global(&self) -> &Arc<ParameterSet> {
        &self.global
    }

    /// The strategy's name.
    pub fn strategy_name(&self) -> &'static str {
        self.strategy.name()
    }

    /// Rounds closed so far.
    pub fn rounds_closed(&self) -> u32 {
        self.rounds_closed
    }

    /// Whether every planned round has closed.
    pub fn is_finished(&self) -> bool {
        self.rounds_closed >= self.config.rounds
    }

    /// The open round's number.
    pub fn open_round(&self) -> Option<u32> {
        self.open.as_ref().map(|r| r.number)
    }

    /// When the open round stops waiting, if it has a deadline.
    pub fn deadline(&self) -> Option<Timestamp> {
        self.open.as_ref().and_then(|r| r.deadline)
    }

    /// Whether an update arriving at `at` from `id` would still be in time.
    pub fn would_accept_at(&self, id: &ParticipantId, at: Timestamp) -> bool {
        self.open
            .as_ref()
            .is_some_and(|r| r.pending.contains(id) && r.deadline.is_none_or(|d| at <= d))
    }

    /// Opens the next round: samples the cohort and returns the task.
    pub fn begin_round(&mut self, now: Timestamp) -> Result<RoundStart, EngineError> {
        if let Some(open) = &self.open {
            return Err(EngineError::State(format!(
                "round {} is still open",
                open.number
            )));
        }
        if self.is_finished() {
            return Err(EngineError::State(format!(
                "all {} rounds are done",
                self.config.rounds
            )));
        }
        let number = self.rounds_closed + 1;
        let available = self.participants.len();
        if available < self.config.min_participants || available == 0 {
            return Err(EngineError::NotEnoughParticipants {
                round: number,
                needed: self.config.min_participants.max(1),
                available,
            });
        }
        let wanted = ((available as f64) * self.config.fraction).ceil() as usize;
        let size = wanted.max(self.config.min_participants).min(available);
        if self.config.quorum > size {
            return Err(EngineError::State(format!(
                "round {number}: the quorum of {} updates can never be met by a cohort of {size}",
                self.config.quorum
            )));
        }
        let mut everyone: Vec<ParticipantId> = self.participants.iter().cloned().collect();
        if size < available {
            SeededRng::derived(self.config.seed, &[streams::COHORT, u64::from(number)])
                .shuffle(&mut everyone);
            everyone.truncate(size);
            everyone.sort();
        }
        let instructions = self.strategy.configure_fit(&self.global);
        let deadline = self.config.deadline.map(|d| now.plus(d));
        self.open = Some(OpenRound {
            number,
            pending: everyone.iter().cloned().collect(),
            cohort: everyone.clone(),
            accepted: Vec::new(),
            dropped: Vec::new(),
            rejected: Vec::new(),
            accumulator: UpdateAccumulator::new(&self.global, self.strategy.needs_control_deltas()),
            opened_at: now,
            deadline,
        });
        Ok(RoundStart {
            cohort: everyone,
            task: FitTask {
                round: number,
                global: Arc::clone(&self.global),
                instructions,
                deadline,
            },
        })
    }

    /// Delivers `from`'s update for `round`, received at `now`. An accepted
    /// update is in the round's aggregate when this returns.
    pub fn submit(
        &mut self,
        now: Timestamp,
        from: &ParticipantId,
        round: u32,
        update: &Update,
    ) -> Result<(), Rejection> {
        let open_number = self.open.as_ref().map(|r| r.number);
        let Some(open) = self.open.as_mut().filter(|r| r.number == round) else {
            return Err(Rejection::WrongRound {
                got: round,
                open: open_number,
            });
        };
        if open.cohort.binary_search(from).is_err() {
            return Err(Rejection::NotInCohort);
        }
        if !open.pending.contains(from) {
            return Err(Rejection::NotPending);
        }
        if open.deadline.is_some_and(|d| now > d) {
            return Err(Rejection::Late);
        }
        let weight = self.strategy.weight(update);
        match open.accumulator.add(update, weight) {
            Ok(()) => {
                open.pending.remove(from);
                open.accepted.push(from.clone());
                Ok(())
            }
            Err(e) => {
                let reason = e.to_string();
                open.pending.remove(from);
                open.rejected.push((from.clone(), reason.clone()));
                Err(Rejection::Invalid(reason))
            }
        }
    }

    /// Records that `id` left the open round.
    pub fn report_dropout(&mut self, id: &ParticipantId) {
        if let Some(open) = self.open.as_mut()
            && open.pending.remove(id)
        {
            open.dropped.push(id.clone());
        }
    }

    /// Closes the open round if everyone has answered or its deadline has
    /// passed at `now`, aggregating what was accepted.
    pub fn poll(&mut self, now: Timestamp) -> Option<RoundOutcome> {
        let open = self.open.as_ref()?;
        let expired = open.deadline.is_some_and(|d| now >= d);
        if !open.pending.is_empty() && !expired {
            return None;
        }
        let open = self.open.take()?;
        self.rounds_closed += 1;
        let n_accepted = open.accepted.len();
        let aggregate = open.accumulator.finish(self.participants.len());
        let mut applied = None;
        let (status, n_examples, mean_train_loss) = if n_accepted < self.config.quorum {
            (
                RoundStatus::QuorumNotMet {
                    accepted: n_accepted,
                    needed: self.config.quorum,
                },
                0,
                0.0,
            )
        } else {
            match aggregate.and_then(|a: RoundAggregate| {
                let next = self.strategy.aggregate_fit(&self.global, &a)?;
                next.check_finite()?;
                Ok((next, a))
            }) {
                Ok((next, a)) => {
                    self.global = Arc::new(next);
                    let summary = (RoundStatus::Completed, a.n_examples, a.mean_train_loss);
                    applied = Some(a);
                    summary
                }
                Err(e) => (RoundStatus::Failed(e.to_string()), 0, 0.0),
            }
        };
        let mut accepted = open.accepted;
        accepted.sort();
        let mut dropped = open.dropped;
        dropped.sort();
        Some(RoundOutcome {
            round: open.number,
            status,
            cohort: open.cohort,
            accepted,
            stragglers: open.pending.into_iter().collect(),
            dropped,
            rejected: {
                let mut rejected = open.rejected;
                rejected.sort();
                rejected
            },
            n_examples,
            mean_train_loss,
            opened_at: open.opened_at,
            closed_at: now,
            aggregate: applied,
        })
    }
}
