//! Central DP on the bundled Fed-Heart-Disease plan: epsilon <= 3 at delta
//! 1e-5 from the ledger, deterministic, and a budget too small for the plan
//! refused before any training.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use tessera_data::Filesystem;
use tessera_engine::Plan;
use tessera_privacy::PrivacyMode;
use tessera_sim::{SimError, SimOptions, simulate};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn dp_plan() -> Plan {
    let mut plan = Plan::from_file(&examples().join("fed-heart-disease.toml")).unwrap();
    plan.privacy.mode = PrivacyMode::Central;
    plan.privacy.epsilon = Some(3.0);
    plan.privacy.delta = 1e-5;
    plan.privacy.clip_norm = 0.05;
    plan
}

#[test]
fn heart_disease_with_central_dp_spends_at_most_its_epsilon() {
    let plan = dp_plan();
    let data = tessera_data::load(&plan.data, &examples(), &Filesystem).unwrap();
    let report = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let privacy = report.privacy.as_ref().unwrap();
    assert_eq!(privacy.ledger.len(), 15);
    assert!(
        privacy.epsilon <= 3.0 && privacy.epsilon > 2.9,
        "{}",
        privacy.epsilon
    );
    assert_eq!(privacy.budget, Some(3.0));
    let epsilons: Vec<f64> = report.rounds.iter().map(|r| r.epsilon.unwrap()).collect();
    assert!(epsilons.windows(2).all(|w| w[0] < w[1]), "{epsilons:?}");
    assert_eq!(*epsilons.last().unwrap(), privacy.epsilon);
    eprintln!(
        "central DP: epsilon {:.4} at delta 1e-5, noise multiplier {:.4}: mean site accuracy {:.4}",
        privacy.epsilon,
        privacy.noise_multiplier,
        report.final_metrics.mean_site_accuracy.unwrap()
    );

    let again = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(again.rounds.len(), report.rounds.len());
    for (a, b) in again.rounds.iter().zip(&report.rounds) {
        assert_eq!(
            (a.accuracy, a.loss, a.epsilon),
            (b.accuracy, b.loss, b.epsilon)
        );
    }
    assert_eq!(again.final_parameters, report.final_parameters);
}

#[test]
fn a_budget_too_small_is_refused_before_training() {
    let mut plan = dp_plan();
    plan.privacy.noise_multiplier = Some(5.0);
    plan.privacy.budget = Some(1.0);
    let data = tessera_data::load(&plan.data, &examples(), &Filesystem).unwrap();
    let mut rounds_run = 0;
    let err = simulate(&plan, &data, &SimOptions::default(), &mut |_| {
        rounds_run += 1
    })
    .unwrap_err();
    assert!(matches!(err, SimError::Engine(_)));
    let message = err.to_string();
    assert_eq!(rounds_run, 0, "nothing trained");
    assert!(
        message.starts_with("run privacy budget exceeded: the plan's 15 remaining rounds"),
        "{message}"
    );
    assert!(message.contains("over the budget of 1"), "{message}");
}

#[test]
fn local_dp_sgd_calibrates_each_site_and_refuses_a_participant_budget_too_small() {
    let mut plan = dp_plan();
    plan.privacy.mode = PrivacyMode::Local;
    plan.privacy.clip_norm = 1.0;
    let data = tessera_data::load(&plan.data, &examples(), &Filesystem).unwrap();
    let report = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let privacy = report.privacy.as_ref().unwrap();
    assert_eq!(privacy.mode, "local");
    // 15 rounds x 4 sites, each a participant's DP-SGD steps of the round.
    assert_eq!(privacy.ledger.len(), 60);
    assert!(privacy.ledger.iter().all(|e| e.kind == "local"));
    assert!(
        privacy.epsilon <= 3.0 && privacy.epsilon > 2.99,
        "{}",
        privacy.epsilon
    );
    // Each site's sampling rate is its batch over its own rows.
    let rates: std::collections::BTreeSet<String> = privacy
        .ledger
        .iter()
        .map(|e| format!("{:.5}", e.event.sampling_rate))
        .collect();
    assert_eq!(rates.len(), 4, "{rates:?}");
    eprintln!(
        "local DP-SGD: epsilon {:.4}, mean site accuracy {:.4}",
        privacy.epsilon,
        report.final_metrics.mean_site_accuracy.unwrap()
    );

    plan.privacy.epsilon = None;
    plan.privacy.noise_multiplier = Some(1.0);
    plan.privacy.budget = None;
    plan.privacy
        .participant_budgets
        .insert("hungarian".into(), 2.0);
    let mut rounds_run = 0;
    let Err(err) = simulate(&plan, &data, &SimOptions::default(), &mut |_| {
        rounds_run += 1
    }) else {
        panic!("a run past a participant's budget was not refused");
    };
    assert_eq!(rounds_run, 0);
    let message = err.to_string();
    assert!(
        message.starts_with(
            "participant 'hungarian' privacy budget exceeded: the plan's 15 rounds of DP-SGD"
        ),
        "{message}"
    );
}

/// `site_metrics = "aggregate-only"`: the report holds only what a
/// coordinator unmasks from the sum of the sites' evaluations: the pooled
/// counts (exactly the clear run's), the loss and the mean of the sites'
/// accuracies to 2^-16 per site, and no per-site figure.
#[test]
fn aggregate_only_site_metrics_report_only_sums_across_sites() {
    let mut plan = Plan::from_file(&examples().join("fed-heart-disease.toml")).unwrap();
    // The default.
    assert_eq!(
        plan.privacy.site_metrics,
        tessera_privacy::SiteMetrics::AggregateOnly
    );
    let data = tessera_data::load(&plan.data, &examples(), &Filesystem).unwrap();
    plan.privacy.site_metrics = tessera_privacy::SiteMetrics::Clear;
    let clear = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    plan.privacy.site_metrics = tessera_privacy::SiteMetrics::AggregateOnly;
    let summed = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(clear.final_parameters, summed.final_parameters);
    assert_eq!(clear.final_metrics.per_site.len(), 4);
    assert!(summed.final_metrics.per_site.is_empty());
    assert_eq!(
        clear.final_metrics.accuracy.unwrap(),
        summed.final_metrics.accuracy.unwrap()
    );
    assert_eq!(clear.final_metrics.auc, summed.final_metrics.auc);
    for (c, s) in clear.rounds.iter().zip(&summed.rounds) {
        assert_eq!(c.accuracy, s.accuracy);
        assert!((c.loss - s.loss).abs() < 1e-4, "{} {}", c.loss, s.loss);
        assert!((c.mean_site_accuracy - s.mean_site_accuracy).abs() < 1e-4);
    }
    let json = serde_json::to_string(&summed).unwrap();
    for site in ["cleveland", "hungarian", "switzerland", "va"] {
        assert!(
            !json.contains(&format!("\"{site}\":{{\"accuracy")),
            "no per-site metrics in the report"
        );
    }
    plan.federation.mode = tessera_engine::Mode::Async;
    plan.federation.buffer_size = 2;
    let e = plan.validate().unwrap_err().to_string();
    assert!(e.contains("aggregate-only"), "{e}");
}

/// `site_metrics = "dp"` in simulation: the model is untouched, every
/// round's evaluation is a release charged to `metrics_epsilon` (the last
/// one at the budget), the released figures differ from the exact sums by
/// noise of the calibrated size, and the report says a simulation's noise is
/// an experiment (it derives from the seed, so two runs agree).
#[test]
fn dp_site_metrics_are_noised_sums_charged_to_their_own_budget() {
    let mut plan = Plan::from_file(&examples().join("fed-heart-disease.toml")).unwrap();
    let data = tessera_data::load(&plan.data, &examples(), &Filesystem).unwrap();
    let exact = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    plan.privacy.site_metrics = tessera_privacy::SiteMetrics::Dp;
    plan.privacy.metrics_epsilon = Some(2.0);
    let noised = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let again = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(exact.final_parameters, noised.final_parameters);
    assert!(noised.final_metrics.per_site.is_empty());
    let dp = noised
        .metrics_privacy
        .as_ref()
        .expect("the report has metrics_privacy");
    let rounds = plan.federation.rounds as usize;
    assert_eq!(dp.releases as usize, rounds);
    assert!(dp.epsilon <= 2.0 * 1.001 && dp.epsilon > 1.8, "{dp:?}");
    assert!(!dp.release, "a simulation's noise is an experiment");
    assert!(dp.note.contains("experiment"), "{}", dp.note);
    let spends: Vec<f64> = noised
        .rounds
        .iter()
        .map(|r| r.metrics_epsilon.unwrap())
        .collect();
    assert!(spends.windows(2).all(|w| w[0] < w[1]), "{spends:?}");
    assert_eq!(spends.last().copied(), Some(dp.epsilon));
    // Noise of the calibrated size: each round's accuracy is the noised
    // count of right predictions over the noised row count.
    let rows = exact_rows(&data);
    let std = dp.noise_multiplier * dp.sensitivity;
    let mut moved = 0;
    for (e, n) in exact.rounds.iter().zip(&noised.rounds) {
        if e.accuracy != n.accuracy {
            moved += 1;
        }
        // Both counts within 5 sigma: the accuracy within about 10 sigma / rows.
        assert!(
            (e.accuracy - n.accuracy).abs() < 10.0 * std / rows + 0.01,
            "round {}: {} against {} (sigma {std:.1} rows {rows})",
            e.round,
            n.accuracy,
            e.accuracy
        );
    }
    assert!(
        moved >= rounds - 1,
        "the noise moved {moved} of {rounds} rounds"
    );
    for (a, b) in noised.rounds.iter().zip(&again.rounds) {
        assert_eq!(
            a.accuracy, b.accuracy,
            "the simulation's noise derives from the seed"
        );
    }
    // A metrics epsilon that is not positive is refused.
    plan.privacy.metrics_epsilon = Some(-1.0);
    assert!(plan.validate().is_err());
}

fn exact_rows(data: &tessera_data::FederatedData) -> f64 {
    data.sites.iter().map(|s| s.test.n_rows() as f64).sum()
}
