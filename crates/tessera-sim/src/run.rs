//! Driving the round engine with in-process participants on a virtual clock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rayon::prelude::*;
use tessera_compress::Codec;
use tessera_core::{ParameterSet, ParticipantId, Timestamp, derive_seed, tag};
use tessera_data::FederatedData;
use tessera_engine::PlanBuild;
use tessera_engine::{
    EngineConfig, EngineError, ExternalLearner, Mode, Plan, PlanError, RoundEngine, RoundStatus,
    Site, TopologyKind,
};
use tessera_learn::{Evaluation, LearnError, Learner};
use thiserror::Error;

use crate::profile::{Profile, examples_per_round};
use tessera_engine::report::{PrivacyReport, RoundRecord, RunReport};
use tessera_engine::streams;
use tessera_orchestrator::Effect;
use tessera_orchestrator::privacy::{LocalReport, Place, PrivacyBook};
use tessera_orchestrator::upload_codec;

use crate::round_traffic::IndexedTraffic;

use crate::Attack;
pub(crate) use crate::sites::{evaluate_all, evaluate_sites, lock};
pub(crate) use crate::summary::{Federated, report};

/// Why a simulation could not run.
#[derive(Debug, Error)]
pub enum SimError {
    /// The plan is unusable.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The engine refused.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A model could not be built or evaluated.
    #[error(transparent)]
    Learn(#[from] LearnError),
}

/// What to run besides the federation.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimOptions {
    /// Also train the local-only and pooled baselines.
    pub baselines: bool,
    /// Report when accuracy (all test rows) first reaches this, on the run clock.
    pub target_accuracy: Option<f64>,
    /// Simulated Byzantine participants (synchronous rounds only).
    pub attack: Option<Attack>,
}

/// The key of simulated DP noise, from the run seed (central DP: the run
/// seed itself; local DP-SGD: a seed derived from the run seed and the site,
/// keying both its noise and its Poisson batches). Reproducible, and
/// therefore not secret: a simulation is an experiment, not a release.
/// Deployment draws its keys from the operating system, at the party that
/// adds the noise, and never sends or stores them.
pub fn simulation_noise_key(seed: u64) -> [u8; 32] {
    tessera_core::derive_key(seed, &[streams::DP_NOISE])
}

/// The initial global model of `plan` on `data`, as a learner.
pub fn initial_model(plan: &Plan, data: &FederatedData) -> Result<Box<dyn Learner>, LearnError> {
    plan.learner(data.n_features(), data.task.n_classes())
}

/// What happens to a cohort member on the virtual clock.
#[derive(Debug, Clone, Copy)]
struct Event {
    at: Timestamp,
    site: usize,
    dropout: bool,
}

/// Plain participants (no DP, no compression) named `names`, each with its
/// seeded profile.
pub(crate) fn plain_sites(
    plan: &Plan,
    initial: &dyn Learner,
    names: impl IntoIterator<Item = impl AsRef<str>>,
) -> (Vec<Mutex<Site>>, Vec<Profile>) {
    let training = plan.local_training();
    // One learner for every site, copied for each use (see
    // `Site::learner_on_demand`).
    let shared = tessera_engine::SharedLearner::new(initial.clone_box(), training.clone());
    names
        .into_iter()
        .map(|name| {
            let name = name.as_ref();
            (
                Mutex::new(
                    Site::new(
                        ParticipantId::new(name),
                        initial.clone_box(),
                        training.clone(),
                        plan.seed,
                    )
                    .learner_on_demand(&shared),
                ),
                Profile::draw(&plan.simulation, plan.seed, name),
            )
        })
        .unzip()
}

/// Runs the plan's federation on `data`, calling `observer` after each round.
pub fn simulate(
    plan: &Plan,
    data: &FederatedData,
    options: &SimOptions,
    observer: &mut dyn FnMut(&RoundRecord),
) -> Result<RunReport, SimError> {
    plan.validate()?;
    crate::multitask::elsewhere(plan)?;
    if plan.model.kind.is_external() {
        return Err(SimError::Engine(EngineError::State(
            "the plan's model is external: simulate it with its sites' learners \
             (simulate_with_learners)"
                .into(),
        )));
    }
    let (data, new_sites) = crate::personal::split_new_sites(plan, data)?;
    let data = data.as_ref();
    plan.check_cohort(data.sites.len())?;
    plan.check_feature_sites(data.sites.iter().map(|s| s.name.as_str()))?;
    check_memory(plan, data)?;
    let rounds_started = Instant::now();
    let topology_kind = plan.topology.kind;
    if topology_kind != TopologyKind::Flat && options.attack.is_some() {
        return Err(SimError::Engine(EngineError::State(
            "simulated attacks need the flat topology".into(),
        )));
    }
    let mut topology = None;
    let ifca = plan.federation.strategy == tessera_aggregate::StrategyKind::Ifca;
    if ifca && options.attack.is_some() {
        return Err(SimError::Engine(EngineError::State(
            "simulated attacks are not run under ifca yet".into(),
        )));
    }
    let run = match plan.federation.mode {
        Mode::Sync if topology_kind == TopologyKind::Hierarchical => {
            let (run, report) = crate::hierarchy::run_hierarchical(plan, data, observer)?;
            topology = Some(report);
            run
        }
        Mode::Sync if topology_kind == TopologyKind::Gossip => {
            let (run, report) = crate::gossip::run_gossip(plan, data, observer)?;
            topology = Some(report);
            run
        }
        Mode::Sync => run_sync(plan, data, options.attack, Models::BuiltIn, observer)?,
        Mode::Async if options.attack.is_some() => {
            return Err(SimError::Engine(EngineError::State(
                "simulated attacks need synchronous rounds".into(),
            )));
        }
        Mode::Async => crate::asynchronous::run_async(plan, data, observer)?,
    };
    let rounds_seconds = rounds_started.elapsed().as_secs_f64();
    let mut report = report(plan, data, options, run, topology, rounds_seconds)?;
    if let Some(new) = new_sites {
        let global = &report.final_parameters;
        report.new_sites = Some(crate::personal::new_sites(plan, &new, global)?);
    }
    Ok(report)
}

/// Refuses a plan whose models cannot fit: more than the plan's
/// `simulation.max_memory_gb`, or than the machine has available.
fn check_memory(plan: &Plan, data: &FederatedData) -> Result<(), PlanError> {
    let shape = (data.n_features(), data.task.n_classes(), data.sites.len());
    check_memory_of(plan, shape)
}

/// [`check_memory`] for (features, classes, sites).
pub(crate) fn check_memory_of(plan: &Plan, shape: (usize, usize, usize)) -> Result<(), PlanError> {
    let limit = match plan.simulation.max_memory_gb {
        Some(gb) => Some((gb * 1e9, "the plan's simulation.max_memory_gb")),
        None => tessera_engine::available_memory()
            .map(|b| (b as f64, "this machine's available memory")),
    };
    plan.check_memory(tessera_engine::MemoryRole::Simulation, shape, limit)
}

/// The plan's privacy book (with `site_metrics = "dp"`, the metrics' noise
/// calibrated for one release per round).
pub(crate) fn privacy_book(plan: &Plan) -> Result<PrivacyBook, PlanError> {
    PrivacyBook::of_plan(plan).map_err(|e| PlanError::Invalid(format!("privacy: {e}")))
}

/// Where the sites' models come from.
pub(crate) enum Models {
    /// The plan's model, trained on each site's rows.
    BuiltIn,
    /// The plan's model from an earlier run's (continual learning).
    Continued(crate::continual::Continuation),
    /// One external learner per site, in the data's site order, each with
    /// rows of its own; the global model starts from `initial`.
    External {
        /// The initial global parameters.
        initial: ParameterSet,
        /// The sites' learners.
        learners: Vec<Box<dyn ExternalLearner>>,
        /// The rows each site trains on, where declared (needed under local DP).
        train_rows: Vec<Option<usize>>,
    },
}

/// Synchronous rounds.
pub(crate) fn run_sync(
    plan: &Plan,
    data: &FederatedData,
    attack: Option<Attack>,
    models: Models,
    observer: &mut dyn FnMut(&RoundRecord),
) -> Result<Federated, SimError> {
    let mut continued = None;
    let (initial, learners) = match models {
        Models::BuiltIn => {
            let model = initial_model(plan, data)?;
            let (features, classes) = (data.n_features(), data.task.n_classes());
            (plan.initial_parameters(features, classes)?, Err(model))
        }
        Models::Continued(from) => {
            let model = from.model(plan, data)?;
            continued = Some(from);
            (model.parameters().clone(), Err(model))
        }
        Models::External {
            initial,
            learners,
            train_rows,
        } => (initial, Ok((learners, train_rows))),
    };
    let training = plan.local_training();
    if plan.privacy.site_metrics.sums_only() && data.sites.len() < 3 {
        // As a deployment would: a secure sum needs three sites.
        return Err(PlanError::Invalid(format!(
            "site_metrics = \"{}\"{} sums the sites' evaluations under secure aggregation, \
             which needs at least 3 sites; the data has {}. Say site_metrics = \"clear\" in \
             [privacy] (or --set privacy.site_metrics=clear) to report each site's evaluation",
            plan.privacy.site_metrics.name(),
            if plan.privacy.site_metrics == tessera_privacy::SiteMetrics::AggregateOnly {
                " (the default)"
            } else {
                ""
            },
            data.sites.len()
        ))
        .into());
    }
    // Every DP release (with `site_metrics = "dp"`, each round's evaluation).
    let mut book = privacy_book(plan)?;
    let participants = data.sites.len();
    let central = book.central_cohort(Place::Flat { participants });
    let mut engine = RoundEngine::new(
        EngineConfig::from_plan(plan),
        plan.strategy()?,
        initial.clone(),
    )
    .protected(
        plan,
        central.map(|_| simulation_noise_key(plan.seed)),
        central.unwrap_or(tessera_engine::DpCohort::Sampled(participants)),
    )?;
    let malicious: Vec<usize> =
        attack.map_or_else(Vec::new, |a| a.choose(data.sites.len(), plan.seed));
    let n_classes = data.task.n_classes();
    let poisoned: BTreeMap<usize, tessera_data::Dataset> = attack
        .iter()
        .flat_map(|a| {
            malicious
                .iter()
                .filter_map(|&i| a.poison(&data.sites[i].train, n_classes).map(|d| (i, d)))
        })
        .collect();
    let train_of = |site: usize| poisoned.get(&site).unwrap_or(&data.sites[site].train);
    let ids: Vec<ParticipantId> = data
        .sites
        .iter()
        .map(|s| ParticipantId::new(&s.name))
        .collect();
    let index: BTreeMap<&ParticipantId, usize> =
        ids.iter().enumerate().map(|(i, id)| (id, i)).collect();
    // Each site's compression: the plan's, less what a feature flag leaves
    // out (one of the two, shared: not a copy a site).
    let (on, off) = (
        Arc::new(plan.compression.clone()),
        Arc::new(plan.compression_for("")),
    );
    let compressions: Vec<Arc<tessera_compress::CompressionConfig>> = ids
        .iter()
        .map(|id| {
            let own = plan.compression_for(id.as_str());
            if own == *on {
                Arc::clone(&on)
            } else if own == *off {
                Arc::clone(&off)
            } else {
                Arc::new(own)
            }
        })
        .collect();
    // Learners whose calls take one global lock (Python's GIL) are called
    // one at a time on this thread: threads would only wait for each other.
    let parallel = match &learners {
        Ok((learners, _)) => learners.iter().all(|l| l.parallel()),
        Err(_) => true,
    };
    let external_rows: Vec<Option<usize>> = match &learners {
        Ok((_, rows)) => rows.clone(),
        Err(_) => vec![None; ids.len()],
    };
    let sites: Vec<Mutex<Site>> = match learners {
        Err(model) => {
            // One learner for every site, copied for each use (see
            // `Site::learner_on_demand`).
            let shared = tessera_engine::SharedLearner::new(model.clone_box(), training.clone());
            ids.iter()
                .map(|id| {
                    // Simulated sites' secret keys derive from the run seed: an
                    // experiment, reproducible, not a release.
                    let key = || -> Result<_, std::convert::Infallible> {
                        Ok(simulation_noise_key(derive_seed(
                            plan.seed,
                            &[tag(id.as_str())],
                        )))
                    };
                    let Ok(site) = Site::of_plan(plan, id.clone(), model.clone_box(), key);
                    let mut site = site.learner_on_demand(&shared);
                    site.set_elastic(continued.as_ref().and_then(|c| c.elastic_of(id.as_str())));
                    Mutex::new(site)
                })
                .collect()
        }
        Ok((learners, _)) => ids
            .iter()
            .zip(learners)
            .zip(&external_rows)
            .map(|((id, learner), &rows)| {
                // As for built-in sites: simulated keys derive from the run seed.
                let key = || {
                    Ok(simulation_noise_key(derive_seed(
                        plan.seed,
                        &[tag(id.as_str())],
                    )))
                };
                Site::external(plan, id.clone(), learner, rows, key).map(Mutex::new)
            })
            .collect::<Result<_, _>>()?,
    };
    // Local DP: every participant's spend, checked for the whole run before it starts.
    let planned: Vec<(String, u64)> = ids
        .iter()
        .zip(&data.sites)
        .zip(&external_rows)
        .map(|((id, site), rows)| {
            let rows = rows.unwrap_or(site.train.n_rows());
            (id.to_string(), rows as u64)
        })
        .collect();
    book.forecast_local(&planned).map_err(EngineError::from)?;
    let profiles: Vec<Profile> = ids
        .iter()
        .map(|id| Profile::draw(&plan.simulation, plan.seed, id.as_str()))
        .collect();
    for id in &ids {
        engine.register(id.clone());
    }
    // Secure aggregation: each site's key pairs, kept between rounds (boxed:
    // a pointer a site where there is no secure aggregation).
    let mut key_rings: Vec<Option<Box<tessera_secagg::KeyRing>>> =
        ids.iter().map(|_| None).collect();
    let key_holders = crate::homomorphic::key_holders(plan, &index)?;
    // Work that a privacy budget could not release is refused before it starts.
    let closed = engine
        .privacy()
        .map_or(&[][..], |(_, ledger)| ledger.entries());
    book.forecast_central(closed).map_err(EngineError::from)?;
    let schedule = training.schedule()?;
    let window = 8 * rayon::current_num_threads();
    let mut now = Timestamp::ZERO;
    let mut records = Vec::new();
    let mut bytes_up_per_site = vec![0u64; ids.len()];
    let mut last_evaluations = Vec::new();
    // With a download codec: the model every site holds (each round's model
    // reaches them compressed, once, for evaluation and the next round).
    let mut downlink = tessera_engine::Downlink::of_plan(plan, Arc::new(initial.clone()));
    let n_values = initial.n_values();
    let mut attributor = crate::attribution::Attributor::of_plan(plan, data)?;
    let names: Vec<&str> = ids.iter().map(ParticipantId::as_str).collect();
    while !engine.is_finished() {
        let wall = Instant::now();
        let mut start = engine.begin_round(now)?;
        let model_bytes = match &downlink {
            Some(down) => {
                start.global = down.held().clone();
                // The initial model goes down whole; later ones the sites
                // hold since the last round's evaluation.
                if down.round() == 0 {
                    start.global.wire_len() as u64
                } else {
                    0
                }
            }
            None => start.global.wire_len() as u64,
        };
        let round = start.round;
        // Attribution: the round's start and the updates sent to it.
        let round_start = attributor.as_ref().map(|_| start.global.clone());
        let mut sent = Vec::new();
        // What each site receives: the model and its instructions' tensors.
        let task_bytes = |id: &ParticipantId| {
            32 + model_bytes
                + engine
                    .instructions_for(id)
                    .tensors()
                    .map_or(0, |t| t.wire_len() as u64)
        };
        let mut traffic = IndexedTraffic::new(ids.len());
        for id in &start.cohort {
            traffic.down(index[id], task_bytes(id));
        }
        let mut site_errors = Vec::new();

        // Arrival (or dropout) times are known before any training.
        let mut codecs = vec![Codec::NONE; ids.len()];
        let mut events = Vec::with_capacity(start.cohort.len());
        for id in &start.cohort {
            let site = index[id];
            let profile = &profiles[site];
            let n_rows = data.sites[site].train.n_rows();
            let examples = examples_per_round(schedule, training.batch_size, n_rows)
                .saturating_mul(plan.trainings_per_round());
            let compute = profile.compute_time(examples);
            let received = now
                .plus(profile.latency())
                .plus(profile.transfer_time(task_bytes(id)));
            // The upload codec: the plan's, or the ladder's choice for this
            // site's bandwidth and what is left of the target round time.
            let spent = received.since(now) + compute + profile.latency();
            let codec = upload_codec(
                &compressions[site],
                n_values,
                profile.bandwidth,
                spent.as_secs_f64(),
            );
            codecs[site] = codec;
            let upload = profile.transfer_time(32 + codec.max_encoded_len(n_values) as u64);
            let event = match profile.drops_out(plan.seed, round, id.as_str()) {
                Some(share) => Event {
                    at: received
                        .plus(compute.mul_f64(share))
                        .plus(profile.latency()),
                    site,
                    dropout: true,
                },
                None => Event {
                    at: received.plus(compute).plus(profile.latency()).plus(upload),
                    site,
                    dropout: false,
                },
            };
            events.push(event);
        }
        events.sort_by_key(|e| (e.at, e.site));
        // Whatever happens after the deadline is not seen by this round.
        if let Some(deadline) = engine.deadline() {
            events.retain(|e| e.at <= deadline);
        }

        // Train in windows of arrival order; feed the engine in that order
        // (with secure aggregation: keep them for the round's protocol).
        let secure = plan.secure_aggregation.enabled;
        let mut secure_updates = BTreeMap::new();
        let mut last_event = now;
        for chunk in events.chunks(window) {
            let wanted: Vec<bool> = chunk
                .iter()
                .map(|e| !e.dropout && engine.would_accept_at(&ids[e.site], e.at))
                .collect();
            let tasks: Vec<_> = chunk
                .iter()
                .map(|e| start.task(engine.instructions_for(&ids[e.site])))
                .collect();
            let fit = |((event, &wanted), task): ((&Event, &bool), &tessera_engine::FitTask)| {
                wanted.then(|| lock(&sites[event.site]).fit(task, train_of(event.site)))
            };
            let updates: Vec<_> = if parallel {
                chunk.par_iter().zip(&wanted).zip(&tasks).map(fit).collect()
            } else {
                chunk.iter().zip(&wanted).zip(&tasks).map(fit).collect()
            };
            // The window's updates are summed together, as they arrived.
            let mut arrived: Vec<(Timestamp, &ParticipantId, tessera_core::Update)> = Vec::new();
            for (event, update) in chunk.iter().zip(updates) {
                let id = &ids[event.site];
                last_event = last_event.max(event.at);
                match update {
                    _ if event.dropout => engine.report_dropout(id),
                    Some(Ok(mut update)) => {
                        // Local DP: the update's DP-SGD, as it reports it,
                        // checked and recorded by the privacy book.
                        let report = LocalReport::of(&update);
                        book.check_local(round, id.as_str(), report)
                            .map_err(EngineError::from)?;
                        for effect in book.record_local(event.at, round, id.as_str(), report) {
                            if let Effect::Fatal(reason) = effect {
                                return Err(EngineError::State(reason).into());
                            }
                        }
                        if let Some(a) =
                            attack.filter(|_| malicious.binary_search(&event.site).is_ok())
                        {
                            a.corrupt(&mut update, plan.seed, round, event.site);
                        }
                        let codec = codecs[event.site];
                        let encoded = (!codec.is_identity()).then(|| {
                            traffic.codec(event.site, codec.to_string());
                            let shared = secure.then(|| plan.shared_codec_seed(round));
                            lock(&sites[event.site]).encode_update(
                                &mut update,
                                &codec,
                                round,
                                shared,
                            )
                        });
                        if secure {
                            secure_updates.insert(event.site, update);
                            continue;
                        }
                        let size = match &encoded {
                            Some(bytes) => update.wire_len_compressed(bytes.len()),
                            None => update.wire_len(),
                        } as u64;
                        traffic.update(event.site, size);
                        bytes_up_per_site[event.site] += size;
                        if attributor.is_some() {
                            sent.push((event.site, update.clone()));
                        }
                        arrived.push((event.at, id, update));
                    }
                    // Local training failed (diverged): the site leaves the round.
                    Some(Err(e)) => {
                        site_errors.push(format!("site '{id}': {e}"));
                        engine.report_dropout(id);
                    }
                    // Past the deadline: cut off before it sends anything.
                    None => {}
                }
            }
            let batch: Vec<_> = arrived.iter().map(|(at, id, u)| (*at, *id, u)).collect();
            // A rejection is recorded by the engine and reported in the outcome.
            let _ = engine.submit_many(round, &batch);
        }
        if secure {
            let cohort: Vec<usize> = start.cohort.iter().map(|id| index[id]).collect();
            let layout = start.global.zeros_like();
            let result = match &key_holders {
                Some(holders) => crate::homomorphic::homomorphic_round(
                    plan,
                    round,
                    &cohort,
                    secure_updates,
                    &layout,
                    holders,
                ),
                None => crate::secure::secure_round(
                    plan,
                    round,
                    &cohort,
                    secure_updates,
                    &layout,
                    &mut key_rings,
                ),
            };
            match result {
                Ok(result) => {
                    for (&site, &size) in &result.bytes_up {
                        bytes_up_per_site[site] += size;
                        traffic.up(site, size);
                    }
                    for (&site, &size) in &result.masked_bytes {
                        traffic.update_within(site, size);
                    }
                    for (&site, &size) in &result.bytes_down {
                        traffic.down(site, size);
                    }
                    let survivors: Vec<ParticipantId> =
                        result.survivors.iter().map(|&s| ids[s].clone()).collect();
                    // A rejection is recorded by the engine and reported in the outcome.
                    let _ = engine.submit_sum(last_event, round, &survivors, &result.sum);
                }
                Err(e) => {
                    site_errors.push(format!("secure aggregation failed: {e}"));
                    for id in &start.cohort {
                        engine.report_dropout(id);
                    }
                }
            }
        }
        let outcome = match engine.poll(last_event) {
            Some(outcome) => outcome,
            None => {
                let deadline = engine
                    .deadline()
                    .ok_or_else(|| EngineError::State(format!("round {round} cannot close")))?;
                engine.poll(deadline).ok_or_else(|| {
                    EngineError::State(format!("round {round} did not close at its deadline"))
                })?
            }
        };
        now = outcome.closed_at;
        let completed = outcome.status == RoundStatus::Completed;
        for id in &outcome.cohort {
            let counted = completed && outcome.accepted.binary_search(id).is_ok();
            lock(&sites[index[id]]).round_closed(counted);
        }
        if let (Some(a), Some(from)) = (attributor.as_mut(), &round_start) {
            // A failed round asked its cohort and counted no one.
            sent.retain(|(site, _)| {
                completed && outcome.accepted.binary_search(&ids[*site]).is_ok()
            });
            let cohort: Vec<usize> = outcome.cohort.iter().map(|id| index[id]).collect();
            a.round(plan, round, from, &cohort, &sent, &sites, &names)?;
            // Reputation-weighted selection: the next round's cohort is
            // drawn by the attribution so far.
            if plan.contribution.selection == tessera_engine::Selection::Reputation {
                engine.set_selection_weights(Some(a.selection_weights(&ids)));
            }
        }

        // Federated evaluation of the new global model at every site (with a
        // download codec: of the model as the sites receive it).
        let mut global = engine.global().clone();
        let mut model_down = 32 + global.wire_len() as u64;
        if let Some(down) = downlink.as_mut() {
            down.advance(round, &global)?;
            global = down.held().clone();
            let bytes = down.change().map_or(0, <[u8]>::len);
            model_down = (32 + 1 + tessera_core::varint_len(bytes as u64) + bytes) as u64;
        }
        let served = plan.served(&global)?;
        // The last round's evaluations go first: a million sites' two
        // rounds of them are not held at once.
        drop(std::mem::take(&mut last_evaluations));
        let evaluations: Vec<Evaluation> = evaluate_sites(&sites, data, &served, parallel)?;
        for (site, e) in evaluations.iter().enumerate() {
            let size = e.wire_len() as u64;
            bytes_up_per_site[site] += size;
            traffic.up(site, size);
            traffic.down(site, model_down);
        }
        // What the coordinator would see of the evaluations (only their sum
        // across sites under `site_metrics = "aggregate-only"`).
        let mut noise = book.metrics().map(|_| {
            tessera_privacy::GaussianNoise::new(
                tessera_core::derive_key(plan.seed, &[streams::METRICS_NOISE]),
                u64::from(round),
            )
        });
        let view = tessera_engine::report::EvaluationView::of(
            plan.privacy.site_metrics,
            engine.strategy(),
            &names,
            &evaluations,
            book.metrics().zip(noise.as_mut()),
        )
        .map_err(|e| {
            PlanError::Invalid(format!(
                "{} evaluation: {e}",
                plan.privacy.site_metrics.name()
            ))
        })?;
        book.release_metrics()
            .map_err(|e| PlanError::Invalid(e.to_string()))?;
        let metrics_epsilon = book.take_metrics_released();
        let mut record = tessera_engine::report::round_record_view(
            &outcome,
            &view,
            wall.elapsed().as_secs_f64(),
            traffic.bytes_up(),
            traffic.bytes_down(),
        );
        site_errors.sort();
        record.site_errors = site_errors;
        record.traffic = traffic.into_map(&names);
        record.metrics_epsilon = metrics_epsilon;
        observer(&record);
        records.push(record);
        last_evaluations = evaluations;
    }
    let personal = crate::personal::evaluations(plan, data, &sites, engine.global(), parallel)?;
    Ok(Federated {
        personal,
        records,
        last_evaluations,
        final_parameters: plan.served(engine.global())?.into_owned(),
        bytes_up_per_site,
        end: now,
        privacy: match book.local_report() {
            Some(local) => Some(local),
            None => engine
                .privacy()
                .map(|(dp, ledger)| PrivacyReport::new(&plan.privacy, dp, ledger)),
        },
        malicious,
        attribution: attributor,
    })
}
