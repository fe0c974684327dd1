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
/// no quality (deployed sites release none yet), the first attributed
/// run's method, utility and value; `None` where no round of them was
/// attributed. A round record that does not read is skipped.
pub fn contributions(
    store: &dyn RunStore,
    runs: &[String],
) -> Result<Option<ContributionsReport>, StoreError> {
    let mut rounds: Vec<RoundContribution> = Vec::new();
    let mut records: BTreeMap<String, SiteRecord> = BTreeMap::new();
    let mut seconds = 0.0;
    let mut plan: Option<Plan> = None;
    let rows = store.runs()?;
    for id in runs {
        let before = rounds.len();
        for row in store.rounds(id)? {
            let Ok(record) = serde_json::from_str::<RoundRecord>(&row.record) else {
                continue;
            };
            seconds += record.seconds;
            rounds.extend(record.contribution);
        }
        if rounds.len() == before {
            continue;
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
        .with_reputation(&records, 0.0, config.value),
    ))
}
