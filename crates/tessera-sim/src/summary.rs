//! The report of a finished federated run.

use std::time::Instant;

use tessera_core::Timestamp;
use tessera_data::FederatedData;
use tessera_engine::report::{
    Communication, PrivacyReport, RobustnessReport, RoundRecord, RunReport, Timing, final_metrics,
};
use tessera_engine::{Plan, PlanBuild, PlanError};
use tessera_learn::Evaluation;

use crate::baselines::run_baselines;
use crate::run::{SimError, SimOptions, privacy_book};

/// The report of a federated run: baselines when asked for, the final
/// model's metrics as the plan's strategy aggregates them, traffic, timing.
pub(crate) fn report(
    plan: &Plan,
    data: &FederatedData,
    options: &SimOptions,
    run: Federated,
    topology: Option<tessera_engine::report::TopologyReport>,
    rounds_seconds: f64,
) -> Result<RunReport, SimError> {
    let Federated {
        records,
        last_evaluations,
        final_parameters,
        bytes_up_per_site,
        end,
        privacy,
        malicious,
        personal,
        attribution,
    } = run;

    let baselines_started = Instant::now();
    let baselines = if options.baselines {
        Some(run_baselines(plan, data)?)
    } else {
        None
    };
    let baselines_seconds = baselines_started.elapsed().as_secs_f64();

    let names: Vec<&str> = data.sites.iter().map(|s| s.name.as_str()).collect();
    let personalization = personal
        .map(|p| crate::personal::report(plan, data, &last_evaluations, p, baselines.as_ref()))
        .transpose()?;
    // The final model's evaluations, aggregated as the plan's strategy
    // aggregates the sites' evaluations (from the evaluations alone).
    let mut final_metrics = final_metrics(plan.strategy()?.as_ref(), &names, &last_evaluations);
    let malicious: Vec<String> = malicious.iter().map(|&i| names[i].to_string()).collect();
    let honest_accuracy = final_metrics.accuracy_without(&malicious);
    let mut metrics_privacy = None;
    match plan.privacy.site_metrics {
        tessera_privacy::SiteMetrics::Clear => {}
        tessera_privacy::SiteMetrics::AggregateOnly => {
            // The report holds what a coordinator would: sums across sites.
            let view = tessera_engine::report::EvaluationView::aggregate_only(&last_evaluations)
                .map_err(|e| PlanError::Invalid(format!("aggregate-only evaluation: {e}")))?;
            final_metrics = tessera_engine::report::final_metrics_view(&view, Default::default());
        }
        tessera_privacy::SiteMetrics::Dp => {
            // The last round's noised release; the final model is that
            // round's, and evaluating it again would be another release.
            // Where the noised row count came out at 0 there is no figure
            // to show, and the clear evaluations are never shown.
            final_metrics = match records.last().filter(|r| r.n_test > 0) {
                Some(last) => tessera_engine::report::FinalMetrics {
                    accuracy: Some(last.accuracy),
                    mean_site_accuracy: Some(last.mean_site_accuracy),
                    auc: last.auc,
                    loss: Some(last.loss),
                    binary: None,
                    per_site: Default::default(),
                },
                None => tessera_engine::report::FinalMetrics {
                    accuracy: None,
                    mean_site_accuracy: None,
                    auc: None,
                    loss: None,
                    binary: None,
                    per_site: Default::default(),
                },
            };
            // The rounds' records hold the releases, as a coordinator's do.
            let mut book = privacy_book(plan)?;
            let released = records
                .iter()
                .filter(|r| r.metrics_epsilon.is_some())
                .count();
            book.restore_metrics(u32::try_from(released).unwrap_or(u32::MAX))
                .map_err(|e| PlanError::Invalid(e.to_string()))?;
            metrics_privacy = book.metrics_report(false);
        }
    }
    let communication = Communication {
        bytes_up: records.iter().map(|r| r.bytes_up).sum(),
        bytes_down: records.iter().map(|r| r.bytes_down).sum(),
        bytes_up_per_site: names
            .iter()
            .map(|n| n.to_string())
            .zip(bytes_up_per_site)
            .collect(),
        update_bytes_up: records
            .iter()
            .flat_map(|r| r.traffic.values())
            .map(|t| t.update)
            .sum(),
    };
    let virtual_seconds_to_target = options.target_accuracy.and_then(|target| {
        records
            .iter()
            .find(|r| r.accuracy >= target)
            .map(|r| r.virtual_time)
    });
    // Only where each site's evaluation is the report's to show.
    let fairness = (plan.privacy.site_metrics == tessera_privacy::SiteMetrics::Clear)
        .then(|| tessera_engine::report::Fairness::of(&final_metrics))
        .flatten();
    Ok(RunReport {
        plan: plan.name.clone(),
        strategy: plan.federation.strategy.to_string(),
        seed: plan.seed,
        model: format!("{:?}", plan.model.kind).to_lowercase(),
        features: data.feature_names.clone(),
        classes: data.task.classes.clone(),
        data: data.summary.clone(),
        timing: Timing {
            total_seconds: 0.0,
            data_seconds: 0.0,
            rounds_seconds,
            seconds_per_round: rounds_seconds / records.len().max(1) as f64,
            baselines_seconds,
            virtual_seconds: end.as_secs_f64(),
            threads: rayon::current_num_threads(),
            peak_rss_bytes: None,
            virtual_seconds_to_target,
        },
        population_changes: tessera_engine::report::population_changes(&records),
        per_site: None,
        rounds: records,
        final_metrics,
        baselines,
        communication,
        privacy,
        metrics_privacy,
        robustness: (options.attack.is_some()
            || plan.robust.rule.needs_all_updates()
            || plan.robust.norm_bound.is_some())
        .then(|| RobustnessReport {
            rule: plan.robust.rule.to_string(),
            norm_bound: plan.robust.norm_bound,
            attack: options
                .attack
                .map_or_else(|| "none".to_string(), |a| a.kind.to_string()),
            honest_accuracy,
            malicious,
        }),
        topology,
        personalization,
        new_sites: None,
        continual: None,
        tasks: Vec::new(),
        contributions: attribution.map(|a| a.report(&names, rounds_seconds)),
        fairness,
        final_parameters,
    })
}

/// What a federated run (sync or async) produced.
pub(crate) struct Federated {
    pub records: Vec<RoundRecord>,
    pub last_evaluations: Vec<Evaluation>,
    pub final_parameters: tessera_core::ParameterSet,
    pub bytes_up_per_site: Vec<u64>,
    pub end: Timestamp,
    pub privacy: Option<PrivacyReport>,
    /// Indices of the sites that attacked.
    pub malicious: Vec<usize>,
    /// The personalized models' figures, when the plan personalizes.
    pub personal: Option<crate::personal::Personal>,
    /// Each round's attribution (`[contribution]`).
    pub attribution: Option<crate::attribution::Attributor>,
}
