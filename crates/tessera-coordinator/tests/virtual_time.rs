//! The coordinator's federation on virtual time, in process: a clock the
//! test moves by hand ([`ManualClock`]) drives liveness and deadlines, with
//! no processes, sockets or sleeps. Each test walks up to a boundary, checks
//! that nothing happened one step before it, and what happens one step after.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Db, SITES, agree, examples, train};
use tessera_coordinator::{Federation, ManualClock, TaskView};
use tessera_engine::Plan;

const LIVENESS: Duration = Duration::from_secs(60);

/// The heart plan (four sites, min_participants = 4) with `federation`
/// settings added to its `[federation]` table.
fn heart(federation: &str) -> (Plan, String) {
    let text = std::fs::read_to_string(examples().join("fed-heart-disease.toml"))
        .unwrap()
        .replace("rounds = 15\n", &format!("rounds = 15\n{federation}\n"))
        + "\n[privacy]\nsite_metrics = \"clear\"\n";
    (Plan::from_toml(&text, "virtual").unwrap(), text)
}

/// A federation on a manual clock, agreed, with round 1 open, and the run's
/// time then: every site was last heard and the round opened at that time
/// (the clock does not move by itself), whatever wall time the set-up took.
fn started(db: &Db, plan: &(Plan, String)) -> (Federation, ManualClock, Duration) {
    let f = db.open_with(plan, LIVENESS);
    let clock = ManualClock::starting_now();
    let mut f = f.with_clock(Arc::new(clock.clone()));
    agree(&mut f);
    let opened = Duration::from_micros(f.now().0);
    (f, clock, opened)
}

/// Moves `clock` until `after` has passed since `opened`.
fn until(f: &Federation, clock: &ManualClock, opened: Duration, after: Duration) {
    let now = Duration::from_micros(f.now().0);
    let at = opened + after;
    assert!(now <= at, "the run is at {now:?}, past {at:?}");
    clock.advance(at - now);
}

fn kind(f: &mut Federation, site: usize) -> &'static str {
    match f.task_for(&SITES[site].name, None).unwrap() {
        TaskView::Wait => "wait",
        TaskView::Fit { .. } => "fit",
        TaskView::Evaluate { .. } => "evaluate",
        TaskView::Finished => "finished",
        TaskView::Analyze { .. } => "analyze",
        TaskView::Rollout { .. } | TaskView::RolloutOver { .. } => "rollout",
    }
}

/// Sites 0 to 2 answer round 1, site 3 goes silent: the round waits for it
/// for exactly the liveness period (the others keep sending heartbeats),
/// then drops it and closes with three updates.
#[test]
fn a_silent_site_is_dropped_after_the_liveness_period_and_the_round_goes_on() {
    let db = Db::new();
    let (mut f, clock, opened) = started(&db, &heart(""));
    for i in 0..3 {
        let (round, update) = train(&mut f, i);
        f.submit_update(&SITES[i].name, round, &update).unwrap();
    }
    // Site 3 was last heard when it agreed, as the round opened.
    for at in [Duration::from_secs(30), LIVENESS] {
        until(&f, &clock, opened, at);
        for i in 0..3 {
            f.heartbeat(&SITES[i].name, 1).unwrap();
        }
        f.advance();
        assert_eq!(
            kind(&mut f, 0),
            "wait",
            "{at:?}: round 1 still waits for site 3"
        );
    }
    // One millisecond past the liveness period.
    until(&f, &clock, opened, LIVENESS + Duration::from_millis(1));
    for i in 0..3 {
        f.heartbeat(&SITES[i].name, 1).unwrap();
    }
    f.advance();
    assert_eq!(kind(&mut f, 0), "evaluate", "round 1 closed without site 3");
}

/// With a 20 s deadline, a round closes at its deadline with whoever
/// answered (two of four, the quorum), not a millisecond before, and an
/// update for the closed round is no longer accepted.
#[test]
fn a_round_closes_at_its_deadline_with_the_updates_it_has() {
    let db = Db::new();
    let (mut f, clock, opened) = started(&db, &heart("deadline_seconds = 20\nquorum = 2"));
    let mut late = None;
    for i in 0..3 {
        let (round, update) = train(&mut f, i);
        if i < 2 {
            f.submit_update(&SITES[i].name, round, &update).unwrap();
        } else {
            late = Some((round, update));
        }
    }
    until(&f, &clock, opened, Duration::from_millis(19_999));
    f.advance();
    assert_eq!(kind(&mut f, 0), "wait", "19.999 s: the round is open");
    until(&f, &clock, opened, Duration::from_secs(20));
    f.advance();
    assert_eq!(kind(&mut f, 0), "evaluate", "20 s: closed at its deadline");
    let (round, update) = late.unwrap();
    assert!(
        f.submit_update(&SITES[2].name, round, &update).is_err(),
        "an update for a closed round counts nowhere"
    );
}

/// A slow site that keeps sending heartbeats is waited for well past the
/// liveness period (ten minutes of virtual time here); its update then
/// closes the round with all four.
#[test]
fn heartbeats_keep_a_slow_site_in_the_round() {
    let db = Db::new();
    let (mut f, clock, _) = started(&db, &heart(""));
    for i in 0..3 {
        let (round, update) = train(&mut f, i);
        f.submit_update(&SITES[i].name, round, &update).unwrap();
    }
    let (round, update) = train(&mut f, 3);
    for _ in 0..20 {
        clock.advance(Duration::from_secs(30));
        for i in 0..4 {
            f.heartbeat(&SITES[i].name, round).unwrap();
        }
        f.advance();
        assert_eq!(kind(&mut f, 0), "wait");
    }
    f.submit_update(&SITES[3].name, round, &update).unwrap();
    f.advance();
    assert_eq!(kind(&mut f, 3), "evaluate");
}
