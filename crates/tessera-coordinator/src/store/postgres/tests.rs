//! The PostgreSQL store against a real server (`TESSERA_POSTGRES_URL`,
//! which `.ci/postgres` starts; without it these tests pass unrun, unless
//! `TESSERA_REQUIRE_POSTGRES` is set), each in a database of its own: it
//! reads back what the SQLite store reads back after the same writes, its
//! transactions are all or nothing, its logs append-only, and its lease
//! makes a second coordinator wait and fences a leader that lost it.

use std::time::Duration;

use tessera_aggregate::RoundAggregate;
use tessera_core::{FitStats, ParameterSet, ParticipantId, Tensor, Timestamp, Update};
use tessera_privacy::{DpEvent, LedgerEntry};

use super::PostgresStore;
use crate::store::{
    AgreementStep, AnalyticsRow, Control, ControlRow, LedgerRow, RoundClose, RunRow, RunStore,
    SqliteStore, StoreError,
};

/// A new, empty database for `test` on the test server, as a URL (`None`:
/// no server given, the test does not run).
pub(crate) fn fresh_database(test: &str) -> Option<String> {
    let Ok(url) = std::env::var("TESSERA_POSTGRES_URL") else {
        assert!(
            std::env::var_os("TESSERA_REQUIRE_POSTGRES").is_none(),
            "TESSERA_REQUIRE_POSTGRES is set but TESSERA_POSTGRES_URL is not (.ci/postgres)"
        );
        eprintln!("{test}: skipped, no TESSERA_POSTGRES_URL (.ci/postgres starts a server)");
        return None;
    };
    let name = format!("unit_{test}");
    // CREATE DATABASE copies template1, and refuses while another session
    // copies it: one at a time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let base = url.rsplit_once('/').unwrap().0;
    Some(format!("{base}/{name}"))
}

fn params(v: &[f32]) -> ParameterSet {
    let mut p = ParameterSet::new();
    p.push("w", Tensor::new(vec![v.len()], v.to_vec()).unwrap())
        .unwrap();
    p
}

fn ledger_row(release: u32, participant: Option<&str>) -> LedgerRow {
    LedgerRow {
        entry: LedgerEntry {
            release,
            kind: "central".into(),
            participant: participant.map(str::to_string),
            event: DpEvent {
                sampling_rate: 0.5,
                noise_multiplier: 1.25,
                steps: 7,
            },
            run_epsilon: 0.125 * f64::from(release),
        },
        delta: 1e-5,
        clip_norm: 1.5,
        next_clip_norm: 1.75,
        noise_std: 0.3,
        updates: 4,
        recorded_micros: 99,
    }
}

/// The writes of a run with one closed and one open round, every kind of
/// row, through the trait alone.
fn fill(store: &dyn RunStore) {
    let run = RunRow {
        id: "r1".into(),
        name: "heart".into(),
        plan: "[federation]\nrounds = 2".into(),
        strategy: "fedavg".into(),
        seed: u64::MAX - 3,
        rounds: 2,
        created_unix_micros: 5,
        status: "running".into(),
    };
    store.create_run(&run).unwrap();
    store.add_participant("r1", "b", Timestamp(3)).unwrap();
    store.add_participant("r1", "a", Timestamp(2)).unwrap();
    store.add_participant("r1", "a", Timestamp(9)).unwrap();
    store
        .put_offer("r1", AgreementStep::Kinds, "a", b"ka")
        .unwrap();
    store
        .put_offer("r1", AgreementStep::Kinds, "a", b"ka2")
        .unwrap();
    store
        .put_offer("r1", AgreementStep::Levels, "b", b"lb")
        .unwrap();
    store
        .delete_offer("r1", AgreementStep::Levels, "b")
        .unwrap();
    store
        .put_agreement("r1", AgreementStep::Statistics, &[0, 1, 255])
        .unwrap();
    store
        .write(&mut |tx| tx.put_model("r1", 0, &params(&[0.5, -0.25]), Timestamp(6)))
        .unwrap();
    let names = [ParticipantId::new("a"), ParticipantId::new("b")];
    store.open_round("r1", 1, &names, Timestamp(7)).unwrap();
    let update = |x: f32, aux: bool| Update {
        delta: params(&[x, 2.0 * x]),
        n_examples: 30,
        aux: aux.then(|| params(&[x / 4.0])),
        stats: FitStats {
            n_steps: 4,
            mean_train_loss: 0.5,
            start_loss: Some(0.75),
        },
    };
    store
        .put_update("r1", 1, 0, "b", &update(1.0, true), None, Timestamp(8))
        .unwrap();
    store
        .put_update(
            "r1",
            1,
            0,
            "a",
            &update(-3.0, false),
            Some((12, &params(&[0.125]))),
            Timestamp(9),
        )
        .unwrap();
    let aggregate = RoundAggregate {
        mean_delta: params(&[0.1, 0.2]),
        aux_step: Some(params(&[0.3])),
        n_updates: 2,
        n_participants: 2,
        n_examples: 60,
        weight_sum: 60.0,
        mean_train_loss: 0.5,
    };
    let privacy = ledger_row(1, None);
    let cohort = ["a".to_string(), "b".to_string()];
    store
        .close_round(
            "r1",
            &RoundClose {
                round: 1,
                aggregate: Some(&aggregate),
                model: &params(&[0.6, -0.05]),
                status: "completed",
                record_json: "{\"round\":1}",
                cohort: &cohort,
                counted: &cohort[..1],
                at: Timestamp(10),
                privacy: Some(&privacy),
            },
        )
        .unwrap();
    store
        .write(&mut |tx| {
            tx.put_evaluation("r1", 1, "b", b"eval b")?;
            tx.put_evaluation("r1", 1, "a", b"eval a")?;
            tx.finish_round_evaluation("r1", 1, "{\"round\":1,\"evaluated\":true}")?;
            tx.put_ledger_row("r1", &ledger_row(2, Some("a")))?;
            // The same release again changes nothing.
            tx.put_ledger_row("r1", &ledger_row(2, Some("a")))
        })
        .unwrap();
    store
        .open_round("r1", 2, &names[..1], Timestamp(11))
        .unwrap();
    store
        .put_update(
            "r1",
            2,
            1,
            "a",
            &update(0.5, true),
            Some((12, &params(&[0.125]))),
            Timestamp(12),
        )
        .unwrap();
    store
        .audit("r1", Timestamp(9), "a", "update", "accepted", "round 1")
        .unwrap();
    store
        .audit("r1", Timestamp(9), "b", "update", "refused", "late")
        .unwrap();
    store
        .request(
            "r1",
            &ControlRow {
                action: Control::Stop,
                reason: "maintenance".into(),
                at_unix_micros: 13,
            },
        )
        .unwrap();
    store.put_live_view("r1", "{\"waiting\":1}").unwrap();
    store.put_live_view("r1", "{\"waiting\":2}").unwrap();
    store
        .record_answer(
            "r1",
            &AnalyticsRow {
                release: 1,
                query: "mean age".into(),
                answer: "{\"mean\":51.5}".into(),
                protected: true,
                epsilon: 0.5,
                delta: 1e-6,
                noise_std: 2.0,
                recorded_micros: 14,
            },
            &[ledger_row(3, None)],
        )
        .unwrap();
    store
        .put_join_result("r1", "join ids", "{\"rows\":4}", 15)
        .unwrap();
}

/// Every read of run `r1`, as text.
fn read(store: &dyn RunStore) -> Vec<String> {
    let r = "r1";
    vec![
        format!("{:?}", store.runs().unwrap()),
        format!("{:?}", store.unfinished_run().unwrap()),
        format!("{:?}", store.participants(r).unwrap()),
        format!("{:?}", store.offers(r, AgreementStep::Kinds).unwrap()),
        format!("{:?}", store.offers(r, AgreementStep::Levels).unwrap()),
        format!(
            "{:?}",
            store.agreement(r, AgreementStep::Statistics).unwrap()
        ),
        format!("{:?}", store.agreement(r, AgreementStep::Kinds).unwrap()),
        format!("{:?}", store.model(r, 0).unwrap()),
        format!("{:?}", store.model(r, 1).unwrap()),
        format!("{:?}", store.model(r, 2).unwrap()),
        format!("{:?}", store.models(r).unwrap()),
        format!("{:?}", store.latest_model_version(r).unwrap()),
        format!("{:?}", store.latest_model_version("none").unwrap()),
        format!("{:?}", store.aggregates(r, 5).unwrap()),
        format!("{:?}", store.open_round_of(r).unwrap()),
        format!("{:?}", store.updates(r, 1).unwrap()),
        format!("{:?}", store.updates(r, 2).unwrap()),
        format!("{:?}", store.cohorts(r).unwrap()),
        format!("{:?}", store.rounds(r).unwrap()),
        format!("{:?}", store.evaluations(r, 1).unwrap()),
        format!("{:?}", store.privacy_ledger(r).unwrap()),
        format!("{:?}", store.audit_log(r).unwrap()),
        format!("{:?}", store.controls(r).unwrap()),
        format!("{:?}", store.answered_queries(r).unwrap()),
        format!("{:?}", store.live_view(r).unwrap()),
        format!("{:?}", store.code_version(r).unwrap()),
    ]
}

#[test]
fn postgres_reads_back_what_sqlite_reads_back() {
    let Some(url) = fresh_database("reads_back") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("tessera-pg-ref-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = SqliteStore::open(&dir.join("c.sqlite")).unwrap();
    fill(&sqlite);
    let expected = read(&sqlite);
    {
        let pg = PostgresStore::open(&url).unwrap();
        fill(&pg);
        assert_eq!(read(&pg), expected);
    }
    // As a new session sees it, and through a second opening of the tables.
    let pg = PostgresStore::open(&url).unwrap();
    let seen = read(&pg);
    for (i, (got, want)) in seen.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "read {i}");
    }
    // What was written is there (the reference store is not empty-handed).
    assert!(
        expected[0].contains("seed: 18446744073709551612"),
        "{}",
        expected[0]
    );
    assert!(
        expected[16].contains("test_gradient: Some((12"),
        "{}",
        expected[16]
    );
    assert!(expected[20].contains("release: 3"), "{}", expected[20]);
    assert!(expected[23].contains("join ids"), "{}", expected[23]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn postgres_transactions_are_all_or_nothing_and_logs_append_only() {
    let Some(url) = fresh_database("all_or_nothing") else {
        return;
    };
    let store = PostgresStore::open(&url).unwrap();
    {
        let mut tx = store.transaction().unwrap();
        tx.put_offer("r", AgreementStep::Kinds, "a", b"k").unwrap();
        tx.put_model("r", 0, &params(&[1.0]), Timestamp(1)).unwrap();
    }
    assert!(store.offers("r", AgreementStep::Kinds).unwrap().is_empty());
    assert_eq!(store.latest_model_version("r").unwrap(), None);
    // A write that fails (a test rows count past the column) rolls back
    // the ones before it, and the session goes on.
    let failed = store.write(&mut |tx| {
        tx.put_model("r", 0, &params(&[1.0]), Timestamp(1))?;
        tx.put_test_gradient("r", 1, "a", (u64::MAX, &params(&[1.0])))
    });
    assert!(
        failed
            .unwrap_err()
            .to_string()
            .contains("past what the store keeps"),
        "refused by name"
    );
    assert_eq!(store.latest_model_version("r").unwrap(), None);
    // One PostgreSQL refuses mid-transaction (a duplicate key): the same.
    store
        .write(&mut |tx| tx.put_ledger_row("r", &ledger_row(1, None)))
        .unwrap();
    store
        .audit("r", Timestamp(1), "a", "join", "accepted", "")
        .unwrap();
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    for sql in [
        "DELETE FROM audit",
        "UPDATE audit SET outcome = 'refused'",
        "DELETE FROM privacy_ledger",
        "UPDATE privacy_ledger SET run_epsilon = 0",
    ] {
        let e = admin.batch_execute(sql).unwrap_err();
        let said = format!("{:?}", e.as_db_error().map(|d| d.message().to_string()));
        assert!(said.contains("append-only"), "{sql}: {said}");
    }
    assert_eq!(store.audit_log("r").unwrap().len(), 1);
    assert_eq!(store.privacy_ledger("r").unwrap().len(), 1);
    store
        .write(&mut |tx| tx.put_model("r", 0, &params(&[1.0]), Timestamp(1)))
        .unwrap();
    assert_eq!(store.latest_model_version("r").unwrap(), Some(0));
}

#[test]
fn a_second_coordinator_waits_for_the_lease_and_a_fenced_leader_writes_nothing() {
    let Some(url) = fresh_database("lease") else {
        return;
    };
    let first = PostgresStore::lead(&url, "first", Duration::from_secs(60), &mut |_| {
        panic!("the first coordinator has no one to wait for")
    })
    .unwrap();
    assert_eq!(first.epoch(), Some(1));
    assert_eq!(first.lease_lost(), None);
    // The server gives up on a silent leader's session in about 25 s, not
    // the system's two hours (its lease then frees).
    let idle: String = first
        .client()
        .unwrap()
        .query_one("SHOW tcp_keepalives_idle", &[])
        .unwrap()
        .get(0);
    assert_eq!(idle, "10");
    first
        .write(&mut |tx| tx.put_model("r", 0, &params(&[1.0]), Timestamp(1)))
        .unwrap();
    // The second waits, told who leads, for as long as the first's session lives.
    let (told, heard) = std::sync::mpsc::channel();
    let second_url = url.clone();
    let second = std::thread::spawn(move || {
        PostgresStore::lead(&second_url, "second", Duration::from_secs(60), &mut |by| {
            let _ = told.send(by.to_string());
        })
    });
    let by = heard.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        by.contains("first") && by.contains("epoch 1") && by.contains("database session"),
        "{by}"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert!(!second.is_finished(), "the lease is held");
    // The first's session ends (its process killed): the second takes over.
    drop(first);
    let second = second.join().unwrap().unwrap();
    assert_eq!(second.epoch(), Some(2));
    assert_eq!(second.latest_model_version("r").unwrap(), Some(0));
    second
        .write(&mut |tx| tx.put_model("r", 1, &params(&[2.0]), Timestamp(2)))
        .unwrap();
    // A leader whose lease another took (here: the epoch moved on under
    // it) is refused every write, and its transaction leaves nothing.
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .batch_execute("UPDATE coordinator_lease SET epoch = epoch + 1, holder = 'third'")
        .unwrap();
    let fenced = second.write(&mut |tx| tx.put_model("r", 2, &params(&[3.0]), Timestamp(3)));
    match fenced {
        Err(StoreError::Fenced(why)) => {
            assert!(why.contains("third") && why.contains("epoch 3"), "{why}")
        }
        other => panic!("not fenced: {other:?}"),
    }
    assert!(second.put_live_view("r", "{}").is_err());
    let lost = second.lease_lost().unwrap();
    assert!(lost.contains("third") && lost.contains("epoch 3"), "{lost}");
    assert_eq!(second.latest_model_version("r").unwrap(), Some(1));
    // A leader whose database session ends (a network failure, the
    // server's operator) knows it lost the lease, and writes nothing.
    drop(second);
    let fourth = std::thread::spawn({
        let url = url.clone();
        move || PostgresStore::lead(&url, "fourth", Duration::from_secs(60), &mut |_| {})
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!((fourth.epoch(), fourth.lease_lost()), (Some(4), None));
    let pid: i32 = fourth
        .client()
        .unwrap()
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        fourth.lease_lost().unwrap().contains("session ended"),
        "{:?}",
        fourth.lease_lost()
    );
    assert!(fourth.put_live_view("r", "{}").is_err());
    // Readers take no lease.
    let reader = PostgresStore::open(&url).unwrap();
    assert_eq!(reader.epoch(), None);
    assert_eq!(reader.models("r").unwrap().len(), 2);
}

#[test]
fn a_password_never_shows_in_messages() {
    assert_eq!(
        super::redacted("postgres://tessera:s3cret@db.example:5432/runs"),
        "postgres://tessera:***@db.example:5432/runs"
    );
    assert_eq!(
        super::redacted("postgres://tessera@127.0.0.1/runs"),
        "postgres://tessera@127.0.0.1/runs"
    );
    assert_eq!(
        super::redacted("postgres://u:a/b@h/db?sslmode=disable&password=x&user=u"),
        "postgres://u:***@h/db?sslmode=disable&password=***&user=u"
    );
    let unreachable = PostgresStore::open("postgres://u:hunter2@127.0.0.1:1/x");
    let said = unreachable.err().unwrap().to_string();
    assert!(!said.contains("hunter2") && said.contains("***"), "{said}");
}
