//! A transaction on a [`super::PostgresStore`]: `BEGIN` at its start (with
//! the lease's fencing check where the store leads), `COMMIT` by
//! [`RunTx::commit`], `ROLLBACK` when dropped uncommitted.

use std::cell::RefMut;

use postgres::types::ToSql;
use postgres::{Client, Row};
use tessera_aggregate::RoundAggregate;
use tessera_core::{FitStats, ParameterSet, ParticipantId, Timestamp, Update};
use tessera_proto::{decode_parameters, encode_parameters};

use super::{Lease, u32_of, u64_of};
use crate::store::sqlite::AnalyticsRow;
use crate::store::{
    AgreementStep, AuditRow, CohortRow, ControlRow, LedgerRow, RunRow, RunStatus, RunTx,
    StoreError, StoredUpdate,
};

pub(super) struct PgTx<'a> {
    conn: RefMut<'a, Client>,
    open: bool,
}

fn micros(t: Timestamp) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn json(v: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Damaged(e.to_string()))
}

/// An update row as `updates` stores it (the columns of
/// [`super::PostgresStore::updates`]'s query, in order).
pub(super) fn stored_update(r: &Row) -> Result<StoredUpdate, StoreError> {
    let control: Option<Vec<u8>> = r.try_get(6)?;
    let test_rows: Option<i64> = r.try_get(9)?;
    let gradient: Option<Vec<u8>> = r.try_get(10)?;
    let test_gradient = match (test_rows, gradient) {
        (Some(rows), Some(g)) => Some((u64_of(rows), decode_parameters(&g)?)),
        _ => None,
    };
    Ok(StoredUpdate {
        site: ParticipantId::new(r.try_get::<_, String>(0)?),
        base: u32_of(r.try_get(1)?, "base version")?,
        update: Update {
            delta: decode_parameters(&r.try_get::<_, Vec<u8>>(5)?)?,
            n_examples: u64_of(r.try_get(2)?),
            aux: control.map(|c| decode_parameters(&c)).transpose()?,
            stats: FitStats {
                n_steps: u64_of(r.try_get(3)?),
                mean_train_loss: r.try_get(4)?,
                start_loss: r.try_get(8)?,
            },
        },
        test_gradient,
        at: Timestamp(u64_of(r.try_get(7)?)),
    })
}

impl<'a> PgTx<'a> {
    /// Begins a transaction on `conn`; with `lease`, refused unless the
    /// lease's epoch is still this store's (read `FOR SHARE`, so that a
    /// new leader's increment waits until this transaction ends).
    pub(super) fn begin(
        mut conn: RefMut<'a, Client>,
        lease: Option<Lease>,
    ) -> Result<Self, StoreError> {
        conn.batch_execute("BEGIN")?;
        let mut tx = Self { conn, open: true };
        if let Some(lease) = lease {
            let row = tx.conn.query_opt(
                "SELECT epoch, holder FROM coordinator_lease WHERE id = 1 FOR SHARE",
                &[],
            )?;
            let now: Option<(i64, String)> = row
                .map(|r| Ok::<_, postgres::Error>((r.try_get(0)?, r.try_get(1)?)))
                .transpose()?;
            match now {
                Some((epoch, _)) if epoch == lease.epoch => {}
                other => {
                    let by = other.map_or("no one".to_string(), |(epoch, holder)| {
                        format!("{holder}, lease epoch {epoch}")
                    });
                    return Err(StoreError::Fenced(format!(
                        "this coordinator's lease (epoch {}) has been taken over by {by}: \
                         it writes nothing more",
                        lease.epoch
                    )));
                }
            }
        }
        Ok(tx)
    }

    fn exec(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<(), StoreError> {
        self.conn.execute(sql, params)?;
        Ok(())
    }

    /// Commits.
    pub(super) fn finish(mut self) -> Result<(), StoreError> {
        self.open = false;
        self.conn.batch_execute("COMMIT")?;
        Ok(())
    }

    pub(super) fn put_live_view(&mut self, run: &str, view: &str) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO live_views (run_id, view) VALUES ($1, $2)
             ON CONFLICT (run_id) DO UPDATE SET view = excluded.view",
            &[&run, &view],
        )
    }

    pub(super) fn next_analytics_release(&mut self, run: &str) -> Result<u32, StoreError> {
        let last: Option<i64> = self
            .conn
            .query_one(
                "SELECT max(release) FROM analytics_queries WHERE run_id = $1",
                &[&run],
            )?
            .try_get(0)?;
        Ok(u32::try_from(last.unwrap_or(0).saturating_add(1)).unwrap_or(u32::MAX))
    }

    pub(super) fn put_analytics(
        &mut self,
        run: &str,
        row: &AnalyticsRow,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO analytics_queries (run_id, release, query, answer, protected, epsilon,
             delta, noise_std, recorded_micros) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &run,
                &i64::from(row.release),
                &row.query,
                &row.answer,
                &row.protected,
                &row.epsilon,
                &row.delta,
                &row.noise_std,
                &big(row.recorded_micros),
            ],
        )
    }
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        if self.open {
            // A failed rollback leaves the session in a failed transaction;
            // the next BEGIN then fails and says so.
            let _ = self.conn.batch_execute("ROLLBACK");
        }
    }
}

impl RunTx for PgTx<'_> {
    fn create_run(&mut self, run: &RunRow) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO runs (id, name, plan, strategy, seed, rounds, created_unix_micros, status,
             code_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &run.id,
                &run.name,
                &run.plan,
                &run.strategy,
                &(run.seed as i64),
                &i64::from(run.rounds),
                &big(run.created_unix_micros),
                &run.status,
                &env!("CARGO_PKG_VERSION"),
            ],
        )
    }

    fn set_run_status(&mut self, run: &str, status: RunStatus) -> Result<(), StoreError> {
        self.exec(
            "UPDATE runs SET status = $2 WHERE id = $1",
            &[&run, &status.as_str()],
        )
    }

    fn put_control(&mut self, run: &str, control: &ControlRow) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO run_control (run_id, action, reason, at_unix_micros) VALUES ($1, $2, $3, $4)",
            &[
                &run,
                &control.action.as_str(),
                &control.reason,
                &big(control.at_unix_micros),
            ],
        )
    }

    fn add_participant(&mut self, run: &str, site: &str, at: Timestamp) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO participants (run_id, site, joined_micros) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&run, &site, &micros(at)],
        )
    }

    fn put_offer(
        &mut self,
        run: &str,
        step: AgreementStep,
        site: &str,
        offer: &[u8],
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO agreement_steps (run_id, step, site, offer) VALUES ($1, $2, $3, $4)
             ON CONFLICT (run_id, step, site) DO UPDATE SET offer = excluded.offer",
            &[&run, &i64::from(step.code()), &site, &offer],
        )
    }

    fn delete_offer(
        &mut self,
        run: &str,
        step: AgreementStep,
        site: &str,
    ) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM agreement_steps WHERE run_id = $1 AND step = $2 AND site = $3",
            &[&run, &i64::from(step.code()), &site],
        )
    }

    fn put_agreement(
        &mut self,
        run: &str,
        step: AgreementStep,
        result: &[u8],
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO agreements (run_id, step, result) VALUES ($1, $2, $3)
             ON CONFLICT (run_id, step) DO UPDATE SET result = excluded.result",
            &[&run, &i64::from(step.code()), &result],
        )
    }

    fn put_model(
        &mut self,
        run: &str,
        version: u32,
        params: &ParameterSet,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO models (run_id, version, params, created_micros) VALUES ($1, $2, $3, $4)
             ON CONFLICT (run_id, version) DO UPDATE
                 SET params = excluded.params, created_micros = excluded.created_micros",
            &[
                &run,
                &i64::from(version),
                &encode_parameters(params),
                &micros(at),
            ],
        )
    }

    fn open_round(
        &mut self,
        run: &str,
        round: u32,
        cohort: &[ParticipantId],
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let names: Vec<String> = cohort.iter().map(|p| p.as_str().to_string()).collect();
        self.exec(
            "INSERT INTO open_rounds (run_id, round, cohort, opened_micros) VALUES ($1, $2, $3, $4)
             ON CONFLICT (run_id) DO UPDATE SET round = excluded.round, cohort = excluded.cohort,
                 opened_micros = excluded.opened_micros",
            &[&run, &i64::from(round), &json(&names)?, &micros(at)],
        )
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
        self.exec(
            "INSERT INTO updates (run_id, round, site, base, n_examples, n_steps, mean_train_loss,
             delta, control, received_micros, start_loss)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &run,
                &i64::from(round),
                &site,
                &i64::from(base),
                &big(update.n_examples),
                &big(update.stats.n_steps),
                &update.stats.mean_train_loss,
                &encode_parameters(&update.delta),
                &update.aux.as_ref().map(encode_parameters),
                &micros(at),
                &update.stats.start_loss,
            ],
        )
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
        self.exec(
            "UPDATE updates SET test_rows = $1, test_gradient = $2
             WHERE run_id = $3 AND round = $4 AND site = $5",
            &[
                &rows,
                &encode_parameters(gradient),
                &run,
                &i64::from(round),
                &site,
            ],
        )
    }

    fn put_cohort(&mut self, run: &str, row: &CohortRow) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO round_cohorts (run_id, round, cohort, counted) VALUES ($1, $2, $3, $4)
             ON CONFLICT (run_id, round) DO UPDATE
                 SET cohort = excluded.cohort, counted = excluded.counted",
            &[
                &run,
                &i64::from(row.round),
                &json(&row.cohort)?,
                &json(&row.counted)?,
            ],
        )
    }

    fn put_aggregate(
        &mut self,
        run: &str,
        round: u32,
        a: &RoundAggregate,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO round_aggregates (run_id, round, mean_delta, control_step, n_updates,
             n_examples, weight_sum, mean_train_loss, n_participants)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (run_id, round) DO UPDATE SET mean_delta = excluded.mean_delta,
                 control_step = excluded.control_step, n_updates = excluded.n_updates,
                 n_examples = excluded.n_examples, weight_sum = excluded.weight_sum,
                 mean_train_loss = excluded.mean_train_loss,
                 n_participants = excluded.n_participants",
            &[
                &run,
                &i64::from(round),
                &encode_parameters(&a.mean_delta),
                &a.aux_step.as_ref().map(encode_parameters),
                &big(a.n_updates),
                &big(a.n_examples),
                &a.weight_sum,
                &a.mean_train_loss,
                &big(a.n_participants),
            ],
        )
    }

    fn put_round(
        &mut self,
        run: &str,
        round: u32,
        status: &str,
        record_json: &str,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO rounds (run_id, round, status, record, evaluated)
             VALUES ($1, $2, $3, $4, FALSE)
             ON CONFLICT (run_id, round) DO UPDATE SET status = excluded.status,
                 record = excluded.record, evaluated = FALSE",
            &[&run, &i64::from(round), &status, &record_json],
        )
    }

    fn clear_open_round(&mut self, run: &str, round: u32) -> Result<(), StoreError> {
        self.exec("DELETE FROM open_rounds WHERE run_id = $1", &[&run])?;
        self.exec(
            "DELETE FROM updates WHERE run_id = $1 AND round = $2",
            &[&run, &i64::from(round)],
        )
    }

    fn finish_round_evaluation(
        &mut self,
        run: &str,
        round: u32,
        record_json: &str,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE rounds SET record = $3, evaluated = TRUE WHERE run_id = $1 AND round = $2",
            &[&run, &i64::from(round), &record_json],
        )
    }

    fn put_evaluation(
        &mut self,
        run: &str,
        round: u32,
        site: &str,
        report: &[u8],
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO evaluations (run_id, round, site, report) VALUES ($1, $2, $3, $4)
             ON CONFLICT (run_id, round, site) DO UPDATE SET report = excluded.report",
            &[&run, &i64::from(round), &site, &report],
        )
    }

    fn audit(&mut self, run: &str, row: &AuditRow) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO audit (run_id, at_micros, site, action, outcome, detail)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &run,
                &big(row.at_micros),
                &row.site,
                &row.action,
                &row.outcome,
                &row.detail,
            ],
        )
    }

    fn put_ledger_row(&mut self, run: &str, row: &LedgerRow) -> Result<(), StoreError> {
        let e = &row.entry;
        self.exec(
            "INSERT INTO privacy_ledger (run_id, release, kind, participant, sampling_rate,
             noise_multiplier, steps, run_epsilon, delta, clip_norm, next_clip_norm, noise_std,
             updates, recorded_micros)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT DO NOTHING",
            &[
                &run,
                &i64::from(e.release),
                &e.kind,
                &e.participant.clone().unwrap_or_default(),
                &e.event.sampling_rate,
                &e.event.noise_multiplier,
                &big(e.event.steps),
                &e.run_epsilon,
                &row.delta,
                &row.clip_norm,
                &row.next_clip_norm,
                &row.noise_std,
                &big(row.updates),
                &big(row.recorded_micros),
            ],
        )
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        (*self).finish()
    }
}
