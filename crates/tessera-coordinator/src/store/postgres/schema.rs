//! The PostgreSQL store's tables: the SQLite store's, in PostgreSQL's types
//! (integers as BIGINT, bytes as BYTEA), and the coordinators' lease.

/// Serialises two coordinators creating the tables at the same moment
/// (`pg_advisory_xact_lock`; PostgreSQL's `IF NOT EXISTS` alone races).
pub(super) const SCHEMA_LOCK: i64 = 0x7465_7373_6572_6131;

/// The coordinators' lease: held (`pg_try_advisory_lock`) by the leader's
/// own connection for as long as it lives.
pub(super) const LEASE_LOCK: i64 = 0x7465_7373_6572_6132;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    plan TEXT NOT NULL,
    strategy TEXT NOT NULL,
    seed BIGINT NOT NULL,
    rounds BIGINT NOT NULL,
    created_unix_micros BIGINT NOT NULL,
    status TEXT NOT NULL,
    code_version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_control (
    id BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL, action TEXT NOT NULL, reason TEXT NOT NULL, at_unix_micros BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS participants (
    run_id TEXT NOT NULL, site TEXT NOT NULL, joined_micros BIGINT NOT NULL,
    PRIMARY KEY (run_id, site)
);
CREATE TABLE IF NOT EXISTS agreement_steps (
    run_id TEXT NOT NULL, step BIGINT NOT NULL, site TEXT NOT NULL, offer BYTEA NOT NULL,
    PRIMARY KEY (run_id, step, site)
);
CREATE TABLE IF NOT EXISTS agreements (
    run_id TEXT NOT NULL, step BIGINT NOT NULL, result BYTEA NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS models (
    run_id TEXT NOT NULL, version BIGINT NOT NULL, params BYTEA NOT NULL, created_micros BIGINT NOT NULL,
    PRIMARY KEY (run_id, version)
);
CREATE TABLE IF NOT EXISTS round_aggregates (
    run_id TEXT NOT NULL, round BIGINT NOT NULL,
    mean_delta BYTEA NOT NULL, control_step BYTEA,
    n_updates BIGINT NOT NULL, n_examples BIGINT NOT NULL, weight_sum DOUBLE PRECISION NOT NULL,
    mean_train_loss DOUBLE PRECISION NOT NULL, n_participants BIGINT NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS open_rounds (
    run_id TEXT PRIMARY KEY, round BIGINT NOT NULL, cohort TEXT NOT NULL, opened_micros BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS updates (
    id BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL, round BIGINT NOT NULL, site TEXT NOT NULL, base BIGINT NOT NULL,
    n_examples BIGINT NOT NULL, n_steps BIGINT NOT NULL, mean_train_loss DOUBLE PRECISION NOT NULL,
    delta BYTEA NOT NULL, control BYTEA, received_micros BIGINT NOT NULL, start_loss DOUBLE PRECISION,
    test_rows BIGINT, test_gradient BYTEA
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL, round BIGINT NOT NULL, status TEXT NOT NULL, record TEXT NOT NULL,
    evaluated BOOLEAN NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS round_cohorts (
    run_id TEXT NOT NULL, round BIGINT NOT NULL, cohort TEXT NOT NULL, counted TEXT NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS evaluations (
    run_id TEXT NOT NULL, round BIGINT NOT NULL, site TEXT NOT NULL, report BYTEA NOT NULL,
    PRIMARY KEY (run_id, round, site)
);
CREATE TABLE IF NOT EXISTS audit (
    id BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL, at_micros BIGINT NOT NULL, site TEXT NOT NULL,
    action TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS privacy_ledger (
    run_id TEXT NOT NULL, release BIGINT NOT NULL, kind TEXT NOT NULL,
    participant TEXT NOT NULL, sampling_rate DOUBLE PRECISION NOT NULL,
    noise_multiplier DOUBLE PRECISION NOT NULL, steps BIGINT NOT NULL,
    run_epsilon DOUBLE PRECISION NOT NULL, delta DOUBLE PRECISION NOT NULL,
    clip_norm DOUBLE PRECISION NOT NULL, next_clip_norm DOUBLE PRECISION NOT NULL,
    noise_std DOUBLE PRECISION NOT NULL, updates BIGINT NOT NULL, recorded_micros BIGINT NOT NULL,
    PRIMARY KEY (run_id, release, kind, participant)
);
CREATE TABLE IF NOT EXISTS analytics_queries (
    run_id TEXT NOT NULL, release BIGINT NOT NULL, query TEXT NOT NULL, answer TEXT NOT NULL,
    protected BOOLEAN NOT NULL, epsilon DOUBLE PRECISION NOT NULL, delta DOUBLE PRECISION NOT NULL,
    noise_std DOUBLE PRECISION NOT NULL, recorded_micros BIGINT NOT NULL,
    PRIMARY KEY (run_id, release)
);
CREATE TABLE IF NOT EXISTS live_views (
    run_id TEXT PRIMARY KEY, view TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS coordinator_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL, holder TEXT NOT NULL, since_unix_micros BIGINT NOT NULL
);
CREATE OR REPLACE FUNCTION tessera_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_ARGV[0];
END
$$;
CREATE OR REPLACE TRIGGER audit_is_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION tessera_append_only('the audit log');
CREATE OR REPLACE TRIGGER privacy_ledger_is_append_only BEFORE UPDATE OR DELETE ON privacy_ledger
    FOR EACH ROW EXECUTE FUNCTION tessera_append_only('the privacy ledger');
CREATE OR REPLACE TRIGGER analytics_queries_is_append_only BEFORE UPDATE OR DELETE ON analytics_queries
    FOR EACH ROW EXECUTE FUNCTION tessera_append_only('the analytics record');
";
