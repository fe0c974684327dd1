//! Local training behaves: it learns, it is reproducible, FedProx holds
//! parameters near the anchor, bad settings are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ndarray::Array2;
use tessera_core::SeededRng;
use tessera_data::Dataset;
use tessera_learn::{
    Init, LearnError, Learner, LocalPlan, ModelConfig, ModelKind, Network, OptimizerKind,
    TrainingConfig,
};

/// Two Gaussian blobs, separable along the first feature.
fn blobs(n: usize, seed: u64) -> Dataset {
    let mut rng = SeededRng::new(seed);
    let mut y = Vec::with_capacity(n);
    let x = Array2::from_shape_fn((n, 3), |(i, j)| {
        let class = (i % 2) as f64;
        if j == 0 {
            y.push(class as u32);
        }
        let centre = if j == 0 { 4.0 * class - 2.0 } else { 0.0 };
        rng.gaussian(centre, 1.0) as f32
    });
    Dataset { x: x.into(), y }
}

#[test]
fn every_model_learns_separable_data() {
    let data = blobs(200, 1);
    for (kind, optimizer) in [
        (ModelKind::Logistic, OptimizerKind::Sgd),
        (ModelKind::Softmax, OptimizerKind::Adam),
        (ModelKind::Mlp, OptimizerKind::Adam),
    ] {
        let mut net = Network::new(&ModelConfig::of_kind(kind), 3, 2, 7).unwrap();
        let before = net.evaluate(&data).unwrap();
        let mut training = TrainingConfig {
            epochs: Some(5),
            batch_size: 16,
            ..TrainingConfig::default()
        };
        training.optimizer.optimizer = optimizer;
        training.optimizer.lr = if optimizer == OptimizerKind::Adam {
            0.01
        } else {
            0.1
        };
        let stats = net
            .fit(&data, &LocalPlan::plain(&training), &mut SeededRng::new(3))
            .unwrap();
        assert_eq!(stats.n_steps, 5 * 13);
        let after = net.evaluate(&data).unwrap();
        assert!(
            after.accuracy() > 0.95,
            "{kind:?}: accuracy {}",
            after.accuracy()
        );
        assert!(after.mean_loss() < before.mean_loss(), "{kind:?}");
        assert!(after.auc.unwrap() > 0.98);
    }
}

#[test]
fn training_is_reproducible() {
    let data = blobs(64, 2);
    let training = TrainingConfig {
        steps: Some(30),
        batch_size: 4,
        ..TrainingConfig::default()
    };
    let run = || {
        let mut net = Network::new(&ModelConfig::of_kind(ModelKind::Logistic), 3, 2, 11).unwrap();
        net.fit(&data, &LocalPlan::plain(&training), &mut SeededRng::new(5))
            .unwrap();
        net.parameters().clone()
    };
    assert_eq!(run(), run());
}

/// FedProx's pull, written here to test the learner's term hook.
#[derive(Debug)]
struct Proximal {
    mu: f32,
    anchor: tessera_core::ParameterSet,
}

impl tessera_core::GradientTerm for Proximal {
    fn check(
        &self,
        parameters: &tessera_core::ParameterSet,
    ) -> Result<(), tessera_core::CoreError> {
        parameters.check_same_layout(&self.anchor)
    }

    fn add(&self, grad: &mut tessera_core::ParameterSet, parameters: &tessera_core::ParameterSet) {
        for ((g, w), a) in grad
            .values_mut()
            .zip(parameters.values())
            .zip(self.anchor.values())
        {
            *g += self.mu * (w - a);
        }
    }
}

#[test]
fn proximal_term_keeps_parameters_near_the_anchor() {
    let data = blobs(64, 3);
    let training = TrainingConfig {
        steps: Some(100),
        batch_size: 8,
        ..TrainingConfig::default()
    };
    let config = ModelConfig {
        init: Init::Zeros,
        ..ModelConfig::of_kind(ModelKind::Logistic)
    };
    let distance = |mu: f32| {
        let mut net = Network::new(&config, 3, 2, 0).unwrap();
        let anchor = net.parameters().clone();
        let term = Proximal {
            mu,
            anchor: anchor.clone(),
        };
        let plan = LocalPlan {
            term: Some(&term),
            ..LocalPlan::plain(&training)
        };
        net.fit(&data, &plan, &mut SeededRng::new(1)).unwrap();
        net.parameters().sub(&anchor).unwrap().l2_norm()
    };
    let free = distance(0.0);
    let held = distance(5.0);
    assert!(held < 0.5 * free, "mu=5 moved {held}, mu=0 moved {free}");
}

#[test]
fn bad_settings_are_refused() {
    let err = Network::new(&ModelConfig::of_kind(ModelKind::Logistic), 3, 10, 0).unwrap_err();
    assert!(err.to_string().contains("needs a binary target"), "{err}");
    let zeros_mlp = ModelConfig {
        init: Init::Zeros,
        ..ModelConfig::of_kind(ModelKind::Mlp)
    };
    assert!(matches!(
        Network::new(&zeros_mlp, 3, 2, 0),
        Err(LearnError::Config(_))
    ));
    let both = TrainingConfig {
        steps: Some(1),
        epochs: Some(1),
        ..TrainingConfig::default()
    };
    assert!(both.validate().is_err());
    let net = Network::new(&ModelConfig::of_kind(ModelKind::Logistic), 2, 2, 0).unwrap();
    let err = net.evaluate(&blobs(4, 0)).unwrap_err();
    assert_eq!(err.to_string(), "data has 3 features, the model expects 2");
    let huge = TrainingConfig {
        steps: Some(50),
        batch_size: 4,
        optimizer: tessera_learn::OptimizerConfig {
            lr: 3e38,
            ..Default::default()
        },
        ..TrainingConfig::default()
    };
    let mut net = Network::new(&ModelConfig::of_kind(ModelKind::Logistic), 3, 2, 0).unwrap();
    assert!(matches!(
        net.fit(
            &blobs(16, 0),
            &LocalPlan::plain(&huge),
            &mut SeededRng::new(0)
        ),
        Err(LearnError::Diverged { .. })
    ));
}
