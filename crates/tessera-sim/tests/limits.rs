//! A plan whose models cannot fit in memory is refused before any model is
//! built, saying how much it needs. Before, MNIST with `hidden = [100000]`
//! grew to 13.1 GB and aborted.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use tessera_data::Filesystem;
use tessera_engine::Plan;
use tessera_sim::{SimOptions, simulate};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn a_model_too_big_for_the_memory_is_refused_before_it_is_built() {
    let mut plan = Plan::from_file(&examples().join("fed-heart-disease.toml")).unwrap();
    let data = tessera_data::load(&plan.data, &examples(), &Filesystem).unwrap();
    plan.model = tessera_learn::ModelConfig::of_kind(tessera_learn::ModelKind::Mlp);
    plan.model.hidden = vec![100_000_000];
    plan.simulation.max_memory_gb = Some(1.0);
    let e = simulate(&plan, &data, &SimOptions::default(), &mut |_| {})
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    // 13 features: (13 + 1) x 10^8 + (10^8 + 1) parameters, 12 copies.
    assert!(
        e.contains("a model of 1500000001 parameters")
            && e.contains("72.0 GB")
            && e.contains("the plan's simulation.max_memory_gb (1.0 GB)"),
        "{e}"
    );
    // Past 2^64 bytes: refused, without overflow or allocation.
    plan.model.hidden = vec![usize::MAX / 2, usize::MAX / 2];
    let e = simulate(&plan, &data, &SimOptions::default(), &mut |_| {})
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("more than 2^64"), "{e}");
    // The bundled plan fits.
    plan.model = tessera_learn::ModelConfig::of_kind(tessera_learn::ModelKind::Logistic);
    plan.federation.rounds = 1;
    simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
}

#[test]
fn releasing_the_rows_before_standardisation_changes_no_bit_and_what_needs_them_refuses() {
    let mut plan = Plan::from_file(&examples().join("fed-heart-disease.toml")).unwrap();
    plan.federation.rounds = 3;
    let held = tessera_data::load(&plan.data, &examples(), &Filesystem).unwrap();
    let mut released = held.clone();
    assert!(held.holds_unstandardised());
    released.release_unstandardised();
    assert!(!released.holds_unstandardised());
    assert!(released.sites.iter().all(|s| s.raw_train().nrows() == 0
        && s.raw_test().nrows() == 0
        && s.scaler().mean.is_empty()));
    let run = |data| simulate(&plan, data, &SimOptions::default(), &mut |_| {}).unwrap();
    let (a, b) = (run(&held), run(&released));
    assert_eq!(a.final_parameters, b.final_parameters);
    assert_eq!(a.final_metrics, b.final_metrics);
    for (h, r) in held.sites.iter().zip(&released.sites) {
        assert_eq!((&h.train, &h.test), (&r.train, &r.test), "{}", h.name);
    }
    // Baselines and departments need them: refused, not run on no rows.
    let e = tessera_sim::run_baselines(&plan, &released)
        .unwrap_err()
        .to_string();
    assert!(e.contains("released"), "{e}");
    let mut departments = plan.clone();
    departments.personalization.department = Some("sex".into());
    let e = tessera_engine::Departments::of(&departments, &released.agreement, &released.sites[0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no longer holds its rows"), "{e}");
    let statistics = std::panic::catch_unwind(|| released.federation_statistics());
    assert!(statistics.is_err());
}
