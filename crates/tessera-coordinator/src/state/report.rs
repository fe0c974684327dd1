//! The run's report, from what the coordinator saw.

use std::collections::BTreeMap;

use tessera_data::Agreement;
use tessera_engine::report::{
    Communication, RegionReport, RunReport, Timing, TopologyReport, final_metrics,
};
use tessera_learn::Evaluation;

use super::Federation;

impl Federation {
    /// The run's report so far.
    pub fn report(&self) -> RunReport {
        let names: Vec<&str> = self
            .last_evaluations
            .iter()
            .map(|(s, _)| s.as_str())
            .collect();
        let evaluations: Vec<Evaluation> = self
            .last_evaluations
            .iter()
            .map(|(_, e)| e.clone())
            .collect();
        let strategy = self
            .training
            .rounds()
            .map_or(&tessera_engine::report::POOLED as _, |e| e.strategy());
        let elapsed = self.now().since(self.started).as_secs_f64();
        let n_rounds = self.records.len().max(1) as f64;
        let mut rounds = self.records.clone();
        // Rounds without their own traffic (asynchronous steps): the run's
        // traffic spread evenly.
        for r in rounds.iter_mut().filter(|r| r.traffic.is_empty()) {
            r.bytes_up = self.traffic.bytes_up / n_rounds as u64;
            r.bytes_down = self.traffic.bytes_down / n_rounds as u64;
        }
        let mut final_metrics = match (&self.last_view, self.aggregate_only()) {
            (Some(view), true) => tessera_engine::report::final_metrics_view(view, BTreeMap::new()),
            // Resumed: the last round evaluated before the restart, as
            // stored (under "dp", noised: evaluating again would be another
            // release).
            (None, true) => match self.records.iter().rev().find(|r| r.n_test > 0) {
                Some(last) => tessera_engine::report::FinalMetrics {
                    accuracy: Some(last.accuracy),
                    mean_site_accuracy: Some(last.mean_site_accuracy),
                    auc: last.auc,
                    loss: Some(last.loss),
                    binary: None,
                    per_site: BTreeMap::new(),
                },
                None => final_metrics(strategy, &names, &evaluations),
            },
            _ => final_metrics(strategy, &names, &evaluations),
        };
        // Under "dp" the rounds' noised figures only, as a simulation
        // reports them (the noised histogram is coarse).
        if self.plan.privacy.site_metrics == tessera_privacy::SiteMetrics::Dp {
            final_metrics.binary = None;
        }
        let tasks = self.task_figures(&final_metrics.per_site);
        let fairness = tessera_engine::report::Fairness::of(&final_metrics);
        RunReport {
            plan: self.plan.name.clone(),
            strategy: self.plan.federation.strategy.to_string(),
            seed: self.plan.seed,
            model: format!("{:?}", self.plan.model.kind).to_lowercase(),
            features: self
                .agreement
                .as_ref()
                .map(Agreement::feature_names)
                .unwrap_or_default(),
            classes: self
                .agreement
                .as_ref()
                .map(|a| a.classes.clone())
                .unwrap_or_default(),
            data: Vec::new(),
            population_changes: tessera_engine::report::population_changes(&rounds),
            per_site: None,
            rounds,
            robustness: (self.plan.robust.rule.needs_all_updates()
                || self.plan.robust.norm_bound.is_some())
            .then(|| tessera_engine::report::RobustnessReport {
                rule: self.plan.robust.rule.to_string(),
                norm_bound: self.plan.robust.norm_bound,
                attack: "none".into(),
                malicious: Vec::new(),
                // Deployment knows of no malicious site: every site is
                // counted honest (0 when nothing was evaluated).
                honest_accuracy: final_metrics.accuracy.unwrap_or(0.0),
            }),
            topology: match self.training.relay() {
                Some(relay) => Some(relay.topology(&self.records)),
                None => self.root_topology(),
            },
            final_metrics,
            baselines: None,
            personalization: None,
            new_sites: None,
            continual: None,
            tasks,
            contributions: self.contributions(),
            fairness,
            metrics_privacy: self.privacy.metrics_report(true),
            timing: Timing {
                total_seconds: elapsed,
                data_seconds: 0.0,
                rounds_seconds: elapsed,
                seconds_per_round: elapsed / n_rounds,
                baselines_seconds: 0.0,
                virtual_seconds: self.now().as_secs_f64(),
                threads: 1,
                peak_rss_bytes: None,
                virtual_seconds_to_target: None,
            },
            communication: Communication {
                bytes_up: self.traffic.bytes_up,
                bytes_down: self.traffic.bytes_down,
                bytes_up_per_site: self.traffic.bytes_up_per_site.clone(),
                update_bytes_up: self.traffic.update_bytes_up,
            },
            privacy: match self.privacy.local_report() {
                Some(local) => Some(local.deployed()),
                None => self
                    .training
                    .rounds()
                    .and_then(|e| e.privacy())
                    .map(|(dp, ledger)| {
                        tessera_engine::report::PrivacyReport::new(&self.plan.privacy, dp, ledger)
                            .deployed()
                    }),
            },
            // The model the global parameters serve (under IFCA the
            // cluster of the largest share), as the simulator reports it;
            // under multi-task the stacked body and heads.
            final_parameters: self
                .current_global()
                .and_then(|g| {
                    if self.plan.multitask.is_some() {
                        return Some(g.as_ref().clone());
                    }
                    match tessera_engine::PlanBuild::served(&self.plan, &g) {
                        Ok(served) => Some(served.into_owned()),
                        Err(e) => {
                            tracing::error!(error = %e, "the run's model cannot be served");
                            None
                        }
                    }
                })
                .unwrap_or_default(),
        }
    }

    /// The root of a hierarchy: what it received, and each aggregator of
    /// the plan's tree with the sites below it and the final model's
    /// accuracy on their test rows (the regional models stay at the
    /// aggregators: each one's report has its own).
    fn root_topology(&self) -> Option<TopologyReport> {
        let (tree, 0) = self.tree.as_ref()? else {
            return None;
        };
        let regions = (1..tree.nodes.len())
            .map(|n| {
                let sites: Vec<String> = tree
                    .sites_below(n)
                    .into_iter()
                    .map(|s| tree.sites[s].clone())
                    .collect();
                let evaluated: Vec<&Evaluation> = self
                    .last_evaluations
                    .iter()
                    .filter(|(s, _)| sites.contains(s))
                    .map(|(_, e)| e)
                    .collect();
                let region = RegionReport {
                    depth: tree.nodes[n].depth,
                    sites,
                    accuracy: None,
                    global_accuracy: Evaluation::pool(evaluated).accuracy(),
                };
                (tree.nodes[n].name.clone(), region)
            })
            .collect();
        Some(TopologyReport {
            kind: "hierarchical".into(),
            bytes_up_by_depth: vec![self.traffic.bytes_up],
            bytes_down_by_depth: vec![self.traffic.bytes_down],
            root_bytes_up: self.traffic.bytes_up,
            regions,
            ..TopologyReport::default()
        })
    }
}
