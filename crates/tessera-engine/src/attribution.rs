//! One round's attribution (`[contribution]`), the same code in simulation
//! and deployment: the method over a set utility, and the first-order
//! utility built from the sites' test-loss gradients at the round's start.
//!
//! Under the first-order utility a set's worth is minus the mean test
//! gradient times the set's example-weighted mean update. The mean
//! gradient is each site's own mean gradient over its first
//! `rows_per_site` test rows, weighted by those rows and added in the
//! plan's site order ([`site_order`], [`mean_gradient`]): a simulation
//! computes each site's, a deployed site sends its own with its update.

use std::collections::BTreeMap;
use tessera_contribution::{GtgConfig, MAX_EXACT, MAX_SITES, Memo};

use tessera_core::{ParameterSet, ParticipantId, derive_seed};
use tessera_data::Dataset;
use tessera_learn::Learner;

use crate::{AttributionMethod, ContributionConfig, EngineError};

/// One round's attribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Attributed {
    /// The whole round's utility over its start's (0 where it failed).
    pub gain: f64,
    /// Each counted update's value, in the order the utility indexes them.
    pub values: Vec<f64>,
    /// Orders of sites sampled (GTG-Shapley; 0 for the other methods).
    pub orders: usize,
    /// Sets whose utility was computed.
    pub evaluations: usize,
}

/// Attributes round `round`'s `n` counted updates by `config`'s method,
/// `utility` giving a set's worth (bit `i` the `i`-th update) and `seed`
/// the run's contribution stream (GTG-Shapley's orders). `None` where the
/// plan attributes nothing.
pub fn attribute(
    config: &ContributionConfig,
    seed: u64,
    round: u32,
    n: usize,
    utility: &mut dyn FnMut(u64) -> f64,
) -> Result<Option<Attributed>, EngineError> {
    check_count(config.method, n, &format!("round {round} counted"))?;
    let mut memo = Memo::new(utility);
    let all = tessera_contribution::everyone(n);
    let whole = (|| Some(memo.value(all).ok()? - memo.value(0).ok()?))();
    let values = match config.method {
        AttributionMethod::Off => return Ok(None),
        AttributionMethod::Exact => {
            tessera_contribution::exact_shapley(n, &mut memo).map(|v| (v, 0))
        }
        AttributionMethod::LeaveOneOut => {
            tessera_contribution::leave_one_out(n, &mut memo).map(|v| (v, 0))
        }
        AttributionMethod::Gtg => {
            let gain = whole.unwrap_or(0.0).abs();
            let gtg = GtgConfig {
                round_truncation: 1e-9,
                truncation: config.truncation * gain,
                convergence: config.convergence,
                max_orders: config.max_orders,
                seed: derive_seed(seed, &[u64::from(round)]),
            };
            tessera_contribution::gtg_shapley(n, &mut memo, &gtg).map(|e| (e.values, e.orders))
        }
    };
    let evaluations = memo.evaluations();
    let (values, orders) = values.map_err(|e| EngineError::State(format!("round {round}: {e}")))?;
    Ok(Some(Attributed {
        gain: whole.unwrap_or(0.0),
        values,
        orders,
        evaluations,
    }))
}

/// Refuses `count` sites' updates where `method` takes fewer (exact
/// Shapley values enumerate every set), `what` saying whose count it is.
pub fn check_count(method: AttributionMethod, count: usize, what: &str) -> Result<(), EngineError> {
    let most = match method {
        AttributionMethod::Exact => MAX_EXACT,
        _ => MAX_SITES,
    };
    if count > most {
        return Err(EngineError::State(format!(
            "{what} {count} sites' updates, more than {} attribution takes ({most}): sample \
             fewer sites a round (federation.fraction)",
            method.name()
        )));
    }
    Ok(())
}

/// Where a site goes in a round's attribution (its updates' bits, the
/// order its gradient is added in): its place among the plan's `named`
/// sites, then sites the plan does not name by name. A simulation's sites
/// and a deployed coordinator's counted sites take the same order.
pub fn site_order<'a>(named: &[String], site: &'a str) -> (usize, &'a str) {
    let place = named.iter().position(|n| n == site).unwrap_or(usize::MAX);
    (place, site)
}

/// The weights the next round's cohort is drawn with under `selection =
/// "reputation"`, from each site's mean value a round so far (`None`: never
/// valued) and the rounds that asked it: 0.1 + 0.9 times the site's rank
/// score among the sites valued so far (1 for the largest mean, 0 for the
/// smallest, ties sharing); 1 for a site never asked (so that each is
/// tried); 0.55, the middle, for one asked but never counted (it dropped
/// out or was refused: no better than the middle); the floor, 0.1, for a
/// mean that is not a number. A site not given weighs 1 in the draw.
pub fn selection_weights(
    sites: &[(ParticipantId, Option<f64>, u32)],
) -> BTreeMap<ParticipantId, f64> {
    let valued: Vec<f64> = sites
        .iter()
        .filter_map(|s| s.1)
        .filter(|v| v.is_finite())
        .collect();
    let m = valued.len();
    sites
        .iter()
        .map(|(id, mean, asked)| {
            let weight = match mean {
                None if *asked > 0 => 0.55,
                None => 1.0,
                Some(mean) if !mean.is_finite() => 0.1,
                Some(_) if m < 2 => 1.0,
                Some(mean) => {
                    let below = valued.iter().filter(|v| **v < *mean).count() as f64;
                    let equal = valued.iter().filter(|v| **v == *mean).count() as f64;
                    let score = (below + 0.5 * (equal - 1.0)) / (m as f64 - 1.0);
                    0.1 + 0.9 * score
                }
            };
            (id.clone(), weight)
        })
        .collect()
}

/// The first-order utility of `set`: its members' slopes, weighted as
/// their updates are in the set's mean (0 for no one).
pub fn first_order(slopes: &[f64], weights: &[f64], set: u64) -> f64 {
    let (mut sum, mut total) = (0.0, 0.0);
    for (i, (s, w)) in slopes.iter().zip(weights).enumerate() {
        if set & (1 << i) != 0 {
            sum += w * s;
            total += w;
        }
    }
    if total > 0.0 { sum / total } else { 0.0 }
}

/// Each pair of updates' inner product times both their weights, row by
/// row (`n` x `n` from the Gram matrix `gram` and `weights`): what
/// [`set_norm_sq`] adds up.
pub fn weighted_gram(weights: &[f64], gram: &[Vec<f64>]) -> Vec<f64> {
    let n = weights.len();
    let mut out = vec![0.0; n * n];
    for (i, row) in gram.iter().enumerate().take(n) {
        for (j, g) in row.iter().enumerate().take(n) {
            out[i * n + j] = weights[i] * weights[j] * g;
        }
    }
    out
}

/// The squared norm of `set`'s mean update (weighted by `weights`), from
/// the updates' [`weighted_gram`]; 0 for the empty set.
pub fn set_norm_sq(weights: &[f64], weighted: &[f64], set: u64) -> f64 {
    let n = weights.len();
    let set = if n >= 64 {
        set
    } else {
        set & ((1u64 << n) - 1)
    };
    let (mut total, mut sum) = (0.0, 0.0);
    let mut bits = set;
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        total += weights[i];
        let row = &weighted[i * n..(i + 1) * n];
        // The pair (i, i) once, each (i, j > i) for both orders.
        let mut pair = 0.0;
        let mut later = bits;
        while later != 0 {
            let j = later.trailing_zeros() as usize;
            later &= later - 1;
            pair += row[j];
        }
        sum += row[i] + 2.0 * pair;
    }
    if total > 0.0 {
        sum / (total * total)
    } else {
        0.0
    }
}

/// The curvature the quadratic utility takes along the round's updates:
/// the one at which first order minus half of it times the squared norm of
/// the whole round's mean update gives the round's `measured` gain (its
/// test loss before minus after), never below 0 (where first order
/// already falls short of the measured gain, the utility is first order).
/// Where first order and the measured gain differ by no more than
/// `precision` (what the two loss evaluations can tell apart), or the
/// round's mean update has no length, there is no curvature to fit: 0.
pub fn curvature(first_order_whole: f64, measured: f64, norm_sq_whole: f64, precision: f64) -> f64 {
    let gap = first_order_whole - measured;
    if norm_sq_whole > 0.0 && gap.is_finite() && gap > precision.max(0.0) {
        2.0 * gap / norm_sq_whole
    } else {
        0.0
    }
}

/// What two mean test losses near `loss` can be told apart by: differences
/// below it are the evaluations' rounding (the model's outputs are `f32`).
pub fn loss_precision(loss: f64) -> f64 {
    1e-6 * loss.abs().max(1.0)
}

/// The quadratic utility of `set`: its [`first_order`] value less half of
/// `curvature` times the squared norm of its mean update. With the
/// [`curvature`] fitted to the round, the whole round is worth what it
/// gained on the test rows, and a set whose mean update is long for its
/// slope (scaled up, or noise) is worth less the longer it is.
pub fn quadratic(
    slopes: &[f64],
    weights: &[f64],
    weighted: &[f64],
    curvature: f64,
    set: u64,
) -> f64 {
    first_order(slopes, weights, set) - 0.5 * curvature * set_norm_sq(weights, weighted, set)
}

/// How far past the median a site's test gradient may reach: each is
/// clipped to at most this many times the (lower) median of the round's
/// non-zero gradient norms, which bounds the pull of one site's gradient
/// on the mean, and so on every site's value, where most counted sites
/// are honest (with two sites, the median is the smaller norm).
pub const GRADIENT_CLIP: f64 = 3.0;

/// The mean test gradient: each site's mean gradient, clipped to
/// [`GRADIENT_CLIP`] times the lower median of the non-zero norms of the
/// gradients with rows, weighted by its rows (in `f32`, as a
/// share of all the rows), added in the order given (simulation and
/// deployment both give the plan's site order, [`site_order`]). `None`
/// where no site has rows.
pub fn mean_gradient(parts: &[(u64, &ParameterSet)]) -> Result<Option<ParameterSet>, EngineError> {
    let total: u64 = parts.iter().map(|p| p.0).sum();
    let Some((_, first)) = parts.iter().find(|p| p.0 > 0) else {
        return Ok(None);
    };
    let norm = |g: &ParameterSet| g.values().map(|v| f64::from(v).powi(2)).sum::<f64>().sqrt();
    let mut norms: Vec<f64> = parts
        .iter()
        .filter(|p| p.0 > 0)
        .map(|p| norm(p.1))
        .filter(|n| *n > 0.0)
        .collect();
    norms.sort_by(f64::total_cmp);
    let bound = match norms.len() {
        0 => 0.0,
        k => GRADIENT_CLIP * norms[(k - 1) / 2],
    };
    let mut gradient = first.zeros_like();
    for (n, g) in parts.iter().filter(|p| p.0 > 0) {
        let mut share = *n as f32 / total as f32;
        let size = norm(g);
        if bound > 0.0 && size > bound {
            share *= (bound / size) as f32;
        }
        gradient.add_scaled(g, share)?;
    }
    Ok(Some(gradient))
}

/// A site's rows and mean gradient of its test loss over its first
/// `max_rows` test `rows`, `learner` holding the round's start as served
/// (no rows: 0, and zeros that add nothing).
pub fn site_gradient(
    learner: &dyn Learner,
    rows: &Dataset,
    max_rows: usize,
) -> Result<(u64, ParameterSet), EngineError> {
    let n = rows.n_rows().min(max_rows);
    if n == 0 {
        return Ok((0, learner.parameters().zeros_like()));
    }
    Ok((n as u64, learner.gradient(rows, max_rows)?.1))
}

/// The inner product of two parameter sets of one layout, in `f64`, the
/// products added in layout order.
pub fn dot(a: &ParameterSet, b: &ParameterSet) -> f64 {
    a.values()
        .zip(b.values())
        .map(|(x, y)| f64::from(x) * f64::from(y))
        .sum()
}

/// Minus `gradient` times each of `deltas` (in `f64`): each update's
/// first-order change of the utility.
pub fn slopes<'a>(
    gradient: &ParameterSet,
    deltas: impl IntoIterator<Item = &'a ParameterSet>,
) -> Result<Vec<f64>, EngineError> {
    deltas
        .into_iter()
        .map(|d| {
            if d.n_values() != gradient.n_values() {
                return Err(EngineError::State(format!(
                    "the test gradient has {} values and an update {}: the first-order \
                     utility needs a model served whole (not a personalized strategy's)",
                    gradient.n_values(),
                    d.n_values()
                )));
            }
            Ok(-dot(gradient, d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::Tensor;

    fn set(values: &[f32]) -> ParameterSet {
        let mut p = ParameterSet::new();
        p.push(
            "w",
            Tensor::new(vec![values.len()], values.to_vec()).unwrap(),
        )
        .unwrap();
        p
    }

    #[test]
    fn the_first_order_utility_is_exact_shapley_of_weighted_slopes() {
        // Sites' gradients 1:3 rows: mean gradient (0.25*[4,0] + 0.75*[0,4]) = [1, 3].
        let (a, b) = (set(&[4.0, 0.0]), set(&[0.0, 4.0]));
        let g = mean_gradient(&[(1, &a), (3, &b), (0, &a)])
            .unwrap()
            .unwrap();
        assert_eq!(g.values().collect::<Vec<_>>(), vec![1.0, 3.0]);
        let deltas = [set(&[1.0, 0.0]), set(&[0.0, -1.0]), set(&[0.0, 0.0])];
        let s = slopes(&g, &deltas).unwrap();
        assert_eq!(s, vec![-1.0, 3.0, 0.0]);
        let weights = [10.0, 30.0, 60.0];
        let config = ContributionConfig {
            method: AttributionMethod::Exact,
            ..ContributionConfig::default()
        };
        let mut utility = |set: u64| first_order(&s, &weights, set);
        let got = attribute(&config, 7, 1, 3, &mut utility).unwrap().unwrap();
        // Shapley values add up to the whole gain: (-10 + 90 + 0) / 100.
        assert!((got.gain - 0.8).abs() < 1e-12);
        assert!((got.values.iter().sum::<f64>() - 0.8).abs() < 1e-12);
        // An independent count: enumerate the orders of three sites.
        let orders = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for site in 0..3 {
            let mut sum = 0.0;
            for order in &orders {
                let before: u64 = order
                    .iter()
                    .take_while(|&&i| i != site)
                    .map(|&i| 1u64 << i)
                    .sum();
                sum += first_order(&s, &weights, before | (1 << site))
                    - first_order(&s, &weights, before);
            }
            assert!((got.values[site] - sum / 6.0).abs() < 1e-12, "{site}");
        }
        assert!(mean_gradient(&[(0, &a)]).unwrap().is_none());
        // A site that sends a gradient a thousand times the others' is
        // clipped to three times their median: it cannot steer the mean.
        let (c, huge) = (set(&[0.0, 4.0]), set(&[-4000.0, 0.0]));
        let g = mean_gradient(&[(1, &a), (1, &c), (1, &b), (1, &huge)])
            .unwrap()
            .unwrap();
        let values: Vec<f32> = g.values().collect();
        assert!((values[0] - (4.0 - 12.0) / 4.0).abs() < 1e-5, "{values:?}");
        assert!((values[1] - 8.0 / 4.0).abs() < 1e-5, "{values:?}");
        // Sites sending zeros do not lower the median to switch clipping off.
        let zero = set(&[0.0, 0.0]);
        let g = mean_gradient(&[(1, &zero), (1, &zero), (1, &a), (1, &huge)])
            .unwrap()
            .unwrap();
        let values: Vec<f32> = g.values().collect();
        assert!((values[0] - (4.0 - 12.0) / 4.0).abs() < 1e-5, "{values:?}");
        assert!(slopes(&g, &[set(&[1.0])]).is_err());
    }

    #[test]
    fn exact_attribution_refuses_more_sites_than_it_enumerates() {
        let config = ContributionConfig {
            method: AttributionMethod::Exact,
            ..ContributionConfig::default()
        };
        let e = attribute(&config, 1, 3, MAX_EXACT + 1, &mut |_| 0.0).unwrap_err();
        assert!(e.to_string().contains("round 3 counted"), "{e}");
    }

    /// The quadratic utility's pieces against direct computation: a set's
    /// mean update's squared norm from the weighted Gram matrix, and the
    /// fitted curvature making the whole round worth its measured gain.
    #[test]
    fn the_quadratic_utility_is_first_order_less_its_curvature_term() {
        let deltas = [
            vec![1.0, 2.0, -1.0],
            vec![0.5, -3.0, 2.0],
            vec![0.0, 0.0, 0.0],
            vec![100.0, 200.0, -100.0],
        ];
        let weights = [1.0, 3.0, 2.0, 5.0];
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let gram: Vec<Vec<f64>> = deltas
            .iter()
            .map(|a| deltas.iter().map(|b| dot(a, b)).collect())
            .collect();
        let weighted = weighted_gram(&weights, &gram);
        for set in 0..16u64 {
            let members: Vec<usize> = (0..4).filter(|i| set & (1 << i) != 0).collect();
            let total: f64 = members.iter().map(|&i| weights[i]).sum();
            let mut mean = [0.0; 3];
            for &i in &members {
                for (m, d) in mean.iter_mut().zip(&deltas[i]) {
                    *m += weights[i] * d / total;
                }
            }
            let want = if members.is_empty() {
                0.0
            } else {
                dot(&mean, &mean)
            };
            let got = set_norm_sq(&weights, &weighted, set);
            assert!(
                (got - want).abs() <= 1e-9 * want.max(1.0),
                "{set}: {got} {want}"
            );
        }
        let slopes = [0.5, 1.0, 0.0, 40.0];
        let all = 0b1111;
        let norm = set_norm_sq(&weights, &weighted, all);
        let first = first_order(&slopes, &weights, all);
        // First order promised more than the round gained: the curvature
        // takes the difference off, and the whole round is worth its gain.
        let c = curvature(first, 0.1, norm, loss_precision(2.3));
        assert!(c > 0.0);
        let whole = quadratic(&slopes, &weights, &weighted, c, all);
        assert!((whole - 0.1).abs() <= 1e-9, "{whole}");
        // The long update alone is worth less than its slope says, and
        // less the longer it is.
        assert!(quadratic(&slopes, &weights, &weighted, c, 0b1000) < 0.0);
        // First order fell short of the gain: no curvature, first order.
        assert_eq!(curvature(first, first + 1.0, norm, 0.0), 0.0);
        assert_eq!(curvature(first, f64::NAN, norm, 0.0), 0.0);
        assert_eq!(curvature(first, 0.1, 0.0, 0.0), 0.0);
        // A gap the evaluations cannot tell from rounding fits nothing.
        assert_eq!(
            curvature(first, first - 1e-7, norm, loss_precision(2.3)),
            0.0
        );
        assert!(curvature(first, first - 1e-3, norm, loss_precision(2.3)) > 0.0);
        assert_eq!(
            quadratic(&slopes, &weights, &weighted, 0.0, 0b11),
            first_order(&slopes, &weights, 0b11)
        );
    }
}
