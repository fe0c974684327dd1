//! Personalized models at the end of a simulated run: each site's own model
//! (its personal model under a personalized strategy, fine-tuned where the
//! plan says) evaluated on its test rows, reported against the global model
//! and the site's local-only model.

use std::collections::BTreeMap;
use std::sync::Mutex;

use rayon::prelude::*;
use tessera_core::ParameterSet;
use tessera_data::FederatedData;
use tessera_engine::report::{Baselines, PersonalizationReport};
use tessera_engine::{Plan, Site};
use tessera_learn::Evaluation;

use crate::SimError;
use crate::baselines::local_baseline;
use crate::run::{initial_model, lock};

/// Each site's personalized model from the final `global` one, evaluated on
/// its test rows (in site order); `None` when the plan does not personalize.
pub(crate) fn evaluations(
    plan: &Plan,
    data: &FederatedData,
    sites: &[Mutex<Site>],
    global: &ParameterSet,
    parallel: bool,
) -> Result<Option<Vec<Evaluation>>, SimError> {
    if !plan.personalizes() {
        return Ok(None);
    }
    let one = |(site, rows): (&Mutex<Site>, &tessera_data::SiteData)| {
        let mut site = lock(site);
        let own = site.personalized(plan, global, &rows.train)?;
        site.evaluate(&own, &rows.test)
    };
    let all: Vec<_> = if parallel {
        sites.par_iter().zip(&data.sites).map(one).collect()
    } else {
        sites.iter().zip(&data.sites).map(one).collect()
    };
    Ok(Some(all.into_iter().collect::<Result<_, _>>()?))
}

/// The report's section: `global` and `personal` evaluations in site order;
/// the local-only models from `baselines` when the run trained them, else
/// trained here as the baselines train them.
pub(crate) fn report(
    plan: &Plan,
    data: &FederatedData,
    global: &[Evaluation],
    personal: &[Evaluation],
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
    Ok(PersonalizationReport::new(
        plan,
        &names,
        global,
        personal,
        &local_only,
    ))
}
