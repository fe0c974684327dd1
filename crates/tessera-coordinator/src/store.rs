//! Durable state of a run, behind [`RunStore`]: runs, the plan, the data
//! agreement, participants, every model version, each closed round's
//! aggregate, the open round and its accepted updates, evaluations, an
//! append-only audit log and an append-only privacy ledger. Whatever the
//! coordinator acknowledges is committed first.
//!
//! The federation owns one store and is its only writer (it runs on its own
//! thread, see [`crate::Shared`]). Reads are typed rows; writes go through a
//! [`RunTx`], committed as a whole or not at all: a round's close (its
//! cohort, aggregate, model, report line, ledger release, and the open
//! round's removal) is one transaction. The single-write methods of
//! [`RunStore`] each commit one transaction of their own.
//!
//! [`SqliteStore`] is the embedded store: SQLite with a write-ahead log and
//! synchronous commits. [`PostgresStore`] (`--db postgres://...`) is the
//! same tables on a PostgreSQL server, where several coordinators share one
//! database and a lease makes one of them the leader. The federation's
//! logic does not change.

use tessera_aggregate::RoundAggregate;
use tessera_core::{ParameterSet, ParticipantId, Timestamp, Update};
use tessera_proto::ProtoError;
use thiserror::Error;

pub mod contributions;
mod postgres;
mod rows;
mod schema;
mod sqlite;
mod upkeep;

pub use postgres::{PostgresStore, is_postgres, redacted, shown};
pub use rows::{
    AgreementStep, AuditRow, CohortRow, Control, ControlRow, EvaluationRow, LedgerRow, ModelRow,
    Offers, OpenRoundRow, RoundClose, RoundRow, RunRow, RunStatus, StoredUpdate,
};
pub use sqlite::{
    AnalyticsRow, NewVersion, RolloutDecision, SqliteStore, Stage, StageEvent, VersionRow,
};

/// A storage failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database file does not exist.
    #[error("{0}: no such database")]
    NotFound(String),
    /// PostgreSQL refused, or cannot be reached.
    #[error("database: {0}")]
    Postgres(String),
    /// Another coordinator took the lease of a PostgreSQL database.
    #[error("{0}")]
    Fenced(String),
    /// Stored bytes do not decode.
    #[error("database holds a damaged record: {0}")]
    Damaged(String),
    /// The database file cannot be created or its mode set.
    #[error("database file {0}")]
    File(String),
    /// A change the store's rules refuse (the model registry's stages).
    #[error("{0}")]
    Refused(String),
}

impl From<::postgres::Error> for StoreError {
    fn from(e: ::postgres::Error) -> Self {
        let said = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.severity(), db.message()),
            None => match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            },
        };
        StoreError::Postgres(said)
    }
}

impl From<ProtoError> for StoreError {
    fn from(e: ProtoError) -> Self {
        StoreError::Damaged(e.to_string())
    }
}

/// Writes inside one transaction: nothing is visible to readers, nor
/// durable, until [`RunTx::commit`]; dropped uncommitted, it is rolled back.
pub trait RunTx {
    /// Records a new run.
    fn create_run(&mut self, run: &RunRow) -> Result<(), StoreError>;
    /// Marks a run finished.
    fn finish_run(&mut self, run: &str) -> Result<(), StoreError> {
        self.set_run_status(run, RunStatus::Finished)
    }
    /// Sets a run's status.
    fn set_run_status(&mut self, run: &str, status: RunStatus) -> Result<(), StoreError>;
    /// Records an operator's request for a run.
    fn put_control(&mut self, run: &str, control: &ControlRow) -> Result<(), StoreError>;
    /// Records that `site` joined (again: no change).
    fn add_participant(&mut self, run: &str, site: &str, at: Timestamp) -> Result<(), StoreError>;
    /// Stores (or replaces) a site's offer of an agreement step.
    fn put_offer(
        &mut self,
        run: &str,
        step: AgreementStep,
        site: &str,
        offer: &[u8],
    ) -> Result<(), StoreError>;
    /// Forgets a site's offer of an agreement step (refused).
    fn delete_offer(
        &mut self,
        run: &str,
        step: AgreementStep,
        site: &str,
    ) -> Result<(), StoreError>;
    /// Stores the result of an agreement step.
    fn put_agreement(
        &mut self,
        run: &str,
        step: AgreementStep,
        result: &[u8],
    ) -> Result<(), StoreError>;
    /// Stores model version `version` (the model after that many rounds).
    fn put_model(
        &mut self,
        run: &str,
        version: u32,
        params: &ParameterSet,
        at: Timestamp,
    ) -> Result<(), StoreError>;
    /// Records the open round, before anyone receives its task.
    fn open_round(
        &mut self,
        run: &str,
        round: u32,
        cohort: &[ParticipantId],
        at: Timestamp,
    ) -> Result<(), StoreError>;
    /// Stores an accepted update (for round or step `round`, trained from
    /// model version `base`).
    fn put_update(
        &mut self,
        run: &str,
        round: u32,
        base: u32,
        site: &str,
        update: &Update,
        at: Timestamp,
    ) -> Result<(), StoreError>;
    /// Stores beside `site`'s update of `round` its test rows and test-loss
    /// gradient (`[contribution]`).
    fn put_test_gradient(
        &mut self,
        run: &str,
        round: u32,
        site: &str,
        gradient: (u64, &ParameterSet),
    ) -> Result<(), StoreError>;
    /// Stores a closed round's cohort and whose updates counted.
    fn put_cohort(&mut self, run: &str, row: &CohortRow) -> Result<(), StoreError>;
    /// Stores the aggregate a completed round applied.
    fn put_aggregate(
        &mut self,
        run: &str,
        round: u32,
        aggregate: &RoundAggregate,
    ) -> Result<(), StoreError>;
    /// Stores a closed round's report line (JSON), its evaluation not yet finished.
    fn put_round(
        &mut self,
        run: &str,
        round: u32,
        status: &str,
        record_json: &str,
    ) -> Result<(), StoreError>;
    /// Forgets the open round and the updates of round `round`.
    fn clear_open_round(&mut self, run: &str, round: u32) -> Result<(), StoreError>;
    /// Replaces a round's report line once its evaluation is complete.
    fn finish_round_evaluation(
        &mut self,
        run: &str,
        round: u32,
        record_json: &str,
    ) -> Result<(), StoreError>;
    /// Stores a site's evaluation of round `round`'s model.
    fn put_evaluation(
        &mut self,
        run: &str,
        round: u32,
        site: &str,
        report: &[u8],
    ) -> Result<(), StoreError>;
    /// Appends to the audit log.
    fn audit(&mut self, run: &str, row: &AuditRow) -> Result<(), StoreError>;
    /// Records a release in the privacy ledger; recording the same release
    /// (release, kind, participant) again changes nothing.
    fn put_ledger_row(&mut self, run: &str, row: &LedgerRow) -> Result<(), StoreError>;
    /// Makes every write of this transaction durable at once.
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// A run's durable state: typed reads, and writes in transactions. One
/// owner writes (the store is `Send`, not `Sync`); a transaction is open
/// at most once at a time.
pub trait RunStore: Send {
    /// Opens a transaction.
    fn transaction(&self) -> Result<Box<dyn RunTx + '_>, StoreError>;

    /// Every run, newest first.
    fn runs(&self) -> Result<Vec<RunRow>, StoreError>;
    /// The version of the Tessera build that created the run (none: a
    /// store that does not keep it).
    fn code_version(&self, run: &str) -> Result<Option<String>, StoreError> {
        let _ = run;
        Ok(None)
    }
    /// Sites that joined, sorted.
    fn participants(&self, run: &str) -> Result<Vec<String>, StoreError>;
    /// Offers of an agreement step, by site.
    fn offers(&self, run: &str, step: AgreementStep) -> Result<Offers, StoreError>;
    /// The result of an agreement step.
    fn agreement(&self, run: &str, step: AgreementStep) -> Result<Option<Vec<u8>>, StoreError>;
    /// Model version `version`.
    fn model(&self, run: &str, version: u32) -> Result<Option<ParameterSet>, StoreError>;
    /// The stored model versions, oldest first, with their sizes.
    fn models(&self, run: &str) -> Result<Vec<ModelRow>, StoreError>;
    /// The newest model version.
    fn latest_model_version(&self, run: &str) -> Result<Option<u32>, StoreError>;
    /// Aggregates of the completed rounds up to `up_to`, in order.
    fn aggregates(&self, run: &str, up_to: u32) -> Result<Vec<(u32, RoundAggregate)>, StoreError>;
    /// The open round.
    fn open_round_of(&self, run: &str) -> Result<Option<OpenRoundRow>, StoreError>;
    /// The accepted updates of `round`, in arrival order.
    fn updates(&self, run: &str, round: u32) -> Result<Vec<StoredUpdate>, StoreError>;
    /// Every closed round's cohort and counted sites, by round.
    fn cohorts(&self, run: &str) -> Result<Vec<CohortRow>, StoreError>;
    /// Closed rounds' report lines, by round.
    fn rounds(&self, run: &str) -> Result<Vec<RoundRow>, StoreError>;
    /// Evaluations of round `round`, by site.
    fn evaluations(&self, run: &str, round: u32) -> Result<Vec<EvaluationRow>, StoreError>;
    /// The privacy ledger of a run, in release order.
    fn privacy_ledger(&self, run: &str) -> Result<Vec<LedgerRow>, StoreError>;
    /// The audit log of a run, oldest first.
    fn audit_log(&self, run: &str) -> Result<Vec<AuditRow>, StoreError>;
    /// Replaces the run's live view (what it waits for, each site's last
    /// call: a JSON document the coordinator writes as it goes). A store
    /// without one drops it.
    fn put_live_view(&self, run: &str, view: &str) -> Result<(), StoreError> {
        let _ = (run, view);
        Ok(())
    }
    /// Records a secure join's result (`answer`, JSON) as an unprotected
    /// analytics release of the run, described by `query`. A store without
    /// analytics drops it.
    fn put_join_result(
        &self,
        run: &str,
        query: &str,
        answer: &str,
        at_micros: u64,
    ) -> Result<(), StoreError> {
        let _ = (run, query, answer, at_micros);
        Ok(())
    }
    /// The run's live view, if one was written.
    fn live_view(&self, run: &str) -> Result<Option<String>, StoreError> {
        let _ = run;
        Ok(None)
    }

    /// Why this store may no longer write as the run's one writer (a shared
    /// database's lease taken by another coordinator, or the session that
    /// held it ended); `None` while it may. A store with no lease never
    /// loses one.
    fn lease_lost(&self) -> Option<String> {
        None
    }

    /// The operators' requests for a run, oldest first.
    fn controls(&self, run: &str) -> Result<Vec<ControlRow>, StoreError>;

    /// The run's answered analytics queries, in release order.
    fn answered_queries(&self, run: &str) -> Result<Vec<AnalyticsRow>, StoreError>;

    /// Records an answered query and its ledger rows in one transaction.
    fn record_answer(
        &self,
        run: &str,
        row: &AnalyticsRow,
        ledger: &[LedgerRow],
    ) -> Result<(), StoreError>;

    /// The newest run still running (not finished, stopped or aborted).
    fn unfinished_run(&self) -> Result<Option<RunRow>, StoreError> {
        Ok(self
            .runs()?
            .into_iter()
            .find(|r| r.status == RunStatus::Running.as_str()))
    }

    /// Runs `writes` in one transaction and commits it; an error rolls
    /// every write back.
    fn write(
        &self,
        writes: &mut dyn FnMut(&mut dyn RunTx) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut tx = self.transaction()?;
        writes(&mut *tx)?;
        tx.commit()
    }

    /// Closes a round in one transaction: its cohort, its aggregate (if it
    /// completed), the new model, its report line, its central DP release;
    /// clears the open round and its updates.
    fn close_round(&self, run: &str, close: &RoundClose<'_>) -> Result<(), StoreError> {
        let c = *close;
        self.write(&mut |tx| {
            tx.put_cohort(
                run,
                &CohortRow {
                    round: c.round,
                    cohort: c.cohort.to_vec(),
                    counted: c.counted.to_vec(),
                },
            )?;
            if let Some(a) = c.aggregate {
                tx.put_aggregate(run, c.round, a)?;
            }
            tx.put_model(run, c.round, c.model, c.at)?;
            tx.put_round(run, c.round, c.status, c.record_json)?;
            if let Some(row) = c.privacy {
                tx.put_ledger_row(run, row)?;
            }
            tx.clear_open_round(run, c.round)
        })
    }

    /// Records a new run (one transaction).
    fn create_run(&self, run: &RunRow) -> Result<(), StoreError> {
        self.write(&mut |tx| tx.create_run(run))
    }
    /// Marks a run finished (one transaction).
    fn finish_run(&self, run: &str) -> Result<(), StoreError> {
        self.write(&mut |tx| tx.finish_run(run))
    }
    /// Ends a run with `status` (one transaction).
    fn end_run(&self, run: &str, status: RunStatus) -> Result<(), StoreError> {
        self.write(&mut |tx| tx.set_run_status(run, status))
    }
    /// Records a rollout's decision in the model registry: the candidate
    /// promoted to production (the production version it replaces
    /// archived) or archived, with its reason and evidence, in one
    /// transaction that first checks the registry still holds what the
    /// rollout compared (refused otherwise, saying what changed). Refused
    /// by a store without a registry.
    fn record_rollout(&self, decision: &RolloutDecision<'_>) -> Result<(), StoreError> {
        let _ = decision;
        Err(StoreError::Refused(
            "this run store keeps no model registry".into(),
        ))
    }
    /// Records an operator's request (one transaction).
    fn request(&self, run: &str, control: &ControlRow) -> Result<(), StoreError> {
        self.write(&mut |tx| tx.put_control(run, control))
    }
    /// Records that `site` joined (one transaction).
    fn add_participant(&self, run: &str, site: &str, at: Timestamp) -> Result<(), StoreError> {
        self.write(&mut |tx| tx.add_participant(run, site, at))
    }
    /// Stores a site's offer of an agreement step (one transaction).
    fn put_offer(
        &self,
        run: &str,
        step: AgreementStep,
        site: &str,
        offer: &[u8],
    ) -> Result<(), StoreError> {
        self.write(&mut |tx| tx.put_offer(run, step, site, offer))
    }
    /// Forgets a site's offer of an agreement step (one transaction).
    fn delete_offer(&self, run: &str, step: AgreementStep, site: &str) -> Result<(), StoreError> {
        self.write(&mut |tx| tx.delete_offer(run, step, site))
    }
    /// Stores the result of an agreement step (one transaction).
    fn put_agreement(
        &self,
        run: &str,
        step: AgreementStep,
        result: &[u8],
    ) -> Result<(), StoreError> {
        self.write(&mut |tx| tx.put_agreement(run, step, result))
    }
    /// Records the open round (one transaction).
    fn open_round(
        &self,
        run: &str,
        round: u32,
        cohort: &[ParticipantId],
        at: Timestamp,
    ) -> Result<(), StoreError> {
        self.write(&mut |tx| tx.open_round(run, round, cohort, at))
    }
    /// Stores an accepted update, with its test gradient where it has one
    /// (one transaction); the caller commits it before acknowledging.
    #[allow(clippy::too_many_arguments)]
    fn put_update(
        &self,
        run: &str,
        round: u32,
        base: u32,
        site: &str,
        update: &Update,
        gradient: Option<(u64, &ParameterSet)>,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        self.write(&mut |tx| {
            tx.put_update(run, round, base, site, update, at)?;
            match gradient {
                Some(g) => tx.put_test_gradient(run, round, site, g),
                None => Ok(()),
            }
        })
    }
    /// Replaces a round's report line once its evaluation is complete (one transaction).
    fn finish_round_evaluation(
        &self,
        run: &str,
        round: u32,
        record_json: &str,
    ) -> Result<(), StoreError> {
        self.write(&mut |tx| tx.finish_round_evaluation(run, round, record_json))
    }
    /// Stores a site's evaluation (one transaction).
    fn put_evaluation(
        &self,
        run: &str,
        round: u32,
        site: &str,
        report: &[u8],
    ) -> Result<(), StoreError> {
        self.write(&mut |tx| tx.put_evaluation(run, round, site, report))
    }
    /// Appends to the audit log (one transaction).
    fn audit(
        &self,
        run: &str,
        at: Timestamp,
        site: &str,
        action: &str,
        outcome: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let row = AuditRow {
            at_micros: at.0,
            site: site.to_string(),
            action: action.to_string(),
            outcome: outcome.to_string(),
            detail: detail.to_string(),
        };
        self.write(&mut |tx| tx.audit(run, &row))
    }
    /// Records a release in the privacy ledger (one transaction).
    fn put_ledger_row(&self, run: &str, row: &LedgerRow) -> Result<(), StoreError> {
        self.write(&mut |tx| tx.put_ledger_row(run, row))
    }
}

#[cfg(test)]
mod tests;
