//! Local DP with external learners in simulation: a learner that runs
//! DP-SGD with what its site hands it is accounted exactly as a built-in
//! site is (the same noise multipliers, the same epsilon), trains as well,
//! and the sites' reports are checked on the way.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tessera_core::{LocalDp, ParameterSet, SeededRng, derive_key};
use tessera_data::{Dataset, Filesystem};
use tessera_engine::{
    EvaluateConfig, EvaluateResult, ExternalError, ExternalLearner, FitConfig, FitResult, Metrics,
    Plan,
};
use tessera_learn::{Learner, LocalPlan, TrainingConfig};
use tessera_privacy::{PrivacyConfig, PrivacyMode};
use tessera_sim::{RunReport, SimOptions, simulate, simulate_with_learners};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// A built-in model behind the external seam that runs DP-SGD itself, as
/// its config says (Poisson batches and noise seeded with `dp_seed`), and
/// reports the steps it took plus `extra_steps`.
struct PrivateLearner {
    training: TrainingConfig,
    learner: Box<dyn Learner>,
    train: Dataset,
    test: Dataset,
    extra_steps: u64,
}

impl ExternalLearner for PrivateLearner {
    fn parameters(&mut self) -> Result<ParameterSet, ExternalError> {
        Ok(self.learner.parameters().clone())
    }

    fn fit(
        &mut self,
        global: &ParameterSet,
        config: &FitConfig,
    ) -> Result<FitResult, ExternalError> {
        let fail = |e: tessera_learn::LearnError| ExternalError::failed("fit", e.to_string());
        let Some(dp) = config.dp else {
            return Err(ExternalError::failed("fit", "no DP-SGD settings in config"));
        };
        assert_eq!(
            dp.sampling_rate,
            (config.batch_size as f64 / self.train.n_rows() as f64).min(1.0)
        );
        self.learner.set_parameters(global).map_err(fail)?;
        let plan = LocalPlan {
            training: &self.training,
            term: None,
            dp: Some(LocalDp {
                noise_multiplier: dp.noise_multiplier,
                clip_norm: dp.clip_norm,
                noise_key: derive_key(dp.seed, &[1]),
                stream: 0,
            }),
            meta: None,
        };
        let mut rng = SeededRng::new(dp.seed);
        let stats = self
            .learner
            .fit(&self.train, &plan, &mut rng)
            .map_err(fail)?;
        assert!(stats.n_steps <= dp.max_steps);
        Ok(FitResult {
            parameters: self.learner.parameters().clone(),
            n_examples: self.train.n_rows() as i64,
            metrics: Metrics::from([(
                "n_steps".to_string(),
                (stats.n_steps + self.extra_steps) as f64,
            )]),
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

type Learners = Vec<(String, Box<dyn ExternalLearner>)>;

/// Fed-Heart-Disease under local DP (`privacy`), its data, and its sites' learners (the last one adding
/// `extra_steps` to the steps it reports).
fn setup(
    privacy: PrivacyConfig,
    extra_steps: u64,
) -> (Plan, tessera_data::FederatedData, Learners) {
    let mut plan = Plan::from_file(&examples().join("fed-heart-disease.toml")).unwrap();
    plan.federation.rounds = 8;
    plan.privacy = privacy;
    plan.validate().unwrap();
    let data = tessera_data::load(&plan.data, &examples(), &Filesystem).unwrap();
    let initial = tessera_sim::initial_model(&plan, &data).unwrap();
    let last = data.sites.len() - 1;
    let learners = data
        .sites
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let learner = PrivateLearner {
                training: plan.local_training(),
                learner: initial.clone_box(),
                train: s.train.clone(),
                test: s.test.clone(),
                extra_steps: if i == last { extra_steps } else { 0 },
            };
            (
                s.name.clone(),
                Box::new(learner) as Box<dyn ExternalLearner>,
            )
        })
        .collect();
    (plan, data, learners)
}

fn rows(data: &tessera_data::FederatedData) -> BTreeMap<String, usize> {
    data.sites
        .iter()
        .map(|s| (s.name.clone(), s.train.n_rows()))
        .collect()
}

fn both(privacy: PrivacyConfig) -> (RunReport, RunReport) {
    let (plan, data, learners) = setup(privacy, 0);
    let built_in = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let external = simulate_with_learners(&plan, learners, &rows(&data), &mut |_| {}).unwrap();
    (built_in, external)
}

/// Local DP with a fixed noise multiplier.
fn fixed() -> PrivacyConfig {
    PrivacyConfig {
        mode: PrivacyMode::Local,
        noise_multiplier: Some(1.0),
        clip_norm: 1.0,
        ..PrivacyConfig::default()
    }
}

/// Local DP with a target epsilon, each site calibrating its noise.
fn target() -> PrivacyConfig {
    PrivacyConfig {
        mode: PrivacyMode::Local,
        epsilon: Some(4.0),
        delta: 1e-5,
        clip_norm: 1.0,
        ..PrivacyConfig::default()
    }
}

fn accuracy(report: &RunReport) -> f64 {
    report.final_metrics.accuracy.unwrap()
}

#[test]
fn an_external_learner_is_accounted_as_a_built_in_site_is() {
    for (what, privacy) in [("fixed", fixed()), ("target", target())] {
        let (built_in, external) = both(privacy);
        let (a, b) = (
            built_in.privacy.as_ref().unwrap(),
            external.privacy.as_ref().unwrap(),
        );
        assert_eq!(a.epsilon, b.epsilon, "{what}");
        assert!(b.epsilon > 0.0 && b.epsilon.is_finite(), "{what}");
        assert_eq!(a.site_noise_multipliers, b.site_noise_multipliers, "{what}");
        assert_eq!(b.site_noise_multipliers.len(), 4, "{what}");
        // Other noise, the same training: accuracies close.
        let (x, y) = (accuracy(&built_in), accuracy(&external));
        assert!((x - y).abs() < 0.1, "{what}: built-in {x}, external {y}");
        assert_eq!(external.rounds.len(), 8);
        assert!(external.rounds.iter().all(|r| r.accepted == 4));
    }
}

#[test]
fn a_site_that_reports_more_steps_than_accounted_leaves_the_round() {
    let (plan, data, learners) = setup(fixed(), 1);
    let report = simulate_with_learners(&plan, learners, &rows(&data), &mut |_| {}).unwrap();
    let last = data.sites.last().unwrap().name.clone();
    for round in &report.rounds {
        assert_eq!(round.accepted, 3, "round {}", round.round);
        let why = round.site_errors.join("\n");
        assert!(
            why.contains(&last) && why.contains("more than the"),
            "{why}"
        );
    }
}

#[test]
fn local_dp_needs_every_sites_training_rows() {
    let (plan, data, learners) = setup(fixed(), 0);
    let mut rows = rows(&data);
    let first = data.sites[0].name.clone();
    rows.remove(&first);
    let e = simulate_with_learners(&plan, learners, &rows, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("declare its training rows"), "{e}");
    assert!(e.to_string().contains(&first), "{e}");
    let (plan, data, learners) = setup(fixed(), 0);
    let mut rows = self::rows(&data);
    rows.insert("nowhere".into(), 10);
    let e = simulate_with_learners(&plan, learners, &rows, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("'nowhere'"), "{e}");
}
