//! A site's answers to analytics queries (`TASK_KIND_ANALYZE`, after the
//! last training round while the plan's `[analytics] serve_seconds` keeps
//! the site connected).
//!
//! The site checks each query against its own copy of the plan (the one
//! it agreed to with `--expect-plan`): it parses, its PER SITE is refused
//! where `[analytics] per_site = false` (where allowed, the site also sends
//! its own answer with its own full noise, `SubmitSiteAnswer`, charged to
//! it besides the federation's sum), and it compiles against the agreed
//! schema and the plan's bounds. It then computes `sigma` itself from the
//! plan's `[analytics]` epsilon and delta and the plan's accountant (no
//! number from the coordinator sets the noise), contributes over its own
//! rows, adds its noise share `N(0, sigma² / (t - 1))` for the round's
//! threshold `t` from a key of its own operating system's randomness, and
//! masks the result in the query's secure round (`client::secure_answer`).
//! Each answer is checked against, and written to, this site's own ledger
//! (`crate::ledger`: its training and its answers under the plan, across
//! runs and restarts) before it is masked, so that a coordinator whose
//! ledger lies, or is lost, or starts a new run of the plan cannot ask
//! past the plan's `[privacy]` budgets, and a release number is answered
//! once.
//! A refused query is withdrawn from with the reason, which the coordinator
//! records and tells the analyst; this site's log says it too.

use std::sync::Arc;

use tessera_analytics::deployed::{Prepared, prepare, site_own_vector, site_vector};
use tessera_analytics::{Schema, SiteTable};
use tessera_engine::Plan;
use tessera_proto::pb;
use tessera_proto::pb::federation_client::FederationClient;
use tonic::transport::Channel;

use crate::client::{self, Failure};
use crate::{ParticipantError, Ready};

/// What a site answers queries from: the agreed schema and its own rows,
/// and the answers it has given this run.
pub(crate) struct SiteAnalytics {
    schema: Arc<Schema>,
    records: Arc<SiteTable>,
}

/// The site's records and the agreed schema, when its plan keeps sites
/// for queries (`[analytics] serve_seconds > 0`).
pub(crate) fn of_site(
    plan: &Plan,
    local: &tessera_data::LocalSite,
    agreement: &tessera_data::Agreement,
) -> Result<Option<SiteAnalytics>, String> {
    if plan.analytics.serve_seconds == 0 {
        return Ok(None);
    }
    let schema = Schema::of_agreement(&plan.data, agreement, &plan.analytics.bounds)
        .map_err(|e| format!("the plan's [analytics]: {e}"))?;
    let records = local
        .records(agreement)
        .map_err(|e| format!("this site's rows for analytics queries: {e}"))?;
    Ok(Some(SiteAnalytics {
        schema: Arc::new(schema),
        records: Arc::new(records),
    }))
}

/// Whether this site answers `text` under its `plan`: the query prepared
/// as the plan says (its noise from the plan alone), or why not.
pub(crate) fn check_query(plan: &Plan, schema: &Schema, text: &str) -> Result<Prepared, String> {
    // PER SITE is refused here where the plan does not allow it.
    prepare(text, schema, &plan.analytics, plan.privacy.accountant).map_err(|e| e.to_string())
}

/// Answers the query of `header`, or refuses it (withdrawing from its
/// round with the reason).
pub(crate) async fn answer(
    client: &mut FederationClient<Channel>,
    site: &str,
    state: &mut Ready,
    header: &pb::TaskHeader,
) -> Result<(), Failure> {
    let round = header.round;
    let release = round & !tessera_secagg::ANALYTICS_ROUND;
    let checked = match (&header.analytics, &state.analytics) {
        _ if round & tessera_secagg::ANALYTICS_ROUND == 0
            || round & tessera_secagg::EVALUATION_ROUND != 0 =>
        {
            Err(format!("round {round} is not an analytics round"))
        }
        (None, _) => Err("the task carries no query".to_string()),
        (Some(task), _) if task.release != release => Err(format!(
            "the task's release {} is not its round's {release}",
            task.release
        )),
        (Some(_), None) => Err(
            "this site's plan keeps no sites for queries ([analytics] serve_seconds = 0)".into(),
        ),
        (Some(_), Some(_)) if !state.identity.signs() => Err(
            "this site answers queries only under mutual TLS: without certificates the \
             coordinator could invent the round's other participants and unmask this site's \
             vector with a fraction of its noise"
                .into(),
        ),
        (Some(task), Some(mine)) => check_query(&state.plan, &mine.schema, &task.query)
            .and_then(|p| match p.event {
                Some(_) if state.plan.privacy.budgets().run.is_none() => Err(
                    "the plan sets no [privacy] budget: nothing would bound how often a query \
                     is repeated to average its noise away"
                        .into(),
                ),
                event => state
                    .site_ledger
                    .check_query(release, &task.query, event, p.query.per_site)
                    .map(|_| p),
            })
            .map(|p| (p, Arc::clone(&mine.schema), Arc::clone(&mine.records))),
    };
    let (prepared, schema, records) = match checked {
        Ok(ok) => ok,
        Err(why) => {
            tracing::error!(release, %why, "this site refuses the analytics query");
            let reason = format!("this site refuses query {release}: {why}");
            let reason = tessera_proto::shown(&reason, tessera_proto::MAX_WITHDRAW_REASON);
            if let Err(status) = client::withdraw(client, site, round, &reason, false).await {
                tracing::warn!(%status, "could not tell the coordinator");
            }
            return Ok(());
        }
    };
    let query = header
        .analytics
        .as_ref()
        .map(|t| tessera_proto::shown(&t.query, 300).into_owned())
        .unwrap_or_default();
    tracing::info!(
        release,
        %query,
        protected = prepared.release.protected,
        sigma = prepared.release.sigma,
        "answering an analytics query"
    );
    let key = client::secret_key()?;
    // Charged here, on disk, before anything is masked: an input sent may
    // be summed.
    let text = header.analytics.as_ref().map_or("", |t| t.query.as_str());
    if let Err(e) =
        state
            .site_ledger
            .record_query(release, text, prepared.event, prepared.query.per_site)
    {
        return Err(Failure::Fatal(ParticipantError::Local(format!(
            "this site's privacy ledger: {e}"
        ))));
    }
    if prepared.query.per_site {
        // Its own answer, with its own full noise from a second key: a
        // release of its rows alone, charged above.
        let own = site_own_vector(&prepared, &schema, &records, client::secret_key()?);
        let answer = pb::SiteAnswer {
            site: site.to_string(),
            release,
            values: own,
        };
        match client.submit_site_answer(answer).await {
            Ok(_) => tracing::info!(release, "this site's own answer is sent"),
            Err(status) => tracing::warn!(release, %status, "this site's own answer was refused"),
        }
    }
    let dimension = prepared.layout.len() * tessera_analytics::secure::LIMBS;
    let make: client::DeferredInput = Box::new(move |threshold| {
        tessera_analytics::secure::limbs(&site_vector(&prepared, &schema, &records, threshold, key))
    });
    let plan = Arc::clone(&state.plan);
    let identity = Arc::clone(&state.identity);
    let counted = client::secure_answer(
        client,
        site,
        &plan,
        &identity,
        &mut state.key_ring,
        round,
        dimension,
        make,
    )
    .await?;
    if counted {
        tracing::info!(release, "this site's answer is in the secure sum");
    } else {
        tracing::warn!(
            release,
            "the query's secure round ended without this site's answer"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lying coordinator sends a PER SITE query (each site's own answer)
    /// that the site's plan does not allow: the site refuses it, naming the
    /// key, before it computes anything.
    #[test]
    fn a_site_refuses_a_query_its_plan_does_not_allow() {
        let plan = Plan::from_toml(
            "name = \"q\"\n[data]\nsite_column = \"site\"\n[data.synthetic]\nsites = 3\nrows = \
             50\nfeatures = 2\nclasses = 2\nalpha = 0.5\nbeta = 0.5\nseed = 7\n[data.schema]\ntarget = \"y\"\n[model]\nkind = \
             \"logistic\"\n[privacy]\nbudget = 5.0\n[analytics]\nserve_seconds = 60\n[analytics.bounds]\nx0 = [-8.0, \
             8.0]\n",
            "test",
        )
        .unwrap();
        let records = tessera_data::load_records(
            &plan.data,
            std::path::Path::new("."),
            &tessera_data::Filesystem,
        )
        .unwrap();
        let schema = Schema::from_records(&records, &plan.analytics.bounds).unwrap();
        let e = check_query(&plan, &schema, "SELECT count(*) FROM data PER SITE").unwrap_err();
        assert!(e.contains("per_site"), "{e}");
        let e = check_query(&plan, &schema, "SELECT mean(x1) FROM data").unwrap_err();
        assert!(e.contains("x1"), "a column without bounds is refused: {e}");
        let p = check_query(&plan, &schema, "SELECT count(*), mean(x0) FROM data").unwrap();
        assert!(
            p.release.protected,
            "dp is on unless the plan says otherwise"
        );
        // The noise comes from the plan alone: the same query under the
        // same plan gets the same sigma, whatever a coordinator says.
        let z = tessera_privacy::calibrate_noise_multiplier_with(
            plan.privacy.accountant,
            1.0,
            1,
            plan.analytics.epsilon,
            plan.analytics.delta,
        )
        .unwrap();
        assert_eq!(p.release.sigma, z * p.layout.sensitivity());
    }
}
