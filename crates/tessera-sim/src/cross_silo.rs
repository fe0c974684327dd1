//! `[data.cross_silo]` in simulation: every site learns, for each of its
//! rows, how often the row's identifier occurs at the other sites, through
//! `tessera-psi`'s noisy membership run between every ordered pair of sites
//! in process, each holding site's answers charged to its ledger before
//! any run.
//!
//! The feature of a row at site R is `sum over S != R, k < max_visits of
//! (1{S holds the k-th row of the identifier} + N(0, sigma^2))`, so it
//! counts S's rows of the identifier up to `max_visits` per site. One
//! patient of S changes at most `max_visits` of R's answers by one (S's
//! tokens are distinct): L2 sensitivity `sqrt(max_visits)`, so
//! `sigma = z sqrt(max_visits)` for the noise multiplier `z`. S answers
//! each of the other `n - 1` sites once: its charge is
//! `DpEvent { sampling_rate: 1, noise_multiplier: z, steps: n - 1 }`, with
//! `z` calibrated so that this spends the plan's `epsilon` at its `delta`.
//!
//! Deployed, each site runs the same four messages per pair through the
//! coordinator's relay with secrets from its own operating system
//! (`tessera_participant`'s `cross_silo`), and both the site's ledger and
//! the coordinator's record the charge.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tessera_core::derive_key;
use tessera_data::{CrossSiloConfig, DataError, FederatedData, FileSource, SiteIdentifiers};
use tessera_engine::{Plan, streams};
use tessera_privacy::{LedgerEntry, PrivacyMode};
use tessera_psi::{MatchingKey, NoisyConfig, NoisyReceiver, NoisySender, Visits};

/// What the cross-silo feature cost and how it was made, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossSiloReport {
    /// The identifier column (read, never a feature).
    pub identifier: String,
    /// The feature's name.
    pub feature: String,
    /// Rows of one identifier counted per site.
    pub max_visits: u32,
    /// The epsilon each site spends on the feature, at `delta`.
    pub epsilon: f64,
    /// The delta of `epsilon`.
    pub delta: f64,
    /// The noise multiplier of each answer (sensitivity `sqrt(max_visits)`).
    pub noise_multiplier: f64,
    /// The standard deviation of the noise on each answer.
    pub sigma: f64,
    /// The standard deviation of the noise on a row's feature (all
    /// answers summed: `sigma sqrt(max_visits (n - 1))`).
    pub feature_noise: f64,
    /// Each site's epsilon after the charge, at the plan's privacy delta.
    pub site_epsilon: BTreeMap<String, f64>,
    /// The charges: one entry of kind `cross_silo` per answering site.
    pub ledger: Vec<LedgerEntry>,
    /// `false`: every secret derives from the run seed (an experiment).
    pub release: bool,
}

/// Refusals of the cross-silo feature.
fn refuse(msg: String) -> DataError {
    DataError::Config(format!("cross_silo: {msg}"))
}

/// Reads the plan's data; with `[data.cross_silo]`, computes the feature
/// (charging every site's ledger first, and refusing the plan when that and
/// the plan's central-DP rounds pass a budget) and says what it cost.
pub fn load_data(
    plan: &Plan,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<(FederatedData, Option<CrossSiloReport>), DataError> {
    load_data_with(plan, base_dir, source, false)
}

/// [`load_data`]; `release`: each site's rows before standardisation are
/// released as it is prepared ([`tessera_data::load_releasing`]), for a run
/// that never reads them (with `[data.cross_silo]` they are released after
/// loading: [`FederatedData::release_unstandardised`]).
pub fn load_data_with(
    plan: &Plan,
    base_dir: &Path,
    source: &dyn FileSource,
    release: bool,
) -> Result<(FederatedData, Option<CrossSiloReport>), DataError> {
    if plan.data.cross_silo.is_none() {
        let data = if release {
            tessera_data::load_releasing(&plan.data, base_dir, source)?
        } else {
            tessera_data::load(&plan.data, base_dir, source)?
        };
        return Ok((data, None));
    }
    let mut report = None;
    let data = tessera_data::load_cross_silo(
        &plan.data,
        base_dir,
        source,
        &mut |config: &CrossSiloConfig, sites: &[SiteIdentifiers]| {
            let (values, r) = compute(plan, config, sites)?;
            report = Some(r);
            Ok(values)
        },
    )?;
    let mut data = data;
    if release {
        data.release_unstandardised();
    }
    Ok((data, report))
}

fn compute(
    plan: &Plan,
    config: &CrossSiloConfig,
    sites: &[SiteIdentifiers],
) -> Result<(Vec<Vec<f64>>, CrossSiloReport), DataError> {
    let n = sites.len();
    let cap = config.max_visits;
    let receivers = n.saturating_sub(1) as u64;
    let privacy = &plan.privacy;
    let noise = plan
        .cross_silo_noise(n)
        .map_err(|e| refuse(e.to_string()))?;
    let (z, sigma) = noise.map_or((0.0, 0.0), |(z, sigma, _)| (z, sigma));
    // Charge every answering site before any answer exists.
    let mut ledger = privacy.ledger();
    if let Some((_, _, event)) = noise {
        for s in sites {
            ledger
                .record_participant(
                    0,
                    "cross_silo",
                    &format!(
                        "the cross-silo feature '{}' ('{}' answers {receivers} sites)",
                        config.feature, s.site
                    ),
                    &s.site,
                    event,
                )
                .map_err(|e| refuse(e.to_string()))?;
        }
    }
    if privacy.mode == PrivacyMode::Central {
        let rounds = plan.federation.rounds;
        let z_train = privacy
            .noise_multiplier_for(rounds)
            .map_err(|e| refuse(e.to_string()))?;
        ledger
            .check_central_run(rounds, z_train)
            .map_err(|e| refuse(format!("with the feature's charges, {e}")))?;
    }
    let key = MatchingKey::from_bytes(derive_key(plan.seed, &[streams::CROSS_SILO, 0]));
    let prepared = sites
        .iter()
        .map(|s| {
            Visits::new(&key, &s.identifiers).map_err(|e| refuse(format!("site '{}': {e}", s.site)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let noisy = NoisyConfig::new(sigma);
    let answers = (0..n)
        .into_par_iter()
        .map(|r| {
            let query = prepared[r].query(cap);
            let mut totals = vec![0.0f64; prepared[r].distinct()];
            for s in (0..n).filter(|&s| s != r) {
                let held = prepared[s].held(cap);
                let pair = [r as u64, s as u64];
                let fail = |e: tessera_psi::PsiError| {
                    refuse(format!(
                        "'{}' asking '{}': {e}",
                        sites[r].site, sites[s].site
                    ))
                };
                let r_key = derive_key(plan.seed, &[streams::CROSS_SILO, 1, pair[0], pair[1]]);
                let s_key = derive_key(plan.seed, &[streams::CROSS_SILO, 2, pair[0], pair[1]]);
                let (receiver, q) =
                    NoisyReceiver::start_keyed(noisy, &query, &r_key).map_err(fail)?;
                let (sender, offer) =
                    NoisySender::respond_keyed(noisy, &held, &q, s_key).map_err(fail)?;
                let reblinded = receiver.reblind(&offer).map_err(fail)?;
                let (a, _) = sender.answer(&reblinded).map_err(fail)?;
                let values = receiver.finish(&a).map_err(fail)?;
                prepared[r]
                    .add_answers(&mut totals, &values, cap)
                    .map_err(fail)?;
            }
            Ok(prepared[r].per_row(&totals))
        })
        .collect::<Result<Vec<Vec<f64>>, DataError>>()?;
    let report = CrossSiloReport {
        identifier: config.identifier.clone(),
        feature: config.feature.clone(),
        max_visits: cap,
        epsilon: config.epsilon,
        delta: config.delta,
        noise_multiplier: z,
        sigma,
        feature_noise: sigma * ((u64::from(cap) * receivers) as f64).sqrt(),
        site_epsilon: sites
            .iter()
            .map(|s| (s.site.clone(), ledger.participant_epsilon(&s.site)))
            .collect(),
        ledger: ledger.entries().to_vec(),
        release: false,
    };
    Ok((answers, report))
}
