//! A run as `tessera status --json` shows it: the end-to-end tests read
//! the coordinator's database through it, never through its schema.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// `tessera status --json` of the newest run in `db`; `None` while it
/// cannot be read yet (no database, no run, or the coordinator holds it).
pub fn status(db: &Path) -> Option<Status> {
    let output = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["status", "--json", "--db"])
        .arg(db)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let document: Value = serde_json::from_slice(&output.stdout).ok()?;
    assert_eq!(document["format"], 1, "status --json changed its format");
    Some(Status(document))
}

/// `tessera status --json` of `db`, which must be readable.
#[track_caller]
pub fn status_of(db: &Path) -> Status {
    status(db).unwrap_or_else(|| panic!("tessera status --json cannot read {}", db.display()))
}

/// `count` of `db`'s status, or -1 while it cannot be read (for polling).
pub fn poll(db: &Path, count: impl FnOnce(&Status) -> usize) -> i64 {
    status(db).map_or(-1, |s| count(&s) as i64)
}

/// An audit entry.
#[derive(Debug, Clone)]
pub struct Audit {
    pub site: String,
    pub action: String,
    pub outcome: String,
    pub detail: String,
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// A run's status document.
pub struct Status(pub Value);

impl Status {
    /// The audit log, oldest first.
    pub fn audit(&self) -> Vec<Audit> {
        self.list("audit")
            .iter()
            .map(|a| Audit {
                site: text(&a["site"]),
                action: text(&a["action"]),
                outcome: text(&a["outcome"]),
                detail: text(&a["detail"]),
            })
            .collect()
    }

    /// Audit entries for which `keep` holds.
    pub fn audit_count(&self, keep: impl Fn(&Audit) -> bool) -> usize {
        self.audit().iter().filter(|a| keep(a)).count()
    }

    /// Audit entries of `action` with `outcome`.
    pub fn audited(&self, action: &str, outcome: &str) -> usize {
        self.audit_count(|a| a.action == action && a.outcome == outcome)
    }

    /// Accepted updates of `site` (the audit's `update`/`accepted` entries).
    pub fn accepted_updates_of(&self, site: &str) -> usize {
        self.audit_count(|a| a.site == site && a.action == "update" && a.outcome == "accepted")
    }

    /// Accepted updates recorded more than once for the same site and round.
    pub fn duplicate_accepted_updates(&self) -> usize {
        let mut seen = std::collections::BTreeMap::new();
        for a in self.audit() {
            if a.action == "update" && a.outcome == "accepted" {
                *seen.entry((a.site, a.detail)).or_insert(0usize) += 1;
            }
        }
        seen.values().filter(|n| **n > 1).count()
    }

    /// Closed rounds (steps, for an asynchronous run).
    pub fn rounds(&self) -> &[Value] {
        self.list("rounds")
    }

    /// Whether round `round` closed.
    pub fn round_closed(&self, round: u64) -> bool {
        self.rounds().iter().any(|r| r["round"] == round)
    }

    /// Closed rounds with an aggregate (completed ones).
    pub fn aggregates(&self) -> Vec<&Value> {
        self.rounds()
            .iter()
            .map(|r| &r["aggregate"])
            .filter(|a| !a.is_null())
            .collect()
    }

    /// Per-site evaluations stored, over every round.
    pub fn evaluations(&self) -> u64 {
        self.0["evaluations_stored"]
            .as_u64()
            .expect("status has evaluations_stored")
    }

    /// Accepted updates not yet in a closed round, all rounds.
    pub fn pending_updates(&self) -> usize {
        self.list("pending_updates").len()
    }

    /// Accepted updates of round `round` not yet in a closed round.
    pub fn pending_updates_of(&self, round: u64) -> usize {
        self.list("pending_updates")
            .iter()
            .filter(|u| u["round"] == round)
            .count()
    }

    /// The privacy ledger's rows.
    pub fn ledger(&self) -> &[Value] {
        self.0["privacy"]["entries"]
            .as_array()
            .map_or(&[], Vec::as_slice)
    }

    fn list(&self, key: &str) -> &[Value] {
        self.0[key].as_array().map_or(&[], Vec::as_slice)
    }
}
