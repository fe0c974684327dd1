//! Simulation with external learners: the same rounds as built-in sites.
//! A built-in model driven through the external seam gives the built-in
//! run's model bit for bit (strategies, central DP, compression, robust
//! rules, secure aggregation); scripted learners give FedAvg of their known changes.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tessera_core::{CoreError, GradientTerm, ParameterSet, SeededRng, Tensor, tag};
use tessera_data::{Dataset, Filesystem};
use tessera_engine::{
    EvaluateConfig, EvaluateResult, ExternalError, ExternalLearner, FitConfig, FitResult, Metrics,
    Plan, streams,
};
use tessera_learn::{Learner, LocalPlan, TrainingConfig};
use tessera_sim::{SimOptions, simulate, simulate_with_learners};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// `mu (w - anchor) + correction`, added to every gradient, in the same
/// arithmetic as the strategies' own terms.
#[derive(Debug)]
struct Term {
    mu: f32,
    anchor: ParameterSet,
    correction: Option<ParameterSet>,
}

impl GradientTerm for Term {
    fn check(&self, parameters: &ParameterSet) -> Result<(), CoreError> {
        parameters.check_same_layout(&self.anchor)
    }

    fn add(&self, grad: &mut ParameterSet, parameters: &ParameterSet) {
        if self.mu != 0.0 {
            for ((g, w), a) in grad
                .values_mut()
                .zip(parameters.values())
                .zip(self.anchor.values())
            {
                *g += self.mu * (w - a);
            }
        }
        if let Some(c) = &self.correction {
            for (g, c) in grad.values_mut().zip(c.values()) {
                *g += c;
            }
        }
    }
}

/// A built-in model and a site's rows behind the external seam, training
/// as a built-in site would (same batches: the public stream of the round
/// and site).
struct BuiltIn {
    site: String,
    seed: u64,
    training: TrainingConfig,
    learner: Box<dyn Learner>,
    train: Dataset,
    test: Dataset,
}

impl ExternalLearner for BuiltIn {
    fn parameters(&mut self) -> Result<ParameterSet, ExternalError> {
        Ok(self.learner.parameters().clone())
    }

    fn fit(
        &mut self,
        global: &ParameterSet,
        config: &FitConfig,
    ) -> Result<FitResult, ExternalError> {
        let fail = |e: tessera_learn::LearnError| ExternalError::failed("fit", e.to_string());
        self.learner.set_parameters(global).map_err(fail)?;
        assert_eq!(config.lr, self.training.optimizer.lr);
        let term = Term {
            mu: config.proximal_mu,
            anchor: global.clone(),
            correction: config.correction.clone(),
        };
        let plan = LocalPlan {
            training: &self.training,
            term: (config.proximal_mu != 0.0 || config.correction.is_some())
                .then_some(&term as &dyn GradientTerm),
            dp: None,
            meta: None,
        };
        let mut rng = SeededRng::derived(
            self.seed,
            &[streams::FIT, u64::from(config.round), tag(&self.site)],
        );
        let stats = self
            .learner
            .fit(&self.train, &plan, &mut rng)
            .map_err(fail)?;
        let metrics = Metrics::from([
            ("n_steps".to_string(), stats.n_steps as f64),
            ("loss".to_string(), stats.mean_train_loss),
        ]);
        Ok(FitResult {
            parameters: self.learner.parameters().clone(),
            n_examples: self.train.n_rows() as i64,
            metrics,
        })
    }

    fn evaluate(
        &mut self,
        global: &ParameterSet,
        _config: &EvaluateConfig,
    ) -> Result<EvaluateResult, ExternalError> {
        common::evaluate_built_in(self.learner.as_mut(), global, &self.test)
    }
}

/// Fed-Heart-Disease, changed by `change`, run with built-in sites and
/// with the same model behind the external seam.
fn both(change: impl Fn(&mut Plan)) -> (tessera_sim::RunReport, tessera_sim::RunReport) {
    let mut plan = Plan::from_file(&examples().join("fed-heart-disease.toml")).unwrap();
    plan.federation.rounds = 5;
    change(&mut plan);
    plan.validate().unwrap();
    let data = tessera_data::load(&plan.data, &examples(), &Filesystem).unwrap();
    let built_in = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let initial = tessera_sim::initial_model(&plan, &data).unwrap();
    let learners: Learners = data
        .sites
        .iter()
        .map(|s| {
            let learner = BuiltIn {
                site: s.name.clone(),
                seed: plan.seed,
                training: plan.local_training(),
                learner: initial.clone_box(),
                train: s.train.clone(),
                test: s.test.clone(),
            };
            (
                s.name.clone(),
                Box::new(learner) as Box<dyn ExternalLearner>,
            )
        })
        .collect();
    let external = simulate_with_learners(&plan, learners, &BTreeMap::new(), &mut |_| {}).unwrap();
    (built_in, external)
}

fn assert_same_run(change: impl Fn(&mut Plan), what: &str) {
    let (built_in, external) = both(change);
    assert_eq!(
        built_in.final_parameters, external.final_parameters,
        "{what}: the models differ"
    );
    assert_eq!(external.model, "external");
    assert_eq!(built_in.rounds.len(), external.rounds.len());
    for (a, b) in built_in.rounds.iter().zip(&external.rounds) {
        assert_eq!(a.accuracy, b.accuracy, "{what}: round {}", a.round);
        assert!((a.loss - b.loss).abs() < 1e-12, "{what}: round {}", a.round);
        assert_eq!(a.train_loss, b.train_loss, "{what}: round {}", a.round);
        assert_eq!(a.accepted, b.accepted, "{what}: round {}", a.round);
    }
}

#[test]
fn a_built_in_model_behind_the_external_seam_trains_bit_for_bit_as_built_in() {
    assert_same_run(|_| {}, "fedavg");
    assert_same_run(
        |p| p.federation.strategy = "fedprox".parse().unwrap(),
        "fedprox",
    );
    assert_same_run(
        |p| p.federation.strategy = "scaffold".parse().unwrap(),
        "scaffold",
    );
    assert_same_run(
        |p| p.federation.strategy = "fedadam".parse().unwrap(),
        "fedadam",
    );
    assert_same_run(
        |p| {
            p.privacy.mode = tessera_privacy::PrivacyMode::Central;
            p.privacy.noise_multiplier = Some(1.0);
            p.privacy.clip_norm = 0.05;
        },
        "central DP",
    );
    assert_same_run(
        |p| {
            p.compression.upload = "topk:0.25+q8".parse().unwrap();
            p.compression.error_feedback = true;
        },
        "compression",
    );
    assert_same_run(
        |p| p.robust.rule = tessera_aggregate::RobustRule::Median,
        "median",
    );
    assert_same_run(
        |p| p.secure_aggregation.enabled = true,
        "secure aggregation",
    );
}

/// A learner whose training adds a known change each round.
struct Scripted {
    /// The value every parameter starts at.
    start: f32,
    /// The change of round `r` is `step * r`.
    step: f32,
    n_train: i64,
    n_test: i64,
    accuracy: f64,
    /// Fails in this round's `fit`.
    fails_in: Option<u32>,
    /// The `proximal_mu` each round's config carried.
    seen: Arc<Mutex<Vec<f32>>>,
}

fn layout(value: f32) -> ParameterSet {
    let mut p = ParameterSet::new();
    p.push(
        "parameters[0]",
        Tensor::new(vec![2, 2], vec![value; 4]).unwrap(),
    )
    .unwrap();
    p.push(
        "parameters[1]",
        Tensor::new(vec![2], vec![value; 2]).unwrap(),
    )
    .unwrap();
    p
}

impl ExternalLearner for Scripted {
    fn parameters(&mut self) -> Result<ParameterSet, ExternalError> {
        Ok(layout(self.start))
    }

    fn fit(
        &mut self,
        global: &ParameterSet,
        config: &FitConfig,
    ) -> Result<FitResult, ExternalError> {
        self.seen.lock().unwrap().push(config.proximal_mu);
        if self.fails_in == Some(config.round) {
            return Err(ExternalError::failed("fit", "ValueError: out of memory"));
        }
        let mut parameters = global.clone();
        let change = self.step * config.round as f32;
        parameters.values_mut().for_each(|v| *v += change);
        Ok(FitResult {
            parameters,
            n_examples: self.n_train,
            metrics: Metrics::new(),
        })
    }

    fn evaluate(
        &mut self,
        _global: &ParameterSet,
        _config: &EvaluateConfig,
    ) -> Result<EvaluateResult, ExternalError> {
        Ok(EvaluateResult {
            loss: 0.25 * self.accuracy,
            n_examples: self.n_test,
            metrics: Metrics::from([("accuracy".to_string(), self.accuracy)]),
        })
    }
}

fn scripted_plan(extra: &str) -> Plan {
    let text = format!(
        "name = \"scripted\"\n[data]\npath = \"rows.csv\"\nsite_column = \"site\"\n[data.schema]\ntarget = \"y\"\n[model]\nkind = \"logistic\"\n\
         [federation]\nrounds = 3\n{extra}"
    );
    Plan::from_toml(&text, "test").unwrap()
}

/// Named learners, as `simulate_with_learners` takes them.
type Learners = Vec<(String, Box<dyn ExternalLearner>)>;

/// (name, start, step, train rows, test rows, accuracy)
const SITES: [(&str, f32, f32, i64, i64, f64); 3] = [
    ("c", 5.0, 0.5, 30, 10, 0.5),
    ("a", 1.0, 0.125, 10, 20, 0.75),
    ("b", 9.0, -0.25, 20, 30, 1.0),
];

fn scripted(fails: Option<(&str, u32)>) -> (Learners, Arc<Mutex<Vec<f32>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let learners = SITES
        .iter()
        .map(|&(name, start, step, n_train, n_test, accuracy)| {
            let learner = Scripted {
                start,
                step,
                n_train,
                n_test,
                accuracy,
                fails_in: fails.filter(|(s, _)| *s == name).map(|(_, r)| r),
                seen: seen.clone(),
            };
            (
                name.to_string(),
                Box::new(learner) as Box<dyn ExternalLearner>,
            )
        })
        .collect();
    (learners, seen)
}

#[test]
fn scripted_learners_give_fedavg_of_their_changes() {
    let plan = scripted_plan("");
    let (learners, _) = scripted(None);
    let report = simulate_with_learners(&plan, learners, &BTreeMap::new(), &mut |_| {}).unwrap();
    // Independently: the first site by name starts the model (a: 1.0);
    // each round adds the example-weighted mean of the sites' changes.
    let mut expected = 1.0f64;
    for round in 1..=3 {
        let (mut sum, mut n) = (0.0f64, 0.0f64);
        for &(_, _, step, n_train, _, _) in &SITES {
            sum += n_train as f64 * f64::from(step) * f64::from(round);
            n += n_train as f64;
        }
        expected += sum / n;
    }
    assert_eq!(report.final_parameters.n_values(), 6);
    for v in report.final_parameters.values() {
        assert!((f64::from(v) - expected).abs() < 1e-6, "{v} != {expected}");
    }
    // The evaluations pool by rows: accuracy and loss over every test row.
    let last = report.rounds.last().unwrap();
    let rows: f64 = SITES.iter().map(|s| s.4 as f64).sum();
    let right: f64 = SITES.iter().map(|s| s.4 as f64 * s.5).sum();
    let loss: f64 = SITES.iter().map(|s| s.4 as f64 * 0.25 * s.5).sum();
    assert_eq!(last.n_test, 60);
    assert!(
        (last.accuracy - right / rows).abs() < 1e-12,
        "{}",
        last.accuracy
    );
    assert!((last.loss - loss / rows).abs() < 1e-12, "{}", last.loss);
    assert_eq!(
        report.rounds.iter().map(|r| r.accepted).collect::<Vec<_>>(),
        [3, 3, 3]
    );
}

#[test]
fn fedprox_tells_every_learner_its_mu() {
    let plan = scripted_plan("strategy = \"fedprox\"\n[strategies.fedprox]\nmu = 0.375\n");
    let (learners, seen) = scripted(None);
    simulate_with_learners(&plan, learners, &BTreeMap::new(), &mut |_| {}).unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![0.375; 9]);
}

#[test]
fn a_learner_that_fails_leaves_the_round_and_says_why() {
    let plan = scripted_plan("");
    let (learners, _) = scripted(Some(("b", 2)));
    let report = simulate_with_learners(&plan, learners, &BTreeMap::new(), &mut |_| {}).unwrap();
    let round = &report.rounds[1];
    assert_eq!((round.accepted, round.dropped), (2, 1));
    assert_eq!(round.site_errors.len(), 1);
    let error = &round.site_errors[0];
    assert!(
        error.contains("site 'b'") && error.contains("fit failed: ValueError: out of memory"),
        "{error}"
    );
    assert_eq!(report.rounds[2].accepted, 3);
}

#[test]
fn sites_of_another_layout_and_bad_names_are_refused_before_any_round() {
    let plan = scripted_plan("");
    let (mut learners, _) = scripted(None);
    struct Other;
    impl ExternalLearner for Other {
        fn parameters(&mut self) -> Result<ParameterSet, ExternalError> {
            let mut p = ParameterSet::new();
            p.push("parameters[0]", Tensor::new(vec![4], vec![0.0; 4]).unwrap())
                .unwrap();
            Ok(p)
        }
        fn fit(&mut self, _: &ParameterSet, _: &FitConfig) -> Result<FitResult, ExternalError> {
            unreachable!("refused before any round")
        }
        fn evaluate(
            &mut self,
            _: &ParameterSet,
            _: &EvaluateConfig,
        ) -> Result<EvaluateResult, ExternalError> {
            unreachable!("refused before any round")
        }
    }
    learners.push(("d".to_string(), Box::new(Other)));
    let e = simulate_with_learners(&plan, learners, &BTreeMap::new(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("site 'd'") && e.contains("another layout than site 'a'"),
        "{e}"
    );
    let (mut learners, _) = scripted(None);
    let again = scripted(None).0.remove(0);
    learners.push(again);
    let e = simulate_with_learners(&plan, learners, &BTreeMap::new(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("two sites are named 'c'"), "{e}");
    let e = simulate_with_learners(&plan, Vec::new(), &BTreeMap::new(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(!e.is_empty());
}
