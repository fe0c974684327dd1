//! Personalized models at the end of a simulated run: each site's own model
//! (its personal model under a personalized strategy, fine-tuned where the
//! plan says) evaluated on its test rows, reported against the global model
//! and the site's local-only model.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Mutex;

use rayon::prelude::*;
use tessera_core::ParameterSet;
use tessera_core::{SeededRng, tag};
use tessera_data::{FederatedData, SiteData};
use tessera_engine::report::{
    Baselines, DepartmentAccuracy, NewSitesReport, PersonalizationReport,
};
use tessera_engine::{Departments, EngineError, Levels, Plan, Site, streams};
use tessera_learn::{Evaluation, LocalPlan};

use crate::SimError;
use crate::baselines::local_baseline;
use crate::run::{initial_model, lock, plain_sites};

/// The plan's initial model, which departments' local-only models train
/// from (an empty set where the plan names no departments: nothing uses it).
pub(crate) fn initial_parameters(
    plan: &Plan,
    data: &FederatedData,
) -> Result<ParameterSet, SimError> {
    if plan.personalization.department.is_none() {
        return Ok(ParameterSet::new());
    }
    Ok(initial_model(plan, data)?.parameters().clone())
}

/// The personalized models' figures at the end of a run, in site order.
pub(crate) struct Personal {
    /// Each site's personalized model on its test rows.
    pub evaluations: Vec<Evaluation>,
    /// Hierarchical: each site's region's model on its test rows (none for
    /// a site directly under the root).
    pub regional: Option<Vec<Option<Evaluation>>>,
    /// `[personalization] department`: each site's departments.
    pub departments: Option<Vec<BTreeMap<String, DepartmentAccuracy>>>,
    /// IFCA: the cluster each site took (none without training rows), and
    /// how many clusters.
    pub clusters: Option<(Vec<Option<usize>>, usize)>,
}

/// One site's personalized model from `start` (the final global model, or
/// its region's), evaluated on its test rows, with its departments where
/// the plan names them (`regional`: the region's model, hierarchical).
pub(crate) fn personalized_site(
    plan: &Plan,
    data: &FederatedData,
    (site, rows): (&mut Site, &SiteData),
    (global, regional, initial): (&ParameterSet, Option<&ParameterSet>, &ParameterSet),
) -> Result<(Evaluation, Option<BTreeMap<String, DepartmentAccuracy>>), SimError> {
    let start = regional.unwrap_or(global);
    let own = site.personalized(plan, start, &rows.train)?;
    let evaluation = site.evaluate(&own, &rows.test)?;
    let departments = match Departments::of(plan, &data.agreement, rows)? {
        Some(departments) => Some(departments.accuracies(
            site,
            plan,
            (&rows.train, &rows.test),
            Levels {
                initial,
                global,
                regional,
                site: &own,
            },
        )?),
        None => None,
    };
    Ok((evaluation, departments))
}

/// Each site's personalized model from the final `global` one, evaluated on
/// its test rows (in site order); `None` when the plan does not personalize.
pub(crate) fn evaluations(
    plan: &Plan,
    data: &FederatedData,
    sites: &[Mutex<Site>],
    global: &ParameterSet,
    parallel: bool,
) -> Result<Option<Personal>, SimError> {
    if !plan.personalizes() {
        return Ok(None);
    }
    let initial = initial_parameters(plan, data)?;
    let one = |(site, rows): (&Mutex<Site>, &SiteData)| {
        personalized_site(
            plan,
            data,
            (&mut lock(site), rows),
            (global, None, &initial),
        )
    };
    let all: Vec<_> = if parallel {
        sites.par_iter().zip(&data.sites).map(one).collect()
    } else {
        sites.iter().zip(&data.sites).map(one).collect()
    };
    let all = all.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut personal = Personal::of(plan, all, None);
    if let Some(k) = plan.clusters() {
        let chosen = sites.iter().map(|s| lock(s).cluster()).collect();
        personal.clusters = Some((chosen, k));
    }
    Ok(Some(personal))
}

/// Each site's personalized model from its own final model (`models`, in
/// site order: gossip's own model), evaluated on its test
/// rows; `None` when the plan does not personalize.
pub(crate) fn from_own_models(
    plan: &Plan,
    data: &FederatedData,
    sites: &[Mutex<Site>],
    models: &[std::sync::Arc<ParameterSet>],
) -> Result<Option<Personal>, SimError> {
    if !plan.personalizes() {
        return Ok(None);
    }
    let initial = initial_parameters(plan, data)?;
    let all: Vec<_> = sites
        .par_iter()
        .zip(&data.sites)
        .zip(models)
        .map(|((site, rows), own)| {
            personalized_site(plan, data, (&mut lock(site), rows), (own, None, &initial))
        })
        .collect();
    let all = all.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Personal::of(plan, all, None)))
}

impl Personal {
    /// From each site's [`personalized_site`] and, hierarchical, its
    /// region's model's evaluation.
    pub(crate) fn of(
        plan: &Plan,
        sites: Vec<(Evaluation, Option<BTreeMap<String, DepartmentAccuracy>>)>,
        regional: Option<Vec<Option<Evaluation>>>,
    ) -> Personal {
        let (evaluations, departments): (Vec<_>, Vec<_>) = sites.into_iter().unzip();
        Personal {
            clusters: None,
            evaluations,
            regional,
            departments: plan.personalization.department.is_some().then(|| {
                departments
                    .into_iter()
                    .map(Option::unwrap_or_default)
                    .collect()
            }),
        }
    }
}

/// The report's section: `global` evaluations and the personalized
/// figures in site order; the local-only models from `baselines` when the
/// run trained them, else trained here as the baselines train them.
pub(crate) fn report(
    plan: &Plan,
    data: &FederatedData,
    global: &[Evaluation],
    personal: Personal,
    baselines: Option<&Baselines>,
) -> Result<PersonalizationReport, SimError> {
    let trained;
    let local = match baselines {
        Some(b) => &b.local,
        None => {
            let initial = initial_model(plan, data)?;
            trained = local_baseline(plan, data, initial.as_ref()).0;
            &trained
        }
    };
    let local_only: BTreeMap<String, f64> = local
        .per_site
        .iter()
        .filter_map(|(name, m)| Some((name.clone(), m.accuracy?)))
        .collect();
    let names: Vec<&str> = data.sites.iter().map(|s| s.name.as_str()).collect();
    let mut report =
        PersonalizationReport::new(plan, &names, global, &personal.evaluations, &local_only);
    if let Some(regional) = &personal.regional {
        report = report.with_regional(&names, regional);
    }
    if let (Some(column), Some(departments)) =
        (&plan.personalization.department, personal.departments)
    {
        report = report.with_departments(column, &names, departments);
    }
    if let Some((chosen, k)) = &personal.clusters {
        report = report.with_clusters(&names, chosen, *k);
    }
    Ok(report)
}

/// `data` without the plan's new sites, and the new sites alone (`None`
/// when the plan names none). A name the data lacks, or no site left to
/// train, is refused, and so is a department column (`[personalization]
/// department`) that cannot name departments.
pub(crate) fn split_new_sites<'a>(
    plan: &Plan,
    data: &'a FederatedData,
) -> Result<(Cow<'a, FederatedData>, Option<FederatedData>), SimError> {
    // A department column that cannot name departments is refused before
    // the run, not after it.
    if plan.personalization.department.is_some() {
        for site in &data.sites {
            Departments::of(plan, &data.agreement, site)?;
        }
    }
    let new = &plan.personalization.new_sites;
    if new.is_empty() {
        return Ok((Cow::Borrowed(data), None));
    }
    let refused = |why: String| SimError::Engine(EngineError::State(why));
    if let Some(missing) = new
        .iter()
        .find(|n| !data.sites.iter().any(|s| &s.name == *n))
    {
        let names: Vec<&str> = data.sites.iter().map(|s| s.name.as_str()).collect();
        return Err(refused(format!(
            "personalization.new_sites names '{missing}', which the data does not have (its \
             sites: {})",
            names.join(", ")
        )));
    }
    if new.len() >= data.sites.len() {
        return Err(refused(
            "personalization.new_sites names every site: none is left to train".into(),
        ));
    }
    let part = |is_new: bool| FederatedData {
        feature_names: data.feature_names.clone(),
        task: data.task.clone(),
        sites: data
            .sites
            .iter()
            .filter(|s| new.contains(&s.name) == is_new)
            .cloned()
            .collect(),
        summary: data
            .summary
            .iter()
            .filter(|s| new.contains(&s.site) == is_new)
            .cloned()
            .collect(),
        agreement: data.agreement.clone(),
    };
    let (mut trained, mut new_ones) = (part(false), part(true));
    if plan.data.standardize.scope == tessera_data::ScaleScope::Federation {
        // The federation's statistics are the training sites' alone, and
        // the new sites take them, as a hospital joining later would.
        let stats = trained.federation_statistics();
        let scaler = tessera_data::Scaler::from_statistics(
            &stats,
            &plan.data.standardize,
            &trained.indicators(),
        );
        for site in trained.sites.iter_mut().chain(new_ones.sites.iter_mut()) {
            site.rescale(scaler.clone());
        }
    }
    Ok((Cow::Owned(trained), Some(new_ones)))
}

/// The new sites' section: each new site (a fresh site, which took no part)
/// adapts `global` as `[personalization]` says and evaluates it, the global
/// model, and a model trained alone on the same rows with the plan's
/// baseline training, on its test rows.
pub(crate) fn new_sites(
    plan: &Plan,
    new: &FederatedData,
    global: &ParameterSet,
) -> Result<NewSitesReport, SimError> {
    let initial = initial_model(plan, new)?;
    let names: Vec<&str> = new.sites.iter().map(|s| s.name.as_str()).collect();
    let (sites, _) = plain_sites(plan, initial.as_ref(), &names);
    let training = plan.baseline_training();
    let mut global_evaluations = Vec::new();
    let mut adapted = Vec::new();
    let mut local_only = BTreeMap::new();
    for (site, rows) in sites.iter().zip(&new.sites) {
        let mut site = lock(site);
        global_evaluations.push(site.evaluate(global, &rows.test)?);
        let own = site.personalized(plan, global, &rows.train)?;
        adapted.push(site.evaluate(&own, &rows.test)?);
        // Alone, on the rows the adaptation used; a model that fails to
        // train is left out, as the local-only baselines leave theirs.
        let few = site.finetune_rows(plan, &rows.train);
        let mut alone = initial.clone_box();
        let mut rng = SeededRng::derived(plan.seed, &[streams::BASELINE, tag(&rows.name)]);
        if alone
            .fit(&few, &LocalPlan::plain(&training), &mut rng)
            .is_ok()
        {
            local_only.insert(rows.name.clone(), alone.evaluate(&rows.test)?.accuracy());
        }
    }
    Ok(NewSitesReport::new(
        plan,
        &names,
        &global_evaluations,
        &adapted,
        &local_only,
    ))
}
