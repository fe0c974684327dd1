//! Attribution of a federation's model to its sites.
//!
//! A *utility* gives a number for every set of sites: the validation
//! accuracy of the model their updates make, say. The Shapley value of a
//! site is its marginal contribution to the utility, averaged over every
//! order in which the sites could join (Shapley 1953); leave-one-out is
//! what the whole federation loses without it. Exact Shapley values need
//! the utility of all 2^n sets ([`exact_shapley`], for small federations
//! and for checking); [`gtg_shapley`] estimates them from sampled orders
//! as GTG-Shapley does (Liu, Chen, Lyu, Xing and Ye, 2022, "GTG-Shapley:
//! Efficient and Accurate Participant Contribution Evaluation in Federated
//! Learning"): each site leads equally many orders (guided sampling), an
//! order stops counting once its prefix is within a truncation threshold
//! of the whole federation's utility (within-round truncation), a round
//! whose whole federation gains less than a threshold over the empty set
//! is skipped (between-round truncation), and sampling stops once the
//! estimates settle. Every set's utility is computed once
//! ([`Memo`]).
//!
//! Sets of sites are bit masks (`u64`: bit `i` for site `i`), so a
//! federation has at most [`MAX_SITES`] sites here.

#![deny(missing_docs)]

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tessera_core::SeededRng;

/// Most sites a set holds (bits of a `u64`).
pub const MAX_SITES: usize = 63;

/// Most sites [`exact_shapley`] enumerates (2^20 sets).
pub const MAX_EXACT: usize = 20;

/// What went wrong attributing.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ContributionError {
    /// A setting or a federation size out of range.
    #[error("attribution: {0}")]
    Config(String),
    /// The utility gave something that is not a number.
    #[error("attribution: the utility of {set} is {value}, not a finite number")]
    NotFinite {
        /// The set, as its sites' indices.
        set: String,
        /// What it gave.
        value: f64,
    },
}

/// A utility with every set's value computed once.
pub struct Memo<'a> {
    utility: &'a mut dyn FnMut(u64) -> f64,
    seen: HashMap<u64, f64, BuildMix>,
}

/// Hashes a set by mixing its bits (SplitMix64's finaliser): sets are
/// looked up thousands of times a round, and need no defence against
/// chosen keys (the sets are the sampler's own).
#[derive(Default, Clone, Copy)]
struct BuildMix;

impl std::hash::BuildHasher for BuildMix {
    type Hasher = Mix;
    fn build_hasher(&self) -> Mix {
        Mix(0)
    }
}

/// [`BuildMix`]'s hasher.
struct Mix(u64);

impl std::hash::Hasher for Mix {
    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
}

impl<'a> Memo<'a> {
    /// `utility` (of a set as a bit mask), remembered.
    pub fn new(utility: &'a mut dyn FnMut(u64) -> f64) -> Self {
        Self {
            utility,
            seen: HashMap::default(),
        }
    }

    /// The utility of `set`; refused where it is not finite.
    pub fn value(&mut self, set: u64) -> Result<f64, ContributionError> {
        if let Some(v) = self.seen.get(&set) {
            return Ok(*v);
        }
        let v = (self.utility)(set);
        if !v.is_finite() {
            return Err(ContributionError::NotFinite {
                set: members(set),
                value: v,
            });
        }
        self.seen.insert(set, v);
        Ok(v)
    }

    /// How many sets' utilities were computed.
    pub fn evaluations(&self) -> usize {
        self.seen.len()
    }
}

fn members(set: u64) -> String {
    let sites: Vec<String> = (0..64)
        .filter(|i| set & (1 << i) != 0)
        .map(|i| i.to_string())
        .collect();
    format!("{{{}}}", sites.join(", "))
}

fn check_sites(n: usize, most: usize) -> Result<(), ContributionError> {
    if n == 0 || n > most {
        return Err(ContributionError::Config(format!(
            "a federation of {n} sites: 1 to {most} here"
        )));
    }
    Ok(())
}

/// The whole federation of `n` sites as a set.
pub fn everyone(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// Every site's exact Shapley value: `Σ_S |S|! (n-|S|-1)! / n! (v(S ∪ i)
/// - v(S))` over the sets `S` without `i`, from the utility of all 2^n
/// sets. They add up to `v(all) - v(none)` (efficiency).
pub fn exact_shapley(n: usize, utility: &mut Memo<'_>) -> Result<Vec<f64>, ContributionError> {
    check_sites(n, MAX_EXACT)?;
    // weight[k] = k! (n-k-1)! / n! = 1 / (n * C(n-1, k)).
    let mut weight = vec![0.0f64; n];
    let mut choose = 1.0f64;
    for (k, w) in weight.iter_mut().enumerate() {
        *w = 1.0 / (n as f64 * choose);
        choose = choose * (n - 1 - k) as f64 / (k + 1) as f64;
    }
    let mut values = vec![0.0f64; n];
    for set in 0..=everyone(n) {
        let v = utility.value(set)?;
        let size = set.count_ones() as usize;
        for (i, value) in values.iter_mut().enumerate() {
            let bit = 1u64 << i;
            if set & bit == 0 {
                continue;
            }
            // v(S) with i, against S = set without i (|S| = size - 1).
            *value += weight[size - 1] * (v - utility.value(set & !bit)?);
        }
    }
    Ok(values)
}

/// Every site's leave-one-out value: `v(all) - v(all without i)`.
pub fn leave_one_out(n: usize, utility: &mut Memo<'_>) -> Result<Vec<f64>, ContributionError> {
    check_sites(n, MAX_SITES)?;
    let all = everyone(n);
    let whole = utility.value(all)?;
    (0..n)
        .map(|i| Ok(whole - utility.value(all & !(1 << i))?))
        .collect()
}

/// GTG-Shapley's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GtgConfig {
    /// Between-round truncation: a round whose whole federation gains at
    /// most this much utility over the empty set attributes nothing.
    pub round_truncation: f64,
    /// Within-round truncation: an order stops counting once a prefix of
    /// at least one site is within this much of the whole federation's
    /// utility. The rest of the order then adds at most this much in total,
    /// and each of its sites is counted as adding nothing (where sites harm
    /// the model, a site's own share of the rest is not bounded so).
    pub truncation: f64,
    /// Stop once every estimate's standard error (over pairs of an order
    /// and its reverse) is at most this fraction of the whole federation's
    /// gain.
    pub convergence: f64,
    /// Most orders sampled (at least 2), rounded up to whole cycles of
    /// `2n` orders (every site leading one pair), so that no site leads
    /// more often than another.
    pub max_orders: usize,
    /// The seed of the orders' sampling.
    pub seed: u64,
}

impl Default for GtgConfig {
    fn default() -> Self {
        Self {
            round_truncation: 1e-6,
            truncation: 1e-4,
            convergence: 0.002,
            max_orders: 2000,
            seed: 0,
        }
    }
}

/// Estimated Shapley values and what they cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Each site's estimate.
    pub values: Vec<f64>,
    /// Orders sampled (0 where the round was truncated).
    pub orders: usize,
    /// Sets whose utility was computed.
    pub evaluations: usize,
}

/// GTG-Shapley's estimate of every site's Shapley value (see the crate's
/// documentation), from orders sampled in pairs: a guided order and its
/// reverse (antithetic sampling, which GTG-Shapley does not use).
pub fn gtg_shapley(
    n: usize,
    utility: &mut Memo<'_>,
    config: &GtgConfig,
) -> Result<Estimate, ContributionError> {
    check_sites(n, MAX_SITES)?;
    for (name, v) in [
        ("round_truncation", config.round_truncation),
        ("truncation", config.truncation),
        ("convergence", config.convergence),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(ContributionError::Config(format!(
                "{name} must be a number at least 0, got {v}"
            )));
        }
    }
    if config.max_orders < 2 {
        return Err(ContributionError::Config(format!(
            "max_orders must be at least 2 (an order and its reverse), got {}",
            config.max_orders
        )));
    }
    // Whole cycles of n pairs: every site leads equally often.
    let max_pairs = (config.max_orders / 2).div_ceil(n) * n;
    let all = everyone(n);
    let (none, whole) = (utility.value(0)?, utility.value(all)?);
    let gain = whole - none;
    if gain.abs() <= config.round_truncation {
        return Ok(Estimate {
            values: vec![0.0; n],
            orders: 0,
            evaluations: utility.evaluations(),
        });
    }
    let mut rng = SeededRng::new(config.seed);
    // Each pair of orders (one and its reverse) gives every site one
    // sample, the mean of its two marginal contributions; Welford's running
    // mean and squared deviations of the samples.
    let mut mean = vec![0.0f64; n];
    let mut m2 = vec![0.0f64; n];
    let mut pairs = 0usize;
    let mut orders = 0;
    while pairs < max_pairs {
        // Guided: site `pairs mod n` leads, the others follow at random.
        let lead = pairs % n;
        let mut order: Vec<usize> = (0..n).filter(|&i| i != lead).collect();
        rng.shuffle(&mut order);
        order.insert(0, lead);
        let mut sample = vec![0.0f64; n];
        for _ in 0..2 {
            let (mut prefix, mut before) = (0u64, none);
            for &i in &order {
                if prefix != 0 && (whole - before).abs() < config.truncation {
                    break;
                }
                prefix |= 1 << i;
                let after = utility.value(prefix)?;
                sample[i] += (after - before) / 2.0;
                before = after;
            }
            // Antithetic: the same order reversed, which cancels much of
            // a contribution's dependence on how many came before.
            order.reverse();
            orders += 1;
        }
        pairs += 1;
        for i in 0..n {
            let delta = sample[i] - mean[i];
            mean[i] += delta / pairs as f64;
            m2[i] += delta * (sample[i] - mean[i]);
        }
        // Settled, at the end of a cycle: every estimate's standard error is
        // at most `convergence` of the whole gain (after every site led at
        // least twice).
        if pairs >= 2 * n && pairs.is_multiple_of(n) {
            let largest = m2
                .iter()
                .map(|m| (m / (pairs - 1) as f64 / pairs as f64).sqrt())
                .fold(0.0f64, f64::max);
            if largest <= config.convergence * gain.abs() {
                break;
            }
        }
    }
    Ok(Estimate {
        values: mean,
        orders,
        evaluations: utility.evaluations(),
    })
}

/// Spearman's rank correlation of `a` and `b` (average ranks for ties);
/// `None` where they differ in length, have fewer than two values, hold
/// a value that is not a number, or one is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 || a.iter().chain(b).any(|v| !v.is_finite()) {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let mean = (a.len() as f64 + 1.0) / 2.0;
    let (mut num, mut da, mut db) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        num += (x - mean) * (y - mean);
        da += (x - mean).powi(2);
        db += (y - mean).powi(2);
    }
    (da > 0.0 && db > 0.0).then(|| num / (da * db).sqrt())
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut ranks = vec![0.0; v.len()];
    let mut k = 0;
    while k < order.len() {
        let mut end = k;
        while end + 1 < order.len() && v[order[end + 1]] == v[order[k]] {
            end += 1;
        }
        let rank = (k + end) as f64 / 2.0 + 1.0;
        for &i in &order[k..=end] {
            ranks[i] = rank;
        }
        k = end + 1;
    }
    ranks
}
