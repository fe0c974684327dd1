//! Homomorphic aggregation at the coordinator, in process (1.29,
//! `homomorphic-aggregation`): a whole round with real multiparty-BFV
//! messages from two key holders and four contributors, each stage's
//! out-of-turn or malformed messages refused naming why, and the engine
//! stepping with the decrypted sum.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    Db, SITES, agree, commitment_list, fetched_sum, key_commitments, refused, round_id,
    secure_values, step, train,
};
use tessera_core::Update;
use tessera_he::{Contribution, EndorsedKey, HeParams, KeyCommitment, KeyHolder, KeyShare};
use tessera_proto::pb;
use tessera_proto::pb::sec_agg_reply::State;
use tessera_proto::pb::sec_agg_request::Step;
use tessera_secagg::Unauthenticated;

#[test]
fn a_homomorphic_round_steps_with_the_decrypted_sum_and_refuses_out_of_turn_messages() {
    let text = "\n[secure_aggregation]\nenabled = true\nscheme = \"homomorphic\"\n\
                key_holders = [\"cleveland\", \"va\"]\n";
    // An MLP of 16,017 parameters: 4 ciphertexts a contribution, sent in
    // pieces.
    let (_, text) = common::plan(text);
    let text = text.replace("kind = \"logistic\"", "kind = \"mlp\"\nhidden = [1000]");
    let plan = (tessera_engine::Plan::from_toml(&text, "he").unwrap(), text);
    let db = Db::new();
    let mut f = db.open(&plan);
    let plan = plan.0;
    agree(&mut f);
    let names: Vec<String> = SITES.iter().map(|s| s.name.clone()).collect();
    let updates: Vec<(u32, Update)> = (0..4).map(|i| train(&mut f, i)).collect();
    let round = updates[0].0;
    // Never in the clear.
    let e = f
        .submit_update(&names[0], round, &updates[0].1)
        .unwrap_err();
    assert!(e.to_string().contains("never in the clear"), "{e}");
    // Only key holders are asked for key shares.
    let why = refused(step(&mut f, "hungarian", 0, Step::HeHolder(true)));
    assert!(why.contains("not a key holder"), "{why}");
    assert_eq!(
        step(&mut f, "cleveland", 0, Step::HeHolder(true)).unwrap(),
        State::HeTask(pb::HeHolderTask {
            round,
            stage: 1,
            key_commitments: Vec::new()
        })
    );
    let Ok(State::Params(p)) = step(&mut f, "cleveland", round, Step::Poll(1)) else {
        panic!("no parameters");
    };
    assert_eq!(p.key_holder_sites, ["cleveland", "va"]);
    assert_eq!(p.participants.len(), 4);
    // A contributor's key commitment, or a commitment before the keys:
    // refused.
    let commitment = pb::HeKeyCommitment {
        digest: vec![0; 32],
        signature: Vec::new(),
    };
    let why = refused(step(
        &mut f,
        "hungarian",
        round,
        Step::HeKeyCommitment(commitment),
    ));
    assert!(why.contains("a key commitment from 'hungarian'"), "{why}");
    let early = pb::HeCommitment {
        length: p.dimension,
        digest: vec![0; 32],
        signature: Vec::new(),
    };
    let why = refused(step(
        &mut f,
        "switzerland",
        round,
        Step::HeCommitment(early),
    ));
    assert!(why.contains("stage key commitments"), "{why}");
    // The key holders' commitments to fresh shares, then (every commitment
    // in) the shares, each matching its commitment.
    let he = HeParams::new().unwrap();
    let id = round_id(&plan, round);
    let mut holders = Vec::new();
    for (site, &holder) in p.key_holder_sites.iter().zip(&p.key_holders) {
        let (h, c) =
            KeyHolder::new(&he, holder, id, [holder as u8 + 9; 32], &Unauthenticated).unwrap();
        let sent = pb::HeKeyCommitment {
            digest: c.digest.to_vec(),
            signature: c.signature,
        };
        let why = refused(step(
            &mut f,
            site,
            round,
            Step::HeKeyShare(pb::HeKeyShare {
                share: vec![1],
                signature: Vec::new(),
            }),
        ));
        assert!(why.contains("stage key commitments"), "{why}");
        assert_eq!(
            step(&mut f, site, round, Step::HeKeyCommitment(sent.clone())).unwrap(),
            State::Wait(true)
        );
        // Once a round.
        let why = refused(step(&mut f, site, round, Step::HeKeyCommitment(sent)));
        assert!(why.contains("a key commitment from"), "{why}");
        holders.push((site.clone(), h));
    }
    for (site, h) in &holders {
        let Ok(State::HeTask(task)) = step(&mut f, site, 0, Step::HeHolder(true)) else {
            panic!("no task for {site}");
        };
        assert_eq!((task.round, task.stage), (round, 3));
        let commitments: Vec<KeyCommitment> = key_commitments(&task.key_commitments);
        let share = h
            .share(
                &commitments,
                &p.key_holders,
                &Unauthenticated,
                &Unauthenticated,
            )
            .unwrap();
        // A share that is not the one committed to: refused.
        let other = pb::HeKeyShare {
            share: vec![9; 40],
            signature: Vec::new(),
        };
        let why = refused(step(&mut f, site, round, Step::HeKeyShare(other)));
        assert!(why.contains("does not match its commitment"), "{why}");
        let sent = pb::HeKeyShare {
            share: share.share,
            signature: share.signature,
        };
        assert_eq!(
            step(&mut f, site, round, Step::HeKeyShare(sent)).unwrap(),
            State::Wait(true)
        );
    }
    // Every contributor assembles the key itself and commits.
    let Ok(State::HeKeys(keys)) = step(&mut f, "hungarian", round, Step::Poll(2)) else {
        panic!("no key shares");
    };
    let shares: Vec<KeyShare> = (keys.shares.iter())
        .map(|k| KeyShare {
            from: k.from,
            share: k.share.clone(),
            signature: k.signature.clone(),
        })
        .collect();
    let commitments: Vec<KeyCommitment> = key_commitments(&keys.commitments);
    let key = EndorsedKey::assemble(
        &he,
        id,
        &commitments,
        &shares,
        &p.key_holders,
        &Unauthenticated,
    )
    .unwrap();
    let mut contributions: Vec<Contribution> = Vec::new();
    for (i, (_, update)) in updates.iter().enumerate() {
        let values = secure_values(round, &p, update);
        let c = tessera_he::encrypt(
            &he,
            &key,
            i as u32,
            &values,
            &[i as u8; 32],
            &Unauthenticated,
        )
        .unwrap();
        if i == 0 {
            let short = pb::HeCommitment {
                length: 3,
                digest: c.commitment.digest.to_vec(),
                signature: Vec::new(),
            };
            let why = refused(step(&mut f, &names[0], round, Step::HeCommitment(short)));
            assert!(why.contains("a commitment to 3 values"), "{why}");
        }
        let sent = pb::HeCommitment {
            length: c.commitment.length as u32,
            digest: c.commitment.digest.to_vec(),
            signature: c.commitment.signature.clone(),
        };
        assert_eq!(
            step(&mut f, &names[i], round, Step::HeCommitment(sent)).unwrap(),
            State::Wait(true)
        );
        contributions.push(c);
    }
    let Ok(State::HeList(list)) = step(&mut f, &names[1], round, Step::Poll(3)) else {
        panic!("no list");
    };
    assert_eq!(list.commitments.len(), 4);
    let list = commitment_list(&list);
    // A reveal of someone else's ciphertexts does not match its commitment.
    let others = contributions[1].ciphertext_bytes();
    assert_eq!(others.len(), 4);
    let swapped = pb::HeReveal {
        list_signature: Vec::new(),
        ciphertexts: others,
        first: 0,
    };
    let why = refused(step(&mut f, &names[0], round, Step::HeReveal(swapped)));
    assert!(why.contains("do not match its commitment"), "{why}");
    // Pieces out of order, or past the contribution: refused.
    let piece = |ciphertexts: &[Vec<u8>], first: u32| pb::HeReveal {
        list_signature: Vec::new(),
        ciphertexts: ciphertexts.to_vec(),
        first,
    };
    let mine = contributions[0].ciphertext_bytes();
    let why = refused(step(
        &mut f,
        &names[0],
        round,
        Step::HeReveal(piece(&mine[2..], 2)),
    ));
    assert!(
        why.contains("a piece from ciphertext 2; 0 came so far"),
        "{why}"
    );
    step(
        &mut f,
        &names[0],
        round,
        Step::HeReveal(piece(&mine[..3], 0)),
    )
    .unwrap();
    let why = refused(step(
        &mut f,
        &names[0],
        round,
        Step::HeReveal(piece(&mine[1..], 3)),
    ));
    assert!(why.contains("a piece of 3 ciphertexts from 3"), "{why}");
    // A ciphertext of another length is refused as its piece comes, not
    // held until the contribution is whole.
    let mut short = mine[..1].to_vec();
    short[0].pop();
    let why = refused(step(
        &mut f,
        &names[0],
        round,
        Step::HeReveal(piece(&short, 0)),
    ));
    assert!(
        why.contains("ciphertext 0 of the piece takes 63487 bytes, not 63488"),
        "{why}"
    );
    // From the list's close, a key holder is given its answer's task and
    // fetches each contribution once it is revealed: one not yet revealed
    // is waited for; a site that is no key holder fetches nothing.
    let fetch = |from, first| Step::HeFetch(pb::HeFetch { from, first });
    assert_eq!(
        step(&mut f, "cleveland", round, fetch(0, 0)).unwrap(),
        State::Wait(true)
    );
    let why = refused(step(&mut f, "hungarian", round, fetch(0, 0)));
    assert!(why.contains("no contribution of 0"), "{why}");
    let why = refused(step(&mut f, "cleveland", round, fetch(9, 0)));
    assert!(why.contains("no contribution of 9"), "{why}");
    assert!(matches!(
        step(&mut f, "va", 0, Step::HeHolder(true)),
        Ok(State::HeTask(pb::HeHolderTask { stage: 2, .. }))
    ));
    for (i, c) in contributions.into_iter().enumerate() {
        let ciphertexts = c.ciphertext_bytes();
        let revealed = c.reveal(&id, &list, &Unauthenticated).unwrap();
        // Three then one, each piece signed.
        for (first, range) in [(0, 0..3), (3, 3..4)] {
            let sent = pb::HeReveal {
                list_signature: revealed.list_signature.clone(),
                ciphertexts: ciphertexts[range].to_vec(),
                first,
            };
            assert_eq!(
                step(&mut f, &names[i], round, Step::HeReveal(sent)).unwrap(),
                State::Wait(true)
            );
        }
        if i == 0 {
            // The first revealed is sent while the others are awaited.
            assert!(matches!(
                step(&mut f, "cleveland", round, fetch(0, 0)),
                Ok(State::HeContribution(_))
            ));
            assert_eq!(
                step(&mut f, "cleveland", round, fetch(1, 0)).unwrap(),
                State::Wait(true)
            );
        }
    }
    // The answers: each key holder fetches and sums every contribution.
    let why = refused(step(&mut f, "hungarian", round, fetch(0, 0)));
    assert!(why.contains("no contribution of 0"), "{why}");
    let why = refused(step(&mut f, "cleveland", round, fetch(0, 4)));
    assert!(why.contains("no ciphertext 4 of 0's 4"), "{why}");
    for (site, holder) in holders {
        assert_eq!(
            step(&mut f, &site, 0, Step::HeHolder(true)).unwrap(),
            State::HeTask(pb::HeHolderTask {
                round,
                stage: 2,
                key_commitments: Vec::new()
            })
        );
        let sum = fetched_sum(&mut f, &site, round, &key, p.dimension as usize, &list);
        let answer = holder.answer(&sum, 2, &Unauthenticated).unwrap();
        let shares = answer.share_bytes();
        let mut long = shares[..1].to_vec();
        long[0].push(0);
        let sent = pb::HeAnswer {
            sum_digest: answer.sum_digest.to_vec(),
            shares: long,
            signature: answer.signature.clone(),
            first: 0,
        };
        let why = refused(step(&mut f, &site, round, Step::HeAnswer(sent)));
        assert!(why.contains("takes 31745 bytes"), "{why}");
        let sent = pb::HeAnswer {
            sum_digest: vec![0; 1 << 20],
            shares: shares[..1].to_vec(),
            signature: answer.signature.clone(),
            first: 0,
        };
        let why = refused(step(&mut f, &site, round, Step::HeAnswer(sent)));
        assert!(
            why.contains("a sum digest of 1048576 bytes, not 32"),
            "{why}"
        );
        for (first, range) in [(0, 0..2), (2, 2..4)] {
            let sent = pb::HeAnswer {
                sum_digest: answer.sum_digest.to_vec(),
                shares: shares[range].to_vec(),
                signature: answer.signature.clone(),
                first,
            };
            step(&mut f, &site, round, Step::HeAnswer(sent)).unwrap();
        }
    }
    // Decrypted and stepped with the four updates at the last answer (not
    // at a later tick: no `advance` here), the round closed; its polls are
    // told it is over.
    let closed = f.store().rounds(f.run_id()).unwrap();
    assert_eq!(
        (closed.iter().map(|r| (r.round, r.status.as_str()))).collect::<Vec<_>>(),
        [(round, "completed")]
    );
    assert_eq!(
        step(&mut f, &names[2], round, Step::Poll(4)).unwrap(),
        State::Done(true)
    );
    let log = f.store().audit_log(f.run_id()).unwrap();
    let completed: Vec<_> = (log.iter())
        .filter(|a| a.action == "homomorphic-aggregation" && a.outcome == "completed")
        .collect();
    assert_eq!(completed.len(), 1, "{log:?}");
    assert!(
        completed[0].detail.contains("the sum of 4 of 4 updates"),
        "{}",
        completed[0].detail
    );
    assert!(
        !(log.iter()).any(|a| a.action == "homomorphic-aggregation" && a.outcome == "failed"),
        "{log:?}"
    );
}

/// A site that polls a round that is over is told whether its input
/// counted, whether or not the round open now has it (the next round opens
/// at the last answer of the one before; with three sites of four a round,
/// a site of one is often not in the next).
#[test]
fn a_site_polling_a_finished_round_is_told_so_outside_the_next_cohort() {
    let text = "\n[secure_aggregation]\nenabled = true\nscheme = \"homomorphic\"\n\
                key_holders = [\"cleveland\", \"va\"]\n";
    let (_, text) = common::plan(text);
    let text = text
        .replace("fraction = 1.0", "fraction = 0.75")
        .replace("min_participants = 4", "min_participants = 3");
    let plan = (tessera_engine::Plan::from_toml(&text, "he").unwrap(), text);
    let db = Db::new();
    let mut f = db.open(&plan);
    agree(&mut f);
    let mut trained = Vec::new();
    for site in SITES.iter() {
        if let Ok(tessera_coordinator::TaskView::Fit { header, .. }) = f.task_for(&site.name, None)
        {
            trained.push((site.name.clone(), header.round));
        }
    }
    assert_eq!(trained.len(), 3, "{trained:?}");
    let round = trained[0].1;
    for site in SITES.iter() {
        // Round `round - 1` is over for every site, in this round's cohort
        // or not; none of them counted in it.
        assert_eq!(
            step(&mut f, &site.name, round - 1, Step::Poll(4)).unwrap(),
            State::Done(false),
            "{}",
            site.name
        );
    }
}

#[test]
fn a_participant_reading_fhe_encodings_only_is_refused_at_its_join() {
    let text = "\n[secure_aggregation]\nenabled = true\nscheme = \"homomorphic\"\n\
                key_holders = [\"cleveland\", \"va\"]\n";
    let db = Db::new();
    let mut f = db.open(&common::plan(text));
    let old = pb::Hello {
        minor: 30,
        capabilities: tessera_proto::capabilities_at(30)
            .into_iter()
            .map(String::from)
            .collect(),
        ..common::hello(&SITES[0].name)
    };
    let e = f.join(&SITES[0].name, &old).unwrap_err().to_string();
    assert!(e.contains("he-ntt-wire"), "{e}");
    // 1.31: the NTT encoding, of two 36-bit moduli.
    let two_moduli = pb::Hello {
        minor: 31,
        capabilities: tessera_proto::capabilities_at(31)
            .into_iter()
            .map(String::from)
            .collect(),
        ..common::hello(&SITES[0].name)
    };
    let e = f.join(&SITES[0].name, &two_moduli).unwrap_err().to_string();
    assert!(
        e.contains("he-one-modulus") && !e.contains("he-ntt-wire"),
        "{e}"
    );
    // 1.32: key holders fetch whole contributions.
    let whole_fetch = pb::Hello {
        minor: 32,
        capabilities: tessera_proto::capabilities_at(32)
            .into_iter()
            .map(String::from)
            .collect(),
        ..common::hello(&SITES[0].name)
    };
    let e = f
        .join(&SITES[0].name, &whole_fetch)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("he-half-fetch") && !e.contains("he-one-modulus"),
        "{e}"
    );
    assert!(
        f.join(&SITES[0].name, &common::hello(&SITES[0].name))
            .is_ok()
    );
}
