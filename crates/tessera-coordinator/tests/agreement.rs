//! A database that fails for a while during the data agreement or an
//! evaluation (a disk briefly full, a lock held too long): each call that
//! meets the failure is refused as unavailable, which a participant's
//! supervisor retries, never as invalid, which it treats as final; the
//! federation is not stopped; and once the database works again, the same
//! offers (or evaluation) sent again complete it. The failure is a trigger another connection installs on
//! one table (see `common::Db::break_table`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Db, SITES, hello, plan, train};
use tessera_coordinator::{AgreementStep, Refusal};

/// `result` is refused as unavailable (retried), naming `cause`.
#[track_caller]
fn assert_unavailable<T: std::fmt::Debug>(what: &str, result: Result<T, Refusal>, cause: &str) {
    match result {
        Err(Refusal::Unavailable(message)) => {
            assert!(message.contains(cause), "{what}: {message}");
        }
        other => panic!("{what}: not refused as unavailable: {other:?}"),
    }
}

#[test]
fn a_database_failing_mid_agreement_is_unavailable_and_the_retries_complete_it() {
    let plan = plan("");
    let db = Db::new();
    let mut f = db.open(&plan);
    let run = f.run_id().to_string();

    // A join the database cannot record: retried, then recorded.
    db.break_table("participants", "injected: cannot join now");
    let first = &SITES[0].name;
    assert_unavailable(
        "a join",
        f.join(first, &hello(first)),
        "injected: cannot join now",
    );
    assert!(f.store().participants(&run).unwrap().is_empty());
    db.mend_table("participants");
    for site in SITES.iter() {
        f.join(&site.name, &hello(&site.name)).unwrap();
    }

    // A kinds offer the database cannot store, halfway through the step.
    f.offer_kinds(first, SITES[0].kinds.clone()).unwrap();
    db.break_table("agreement_steps", "injected: the disk is full");
    let second = &SITES[1];
    assert_unavailable(
        "a kinds offer",
        f.offer_kinds(&second.name, second.kinds.clone()),
        "injected: the disk is full",
    );
    assert_eq!(f.fatal(), None, "a failed offer is not fatal");
    let stored = f.store().offers(&run, AgreementStep::Kinds).unwrap();
    assert_eq!(stored.len(), 1, "only the first offer is stored");
    db.mend_table("agreement_steps");
    let mut kinds = None;
    for site in &SITES[1..] {
        kinds = f.offer_kinds(&site.name, site.kinds.clone()).unwrap();
    }
    assert!(kinds.is_some(), "the retried offers close the step");
    assert!(
        f.store()
            .agreement(&run, AgreementStep::Kinds)
            .unwrap()
            .is_some()
    );

    // The last levels offer closes the vocabulary, whose result (with the
    // initial model, in one transaction) the database cannot store.
    let (last, rest) = SITES.split_last().unwrap();
    for site in rest {
        assert!(
            f.offer_levels(&site.name, site.levels.clone())
                .unwrap()
                .is_none()
        );
    }
    db.break_table("agreements", "injected: the vocabulary is lost");
    assert_unavailable(
        "the closing levels offer",
        f.offer_levels(&last.name, last.levels.clone()),
        "injected: the vocabulary is lost",
    );
    assert_eq!(f.fatal(), None);
    assert_eq!(
        f.store().latest_model_version(&run).unwrap(),
        None,
        "the initial model was rolled back with the agreement"
    );
    // Asking again while the database still fails: refused the same way.
    assert_unavailable(
        "the same offer again",
        f.offer_levels(&last.name, last.levels.clone()),
        "injected: the vocabulary is lost",
    );
    db.mend_table("agreements");
    let agreement = f.offer_levels(&last.name, last.levels.clone()).unwrap();
    assert!(agreement.is_some(), "the retry closes the vocabulary");
    assert_eq!(f.store().latest_model_version(&run).unwrap(), Some(0));
    // Every site hears the agreement, and training starts.
    for site in rest {
        assert!(
            f.offer_levels(&site.name, site.levels.clone())
                .unwrap()
                .is_some()
        );
    }
    f.advance();
    let (round, _) = train(&mut f, 0);
    assert_eq!(round, 1);
    drop(f);

    // A restart on the same database resumes the agreed run.
    let mut f = db.open(&plan);
    assert_eq!(f.run_id(), run);
    let (round, _) = train(&mut f, 0);
    assert_eq!(round, 1);
}

/// A site's evaluation the database cannot store: refused as unavailable
/// (before, as invalid: the site gave it up), not fatal; sent again once
/// the database works, it counts.
#[test]
fn an_evaluation_the_database_cannot_store_is_unavailable_and_retried() {
    let plan = plan("");
    let db = Db::new();
    let mut f = db.open(&plan);
    common::agree(&mut f);
    let updates: Vec<_> = (0..SITES.len()).map(|i| train(&mut f, i)).collect();
    for (site, (round, update)) in SITES.iter().zip(&updates) {
        f.submit_update(&site.name, *round, update).unwrap();
    }
    f.advance();
    let round = updates[0].0;
    let report = |site: &str| common::evaluation_report(site, round);
    let first = SITES[0].name.as_str();
    db.break_table("evaluations", "injected: the disk is full");
    assert_unavailable(
        "an evaluation",
        f.submit_evaluation(first, &report(first)),
        "injected: the disk is full",
    );
    assert_eq!(f.fatal(), None);
    let run = f.run_id().to_string();
    assert!(f.store().evaluations(&run, round).unwrap().is_empty());
    db.mend_table("evaluations");
    f.submit_evaluation(first, &report(first)).unwrap();
    assert_eq!(f.store().evaluations(&run, round).unwrap().len(), 1);
}

/// A plan naming simulation's new sites is refused when the coordinator
/// opens it: in deployment a new site is one that did not join.
#[test]
fn plans_with_simulation_only_personalization_are_refused_at_opening() {
    let (plan, text) = plan("\n[personalization]\nnew_sites = [\"va\"]\n");
    let db = Db::new();
    let store = tessera_coordinator::SqliteStore::open(&db.path()).unwrap();
    match tessera_coordinator::Federation::open(plan, &text, store, common::LIVENESS) {
        Err(e) => assert!(
            e.to_string()
                .contains("personalization.new_sites is a simulation setting"),
            "{e}"
        ),
        Ok(_) => panic!("a coordinator opened a plan with new sites"),
    }
}

/// Asynchronous homomorphic aggregation is simulated only: a coordinator
/// refuses it at opening, naming what deployment offers (synchronous
/// homomorphic rounds and secure asynchronous buffers, once simulated only
/// too, open); a plan that names a key holder outside its sites is refused
/// by its own check first.
#[test]
fn simulation_only_secure_aggregation_is_refused_at_opening() {
    let (plan, text) = plan(
        "\n[secure_aggregation]\nenabled = true\nscheme = \"homomorphic\"\n\
         key_holders = [\"cleveland\", \"hungarian\", \"va\"]\n",
    );
    let mut asynchronous = plan.clone();
    asynchronous.federation.mode = tessera_engine::Mode::Async;
    let db = Db::new();
    let store = tessera_coordinator::SqliteStore::open(&db.path()).unwrap();
    match tessera_coordinator::Federation::open(asynchronous, &text, store, common::LIVENESS) {
        Err(e) => assert!(
            e.to_string().contains("runs in simulation only for now")
                && e.to_string().contains("scheme = \"secagg_plus\""),
            "{e}"
        ),
        Ok(_) => panic!("a coordinator opened an asynchronous homomorphic plan"),
    }
    // Synchronous homomorphic rounds are deployed (1.29): opened.
    let db = Db::new();
    let store = tessera_coordinator::SqliteStore::open(&db.path()).unwrap();
    if let Err(e) = tessera_coordinator::Federation::open(plan, &text, store, common::LIVENESS) {
        panic!("a coordinator refused homomorphic aggregation: {e}");
    }
    // Secure asynchronous buffers are deployed (1.28): opened.
    let (mut asynchronous, async_text) = common::plan("\n[secure_aggregation]\nenabled = true\n");
    asynchronous.federation.mode = tessera_engine::Mode::Async;
    let db = Db::new();
    let store = tessera_coordinator::SqliteStore::open(&db.path()).unwrap();
    if let Err(e) =
        tessera_coordinator::Federation::open(asynchronous, &async_text, store, common::LIVENESS)
    {
        panic!("a coordinator refused secure asynchronous buffers: {e}");
    }
    let text = text.replace("\"va\"]", "\"oslo\"]");
    let e = tessera_engine::Plan::from_toml(&text, "fatal").unwrap_err();
    assert!(
        e.to_string()
            .contains("key holder 'oslo' is not one of the plan's [[data.sites]]"),
        "{e}"
    );
}
