//! Rows held sparsely (measurements dense, one-hot indicators by their
//! columns) train and evaluate exactly as the same rows held densely: the
//! learner densifies a batch at a time, and the arithmetic is the same.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ndarray::Array2;
use tessera_core::SeededRng;
use tessera_data::{Dataset, Features, SparseBuilder};
use tessera_learn::{Learner, LocalPlan, ModelConfig, ModelKind, Network, TrainingConfig};

/// 2 measurements (columns 0 and 61) and 3 coded columns of 40 levels
/// (120 indicators); the label from the codes and the first measurement.
/// More rows than the learner evaluates at a time.
fn coded(n: usize, seed: u64) -> (Dataset, Dataset) {
    let mut rng = SeededRng::new(seed);
    let d = 122;
    let measured = [0usize, 61];
    let mut x = Array2::<f32>::zeros((n, d));
    let mut b = SparseBuilder::new(d, measured.to_vec());
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let m = [rng.gaussian(0.0, 1.0) as f32, rng.gaussian(3.0, 2.0) as f32];
        let mut entries = Vec::new();
        let mut effect = f64::from(m[0]);
        // Indicator columns: 1..61 and 62..122 (a code's column skips 61).
        for k in 0..3 {
            let code = (rng.next_f64().powi(2) * 40.0) as usize;
            let mut column = 1 + 40 * k + code;
            if column >= 61 {
                column += 1;
            }
            entries.push((column, 1.0f32));
            effect += if code.is_multiple_of(3) { 1.5 } else { -0.5 };
        }
        entries.sort_unstable_by_key(|&(c, _)| c);
        x[[i, 0]] = m[0];
        x[[i, 61]] = m[1];
        for &(c, v) in &entries {
            x[[i, c]] = v;
        }
        b.push(&m, entries);
        y.push(u32::from(effect + rng.gaussian(0.0, 0.5) > 0.0));
    }
    (
        Dataset {
            x: Features::Dense(x),
            y: y.clone(),
        },
        Dataset { x: b.finish(), y },
    )
}

#[test]
fn sparse_rows_train_and_evaluate_bit_for_bit_as_dense_rows() {
    let (dense, sparse) = coded(2600, 4);
    assert!(sparse.x.is_sparse());
    assert_eq!(sparse.x.dense(), dense.x.dense());
    assert!(sparse.x.stored_bytes() * 10 < dense.x.stored_bytes());
    for kind in [ModelKind::Logistic, ModelKind::Softmax, ModelKind::Mlp] {
        let start = Network::new(&ModelConfig::of_kind(kind), 122, 2, 11).unwrap();
        let training = TrainingConfig {
            epochs: Some(2),
            batch_size: 32,
            ..TrainingConfig::default()
        };
        let mut trained = Vec::new();
        for data in [&dense, &sparse] {
            let mut net = start.clone();
            let stats = net
                .fit(data, &LocalPlan::plain(&training), &mut SeededRng::new(5))
                .unwrap();
            let evaluation = net.evaluate(data).unwrap();
            let gradient = net.gradient(data, 3000).unwrap();
            let importance = net.importance(data, 50).unwrap();
            trained.push((
                net.parameters().clone(),
                stats,
                evaluation,
                gradient,
                importance,
            ));
        }
        let (a, b) = (&trained[0], &trained[1]);
        assert_eq!(a.0, b.0, "{kind:?}: parameters");
        assert_eq!(a.1, b.1, "{kind:?}: fit statistics");
        assert_eq!(a.2, b.2, "{kind:?}: evaluation");
        assert_eq!(a.3, b.3, "{kind:?}: gradient");
        assert_eq!(a.4, b.4, "{kind:?}: importance");
        // DP-SGD (Poisson-sampled rows, clipped, noised) and Per-FedAvg's
        // meta steps read the rows another way: the same there too.
        let dp = tessera_core::LocalDp {
            noise_multiplier: 0.8,
            clip_norm: 1.0,
            noise_key: [7; 32],
            stream: 1,
        };
        let mut others = Vec::new();
        for data in [&dense, &sparse] {
            let mut private = start.clone();
            let plan = LocalPlan {
                dp: Some(dp),
                ..LocalPlan::plain(&training)
            };
            private.fit(data, &plan, &mut SeededRng::new(6)).unwrap();
            let mut meta = start.clone();
            let plan = LocalPlan {
                meta: Some(0.05),
                ..LocalPlan::plain(&training)
            };
            meta.fit(data, &plan, &mut SeededRng::new(6)).unwrap();
            others.push((private.parameters().clone(), meta.parameters().clone()));
        }
        assert_eq!(others[0], others[1], "{kind:?}: DP-SGD and meta steps");
        // And it learned the codes' effects.
        let before = start.evaluate(&sparse).unwrap();
        assert!(
            a.2.mean_loss() < 0.9 * before.mean_loss() && a.2.accuracy() > 0.7,
            "{kind:?}: accuracy {}",
            a.2.accuracy()
        );
    }
}
