//! A rollout's coordinator side (`state/rollout.rs`) against lying and
//! leaving sites: only opted-in sites are asked and heard, their sums are
//! bounded and checked against each other, the decision waits for every
//! site and every live canary, a canary that leaves is not waited for, and
//! the registry records the decision with its evidence.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Db, SITES, hello, plan};
use tessera_coordinator::{
    Federation, ManualClock, Rollout, RolloutModel, RunStore, SqliteStore, Stage, TaskView,
};
use tessera_proto::pb;

/// A registry with version 1 in production and version 2 a candidate,
/// and a federation rolling out version 2 against version 1.
fn rollout(db: &Db, max_drop: f64) -> Federation {
    common::start_rollout(db, max_drop, None, db.open(&plan("")))
}

fn join(f: &mut Federation, site: usize, canary: bool) {
    let hello = pb::Hello {
        canary,
        ..hello(&SITES[site].name)
    };
    let welcome = f.join(&SITES[site].name, &hello).unwrap();
    assert_eq!(welcome.rollout.unwrap().version, 2);
}

fn score(site: usize, version: u32, n: u64, correct: u64) -> pb::EvaluationReport {
    pb::EvaluationReport {
        site: SITES[site].name.clone(),
        round: version,
        n_examples: n,
        n_correct: correct,
        loss_sum: 0.5 * n as f64,
        ..Default::default()
    }
}

use common::decided;

fn task(f: &mut Federation, site: usize, held: Option<u32>) -> TaskView {
    f.task_for(&SITES[site].name, held).unwrap()
}

#[test]
fn a_participant_without_the_capability_is_refused_at_the_join() {
    let db = Db::new();
    let mut f = rollout(&db, 0.0);
    let old = pb::Hello {
        minor: 19,
        capabilities: tessera_proto::capabilities_at(19)
            .into_iter()
            .map(String::from)
            .collect(),
        ..hello(&SITES[0].name)
    };
    let e = f.join(&SITES[0].name, &old).unwrap_err().to_string();
    assert!(e.contains("needs capability 'canary'"), "{e}");
}

#[test]
fn only_canaries_are_asked_and_their_lies_are_refused() {
    let db = Db::new();
    let mut f = rollout(&db, 0.0);
    join(&mut f, 0, true);
    join(&mut f, 1, false);
    // The canary gets both files; the other site waits.
    match task(&mut f, 0, Some(1)) {
        TaskView::Rollout { header, files } => {
            assert_eq!(header.kind(), pb::TaskKind::Canary);
            let r = header.rollout.unwrap();
            assert_eq!((r.version, r.production_version), (2, 1));
            assert_eq!((r.bytes, r.production_bytes), (100, 90));
            assert_eq!(files.iter().map(|f| f.len()).collect::<Vec<_>>(), [100, 90]);
        }
        _ => panic!("a canary task"),
    }
    assert!(matches!(task(&mut f, 1, Some(1)), TaskView::Wait));
    let refused = |f: &mut Federation, site: usize, r: pb::EvaluationReport| {
        f.submit_evaluation(&SITES[site].name, &r)
            .unwrap_err()
            .to_string()
    };
    let e = refused(&mut f, 1, score(1, 2, 50, 40));
    assert!(e.contains("did not opt in"), "{e}");
    let e = refused(&mut f, 0, score(0, 7, 50, 40));
    assert!(e.contains("neither the candidate"), "{e}");
    let e = refused(&mut f, 0, score(0, 2, 50, 51));
    assert!(e.contains("51 rows right of 50"), "{e}");
    let e = refused(&mut f, 0, score(0, 2, 0, 0));
    assert!(e.contains("0 rows scored"), "{e}");
    let e = refused(&mut f, 0, score(0, 2, u64::MAX, 0));
    assert!(e.contains("rows scored"), "{e}");
    for loss in [f64::NAN, -1.0, 1e9] {
        let e = refused(
            &mut f,
            0,
            pb::EvaluationReport {
                loss_sum: loss,
                ..score(0, 2, 50, 40)
            },
        );
        assert!(e.contains("loss sum"), "{e}");
    }
    let e = refused(
        &mut f,
        0,
        pb::EvaluationReport {
            auc: Some(0.9),
            ..score(0, 2, 50, 40)
        },
    );
    assert!(e.contains("sums only"), "{e}");
    f.submit_evaluation(&SITES[0].name, &score(0, 2, 50, 40))
        .unwrap();
    // The same again is taken; other sums for it, or other rows for
    // production, are not.
    f.submit_evaluation(&SITES[0].name, &score(0, 2, 50, 40))
        .unwrap();
    let e = refused(&mut f, 0, score(0, 2, 50, 41));
    assert!(e.contains("already scored here"), "{e}");
    let e = refused(&mut f, 0, score(0, 1, 49, 30));
    assert!(e.contains("the same test rows"), "{e}");
    f.submit_evaluation(&SITES[0].name, &score(0, 1, 50, 30))
        .unwrap();
    // Two of the plan's four sites have joined: no decision yet.
    f.advance();
    assert!(matches!(task(&mut f, 1, Some(1)), TaskView::Wait));
    assert_eq!(decided(&db).0, Stage::Canary);
}

#[test]
fn the_decision_waits_for_every_site_and_reaches_each() {
    // On 1,000 rows: promoted when the 95% interval's lower end is at least
    // -max_drop (unpaired here, its half-width about 0.04).
    for (canary_right, production_right, max_drop, promoted) in [
        (400, 300, 0.0, true),
        (300, 400, 0.0, false),
        // 0.05 below production, the interval within a max drop of 0.1.
        (350, 400, 0.1, true),
        // 0.01 better, but the interval reaches below 0: not shown.
        (410, 400, 0.0, false),
    ] {
        let db = Db::new();
        let mut f = rollout(&db, max_drop);
        join(&mut f, 0, true);
        join(&mut f, 1, true);
        join(&mut f, 2, false);
        join(&mut f, 3, false);
        for (version, right) in [(2, canary_right), (1, production_right)] {
            f.submit_evaluation(&SITES[0].name, &score(0, version, 500, right / 2))
                .unwrap();
            f.submit_evaluation(&SITES[1].name, &score(1, version, 500, right - right / 2))
                .unwrap();
        }
        f.advance();
        let (stage, evidence) = decided(&db);
        let evidence: serde_json::Value = serde_json::from_str(&evidence).unwrap();
        assert_eq!(
            stage,
            if promoted {
                Stage::Production
            } else {
                Stage::Archived
            }
        );
        assert_eq!(evidence["rows"], 1000);
        // Scores without the paired counts (a 1.20 participant's).
        assert_eq!(evidence["interval"], "unpaired");
        let difference = evidence["difference"].as_f64().unwrap();
        let expected = (canary_right as f64 - production_right as f64) / 1000.0;
        assert!((difference - expected).abs() < 1e-12, "{evidence}");
        let serve = if promoted { 2 } else { 1 };
        for site in 0..4 {
            // A site that does not hold the version decided is sent it...
            match task(&mut f, site, Some(if promoted { 1 } else { 2 })) {
                TaskView::Rollout { header, files } => {
                    assert_eq!(header.kind(), pb::TaskKind::Serve);
                    assert_eq!(header.rollout.unwrap().version, serve);
                    assert_eq!(files[0].len(), if promoted { 100 } else { 90 });
                }
                _ => panic!("a serve task"),
            }
            assert!(!f.is_finished());
            // ...until it holds it.
            match task(&mut f, site, Some(serve)) {
                TaskView::RolloutOver { serve: s, reason } => {
                    assert_eq!(s.version, serve);
                    assert!(reason.starts_with(if promoted { "promoted" } else { "rolled back" }));
                }
                _ => panic!("the rollout is over"),
            }
        }
        f.advance();
        assert!(f.is_finished());
    }
}

#[test]
fn a_canary_that_leaves_is_not_waited_for() {
    let db = Db::new();
    let mut f = rollout(&db, 0.0);
    for site in 0..4 {
        join(&mut f, site, site < 2);
    }
    f.submit_evaluation(&SITES[0].name, &score(0, 2, 50, 40))
        .unwrap();
    f.submit_evaluation(&SITES[0].name, &score(0, 1, 50, 30))
        .unwrap();
    f.advance();
    assert_eq!(decided(&db).0, Stage::Canary, "site 1 is still scoring");
    f.withdraw(&SITES[1].name, 0, "cannot read its data", true)
        .unwrap();
    f.advance();
    let (stage, evidence) = decided(&db);
    assert_eq!(stage, Stage::Production);
    let evidence: serde_json::Value = serde_json::from_str(&evidence).unwrap();
    assert_eq!(evidence["canary_sites"], serde_json::json!([SITES[0].name]));
}

#[test]
fn without_a_score_nothing_is_decided_and_production_is_served() {
    let db = Db::new();
    let mut f = rollout(&db, 0.0);
    for site in 0..4 {
        join(&mut f, site, false);
    }
    f.advance();
    // The candidate is not archived on no evidence: it stays a canary.
    assert_eq!(decided(&db).0, Stage::Canary);
    match task(&mut f, 2, None) {
        TaskView::Rollout { header, .. } => {
            assert_eq!(header.kind(), pb::TaskKind::Serve);
            let r = header.rollout.unwrap();
            assert_eq!(r.version, 1);
            assert!(r.decision.starts_with("no decision"), "{}", r.decision);
        }
        _ => panic!("a serve task"),
    }
}

#[test]
fn a_site_that_rejoins_without_opting_in_no_longer_counts() {
    let db = Db::new();
    let mut f = rollout(&db, 0.0);
    for site in 0..4 {
        join(&mut f, site, site < 2);
    }
    // Site 1 scores the candidate far better, then rejoins as no canary:
    // its scores are not part of the decision.
    for (site, c, p) in [(1, 50, 0), (0, 20, 40)] {
        f.submit_evaluation(&SITES[site].name, &score(site, 2, 50, c))
            .unwrap();
        f.submit_evaluation(&SITES[site].name, &score(site, 1, 50, p))
            .unwrap();
        if site == 1 {
            join(&mut f, 1, false);
        }
    }
    f.advance();
    let (stage, evidence) = decided(&db);
    assert_eq!(stage, Stage::Archived, "{evidence}");
    let evidence: serde_json::Value = serde_json::from_str(&evidence).unwrap();
    assert_eq!(evidence["canary_sites"], serde_json::json!([SITES[0].name]));
    assert_eq!(evidence["rows"], 50);
}

#[test]
fn a_deadline_decides_on_the_scores_in_hand_and_ends_the_run() {
    let db = Db::new();
    let clock = ManualClock::starting_now();
    let opened = db.open(&plan("")).with_clock(Arc::new(clock.clone()));
    let mut f = common::start_rollout(&db, 0.0, Some(Duration::from_secs(60)), opened);
    // Three of four sites join; canary 1 never scores (it keeps polling).
    for site in 0..3 {
        join(&mut f, site, site < 2);
    }
    f.submit_evaluation(&SITES[0].name, &score(0, 2, 50, 40))
        .unwrap();
    f.submit_evaluation(&SITES[0].name, &score(0, 1, 50, 30))
        .unwrap();
    clock.advance(Duration::from_secs(59));
    assert!(matches!(task(&mut f, 1, Some(1)), TaskView::Rollout { .. }));
    f.advance();
    assert_eq!(decided(&db).0, Stage::Canary, "before the deadline");
    clock.advance(Duration::from_secs(2));
    f.advance();
    let event = common::last_event(&db);
    assert_eq!(event.to, Stage::Production);
    assert!(
        event.reason.contains("decided at the deadline")
            && event.reason.contains("3 site(s) joined")
            && event
                .reason
                .contains(&format!("still scoring: '{}'", SITES[1].name)),
        "{}",
        event.reason
    );
    // Site 0 takes version 2; site 1 never does: the run ends a deadline
    // after the decision all the same.
    assert!(matches!(
        task(&mut f, 0, Some(2)),
        TaskView::RolloutOver { .. }
    ));
    assert!(matches!(task(&mut f, 1, Some(1)), TaskView::Rollout { .. }));
    // Its scores, late, are taken and set aside (it goes on to the
    // version decided rather than failing).
    f.submit_evaluation(&SITES[1].name, &score(1, 2, 50, 10))
        .unwrap();
    f.advance();
    assert!(!f.is_finished());
    clock.advance(Duration::from_secs(61));
    f.advance();
    assert!(f.is_finished());
    let store = SqliteStore::open_existing(&db.path()).unwrap();
    let log = store.audit_log(f.run_id()).unwrap();
    let end = log.iter().rev().find(|r| r.action == "run").unwrap();
    assert!(end.detail.contains("the deadline passed"), "{}", end.detail);
    assert!(end.detail.contains(&SITES[1].name), "{}", end.detail);
}

#[test]
fn an_interrupted_rollout_is_not_resumed_as_training() {
    let db = Db::new();
    let f = rollout(&db, 0.0);
    drop(f);
    let (plan, text) = plan("");
    let store = SqliteStore::open(&db.path()).unwrap();
    let e = Federation::open(plan, &text, store, Duration::from_secs(60))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("interrupted rollout"), "{e}");
    assert!(e.contains("tessera abort"), "{e}");
}

#[test]
fn a_tree_plan_and_an_oversize_file_are_refused() {
    let db = Db::new();
    let spec = |size: usize| Rollout {
        name: "heart".into(),
        candidate: RolloutModel {
            version: 2,
            file: Arc::new(vec![2; size]),
        },
        production: RolloutModel {
            version: 1,
            file: Arc::new(vec![1; 10]),
        },
        max_drop: 0.0,
        deadline: None,
        canaries: None,
        serve_only: false,
    };
    let mut f = db.open(&plan(""));
    let e = f
        .set_rollout(spec(tessera_coordinator::MAX_MODEL_FILE + 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("sites take 1 to"), "{e}");
    let e = f.set_rollout(spec(0)).unwrap_err().to_string();
    assert!(e.contains("0 bytes"), "{e}");
    let text =
        std::fs::read_to_string(common::examples().join("synthetic-hierarchical.toml")).unwrap();
    let plan = tessera_engine::Plan::from_toml(&text, "tree").unwrap();
    let tree = Db::new();
    let e = tree
        .open(&(plan, text))
        .set_rollout(spec(10))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not flat"), "{e}");
}

/// The candidate's score with the rows each model alone got right.
fn paired_score(site: usize, n: u64, correct: u64, only: (u64, u64)) -> pb::EvaluationReport {
    pb::EvaluationReport {
        candidate_only_right: Some(only.0),
        production_only_right: Some(only.1),
        ..score(site, 2, n, correct)
    }
}

#[test]
fn paired_counts_that_do_not_add_up_are_refused_and_the_interval_is_paired() {
    let db = Db::new();
    let mut f = rollout(&db, 0.0);
    for site in 0..4 {
        join(&mut f, site, site < 2);
    }
    let refused = |f: &mut Federation, site: usize, r: pb::EvaluationReport| {
        f.submit_evaluation(&SITES[site].name, &r)
            .unwrap_err()
            .to_string()
    };
    // Production's score carries no pair; a pair comes whole.
    let e = refused(
        &mut f,
        0,
        pb::EvaluationReport {
            candidate_only_right: Some(1),
            production_only_right: Some(1),
            ..score(0, 1, 50, 30)
        },
    );
    assert!(e.contains("production's score carries no"), "{e}");
    let e = refused(
        &mut f,
        0,
        pb::EvaluationReport {
            candidate_only_right: Some(1),
            ..score(0, 2, 50, 40)
        },
    );
    assert!(e.contains("as a pair"), "{e}");
    // More rows alone right than the candidate got right, or wrong.
    let e = refused(&mut f, 0, paired_score(0, 50, 40, (41, 0)));
    assert!(
        e.contains("do not") || e.contains("alone right on 41"),
        "{e}"
    );
    let e = refused(&mut f, 0, paired_score(0, 50, 40, (0, 11)));
    assert!(
        e.contains("alone right on 0 rows and production alone on 11"),
        "{e}"
    );
    // Production first, then a candidate pair that does not add up
    // (40 - 30 is 10, not 12 - 1); then one that does.
    f.submit_evaluation(&SITES[0].name, &score(0, 1, 50, 30))
        .unwrap();
    let e = refused(&mut f, 0, paired_score(0, 50, 40, (12, 1)));
    assert!(e.contains("do not agree"), "{e}");
    f.submit_evaluation(&SITES[0].name, &paired_score(0, 50, 40, (12, 2)))
        .unwrap();
    // Candidate first at site 1, then production that does not add up.
    f.submit_evaluation(&SITES[1].name, &paired_score(1, 50, 35, (10, 5)))
        .unwrap();
    let e = refused(&mut f, 1, score(1, 1, 50, 31));
    assert!(e.contains("do not agree"), "{e}");
    f.submit_evaluation(&SITES[1].name, &score(1, 1, 50, 30))
        .unwrap();
    f.advance();
    let (stage, evidence) = decided(&db);
    assert_eq!(stage, Stage::Production);
    let evidence: serde_json::Value = serde_json::from_str(&evidence).unwrap();
    assert_eq!(evidence["interval"], "paired", "{evidence}");
    // By hand: 100 rows, production right on 60, the candidate alone on
    // 22 and production alone on 7: difference 0.15, variance
    // (29 - 15²/100) / 100².
    let se = (29.0f64 - 2.25).sqrt() / 100.0;
    let ci = evidence["ci95"].as_array().unwrap();
    assert!((evidence["difference"].as_f64().unwrap() - 0.15).abs() < 1e-12);
    assert!((ci[0].as_f64().unwrap() - (0.15 - 1.959_963_984_540_054 * se)).abs() < 1e-9);
    assert!((ci[1].as_f64().unwrap() - (0.15 + 1.959_963_984_540_054 * se)).abs() < 1e-9);
    assert_eq!(evidence["candidate_only_right"], 22);
}

#[test]
fn a_registry_changed_by_hand_during_the_rollout_is_not_overwritten() {
    let db = Db::new();
    let mut f = rollout(&db, 0.0);
    for site in 0..4 {
        join(&mut f, site, site < 2);
    }
    // While the canaries score, an operator retires production by hand.
    let store = SqliteStore::open(&db.path()).unwrap();
    store
        .set_stage("heart", 1, Stage::Archived, "retired", "", 9)
        .unwrap();
    for site in 0..2 {
        f.submit_evaluation(&SITES[site].name, &score(site, 2, 500, 400))
            .unwrap();
        f.submit_evaluation(&SITES[site].name, &score(site, 1, 500, 300))
            .unwrap();
    }
    f.advance();
    // The rollout would promote version 2, but records nothing: version 2
    // stays at canary, no site is sent a version (not the retired one
    // either), the run ends, and the sites are told why.
    assert_eq!(decided(&db).0, Stage::Canary);
    assert!(f.is_finished());
    for site in 0..4 {
        match task(&mut f, site, Some(1)) {
            TaskView::RolloutOver { serve, reason } => {
                assert_eq!(serve, pb::ServedModel::default());
                assert!(
                    reason.starts_with("no decision recorded (promoted:")
                        && reason.contains("the registry changed while the rollout ran")
                        && reason.contains("no version is in production")
                        && reason.contains("--serve"),
                    "{reason}"
                );
            }
            _ => panic!("the rollout is over"),
        }
    }
}

#[test]
fn a_rollout_that_only_serves_waits_for_every_site_of_the_plan() {
    let db = Db::new();
    let mut f = db.open(&plan(""));
    let model = || RolloutModel {
        version: 1,
        file: Arc::new(vec![1; 90]),
    };
    f.set_rollout(Rollout {
        name: "heart".into(),
        candidate: model(),
        production: model(),
        max_drop: 0.0,
        deadline: None,
        canaries: None,
        serve_only: true,
    })
    .unwrap();
    // Nobody has joined: the run does not end.
    f.advance();
    assert!(!f.is_finished());
    for site in 0..4 {
        let hello = pb::Hello {
            canary: site == 0,
            ..hello(&SITES[site].name)
        };
        let welcome = f.join(&SITES[site].name, &hello).unwrap();
        assert_eq!(welcome.rollout.unwrap().version, 1);
        match task(&mut f, site, None) {
            TaskView::Rollout { header, files } => {
                assert_eq!(header.kind(), pb::TaskKind::Serve);
                assert_eq!(header.rollout.unwrap().version, 1);
                assert_eq!(files[0].len(), 90);
            }
            _ => panic!("a serve task"),
        }
        assert!(matches!(
            task(&mut f, site, Some(1)),
            TaskView::RolloutOver { .. }
        ));
        f.advance();
        assert_eq!(f.is_finished(), site == 3, "after site {site}");
    }
    // Two versions are refused.
    let mut g = Db::new().open(&plan(""));
    let e = g
        .set_rollout(Rollout {
            name: "heart".into(),
            candidate: RolloutModel {
                version: 2,
                file: Arc::new(vec![2; 90]),
            },
            production: model(),
            max_drop: 0.0,
            deadline: None,
            canaries: None,
            serve_only: true,
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("sends one version"), "{e}");
}

#[test]
fn a_waiting_rollout_says_what_it_waits_for_and_waits_for_a_quiet_site() {
    let db = Db::new();
    let clock = ManualClock::starting_now();
    let opened = db
        .open_with(&plan(""), Duration::from_secs(30))
        .with_clock(Arc::new(clock.clone()));
    let mut f = common::start_rollout(&db, 0.0, None, opened);
    let waiting = |f: &mut Federation| {
        f.advance();
        f.live_view()["waiting"].clone()
    };
    join(&mut f, 0, true);
    let w = waiting(&mut f);
    assert_eq!(w["step"], "rollout: sites to join", "{w}");
    assert_eq!(w["sites"].as_array().unwrap().len(), 3, "{w}");
    for site in 1..4 {
        join(&mut f, site, false);
    }
    let w = waiting(&mut f);
    assert_eq!(w["step"], "rollout: canaries scoring", "{w}");
    assert_eq!(w["sites"], serde_json::json!([SITES[0].name]));
    f.submit_evaluation(&SITES[0].name, &score(0, 2, 50, 45))
        .unwrap();
    f.submit_evaluation(&SITES[0].name, &score(0, 1, 50, 25))
        .unwrap();
    let w = waiting(&mut f);
    assert_eq!(w["step"], "rollout: sites to take version 2", "{w}");
    // Sites 0 to 2 take it; site 3 goes quiet (restarting, say): without a
    // deadline the run waits for it, and ends once it holds the version.
    for site in 0..3 {
        task(&mut f, site, Some(2));
    }
    clock.advance(Duration::from_secs(120));
    let w = waiting(&mut f);
    assert!(!f.is_finished());
    assert_eq!(w["sites"], serde_json::json!([SITES[3].name]), "{w}");
    assert!(matches!(
        task(&mut f, 3, Some(2)),
        TaskView::RolloutOver { .. }
    ));
    f.advance();
    assert!(f.is_finished());
}

#[test]
fn a_site_off_the_operators_list_does_not_judge_the_candidate_and_an_absent_one_is_named() {
    let db = Db::new();
    // "mayo" is no site of the plan: named, never heard from.
    let listed = [SITES[0].name.as_str(), "mayo"];
    let mut f = common::start_rollout_listing(&db, 0.0, None, Some(&listed), db.open(&plan("")));
    // Sites 0 and 1 opt in; only site 0 is on the list.
    for site in 0..4 {
        join(&mut f, site, site < 2);
    }
    assert!(matches!(task(&mut f, 1, Some(1)), TaskView::Wait));
    let e = f
        .submit_evaluation(&SITES[1].name, &score(1, 2, 1_000_000, 1_000_000))
        .unwrap_err()
        .to_string();
    assert!(e.contains("did not opt in as a canary"), "{e}");
    f.submit_evaluation(&SITES[0].name, &score(0, 2, 500, 450))
        .unwrap();
    f.submit_evaluation(&SITES[0].name, &score(0, 1, 500, 300))
        .unwrap();
    f.advance();
    let (stage, evidence) = decided(&db);
    assert_eq!(stage, Stage::Production);
    let evidence: serde_json::Value = serde_json::from_str(&evidence).unwrap();
    assert_eq!(evidence["canary_sites"], serde_json::json!([SITES[0].name]));
    // The decision names the listed site that never took part.
    let reason = common::last_event(&db).reason;
    let store = SqliteStore::open_existing(&db.path()).unwrap();
    assert!(
        reason.ends_with("; --canaries named 'mayo', which did not take part as canaries"),
        "{reason}"
    );
    let log = store.audit_log(f.run_id()).unwrap();
    assert!(
        log.iter().any(|r| r.site == SITES[1].name
            && r.detail.contains("not on the rollout's --canaries list")),
        "{log:?}"
    );
}
