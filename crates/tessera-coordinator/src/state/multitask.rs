//! A deployed multi-task run (`[multitask]`): each site trains its own
//! task, the data agreement gives every task its own classes, and each site
//! hears its own task's.

use tessera_data::{Agreement, ColumnKinds, LevelsOffer};
use tessera_engine::Plan;

use super::Federation;
use crate::CoordinatorError;

/// Refuses a multi-task plan this coordinator cannot deploy: sums-only
/// site metrics (one sum over every task), or a site named in several
/// tasks (a deployed site trains one task: its data is read once, with its
/// task's target).
pub(super) fn check_plan(plan: &Plan) -> Result<(), CoordinatorError> {
    let Some(multitask) = &plan.multitask else {
        return Ok(());
    };
    if plan.privacy.site_metrics.sums_only() {
        return Err(CoordinatorError::Config(
            "multitask reports each task from its sites' own evaluations, and site_metrics = \
             \"aggregate-only\" would give one sum over every task's sites: use \
             site_metrics = \"clear\""
                .into(),
        ));
    }
    if let Some((site, other, task)) = multitask.site_in_two_tasks() {
        return Err(CoordinatorError::Config(format!(
            "multitask puts site '{site}' in tasks '{}' and '{}': a deployed site trains \
             one task (its rows are read once, with its task's target); name it in one \
             task, or run the plan in simulation",
            other.name, task.name
        )));
    }
    if plan.analytics.serve_seconds > 0 || !plan.analytics.joins.is_empty() {
        return Err(CoordinatorError::Config(
            "multitask: the sites read their rows with their own tasks' targets, and \
             [analytics] (serve_seconds, joins) would treat them as one table; run analytics \
             without [multitask]"
                .into(),
        ));
    }
    let named = plan.data.named_sites();
    if let Some(site) = named.iter().find(|s| multitask.task_of(s).is_none()) {
        return Err(CoordinatorError::Config(format!(
            "multitask: site '{site}' of [[data.sites]] is in none of the tasks; name it in \
             one task's sites"
        )));
    }
    for task in &multitask.tasks {
        if let Some(site) = task
            .sites
            .iter()
            .find(|s| !named.is_empty() && !named.contains(s))
        {
            return Err(CoordinatorError::Config(format!(
                "multitask task '{}' names site '{site}', which [[data.sites]] does not list",
                task.name
            )));
        }
    }
    Ok(())
}

/// The sites a flat run expects: the plan's named sites, and under
/// `[multitask]` without named sites every task's (a site in no task is
/// refused at the join, as any site the plan does not name).
pub(super) fn expected_sites(plan: &Plan) -> Vec<String> {
    let named = plan.data.named_sites();
    match &plan.multitask {
        Some(multitask) if named.is_empty() => {
            let mut sites: Vec<String> = multitask
                .tasks
                .iter()
                .flat_map(|t| t.sites.clone())
                .collect();
            sites.sort();
            sites.dedup();
            sites
        }
        _ => named,
    }
}

impl Federation {
    /// The vocabulary of a multi-task run from the sites' offers: the
    /// features from every offer, each task's classes from its own sites'
    /// (the agreement holds the first task's; `task_classes` every task's).
    /// An offer from a site in no task is refused by name. The error says
    /// whether it ends the run (`true`: a task's classes are not of its
    /// declared kind, which no offer can change).
    pub(super) fn agree_tasks(
        &mut self,
        kinds: &ColumnKinds,
        offers: &[LevelsOffer],
    ) -> Result<Agreement, (String, bool)> {
        let Some(multitask) = &self.plan.multitask else {
            return Err(("the plan has no [multitask]".into(), false));
        };
        let configs: Vec<tessera_data::DataConfig> = (0..multitask.tasks.len())
            .filter_map(|t| multitask.task_data(&self.plan.data, t))
            .collect();
        let tasks = offers
            .iter()
            .map(|o| {
                multitask.task_of(&o.site).ok_or_else(|| {
                    let why = format!(
                        "multitask: site '{}' is in none of the plan's tasks",
                        o.site
                    );
                    (why, false)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (agreement, task_classes) =
            tessera_data::agree_multitask(&configs, kinds, offers, &tasks)
                .map_err(|e| (e.to_string(), false))?;
        for (task, classes) in multitask.tasks.iter().zip(&task_classes) {
            task.check_classes(classes).map_err(|why| (why, true))?;
        }
        self.task_classes = task_classes;
        Ok(agreement)
    }

    /// The agreement as `site` hears it: under `[multitask]` with its own
    /// task's classes.
    pub(super) fn agreement_for(&self, site: &str, agreement: Agreement) -> Agreement {
        let task = self.plan.multitask.as_ref().and_then(|m| m.task_of(site));
        match task.and_then(|t| self.task_classes.get(t)) {
            Some(classes) => Agreement {
                classes: classes.clone(),
                ..agreement
            },
            None => agreement,
        }
    }

    /// Each task's class count (empty outside `[multitask]`).
    pub(super) fn task_class_counts(&self) -> Vec<usize> {
        self.task_classes.iter().map(Vec::len).collect()
    }

    /// The stored agreement's encoding, with every task's classes.
    pub(super) fn agreement_to_store(&self, agreement: &Agreement) -> tessera_proto::pb::Agreement {
        let mut encoded = tessera_proto::convert::agreement_to_pb(agreement);
        encoded.task_classes = self
            .task_classes
            .iter()
            .map(|classes| tessera_proto::pb::TaskClasses {
                classes: classes.clone(),
            })
            .collect();
        encoded
    }
}

impl Federation {
    /// Each task's figures from the sites' final metrics (empty outside
    /// `[multitask]`).
    pub(super) fn task_figures(
        &self,
        per_site: &std::collections::BTreeMap<String, tessera_engine::report::SiteMetrics>,
    ) -> Vec<tessera_engine::report::TaskFigures> {
        let Some(multitask) = &self.plan.multitask else {
            return Vec::new();
        };
        multitask
            .tasks
            .iter()
            .enumerate()
            .map(|(t, task)| {
                tessera_engine::report::TaskFigures::of(
                    (&task.name, &task.target, &task.sites),
                    self.task_classes.get(t).cloned().unwrap_or_default(),
                    per_site,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn example() -> Plan {
        Plan::from_toml(
            include_str!("../../../../examples/heart-multitask.toml"),
            "heart-multitask",
        )
        .unwrap()
    }

    /// The bundled plan deploys; a site in two tasks, a named site in no
    /// task, and sums-only site metrics are refused, each by name.
    #[test]
    fn plans_a_coordinator_cannot_deploy_are_refused_by_name() {
        assert!(check_plan(&example()).is_ok());
        let mut two = example();
        let tasks = &mut two.multitask.as_mut().unwrap().tasks;
        tasks[1].sites.push("va".into());
        let e = check_plan(&two).unwrap_err().to_string();
        assert!(
            e.contains("site 'va' in tasks 'disease' and 'angina'"),
            "{e}"
        );
        let mut none = example();
        none.multitask.as_mut().unwrap().tasks[0].sites = vec!["cleveland".into()];
        let e = check_plan(&none).unwrap_err().to_string();
        assert!(e.contains("site 'va' of [[data.sites]] is in none"), "{e}");
        let mut summed = example();
        summed.privacy.site_metrics = tessera_privacy::SiteMetrics::AggregateOnly;
        let e = check_plan(&summed).unwrap_err().to_string();
        assert!(e.contains("use site_metrics = \"clear\""), "{e}");
        let mut unlisted = example();
        unlisted.multitask.as_mut().unwrap().tasks[1]
            .sites
            .push("mayo".into());
        let e = check_plan(&unlisted).unwrap_err().to_string();
        assert!(
            e.contains("names site 'mayo', which [[data.sites]] does not list"),
            "{e}"
        );
        let mut queried = example();
        queried.analytics.serve_seconds = 60;
        let e = check_plan(&queried).unwrap_err().to_string();
        assert!(e.contains("[analytics] (serve_seconds, joins)"), "{e}");
    }

    /// Without named sites, a multi-task run expects every task's sites
    /// (so a site in no task is refused at the join).
    #[test]
    fn a_multitask_run_expects_its_tasks_sites() {
        let mut plan = example();
        assert_eq!(expected_sites(&plan), plan.data.named_sites());
        plan.data.sites.clear();
        plan.data.site_column = Some("center".into());
        assert_eq!(
            expected_sites(&plan),
            ["cleveland", "hungarian", "switzerland", "va"]
        );
    }
}
