//! The simulated sites together: evaluating a model at every site, and
//! reaching one site past a poisoned lock.

use std::sync::{Mutex, MutexGuard};

use rayon::prelude::*;
use tessera_data::FederatedData;
use tessera_engine::Site;
use tessera_learn::Evaluation;

use crate::SimError;

/// Every site evaluates `model` on its test rows (in parallel); the first
/// failure in site order, whatever the threads.
pub(crate) fn evaluate_all(
    sites: &[Mutex<Site>],
    data: &FederatedData,
    model: &tessera_core::ParameterSet,
) -> Result<Vec<Evaluation>, SimError> {
    evaluate_sites(sites, data, model, true)
}

/// [`evaluate_all`], on this thread one site after another unless `parallel`.
pub(crate) fn evaluate_sites(
    sites: &[Mutex<Site>],
    data: &FederatedData,
    model: &tessera_core::ParameterSet,
    parallel: bool,
) -> Result<Vec<Evaluation>, SimError> {
    let one = |(site, rows): (&Mutex<Site>, &tessera_data::SiteData)| {
        lock(site).evaluate(model, &rows.test)
    };
    let evaluations: Vec<_> = if parallel {
        sites.par_iter().zip(&data.sites).map(one).collect()
    } else {
        sites.iter().zip(&data.sites).map(one).collect()
    };
    Ok(evaluations.into_iter().collect::<Result<_, _>>()?)
}

/// The site behind `site`, even if a thread panicked holding it.
pub(crate) fn lock(site: &Mutex<Site>) -> MutexGuard<'_, Site> {
    site.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
