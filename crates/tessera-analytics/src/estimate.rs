//! From the summed (and noised) vector to statistics with error bars.
//!
//! Every slot carries independent noise of standard deviation `sigma` (in
//! row units). A statistic that is a smooth function `f` of some slots gets
//! the delta-method error `sigma · |∇f|` (gradient by central differences);
//! histogram bins and crosstab cells get `sigma`; a quantile gets the
//! spread of the values at ranks `r ± s`, `s = sigma · sqrt(depth)` being
//! the rank's noise (one noisy count per level of the descent).

use serde::{Deserialize, Serialize};

use crate::layout::{Layout, Slotted};
use crate::query::Aggregate;

/// One statistic of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statistic {
    /// As in the query, e.g. `mean(age)`.
    pub name: String,
    /// Its value (one for a scalar; one per bin, or row-major for a matrix).
    pub values: Vec<f64>,
    /// The noise standard deviation propagated to each value (0 without
    /// noise); for count-distinct, linear counting's own standard error.
    pub errors: Vec<f64>,
    /// Bin or matrix row labels (empty for a scalar).
    pub labels: Vec<String>,
    /// Matrix column labels (empty otherwise).
    pub columns: Vec<String>,
}

/// One group's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupAnswer {
    /// Its levels, one per GROUP BY column.
    pub key: Vec<String>,
    /// Below the (noisy) size threshold: nothing about it is shown.
    pub suppressed: bool,
    /// Its statistics (empty when suppressed).
    pub statistics: Vec<Statistic>,
}

/// `f(x)` and `sigma · |∇f(x)|`.
fn delta_method(f: impl Fn(&[f64]) -> f64, x: &[f64], sigma: f64) -> (f64, f64) {
    let value = f(x);
    if sigma == 0.0 {
        return (value, 0.0);
    }
    let mut sq = 0.0;
    let mut y = x.to_vec();
    for i in 0..x.len() {
        let h = 1e-6 * x[i].abs().max(1.0);
        y[i] = x[i] + h;
        let up = f(&y);
        y[i] = x[i] - h;
        let down = f(&y);
        y[i] = x[i];
        let g = (up - down) / (2.0 * h);
        sq += g * g;
    }
    (value, sigma * sq.sqrt())
}

fn scalar(name: String, (value, error): (f64, f64)) -> Statistic {
    Statistic {
        name,
        values: vec![value],
        errors: vec![error],
        labels: Vec::new(),
        columns: Vec::new(),
    }
}

fn edges(low: f64, high: f64, bins: usize) -> Vec<String> {
    let w = (high - low) / bins as f64;
    (0..bins)
        .map(|i| {
            let a = low + w * i as f64;
            let b = low + w * (i + 1) as f64;
            if i + 1 == bins {
                format!("[{a}, {b}]")
            } else {
                format!("[{a}, {b})")
            }
        })
        .collect()
}

/// The value at rank `r` (0-based, continuous) by descending a tree of
/// `depth` levels whose node counts are `nodes` (level `l` at `2^l - 2`):
/// left when `r` is below the left child's count, else right with `r`
/// reduced by it; then linearly within the leaf. Returns a value in `[0, 1]`.
pub fn descend(nodes: &[f64], depth: usize, rank: f64) -> f64 {
    let mut r = rank;
    let mut node = 0usize;
    for level in 1..=depth {
        let left = 2 * node;
        let c = nodes[(1 << level) - 2 + left];
        if r < c {
            node = left;
        } else {
            r -= c;
            node = left + 1;
        }
    }
    let c = nodes[(1 << depth) - 2 + node];
    let frac = if c > 0.0 {
        (r / c).clamp(0.0, 1.0)
    } else {
        0.5
    };
    (node as f64 + frac) / (1u64 << depth) as f64
}

/// Every group's statistics from the vector `sums` (row units), noise
/// `sigma` per slot; groups whose count is below `min_group` are suppressed.
pub fn estimate(layout: &Layout, sums: &[f64], sigma: f64, min_group: f64) -> Vec<GroupAnswer> {
    (0..layout.groups)
        .map(|g| {
            let slots = &sums[g * layout.group_len..(g + 1) * layout.group_len];
            let n = slots[0];
            let key = layout.group_key(g);
            if n < min_group || n <= 0.0 {
                return GroupAnswer {
                    key,
                    suppressed: true,
                    statistics: Vec::new(),
                };
            }
            let statistics =
                std::iter::once(scalar("rows".into(), (n, sigma)))
                    .chain(layout.aggregates.iter().map(|a| {
                        statistic(a, n, &slots[a.offset..a.offset + a.len], sigma, layout)
                    }))
                    .collect();
            GroupAnswer {
                key,
                suppressed: false,
                statistics,
            }
        })
        .collect()
}

fn statistic(a: &Slotted, n: f64, s: &[f64], sigma: f64, layout: &Layout) -> Statistic {
    let name = a.aggregate.label();
    let b = a.numeric.first();
    let (low, range) = b.map_or((0.0, 1.0), |b| (b.low, b.range()));
    let variance = |x: &[f64]| (x[2] - x[1] * x[1] / x[0]) / (x[0] - 1.0) * range * range;
    match &a.aggregate {
        Aggregate::Count => scalar(name, (n, sigma)),
        Aggregate::Sum(_) => scalar(
            name,
            delta_method(
                |x| low * x[0] + range * (x[1] + 0.5 * x[0]),
                &[n, s[0]],
                sigma,
            ),
        ),
        Aggregate::Mean(_) => scalar(
            name,
            delta_method(|x| low + range * (x[1] / x[0] + 0.5), &[n, s[0]], sigma),
        ),
        Aggregate::Variance(_) => scalar(name, delta_method(variance, &[n, s[0], s[1]], sigma)),
        Aggregate::Stddev(_) => {
            let x = [n, s[0], s[1]];
            let (v, v_error) = delta_method(variance, &x, sigma);
            if v > 0.0 {
                scalar(name, delta_method(|x| variance(x).sqrt(), &x, sigma))
            } else {
                // Noise left the variance at or below 0: the spread is 0
                // give or take the square root of the variance's error.
                scalar(name, (0.0, v_error.sqrt()))
            }
        }
        Aggregate::Histogram {
            bins, hierarchical, ..
        } => {
            let values = if *hierarchical {
                s[bins - 2..].to_vec()
            } else {
                s.to_vec()
            };
            Statistic {
                name,
                errors: vec![sigma; values.len()],
                values,
                labels: edges(low, low + range, *bins),
                columns: Vec::new(),
            }
        }
        Aggregate::Quantile(_, _) | Aggregate::Min(_) | Aggregate::Max(_) => {
            let depth = layout.shape.quantile_depth as usize;
            let spread = sigma * (depth as f64).sqrt();
            let rank = match &a.aggregate {
                Aggregate::Quantile(_, q) => q * (n - 1.0) + 0.5,
                Aggregate::Min(_) => 0.5 + 2.0 * spread,
                _ => n - 0.5 - 2.0 * spread,
            };
            let at = |r: f64| low + range * descend(s, depth, r);
            let error = if sigma > 0.0 {
                (at(rank + spread) - at(rank - spread)).abs() / 2.0
            } else {
                0.0
            };
            scalar(name, (at(rank), error))
        }
        Aggregate::Corr(cs) | Aggregate::Cov(cs) => {
            let k = cs.len();
            let corr = matches!(a.aggregate, Aggregate::Corr(_));
            let mut values = Vec::with_capacity(k * k);
            let mut errors = Vec::with_capacity(k * k);
            let pair = |i: usize, j: usize| -> usize {
                // Index of (i, j), i < j, among the cross products.
                let before: usize = (0..i).map(|r| k - 1 - r).sum();
                2 * k + before + (j - i - 1)
            };
            for i in 0..k {
                for j in 0..k {
                    let (v, e) = if i == j {
                        if corr {
                            (1.0, 0.0)
                        } else {
                            let r = a.numeric[i].range();
                            delta_method(
                                |x| (x[2] - x[1] * x[1] / x[0]) / (x[0] - 1.0) * r * r,
                                &[n, s[i], s[k + i]],
                                sigma,
                            )
                        }
                    } else {
                        let (p, q) = (i.min(j), i.max(j));
                        let x = [n, s[p], s[q], s[k + p], s[k + q], s[pair(p, q)]];
                        if corr {
                            // Noise may push it past [-1, 1]: shown clamped,
                            // its error from the unclamped value.
                            let (v, e) = delta_method(
                                |x| {
                                    (x[5] - x[1] * x[2] / x[0])
                                        / ((x[3] - x[1] * x[1] / x[0])
                                            * (x[4] - x[2] * x[2] / x[0]))
                                            .sqrt()
                                },
                                &x,
                                sigma,
                            );
                            (v.clamp(-1.0, 1.0), e)
                        } else {
                            let rr = a.numeric[p].range() * a.numeric[q].range();
                            delta_method(
                                |x| (x[5] - x[1] * x[2] / x[0]) / (x[0] - 1.0) * rr,
                                &x,
                                sigma,
                            )
                        }
                    };
                    values.push(v);
                    errors.push(e);
                }
            }
            if k == 2 {
                scalar(name, (values[1], errors[1]))
            } else {
                Statistic {
                    name,
                    values,
                    errors,
                    labels: cs.clone(),
                    columns: cs.clone(),
                }
            }
        }
        Aggregate::Crosstab(..) => Statistic {
            name,
            values: s.to_vec(),
            errors: vec![sigma; s.len()],
            labels: a.levels.first().cloned().unwrap_or_default(),
            columns: a.levels.get(1).cloned().unwrap_or_default(),
        },
        Aggregate::CountDistinct(_) => {
            let m = s.len() as f64;
            let threshold = if sigma > 0.0 { 3.0 * sigma } else { 0.5 };
            let zero = s.iter().filter(|&&c| c < threshold).count() as f64;
            let value = if zero > 0.0 {
                -m * (zero / m).ln()
            } else {
                m * m.ln()
            };
            let t = value / m;
            scalar(name, (value, (m * (t.exp() - t - 1.0)).max(0.0).sqrt()))
        }
    }
}
