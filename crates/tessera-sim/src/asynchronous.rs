//! Asynchronous training (FedBuff) on the virtual clock.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Instant;

use tessera_aggregate::Instructions;
use tessera_core::{ParameterSet, ParticipantId, Timestamp, Update};
use tessera_data::FederatedData;
use tessera_engine::report::{EvaluationView, RoundRecord};
use tessera_engine::{BufferedEngine, FitTask, Plan, Step};
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
    let mut secure = SecureBuffer::of_plan(plan, &ids)?;
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
        let step = if let Some(secure) = secure.as_mut() {
            // A secure buffer: the site stays with its update until the
            // buffer's secure round; then every contributor gets the new model.
            let taken = match update {
                Ok(update) => match secure.take(&engine, site, attempt.base, update) {
                    Ok(full) => full,
                    Err(rejection) => {
                        rejected += 1;
                        site_errors.push(format!("site '{}': {rejection}", ids[site]));
                        false
                    }
                },
                Err(e) => {
                    site_errors.push(format!("site '{}': {e}", ids[site]));
                    dropped += 1;
                    false
                }
            };
            if !secure.holds(site) {
                dispatch(
                    site,
                    now,
                    &engine,
                    &mut queue,
                    &mut attempts,
                    &mut bytes_down,
                );
            }
            if !taken {
                continue;
            }
            let (step, members) = secure.step(plan, &mut engine, &ids, &mut site_errors);
            for &member in &members {
                dispatch(
                    member,
                    now,
                    &engine,
                    &mut queue,
                    &mut attempts,
                    &mut bytes_down,
                );
            }
            for (member, up, down) in secure.traffic() {
                bytes_up += up;
                bytes_up_per_site[member] += up;
                bytes_down += down;
            }
            let Some(step) = step else {
                dropped += members.len();
                if secure.failures >= MAX_FAILURES {
                    return Err(SimError::Engine(tessera_engine::EngineError::State(
                        format!(
                            "{MAX_FAILURES} secure rounds failed in a row; the last: {}",
                            site_errors.last().map_or("", String::as_str)
                        ),
                    )));
                }
                continue;
            };
            Some(step)
        } else {
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
            step
        };
        let Some(step) = step else {
            continue;
        };
        let (global, _) = engine.current();
        let evaluations: Vec<Evaluation> = evaluate_all(&sites, data, &global)?;
        let record = step_record(
            &step,
            now,
            last_step_at,
            &evaluations,
            &mut Totals {
                dropped: &mut dropped,
                rejected: &mut rejected,
                bytes_up: &mut bytes_up,
                bytes_down: &mut bytes_down,
                bytes_up_per_site: &mut bytes_up_per_site,
                site_errors: &mut site_errors,
            },
            &global,
        );
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

/// What a step's record takes from the counters since the last step.
struct Totals<'a> {
    dropped: &'a mut usize,
    rejected: &'a mut usize,
    bytes_up: &'a mut u64,
    bytes_down: &'a mut u64,
    bytes_up_per_site: &'a mut [u64],
    site_errors: &'a mut Vec<String>,
}

/// A step's record: its evaluations' traffic counted, the counters taken.
fn step_record(
    step: &Step,
    now: Timestamp,
    last_step_at: Timestamp,
    evaluations: &[Evaluation],
    totals: &mut Totals<'_>,
    global: &ParameterSet,
) -> RoundRecord {
    for (site, e) in evaluations.iter().enumerate() {
        let size = e.wire_len() as u64;
        *totals.bytes_up += size;
        totals.bytes_up_per_site[site] += size;
        *totals.bytes_down += 32 + global.wire_len() as u64;
    }
    RoundRecord {
        round: step.version,
        status: "completed".into(),
        train_loss: step.mean_train_loss,
        accepted: step.contributions.len(),
        stragglers: 0,
        dropped: std::mem::take(totals.dropped),
        rejected: std::mem::take(totals.rejected),
        virtual_seconds: now.since(last_step_at).as_secs_f64(),
        virtual_time: now.as_secs_f64(),
        bytes_up: std::mem::take(totals.bytes_up),
        bytes_down: std::mem::take(totals.bytes_down),
        traffic: Default::default(),
        site_errors: std::mem::take(totals.site_errors),
        epsilon: None,
        clip_norm: None,
        metrics_epsilon: None,
        ..RoundRecord::default()
    }
}

/// Secure aggregation of FedBuff's buffer: each accepted update is
/// multiplied by its staleness discount at its site (inside what is masked
/// or encrypted); when the buffer holds `buffer_size` updates from distinct
/// sites, they run one secure round (SecAgg+ or the homomorphic scheme, as
/// the plan says) among themselves, and the engine steps with the sum over
/// the buffer's size. A site that has contributed waits for its buffer's
/// round (it takes part in it) before it trains again.
struct SecureBuffer {
    /// Site, staleness and discounted update, in arrival order.
    pending: Vec<(usize, u32, Update)>,
    rings: Vec<Option<Box<tessera_secagg::KeyRing>>>,
    key_holders: Option<Vec<usize>>,
    /// Each member's protocol bytes up and down in the last secure round.
    last_traffic: Vec<(usize, u64, u64)>,
    /// Secure rounds run: each numbers the next, never one twice (a failed
    /// round's number, and the secrets drawn for it, are not used again).
    rounds: u32,
    /// Secure rounds failed in a row.
    failures: u32,
}

/// Secure rounds that may fail in a row before the run stops.
const MAX_FAILURES: u32 = 3;

impl SecureBuffer {
    fn of_plan(plan: &Plan, ids: &[ParticipantId]) -> Result<Option<Self>, SimError> {
        if !plan.secure_aggregation.enabled {
            return Ok(None);
        }
        if plan.federation.buffer_size > ids.len() {
            return Err(SimError::Engine(tessera_engine::EngineError::State(
                format!(
                    "a secure buffer takes {} distinct sites; the federation has {}",
                    plan.federation.buffer_size,
                    ids.len()
                ),
            )));
        }
        let index: BTreeMap<&ParticipantId, usize> =
            ids.iter().enumerate().map(|(i, id)| (id, i)).collect();
        Ok(Some(Self {
            pending: Vec::new(),
            rings: ids.iter().map(|_| None).collect(),
            key_holders: crate::homomorphic::key_holders(plan, &index)?,
            last_traffic: Vec::new(),
            rounds: 0,
            failures: 0,
        }))
    }

    /// Whether `site` waits in the buffer.
    fn holds(&self, site: usize) -> bool {
        self.pending.iter().any(|(s, _, _)| *s == site)
    }

    /// Admits `site`'s update trained from version `base` and discounts it;
    /// true when the buffer is full.
    fn take(
        &mut self,
        engine: &BufferedEngine,
        site: usize,
        base: u32,
        mut update: Update,
    ) -> Result<bool, tessera_engine::AsyncRejection> {
        let staleness = engine.admit(base)?;
        BufferedEngine::discount(&mut update, engine.staleness_factor(staleness));
        self.pending.push((site, staleness, update));
        Ok(self.pending.len() >= engine.buffer_size())
    }

    /// Runs the full buffer's secure round and the engine's step; gives the
    /// step (none when the round failed, its reason in `errors`) and the
    /// buffer's members, who train again.
    fn step(
        &mut self,
        plan: &Plan,
        engine: &mut BufferedEngine,
        ids: &[ParticipantId],
        errors: &mut Vec<String>,
    ) -> (Option<Step>, Vec<usize>) {
        let pending = std::mem::take(&mut self.pending);
        let members: Vec<usize> = pending.iter().map(|(s, _, _)| *s).collect();
        let contributions: Vec<(ParticipantId, u32)> = pending
            .iter()
            .map(|(s, staleness, _)| (ids[*s].clone(), *staleness))
            .collect();
        let mut cohort = members.clone();
        cohort.sort_unstable();
        let updates: BTreeMap<usize, Update> =
            pending.into_iter().map(|(s, _, u)| (s, u)).collect();
        let (global, _) = engine.current();
        let layout = global.zeros_like();
        // Each buffer is one secure round, numbered by a counter of its own.
        self.rounds += 1;
        let round = self.rounds;
        let result = match &self.key_holders {
            Some(holders) => crate::homomorphic::homomorphic_round(
                plan, round, &cohort, updates, &layout, holders,
            ),
            None => {
                crate::secure::secure_round(plan, round, &cohort, updates, &layout, &mut self.rings)
            }
        };
        self.last_traffic.clear();
        let result = match result {
            Ok(result) => result,
            Err(e) => {
                self.failures += 1;
                errors.push(format!("secure round {round} failed: {e}"));
                return (None, members);
            }
        };
        for (&site, &up) in &result.bytes_up {
            let down = result.bytes_down.get(&site).copied().unwrap_or(0);
            self.last_traffic.push((site, up, down));
        }
        for (&site, &down) in &result.bytes_down {
            if !result.bytes_up.contains_key(&site) {
                self.last_traffic.push((site, 0, down));
            }
        }
        match engine.submit_sum(contributions, &result.sum) {
            Ok(step) => {
                self.failures = 0;
                (Some(step), members)
            }
            Err(e) => {
                self.failures += 1;
                errors.push(format!("secure round {round}: {e}"));
                (None, members)
            }
        }
    }

    /// Each member's protocol bytes (site, up, down) in the last round.
    fn traffic(&self) -> Vec<(usize, u64, u64)> {
        self.last_traffic.clone()
    }
}
