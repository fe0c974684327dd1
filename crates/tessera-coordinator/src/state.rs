//! The coordinator's federation: the round engine plus everything around it
//! that deployment needs (joining, data agreement, evaluation rounds,
//! liveness, persistence). Synchronous: the gRPC service calls it under a lock,
//! a ticker calls [`Federation::advance`] for time-driven transitions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tessera_core::{ParticipantId, Timestamp, tag};
use tessera_data::{Agreement, ColumnKinds};
use tessera_engine::report::RoundRecord;
use tessera_engine::{Plan, RoundEngine};
use tessera_learn::Evaluation;
use tessera_proto::{CAPABILITIES, MAJOR, MINOR, negotiate, pb};

use crate::CoordinatorError;
use crate::store::{RunRow, RunStore};
use crate::telemetry::names;
use tessera_orchestrator::{EvaluationRound, Expected, Links, Roster, StepEvaluations, Traffic};
use training_mode::Training;

mod agreement;
mod analytics;
pub mod attribution;
mod buffered;
pub(crate) mod capabilities;
mod clock;
mod continued;
pub use continued::InitialModel;
mod counting;
mod cross_silo;
mod dry_run;
mod evaluation;
mod external;
mod fatal;
mod homomorphic;
mod joins;
mod lifecycle;
mod multitask;
mod relay;
mod report;
mod resume;
pub mod rollout;
pub mod secure;
mod secure_buffer;
mod sessions;
mod simulated;
mod trace;
mod training;
mod training_mode;
pub mod trust;
mod view;
pub mod waiting;

pub use relay::SiteEvaluations;
pub use view::{SiteView, TaskView};

pub use clock::{Clock, ManualClock, REFUSALS_PER_SECOND, SystemClock};
use clock::{RefusalBudget, unix_micros};

#[derive(Debug)]
enum Phase {
    /// Waiting for the data agreement.
    Agreeing,
    /// Rounds run (a round is open, or the next one opens when it can).
    Training,
    /// The global model of a round is being evaluated.
    Evaluating {
        /// Who evaluates it, until when, and what came.
        evaluation: EvaluationRound,
        /// The round's record, to complete with the evaluations.
        record: Box<RoundRecord>,
    },
    /// Every round is done.
    Finished,
}

/// How a task's model travels.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelPart {
    /// Whole, in chunks.
    Whole,
    /// As the encoding of its change from the model the participant holds.
    Change(Vec<u8>),
    /// Not at all: the participant holds it.
    Held,
}

/// Why a request was refused; goes back to the caller as a gRPC status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request is not acceptable (bad version, unknown site, wrong round...).
    Invalid(String),
    /// The caller may not do this.
    Denied(String),
    /// The coordinator cannot answer now (its database failed a write or a
    /// read): the caller asks again.
    Unavailable(String),
    /// Another live process already speaks for the site (the caller may
    /// take over once it has been silent for the liveness period).
    InUse(String),
}

/// A database failure met while answering a call: the caller retries.
fn unavailable(e: impl std::fmt::Display) -> Refusal {
    tracing::warn!(%e, "database error; the caller will retry");
    Refusal::Unavailable(format!(
        "the coordinator's database failed ({e}); try again"
    ))
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Invalid(m)
            | Refusal::Denied(m)
            | Refusal::Unavailable(m)
            | Refusal::InUse(m) => f.write_str(m),
        }
    }
}

/// The coordinator's whole state.
pub struct Federation {
    run: RunRow,
    plan: Plan,
    store: Box<dyn RunStore>,
    /// Who is expected, who joined, who is live, who counted.
    roster: Roster,
    kinds: Option<ColumnKinds>,
    agreement: Option<Agreement>,
    /// Under `[multitask]`, each task's classes (from the agreement).
    task_classes: Vec<Vec<String>>,
    phase: Phase,
    records: Vec<RoundRecord>,
    /// Reputation selection's weights, by the closed rounds they follow.
    selection_cache: Option<(usize, Option<BTreeMap<ParticipantId, f64>>)>,
    last_evaluations: Vec<(String, Evaluation)>,
    /// A hierarchical run's tree, and this coordinator's node in it (0: the root).
    tree: Option<(tessera_engine::Tree, usize)>,
    /// How it trains: rounds, asynchronous steps, or a parent's rounds relayed.
    training: Training,
    /// Asynchronous runs: steps whose evaluations are still coming in.
    steps: StepEvaluations,
    /// When the round (or step) in progress opened, on the run clock.
    round_started: Option<Timestamp>,
    /// The round's trace spans.
    trace: trace::RoundTrace,
    /// Bytes up and down: the run's, per site, the round's.
    traffic: Traffic,
    /// Upload codecs and measured bandwidths.
    links: Links,
    /// With a download codec: the model participants hold, and its last change.
    downlink: Option<tessera_engine::Downlink>,
    /// When this process opened the federation, on the run clock.
    started: Timestamp,
    version: u64,
    /// Central DP, where it runs here: whom its noise is calibrated for, and
    /// the secret noise key of this process, drawn from the operating system
    /// when the federation opens and kept in memory only (a restart draws a
    /// new one and replays the stored noised rounds, so no closed round's
    /// noise is ever needed again).
    central_dp: Option<(tessera_engine::DpCohort, [u8; 32])>,
    /// Every DP release: local DP-SGD as updates report it, the metrics'
    /// spend, and where central DP runs.
    privacy: tessera_orchestrator::PrivacyBook,
    /// Secure aggregation: the open round's protocol.
    secure: Option<secure::SecureRound>,
    /// The open training round's homomorphic aggregation.
    homomorphic: Option<homomorphic::HomomorphicRound>,
    /// The last training round whose secure sum (SecAgg+ or homomorphic)
    /// ended here, and whose inputs counted: a site polling it is told.
    sum_counted: Option<(u32, std::collections::BTreeSet<String>)>,
    /// Asynchronous runs under secure aggregation: who waits for a buffer,
    /// who is seated in the open one.
    buffers: secure_buffer::SecureBuffers,
    /// Each site's client certificate (DER) as its last call presented it:
    /// relayed to the cohort of a secure round, which checks it against the
    /// federation CA itself.
    certificates: BTreeMap<String, Vec<u8>>,
    /// `site_metrics = "aggregate-only"`: the last round whose evaluations
    /// were summed securely, and what the sum said (`None` when it failed).
    secure_evaluated: Option<(u32, Option<tessera_engine::report::EvaluationView>)>,
    /// The last such sum, for the report's final metrics.
    last_view: Option<tessera_engine::report::EvaluationView>,
    /// Audited refusals per second.
    refusals: RefusalBudget,
    /// Why the run cannot go on (its model cannot fit in this machine's
    /// memory): the server stops and says so.
    stopped: Option<String>,
    /// `--continue-from`: the earlier run's model the run starts from.
    continued: Option<continued::InitialModel>,
    /// Why the coordinator stops at once (the first database write it could
    /// not make after the engine had counted it): every later call is refused.
    fatal: Option<String>,
    /// The operator's `tessera stop`: the run ends once the open round closes.
    stop_requested: Option<String>,
    /// The operator's `tessera abort`: every later call is refused with it.
    aborted: Option<String>,
    /// The operators' requests already read from the database.
    controls_seen: usize,
    /// Sites whose column-kinds offer was set aside, and why (told at
    /// their next call).
    odd_offers: BTreeMap<String, String>,
    /// Rows each site declared at agreement: the bounds of its reports.
    declared: BTreeMap<String, trust::Declared>,
    /// Where time is read.
    clock: Arc<dyn Clock>,
    /// Each site's last call, who left, what the run waits for.
    watch: waiting::Watch,
    /// Analysts' queries after the last round (`state/analytics.rs`).
    analytics: analytics::Serving,
    /// The messages of the plan's secure joins in flight.
    joins: joins::JoinRelay,
    /// A rollout of a registered model instead of training (`state/rollout.rs`).
    rollout: Option<rollout::RolloutState>,
    /// A dry run: the agreement, then the end (`state/dry_run.rs`).
    dry_run: Option<dry_run::DryRun>,
}

/// The longest audit detail kept, in bytes (a longer one is cut and its
/// length noted).
pub const MAX_AUDIT_DETAIL: usize = 1000;

impl Federation {
    /// Opens the federation of `plan` in `store`: resumes the unfinished run
    /// of the same plan, or starts a new one.
    pub fn open(
        plan: Plan,
        plan_text: &str,
        store: impl RunStore + 'static,
        liveness: Duration,
    ) -> Result<Self, CoordinatorError> {
        Self::open_node(plan, plan_text, Box::new(store), liveness, None)
    }

    /// Opens aggregator `node` of the plan's hierarchical topology (`None`:
    /// the root): its members are the ones the plan's tree gives it.
    pub fn open_node(
        plan: Plan,
        plan_text: &str,
        store: Box<dyn RunStore>,
        liveness: Duration,
        node: Option<&str>,
    ) -> Result<Self, CoordinatorError> {
        let mut privacy = tessera_orchestrator::PrivacyBook::of_plan(&plan)
            .map_err(|e| CoordinatorError::Config(format!("privacy: {e}")))?;
        // Where central DP runs (the book's rule): everywhere in a flat run;
        // in a tree, at the aggregators that hold sites. (Secure aggregation
        // runs at every aggregator: members mask toward it, aggregators too.)
        if plan.data.cross_silo.is_some() {
            // The sites compute the feature among themselves, pair by pair,
            // through this coordinator's relay: every site named, one level.
            if plan.topology.kind != tessera_engine::TopologyKind::Flat || node.is_some() {
                return Err(CoordinatorError::Config(
                    "[data.cross_silo] is computed in a flat topology only for now".into(),
                ));
            }
            if plan.data.named_sites().len() < 2 {
                return Err(CoordinatorError::Config(
                    "[data.cross_silo] needs the plan to name its sites ([[data.sites]]), at \
                     least two"
                        .into(),
                ));
            }
        }
        simulated::check_plan(&plan)?;
        attribution::check_plan(&plan)?;
        multitask::check_plan(&plan)?;
        let central;
        let mut place: Option<(usize, Vec<String>)> = None;
        let mut hierarchy = None;
        let expected = match (plan.topology.kind, node) {
            (tessera_engine::TopologyKind::Gossip, _) => {
                return Err(CoordinatorError::Config(
                    "the gossip topology has no coordinator, and runs in simulation only for now"
                        .into(),
                ));
            }
            (tessera_engine::TopologyKind::Hierarchical, _) => {
                let tree = tessera_engine::Tree::of_plan(&plan)?;
                let n = match node {
                    None => 0,
                    Some(name) => tree.find(name).filter(|&n| n != 0).ok_or_else(|| {
                        let names: Vec<&str> =
                            tree.nodes[1..].iter().map(|n| n.name.as_str()).collect();
                        CoordinatorError::Config(format!(
                            "'{name}' is not an aggregator of the plan's topology (its aggregators: {})",
                            names.join(", ")
                        ))
                    })?,
                };
                privacy.check_tree(&tree)?;
                if plan.secure_aggregation.enabled {
                    tree.check_secure_sizes()?;
                }
                central = privacy.central_cohort(tessera_orchestrator::Place::Node {
                    tree: &tree,
                    node: n,
                });
                place = Some((
                    tree.nodes[n].depth,
                    tree.sites_below(n)
                        .into_iter()
                        .map(|s| tree.sites[s].clone())
                        .collect(),
                ));
                let expected = Expected::Named(tree.member_names(n).into_iter().collect());
                hierarchy = Some((tree, n));
                expected
            }
            (_, Some(name)) => {
                return Err(CoordinatorError::Config(format!(
                    "aggregator '{name}': the plan's topology is flat; aggregators need kind = \"hierarchical\""
                )));
            }
            _ => {
                // A multi-task plan names every site in its tasks.
                let named = multitask::expected_sites(&plan);
                let expected = if named.is_empty() {
                    Expected::Count(plan.federation.min_participants)
                } else {
                    Expected::Named(named.into_iter().collect())
                };
                central = privacy.central_cohort(tessera_orchestrator::Place::Flat {
                    participants: expected.len(),
                });
                expected
            }
        };
        let run = match store.unfinished_run()? {
            Some(run) if run.plan == plan_text => run,
            Some(run) => {
                return Err(CoordinatorError::Config(format!(
                    "the database holds unfinished run {} of another plan; give a new --db to start this one",
                    run.id
                )));
            }
            None => {
                let created = unix_micros();
                let run = RunRow {
                    id: format!(
                        "{}-{:x}",
                        plan.name,
                        tessera_core::derive_seed(created, &[tag(plan_text)]) & 0xffff_ffff
                    ),
                    name: plan.name.clone(),
                    plan: plan_text.to_string(),
                    strategy: plan.federation.strategy.to_string(),
                    seed: plan.seed,
                    rounds: plan.federation.rounds,
                    created_unix_micros: created,
                    status: "running".into(),
                };
                cross_silo::check(&plan)?;
                store.create_run(&run)?;
                run
            }
        };
        cross_silo::charge(&plan, store.as_ref(), &run.id)?;
        let central_dp = match central {
            Some(cohort) => Some((
                cohort,
                Self::privacy_preflight(&privacy, store.as_ref(), &run.id)?,
            )),
            None => None,
        };
        // Local DP: the releases stored before a restart are spent.
        privacy
            .restore(&store.privacy_ledger(&run.id)?)
            .map_err(|e| CoordinatorError::Config(e.to_string()))?;
        let relay = node.map(|name| {
            let (depth, sites) = place.unwrap_or_default();
            relay::Relay::new(name, depth, sites)
        });
        let training = Training::of_plan(&plan, relay);
        let mut federation = Self {
            training,
            run,
            plan,
            store,
            roster: Roster::new(expected, liveness),
            kinds: None,
            agreement: None,
            task_classes: Vec::new(),
            phase: Phase::Agreeing,
            records: Vec::new(),
            selection_cache: None,
            last_evaluations: Vec::new(),
            tree: hierarchy,
            steps: StepEvaluations::default(),
            round_started: None,
            trace: trace::RoundTrace::default(),
            traffic: Traffic::default(),
            links: Links::default(),
            downlink: None,
            started: Timestamp::ZERO,
            version: 0,
            central_dp,
            privacy,
            secure: None,
            homomorphic: None,
            sum_counted: None,
            certificates: BTreeMap::new(),
            secure_evaluated: None,
            last_view: None,
            declared: BTreeMap::new(),
            odd_offers: BTreeMap::new(),
            refusals: RefusalBudget::default(),
            stopped: None,
            continued: None,
            fatal: None,
            stop_requested: None,
            aborted: None,
            controls_seen: 0,
            clock: Arc::new(SystemClock),
            watch: waiting::Watch::default(),
            analytics: analytics::Serving::default(),
            joins: joins::JoinRelay::default(),
            buffers: secure_buffer::SecureBuffers::default(),
            rollout: None,
            dry_run: None,
        };
        federation.started = federation.now();
        federation.resume()?;
        // DP metrics: one release per round; those already stored are spent.
        let released = federation
            .records
            .iter()
            .filter(|r| r.metrics_epsilon.is_some())
            .count();
        federation
            .privacy
            .restore_metrics(u32::try_from(released).unwrap_or(u32::MAX))
            .map_err(|e| CoordinatorError::Config(e.to_string()))?;
        Ok(federation)
    }

    /// How often participants must show they are alive: a quarter of the
    /// liveness period, so that three missed signs still leave a margin.
    pub fn heartbeat_interval(&self) -> Duration {
        self.roster.heartbeat_interval()
    }

    /// How long an evaluation waits for answers: the round deadline, or ten
    /// liveness periods without one. A site that answers in time counts.
    fn evaluation_wait(&self) -> Duration {
        self.roster
            .evaluation_wait(self.plan.federation.deadline_seconds)
    }

    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.run.id
    }

    /// Changes whenever anything a participant waits for may have changed.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether every round is done.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// Why the run cannot go on, if it cannot (the serving loop then stops
    /// and returns it as the coordinator's error).
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// The run clock: microseconds since the run was created.
    pub fn now(&self) -> Timestamp {
        Timestamp(
            self.clock
                .unix_micros()
                .saturating_sub(self.run.created_unix_micros),
        )
    }

    /// Reads time from `clock` from now on (tests on virtual time).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self.started = self.now();
        self
    }

    fn touch(&mut self, site: &str) {
        let now = self.now();
        self.roster.seen(site, now);
        self.watch.seen(site, now);
    }

    fn audit(&self, site: &str, action: &str, outcome: &str, detail: &str) {
        // What comes from outside is bounded before it is kept; refusals
        // beyond a rate are counted, not each written.
        if matches!(outcome, "rejected" | "refused") && !self.refusals.admit() {
            return;
        }
        let site = tessera_proto::shown(site, tessera_proto::MAX_SITE_NAME);
        let detail = tessera_proto::shown(detail, MAX_AUDIT_DETAIL);
        let detail = match self.refusals.take_suppressed() {
            0 => detail,
            n => std::borrow::Cow::Owned(format!(
                "{detail} [{n} refused calls before this one were not recorded: more than \
                 {REFUSALS_PER_SECOND} a second]"
            )),
        };
        if let Err(e) = self
            .store
            .audit(&self.run.id, self.now(), &site, action, outcome, &detail)
        {
            tracing::error!(%e, "cannot write the audit log");
        }
    }

    /// Seconds since the round (or step) in progress opened.
    fn round_seconds(&self) -> f64 {
        self.round_started
            .map_or(0.0, |t| self.now().since(t).as_secs_f64())
    }

    /// Records a refused message in the audit log.
    pub fn reject_audit(&self, site: &str, action: &str, reason: &str) {
        if action == "update" {
            let label = crate::telemetry::update_rejection(reason);
            metrics::counter!(names::REJECTED, "reason" => label).increment(1);
        }
        self.audit(site, action, "rejected", reason);
        let site = tessera_proto::shown(site, tessera_proto::MAX_SITE_NAME);
        let reason = tessera_proto::shown(reason, MAX_AUDIT_DETAIL);
        tracing::warn!(%site, %action, %reason, "rejected");
    }

    /// A participant joins: versions and capabilities are negotiated. A
    /// join without a process session ([`Federation::join_as`]).
    pub fn join(&mut self, site: &str, hello: &pb::Hello) -> Result<pb::Welcome, Refusal> {
        self.join_as(site, hello, None)
    }

    /// A participant process with `session` joins: as [`Federation::join`],
    /// and another live process of the same site is refused.
    pub fn join_as(
        &mut self,
        site: &str,
        hello: &pb::Hello,
        session: Option<&str>,
    ) -> Result<pb::Welcome, Refusal> {
        self.refuse_if_fatal()?;
        self.refuse_if_aborted()?;
        if site.is_empty() {
            return Err(Refusal::Invalid("no site name".into()));
        }
        let required = self.required_capabilities_of(site);
        let negotiated = match negotiate(
            CAPABILITIES,
            hello.major,
            hello.minor,
            &hello.capabilities,
            &required,
        ) {
            Ok(n) => n,
            Err(e) => {
                self.audit(site, "join", "refused", &e.to_string());
                return Err(Refusal::Invalid(e.to_string()));
            }
        };
        if !self.roster.expected().admits(site) {
            let reason = format!("site '{site}' is not among the plan's sites");
            self.audit(site, "join", "refused", &reason);
            return Err(Refusal::Denied(reason));
        }
        self.rollout_admits(site, hello)?;
        self.claim_session(site, session)?;
        let rollout = self.rollout_join(site, hello);
        if self.roster.join(site) {
            let now = self.now();
            if let Err(e) = self.store.add_participant(&self.run.id, site, now) {
                // Not joined until recorded: its retry records it.
                self.roster.unjoin(site);
                return Err(unavailable(format!("cannot record the participant: {e}")));
            }
            if let Some(engine) = self.training.rounds_mut() {
                engine.register(ParticipantId::new(site));
            }
            self.audit(
                site,
                "join",
                "accepted",
                &format!("protocol {}.{}", hello.major, hello.minor),
            );
        } else {
            self.audit(
                site,
                "rejoin",
                "accepted",
                &format!("protocol {}.{}", hello.major, hello.minor),
            );
        }
        self.touch(site);
        self.version += 1;
        Ok(pb::Welcome {
            major: MAJOR,
            minor: MINOR,
            capabilities: negotiated.capabilities,
            run_id: self.run.id.clone(),
            plan_toml: self.run.plan.clone(),
            heartbeat_millis: u32::try_from(self.heartbeat_interval().as_millis())
                .unwrap_or(u32::MAX),
            rollout,
        })
    }

    /// The gate of every call but `join`: the coordinator has not failed
    /// fatally, and `site` has joined.
    fn require_joined(&self, site: &str) -> Result<(), Refusal> {
        self.refuse_if_fatal()?;
        self.refuse_if_aborted()?;
        if self.roster.is_joined(site) {
            Ok(())
        } else {
            Err(Refusal::Denied(format!("site '{site}' has not joined")))
        }
    }

    /// A participant at work says so; false once the round no longer waits for it.
    pub fn heartbeat(&mut self, site: &str, round: u32) -> Result<bool, Refusal> {
        self.require_joined(site)?;
        self.touch(site);
        Ok(match &self.training {
            Training::Async(buffered) => buffered.as_ref().is_some_and(|b| !b.is_finished()),
            Training::Sync(_) | Training::Relay(_) => self.training.rounds().is_some_and(|e| {
                e.open_round() == Some(round) && e.is_pending(&ParticipantId::new(site))
            }),
        })
    }

    /// `site` leaves round `round` without an update, and with `leaving`
    /// the run too (until it asks for a task again): the round stops
    /// waiting for it. True when the round was waiting for it; withdrawing
    /// from any other round changes nothing but is recorded.
    pub fn withdraw(
        &mut self,
        site: &str,
        round: u32,
        reason: &str,
        leaving: bool,
    ) -> Result<bool, Refusal> {
        self.require_joined(site)?;
        if tessera_secagg::is_rollout_round(round) {
            return Ok(self.rollout_secure_refused(site, round, reason));
        }
        if round & tessera_secagg::EVALUATION_ROUND == 0
            && round & tessera_secagg::ANALYTICS_ROUND != 0
        {
            return Ok(self.analytics_refused(site, round, reason));
        }
        if round & tessera_secagg::EVALUATION_ROUND != 0 {
            // A site that refuses a secure sum of evaluations (its checks
            // of the round failed): recorded, not waited for, not asked again.
            let refused = self.secure_evaluation_refused(site, round);
            let evaluated = round & !tessera_secagg::EVALUATION_ROUND;
            tracing::warn!(%site, round = evaluated, %reason, "refused the secure evaluation");
            self.audit(
                site,
                "secure-evaluation",
                "refused",
                &format!("round {evaluated}: {reason}"),
            );
            self.touch(site);
            self.version += 1;
            self.advance();
            return Ok(refused);
        }
        let id = ParticipantId::new(site);
        let withdrawn = self.training.rounds_mut().is_some_and(|engine| {
            // A site leaving the run leaves whichever round is open (it
            // may not know which: it failed before its first task).
            let waiting = (engine.open_round() == Some(round) || leaving) && engine.is_pending(&id);
            if waiting {
                engine.report_dropout(&id);
            }
            waiting
        }) || self.buffer_withdraw(site, round, leaving);
        if withdrawn {
            self.secure_withdraw(site);
            self.homomorphic_withdraw(site);
        }
        if leaving && (matches!(self.phase, Phase::Evaluating { .. }) || self.in_rollout()) {
            // A secure sum of the evaluations stops waiting for it too.
            self.secure_withdraw(site);
        }
        if leaving {
            // Not live any more: later rounds drop it at once, evaluations
            // do not wait for it, until it asks for a task again.
            self.roster.left(site);
            self.dry_run_withdrawn(site, reason);
            let why = match round {
                0 => format!("withdrew: {reason}"),
                n => format!("withdrew in round {n}: {reason}"),
            };
            self.watch.departed(site, why);
        } else {
            self.touch(site);
        }
        let outcome = match (withdrawn, leaving) {
            (true, false) => "left the round",
            (true, true) => "left the run",
            (false, false) => "not waited for",
            (false, true) => "left the run (not waited for)",
        };
        tracing::warn!(%site, round, %reason, outcome, "withdrawal");
        self.audit(
            site,
            "withdraw",
            outcome,
            &format!("round {round}: {reason}"),
        );
        if withdrawn || leaving {
            // (A withdrawal that changes nothing wakes no held poll.)
            self.version += 1;
        }
        self.advance();
        Ok(withdrawn)
    }

    /// The joined sites heard from within the liveness period.
    fn live(&self, now: Timestamp) -> BTreeSet<String> {
        self.roster.live(now)
    }

    fn stale(&self, site: &str, now: Timestamp) -> bool {
        self.roster.is_stale(site, now)
    }

    /// Time-driven and event-driven transitions: opens rounds, drops silent
    /// participants, closes rounds at their deadline, finishes evaluations.
    pub fn advance(&mut self) {
        self.advance_steps();
        self.watch();
    }

    fn advance_steps(&mut self) {
        let now = self.now();
        let connected = self.roster.live(now).len();
        metrics::gauge!(names::CONNECTED).set(connected as f64);
        metrics::gauge!(names::JOINED).set(self.roster.joined().len() as f64);
        for _ in 0..8 {
            let before = self.version;
            match self.step() {
                Ok(()) => {}
                // A transition the engine made in memory (a round opened or
                // closed) that the database did not record: nothing more may
                // be acknowledged; a restart resumes from the database.
                Err(CoordinatorError::Store(e)) => {
                    let _ = self.fail("cannot record the run's progress", e);
                    return;
                }
                Err(e) => {
                    tracing::error!(%e, "cannot advance the federation");
                    return;
                }
            }
            if self.version == before {
                return;
            }
        }
    }

    fn step(&mut self) -> Result<(), CoordinatorError> {
        let now = self.now();
        // What a step does for the round in progress (its aggregation, its
        // log lines) belongs to the round's trace.
        let span = self.round_span();
        let _entered = span.enter();
        let stepped = match &self.phase {
            _ if self.fatal.is_some() || self.aborted.is_some() => Ok(()),
            Phase::Agreeing => {
                self.dry_run_step();
                self.rollout_step()
            }
            Phase::Finished => {
                self.analytics_step(now);
                Ok(())
            }
            Phase::Training if self.training.is_async() => self.async_step(now),
            Phase::Training => self.step_training(now),
            Phase::Evaluating { .. } => self.step_evaluating(now),
        };
        self.follow_trace();
        stepped
    }

    /// The store, for reads.
    pub fn store(&self) -> &dyn RunStore {
        self.store.as_ref()
    }
}
