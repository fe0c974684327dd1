//! The PostgreSQL store (`--db postgres://...`), and the lease that makes
//! one of several coordinators on one database the leader.
//!
//! The tables are the SQLite store's (`schema.rs`). Transactions run at
//! READ COMMITTED with one writer: the leader. Several coordinators started
//! on one database race for a lease: a session-level advisory lock
//! (`pg_try_advisory_lock`) held by the leader's own connection for as long
//! as it lives, so that a leader killed with SIGKILL (its socket closed by
//! its operating system) frees it at once. Whoever takes it increments the
//! lease's epoch, its fencing token; each of the leader's transactions
//! first reads the epoch (`FOR SHARE`: a new leader's increment waits for
//! it) and is refused if another has taken the lease since, so a leader
//! that lost its session and somehow went on writing cannot overwrite its
//! successor. A standby waits, saying whom it waits for, then opens the
//! stored run as a restarted coordinator would: the open round and its
//! stored updates resume, nothing counted twice.
//!
//! Reads (`tessera status`, `runs`) take no lease. The connection is not
//! encrypted (`NoTls`): the database belongs on the coordinators' own host
//! or network (or a Unix socket: `host=/path` in the URL's query).

use std::cell::{RefCell, RefMut};

use postgres::{Client, NoTls, Row};
use tessera_aggregate::RoundAggregate;
use tessera_core::{ParameterSet, ParticipantId, Timestamp};
use tessera_privacy::{DpEvent, LedgerEntry};
use tessera_proto::decode_parameters;

mod schema;
#[cfg(test)]
pub(crate) mod tests;
mod tx;

use super::sqlite::AnalyticsRow;
use super::{
    AgreementStep, AuditRow, CohortRow, Control, ControlRow, EvaluationRow, LedgerRow, ModelRow,
    Offers, OpenRoundRow, RoundRow, RunRow, RunStore, RunTx, StoreError, StoredUpdate,
};
use schema::{LEASE_LOCK, SCHEMA, SCHEMA_LOCK, SCHEMA_PRESENT};

/// Whether `db` names a PostgreSQL database (`postgres://` or
/// `postgresql://`) rather than a SQLite file.
pub fn is_postgres(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// `url` with its password, if any, replaced by `***` (for messages): the
/// one in its user part and a `password=` in its query.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (body, query) = match rest.split_once('?') {
        Some((body, query)) => (body, Some(query)),
        None => (rest, None),
    };
    // The user part ends at the last '@' (a password may hold '/').
    let body = match body.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:***@{host}"),
            None => body.to_string(),
        },
        None => body.to_string(),
    };
    let query = query.map(|q| {
        q.split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    match query {
        Some(q) => format!("{scheme}://{body}?{q}"),
        None => format!("{scheme}://{body}"),
    }
}

/// `db` as messages show it: a PostgreSQL URL without its password.
pub fn shown(db: &std::path::Path) -> String {
    redacted(&db.to_string_lossy())
}

/// Whether the tables are there.
fn present(c: &mut impl postgres::GenericClient) -> Result<bool, StoreError> {
    Ok(c.query_one(SCHEMA_PRESENT, &[])?.try_get(0)?)
}

/// The leader's hold on the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    epoch: i64,
}

/// A coordinator's PostgreSQL database.
pub struct PostgresStore {
    conn: RefCell<Client>,
    lease: Option<Lease>,
}

/// A session with the database at `url` that finds out within about half
/// a minute when the other side is gone: the client's TCP keepalives and
/// user timeout for the coordinator, the server's keepalives for the
/// leader's session (so that a leader cut off by the network frees its
/// lease in about 25 s, not in the system's default two hours).
fn connect(url: &str) -> Result<Client, StoreError> {
    let cannot = |e: postgres::Error| {
        let why = match StoreError::from(e) {
            StoreError::Postgres(why) => why,
            other => other.to_string(),
        };
        StoreError::Postgres(format!("cannot connect to {}: {why}", redacted(url)))
    };
    let mut config: postgres::Config = url.parse().map_err(cannot)?;
    config
        .connect_timeout(std::time::Duration::from_secs(10))
        .keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(10))
        .keepalives_interval(std::time::Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(std::time::Duration::from_secs(30));
    let mut client = config.connect(NoTls).map_err(cannot)?;
    client
        .batch_execute(
            "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
             SET tcp_keepalives_count = 3",
        )
        .map_err(cannot)?;
    Ok(client)
}

impl PostgresStore {
    /// Connects to the database at `url`, creating the tables it lacks,
    /// without a lease: for reading, and for an operator's requests
    /// (`tessera stop`), which the leader reads.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let mut conn = connect(url)?;
        if !present(&mut conn)? {
            let mut tx = conn.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
            if !present(&mut tx)? {
                tx.batch_execute(SCHEMA)?;
            }
            tx.commit()?;
        }
        Ok(Self {
            conn: RefCell::new(conn),
            lease: None,
        })
    }

    /// Opens the database at `url` as the coordinators' leader: waits until
    /// no other coordinator holds the lease (calling `waiting` with who
    /// holds it, at once and then every `remind`), takes it as `holder`
    /// and returns the store whose every transaction checks that it still
    /// holds it. A lost connection loses the lease: the store then fails.
    pub fn lead(
        url: &str,
        holder: &str,
        remind: std::time::Duration,
        waiting: &mut dyn FnMut(&str),
    ) -> Result<Self, StoreError> {
        let mut store = Self::open(url)?;
        let mut last_said: Option<std::time::Instant> = None;
        let mut say = |what: &str| {
            if last_said.is_none_or(|t| t.elapsed() >= remind) {
                waiting(what);
                last_said = Some(std::time::Instant::now());
            }
        };
        loop {
            let taken = store
                .client()?
                .query_one("SELECT pg_try_advisory_lock($1)", &[&LEASE_LOCK])
                .and_then(|row| row.try_get::<_, bool>(0));
            match taken {
                Ok(true) => break,
                Ok(false) => say(&store
                    .lease_holder()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| "another coordinator".into())),
                // The server restarted, or the network failed: a standby
                // waits on, connecting again.
                Err(e) => {
                    say(&format!(
                        "the database cannot be asked ({})",
                        StoreError::from(e)
                    ));
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    match Self::open(url) {
                        Ok(again) => store = again,
                        Err(e) => say(&format!("the database cannot be reached ({e})")),
                    }
                    continue;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let epoch: i64 = store
            .client()?
            .query_one(
                "INSERT INTO coordinator_lease (id, epoch, holder, since_unix_micros, backend_pid)
                 VALUES (1, 1, $1, $2, pg_backend_pid())
                 ON CONFLICT (id) DO UPDATE SET epoch = coordinator_lease.epoch + 1,
                     holder = excluded.holder, since_unix_micros = excluded.since_unix_micros,
                     backend_pid = excluded.backend_pid
                 RETURNING epoch",
                &[&holder, &now],
            )?
            .try_get(0)?;
        store.lease = Some(Lease { epoch });
        Ok(store)
    }

    /// The lease's epoch this store holds (`None`: no lease).
    pub fn epoch(&self) -> Option<i64> {
        self.lease.map(|l| l.epoch)
    }

    /// Who holds (or last held) the lease, and since when.
    pub fn lease_holder(&self) -> Result<Option<String>, StoreError> {
        let row = self.client()?.query_opt(
            "SELECT holder, epoch, backend_pid FROM coordinator_lease WHERE id = 1",
            &[],
        )?;
        Ok(match row {
            Some(r) => {
                let (holder, epoch, pid): (String, i64, i64) =
                    (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                Some(format!(
                    "{holder} (lease epoch {epoch}, database session {pid})"
                ))
            }
            None => None,
        })
    }

    fn client(&self) -> Result<RefMut<'_, Client>, StoreError> {
        self.conn
            .try_borrow_mut()
            .map_err(|_| StoreError::Refused("the store is busy with an open transaction".into()))
    }

    fn query(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        Ok(self.client()?.query(sql, params)?)
    }

    fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.client()?.query_opt(sql, params)?)
    }
}

/// A stored count or round, as the rows' unsigned types (a negative or too
/// large value is a damaged record).
fn u32_of(v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Damaged(format!("{what} {v} out of range")))
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn names(json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Damaged(format!("site list: {e}")))
}

impl RunStore for PostgresStore {
    fn lease_lost(&self) -> Option<String> {
        let lease = self.lease?;
        // Busy in a transaction: that transaction checks the lease itself.
        let mut conn = self.client().ok()?;
        if conn.is_closed() {
            return Some("its database session ended, and the lease with it".into());
        }
        match conn.query_opt(
            "SELECT epoch, holder FROM coordinator_lease WHERE id = 1",
            &[],
        ) {
            Ok(Some(row)) => {
                let now: (i64, String) = (row.try_get(0).ok()?, row.try_get(1).ok()?);
                (now.0 != lease.epoch).then(|| {
                    format!(
                        "{} took the lease (epoch {} after this one's {})",
                        now.1, now.0, lease.epoch
                    )
                })
            }
            Ok(None) => Some("the lease's row is gone from the database".into()),
            Err(e) if conn.is_closed() => Some(format!(
                "its database session ended, and the lease with it ({})",
                StoreError::from(e)
            )),
            // A failed query on a live session: the writes report it.
            Err(_) => None,
        }
    }

    fn transaction(&self) -> Result<Box<dyn RunTx + '_>, StoreError> {
        Ok(Box::new(tx::PgTx::begin(self.client()?, self.lease)?))
    }

    fn runs(&self) -> Result<Vec<RunRow>, StoreError> {
        let rows = self.query(
            "SELECT id, name, plan, strategy, seed, rounds, created_unix_micros, status FROM runs
             ORDER BY created_unix_micros DESC, id DESC",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                Ok(RunRow {
                    id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    plan: r.try_get(2)?,
                    strategy: r.try_get(3)?,
                    seed: r.try_get::<_, i64>(4)? as u64,
                    rounds: u32_of(r.try_get(5)?, "planned rounds")?,
                    created_unix_micros: u64_of(r.try_get(6)?),
                    status: r.try_get(7)?,
                })
            })
            .collect()
    }

    fn code_version(&self, run: &str) -> Result<Option<String>, StoreError> {
        let row = self.query_opt("SELECT code_version FROM runs WHERE id = $1", &[&run])?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    fn participants(&self, run: &str) -> Result<Vec<String>, StoreError> {
        let rows = self.query(
            "SELECT site FROM participants WHERE run_id = $1 ORDER BY site",
            &[&run],
        )?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    fn offers(&self, run: &str, step: AgreementStep) -> Result<Offers, StoreError> {
        let rows = self.query(
            "SELECT site, offer FROM agreement_steps WHERE run_id = $1 AND step = $2 ORDER BY site",
            &[&run, &i64::from(step.code())],
        )?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, postgres::Error>>()?)
    }

    fn agreement(&self, run: &str, step: AgreementStep) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self.query_opt(
            "SELECT result FROM agreements WHERE run_id = $1 AND step = $2",
            &[&run, &i64::from(step.code())],
        )?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    fn model(&self, run: &str, version: u32) -> Result<Option<ParameterSet>, StoreError> {
        let row = self.query_opt(
            "SELECT params FROM models WHERE run_id = $1 AND version = $2",
            &[&run, &i64::from(version)],
        )?;
        let bytes: Option<Vec<u8>> = row.map(|r| r.try_get(0)).transpose()?;
        Ok(bytes.map(|b| decode_parameters(&b)).transpose()?)
    }

    fn models(&self, run: &str) -> Result<Vec<ModelRow>, StoreError> {
        let rows = self.query(
            "SELECT version, octet_length(params)::BIGINT, created_micros FROM models
             WHERE run_id = $1 ORDER BY version",
            &[&run],
        )?;
        rows.iter()
            .map(|r| {
                Ok(ModelRow {
                    version: u32_of(r.try_get(0)?, "model version")?,
                    bytes: u64_of(r.try_get(1)?),
                    created: Timestamp(u64_of(r.try_get(2)?)),
                })
            })
            .collect()
    }

    fn latest_model_version(&self, run: &str) -> Result<Option<u32>, StoreError> {
        let row = self.query_opt("SELECT MAX(version) FROM models WHERE run_id = $1", &[&run])?;
        let v: Option<i64> = match row {
            Some(r) => r.try_get(0)?,
            None => None,
        };
        v.map(|v| u32_of(v, "model version")).transpose()
    }

    fn aggregates(&self, run: &str, up_to: u32) -> Result<Vec<(u32, RoundAggregate)>, StoreError> {
        let rows = self.query(
            "SELECT round, mean_delta, control_step, n_updates, n_examples, weight_sum,
                    mean_train_loss, n_participants
             FROM round_aggregates WHERE run_id = $1 AND round <= $2 ORDER BY round",
            &[&run, &i64::from(up_to)],
        )?;
        rows.iter()
            .map(|r| {
                let control: Option<Vec<u8>> = r.try_get(2)?;
                Ok((
                    u32_of(r.try_get(0)?, "round")?,
                    RoundAggregate {
                        mean_delta: decode_parameters(&r.try_get::<_, Vec<u8>>(1)?)?,
                        aux_step: control.map(|c| decode_parameters(&c)).transpose()?,
                        n_updates: u64_of(r.try_get(3)?),
                        n_examples: u64_of(r.try_get(4)?),
                        weight_sum: r.try_get(5)?,
                        mean_train_loss: r.try_get(6)?,
                        n_participants: u64_of(r.try_get(7)?),
                    },
                ))
            })
            .collect()
    }

    fn open_round_of(&self, run: &str) -> Result<Option<OpenRoundRow>, StoreError> {
        let Some(r) = self.query_opt(
            "SELECT round, cohort, opened_micros FROM open_rounds WHERE run_id = $1",
            &[&run],
        )?
        else {
            return Ok(None);
        };
        Ok(Some(OpenRoundRow {
            round: u32_of(r.try_get(0)?, "round")?,
            cohort: names(&r.try_get::<_, String>(1)?)?
                .into_iter()
                .map(ParticipantId::new)
                .collect(),
            opened: Timestamp(u64_of(r.try_get(2)?)),
        }))
    }

    fn updates(&self, run: &str, round: u32) -> Result<Vec<StoredUpdate>, StoreError> {
        let rows = self.query(
            "SELECT site, base, n_examples, n_steps, mean_train_loss, delta, control,
                    received_micros, start_loss, test_rows, test_gradient
             FROM updates WHERE run_id = $1 AND round = $2 ORDER BY id",
            &[&run, &i64::from(round)],
        )?;
        rows.iter().map(tx::stored_update).collect()
    }

    fn cohorts(&self, run: &str) -> Result<Vec<CohortRow>, StoreError> {
        let rows = self.query(
            "SELECT round, cohort, counted FROM round_cohorts WHERE run_id = $1 ORDER BY round",
            &[&run],
        )?;
        rows.iter()
            .map(|r| {
                Ok(CohortRow {
                    round: u32_of(r.try_get(0)?, "round")?,
                    cohort: names(&r.try_get::<_, String>(1)?)?,
                    counted: names(&r.try_get::<_, String>(2)?)?,
                })
            })
            .collect()
    }

    fn rounds(&self, run: &str) -> Result<Vec<RoundRow>, StoreError> {
        let rows = self.query(
            "SELECT round, status, record, evaluated FROM rounds WHERE run_id = $1 ORDER BY round",
            &[&run],
        )?;
        rows.iter()
            .map(|r| {
                Ok(RoundRow {
                    round: u32_of(r.try_get(0)?, "round")?,
                    status: r.try_get(1)?,
                    record: r.try_get(2)?,
                    evaluated: r.try_get(3)?,
                })
            })
            .collect()
    }

    fn evaluations(&self, run: &str, round: u32) -> Result<Vec<EvaluationRow>, StoreError> {
        let rows = self.query(
            "SELECT site, report FROM evaluations WHERE run_id = $1 AND round = $2 ORDER BY site",
            &[&run, &i64::from(round)],
        )?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(EvaluationRow {
                    site: r.try_get(0)?,
                    report: r.try_get(1)?,
                })
            })
            .collect::<Result<_, postgres::Error>>()?)
    }

    fn privacy_ledger(&self, run: &str) -> Result<Vec<LedgerRow>, StoreError> {
        let rows = self.query(
            "SELECT release, kind, participant, sampling_rate, noise_multiplier, steps, run_epsilon,
                    delta, clip_norm, next_clip_norm, noise_std, updates, recorded_micros
             FROM privacy_ledger WHERE run_id = $1 ORDER BY release, kind, participant",
            &[&run],
        )?;
        rows.iter()
            .map(|r| {
                let participant: String = r.try_get(2)?;
                Ok(LedgerRow {
                    entry: LedgerEntry {
                        release: u32_of(r.try_get(0)?, "release")?,
                        kind: r.try_get(1)?,
                        participant: (!participant.is_empty()).then_some(participant),
                        event: DpEvent {
                            sampling_rate: r.try_get(3)?,
                            noise_multiplier: r.try_get(4)?,
                            steps: u64_of(r.try_get(5)?),
                        },
                        run_epsilon: r.try_get(6)?,
                    },
                    delta: r.try_get(7)?,
                    clip_norm: r.try_get(8)?,
                    next_clip_norm: r.try_get(9)?,
                    noise_std: r.try_get(10)?,
                    updates: u64_of(r.try_get(11)?),
                    recorded_micros: u64_of(r.try_get(12)?),
                })
            })
            .collect()
    }

    fn audit_log(&self, run: &str) -> Result<Vec<AuditRow>, StoreError> {
        let rows = self.query(
            "SELECT at_micros, site, action, outcome, detail FROM audit WHERE run_id = $1 ORDER BY id",
            &[&run],
        )?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(AuditRow {
                    at_micros: u64_of(r.try_get(0)?),
                    site: r.try_get(1)?,
                    action: r.try_get(2)?,
                    outcome: r.try_get(3)?,
                    detail: r.try_get(4)?,
                })
            })
            .collect::<Result<_, postgres::Error>>()?)
    }

    fn put_live_view(&self, run: &str, view: &str) -> Result<(), StoreError> {
        let mut t = tx::PgTx::begin(self.client()?, self.lease)?;
        t.put_live_view(run, view)?;
        t.finish()
    }

    fn put_join_result(
        &self,
        run: &str,
        query: &str,
        answer: &str,
        at_micros: u64,
    ) -> Result<(), StoreError> {
        let mut t = tx::PgTx::begin(self.client()?, self.lease)?;
        let release = t.next_analytics_release(run)?;
        t.put_analytics(
            run,
            &AnalyticsRow::unprotected(release, query, answer, at_micros),
        )?;
        t.finish()
    }

    fn live_view(&self, run: &str) -> Result<Option<String>, StoreError> {
        let row = self.query_opt("SELECT view FROM live_views WHERE run_id = $1", &[&run])?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    fn controls(&self, run: &str) -> Result<Vec<ControlRow>, StoreError> {
        let rows = self.query(
            "SELECT action, reason, at_unix_micros FROM run_control WHERE run_id = $1 ORDER BY id",
            &[&run],
        )?;
        rows.iter()
            .map(|r| {
                Ok(ControlRow {
                    action: Control::stored(r.try_get(0)?)?,
                    reason: r.try_get(1)?,
                    at_unix_micros: u64_of(r.try_get(2)?),
                })
            })
            .collect()
    }

    fn answered_queries(&self, run: &str) -> Result<Vec<AnalyticsRow>, StoreError> {
        let rows = self.query(
            "SELECT release, query, answer, protected, epsilon, delta, noise_std, recorded_micros
             FROM analytics_queries WHERE run_id = $1 ORDER BY release",
            &[&run],
        )?;
        rows.iter()
            .map(|r| {
                Ok(AnalyticsRow {
                    release: u32_of(r.try_get(0)?, "release")?,
                    query: r.try_get(1)?,
                    answer: r.try_get(2)?,
                    protected: r.try_get(3)?,
                    epsilon: r.try_get(4)?,
                    delta: r.try_get(5)?,
                    noise_std: r.try_get(6)?,
                    recorded_micros: u64_of(r.try_get(7)?),
                })
            })
            .collect()
    }

    fn record_answer(
        &self,
        run: &str,
        row: &AnalyticsRow,
        ledger: &[LedgerRow],
    ) -> Result<(), StoreError> {
        let mut t = tx::PgTx::begin(self.client()?, self.lease)?;
        t.put_analytics(run, row)?;
        for l in ledger {
            t.put_ledger_row(run, l)?;
        }
        t.finish()
    }
}
