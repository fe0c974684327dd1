//! Backpropagation checked against finite differences of an independent
//! `f64` forward pass written here, and per-example gradient norms checked
//! against gradients of one example at a time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ndarray::Array2;
use tessera_core::{ParameterSet, SeededRng};
use tessera_learn::{Learner, ModelConfig, ModelKind, Network};

/// Reference loss `Σ_i w_i loss_i` in f64, from the flat parameters.
fn reference_loss(dims: &[usize], theta: &[f64], x: &Array2<f32>, y: &[u32], w: &[f32]) -> f64 {
    let n_layers = dims.len() - 1;
    let mut total = 0.0;
    for i in 0..x.nrows() {
        let mut a: Vec<f64> = x.row(i).iter().map(|&v| f64::from(v)).collect();
        let mut offset = 0;
        for l in 0..n_layers {
            let (fan_in, fan_out) = (dims[l], dims[l + 1]);
            let weight = &theta[offset..offset + fan_in * fan_out];
            let bias = &theta[offset + fan_in * fan_out..offset + fan_in * fan_out + fan_out];
            offset += fan_in * fan_out + fan_out;
            let mut z = bias.to_vec();
            for (k, zk) in z.iter_mut().enumerate() {
                for (j, aj) in a.iter().enumerate() {
                    *zk += aj * weight[j * fan_out + k];
                }
            }
            if l + 1 < n_layers {
                z.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            a = z;
        }
        let loss = if a.len() == 1 {
            let p = 1.0 / (1.0 + (-a[0]).exp());
            if y[i] == 1 { -p.ln() } else { -(1.0 - p).ln() }
        } else {
            let max = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + a.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            lse - a[y[i] as usize]
        };
        total += f64::from(w[i]) * loss;
    }
    total
}

struct Case {
    config: ModelConfig,
    n_features: usize,
    n_classes: usize,
}

fn cases() -> Vec<Case> {
    let mlp = |hidden: Vec<usize>| ModelConfig {
        hidden,
        ..ModelConfig::of_kind(ModelKind::Mlp)
    };
    vec![
        Case {
            config: ModelConfig::of_kind(ModelKind::Logistic),
            n_features: 5,
            n_classes: 2,
        },
        Case {
            config: ModelConfig::of_kind(ModelKind::Softmax),
            n_features: 4,
            n_classes: 3,
        },
        Case {
            config: mlp(vec![6, 5]),
            n_features: 4,
            n_classes: 3,
        },
        Case {
            config: mlp(vec![4]),
            n_features: 3,
            n_classes: 2,
        },
    ]
}

fn random_problem(case: &Case, seed: u64) -> (Network, Array2<f32>, Vec<u32>, Vec<f32>) {
    let mut rng = SeededRng::new(seed);
    let mut net = Network::new(&case.config, case.n_features, case.n_classes, seed).unwrap();
    // Larger random parameters than the initialisation, so every term matters.
    let values: Vec<f32> = (0..net.parameters().n_values())
        .map(|_| rng.gaussian(0.0, 0.8) as f32)
        .collect();
    let params = net.parameters().with_values(&values).unwrap();
    net.set_parameters(&params).unwrap();
    let n = 7;
    let x = Array2::from_shape_fn((n, case.n_features), |_| rng.gaussian(0.0, 1.0) as f32);
    let y: Vec<u32> = (0..n)
        .map(|_| rng.below(case.n_classes as u64) as u32)
        .collect();
    let w: Vec<f32> = (0..n).map(|_| rng.uniform(0.1, 1.0) as f32).collect();
    (net, x, y, w)
}

fn dims(case: &Case) -> Vec<usize> {
    let mut d = vec![case.n_features];
    d.extend(&case.config.hidden);
    d.push(if case.n_classes == 2 {
        1
    } else {
        case.n_classes
    });
    d
}

#[test]
fn gradients_match_finite_differences() {
    for (k, case) in cases().iter().enumerate() {
        let (net, x, y, w) = random_problem(case, 100 + k as u64);
        let mut grad = net.parameters().zeros_like();
        let loss = net.loss_and_gradient(x.view(), &y, Some(&w), &mut grad);
        let theta: Vec<f64> = net.parameters().values().map(f64::from).collect();
        let dims = dims(case);
        let reference = reference_loss(&dims, &theta, &x, &y, &w);
        assert!(
            (loss - reference).abs() < 1e-5 * reference.abs().max(1.0),
            "case {k}: loss {loss} vs {reference}"
        );
        let h = 1e-6;
        for (i, analytic) in grad.values().enumerate() {
            let mut plus = theta.clone();
            plus[i] += h;
            let mut minus = theta.clone();
            minus[i] -= h;
            let numeric = (reference_loss(&dims, &plus, &x, &y, &w)
                - reference_loss(&dims, &minus, &x, &y, &w))
                / (2.0 * h);
            let error = (f64::from(analytic) - numeric).abs();
            assert!(
                error < 1e-4 + 1e-3 * numeric.abs(),
                "case {k}, parameter {i}: analytic {analytic}, numeric {numeric}"
            );
        }
    }
}

#[test]
fn per_example_norms_match_single_example_gradients() {
    for (k, case) in cases().iter().enumerate() {
        let (net, x, y, _) = random_problem(case, 200 + k as u64);
        let norms = net.per_example_gradient_norms(x.view(), &y);
        let mut grad: ParameterSet = net.parameters().zeros_like();
        for i in 0..x.nrows() {
            let row = x.slice(ndarray::s![i..i + 1, ..]);
            net.loss_and_gradient(row, &y[i..i + 1], None, &mut grad);
            let expected = grad.l2_norm();
            assert!(
                (f64::from(norms[i]) - expected).abs() < 1e-5 * expected.max(1.0),
                "case {k}, example {i}: {} vs {expected}",
                norms[i]
            );
        }
    }
}

/// The importance (empirical Fisher diagonal) is the mean over examples of
/// each one's squared gradient, here from finite differences of the
/// reference loss of that example alone.
#[test]
fn importance_is_the_mean_squared_gradient_of_single_examples() {
    for (k, case) in cases().iter().enumerate() {
        let (net, x, y, _) = random_problem(case, 300 + k as u64);
        let data = tessera_data::Dataset {
            x: x.clone().into(),
            y: y.clone(),
        };
        let used = 5;
        let importance = net.importance(&data, used).unwrap();
        let theta: Vec<f64> = net.parameters().values().map(f64::from).collect();
        let dims = dims(case);
        let h = 1e-6;
        let mut expected = vec![0.0f64; theta.len()];
        for i in 0..used {
            let row = x.slice(ndarray::s![i..i + 1, ..]).to_owned();
            let loss = |t: &[f64]| reference_loss(&dims, t, &row, &y[i..i + 1], &[1.0]);
            for (j, e) in expected.iter_mut().enumerate() {
                let (mut plus, mut minus) = (theta.clone(), theta.clone());
                plus[j] += h;
                minus[j] -= h;
                let g = (loss(&plus) - loss(&minus)) / (2.0 * h);
                *e += g * g / used as f64;
            }
        }
        for (j, (got, want)) in importance.values().zip(&expected).enumerate() {
            assert!(
                (f64::from(got) - want).abs() < 1e-4 + 1e-3 * want,
                "case {k}, parameter {j}: {got} vs {want}"
            );
        }
        // Rows beyond `max_rows` are not used; no rows is an error.
        assert_ne!(net.importance(&data, 7).unwrap(), importance);
        assert!(net.importance(&data, 0).is_err());
    }
}
