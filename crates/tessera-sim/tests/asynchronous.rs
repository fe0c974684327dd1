//! Asynchronous buffered aggregation against synchronous rounds on the
//! virtual clock, with site speeds spread 10x (examples/synthetic-async.toml):
//! async reaches the target accuracy at least 3x sooner, and ends within one
//! point of sync given the same virtual time.

#![allow(clippy::unwrap_used)]

mod common;

use tessera_engine::Mode;
use tessera_sim::{SimOptions, simulate};

#[test]
fn async_reaches_the_target_three_times_sooner() {
    let (async_plan, data) = common::synthetic_10class("synthetic-async.toml");
    // The example plan is asynchronous, 1700 steps; sync takes 60 rounds.
    assert_eq!(async_plan.federation.mode, Mode::Async);
    assert_eq!(async_plan.federation.rounds, 1700);
    let options = SimOptions {
        attack: None,
        baselines: false,
        target_accuracy: Some(0.72),
    };
    let mut plan = async_plan.clone();
    plan.federation.mode = Mode::Sync;
    plan.federation.rounds = 60;
    let sync = simulate(&plan, &data, &options, &mut |_| {}).unwrap();
    let asynchronous = simulate(&async_plan, &data, &options, &mut |_| {}).unwrap();

    let sync_time = sync.timing.virtual_seconds_to_target.unwrap();
    let async_time = asynchronous.timing.virtual_seconds_to_target.unwrap();
    eprintln!(
        "to 0.72: sync {sync_time:.2} s, async {async_time:.2} s ({:.1}x); final: sync {:.4} at {:.1} s, async {:.4} at {:.1} s",
        sync_time / async_time,
        sync.final_metrics.accuracy.unwrap(),
        sync.timing.virtual_seconds,
        asynchronous.final_metrics.accuracy.unwrap(),
        asynchronous.timing.virtual_seconds
    );
    assert!(
        async_time * 3.0 <= sync_time,
        "async {async_time} against sync {sync_time}"
    );
    assert!(
        asynchronous.timing.virtual_seconds <= sync.timing.virtual_seconds,
        "no more virtual time than sync"
    );
    assert!(
        asynchronous.final_metrics.accuracy.unwrap() >= sync.final_metrics.accuracy.unwrap() - 0.01,
        "final accuracy within a point: async {} against sync {}",
        asynchronous.final_metrics.accuracy.unwrap(),
        sync.final_metrics.accuracy.unwrap()
    );
    // Slow sites are never refused for staleness.
    assert_eq!(
        asynchronous
            .rounds
            .iter()
            .map(|r| r.rejected)
            .sum::<usize>(),
        0
    );
}

/// Secure aggregation of FedBuff's buffers: each buffer of 5 is a secure
/// round among its contributors (their staleness discounts applied at each
/// site, before masking), and a site waits for its buffer's round before it
/// trains again. On the same 10x spread of site speeds the target is reached
/// at least twice as soon as with secure synchronous rounds; every step takes
/// 5 distinct sites; the homomorphic scheme gives the same model to the bit.
#[test]
fn secure_buffers_reach_the_target_sooner_than_secure_rounds() {
    let (plan, data) = common::synthetic_10class("synthetic-async.toml");
    let mut secure = plan.clone();
    secure.secure_aggregation.enabled = true;
    secure.robust.rule = tessera_aggregate::RobustRule::Mean;
    secure.federation.rounds = 200;
    let options = SimOptions {
        attack: None,
        baselines: false,
        target_accuracy: Some(0.72),
    };
    let mut sync = secure.clone();
    sync.federation.mode = Mode::Sync;
    sync.federation.rounds = 15;
    let sync = simulate(&sync, &data, &options, &mut |_| {}).unwrap();
    let asynchronous = simulate(&secure, &data, &options, &mut |_| {}).unwrap();
    let sync_time = sync.timing.virtual_seconds_to_target.unwrap();
    let async_time = asynchronous.timing.virtual_seconds_to_target.unwrap();
    eprintln!(
        "secure, to 0.72: sync {sync_time:.2} s, async {async_time:.2} s ({:.1}x)",
        sync_time / async_time
    );
    assert!(
        async_time * 2.0 <= sync_time,
        "async {async_time} against sync {sync_time}"
    );
    assert!(asynchronous.rounds.iter().all(|r| r.accepted == 5));

    let mut short = secure.clone();
    short.federation.rounds = 40;
    let masked = simulate(&short, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let mut he = short.clone();
    he.secure_aggregation.scheme = tessera_secagg::Scheme::Homomorphic;
    he.secure_aggregation.key_holders = data.sites[..3].iter().map(|s| s.name.clone()).collect();
    let encrypted = simulate(&he, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let bits = |r: &tessera_sim::RunReport| -> Vec<u32> {
        r.final_parameters.values().map(f32::to_bits).collect()
    };
    assert_eq!(masked.rounds.len(), 40);
    assert_eq!(bits(&masked), bits(&encrypted));
}

/// Secure buffers that could never fill or never be decrypted are refused
/// before the run: more distinct sites than the federation has, fewer than a
/// secure round needs or than `min_participants`.
#[test]
fn secure_buffers_that_cannot_work_are_refused() {
    let (plan, data) = common::synthetic_10class("synthetic-async.toml");
    let mut secure = plan.clone();
    secure.secure_aggregation.enabled = true;
    secure.robust.rule = tessera_aggregate::RobustRule::Mean;
    let mut large = secure.clone();
    large.federation.buffer_size = 48;
    let e = simulate(&large, &data, &SimOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("a secure buffer takes 48 distinct sites; the federation has 47"),
        "{e}"
    );
    let mut small = secure.clone();
    small.federation.buffer_size = 2;
    let e = small.validate().unwrap_err().to_string();
    assert!(e.contains("needs at least 3"), "{e}");
    let mut short = secure.clone();
    short.federation.min_participants = 6;
    let e = short.validate().unwrap_err().to_string();
    assert!(e.contains("min_participants (6); buffer_size is 5"), "{e}");
}

/// Asynchronous FedProx sends its proximal weight with each task (it was
/// dropped before, which made async FedProx plain FedAvg): with a pull of
/// mu = 2 the model moves less from where it started than with mu = 0, on
/// the same data, clock and server rate.
#[test]
fn asynchronous_fedprox_pulls_updates_toward_the_model_they_started_from() {
    let (plan, data) = common::synthetic_10class("synthetic-async.toml");
    let mut plan = plan.clone();
    plan.federation.mode = Mode::Async;
    plan.federation.rounds = 40;
    let options = SimOptions {
        attack: None,
        baselines: false,
        target_accuracy: None,
    };
    let initial = tessera_sim::initial_model(&plan, &data).unwrap();
    let moved = |mu: f32| {
        let run = plan
            .with_settings(&[
                "federation.strategy=\"fedprox\"".to_string(),
                format!("strategies.fedprox.mu={mu:?}"),
            ])
            .unwrap();
        let result = simulate(&run, &data, &options, &mut |_| {}).unwrap();
        result
            .final_parameters
            .sub(initial.parameters())
            .unwrap()
            .l2_norm()
    };
    let (free, pulled) = (moved(0.0), moved(2.0));
    eprintln!("moved from the initial model: mu 0 {free:.4}, mu 2 {pulled:.4}");
    assert!(
        pulled < 0.8 * free,
        "mu 2 moved {pulled}, mu 0 moved {free}"
    );
}
