//! The external-learner seam: a site whose learner trains and evaluates on
//! its own turns the learner's results into an update and an evaluation,
//! passes it the strategy's instructions, and refuses every unusable number
//! with what was wrong.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use tessera_aggregate::Instructions;
use tessera_core::{ParameterSet, ParticipantId, Tensor};
use tessera_data::Dataset;
use tessera_engine::{
    EvaluateConfig, EvaluateResult, ExternalError, ExternalLearner, FitConfig, FitResult, FitTask,
    Metrics, Plan, Site,
};

fn plan_with(extra: &str) -> Plan {
    let text = format!(
        "name = \"external\"\n[data.schema]\ntarget = \"y\"\n[[data.sites]]\nname = \"a\"\npath = \"a.csv\"\n[model]\nkind = \"logistic\"\n\
         [training]\nsteps = 5\nbatch_size = 8\nlr = 0.25\n[federation]\nrounds = 3\n{extra}"
    );
    Plan::from_toml(&text, "test").unwrap()
}

fn params(w: [f32; 3], b: f32) -> ParameterSet {
    let mut p = ParameterSet::new();
    p.push("parameters[0]", Tensor::new(vec![3], w.to_vec()).unwrap())
        .unwrap();
    p.push("parameters[1]", Tensor::new(vec![1], vec![b]).unwrap())
        .unwrap();
    p
}

/// A learner that returns what it is told to, and records its configs.
struct Scripted {
    fit: Box<dyn FnMut(&ParameterSet) -> FitResult + Send>,
    evaluate: EvaluateResult,
    configs: Arc<Mutex<Vec<FitConfig>>>,
}

impl ExternalLearner for Scripted {
    fn parameters(&mut self) -> Result<ParameterSet, ExternalError> {
        Ok(params([0.0; 3], 0.0))
    }

    fn fit(
        &mut self,
        global: &ParameterSet,
        config: &FitConfig,
    ) -> Result<FitResult, ExternalError> {
        self.configs.lock().unwrap().push(config.clone());
        Ok((self.fit)(global))
    }

    fn evaluate(
        &mut self,
        _global: &ParameterSet,
        _config: &EvaluateConfig,
    ) -> Result<EvaluateResult, ExternalError> {
        Ok(self.evaluate.clone())
    }
}

fn metrics(pairs: &[(&str, f64)]) -> Metrics {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// A site whose learner adds `step` to every parameter and reports `n`
/// examples, and the configs it received.
fn external_site(
    plan: &Plan,
    fit: impl FnMut(&ParameterSet) -> FitResult + Send + 'static,
    evaluate: EvaluateResult,
) -> (Site, Arc<Mutex<Vec<FitConfig>>>) {
    let configs = Arc::new(Mutex::new(Vec::new()));
    let learner = Scripted {
        fit: Box::new(fit),
        evaluate,
        configs: configs.clone(),
    };
    let no_key = || unreachable!("no key without local DP");
    let site = Site::external(
        plan,
        ParticipantId::new("a"),
        Box::new(learner),
        None,
        no_key,
    )
    .unwrap();
    (site, configs)
}

fn shift(step: f32, n: i64, extra: Metrics) -> impl FnMut(&ParameterSet) -> FitResult + Send {
    move |global: &ParameterSet| {
        let mut parameters = global.clone();
        parameters.values_mut().for_each(|v| *v += step);
        FitResult {
            parameters,
            n_examples: n,
            metrics: extra.clone(),
        }
    }
}

fn good_evaluation() -> EvaluateResult {
    EvaluateResult {
        loss: 0.5,
        n_examples: 40,
        metrics: metrics(&[("accuracy", 0.75)]),
    }
}

fn task(instructions: Instructions) -> FitTask {
    FitTask {
        round: 2,
        global: Arc::new(params([1.0, 2.0, 3.0], -1.0)),
        instructions,
        deadline: None,
    }
}

fn no_rows() -> Dataset {
    Dataset::empty(0)
}

#[test]
fn an_update_is_the_trained_parameters_minus_the_global_with_the_learners_count() {
    let plan = plan_with("");
    let (mut site, configs) =
        external_site(&plan, shift(0.5, 17, Metrics::new()), good_evaluation());
    let update = site.fit(&task(Instructions::Plain), &no_rows()).unwrap();
    assert_eq!(update.n_examples, 17);
    assert!(
        update.delta.values().all(|d| d == 0.5),
        "{:?}",
        update.delta
    );
    assert_eq!(update.delta.names(), ["parameters[0]", "parameters[1]"]);
    assert!(update.aux.is_none());
    let config = configs.lock().unwrap()[0].clone();
    assert_eq!((config.round, config.strategy), (2, "plain"));
    assert_eq!(
        (config.lr, config.batch_size, config.steps),
        (0.25, 8, Some(5))
    );
    assert_eq!((config.proximal_mu, config.correction), (0.0, None));
}

#[test]
fn an_evaluation_sums_the_learners_mean_loss_and_counts_its_accuracy() {
    let plan = plan_with("");
    let (mut site, _) = external_site(&plan, shift(0.0, 1, Metrics::new()), good_evaluation());
    let e = site.evaluate(&params([0.0; 3], 0.0), &no_rows()).unwrap();
    assert_eq!((e.n_examples, e.n_correct, e.loss_sum), (40, 30, 20.0));
    assert_eq!(e.auc, None);
    // An explicit count wins over the share.
    let explicit = EvaluateResult {
        metrics: metrics(&[("accuracy", 0.1), ("n_correct", 33.0), ("auc", 0.9)]),
        ..good_evaluation()
    };
    let (mut site, _) = external_site(&plan, shift(0.0, 1, Metrics::new()), explicit);
    let e = site.evaluate(&params([0.0; 3], 0.0), &no_rows()).unwrap();
    assert_eq!((e.n_correct, e.auc), (33, Some(0.9)));
}

#[test]
fn the_strategys_instructions_reach_the_learner() {
    let plan = plan_with("strategy = \"fedprox\"");
    let (mut site, configs) =
        external_site(&plan, shift(0.5, 3, Metrics::new()), good_evaluation());
    site.fit(&task(Instructions::Proximal { mu: 0.3 }), &no_rows())
        .unwrap();
    let config = configs.lock().unwrap()[0].clone();
    assert_eq!((config.strategy, config.proximal_mu), ("fedprox", 0.3));
    assert_eq!(config.correction, None);

    // SCAFFOLD: the correction c - c_i (c_i is zero before any update
    // counted), and the control change -c - delta / (K lr) in the update.
    let plan = plan_with("strategy = \"scaffold\"");
    let steps = metrics(&[("n_steps", 4.0)]);
    let (mut site, configs) = external_site(&plan, shift(0.5, 3, steps), good_evaluation());
    let c = params([0.1, 0.2, 0.3], 0.4);
    let scaffold = Instructions::Scaffold {
        server_control: Arc::new(c.clone()),
    };
    let update = site.fit(&task(scaffold.clone()), &no_rows()).unwrap();
    let config = configs.lock().unwrap()[0].clone();
    assert_eq!(config.strategy, "scaffold");
    assert_eq!(config.correction.as_ref(), Some(&c));
    let aux = update.aux.unwrap();
    for (a, c) in aux.values().zip(c.values()) {
        assert!(
            (a - (-c - 0.5 / (4.0 * 0.25))).abs() < 1e-6,
            "{a} for c = {c}"
        );
    }
    // Once that update counted, the site's own c_i moves: c - c_i changes.
    site.round_closed(true);
    site.fit(&task(scaffold), &no_rows()).unwrap();
    let second = configs.lock().unwrap()[1].correction.clone().unwrap();
    assert_ne!(second, c);
}

#[test]
fn scaffold_needs_the_steps_the_learner_took() {
    let plan = plan_with("strategy = \"scaffold\"");
    let (mut site, _) = external_site(&plan, shift(0.5, 3, Metrics::new()), good_evaluation());
    let scaffold = Instructions::Scaffold {
        server_control: Arc::new(params([0.0; 3], 0.0)),
    };
    let e = site
        .fit(&task(scaffold), &no_rows())
        .unwrap_err()
        .to_string();
    assert!(e.contains("'n_steps'"), "{e}");
}

/// Each bad return, and the words its refusal must contain.
#[test]
fn unusable_fit_results_are_refused_with_what_was_wrong() {
    let good = || FitResult {
        parameters: params([1.0, 2.0, 3.0], 4.0),
        n_examples: 10,
        metrics: Metrics::new(),
    };
    let mut wrong_shape = ParameterSet::new();
    wrong_shape
        .push("parameters[0]", Tensor::new(vec![2], vec![0.0; 2]).unwrap())
        .unwrap();
    wrong_shape
        .push("parameters[1]", Tensor::new(vec![1], vec![0.0]).unwrap())
        .unwrap();
    let mut one_tensor = ParameterSet::new();
    one_tensor
        .push("parameters[0]", Tensor::new(vec![3], vec![0.0; 3]).unwrap())
        .unwrap();
    let cases: Vec<(FitResult, &str)> = vec![
        (
            FitResult {
                parameters: params([1.0, f32::NAN, 3.0], 4.0),
                ..good()
            },
            "tensor 'parameters[0]' holds a non-finite value at index 1",
        ),
        (
            FitResult {
                parameters: params([1.0, 2.0, 3.0], f32::INFINITY),
                ..good()
            },
            "tensor 'parameters[1]' holds a non-finite value",
        ),
        (
            FitResult {
                parameters: wrong_shape,
                ..good()
            },
            "tensor 'parameters[0]' has shape [2], expected [3]",
        ),
        (
            FitResult {
                parameters: one_tensor,
                ..good()
            },
            "expected 2 tensors, got 1",
        ),
        (
            FitResult {
                n_examples: -3,
                ..good()
            },
            "a negative example count (-3)",
        ),
        (
            FitResult {
                n_examples: 0,
                ..good()
            },
            "n_examples = 0",
        ),
        (
            FitResult {
                n_examples: i64::MAX,
                ..good()
            },
            "more than the 1099511627776",
        ),
        (
            FitResult {
                metrics: metrics(&[("loss", f64::NAN)]),
                ..good()
            },
            "metric 'loss' = NaN",
        ),
        (
            FitResult {
                metrics: metrics(&[("n_steps", 2.5)]),
                ..good()
            },
            "metric 'n_steps' = 2.5",
        ),
    ];
    let plan = plan_with("");
    for (result, expected) in cases {
        let (mut site, _) = external_site(
            &plan,
            move |_: &ParameterSet| result.clone(),
            good_evaluation(),
        );
        let e = site
            .fit(&task(Instructions::Plain), &no_rows())
            .unwrap_err()
            .to_string();
        assert!(e.contains("fit returned"), "{e}");
        assert!(e.contains(expected), "{e:?} should say {expected:?}");
    }
}

#[test]
fn unusable_evaluations_are_refused_with_what_was_wrong() {
    let cases: Vec<(EvaluateResult, &str)> = vec![
        (
            EvaluateResult {
                loss: f64::NAN,
                ..good_evaluation()
            },
            "loss = NaN",
        ),
        (
            EvaluateResult {
                loss: -1.0,
                ..good_evaluation()
            },
            "loss = -1",
        ),
        (
            EvaluateResult {
                n_examples: -1,
                ..good_evaluation()
            },
            "a negative example count (-1)",
        ),
        (
            EvaluateResult {
                metrics: Metrics::new(),
                ..good_evaluation()
            },
            "no accuracy",
        ),
        (
            EvaluateResult {
                metrics: metrics(&[("accuracy", 1.5)]),
                ..good_evaluation()
            },
            "metric 'accuracy' = 1.5",
        ),
        (
            EvaluateResult {
                metrics: metrics(&[("n_correct", 41.0)]),
                ..good_evaluation()
            },
            "41 rows right of 40",
        ),
        (
            EvaluateResult {
                metrics: metrics(&[("accuracy", 0.5), ("auc", f64::INFINITY)]),
                ..good_evaluation()
            },
            "metric 'auc' = inf",
        ),
    ];
    let plan = plan_with("");
    for (result, expected) in cases {
        let (mut site, _) = external_site(&plan, shift(0.0, 1, Metrics::new()), result);
        let e = site
            .evaluate(&params([0.0; 3], 0.0), &no_rows())
            .unwrap_err()
            .to_string();
        assert!(e.contains("evaluate returned"), "{e}");
        assert!(e.contains(expected), "{e:?} should say {expected:?}");
    }
}
