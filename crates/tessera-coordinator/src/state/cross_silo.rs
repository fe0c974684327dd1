//! `[data.cross_silo]` in the coordinator's ledger: every named site
//! answers each of the others once per run, and each site's answers are
//! charged to it when the run is created, before any round (the sites
//! charge their own ledgers too, before their answers leave). With central
//! DP the plan's rounds must fit on top, or the run is refused.

use tessera_orchestrator::LedgerRow;

use crate::CoordinatorError;
use crate::store::RunStore;

/// The ledger kind of a site's cross-silo answers.
pub(crate) const KIND: &str = "cross_silo";

/// Charges the feature to every named site of `run` (once: a resumed run
/// has its rows already) and checks the plan's central rounds on top.
pub(super) fn charge(
    plan: &tessera_engine::Plan,
    store: &dyn RunStore,
    run: &str,
) -> Result<(), CoordinatorError> {
    if plan.data.cross_silo.is_none() {
        return Ok(());
    }
    let stored = store.privacy_ledger(run)?;
    if stored.iter().any(|row| row.entry.kind == KIND) {
        return Ok(());
    }
    for row in rows(plan, &stored)? {
        store.put_ledger_row(run, &row)?;
    }
    Ok(())
}

/// Refuses, before a run is created, a plan whose feature's charges (with
/// its central rounds on top) do not fit its budgets.
pub(super) fn check(plan: &tessera_engine::Plan) -> Result<(), CoordinatorError> {
    rows(plan, &[]).map(|_| ())
}

/// The rows charging every named site on top of `stored`, checked.
fn rows(
    plan: &tessera_engine::Plan,
    stored: &[LedgerRow],
) -> Result<Vec<LedgerRow>, CoordinatorError> {
    let Some(cross) = &plan.data.cross_silo else {
        return Ok(Vec::new());
    };
    let sites = plan.data.named_sites();
    let refused = |e: String| CoordinatorError::Config(format!("[data.cross_silo]: {e}"));
    let Some((z, sigma, event)) = plan
        .cross_silo_noise(sites.len())
        .map_err(|e| refused(e.to_string()))?
    else {
        return Ok(Vec::new());
    };
    let mut ledger = plan.privacy.ledger();
    for row in stored {
        ledger
            .restore(row.entry.clone())
            .map_err(|e| refused(e.to_string()))?;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let mut rows = Vec::with_capacity(sites.len());
    for site in &sites {
        let entry = ledger
            .record_participant(
                0,
                KIND,
                &format!(
                    "the cross-silo feature '{}' ('{site}' answers {} sites)",
                    cross.feature, event.steps
                ),
                site,
                event,
            )
            .map_err(|e| refused(e.to_string()))?
            .clone();
        rows.push(LedgerRow {
            entry,
            delta: cross.delta,
            clip_norm: plan.privacy.clip_norm,
            next_clip_norm: plan.privacy.clip_norm,
            noise_std: sigma,
            updates: event.steps,
            recorded_micros: now,
        });
    }
    if plan.privacy.mode == tessera_privacy::PrivacyMode::Central {
        let z_train = plan
            .privacy
            .noise_multiplier_for(plan.federation.rounds)
            .map_err(|e| refused(e.to_string()))?;
        ledger
            .check_central_run(plan.federation.rounds, z_train)
            .map_err(|e| {
                refused(format!(
                    "with the feature's charges, {e} (raise [privacy] budget or lower the \
                     feature's epsilon)"
                ))
            })?;
    }
    tracing::info!(feature = %cross.feature, noise_multiplier = z, sigma, sites = sites.len(), "cross-silo feature charged to every site");
    Ok(rows)
}
