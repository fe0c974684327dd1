//! Continual learning in simulation: a run that starts from an earlier
//! run's model, on data that grew or shifted since, optionally held to what
//! the earlier model knew by elastic weight consolidation
//! ([`tessera_engine::continual::Elastic`]). The earlier run measures its
//! model's importance on its own sites' rows ([`importance`]); the later run
//! sees only that, never an earlier row.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tessera_core::ParameterSet;
use tessera_data::FederatedData;
use tessera_engine::continual::Elastic;
use tessera_engine::continual::check_continuable;
use tessera_engine::report::{ContinualReport, RoundRecord, RunReport};
use tessera_engine::{EngineError, Plan};
use tessera_learn::{LearnError, Learner};

use crate::SimOptions;
use crate::run::{Models, SimError, initial_model, report, run_sync};

/// Where a continued run starts and what holds it there.
#[derive(Debug, Clone)]
pub struct Continuation {
    /// The earlier run's final model: the new run's initial one.
    pub from: ParameterSet,
    /// The pull toward `from` every site adds to its local training
    /// (`None`: plain continued training).
    pub elastic: Option<Arc<Elastic>>,
    /// Each site's own pull, weighted by that site's own importance
    /// ([`site_importance`]), as deployed participants hold it; a site
    /// named here uses its own instead of `elastic`.
    pub per_site: BTreeMap<String, Arc<Elastic>>,
}

impl Continuation {
    /// Plain continued training from `from`.
    pub fn plain(from: ParameterSet) -> Self {
        Self {
            from,
            elastic: None,
            per_site: BTreeMap::new(),
        }
    }

    /// Continued training from `from`, pulled toward it by `lambda` weighted
    /// by `importance` (the earlier run's [`importance`]).
    pub fn elastic(
        from: ParameterSet,
        importance: ParameterSet,
        lambda: f32,
    ) -> Result<Self, SimError> {
        let elastic = Elastic::new(lambda, from.clone(), importance)?;
        Ok(Self {
            from,
            elastic: Some(elastic),
            per_site: BTreeMap::new(),
        })
    }

    /// Continued training from `from`, each site pulled toward it by
    /// `lambda` weighted by its own importance (`importance`, by site: the
    /// earlier run's [`site_importance`]), as deployed participants
    /// continue with `--ewc-lambda` and their own `--importance`.
    pub fn per_site(
        from: ParameterSet,
        importance: BTreeMap<String, ParameterSet>,
        lambda: f32,
    ) -> Result<Self, SimError> {
        let per_site = importance
            .into_iter()
            .map(|(site, f)| {
                let elastic = Elastic::new(lambda, from.clone(), f)
                    .map_err(|e| EngineError::State(format!("site {site}: {e}")))?;
                Ok::<_, EngineError>((site, elastic))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            from,
            elastic: None,
            per_site,
        })
    }

    /// The pull site `site` adds to its local training.
    pub(crate) fn elastic_of(&self, site: &str) -> Option<Arc<Elastic>> {
        self.per_site.get(site).or(self.elastic.as_ref()).cloned()
    }

    /// The plan's model holding `from`; refused, naming the difference,
    /// when `from` is not of the plan's model on `data`.
    pub(crate) fn model(
        &self,
        plan: &Plan,
        data: &FederatedData,
    ) -> Result<Box<dyn Learner>, SimError> {
        let mut model = initial_model(plan, data)?;
        model.set_parameters(&self.from).map_err(|e| {
            EngineError::State(format!(
                "the model to continue from is not the plan's model on this data ({} features, \
                 {} classes): {e}",
                data.n_features(),
                data.task.n_classes()
            ))
        })?;
        Ok(model)
    }
}

/// The importance of each of `parameters` to the plan's model on `data`:
/// every site's diagonal empirical Fisher information on up to `max_rows`
/// of its training rows, averaged over sites weighted by the rows used, and
/// scaled so that the largest is 1: EWC's `lambda` is then the pull on the
/// most important parameter, as FedProx's `mu` is on every one (and plain
/// SGD stays stable while `lr * lambda` is below 1).
/// What a site contributes is a mean over its rows, as an update is.
pub fn importance(
    plan: &Plan,
    data: &FederatedData,
    parameters: &ParameterSet,
    max_rows: usize,
) -> Result<ParameterSet, SimError> {
    let mut model = initial_model(plan, data)?;
    model.set_parameters(parameters)?;
    let per_site: Vec<(ParameterSet, usize)> = data
        .sites
        .iter()
        .filter(|s| s.train.n_rows() > 0)
        .map(|s| {
            let used = s.train.n_rows().min(max_rows);
            Ok::<_, LearnError>((model.importance(&s.train, max_rows)?, used))
        })
        .collect::<Result<_, _>>()?;
    let total: usize = per_site.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return Err(LearnError::Config("importance: no site has training rows".into()).into());
    }
    let mut mean = parameters.zeros_like();
    for (f, n) in &per_site {
        let weight = *n as f32 / total as f32;
        for (m, v) in mean.values_mut().zip(f.values()) {
            *m += weight * v;
        }
    }
    tessera_engine::continual::largest_one(&mut mean);
    Ok(mean)
}

/// Each site's own importance of `parameters` to the plan's model on
/// `data` ([`tessera_engine::continual::site_importance`]: its diagonal
/// empirical Fisher information on up to 1,000 of its training rows, the
/// largest scaled to 1), by site, for the sites with training rows: what
/// each deployed participant measures and keeps (`--importance-out`).
pub fn site_importance(
    plan: &Plan,
    data: &FederatedData,
    parameters: &ParameterSet,
) -> Result<BTreeMap<String, ParameterSet>, SimError> {
    let mut model = initial_model(plan, data)?;
    model.set_parameters(parameters)?;
    let mut by_site = BTreeMap::new();
    for site in data.sites.iter().filter(|s| s.train.n_rows() > 0) {
        let importance = tessera_engine::continual::site_importance(model.as_ref(), &site.train)?;
        by_site.insert(site.name.clone(), importance);
    }
    Ok(by_site)
}

/// Accuracy of `parameters`, the plan's model, over every test row of `data`.
pub fn accuracy(
    plan: &Plan,
    data: &FederatedData,
    parameters: &ParameterSet,
) -> Result<f64, SimError> {
    let mut model = initial_model(plan, data)?;
    model.set_parameters(parameters)?;
    let (mut right, mut n) = (0u64, 0u64);
    for site in &data.sites {
        let e = model.evaluate(&site.test)?;
        right += e.n_correct;
        n += e.n_examples;
    }
    Ok(right as f64 / n.max(1) as f64)
}

/// Runs the plan's federation on `data` from `continuation`'s model (flat
/// topology, synchronous rounds), as [`crate::simulate`] runs it otherwise;
/// the report's `continual` section has the accuracy on `data` of the model
/// continued from and of the final one.
pub fn simulate_continued(
    plan: &Plan,
    data: &FederatedData,
    continuation: Continuation,
    options: &SimOptions,
    observer: &mut dyn FnMut(&RoundRecord),
) -> Result<RunReport, SimError> {
    plan.validate()?;
    crate::multitask::elsewhere(plan)?;
    plan.check_cohort(data.sites.len())?;
    if options.attack.is_some() || !plan.personalization.new_sites.is_empty() {
        return Err(EngineError::State(
            "continual learning runs with no simulated attack and no \
             personalization.new_sites"
                .into(),
        )
        .into());
    }
    check_continuable(plan)?;
    // Refuses, naming why, parameters that are not of the plan's model.
    continuation.model(plan, data)?;
    let elastic = continuation.elastic.is_some() || !continuation.per_site.is_empty();
    if elastic && plan.privacy.mode == tessera_privacy::PrivacyMode::Local {
        // The pull is added outside DP-SGD's clipping and noise, and the
        // importance is a statistic of the sites' rows.
        return Err(EngineError::State(
            "elastic weight consolidation: local DP does not account for the elastic term, \
             whose importance is a statistic of the sites' rows; continue without it, or on a \
             plan without local DP"
                .into(),
        )
        .into());
    }
    if !continuation.per_site.is_empty() {
        let training: Vec<&str> = data
            .sites
            .iter()
            .filter(|s| s.train.n_rows() > 0)
            .map(|s| s.name.as_str())
            .collect();
        if let Some(site) = training
            .iter()
            .find(|s| !continuation.per_site.contains_key(**s))
        {
            return Err(EngineError::State(format!(
                "elastic weight consolidation by site: no importance for site {site}"
            ))
            .into());
        }
        if let Some(site) = continuation
            .per_site
            .keys()
            .find(|s| !training.contains(&s.as_str()))
        {
            return Err(EngineError::State(format!(
                "elastic weight consolidation by site: an importance for {site}, which is not \
                 a site of this data with training rows"
            ))
            .into());
        }
    }
    let new_before = accuracy(plan, data, &continuation.from)?;
    let (ewc_lambda, ewc_importance) =
        match (&continuation.elastic, continuation.per_site.values().next()) {
            (Some(e), _) => (Some(e.lambda()), Some("federation".to_string())),
            (None, Some(e)) => (Some(e.lambda()), Some("site".to_string())),
            (None, None) => (None, None),
        };
    let started = Instant::now();
    let run = run_sync(plan, data, None, Models::Continued(continuation), observer)?;
    let seconds = started.elapsed().as_secs_f64();
    let mut report = report(plan, data, options, run, None, seconds)?;
    report.continual = Some(ContinualReport {
        from: "(given in memory)".into(),
        from_round: 0,
        ewc_lambda,
        ewc_importance,
        new_before,
        new_after: accuracy(plan, data, &report.final_parameters)?,
        earlier: None,
    });
    Ok(report)
}
