//! A federated dry run (`tessera dry-run`): the plan's sites join and take
//! their data through the data agreement (schema, kinds, levels,
//! statistics), and the run ends there, before any model is trained. It
//! passes once the agreement is reached; it fails at the first site that
//! withdraws (its reason, as the site gave it, is in the audit log), or
//! when its wait is over with sites missing. The outcome is audited as
//! `dry-run` and the run ends `finished` (passed) or `stopped` (failed).

use std::time::Duration;

use tessera_core::Timestamp;

use super::{Federation, Phase};
use crate::store::RunStatus;

/// A dry run in progress.
#[derive(Debug, Clone)]
pub(crate) struct DryRun {
    /// When it fails if the agreement is not reached by then.
    deadline: Timestamp,
    /// Its wait, for the outcome's words.
    wait: Duration,
    /// Its outcome, once it failed.
    over: Option<String>,
}

impl Federation {
    /// Makes this run a dry run that waits at most `wait` for the sites.
    pub fn set_dry_run(&mut self, wait: Duration) {
        let deadline = self.now().plus(wait);
        self.audit(
            "-",
            "dry-run",
            "opened",
            &format!(
                "the sites' data through the agreement, within {}s",
                wait.as_secs()
            ),
        );
        self.dry_run = Some(DryRun {
            deadline,
            wait,
            over: None,
        });
    }

    /// Ends the dry run with `outcome` (passed or failed) and `detail`.
    fn end_dry_run(&mut self, passed: bool, detail: &str) {
        let outcome = if passed { "passed" } else { "failed" };
        // A failed one tells the sites still agreeing; after one that
        // passed, their agreement is answered as in a run.
        if let Some(dry) = self.dry_run.as_mut()
            && !passed
        {
            dry.over = Some(format!("the dry run {outcome}: {detail}"));
        }
        let status = if passed {
            RunStatus::Finished
        } else {
            RunStatus::Stopped
        };
        if let Err(e) = self.store.end_run(&self.run.id, status) {
            tracing::error!(error = %e, "cannot record the dry run's end");
        }
        tracing::info!(outcome, detail, "dry run over");
        self.audit("-", "dry-run", outcome, detail);
        self.phase = Phase::Finished;
        self.version += 1;
    }

    /// At the agreement: a dry run passes here, before any model is built.
    /// True when it did (training is not opened).
    pub(super) fn dry_run_agreed(&mut self, features: usize) -> bool {
        if self.dry_run.as_ref().is_none_or(|d| d.over.is_some()) {
            return false;
        }
        let sites: Vec<String> = self.roster.joined().iter().cloned().collect();
        let detail = format!(
            "every site's data agreed: {} sites ({}), {features} features",
            sites.len(),
            sites.join(", ")
        );
        self.end_dry_run(true, &detail);
        true
    }

    /// A site left before the agreement: the dry run fails, naming it.
    pub(super) fn dry_run_withdrawn(&mut self, site: &str, reason: &str) {
        if self.dry_run.as_ref().is_some_and(|d| d.over.is_none())
            && matches!(self.phase, Phase::Agreeing)
        {
            let detail = format!(
                "site '{site}' withdrew: {}",
                tessera_proto::shown(reason, 500)
            );
            self.end_dry_run(false, &detail);
        }
    }

    /// A dry run that failed: its outcome, for the sites still agreeing.
    pub fn dry_run_over(&self) -> Option<&str> {
        self.dry_run.as_ref().and_then(|d| d.over.as_deref())
    }

    /// A dry run whose wait is over fails, naming the sites missing.
    pub(super) fn dry_run_step(&mut self) {
        let Some(dry) = self.dry_run.clone() else {
            return;
        };
        if dry.over.is_some() || self.now() < dry.deadline {
            return;
        }
        let joined = self.roster.joined();
        let missing: Vec<String> = match self.roster.expected() {
            tessera_orchestrator::Expected::Named(names) => names
                .iter()
                .filter(|n| !joined.contains(*n))
                .cloned()
                .collect(),
            tessera_orchestrator::Expected::Count(n) => {
                vec![format!("{} of {n} sites", n.saturating_sub(joined.len()))]
            }
        };
        let detail = if missing.is_empty() {
            format!(
                "every site joined, and the agreement was not reached within {}s",
                dry.wait.as_secs()
            )
        } else {
            format!(
                "not joined within {}s: {}",
                dry.wait.as_secs(),
                missing.join(", ")
            )
        };
        self.end_dry_run(false, &detail);
    }
}
