//! The store against a real SQLite file in a scratch folder.

use std::path::Path;

use rusqlite::{Connection, params};
use tessera_core::{FitStats, Tensor};
use tessera_proto::encode_parameters;

use super::*;

fn params(v: &[f32]) -> ParameterSet {
    let mut p = ParameterSet::new();
    p.push("w", Tensor::new(vec![v.len()], v.to_vec()).unwrap())
        .unwrap();
    p
}

#[test]
fn rounds_updates_and_audit_persist() {
    let dir = std::env::temp_dir().join(format!("tessera-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.sqlite");
    {
        let store = SqliteStore::open(&path).unwrap();
        store
            .create_run(&RunRow {
                id: "r1".into(),
                name: "n".into(),
                plan: "p".into(),
                strategy: "fedavg".into(),
                seed: 1,
                rounds: 2,
                created_unix_micros: 5,
                status: "running".into(),
            })
            .unwrap();
        store
            .open_round(
                "r1",
                1,
                &[ParticipantId::new("a"), ParticipantId::new("b")],
                Timestamp(7),
            )
            .unwrap();
        let update = Update {
            delta: params(&[1.0, 2.0]),
            n_examples: 3,
            aux: None,
            stats: FitStats {
                n_steps: 4,
                mean_train_loss: 0.5,
                start_loss: Some(0.75),
            },
        };
        store
            .put_update(
                "r1",
                1,
                0,
                "a",
                &update,
                Some((5, &params(&[0.25, -1.0]))),
                Timestamp(9),
            )
            .unwrap();
        store
            .audit("r1", Timestamp(9), "a", "update", "accepted", "round 1")
            .unwrap();
        assert!(
            store.connection().execute("DELETE FROM audit", []).is_err(),
            "append-only"
        );
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.unfinished_run().unwrap().unwrap().id, "r1");
    let open = store.open_round_of("r1").unwrap().unwrap();
    assert_eq!(
        (open.round, open.cohort.len(), open.opened),
        (1, 2, Timestamp(7))
    );
    let updates = store.updates("r1", 1).unwrap();
    assert_eq!(updates[0].update.delta, params(&[1.0, 2.0]));
    assert_eq!(updates[0].update.stats.start_loss, Some(0.75));
    assert_eq!(
        updates[0].test_gradient,
        Some((5, params(&[0.25, -1.0]))),
        "the test gradient is kept beside its update"
    );
    store
        .close_round(
            "r1",
            &RoundClose {
                round: 1,
                aggregate: None,
                model: &params(&[0.5, 0.5]),
                status: "completed",
                record_json: "{}",
                cohort: &["a".to_string()],
                counted: &[],
                at: Timestamp(10),
                privacy: None,
            },
        )
        .unwrap();
    assert!(store.open_round_of("r1").unwrap().is_none());
    assert!(store.updates("r1", 1).unwrap().is_empty());
    assert_eq!(store.model("r1", 1).unwrap().unwrap(), params(&[0.5, 0.5]));
    assert_eq!(store.audit_log("r1").unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[test]
fn databases_are_private_and_old_noise_keys_are_erased() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("tessera-store-mode-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A new database, its write-ahead log and shared memory: owner only.
    let fresh = dir.join("new.sqlite");
    let store = SqliteStore::open(&fresh).unwrap();
    store.audit("r", Timestamp(1), "a", "x", "y", "z").unwrap();
    assert_eq!(mode(&fresh), 0o600);
    for side in ["new.sqlite-wal", "new.sqlite-shm"] {
        let side = dir.join(side);
        if side.exists() {
            assert_eq!(mode(&side), 0o600, "{}", side.display());
        }
    }
    drop(store);
    // An older coordinator's database: world-readable, with a noise key.
    let old = dir.join("old.sqlite");
    let key = [0xc3u8; 32];
    {
        let conn = Connection::open(&old).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(
            "CREATE TABLE run_secrets (run_id TEXT PRIMARY KEY, noise_key BLOB NOT NULL)",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO run_secrets (run_id, noise_key) VALUES ('r', ?1)",
            params![key.as_slice()],
        )
        .unwrap();
    }
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(SqliteStore::open(&old).unwrap());
    assert_eq!(mode(&old), 0o600);
    let conn = Connection::open(&old).unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'run_secrets'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);
    drop(conn);
    // The key's bytes are gone from the file and its write-ahead log.
    for file in ["old.sqlite", "old.sqlite-wal"] {
        let Ok(bytes) = std::fs::read(dir.join(file)) else {
            continue;
        };
        assert!(
            !bytes.windows(32).any(|w| w == key.as_slice()),
            "{file} still holds the old noise key"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_older_database_gains_the_columns_added_since() {
    let dir = std::env::temp_dir().join(format!("tessera-store-cols-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("old.sqlite");
    {
        // round_aggregates as coordinators before 1.7 created it, with a row.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE round_aggregates (
                run_id TEXT NOT NULL, round INTEGER NOT NULL,
                mean_delta BLOB NOT NULL, control_step BLOB,
                n_updates INTEGER NOT NULL, n_examples INTEGER NOT NULL,
                weight_sum REAL NOT NULL, mean_train_loss REAL NOT NULL,
                PRIMARY KEY (run_id, round))",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO round_aggregates VALUES ('r', 1, ?1, NULL, 2, 10, 2.0, 0.5)",
            [encode_parameters(&params(&[1.0]))],
        )
        .unwrap();
        // updates as coordinators before 1.24 created it, with a row.
        conn.execute_batch(
            "CREATE TABLE updates (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                run_id TEXT NOT NULL, round INTEGER NOT NULL, site TEXT NOT NULL,
                base INTEGER NOT NULL, n_examples INTEGER NOT NULL, n_steps INTEGER NOT NULL,
                mean_train_loss REAL NOT NULL, delta BLOB NOT NULL, control BLOB,
                received_micros INTEGER NOT NULL)",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO updates (run_id, round, site, base, n_examples, n_steps, \
             mean_train_loss, delta, control, received_micros) \
             VALUES ('r', 2, 'a', 1, 5, 3, 0.4, ?1, NULL, 11)",
            [encode_parameters(&params(&[1.0]))],
        )
        .unwrap();
    }
    for _ in 0..2 {
        // Opening twice adds the column once.
        let store = SqliteStore::open(&path).unwrap();
        let rows = store.aggregates("r", 1).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].1.n_updates, rows[0].1.n_participants), (2, 0));
        let updates = store.updates("r", 2).unwrap();
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].update.stats.start_loss, None);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_transaction_commits_all_of_its_writes_or_none() {
    let dir = std::env::temp_dir().join(format!("tessera-store-tx-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqliteStore::open(&dir.join("c.sqlite")).unwrap();
    // Dropped without a commit: nothing is kept.
    {
        let mut tx = store.transaction().unwrap();
        tx.put_offer("r", AgreementStep::Kinds, "a", b"k").unwrap();
        tx.put_model("r", 0, &params(&[1.0]), Timestamp(1)).unwrap();
    }
    assert!(store.offers("r", AgreementStep::Kinds).unwrap().is_empty());
    assert_eq!(store.latest_model_version("r").unwrap(), None);
    // A write that fails rolls back the ones before it.
    store
        .connection()
        .execute_batch(
            "CREATE TRIGGER broken BEFORE INSERT ON agreements \
             BEGIN SELECT RAISE(ABORT, 'injected'); END;",
        )
        .unwrap();
    let failed = store.write(&mut |tx| {
        tx.put_model("r", 0, &params(&[1.0]), Timestamp(1))?;
        tx.put_agreement("r", AgreementStep::Levels, b"v")
    });
    assert!(failed.unwrap_err().to_string().contains("injected"));
    assert_eq!(store.latest_model_version("r").unwrap(), None);
    store
        .connection()
        .execute_batch("DROP TRIGGER broken")
        .unwrap();
    // Committed: every write, each agreement step under its own number.
    store
        .write(&mut |tx| {
            tx.put_model("r", 0, &params(&[1.0]), Timestamp(1))?;
            for step in AgreementStep::ALL {
                tx.put_agreement("r", step, step.name().as_bytes())?;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(store.latest_model_version("r").unwrap(), Some(0));
    for step in AgreementStep::ALL {
        let stored: u32 = store
            .connection()
            .query_row(
                "SELECT step FROM agreements WHERE result = ?1",
                [step.name().as_bytes()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, step.code(), "{step}");
        assert_eq!(AgreementStep::from_code(stored), Some(step));
    }
    assert_eq!(AgreementStep::from_code(5), None);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A database written before steps had names reads the same: steps 1, 2
/// and 3 are the kinds, the levels and the statistics.
#[test]
fn agreement_steps_stored_as_numbers_read_as_steps() {
    let dir = std::env::temp_dir().join(format!("tessera-store-steps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("old.sqlite");
    drop(SqliteStore::open(&path).unwrap());
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO agreement_steps VALUES ('r', 1, 'a', x'01'), ('r', 2, 'a', x'02'), \
             ('r', 3, 'b', x'03');
             INSERT INTO agreements VALUES ('r', 2, x'22');",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let offered = |step| store.offers("r", step).unwrap();
    assert_eq!(offered(AgreementStep::Kinds), vec![("a".into(), vec![1])]);
    assert_eq!(offered(AgreementStep::Levels), vec![("a".into(), vec![2])]);
    assert_eq!(
        offered(AgreementStep::Statistics),
        vec![("b".into(), vec![3])]
    );
    assert_eq!(
        store.agreement("r", AgreementStep::Levels).unwrap(),
        Some(vec![0x22])
    );
    assert_eq!(store.agreement("r", AgreementStep::Kinds).unwrap(), None);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The registry's rules: versions number from 1 per name; one production
/// version at most, the one it replaces archived in the same step; a
/// rollback returns the last production version before; its events cannot
/// be changed or removed.
#[test]
fn the_registry_keeps_one_production_version_and_rolls_back() {
    let dir = std::env::temp_dir().join(format!("tessera-registry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqliteStore::open(&dir.join("c.sqlite")).unwrap();
    let p = params(&[1.0, 2.0]);
    let register = |name: &str| {
        store
            .register_version(&NewVersion {
                name,
                run_id: "r",
                round: 3,
                params: &p,
                params_sha256: "s",
                lineage: "{}",
                parent: None,
                at_unix_micros: 1,
            })
            .unwrap()
    };
    assert_eq!((register("m"), register("m"), register("other")), (1, 2, 1));
    assert_eq!(store.version_parameters("m", 2).unwrap(), Some(p.clone()));
    let stage = |v: u32| {
        store
            .versions(Some("m"))
            .unwrap()
            .into_iter()
            .find(|x| x.version == v)
            .unwrap()
            .stage
    };
    let e = store.roll_back("m", "r", "", 2).unwrap_err().to_string();
    assert!(e.contains("no version in production"), "{e}");
    store
        .set_stage("m", 1, Stage::Production, "first", "", 2)
        .unwrap();
    let e = store
        .set_stage("m", 1, Stage::Canary, "x", "", 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is production: it cannot go to canary"), "{e}");
    store
        .set_stage("m", 2, Stage::Canary, "try", "", 3)
        .unwrap();
    store
        .set_stage("m", 2, Stage::Production, "won", "{\"d\": 1}", 4)
        .unwrap();
    assert_eq!((stage(1), stage(2)), (Stage::Archived, Stage::Production));
    assert_eq!(store.roll_back("m", "worse", "", 5).unwrap(), (2, 1));
    assert_eq!((stage(1), stage(2)), (Stage::Production, Stage::Archived));
    let e = store
        .roll_back("m", "again", "", 6)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no earlier production version"), "{e}");
    let e = store
        .set_stage("m", 9, Stage::Archived, "x", "", 6)
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no version 9"), "{e}");
    let events = store.stage_events(Some("m")).unwrap();
    let moves: Vec<(u32, &str, Stage)> = events
        .iter()
        .map(|e| (e.version, e.from.as_str(), e.to))
        .collect();
    assert_eq!(
        moves,
        [
            (1, "none", Stage::Candidate),
            (2, "none", Stage::Candidate),
            (1, "candidate", Stage::Production),
            (2, "candidate", Stage::Canary),
            (1, "production", Stage::Archived),
            (2, "canary", Stage::Production),
            (2, "production", Stage::Archived),
            (1, "archived", Stage::Production),
        ]
    );
    assert_eq!(events[5].evidence, "{\"d\": 1}");
    let conn = store.connection();
    assert!(conn.execute("DELETE FROM registry_events", []).is_err());
    assert!(
        conn.execute("UPDATE registry_events SET reason = 'x'", [])
            .is_err()
    );
    // Rollbacks walk back through the production history: 3, then 2,
    // then 1, then nothing before it.
    register("other");
    register("other");
    for v in 1..=3 {
        store
            .set_stage("other", v, Stage::Production, "next", "", 10)
            .unwrap();
    }
    assert_eq!(store.roll_back("other", "a", "", 11).unwrap(), (3, 2));
    assert_eq!(store.roll_back("other", "b", "", 12).unwrap(), (2, 1));
    let e = store
        .roll_back("other", "c", "", 13)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no earlier production version"), "{e}");
    assert_eq!(store.versions(Some("other")).unwrap().len(), 3);
}

/// The registry against its own database and its operators: a version
/// retired by hand is not brought back by a rollback; the database itself
/// refuses a second production version, a deleted version and a changed
/// lineage; two operators promoting at once are served one after the
/// other, not refused.
#[test]
fn the_registry_holds_against_hand_edits_and_concurrent_operators() {
    let dir = std::env::temp_dir().join(format!("tessera-registry2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.sqlite");
    let store = SqliteStore::open(&path).unwrap();
    let p = params(&[1.0]);
    let register = |store: &SqliteStore, name: &str| {
        store
            .register_version(&NewVersion {
                name,
                run_id: "r",
                round: 1,
                params: &p,
                params_sha256: "s",
                lineage: "{}",
                parent: None,
                at_unix_micros: 1,
            })
            .unwrap()
    };
    for _ in 0..3 {
        register(&store, "m");
    }
    // 1 in production, then retired by hand; 2 then 3 promoted.
    store
        .set_stage("m", 1, Stage::Production, "a", "", 2)
        .unwrap();
    store
        .set_stage("m", 1, Stage::Archived, "bad", "", 3)
        .unwrap();
    store
        .set_stage("m", 2, Stage::Production, "b", "", 4)
        .unwrap();
    store
        .set_stage("m", 3, Stage::Production, "c", "", 5)
        .unwrap();
    assert_eq!(store.roll_back("m", "x", "", 6).unwrap(), (3, 2));
    let e = store.roll_back("m", "y", "", 7).unwrap_err().to_string();
    assert!(e.contains("no earlier production version"), "{e}");
    let conn = store.connection();
    assert!(
        conn.execute(
            "UPDATE registry_versions SET stage = 'production' WHERE name = 'm' AND version = 1",
            []
        )
        .is_err()
    );
    assert!(conn.execute("DELETE FROM registry_versions", []).is_err());
    assert!(
        conn.execute("UPDATE registry_versions SET lineage = '{\"x\":1}'", [])
            .is_err()
    );
    assert!(
        conn.execute("UPDATE registry_versions SET params_sha256 = 'x'", [])
            .is_err()
    );
    // Two operators, each with its own connection, promoting at once.
    for name in ["a", "b"] {
        for _ in 0..20 {
            register(&store, name);
        }
    }
    let workers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let path = path.clone();
            std::thread::spawn(move || {
                let store = SqliteStore::open(&path).unwrap();
                for v in 1..=20 {
                    store
                        .set_stage(name, v, Stage::Production, "next", "", 10)
                        .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    for name in ["a", "b"] {
        let production: Vec<u32> = store
            .versions(Some(name))
            .unwrap()
            .into_iter()
            .filter(|v| v.stage == Stage::Production)
            .map(|v| v.version)
            .collect();
        assert_eq!(production, [20]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
