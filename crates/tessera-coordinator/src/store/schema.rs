//! The store's tables.

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    plan TEXT NOT NULL,
    strategy TEXT NOT NULL,
    seed INTEGER NOT NULL,
    rounds INTEGER NOT NULL,
    created_unix_micros INTEGER NOT NULL,
    status TEXT NOT NULL,
    code_version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_control (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL, action TEXT NOT NULL, reason TEXT NOT NULL, at_unix_micros INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS participants (
    run_id TEXT NOT NULL, site TEXT NOT NULL, joined_micros INTEGER NOT NULL,
    PRIMARY KEY (run_id, site)
);
CREATE TABLE IF NOT EXISTS agreement_steps (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, site TEXT NOT NULL, offer BLOB NOT NULL,
    PRIMARY KEY (run_id, step, site)
);
CREATE TABLE IF NOT EXISTS agreements (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, result BLOB NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS models (
    run_id TEXT NOT NULL, version INTEGER NOT NULL, params BLOB NOT NULL, created_micros INTEGER NOT NULL,
    PRIMARY KEY (run_id, version)
);
CREATE TABLE IF NOT EXISTS round_aggregates (
    run_id TEXT NOT NULL, round INTEGER NOT NULL,
    mean_delta BLOB NOT NULL, control_step BLOB,
    n_updates INTEGER NOT NULL, n_examples INTEGER NOT NULL, weight_sum REAL NOT NULL, mean_train_loss REAL NOT NULL,
    n_participants INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS open_rounds (
    run_id TEXT PRIMARY KEY, round INTEGER NOT NULL, cohort TEXT NOT NULL, opened_micros INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL, round INTEGER NOT NULL, site TEXT NOT NULL, base INTEGER NOT NULL,
    n_examples INTEGER NOT NULL, n_steps INTEGER NOT NULL, mean_train_loss REAL NOT NULL,
    delta BLOB NOT NULL, control BLOB, received_micros INTEGER NOT NULL, start_loss REAL,
    test_rows INTEGER, test_gradient BLOB
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, status TEXT NOT NULL, record TEXT NOT NULL,
    evaluated INTEGER NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS round_cohorts (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, cohort TEXT NOT NULL, counted TEXT NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS evaluations (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, site TEXT NOT NULL, report BLOB NOT NULL,
    PRIMARY KEY (run_id, round, site)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL, at_micros INTEGER NOT NULL, site TEXT NOT NULL,
    action TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_is_append_only_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_is_append_only_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS privacy_ledger (
    run_id TEXT NOT NULL, release INTEGER NOT NULL, kind TEXT NOT NULL,
    participant TEXT NOT NULL, sampling_rate REAL NOT NULL, noise_multiplier REAL NOT NULL,
    steps INTEGER NOT NULL, run_epsilon REAL NOT NULL, delta REAL NOT NULL,
    clip_norm REAL NOT NULL, next_clip_norm REAL NOT NULL, noise_std REAL NOT NULL,
    updates INTEGER NOT NULL, recorded_micros INTEGER NOT NULL,
    PRIMARY KEY (run_id, release, kind, participant)
);
CREATE TRIGGER IF NOT EXISTS privacy_ledger_is_append_only_update BEFORE UPDATE ON privacy_ledger
    BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS privacy_ledger_is_append_only_delete BEFORE DELETE ON privacy_ledger
    BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
CREATE TABLE IF NOT EXISTS analytics_queries (
    run_id TEXT NOT NULL, release INTEGER NOT NULL, query TEXT NOT NULL, answer TEXT NOT NULL,
    protected INTEGER NOT NULL, epsilon REAL NOT NULL, delta REAL NOT NULL,
    noise_std REAL NOT NULL, recorded_micros INTEGER NOT NULL,
    PRIMARY KEY (run_id, release)
);
CREATE TRIGGER IF NOT EXISTS analytics_queries_is_append_only_update BEFORE UPDATE ON analytics_queries
    BEGIN SELECT RAISE(ABORT, 'the analytics record is append-only'); END;
CREATE TRIGGER IF NOT EXISTS analytics_queries_is_append_only_delete BEFORE DELETE ON analytics_queries
    BEGIN SELECT RAISE(ABORT, 'the analytics record is append-only'); END;
CREATE TABLE IF NOT EXISTS live_views (
    run_id TEXT PRIMARY KEY, view TEXT NOT NULL
);
";
