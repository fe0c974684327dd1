//! Secure aggregation in simulation: 47 sites of Synthetic(0.5, 0.5), 30%
//! of each cohort dropping mid-round; the securely aggregated model equals
//! the plainly aggregated one within the quantisation error.

#![allow(clippy::unwrap_used)]

mod common;

use tessera_data::FederatedData;
use tessera_engine::Plan;
use tessera_sim::{SimOptions, simulate};

fn setup() -> (Plan, FederatedData) {
    let (mut plan, data) = common::synthetic_10class("synthetic-robust.toml");
    plan.simulation.dropout = 0.3;
    (plan, data)
}

#[test]
fn secure_aggregation_with_dropouts_matches_plain_aggregation() {
    let (mut plan, data) = setup();
    // Secure aggregation averages updates unweighted; so does a trimmed mean
    // that trims nothing, computed from the individual updates.
    plan.robust.rule = tessera_aggregate::RobustRule::TrimmedMean;
    plan.robust.trim_fraction = 0.0;
    let mut one = plan.clone();
    one.federation.rounds = 1;
    let plain = simulate(&one, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let mut secure_plan = one.clone();
    secure_plan.secure_aggregation.enabled = true;
    secure_plan.robust.rule = tessera_aggregate::RobustRule::Mean;
    let secure = simulate(&secure_plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let (p, s) = (&plain.rounds[0], &secure.rounds[0]);
    assert!(p.dropped >= 8, "about 30% drop: {}", p.dropped);
    assert_eq!((p.accepted, p.dropped), (s.accepted, s.dropped));
    // Each value of the mean is within half a quantisation step of the plain one.
    let step = 2.0 / f64::from((1u32 << 26) - 1);
    let worst = plain
        .final_parameters
        .values()
        .zip(secure.final_parameters.values())
        .map(|(a, b)| (f64::from(a) - f64::from(b)).abs())
        .fold(0.0, f64::max);
    assert!(worst <= step / 2.0 + 1e-6, "{worst}");
    // Protocol traffic is counted: keys, shares, masked inputs, unmasking.
    assert!(s.bytes_up > p.bytes_up);

    // A whole run with dropouts every round ends where plain aggregation does.
    let plain = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let mut secure_plan = plan.clone();
    secure_plan.secure_aggregation.enabled = true;
    secure_plan.robust.rule = tessera_aggregate::RobustRule::Mean;
    let secure = simulate(&secure_plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    assert!(secure.rounds.iter().all(|r| r.status == "completed"));
    let (a, b) = (
        plain.final_metrics.accuracy.unwrap(),
        secure.final_metrics.accuracy.unwrap(),
    );
    eprintln!("30 rounds with 30% dropping: plain {a:.4}, secure {b:.4}");
    assert!((a - b).abs() < 0.005, "plain {a}, secure {b}");
}

#[test]
fn combinations_that_cannot_work_are_refused() {
    let (mut plan, _) = setup();
    plan.secure_aggregation.enabled = true;
    plan.robust.rule = tessera_aggregate::RobustRule::Krum;
    let e = plan.validate().unwrap_err().to_string();
    assert!(
        e.contains("robust rule 'krum' needs every update, but secure aggregation shows the coordinator only their sum"),
        "{e}"
    );
    plan.robust.rule = tessera_aggregate::RobustRule::Median;
    assert!(plan.validate().is_err());
    plan.robust.rule = tessera_aggregate::RobustRule::Mean;
    plan.validate().unwrap();
}

#[test]
fn central_dp_noise_goes_on_the_securely_aggregated_sum() {
    let (mut plan, data) = setup();
    plan.federation.rounds = 5;
    plan.secure_aggregation.enabled = true;
    plan.privacy.mode = tessera_privacy::PrivacyMode::Central;
    plan.privacy.noise_multiplier = Some(1.0);
    plan.privacy.clip_norm = 0.5;
    plan.privacy.budget = Some(100.0);
    let report = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let privacy = report.privacy.as_ref().unwrap();
    assert_eq!(privacy.ledger.len(), 5);
    assert!(report.rounds.iter().all(|r| r.status == "completed"));
    // Noise z C / n on the mean of the survivors' clipped updates.
    assert!(report.rounds.iter().all(|r| r.clip_norm == Some(0.5)));
    let mut adaptive = plan.clone();
    adaptive.privacy.adaptive_clipping = Some(Default::default());
    let e = adaptive.validate().unwrap_err().to_string();
    assert!(
        e.contains("adaptive clipping counts clipped updates one by one"),
        "{e}"
    );
}

#[test]
fn homomorphic_aggregation_equals_secagg_plus_to_the_bit() {
    let (mut plan, data) = setup();
    plan.federation.rounds = 3;
    plan.secure_aggregation.enabled = true;
    plan.robust.rule = tessera_aggregate::RobustRule::Mean;
    let masked = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let mut he = plan.clone();
    he.secure_aggregation.scheme = tessera_secagg::Scheme::Homomorphic;
    he.secure_aggregation.key_holders = data.sites[..3].iter().map(|s| s.name.clone()).collect();
    let encrypted = simulate(&he, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    // The same survivors each round (30% drop), the same sums decoded.
    for (m, e) in masked.rounds.iter().zip(&encrypted.rounds) {
        assert_eq!(e.status, "completed");
        assert_eq!((m.accepted, m.dropped), (e.accepted, e.dropped));
    }
    assert!(masked.rounds[0].dropped >= 8);
    let bits = |r: &tessera_sim::RunReport| -> Vec<u32> {
        r.final_parameters.values().map(f32::to_bits).collect()
    };
    assert_eq!(bits(&masked), bits(&encrypted));
    // Ciphertexts are larger than masked inputs: a whole ciphertext (4,096
    // values) for this small model.
    assert!(encrypted.rounds[0].bytes_up > 4 * masked.rounds[0].bytes_up);

    // A key holder that is not a site, and too few contributions for the
    // key holders (every cohort is smaller than the minimum), are refused.
    let mut stranger = he.clone();
    stranger
        .secure_aggregation
        .key_holders
        .push("nowhere".into());
    let e = simulate(&stranger, &data, &SimOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("key holder 'nowhere' is not a site"), "{e}");
    // The plan names key holders only with the homomorphic scheme, and
    // always with it.
    let mut none = he.clone();
    none.secure_aggregation.key_holders.clear();
    let e = none.validate().unwrap_err().to_string();
    assert!(e.contains("needs key_holders"), "{e}");
    let mut masked_with_holders = plan.clone();
    masked_with_holders.secure_aggregation.key_holders = vec!["a".into()];
    let e = masked_with_holders.validate().unwrap_err().to_string();
    assert!(e.contains("key_holders is for scheme"), "{e}");
    // One sum for the whole federation: not in a tree (yet).
    let mut tree = he.clone();
    tree.topology.kind = tessera_engine::TopologyKind::Hierarchical;
    let e = tree.validate().unwrap_err().to_string();
    assert!(
        e.contains("the hierarchical topology does not support homomorphic aggregation"),
        "{e}"
    );
}
