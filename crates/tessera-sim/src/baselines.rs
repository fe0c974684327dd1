//! Local-only and pooled baselines on the federation's splits.

use rayon::prelude::*;
use tessera_data::FederatedData;
use tessera_engine::Plan;
use tessera_engine::baseline::fit_baseline;
use tessera_learn::{Evaluation, LearnError, Learner};

use crate::SimError;
use crate::run::initial_model;
use tessera_engine::baseline::BaselineChoice;
use tessera_engine::report::{
    Baselines, LocalBaseline, PooledBaseline, mean_site_accuracy, site_metrics,
};

/// Trains each site alone, and one model on all training rows pooled, from
/// the federation's initial model with the plan's baseline training,
/// regularised and early-stopped on held-out training rows
/// ([`tessera_engine::baseline`]). A model that fails to train is left out
/// and its failure named in `errors`; the others are still reported.
pub fn run_baselines(plan: &Plan, data: &FederatedData) -> Result<Baselines, SimError> {
    crate::multitask::elsewhere(plan)?;
    let initial = initial_model(plan, data)?;
    let evaluate_everywhere = |model: &dyn Learner| -> Result<Vec<Evaluation>, LearnError> {
        data.sites.iter().map(|s| model.evaluate(&s.test)).collect()
    };
    let mut errors = Vec::new();

    if !data.holds_unstandardised() {
        return Err(SimError::Engine(tessera_engine::EngineError::State(
            "baselines: the sites' rows as encoded were released before the run".into(),
        )));
    }
    let (local, local_errors) = local_baseline(plan, data, initial.as_ref());
    errors.extend(local_errors);

    let (pooled_train, pooled_test, pooled_scaler) = data.pooled(&plan.data.standardize);
    let pooled = fit_baseline(
        plan,
        initial.as_ref(),
        &pooled_train,
        &pooled_scaler.scale,
        &data.indicators(),
        "pooled",
    )
    .and_then(|(model, choice)| {
        let on_pooled_test = model.evaluate(&pooled_test)?;
        let per_site = evaluate_everywhere(model.as_ref())?;
        Ok(PooledBaseline {
            accuracy: on_pooled_test.accuracy(),
            mean_site_accuracy: mean_site_accuracy(&per_site),
            auc: on_pooled_test.auc,
            binary: on_pooled_test
                .histogram
                .as_ref()
                .and_then(|h| h.binary_metrics(0.5)),
            per_site: data
                .sites
                .iter()
                .zip(&per_site)
                .map(|(s, e)| (s.name.clone(), site_metrics(e)))
                .collect(),
            choice,
        })
    });
    let pooled = match pooled {
        Ok(pooled) => Some(pooled),
        Err(e) => {
            errors.push(format!("pooled baseline: {e}"));
            None
        }
    };
    Ok(Baselines {
        local,
        pooled,
        errors,
    })
}

/// Each site trained alone from `initial` with the plan's baseline
/// training, regularised and early-stopped on its held-out training rows,
/// evaluated on its own test rows and on every site's; the sites whose model
/// failed to train are left out and named in the errors.
pub(crate) fn local_baseline(
    plan: &Plan,
    data: &FederatedData,
    initial: &dyn Learner,
) -> (LocalBaseline, Vec<String>) {
    let evaluate_everywhere = |model: &dyn Learner| -> Result<Vec<Evaluation>, LearnError> {
        data.sites.iter().map(|s| model.evaluate(&s.test)).collect()
    };
    let mut errors = Vec::new();
    // Collected in site order, so which failures are reported never depends on threads.
    let starts: Vec<Box<dyn Learner>> = data.sites.iter().map(|_| initial.clone_box()).collect();
    let indicators = data.indicators();
    type Local = (Evaluation, f64, Option<BaselineChoice>);
    let local: Vec<Result<Local, LearnError>> = data
        .sites
        .par_iter()
        .zip(starts)
        .map(|(site, start)| {
            let (model, choice) = fit_baseline(
                plan,
                start.as_ref(),
                &site.train,
                &site.scaler().scale,
                &indicators,
                &site.name,
            )?;
            let own = model.evaluate(&site.test)?;
            Ok((
                own,
                mean_site_accuracy(&evaluate_everywhere(model.as_ref())?),
                choice,
            ))
        })
        .collect();
    let mut per_site = std::collections::BTreeMap::new();
    let mut cross_site_mean_accuracy = std::collections::BTreeMap::new();
    let mut own_evaluations = Vec::new();
    let mut choices = std::collections::BTreeMap::new();
    for (site, result) in data.sites.iter().zip(local) {
        match result {
            Ok((own, cross, choice)) => {
                per_site.insert(site.name.clone(), site_metrics(&own));
                cross_site_mean_accuracy.insert(site.name.clone(), cross);
                if let Some(choice) = choice {
                    choices.insert(site.name.clone(), choice);
                }
                own_evaluations.push(own);
            }
            Err(e) => errors.push(format!("local baseline of site '{}': {e}", site.name)),
        }
    }
    // Every site's rows, each scored by its own model, taken together.
    let together = Evaluation::pool(&own_evaluations);
    let local = LocalBaseline {
        mean_site_accuracy: mean_site_accuracy(&own_evaluations),
        per_site,
        cross_site_mean_accuracy,
        auc: together.auc,
        binary: together
            .histogram
            .as_ref()
            .and_then(|h| h.binary_metrics(0.5)),
        choices,
    };

    (local, errors)
}
