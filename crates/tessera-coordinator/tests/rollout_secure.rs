//! A rollout under a plan whose site metrics are sums only
//! (`state/rollout/secure.rs`): the canaries mask their comparison in a
//! SecAgg+ round driven here by real `tessera_secagg` clients, and the
//! coordinator (its registry, its audit log) sees only the sum; a canary
//! that masks counts out of bounds, too few canaries, or a clear score
//! leave no decision or are refused; with `"dp"` the sum is noised and the
//! interval widened.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Db, SITES, hello};
use tessera_analytics::ab::CanaryCounts;
use tessera_coordinator::{Federation, RunStore, SqliteStore, Stage, TaskView};
use tessera_engine::Plan;
use tessera_proto::pb;
use tessera_proto::pb::sec_agg_reply::State;
use tessera_proto::pb::sec_agg_request::Step;
use tessera_secagg::{Client, ROLLOUT_ROUND, RoundParams, Unauthenticated};

/// The heart plan with `site_metrics` and a round of at least `min` sites.
fn plan(metrics: &str, min: usize) -> (Plan, String) {
    let text = std::fs::read_to_string(common::examples().join("fed-heart-disease.toml"))
        .unwrap()
        .replace("min_participants = 4", &format!("min_participants = {min}"));
    let text = format!("{text}\n[privacy]\nsite_metrics = \"{metrics}\"\n");
    (Plan::from_toml(&text, "secure rollout").unwrap(), text)
}

/// Sites 0 to 3 joined, those in `canaries` opted in.
fn rollout(db: &Db, metrics: &str, min: usize, canaries: &[usize]) -> Federation {
    let mut f = common::start_rollout(db, 0.0, None, db.open(&plan(metrics, min)));
    for site in 0..4 {
        let hello = pb::Hello {
            canary: canaries.contains(&site),
            ..hello(&SITES[site].name)
        };
        f.join(&SITES[site].name, &hello).unwrap();
    }
    f.advance();
    f
}

const ROUND: u32 = 2 | ROLLOUT_ROUND;

/// The stage of version 2 and its last event's evidence, read.
fn decided(db: &Db) -> (Stage, Option<serde_json::Value>) {
    let (stage, evidence) = common::decided(db);
    (stage, serde_json::from_str(&evidence).ok())
}

fn step(f: &mut Federation, site: usize, step: Step) -> Option<State> {
    f.secure_step(&SITES[site].name, ROUND, Some(step))
        .unwrap()
        .state
}

/// Each of `sites` masks its values in the rollout's secure round, stage
/// by stage, as a participant does.
fn sum_securely(f: &mut Federation, sites: &[(usize, Vec<u32>)]) {
    let mut clients = Vec::new();
    for (site, _) in sites {
        let Some(State::Params(p)) = step(f, *site, Step::Poll(1)) else {
            panic!("no parameters for site {site}");
        };
        let params = RoundParams {
            round: ROUND,
            participants: p.participants,
            neighbours: p.neighbours as usize,
            threshold: p.threshold as usize,
            graph_seed: p.graph_seed.try_into().unwrap(),
            dimension: p.dimension as usize,
            range: p.range,
        };
        assert_eq!(params.dimension, CanaryCounts::dimension());
        let (client, keys) =
            Client::new(p.id, params, [*site as u8 + 1; 32], &Unauthenticated).unwrap();
        step(
            f,
            *site,
            Step::Keys(pb::SecAggKeys {
                c_public: keys.c_public.to_vec(),
                s_public: keys.s_public.to_vec(),
                signature: keys.signature,
            }),
        );
        clients.push(client);
    }
    for ((site, _), client) in sites.iter().zip(&mut clients) {
        let Some(State::Keys(k)) = step(f, *site, Step::Poll(2)) else {
            panic!("no keys");
        };
        let keys: Vec<tessera_secagg::AdvertiseKeys> = k
            .peers
            .iter()
            .zip(k.keys)
            .map(|(from, key)| tessera_secagg::AdvertiseKeys {
                from: *from,
                c_public: key.c_public.try_into().unwrap(),
                s_public: key.s_public.try_into().unwrap(),
                signature: key.signature,
            })
            .collect();
        let shares = client.share_keys(&keys, &Unauthenticated).unwrap();
        step(
            f,
            *site,
            Step::Shares(pb::SecAggShares {
                shares: shares
                    .shares
                    .into_iter()
                    .map(|(peer, data)| pb::SecAggShare { peer, data })
                    .collect(),
            }),
        );
    }
    for ((site, values), client) in sites.iter().zip(&mut clients) {
        let Some(State::Shares(mine)) = step(f, *site, Step::Poll(3)) else {
            panic!("no shares");
        };
        let mine: Vec<(u32, Vec<u8>)> = mine.shares.into_iter().map(|s| (s.peer, s.data)).collect();
        let masked = client.masked_values(&mine, values.clone()).unwrap();
        step(
            f,
            *site,
            Step::Masked(pb::SecAggMasked {
                values: masked.values,
                ..Default::default()
            }),
        );
    }
    let mut requests = Vec::new();
    for ((site, _), client) in sites.iter().zip(&mut clients) {
        let Some(State::Unmask(r)) = step(f, *site, Step::Poll(4)) else {
            panic!("no unmask request");
        };
        let request = tessera_secagg::UnmaskRequest {
            survivors: r.survivors,
            dropped: r.dropped,
        };
        let view = client.sign_view(&request, &Unauthenticated).unwrap();
        step(
            f,
            *site,
            Step::View(pb::SecAggView {
                signature: view.signature,
            }),
        );
        requests.push(request);
    }
    for (((site, _), client), request) in sites.iter().zip(&mut clients).zip(&requests) {
        let Some(State::Views(v)) = step(f, *site, Step::Poll(5)) else {
            panic!("no views");
        };
        let views: Vec<tessera_secagg::SignedView> = v
            .views
            .into_iter()
            .map(|v| tessera_secagg::SignedView {
                from: v.id,
                signature: v.signature,
            })
            .collect();
        let r = client.unmask(request, &views, &Unauthenticated).unwrap();
        let pack = |v: Vec<(u32, Vec<u8>)>| {
            v.into_iter()
                .map(|(peer, data)| pb::SecAggShare { peer, data })
                .collect()
        };
        step(
            f,
            *site,
            Step::Unmask(pb::SecAggUnmask {
                seed_shares: pack(r.seed_shares),
                key_shares: pack(r.key_shares),
            }),
        );
    }
    f.advance();
}

/// What every site is sent after the decision: the version to serve, and
/// the decision in words.
fn served(f: &mut Federation, site: usize) -> (u32, String) {
    match f.task_for(&SITES[site].name, None).unwrap() {
        TaskView::Rollout { header, .. } => {
            assert_eq!(header.kind(), pb::TaskKind::Serve);
            let r = header.rollout.unwrap();
            (r.version, r.decision)
        }
        _ => panic!("a serve task"),
    }
}

/// Sites 0, 1, 2's counts: 230 rows, production right on 160, the
/// candidate alone on 27, production alone on 11.
fn counts() -> Vec<(usize, Vec<u32>)> {
    [(100, 70, 12, 4), (50, 30, 5, 5), (80, 60, 10, 2)]
        .into_iter()
        .enumerate()
        .map(|(site, (n, right, b, c))| (site, CanaryCounts::of_site(n, right, b, c).encode()))
        .collect()
}

#[test]
fn only_the_canaries_sum_decides_and_reaches_the_registry() {
    let db = Db::new();
    let mut f = rollout(&db, "aggregate-only", 3, &[0, 1, 2]);
    // A canary is asked in the secure round; the other site waits; a score
    // in the clear is refused.
    for site in 0..3 {
        match f.task_for(&SITES[site].name, None).unwrap() {
            TaskView::Rollout { header, files } => {
                assert_eq!(header.kind(), pb::TaskKind::Canary);
                assert_eq!(header.round, ROUND);
                assert_eq!(files.len(), 2);
            }
            _ => panic!("a canary task for site {site}"),
        }
    }
    assert!(matches!(
        f.task_for(&SITES[3].name, None).unwrap(),
        TaskView::Wait
    ));
    let clear = pb::EvaluationReport {
        site: SITES[0].name.clone(),
        round: 2,
        n_examples: 100,
        n_correct: 82,
        ..Default::default()
    };
    let e = f
        .submit_evaluation(&SITES[0].name, &clear)
        .unwrap_err()
        .to_string();
    assert!(e.contains("summed securely"), "{e}");

    sum_securely(&mut f, &counts());
    let (stage, evidence) = decided(&db);
    assert_eq!(stage, Stage::Production);
    let evidence = evidence.unwrap();
    assert_eq!(evidence["rows"].as_f64(), Some(230.0));
    assert_eq!(evidence["candidate_only_right"].as_f64(), Some(27.0));
    assert_eq!(evidence["production_only_right"].as_f64(), Some(11.0));
    assert!((evidence["difference"].as_f64().unwrap() - 16.0 / 230.0).abs() < 1e-12);
    assert!((evidence["production_accuracy"].as_f64().unwrap() - 160.0 / 230.0).abs() < 1e-12);
    assert_eq!(evidence["secure_aggregation"], true);
    assert_eq!(evidence["interval"], "paired");
    // The evidence holds the sum and the canaries' names, nothing else.
    let keys: Vec<&str> = evidence
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "canary_sites",
            "candidate_accuracy",
            "candidate_only_right",
            "candidate_version",
            "ci95",
            "decision",
            "difference",
            "interval",
            "max_drop",
            "metrics_epsilon",
            "noise_std",
            "production_accuracy",
            "production_only_right",
            "production_version",
            "rows",
            "secure_aggregation"
        ]
    );
    let store = SqliteStore::open_existing(&db.path()).unwrap();
    let audit = store.audit_log(f.run_id()).unwrap();
    assert!(
        audit.iter().any(|e| e.outcome == "secure comparison summed"
            && e.detail == "the sum of 3 of 3 canaries' comparisons"),
        "{audit:?}"
    );
    for site in 0..4 {
        let (version, decision) = served(&mut f, site);
        assert_eq!(version, 2);
        assert!(
            decision.starts_with("promoted: on the secure sum of 3 canary site(s)' 230 test rows"),
            "{decision}"
        );
    }
}

#[test]
fn a_sum_that_does_not_fit_leaves_no_decision() {
    let db = Db::new();
    let mut f = rollout(&db, "aggregate-only", 3, &[0, 1, 2]);
    // Site 2 masks production alone right on more rows than all three got
    // right: the sum cannot be taken for what it says.
    let mut sites = counts();
    sites[2].1 = CanaryCounts::of_site(10, 0, 0, 1_000).encode();
    sum_securely(&mut f, &sites);
    assert_eq!(decided(&db).0, Stage::Canary);
    let (version, decision) = served(&mut f, 3);
    assert_eq!(version, 1);
    assert!(
        decision.starts_with("no decision: the sum of 3 canaries'"),
        "{decision}"
    );
    assert!(decision.contains("out of bounds"), "{decision}");
    // A site counted as two, likewise.
    let db = Db::new();
    let mut f = rollout(&db, "aggregate-only", 3, &[0, 1, 2]);
    let mut sites = counts();
    let mut twice = CanaryCounts::of_site(10, 5, 1, 1);
    twice.sites = 2;
    sites[1].1 = twice.encode();
    sum_securely(&mut f, &sites);
    assert_eq!(decided(&db).0, Stage::Canary);
    let (_, decision) = served(&mut f, 0);
    assert!(
        decision.contains("the site count summed is not the canaries'"),
        "{decision}"
    );
}

#[test]
fn too_few_canaries_or_an_old_participant_are_refused() {
    let db = Db::new();
    // Two canaries: a secure sum needs three.
    let mut f = rollout(&db, "aggregate-only", 3, &[0, 1]);
    let (version, decision) = served(&mut f, 0);
    assert_eq!(version, 1);
    assert!(decision.contains("needs at least 3"), "{decision}");
    assert_eq!(decided(&db).0, Stage::Canary);
    // The plan's min_participants counts too.
    let db = Db::new();
    let mut f = rollout(&db, "aggregate-only", 4, &[0, 1, 2]);
    let (_, decision) = served(&mut f, 0);
    assert!(decision.contains("needs at least 4"), "{decision}");
    // A 1.21 participant cannot mask its comparison: refused at its join.
    let db = Db::new();
    let mut f = common::start_rollout(&db, 0.0, None, db.open(&plan("dp", 3)));
    let old = pb::Hello {
        minor: 21,
        capabilities: tessera_proto::capabilities_at(21)
            .into_iter()
            .map(String::from)
            .collect(),
        canary: true,
        ..hello(&SITES[0].name)
    };
    let e = f.join(&SITES[0].name, &old).unwrap_err().to_string();
    assert!(e.contains("canary-secure"), "{e}");
}

#[test]
fn with_dp_the_sum_is_noised_and_the_interval_widened() {
    let db = Db::new();
    let mut f = rollout(&db, "dp", 3, &[0, 1, 2]);
    sum_securely(&mut f, &counts());
    let (_, evidence) = decided(&db);
    let evidence = evidence.unwrap();
    assert_eq!(evidence["interval"], "paired, noised");
    let sigma = evidence["noise_std"].as_f64().unwrap();
    assert!(sigma > 1.0, "{evidence}");
    assert!(evidence["metrics_epsilon"].as_f64().unwrap() > 0.0);
    // The released rows are the exact 230 plus noise (never exactly 230),
    // and the interval is at least the noise's width.
    let rows = evidence["rows"].as_f64().unwrap();
    assert!(
        rows != 230.0 && (rows - 230.0).abs() < 10.0 * sigma,
        "{rows}"
    );
    // The counts are noised (never whole numbers with continuous noise),
    // and the interval is wider than the exact counts' paired one.
    for key in ["candidate_only_right", "production_only_right"] {
        assert!(evidence[key].as_f64().unwrap().fract() != 0.0, "{evidence}");
    }
    let exact = tessera_analytics::ab::paired(230, 160, 27, 11).unwrap();
    let ci = evidence["ci95"].as_array().unwrap();
    let width = ci[1].as_f64().unwrap() - ci[0].as_f64().unwrap();
    assert!(width > exact.ci95.1 - exact.ci95.0, "{evidence}");
    // One release in a rollout: the noise is sized for it alone.
    let (plan, _) = plan("dp", 3);
    let one = tessera_privacy::MetricsDp::new(&plan.privacy, 1).unwrap();
    assert!(
        (sigma - one.unit_std()).abs() < 1e-9,
        "{sigma} {}",
        one.unit_std()
    );
}

#[test]
fn a_canary_gone_quiet_is_not_waited_for_in_the_secure_round() {
    let db = Db::new();
    let clock = tessera_coordinator::ManualClock::starting_now();
    let opened = db
        .open_with(
            &plan("aggregate-only", 3),
            std::time::Duration::from_secs(30),
        )
        .with_clock(std::sync::Arc::new(clock.clone()));
    let mut f = common::start_rollout(&db, 0.0, None, opened);
    for site in 0..4 {
        let hello = pb::Hello {
            canary: true,
            ..hello(&SITES[site].name)
        };
        f.join(&SITES[site].name, &hello).unwrap();
    }
    f.advance();
    // Site 3 goes quiet before sending its keys; the others keep beating.
    // Without a deadline each stage may wait ten liveness periods (300 s),
    // but a canary silent past one (30 s) is dropped from the round.
    for _ in 0..4 {
        clock.advance(std::time::Duration::from_secs(15));
        for site in [0, 1, 2] {
            f.heartbeat(&SITES[site].name, 0).unwrap();
        }
        f.advance();
    }
    sum_securely(&mut f, &counts());
    // Decided on the three others' sum.
    let (_, decision) = served(&mut f, 0);
    assert!(
        decision.contains("the secure sum of 3 canary site(s)' 230 test rows"),
        "{decision}"
    );
}
