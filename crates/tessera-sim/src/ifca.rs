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
use tessera_orchestrator::completed;

use crate::SimError;
use crate::personal::Personal;
use crate::profile::examples_per_round;
use crate::run::{Federated, initial_model, plain_sites};
use crate::sites::{evaluate_all, lock};

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
    let mut chosen: Vec<Option<usize>> = vec![None; n];
    for round in 1..=plan.federation.rounds {
        let wall = Instant::now();
        let opened = now;
        // Each site with training rows: the cluster of the lowest training
        // loss, trained.
        type Trained = Option<(usize, tessera_core::Update)>;
        let trained: Vec<Result<Trained, SimError>> = (0..n)
            .into_par_iter()
            .map(|i| {
                let train = &data.sites[i].train;
                if train.n_rows() == 0 {
                    return Ok(None);
                }
                let mut site = lock(&sites[i]);
                let cluster = choose(&mut site, &clusters, train)?;
                let task = FitTask {
                    round,
                    global: Arc::clone(&clusters[cluster]),
                    instructions: Default::default(),
                    deadline: None,
                };
                Ok(Some((cluster, site.fit(&task, train)?)))
            })
            .collect();
        let mut site_errors = Vec::new();
        let mut members: Vec<Vec<tessera_core::Update>> = vec![Vec::new(); k];
        let mut sent = vec![false; n];
        for (i, t) in trained.into_iter().enumerate() {
            match t {
                Ok(Some((cluster, update))) => {
                    chosen[i] = Some(cluster);
                    sent[i] = true;
                    members[cluster].push(update);
                }
                Ok(None) => {}
                // A site that fails sits the round out.
                Err(e) => site_errors.push(format!("site '{}': {e}", names[i])),
            }
        }
        let accepted: usize = members.iter().map(Vec::len).sum();
        let (mut examples, mut loss) = (0.0f64, 0.0f64);
        for (j, cluster) in members.iter().enumerate() {
            let changes: Vec<(&ParameterSet, f64)> = cluster
                .iter()
                .map(|u| (&u.delta, u.n_examples as f64))
                .collect();
            for u in cluster {
                examples += u.n_examples as f64;
                loss += u.n_examples as f64 * u.stats.mean_train_loss;
            }
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
            let down = model_bytes * k as u64;
            let up = if sent[i] { model_bytes } else { 0 };
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
        let evaluations = evaluate_all(&sites, data, &clusters[largest(&chosen, k)])?;
        let record = RoundRecord {
            round,
            status: if accepted == 0 {
                "quorum not met (0/1)".into()
            } else {
                "completed".into()
            },
            train_loss: if examples > 0.0 { loss / examples } else { 0.0 },
            accepted,
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
    // The final assignment, by the final models (a site without training
    // rows, or whose evaluation fails, takes none); the run's one model is
    // the cluster most sites took.
    let chosen: Vec<Option<usize>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let train = &data.sites[i].train;
            (train.n_rows() > 0)
                .then(|| choose(&mut lock(&sites[i]), &clusters, train).ok())
                .flatten()
        })
        .collect();
    let largest = largest(&chosen, k);
    let last_evaluations = evaluate_all(&sites, data, &clusters[largest])?;
    // A site that took no cluster is evaluated on the run's one model.
    let own: Vec<Arc<ParameterSet>> = chosen
        .iter()
        .map(|j| Arc::clone(&clusters[j.unwrap_or(largest)]))
        .collect();
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
fn largest(chosen: &[Option<usize>], k: usize) -> usize {
    let mut counts = vec![0usize; k];
    for &j in chosen.iter().flatten() {
        counts[j] += 1;
    }
    (0..k).fold(0, |best, j| if counts[j] > counts[best] { j } else { best })
}
