//! A run's lifecycle in a deployment, with real processes: SIGTERM stops a
//! coordinator (which resumes on restart, nothing lost) and a participant
//! (which leaves the run and says so); `tessera stop` ends a run after its
//! open round and `tessera abort` at once, a coordinator running or gone;
//! a database whose run has ended refuses to start another unless asked.

use std::path::Path;
use std::process::Command;

use crate::util::procs::{HEART_SITES, Proc, coordinator, free_port, participant, wait_until};
use crate::util::status::{poll, status_of};
use crate::util::{self, Scratch};
use crate::{LIMIT, heart_text, plan, simulated_model};

/// Each site pauses 0.3 s before each update, so that the operator's signal,
/// stop or abort comes while the run goes on (a round of the heart plan
/// otherwise takes milliseconds, and the run may be over first).
const SLOW: &[&str] = &["--pause-before-update", "0.3"];

/// Sends `signal` (e.g. "TERM") to `p`.
fn signal(p: &Proc, signal: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// The run's state as `tessera status --json` gives it.
fn state(db: &Path) -> String {
    status_of(db).0["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn sigterm_stops_a_coordinator_that_resumes_and_a_participant_that_leaves() {
    if util::skip_e2e("sigterm_stops_a_coordinator_that_resumes_and_a_participant_that_leaves") {
        return;
    }
    let s = Scratch::new("deploy-sigterm");
    let plan = plan(&s, "fedavg", "");
    let expected = simulated_model(&s, &plan, "sim.model");
    let db = s.path("c.sqlite");
    let (mut first, url) = coordinator(&s.dir, &plan, &db, 0, &[]);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, SLOW))
        .collect();
    wait_until(LIMIT, "round 3 closed", || {
        poll(&db, |s| usize::from(s.round_closed(3))) == 1
    });
    signal(&first, "TERM");
    let code = first.wait(LIMIT);
    let log = first.log();
    assert_eq!(code.code(), Some(143), "{log}");
    assert!(
        log.contains("stopped by SIGTERM") && log.contains("resume"),
        "{log}"
    );
    let audit = status_of(&db).audit();
    assert!(
        audit.iter().any(|a| a.action == "coordinator"
            && a.outcome == "stopped"
            && a.detail.contains("SIGTERM")),
        "{audit:?}"
    );
    // The sites wait for it; the restarted coordinator resumes the run,
    // nothing lost or doubled: the model equals the simulation's.
    let (mut second, _) = coordinator(&s.dir, &plan, &db, port, &["--model-out", "dep.model"]);
    assert!(second.wait(LIMIT).success(), "{}", second.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert_eq!(util::model(&s.path("dep.model")), expected);
    assert_eq!(status_of(&db).duplicate_accepted_updates(), 0);

    // A participant's SIGTERM: it leaves the run and tells the coordinator.
    let db = s.path("leave.sqlite");
    let (_coordinator, url) = coordinator(&s.dir, &plan, &db, 0, &["--new-run"]);
    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, SLOW))
        .collect();
    wait_until(LIMIT, "round 2 closed", || {
        poll(&db, |s| usize::from(s.round_closed(2))) == 1
    });
    let va = sites.pop().unwrap();
    let mut va = va;
    signal(&va, "TERM");
    let code = va.wait(LIMIT);
    let log = va.log();
    assert_eq!(code.code(), Some(143), "{log}");
    assert!(
        log.contains("stopped by SIGTERM: left the run; the coordinator was told"),
        "{log}"
    );
    wait_until(LIMIT, "the coordinator audits va's leaving", || {
        poll(&db, |s| {
            s.audit_count(|a| {
                a.site == "va"
                    && a.detail
                        .contains("the site's operator stopped it (SIGTERM)")
            })
        }) >= 1
    });
}

#[test]
fn stop_ends_the_run_after_its_open_round_and_the_database_refuses_another() {
    if util::skip_e2e("stop_ends_the_run_after_its_open_round_and_the_database_refuses_another") {
        return;
    }
    let s = Scratch::new("deploy-stop");
    let plan = plan(&s, "fedavg", "");
    let db = s.path("c.sqlite");
    let dbs = db.to_str().unwrap();
    let (mut coordinator_proc, url) =
        coordinator(&s.dir, &plan, &db, 0, &["--model-out", "dep.model"]);
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, SLOW))
        .collect();
    wait_until(LIMIT, "round 3 closed", || {
        poll(&db, |s| usize::from(s.round_closed(3))) == 1
    });
    let stopped = s
        .run(&[
            "stop",
            "--db",
            dbs,
            "--reason",
            "enough for the audit",
            "--wait",
            "120",
        ])
        .ok();
    assert!(stopped.contains("stop requested for run"), "{stopped}");
    assert!(stopped.contains("is stopped"), "{stopped}");
    assert!(
        coordinator_proc.wait(LIMIT).success(),
        "{}",
        coordinator_proc.log()
    );
    let log = coordinator_proc.log();
    assert!(log.contains("stopped by its operator after"), "{log}");
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    let status = status_of(&db);
    assert_eq!(state(&db), "stopped");
    // The stop came after round 3 closed: the run ends with round 3 when no
    // round had opened yet, else with the round that was open.
    let closed = status.rounds().len();
    assert!((3..15).contains(&closed), "{closed} rounds closed");
    assert!(
        status
            .audit()
            .iter()
            .any(|a| a.outcome == "stopped" && a.detail.contains("enough for the audit")),
        "{:?}",
        status.audit()
    );
    // The model written is the last closed round's.
    let written = std::fs::read(s.path("dep.model")).unwrap();
    assert!(!written.is_empty());

    // A coordinator started again on this database does not train anew...
    let again = s.run(&[
        "coordinator",
        "--plan",
        plan.to_str().unwrap(),
        "--db",
        dbs,
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--insecure",
    ]);
    assert!(!again.output.status.success());
    let error = again.stderr();
    assert!(
        error.contains("has been stopped by its operator") && error.contains("--new-run"),
        "{error}"
    );
    // ...unless asked.
    let (mut fresh, _) = coordinator(&s.dir, &plan, &db, 0, &["--new-run"]);
    wait_until(LIMIT, "a new run", || {
        crate::util::status::status(&db).is_some_and(|s| s.0["run"]["status"] == "running")
    });
    fresh.kill_9();
    // Stopping a database with no running run says so.
    let db2 = s.path("other.sqlite");
    let (mut c2, _) = coordinator(&s.dir, &plan, &db2, 0, &[]);
    c2.kill_9();
    let abort = s
        .run(&[
            "abort",
            "--db",
            db2.to_str().unwrap(),
            "--reason",
            "the coordinator's machine is gone",
        ])
        .ok();
    assert!(abort.contains("aborted"), "{abort}");
    assert_eq!(state(&db2), "aborted");
    let again = s.run(&["stop", "--db", db2.to_str().unwrap()]);
    let error = again.fails();
    assert!(
        error.contains("no running run") && error.contains("aborted"),
        "{error}"
    );
}

#[test]
fn abort_ends_a_running_run_at_once_and_tells_its_sites() {
    if util::skip_e2e("abort_ends_a_running_run_at_once_and_tells_its_sites") {
        return;
    }
    let s = Scratch::new("deploy-abort");
    let plan = s.write("plan.toml", &heart_text(&s, 15));
    let db = s.path("c.sqlite");
    let (mut coordinator_proc, url) = coordinator(&s.dir, &plan, &db, 0, &[]);
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, SLOW))
        .collect();
    wait_until(LIMIT, "round 2 closed", || {
        poll(&db, |s| usize::from(s.round_closed(2))) == 1
    });
    let started = std::time::Instant::now();
    let out = s
        .run(&[
            "abort",
            "--db",
            db.to_str().unwrap(),
            "--reason",
            "wrong cohort definition",
        ])
        .ok();
    assert!(out.contains("aborted after"), "{out}");
    let code = coordinator_proc.wait(LIMIT);
    let log = coordinator_proc.log();
    assert_eq!(code.code(), Some(3), "{log}");
    assert!(
        log.contains("the run was aborted by its operator: wrong cohort definition"),
        "{log}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    for p in &mut participants {
        let code = p.wait(LIMIT);
        let log = p.log();
        assert!(!code.success(), "{log}");
        assert!(
            log.contains("aborted by its operator: wrong cohort definition"),
            "{log}"
        );
    }
    assert_eq!(state(&db), "aborted");
    assert!(status_of(&db).rounds().len() < 15);
}
