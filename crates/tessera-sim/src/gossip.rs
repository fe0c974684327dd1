//! Decentralised gossip averaging in simulation (D-PSGD; Lian et al. 2017):
//! no coordinator. Each round every surviving site trains from its own
//! model, sends the result to its surviving neighbours, and replaces its model
//! by a Metropolis-Hastings weighted average of its own and theirs (weights
//! `1 / (1 + max(deg_i, deg_j))`, the rest on itself: doubly stochastic, so the
//! sites' mean is kept and the models reach consensus on a connected graph).
//! A lost site leaves the graph; its neighbours re-weight among the living.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use tessera_core::{ParameterSet, Timestamp};
use tessera_data::FederatedData;
use tessera_engine::report::{EvaluationView, RoundRecord, SiteTraffic, TopologyReport};
use tessera_engine::{EngineError, FitTask, Plan, gossip_neighbours};
use tessera_learn::Evaluation;
use tessera_orchestrator::completed;

use crate::SimError;
use crate::profile::examples_per_round;
use crate::run::{Federated, initial_model, lock, plain_sites};

/// Gossip rounds over the plan's graph.
pub(crate) fn run_gossip(
    plan: &Plan,
    data: &FederatedData,
    observer: &mut dyn FnMut(&RoundRecord),
) -> Result<(Federated, TopologyReport), SimError> {
    let topology = &plan.topology;
    let names: Vec<String> = data.sites.iter().map(|s| s.name.clone()).collect();
    let n = names.len();
    let graph = gossip_neighbours(topology.graph, n, topology.degree, plan.seed)?;
    let mut lost_at: BTreeMap<usize, u32> = BTreeMap::new();
    for failure in &topology.failures {
        let site = names
            .iter()
            .position(|s| *s == failure.site)
            .ok_or_else(|| {
                EngineError::State(format!(
                    "topology.failures: '{}' is not a site",
                    failure.site
                ))
            })?;
        lost_at.insert(site, failure.round);
    }
    let initial = initial_model(plan, data)?;
    let training = plan.local_training();
    let schedule = training.schedule()?;
    let (sites, profiles) = plain_sites(plan, initial.as_ref(), &names);
    // Every site starts from the same model (shared until it first changes).
    let start = Arc::new(initial.parameters().clone());
    let mut models: Vec<Arc<ParameterSet>> = (0..n).map(|_| Arc::clone(&start)).collect();
    let model_bytes = 32 + models[0].wire_len() as u64;
    let mut now = Timestamp::ZERO;
    let mut records = Vec::new();
    let mut bytes_up_per_site = vec![0u64; n];
    let mut last_evaluations: Vec<Option<Evaluation>> = vec![None; n];
    for round in 1..=plan.federation.rounds {
        let wall = Instant::now();
        let opened = now;
        let alive: Vec<bool> = (0..n)
            .map(|i| lost_at.get(&i).is_none_or(|&r| round < r))
            .collect();
        // Local training from each site's own model.
        let trained: Vec<Option<Result<ParameterSet, SimError>>> = (0..n)
            .into_par_iter()
            .map(|i| {
                alive[i].then(|| {
                    let task = FitTask {
                        round,
                        global: Arc::clone(&models[i]),
                        instructions: Default::default(),
                        deadline: None,
                    };
                    let update = lock(&sites[i]).fit(&task, &data.sites[i].train)?;
                    let mut local = models[i].as_ref().clone();
                    local
                        .add_scaled(&update.delta, 1.0)
                        .map_err(|e| EngineError::State(e.to_string()))?;
                    Ok(local)
                })
            })
            .collect();
        let mut local: Vec<Option<ParameterSet>> = Vec::with_capacity(n);
        let mut site_errors = Vec::new();
        for (i, t) in trained.into_iter().enumerate() {
            match t {
                Some(Ok(model)) => local.push(Some(model)),
                Some(Err(e)) => {
                    // A failed training keeps the site's model and still gossips it.
                    site_errors.push(format!("site '{}': {e}", names[i]));
                    local.push(Some(models[i].as_ref().clone()));
                }
                None => local.push(None),
            }
        }
        // Metropolis-Hastings averaging over the living neighbours.
        let living: Vec<Vec<usize>> = (0..n)
            .map(|i| graph[i].iter().copied().filter(|&j| alive[j]).collect())
            .collect();
        let mut traffic: BTreeMap<String, SiteTraffic> = BTreeMap::new();
        let mut slowest = now;
        for i in (0..n).filter(|&i| alive[i]) {
            let p = &profiles[i];
            let n_rows = data.sites[i].train.n_rows();
            let examples = examples_per_round(schedule, training.batch_size, n_rows);
            let sent =
                model_bytes * living[i].len() as u64 * u64::from(topology.gossip_steps.max(1));
            let done = now
                .plus(p.compute_time(examples))
                .plus(p.latency())
                .plus(p.transfer_time(sent));
            slowest = slowest.max(done);
            bytes_up_per_site[i] += sent;
            let entry = traffic.entry(names[i].clone()).or_default();
            entry.up += sent;
            entry.down += sent;
        }
        for _ in 0..topology.gossip_steps.max(1) {
            local = gossip_step(&local, &living)?;
        }
        for (i, model) in local.into_iter().enumerate() {
            if let Some(model) = model {
                models[i] = Arc::new(model);
            }
        }
        now = slowest;
        // Each surviving site evaluates its own model on its own test rows.
        let evaluations: Vec<Option<Evaluation>> = (0..n)
            .into_par_iter()
            .map(|i| {
                alive[i]
                    .then(|| lock(&sites[i]).evaluate(&models[i], &data.sites[i].test))
                    .transpose()
            })
            .collect::<Vec<_>>()
            .into_iter()
            .collect::<Result<_, _>>()?;
        let living_evaluations: Vec<Evaluation> = evaluations.iter().flatten().cloned().collect();
        for (i, e) in evaluations.into_iter().enumerate() {
            if e.is_some() {
                last_evaluations[i] = e;
            }
        }
        let bytes: u64 = traffic.values().map(|t| t.up).sum();
        let record = RoundRecord {
            round,
            status: "completed".into(),
            train_loss: 0.0,
            accepted: living_evaluations.len(),
            stragglers: 0,
            dropped: alive.iter().filter(|a| !**a).count(),
            rejected: 0,
            virtual_seconds: now.since(opened).as_secs_f64(),
            virtual_time: now.as_secs_f64(),
            bytes_up: bytes,
            bytes_down: bytes,
            traffic,
            site_errors,
            epsilon: None,
            clip_norm: None,
            metrics_epsilon: None,
            ..RoundRecord::default()
        };
        let record = completed(
            &record,
            &EvaluationView::pooled(&living_evaluations),
            wall.elapsed().as_secs_f64(),
        );
        observer(&record);
        records.push(record);
    }
    // The survivors' mean model, and how far the farthest survivor is from it.
    let survivors: Vec<usize> = (0..n)
        .filter(|i| lost_at.get(i).is_none_or(|&r| r > plan.federation.rounds))
        .collect();
    let mut mean = models[0].zeros_like();
    for &i in &survivors {
        mean.add_scaled(&models[i], 1.0 / survivors.len().max(1) as f32)
            .map_err(|e| EngineError::State(e.to_string()))?;
    }
    let consensus_distance = survivors
        .iter()
        .filter_map(|&i| models[i].sub(&mean).ok().map(|d| d.l2_norm()))
        .fold(0.0, f64::max);
    // The survivors' mean model, and each survivor's own, on all their test rows.
    let on_survivors_rows = |model: &ParameterSet| -> Result<f64, SimError> {
        let evaluations: Vec<Evaluation> = survivors
            .iter()
            .map(|&s| lock(&sites[s]).evaluate(model, &data.sites[s].test))
            .collect::<Result<_, _>>()?;
        Ok(Evaluation::pool(&evaluations).accuracy())
    };
    let mean_model_accuracy = on_survivors_rows(&mean)?;
    let mut site_models_accuracy = 0.0;
    for &i in &survivors {
        site_models_accuracy += on_survivors_rows(&models[i])? / survivors.len().max(1) as f64;
    }
    // A site lost before its first evaluation: its model as it was.
    let last_evaluations: Vec<Evaluation> = last_evaluations
        .into_iter()
        .enumerate()
        .map(|(i, e)| match e {
            Some(e) => Ok(e),
            None => lock(&sites[i]).evaluate(&models[i], &data.sites[i].test),
        })
        .collect::<Result<_, _>>()?;
    // Fine-tuning (`[personalization]`): each site from its own model.
    let personal = crate::personal::from_own_models(plan, data, &sites, &models)?;
    let report = TopologyReport {
        kind: "gossip".into(),
        neighbours: (0..n)
            .map(|i| {
                (
                    names[i].clone(),
                    graph[i].iter().map(|&j| names[j].clone()).collect(),
                )
            })
            .collect(),
        lost: lost_at
            .iter()
            .map(|(&i, &r)| (names[i].clone(), r))
            .collect(),
        consensus_distance: Some(consensus_distance),
        mean_model_accuracy: Some(mean_model_accuracy),
        site_models_accuracy: Some(site_models_accuracy),
        ..TopologyReport::default()
    };
    Ok((
        Federated {
            attribution: None,
            personal,
            records,
            last_evaluations,
            final_parameters: mean,
            bytes_up_per_site,
            end: now,
            privacy: None,
            malicious: Vec::new(),
        },
        report,
    ))
}

/// One Metropolis-Hastings averaging step of the living sites' models.
fn gossip_step(
    local: &[Option<ParameterSet>],
    living: &[Vec<usize>],
) -> Result<Vec<Option<ParameterSet>>, SimError> {
    (0..local.len())
        .into_par_iter()
        .map(|i| {
            let Some(own) = local[i].as_ref() else {
                return Ok(None);
            };
            let theirs = living[i]
                .iter()
                .filter_map(|&j| local[j].as_ref().map(|m| (m, living[j].len())));
            let out = tessera_engine::metropolis_mix(own, living[i].len(), theirs)
                .map_err(|e| EngineError::State(e.to_string()))?;
            Ok(Some(out))
        })
        .collect()
}
