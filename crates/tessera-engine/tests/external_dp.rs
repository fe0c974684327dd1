//! Local DP with an external learner: the learner runs DP-SGD itself with
//! what the site hands it (noise multiplier, clipping norm, sampling rate,
//! step bound, a seed from the site's secret key); the site accounts each
//! training as a built-in site does and refuses every report that would
//! understate what was spent.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use tessera_aggregate::Instructions;
use tessera_core::{ParameterSet, ParticipantId, Tensor};
use tessera_data::Dataset;
use tessera_engine::{
    DpFit, EngineError, EvaluateConfig, EvaluateResult, ExternalError, ExternalLearner, FitConfig,
    FitResult, FitTask, Metrics, Plan, Site,
};
use tessera_learn::LocalPlan;

const ROWS: usize = 200;
const BATCH: usize = 8;
const ROUNDS: u32 = 3;

fn plan(extra: &str) -> Plan {
    let text = format!(
        "name = \"external-dp\"\n[model]\nkind = \"external\"\n\
         [training]\nepochs = 2\nbatch_size = {BATCH}\nlr = 0.25\n[federation]\nrounds = {ROUNDS}\n\
         min_participants = 1\n[privacy]\nmode = \"local\"\nnoise_multiplier = 1.1\nclip_norm = 0.5\n{extra}"
    );
    Plan::from_toml(&text, "test").unwrap()
}

fn params() -> ParameterSet {
    let mut p = ParameterSet::new();
    p.push("w", Tensor::new(vec![3], vec![0.0; 3]).unwrap())
        .unwrap();
    p
}

/// A learner that reports `n` examples and `steps` steps (none if `None`),
/// and records the configs it was given.
struct Reporting {
    n: i64,
    steps: Option<f64>,
    configs: Arc<Mutex<Vec<FitConfig>>>,
}

impl ExternalLearner for Reporting {
    fn parameters(&mut self) -> Result<ParameterSet, ExternalError> {
        Ok(params())
    }

    fn fit(
        &mut self,
        global: &ParameterSet,
        config: &FitConfig,
    ) -> Result<FitResult, ExternalError> {
        self.configs.lock().unwrap().push(config.clone());
        let mut parameters = global.clone();
        parameters.values_mut().for_each(|v| *v += 0.25);
        let metrics: Metrics = self
            .steps
            .map(|s| ("n_steps".to_string(), s))
            .into_iter()
            .collect();
        Ok(FitResult {
            parameters,
            n_examples: self.n,
            metrics,
        })
    }

    fn evaluate(
        &mut self,
        _global: &ParameterSet,
        _config: &EvaluateConfig,
    ) -> Result<EvaluateResult, ExternalError> {
        Ok(EvaluateResult {
            loss: 0.5,
            n_examples: 10,
            metrics: [("accuracy".to_string(), 0.5)].into_iter().collect(),
        })
    }
}

fn site(
    plan: &Plan,
    key: [u8; 32],
    n: i64,
    steps: Option<f64>,
) -> (Site, Arc<Mutex<Vec<FitConfig>>>) {
    let configs = Arc::new(Mutex::new(Vec::new()));
    let learner = Reporting {
        n,
        steps,
        configs: configs.clone(),
    };
    let site = Site::external(
        plan,
        ParticipantId::new("a"),
        Box::new(learner),
        Some(ROWS),
        || Ok(key),
    )
    .unwrap();
    (site, configs)
}

fn task(round: u32) -> FitTask {
    FitTask {
        round,
        global: Arc::new(params()),
        instructions: Instructions::Plain,
        deadline: None,
    }
}

fn planned_steps(plan: &Plan) -> u64 {
    LocalPlan::plain(&plan.local_training())
        .n_steps(ROWS)
        .unwrap()
}

#[test]
fn the_learner_is_handed_the_dp_sgd_the_site_accounts_for() {
    let plan = plan("");
    let max = planned_steps(&plan);
    assert_eq!(max, 2 * ROWS.div_ceil(BATCH) as u64);
    let (mut site, configs) = site(&plan, [7; 32], ROWS as i64, Some(max as f64));
    let event = site.local_dp_event(ROWS).unwrap().unwrap();
    let update = site.fit(&task(1), &Dataset::empty(0)).unwrap();
    assert_eq!(
        (update.n_examples, update.stats.n_steps),
        (ROWS as u64, max)
    );
    let dp: DpFit = configs.lock().unwrap()[0].dp.unwrap();
    assert_eq!(dp.noise_multiplier, event.noise_multiplier);
    assert_eq!(dp.noise_multiplier, 1.1);
    assert_eq!(dp.clip_norm, 0.5);
    assert_eq!(dp.sampling_rate, BATCH as f64 / ROWS as f64);
    assert_eq!(dp.sampling_rate, event.sampling_rate);
    assert_eq!(dp.max_steps, max);
    assert_eq!(site.last_dp_event(), Some(event));
}

/// The seed a learner gets is fresh each training and comes from the site's
/// key: the same plan (and run seed) with another key gives other seeds, so
/// nobody holding the plan can recompute a site's batches or noise.
#[test]
fn the_learners_seed_is_fresh_each_training_and_comes_from_the_sites_key() {
    let plan = plan("");
    let seeds = |key: [u8; 32]| -> Vec<u64> {
        let (mut site, configs) = site(&plan, key, ROWS as i64, Some(1.0));
        for round in 1..=ROUNDS {
            site.fit(&task(round), &Dataset::empty(0)).unwrap();
        }
        let configs = configs.lock().unwrap();
        configs.iter().map(|c| c.dp.unwrap().seed).collect()
    };
    let a = seeds([1; 32]);
    assert_eq!(a.len(), ROUNDS as usize);
    assert!(a[0] != a[1] && a[1] != a[2] && a[0] != a[2], "{a:?}");
    assert_eq!(a, seeds([1; 32]), "the same key gives the same seeds");
    let b = seeds([2; 32]);
    assert!(a.iter().all(|s| !b.contains(s)), "{a:?} {b:?}");
    // Without local DP nothing of the kind is handed over.
    let no_dp = Plan::from_toml(
        "name = \"x\"\n[model]\nkind = \"external\"\n[training]\nsteps = 2\n[federation]\nrounds = 1\nmin_participants = 1\n",
        "test",
    )
    .unwrap();
    let configs = Arc::new(Mutex::new(Vec::new()));
    let learner = Reporting {
        n: 5,
        steps: None,
        configs: configs.clone(),
    };
    let no_key = || unreachable!("no key is drawn without local DP");
    let mut site = Site::external(
        &no_dp,
        ParticipantId::new("a"),
        Box::new(learner),
        None,
        no_key,
    )
    .unwrap();
    site.fit(&task(1), &Dataset::empty(0)).unwrap();
    assert_eq!(configs.lock().unwrap()[0].dp, None);
    assert_eq!(site.last_dp_event(), None);
}

/// What would understate the spend is refused: no steps reported, more
/// steps than accounted for, an example count other than the declared rows
/// (a larger one would make the sampling rate look smaller).
#[test]
fn a_report_that_would_understate_the_spend_is_refused() {
    let plan = plan("");
    let max = planned_steps(&plan) as f64;
    let cases: [(i64, Option<f64>, &str); 5] = [
        (ROWS as i64, None, "no metric 'n_steps'"),
        (ROWS as i64, Some(0.0), "no metric 'n_steps'"),
        (ROWS as i64, Some(max + 1.0), "more than the"),
        (2 * ROWS as i64, Some(max), "declared 200 training rows"),
        (ROWS as i64 - 1, Some(max), "declared 200 training rows"),
    ];
    for (n, steps, expected) in cases {
        let (mut site, _) = site(&plan, [3; 32], n, steps);
        let e = site.fit(&task(1), &Dataset::empty(0)).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("fit returned"), "{text}");
        assert!(text.contains(expected), "{text:?} should say {expected:?}");
    }
    // Fewer steps than the bound spend less than accounted: accepted.
    let (mut site, _) = site(&plan, [3; 32], ROWS as i64, Some(1.0));
    assert_eq!(
        site.fit(&task(1), &Dataset::empty(0))
            .unwrap()
            .stats
            .n_steps,
        1
    );
}

#[test]
fn a_site_trains_no_more_often_than_the_plans_rounds() {
    let plan = plan("");
    let (mut site, _) = site(&plan, [4; 32], ROWS as i64, Some(1.0));
    for round in 1..=ROUNDS {
        site.fit(&task(round), &Dataset::empty(0)).unwrap();
    }
    // The coordinator asking for round 1 again does not buy a fresh training.
    let e = site.fit(&task(1), &Dataset::empty(0)).unwrap_err();
    assert!(e.to_string().contains("every round of the plan"), "{e}");
}

#[test]
fn local_dp_needs_the_sites_training_rows() {
    let plan = plan("");
    for rows in [None, Some(0)] {
        let learner = Reporting {
            n: 1,
            steps: Some(1.0),
            configs: Arc::default(),
        };
        let e = Site::external(
            &plan,
            ParticipantId::new("a"),
            Box::new(learner),
            rows,
            || Ok([0; 32]),
        )
        .err()
        .unwrap();
        assert!(matches!(e, EngineError::State(_)), "{e}");
        assert!(e.to_string().contains("declare its training rows"), "{e}");
    }
}
