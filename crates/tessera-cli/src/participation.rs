//! `tessera contributions --db`: each site's participation from a
//! coordinator's run store, across its runs: rounds it was asked to train
//! in and rounds its update counted (reliability), its updates refused and
//! late, its withdrawals, the examples behind its counted updates (where
//! each update was seen alone; under secure aggregation only sums are), and
//! its longest streak of counted rounds (consistency), and the seconds of
//! local training it reported with its counted updates (resources; sites of
//! protocol 1.25 and later, never under secure aggregation). Read from the
//! store's cohorts and audit log only: no model, no data. Where the runs
//! attributed their rounds (`[contribution]`), each site's values added up
//! over them and its reputation follow.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::bail;
use serde::Serialize;
use tessera_coordinator::RunStore;
use tessera_coordinator::store::{AuditRow, CohortRow};

/// One site's participation, over the runs read.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Participation {
    pub site: String,
    /// Runs whose cohorts it was in.
    pub runs: usize,
    /// Rounds it was asked to train in.
    pub asked: u32,
    /// Rounds its update counted in.
    pub counted: u32,
    /// counted / asked (0 when never asked).
    pub reliability: f64,
    /// Updates refused (any reason), of them after the deadline.
    pub rejected: u32,
    pub late: u32,
    /// Withdrawals from a round or the run.
    pub withdrawn: u32,
    /// Training examples behind its counted updates, where the store
    /// shows them (`None`: under secure aggregation, only sums).
    pub examples: Option<u64>,
    /// The longest run of consecutive asked rounds it counted in.
    pub longest_streak: u32,
    /// Seconds of local training it reported with its counted updates
    /// (`None`: it reported none).
    pub train_seconds: Option<f64>,
}

/// The table's rows, by site, over `runs` of `store` (all runs where
/// `None`), and the runs read.
pub fn from_store(
    store: &dyn RunStore,
    run: Option<&str>,
) -> anyhow::Result<(Vec<String>, Vec<Participation>)> {
    let runs: Vec<String> = store
        .runs()?
        .into_iter()
        .map(|r| r.id)
        .filter(|id| run.is_none_or(|r| r == id))
        .collect();
    if let Some(run) = run
        && runs.is_empty()
    {
        bail!("the store has no run '{run}' (tessera runs --db lists them)");
    }
    let mut sites: BTreeMap<String, Participation> = BTreeMap::new();
    for id in &runs {
        add_run(&mut sites, &store.cohorts(id)?, &store.audit_log(id)?);
    }
    Ok((runs, rows(sites)))
}

/// Adds one run's participation, from its `cohorts` and `audit` log, to
/// `sites`.
pub fn add_run(
    sites: &mut BTreeMap<String, Participation>,
    cohorts: &[CohortRow],
    audit: &[AuditRow],
) {
    let mut streak: BTreeMap<String, u32> = BTreeMap::new();
    let mut seen: std::collections::BTreeSet<String> = Default::default();
    for row in cohorts {
        for site in &row.cohort {
            let p = sites.entry(site.clone()).or_insert_with(|| Participation {
                site: site.clone(),
                ..Default::default()
            });
            if seen.insert(site.clone()) {
                p.runs += 1;
            }
            p.asked += 1;
            let s = streak.entry(site.clone()).or_default();
            if row.counted.contains(site) {
                p.counted += 1;
                *s += 1;
                p.longest_streak = p.longest_streak.max(*s);
            } else {
                *s = 0;
            }
        }
    }
    for row in audit {
        let Some(p) = sites.get_mut(&row.site) else {
            continue;
        };
        match (row.action.as_str(), row.outcome.as_str()) {
            ("update", "accepted") => {
                let n = figure::<u64>(&row.detail, " examples");
                if let Some(n) = n {
                    p.examples = Some(p.examples.unwrap_or(0).saturating_add(n));
                }
            }
            ("update", "rejected") => {
                p.rejected += 1;
                if row.detail.contains("after the round's deadline") {
                    p.late += 1;
                }
            }
            ("withdraw", _) => p.withdrawn += 1,
            ("resources", "reported") => {
                let seconds = figure::<f64>(&row.detail, " s training")
                    .filter(|s| s.is_finite() && *s >= 0.0);
                if let Some(s) = seconds {
                    p.train_seconds = Some(p.train_seconds.unwrap_or(0.0) + s);
                }
            }
            _ => {}
        }
    }
}

/// The figure of an audit detail "round R, FIGURE`unit`" (the accepted
/// update's examples, the reported training seconds).
fn figure<T: std::str::FromStr>(detail: &str, unit: &str) -> Option<T> {
    detail
        .split(", ")
        .nth(1)
        .and_then(|s| s.strip_suffix(unit))
        .and_then(|s| s.parse().ok())
}

/// The sites' rows, by name, with their reliability.
pub fn rows(sites: BTreeMap<String, Participation>) -> Vec<Participation> {
    let mut rows: Vec<Participation> = sites.into_values().collect();
    for p in &mut rows {
        p.reliability = if p.asked == 0 {
            0.0
        } else {
            f64::from(p.counted) / f64::from(p.asked)
        };
    }
    rows
}

/// Prints the table (or JSON) for the store at `db`.
pub fn print(db: &Path, run: Option<&str>, json: bool) -> anyhow::Result<()> {
    if !db.exists() {
        bail!("{}: no such run store", db.display());
    }
    let store = tessera_coordinator::SqliteStore::open_existing(db)?;
    let (runs, rows) = from_store(&store, run)?;
    // Deployed attribution: the runs' attributed rounds added up, with
    // reputation over the same runs.
    let attribution = tessera_coordinator::store::contributions::contributions(&store, &runs)?;
    if json {
        let doc = serde_json::json!({
            "db": db, "runs": runs, "sites": rows, "contributions": attribution
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "{}: participation over {} run(s): {}",
        db.display(),
        runs.len(),
        tessera_core::shown(&runs.join(", "), 200)
    );
    println!(
        "{:<24} {:>4} {:>6} {:>7} {:>11} {:>8} {:>5} {:>9} {:>9} {:>7} {:>9}",
        "site",
        "runs",
        "asked",
        "counted",
        "reliability",
        "rejected",
        "late",
        "withdrawn",
        "examples",
        "streak",
        "train s"
    );
    for p in &rows {
        println!(
            "{:<24} {:>4} {:>6} {:>7} {:>11.3} {:>8} {:>5} {:>9} {:>9} {:>7} {:>9}",
            tessera_core::shown(&p.site, 24),
            p.runs,
            p.asked,
            p.counted,
            p.reliability,
            p.rejected,
            p.late,
            p.withdrawn,
            p.examples.map_or("-".into(), |n| n.to_string()),
            p.longest_streak,
            p.train_seconds.map_or("-".into(), |s| format!("{s:.3}"))
        );
    }
    println!(
        "reliability = rounds counted / rounds asked; examples: where each update was seen \
         alone (- under secure aggregation); streak: the longest run of asked rounds counted; \
         train s: local training seconds the site reported with its counted updates"
    );
    if let Some(c) = &attribution {
        println!();
        println!(
            "attribution over {} attributed round(s) of these runs, by {} ({} utility), {:.1}% \
             of the rounds' time",
            c.rounds.len(),
            c.method,
            c.utility,
            100.0 * c.cost
        );
        crate::contributions::print_table(c);
    }
    Ok(())
}
