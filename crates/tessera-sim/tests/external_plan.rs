//! A plan whose model is external (`[model] kind = "external"`, no
//! `[data]`) runs in simulation with its sites' learners, as deployment
//! runs it, and the simulator of built-in models refuses it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use tessera_core::{ParameterSet, Tensor};
use tessera_engine::{
    EvaluateConfig, EvaluateResult, ExternalError, ExternalLearner, FitConfig, FitResult, Metrics,
    Plan,
};
use tessera_sim::{SimOptions, simulate, simulate_with_learners};

const PLAN: &str = r#"
name = "external"
[model]
kind = "external"
[federation]
rounds = 3
strategy = "fedprox"
min_participants = 3
quorum = 3
[strategies.fedprox]
mu = 0.5
[privacy]
site_metrics = "clear"
"#;

/// Moves every value a step toward `target`.
struct Toward {
    target: f32,
    start: f32,
}

impl ExternalLearner for Toward {
    fn parameters(&mut self) -> Result<ParameterSet, ExternalError> {
        let mut set = ParameterSet::new();
        set.push("w", Tensor::new(vec![2], vec![self.start; 2]).unwrap())
            .unwrap();
        Ok(set)
    }

    fn fit(
        &mut self,
        global: &ParameterSet,
        config: &FitConfig,
    ) -> Result<FitResult, ExternalError> {
        let mut parameters = global.clone();
        for v in parameters.values_mut() {
            *v += config.lr * (self.target - *v);
        }
        Ok(FitResult {
            parameters,
            n_examples: 10,
            metrics: Metrics::from([("n_steps".to_string(), 1.0)]),
        })
    }

    fn evaluate(
        &mut self,
        _global: &ParameterSet,
        _config: &EvaluateConfig,
    ) -> Result<EvaluateResult, ExternalError> {
        Ok(EvaluateResult {
            loss: 0.5,
            n_examples: 4,
            metrics: Metrics::from([("accuracy".to_string(), 0.75)]),
        })
    }
}

fn learners() -> Vec<(String, Box<dyn ExternalLearner>)> {
    ["c", "a", "b"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let learner = Toward {
                target: i as f32,
                start: 1.0 + i as f32,
            };
            (
                name.to_string(),
                Box::new(learner) as Box<dyn ExternalLearner>,
            )
        })
        .collect()
}

#[test]
fn an_external_plan_runs_with_its_learners_from_the_first_site_by_name() {
    let plan = Plan::from_toml(PLAN, "external").unwrap();
    let report = simulate_with_learners(&plan, learners(), &BTreeMap::new(), &mut |_| {}).unwrap();
    assert_eq!(report.model, "external");
    assert_eq!(report.rounds.len(), 3);
    // From a's start (2.0), three rounds toward the mean target (1.0).
    let mut expected = 2.0f32;
    for _ in 0..3 {
        let steps: Vec<f32> = [0.0f32, 1.0, 2.0]
            .iter()
            .map(|t| expected + plan.training.optimizer.lr * (t - expected))
            .collect();
        let mean_delta: f32 = steps.iter().map(|s| s - expected).sum::<f32>() / 3.0;
        expected += mean_delta;
    }
    for v in report.final_parameters.values() {
        assert!((v - expected).abs() < 1e-5, "{v} != {expected}");
    }
}

#[test]
fn the_built_in_simulator_refuses_an_external_plan() {
    let plan = Plan::from_toml(PLAN, "external").unwrap();
    let data = tessera_data::FederatedData {
        feature_names: Vec::new(),
        task: tessera_data::Task {
            classes: Vec::new(),
        },
        sites: Vec::new(),
        summary: Vec::new(),
        agreement: tessera_data::Agreement {
            columns: Vec::new(),
            encodings: Vec::new(),
            classes: Vec::new(),
        },
    };
    let e = simulate(&plan, &data, &SimOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("external") && e.contains("simulate_with_learners"),
        "{e}"
    );
}
