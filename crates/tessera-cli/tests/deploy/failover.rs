//! Coordinator failover on PostgreSQL: two coordinators on one database,
//! one leading, the other waiting as a standby; the leader killed with
//! SIGKILL mid-round; the standby takes the lease, resumes the open round
//! from the stored updates, and the sites, given both URLs, finish the run
//! with it: the model of the simulation, bit for bit, each update counted
//! once. Needs the test PostgreSQL server (`.ci/postgres`).

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use crate::util::procs::{Proc, coordinator, free_port, wait_until};
use crate::util::status::{poll, status_of};
use crate::util::{self, Scratch};
use crate::{LIMIT, heart_with_slow_va, plan, simulated_model};

/// How the drill loses its leader.
#[derive(Clone, Copy, PartialEq)]
enum Loss {
    /// SIGKILL of its process.
    Killed,
    /// Its database session ended (`pg_terminate_backend`), the process
    /// alive: it must notice, stop writing and exit 70.
    SessionEnded,
}

#[test]
fn the_leader_killed_mid_round_a_standby_on_the_same_postgres_resumes_it() {
    if util::skip_e2e("the_leader_killed_mid_round_a_standby_on_the_same_postgres_resumes_it") {
        return;
    }
    drill("failover_killed", Loss::Killed);
}

#[test]
fn a_leader_cut_off_from_postgres_stops_and_the_standby_resumes() {
    if util::skip_e2e("a_leader_cut_off_from_postgres_stops_and_the_standby_resumes") {
        return;
    }
    drill("failover_cut_off", Loss::SessionEnded);
}

fn drill(name: &str, loss: Loss) {
    let Some(url) = util::postgres::fresh_database(name) else {
        return;
    };
    let s = Scratch::new(name);
    let plan = plan(&s, "fedavg", "");
    let expected = simulated_model(&s, &plan, "sim.model");
    let db = PathBuf::from(&url);
    let (mut leader, leader_url) = coordinator(&s.dir, &plan, &db, 0, &[]);
    assert!(leader.log().contains("lease epoch 1"), "{}", leader.log());
    // The standby: the same plan and database, its own port, waiting.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (tx, listening) = mpsc::channel();
    let args = [
        "coordinator",
        "--plan",
        plan.to_str().unwrap(),
        "--db",
        &url,
        "--listen",
        &listen,
        "--insecure",
        "--model-out",
        "dep.model",
        "--report",
        "dep.json",
    ];
    let mut standby = Proc::start_env("standby", &s.dir, &args, Some(tx), &[]);
    wait_until(LIMIT, "the standby to wait for the lease", || {
        standby.log().contains("standby")
    });
    assert!(
        standby.log().contains("lease epoch 1") && !standby.log().contains("listening"),
        "it says whom it waits for, and does not listen:\n{}",
        standby.log()
    );
    let both = format!("{leader_url},http://{listen}");
    let mut participants = heart_with_slow_va(&s, &both, "1.5");
    wait_until(LIMIT, "round 3 with three accepted updates", || {
        poll(&db, |s| s.pending_updates_of(3)) == 3
    });
    match loss {
        Loss::Killed => leader.kill_9(),
        Loss::SessionEnded => {
            let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let ended: bool = admin
                .query_one(
                    "SELECT pg_terminate_backend(backend_pid::INTEGER) FROM coordinator_lease",
                    &[],
                )
                .unwrap()
                .get(0);
            assert!(ended);
            assert_eq!(leader.wait(LIMIT).code(), Some(70), "{}", leader.log());
            assert!(leader.log().contains("no longer leads"), "{}", leader.log());
        }
    }
    // The accepted updates of the open round are in the database.
    assert_eq!(status_of(&db).pending_updates_of(3), 3);
    listening
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the standby did not take over:\n{}", standby.log()));
    assert!(standby.wait(LIMIT).success(), "{}", standby.log());
    let log = standby.log();
    assert!(
        log.contains("lease epoch 2") && log.contains("resumed"),
        "{log}"
    );
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
        assert!(
            p.log().contains(&format!("next=\"http://{listen}\"")),
            "{}",
            p.log()
        );
    }
    assert_eq!(
        util::model(&s.path("dep.model")),
        expected,
        "nothing lost, nothing doubled"
    );
    let status = status_of(&db);
    assert_eq!(status.duplicate_accepted_updates(), 0);
    assert_eq!(status.audited("update", "accepted"), 60);
    let runs = s.run(&["runs", "--db", &url]).ok();
    assert!(
        runs.contains("finished") && runs.contains("15/15"),
        "{runs}"
    );
}
