//! `[data.cross_silo]` at the coordinator: each named site's answers are
//! charged once per run when the run is created (not again on resume), a
//! plan whose central rounds no longer fit after the charge is refused,
//! and the relay carries a pair's conversation between that pair's sites
//! only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Db, examples};
use tessera_coordinator::{Federation, Refusal, SqliteStore};
use tessera_engine::Plan;
use tessera_proto::pb;

fn cross_silo(extra: &str) -> (Plan, String) {
    let text = std::fs::read_to_string(examples().join("cross-silo-visits.toml")).unwrap() + extra;
    (Plan::from_toml(&text, "cross-silo").unwrap(), text)
}

fn charged(f: &Federation) -> Vec<String> {
    f.store()
        .privacy_ledger(f.run_id())
        .unwrap()
        .into_iter()
        .filter(|r| r.entry.kind == "cross_silo")
        .map(|r| r.entry.participant.unwrap_or_default())
        .collect()
}

#[test]
fn every_site_is_charged_once_per_run_and_not_again_on_resume() {
    let db = Db::new();
    let plan = cross_silo("");
    let f = db.open(&plan);
    assert_eq!(charged(&f), ["hospital_a", "hospital_b", "hospital_c"]);
    drop(f);
    let f = db.open(&plan);
    assert_eq!(charged(&f), ["hospital_a", "hospital_b", "hospital_c"]);
}

#[test]
fn central_rounds_that_no_longer_fit_after_the_feature_are_refused() {
    // Central DP calibrated to spend epsilon 3 on its rounds, under a run
    // budget of 5: the feature at epsilon 4 per site fits alone, the rounds
    // fit alone, the two together do not.
    let privacy = "\n[privacy]\nmode = \"central\"\nepsilon = 3.0\nbudget = 5.0\n";
    let (_, text) = cross_silo(privacy);
    let text = text.replace("epsilon = 8.0", "epsilon = 4.0");
    let plan = (Plan::from_toml(&text, "cross-silo").unwrap(), text);
    let store = SqliteStore::open(&Db::new().path()).unwrap();
    let err = Federation::open(plan.0.clone(), &plan.1, store, Duration::from_secs(60))
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(text.contains("with the feature's charges"), "{text}");
    // Without the feature the same rounds fit.
    let text = without_section(&plan.1);
    let plan = (Plan::from_toml(&text, "plain").unwrap(), text);
    let store = SqliteStore::open(&Db::new().path()).unwrap();
    Federation::open(plan.0, &plan.1, store, Duration::from_secs(60)).unwrap();
}

fn post(f: &mut Federation, site: &str, join: &str, to: &str) -> Result<(), Refusal> {
    f.join_post(
        site,
        pb::JoinPost {
            site: site.into(),
            join: join.into(),
            to: to.into(),
            kind: "query".into(),
            envelope: vec![1, 2, 3],
            report: None,
        },
        true,
    )
    .map(|_| ())
}

#[test]
fn a_pair_conversation_is_relayed_between_its_two_sites_only() {
    let db = Db::new();
    let mut f = db.open(&cross_silo(""));
    post(&mut f, "hospital_a", "cross-silo/0-1", "hospital_b").unwrap();
    post(&mut f, "hospital_c", "cross-silo/1-2", "hospital_b").unwrap();
    let got = f
        .join_poll(
            "hospital_b",
            &pb::JoinPollRequest {
                site: "hospital_b".into(),
                join: "cross-silo/0-1".into(),
                next: 0,
            },
            true,
        )
        .unwrap();
    assert_eq!(got.messages.len(), 1);
    assert_eq!(got.messages[0].from, "hospital_a");
    for (site, join, to) in [
        ("hospital_c", "cross-silo/0-1", "hospital_b"), // not of the pair
        ("hospital_a", "cross-silo/0-1", "hospital_c"), // to outside the pair
        ("hospital_a", "cross-silo/1-0", "hospital_b"), // not in order
        ("hospital_a", "cross-silo/00-1", "hospital_b"), // not canonical
        ("hospital_a", "cross-silo/0-3", "hospital_b"), // no such site
        ("hospital_a", "cross-silo/0-1-2", "hospital_b"),
        ("hospital_a", "cross-silo/", "hospital_b"),
    ] {
        assert!(
            post(&mut f, site, join, to).is_err(),
            "{join} from {site} to {to}"
        );
    }
    // The third site cannot read the pair's messages.
    assert!(
        f.join_poll(
            "hospital_c",
            &pb::JoinPollRequest {
                site: "hospital_c".into(),
                join: "cross-silo/0-1".into(),
                next: 0,
            },
            true,
        )
        .is_err()
    );
    // Without the section there are no pair conversations.
    let db = Db::new();
    let text = without_section(&cross_silo("").1);
    let plan = (Plan::from_toml(&text, "plain").unwrap(), text);
    let mut f = db.open(&plan);
    assert!(post(&mut f, "hospital_a", "cross-silo/0-1", "hospital_b").is_err());
}

/// The plan without its `[data.cross_silo]` table.
fn without_section(text: &str) -> String {
    let start = text.find("\n[data.cross_silo]\n").unwrap();
    let end = start + text[start..].find("\n[model]").unwrap();
    format!("{}{}", &text[..start], &text[end..])
}
