//! Simulation with external learners: sites whose model and rows live
//! outside Tessera (`tessera_engine::ExternalLearner`), in the same
//! synchronous flat rounds as built-in sites (`run.rs`): the plan's
//! strategy, robust rule, secure aggregation, central DP and compression.

use std::collections::BTreeMap;
use std::time::Instant;

use tessera_core::ParameterSet;
use tessera_data::{Agreement, Dataset, FederatedData, Scaler, SiteData, Task, Unstandardised};
use tessera_engine::report::{RoundRecord, RunReport};
use tessera_engine::{
    EngineError, ExternalError, ExternalLearner, Mode, Plan, TopologyKind, external,
};

use crate::run::{Models, report, run_sync};
use crate::{SimError, SimOptions};

/// Runs `plan`'s federation over `sites`, one external learner per named
/// site, calling `observer` after each round. The global model starts from
/// the parameters of the first site (by name) and every other site's must
/// have their layout. Rounds are synchronous and flat; the plan's `[data]`
/// and `[model]` are not used (each learner has its own). Sites train in
/// parallel, up to the learners' own locks. The report's model is
/// `external`; it has no features, classes or data summary.
///
/// `train_rows` gives sites' training rows by name; local DP needs every
/// site's (its accounting's sampling rate is the batch size over them), and
/// a name there that is not a site is refused.
pub fn simulate_with_learners(
    plan: &Plan,
    sites: Vec<(String, Box<dyn ExternalLearner>)>,
    train_rows: &BTreeMap<String, usize>,
    observer: &mut dyn FnMut(&RoundRecord),
) -> Result<RunReport, SimError> {
    plan.validate()?;
    crate::multitask::elsewhere(plan)?;
    if plan.topology.kind != TopologyKind::Flat || plan.federation.mode != Mode::Sync {
        return Err(state(
            "external learners run in synchronous flat rounds: say mode = \"sync\" in \
             [federation] and kind = \"flat\" in [topology]",
        ));
    }
    if plan.federation.strategy == tessera_aggregate::StrategyKind::Ifca {
        // Each IFCA site measures every cluster's loss, with a built-in model.
        return Err(state(
            "ifca runs with built-in models only (simulate); choose another strategy for \
             external learners",
        ));
    }
    let mut sites = sites;
    sites.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(pair) = sites.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(state(format!("two sites are named '{}'", pair[0].0)));
    }
    if let Some((name, _)) = sites.iter().find(|(name, _)| name.trim().is_empty()) {
        return Err(state(format!("a site's name is empty ('{name}')")));
    }
    plan.check_cohort(sites.len())?;
    if let Some(name) = train_rows
        .keys()
        .find(|name| sites.binary_search_by(|(n, _)| n.cmp(name)).is_err())
    {
        return Err(state(format!(
            "training rows are given for '{name}', which is not one of the sites"
        )));
    }
    let initial = layout(&mut sites)?;
    let (names, learners): (Vec<String>, Vec<_>) = sites.into_iter().unzip();
    let rows = names.iter().map(|n| train_rows.get(n).copied()).collect();
    let data = no_rows(&names);
    let started = Instant::now();
    let run = run_sync(
        plan,
        &data,
        None,
        Models::External {
            initial,
            learners,
            train_rows: rows,
        },
        observer,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let mut report = report(plan, &data, &SimOptions::default(), run, None, seconds)?;
    report.model = "external".to_string();
    Ok(report)
}

/// The initial global parameters: the first site's, checked; every other
/// site's must have their layout.
fn layout(sites: &mut [(String, Box<dyn ExternalLearner>)]) -> Result<ParameterSet, SimError> {
    let mut initial: Option<(String, ParameterSet)> = None;
    for (name, learner) in sites.iter_mut() {
        let at = |e: ExternalError| state(format!("site '{name}': external learner: {e}"));
        let parameters = learner.parameters().map_err(at)?;
        external::check_initial(&parameters).map_err(at)?;
        match &initial {
            None => initial = Some((name.clone(), parameters)),
            Some((first, global)) => global.check_same_layout(&parameters).map_err(|e| {
                state(format!(
                    "site '{name}': get_parameters gives another layout than site '{first}' \
                     (whose parameters start the global model): {e}"
                ))
            })?,
        }
    }
    initial
        .map(|(_, parameters)| parameters)
        .ok_or_else(|| state("no sites: give at least one external learner"))
}

/// The sites, by name, with no rows (their learners hold them).
fn no_rows(names: &[String]) -> FederatedData {
    let empty = Dataset::empty(0);
    FederatedData {
        feature_names: Vec::new(),
        task: Task {
            classes: Vec::new(),
        },
        sites: names
            .iter()
            .map(|name| SiteData {
                name: name.clone(),
                train: empty.clone(),
                test: empty.clone(),
                unstandardised: Some(Box::new(Unstandardised {
                    raw_train: empty.x.clone(),
                    raw_test: empty.x.clone(),
                    scaler: Scaler {
                        mean: Vec::new(),
                        scale: Vec::new(),
                    },
                })),
                imputed_train: Vec::new(),
            })
            .collect(),
        summary: Vec::new(),
        agreement: Agreement {
            columns: Vec::new(),
            encodings: Vec::new(),
            classes: Vec::new(),
        },
    }
}

fn state(message: impl Into<String>) -> SimError {
    SimError::Engine(EngineError::State(message.into()))
}
