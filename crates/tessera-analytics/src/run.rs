//! Answering a query over a federation in simulation: each site's
//! contribution, its share of the noise, the sum, the ledger's charge, and
//! the estimates.
//!
//! **Summing.** Contributions are vectors in `Z_2^64` (fixed point). The
//! federation's sum goes through one SecAgg+ round of `tessera-secagg`
//! (see [`crate::secure`]: 16-bit limbs in its `Z_2^32`), run in process
//! in simulation; with fewer than three sites it is summed in the clear
//! ([`Report::secure_aggregation`] says which). Each PER SITE answer is
//! that site's own vector with its own full noise.
//!
//! **Noise.** The answer needs at least `N(0, sigma²)` per slot,
//! `sigma = z · Δ` (`Δ` the vector's L2 sensitivity, `z` the noise
//! multiplier calibrated for the query's epsilon and delta), and it must
//! hold against the parties who see more than the answer: a site, which
//! knows its own contribution and its own share of the noise, and the
//! party that sums.
//!
//! - With secure aggregation (`m >= 3` sites), each site adds its own share
//!   `N(0, sigma² / (m - 1))` before masking. The summing party sees only
//!   the sum; a site that subtracts its own vector and share still faces the
//!   other `m - 1` shares, `sigma²` in all; so the guarantee holds against
//!   any one site (one colluding party). The answer carries
//!   `sigma² · m / (m - 1)`, more than the accountant's `sigma` (which is
//!   conservative: the ledger charges as if only `sigma` were there).
//! - Summed in the clear (fewer than three sites), the summing party sees
//!   each site's noisy vector, so each site adds the full `sigma²` on its
//!   own; the answer carries `m · sigma²`.
//!
//! [`Release::noise_std`] is the answer's actual noise per value, and its
//! error bars come from it. Caveat: a site that drops after the others have
//! masked takes its share with it; deployment must either require every
//! site's vector or have each add `sigma² / (t - 1)` for the smallest number
//! `t` of sites it will accept.
//!
//! **Keys.** In simulation every site's share and secure aggregation's
//! secrets derive (SHA-256) from the settings' 32-byte noise key, the
//! release number, the site and the query's text. `tessera analyze` draws
//! that key from the operating system for each answer, so that nothing in
//! the store or the plan reproduces the noise; [`Settings::seeded`] derives
//! it from a public seed instead, for tests and experiments, and such an
//! answer says so ([`Report::experiment`]): it is not a release.

use serde::{Deserialize, Serialize};
use tessera_privacy::{Ledger, LedgerEntry};

use crate::estimate::{GroupAnswer, estimate};
use crate::layout::{Layout, MAX_ROWS, SCALE, contribute};
use crate::query::Query;
use crate::schema::{Schema, SiteTable};
use crate::secure::{MIN_SECURE_SITES, secure_sum};
use crate::{AnalyticsConfig, AnalyticsError};

/// The privacy of one release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// Whether noise protects it; `false` is an unprotected release.
    pub protected: bool,
    /// The epsilon asked for (at `delta`), when protected.
    pub epsilon: Option<f64>,
    /// The delta.
    pub delta: Option<f64>,
    /// `sigma / sensitivity`.
    pub noise_multiplier: Option<f64>,
    /// The vector's L2 sensitivity (in row units).
    pub sensitivity: f64,
    /// The calibrated noise standard deviation per value, `z · Δ`: what
    /// the accountant charges for (0 when unprotected).
    pub sigma: f64,
    /// The answer's actual noise standard deviation per value (at least
    /// `sigma`: see the module's note); its error bars come from it.
    pub noise_std: f64,
}

/// One answer: the federation's, or one site's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// `federation`, or the site's name.
    pub scope: String,
    /// The GROUP BY columns.
    pub group_by: Vec<String>,
    /// Its privacy.
    pub release: Release,
    /// Every group of the agreed vocabularies, in order.
    pub groups: Vec<GroupAnswer>,
}

/// What a query gave: the federation's answer (then each site's, with PER
/// SITE) and the ledger lines it was charged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The query as given.
    pub query: String,
    /// The answers.
    pub answers: Vec<Answer>,
    /// The ledger lines (none for an unprotected release).
    pub ledger: Vec<LedgerEntry>,
    /// Whether the federation's sum went through secure aggregation (at
    /// least three sites; fewer are summed in the clear).
    pub secure_aggregation: bool,
    /// With a seeded noise key: that the answer is reproducible from the
    /// seed, an experiment and not a release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
}

/// Standard deviations of noise that must stay within [`MAX_EXACT_NOISE`].
pub(crate) const NOISE_TAIL: f64 = 9.0;

/// `2^52`: below it a fixed-point noise value `std · N · 2^40` is an
/// integer that `f64` rounds exactly (every low bit random); above `2^53`
/// it would always be even and give away the parity of the sums, and above
/// `2^63` saturate. A query whose noise std times `2^40` times
/// [`NOISE_TAIL`] reaches it is refused before it runs.
pub(crate) const MAX_EXACT_NOISE: f64 = 4_503_599_627_370_496.0;

/// How a query is answered: the plan's `[analytics]` with the command
/// line's overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The plan's table.
    pub config: AnalyticsConfig,
    /// The secret the simulated sites' noise shares and secure
    /// aggregation's secrets derive from (32 bytes of the operating
    /// system's randomness, or [`Settings::seeded`]).
    pub noise_key: [u8; 32],
    /// The public seed `noise_key` was derived from, when it was: the
    /// answer is then reproducible by anyone who knows it.
    pub seed: Option<u64>,
}

impl Settings {
    /// Settings whose noise derives from `key`, a secret drawn from the
    /// operating system's randomness.
    pub fn secret(config: AnalyticsConfig, key: [u8; 32]) -> Self {
        Self {
            config,
            noise_key: key,
            seed: None,
        }
    }

    /// Settings whose noise derives from a public seed: reproducible, for
    /// tests and experiments only (the answers say so).
    pub fn seeded(config: AnalyticsConfig, seed: u64) -> Self {
        Self {
            config,
            noise_key: subkey(&[0; 32], &[b"analytics-seed", &seed.to_le_bytes()]),
            seed: Some(seed),
        }
    }
}

/// SHA-256 of `key` and `parts`, each part prefixed by its length.
pub(crate) fn subkey(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"tessera-analytics");
    h.update(key);
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// Compiles `text`, checks that its release fits every budget of `ledger`,
/// answers it over `sites` and charges it as release `release`.
///
/// The charge is row-level (one row added or removed; see the crate's
/// note), goes to `ledger` only (the caller persists it, or nothing
/// accumulates), and is refused only where `ledger` has a budget; an
/// unprotected answer (`dp = false`) charges nothing.
pub fn answer(
    text: &str,
    schema: &Schema,
    sites: &[SiteTable],
    settings: &Settings,
    ledger: &mut Ledger,
    release: u32,
) -> Result<Report, AnalyticsError> {
    let config = &settings.config;
    let prepared = crate::deployed::prepare(text, schema, config, ledger.accountant())?;
    let rows: usize = sites.iter().map(|s| s.rows).sum();
    if rows > MAX_ROWS {
        return Err(AnalyticsError::Query(format!(
            "the federation has {rows} rows, more than the {MAX_ROWS} a query may read"
        )));
    }
    let names: Vec<String> = sites.iter().map(|s| s.site.clone()).collect();
    crate::deployed::check_budgets(ledger, &prepared, config, release, &names)?;
    let crate::deployed::Prepared {
        query,
        layout,
        release: release_info,
        event,
    } = prepared;
    let sigma = release_info.sigma;
    let contributions: Vec<Vec<u64>> = sites
        .iter()
        .map(|s| contribute(&layout, &query, schema, s))
        .collect();
    let share = share_std(sigma, sites.len());
    let noisy: Vec<Vec<u64>> = sites
        .iter()
        .zip(&contributions)
        .map(|(site, c)| {
            let mut noisy = c.clone();
            add_noise(
                &mut noisy,
                share,
                (&settings.noise_key, release, text),
                &site.site,
                0,
            );
            noisy
        })
        .collect();
    let (total, secure) = secure_sum(&noisy, release, &settings.noise_key)?;
    let mut federation = release_info.clone();
    federation.noise_std = answer_noise_std(sigma, sites.len());
    let mut answers = vec![finish(
        &layout,
        &query,
        &total,
        federation,
        "federation",
        config,
    )];
    if query.per_site {
        for (site, c) in sites.iter().zip(&contributions) {
            let mut noisy = c.clone();
            add_noise(
                &mut noisy,
                sigma,
                (&settings.noise_key, release, text),
                &site.site,
                1,
            );
            answers.push(finish(
                &layout,
                &query,
                &noisy,
                release_info.clone(),
                &site.site,
                config,
            ));
        }
    }
    let mut entries = Vec::new();
    if let Some(event) = event {
        entries.push(ledger.record_central(release, event, &names)?.clone());
        if query.per_site {
            for name in &names {
                entries.push(ledger.record_local(release, name, event)?.clone());
            }
        }
    }
    Ok(Report {
        query: text.to_string(),
        answers,
        ledger: entries,
        secure_aggregation: secure,
        experiment: settings.seed.map(|seed| {
            format!(
                "the noise derives from the public seed {seed}: this answer is reproducible from \
                 it, an experiment and not a private release"
            )
        }),
    })
}

pub(crate) fn finish(
    layout: &Layout,
    query: &Query,
    total: &[u64],
    release: Release,
    scope: &str,
    config: &AnalyticsConfig,
) -> Answer {
    let sums: Vec<f64> = total.iter().map(|&v| v as i64 as f64 / SCALE).collect();
    Answer {
        scope: scope.to_string(),
        group_by: query.group_by.clone(),
        groups: estimate(layout, &sums, release.noise_std, config.min_group),
        release,
    }
}

/// The standard deviation of each site's noise share for an answer that
/// needs `sigma` over `sites` sites: `sigma / sqrt(m - 1)` under secure
/// aggregation (`m >= 3`), so that the others' shares give `sigma` against
/// any one site; the full `sigma` when summed in the clear.
pub fn share_std(sigma: f64, sites: usize) -> f64 {
    if sites >= MIN_SECURE_SITES {
        sigma / ((sites - 1) as f64).sqrt()
    } else {
        sigma
    }
}

/// The federation's answer's actual noise standard deviation per value:
/// `sigma · sqrt(m / (m - 1))` under secure aggregation, `sigma · sqrt(m)`
/// summed in the clear (at least `sigma` either way).
pub fn answer_noise_std(sigma: f64, sites: usize) -> f64 {
    share_std(sigma, sites) * (sites.max(1) as f64).sqrt()
}

/// The noise share (fixed point, `dim` values) that site `site` adds to
/// the federation's answer to `query` as release `release`, drawn as
/// [`answer`] draws it with `settings` over `sites` sites: for checking
/// what one site knows of the noise (tests and simulation).
pub fn simulated_share(
    settings: &Settings,
    release: u32,
    query: &str,
    site: &str,
    sites: usize,
    sigma: f64,
    dim: usize,
) -> Vec<u64> {
    let mut share = vec![0u64; dim];
    add_noise(
        &mut share,
        share_std(sigma, sites),
        (&settings.noise_key, release, query),
        site,
        0,
    );
    share
}

/// Adds `N(0, std²)` in fixed point to each slot, from the site's
/// generator keyed (SHA-256) by the noise key, the release, the site and
/// the query's text, so that two queries never share noise.
fn add_noise(values: &mut [u64], std: f64, key: (&[u8; 32], u32, &str), site: &str, purpose: u64) {
    let (secret, release, text) = key;
    let text_hash = subkey(&[0; 32], &[text.as_bytes()]);
    let key = subkey(
        secret,
        &[
            b"analytics-noise",
            &release.to_le_bytes(),
            site.as_bytes(),
            &purpose.to_le_bytes(),
            &text_hash,
        ],
    );
    add_noise_share(values, std, key);
}

/// A site's share of an answer's noise: adds `N(0, std²)`, in the
/// contribution's fixed point, to each value, from a generator keyed with
/// `key`. A deployed site keys it with 32 bytes of its own secret
/// randomness (the operating system's) and uses [`share_std`] (see the
/// module's note on insiders and dropouts).
pub fn add_noise_share(values: &mut [u64], std: f64, key: [u8; 32]) {
    if std == 0.0 {
        return;
    }
    let mut noise = tessera_privacy::GaussianNoise::new(key, 0);
    for v in values {
        let n = (std * noise.standard_normal() * SCALE).round() as i64;
        *v = v.wrapping_add(n as u64);
    }
}
