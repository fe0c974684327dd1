//! Federated statistics in the store: each answered query, its answer and
//! its privacy cost, next to the run's privacy ledger so that training and
//! analytics on the same run are charged together.

use rusqlite::params;

use super::{SqliteStore, insert_ledger_row};
use crate::store::{LedgerRow, StoreError};

/// An answered query as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalyticsRow {
    /// Its release number among the run's analytics releases (the ledger
    /// rows of kind `analytics` carry the same).
    pub release: u32,
    /// The query as given.
    pub query: String,
    /// The answer (JSON).
    pub answer: String,
    /// Whether noise protected it (`false`: an unprotected release).
    pub protected: bool,
    /// Its epsilon (0 when unprotected).
    pub epsilon: f64,
    /// Its delta (0 when unprotected).
    pub delta: f64,
    /// The noise standard deviation per value (0 when unprotected).
    pub noise_std: f64,
    /// When it was recorded (microseconds since the Unix epoch).
    pub recorded_micros: u64,
}

impl AnalyticsRow {
    /// A release without noise (a secure join's exact result): no epsilon,
    /// no delta, no ledger row.
    pub fn unprotected(release: u32, query: &str, answer: &str, at_micros: u64) -> Self {
        AnalyticsRow {
            release,
            query: query.to_string(),
            answer: answer.to_string(),
            protected: false,
            epsilon: 0.0,
            delta: 0.0,
            noise_std: 0.0,
            recorded_micros: at_micros,
        }
    }
}

impl SqliteStore {
    /// Records an answered query and its ledger rows in one transaction.
    pub fn record_analytics(
        &self,
        run: &str,
        row: &AnalyticsRow,
        ledger: &[LedgerRow],
    ) -> Result<(), StoreError> {
        // One owner, not shared between threads (as `RunStore::transaction`).
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO analytics_queries (run_id, release, query, answer, protected, epsilon,
             delta, noise_std, recorded_micros) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                run,
                row.release,
                row.query,
                row.answer,
                row.protected,
                row.epsilon,
                row.delta,
                row.noise_std,
                i64::try_from(row.recorded_micros).unwrap_or(i64::MAX)
            ],
        )?;
        for l in ledger {
            insert_ledger_row(&tx, run, l)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a secure join's result as the run's next analytics release,
    /// unprotected (exact: no noise, no epsilon), with no ledger row.
    pub fn record_join(
        &self,
        run: &str,
        query: &str,
        answer: &str,
        at_micros: u64,
    ) -> Result<(), StoreError> {
        let last: Option<i64> = self.conn.query_row(
            "SELECT max(release) FROM analytics_queries WHERE run_id = ?1",
            params![run],
            |r| r.get(0),
        )?;
        let release = u32::try_from(last.unwrap_or(0).saturating_add(1)).unwrap_or(u32::MAX);
        self.record_analytics(
            run,
            &AnalyticsRow::unprotected(release, query, answer, at_micros),
            &[],
        )
    }

    /// The run's answered queries, in release order (none in a database
    /// written before the table existed).
    pub fn analytics(&self, run: &str) -> Result<Vec<AnalyticsRow>, StoreError> {
        let exists: i64 = self.conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'analytics_queries'",
            [],
            |r| r.get(0),
        )?;
        if exists == 0 {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT release, query, answer, protected, epsilon, delta, noise_std, recorded_micros
             FROM analytics_queries WHERE run_id = ?1 ORDER BY release",
        )?;
        let rows = stmt.query_map(params![run], |r| {
            Ok(AnalyticsRow {
                release: r.get(0)?,
                query: r.get(1)?,
                answer: r.get(2)?,
                protected: r.get(3)?,
                epsilon: r.get(4)?,
                delta: r.get(5)?,
                noise_std: r.get(6)?,
                recorded_micros: r.get::<_, i64>(7)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
