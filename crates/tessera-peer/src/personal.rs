//! Fine-tuning at a gossip peer (`[personalization]`): after the last round
//! the peer fine-tunes its own final model on its own rows, as the gossip
//! simulation does for each site, and reports it against that model and a
//! model trained on its rows alone (with its departments where the plan
//! names them). Nothing of it leaves the site.

use std::collections::BTreeMap;

use tessera_core::{ParameterSet, ParticipantId};
use tessera_data::{Agreement, Dataset};
use tessera_engine::baseline::fit_baseline;
use tessera_engine::report::PersonalizationReport;
use tessera_engine::{Departments, Levels, Plan, PlanBuild, Site};
use tessera_learn::Evaluation;

use crate::PeerError;

/// The report's `personalization` section for site `site`, whose final
/// model is `model` (last evaluated as `last`); `None` when the plan does
/// not fine-tune.
pub(crate) fn personalization(
    plan: &Plan,
    (site, agreement, departments): (&str, &Agreement, Option<&Departments>),
    (model, last): (&ParameterSet, Option<&Evaluation>),
    (train, test): (&Dataset, &Dataset),
    scale: &[f64],
) -> Result<Option<PersonalizationReport>, PeerError> {
    if !plan.personalizes() {
        return Ok(None);
    }
    let local = |e: String| PeerError::Local(format!("fine-tuning: {e}"));
    let (n_features, n_classes) = (agreement.feature_names().len(), agreement.classes.len());
    let learner = plan
        .learner(n_features, n_classes)
        .map_err(|e| local(e.to_string()))?;
    let initial = learner.parameters().clone();
    // Gossip refuses local DP, so no secret key is ever asked for.
    let mut own = Site::of_plan(plan, ParticipantId::new(site), learner, || {
        Err(local(
            "the gossip topology does not support local DP".into(),
        ))
    })?;
    let personal = own
        .personalized(plan, model, train)
        .map_err(|e| local(e.to_string()))?;
    let evaluated = |own: &mut Site, parameters: &ParameterSet| {
        own.evaluate(parameters, test)
            .map_err(|e| local(e.to_string()))
    };
    let global = match last {
        Some(last) => last.clone(),
        None => evaluated(&mut own, model)?,
    };
    let personalized = evaluated(&mut own, &personal)?;
    // Alone, as the simulator's local-only baseline trains it (`scale`:
    // the divisors its rows were standardised with); a model that fails to
    // train is left out, as there.
    let start = plan
        .learner(n_features, n_classes)
        .map_err(|e| local(e.to_string()))?;
    let mut local_only = BTreeMap::new();
    if let Ok((alone, _)) = fit_baseline(
        plan,
        start.as_ref(),
        train,
        scale,
        &agreement.indicators(),
        site,
    ) && let Ok(evaluation) = alone.evaluate(test)
    {
        local_only.insert(site.to_string(), evaluation.accuracy());
    }
    let mut report =
        PersonalizationReport::new(plan, &[site], &[global], &[personalized], &local_only);
    if let (Some(column), Some(departments)) = (&plan.personalization.department, departments) {
        let levels = Levels {
            initial: &initial,
            global: model,
            regional: None,
            site: &personal,
        };
        let figures = departments
            .accuracies(&mut own, plan, (train, test), levels)
            .map_err(|e| local(e.to_string()))?;
        report = report.with_departments(column, &[site], vec![figures]);
    }
    Ok(Some(report))
}
