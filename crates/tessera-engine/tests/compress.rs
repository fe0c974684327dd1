//! A site's compressed updates: error feedback carries what a codec left out
//! to the next round, and encoding a round's update again (a retried upload)
//! gives the same bytes without counting the residual twice.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use tessera_compress::Codec;
use tessera_core::ParticipantId;
use tessera_data::Dataset;
use tessera_engine::{FitTask, Site};
use tessera_learn::{Learner, ModelConfig, ModelKind, Network, TrainingConfig};

fn site() -> (Site, Dataset, FitTask) {
    let model = Network::new(&ModelConfig::of_kind(ModelKind::Mlp), 6, 3, 1).unwrap();
    let global = Arc::new(model.parameters().clone());
    let x = ndarray::Array2::from_shape_fn((40, 6), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 11.0);
    let y = (0..40).map(|i| (i % 3) as u32).collect();
    let training = TrainingConfig {
        epochs: Some(1),
        ..TrainingConfig::default()
    };
    let site =
        Site::new(ParticipantId::new("a"), Box::new(model), training, 9).with_error_feedback();
    let task = FitTask {
        round: 1,
        global,
        instructions: Default::default(),
        deadline: None,
    };
    (site, Dataset { x: x.into(), y }, task)
}

#[test]
fn a_retried_round_encodes_the_same_bytes_and_the_residual_once() {
    let codec: Codec = "topk:0.05+q4".parse().unwrap();
    let (mut retrying, rows, task) = site();
    let (mut once, _, _) = site();
    let update = retrying.fit(&task, &rows).unwrap();
    let first = retrying.encode_update(&mut update.clone(), &codec, 1, None);
    let again = retrying.encode_update(&mut update.clone(), &codec, 1, None);
    assert_eq!(first, again);
    assert!(
        retrying.residual_norm() > 0.0,
        "top-k 5% leaves most of the update out"
    );
    let plain = once.encode_update(&mut update.clone(), &codec, 1, None);
    assert_eq!(plain, first);
    // Round 2: both carry the same residual into it.
    let next = FitTask { round: 2, ..task };
    let update = retrying.fit(&next, &rows).unwrap();
    let a = retrying.encode_update(&mut update.clone(), &codec, 2, None);
    let b = once.encode_update(&mut update.clone(), &codec, 2, None);
    assert_eq!(a, b);
    assert!((retrying.residual_norm() - once.residual_norm()).abs() < 1e-12);
}
