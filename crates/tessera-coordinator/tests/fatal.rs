//! A database that fails under the coordinator after the engine counted an
//! update: the coordinator must not acknowledge it, nor anything after it,
//! and must not exit the process either. The failure is made by a second
//! connection to the same SQLite file that installs a trigger aborting every
//! insert into one table (`updates`, `privacy_ledger`, `rounds`), so the
//! rest of the database (the audit log, the participants) still works.
//!
//! Each test asserts that the call meeting the failure is refused as
//! unavailable and names its cause, that [`Federation::fatal`] says why,
//! that every later call (updates, heartbeats, tasks, joins, offers,
//! evaluations, withdrawals, secure-aggregation steps) is refused as
//! unavailable rather than acknowledged, that time-driven transitions stop,
//! and that a coordinator reopened on the mended database resumes the round
//! without the lost update. The last one serves the federation and checks
//! that the server stops by itself with [`CoordinatorError::Fatal`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Db, SITES, agree, hello, local_dp_plan, plan, train};
use tessera_coordinator::{CoordinatorError, Federation, Refusal, Shared, TaskView};
use tessera_core::Update;
use tessera_engine::Plan;
use tessera_proto::pb::{self, sec_agg_request::Step};

/// `result` is the refusal of a stopping coordinator, naming `cause`.
#[track_caller]
fn assert_stopping<T: std::fmt::Debug>(what: &str, result: Result<T, Refusal>, cause: &str) {
    match result {
        Err(Refusal::Unavailable(message)) => assert!(
            message.contains("stopping") && message.contains(cause),
            "{what}: {message}"
        ),
        other => panic!("{what}: not refused as unavailable: {other:?}"),
    }
}

/// After the fatal failure `cause`, every call is refused as unavailable
/// and nothing moves: among them `update`, site `other`'s valid update of
/// `round` (trained before the failure), and the failed one, `again`, sent
/// again by site 0.
#[track_caller]
fn assert_everything_refused(
    f: &mut Federation,
    round: u32,
    (other, update): (usize, &Update),
    again: &Update,
    cause: &str,
) {
    let fatal = f.fatal().expect("the federation reports its fatal failure");
    assert!(fatal.contains(cause), "{fatal}");
    let other = &SITES[other];
    let name = other.name.as_str();
    assert_stopping(
        "another update",
        f.submit_update(name, round, update),
        cause,
    );
    let first = SITES[0].name.as_str();
    assert_stopping(
        "the same update again",
        f.submit_update(first, round, again),
        cause,
    );
    assert_stopping("a heartbeat", f.heartbeat(name, round), cause);
    assert_stopping("a task", f.task_for(name, None).map(|_| ()), cause);
    assert_stopping("a rejoin", f.join(name, &hello(name)), cause);
    assert_stopping(
        "a new site's join",
        f.join("newcomer", &hello("newcomer")),
        cause,
    );
    assert_stopping(
        "a kinds offer",
        f.offer_kinds(name, other.kinds.clone()),
        cause,
    );
    assert_stopping(
        "a levels offer",
        f.offer_levels(name, other.levels.clone()),
        cause,
    );
    let statistics = pb::FeatureStatistics {
        n: 10,
        mean: vec![0.0],
        m2: vec![1.0],
    };
    assert_stopping("statistics", f.offer_statistics(name, statistics), cause);
    let report = common::evaluation_report(name, round);
    assert_stopping("an evaluation", f.submit_evaluation(name, &report), cause);
    assert_stopping(
        "a secure-aggregation step",
        f.secure_step(name, round, Some(Step::Poll(0))),
        cause,
    );
    assert_stopping("a withdrawal", f.withdraw(name, round, "bye", false), cause);
    // Time-driven transitions stop too: no round closes or opens.
    let version = f.version();
    f.advance();
    assert_eq!(
        f.version(),
        version,
        "the federation moved after its fatal failure"
    );
    assert!(!f.is_finished());
}

/// The audit log of `f`'s run says why it stopped.
fn audited(f: &Federation, cause: &str) -> bool {
    f.store()
        .audit_log(f.run_id())
        .unwrap()
        .iter()
        .any(|row| row.outcome == "fatal" && row.detail.contains(cause))
}

/// A round's accepted update the database cannot store: refused as
/// unavailable, with everything after it; the update is not in the
/// database, and a restart on the mended database takes it again.
#[test]
fn an_update_the_database_cannot_store_stops_the_coordinator() {
    let plan = plan("");
    let db = Db::new();
    let mut f = db.open(&plan);
    agree(&mut f);
    let (round, update) = train(&mut f, 0);
    let (_, other) = train(&mut f, 1);
    let run = f.run_id().to_string();
    db.break_table("updates", "injected: the disk is full");

    let reply = f.submit_update(&SITES[0].name, round, &update);
    assert_stopping("the update", reply, "cannot store an accepted update");
    let cause = "injected: the disk is full";
    assert_everything_refused(&mut f, round, (1, &other), &update, cause);
    assert!(audited(&f, "injected: the disk is full"));
    assert!(f.store().updates(&run, round).unwrap().is_empty());
    drop(f);

    // A restart resumes the round from the database: the site's update,
    // never acknowledged, is taken when it sends it again.
    db.mend_table("updates");
    let mut f = db.open(&plan);
    assert_eq!(f.run_id(), run);
    assert_eq!(f.fatal(), None);
    let (resumed, update) = train(&mut f, 0);
    assert_eq!(resumed, round);
    f.submit_update(&SITES[0].name, round, &update).unwrap();
    assert_eq!(f.store().updates(&run, round).unwrap().len(), 1);
    f.heartbeat(&SITES[1].name, round).unwrap();
}

/// Local DP: the update's release cannot go in the privacy ledger (which
/// comes before the update is stored): the same, and the update is not
/// stored either.
#[test]
fn a_release_the_ledger_cannot_record_stops_the_coordinator() {
    let plan = local_dp_plan();
    let db = Db::new();
    let mut f = db.open(&plan);
    agree(&mut f);
    let (round, update) = train(&mut f, 0);
    let (_, other) = train(&mut f, 1);
    let run = f.run_id().to_string();
    db.break_table("privacy_ledger", "injected: the ledger is read-only");

    let reply = f.submit_update(&SITES[0].name, round, &update);
    assert_stopping("the update", reply, "cannot record a release");
    let cause = "injected: the ledger is read-only";
    assert_everything_refused(&mut f, round, (1, &other), &update, cause);
    assert!(f.store().updates(&run, round).unwrap().is_empty());
    assert!(f.store().privacy_ledger(&run).unwrap().is_empty());
}

/// Asynchronous rounds: a buffered update the database cannot store, and
/// (on another run) a step whose closing the database refuses.
#[test]
fn buffered_updates_and_steps_the_database_cannot_store_stop_the_coordinator() {
    let asynchronous = plan("");
    let text = asynchronous.1.replace(
        "[federation]\n",
        "[federation]\nmode = \"async\"\nbuffer_size = 2\nmax_staleness = 3\n",
    );
    assert_ne!(text, asynchronous.1);
    let asynchronous = (Plan::from_toml(&text, "fatal").unwrap(), text);

    // The first update of a step goes in the buffer, and the database.
    let db = Db::new();
    let mut f = db.open(&asynchronous);
    agree(&mut f);
    let (base, update) = train(&mut f, 0);
    let (_, other) = train(&mut f, 1);
    db.break_table("updates", "injected: no space left");
    let reply = f.submit_update(&SITES[0].name, base, &update);
    assert_stopping(
        "the buffered update",
        reply,
        "cannot store an accepted update",
    );
    let cause = "injected: no space left";
    assert_everything_refused(&mut f, base, (1, &other), &update, cause);
    drop(f);

    // The second one takes the step, which the database cannot close.
    let db = Db::new();
    let mut f = db.open(&asynchronous);
    agree(&mut f);
    let (base, first) = train(&mut f, 0);
    let (_, second) = train(&mut f, 1);
    let (_, third) = train(&mut f, 2);
    f.submit_update(&SITES[0].name, base, &first).unwrap();
    db.break_table("rounds", "injected: the step is lost");
    let reply = f.submit_update(&SITES[1].name, base, &second);
    assert_stopping("the step", reply, "cannot store a step");
    let cause = "injected: the step is lost";
    assert_everything_refused(&mut f, base, (2, &third), &first, cause);
}

/// Asynchronous rounds: the update that takes step 2 also closes step 1's
/// evaluation, which the database refuses to record. The update already
/// counted, so the site must not be told it was invalid (it would stop, or
/// send it again to be counted twice): the coordinator stops instead.
#[test]
fn an_older_steps_evaluation_the_database_cannot_record_stops_the_coordinator() {
    let asynchronous = plan("");
    let text = asynchronous.1.replace(
        "[federation]\n",
        "[federation]\nmode = \"async\"\nbuffer_size = 2\nmax_staleness = 3\n",
    );
    let asynchronous = (Plan::from_toml(&text, "fatal").unwrap(), text);
    let db = Db::new();
    let mut f = db.open(&asynchronous);
    agree(&mut f);
    let (base, first) = train(&mut f, 0);
    let (_, second) = train(&mut f, 1);
    f.submit_update(&SITES[0].name, base, &first).unwrap();
    f.submit_update(&SITES[1].name, base, &second).unwrap();
    // Step 1 is taken and waits for evaluations (three of four come); the
    // next two updates take step 2 from it.
    let mut evaluate_then_train = |i: usize| {
        let site = SITES[i].name.as_str();
        let Ok(TaskView::Evaluate { header, .. }) = f.task_for(site, None) else {
            panic!("{site} is not asked to evaluate step 1");
        };
        f.submit_evaluation(site, &common::evaluation_report(site, header.round))
            .unwrap();
        train(&mut f, i)
    };
    let (step, third) = evaluate_then_train(2);
    assert_eq!(step, base + 1);
    let (_, fourth) = evaluate_then_train(3);
    let (_, fifth) = evaluate_then_train(0);
    f.submit_update(&SITES[2].name, step, &third).unwrap();
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER broken_evaluations BEFORE UPDATE OF evaluated ON rounds \
         BEGIN SELECT RAISE(ABORT, 'injected: evaluations are read-only'); END;",
    )
    .unwrap();
    let reply = f.submit_update(&SITES[3].name, step, &fourth);
    assert_stopping("the step", reply, "cannot store a step's evaluation");
    let cause = "injected: evaluations are read-only";
    assert_everything_refused(&mut f, step, (0, &fifth), &third, cause);
}

/// Served: the fatal failure stops the server by itself, at once, and
/// `serve_shared` returns it as [`CoordinatorError::Fatal`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stops_with_the_fatal_error() {
    let plan = plan("");
    let db = Db::new();
    let mut f = db.open(&plan);
    agree(&mut f);
    let (round, update) = train(&mut f, 0);
    let shared = Shared::new(f);
    let listener = tessera_coordinator::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let server = tokio::spawn(tessera_coordinator::serve_shared(
        std::sync::Arc::clone(&shared),
        listener,
        None,
        None,
        |_| {},
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !server.is_finished(),
        "the server stopped before the failure"
    );
    db.break_table("updates", "injected: the disk went away");
    let reply = shared
        .call(move |f| f.submit_update(&SITES[0].name, round, &update))
        .await
        .unwrap();
    assert_stopping("the update", reply, "cannot store an accepted update");
    let stopped = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server did not stop within 5 s of the fatal failure")
        .unwrap();
    match stopped {
        Err(CoordinatorError::Fatal(reason)) => {
            assert!(reason.contains("injected: the disk went away"), "{reason}");
        }
        Err(e) => panic!("the server stopped with another error: {e}"),
        Ok(_) => panic!("the server reported a finished run"),
    }
}

/// The federation has one owner: every call runs on its thread, never on the
/// async runtime's workers (a current-thread runtime here, which blocking
/// work would stall), in the order the calls were made; a call that panics
/// is answered with an error and the next one is served.
#[tokio::test]
async fn calls_run_in_order_on_the_federations_own_thread() {
    let plan = plan("");
    let db = Db::new();
    let f = db.open(&plan);
    let shared = Shared::new(f);
    let runtime_thread = std::thread::current().id();
    let (thread, name) = shared
        .call(|_| {
            let me = std::thread::current();
            (me.id(), me.name().map(str::to_string))
        })
        .await
        .unwrap();
    assert_ne!(thread, runtime_thread);
    assert_eq!(name.as_deref(), Some("federation"));
    // Twenty calls queued before any is awaited run one at a time, in the
    // order they were made (the slow first one does not let others pass).
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let waits: Vec<_> = (0..20)
        .map(|i| {
            let order = std::sync::Arc::clone(&order);
            shared.call(move |_| {
                if i == 0 {
                    std::thread::sleep(Duration::from_millis(50));
                }
                order.lock().unwrap().push(i);
            })
        })
        .collect();
    for wait in waits.into_iter().rev() {
        wait.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..20).collect::<Vec<_>>());
    let failed = shared.call(|_| -> u32 { panic!("a bug in a call") }).await;
    assert_eq!(failed.unwrap_err().code(), tonic::Code::Internal);
    let after = shared.call(|f| f.version()).await;
    assert!(after.is_ok(), "the next call is served");
}

/// A round the database cannot close (its aggregate's row fails) after the
/// engine closed it in memory: fatal too, not a log line while the run goes
/// on with memory and database apart.
#[test]
fn a_round_the_database_cannot_close_stops_the_coordinator() {
    let plan = plan("");
    let db = Db::new();
    let mut f = db.open(&plan);
    agree(&mut f);
    let updates: Vec<(u32, Update)> = (0..4).map(|i| train(&mut f, i)).collect();
    for (i, (round, update)) in updates.iter().enumerate().take(3) {
        f.submit_update(&SITES[i].name, *round, update).unwrap();
    }
    let cause = "injected: the round is lost";
    db.break_table("round_aggregates", cause);
    let (round, update) = &updates[3];
    // The last update is stored; closing the round it completes fails.
    let _ = f.submit_update(&SITES[3].name, *round, update);
    assert!(
        f.fatal().is_some_and(|r| r.contains(cause)),
        "fatal: {:?}",
        f.fatal()
    );
    assert_stopping("a heartbeat", f.heartbeat(&SITES[0].name, *round), cause);
    assert_stopping(
        "a task",
        f.task_for(&SITES[0].name, None).map(|_| ()),
        cause,
    );
}

/// Opening the federation (reading the database, replaying its rounds) runs
/// on the federation's own thread, not on the async runtime; an error
/// opening it comes back to the caller.
#[tokio::test]
async fn the_federation_opens_on_its_own_thread() {
    let runtime_thread = std::thread::current().id();
    let db = Db::new();
    let (path, heart) = (db.path(), plan(""));
    let shared = Shared::open(move || {
        assert_ne!(std::thread::current().id(), runtime_thread);
        let store = tessera_coordinator::SqliteStore::open(&path)?;
        Federation::open(heart.0, &heart.1, store, common::LIVENESS)
    })
    .await
    .unwrap();
    let on = shared.call(|_| std::thread::current().id()).await.unwrap();
    assert_ne!(on, runtime_thread);
    drop(shared);
    // Another plan on a database holding an unfinished run: refused.
    let (path, other) = (db.path(), local_dp_plan());
    let refused = Shared::open(move || {
        let store = tessera_coordinator::SqliteStore::open(&path)?;
        Federation::open(other.0, &other.1, store, common::LIVENESS)
    })
    .await;
    match refused {
        Err(CoordinatorError::Config(reason)) => {
            assert!(reason.contains("another plan"), "{reason}")
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("opened a run of another plan"),
    }
}
