//! Local-only and pooled baselines on the federation's splits.

use rayon::prelude::*;
use tessera_core::{SeededRng, tag};
use tessera_data::{Dataset, FederatedData};
use tessera_engine::{Plan, streams};
use tessera_learn::{Evaluation, LearnError, Learner, LocalPlan};

use crate::SimError;
use crate::run::initial_model;
use tessera_engine::report::{
    Baselines, LocalBaseline, PooledBaseline, mean_site_accuracy, site_metrics,
};

/// Trains each site alone, and one model on all training rows pooled, from
/// the federation's initial model with the plan's baseline training. A model
/// that fails to train is left out and its failure named in `errors`; the
/// others are still reported.
pub fn run_baselines(plan: &Plan, data: &FederatedData) -> Result<Baselines, SimError> {
    crate::multitask::elsewhere(plan)?;
    let initial = initial_model(plan, data)?;
    let training = plan.baseline_training();
    let local_plan = LocalPlan::plain(&training);
    let train = |mut model: Box<dyn Learner>,
                 who: &str,
                 rows: &Dataset|
     -> Result<Box<dyn Learner>, LearnError> {
        let mut rng = SeededRng::derived(plan.seed, &[streams::BASELINE, tag(who)]);
        model.fit(rows, &local_plan, &mut rng)?;
        Ok(model)
    };
    let evaluate_everywhere = |model: &dyn Learner| -> Result<Vec<Evaluation>, LearnError> {
        data.sites.iter().map(|s| model.evaluate(&s.test)).collect()
    };
    let mut errors = Vec::new();

    let (local, local_errors) = local_baseline(plan, data, initial.as_ref());
    errors.extend(local_errors);

    let (pooled_train, pooled_test) = data.pooled(&plan.data.standardize);
    let pooled = train(initial.clone_box(), "pooled", &pooled_train).and_then(|model| {
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
/// training, evaluated on its own test rows and on every site's; the sites
/// whose model failed to train are left out and named in the errors.
pub(crate) fn local_baseline(
    plan: &Plan,
    data: &FederatedData,
    initial: &dyn Learner,
) -> (LocalBaseline, Vec<String>) {
    let training = plan.baseline_training();
    let local_plan = LocalPlan::plain(&training);
    let evaluate_everywhere = |model: &dyn Learner| -> Result<Vec<Evaluation>, LearnError> {
        data.sites.iter().map(|s| model.evaluate(&s.test)).collect()
    };
    let mut errors = Vec::new();
    // Collected in site order, so which failures are reported never depends on threads.
    let starts: Vec<Box<dyn Learner>> = data.sites.iter().map(|_| initial.clone_box()).collect();
    let local: Vec<Result<(Evaluation, f64), LearnError>> = data
        .sites
        .par_iter()
        .zip(starts)
        .map(|(site, start)| {
            let mut model = start;
            let mut rng = SeededRng::derived(plan.seed, &[streams::BASELINE, tag(&site.name)]);
            model.fit(&site.train, &local_plan, &mut rng)?;
            let own = model.evaluate(&site.test)?;
            Ok((
                own,
                mean_site_accuracy(&evaluate_everywhere(model.as_ref())?),
            ))
        })
        .collect();
    let mut per_site = std::collections::BTreeMap::new();
    let mut cross_site_mean_accuracy = std::collections::BTreeMap::new();
    let mut own_evaluations = Vec::new();
    for (site, result) in data.sites.iter().zip(local) {
        match result {
            Ok((own, cross)) => {
                per_site.insert(site.name.clone(), site_metrics(&own));
                cross_site_mean_accuracy.insert(site.name.clone(), cross);
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
    };

    (local, errors)
}
