//! Secure asynchronous buffers at the coordinator, in process (1.28,
//! `secure-buffers`): no update is taken in the clear, a join from the
//! future is refused naming why, a full buffer of live sites is seated in a
//! SecAgg+ round of its own with each member's staleness, a member is
//! seated once, and an older participant is refused at its join. A
//! synchronous secure round takes no update in the clear either.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Db, SITES, agree, hello, train};
use tessera_coordinator::{Federation, Refusal};
use tessera_engine::Plan;
use tessera_proto::pb;
use tessera_proto::pb::sec_agg_reply::State;
use tessera_proto::pb::sec_agg_request::Step;

/// The heart plan, asynchronous with buffers of `buffer` under secure
/// aggregation.
fn plan(buffer: usize) -> (Plan, String) {
    let (_, text) = common::plan("\n[secure_aggregation]\nenabled = true\n");
    let text = text
        .replace("min_participants = 4", "min_participants = 3")
        .replace(
            "strategy = \"fedavg\"\n",
            &format!("strategy = \"fedavg\"\nmode = \"async\"\nbuffer_size = {buffer}\n"),
        );
    (Plan::from_toml(&text, "buffers").unwrap(), text)
}

/// `site` joins a buffer with an update trained from version `base`.
fn join(f: &mut Federation, site: &str, base: u32) -> Result<State, Refusal> {
    f.secure_step(
        site,
        base,
        Some(Step::Buffer(pb::SecAggBufferJoin { base })),
    )
    .map(|reply| reply.state.unwrap())
}

#[test]
fn a_full_buffer_is_seated_in_a_secure_round_and_nothing_comes_in_the_clear() {
    let db = Db::new();
    let mut f = db.open(&plan(3));
    agree(&mut f);
    let names: Vec<&str> = SITES.iter().map(|s| s.name.as_str()).collect();
    // An update in the clear would void the buffer's sum: refused.
    let (round, update) = train(&mut f, 0);
    let e = f.submit_update(names[0], round, &update).unwrap_err();
    assert!(e.to_string().contains("never in the clear"), "{e}");
    // A model version that does not exist yet: refused, naming it.
    let e = join(&mut f, names[0], 7).unwrap_err();
    assert!(e.to_string().contains("model version 7"), "{e}");
    // Two wait; the third fills the buffer and is seated at once.
    assert_eq!(join(&mut f, names[0], 0).unwrap(), State::Wait(true));
    assert_eq!(join(&mut f, names[1], 0).unwrap(), State::Wait(true));
    // Asked again, a waiting site is not counted twice.
    assert_eq!(join(&mut f, names[1], 0).unwrap(), State::Wait(true));
    let seat = pb::SecAggSeat {
        round: 1,
        staleness: 0,
    };
    assert_eq!(join(&mut f, names[2], 0).unwrap(), State::Seat(seat));
    for site in &names[..2] {
        assert_eq!(join(&mut f, site, 0).unwrap(), State::Seat(seat));
    }
    // The fourth waits for the next buffer: one secure round at a time.
    assert_eq!(join(&mut f, names[3], 0).unwrap(), State::Wait(true));
    // The seated members' round: three participants, the plan's quantisation.
    let Some(State::Params(params)) = f
        .secure_step(names[0], 1, Some(Step::Poll(1)))
        .unwrap()
        .state
    else {
        panic!("no parameters for buffer round 1");
    };
    assert_eq!(params.participants.len(), 3);
    assert_eq!(params.sites, names[..3]);
    // Not a member: refused.
    let e = f.secure_step(names[3], 1, Some(Step::Poll(1))).unwrap_err();
    assert!(e.to_string().contains("not in round 1's cohort"), "{e}");
    // Nothing per site was stored.
    let run = f.run_id().to_string();
    assert!(f.store().updates(&run, 1).unwrap().is_empty());
    // A member that withdraws from the round is no longer waited for.
    let before = f.version();
    assert!(f.withdraw(names[1], 1, "refused", false).unwrap());
    assert!(f.version() > before);
    // One that changes nothing wakes no held poll.
    let before = f.version();
    assert!(!f.withdraw(names[3], 1, "not seated", false).unwrap());
    assert_eq!(f.version(), before);

    // After a restart the seated sites' round is over, and the next buffer
    // round takes a number above every one seated before: a site's key
    // ring refuses a round it has answered.
    drop(f);
    let mut f = db.open(&plan(3));
    assert_eq!(f.run_id(), run);
    for site in &names {
        f.join(site, &hello(site)).unwrap();
    }
    assert_eq!(
        f.secure_step(names[0], 1, Some(Step::Poll(1)))
            .unwrap()
            .state,
        Some(State::Done(true))
    );
    for site in &names[..2] {
        assert_eq!(join(&mut f, site, 0).unwrap(), State::Wait(true));
    }
    let Ok(State::Seat(seat)) = join(&mut f, names[2], 0) else {
        panic!("the buffer is full");
    };
    assert_eq!(seat.round, 2);
}

/// Only a newer update replaces the one a site waits with: an older one is
/// refused, naming both versions.
#[test]
fn a_waiting_site_cannot_go_back_to_an_older_model() {
    let db = Db::new();
    let mut f = db.open(&plan(4));
    agree(&mut f);
    let site = SITES[0].name.as_str();
    assert_eq!(join(&mut f, site, 0).unwrap(), State::Wait(true));
    // (Version 0 is the only one yet: 1 is from the future.)
    let e = join(&mut f, site, 1).unwrap_err();
    assert!(e.to_string().contains("model version 1"), "{e}");
    assert_eq!(join(&mut f, site, 0).unwrap(), State::Wait(true));
}

#[test]
fn a_participant_without_secure_buffers_is_refused_at_its_join() {
    let db = Db::new();
    let mut f = db.open(&plan(3));
    let old = pb::Hello {
        minor: 27,
        capabilities: tessera_proto::capabilities_at(27)
            .into_iter()
            .map(String::from)
            .collect(),
        ..hello(&SITES[0].name)
    };
    let e = f.join(&SITES[0].name, &old).unwrap_err().to_string();
    assert!(e.contains("secure-buffers"), "{e}");
    // In a synchronous run a buffer join is refused, saying why.
    let db = Db::new();
    let mut f = db.open(&common::plan("\n[secure_aggregation]\nenabled = true\n"));
    agree(&mut f);
    let e = join(&mut f, &SITES[0].name, 0).unwrap_err();
    assert!(e.to_string().contains("no secure buffers"), "{e}");
    // Nor is an update in the clear taken there: it would take the site off
    // the round's pending list, and the cohort's secure sum would be refused.
    let (round, update) = train(&mut f, 1);
    let e = f.submit_update(&SITES[1].name, round, &update).unwrap_err();
    assert!(e.to_string().contains("never in the clear"), "{e}");
}
