//! Multi-task federated learning in simulation (`[multitask]`): sites with
//! different targets over the same features. The model's body (every layer
//! but the last) is shared by every site; each task has its own head (the
//! last layer), which only that task's sites train.
//!
//! [`load_multitask`] reads the data once per task, with that task's
//! target and every other task's target left out of the features, so
//! every task sees the same features; a site takes its rows from its own
//! task's reading. [`train`] runs the plan's synchronous FedAvg rounds with
//! one model per group of sites: each round every site trains its group's
//! model, each head moves by its group's weighted mean change and the body
//! by the weighted mean change of the sites it is shared with.
//! [`simulate_multitask`] trains three ways from the same initial models
//! with the same batches, so that they differ only in what is shared:
//! `shared` (one body for all, a head per task: multi-task), `separate`
//! (a whole model per task, as if each task ran its own federation) and
//! `local` (every site alone).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tessera_aggregate::Multitask;
use tessera_core::{ParameterSet, ParticipantId, Timestamp};
use tessera_data::{DataError, FederatedData, FileSource};
use tessera_engine::report::mean_site_accuracy;
use tessera_engine::{
    DpCohort, EngineConfig, EngineError, FitTask, Plan, PlanBuild, RoundEngine, RoundStatus, Site,
    TaskSpec,
};
use tessera_learn::Evaluation;

use crate::SimError;
use crate::sites::lock;

/// Every task's reading of the data, and each site's task.
#[derive(Debug, Clone)]
pub struct MultitaskData {
    /// One reading per task, in the plan's order: that task's sites
    /// (sorted by name) with its target, every reading with the same
    /// features.
    pub tasks: Vec<FederatedData>,
    /// Every participant's name, sorted: the site's, or `SITE/TASK` for
    /// a site in several tasks (one participant per task).
    pub names: Vec<String>,
    /// Each site's task, by index, in site order.
    pub site_task: Vec<usize>,
    /// Each site's place in its task's reading, in site order.
    pub place: Vec<usize>,
}

impl MultitaskData {
    /// The sites' names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// The rows of site `i`, as its task reads them.
    pub fn site(&self, i: usize) -> &tessera_data::SiteData {
        &self.tasks[self.site_task[i]].sites[self.place[i]]
    }

    /// The rows of site `i`, to change (tests).
    pub fn site_mut(&mut self, i: usize) -> &mut tessera_data::SiteData {
        &mut self.tasks[self.site_task[i]].sites[self.place[i]]
    }
}

/// Reads the plan's data once per task of its `[multitask]`, each task's
/// sites only: each task's target (with its positive or negative values)
/// replaces the schema's, and every task's target is left out of the
/// features (a site need not have the other tasks' columns filled).
/// Refused when the readings do not share their features, when a task
/// names a site the data does not have, or a site of the data has no task.
pub fn load_multitask(
    plan: &Plan,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<MultitaskData, DataError> {
    let multitask = plan
        .multitask
        .as_ref()
        .ok_or_else(|| DataError::Config("the plan has no [multitask]".into()))?;
    plan.validate()
        .map_err(|e| DataError::Config(e.to_string()))?;
    let targets: Vec<&str> = multitask.tasks.iter().map(|t| t.target.as_str()).collect();
    let schema = &plan.data.schema;
    if !schema.header
        && let Some(target) = targets
            .iter()
            .find(|t| !schema.columns.iter().any(|c| c.name == **t))
    {
        return Err(DataError::Config(format!(
            "multitask: without a header ([data.schema] header = false) every column must \
                 be named in [data.schema] columns, and the task target '{target}' is not"
        )));
    }
    // A site in several tasks: its rows must fall alike in every task's
    // split, or a test row of one task could train the shared body in
    // another.
    if plan.data.split.membership.is_none()
        && let Some((site, other, task)) = multitask.site_in_two_tasks()
    {
        return Err(DataError::Config(format!(
            "multitask puts site '{site}' in tasks '{}' and '{}': that needs \
             [data.split.membership], so that its rows are split alike for every \
             task (a random split is drawn per task, and a test row of one task \
             could train the shared body in another)",
            other.name, task.name
        )));
    }
    let mut tasks = Vec::with_capacity(multitask.tasks.len());
    for (t, task) in multitask.tasks.iter().enumerate() {
        let Some(mut config) = multitask.task_data(&plan.data, t) else {
            continue;
        };
        // One file per site: the other tasks' files are not read at all.
        for site in &task.sites {
            if !config.sites.is_empty() && !config.sites.iter().any(|s| &s.name == site) {
                return Err(unknown_site(&task.name, site, &plan.data));
            }
        }
        for site in &config.sites {
            if multitask.task_of(&site.name).is_none() {
                return Err(no_task(&site.name));
            }
        }
        config.sites.retain(|s| task.sites.contains(&s.name));
        let mut kept = Vec::new();
        let mut keep = |site: &str| match multitask.task_of(site) {
            Some(_) if task.sites.iter().any(|s| s == site) => {
                kept.push(site.to_string());
                Ok(true)
            }
            Some(_) => Ok(false),
            None => Err(no_task(site)),
        };
        let data = tessera_data::load_sites(&config, base_dir, source, &mut keep).map_err(|e| {
            // The task as context, once: "data config: multitask task
            // 'a': ...", not the inner "data config:" again.
            let inner = match e {
                DataError::Config(message) => message,
                other => other.to_string(),
            };
            DataError::Config(format!("multitask task '{}': {inner}", task.name))
        })?;
        if let Some(site) = task.sites.iter().find(|s| !kept.contains(s)) {
            return Err(unknown_site(&task.name, site, &plan.data));
        }
        task.check_classes(&data.task.classes)
            .map_err(DataError::Config)?;
        tasks.push(data);
    }
    let first = &tasks[0];
    for (data, task) in tasks.iter().zip(&multitask.tasks).skip(1) {
        if data.feature_names != first.feature_names {
            return Err(DataError::Config(format!(
                "multitask: task '{}' reads other features, or in another order, than task \
                 '{}' ({} against {}); give every site's file the same columns in the same \
                 order and declare each categorical column's levels in [data.schema] columns \
                 so that every task encodes them alike",
                task.name,
                multitask.tasks[0].name,
                data.feature_names.join(", "),
                first.feature_names.join(", ")
            )));
        }
    }
    let mut sites: Vec<(String, usize, usize)> = tasks
        .iter()
        .enumerate()
        .flat_map(|(t, data)| {
            data.sites
                .iter()
                .enumerate()
                .map(move |(place, s)| (s.name.clone(), t, place))
        })
        .collect();
    sites.sort();
    // A site in several tasks is one participant per task: SITE/TASK.
    let names = sites
        .iter()
        .map(|(name, t, _)| {
            if sites.iter().filter(|s| &s.0 == name).count() > 1 {
                format!("{name}/{}", multitask.tasks[*t].name)
            } else {
                name.clone()
            }
        })
        .collect();
    Ok(MultitaskData {
        names,
        site_task: sites.iter().map(|s| s.1).collect(),
        place: sites.iter().map(|s| s.2).collect(),
        tasks,
    })
}

fn unknown_site(task: &str, site: &str, config: &tessera_data::DataConfig) -> DataError {
    let listed = if config.sites.is_empty() {
        String::new()
    } else {
        format!(
            " (it has {})",
            config
                .sites
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    DataError::Config(format!(
        "multitask task '{task}' names site '{site}', which the data does not have{listed}"
    ))
}

fn no_task(site: &str) -> DataError {
    DataError::Config(format!(
        "multitask: site '{site}' is in no task; name it in one task's sites"
    ))
}

/// What the sites share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// One body for every site, a head per task: multi-task.
    Shared,
    /// A whole model per task: each task its own federation.
    PerTask,
    /// A whole model per site: each site alone.
    Local,
}

/// One round of a multi-task run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultitaskRound {
    /// The round, from 1.
    pub round: u32,
    /// Mean training loss over the round's rows.
    pub train_loss: f64,
    /// Sites that trained.
    pub accepted: usize,
    /// Mean over sites of each site's accuracy on its test rows, each with
    /// its own task's model after the round.
    pub mean_site_accuracy: f64,
    /// Sites that failed the round (they sit it out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub site_errors: Vec<String>,
}

/// A run of one [`Sharing`].
#[derive(Debug, Clone)]
pub struct Trained {
    /// The final model of each group (per task for `Shared` and
    /// `PerTask`, per site for `Local`).
    pub models: Vec<ParameterSet>,
    /// Each site's final model evaluated on its test rows.
    pub evaluations: Vec<Evaluation>,
    /// The rounds.
    pub rounds: Vec<MultitaskRound>,
}

/// The run's initial model: the shared body and one head per task,
/// stacked ([`PlanBuild::multitask_parameters`], the same in deployment).
pub fn initial_stacked(plan: &Plan, data: &MultitaskData) -> Result<ParameterSet, SimError> {
    let classes: Vec<usize> = data.tasks.iter().map(|t| t.task.n_classes()).collect();
    Ok(plan.multitask_parameters(data.tasks[0].n_features(), &classes)?)
}

/// The initial model of each task: the plan's initial model for the
/// first; for the others its body and a head drawn from the task's own
/// stream (`streams::MULTITASK`).
pub fn initial_models(plan: &Plan, data: &MultitaskData) -> Result<Vec<ParameterSet>, SimError> {
    let stacked = initial_stacked(plan, data)?;
    task_models(&stacked, data.tasks.len())
}

/// Each task's model in a stacked one.
fn task_models(stacked: &ParameterSet, k: usize) -> Result<Vec<ParameterSet>, SimError> {
    (0..k)
        .map(|t| Multitask::task_model(stacked, k, t).map_err(|e| state(&e.to_string())))
        .collect()
}

/// The plan's tasks, refused where the plan is invalid or `data` is not
/// its tasks' reading.
fn checked<'a>(plan: &'a Plan, data: &MultitaskData) -> Result<&'a [TaskSpec], SimError> {
    plan.validate()?;
    let specs = &plan
        .multitask
        .as_ref()
        .ok_or_else(|| state("the plan has no [multitask]"))?
        .tasks;
    let n = data.names.len();
    if data.tasks.len() != specs.len()
        || data.site_task.len() != n
        || data.place.len() != n
        || (0..n).any(|i| {
            data.tasks.get(data.site_task[i]).is_none_or(|t| {
                t.sites.get(data.place[i]).is_none_or(|s| {
                    s.name != data.names[i]
                        && format!("{}/{}", s.name, specs[data.site_task[i]].name) != data.names[i]
                })
            })
        })
    {
        return Err(state(
            "the data is not this plan's tasks' reading (load_multitask)",
        ));
    }
    Ok(specs)
}

/// Refuses a multi-task plan where one model is run.
pub(crate) fn elsewhere(plan: &Plan) -> Result<(), SimError> {
    match plan.multitask {
        Some(_) => Err(state(
            "the plan has [multitask]: run it with simulate_multitask (tessera simulate does)",
        )),
        None => Ok(()),
    }
}

fn state(why: &str) -> SimError {
    SimError::Engine(EngineError::State(format!("multitask: {why}")))
}

/// The plan's rounds on `data`, sharing as `sharing` says, from the
/// tasks' [`initial_models`]; `observer` sees each round.
pub fn train(
    plan: &Plan,
    data: &MultitaskData,
    sharing: Sharing,
    observer: &mut dyn FnMut(&MultitaskRound),
) -> Result<Trained, SimError> {
    checked(plan, data)?;
    if sharing == Sharing::Shared {
        return train_shared(plan, data, observer);
    }
    let initial = initial_models(plan, data)?;
    let names = data.names();
    let n = names.len();
    let group: Vec<usize> = match sharing {
        Sharing::Shared | Sharing::PerTask => data.site_task.clone(),
        Sharing::Local => (0..n).collect(),
    };
    let mut models: Vec<Arc<ParameterSet>> = match sharing {
        Sharing::Shared | Sharing::PerTask => initial.iter().cloned().map(Arc::new).collect(),
        Sharing::Local => data
            .site_task
            .iter()
            .map(|&t| Arc::new(initial[t].clone()))
            .collect(),
    };
    let sites = sites_of(plan, data)?;
    let server_lr = plan.strategy_config().server_lr.unwrap_or(1.0);
    let mut rounds = Vec::new();
    for round in 1..=plan.federation.rounds {
        let trained: Vec<Result<Option<tessera_core::Update>, SimError>> = (0..n)
            .into_par_iter()
            .map(|i| {
                let train = &data.site(i).train;
                if train.n_rows() == 0 {
                    return Ok(None);
                }
                let task = FitTask {
                    round,
                    global: Arc::clone(&models[group[i]]),
                    instructions: Default::default(),
                    deadline: None,
                };
                Ok(Some(lock(&sites[i]).fit(&task, train)?))
            })
            .collect();
        // Each group's weighted sum of changes, in site order.
        let mut sums: Vec<Option<(ParameterSet, f64)>> = vec![None; models.len()];
        let mut site_errors = Vec::new();
        let (mut accepted, mut examples, mut loss) = (0usize, 0.0f64, 0.0f64);
        for (i, t) in trained.into_iter().enumerate() {
            let update = match t {
                Ok(Some(update)) => update,
                Ok(None) => continue,
                Err(e) => {
                    site_errors.push(format!("site '{}': {e}", names[i]));
                    continue;
                }
            };
            let weight = update.n_examples as f64;
            accepted += 1;
            examples += weight;
            loss += weight * update.stats.mean_train_loss;
            let (sum, total) =
                sums[group[i]].get_or_insert_with(|| (models[group[i]].zeros_like(), 0.0));
            sum.add_scaled(&update.delta, weight as f32)
                .map_err(|e| state(&e.to_string()))?;
            *total += weight;
        }
        // A group without updates keeps its model.
        for (g, sum) in sums.iter().enumerate() {
            let Some((sum, total)) = sum else {
                continue;
            };
            let mut next = models[g].as_ref().clone();
            for (tensor, change) in next.tensors_mut().iter_mut().zip(sum.tensors()) {
                for (value, change) in tensor.data_mut().iter_mut().zip(change.data()) {
                    *value += server_lr * (f64::from(*change) / total) as f32;
                }
            }
            next.check_finite().map_err(|e| state(&e.to_string()))?;
            models[g] = Arc::new(next);
        }
        let evaluations = evaluate(&sites, data, &models, &group)?;
        let record = MultitaskRound {
            round,
            train_loss: if examples > 0.0 { loss / examples } else { 0.0 },
            accepted,
            mean_site_accuracy: mean_site_accuracy(&evaluations),
            site_errors,
        };
        observer(&record);
        rounds.push(record);
    }
    let evaluations = evaluate(&sites, data, &models, &group)?;
    Ok(Trained {
        models: models.iter().map(|m| m.as_ref().clone()).collect(),
        evaluations,
        rounds,
    })
}

/// Multi-task's rounds as every runtime runs them: the round engine over
/// the stacked model with the [`Multitask`] strategy, each site's
/// [`Site`] training its task's model through the strategy's local part.
fn train_shared(
    plan: &Plan,
    data: &MultitaskData,
    observer: &mut dyn FnMut(&MultitaskRound),
) -> Result<Trained, SimError> {
    let names = data.names();
    let n = names.len();
    let k = data.tasks.len();
    let strategy = Multitask {
        tasks: (0..k)
            .map(|t| {
                (0..n)
                    .filter(|&i| data.site_task[i] == t)
                    .map(|i| names[i].clone())
                    .collect()
            })
            .collect(),
        server_lr: plan.strategy_config().server_lr.unwrap_or(1.0),
    };
    let initial = initial_stacked(plan, data)?;
    let mut engine = RoundEngine::new(EngineConfig::from_plan(plan), Box::new(strategy), initial)
        .protected(plan, None, DpCohort::Sampled(n))?;
    let ids: Vec<ParticipantId> = names.iter().map(ParticipantId::new).collect();
    for id in &ids {
        engine.register(id.clone());
    }
    let sites = sites_of(plan, data)?;
    let group = data.site_task.clone();
    let mut rounds = Vec::new();
    let mut now = Timestamp::ZERO;
    while !engine.is_finished() {
        let start = engine.begin_round(now)?;
        let round = start.round;
        let tasks: Vec<Option<FitTask>> = ids.iter().map(|id| engine.task_for(id)).collect();
        let trained: Vec<Result<Option<tessera_core::Update>, SimError>> = (0..n)
            .into_par_iter()
            .map(|i| {
                let train = &data.site(i).train;
                match &tasks[i] {
                    Some(task) if train.n_rows() > 0 => Ok(Some(lock(&sites[i]).fit(task, train)?)),
                    _ => Ok(None),
                }
            })
            .collect();
        let mut site_errors = Vec::new();
        for (i, t) in trained.into_iter().enumerate() {
            match t {
                Ok(Some(update)) => {
                    if let Err(e) = engine.submit(now, &ids[i], round, &update) {
                        site_errors.push(format!("site '{}': {e}", names[i]));
                    }
                }
                Ok(None) => engine.report_dropout(&ids[i]),
                Err(e) => {
                    site_errors.push(format!("site '{}': {e}", names[i]));
                    engine.report_dropout(&ids[i]);
                }
            }
        }
        let outcome = engine
            .poll(now)
            .ok_or_else(|| state(&format!("round {round} did not close")))?;
        now = outcome.closed_at;
        let completed = outcome.status == RoundStatus::Completed;
        for (i, id) in ids.iter().enumerate() {
            let counted = completed && outcome.accepted.binary_search(id).is_ok();
            lock(&sites[i]).round_closed(counted);
        }
        let models: Vec<Arc<ParameterSet>> = task_models(engine.global(), k)?
            .into_iter()
            .map(Arc::new)
            .collect();
        let evaluations = evaluate(&sites, data, &models, &group)?;
        let record = MultitaskRound {
            round,
            train_loss: outcome.mean_train_loss,
            accepted: outcome.accepted.len(),
            mean_site_accuracy: mean_site_accuracy(&evaluations),
            site_errors,
        };
        observer(&record);
        rounds.push(record);
    }
    let models = task_models(engine.global(), k)?;
    let shared: Vec<Arc<ParameterSet>> = models.iter().cloned().map(Arc::new).collect();
    let evaluations = evaluate(&sites, data, &shared, &group)?;
    Ok(Trained {
        models,
        evaluations,
        rounds,
    })
}

/// Each site's [`Site`], with a learner of its task's classes.
fn sites_of(plan: &Plan, data: &MultitaskData) -> Result<Vec<Mutex<Site>>, SimError> {
    let n_features = data.tasks[0].n_features();
    let training = plan.local_training();
    data.names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let classes = data.tasks[data.site_task[i]].task.n_classes();
            let learner = plan.learner(n_features, classes)?;
            Ok(Mutex::new(Site::new(
                ParticipantId::new(name),
                learner,
                training.clone(),
                plan.seed,
            )))
        })
        .collect()
}

/// Each site's group's model on its test rows.
fn evaluate(
    sites: &[Mutex<Site>],
    data: &MultitaskData,
    models: &[Arc<ParameterSet>],
    group: &[usize],
) -> Result<Vec<Evaluation>, SimError> {
    (0..sites.len())
        .into_par_iter()
        .map(|i| Ok(lock(&sites[i]).evaluate(&models[group[i]], &data.site(i).test)?))
        .collect()
}

/// A site's accuracy, none without test rows.
fn tested(e: &Evaluation) -> Option<f64> {
    (e.n_examples > 0).then(|| e.accuracy())
}

/// Accuracy over a set of sites.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Over all their test rows.
    pub accuracy: f64,
    /// The mean over the sites of each site's accuracy.
    pub mean_site_accuracy: f64,
    /// The sites with test rows behind the figures (0: none, and the
    /// figures are 0).
    pub tested_sites: usize,
}

impl Figures {
    fn of<'a>(evaluations: impl IntoIterator<Item = &'a Evaluation> + Clone) -> Figures {
        let (correct, rows) = evaluations
            .clone()
            .into_iter()
            .fold((0u64, 0u64), |(c, r), e| {
                (c + e.n_correct, r + e.n_examples)
            });
        Figures {
            accuracy: if rows == 0 {
                0.0
            } else {
                correct as f64 / rows as f64
            },
            mean_site_accuracy: mean_site_accuracy(evaluations.clone()),
            tested_sites: evaluations.into_iter().filter(|e| e.n_examples > 0).count(),
        }
    }
}

/// One task's figures, each way of sharing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task's name.
    pub name: String,
    /// The column it predicts.
    pub target: String,
    /// Its classes.
    pub classes: Vec<String>,
    /// Its sites.
    pub sites: Vec<String>,
    /// Its sites' test rows.
    pub test_rows: u64,
    /// Multi-task: the body shared with every task.
    pub shared: Figures,
    /// The task's own federation: a whole model of its sites only.
    pub separate: Figures,
    /// Each of its sites alone.
    pub local: Figures,
}

/// One site's accuracy on its test rows, each way of sharing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteResult {
    /// The site's task.
    pub task: String,
    /// Training rows.
    pub train_rows: usize,
    /// Test rows.
    pub test_rows: usize,
    /// Multi-task (none without test rows).
    pub shared: Option<f64>,
    /// The task's own federation.
    pub separate: Option<f64>,
    /// Alone.
    pub local: Option<f64>,
}

/// What `tessera simulate` reports of a multi-task plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultitaskReport {
    /// The plan's name.
    pub plan: String,
    /// The run seed.
    pub seed: u64,
    /// The multi-task run's rounds.
    pub rounds: Vec<MultitaskRound>,
    /// Over every site, each way of sharing.
    pub shared: Figures,
    /// The tasks' own federations.
    pub separate: Figures,
    /// Every site alone.
    pub local: Figures,
    /// Per task.
    pub tasks: Vec<TaskResult>,
    /// Per site.
    pub per_site: BTreeMap<String, SiteResult>,
}

/// The multi-task run and, from the same initial models and batches, each
/// task's own federation and every site alone; `observer` sees the
/// multi-task run's rounds. Also gives the multi-task run's models, one per
/// task.
pub fn simulate_multitask(
    plan: &Plan,
    data: &MultitaskData,
    observer: &mut dyn FnMut(&MultitaskRound),
) -> Result<(MultitaskReport, Vec<ParameterSet>), SimError> {
    let specs = checked(plan, data)?;
    plan.check_cohort(data.names.len())?;
    // The three runs one after another; the largest, every site alone,
    // holds a model per site, as the plan's one-model simulation does.
    let classes = data.tasks.iter().map(|t| t.task.n_classes()).max();
    let shape = (
        data.tasks[0].n_features(),
        classes.unwrap_or(2),
        data.names.len(),
    );
    crate::run::check_memory_of(plan, shape)?;
    let shared = train(plan, data, Sharing::Shared, observer)?;
    let separate = train(plan, data, Sharing::PerTask, &mut |_| {})?;
    let local = train(plan, data, Sharing::Local, &mut |_| {})?;
    let names = data.names();
    let tasks = specs
        .iter()
        .enumerate()
        .map(|(t, spec)| {
            let of = |trained: &Trained| {
                Figures::of(
                    trained
                        .evaluations
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| data.site_task[*i] == t)
                        .map(|(_, e)| e),
                )
            };
            let members: Vec<usize> = (0..names.len())
                .filter(|i| data.site_task[*i] == t)
                .collect();
            TaskResult {
                name: spec.name.clone(),
                target: spec.target.clone(),
                classes: data.tasks[t].task.classes.clone(),
                sites: members.iter().map(|&i| names[i].clone()).collect(),
                test_rows: members
                    .iter()
                    .map(|&i| data.site(i).test.n_rows() as u64)
                    .sum(),
                shared: of(&shared),
                separate: of(&separate),
                local: of(&local),
            }
        })
        .collect();
    let per_site = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            (
                name.clone(),
                SiteResult {
                    task: specs[data.site_task[i]].name.clone(),
                    train_rows: data.site(i).train.n_rows(),
                    test_rows: data.site(i).test.n_rows(),
                    shared: tested(&shared.evaluations[i]),
                    separate: tested(&separate.evaluations[i]),
                    local: tested(&local.evaluations[i]),
                },
            )
        })
        .collect();
    let report = MultitaskReport {
        plan: plan.name.clone(),
        seed: plan.seed,
        rounds: shared.rounds,
        shared: Figures::of(&shared.evaluations),
        separate: Figures::of(&separate.evaluations),
        local: Figures::of(&local.evaluations),
        tasks,
        per_site,
    };
    Ok((report, shared.models))
}
