//! The final metrics' one line for a terminal, and accuracy over a part of
//! the sites.

use super::FinalMetrics;

impl FinalMetrics {
    /// "accuracy A (N test rows), mean of sites M, auc U", or that nothing
    /// was evaluated; where positives are rare (under 20% of the rows), led by
    /// the AUC, PR-AUC, balanced accuracy, sensitivity and specificity.
    pub fn summary(&self) -> String {
        let lead = match (&self.binary, self.auc) {
            (Some(b), Some(auc)) if b.positives_rare() => format!(
                "AUC {auc:.4}, PR-AUC {:.4}, balanced accuracy {:.4} (sensitivity {:.4}, \
                 specificity {:.4} at {}; positives {:.1}%); ",
                b.pr_auc,
                b.balanced_accuracy,
                b.sensitivity,
                b.specificity,
                b.threshold,
                100.0 * b.positive_rate
            ),
            _ => String::new(),
        };
        let accuracy = match (self.accuracy, self.mean_site_accuracy) {
            (Some(a), Some(m)) => {
                let rows: u64 = self.per_site.values().map(|s| s.n_test).sum();
                let rows = if rows > 0 {
                    format!("{rows} test rows")
                } else {
                    "all test rows".to_string()
                };
                let auc = match (lead.is_empty(), self.auc) {
                    (true, Some(auc)) => format!(", auc {auc:.4}"),
                    _ => String::new(),
                };
                format!("accuracy {a:.4} ({rows}), mean of sites {m:.4}{auc}")
            }
            _ => "not evaluated (no test rows)".to_string(),
        };
        format!("{lead}{accuracy}")
    }

    /// Accuracy over the test rows of every site not in `excluded` (0 when
    /// they have none).
    pub fn accuracy_without(&self, excluded: &[String]) -> f64 {
        let (correct, rows) = self
            .per_site
            .iter()
            .filter(|(name, _)| !excluded.contains(name))
            .filter_map(|(_, m)| m.accuracy.map(|a| (a * m.n_test as f64, m.n_test)))
            .fold((0.0, 0u64), |(c, n), (ci, ni)| (c + ci, n + ni));
        if rows == 0 {
            0.0
        } else {
            correct / rows as f64
        }
    }
}
