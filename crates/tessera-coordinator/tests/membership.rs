//! Membership on virtual time: `min_participants` counts live sites when a
//! round would open, a round below its quorum waits up to its deadline for
//! a site that went away (and takes it back), and the run's live view names
//! what it waits for, in which step, since when, and why a site left.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Db, SITES, agree, evaluation_report, examples, hello, train};
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
    (Plan::from_toml(&text, "membership").unwrap(), text)
}

fn on_clock(db: &Db, plan: &(Plan, String)) -> (Federation, ManualClock) {
    let clock = ManualClock::starting_now();
    let f = db
        .open_with(plan, LIVENESS)
        .with_clock(Arc::new(clock.clone()));
    (f, clock)
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

fn name(i: usize) -> &'static str {
    SITES[i].name.as_str()
}

/// Moves the clock by `step`; sites `alive` say they are at work.
fn pass(f: &mut Federation, clock: &ManualClock, step: Duration, alive: &[usize], round: u32) {
    clock.advance(step);
    for &i in alive {
        f.heartbeat(name(i), round).unwrap();
    }
    f.advance();
}

/// Round 1 runs with all four sites; site 3 then goes silent and is
/// dropped. With min_participants = 4, round 2 does not open with the three
/// left: the run waits, names site 3 as what it waits for, and opens round
/// 2 when site 3 is back.
#[test]
fn min_participants_four_runs_no_round_with_three_live_sites() {
    let db = Db::new();
    let (mut f, clock) = on_clock(&db, &heart(""));
    agree(&mut f);
    for i in 0..3 {
        let (round, update) = train(&mut f, i);
        f.submit_update(name(i), round, &update).unwrap();
    }
    // Site 3 never answers: past the liveness period it is dropped.
    for _ in 0..3 {
        pass(&mut f, &clock, Duration::from_secs(25), &[0, 1, 2], 1);
    }
    for i in 0..3 {
        assert_eq!(kind(&mut f, i), "evaluate");
        f.submit_evaluation(name(i), &evaluation_report(name(i), 1))
            .unwrap();
    }
    f.advance();
    for _ in 0..10 {
        pass(&mut f, &clock, Duration::from_secs(10), &[0, 1, 2], 2);
        for i in 0..3 {
            assert_eq!(
                kind(&mut f, i),
                "wait",
                "a round opened with three live sites of a minimum of four"
            );
        }
    }
    let view = f.live_view();
    assert_eq!(view["waiting"]["step"], "round 2 to open", "{view}");
    assert_eq!(view["waiting"]["sites"], serde_json::json!([name(3)]));
    let site3 = view["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site"] == name(3))
        .unwrap();
    assert_eq!(site3["state"], "left", "{site3}");
    assert!(
        site3["note"]
            .as_str()
            .unwrap()
            .contains("dropped from round 1"),
        "{site3}"
    );
    // Site 3 is back: round 2 opens with all four.
    f.join(name(3), &hello(name(3))).unwrap();
    f.advance();
    for i in 0..4 {
        assert_eq!(kind(&mut f, i), "fit", "site {i} in round 2");
    }
}

/// quorum = 4 with a 200 s deadline: site 3 goes silent after the round
/// opened. The round does not close "quorum not met" when the liveness
/// period drops it, but waits up to its deadline; site 3, back at 150 s, is
/// taken back and the round completes with four updates.
#[test]
fn a_round_below_quorum_waits_for_its_deadline_and_takes_a_returning_site_back() {
    let db = Db::new();
    let (mut f, clock) = on_clock(&db, &heart("quorum = 4\ndeadline_seconds = 200"));
    agree(&mut f);
    for i in 0..3 {
        let (round, update) = train(&mut f, i);
        f.submit_update(name(i), round, &update).unwrap();
    }
    for _ in 0..15 {
        pass(&mut f, &clock, Duration::from_secs(10), &[0, 1, 2], 1);
        assert_eq!(
            kind(&mut f, 0),
            "wait",
            "round 1 closed below its quorum before its deadline"
        );
    }
    let view = f.live_view();
    assert_eq!(view["waiting"]["step"], "training round 1", "{view}");
    assert_eq!(view["waiting"]["sites"], serde_json::json!([name(3)]));
    assert!(view["waiting"]["since_unix_micros"].as_u64().unwrap() > 0);
    let (round, update) = train(&mut f, 3);
    assert_eq!(round, 1);
    f.submit_update(name(3), round, &update).unwrap();
    f.advance();
    assert_eq!(kind(&mut f, 0), "evaluate");
    let rounds = db_rounds(&db);
    assert_eq!(rounds, vec![(1, "completed".to_string())]);
}

/// Below quorum with nobody coming back, the round closes at its deadline,
/// not before.
#[test]
fn a_round_below_quorum_closes_at_its_deadline_when_nobody_comes_back() {
    let db = Db::new();
    let (mut f, clock) = on_clock(&db, &heart("quorum = 4\ndeadline_seconds = 200"));
    agree(&mut f);
    for i in 0..3 {
        let (round, update) = train(&mut f, i);
        f.submit_update(name(i), round, &update).unwrap();
    }
    // The run clock starts when the database was created, before the
    // manual clock: time is measured from the round's opening.
    let opened = f.now();
    for _ in 0..19 {
        pass(&mut f, &clock, Duration::from_secs(10), &[0, 1, 2], 1);
    }
    let left = Duration::from_secs(200) - f.now().since(opened);
    pass(
        &mut f,
        &clock,
        left - Duration::from_millis(1),
        &[0, 1, 2],
        1,
    );
    assert_eq!(kind(&mut f, 0), "wait", "199.999 s: still waiting");
    pass(&mut f, &clock, Duration::from_millis(1), &[0, 1, 2], 1);
    assert_eq!(kind(&mut f, 0), "evaluate", "200 s: closed at its deadline");
    assert_eq!(
        db_rounds(&db),
        vec![(1, "quorum not met (3/4)".to_string())]
    );
}

/// A site that withdraws during the agreement (its data file is missing)
/// is named, with its reason, as what the agreement waits for.
#[test]
fn the_live_view_names_a_withdrawn_site_and_its_reason() {
    let db = Db::new();
    let (mut f, _clock) = on_clock(&db, &heart(""));
    for i in 0..4 {
        f.join(name(i), &hello(name(i))).unwrap();
    }
    for i in 0..3 {
        f.offer_kinds(name(i), SITES[i].kinds.clone()).unwrap();
    }
    f.withdraw(
        name(3),
        0,
        "this site cannot take part: cannot read data.csv: No such file or directory",
        true,
    )
    .unwrap();
    let view = f.live_view();
    assert_eq!(view["waiting"]["step"], "agreement: column kinds", "{view}");
    assert_eq!(view["waiting"]["sites"], serde_json::json!([name(3)]));
    let site3 = &view["sites"][3];
    assert_eq!(site3["site"], name(3));
    assert_eq!(site3["state"], "left");
    assert!(
        site3["note"]
            .as_str()
            .unwrap()
            .contains("withdrew: this site cannot take part: cannot read data.csv"),
        "{site3}"
    );
    assert!(site3["last_seen_unix_micros"].as_u64().unwrap() > 0);
    // The store holds the same view for `tessera status`.
    let store = tessera_coordinator::SqliteStore::open(&db.path()).unwrap();
    use tessera_coordinator::RunStore;
    let stored = store.live_view(f.run_id()).unwrap().unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["waiting"]["sites"], serde_json::json!([name(3)]));
}

/// Each round's stored status, in order.
fn db_rounds(db: &Db) -> Vec<(u32, String)> {
    use tessera_coordinator::RunStore;
    let store = tessera_coordinator::SqliteStore::open(&db.path()).unwrap();
    let run = store.runs().unwrap().pop().unwrap();
    store
        .rounds(&run.id)
        .unwrap()
        .into_iter()
        .map(|r| (r.round, r.status))
        .collect()
}
