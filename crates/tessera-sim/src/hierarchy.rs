//! Hierarchical aggregation in simulation: a tree of aggregators, each
//! running the same round engine over its members (sites or aggregators
//! below). An aggregator opens its round when the model reaches it, closes it
//! when its members have answered (or its deadline passes), and sends its
//! members' weighted mean update upward as one update carrying their examples;
//! with FedAvg weights the root's mean equals the flat mean. Every round each
//! aggregator's regional model (the round's model plus its own mean) is kept.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use rayon::prelude::*;
use tessera_core::{ParameterSet, ParticipantId, Timestamp, Update};
use tessera_data::FederatedData;
use tessera_engine::PlanBuild;
use tessera_engine::report::{
    EvaluationView, PrivacyReport, RegionReport, RoundRecord, SiteTraffic, TopologyReport,
    round_record_view,
};
use tessera_engine::{
    EngineConfig, EngineError, FitTask, Member, Plan, RoundEngine, RoundOutcome, RoundStatus, Site,
    Tree,
};
use tessera_learn::{Evaluation, Schedule};
use tessera_orchestrator::privacy::{Place, PrivacyBook};

use crate::SimError;

mod shard;
use crate::profile::{Profile, examples_per_round};
use crate::run::{Federated, evaluate_all, initial_model, lock, plain_sites, simulation_noise_key};
pub use shard::{Shard, ShardRound};

/// What a member sent up, and when it arrived.
struct Answer {
    update: Option<Update>,
    at: Timestamp,
}

/// Bytes moved in a round at each depth: (received by aggregators at depth d,
/// sent by them to their members).
#[derive(Default)]
struct Traffic {
    up: Vec<u64>,
    down: Vec<u64>,
    site_up: Vec<u64>,
    /// Each site's and aggregator's bytes this round.
    members: BTreeMap<String, SiteTraffic>,
}

impl Traffic {
    fn add(v: &mut Vec<u64>, depth: usize, bytes: u64) {
        if v.len() <= depth {
            v.resize(depth + 1, 0);
        }
        v[depth] += bytes;
    }

    /// An aggregator at `depth` sent `bytes` of model to `member`.
    fn model_to(&mut self, depth: usize, member: &str, bytes: u64) {
        Self::add(&mut self.down, depth, bytes);
        self.members.entry(member.to_string()).or_default().down += bytes;
    }

    /// An aggregator at `depth` received `bytes` of update from `member`.
    fn update_from(&mut self, depth: usize, member: &str, bytes: u64) {
        Self::add(&mut self.up, depth, bytes);
        let entry = self.members.entry(member.to_string()).or_default();
        entry.up += bytes;
        entry.update += bytes;
    }
}

/// Central DP of an aggregator that holds sites, carried from round to round.
type Privacy = (tessera_privacy::CentralDp, tessera_privacy::Ledger);

struct Context<'a> {
    plan: &'a Plan,
    data: &'a FederatedData,
    tree: &'a Tree,
    sites: &'a [Mutex<Site>],
    profiles: &'a [Profile],
    node_profiles: &'a [Profile],
    schedule: Schedule,
    batch_size: usize,
    /// The run's privacy book: where central DP runs.
    book: &'a PrivacyBook,
    /// With central DP: each site-holding aggregator's mechanism and ledger.
    privacy: Mutex<BTreeMap<usize, Privacy>>,
    /// With secure aggregation: each site's key pairs between rounds.
    rings: Mutex<Vec<Option<Box<tessera_secagg::KeyRing>>>>,
    /// What went wrong below the root this round (for the round's record).
    errors: Mutex<Vec<String>>,
}

impl Context<'_> {
    fn site_answer(
        &self,
        site: usize,
        task: &FitTask,
        opened: Timestamp,
    ) -> Result<Answer, SimError> {
        let profile = &self.profiles[site];
        let round = task.round;
        let name = &self.data.sites[site].name;
        let n_rows = self.data.sites[site].train.n_rows();
        let examples = examples_per_round(self.schedule, self.batch_size, n_rows);
        let received = opened.plus(profile.latency());
        let compute = profile.compute_time(examples);
        if let Some(share) = profile.drops_out(self.plan.seed, round, name) {
            return Ok(Answer {
                update: None,
                at: received
                    .plus(compute.mul_f64(share))
                    .plus(profile.latency()),
            });
        }
        // Local training that fails (diverges): the site leaves the round,
        // and the round's record says why, as in the flat simulation.
        let update = match lock(&self.sites[site]).fit(task, &self.data.sites[site].train) {
            Ok(update) => Some(update),
            Err(e) => {
                self.errors
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(format!("site '{name}': {e}"));
                None
            }
        };
        Ok(Answer {
            update,
            at: received.plus(compute).plus(profile.latency()),
        })
    }

    /// Runs node `n`'s round from `opened` (the model reaching it); returns
    /// its answer to its parent, and records its regional model.
    fn node_answer(
        &self,
        n: usize,
        task: &FitTask,
        opened: Timestamp,
        traffic: &Mutex<Traffic>,
        regional: &Mutex<BTreeMap<usize, ParameterSet>>,
    ) -> Result<Answer, SimError> {
        let node = &self.tree.nodes[n];
        let profile = &self.node_profiles[n];
        let received = opened.plus(profile.latency());
        let engine =
            tessera_engine::aggregator_engine(self.plan, task.global.as_ref().clone(), task.round)?;
        // Central DP: the aggregator that holds sites clips their updates and
        // noises their sum, with its own key, its ledger kept across rounds.
        let mut engine = self.protect(n, engine)?;
        let ids: Vec<ParticipantId> = node.members.iter().map(|m| self.member_id(*m)).collect();
        for id in &ids {
            engine.register(id.clone());
        }
        engine.begin_round(received)?;
        let all: Vec<usize> = (0..node.members.len()).collect();
        let outcome = self.run_round(&mut engine, n, &all, task, received, traffic, regional)?;
        if let Some((dp, ledger)) = engine.privacy() {
            lock_privacy(&self.privacy).insert(n, (dp.clone(), ledger.clone()));
        }
        let at = outcome.closed_at.plus(profile.latency());
        let update = match (&outcome.status, outcome.aggregate) {
            (RoundStatus::Completed, Some(aggregate)) => {
                regional
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(n, engine.global().as_ref().clone());
                Some(tessera_engine::upward_update(aggregate))
            }
            _ => None,
        };
        Ok(Answer { update, at })
    }

    /// Node `n`'s open round of `task` in `engine`, over its members at
    /// `members` (positions in its member list): sends them the model, gets
    /// their answers from `opened` on, feeds them in arrival order, closes it.
    #[allow(clippy::too_many_arguments)]
    fn run_round(
        &self,
        engine: &mut RoundEngine,
        n: usize,
        members: &[usize],
        task: &FitTask,
        opened: Timestamp,
        traffic: &Mutex<Traffic>,
        regional: &Mutex<BTreeMap<usize, ParameterSet>>,
    ) -> Result<RoundOutcome, SimError> {
        let node = &self.tree.nodes[n];
        let model_bytes = 32 + task.global.wire_len() as u64;
        for &i in members {
            lock_traffic(traffic).model_to(
                node.depth,
                self.member_id(node.members[i]).as_str(),
                model_bytes,
            );
        }
        // Each member's own task: the instructions `engine`'s strategy gives
        // it, as its aggregator (or the root) gives them in deployment.
        let tasks: Vec<FitTask> = members
            .iter()
            .map(|&i| FitTask {
                instructions: engine.instructions_for(&self.member_id(node.members[i])),
                ..task.clone()
            })
            .collect();
        let answers: Vec<Result<Answer, SimError>> = members
            .par_iter()
            .zip(&tasks)
            .map(|(&i, task)| self.member_answer(node.members[i], task, opened, traffic, regional))
            .collect();
        let mut answers: Vec<(usize, Answer)> = members
            .iter()
            .copied()
            .zip(answers)
            .map(|(i, a)| a.map(|a| (i, a)))
            .collect::<Result<_, _>>()?;
        answers.sort_by_key(|(i, a)| (a.at, *i));
        // Secure aggregation runs at every aggregator: its members (sites,
        // or aggregators below with their own members' mean) mask their
        // updates, and it learns only their sum.
        let secure = self.plan.secure_aggregation.enabled;
        let mut secure_updates: BTreeMap<usize, Update> = BTreeMap::new();
        let mut last = opened;
        // Summed together, as they arrived (`submit_many`).
        let mut arrived = Vec::new();
        for (i, answer) in &answers {
            if engine.deadline().is_some_and(|d| answer.at > d) {
                continue;
            }
            last = last.max(answer.at);
            let id = self.member_id(node.members[*i]);
            match &answer.update {
                Some(update) if secure => {
                    secure_updates.insert(self.secure_id(node.members[*i]), update.clone());
                }
                Some(update) => {
                    let size = update.wire_len() as u64;
                    let mut t = lock_traffic(traffic);
                    t.update_from(node.depth, id.as_str(), size);
                    if let Member::Site(s) = node.members[*i] {
                        t.site_up[s] += size;
                    }
                    drop(t);
                    arrived.push((answer.at, id, update));
                }
                None => engine.report_dropout(&id),
            }
        }
        let batch: Vec<_> = arrived.iter().map(|(at, id, u)| (*at, id, *u)).collect();
        // A rejection is recorded by the engine and reported in the outcome.
        let _ = engine.submit_many(task.round, &batch);
        if secure {
            self.secure_sum(engine, n, members, task, last, secure_updates, traffic);
        }
        let cannot = |what: &str| EngineError::State(format!("aggregator '{}' {what}", node.name));
        Ok(match engine.poll(last) {
            Some(o) => o,
            None => {
                let deadline = engine.deadline().ok_or_else(|| cannot("cannot close"))?;
                engine
                    .poll(deadline)
                    .ok_or_else(|| cannot("did not close at its deadline"))?
            }
        })
    }

    /// A member's id in secure rounds (and its key ring's index): sites
    /// first, then aggregators.
    fn secure_id(&self, member: Member) -> usize {
        match member {
            Member::Site(s) => s,
            Member::Node(c) => self.data.sites.len() + c,
        }
    }

    /// Node `n`'s SecAgg+ round over its `members` (positions in its member
    /// list), those in `updates` (by secure id) having answered in time; the
    /// engine gets only the survivors' sum.
    #[allow(clippy::too_many_arguments)]
    fn secure_sum(
        &self,
        engine: &mut RoundEngine,
        n: usize,
        members: &[usize],
        task: &FitTask,
        at: Timestamp,
        updates: BTreeMap<usize, Update>,
        traffic: &Mutex<Traffic>,
    ) {
        let node = &self.tree.nodes[n];
        let cohort: Vec<usize> = members
            .iter()
            .map(|&i| self.secure_id(node.members[i]))
            .collect();
        let member_of = |id: usize| {
            if id < self.data.sites.len() {
                Member::Site(id)
            } else {
                Member::Node(id - self.data.sites.len())
            }
        };
        let layout = task.global.zeros_like();
        let result = {
            let mut rings = self
                .rings
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            crate::secure::secure_round(
                self.plan, task.round, &cohort, updates, &layout, &mut rings,
            )
        };
        let result = match result {
            Ok(result) => result,
            Err(e) => {
                // Its sites leave the round, as in the flat simulation.
                self.errors
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(format!(
                        "aggregator '{}': secure aggregation failed: {e}",
                        node.name
                    ));
                for &id in &cohort {
                    engine.report_dropout(&self.member_id(member_of(id)));
                }
                return;
            }
        };
        let mut t = lock_traffic(traffic);
        for (&id, &size) in &result.bytes_up {
            let name = self.member_id(member_of(id)).as_str().to_string();
            Traffic::add(&mut t.up, node.depth, size);
            if let Member::Site(s) = member_of(id) {
                t.site_up[s] += size;
            }
            let entry = t.members.entry(name).or_default();
            entry.up += size;
            entry.update += result.masked_bytes.get(&id).copied().unwrap_or(0);
        }
        for (&id, &size) in &result.bytes_down {
            Traffic::add(&mut t.down, node.depth, size);
            let name = self.member_id(member_of(id)).as_str().to_string();
            t.members.entry(name).or_default().down += size;
        }
        drop(t);
        let survivors: Vec<ParticipantId> = result
            .survivors
            .iter()
            .map(|&id| self.member_id(member_of(id)))
            .collect();
        // A rejection is recorded by the engine and reported in the outcome.
        let _ = engine.submit_sum(at, task.round, &survivors, &result.sum);
    }

    fn member_answer(
        &self,
        member: Member,
        task: &FitTask,
        opened: Timestamp,
        traffic: &Mutex<Traffic>,
        regional: &Mutex<BTreeMap<usize, ParameterSet>>,
    ) -> Result<Answer, SimError> {
        match member {
            Member::Site(s) => self.site_answer(s, task, opened),
            Member::Node(n) => self.node_answer(n, task, opened, traffic, regional),
        }
    }

    /// Node `n`'s engine with central DP, where the privacy book says it
    /// runs: carried from its last round, or new.
    fn protect(&self, n: usize, engine: RoundEngine) -> Result<RoundEngine, SimError> {
        if let Some((dp, ledger)) = lock_privacy(&self.privacy).remove(&n) {
            return Ok(engine.with_privacy(dp, ledger));
        }
        let place = Place::Node {
            tree: self.tree,
            node: n,
        };
        let Some(cohort) = self.book.central_cohort(place) else {
            return Ok(engine);
        };
        let key = simulation_noise_key(tessera_core::derive_seed(
            self.plan.seed,
            &[tessera_core::tag(&self.tree.nodes[n].name)],
        ));
        Ok(engine.protected(self.plan, Some(key), cohort)?)
    }

    fn member_id(&self, member: Member) -> ParticipantId {
        match member {
            Member::Site(s) => ParticipantId::new(&self.data.sites[s].name),
            Member::Node(n) => ParticipantId::new(&self.tree.nodes[n].name),
        }
    }
}

fn lock_traffic(t: &Mutex<Traffic>) -> std::sync::MutexGuard<'_, Traffic> {
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock_privacy(
    p: &Mutex<BTreeMap<usize, Privacy>>,
) -> std::sync::MutexGuard<'_, BTreeMap<usize, Privacy>> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Synchronous rounds over the plan's aggregation tree.
pub(crate) fn run_hierarchical(
    plan: &Plan,
    data: &FederatedData,
    observer: &mut dyn FnMut(&RoundRecord),
) -> Result<(Federated, TopologyReport), SimError> {
    let names: Vec<String> = data.sites.iter().map(|s| s.name.clone()).collect();
    let tree = Tree::build(&plan.topology, &names)?;
    let book = crate::run::privacy_book(plan)?;
    book.check_tree(&tree)?;
    // Work that a privacy budget could not release is refused before it
    // starts, as at the aggregators of a deployment.
    if (0..tree.nodes.len()).any(|node| {
        book.central_cohort(Place::Node { tree: &tree, node })
            .is_some()
    }) {
        book.forecast_central(&[]).map_err(EngineError::from)?;
    }
    if plan.secure_aggregation.enabled {
        tree.check_secure_sizes()?;
    }
    let initial = initial_model(plan, data)?;
    let training = plan.local_training();
    let mut root = RoundEngine::new(
        EngineConfig::from_plan(plan),
        plan.strategy()?,
        initial.parameters().clone(),
    );
    let (sites, profiles) = plain_sites(plan, initial.as_ref(), &names);
    let node_profiles: Vec<Profile> = tree
        .nodes
        .iter()
        .map(|n| Profile::draw(&plan.simulation, plan.seed, &n.name))
        .collect();
    let context = Context {
        plan,
        data,
        tree: &tree,
        sites: &sites,
        profiles: &profiles,
        node_profiles: &node_profiles,
        schedule: training.schedule()?,
        batch_size: training.batch_size,
        book: &book,
        privacy: Mutex::new(BTreeMap::new()),
        rings: Mutex::new((0..names.len() + tree.nodes.len()).map(|_| None).collect()),
        errors: Mutex::new(Vec::new()),
    };
    let root_members = &tree.nodes[0].members;
    let index: BTreeMap<ParticipantId, usize> = root_members
        .iter()
        .enumerate()
        .map(|(i, m)| (context.member_id(*m), i))
        .collect();
    for id in index.keys() {
        root.register(id.clone());
    }
    let mut now = Timestamp::ZERO;
    let mut records = Vec::new();
    let mut last_evaluations = Vec::new();
    let mut up_by_depth: Vec<u64> = Vec::new();
    let mut down_by_depth: Vec<u64> = Vec::new();
    let mut bytes_up_per_site = vec![0u64; names.len()];
    let mut regional_models: BTreeMap<usize, ParameterSet> = BTreeMap::new();
    while !root.is_finished() {
        let wall = Instant::now();
        let start = root.begin_round(now)?;
        // Each member's instructions come from the engine that asks it
        // (run_round): the root's strategy for the root's members, an
        // aggregator's (the plan's strategy's instructions) below.
        let task = &start.task(Default::default());
        let traffic = Mutex::new(Traffic {
            site_up: vec![0; names.len()],
            ..Traffic::default()
        });
        let regional = Mutex::new(BTreeMap::new());
        let cohort: Vec<usize> = start.cohort.iter().map(|id| index[id]).collect();
        let outcome = context.run_round(&mut root, 0, &cohort, task, now, &traffic, &regional)?;
        now = outcome.closed_at;
        let global = root.global().clone();
        let evaluations: Vec<Evaluation> = evaluate_all(&sites, data, &global)?;
        let mut traffic = traffic
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (d, b) in traffic.up.iter().enumerate() {
            Traffic::add(&mut up_by_depth, d, *b);
        }
        for (d, b) in traffic.down.iter().enumerate() {
            Traffic::add(&mut down_by_depth, d, *b);
        }
        let mut bytes_up: u64 = traffic.up.iter().sum();
        let bytes_down: u64 = traffic.down.iter().sum();
        for (s, b) in traffic.site_up.iter().enumerate() {
            bytes_up_per_site[s] += b;
        }
        // Evaluations go to the root directly, with the model to evaluate.
        for (s, e) in evaluations.iter().enumerate() {
            let size = e.wire_len() as u64;
            bytes_up_per_site[s] += size;
            bytes_up += size;
            let entry = traffic.members.entry(names[s].clone()).or_default();
            entry.up += size;
        }
        regional_models.extend(
            regional
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let site_names: Vec<&str> = names.iter().map(String::as_str).collect();
        let view = EvaluationView::clear(root.strategy(), &site_names, &evaluations);
        let mut record = round_record_view(
            &outcome,
            &view,
            wall.elapsed().as_secs_f64(),
            bytes_up,
            bytes_down,
        );
        record.traffic = traffic.members;
        record.site_errors = std::mem::take(
            &mut *context
                .errors
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        observer(&record);
        records.push(record);
        last_evaluations = evaluations;
    }
    // Each aggregator's last regional model on its own sites' test rows.
    let final_global = root.global().as_ref().clone();
    let mut regions = BTreeMap::new();
    for (n, model) in &regional_models {
        let below = tree.sites_below(*n);
        let pooled = |parameters: &ParameterSet| -> Result<f64, SimError> {
            let evaluations: Vec<Evaluation> = below
                .iter()
                .map(|&s| lock(&sites[s]).evaluate(parameters, &data.sites[s].test))
                .collect::<Result<_, _>>()?;
            Ok(Evaluation::pool(&evaluations).accuracy())
        };
        regions.insert(
            tree.nodes[*n].name.clone(),
            RegionReport {
                depth: tree.nodes[*n].depth,
                sites: below.iter().map(|&s| names[s].clone()).collect(),
                accuracy: Some(pooled(model)?),
                global_accuracy: pooled(&final_global)?,
            },
        );
    }
    let personal = if plan.personalizes() {
        Some(fine_tuned_from_regions(
            plan,
            data,
            &tree,
            &sites,
            &regional_models,
            &final_global,
        )?)
    } else {
        None
    };
    // Every site is in one aggregator's releases: the run's privacy is the
    // largest spend of any of them.
    let privacy = lock_privacy(&context.privacy)
        .values()
        .map(|(dp, ledger)| PrivacyReport::new(&plan.privacy, dp, ledger))
        .max_by(|a, b| a.epsilon.total_cmp(&b.epsilon));
    let report = TopologyReport {
        kind: "hierarchical".into(),
        root_bytes_up: up_by_depth.first().copied().unwrap_or(0),
        bytes_up_by_depth: up_by_depth,
        bytes_down_by_depth: down_by_depth,
        regions,
        ..TopologyReport::default()
    };
    Ok((
        Federated {
            attribution: None,
            personal,
            records,
            last_evaluations,
            final_parameters: final_global,
            bytes_up_per_site,
            end: now,
            privacy,
            malicious: Vec::new(),
        },
        report,
    ))
}

/// Hierarchical personalization: each site fine-tunes the model of its
/// region (its deepest aggregator's last regional model; the global one for
/// a site directly under the root, which has no region) as
/// `[personalization]` says, and its departments fine-tune the site's; each
/// site's figures and its region's model on its test rows, in site order.
fn fine_tuned_from_regions(
    plan: &Plan,
    data: &FederatedData,
    tree: &Tree,
    sites: &[Mutex<Site>],
    regional_models: &BTreeMap<usize, ParameterSet>,
    global: &ParameterSet,
) -> Result<crate::personal::Personal, SimError> {
    let mut region_of: Vec<Option<usize>> = vec![None; sites.len()];
    for &n in regional_models.keys() {
        for s in tree.sites_below(n) {
            if region_of[s].is_none_or(|m| tree.nodes[m].depth < tree.nodes[n].depth) {
                region_of[s] = Some(n);
            }
        }
    }
    let mut personal = Vec::with_capacity(sites.len());
    let mut regional = Vec::with_capacity(sites.len());
    let initial = crate::personal::initial_parameters(plan, data)?;
    for (s, rows) in data.sites.iter().enumerate() {
        let region = region_of[s].and_then(|n| regional_models.get(&n));
        let mut site = lock(&sites[s]);
        regional.push(region.map(|r| site.evaluate(r, &rows.test)).transpose()?);
        personal.push(crate::personal::personalized_site(
            plan,
            data,
            (&mut site, rows),
            (global, region, &initial),
        )?);
    }
    Ok(crate::personal::Personal::of(
        plan,
        personal,
        Some(regional),
    ))
}
