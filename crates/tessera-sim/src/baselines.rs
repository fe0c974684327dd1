//! Local-only and pooled baselines on the federation's splits.

use rayon::prelude::*;
use tessera_core::{SeededRng, tag};
use tessera_data::FederatedData;
use tessera_engine::{Plan, streams};
use tessera_learn::{Evaluation, Learner, LocalPlan};

use crate::SimError;
use crate::report::{Baselines, LocalBaseline, PooledBaseline};
use crate::run::{initial_model, mean_site_accuracy, site_metrics};

/// Trains each site alone, and one model on all training rows pooled, from
/// the federation's initial model with the plan's baseline training.
pub fn run_baselines(plan: &Plan, data: &FederatedData) -> Result<Baselines, SimError> {
    let initial = initial_model(plan, data)?;
    let training = plan.baseline_training();
    let local_plan = LocalPlan::plain(&training);
    let rng = |who: &str| SeededRng::derived(plan.seed, &[streams::BASELINE, tag(who)]);

    let local: Vec<(Evaluation, f64)> = data
        .sites
        .par_iter()
        .map(|site| -> Result<(Evaluation, f64), SimError> {
            let mut model = initial.clone();
            model.fit(&site.train, &local_plan, &mut rng(&site.name))?;
            let own = model.evaluate(&site.test)?;
            let everywhere: Vec<Evaluation> = data
                .sites
                .iter()
                .map(|s| model.evaluate(&s.test))
                .collect::<Result<_, _>>()?;
            Ok((own, mean_site_accuracy(&everywhere)))
        })
        .collect::<Result<_, _>>()?;
    let local = LocalBaseline {
        mean_site_accuracy: mean_site_accuracy(local.iter().map(|(e, _)| e)),
        per_site: data
            .sites
            .iter()
            .zip(&local)
            .map(|(s, (e, _))| (s.name.clone(), site_metrics(e)))
            .collect(),
        cross_site_mean_accuracy: data
            .sites
            .iter()
            .zip(&local)
            .map(|(s, (_, cross))| (s.name.clone(), *cross))
            .collect(),
    };

    let (pooled_train, pooled_test) = data.pooled(&plan.data.standardize);
    let mut model = initial.clone();
    model.fit(&pooled_train, &local_plan, &mut rng("pooled"))?;
    let on_pooled_test = model.evaluate(&pooled_test)?;
    let per_site: Vec<Evaluation> = data
        .sites
        .iter()
        .map(|s| model.evaluate(&s.test))
        .collect::<Result<_, _>>()?;
    let pooled = PooledBaseline {
        accuracy: on_pooled_test.accuracy(),
        mean_site_accuracy: mean_site_accuracy(&per_site),
        auc: on_pooled_test.auc,
        per_site: data
            .sites
            .iter()
            .zip(&per_site)
            .map(|(s, e)| (s.name.clone(), site_metrics(e)))
            .collect(),
    };
    Ok(Baselines { local, pooled })
}
