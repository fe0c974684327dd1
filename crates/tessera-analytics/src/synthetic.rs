//! A DP synthetic sample of a site's table (`tessera synth --like`): a
//! failure reproduced without the site's rows. What is released, with
//! Gaussian noise from the site's own secret:
//!
//! 1. **Marginals**, one Gaussian release: the row count, and for each
//!    column noisy counts on bins fixed before the data is read. A numeric
//!    column's bins are its missing values, zero, and five a decade of each
//!    sign from 10^-3 to 10^6 (below and above: the tails), plus the count
//!    of its whole numbers (so a column of codes or ages stays whole); a bin
//!    is kept only where its noisy count passes what noise alone reaches in
//!    one release of a thousand (where none does, the largest alone). A
//!    categorical column's bins are its missing values, each level the plan
//!    declares (levels compared as the plan reads them: `4.0` is `4`), and
//!    the rest; where the plan declares none, a level is
//!    released by name only if its noisy count passes
//!    `1 + sigma sqrt(2 ln(columns / delta))`, so that a level a single row
//!    holds (an identifier, a name) appears with probability at most delta
//!    over all columns (a delta beside the Gaussian release's, which the
//!    caller states). A row adds one to one bin of each column (declared
//!    levels counted once each, however the plan lists them) and at most
//!    one whole-number count: the L2 sensitivity to adding or removing a
//!    row is `sqrt(2 columns + 1)`. Columns the plan ignores are not read
//!    at all and come out missing.
//! 2. **Pairwise correlations** of the numeric columns (at most 100), where the budget
//!    allows: each value's normal score under the released marginal (so
//!    bounded by `B` = 3.09), the products of each pair and the squares of
//!    each column summed over rows, one Gaussian release of L2 sensitivity
//!    `B² sqrt(pairs + columns)`, a correlation the ratio. It is made
//!    only when the noise this puts on a correlation is at most 0.1 against
//!    the row count, which a tenth of the budget releases first to decide;
//!    then the marginals take 0.4 of the budget and the correlations half,
//!    else the marginals take the other 0.9. Samples are drawn by a
//!    Gaussian copula; categorical columns are drawn independently.
//!
//! Each release is `(epsilon_part, delta)` by the RDP accountant's
//! calibration of one Gaussian release, and is charged to the site's ledger
//! by the caller, one event each (kinds `synthetic_count`, `synthetic`,
//! `synthetic_pairs`).

use std::collections::BTreeMap;

use tessera_core::SeededRng;
use tessera_data::canonical_level;
use tessera_privacy::{DpEvent, GaussianNoise, calibrate_noise_multiplier};

use crate::AnalyticsError;

/// The bound on a normal score: `Φ^-1(0.999)`.
const SCORE: f64 = 3.09;
/// The largest noise standard deviation on a correlation worth releasing.
const MAX_CORRELATION_NOISE: f64 = 0.1;
/// The most numeric columns whose correlations are released (the work
/// grows with their square).
const MAX_CORRELATED: usize = 100;
/// Levels released per undeclared categorical column, at most.
const MAX_LEVELS: usize = 64;
/// Decades of the numeric bins, and bins a decade.
const LOW: i32 = -3;
const HIGH: i32 = 6;
const PER_DECADE: i32 = 5;

/// A column as the plan says to read it.
#[derive(Debug, Clone, PartialEq)]
pub enum SynthColumn {
    /// Numbers.
    Numeric,
    /// Text levels: the plan's declared ones, or `None` (released by name
    /// past the threshold).
    Categorical(Option<Vec<String>>),
    /// Not read; written missing.
    Withheld,
}

/// What the release needs besides the rows.
#[derive(Debug, Clone)]
pub struct SynthSettings {
    /// Epsilon of the whole release (marginals and correlations).
    pub epsilon: f64,
    /// Delta of each release.
    pub delta: f64,
    /// Whether to release correlations where the budget allows.
    pub correlations: bool,
    /// The fields that mean "missing" (the plan's tokens and empty).
    pub missing: Vec<String>,
}

/// One column's released distribution.
#[derive(Debug, Clone)]
enum Marginal {
    Numeric {
        missing: f64,
        /// (low, high, weight) of each bin with a positive noisy count.
        bins: Vec<(f64, f64, f64)>,
        whole: f64,
    },
    Categorical {
        /// (field written, weight), missing included as the missing token.
        levels: Vec<(String, f64)>,
    },
    Withheld,
}

/// The released model of a table: what sampling needs, nothing else.
#[derive(Debug, Clone)]
pub struct SynthModel {
    marginals: Vec<Marginal>,
    /// The noisy row count.
    pub rows: f64,
    /// Correlations of the numeric columns (their order), when released.
    pub correlations: Option<Vec<Vec<f64>>>,
    /// The DP events to charge, one a release, each with its kind
    /// (`synthetic_count`, `synthetic`, `synthetic_pairs`).
    pub events: Vec<(&'static str, DpEvent)>,
    missing_token: String,
}

/// The numeric bins' edges: `(low, high)` from the negative tail up.
fn numeric_edges() -> Vec<(f64, f64)> {
    let mut positive = vec![(0.0, 10f64.powi(LOW))];
    for k in LOW * PER_DECADE..HIGH * PER_DECADE {
        let lo = 10f64.powf(f64::from(k) / f64::from(PER_DECADE));
        let hi = 10f64.powf(f64::from(k + 1) / f64::from(PER_DECADE));
        positive.push((lo, hi));
    }
    positive.push((10f64.powi(HIGH), 10f64.powi(HIGH + 1)));
    let mut edges: Vec<(f64, f64)> = positive.iter().rev().map(|&(l, h)| (-h, -l)).collect();
    edges.push((0.0, 0.0));
    edges.extend(positive);
    edges
}

/// The bin of `x` among [`numeric_edges`].
fn numeric_bin(edges: &[(f64, f64)], x: f64) -> usize {
    if x == 0.0 {
        return edges.len() / 2;
    }
    let i = edges.partition_point(|&(_, high)| high <= x);
    i.min(edges.len() - 1)
}

fn parse_number(field: &str) -> Option<f64> {
    field.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// The standard normal CDF (Zelen and Severo 26.2.17, error below 1e-7).
fn phi(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.231_641_9 * x.abs());
    let poly = t
        * (0.319_381_530
            + t * (-0.356_563_782
                + t * (1.781_477_937 + t * (-1.821_255_978 + t * 1.330_274_429))));
    let tail = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt() * poly;
    if x >= 0.0 { 1.0 - tail } else { tail }
}

/// The standard normal quantile (Acklam's rational approximation, relative
/// error below 1.2e-9), for `p` in (0, 1).
fn probit(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.024_25 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.024_25 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The noise multiplier of one Gaussian release at `(epsilon, delta)`.
fn multiplier(epsilon: f64, delta: f64) -> Result<f64, AnalyticsError> {
    Ok(calibrate_noise_multiplier(1.0, 1, epsilon, delta)?)
}

impl SynthModel {
    /// Releases `rows` (fields by `columns`) under `settings`, noise from
    /// `key` (the site's own secret).
    pub fn release(
        columns: &[SynthColumn],
        rows: &[Vec<String>],
        settings: &SynthSettings,
        key: [u8; 32],
    ) -> Result<SynthModel, AnalyticsError> {
        if !(settings.epsilon.is_finite() && settings.epsilon > 0.0) {
            return Err(AnalyticsError::Synthetic(format!(
                "epsilon must be positive, got {}",
                settings.epsilon
            )));
        }
        if !(settings.delta > 0.0 && settings.delta < 1.0) {
            return Err(AnalyticsError::Synthetic(format!(
                "delta must be in (0, 1), got {}",
                settings.delta
            )));
        }
        if let Some((line, row)) = rows
            .iter()
            .enumerate()
            .find(|(_, r)| r.len() != columns.len())
        {
            return Err(AnalyticsError::Synthetic(format!(
                "row {} has {} fields; the table has {} columns",
                line + 1,
                row.len(),
                columns.len()
            )));
        }
        let numeric: Vec<usize> = (0..columns.len())
            .filter(|&c| columns[c] == SynthColumn::Numeric)
            .collect();
        let event = |z: f64| DpEvent {
            sampling_rate: 1.0,
            noise_multiplier: z,
            steps: 1,
        };
        let mut events = Vec::new();
        // Correlations are worth their half where the noise they would get
        // is small against the row count: a tenth of the budget releases
        // the count that decides.
        let mut correlations = None;
        if settings.correlations && (2..=MAX_CORRELATED).contains(&numeric.len()) {
            let z0 = multiplier(settings.epsilon / 10.0, settings.delta)?;
            let n0 = rows.len() as f64 + z0 * GaussianNoise::new(key, 2).standard_normal();
            events.push(("synthetic_count", event(z0)));
            let z2 = multiplier(settings.epsilon / 2.0, settings.delta)?;
            // Each pair's sum of products and each column's sum of squares.
            let sums = numeric.len() * (numeric.len() + 1) / 2;
            let sigma2 = z2 * SCORE * SCORE * (sums as f64).sqrt();
            if n0 > 0.0 && sigma2 / n0 <= MAX_CORRELATION_NOISE {
                correlations = Some((z2, sigma2));
            }
        }
        let first = match (events.is_empty(), correlations.is_some()) {
            (true, _) => settings.epsilon,
            (false, false) => settings.epsilon * 0.9,
            (false, true) => settings.epsilon * 0.4,
        };
        let z = multiplier(first, settings.delta)?;
        let read = columns
            .iter()
            .filter(|c| **c != SynthColumn::Withheld)
            .count();
        let sigma = z * ((2 * read + 1) as f64).sqrt();
        let mut noise = GaussianNoise::new(key, 0);
        let mut noised = |count: f64| count + sigma * noise.standard_normal();
        let is_missing = |f: &str| settings.missing.iter().any(|m| m == f.trim());
        let threshold = 1.0 + sigma * (2.0 * (read.max(1) as f64 / settings.delta).ln()).sqrt();
        let edges = numeric_edges();
        // A bin counts only where its noisy count passes what noise alone
        // reaches in one release of a thousand (post-processing): else the
        // many empty bins' noise would spread mass over every decade.
        let floor = sigma * (2.0 * (1e3 * edges.len() as f64).ln()).sqrt();
        let total = noised(rows.len() as f64).max(0.0);
        // A count below the floor is taken as noise.
        let kept = |n: f64| if n > floor { n } else { 0.0 };
        let mut marginals = Vec::with_capacity(columns.len());
        for (c, column) in columns.iter().enumerate() {
            let fields = rows.iter().map(|r| r[c].trim());
            marginals.push(match column {
                SynthColumn::Withheld => Marginal::Withheld,
                SynthColumn::Numeric => {
                    let mut counts = vec![0.0f64; edges.len()];
                    let (mut missing, mut whole) = (0.0, 0.0);
                    for f in fields {
                        match parse_number(f).filter(|_| !is_missing(f)) {
                            None => missing += 1.0,
                            Some(x) => {
                                counts[numeric_bin(&edges, x)] += 1.0;
                                if x.fract() == 0.0 {
                                    whole += 1.0;
                                }
                            }
                        }
                    }
                    let all: Vec<(f64, f64, f64)> = edges
                        .iter()
                        .zip(counts)
                        .map(|(&(l, h), n)| (l, h, noised(n)))
                        .collect();
                    let mut bins: Vec<(f64, f64, f64)> =
                        all.iter().copied().filter(|b| b.2 > floor).collect();
                    // None passes: the largest noisy count's bin alone.
                    if bins.is_empty()
                        && let Some(top) = all.iter().max_by(|a, b| a.2.total_cmp(&b.2))
                    {
                        bins.push((top.0, top.1, top.2.max(1.0)));
                    }
                    Marginal::Numeric {
                        missing: kept(noised(missing)),
                        bins,
                        whole: noised(whole).max(0.0),
                    }
                }
                SynthColumn::Categorical(declared) => {
                    // Levels as the plan reads them: `4.0` is level `4`.
                    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
                    let mut missing = 0.0;
                    for f in fields {
                        if is_missing(f) {
                            missing += 1.0;
                        } else {
                            *counts.entry(canonical_level(f)).or_default() += 1.0;
                        }
                    }
                    let token = settings.missing.first().cloned().unwrap_or_default();
                    // Every candidate with its noisy count; under undeclared
                    // levels only those past the threshold are candidates.
                    let mut raw = vec![(token, noised(missing))];
                    match declared {
                        Some(declared) => {
                            let mut rest = 0.0;
                            // Once each: a level listed twice (or as `1` and
                            // `1.0`) would count a row twice.
                            let mut unique: Vec<String> = Vec::new();
                            for d in declared {
                                let d = canonical_level(d);
                                if !unique.contains(&d) {
                                    unique.push(d);
                                }
                            }
                            let declared = unique;
                            for (level, n) in &counts {
                                if !declared.contains(level) {
                                    rest += n;
                                }
                            }
                            for d in &declared {
                                let n = counts.get(d).copied().unwrap_or(0.0);
                                raw.push((d.clone(), noised(n)));
                            }
                            raw.push(("(undeclared)".into(), noised(rest)));
                        }
                        None => {
                            let mut passed: Vec<(String, f64)> = counts
                                .iter()
                                .map(|(l, n)| (l.to_string(), noised(*n)))
                                .filter(|(_, n)| *n > threshold)
                                .collect();
                            passed.sort_by(|a, b| b.1.total_cmp(&a.1));
                            passed.truncate(MAX_LEVELS);
                            raw.extend(passed);
                        }
                    }
                    let mut levels: Vec<(String, f64)> =
                        raw.iter().map(|(l, n)| (l.clone(), kept(*n))).collect();
                    // None passes: the largest candidate alone.
                    if levels.iter().all(|l| l.1 <= 0.0)
                        && let Some(top) =
                            (0..raw.len()).max_by(|&a, &b| raw[a].1.total_cmp(&raw[b].1))
                    {
                        levels[top].1 = 1.0;
                    }
                    Marginal::Categorical { levels }
                }
            });
        }
        events.push(("synthetic", event(z)));
        let mut model = SynthModel {
            marginals,
            rows: total,
            correlations: None,
            events: Vec::new(),
            missing_token: settings.missing.first().cloned().unwrap_or_default(),
        };
        if let Some((z2, sigma2)) = correlations {
            {
                let scores: Vec<Vec<f64>> = rows
                    .iter()
                    .map(|r| {
                        numeric
                            .iter()
                            .map(|&c| model.score(c, r[c].trim(), &is_missing))
                            .collect()
                    })
                    .collect();
                let mut noise = GaussianNoise::new(key, 1);
                let p = numeric.len();
                let mut sum = |i: usize, j: usize| {
                    let s: f64 = scores.iter().map(|s| s[i] * s[j]).sum();
                    s + sigma2 * noise.standard_normal()
                };
                let squares: Vec<f64> = (0..p).map(|i| sum(i, i).max(1.0)).collect();
                let mut corr = vec![vec![0.0; p]; p];
                for i in 0..p {
                    corr[i][i] = 1.0;
                    for j in i + 1..p {
                        let r = (sum(i, j) / (squares[i] * squares[j]).sqrt()).clamp(-0.99, 0.99);
                        corr[i][j] = r;
                        corr[j][i] = r;
                    }
                }
                model.correlations = Some(corr);
                events.push(("synthetic_pairs", event(z2)));
            }
        }
        model.events = events;
        Ok(model)
    }

    /// The normal score of `field` in numeric column `c` under its
    /// released marginal (0 where missing), bounded by [`SCORE`].
    fn score(&self, c: usize, field: &str, is_missing: &dyn Fn(&str) -> bool) -> f64 {
        let Some(Marginal::Numeric { bins, .. }) = self.marginals.get(c) else {
            return 0.0;
        };
        let Some(x) = parse_number(field).filter(|_| !is_missing(field)) else {
            return 0.0;
        };
        let total: f64 = bins.iter().map(|b| b.2).sum();
        if total <= 0.0 {
            return 0.0;
        }
        let mut below = 0.0;
        for &(l, h, w) in bins {
            if x >= h {
                below += w;
            } else if x > l {
                below += w * (x - l) / (h - l);
            }
        }
        probit((below / total).clamp(0.001, 0.999)).clamp(-SCORE, SCORE)
    }

    /// `n` rows drawn from the model with `rng`.
    pub fn sample(&self, n: usize, rng: &mut SeededRng) -> Vec<Vec<String>> {
        let numeric: Vec<usize> = (0..self.marginals.len())
            .filter(|&c| matches!(self.marginals[c], Marginal::Numeric { .. }))
            .collect();
        let chol = self.correlations.as_ref().map(|c| cholesky_shrunk(c));
        (0..n)
            .map(|_| {
                let g: Vec<f64> = (0..numeric.len()).map(|_| rng.normal()).collect();
                let g = match &chol {
                    Some(l) => (0..g.len())
                        .map(|i| (0..=i).map(|k| l[i][k] * g[k]).sum())
                        .collect(),
                    None => g,
                };
                self.marginals
                    .iter()
                    .enumerate()
                    .map(|(c, m)| {
                        let u = numeric.iter().position(|&k| k == c).map(|i| phi(g[i]));
                        self.draw(m, u.unwrap_or_else(|| rng.next_f64()), rng)
                    })
                    .collect()
            })
            .collect()
    }

    fn draw(&self, marginal: &Marginal, u: f64, rng: &mut SeededRng) -> String {
        match marginal {
            Marginal::Withheld => self.missing_token.clone(),
            Marginal::Categorical { levels } => {
                let total: f64 = levels.iter().map(|l| l.1).sum();
                let mut at = rng.next_f64() * total;
                for (level, w) in levels {
                    if at < *w {
                        return level.clone();
                    }
                    at -= w;
                }
                levels.last().map_or_else(String::new, |l| l.0.clone())
            }
            Marginal::Numeric {
                missing,
                bins,
                whole,
            } => {
                let present: f64 = bins.iter().map(|b| b.2).sum();
                if present <= 0.0 || rng.next_f64() * (present + missing) < *missing {
                    return self.missing_token.clone();
                }
                let mut at = u * present;
                let (mut x, mut bin) = (0.0, (0.0, 0.0));
                for &(l, h, w) in bins {
                    if at <= w {
                        x = l + (h - l) * (at / w).clamp(0.0, 1.0);
                        bin = (l, h);
                        break;
                    }
                    at -= w;
                }
                // A column nearly all whole (or nearly none) is taken as
                // wholly so: the share is noisy, columns rarely mix.
                let share = (whole / present).clamp(0.0, 1.0);
                let share = if share > 0.95 {
                    1.0
                } else if share < 0.05 {
                    0.0
                } else {
                    share
                };
                if rng.next_f64() < share {
                    // A whole number of the bin, where it has one.
                    let (first, last) = (bin.0.ceil(), (bin.1.ceil() - 1.0).max(bin.0.ceil()));
                    let whole = if first < bin.1 || bin.0 == bin.1 {
                        (first
                            + ((x - bin.0) / (bin.1 - bin.0).max(1e-12) * (last - first + 1.0))
                                .floor())
                        .min(last)
                    } else {
                        x.round()
                    };
                    format!("{whole}")
                } else {
                    format!("{}", (x * 1e4).round() / 1e4)
                }
            }
        }
    }
}

/// The Cholesky factor of `corr` shrunk toward the identity as little as
/// makes it positive definite (noisy correlations need not be).
fn cholesky_shrunk(corr: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let p = corr.len();
    for step in 0..=10 {
        let lambda = f64::from(step) / 10.0;
        let mut l = vec![vec![0.0; p]; p];
        let mut ok = true;
        'outer: for i in 0..p {
            for j in 0..=i {
                let a = if i == j {
                    1.0
                } else {
                    (1.0 - lambda) * corr[i][j]
                };
                let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
                if i == j {
                    let d = a - s;
                    if d <= 1e-9 {
                        ok = false;
                        break 'outer;
                    }
                    l[i][i] = d.sqrt();
                } else {
                    l[i][j] = (a - s) / l[j][j];
                }
            }
        }
        if ok {
            return l;
        }
    }
    (0..p)
        .map(|i| (0..p).map(|j| f64::from(u8::from(i == j))).collect())
        .collect()
}

#[cfg(test)]
#[path = "synthetic_tests.rs"]
mod tests;
