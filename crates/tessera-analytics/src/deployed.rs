//! A query over a deployed federation: the checks every party makes before
//! anything is computed ([`prepare`]), a site's masked input
//! ([`site_vector`]), and the answer from the secure sum
//! ([`deployed_answer`]).
//!
//! **Who computes what.** The coordinator prepares the query (parse, the
//! plan's `per_site`, the agreed schema, the noise's calibration and its
//! fixed-point bound) and checks the ledger's budgets before it sends the
//! query to any site. Each site prepares the same query again from its own
//! copy of the plan, refusing what its plan does not allow, and computes
//! `sigma` itself from the plan's `[analytics]` epsilon and delta and the
//! plan's accountant: no number from the coordinator sets the noise. It adds
//! its share `N(0, sigma² / (t - 1))`, `t` the SecAgg+ threshold of the
//! round (the fewest masked inputs the server may unmask a sum of, checked
//! by the site against the plan), drawn from a key of its own operating
//! system's randomness. The sum of any `s >= t` inputs carries
//! `s · sigma² / (t - 1) >= sigma²` (more than the accountant's `sigma`),
//! and a site that subtracts its own input and share still faces at least
//! `t - 1` shares, `sigma²` in all: the guarantee holds against the summing
//! coordinator and against any one site, however many sites drop.
//!
//! Deployed queries are always summed with secure aggregation (at least
//! [`crate::secure::MIN_SECURE_SITES`] sites): with fewer the coordinator
//! refuses them instead of seeing a site's vector. A `PER SITE` query
//! (where the plan says `per_site = true`; both the coordinator and each
//! site refuse it otherwise) adds each site's own answer: its contribution
//! plus its own full noise `N(0, sigma²)` from a second key of its own
//! ([`site_own_vector`]), a release of its rows alone that the site sends
//! in the clear and that is charged to it as its own event besides the
//! federation's ([`site_own_answer`]).

use tessera_privacy::{AccountantKind, DpEvent, Ledger, calibrate_noise_multiplier_with};

use crate::layout::{Layout, SCALE, Shape, compile, contribute};
use crate::query::{Query, parse};
use crate::run::{MAX_EXACT_NOISE, NOISE_TAIL, finish};
use crate::schema::{Schema, SiteTable};
use crate::{AnalyticsConfig, AnalyticsError, Answer, Release, Report, add_noise_share};

/// A query checked against the plan and compiled against the agreed schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The parsed query.
    pub query: Query,
    /// Its slots and sensitivity.
    pub layout: Layout,
    /// Its privacy (`noise_std` is `sigma` until the answer's is known).
    pub release: Release,
    /// What the ledger is charged, when protected.
    pub event: Option<DpEvent>,
}

/// Parses `text`, refuses it where `config` does not allow it (PER SITE
/// with `per_site = false`, settings out of range), compiles it against
/// `schema`, and calibrates its noise with `accountant` (refused when the
/// fixed point cannot draw it exactly). Nothing is charged.
pub fn prepare(
    text: &str,
    schema: &Schema,
    config: &AnalyticsConfig,
    accountant: AccountantKind,
) -> Result<Prepared, AnalyticsError> {
    let problems = config.problems();
    if !problems.is_empty() {
        return Err(AnalyticsError::Query(problems.join("; ")));
    }
    let query = parse(text)?;
    if query.per_site && !config.per_site {
        return Err(AnalyticsError::Query(
            "PER SITE: the plan does not allow per-site answers ([analytics] per_site = true \
             would)"
                .into(),
        ));
    }
    let layout = compile(
        &query,
        schema,
        Shape {
            quantile_depth: config.quantile_depth,
            sketch_cells: config.sketch_cells,
            public_levels: config.public_levels,
        },
    )?;
    let sensitivity = layout.sensitivity();
    if !config.dp {
        return Ok(Prepared {
            query,
            layout,
            release: Release {
                protected: false,
                epsilon: None,
                delta: None,
                noise_multiplier: None,
                sensitivity,
                sigma: 0.0,
                noise_std: 0.0,
            },
            event: None,
        });
    }
    let z = calibrate_noise_multiplier_with(accountant, 1.0, 1, config.epsilon, config.delta)?;
    let sigma = z * sensitivity;
    if sigma * SCALE * NOISE_TAIL >= MAX_EXACT_NOISE {
        return Err(AnalyticsError::Query(format!(
            "epsilon {} at delta {:e} needs noise multiplier {z:.1} times the answer's \
             sensitivity {sensitivity:.3}, noise std {sigma:.1} row units: past what the \
             fixed point draws exactly ({NOISE_TAIL} std must stay below 2^52 / 2^40 = \
             4096 units, a std below {:.1}); ask for a larger epsilon, or fewer \
             aggregates, bins or quantile-tree levels (the sensitivity grows with the slots \
             a row touches; CLAMP ranges do not change it, values are rescaled to [0, 1])",
            config.epsilon,
            config.delta,
            MAX_EXACT_NOISE / (SCALE * NOISE_TAIL)
        )));
    }
    Ok(Prepared {
        query,
        layout,
        release: Release {
            protected: true,
            epsilon: Some(config.epsilon),
            delta: Some(config.delta),
            noise_multiplier: Some(z),
            sensitivity,
            sigma,
            noise_std: sigma,
        },
        event: Some(DpEvent {
            sampling_rate: 1.0,
            noise_multiplier: z,
            steps: 1,
        }),
    })
}

/// Checks that `prepared`'s release, as release `release` over the sites
/// `names`, fits every budget of `ledger` (the run's, and with PER SITE
/// each site's); the refusal names the budget. An unprotected release
/// charges nothing.
pub fn check_budgets(
    ledger: &Ledger,
    prepared: &Prepared,
    config: &AnalyticsConfig,
    release: u32,
    names: &[String],
) -> Result<(), AnalyticsError> {
    let Some(event) = prepared.event else {
        return Ok(());
    };
    let local: Vec<(String, DpEvent)> = if prepared.query.per_site {
        names.iter().map(|n| (n.clone(), event)).collect()
    } else {
        Vec::new()
    };
    ledger.check(
        &format!(
            "query {release} (epsilon {} at delta {:e})",
            config.epsilon, config.delta
        ),
        &[event],
        &local,
        names,
    )?;
    Ok(())
}

/// The standard deviation of a deployed site's noise share when the round
/// sums at least `threshold` inputs: `sigma / sqrt(threshold - 1)` (the
/// full `sigma` for a threshold below 2, which no valid round has).
pub fn threshold_share_std(sigma: f64, threshold: usize) -> f64 {
    if threshold >= 2 {
        sigma / ((threshold - 1) as f64).sqrt()
    } else {
        sigma
    }
}

/// What a deployed site masks: its contribution to `prepared`'s query over
/// its own rows `table`, plus its noise share for a round of threshold
/// `threshold`, drawn from `key` (32 bytes of the site's own operating
/// system's randomness).
pub fn site_vector(
    prepared: &Prepared,
    schema: &Schema,
    table: &SiteTable,
    threshold: usize,
    key: [u8; 32],
) -> Vec<u64> {
    let mut vector = contribute(&prepared.layout, &prepared.query, schema, table);
    add_noise_share(
        &mut vector,
        threshold_share_std(prepared.release.sigma, threshold),
        key,
    );
    vector
}

/// A site's own answer to a PER SITE query, as it sends it: its
/// contribution over its rows `table` plus its full noise
/// `N(0, sigma²)` drawn from `key` (another 32 bytes of its own operating
/// system's randomness than its share's key).
pub fn site_own_vector(
    prepared: &Prepared,
    schema: &Schema,
    table: &SiteTable,
    key: [u8; 32],
) -> Vec<u64> {
    let mut vector = contribute(&prepared.layout, &prepared.query, schema, table);
    add_noise_share(&mut vector, prepared.release.sigma, key);
    vector
}

/// The answer of `site` from its own vector `values` (refused when its
/// length is not the query's layout's).
pub fn site_own_answer(
    prepared: &Prepared,
    values: &[u64],
    site: &str,
    config: &AnalyticsConfig,
) -> Result<Answer, AnalyticsError> {
    if values.len() != prepared.layout.len() {
        return Err(AnalyticsError::Query(format!(
            "site '{site}' sent {} values for a query of {} slots",
            values.len(),
            prepared.layout.len()
        )));
    }
    Ok(finish(
        &prepared.layout,
        &prepared.query,
        values,
        prepared.release.clone(),
        site,
        config,
    ))
}

/// The federation's answer from the secure sum `sum` of `summed` sites'
/// inputs in a round of threshold `threshold`: its noise is
/// `sqrt(summed) · sigma / sqrt(threshold - 1)` per value.
pub fn deployed_answer(
    prepared: &Prepared,
    sum: &[u64],
    summed: usize,
    threshold: usize,
    config: &AnalyticsConfig,
) -> Answer {
    let mut release = prepared.release.clone();
    release.noise_std =
        threshold_share_std(release.sigma, threshold) * (summed.max(1) as f64).sqrt();
    finish(
        &prepared.layout,
        &prepared.query,
        sum,
        release,
        "federation",
        config,
    )
}

impl Report {
    /// A report from its JSON (as `serde_json` writes it), refused with
    /// what was wrong.
    pub fn from_json(text: &str) -> Result<Report, AnalyticsError> {
        serde_json::from_str(text)
            .map_err(|e| AnalyticsError::Query(format!("the answer does not read as one: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_refuses_per_site_where_its_plan_does_not_allow_it() {
        let schema = Schema {
            columns: vec![crate::Column {
                name: "age".into(),
                kind: crate::ColumnKind::Numeric {
                    bounds: Some((0.0, 120.0)),
                },
                declared_levels: false,
            }],
        };
        let config = AnalyticsConfig::default();
        let e = prepare(
            "SELECT count(*) FROM data PER SITE",
            &schema,
            &config,
            AccountantKind::Rdp,
        )
        .unwrap_err();
        assert!(e.to_string().contains("per_site"), "{e}");
        let p = prepare(
            "SELECT count(*), mean(age) FROM data",
            &schema,
            &config,
            AccountantKind::Rdp,
        )
        .unwrap();
        assert!(p.release.protected && p.release.sigma > 0.0);
        // Three sites, threshold 2: each share is the full sigma.
        assert_eq!(threshold_share_std(p.release.sigma, 2), p.release.sigma);
        assert!(threshold_share_std(p.release.sigma, 5) < p.release.sigma);
    }
}
