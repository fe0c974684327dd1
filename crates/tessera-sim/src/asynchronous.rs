//! Asynchronous training (FedBuff) on the virtual clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Instant;

use tessera_aggregate::Instructions;
use tessera_core::{ParameterSet, ParticipantId, Timestamp};
use tessera_data::FederatedData;
use tessera_engine::report::{EvaluationView, RoundRecord};
use tessera_engine::{BufferedEngine, FitTask, Plan};
use tessera_learn::Evaluation;
use tessera_orchestrator::completed;

use crate::SimError;
use crate::profile::examples_per_round;
use crate::run::{Federated, evaluate_all, initial_model, lock, plain_sites};

/// A site's attempt in flight: it received model `base` (`params`) and
/// finishes (or drops out) at the event's time.
struct Attempt {
    base: u32,
    params: Arc<ParameterSet>,
    attempt: u32,
    dropout: bool,
    /// What the strategy told the site with the model (FedProx's pull).
    instructions: Instructions,
}

/// Participants train whenever they are free, on the model they last
/// received; the buffered engine takes a step every K accepted updates. Fast
/// sites contribute more often; slow ones contribute with their staleness
/// discounted, and are refused only beyond the staleness bound.
pub(crate) fn run_async(
    plan: &Plan,
    data: &FederatedData,
    observer: &mut dyn FnMut(&RoundRecord),
) -> Result<Federated, SimError> {
    let initial = initial_model(plan, data)?;
    let training = plan.local_training();
    let schedule = training.schedule()?;
    let mut engine = BufferedEngine::new(plan, initial.parameters().clone(), data.sites.len())?;
    let ids: Vec<ParticipantId> = data
        .sites
        .iter()
        .map(|s| ParticipantId::new(&s.name))
        .collect();
    let (sites, profiles) = plain_sites(
        plan,
        initial.as_ref(),
        ids.iter().map(ParticipantId::as_str),
    );
    let duration = |site: usize| {
        let rows = data.sites[site].train.n_rows();
        let examples = examples_per_round(schedule, training.batch_size, rows);
        profiles[site].compute_time(examples)
    };
    let mut queue: BinaryHeap<Reverse<(Timestamp, usize)>> = BinaryHeap::new();
    let mut attempts: Vec<Option<Attempt>> = (0..sites.len()).map(|_| None).collect();
    let mut attempt_count = vec![0u32; sites.len()];
    let mut bytes_up_per_site = vec![0u64; sites.len()];
    let (mut bytes_up, mut bytes_down) = (0u64, 0u64);
    let mut dispatch = |site: usize,
                        now: Timestamp,
                        engine: &BufferedEngine,
                        queue: &mut BinaryHeap<Reverse<(Timestamp, usize)>>,
                        attempts: &mut Vec<Option<Attempt>>,
                        bytes_down: &mut u64| {
        let (params, base) = engine.current();
        attempt_count[site] += 1;
        let attempt = attempt_count[site];
        let profile = &profiles[site];
        let work = duration(site);
        let received = now.plus(profile.latency());
        let (at, dropout) = match profile.drops_out(plan.seed, attempt, ids[site].as_str()) {
            Some(share) => (
                received.plus(work.mul_f64(share)).plus(profile.latency()),
                true,
            ),
            None => (received.plus(work).plus(profile.latency()), false),
        };
        *bytes_down += 32 + params.wire_len() as u64;
        attempts[site] = Some(Attempt {
            base,
            params,
            attempt,
            dropout,
            instructions: engine.instructions_for(&ids[site]),
        });
        queue.push(Reverse((at, site)));
    };
    for site in 0..sites.len() {
        dispatch(
            site,
            Timestamp::ZERO,
            &engine,
            &mut queue,
            &mut attempts,
            &mut bytes_down,
        );
    }

    let names: Vec<String> = sites
        .iter()
        .map(|s| lock(s).id().as_str().to_string())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut records = Vec::new();
    let mut last_evaluations = Vec::new();
    let mut last_step_at = Timestamp::ZERO;
    let mut wall = Instant::now();
    let (mut dropped, mut rejected) = (0usize, 0usize);
    let mut site_errors = Vec::new();
    let mut now = Timestamp::ZERO;
    while !engine.is_finished() {
        let Some(Reverse((at, site))) = queue.pop() else {
            break;
        };
        now = at;
        let Some(attempt) = attempts[site].take() else {
            continue;
        };
        if attempt.dropout {
            dropped += 1;
            dispatch(
                site,
                now,
                &engine,
                &mut queue,
                &mut attempts,
                &mut bytes_down,
            );
            continue;
        }
        let task = FitTask {
            round: attempt.attempt,
            global: attempt.params,
            instructions: attempt.instructions,
            deadline: None,
        };
        let update = lock(&sites[site]).fit(&task, &data.sites[site].train);
        let step = match update {
            Ok(update) => {
                let size = update.wire_len() as u64;
                bytes_up += size;
                bytes_up_per_site[site] += size;
                match engine.submit(&ids[site], attempt.base, &update) {
                    Ok(step) => step,
                    Err(rejection) => {
                        rejected += 1;
                        site_errors.push(format!("site '{}': {rejection}", ids[site]));
                        None
                    }
                }
            }
            Err(e) => {
                site_errors.push(format!("site '{}': {e}", ids[site]));
                dropped += 1;
                None
            }
        };
        dispatch(
            site,
            now,
            &engine,
            &mut queue,
            &mut attempts,
            &mut bytes_down,
        );
        let Some(step) = step else {
            continue;
        };
        let (global, _) = engine.current();
        let evaluations: Vec<Evaluation> = evaluate_all(&sites, data, &global)?;
        for (site, e) in evaluations.iter().enumerate() {
            let size = e.wire_len() as u64;
            bytes_up += size;
            bytes_up_per_site[site] += size;
            bytes_down += 32 + global.wire_len() as u64;
        }
        let record = RoundRecord {
            round: step.version,
            status: "completed".into(),
            train_loss: step.mean_train_loss,
            accepted: step.contributions.len(),
            stragglers: 0,
            dropped: std::mem::take(&mut dropped),
            rejected: std::mem::take(&mut rejected),
            virtual_seconds: now.since(last_step_at).as_secs_f64(),
            virtual_time: now.as_secs_f64(),
            bytes_up: std::mem::take(&mut bytes_up),
            bytes_down: std::mem::take(&mut bytes_down),
            traffic: Default::default(),
            site_errors: std::mem::take(&mut site_errors),
            epsilon: None,
            clip_norm: None,
            metrics_epsilon: None,
            ..RoundRecord::default()
        };
        let record = completed(
            &record,
            &EvaluationView::clear(engine.strategy(), &names, &evaluations),
            wall.elapsed().as_secs_f64(),
        );
        wall = Instant::now();
        last_step_at = now;
        observer(&record);
        records.push(record);
        last_evaluations = evaluations;
    }
    let (final_parameters, _) = engine.current();
    // Fine-tuning (and departments) from the final model, as after
    // synchronous rounds.
    let personal = crate::personal::evaluations(plan, data, &sites, &final_parameters, false)?;
    Ok(Federated {
        attribution: None,
        personal,
        records,
        last_evaluations,
        final_parameters: final_parameters.as_ref().clone(),
        bytes_up_per_site,
        end: now,
        privacy: None,
        malicious: Vec::new(),
    })
}
