//! The agreement of a plan whose model is external: each site offers its
//! row counts and its learner's initial parameters; the global model starts
//! from the first site's by name; hostile offers (another layout, absurd
//! row counts, oversized or broken tensors) are refused naming what was
//! wrong, and a restarted coordinator resumes the agreed run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Db, hello};
use tessera_coordinator::{AgreementStep, Federation, Refusal, TaskView};
use tessera_core::{FitStats, ParameterSet, Tensor, Update};
use tessera_engine::Plan;
use tessera_proto::{convert, pb};

const PLAN: &str = r#"
name = "external"
seed = 11

[model]
kind = "external"

[training]
lr = 0.1

[federation]
rounds = 3
min_participants = 3
quorum = 3

[privacy]
site_metrics = "clear"
"#;

fn plan() -> (Plan, String) {
    (Plan::from_toml(PLAN, "external").unwrap(), PLAN.to_string())
}

/// A model of two tensors whose values depend on `seed`.
fn model(seed: f32) -> ParameterSet {
    let mut set = ParameterSet::new();
    let w = (0..6).map(|k| seed + k as f32 * 0.25).collect();
    set.push("w", Tensor::new(vec![3, 2], w).unwrap()).unwrap();
    set.push("b", Tensor::new(vec![2], vec![seed, -seed]).unwrap())
        .unwrap();
    set
}

fn offer(seed: f32, train: u64, test: u64) -> pb::ExternalOffer {
    convert::external_offer_to_pb(train, test, &model(seed))
}

fn refusal<T: std::fmt::Debug>(result: Result<T, Refusal>) -> String {
    match result {
        Err(Refusal::Invalid(reason)) => reason,
        other => panic!("not refused as invalid: {other:?}"),
    }
}

fn joined(db: &Db) -> Federation {
    let mut f = db.open(&plan());
    for site in ["c", "a", "b"] {
        f.join(site, &hello(site)).unwrap();
    }
    f
}

fn bits(set: &ParameterSet) -> Vec<u32> {
    set.values().map(f32::to_bits).collect()
}

#[test]
fn the_global_model_starts_from_the_first_site_by_name_and_a_restart_resumes_it() {
    let db = Db::new();
    let mut f = joined(&db);
    let run = f.run_id().to_string();
    // Offers in another order than the names: c, b, then a closes the step.
    assert!(f.offer_external("c", offer(3.0, 40, 10)).unwrap().is_none());
    assert!(f.offer_external("b", offer(2.0, 30, 10)).unwrap().is_none());
    let agreed = f.offer_external("a", offer(1.0, 20, 10)).unwrap().unwrap();
    assert_eq!(agreed.initial_site, "a");
    assert_eq!(agreed.layout, tessera_proto::layout_of(&model(1.0)));
    // Every site hears the same agreement; the stored model is a's, bit for bit.
    assert_eq!(
        f.offer_external("c", offer(3.0, 40, 10)).unwrap(),
        Some(agreed.clone())
    );
    let stored = f.store().model(&run, 0).unwrap().unwrap();
    assert_eq!(bits(&stored), bits(&model(1.0)));
    f.advance();
    let Ok(TaskView::Fit { header, global, .. }) = f.task_for("b", None) else {
        panic!("b has no training task");
    };
    assert_eq!(bits(&global), bits(&model(1.0)));
    let round = header.round;
    let update = |n_examples| Update {
        delta: model(0.0).zeros_like(),
        n_examples,
        aux: None,
        stats: FitStats {
            n_steps: 1,
            mean_train_loss: 0.5,
            start_loss: None,
        },
    };
    // The declared rows bound what a site reports.
    let e = refusal(f.submit_update("b", round, &update(31)));
    assert!(e.contains("31") && e.contains("30"), "{e}");
    f.submit_update("b", round, &update(30)).unwrap();

    // A coordinator killed here resumes the agreed run from its database:
    // the same model, the same bounds, b's update still counted.
    drop(f);
    let mut f = db.open(&plan());
    assert_eq!(f.run_id(), run);
    let Ok(TaskView::Fit { global, .. }) = f.task_for("c", None) else {
        panic!("c has no training task after the restart");
    };
    assert_eq!(bits(&global), bits(&model(1.0)));
    let e = refusal(f.submit_update("c", round, &update(41)));
    assert!(e.contains("41") && e.contains("40"), "{e}");
    f.submit_update("c", round, &update(40)).unwrap();
    f.submit_update("a", round, &update(20)).unwrap();
    // A late offer of another layout is refused with the difference.
    let mut other = ParameterSet::new();
    other
        .push("w", Tensor::new(vec![2, 3], vec![0.0; 6]).unwrap())
        .unwrap();
    other
        .push("b", Tensor::new(vec![2], vec![0.0; 2]).unwrap())
        .unwrap();
    f.join("d", &hello("d")).unwrap();
    let e = refusal(f.offer_external("d", convert::external_offer_to_pb(5, 5, &other)));
    assert!(e.contains("'w'") && e.contains("[2, 3]"), "{e}");
    assert!(
        f.store()
            .agreement(&run, AgreementStep::External)
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_site_of_another_layout_is_set_aside_naming_the_difference() {
    let db = Db::new();
    let mut f = joined(&db);
    let mut other = ParameterSet::new();
    other
        .push("w", Tensor::new(vec![3, 2], vec![0.5; 6]).unwrap())
        .unwrap();
    other
        .push("bias", Tensor::new(vec![2], vec![0.0; 2]).unwrap())
        .unwrap();
    f.offer_external("a", offer(1.0, 20, 10)).unwrap();
    f.offer_external("b", offer(2.0, 20, 10)).unwrap();
    let e = refusal(f.offer_external("c", convert::external_offer_to_pb(9, 9, &other)));
    assert!(
        e.contains("'c'") && e.contains("'a'") && e.contains("'b'") && e.contains("'bias'"),
        "{e}"
    );
    // Nothing was agreed; c may offer again, with the federation's layout.
    assert!(f.offer_external("a", offer(1.0, 20, 10)).unwrap().is_none());
    let agreed = f.offer_external("c", offer(3.0, 9, 9)).unwrap().unwrap();
    assert_eq!(agreed.initial_site, "a");
}

#[test]
fn hostile_offers_are_refused_naming_what_was_wrong() {
    let db = Db::new();
    let mut f = joined(&db);
    let run = f.run_id().to_string();
    let e = refusal(f.offer_external("a", offer(1.0, 0, 10)));
    assert!(e.contains("no training rows"), "{e}");
    let e = refusal(f.offer_external("a", offer(1.0, u64::MAX, 10)));
    assert!(e.contains("training rows") && e.contains("at most"), "{e}");
    let e = refusal(f.offer_external("a", offer(1.0, 10, 1 << 41)));
    assert!(e.contains("test rows"), "{e}");
    // A layout announcing 2^40 values, with none sent: refused before
    // anything of that size is allocated.
    let mut huge = offer(1.0, 10, 10);
    huge.initial.as_mut().unwrap().layout[0].shape = vec![1 << 20, 1 << 20];
    let e = refusal(f.offer_external("a", huge));
    assert!(e.contains("too large") && e.contains("values"), "{e}");
    let mut overflow = offer(1.0, 10, 10);
    overflow.initial.as_mut().unwrap().layout[0].shape = vec![u64::MAX, 3];
    assert!(refusal(f.offer_external("a", overflow)).contains("too large"));
    let mut nan = offer(1.0, 10, 10);
    nan.initial.as_mut().unwrap().values[4..8].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let e = refusal(f.offer_external("a", nan));
    assert!(e.contains("'w'"), "{e}");
    let mut torn = offer(1.0, 10, 10);
    torn.initial.as_mut().unwrap().values.pop();
    assert!(refusal(f.offer_external("a", torn)).contains("initial parameters"));
    let e = refusal(f.offer_external(
        "a",
        pb::ExternalOffer {
            initial: None,
            ..offer(1.0, 10, 10)
        },
    ));
    assert!(e.contains("no initial parameters"), "{e}");
    // None was stored; a sound offer is taken, and its counts are fixed.
    assert!(
        f.store()
            .offers(&run, AgreementStep::External)
            .unwrap()
            .is_empty()
    );
    f.offer_external("a", offer(1.0, 10, 10)).unwrap();
    let e = refusal(f.offer_external("a", offer(1.0, 11, 10)));
    assert!(e.contains("fixed"), "{e}");
    // A data offer to an external plan is refused, saying what to do.
    let e = refusal(f.offer_kinds("b", pb::KindsOffer::default()));
    assert!(e.contains("external") && e.contains("run_external"), "{e}");
    assert_eq!(f.fatal(), None);
}

#[test]
fn an_external_offer_to_a_built_in_plan_is_refused() {
    let db = Db::new();
    let mut f = db.open(&common::plan(""));
    let site = &common::SITES[0].name;
    f.join(site, &hello(site)).unwrap();
    let e = refusal(f.offer_external(site, offer(1.0, 10, 10)));
    assert!(
        e.contains("built in") && e.contains("kind = \"external\""),
        "{e}"
    );
}

#[test]
fn a_participant_without_external_learners_cannot_join_an_external_run() {
    let db = Db::new();
    let mut f = db.open(&plan());
    let mut old = hello("a");
    old.minor = 9;
    old.capabilities.retain(|c| c != "external-learners");
    let e = refusal(f.join("a", &old));
    assert!(e.contains("external-learners"), "{e}");
}
