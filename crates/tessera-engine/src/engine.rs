//! The round engine state machine.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tessera_aggregate::{
    Attendance, Failure, Instructions, Robust, RobustConfig, RoundAggregate, Strategy,
    UpdateAccumulator,
};
use tessera_core::{ParameterSet, ParticipantId, SeededRng, Timestamp, duration_from_secs};
use tessera_privacy::{CentralDp, CentralRelease, Ledger, LedgerEntry, PrivacyConfig};

use crate::{EngineError, Plan, streams};

mod rejection;
mod selection;
mod submit;
pub use rejection::Rejection;

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
    /// How updates weigh in a round's mean.
    pub weighting: crate::Weighting,
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
            weighting: f.weighting,
        }
    }
}

/// What one cohort member receives for a round.
#[derive(Debug, Clone)]
pub struct FitTask {
    /// Round number, from 1.
    pub round: u32,
    /// The global parameters to start from.
    pub global: Arc<ParameterSet>,
    /// What the strategy tells this participant to add to local training.
    pub instructions: Instructions,
    /// When the round stops waiting.
    pub deadline: Option<Timestamp>,
}

/// A round the engine has opened: what its cohort members' tasks share.
/// Each member's own task is [`RoundStart::task`] with the instructions
/// [`RoundEngine::instructions_for`] gives it.
#[derive(Debug, Clone)]
pub struct RoundStart {
    /// The cohort, sorted.
    pub cohort: Vec<ParticipantId>,
    /// Round number, from 1.
    pub round: u32,
    /// The global parameters the cohort starts from.
    pub global: Arc<ParameterSet>,
    /// When the round stops waiting.
    pub deadline: Option<Timestamp>,
}

impl RoundStart {
    /// A cohort member's task, with the instructions the strategy gives it.
    pub fn task(&self, instructions: Instructions) -> FitTask {
        FitTask {
            round: self.round,
            global: Arc::clone(&self.global),
            instructions,
            deadline: self.deadline,
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
    /// With central DP: what the round released and its ledger entry.
    pub privacy: Option<(CentralRelease, LedgerEntry)>,
}

struct OpenRound {
    number: u32,
    cohort: Vec<ParticipantId>,
    pending: BTreeSet<ParticipantId>,
    accepted: Vec<ParticipantId>,
    dropped: Vec<ParticipantId>,
    rejected: Vec<(ParticipantId, String)>,
    accumulator: UpdateAccumulator,
    /// Robust rules: every accepted (bounded) update.
    collected: Vec<ParameterSet>,
    /// Central DP: accepted updates that were within the clipping norm.
    unclipped: u64,
    opened_at: Timestamp,
    deadline: Option<Timestamp>,
}

/// Who `open` asked, whose updates counted, and why the others' did not.
fn attendance(open: &OpenRound) -> Attendance {
    let mut counted = open.accepted.clone();
    counted.sort();
    let mut failures: Vec<(ParticipantId, Failure)> = open
        .dropped
        .iter()
        .map(|id| (id.clone(), Failure::Dropped))
        .chain(
            open.pending
                .iter()
                .map(|id| (id.clone(), Failure::TimedOut)),
        )
        .chain(
            open.rejected
                .iter()
                .map(|(id, why)| (id.clone(), Failure::Refused(why.clone()))),
        )
        .collect();
    failures.sort();
    Attendance {
        cohort: open.cohort.clone(),
        counted,
        failures,
    }
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
    dp: Option<(CentralDp, Ledger)>,
    /// Weights a cohort that is a part of the sites is drawn with.
    selection: Option<BTreeMap<ParticipantId, f64>>,
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
            dp: None,
            selection: None,
        }
    }

    /// Draws later rounds' cohorts (when a part of the sites) with these
    /// weights instead of uniformly (`None`: uniformly again); a site
    /// without a weight has 1.
    pub fn set_selection_weights(&mut self, weights: Option<BTreeMap<ParticipantId, f64>>) {
        self.selection = weights;
    }

    /// Adds client-level central DP: every update clipped, noise on the
    /// aggregate, every release recorded in `ledger` and refused before the
    /// round opens if it would exceed a budget.
    pub fn with_privacy(mut self, dp: CentralDp, ledger: Ledger) -> Self {
        self.dp = Some((dp, ledger));
        self
    }

    /// Gives the strategy the Byzantine-robust rule `robust` as its combine
    /// step ([`Robust`]).
    pub fn with_robust(self, robust: RobustConfig) -> Self {
        Self {
            strategy: Box::new(Robust::new(self.strategy, robust)),
            ..self
        }
    }

    /// The central DP mechanism and its ledger, when the run has DP.
    pub fn privacy(&self) -> Option<(&CentralDp, &Ledger)> {
        self.dp.as_ref().map(|(dp, ledger)| (dp, ledger))
    }

    /// Resuming a run: puts back a ledger entry of a closed round and the
    /// clipping norm it left for the next round.
    pub fn restore_privacy(
        &mut self,
        entry: LedgerEntry,
        next_clip_norm: f64,
    ) -> Result<(), EngineError> {
        let (dp, ledger) = self
            .dp
            .as_mut()
            .ok_or_else(|| EngineError::State("the run has no privacy ledger".into()))?;
        ledger.restore(entry)?;
        dp.set_clip_norm(next_clip_norm);
        Ok(())
    }

    /// Refuses the remaining rounds up front if together they would exceed a
    /// privacy budget, so that no work is done that could not be released.
    pub fn check_privacy_forecast(&self) -> Result<(), EngineError> {
        let Some((dp, ledger)) = &self.dp else {
            return Ok(());
        };
        let remaining = self.config.rounds.saturating_sub(self.rounds_closed);
        ledger.check_central_run(remaining, dp.noise_multiplier())?;
        Ok(())
    }

    fn new_round(
        &self,
        number: u32,
        cohort: Vec<ParticipantId>,
        opened_at: Timestamp,
    ) -> OpenRound {
        OpenRound {
            number,
            pending: cohort.iter().cloned().collect(),
            cohort,
            accepted: Vec::new(),
            dropped: Vec::new(),
            rejected: Vec::new(),
            accumulator: UpdateAccumulator::new(&self.global, self.strategy.aux_sum()),
            collected: Vec::new(),
            unclipped: 0,
            opened_at,
            deadline: self.config.deadline.map(|d| opened_at.plus(d)),
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
    /// state) and returns the parameters it gives; `attendance` is what
    /// was kept of the round's ([`Attendance::replayed`]).
    pub fn replay(
        strategy: &mut dyn Strategy,
        global: &ParameterSet,
        aggregate: &RoundAggregate,
        attendance: &Attendance,
    ) -> Result<ParameterSet, EngineError> {
        Ok(strategy.aggregate_fit(global, aggregate, attendance)?)
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
        let open = self.new_round(number, cohort.clone(), opened_at);
        let deadline = open.deadline;
        self.open = Some(open);
        Ok(RoundStart {
            cohort,
            round: number,
            global: Arc::clone(&self.global),
            deadline,
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

    /// What the strategy tells `id` to add to local training this round.
    pub fn instructions_for(&self, id: &ParticipantId) -> Instructions {
        self.strategy.configure_fit(&self.global, id)
    }

    /// The open round's task for `id`, as it received it.
    pub fn task_for(&self, id: &ParticipantId) -> Option<FitTask> {
        let open = self.open.as_ref()?;
        Some(FitTask {
            round: open.number,
            global: Arc::clone(&self.global),
            instructions: self.instructions_for(id),
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

    /// The run's strategy (its evaluate half aggregates the sites'
    /// evaluations).
    pub fn strategy(&self) -> &dyn Strategy {
        self.strategy.as_ref()
    }

    /// The strategy's name.
    pub fn strategy_name(&self) -> &'static str {
        self.strategy.name()
    }

    /// The auxiliary sum the strategy's updates carry, by name.
    pub fn aux_sum(&self) -> Option<&'static str> {
        self.strategy.aux_sum()
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

    /// Opens the next round among every registered participant.
    pub fn begin_round(&mut self, now: Timestamp) -> Result<RoundStart, EngineError> {
        let everyone = self.participants.clone();
        self.begin_round_among(now, &everyone)
    }

    /// Opens the next round among the registered participants in
    /// `available` (those the driver can reach now): samples the cohort
    /// from them and returns the task. No round opens with fewer than
    /// `min_participants` of them, nor with a cohort smaller than the
    /// quorum (`NotEnoughParticipants`: the driver waits and asks again).
    pub fn begin_round_among(
        &mut self,
        now: Timestamp,
        available: &BTreeSet<ParticipantId>,
    ) -> Result<RoundStart, EngineError> {
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
        let (min, quorum) = (self.config.min_participants.max(1), self.config.quorum);
        let cohort_of = |n: usize| {
            (((n as f64) * self.config.fraction).ceil() as usize)
                .max(min)
                .min(n)
        };
        let registered = self.participants.len();
        if registered >= min && quorum > cohort_of(registered) {
            return Err(EngineError::State(format!(
                "round {number}: the quorum of {quorum} updates can never be met by a cohort of {}",
                cohort_of(registered)
            )));
        }
        let mut everyone: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|p| available.contains(*p))
            .cloned()
            .collect();
        let reachable = everyone.len();
        let size = cohort_of(reachable);
        if reachable < min || size < quorum {
            let needed = (reachable..=registered.max(min))
                .find(|&n| n >= min && cohort_of(n) >= quorum)
                .unwrap_or(min.max(quorum));
            return Err(EngineError::NotEnoughParticipants {
                round: number,
                needed,
                available: reachable,
            });
        }
        if size < reachable {
            let mut rng =
                SeededRng::derived(self.config.seed, &[streams::COHORT, u64::from(number)]);
            if let Some(weights) = &self.selection {
                everyone = selection::weighted_draw(&mut rng, everyone, weights, size);
            } else {
                rng.shuffle(&mut everyone);
                everyone.truncate(size);
                everyone.sort();
            }
        }
        if let Some((dp, ledger)) = &self.dp {
            let names: Vec<String> = self.participants.iter().map(|p| p.to_string()).collect();
            ledger.check(
                &format!("round {number}"),
                &[PrivacyConfig::round_event(dp.noise_multiplier())],
                &[],
                &names,
            )?;
        }
        let open = self.new_round(number, everyone.clone(), now);
        let deadline = open.deadline;
        self.open = Some(open);
        Ok(RoundStart {
            cohort: everyone,
            round: number,
            global: Arc::clone(&self.global),
            deadline,
        })
    }

    /// Records that `id` left the open round.
    pub fn report_dropout(&mut self, id: &ParticipantId) {
        if let Some(open) = self.open.as_mut()
            && open.pending.remove(id)
        {
            open.dropped.push(id.clone());
        }
    }

    /// Takes `id` back into the open round it left, at `now`, when the
    /// round cannot meet its quorum without those who left. True when
    /// taken back.
    pub fn readmit(&mut self, id: &ParticipantId, now: Timestamp) -> bool {
        let quorum = self.config.quorum;
        let Some(open) = self.open.as_mut() else {
            return false;
        };
        if open.deadline.is_some_and(|d| now > d)
            || open.accepted.len() + open.pending.len() >= quorum
        {
            return false;
        }
        let Some(at) = open.dropped.iter().position(|d| d == id) else {
            return false;
        };
        open.dropped.remove(at);
        open.pending.insert(id.clone());
        true
    }

    /// Who the open round waits for: those who owe it an update and, while
    /// it cannot meet its quorum without them, those who left it.
    pub fn awaited(&self) -> Vec<ParticipantId> {
        let Some(open) = self.open.as_ref() else {
            return Vec::new();
        };
        let mut awaited: Vec<ParticipantId> = open.pending.iter().cloned().collect();
        if open.accepted.len() + open.pending.len() < self.config.quorum {
            awaited.extend(open.dropped.iter().cloned());
        }
        awaited.sort();
        awaited
    }

    /// Closes the open round if everyone has answered or its deadline has
    /// passed at `now`, aggregating what was accepted.
    pub fn poll(&mut self, now: Timestamp) -> Option<RoundOutcome> {
        let open = self.open.as_ref()?;
        let expired = open.deadline.is_some_and(|d| now >= d);
        if !open.pending.is_empty() && !expired {
            return None;
        }
        // Below its quorum, a round waits up to its deadline for those who
        // left it to come back ([`RoundEngine::readmit`]).
        let accepted = open.accepted.len();
        if !expired
            && open.deadline.is_some()
            && accepted < self.config.quorum
            && accepted + open.dropped.len() >= self.config.quorum
        {
            return None;
        }
        let open = self.open.take()?;
        // Under a traced coordinator, a child of its round's span.
        let _aggregate = tracing::info_span!("aggregate", round = open.number).entered();
        self.rounds_closed += 1;
        let n_accepted = open.accepted.len();
        let attendance = attendance(&open);
        let aggregate = open
            .accumulator
            .finish(self.participants.len())
            .and_then(|a| self.strategy.combine(a, &open.collected));
        let mut applied = None;
        let mut privacy = None;
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
            let dp = &mut self.dp;
            let names: Vec<String> = self.participants.iter().map(|p| p.to_string()).collect();
            match aggregate
                .map_err(|e| e.to_string())
                .and_then(|mut a: RoundAggregate| {
                    if let Some((dp, ledger)) = dp.as_mut() {
                        let entry = ledger
                            .record_central(
                                open.number,
                                PrivacyConfig::round_event(dp.noise_multiplier()),
                                &names,
                            )
                            .map_err(|e| e.to_string())?
                            .clone();
                        let release =
                            dp.release(open.number, &mut a.mean_delta, a.n_updates, open.unclipped);
                        privacy = Some((release, entry));
                    }
                    let next = self
                        .strategy
                        .aggregate_fit(&self.global, &a, &attendance)
                        .map_err(|e| e.to_string())?;
                    next.check_finite().map_err(|e| e.to_string())?;
                    Ok((next, a))
                }) {
                Ok((next, a)) => {
                    self.global = Arc::new(next);
                    let summary = (RoundStatus::Completed, a.n_examples, a.mean_train_loss);
                    applied = Some(a);
                    summary
                }
                Err(e) => (RoundStatus::Failed(e), 0, 0.0),
            }
        };
        let Attendance {
            cohort, counted, ..
        } = attendance;
        let mut dropped = open.dropped;
        dropped.sort();
        Some(RoundOutcome {
            round: open.number,
            status,
            cohort,
            accepted: counted,
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
            privacy,
        })
    }
}
