//! A participant's start: the coordinator's plan checked, the site's data
//! read and agreed with the other sites, the model built.

use tessera_core::ParticipantId;
use tessera_data::ScaleScope;
use tessera_engine::PlanBuild;
use tessera_engine::{Plan, Site};
use tessera_proto::convert;
use tessera_proto::pb::federation_client::FederationClient;
use tessera_proto::pb::{self, agree_reply};
use tonic::transport::Channel;

use crate::checks::{plan_differences, plan_paths_within};
use crate::client::agree;
use crate::supervisor::Failure;
use crate::{
    ParticipantConfig, ParticipantError, Ready, analytics, cause, client, continual, cross_silo,
    external, ledger, results,
};

/// The coordinator's plan, refused where it differs from the plan this
/// site expects.
pub(crate) fn coordinators_plan(
    config: &ParticipantConfig,
    welcome: &pb::Welcome,
) -> Result<Plan, Failure> {
    let plan = Plan::from_toml(&welcome.plan_toml, "the coordinator's plan")
        .map_err(|e| Failure::Fatal(ParticipantError::Local(e.to_string())))?;
    match &config.expect_plan {
        Some(expected) if *expected != plan => {
            let sections = plan_differences(expected, &plan);
            let why = format!(
                "the coordinator's plan differs from the plan this site expects in [{}]: refusing to train",
                sections.join("], [")
            );
            tracing::error!(%why, "plan refused");
            return Err(Failure::Fatal(ParticipantError::Stop(
                cause::Cause::PlanRefused(why),
            )));
        }
        Some(_) => {}
        None if plan.secure_aggregation.enabled
            || plan.privacy.is_on()
            || !plan.analytics.joins.is_empty() =>
        {
            tracing::warn!(
                "this site's privacy settings come from the coordinator's plan: give the plan this site agreed to (--expect-plan) to refuse a coordinator that weakens them"
            );
        }
        None => {}
    }
    Ok(plan)
}

/// Loads the site's data, agrees the layout with the other sites, builds the model.
pub(crate) async fn prepare(
    config: &ParticipantConfig,
    client: &mut FederationClient<Channel>,
    welcome: &pb::Welcome,
) -> Result<Ready, Failure> {
    let local_error = |e: String| Failure::Fatal(ParticipantError::Local(e));
    let plan_refused =
        |e: String| Failure::Fatal(ParticipantError::Stop(cause::Cause::PlanRefused(e)));
    let mut plan = coordinators_plan(config, welcome)?;
    let mut run_plan_hash = None;
    if let Some(multitask) = &plan.multitask {
        // This site reads its rows as its task does: with its task's
        // target, every task's target left out of the features.
        let task = multitask.task_of(&config.site).ok_or_else(|| {
            let why = format!(
                "the plan's [multitask] names this site ('{}') in none of its tasks ({}): it has \
                 no task to train",
                config.site,
                multitask
                    .tasks
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            tracing::error!(%why, "plan refused");
            plan_refused(why)
        })?;
        run_plan_hash = Some(tessera_engine::model_file::plan_hash(&plan));
        if let Some(data) = multitask.task_data(&plan.data, task) {
            tracing::info!(task = %multitask.tasks[task].name, target = %data.schema.target, "this site trains its task");
            plan.data = data;
        }
    }
    if plan.model.kind.is_external() {
        return Err(plan_refused(external::NEEDS_LEARNER.into()));
    }
    plan_paths_within(&plan.data, &config.plan_dir).map_err(plan_refused)?;
    let mut local = cross_silo::read_local(config, client, welcome, &plan).await?;
    tracing::info!(site = %config.site, train = local.summary().n_train, test = local.summary().n_test, "data read");
    let kinds = match agree(
        client,
        &config.site,
        pb::agree_request::Offer::Kinds(convert::kinds_offer_to_pb(&local.kinds_offer())),
    )
    .await?
    {
        agree_reply::Result::Kinds(k) => {
            convert::kinds_from_pb(k).map_err(|e| local_error(e.to_string()))?
        }
        _ => return Err(Failure::Retry("agreement out of order".into())),
    };
    // A coordinator's plan can make any column categorical, so that sites
    // send every distinct value of it: a declaration without levels needs
    // this site's consent (or the plan it agreed to). Columns the site's own
    // data shows as text are inferred, not declared, and need none.
    if !config.share_levels && config.expect_plan.is_none() {
        let schema = &plan.data.schema;
        let revealed: Vec<&String> = kinds
            .columns
            .iter()
            .zip(&kinds.categorical)
            .filter(|(name, categorical)| {
                **categorical
                    && schema.columns.iter().any(|spec| {
                        &spec.name == *name
                            && spec.kind == tessera_data::ColumnKind::Categorical
                            && spec.levels.is_none()
                    })
            })
            .map(|(name, _)| name)
            .collect();
        if !revealed.is_empty() {
            let names: Vec<&str> = revealed.iter().map(|s| s.as_str()).collect();
            let why = format!(
                "the coordinator's plan makes columns categorical without declaring their levels \
                 ({}): this site would send every distinct value of them. Give \
                 --share-levels to consent, or --expect-plan with the plan this site agreed to",
                tessera_proto::shown(&names.join(", "), 300)
            );
            tracing::error!(%why, "plan refused");
            return Err(plan_refused(why));
        }
    }
    let mut offer = local
        .levels_offer(&plan.data, &kinds)
        .map_err(|e| local_error(e.to_string()))?;
    // The row counts bound what this site reports for the run. Where the
    // plan keeps its counts from the coordinator (secure aggregation, sums
    // of the metrics), only their magnitude: the next power of two.
    let hide = plan.secure_aggregation.enabled || plan.privacy.site_metrics.sums_only();
    offer.train_rows = tessera_data::declared_rows(offer.train_rows, hide);
    offer.test_rows = tessera_data::declared_rows(offer.test_rows, hide);
    let agreement = match agree(
        client,
        &config.site,
        pb::agree_request::Offer::Levels(convert::levels_offer_to_pb(&offer)),
    )
    .await?
    {
        agree_reply::Result::Agreement(a) => {
            if let Some(continual) = &config.continual {
                continual
                    .check_start_model(&a.initial_model_sha256)
                    .map_err(|why| {
                        tracing::error!(%why, "plan refused");
                        plan_refused(why)
                    })?;
            }
            convert::agreement_from_pb(a).map_err(|e| local_error(e.to_string()))?
        }
        _ => return Err(Failure::Retry("agreement out of order".into())),
    };
    // Columns this site has that the federation's layout leaves out: it
    // trains without them, and says so.
    let own = local.kinds_offer().columns;
    let ignored: Vec<&String> = own
        .iter()
        .filter(|c| !agreement.columns.contains(c))
        .collect();
    if !ignored.is_empty() {
        tracing::warn!(
            count = ignored.len(),
            of = own.len(),
            columns = %tessera_proto::shown(
                &ignored.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "),
                500
            ),
            "the federation's agreed layout leaves out these columns of this site's data; it trains without them"
        );
    }
    // The model's copies here must fit before any is built.
    let available = tessera_engine::available_memory().map(|b| b as f64);
    let limit = match (config.max_memory_bytes, available) {
        (Some(cap), Some(free)) if free < cap => Some((free, "this machine's available memory")),
        (Some(cap), _) => Some((cap, "this site's --max-memory-gb")),
        (None, Some(free)) => Some((free, "this machine's available memory")),
        (None, None) => None,
    };
    plan.check_memory(
        tessera_engine::MemoryRole::Participant,
        (agreement.feature_names().len(), agreement.classes.len(), 1),
        limit,
    )
    .map_err(|e| {
        let why = e.to_string();
        tracing::error!(%why, "plan refused");
        plan_refused(why)
    })?;
    let site_analytics = analytics::of_site(&plan, &local, &agreement).map_err(local_error)?;
    let summary = local.summary().clone();
    let (mut data, _) = local
        .prepare(&plan.data, &agreement)
        .map_err(|e| local_error(e.to_string()))?;
    if plan.data.standardize.enabled && plan.data.standardize.scope == ScaleScope::Federation {
        // Step 3: count, mean and squared deviations go out; the federation's come back.
        let own = convert::statistics_to_pb(&tessera_data::FeatureStatistics::of_features(
            data.raw_train(),
        ));
        let merged = match agree(
            client,
            &config.site,
            pb::agree_request::Offer::Statistics(own),
        )
        .await?
        {
            agree_reply::Result::Statistics(s) => {
                convert::statistics_from_pb(s, agreement.feature_names().len())
                    .map_err(|e| local_error(e.to_string()))?
            }
            _ => return Err(Failure::Retry("agreement out of order".into())),
        };
        data.rescale(tessera_data::Scaler::from_statistics(
            &merged,
            &plan.data.standardize,
            &agreement.indicators(),
        ));
    }
    let learner = plan
        .learner(agreement.feature_names().len(), agreement.classes.len())
        .map_err(|e| local_error(e.to_string()))?;
    // With local DP-SGD, this site's rows are protected by its key (from the
    // operating system, never leaving it, not even to disk); noise and
    // Poisson batches derive from it: no one with the plan can recompute them.
    let id = ParticipantId::new(&config.site);
    if config.importance_out {
        continual::check_importance_out(&plan, data.train.n_rows()).map_err(plan_refused)?;
    }
    let elastic = match &config.continual {
        Some(continual) => continual
            .elastic(&plan, &agreement, learner.parameters())
            .map_err(plan_refused)?,
        None => None,
    };
    let mut site = Site::of_plan(&plan, id, learner, client::secret_key)?;
    site.set_elastic(elastic);
    let train_rows = data.train.n_rows();
    ledger::check_local_budget(&plan, &config.site, &site, train_rows)?;
    let takeaway = results::Takeaway::new(&plan, agreement.clone(), data.scaler().clone())
        .with_departments(&plan, &data)
        .map_err(|e| local_error(e.to_string()))?
        .with_continual(config.continual.clone())
        .with_run_plan_hash(run_plan_hash);
    // Under `[contribution]`: this site's data quality score, released
    // once a plan (kept in its ledger) with Laplace noise from its own
    // secret. Not under a plan with DP, whose budgets this release would
    // have to be charged to.
    let quality_of = (!plan.contribution.is_off()
        && plan.privacy.mode == tessera_privacy::PrivacyMode::Off)
        .then(|| {
            let classes = agreement.classes.len();
            let quality = tessera_data::quality::Quality::measure(
                &data,
                &summary,
                classes,
                &plan.data.standardize,
            );
            (
                quality,
                data.train.n_rows(),
                classes,
                plan.contribution.quality_epsilon,
            )
        });
    let mut ready = Ready::new(
        config,
        welcome,
        plan,
        site,
        (data.train, data.test),
        takeaway,
    )?;
    ready.analytics = site_analytics;
    if let Some((quality, rows, classes, epsilon)) = quality_of {
        let draw = || {
            let key = client::os_key()?;
            let mut rng = tessera_core::SeededRng::from_key(key);
            Ok(quality.released(rows, classes, epsilon, false, &mut rng))
        };
        let score = ready.site_ledger.quality(draw).map_err(local_error)?;
        tracing::info!(epsilon, "data quality score released for attribution");
        ready.quality = Some(score);
    }
    ready.check_run(train_rows)?;
    Ok(ready)
}
