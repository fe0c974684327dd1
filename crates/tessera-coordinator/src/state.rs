//! The coordinator's federation: the round engine plus everything around it
//! that deployment needs (joining, data agreement, evaluation rounds,
//! liveness, persistence). Synchronous: the gRPC service calls it under a lock,
//! a ticker calls [`Federation::advance`] for time-driven transitions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tessera_core::{ParameterSet, ParticipantId, Timestamp, Update, tag};
use tessera_data::{Agreement, ColumnKinds};
use tessera_engine::report::{
    Communication, RoundRecord, RunReport, Timing, final_metrics, round_record,
};
use tessera_engine::{EngineConfig, Plan, RoundEngine, RoundStatus};
use tessera_learn::Evaluation;
use tessera_proto::{CAPABILITIES, MAJOR, MINOR, convert, negotiate, pb, required_capabilities};

use crate::CoordinatorError;
use crate::store::{RoundClose, RunRow, Store, StoreError};
use crate::telemetry::names;

mod agreement;
mod buffered;
mod evaluation;
mod links;
mod relay;
pub mod secure;
pub mod trust;

/// Who must offer before the data agreement closes.
#[derive(Debug, Clone)]
enum Expected {
    /// The plan's sites, by name.
    Named(BTreeSet<String>),
    /// This many sites, whoever they are.
    Count(usize),
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the data agreement.
    Agreeing,
    /// Rounds run (a round is open, or the next one opens when it can).
    Training,
    /// The global model of `round` is being evaluated.
    Evaluating {
        round: u32,
        /// When the evaluation stops waiting.
        until: Timestamp,
        targets: BTreeSet<String>,
        received: BTreeMap<String, Evaluation>,
        record: Box<RoundRecord>,
    },
    /// Every round is done.
    Finished,
}

/// What a participant should do next.
pub enum TaskView {
    /// Nothing yet: ask again when something changes.
    Wait,
    /// Train from `global` (with SCAFFOLD's `control`) and send an update.
    Fit {
        /// What the task is.
        header: pb::TaskHeader,
        /// The global parameters.
        global: Arc<ParameterSet>,
        /// SCAFFOLD's server control variate.
        control: Option<Arc<ParameterSet>>,
        /// How `global` travels.
        model: ModelPart,
    },
    /// Evaluate `global`.
    Evaluate {
        /// What the task is.
        header: pb::TaskHeader,
        /// The parameters to evaluate.
        global: Arc<ParameterSet>,
        /// How `global` travels.
        model: ModelPart,
    },
    /// The run is over.
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
            Refusal::Invalid(m) | Refusal::Denied(m) | Refusal::Unavailable(m) => f.write_str(m),
        }
    }
}

/// The coordinator's whole state.
pub struct Federation {
    run: RunRow,
    plan: Plan,
    store: Store,
    expected: Expected,
    joined: BTreeSet<String>,
    last_seen: BTreeMap<String, Timestamp>,
    kinds: Option<ColumnKinds>,
    agreement: Option<Agreement>,
    engine: Option<RoundEngine>,
    phase: Phase,
    records: Vec<RoundRecord>,
    last_evaluations: Vec<(String, Evaluation)>,
    /// Per site: the last closed round it was in the cohort of, and whether its update counted.
    counted: BTreeMap<String, (u32, bool)>,
    liveness: Duration,
    /// Asynchronous runs: the buffered engine instead of rounds.
    buffered: Option<tessera_engine::BufferedEngine>,
    /// Asynchronous runs: steps whose evaluations are still coming in.
    step_evaluations: BTreeMap<u32, (Box<RoundRecord>, BTreeMap<String, Evaluation>)>,
    /// Asynchronous runs: the newest step each site has evaluated.
    evaluated: BTreeMap<String, u32>,
    round_started: Option<Instant>,
    bytes_up: u64,
    bytes_down: u64,
    bytes_up_per_site: BTreeMap<String, u64>,
    /// Of `bytes_up`, the updates' bytes.
    update_bytes_up: u64,
    /// Upload codecs, measured bandwidths, the round's traffic per site.
    links: links::Links,
    /// With a download codec: the model participants hold, and its last change.
    downlink: Option<tessera_engine::Downlink>,
    started: Instant,
    version: u64,
    /// Central DP: the secret noise key of this process, drawn from the
    /// operating system when the federation opens and kept in memory only
    /// (a restart draws a new one and replays the stored noised rounds, so
    /// no closed round's noise is ever needed again).
    noise_key: Option<[u8; 32]>,
    /// Local DP: every participant's DP-SGD, as their updates report it.
    local_ledger: Option<tessera_privacy::Ledger>,
    /// Secure aggregation: the open round's protocol.
    secure: Option<secure::SecureRound>,
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
    /// Sites whose column-kinds offer was set aside, and why (told at
    /// their next call).
    odd_offers: BTreeMap<String, String>,
    /// Rows each site declared at agreement: the bounds of its reports.
    declared: BTreeMap<String, trust::Declared>,
    /// `site_metrics = "dp"`: the metrics' noise calibration and spend.
    metrics_dp: Option<tessera_privacy::MetricsDp>,
    /// The metrics' epsilon after the evaluation just released, for its
    /// round's record.
    metrics_released: Option<f64>,
    /// An aggregator of a hierarchical run: rounds come from its parent.
    relay: Option<relay::Relay>,
}

/// The longest audit detail kept, in bytes (a longer one is cut and its
/// length noted).
pub const MAX_AUDIT_DETAIL: usize = 1000;

/// Refused calls audited one by one per second, beyond which they are only
/// counted (and the count written with the next row).
pub const REFUSALS_PER_SECOND: u32 = 50;

/// A token bucket for audited refusals.
#[derive(Debug)]
struct RefusalBudget {
    state: std::sync::Mutex<(f64, Instant, u64)>,
}

impl Default for RefusalBudget {
    fn default() -> Self {
        Self {
            state: std::sync::Mutex::new((f64::from(REFUSALS_PER_SECOND), Instant::now(), 0)),
        }
    }
}

impl RefusalBudget {
    /// Whether one more refusal may be written; if not, it is counted.
    fn admit(&self) -> bool {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, last, suppressed) = &mut *state;
        let now = Instant::now();
        let rate = f64::from(REFUSALS_PER_SECOND);
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            *suppressed += 1;
            false
        }
    }

    /// Refusals counted but not written since the last call.
    fn take_suppressed(&self) -> u64 {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::take(&mut state.2)
    }
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Federation {
    /// Opens the federation of `plan` in `store`: resumes the unfinished run
    /// of the same plan, or starts a new one.
    pub fn open(
        plan: Plan,
        plan_text: &str,
        store: Store,
        liveness: Duration,
    ) -> Result<Self, CoordinatorError> {
        Self::open_node(plan, plan_text, store, liveness, None)
    }

    /// Opens aggregator `node` of the plan's hierarchical topology (`None`:
    /// the root): its members are the ones the plan's tree gives it.
    pub fn open_node(
        plan: Plan,
        plan_text: &str,
        store: Store,
        liveness: Duration,
        node: Option<&str>,
    ) -> Result<Self, CoordinatorError> {
        // Whether central DP runs here: everywhere in a flat run; in a tree,
        // at the aggregators that hold sites. (Secure aggregation runs at
        // every aggregator: members mask toward it, aggregators too.)
        let mut dp_here = true;
        let mut place: Option<(usize, Vec<String>)> = None;
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
                if plan.privacy.mode == tessera_privacy::PrivacyMode::Central {
                    tree.check_privacy_layers()?;
                }
                if plan.secure_aggregation.enabled {
                    tree.check_secure_sizes()?;
                }
                dp_here = tree.holds_sites(n);
                place = Some((
                    tree.nodes[n].depth,
                    tree.sites_below(n)
                        .into_iter()
                        .map(|s| tree.sites[s].clone())
                        .collect(),
                ));
                Expected::Named(tree.member_names(n).into_iter().collect())
            }
            (_, Some(name)) => {
                return Err(CoordinatorError::Config(format!(
                    "aggregator '{name}': the plan's topology is flat; aggregators need kind = \"hierarchical\""
                )));
            }
            _ if plan.data.sites.is_empty() => Expected::Count(plan.federation.min_participants),
            _ => Expected::Named(plan.data.sites.iter().map(|s| s.name.clone()).collect()),
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
                store.create_run(&run)?;
                run
            }
        };
        let noise_key = if plan.privacy.mode == tessera_privacy::PrivacyMode::Central && dp_here {
            Some(Self::privacy_preflight(&plan, &store, &run.id)?)
        } else {
            None
        };
        let mut federation = Self {
            run,
            plan,
            store,
            expected,
            joined: BTreeSet::new(),
            last_seen: BTreeMap::new(),
            kinds: None,
            agreement: None,
            engine: None,
            phase: Phase::Agreeing,
            records: Vec::new(),
            last_evaluations: Vec::new(),
            counted: BTreeMap::new(),
            liveness,
            buffered: None,
            step_evaluations: BTreeMap::new(),
            evaluated: BTreeMap::new(),
            round_started: None,
            bytes_up: 0,
            bytes_down: 0,
            bytes_up_per_site: BTreeMap::new(),
            update_bytes_up: 0,
            links: links::Links::default(),
            downlink: None,
            started: Instant::now(),
            version: 0,
            noise_key,
            local_ledger: None,
            secure: None,
            certificates: BTreeMap::new(),
            secure_evaluated: None,
            last_view: None,
            metrics_dp: None,
            metrics_released: None,
            declared: BTreeMap::new(),
            odd_offers: BTreeMap::new(),
            refusals: RefusalBudget::default(),
            stopped: None,
            relay: node.map(|name| {
                let (depth, sites) = place.unwrap_or_default();
                relay::Relay::new(name, depth, sites)
            }),
        };
        if federation.plan.privacy.mode == tessera_privacy::PrivacyMode::Local {
            let mut ledger = federation.plan.privacy.ledger();
            for row in federation.store.privacy_ledger(&federation.run.id)? {
                ledger
                    .restore(row.entry)
                    .map_err(|e| CoordinatorError::Config(e.to_string()))?;
            }
            federation.local_ledger = Some(ledger);
        }
        federation.resume()?;
        if federation.plan.privacy.site_metrics == tessera_privacy::SiteMetrics::Dp {
            // One release per round; those already stored are spent.
            let mut dp = tessera_privacy::MetricsDp::new(
                &federation.plan.privacy,
                federation.plan.federation.rounds,
            )
            .map_err(|e| CoordinatorError::Config(format!("privacy: {e}")))?;
            let released = federation
                .records
                .iter()
                .filter(|r| r.metrics_epsilon.is_some())
                .count();
            dp.restore(released as u32)
                .map_err(|e| CoordinatorError::Config(e.to_string()))?;
            federation.metrics_dp = Some(dp);
        }
        Ok(federation)
    }

    /// Central DP: a fresh noise key from the operating system, never
    /// stored, after checking that the rounds still to run fit every privacy
    /// budget, so that work that could not be released is refused before it
    /// starts. The closed rounds' noise is in their stored aggregates, which
    /// a resume replays; the open round (and every later one) is noised with
    /// this key, so nothing in the database reproduces or removes any noise.
    fn privacy_preflight(
        plan: &Plan,
        store: &Store,
        run: &str,
    ) -> Result<[u8; 32], CoordinatorError> {
        let rows = store.privacy_ledger(run)?;
        let mut ledger = plan.privacy.ledger();
        for row in &rows {
            ledger
                .restore(row.entry.clone())
                .map_err(|e| CoordinatorError::Config(e.to_string()))?;
        }
        let z = plan
            .privacy
            .noise_multiplier_for(plan.federation.rounds)
            .map_err(|e| CoordinatorError::Config(e.to_string()))?;
        let remaining = plan.federation.rounds.saturating_sub(rows.len() as u32);
        let events = vec![tessera_privacy::PrivacyConfig::round_event(z); remaining as usize];
        ledger
            .check(
                &format!("the plan's {remaining} remaining rounds at noise multiplier {z:.4}"),
                &events,
                &[],
                &[],
            )
            .map_err(|e| CoordinatorError::Config(e.to_string()))?;
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| {
            CoordinatorError::Config(format!("cannot draw a secret noise key: {e}"))
        })?;
        Ok(key)
    }

    /// Adds the plan's robust aggregation and central DP to an engine.
    fn protect(&self, engine: RoundEngine) -> Result<RoundEngine, CoordinatorError> {
        let engine = engine.with_robust(self.plan.robust.clone());
        let (Some(key), true) = (self.noise_key, self.plan.privacy.is_on()) else {
            return Ok(engine);
        };
        let n = match &self.expected {
            Expected::Named(names) => names.len(),
            Expected::Count(n) => *n,
        };
        // An aggregator's members are all in every round.
        let dp = if self.relay.is_some() {
            self.plan.central_dp_for_cohort(key, n)?
        } else {
            self.plan.central_dp(key, n)?
        };
        Ok(match dp {
            Some((dp, ledger)) => engine.with_privacy(dp, ledger),
            None => engine,
        })
    }

    /// The downlink of a run with a download codec, starting from `initial`.
    fn new_downlink(&self, initial: Arc<ParameterSet>) -> Option<tessera_engine::Downlink> {
        let codec = self.plan.compression.download;
        (!codec.is_identity())
            .then(|| tessera_engine::Downlink::new(codec, self.plan.seed, initial))
    }

    /// Rebuilds the state a previous coordinator left in the database.
    fn resume(&mut self) -> Result<(), CoordinatorError> {
        let run = self.run.id.clone();
        self.joined = self.store.participants(&run)?.into_iter().collect();
        for (site, bytes) in self.store.offers(&run, 2)? {
            let offer = pb::LevelsOffer::decode(bytes.as_slice())
                .map_err(|e| StoreError::Damaged(e.to_string()))?;
            // Stored offers were checked when they came.
            if let Ok(declared) = trust::Declared::of(&offer) {
                self.declared.insert(site, declared);
            }
        }
        if let Some(bytes) = self.store.agreement(&run, 1)? {
            let kinds = pb::ColumnKinds::decode(bytes.as_slice())
                .map_err(|e| StoreError::Damaged(e.to_string()))?;
            self.kinds = Some(convert::kinds_from_pb(kinds)?);
        }
        let Some(bytes) = self.store.agreement(&run, 2)? else {
            return Ok(());
        };
        let agreement = pb::Agreement::decode(bytes.as_slice())
            .map_err(|e| StoreError::Damaged(e.to_string()))?;
        self.agreement = Some(convert::agreement_from_pb(agreement)?);
        if self.relay.is_some() {
            return self.resume_relay(&run);
        }
        if self.plan.federation.mode == tessera_engine::Mode::Async {
            return self.resume_async(&run);
        }
        let Some(closed) = self.store.latest_model_version(&run)? else {
            return Err(CoordinatorError::Store(StoreError::Damaged(
                "agreed run without an initial model".into(),
            )));
        };
        // Replay every completed round's aggregate: it rebuilds the strategy's
        // state (momentum, moments, control variate) and must reproduce the
        // stored model exactly.
        let mut strategy = self.plan.strategy()?;
        let mut global = self
            .store
            .model(&run, 0)?
            .ok_or_else(|| StoreError::Damaged("no initial model".into()))?;
        let aggregates: BTreeMap<u32, _> =
            self.store.aggregates(&run, closed)?.into_iter().collect();
        // The model participants hold goes through the same changes.
        let mut downlink = self.new_downlink(Arc::new(global.clone()));
        for round in 1..=closed {
            if let Some(aggregate) = aggregates.get(&round) {
                global = RoundEngine::replay(strategy.as_mut(), &global, aggregate)?;
            }
            if let Some(down) = downlink.as_mut() {
                down.advance(round, &global)?;
            }
        }
        self.downlink = downlink;
        let stored = self
            .store
            .model(&run, closed)?
            .ok_or_else(|| StoreError::Damaged("missing model".into()))?;
        if stored
            .values()
            .map(f32::to_bits)
            .ne(global.values().map(f32::to_bits))
        {
            return Err(CoordinatorError::Store(StoreError::Damaged(format!(
                "replaying rounds 1..{closed} does not give the stored model"
            ))));
        }
        let mut engine = self.protect(RoundEngine::restore(
            EngineConfig::from_plan(&self.plan),
            strategy,
            global,
            closed,
        ))?;
        if self.plan.privacy.is_on() {
            for row in self.store.privacy_ledger(&run)? {
                engine
                    .restore_privacy(row.entry, row.next_clip_norm)
                    .map_err(CoordinatorError::from)?;
            }
        }
        for site in &self.joined {
            engine.register(ParticipantId::new(site.as_str()));
        }
        let now = self.now();
        let until = now.plus(self.evaluation_wait());
        self.resume_rounds(&run, until)?;
        if self.aggregate_only()
            && let Phase::Evaluating { round, .. } = &self.phase
        {
            // The secure sum of that evaluation died with the process (its
            // protocol state is not stored): the round closes without
            // evaluation figures rather than asking for clear ones.
            let round = *round;
            self.audit(
                "-",
                "secure-evaluation",
                "failed",
                &format!("round {round}'s evaluation was under way when the coordinator stopped"),
            );
            self.secure_evaluated = Some((round, None));
        }
        let mut reopened_secure = None;
        if matches!(self.phase, Phase::Agreeing) {
            self.phase = Phase::Training;
            if let Some((round, cohort, opened_at)) = self.store.open_round_of(&run)? {
                let start = engine.reopen_round(round, cohort, opened_at)?;
                reopened_secure = Some((round, start.cohort));
                for stored in self.store.updates(&run, round)? {
                    let (site, update, at) = (stored.site, stored.update, stored.at);
                    if let Err(rejection) = engine.submit(at, &site, round, &update) {
                        tracing::warn!(%site, round, %rejection, "a stored update no longer counts");
                    }
                }
                self.round_started = Some(Instant::now());
            }
        }
        for site in &self.joined {
            self.last_seen.insert(site.clone(), now);
        }
        self.engine = Some(engine);
        if let Some((round, cohort)) = reopened_secure {
            // The protocol's state is not stored: the cohort starts it again.
            self.open_secure_round(round, &cohort, now);
        }
        if self.engine.as_ref().is_some_and(RoundEngine::is_finished)
            && matches!(self.phase, Phase::Training)
        {
            self.phase = Phase::Finished;
        }
        tracing::info!(run = %run, rounds_closed = closed, "resumed");
        Ok(())
    }

    /// Rebuilds who was in which round and the rounds' records; a round
    /// whose evaluation had not finished is evaluated again until `until`.
    fn resume_rounds(&mut self, run: &str, until: Timestamp) -> Result<(), CoordinatorError> {
        for row in self.store.cohorts(run)? {
            for site in row.cohort {
                let was_counted = row.counted.contains(&site);
                self.counted.insert(site, (row.round, was_counted));
            }
        }
        for (round, _status, record, evaluated) in self.store.rounds(run)? {
            let record: RoundRecord = serde_json::from_str(&record)
                .map_err(|e| StoreError::Damaged(format!("round {round}: {e}")))?;
            if evaluated {
                self.records.push(record);
            } else {
                let received = self.stored_evaluations(run, round)?;
                self.phase = Phase::Evaluating {
                    round,
                    until,
                    targets: self.joined.clone(),
                    received,
                    record: Box::new(record),
                };
            }
        }
        Ok(())
    }

    /// The evaluations of `round`'s model stored so far, by site.
    fn stored_evaluations(
        &self,
        run: &str,
        round: u32,
    ) -> Result<BTreeMap<String, Evaluation>, StoreError> {
        Ok(self
            .store
            .evaluations(run, round)?
            .into_iter()
            .filter_map(|(site, bytes)| {
                let report = pb::EvaluationReport::decode(bytes.as_slice()).ok()?;
                Some((site, convert::evaluation_from_pb(&report).ok()?))
            })
            .collect())
    }

    /// How often participants must show they are alive: a quarter of the
    /// liveness period, so that three missed signs still leave a margin.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.liveness / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }

    /// How long an evaluation waits for answers: the round deadline, or ten
    /// liveness periods without one. A site that answers in time counts.
    fn evaluation_wait(&self) -> Duration {
        self.plan
            .federation
            .deadline_seconds
            .map_or(self.liveness * 10, tessera_core::duration_from_secs)
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
        Timestamp(unix_micros().saturating_sub(self.run.created_unix_micros))
    }

    fn touch(&mut self, site: &str) {
        let now = self.now();
        self.last_seen.insert(site.to_string(), now);
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

    /// Counts bytes a participant sent.
    pub fn count_up(&mut self, site: &str, bytes: usize) {
        self.count_sent_by(site, bytes, None);
    }

    /// Counts an update's bytes, encoded with `codec`, and when it took
    /// `upload_seconds` from its first part (at `started`) to its last, the
    /// site's bandwidth.
    pub fn count_update(
        &mut self,
        site: &str,
        bytes: usize,
        codec: tessera_compress::Codec,
        upload_seconds: f64,
        started: Instant,
    ) {
        self.count_sent_by(site, bytes, Some(codec));
        self.update_bytes_up += bytes as u64;
        if !self.joined.contains(site) {
            return;
        }
        metrics::counter!(names::UPDATE_BYTES, "site" => site.to_string(), "codec" => codec.to_string())
            .increment(bytes as u64);
        self.links
            .observe_upload(site, bytes, upload_seconds, started);
    }

    fn count_sent_by(&mut self, site: &str, bytes: usize, update: Option<tessera_compress::Codec>) {
        metrics::counter!(names::BYTES_RECEIVED).increment(bytes as u64);
        self.bytes_up += bytes as u64;
        // Per site only for sites that joined: a name nobody verified gets
        // no counter, label or map entry.
        if !self.joined.contains(site) {
            return;
        }
        metrics::counter!(names::SITE_BYTES_RECEIVED, "site" => site.to_string())
            .increment(bytes as u64);
        *self.bytes_up_per_site.entry(site.to_string()).or_default() += bytes as u64;
        self.links.count_up(site, bytes as u64, update);
    }

    /// Counts bytes sent to `site`.
    pub fn count_down(&mut self, site: &str, bytes: usize) {
        metrics::counter!(names::BYTES_SENT).increment(bytes as u64);
        self.bytes_down += bytes as u64;
        if !self.joined.contains(site) {
            return;
        }
        metrics::counter!(names::SITE_BYTES_SENT, "site" => site.to_string())
            .increment(bytes as u64);
        self.links.count_down(site, bytes as u64);
    }

    /// The codec `site`'s update of `round` must use.
    pub fn expected_codec(&self, site: &str, round: u32) -> tessera_compress::Codec {
        self.links.expected(&self.plan, site, round)
    }

    /// Records a refused message in the audit log.
    pub fn reject_audit(&self, site: &str, action: &str, reason: &str) {
        if action == "update" {
            metrics::counter!(names::REJECTED, "reason" => "malformed").increment(1);
        }
        self.audit(site, action, "rejected", reason);
        let site = tessera_proto::shown(site, tessera_proto::MAX_SITE_NAME);
        let reason = tessera_proto::shown(reason, MAX_AUDIT_DETAIL);
        tracing::warn!(%site, %action, %reason, "rejected");
    }

    /// A participant joins: versions and capabilities are negotiated.
    pub fn join(&mut self, site: &str, hello: &pb::Hello) -> Result<pb::Welcome, Refusal> {
        if site.is_empty() {
            return Err(Refusal::Invalid("no site name".into()));
        }
        let mut required = required_capabilities(self.plan.federation.strategy.as_str());
        if self.plan.secure_aggregation.enabled || self.aggregate_only() {
            required.push("secure-aggregation");
            required.push("secure-aggregation-signed");
        }
        for codec in self.plan.compression.upload_codecs() {
            required.extend(tessera_proto::codec_capabilities(&codec));
        }
        required.extend(tessera_proto::model_codec_capabilities(
            &self.plan.compression.download,
        ));
        required.sort_unstable();
        required.dedup();
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
        if let Expected::Named(names) = &self.expected
            && !names.contains(site)
        {
            let reason = format!("site '{site}' is not among the plan's sites");
            self.audit(site, "join", "refused", &reason);
            return Err(Refusal::Denied(reason));
        }
        if self.joined.insert(site.to_string()) {
            let now = self.now();
            if let Err(e) = self.store.add_participant(&self.run.id, site, now) {
                // Not joined until recorded: its retry records it.
                self.joined.remove(site);
                return Err(unavailable(format!("cannot record the participant: {e}")));
            }
            if let Some(engine) = self.engine.as_mut() {
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
        })
    }

    fn require_joined(&self, site: &str) -> Result<(), Refusal> {
        if self.joined.contains(site) {
            Ok(())
        } else {
            Err(Refusal::Denied(format!("site '{site}' has not joined")))
        }
    }

    fn previous(&self, site: &str) -> (u32, bool) {
        self.counted.get(site).copied().unwrap_or((0, false))
    }

    /// What `site` should do now; `held` is the round whose model it holds.
    pub fn task_for(&mut self, site: &str, held: Option<u32>) -> Result<TaskView, Refusal> {
        self.require_joined(site)?;
        self.touch(site);
        let (previous_round, previous_update_counted) = self.previous(site);
        if self.buffered.is_some() && matches!(self.phase, Phase::Training) {
            return Ok(self.async_task(site));
        }
        match &self.phase {
            Phase::Finished => Ok(TaskView::Finished),
            Phase::Agreeing => Ok(TaskView::Wait),
            Phase::Training => {
                let Some(engine) = self.engine.as_ref() else {
                    return Ok(TaskView::Wait);
                };
                let id = ParticipantId::new(site);
                let Some(task) = engine.open_task().filter(|_| engine.is_pending(&id)) else {
                    return Ok(TaskView::Wait);
                };
                let codec = self
                    .links
                    .assign(&self.plan, site, task.round, task.global.n_values());
                let header = pb::TaskHeader {
                    round: task.round,
                    kind: pb::TaskKind::Fit as i32,
                    layout: tessera_proto::layout_of(&task.global),
                    proximal_mu: task.instructions.proximal_mu,
                    has_server_control: task.instructions.server_control.is_some(),
                    deadline_micros: task.deadline.map_or(0, |d| d.0),
                    previous_update_counted,
                    previous_round,
                    upload_codec: if codec.is_identity() {
                        String::new()
                    } else {
                        codec.to_string()
                    },
                    ..Default::default()
                };
                let mut header = header;
                let (global, model) = self.model_for(&mut header, task.global, held);
                Ok(TaskView::Fit {
                    header,
                    global,
                    control: task.instructions.server_control,
                    model,
                })
            }
            Phase::Evaluating {
                round,
                targets,
                received,
                ..
            } => {
                if !targets.contains(site) || received.contains_key(site) {
                    return Ok(TaskView::Wait);
                }
                // Aggregate-only: a site evaluates once, then waits for the
                // secure sum of everyone's evaluations to close.
                let secure_round = *round | tessera_secagg::EVALUATION_ROUND;
                if self.aggregate_only()
                    && !self.secure.as_ref().is_some_and(|s| {
                        s.round == secure_round
                            && s.is_evaluation()
                            && !s.has_joined(site)
                            && !s.has_refused(site)
                    })
                {
                    return Ok(TaskView::Wait);
                }
                let Some(global) = self.current_global() else {
                    return Ok(TaskView::Wait);
                };
                let mut header = pb::TaskHeader {
                    round: *round,
                    kind: pb::TaskKind::Evaluate as i32,
                    layout: tessera_proto::layout_of(&global),
                    proximal_mu: None,
                    has_server_control: false,
                    deadline_micros: 0,
                    previous_update_counted,
                    previous_round,
                    ..Default::default()
                };
                let (global, model) = self.model_for(&mut header, global, held);
                Ok(TaskView::Evaluate {
                    header,
                    global,
                    model,
                })
            }
        }
    }

    /// With a download codec: the model participants hold instead of
    /// `global`, and how it reaches a participant holding round `held`'s.
    fn model_for(
        &self,
        header: &mut pb::TaskHeader,
        global: Arc<ParameterSet>,
        held: Option<u32>,
    ) -> (Arc<ParameterSet>, ModelPart) {
        let Some(down) = &self.downlink else {
            return (global, ModelPart::Whole);
        };
        header.model_round = down.round();
        header.model_codec = down.codec().to_string();
        let (delivery, part) = match (held, down.change()) {
            (Some(h), _) if h == down.round() => (pb::ModelDelivery::Held, ModelPart::Held),
            (Some(h), Some(change)) if h + 1 == down.round() => (
                pb::ModelDelivery::Change,
                ModelPart::Change(change.to_vec()),
            ),
            _ => (pb::ModelDelivery::Full, ModelPart::Whole),
        };
        header.model_delivery = delivery as i32;
        (Arc::clone(down.held()), part)
    }

    /// The layout updates must have, and whether they carry control deltas.
    pub fn update_layout(&self) -> Option<(Arc<ParameterSet>, bool)> {
        if let Some(buffered) = &self.buffered {
            return Some((buffered.current().0, false));
        }
        let engine = self.engine.as_ref()?;
        Some((
            Arc::clone(engine.global()),
            self.plan.federation.strategy == tessera_aggregate::StrategyKind::Scaffold,
        ))
    }

    /// Records an update. Accepted updates are durable before this returns.
    pub fn submit_update(
        &mut self,
        site: &str,
        round: u32,
        update: &Update,
    ) -> Result<(), Refusal> {
        self.require_joined(site)?;
        self.touch(site);
        let now = self.now();
        if let Err(reason) = self
            .check_update(site, update)
            .and_then(|()| self.local_release_fits(update))
        {
            self.refuse_report(site, "update", &format!("round {round}: {reason}"));
            metrics::counter!(names::REJECTED, "reason" => "implausible").increment(1);
            return Err(Refusal::Invalid(reason));
        }
        if self.buffered.is_some() {
            return self.async_submit(site, round, update, now);
        }
        let id = ParticipantId::new(site);
        let Some(engine) = self.engine.as_mut() else {
            return Err(Refusal::Invalid("no round is open".into()));
        };
        match engine.submit(now, &id, round, update) {
            Ok(()) => {
                // Local DP: the update's DP-SGD goes in the ledger before the
                // update is stored (a crash in between over-counts, never under).
                if let Err(e) = self.record_local_release(site, round, update, now) {
                    tracing::error!(%e, "cannot record a release in the privacy ledger; stopping");
                    std::process::exit(70);
                }
                if let Err(e) = self
                    .store
                    .put_update(&self.run.id, round, round, site, update, now)
                {
                    // The engine counted an update the database does not hold: stop
                    // rather than acknowledge it. A restart resumes from the database.
                    tracing::error!(%e, "cannot store an accepted update; stopping");
                    std::process::exit(70);
                }
                metrics::counter!(names::ACCEPTED).increment(1);
                self.audit(
                    site,
                    "update",
                    "accepted",
                    &format!("round {round}, {} examples", update.n_examples),
                );
                self.version += 1;
                self.advance();
                Ok(())
            }
            Err(rejection) => {
                let label = match &rejection {
                    tessera_engine::Rejection::WrongRound { .. } => "wrong_round",
                    tessera_engine::Rejection::NotInCohort => "not_in_cohort",
                    tessera_engine::Rejection::NotPending => "not_pending",
                    tessera_engine::Rejection::Late => "late",
                    tessera_engine::Rejection::Invalid(_) => "invalid",
                };
                metrics::counter!(names::REJECTED, "reason" => label).increment(1);
                let reason = rejection.to_string();
                self.audit(
                    site,
                    "update",
                    "rejected",
                    &format!("round {round}: {reason}"),
                );
                self.version += 1;
                self.advance();
                Err(Refusal::Invalid(reason))
            }
        }
    }

    /// Local DP: whether the update's DP-SGD (its rows and steps, already
    /// bounded) has a noise multiplier the plan can account for.
    fn local_release_fits(&self, update: &Update) -> Result<(), String> {
        if self.local_ledger.is_none() {
            return Ok(());
        }
        let training = self.plan.local_training();
        let plan = tessera_learn::LocalPlan::plain(&training);
        let q = plan.sampling_rate(usize::try_from(update.n_examples).unwrap_or(usize::MAX));
        self.plan
            .privacy
            .local_noise_multiplier(q, update.stats.n_steps, self.plan.federation.rounds)
            .map(|_| ())
            .map_err(|e| format!("its DP-SGD cannot be accounted for: {e}"))
    }

    /// Local DP: records the DP-SGD behind `site`'s update of `round` (the
    /// plan fixes the noise; the update reports its rows and steps).
    fn record_local_release(
        &mut self,
        site: &str,
        round: u32,
        update: &Update,
        now: Timestamp,
    ) -> Result<(), CoordinatorError> {
        let Some(ledger) = self.local_ledger.as_mut() else {
            return Ok(());
        };
        let training = self.plan.local_training();
        let plan = tessera_learn::LocalPlan::plain(&training);
        let n = usize::try_from(update.n_examples).unwrap_or(usize::MAX);
        let q = plan.sampling_rate(n);
        let steps = update.stats.n_steps;
        let noise_multiplier = self
            .plan
            .privacy
            .local_noise_multiplier(q, steps, self.plan.federation.rounds)
            .map_err(|e| CoordinatorError::Config(e.to_string()))?;
        let event = tessera_privacy::DpEvent {
            sampling_rate: q,
            noise_multiplier,
            steps,
        };
        let mut entry = tessera_privacy::LedgerEntry {
            release: round,
            kind: "local".into(),
            participant: Some(site.to_string()),
            event,
            run_epsilon: 0.0,
        };
        if ledger.entries().iter().any(|e| {
            e.release == round && e.participant.as_deref() == Some(site) && e.kind == "local"
        }) {
            return Ok(());
        }
        let mut after = ledger.clone();
        after
            .restore(entry.clone())
            .map_err(|e| CoordinatorError::Config(e.to_string()))?;
        entry.run_epsilon = after.run_epsilon();
        ledger
            .restore(entry.clone())
            .map_err(|e| CoordinatorError::Config(e.to_string()))?;
        let clip = self.plan.privacy.clip_norm;
        self.store.put_ledger_row(
            &self.run.id,
            &crate::store::LedgerRow {
                entry,
                delta: self.plan.privacy.delta,
                clip_norm: clip,
                next_clip_norm: clip,
                noise_std: noise_multiplier * clip / (q * n as f64).max(1.0),
                updates: 1,
                recorded_micros: now.0,
            },
        )?;
        Ok(())
    }

    /// A participant at work says so; false once the round no longer waits for it.
    pub fn heartbeat(&mut self, site: &str, round: u32) -> Result<bool, Refusal> {
        self.require_joined(site)?;
        self.touch(site);
        if let Some(buffered) = &self.buffered {
            return Ok(!buffered.is_finished());
        }
        let engine = self.engine.as_ref();
        Ok(engine.is_some_and(|e| {
            e.open_round() == Some(round) && e.is_pending(&ParticipantId::new(site))
        }))
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
        let synchronous = self.buffered.is_none();
        let withdrawn = synchronous
            && self.engine.as_mut().is_some_and(|engine| {
                // A site leaving the run leaves whichever round is open (it
                // may not know which: it failed before its first task).
                let waiting =
                    (engine.open_round() == Some(round) || leaving) && engine.is_pending(&id);
                if waiting {
                    engine.report_dropout(&id);
                }
                waiting
            });
        if withdrawn {
            self.secure_withdraw(site);
        }
        if leaving && matches!(self.phase, Phase::Evaluating { .. }) {
            // A secure sum of the evaluations stops waiting for it too.
            self.secure_withdraw(site);
        }
        if leaving {
            // Not live any more: later rounds drop it at once, evaluations
            // do not wait for it, until it asks for a task again.
            self.last_seen.remove(site);
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
        self.version += 1;
        self.advance();
        Ok(withdrawn)
    }

    /// The joined sites heard from within the liveness period.
    fn live(&self, now: Timestamp) -> BTreeSet<String> {
        self.joined
            .iter()
            .filter(|s| !self.stale(s, now))
            .cloned()
            .collect()
    }

    fn stale(&self, site: &str, now: Timestamp) -> bool {
        self.last_seen
            .get(site)
            .is_none_or(|&seen| now.since(seen) > self.liveness)
    }

    /// Time-driven and event-driven transitions: opens rounds, drops silent
    /// participants, closes rounds at their deadline, finishes evaluations.
    pub fn advance(&mut self) {
        let now = self.now();
        let connected = self.joined.iter().filter(|s| !self.stale(s, now)).count();
        metrics::gauge!(names::CONNECTED).set(connected as f64);
        metrics::gauge!(names::JOINED).set(self.joined.len() as f64);
        for _ in 0..8 {
            let before = self.version;
            if let Err(e) = self.step() {
                tracing::error!(%e, "cannot advance the federation");
                return;
            }
            if self.version == before {
                return;
            }
        }
    }

    fn step(&mut self) -> Result<(), CoordinatorError> {
        let now = self.now();
        match &self.phase {
            Phase::Agreeing | Phase::Finished => Ok(()),
            Phase::Training if self.buffered.is_some() => self.async_step(now),
            Phase::Training => self.step_training(now),
            Phase::Evaluating { .. } => self.step_evaluating(now),
        }
    }

    fn step_training(&mut self, now: Timestamp) -> Result<(), CoordinatorError> {
        let run = self.run.id.clone();
        // An aggregator opens a round when its parent's task for it comes.
        if self.relay.is_some() && !self.relay_step(now)? {
            return Ok(());
        }
        let Some(engine) = self.engine.as_mut() else {
            return Ok(());
        };
        if engine.open_round().is_none() {
            if engine.is_finished() {
                self.store.finish_run(&run)?;
                self.audit(
                    "-",
                    "run",
                    "finished",
                    &format!("{} rounds", self.records.len()),
                );
                self.phase = Phase::Finished;
                self.version += 1;
                return Ok(());
            }
            match engine.begin_round(now) {
                Ok(start) => {
                    self.store
                        .open_round(&run, start.task.round, &start.cohort, now)?;
                    self.open_secure_round(start.task.round, &start.cohort, now);
                    metrics::gauge!(names::CURRENT_ROUND).set(f64::from(start.task.round));
                    self.round_started = Some(Instant::now());
                    tracing::info!(
                        round = start.task.round,
                        cohort = start.cohort.len(),
                        "round opened"
                    );
                    self.version += 1;
                }
                Err(tessera_engine::EngineError::NotEnoughParticipants { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(());
        }
        // A cohort member that has not been heard of for too long is gone.
        let silent: Vec<String> = self
            .joined
            .iter()
            .filter(|s| engine.is_pending(&ParticipantId::new(s.as_str())))
            .filter(|s| {
                self.last_seen
                    .get(*s)
                    .is_none_or(|&seen| now.since(seen) > self.liveness)
            })
            .cloned()
            .collect();
        for site in &silent {
            engine.report_dropout(&ParticipantId::new(site.as_str()));
        }
        for site in &silent {
            // Under secure aggregation the current stage stops waiting for it.
            self.secure_withdraw(site);
            self.audit(
                site,
                "liveness",
                "dropped",
                &format!("silent for more than {:?}", self.liveness),
            );
            self.version += 1;
        }
        self.advance_secure(now);
        let Some(engine) = self.engine.as_mut() else {
            return Ok(());
        };
        let Some(outcome) = engine.poll(now) else {
            return Ok(());
        };
        let model = Arc::clone(engine.global());
        if let Some(down) = self.downlink.as_mut() {
            down.advance(outcome.round, &model)?;
        }
        let seconds = self
            .round_started
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        let record = round_record(&outcome, &[], seconds, 0, 0);
        let record_json =
            serde_json::to_string(&record).map_err(|e| CoordinatorError::Config(e.to_string()))?;
        let status = record.status.clone();
        let cohort: Vec<String> = outcome
            .cohort
            .iter()
            .map(|p| p.as_str().to_string())
            .collect();
        let counted: Vec<String> = if outcome.status == RoundStatus::Completed {
            outcome
                .accepted
                .iter()
                .map(|p| p.as_str().to_string())
                .collect()
        } else {
            Vec::new()
        };
        self.store.close_round(
            &run,
            &RoundClose {
                round: outcome.round,
                aggregate: outcome.aggregate.as_ref(),
                model: &model,
                status: &status,
                record_json: &record_json,
                cohort: &cohort,
                counted: &counted,
                at: now,
                privacy: outcome
                    .privacy
                    .as_ref()
                    .map(|(release, entry)| (release, entry, self.plan.privacy.delta)),
            },
        )?;
        for site in &cohort {
            self.counted
                .insert(site.clone(), (outcome.round, counted.contains(site)));
        }
        let label = match &outcome.status {
            RoundStatus::Completed => "completed",
            RoundStatus::QuorumNotMet { .. } => "quorum_not_met",
            RoundStatus::Failed(_) => "failed",
        };
        metrics::counter!(names::ROUNDS, "status" => label).increment(1);
        metrics::histogram!(names::ROUND_SECONDS)
            .record(outcome.closed_at.since(outcome.opened_at).as_secs_f64());
        for (site, reason) in &outcome.rejected {
            tracing::warn!(%site, %reason, round = outcome.round, "update rejected");
        }
        tracing::info!(
            round = outcome.round,
            status = %status,
            accepted = outcome.accepted.len(),
            stragglers = outcome.stragglers.len(),
            dropped = outcome.dropped.len(),
            "round closed"
        );
        let targets = self.live(now);
        // An aggregator's answer goes up; its members then evaluate the
        // model the parent sends next, and wait for it.
        let until = match self.relay.as_mut() {
            Some(relay) => {
                relay.closed(
                    outcome.round,
                    outcome.aggregate.map(tessera_engine::upward_update),
                );
                Timestamp(u64::MAX)
            }
            None => now.plus(self.evaluation_wait()),
        };
        if self.aggregate_only() {
            let cohort = self.joined.clone();
            self.open_secure_evaluation(outcome.round, &cohort, &targets, now);
        }
        self.phase = Phase::Evaluating {
            round: outcome.round,
            until,
            targets,
            received: BTreeMap::new(),
            record: Box::new(record),
        };
        self.version += 1;
        Ok(())
    }

    /// The run's report so far.
    pub fn report(&self) -> RunReport {
        let names: Vec<&str> = self
            .last_evaluations
            .iter()
            .map(|(s, _)| s.as_str())
            .collect();
        let evaluations: Vec<Evaluation> = self
            .last_evaluations
            .iter()
            .map(|(_, e)| e.clone())
            .collect();
        let elapsed = self.started.elapsed().as_secs_f64();
        let n_rounds = self.records.len().max(1) as f64;
        let mut rounds = self.records.clone();
        // Rounds without their own traffic (asynchronous steps): the run's
        // traffic spread evenly.
        for r in rounds.iter_mut().filter(|r| r.traffic.is_empty()) {
            r.bytes_up = self.bytes_up / n_rounds as u64;
            r.bytes_down = self.bytes_down / n_rounds as u64;
        }
        let final_metrics = match (&self.last_view, self.aggregate_only()) {
            (Some(view), true) => tessera_engine::report::final_metrics_view(view, BTreeMap::new()),
            // Resumed: the last round evaluated before the restart, as
            // stored (under "dp", noised: evaluating again would be another
            // release).
            (None, true) => match self.records.iter().rev().find(|r| r.n_test > 0) {
                Some(last) => tessera_engine::report::FinalMetrics {
                    accuracy: Some(last.accuracy),
                    mean_site_accuracy: Some(last.mean_site_accuracy),
                    auc: last.auc,
                    loss: Some(last.loss),
                    per_site: BTreeMap::new(),
                },
                None => final_metrics(&names, &evaluations),
            },
            _ => final_metrics(&names, &evaluations),
        };
        RunReport {
            plan: self.plan.name.clone(),
            strategy: self.plan.federation.strategy.to_string(),
            seed: self.plan.seed,
            model: format!("{:?}", self.plan.model.kind).to_lowercase(),
            features: self
                .agreement
                .as_ref()
                .map(Agreement::feature_names)
                .unwrap_or_default(),
            classes: self
                .agreement
                .as_ref()
                .map(|a| a.classes.clone())
                .unwrap_or_default(),
            data: Vec::new(),
            rounds,
            robustness: (self.plan.robust.rule.needs_all_updates()
                || self.plan.robust.norm_bound.is_some())
            .then(|| tessera_engine::report::RobustnessReport {
                rule: self.plan.robust.rule.to_string(),
                norm_bound: self.plan.robust.norm_bound,
                attack: "none".into(),
                malicious: Vec::new(),
                // Deployment knows of no malicious site: every site is
                // counted honest (0 when nothing was evaluated).
                honest_accuracy: final_metrics.accuracy.unwrap_or(0.0),
            }),
            topology: self.relay.as_ref().map(|r| r.topology(&self.records)),
            final_metrics,
            baselines: None,
            metrics_privacy: self
                .metrics_dp
                .as_ref()
                .map(|dp| tessera_engine::report::MetricsPrivacyReport::of(dp, true)),
            timing: Timing {
                total_seconds: elapsed,
                data_seconds: 0.0,
                rounds_seconds: elapsed,
                seconds_per_round: elapsed / n_rounds,
                baselines_seconds: 0.0,
                virtual_seconds: self.now().as_secs_f64(),
                threads: 1,
                peak_rss_bytes: None,
                virtual_seconds_to_target: None,
            },
            communication: Communication {
                bytes_up: self.bytes_up,
                bytes_down: self.bytes_down,
                bytes_up_per_site: self.bytes_up_per_site.clone(),
                update_bytes_up: self.update_bytes_up,
            },
            privacy: match &self.local_ledger {
                Some(ledger) => Some(
                    tessera_engine::report::PrivacyReport::local(
                        &self.plan.privacy,
                        ledger
                            .entries()
                            .iter()
                            .map(|e| e.event.noise_multiplier)
                            .fold(f64::INFINITY, f64::min),
                        ledger,
                    )
                    .deployed(),
                ),
                None => self
                    .engine
                    .as_ref()
                    .and_then(|e| e.privacy())
                    .map(|(dp, ledger)| {
                        tessera_engine::report::PrivacyReport::new(&self.plan.privacy, dp, ledger)
                            .deployed()
                    }),
            },
            final_parameters: self
                .current_global()
                .map(|g| g.as_ref().clone())
                .unwrap_or_default(),
        }
    }

    /// The current global model, sync or async.
    fn current_global(&self) -> Option<Arc<ParameterSet>> {
        // An aggregator's members evaluate its parent's model, once it came.
        if let (Some(relay), Phase::Evaluating { .. }) = (&self.relay, &self.phase) {
            return relay.evaluating(&self.phase);
        }
        match (&self.buffered, &self.engine) {
            (Some(buffered), _) => Some(buffered.current().0),
            (None, Some(engine)) => Some(Arc::clone(engine.global())),
            (None, None) => None,
        }
    }

    /// The store, for reads.
    pub fn store(&self) -> &Store {
        &self.store
    }
}
