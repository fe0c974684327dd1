//! What a debug bundle (`tessera debug-bundle`) shows of this site's
//! ledger: per plan, how many releases of each kind, in how many runs and
//! when, and, under a plan given, the site's epsilon against its budgets.
//! No query's hash, no release's number, nothing of the data.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use tessera_engine::Plan;

use super::{SiteLedger, read};

/// A site's ledger, summarised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerSummary {
    /// The file's format.
    pub format: String,
    /// Per plan the ledger counts releases under, by the plan's hash.
    pub plans: Vec<PlanSummary>,
}

/// One plan's releases of this site's data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanSummary {
    /// The plan's hash (SHA-256 of its canonical TOML).
    pub hash: String,
    /// The plan's name.
    pub name: String,
    /// Releases by kind (`training`, `analytics`, `profile`, ...).
    pub releases: BTreeMap<String, usize>,
    /// Of them, releases with differential privacy.
    pub dp_releases: usize,
    /// Runs they were made in.
    pub runs: usize,
    /// The first and last release's time, seconds since the Unix epoch.
    pub first_recorded: u64,
    /// See `first_recorded`.
    pub last_recorded: u64,
    /// Under the plan given to [`summary`]: this site's epsilon, all runs,
    /// at the plan's delta.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// Under the plan given: the delta of `epsilon`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    /// Under the plan given: the budget this site's releases may not pass
    /// (the site's own where the plan names one, else the run's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<f64>,
}

/// `site`'s ledger at `path`, summarised (`None`: there is no file);
/// with `plan`, its entry carries the site's epsilon and budget. Refused
/// as the participant refuses the file: too large, another format, another
/// site's.
pub fn summary(
    path: &Path,
    site: &str,
    plan: Option<&Plan>,
) -> Result<Option<LedgerSummary>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let file = read(path, site)?;
    let given = plan.map(tessera_engine::model_file::plan_hash);
    let mut plans = Vec::new();
    for (hash, entries) in &file.plans {
        let mut releases: BTreeMap<String, usize> = BTreeMap::new();
        for e in &entries.entries {
            *releases.entry(e.kind.clone()).or_default() += 1;
        }
        let runs: std::collections::BTreeSet<&str> =
            entries.entries.iter().map(|e| e.run.as_str()).collect();
        let times = entries.entries.iter().map(|e| e.recorded);
        let mut summary = PlanSummary {
            hash: hash.clone(),
            name: entries.name.clone(),
            releases,
            dp_releases: entries.entries.iter().filter(|e| e.entry.is_some()).count(),
            runs: runs.len(),
            first_recorded: times.clone().min().unwrap_or(0),
            last_recorded: times.max().unwrap_or(0),
            epsilon: None,
            delta: None,
            budget: None,
        };
        if let (Some(plan), Some(given)) = (plan, &given)
            && given == hash
        {
            spend(&mut summary, path, site, plan)?;
        }
        plans.push(summary);
    }
    // The plan given, before its first release: nothing spent yet.
    if let (Some(plan), Some(given)) = (plan, given)
        && !file.plans.contains_key(&given)
    {
        let mut summary = PlanSummary {
            hash: given,
            name: plan.name.clone(),
            releases: BTreeMap::new(),
            dp_releases: 0,
            runs: 0,
            first_recorded: 0,
            last_recorded: 0,
            epsilon: None,
            delta: None,
            budget: None,
        };
        spend(&mut summary, path, site, plan)?;
        plans.push(summary);
    }
    Ok(Some(LedgerSummary {
        format: file.format,
        plans,
    }))
}

/// Fills `summary`'s epsilon, delta and budget: `site`'s spend under
/// `plan` by the ledger at `path`, as the participant counts it.
fn spend(summary: &mut PlanSummary, path: &Path, site: &str, plan: &Plan) -> Result<(), String> {
    let ledger = SiteLedger::open(Some(path), site, plan, "debug-bundle")?;
    let budgets = ledger.ledger.budgets();
    summary.epsilon = Some(ledger.epsilon());
    summary.delta = Some(budgets.delta);
    summary.budget = budgets.participants.get(site).copied().or(budgets.run);
    Ok(())
}
