//! Secure rounds that do not finish, in process: a listed homomorphic
//! contributor that withdraws, a sum decrypted past the round's deadline,
//! and SecAgg+ or homomorphic rounds whose training round closes first; each
//! is failed at once and audited with its reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    Db, SITES, agree, commitment_list, fetched_sum, key_commitments, round_id, secure_values, step,
    train,
};
use tessera_coordinator::{Federation, ManualClock};
use tessera_core::Update;
use tessera_engine::Plan;
use tessera_he::{Contribution, EndorsedKey, HeParams, KeyHolder, RoundId};
use tessera_proto::pb;
use tessera_proto::pb::sec_agg_reply::State;
use tessera_proto::pb::sec_agg_request::Step;
use tessera_secagg::Unauthenticated;

/// The key stage as the plan's key holders play it (each commits, then,
/// every commitment in, shares): the parameters, the round's id, the key
/// holders by site, and the joint key as a contributor assembles it.
fn keys(
    f: &mut Federation,
    plan: &Plan,
    round: u32,
    p: &pb::SecAggParams,
) -> (HeParams, RoundId, Vec<(String, KeyHolder)>, EndorsedKey) {
    let (he, id) = (HeParams::new().unwrap(), round_id(plan, round));
    let mut holders = Vec::new();
    for (site, &h) in p.key_holder_sites.iter().zip(&p.key_holders) {
        let (holder, c) = KeyHolder::new(&he, h, id, [h as u8; 32], &Unauthenticated).unwrap();
        let sent = pb::HeKeyCommitment {
            digest: c.digest.to_vec(),
            signature: c.signature,
        };
        step(f, site, round, Step::HeKeyCommitment(sent)).unwrap();
        holders.push((site.clone(), holder));
    }
    let mut commitments = Vec::new();
    for (site, _) in &holders {
        let Ok(State::HeTask(task)) = step(f, site, 0, Step::HeHolder(true)) else {
            panic!("no task for {site}");
        };
        commitments = key_commitments(&task.key_commitments);
    }
    let mut shares = Vec::new();
    for (site, h) in &holders {
        let s = (h.share(
            &commitments,
            &p.key_holders,
            &Unauthenticated,
            &Unauthenticated,
        ))
        .unwrap();
        let sent = pb::HeKeyShare {
            share: s.share.clone(),
            signature: s.signature.clone(),
        };
        step(f, site, round, Step::HeKeyShare(sent)).unwrap();
        shares.push(s);
    }
    let key = EndorsedKey::assemble(
        &he,
        id,
        &commitments,
        &shares,
        &p.key_holders,
        &Unauthenticated,
    )
    .unwrap();
    (he, id, holders, key)
}

/// `site` (contributor `id`) encrypts `values` under `key` and commits to
/// them; its contribution, to reveal.
fn commit(
    f: &mut Federation,
    site: &str,
    round: u32,
    (he, key): (&HeParams, &EndorsedKey),
    id: u32,
    values: &[u32],
) -> Contribution {
    let c = tessera_he::encrypt(he, key, id, values, &[id as u8; 32], &Unauthenticated).unwrap();
    let sent = pb::HeCommitment {
        length: c.commitment.length as u32,
        digest: c.commitment.digest.to_vec(),
        signature: c.commitment.signature.clone(),
    };
    step(f, site, round, Step::HeCommitment(sent)).unwrap();
    c
}

/// The heart plan with `text` appended and a round deadline of 600 s, on
/// a clock the test moves, agreed.
fn on_a_deadline(db: &Db, text: &str) -> (Federation, ManualClock, Plan) {
    let (_, text) = common::plan(text);
    let text = text.replace("rounds = 15\n", "rounds = 15\ndeadline_seconds = 600\n");
    let plan = (Plan::from_toml(&text, "he").unwrap(), text);
    let clock = ManualClock::starting_now();
    let mut f = db
        .open(&plan)
        .with_clock(std::sync::Arc::new(clock.clone()));
    agree(&mut f);
    (f, clock, plan.0)
}

/// A listed contributor that withdraws before revealing fails the round at
/// once, naming it (the key holders decrypt the whole list's sum or
/// nothing), instead of holding the reveals to their deadline; the others
/// are told their input did not count.
#[test]
fn a_listed_contributor_withdrawing_fails_the_round_at_once() {
    let text = "\n[secure_aggregation]\nenabled = true\nscheme = \"homomorphic\"\n\
                key_holders = [\"cleveland\", \"va\"]\n";
    let plan = common::plan(text);
    let db = Db::new();
    let mut f = db.open(&plan);
    let plan = plan.0;
    agree(&mut f);
    let names: Vec<String> = SITES.iter().map(|s| s.name.clone()).collect();
    let updates: Vec<(u32, Update)> = (0..4).map(|i| train(&mut f, i)).collect();
    let round = updates[0].0;
    let Ok(State::Params(p)) = step(&mut f, "cleveland", round, Step::Poll(1)) else {
        panic!("no parameters");
    };
    let (he, _, _, key) = keys(&mut f, &plan, round, &p);
    // Every contributor commits; the list closes with all four.
    for (i, name) in names.iter().enumerate() {
        let values = vec![i as u32; p.dimension as usize];
        commit(&mut f, name, round, (&he, &key), i as u32, &values);
    }
    let listed = step(&mut f, &names[1], round, Step::Poll(3));
    assert!(matches!(listed, Ok(State::HeList(_))), "{listed:?}");
    // Switzerland leaves the round: failed now, not at the deadline.
    f.withdraw(&names[2], round, "its data went away", false)
        .unwrap();
    let closed = f.store().rounds(f.run_id()).unwrap();
    assert!(
        closed.len() == 1
            && closed[0].round == round
            && closed[0].status.starts_with("quorum not met"),
        "{closed:?}"
    );
    let log = f.store().audit_log(f.run_id()).unwrap();
    let failed = (log.iter())
        .find(|a| a.action == "homomorphic-aggregation" && a.outcome == "failed")
        .expect("the round's failure audited");
    assert!(
        failed
            .detail
            .contains(&format!("{} withdrew before revealing", names[2])),
        "{}",
        failed.detail
    );
    assert_eq!(
        step(&mut f, &names[0], round, Step::Poll(4)).unwrap(),
        State::Done(false)
    );
}

/// A homomorphic round whose sum is decrypted after the round's deadline
/// (the key holders' last answer came past it, before a tick closed the
/// round) is refused by the engine: the refusal is in the audit log, named,
/// not only in the coordinator's log, and nobody's update counts.
#[test]
fn a_sum_refused_after_the_deadline_is_audited() {
    let text = "\n[secure_aggregation]\nenabled = true\nscheme = \"homomorphic\"\n\
                key_holders = [\"cleveland\", \"va\"]\n";
    let db = Db::new();
    let (mut f, clock, plan) = on_a_deadline(&db, text);
    let names: Vec<String> = SITES.iter().map(|s| s.name.clone()).collect();
    let updates: Vec<(u32, Update)> = (0..4).map(|i| train(&mut f, i)).collect();
    let round = updates[0].0;
    let Ok(State::Params(p)) = step(&mut f, "cleveland", round, Step::Poll(1)) else {
        panic!("no parameters");
    };
    let (he, id, holders, key) = keys(&mut f, &plan, round, &p);
    let mut contributions = Vec::new();
    for (i, (name, (_, update))) in names.iter().zip(&updates).enumerate() {
        let values = secure_values(round, &p, update);
        contributions.push(commit(&mut f, name, round, (&he, &key), i as u32, &values));
    }
    let Ok(State::HeList(list)) = step(&mut f, &names[1], round, Step::Poll(3)) else {
        panic!("no list");
    };
    let list = commitment_list(&list);
    for (i, c) in contributions.into_iter().enumerate() {
        let ciphertexts = c.ciphertext_bytes();
        let revealed = c.reveal(&id, &list, &Unauthenticated).unwrap();
        let sent = pb::HeReveal {
            list_signature: revealed.list_signature,
            ciphertexts,
            first: 0,
        };
        step(&mut f, &names[i], round, Step::HeReveal(sent)).unwrap();
    }
    let last = holders.len() - 1;
    for (n, (site, holder)) in holders.into_iter().enumerate() {
        let sum = fetched_sum(&mut f, &site, round, &key, p.dimension as usize, &list);
        let answer = holder.answer(&sum, 2, &Unauthenticated).unwrap();
        if n == last {
            // The deadline passes while the last key holder decrypts.
            clock.advance(std::time::Duration::from_secs(601));
        }
        let sent = pb::HeAnswer {
            sum_digest: answer.sum_digest.to_vec(),
            shares: answer.share_bytes(),
            signature: answer.signature.clone(),
            first: 0,
        };
        step(&mut f, &site, round, Step::HeAnswer(sent)).unwrap();
    }
    let log = f.store().audit_log(f.run_id()).unwrap();
    let he_audits: Vec<_> = (log.iter())
        .filter(|a| a.action == "homomorphic-aggregation")
        .map(|a| (a.outcome.as_str(), a.detail.as_str()))
        .collect();
    assert_eq!(
        he_audits[1..],
        [(
            "failed",
            &*format!(
                "round {round}: the sum was refused: update arrived after the round's deadline"
            )
        )],
        "{log:?}"
    );
    assert_eq!(
        step(&mut f, &names[2], round, Step::Poll(4)).unwrap(),
        State::Done(false)
    );
}

/// A homomorphic (or SecAgg+) round whose training round closes at its
/// deadline before the sum is decrypted (here, no key holder ever commits;
/// no site sends its keys) ends then, audited as failed, not left with only
/// "opened" and its sites at work; a poll of it is told the site's input
/// did not count.
#[test]
fn a_round_closed_before_its_sum_is_decrypted_is_audited() {
    let homomorphic = "\n[secure_aggregation]\nenabled = true\nscheme = \"homomorphic\"\n\
                       key_holders = [\"cleveland\", \"va\"]\n";
    let secagg = "\n[secure_aggregation]\nenabled = true\n";
    for (text, action, how) in [
        (homomorphic, "homomorphic-aggregation", "decrypted"),
        (secagg, "secure-aggregation", "unmasked"),
    ] {
        closed_before_its_sum(text, action, how);
    }
}

fn closed_before_its_sum(text: &str, action: &str, how: &str) {
    let db = Db::new();
    let (mut f, clock, _) = on_a_deadline(&db, text);
    let round = (0..4).map(|i| train(&mut f, i).0).last().unwrap();
    clock.advance(std::time::Duration::from_secs(601));
    f.advance();
    let log = f.store().audit_log(f.run_id()).unwrap();
    let audits: Vec<_> = (log.iter())
        .filter(|a| a.action == action && a.outcome != "opened")
        .map(|a| (a.outcome.as_str(), a.detail.as_str()))
        .collect();
    assert_eq!(
        audits,
        [(
            "failed",
            &*format!(
                "round {round}: the round closed (quorum not met (0/1)) before its sum was {how}"
            )
        )],
        "{log:?}"
    );
    // A poll of it is told the site's input did not count.
    assert_eq!(
        step(&mut f, "hungarian", round, Step::Poll(1)).unwrap(),
        State::Done(false),
        "{action}"
    );
}
