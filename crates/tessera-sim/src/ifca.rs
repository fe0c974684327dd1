//! IFCA's rounds in simulation ([`tessera_aggregate::Ifca`]): `k` cluster
//! models, the first the plan's initial model and the others drawn from
//! their own streams (`streams::IFCA`). Each round every site evaluates
//! every cluster model on its training rows, takes the one of the lowest
//! loss, and trains it; each cluster model moves by its members' weighted
//! mean change. The run's one model (its rounds' and final figures, the
//! model file) is the cluster most sites took; the personalization section
//! has each site's own cluster's model, and which cluster it took.

use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use tessera_aggregate::{Ifca, StrategyKind};
use tessera_core::{ParameterSet, Timestamp, derive_seed};
use tessera_data::FederatedData;
use tessera_engine::report::{EvaluationView, RoundRecord, SiteTraffic};
use tessera_engine::{EngineError, FitTask, Plan, streams};
use tessera_learn::Evaluation;
use tessera_orchestrator::completed;

use crate::SimError;
use crate::personal::Personal;
use crate::profile::examples_per_round;
use crate::run::{Federated, initial_model, lock, plain_sites};

/// IFCA's synchronous flat rounds, every site each round.
pub(crate) fn run_ifca(
    plan: &Plan,
    data: &FederatedData,
    observer: &mut dyn FnMut(&RoundRecord),
) -> Result<Federated, SimError> {
    let config = plan.strategy_config();
    let ifca = Ifca {
        clusters: config.clusters.unwrap_or(2),
        server_lr: config.server_lr.unwrap_or(1.0),
    };
    // The plan's validation built the strategy: the settings are checked.
    plan.strategy_config()
        .build(StrategyKind::Ifca)
        .map_err(|e| EngineError::State(e.to_string()))?;
    let k = ifca.clusters as usize;
    let initial = initial_model(plan, data)?;
    let (n_features, n_classes) = (data.n_features(), data.task.n_classes());
    let mut clusters: Vec<Arc<ParameterSet>> = vec![Arc::new(initial.parameters().clone())];
    for j in 1..k {
        let seed = derive_seed(plan.seed, &[streams::IFCA, j as u64]);
        let drawn = tessera_learn::initial_parameters(&plan.model, n_features, n_classes, seed)?;
        clusters.push(Arc::new(drawn));
    }
    let names: Vec<String> = data.sites.iter().map(|s| s.name.clone()).collect();
    let n = names.len();
    let (sites, profiles) = plain_sites(plan, initial.as_ref(), &names);
    let training = plan.local_training();
    let schedule = training.schedule()?;
    let model_bytes = 32 + clusters[0].wire_len() as u64;
    let mut now = Timestamp::ZERO;
    let mut records = Vec::new();
    let mut bytes_up_per_site = vec![0u64; n];
    let mut chosen = vec![0usize; n];
    for round in 1..=plan.federation.rounds {
        let wall = Instant::now();
        let opened = now;
        // Each site: the cluster of the lowest training loss, trained.
        let trained: Vec<Result<(usize, tessera_core::Update), SimError>> = (0..n)
            .into_par_iter()
            .map(|i| {
                let mut site = lock(&sites[i]);
                let train = &data.sites[i].train;
                let cluster = choose(&mut site, &clusters, train)?;
                let task = FitTask {
                    round,
                    global: Arc::clone(&clusters[cluster]),
                    instructions: Default::default(),
                    deadline: None,
                };
                Ok((cluster, site.fit(&task, train)?))
            })
            .collect();
        let mut site_errors = Vec::new();
        let mut members: Vec<Vec<(usize, tessera_core::Update)>> = vec![Vec::new(); k];
        for (i, t) in trained.into_iter().enumerate() {
            match t {
                Ok((cluster, update)) => {
                    chosen[i] = cluster;
                    members[cluster].push((i, update));
                }
                // A site that fails sits the round out.
                Err(e) => site_errors.push(format!("site '{}': {e}", names[i])),
            }
        }
        let accepted: usize = members.iter().map(Vec::len).sum();
        for (j, cluster) in members.iter().enumerate() {
            let changes: Vec<(&ParameterSet, f64)> = cluster
                .iter()
                .map(|(_, u)| (&u.delta, u.n_examples as f64))
                .collect();
            clusters[j] = Arc::new(
                ifca.aggregate(&clusters[j], &changes)
                    .map_err(|e| EngineError::State(e.to_string()))?,
            );
        }
        // Virtual time and traffic: every cluster model down, one update up.
        let mut traffic = std::collections::BTreeMap::new();
        let mut slowest = now;
        for (i, profile) in profiles.iter().enumerate() {
            let examples =
                examples_per_round(schedule, training.batch_size, data.sites[i].train.n_rows());
            let (down, up) = (model_bytes * k as u64, model_bytes);
            let done = now
                .plus(profile.compute_time(examples))
                .plus(profile.latency())
                .plus(profile.transfer_time(down + up));
            slowest = slowest.max(done);
            bytes_up_per_site[i] += up;
            traffic.insert(
                names[i].clone(),
                SiteTraffic {
                    up,
                    down,
                    ..SiteTraffic::default()
                },
            );
        }
        now = slowest;
        let largest = largest(&chosen, k);
        let evaluations = evaluate_all(&sites, data, &clusters[largest])?;
        let record = RoundRecord {
            round,
            status: "completed".into(),
            accepted,
            rejected: site_errors.len(),
            virtual_seconds: now.since(opened).as_secs_f64(),
            virtual_time: now.as_secs_f64(),
            bytes_up: traffic.values().map(|t: &SiteTraffic| t.up).sum(),
            bytes_down: traffic.values().map(|t: &SiteTraffic| t.down).sum(),
            traffic,
            site_errors,
            ..RoundRecord::default()
        };
        let record = completed(
            &record,
            &EvaluationView::pooled(&evaluations),
            wall.elapsed().as_secs_f64(),
        );
        observer(&record);
        records.push(record);
    }
    // The final assignment, by the final models; the run's one model is the
    // cluster most sites took.
    let chosen: Vec<usize> = (0..n)
        .into_par_iter()
        .map(|i| choose(&mut lock(&sites[i]), &clusters, &data.sites[i].train))
        .collect::<Result<_, _>>()?;
    let largest = largest(&chosen, k);
    let last_evaluations = evaluate_all(&sites, data, &clusters[largest])?;
    let own: Vec<Arc<ParameterSet>> = chosen.iter().map(|&j| Arc::clone(&clusters[j])).collect();
    let personal = crate::personal::from_own_models(plan, data, &sites, &own)?.map(|p| Personal {
        clusters: Some((chosen.clone(), k)),
        ..p
    });
    Ok(Federated {
        personal,
        records,
        last_evaluations,
        final_parameters: clusters[largest].as_ref().clone(),
        bytes_up_per_site,
        end: now,
        privacy: None,
        malicious: Vec::new(),
    })
}

/// The cluster whose model has the lowest mean loss on `train` at `site`.
fn choose(
    site: &mut tessera_engine::Site,
    clusters: &[Arc<ParameterSet>],
    train: &tessera_data::Dataset,
) -> Result<usize, SimError> {
    let losses: Vec<f64> = clusters
        .iter()
        .map(|model| {
            let e = site.evaluate(model, train)?;
            Ok::<_, SimError>(e.loss_sum / e.n_examples.max(1) as f64)
        })
        .collect::<Result<_, _>>()?;
    Ok(Ifca::choose(&losses).unwrap_or(0))
}

/// The cluster most sites took (the first of equal ones).
fn largest(chosen: &[usize], k: usize) -> usize {
    let mut counts = vec![0usize; k];
    for &j in chosen {
        counts[j] += 1;
    }
    (0..k).fold(0, |best, j| if counts[j] > counts[best] { j } else { best })
}

/// `model` on every site's test rows, in site order.
fn evaluate_all(
    sites: &[std::sync::Mutex<tessera_engine::Site>],
    data: &FederatedData,
    model: &ParameterSet,
) -> Result<Vec<Evaluation>, SimError> {
    (0..sites.len())
        .into_par_iter()
        .map(|i| Ok(lock(&sites[i]).evaluate(model, &data.sites[i].test)?))
        .collect()
}
