//! Federated tuning by Hyperband (Li, Jamieson, DeSalvo, Rostamizadeh and
//! Talwalkar, JMLR 2018) or one bracket of its successive halving
//! (Jamieson and Talwalkar, 2016): configurations of the plan's settings are
//! drawn from a search space, each is run for a few rounds, the best `1/eta`
//! of them are run again for `eta` times the rounds, and so on until the
//! last rung runs the plan's own rounds. Hyperband runs several such
//! brackets, from the most aggressive (many configurations from
//! `min_rounds`) down to a few configurations at the plan's rounds alone,
//! so that a setting that is good only over many rounds is not cut early
//! everywhere; the best of the brackets' last rungs is the result.
//!
//! The objective is federated evaluation on rows the search may look at:
//! each site's *validation* rows, a share of its training rows held out
//! ([`validation_view`]; `tessera tune` draws them anew for each seed),
//! never its test rows. Training runs
//! on the rest, standardised with their own statistics. A configuration's
//! objective is the mean over the search's seeds of the global model's mean
//! per-site accuracy on them (ties: the lower mean log loss, then the
//! earlier configuration), or with `objective = "loss"` its log loss. The test rows are for judging the result on
//! other seeds afterwards (`tessera tune` does so).
//!
//! A search space (`[search]` and `[[param]]` in a TOML file, [`Space`])
//! names plan keys as `--set` takes them, each with a choice of values or a
//! uniform or log-uniform range, optionally only `when` an earlier key has
//! a value (`strategies.fedprox.mu` only when `federation.strategy` is
//! `fedprox`). Keys under `data.`, the seed and the rounds are refused:
//! the search tunes the learning, on fixed data, within the plan's rounds.

use serde::{Deserialize, Serialize};
use tessera_core::SeededRng;
use tessera_data::{Dataset, FeatureStatistics, FederatedData, ScaleScope, Scaler};
use tessera_engine::Plan;

use crate::{SimError, SimOptions};

mod space;

/// The loss of a run that evaluated nothing: above any real one, and
/// still finite when a few are added up.
pub const NO_LOSS: f64 = 1e30;

use space::{HOLD_OUT, refused};

pub use space::{
    BracketPlan, MAX_CHOICES, MAX_CONFIGURATIONS, MAX_PARAMS, MAX_SEEDS, Method, Objective, Param,
    SearchConfig, Space, setting,
};

/// One run of a configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// The bracket, from 0.
    pub bracket: usize,
    /// The rung, from 0.
    pub rung: usize,
    /// The configuration, by its place in the first rung.
    pub configuration: usize,
    /// Its settings.
    pub settings: Vec<String>,
    /// Rounds.
    pub rounds: u32,
    /// The run seed.
    pub seed: u64,
}

/// What a trial measured on the validation rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// The global model's mean per-site accuracy.
    pub mean_site_accuracy: f64,
    /// Its mean log loss over all validation rows.
    pub loss: f64,
}

/// A configuration's standing in a rung.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standing {
    /// The configuration.
    pub configuration: usize,
    /// Mean over seeds of the mean per-site validation accuracy.
    pub accuracy: f64,
    /// Mean over seeds of the validation log loss.
    pub loss: f64,
}

/// A rung: its rounds and every configuration run in it, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rung {
    /// Rounds each configuration ran.
    pub rounds: u32,
    /// Best first.
    pub standings: Vec<Standing>,
}

/// A finished search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Search {
    /// Every configuration's settings, by number (brackets one after
    /// another).
    pub configurations: Vec<Vec<String>>,
    /// Each bracket's rungs, first to last.
    pub brackets: Vec<Vec<Rung>>,
    /// The finalists (each bracket's best, and the plan as given) on the
    /// final seeds, best first; empty without final seeds.
    pub finals: Vec<Standing>,
    /// The result: the best of the finals, or without them of the
    /// finalists' last standings.
    pub best: usize,
    /// Its standing there.
    pub best_standing: Standing,
    /// Rounds run in all: each trial's rounds, over every seed.
    pub rounds_spent: u64,
}

/// `a` before `b` when it is better by `objective` (ties: by the other
/// figure, then the earlier configuration).
fn better(objective: Objective, a: &Standing, b: &Standing) -> std::cmp::Ordering {
    let accuracy = b.accuracy.total_cmp(&a.accuracy);
    let loss = a.loss.total_cmp(&b.loss);
    match objective {
        Objective::Accuracy => accuracy.then(loss),
        Objective::Loss => loss.then(accuracy),
    }
    .then(a.configuration.cmp(&b.configuration))
}

/// A configuration's standing: its trials over `seeds`, the means.
fn standing<E>(
    c: usize,
    trial: Trial,
    seeds: &[u64],
    spent: &mut u64,
    run: &mut dyn FnMut(&Trial) -> Result<Measured, E>,
) -> Result<Standing, E> {
    let (mut accuracy, mut loss) = (0.0, 0.0);
    for &seed in seeds {
        let measured = run(&Trial {
            seed,
            ..trial.clone()
        })?;
        *spent += u64::from(trial.rounds);
        accuracy += measured.mean_site_accuracy;
        loss += measured.loss;
    }
    let n = seeds.len().max(1) as f64;
    Ok(Standing {
        configuration: c,
        accuracy: accuracy / n,
        loss: loss / n,
    })
}

/// Runs the space's brackets up to `rounds` (the plan's), each by
/// successive halving (each rung keeps the best `1/eta`, at least one),
/// with `run` measuring one trial; `run` is called in bracket, rung,
/// configuration and seed order, so a caller may keep and reuse results.
///
/// The finalists are the best of each bracket's last rung and the plan as
/// given. With `final_seeds`, each is run again at the plan's rounds on
/// those seeds (their own validation rows; trials of bracket
/// `brackets.len()`), and the best by the mean over them is the result:
/// the best of many noisy estimates is an overestimate (the winner's
/// curse), and fresh ones judge the finalists fairly. Without, the result
/// is the best of the finalists' last standings.
pub fn search<E>(
    space: &Space,
    rounds: u32,
    run: &mut dyn FnMut(&Trial) -> Result<Measured, E>,
) -> Result<Search, E> {
    let (eta, objective) = (space.search.eta.max(2), space.search.objective);
    let mut configurations = Vec::new();
    let mut brackets = Vec::new();
    let mut spent = 0u64;
    let mut finalists: Vec<Standing> = Vec::new();
    for (b, bracket) in space.brackets(rounds).into_iter().enumerate() {
        let first = configurations.len();
        configurations.extend(bracket.configurations.iter().cloned());
        let mut alive: Vec<usize> = (first..configurations.len()).collect();
        let mut rungs = Vec::new();
        for (r, &rung_rounds) in bracket.rounds.iter().enumerate() {
            let mut standings = Vec::with_capacity(alive.len());
            for &c in &alive {
                let trial = Trial {
                    bracket: b,
                    rung: r,
                    configuration: c,
                    settings: configurations[c].clone(),
                    rounds: rung_rounds,
                    seed: 0,
                };
                standings.push(standing(c, trial, &space.search.seeds, &mut spent, run)?);
            }
            standings.sort_by(|a, b| better(objective, a, b));
            alive = standings
                .iter()
                .take((alive.len() / eta).max(1))
                .map(|s| s.configuration)
                .collect();
            rungs.push(Rung {
                rounds: rung_rounds,
                standings,
            });
        }
        if let Some(last) = rungs.last() {
            finalists.extend(last.standings.first().cloned());
            // The plan as given, wherever it ran at the plan's rounds.
            finalists.extend(
                last.standings
                    .iter()
                    .skip(1)
                    .filter(|s| configurations[s.configuration].is_empty())
                    .cloned(),
            );
        }
        brackets.push(rungs);
    }
    let finals = if space.search.final_seeds.is_empty() {
        Vec::new()
    } else {
        let b = brackets.len();
        let mut finals = Vec::with_capacity(finalists.len());
        for (r, f) in finalists.iter().enumerate() {
            let c = f.configuration;
            let trial = Trial {
                bracket: b,
                rung: r,
                configuration: c,
                settings: configurations[c].clone(),
                rounds,
                seed: 0,
            };
            finals.push(standing(
                c,
                trial,
                &space.search.final_seeds,
                &mut spent,
                run,
            )?);
        }
        finals.sort_by(|a, b| better(objective, a, b));
        finals
    };
    let mut last = finalists.clone();
    last.sort_by(|a, b| better(objective, a, b));
    let best_standing = finals
        .first()
        .or(last.first())
        .cloned()
        .unwrap_or(Standing {
            configuration: 0,
            accuracy: 0.0,
            loss: NO_LOSS,
        });
    Ok(Search {
        best: best_standing.configuration,
        best_standing,
        configurations,
        brackets,
        finals,
        rounds_spent: spent,
    })
}

/// `data` with each site's test rows replaced by its validation rows: a
/// share `fraction` of its training rows drawn with `seed` (at least one
/// where it has two or more, and never all), its training rows the rest,
/// both standardised anew from the remaining training rows as the plan's
/// `[data.standardize]` says. The test rows are not in it at all.
pub fn validation_view(
    plan: &Plan,
    data: &FederatedData,
    fraction: f64,
    seed: u64,
) -> FederatedData {
    let mut view = data.clone();
    for (s, site) in view.sites.iter_mut().enumerate() {
        let n = site.train.n_rows();
        let held = if n >= 2 {
            ((fraction * n as f64).round() as usize).clamp(1, n - 1)
        } else {
            0
        };
        let mut order = SeededRng::derived(seed, &[HOLD_OUT, s as u64]).permutation(n);
        let (mut validation, mut training) = {
            let (v, t) = order.split_at_mut(held);
            (v.to_vec(), t.to_vec())
        };
        validation.sort_unstable();
        training.sort_unstable();
        let raw = Dataset {
            x: site.raw_train().clone(),
            y: site.train.y.clone(),
        };
        let (raw_training, raw_validation) = (raw.select(&training), raw.select(&validation));
        site.train = raw_training.clone();
        site.test = raw_validation.clone();
        if let Some(held) = &mut site.unstandardised {
            held.raw_train = raw_training.x;
            held.raw_test = raw_validation.x;
        }
    }
    let config = &plan.data.standardize;
    let indicators = data.indicators();
    let federation = (config.enabled && config.scope == ScaleScope::Federation).then(|| {
        let stats: Vec<FeatureStatistics> = view
            .sites
            .iter()
            .map(|s| FeatureStatistics::of_features(s.raw_train()))
            .collect();
        Scaler::from_statistics(
            &FeatureStatistics::merge_all(data.n_features(), stats.iter()),
            config,
            &indicators,
        )
    });
    for (site, summary) in view.sites.iter_mut().zip(view.summary.iter_mut()) {
        let scaler = federation.clone().unwrap_or_else(|| {
            Scaler::from_statistics(
                &FeatureStatistics::of_features(site.raw_train()),
                config,
                &indicators,
            )
        });
        site.rescale(scaler);
        summary.n_train = site.train.n_rows();
        summary.n_test = site.test.n_rows();
    }
    view
}

/// One trial's plan: `plan` with `settings`, `rounds` and `seed`.
pub fn trial_plan(plan: &Plan, trial: &Trial) -> Result<Plan, SimError> {
    let mut plan = plan.with_settings(&trial.settings)?;
    plan.seed = trial.seed;
    plan.federation.rounds = trial.rounds;
    // A trial's report is reduced to its score: no attribution to pay for.
    plan.contribution.method = tessera_engine::AttributionMethod::Off;
    plan.validate()?;
    Ok(plan)
}

/// Runs `plan` on `data` (a [`validation_view`], or the test rows when
/// comparing) and gives the final global model's figures; a run that
/// evaluates no row measures 0 accuracy and a loss of [`NO_LOSS`].
pub fn measure(plan: &Plan, data: &FederatedData) -> Result<Measured, SimError> {
    let report = crate::simulate(plan, data, &SimOptions::default(), &mut |_| {})?;
    let f = &report.final_metrics;
    Ok(Measured {
        mean_site_accuracy: f.mean_site_accuracy.unwrap_or(0.0),
        loss: f.loss.filter(|l| l.is_finite()).unwrap_or(NO_LOSS),
    })
}

/// Refuses plans the search cannot run: multi-task, external models and
/// cross-silo features (whose rows the held-out draw would split apart
/// from their noisy membership).
pub fn check_tunable(plan: &Plan) -> Result<(), SimError> {
    let why = if plan.multitask.is_some() {
        Some("a [multitask] plan reports each task's own federation; tune one task's plan")
    } else if plan.model.kind.is_external() {
        Some("the plan's model is external: its learners live outside Tessera")
    } else if plan.data.cross_silo.is_some() {
        Some("the plan has [data.cross_silo], whose feature is computed on the whole rows")
    } else {
        None
    };
    match why {
        Some(why) => Err(refused(format!("cannot tune this plan: {why}"))),
        None => Ok(()),
    }
}
