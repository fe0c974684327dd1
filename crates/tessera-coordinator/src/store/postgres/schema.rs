//! The PostgreSQL store's tables: the SQLite store's, in PostgreSQL's types
//! (integers as BIGINT, bytes as BYTEA), and the coordinators' lease.

/// Serialises two coordinators creating the tables at the same moment
/// (`pg_advisory_xact_lock`; PostgreSQL's `IF NOT EXISTS` alone races).
pub(super) const SCHEMA_LOCK: i64 = 0x7465_7373_6572_6131;

/// The coordinators' lease: held (`pg_try_advisory_lock`) by the leader's
/// own connection for as long as it lives.
pub(super) const LEASE_LOCK: i64 = 0x7465_7373_6572_6132;

/// The tables, created once (by whoever opens an empty database first;
/// then left alone: DDL takes locks that a running leader's writes would
/// queue behind). Text compares by bytes (`COLLATE "C"`), as SQLite's does,
/// so that every ordered read is the SQLite store's order.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS runs (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL,
    plan TEXT COLLATE "C" NOT NULL,
    strategy TEXT COLLATE "C" NOT NULL,
    seed BIGINT NOT NULL,
    rounds BIGINT NOT NULL,
    created_unix_micros BIGINT NOT NULL,
    status TEXT COLLATE "C" NOT NULL,
    code_version TEXT COLLATE "C" NOT NULL
);
CREATE TABLE IF NOT EXISTS run_control (
    id BIGSERIAL PRIMARY KEY,
    run_id TEXT COLLATE "C" NOT NULL, action TEXT COLLATE "C" NOT NULL, reason TEXT COLLATE "C" NOT NULL, at_unix_micros BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS participants (
    run_id TEXT COLLATE "C" NOT NULL, site TEXT COLLATE "C" NOT NULL, joined_micros BIGINT NOT NULL,
    PRIMARY KEY (run_id, site)
);
CREATE TABLE IF NOT EXISTS agreement_steps (
    run_id TEXT COLLATE "C" NOT NULL, step BIGINT NOT NULL, site TEXT COLLATE "C" NOT NULL, offer BYTEA NOT NULL,
    PRIMARY KEY (run_id, step, site)
);
CREATE TABLE IF NOT EXISTS agreements (
    run_id TEXT COLLATE "C" NOT NULL, step BIGINT NOT NULL, result BYTEA NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS models (
    run_id TEXT COLLATE "C" NOT NULL, version BIGINT NOT NULL, params BYTEA NOT NULL, created_micros BIGINT NOT NULL,
    PRIMARY KEY (run_id, version)
);
CREATE TABLE IF NOT EXISTS round_aggregates (
    run_id TEXT COLLATE "C" NOT NULL, round BIGINT NOT NULL,
    mean_delta BYTEA NOT NULL, control_step BYTEA,
    n_updates BIGINT NOT NULL, n_examples BIGINT NOT NULL, weight_sum DOUBLE PRECISION NOT NULL,
    mean_train_loss DOUBLE PRECISION NOT NULL, n_participants BIGINT NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS open_rounds (
    run_id TEXT COLLATE "C" PRIMARY KEY, round BIGINT NOT NULL, cohort TEXT COLLATE "C" NOT NULL, opened_micros BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS updates (
    id BIGSERIAL PRIMARY KEY,
    run_id TEXT COLLATE "C" NOT NULL, round BIGINT NOT NULL, site TEXT COLLATE "C" NOT NULL, base BIGINT NOT NULL,
    n_examples BIGINT NOT NULL, n_steps BIGINT NOT NULL, mean_train_loss DOUBLE PRECISION NOT NULL,
    delta BYTEA NOT NULL, control BYTEA, received_micros BIGINT NOT NULL, start_loss DOUBLE PRECISION,
    test_rows BIGINT, test_gradient BYTEA
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT COLLATE "C" NOT NULL, round BIGINT NOT NULL, status TEXT COLLATE "C" NOT NULL, record TEXT COLLATE "C" NOT NULL,
    evaluated BOOLEAN NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS round_cohorts (
    run_id TEXT COLLATE "C" NOT NULL, round BIGINT NOT NULL, cohort TEXT COLLATE "C" NOT NULL, counted TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS evaluations (
    run_id TEXT COLLATE "C" NOT NULL, round BIGINT NOT NULL, site TEXT COLLATE "C" NOT NULL, report BYTEA NOT NULL,
    PRIMARY KEY (run_id, round, site)
);
CREATE TABLE IF NOT EXISTS audit (
    id BIGSERIAL PRIMARY KEY,
    run_id TEXT COLLATE "C" NOT NULL, at_micros BIGINT NOT NULL, site TEXT COLLATE "C" NOT NULL,
    action TEXT COLLATE "C" NOT NULL, outcome TEXT COLLATE "C" NOT NULL, detail TEXT COLLATE "C" NOT NULL
);
CREATE TABLE IF NOT EXISTS privacy_ledger (
    run_id TEXT COLLATE "C" NOT NULL, release BIGINT NOT NULL, kind TEXT COLLATE "C" NOT NULL,
    participant TEXT COLLATE "C" NOT NULL, sampling_rate DOUBLE PRECISION NOT NULL,
    noise_multiplier DOUBLE PRECISION NOT NULL, steps BIGINT NOT NULL,
    run_epsilon DOUBLE PRECISION NOT NULL, delta DOUBLE PRECISION NOT NULL,
    clip_norm DOUBLE PRECISION NOT NULL, next_clip_norm DOUBLE PRECISION NOT NULL,
    noise_std DOUBLE PRECISION NOT NULL, updates BIGINT NOT NULL, recorded_micros BIGINT NOT NULL,
    PRIMARY KEY (run_id, release, kind, participant)
);
CREATE TABLE IF NOT EXISTS analytics_queries (
    run_id TEXT COLLATE "C" NOT NULL, release BIGINT NOT NULL, query TEXT COLLATE "C" NOT NULL, answer TEXT COLLATE "C" NOT NULL,
    protected BOOLEAN NOT NULL, epsilon DOUBLE PRECISION NOT NULL, delta DOUBLE PRECISION NOT NULL,
    noise_std DOUBLE PRECISION NOT NULL, recorded_micros BIGINT NOT NULL,
    PRIMARY KEY (run_id, release)
);
CREATE TABLE IF NOT EXISTS live_views (
    run_id TEXT COLLATE "C" PRIMARY KEY, view TEXT COLLATE "C" NOT NULL
);
CREATE TABLE IF NOT EXISTS coordinator_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL, holder TEXT COLLATE "C" NOT NULL, since_unix_micros BIGINT NOT NULL,
    backend_pid BIGINT NOT NULL
);
CREATE OR REPLACE FUNCTION tessera_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_ARGV[0];
END
$$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'audit_is_append_only') THEN
        CREATE TRIGGER audit_is_append_only BEFORE UPDATE OR DELETE ON audit
            FOR EACH ROW EXECUTE FUNCTION tessera_append_only('the audit log');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'privacy_ledger_is_append_only') THEN
        CREATE TRIGGER privacy_ledger_is_append_only BEFORE UPDATE OR DELETE ON privacy_ledger
            FOR EACH ROW EXECUTE FUNCTION tessera_append_only('the privacy ledger');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'analytics_queries_is_append_only') THEN
        CREATE TRIGGER analytics_queries_is_append_only BEFORE UPDATE OR DELETE ON analytics_queries
            FOR EACH ROW EXECUTE FUNCTION tessera_append_only('the analytics record');
    END IF;
END
$$;
"#;

/// Whether the tables are there (the last one [`SCHEMA`] creates, in the
/// transaction that creates them all).
pub(super) const SCHEMA_PRESENT: &str = "SELECT to_regclass('coordinator_lease') IS NOT NULL AND EXISTS \
     (SELECT 1 FROM pg_trigger WHERE tgname = 'analytics_queries_is_append_only')";
