//! The SQLite store (WAL, synchronous commits).
//!
//! No key is stored: central DP noise comes from a key the coordinator draws
//! from the operating system at each start and keeps in memory only, and a
//! restart replays the stored (already noised) aggregates. Anyone who reads
//! this file sees the released models but cannot subtract their noise. The
//! file (and SQLite's `-wal` and `-shm` beside it) is created with mode 0600,
//! and a looser existing one is tightened. A database from an older
//! coordinator that kept the noise key in a `run_secrets` table has that
//! table wiped (SQLite's `secure_delete`, then a checkpoint that truncates
//! the write-ahead log) and dropped when a coordinator opens it; `tessera
//! runs`, `status` and `privacy` never read it.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use tessera_aggregate::RoundAggregate;
use tessera_core::{ParameterSet, ParticipantId, Timestamp, Update};
use tessera_privacy::{DpEvent, LedgerEntry};
use tessera_proto::{decode_parameters, encode_parameters};

mod analytics;
mod registry;
mod updates;

pub use analytics::AnalyticsRow;
pub use registry::{NewVersion, RolloutDecision, Stage, StageEvent, VersionRow};

use super::schema::SCHEMA;
use super::upkeep::{add_missing_columns, drop_legacy_secrets, private_file};
use super::{
    AgreementStep, AuditRow, CohortRow, Control, ControlRow, EvaluationRow, LedgerRow, ModelRow,
    Offers, OpenRoundRow, RoundRow, RunRow, RunStatus, RunStore, RunTx, StoreError, StoredUpdate,
};

/// Inserts a ledger row; one already there for the same release, kind and
/// participant stays as it was (the ledger is append-only).
fn insert_ledger_row(conn: &Connection, run: &str, row: &LedgerRow) -> Result<(), StoreError> {
    let e = &row.entry;
    conn.execute(
        "INSERT OR IGNORE INTO privacy_ledger (run_id, release, kind, participant, sampling_rate,
         noise_multiplier, steps, run_epsilon, delta, clip_norm, next_clip_norm, noise_std,
         updates, recorded_micros)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            run,
            e.release,
            e.kind,
            e.participant.clone().unwrap_or_default(),
            e.event.sampling_rate,
            e.event.noise_multiplier,
            e.event.steps as i64,
            e.run_epsilon,
            row.delta,
            row.clip_norm,
            row.next_clip_norm,
            row.noise_std,
            row.updates as i64,
            i64::try_from(row.recorded_micros).unwrap_or(i64::MAX)
        ],
    )?;
    Ok(())
}

/// The SQLite database of a coordinator.
pub struct SqliteStore {
    conn: Connection,
}

fn micros(t: Timestamp) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_json(v: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Damaged(e.to_string()))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, readable and
    /// writable by its owner only (mode 0600, also for the `-wal` and `-shm`
    /// files; a looser existing file is tightened with a warning). A
    /// `run_secrets` table an older coordinator left is wiped and dropped.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        not_postgres(path)?;
        private_file(path)?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            let side = std::path::PathBuf::from(side);
            if side.exists() {
                private_file(&side)?;
            }
        }
        drop_legacy_secrets(&conn)?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(registry::SCHEMA)?;
        registry::guard_production(&conn)?;
        add_missing_columns(&conn)?;
        Ok(Self { conn })
    }

    /// Opens an existing database without changing it (for `tessera runs` and `status`).
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        not_postgres(path)?;
        if !path.exists() {
            return Err(StoreError::NotFound(path.display().to_string()));
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self { conn })
    }

    /// The connection, for the store's own tests.
    #[cfg(test)]
    pub(super) fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// Refuses a PostgreSQL URL where only a SQLite file will do (the commands
/// whose state the PostgreSQL store does not keep yet).
fn not_postgres(path: &Path) -> Result<(), StoreError> {
    match path.to_str() {
        Some(url) if super::is_postgres(url) => Err(StoreError::Refused(format!(
            "{}: this command keeps its state in a SQLite file only; a PostgreSQL \
             database serves `tessera coordinator`, `status`, `runs`, `privacy`, \
             `stop` and `abort`",
            super::redacted(url)
        ))),
        _ => Ok(()),
    }
}

/// A transaction on a [`SqliteStore`]: rolled back unless committed.
struct SqliteTx<'a> {
    tx: rusqlite::Transaction<'a>,
}

impl RunStore for SqliteStore {
    fn record_rollout(&self, decision: &RolloutDecision<'_>) -> Result<(), StoreError> {
        self.record_rollout_decision(decision)
    }

    fn answered_queries(&self, run: &str) -> Result<Vec<AnalyticsRow>, StoreError> {
        self.analytics(run)
    }

    fn record_answer(
        &self,
        run: &str,
        row: &AnalyticsRow,
        ledger: &[LedgerRow],
    ) -> Result<(), StoreError> {
        self.record_analytics(run, row, ledger)
    }

    fn transaction(&self) -> Result<Box<dyn RunTx + '_>, StoreError> {
        // The store has one owner and is not shared between threads, so a
        // transaction on `&self` cannot interleave with another's writes.
        Ok(Box::new(SqliteTx {
            tx: self.conn.unchecked_transaction()?,
        }))
    }

    fn runs(&self) -> Result<Vec<RunRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, name, plan, strategy, seed, rounds, created_unix_micros, status FROM runs
             ORDER BY created_unix_micros DESC, id DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RunRow {
                id: r.get(0)?,
                name: r.get(1)?,
                plan: r.get(2)?,
                strategy: r.get(3)?,
                // Stored as the i64 of the same bits (`create_run`).
                seed: r.get::<_, i64>(4)? as u64,
                rounds: r.get(5)?,
                created_unix_micros: unsigned(r.get(6)?),
                status: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn code_version(&self, run: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT code_version FROM runs WHERE id = ?1",
                params![run],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn participants(&self, run: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT site FROM participants WHERE run_id = ?1 ORDER BY site")?;
        let rows = stmt.query_map(params![run], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn offers(&self, run: &str, step: AgreementStep) -> Result<Offers, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT site, offer FROM agreement_steps WHERE run_id = ?1 AND step = ?2 ORDER BY site",
        )?;
        let rows = stmt.query_map(params![run, step.code()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn agreement(&self, run: &str, step: AgreementStep) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT result FROM agreements WHERE run_id = ?1 AND step = ?2",
                params![run, step.code()],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn model(&self, run: &str, version: u32) -> Result<Option<ParameterSet>, StoreError> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT params FROM models WHERE run_id = ?1 AND version = ?2",
                params![run, version],
                |r| r.get(0),
            )
            .optional()?;
        Ok(bytes.map(|b| decode_parameters(&b)).transpose()?)
    }

    fn models(&self, run: &str) -> Result<Vec<ModelRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT version, LENGTH(params), created_micros FROM models WHERE run_id = ?1
             ORDER BY version",
        )?;
        let rows = stmt.query_map(params![run], |r| {
            Ok(ModelRow {
                version: r.get(0)?,
                bytes: unsigned(r.get(1)?),
                created: Timestamp(unsigned(r.get(2)?)),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn latest_model_version(&self, run: &str) -> Result<Option<u32>, StoreError> {
        Ok(self.conn.query_row(
            "SELECT MAX(version) FROM models WHERE run_id = ?1",
            params![run],
            |r| r.get(0),
        )?)
    }

    fn aggregates(&self, run: &str, up_to: u32) -> Result<Vec<(u32, RoundAggregate)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT round, mean_delta, control_step, n_updates, n_examples, weight_sum, mean_train_loss,
                    n_participants
             FROM round_aggregates WHERE run_id = ?1 AND round <= ?2 ORDER BY round",
        )?;
        let rows = stmt.query_map(params![run, up_to], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, f64>(5)?,
                r.get::<_, f64>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (
                round,
                delta,
                control,
                n_updates,
                n_examples,
                weight_sum,
                mean_train_loss,
                n_participants,
            ) = row?;
            out.push((
                round,
                RoundAggregate {
                    mean_delta: decode_parameters(&delta)?,
                    aux_step: control.map(|c| decode_parameters(&c)).transpose()?,
                    n_updates: unsigned(n_updates),
                    n_participants: unsigned(n_participants),
                    n_examples: unsigned(n_examples),
                    weight_sum,
                    mean_train_loss,
                },
            ));
        }
        Ok(out)
    }

    fn open_round_of(&self, run: &str) -> Result<Option<OpenRoundRow>, StoreError> {
        let row: Option<(u32, String, i64)> = self
            .conn
            .query_row(
                "SELECT round, cohort, opened_micros FROM open_rounds WHERE run_id = ?1",
                params![run],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        match row {
            None => Ok(None),
            Some((round, cohort, at)) => {
                let names: Vec<String> = serde_json::from_str(&cohort)
                    .map_err(|e| StoreError::Damaged(format!("open round cohort: {e}")))?;
                Ok(Some(OpenRoundRow {
                    round,
                    cohort: names.into_iter().map(ParticipantId::new).collect(),
                    opened: Timestamp(unsigned(at)),
                }))
            }
        }
    }

    fn updates(&self, run: &str, round: u32) -> Result<Vec<StoredUpdate>, StoreError> {
        updates::read(&self.conn, run, round)
    }

    fn cohorts(&self, run: &str) -> Result<Vec<CohortRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT round, cohort, counted FROM round_cohorts WHERE run_id = ?1 ORDER BY round",
        )?;
        let rows = stmt.query_map(params![run], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (round, cohort, counted) = row?;
            let parse = |s: &str| {
                serde_json::from_str::<Vec<String>>(s)
                    .map_err(|e| StoreError::Damaged(e.to_string()))
            };
            out.push(CohortRow {
                round,
                cohort: parse(&cohort)?,
                counted: parse(&counted)?,
            });
        }
        Ok(out)
    }

    fn rounds(&self, run: &str) -> Result<Vec<RoundRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT round, status, record, evaluated FROM rounds WHERE run_id = ?1 ORDER BY round",
        )?;
        let rows = stmt.query_map(params![run], |r| {
            Ok(RoundRow {
                round: r.get(0)?,
                status: r.get(1)?,
                record: r.get(2)?,
                evaluated: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn evaluations(&self, run: &str, round: u32) -> Result<Vec<EvaluationRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT site, report FROM evaluations WHERE run_id = ?1 AND round = ?2 ORDER BY site",
        )?;
        let rows = stmt.query_map(params![run, round], |r| {
            Ok(EvaluationRow {
                site: r.get(0)?,
                report: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn privacy_ledger(&self, run: &str) -> Result<Vec<LedgerRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT release, kind, participant, sampling_rate, noise_multiplier, steps, run_epsilon,
                    delta, clip_norm, next_clip_norm, noise_std, updates, recorded_micros
             FROM privacy_ledger WHERE run_id = ?1 ORDER BY release, kind, participant",
        )?;
        let rows = stmt.query_map(params![run], |r| {
            let participant: String = r.get(2)?;
            Ok(LedgerRow {
                entry: LedgerEntry {
                    release: r.get(0)?,
                    kind: r.get(1)?,
                    participant: (!participant.is_empty()).then_some(participant),
                    event: DpEvent {
                        sampling_rate: r.get(3)?,
                        noise_multiplier: r.get(4)?,
                        steps: r.get::<_, i64>(5)?.max(0) as u64,
                    },
                    run_epsilon: r.get(6)?,
                },
                delta: r.get(7)?,
                clip_norm: r.get(8)?,
                next_clip_norm: r.get(9)?,
                noise_std: r.get(10)?,
                updates: r.get::<_, i64>(11)?.max(0) as u64,
                recorded_micros: r.get::<_, i64>(12)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn audit_log(&self, run: &str) -> Result<Vec<AuditRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT at_micros, site, action, outcome, detail FROM audit WHERE run_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![run], |r| {
            Ok(AuditRow {
                at_micros: unsigned(r.get(0)?),
                site: r.get(1)?,
                action: r.get(2)?,
                outcome: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn controls(&self, run: &str) -> Result<Vec<ControlRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT action, reason, at_unix_micros FROM run_control WHERE run_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![run], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                unsigned(r.get(2)?),
            ))
        })?;
        let mut controls = Vec::new();
        for row in rows {
            let (action, reason, at_unix_micros) = row?;
            controls.push(ControlRow {
                action: Control::stored(&action)?,
                reason,
                at_unix_micros,
            });
        }
        Ok(controls)
    }

    fn put_join_result(
        &self,
        run: &str,
        query: &str,
        answer: &str,
        at_micros: u64,
    ) -> Result<(), StoreError> {
        self.record_join(run, query, answer, at_micros)
    }

    fn put_live_view(&self, run: &str, view: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO live_views (run_id, view) VALUES (?1, ?2)
             ON CONFLICT (run_id) DO UPDATE SET view = excluded.view",
            params![run, view],
        )?;
        Ok(())
    }

    fn live_view(&self, run: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT view FROM live_views WHERE run_id = ?1",
                params![run],
                |r| r.get(0),
            )
            .optional()?)
    }
}

impl RunTx for SqliteTx<'_> {
    fn create_run(&mut self, run: &RunRow) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO runs (id, name, plan, strategy, seed, rounds, created_unix_micros, status, code_version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                run.id,
                run.name,
                run.plan,
                run.strategy,
                run.seed as i64,
                run.rounds,
                run.created_unix_micros as i64,
                run.status,
                env!("CARGO_PKG_VERSION")
            ],
        )?;
        Ok(())
    }

    fn set_run_status(&mut self, run: &str, status: RunStatus) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE runs SET status = ?2 WHERE id = ?1",
            params![run, status.as_str()],
        )?;
        Ok(())
    }

    fn put_control(&mut self, run: &str, control: &ControlRow) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO run_control (run_id, action, reason, at_unix_micros) VALUES (?1, ?2, ?3, ?4)",
            params![
                run,
                control.action.as_str(),
                control.reason,
                i64::try_from(control.at_unix_micros).unwrap_or(i64::MAX)
            ],
        )?;
        Ok(())
    }

    fn add_participant(&mut self, run: &str, site: &str, at: Timestamp) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR IGNORE INTO participants (run_id, site, joined_micros) VALUES (?1, ?2, ?3)",
            params![run, site, micros(at)],
        )?;
        Ok(())
    }

    fn put_offer(
        &mut self,
        run: &str,
        step: AgreementStep,
        site: &str,
        offer: &[u8],
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO agreement_steps (run_id, step, site, offer) VALUES (?1, ?2, ?3, ?4)",
            params![run, step.code(), site, offer],
        )?;
        Ok(())
    }

    fn delete_offer(
        &mut self,
        run: &str,
        step: AgreementStep,
        site: &str,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "DELETE FROM agreement_steps WHERE run_id = ?1 AND step = ?2 AND site = ?3",
            params![run, step.code(), site],
        )?;
        Ok(())
    }

    fn put_agreement(
        &mut self,
        run: &str,
        step: AgreementStep,
        result: &[u8],
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO agreements (run_id, step, result) VALUES (?1, ?2, ?3)",
            params![run, step.code(), result],
        )?;
        Ok(())
    }

    fn put_model(
        &mut self,
        run: &str,
        version: u32,
        params: &ParameterSet,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO models (run_id, version, params, created_micros) VALUES (?1, ?2, ?3, ?4)",
            params![run, version, encode_parameters(params), micros(at)],
        )?;
        Ok(())
    }

    fn open_round(
        &mut self,
        run: &str,
        round: u32,
        cohort: &[ParticipantId],
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let names: Vec<String> = cohort.iter().map(|p| p.as_str().to_string()).collect();
        self.tx.execute(
            "INSERT OR REPLACE INTO open_rounds (run_id, round, cohort, opened_micros) VALUES (?1, ?2, ?3, ?4)",
            params![run, round, to_json(&names)?, micros(at)],
        )?;
        Ok(())
    }

    fn put_update(
        &mut self,
        run: &str,
        round: u32,
        base: u32,
        site: &str,
        update: &Update,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO updates (run_id, round, site, base, n_examples, n_steps, mean_train_loss, delta, control, received_micros, start_loss)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                run,
                round,
                site,
                base,
                update.n_examples as i64,
                update.stats.n_steps as i64,
                update.stats.mean_train_loss,
                encode_parameters(&update.delta),
                update.aux.as_ref().map(encode_parameters),
                micros(at),
                update.stats.start_loss
            ],
        )?;
        Ok(())
    }

    fn put_test_gradient(
        &mut self,
        run: &str,
        round: u32,
        site: &str,
        (rows, gradient): (u64, &ParameterSet),
    ) -> Result<(), StoreError> {
        let rows = i64::try_from(rows).map_err(|_| {
            StoreError::Refused(format!("test rows {rows} past what the store keeps"))
        })?;
        self.tx.execute(
            "UPDATE updates SET test_rows = ?1, test_gradient = ?2
             WHERE run_id = ?3 AND round = ?4 AND site = ?5",
            params![rows, encode_parameters(gradient), run, round, site],
        )?;
        Ok(())
    }

    fn put_cohort(&mut self, run: &str, row: &CohortRow) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO round_cohorts (run_id, round, cohort, counted) VALUES (?1, ?2, ?3, ?4)",
            params![run, row.round, to_json(&row.cohort)?, to_json(&row.counted)?],
        )?;
        Ok(())
    }

    fn put_aggregate(
        &mut self,
        run: &str,
        round: u32,
        a: &RoundAggregate,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO round_aggregates
             (run_id, round, mean_delta, control_step, n_updates, n_examples, weight_sum, mean_train_loss,
              n_participants)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                run,
                round,
                encode_parameters(&a.mean_delta),
                a.aux_step.as_ref().map(encode_parameters),
                a.n_updates as i64,
                a.n_examples as i64,
                a.weight_sum,
                a.mean_train_loss,
                i64::try_from(a.n_participants).unwrap_or(i64::MAX)
            ],
        )?;
        Ok(())
    }

    fn put_round(
        &mut self,
        run: &str,
        round: u32,
        status: &str,
        record_json: &str,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO rounds (run_id, round, status, record, evaluated) VALUES (?1, ?2, ?3, ?4, 0)",
            params![run, round, status, record_json],
        )?;
        Ok(())
    }

    fn clear_open_round(&mut self, run: &str, round: u32) -> Result<(), StoreError> {
        self.tx
            .execute("DELETE FROM open_rounds WHERE run_id = ?1", params![run])?;
        self.tx.execute(
            "DELETE FROM updates WHERE run_id = ?1 AND round = ?2",
            params![run, round],
        )?;
        Ok(())
    }

    fn finish_round_evaluation(
        &mut self,
        run: &str,
        round: u32,
        record_json: &str,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE rounds SET record = ?3, evaluated = 1 WHERE run_id = ?1 AND round = ?2",
            params![run, round, record_json],
        )?;
        Ok(())
    }

    fn put_evaluation(
        &mut self,
        run: &str,
        round: u32,
        site: &str,
        report: &[u8],
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO evaluations (run_id, round, site, report) VALUES (?1, ?2, ?3, ?4)",
            params![run, round, site, report],
        )?;
        Ok(())
    }

    fn audit(&mut self, run: &str, row: &AuditRow) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO audit (run_id, at_micros, site, action, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                run,
                i64::try_from(row.at_micros).unwrap_or(i64::MAX),
                row.site,
                row.action,
                row.outcome,
                row.detail
            ],
        )?;
        Ok(())
    }

    fn put_ledger_row(&mut self, run: &str, row: &LedgerRow) -> Result<(), StoreError> {
        insert_ledger_row(&self.tx, run, row)
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit()?;
        Ok(())
    }
}
