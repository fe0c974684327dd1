#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use tessera_core::{derive_key, derive_seed};
use tessera_learn::{ModelConfig, ModelKind, Network};
use tessera_privacy::PrivacyMode;

use super::*;
use crate::dp_sgd::secret_stream_key;
use tessera_aggregate::PlainLocal;

const SEED: u64 = 42;
const ROWS: usize = 200;
const BATCH: usize = 10;

fn training() -> TrainingConfig {
    TrainingConfig {
        steps: Some(20),
        batch_size: BATCH,
        ..TrainingConfig::default()
    }
}

/// The generator of `site`'s training `index`: keyed under local DP,
/// the public stream without.
impl Site {
    fn fit_rng(&self, index: u32) -> SeededRng {
        match &self.dp {
            Some(dp) => dp.rng(index),
            None => public_rng(self.seed, index, &self.id),
        }
    }
}

fn site(key: Option<[u8; 32]>) -> Site {
    let model = Network::new(&ModelConfig::of_kind(ModelKind::Mlp), 6, 3, 1).unwrap();
    let site = Site::new(ParticipantId::new("a"), Box::new(model), training(), SEED);
    match key {
        Some(key) => {
            let privacy = PrivacyConfig {
                mode: PrivacyMode::Local,
                noise_multiplier: Some(1.0),
                ..PrivacyConfig::default()
            };
            site.with_local_dp(privacy, 5, key)
        }
        None => site,
    }
}

/// The Poisson batches DP-SGD draws from `rng` (as `tessera-learn`
/// draws them: each row with probability batch / rows, in row order).
fn batches(mut rng: SeededRng) -> Vec<Vec<usize>> {
    let q = BATCH as f64 / ROWS as f64;
    (0..20)
        .map(|_| (0..ROWS).filter(|_| rng.next_f64() < q).collect())
        .collect()
}

/// Every generator someone with the plan and its seed can build for
/// site `a`'s round `round`.
fn public_guesses(round: u32) -> Vec<SeededRng> {
    let id = tag("a");
    let simulation_key = derive_key(derive_seed(SEED, &[id]), &[streams::DP_NOISE]);
    vec![
        SeededRng::derived(SEED, &[streams::FIT, u64::from(round), id]),
        SeededRng::derived(SEED, &[streams::FIT, u64::from(round)]),
        SeededRng::new(SEED),
        SeededRng::from_key(simulation_key),
        SeededRng::from_key(secret_stream_key(&[0; 32], streams::FIT, round)),
    ]
}

#[test]
fn secret_keys_draw_batches_the_seed_cannot_recompute() {
    let (key_a, key_b) = ([0x5a; 32], [0xa5; 32]);
    for round in 1..=3 {
        let a = batches(site(Some(key_a)).fit_rng(round));
        let b = batches(site(Some(key_b)).fit_rng(round));
        assert_ne!(
            a, b,
            "round {round}: same seed, different keys, same batches"
        );
        // The attack: recompute site a's batches from what the plan gives.
        for (i, guess) in public_guesses(round).into_iter().enumerate() {
            let guessed = batches(guess);
            assert_ne!(
                guessed, a,
                "round {round}: guess {i} recomputes the batches"
            );
            let shared = guessed
                .iter()
                .zip(&a)
                .map(|(g, s)| g.iter().filter(|r| s.contains(r)).count())
                .sum::<usize>();
            let drawn = a.iter().map(Vec::len).sum::<usize>();
            // Independent draws share about q of the rows (a twentieth).
            assert!(shared * 4 < drawn, "guess {i}: {shared} of {drawn} rows");
        }
        // The key holder draws the same batches again.
        assert_eq!(a, batches(site(Some(key_a)).fit_rng(round)));
        assert_ne!(a, batches(site(Some(key_a)).fit_rng(round + 1)));
    }
    // Without local DP the stream is the public one the first guess builds.
    assert_eq!(
        batches(site(None).fit_rng(2)),
        batches(public_guesses(2).remove(0))
    );
}

#[test]
fn dp_sgd_updates_follow_the_key_not_the_seed() {
    let (rows, task) = rows_and_task();
    let fit = |key| site(Some(key)).fit(&task, &rows).unwrap().delta;
    assert_eq!(fit([1; 32]), fit([1; 32]));
    assert_ne!(fit([1; 32]), fit([2; 32]));
}

fn rows_and_task() -> (Dataset, FitTask) {
    let x =
        ndarray::Array2::from_shape_fn((ROWS, 6), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 11.0);
    let y = (0..ROWS).map(|i| (i % 3) as u32).collect();
    let rows = Dataset { x: x.into(), y };
    let global = {
        let model = Network::new(&ModelConfig::of_kind(ModelKind::Mlp), 6, 3, 1).unwrap();
        Arc::new(model.parameters().clone())
    };
    let task = FitTask {
        round: 1,
        global,
        instructions: Default::default(),
        deadline: None,
    };
    (rows, task)
}

/// A coordinator that sends the same round (and model) twice gets two
/// updates with different noise and batches, so their difference is not
/// noise-free; and a site stops after the plan's rounds (5 here).
#[test]
fn a_round_asked_twice_takes_fresh_noise_and_trainings_stop_at_the_plans_rounds() {
    let (rows, task) = rows_and_task();
    let mut s = site(Some([1; 32]));
    let first = s.fit(&task, &rows).unwrap().delta;
    let again = s.fit(&task, &rows).unwrap().delta;
    assert_ne!(first, again);
    for _ in 2..5 {
        s.fit(&task, &rows).unwrap();
    }
    let e = s.fit(&task, &rows).unwrap_err().to_string();
    assert!(e.contains("every round of the plan"), "{e}");
}

/// A local part that trains twice a round (as a personalised method that
/// keeps a model of its own would): the second training starts from the
/// first one's result.
#[derive(Debug, Default)]
struct TwoTrainings;

impl LocalAlgorithm for TwoTrainings {
    fn fit(
        &mut self,
        _instructions: &tessera_aggregate::Instructions,
        global: &ParameterSet,
        model: &mut dyn LocalModel,
    ) -> Result<tessera_aggregate::LocalFit, tessera_aggregate::AggregateError> {
        model.set_parameters(global)?;
        model.train(None)?;
        let stats = model.train(None)?;
        Ok(tessera_aggregate::LocalFit {
            delta: model.parameters().sub(global)?,
            aux: None,
            stats,
        })
    }
}

fn model<'a>(
    learner: &'a mut dyn Learner,
    rows: &'a Dataset,
    t: &'a TrainingConfig,
) -> SiteModel<'a> {
    SiteModel {
        learner,
        rows,
        elastic: None,
        training: t,
        rng: public_rng(SEED, 1, &ParticipantId::new("a")),
        failure: None,
    }
}

/// DP-SGD wraps any local part: FedProx's term still pulls toward the
/// global model under DP-SGD (same key, same batches and noise, another
/// update), and the update still follows the key.
#[test]
fn dp_sgd_wraps_the_strategys_local_part() {
    let (rows, plain) = rows_and_task();
    let proximal = FitTask {
        instructions: tessera_aggregate::Instructions::Proximal { mu: 5.0 },
        ..plain.clone()
    };
    let fit = |key, task: &FitTask| site(Some(key)).fit(task, &rows).unwrap().delta;
    let dp_only = fit([1; 32], &plain);
    let dp_prox = fit([1; 32], &proximal);
    assert_ne!(dp_only, dp_prox, "the proximal term was lost under DP-SGD");
    assert_eq!(dp_prox, fit([1; 32], &proximal));
    assert_ne!(dp_prox, fit([2; 32], &proximal));
    // The pull shrinks the step: the proximal update is the shorter one.
    assert!(dp_prox.l2_norm() < dp_only.l2_norm());
}

/// The site's privacy accounting covers one DP-SGD training a round: a
/// local part that trains twice is refused under DP and runs without it.
#[test]
fn a_local_part_that_trains_twice_is_refused_under_dp_sgd() {
    let (rows, task) = rows_and_task();
    let t = training();
    let Model::BuiltIn(mut learner) = site(None).model else {
        unreachable!("a built-in site")
    };
    let once = {
        let mut m = model(learner.as_mut(), &rows, &t);
        PlainLocal
            .fit(&task.instructions, &task.global, &mut m)
            .unwrap()
            .delta
    };
    let twice = {
        let mut m = model(learner.as_mut(), &rows, &t);
        TwoTrainings
            .fit(&task.instructions, &task.global, &mut m)
            .unwrap()
            .delta
    };
    assert_ne!(once, twice);
    let privacy = PrivacyConfig {
        mode: PrivacyMode::Local,
        noise_multiplier: Some(1.0),
        ..PrivacyConfig::default()
    };
    let mut dp = DpSgd::new(privacy, 5, [1; 32], t.clone());
    let mut inner = TwoTrainings;
    let mut private = dp.around(&mut inner, ROWS, 1).unwrap();
    let mut m = model(learner.as_mut(), &rows, &t);
    let e = private
        .fit(&task.instructions, &task.global, &mut m)
        .unwrap_err()
        .to_string();
    assert!(e.contains("trains more than once a round"), "{e}");
}

mod fedrep;

/// A site whose learner is made for each use from a shared one
/// ([`Site::learner_on_demand`]) trains and evaluates to the same bits as
/// a site holding its own, round after round, with and without local DP,
/// even when the shared learner's values differ from the site's (every
/// use sets them first).
#[test]
fn a_learner_made_for_each_use_gives_the_held_learners_bits() {
    let (rows, task) = rows_and_task();
    for key in [None, Some([3; 32])] {
        let mut held = site(key);
        let other = Network::new(&ModelConfig::of_kind(ModelKind::Mlp), 6, 3, 99).unwrap();
        let shared = SharedLearner::new(Box::new(other), training());
        let mut on_demand = site(key).learner_on_demand(&shared);
        assert!(matches!(on_demand.model, Model::OnDemand(_)));
        assert!(Arc::ptr_eq(&on_demand.training, &shared.training));
        let mut global = task.global.as_ref().clone();
        for round in 1..=3 {
            let task = FitTask {
                round,
                global: Arc::new(global.clone()),
                ..task.clone()
            };
            let a = held.fit(&task, &rows).unwrap();
            let b = on_demand.fit(&task, &rows).unwrap();
            assert_eq!(a.delta, b.delta, "round {round}, key {key:?}");
            let (ea, eb) = (
                held.evaluate(&global, &rows).unwrap(),
                on_demand.evaluate(&global, &rows).unwrap(),
            );
            assert_eq!(ea.loss_sum.to_bits(), eb.loss_sum.to_bits());
            assert_eq!(ea.n_correct, eb.n_correct);
            global.add_scaled(&a.delta, 1.0).unwrap();
        }
    }
}
