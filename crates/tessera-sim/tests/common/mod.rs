//! What the simulation tests share: the example plans on Synthetic(0.5, 0.5)
//! with 10 classes and 60 features over sites of 200 rows, which the plans
//! generate in memory (`[data.synthetic]`).

use std::path::Path;

use tessera_data::{FederatedData, Filesystem};
use tessera_engine::Plan;

/// `examples/<plan>` with its data: Li et al.'s Synthetic(0.5, 0.5), 47 sites.
#[allow(dead_code)] // not every test binary uses both
pub fn synthetic_10class(plan: &str) -> (Plan, FederatedData) {
    synthetic_sites(plan, 47)
}

/// `examples/<plan>` with its generated data, which must have `sites` sites.
#[allow(dead_code)]
pub fn synthetic_sites(plan: &str, sites: usize) -> (Plan, FederatedData) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let plan = Plan::from_file(&dir.join(plan)).expect("example plan");
    let synthetic = plan.data.synthetic.as_ref().expect("[data.synthetic]");
    assert_eq!(
        (
            synthetic.sites,
            synthetic.rows,
            synthetic.features,
            synthetic.classes
        ),
        (sites, 200, 60, 10)
    );
    let data = tessera_data::load(&plan.data, &dir, &Filesystem).expect("load");
    assert_eq!(data.sites.len(), sites);
    (plan, data)
}

/// A built-in learner's evaluation of `global` on `test`, as an external
/// learner reports it (mean loss, rows, `n_correct`).
#[allow(dead_code)]
pub fn evaluate_built_in(
    learner: &mut dyn tessera_learn::Learner,
    global: &tessera_core::ParameterSet,
    test: &tessera_data::Dataset,
) -> Result<tessera_engine::EvaluateResult, tessera_engine::ExternalError> {
    let fail = |e: tessera_learn::LearnError| {
        tessera_engine::ExternalError::failed("evaluate", e.to_string())
    };
    learner.set_parameters(global).map_err(fail)?;
    let e = learner.evaluate(test).map_err(fail)?;
    Ok(tessera_engine::EvaluateResult {
        loss: e.loss_sum / e.n_examples.max(1) as f64,
        n_examples: e.n_examples as i64,
        metrics: tessera_engine::Metrics::from([("n_correct".to_string(), e.n_correct as f64)]),
    })
}
