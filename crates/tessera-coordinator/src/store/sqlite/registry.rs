//! The model registry in the run store: named models, each version a
//! run's model at a round with its lineage, in one stage (candidate,
//! canary, production, archived) at a time; every change of stage an
//! append-only event with its reason and evidence. One version of a name
//! is in production at most; promoting another archives it, in the same
//! transaction, and a rollback returns the production version before it.

use rusqlite::{OptionalExtension, params};
use tessera_core::ParameterSet;
use tessera_proto::{decode_parameters, encode_parameters};

use super::{SqliteStore, unsigned};
use crate::store::StoreError;

/// The registry's tables (created with the store's).
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS registry_versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, stage TEXT NOT NULL,
    run_id TEXT NOT NULL, round INTEGER NOT NULL, params BLOB NOT NULL,
    params_sha256 TEXT NOT NULL, lineage TEXT NOT NULL, parent INTEGER,
    created_unix_micros INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS registry_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL, from_stage TEXT NOT NULL,
    to_stage TEXT NOT NULL, reason TEXT NOT NULL, evidence TEXT NOT NULL,
    at_unix_micros INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS registry_versions_are_kept BEFORE DELETE ON registry_versions
    BEGIN SELECT RAISE(ABORT, 'registered versions are kept (archive one instead)'); END;
CREATE TRIGGER IF NOT EXISTS registry_versions_are_fixed
    BEFORE UPDATE OF name, version, run_id, round, params, params_sha256, lineage, parent,
    created_unix_micros ON registry_versions
    BEGIN SELECT RAISE(ABORT, 'a registered version changes its stage only'); END;
CREATE TRIGGER IF NOT EXISTS registry_events_are_append_only_update BEFORE UPDATE ON registry_events
    BEGIN SELECT RAISE(ABORT, 'the registry events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS registry_events_are_append_only_delete BEFORE DELETE ON registry_events
    BEGIN SELECT RAISE(ABORT, 'the registry events are append-only'); END;
";

/// A version's stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Registered, not yet tried.
    Candidate,
    /// Served by the sites that opted in, on trial.
    Canary,
    /// Served by every site.
    Production,
    /// Retired (replaced, rolled back or given up).
    Archived,
}

impl Stage {
    /// Every stage.
    pub const ALL: [Stage; 4] = [
        Stage::Candidate,
        Stage::Canary,
        Stage::Production,
        Stage::Archived,
    ];

    /// As stored and typed.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Candidate => "candidate",
            Stage::Canary => "canary",
            Stage::Production => "production",
            Stage::Archived => "archived",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                format!("unknown stage '{s}': candidate, canary, production or archived")
            })
    }
}

/// A registered version.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionRow {
    /// The model's name.
    pub name: String,
    /// Its version, from 1.
    pub version: u32,
    /// Its stage.
    pub stage: Stage,
    /// The run it came from.
    pub run_id: String,
    /// The round whose model it is.
    pub round: u32,
    /// SHA-256 of its parameters as model files hash them.
    pub params_sha256: String,
    /// Its lineage (JSON).
    pub lineage: String,
    /// The version it follows, where one was named.
    pub parent: Option<u32>,
    /// When it was registered (microseconds since the Unix epoch).
    pub created_unix_micros: u64,
}

/// A change of stage.
#[derive(Debug, Clone, PartialEq)]
pub struct StageEvent {
    /// The model's name.
    pub name: String,
    /// The version.
    pub version: u32,
    /// From (`none` when registered).
    pub from: String,
    /// To.
    pub to: Stage,
    /// Why, as given.
    pub reason: String,
    /// What decided it (JSON or text, as given).
    pub evidence: String,
    /// When (microseconds since the Unix epoch).
    pub at_unix_micros: u64,
}

/// A rollout's decision, as the registry records it
/// ([`super::super::RunStore::record_rollout`]).
#[derive(Debug, Clone)]
pub struct RolloutDecision<'a> {
    /// The registered model's name.
    pub name: &'a str,
    /// The candidate version rolled out (at canary while it ran).
    pub candidate: u32,
    /// The production version it was compared with.
    pub production: u32,
    /// Promoted (to production), or else rolled back (archived).
    pub promote: bool,
    /// Why, in words.
    pub reason: &'a str,
    /// The evidence (JSON).
    pub evidence: &'a str,
    /// When.
    pub at_unix_micros: u64,
}

/// What a registration stores.
#[derive(Debug, Clone)]
pub struct NewVersion<'a> {
    /// The model's name.
    pub name: &'a str,
    /// The run.
    pub run_id: &'a str,
    /// The round.
    pub round: u32,
    /// The parameters.
    pub params: &'a ParameterSet,
    /// Their SHA-256.
    pub params_sha256: &'a str,
    /// Lineage (JSON).
    pub lineage: &'a str,
    /// The version it follows.
    pub parent: Option<u32>,
    /// Now (microseconds since the Unix epoch).
    pub at_unix_micros: u64,
}

fn refused(why: String) -> StoreError {
    StoreError::Refused(why)
}

fn stage_of(text: String) -> Result<Stage, StoreError> {
    text.parse().map_err(StoreError::Damaged)
}

/// The database's guard of one production version per name. A database
/// whose registry already breaks the rule (edited by hand before the guard
/// existed) keeps working without it, with a warning naming the models:
/// a registry problem does not stop the runs' store from opening.
pub(crate) fn guard_production(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    let mut stmt = conn.prepare(
        "SELECT name FROM registry_versions WHERE stage = 'production'
         GROUP BY name HAVING COUNT(*) > 1",
    )?;
    let doubled: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if !doubled.is_empty() {
        tracing::warn!(
            models = %doubled.join(", "),
            "the registry has more than one production version of these models: archive all \
             but one (`tessera models archive`); until then the database does not guard the rule"
        );
        return Ok(());
    }
    conn.execute_batch(
        "CREATE UNIQUE INDEX IF NOT EXISTS registry_one_production
         ON registry_versions (name) WHERE stage = 'production';",
    )?;
    Ok(())
}

/// A write transaction that takes the write lock at once: two operators'
/// changes are then serialised (the second waits for the busy timeout)
/// instead of the second failing when it tries to write what it read.
fn immediate(conn: &rusqlite::Connection) -> Result<rusqlite::Transaction<'_>, StoreError> {
    Ok(rusqlite::Transaction::new_unchecked(
        conn,
        rusqlite::TransactionBehavior::Immediate,
    )?)
}

fn at(micros: u64) -> i64 {
    i64::try_from(micros).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Registers the next version of `new.name` as a candidate; its number.
    pub fn register_version(&self, new: &NewVersion<'_>) -> Result<u32, StoreError> {
        let tx = immediate(&self.conn)?;
        let last: Option<u32> = tx.query_row(
            "SELECT MAX(version) FROM registry_versions WHERE name = ?1",
            params![new.name],
            |r| r.get(0),
        )?;
        let version = last
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| refused(format!("model '{}' has no version numbers left", new.name)))?;
        if let Some(parent) = new.parent
            && parent >= version
        {
            return Err(refused(format!(
                "model '{}' has no version {parent} to follow",
                new.name
            )));
        }
        tx.execute(
            "INSERT INTO registry_versions (name, version, stage, run_id, round, params,
             params_sha256, lineage, parent, created_unix_micros)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                new.name,
                version,
                Stage::Candidate.as_str(),
                new.run_id,
                new.round,
                encode_parameters(new.params),
                new.params_sha256,
                new.lineage,
                new.parent,
                at(new.at_unix_micros)
            ],
        )?;
        tx.execute(
            "INSERT INTO registry_events (name, version, kind, from_stage, to_stage, reason,
             evidence, at_unix_micros) VALUES (?1, ?2, 'register', 'none', ?3, 'registered', '', ?4)",
            params![
                new.name,
                version,
                Stage::Candidate.as_str(),
                at(new.at_unix_micros)
            ],
        )?;
        tx.commit()?;
        Ok(version)
    }

    /// Whether the database has the registry's tables (a database written
    /// before them, opened read-only, has not).
    pub fn has_registry(&self) -> Result<bool, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'registry_versions'",
            [],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Every version (of `name`, or of every name), by name and version.
    pub fn versions(&self, name: Option<&str>) -> Result<Vec<VersionRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, version, stage, run_id, round, params_sha256, lineage, parent,
             created_unix_micros FROM registry_versions
             WHERE ?1 IS NULL OR name = ?1 ORDER BY name, version",
        )?;
        let rows = stmt.query_map(params![name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, Option<u32>>(7)?,
                r.get::<_, i64>(8)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, version, stage, run_id, round, sha, lineage, parent, created) = row?;
            out.push(VersionRow {
                name,
                version,
                stage: stage_of(stage)?,
                run_id,
                round,
                params_sha256: sha,
                lineage,
                parent,
                created_unix_micros: unsigned(created),
            });
        }
        Ok(out)
    }

    /// A version's parameters.
    pub fn version_parameters(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<ParameterSet>, StoreError> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT params FROM registry_versions WHERE name = ?1 AND version = ?2",
                params![name, version],
                |r| r.get(0),
            )
            .optional()?;
        Ok(bytes.map(|b| decode_parameters(&b)).transpose()?)
    }

    /// Every change of stage (of `name`, or of every name), oldest first.
    pub fn stage_events(&self, name: Option<&str>) -> Result<Vec<StageEvent>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, version, from_stage, to_stage, reason, evidence, at_unix_micros
             FROM registry_events WHERE ?1 IS NULL OR name = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, version, from, to, reason, evidence, at) = row?;
            out.push(StageEvent {
                name,
                version,
                from,
                to: stage_of(to)?,
                reason,
                evidence,
                at_unix_micros: unsigned(at),
            });
        }
        Ok(out)
    }

    /// Moves `name`'s `version` to `to`, with `reason` and `evidence`. To
    /// production: from candidate or canary, the production version it
    /// replaces archived in the same transaction. To canary: from
    /// candidate. To archived: from any other stage. Refused otherwise,
    /// saying why.
    pub fn set_stage(
        &self,
        name: &str,
        version: u32,
        to: Stage,
        reason: &str,
        evidence: &str,
        at_unix_micros: u64,
    ) -> Result<(), StoreError> {
        let tx = immediate(&self.conn)?;
        set_stage_in(&tx, name, version, to, reason, evidence, at_unix_micros)?;
        tx.commit()?;
        Ok(())
    }

    /// Records a rollout's decision, in one transaction that first checks
    /// the registry still holds what the rollout compared: the candidate at
    /// canary, and the production version in production (an operator may
    /// have moved either while the rollout ran; then nothing is recorded,
    /// and the refusal says what changed).
    pub fn record_rollout_decision(&self, d: &RolloutDecision<'_>) -> Result<(), StoreError> {
        let tx = immediate(&self.conn)?;
        let from = current(&tx, d.name, d.candidate)?;
        let serving = production_of(&tx, d.name)?;
        if from != Stage::Canary || serving != Some(d.production) {
            return Err(refused(format!(
                "the registry changed while the rollout ran: model '{}' version {} is {from} \
                 (the rollout put it at canary), and {} in production (the rollout compared \
                 version {})",
                d.name,
                d.candidate,
                serving.map_or("no version is".to_string(), |v| format!("version {v} is")),
                d.production
            )));
        }
        let to = if d.promote {
            Stage::Production
        } else {
            Stage::Archived
        };
        set_stage_in(
            &tx,
            d.name,
            d.candidate,
            to,
            d.reason,
            d.evidence,
            d.at_unix_micros,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Rolls `name` back: its production version is archived and the
    /// production version before it serves again, both in one transaction.
    /// The one before: the last other version that went to production
    /// before the current one last did and left it only by being replaced
    /// (so that rollbacks walk back through the history, a second one does
    /// not undo the first, and a version retired by hand stays retired).
    /// Gives (the version rolled back, the version now in production).
    pub fn roll_back(
        &self,
        name: &str,
        reason: &str,
        evidence: &str,
        at_unix_micros: u64,
    ) -> Result<(u32, u32), StoreError> {
        let tx = immediate(&self.conn)?;
        let serving: Option<u32> = tx
            .query_row(
                "SELECT version FROM registry_versions WHERE name = ?1 AND stage = 'production'",
                params![name],
                |r| r.get(0),
            )
            .optional()?;
        let Some(serving) = serving else {
            return Err(refused(format!(
                "model '{name}' has no version in production to roll back"
            )));
        };
        let earlier: Option<u32> = tx
            .query_row(
                "SELECT e.version FROM registry_events e JOIN registry_versions v
                 ON v.name = e.name AND v.version = e.version
                 WHERE e.name = ?1 AND e.to_stage = 'production' AND e.version != ?2
                 AND v.stage = 'archived'
                 AND e.id < (SELECT MAX(id) FROM registry_events
                             WHERE name = ?1 AND version = ?2 AND to_stage = 'production')
                 AND (SELECT l.kind FROM registry_events l
                      WHERE l.name = ?1 AND l.version = e.version
                      ORDER BY l.id DESC LIMIT 1) = 'replaced'
                 ORDER BY e.id DESC LIMIT 1",
                params![name, serving],
                |r| r.get(0),
            )
            .optional()?;
        let Some(earlier) = earlier else {
            return Err(refused(format!(
                "model '{name}' has no earlier production version to return to: version \
                 {serving} stays in production (archive it to serve none)"
            )));
        };
        change(
            &tx,
            name,
            serving,
            "rollback",
            Stage::Production,
            Stage::Archived,
            reason,
            evidence,
            at_unix_micros,
        )?;
        change(
            &tx,
            name,
            earlier,
            "restore",
            Stage::Archived,
            Stage::Production,
            &format!("rollback of version {serving}: {reason}"),
            evidence,
            at_unix_micros,
        )?;
        tx.commit()?;
        Ok((serving, earlier))
    }
}

/// [`SqliteStore::set_stage`] within `tx`.
fn set_stage_in(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    version: u32,
    to: Stage,
    reason: &str,
    evidence: &str,
    at_unix_micros: u64,
) -> Result<(), StoreError> {
    let from = current(tx, name, version)?;
    let allowed = match to {
        Stage::Candidate => false,
        Stage::Canary => from == Stage::Candidate,
        Stage::Production => matches!(from, Stage::Candidate | Stage::Canary),
        Stage::Archived => from != Stage::Archived,
    };
    if !allowed {
        return Err(refused(format!(
            "model '{name}' version {version} is {from}: it cannot go to {to} (candidate \
             -> canary -> production -> archived; rollback returns an archived production \
             version)"
        )));
    }
    if to == Stage::Production
        && let Some(old) = production_of(tx, name)?
    {
        change(
            tx,
            name,
            old,
            "replaced",
            Stage::Production,
            Stage::Archived,
            &format!("replaced by version {version}"),
            evidence,
            at_unix_micros,
        )?;
    }
    let kind = if to == Stage::Archived {
        "archive"
    } else {
        "promote"
    };
    change(
        tx,
        name,
        version,
        kind,
        from,
        to,
        reason,
        evidence,
        at_unix_micros,
    )
}

/// The version of `name` in production, if any.
fn production_of(tx: &rusqlite::Transaction<'_>, name: &str) -> Result<Option<u32>, StoreError> {
    Ok(tx
        .query_row(
            "SELECT version FROM registry_versions WHERE name = ?1 AND stage = 'production'",
            params![name],
            |r| r.get(0),
        )
        .optional()?)
}

/// The stage of `name`'s `version`, refused where there is none.
fn current(tx: &rusqlite::Transaction<'_>, name: &str, version: u32) -> Result<Stage, StoreError> {
    let stage: Option<String> = tx
        .query_row(
            "SELECT stage FROM registry_versions WHERE name = ?1 AND version = ?2",
            params![name, version],
            |r| r.get(0),
        )
        .optional()?;
    match stage {
        Some(s) => stage_of(s),
        None => Err(refused(format!("model '{name}' has no version {version}"))),
    }
}

#[allow(clippy::too_many_arguments)]
fn change(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    version: u32,
    kind: &str,
    from: Stage,
    to: Stage,
    reason: &str,
    evidence: &str,
    at_unix_micros: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE registry_versions SET stage = ?3 WHERE name = ?1 AND version = ?2",
        params![name, version, to.as_str()],
    )?;
    tx.execute(
        "INSERT INTO registry_events (name, version, kind, from_stage, to_stage, reason,
         evidence, at_unix_micros) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            name,
            version,
            kind,
            from.as_str(),
            to.as_str(),
            reason,
            evidence,
            at(at_unix_micros)
        ],
    )?;
    Ok(())
}
