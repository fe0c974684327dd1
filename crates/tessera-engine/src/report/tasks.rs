//! A deployed multi-task run's figures per task.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::SiteMetrics;

/// One task of a deployed multi-task run: its sites' figures with the
/// body and their task's head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFigures {
    /// The task's name.
    pub name: String,
    /// The column it predicts.
    pub target: String,
    /// Its classes, as the agreement gave them.
    pub classes: Vec<String>,
    /// Its sites.
    pub sites: Vec<String>,
    /// Over its sites' test rows (`null` when none was evaluated).
    pub accuracy: Option<f64>,
    /// Unweighted mean over its sites with test rows.
    pub mean_site_accuracy: Option<f64>,
    /// Its sites' test rows.
    pub n_test: u64,
}

impl TaskFigures {
    /// A task's figures from its sites' final metrics in `per_site`.
    pub fn of(
        spec: (&str, &str, &[String]),
        classes: Vec<String>,
        per_site: &BTreeMap<String, SiteMetrics>,
    ) -> TaskFigures {
        let (name, target, sites) = spec;
        let tested: Vec<(f64, u64)> = sites
            .iter()
            .filter_map(|s| per_site.get(s))
            .filter_map(|m| Some((m.accuracy?, m.n_test)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let n_test: u64 = tested.iter().map(|(_, n)| n).sum();
        let correct: f64 = tested.iter().map(|(a, n)| a * *n as f64).sum();
        TaskFigures {
            name: name.to_string(),
            target: target.to_string(),
            classes,
            sites: sites.to_vec(),
            accuracy: (n_test > 0).then(|| correct / n_test as f64),
            mean_site_accuracy: (!tested.is_empty())
                .then(|| tested.iter().map(|(a, _)| a).sum::<f64>() / tested.len() as f64),
            n_test,
        }
    }
}
