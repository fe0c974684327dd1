//! Byzantine robustness on Synthetic(0.5, 0.5), 10 classes, 60 features, 47
//! sites, softmax regression (examples/synthetic-robust.toml), with 10
//! malicious sites: for every attack at least one defence keeps the honest
//! sites' accuracy within 2 points of the clean FedAvg run, while plain
//! FedAvg fails under the scaling attack. Accuracy is measured on the honest
//! sites' test rows, in the attacked runs and in the clean run alike.

#![allow(clippy::unwrap_used)]

mod common;

use tessera_aggregate::RobustRule;
use tessera_data::FederatedData;
use tessera_engine::Plan;
use tessera_sim::{Attack, AttackKind, RunReport, SimOptions, simulate};

fn setup() -> (Plan, FederatedData) {
    let (mut plan, data) = common::synthetic_10class("synthetic-robust.toml");
    // Accuracy on the honest sites needs each site's evaluation.
    plan.privacy.site_metrics = tessera_privacy::SiteMetrics::Clear;
    (plan, data)
}

fn run(
    plan: &Plan,
    data: &FederatedData,
    attack: Option<AttackKind>,
    rule: RobustRule,
    norm_bound: Option<f64>,
) -> RunReport {
    let mut plan = plan.clone();
    plan.robust.rule = rule;
    plan.robust.norm_bound = norm_bound;
    let options = SimOptions {
        attack: attack.map(|kind| Attack {
            kind,
            malicious: 10,
            strength: kind.default_strength(),
        }),
        ..SimOptions::default()
    };
    simulate(&plan, data, &options, &mut |_| {}).unwrap()
}

#[test]
fn a_defence_holds_against_every_attack_and_fedavg_fails_under_scaling() {
    let (plan, data) = setup();
    let scaled = run(
        &plan,
        &data,
        Some(AttackKind::Scaling),
        RobustRule::Mean,
        None,
    );
    let robustness = scaled.robustness.as_ref().unwrap();
    let malicious = robustness.malicious.clone();
    assert_eq!(malicious.len(), 10);
    let clean = run(&plan, &data, None, RobustRule::Mean, None);
    let clean_honest = clean.final_metrics.accuracy_without(&malicious);
    eprintln!(
        "clean FedAvg: {clean_honest:.4} on honest sites; FedAvg under scaling: {:.4}",
        robustness.honest_accuracy
    );
    assert!(clean_honest > 0.6, "clean run {clean_honest}");
    assert!(
        robustness.honest_accuracy < clean_honest - 0.2,
        "FedAvg under scaling: {} against {clean_honest}",
        robustness.honest_accuracy
    );

    let defences = [
        ("multi_krum", RobustRule::MultiKrum, None),
        ("norm bound 1", RobustRule::Mean, Some(1.0)),
        ("norm bound 2", RobustRule::Mean, Some(2.0)),
    ];
    // Free riders slow a federation down and are found by attribution
    // (tests/contribution.rs), not defended against.
    let attacks = AttackKind::ALL
        .into_iter()
        .filter(|&a| a != AttackKind::FreeRider);
    for attack in attacks {
        let mut best = ("", f64::MIN);
        for (name, rule, bound) in defences {
            let report = run(&plan, &data, Some(attack), rule, bound);
            let r = report.robustness.as_ref().unwrap();
            assert_eq!(r.malicious, malicious, "the same sites attack in every run");
            eprintln!("{attack} with {name}: {:.4}", r.honest_accuracy);
            if r.honest_accuracy > best.1 {
                best = (name, r.honest_accuracy);
            }
        }
        assert!(
            best.1 >= clean_honest - 0.02,
            "{attack}: the best defence ({}) reaches {:.4}, the clean run {clean_honest:.4}",
            best.0,
            best.1
        );
    }
}

#[test]
fn robust_rules_are_refused_where_they_cannot_work() {
    let (mut plan, _) = setup();
    plan.robust.rule = RobustRule::Median;
    plan.privacy.mode = tessera_privacy::PrivacyMode::Central;
    plan.privacy.noise_multiplier = Some(1.0);
    let e = plan.validate().unwrap_err().to_string();
    assert!(
        e.contains("robust rule 'median' has another sensitivity"),
        "{e}"
    );
    plan.privacy.mode = tessera_privacy::PrivacyMode::Off;
    plan.federation.mode = tessera_engine::Mode::Async;
    let e = plan.validate().unwrap_err().to_string();
    assert!(e.contains("needs synchronous rounds"), "{e}");
}
