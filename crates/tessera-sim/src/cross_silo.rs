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
//! Deployment needs the same four messages per pair relayed between sites
//! (plain byte vectors: `MembershipQuery`, `MembershipOffer`, `Reblinded`,
//! `NoisyAnswers`), a matching key the sites share and the coordinator
//! never holds, secrets from each site's operating system, and the charge
//! recorded in the coordinator's ledger; until then `tessera-data` refuses
//! such a plan outside simulation.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tessera_core::derive_key;
use tessera_data::{CrossSiloConfig, DataError, FederatedData, FileSource, SiteIdentifiers};
use tessera_engine::{Plan, streams};
use tessera_privacy::{DpEvent, LedgerEntry, PrivacyMode};
use tessera_psi::{
    MatchingKey, NoisyConfig, NoisyReceiver, NoisySender, Token, ident::token, occurrence_token,
};

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
    if plan.data.cross_silo.is_none() {
        return Ok((tessera_data::load(&plan.data, base_dir, source)?, None));
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
    Ok((data, report))
}

/// Each site's rows as tokens (`None` where the identifier is missing)
/// and its distinct tokens with their row counts.
struct Prepared {
    rows: Vec<Option<usize>>,
    distinct: Vec<(Token, u32)>,
}

fn prepare(key: &MatchingKey, site: &SiteIdentifiers) -> Result<Prepared, DataError> {
    let mut index: BTreeMap<Token, u32> = BTreeMap::new();
    let mut row_tokens = Vec::with_capacity(site.identifiers.len());
    for (row, id) in site.identifiers.iter().enumerate() {
        let t = match id {
            None => None,
            Some(id) => Some(
                token(key, id, row)
                    .map_err(|e| refuse(format!("site '{}', row {}: {e}", site.site, row + 1)))?,
            ),
        };
        if let Some(t) = t {
            *index.entry(t).or_default() += 1;
        }
        row_tokens.push(t);
    }
    let position: BTreeMap<Token, usize> = index.keys().enumerate().map(|(i, t)| (*t, i)).collect();
    Ok(Prepared {
        rows: row_tokens
            .iter()
            .map(|t| t.and_then(|t| position.get(&t).copied()))
            .collect(),
        distinct: index.into_iter().collect(),
    })
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
    let z = if receivers == 0 {
        0.0
    } else {
        tessera_privacy::calibrate_noise_multiplier_with(
            privacy.accountant,
            1.0,
            receivers,
            config.epsilon,
            config.delta,
        )
        .map_err(|e| refuse(e.to_string()))?
    };
    let sigma = z * f64::from(cap).sqrt();
    // Charge every answering site before any answer exists.
    let mut ledger = privacy.ledger();
    if receivers > 0 {
        let event = DpEvent {
            sampling_rate: 1.0,
            noise_multiplier: z,
            steps: receivers,
        };
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
        .map(|s| prepare(&key, s))
        .collect::<Result<Vec<_>, _>>()?;
    let noisy = NoisyConfig::new(sigma);
    let answers = (0..n)
        .into_par_iter()
        .map(|r| {
            let query: Vec<Token> = prepared[r]
                .distinct
                .iter()
                .flat_map(|(t, _)| (0..cap).map(move |k| occurrence_token(t, k)))
                .collect();
            let mut totals = vec![0.0f64; prepared[r].distinct.len()];
            for s in (0..n).filter(|&s| s != r) {
                let held: Vec<Token> = prepared[s]
                    .distinct
                    .iter()
                    .flat_map(|(t, m)| (0..(*m).min(cap)).map(move |k| occurrence_token(t, k)))
                    .collect();
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
                for (total, chunk) in totals.iter_mut().zip(values.chunks(cap as usize)) {
                    *total += chunk.iter().sum::<f64>();
                }
            }
            Ok(prepared[r]
                .rows
                .iter()
                .map(|i| i.map_or(f64::NAN, |i| totals[i]))
                .collect())
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
