//! The Rust side of the external-learner overhead benchmark (BENCHMARKS.md,
//! "Bring your own model: the cost of a Python client"): the seconds a round
//! takes with the built-in logistic regression doing almost no work (one
//! step on one row a site) and with a Rust external learner doing none, on
//! the same sites, rounds and parameter layout. `python/benches/overhead.py`
//! runs it and adds the same rounds with Python clients doing no work.
//!
//!     cargo run --release -p tessera-sim --example external_overhead -- SITES ROUNDS FEATURES
//!
//! Prints one JSON line: per-round medians (seconds, first round left out)
//! and the parameter layout.

use std::collections::BTreeMap;

use tessera_core::ParameterSet;
use tessera_data::Filesystem;
use tessera_engine::report::RunReport;
use tessera_engine::{
    EvaluateConfig, EvaluateResult, ExternalError, ExternalLearner, FitConfig, FitResult, Metrics,
    Plan,
};
use tessera_sim::{SimOptions, simulate, simulate_with_learners};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The plan's common part: one step on one row a site, `rounds` rounds.
fn common(sites: usize, rounds: u32) -> String {
    format!(
        "[training]\nsteps = 1\nbatch_size = 1\nlr = 0.1\n\
         [federation]\nrounds = {rounds}\nmin_participants = {sites}\n"
    )
}

fn built_in_plan(sites: usize, rounds: u32, features: usize) -> String {
    format!(
        "name = \"overhead-built-in\"\nseed = 1\n\
         [data]\nsite_column = \"site\"\n\
         [data.synthetic]\nsites = {sites}\nrows = 4\nfeatures = {features}\nclasses = 2\n\
         alpha = 0.5\nbeta = 0.5\nseed = 1\n\
         [data.schema]\ntarget = \"y\"\n[model]\nkind = \"logistic\"\n{}",
        common(sites, rounds)
    )
}

fn external_plan(sites: usize, rounds: u32) -> String {
    format!(
        "name = \"overhead-external\"\nseed = 1\n[model]\nkind = \"external\"\n{}",
        common(sites, rounds)
    )
}

/// A learner that does nothing: it hands the global parameters back.
struct NoWork {
    initial: ParameterSet,
}

impl ExternalLearner for NoWork {
    fn parameters(&mut self) -> std::result::Result<ParameterSet, ExternalError> {
        Ok(self.initial.clone())
    }

    fn fit(
        &mut self,
        global: &ParameterSet,
        _config: &FitConfig,
    ) -> std::result::Result<FitResult, ExternalError> {
        Ok(FitResult {
            parameters: global.clone(),
            n_examples: 3,
            metrics: Metrics::new(),
        })
    }

    fn evaluate(
        &mut self,
        _global: &ParameterSet,
        _config: &EvaluateConfig,
    ) -> std::result::Result<EvaluateResult, ExternalError> {
        Ok(EvaluateResult {
            loss: 0.5,
            n_examples: 1,
            metrics: Metrics::from([("accuracy".to_string(), 1.0)]),
        })
    }
}

/// The median of the rounds' seconds, the first left out (warm-up).
fn median_round(report: &RunReport) -> f64 {
    let mut seconds: Vec<f64> = report.rounds.iter().skip(1).map(|r| r.seconds).collect();
    seconds.sort_by(f64::total_cmp);
    seconds.get(seconds.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [sites, rounds, features] = args.as_slice() else {
        return Err("usage: external_overhead SITES ROUNDS FEATURES".into());
    };
    let (sites, rounds, features): (usize, u32, usize) =
        (sites.parse()?, rounds.parse()?, features.parse()?);
    let dir = std::env::temp_dir();
    let plan = Plan::from_toml(&built_in_plan(sites, rounds, features), "overhead")?;
    plan.validate()?;
    let data = tessera_data::load(&plan.data, &dir, &Filesystem)?;
    let built_in = simulate(&plan, &data, &SimOptions::default(), &mut |_| {})?;
    let initial = tessera_sim::initial_model(&plan, &data)?
        .parameters()
        .clone();
    let plan = Plan::from_toml(&external_plan(sites, rounds), "overhead")?;
    let learners: Vec<(String, Box<dyn ExternalLearner>)> = data
        .sites
        .iter()
        .map(|s| {
            let learner = NoWork {
                initial: initial.clone(),
            };
            (
                s.name.clone(),
                Box::new(learner) as Box<dyn ExternalLearner>,
            )
        })
        .collect();
    let external = simulate_with_learners(&plan, learners, &BTreeMap::new(), &mut |_| {})?;
    let shapes: Vec<Vec<usize>> = initial
        .tensors()
        .iter()
        .map(|t| t.shape().to_vec())
        .collect();
    let line = serde_json::json!({
        "sites": sites,
        "rounds": rounds,
        "shapes": shapes,
        "built_in_round_seconds": median_round(&built_in),
        "rust_no_work_round_seconds": median_round(&external),
        "site_names": data.sites.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
    });
    println!("{line}");
    Ok(())
}
