//! A store's attribution (`[contribution]` in deployment): each attributed
//! round's values, kept in its record, added up per site over the runs
//! asked for, and each site's reputation from the same runs' cohorts. Read
//! by the coordinator's report (one run) and by `tessera contributions
//! --db` (a run, or every run the store holds: reputation kept across
//! runs).

use std::collections::BTreeMap;

use tessera_engine::Plan;
use tessera_engine::report::{ContributionsReport, RoundContribution, RoundRecord, SiteRecord};

use super::{RunStore, StoreError};

/// The attribution of `runs` of `store`: every attributed round's values
/// added up per site, each site's reliability over the same runs' cohorts,
/// its quality the mean of the scores it released (one a run; none where
/// it released none), the first attributed run's method, utility and
/// value; `None` where no round of them was
/// attributed. A round record that does not read is skipped.
pub fn contributions(
    store: &dyn RunStore,
    runs: &[String],
) -> Result<Option<ContributionsReport>, StoreError> {
    let mut rounds: Vec<RoundContribution> = Vec::new();
    let mut records: BTreeMap<String, SiteRecord> = BTreeMap::new();
    let mut seconds = 0.0;
    let mut quality: BTreeMap<String, (f64, u32)> = BTreeMap::new();
    let mut plan: Option<Plan> = None;
    let rows = store.runs()?;
    for id in runs {
        let lines: Vec<RoundRecord> = store
            .rounds(id)?
            .iter()
            .filter_map(|row| serde_json::from_str(&row.record).ok())
            .collect();
        if lines.iter().all(|r| r.contribution.is_none()) {
            continue;
        }
        for record in lines {
            seconds += record.seconds;
            rounds.extend(record.contribution);
        }
        // Each site's released quality score, as its accepted updates
        // brought it (the first of the run: a site releases it once).
        let mut released: BTreeMap<String, f64> = BTreeMap::new();
        for row in store.audit_log(id)? {
            if (row.action.as_str(), row.outcome.as_str()) != ("update", "accepted") {
                continue;
            }
            let score = row
                .detail
                .split(", ")
                .find_map(|part| part.strip_prefix("quality "))
                .and_then(|q| q.parse::<f64>().ok())
                .filter(|q| (0.0..=1.0).contains(q));
            if let Some(q) = score {
                released.entry(row.site.clone()).or_insert(q);
            }
        }
        for (site, q) in released {
            let e = quality.entry(site).or_insert((0.0, 0));
            e.0 += q;
            e.1 += 1;
        }
        for cohort in store.cohorts(id)? {
            for site in &cohort.cohort {
                let r = records.entry(site.clone()).or_default();
                r.asked += 1;
                if cohort.counted.contains(site) {
                    r.counted += 1;
                }
            }
        }
        if plan.is_none() {
            plan = rows
                .iter()
                .find(|r| &r.id == id)
                .and_then(|r| Plan::from_toml(&r.plan, "the stored plan").ok());
        }
    }
    if rounds.is_empty() {
        return Ok(None);
    }
    // A site's quality: the mean of the scores it released, one a run.
    for (site, (sum, runs)) in quality {
        if let Some(r) = records.get_mut(&site) {
            r.quality = Some(sum / f64::from(runs));
        }
    }
    let config = plan.map(|p| p.contribution).unwrap_or_default();
    let names: Vec<&str> = records.keys().map(String::as_str).collect();
    Ok(Some(
        ContributionsReport::of_rounds(
            config.method.name(),
            config.utility.name(),
            &names,
            rounds,
            seconds,
        )
        .with_reputation(&records, config.quality_epsilon, config.value),
    ))
}
