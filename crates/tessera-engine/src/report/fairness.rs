//! How evenly the final model serves the sites: the spread of their
//! accuracies and the worst served.

use serde::{Deserialize, Serialize};

use super::FinalMetrics;

/// The final model's accuracy across sites (only where each site's
/// evaluation is reported, `site_metrics = "clear"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fairness {
    /// Sites with test rows.
    pub sites: usize,
    /// The worst served site and its accuracy.
    pub worst: (String, f64),
    /// The best served site and its accuracy.
    pub best: (String, f64),
    /// Unweighted mean of the sites' accuracies.
    pub mean: f64,
    /// Their standard deviation (population).
    pub std_dev: f64,
    /// Mean accuracy of the worst tenth of the sites (at least one site).
    pub worst_tenth_mean: f64,
}

impl Fairness {
    /// From the final metrics' per-site figures; `None` without two sites
    /// with test rows.
    pub fn of(metrics: &FinalMetrics) -> Option<Fairness> {
        let mut sites: Vec<(&String, f64)> = metrics
            .per_site
            .iter()
            .filter_map(|(name, m)| m.accuracy.filter(|a| a.is_finite()).map(|a| (name, a)))
            .collect();
        if sites.len() < 2 {
            return None;
        }
        sites.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(b.0)));
        let n = sites.len() as f64;
        let mean = sites.iter().map(|s| s.1).sum::<f64>() / n;
        let var = sites.iter().map(|s| (s.1 - mean).powi(2)).sum::<f64>() / n;
        let tenth = sites.len().div_ceil(10);
        // Ties go to the first site by name, at either end.
        let worst = sites[0];
        let best = *sites
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(a.0)))
            .unwrap_or(&worst);
        Some(Fairness {
            sites: sites.len(),
            worst: (worst.0.clone(), worst.1),
            best: (best.0.clone(), best.1),
            mean,
            std_dev: var.sqrt(),
            worst_tenth_mean: sites[..tenth].iter().map(|s| s.1).sum::<f64>() / tenth as f64,
        })
    }

    /// One line for a terminal.
    pub fn summary_line(&self) -> String {
        format!(
            "fairness: worst site {} {:.4}, best {} {:.4}, spread {:.4}, std {:.4}, worst tenth {:.4} ({} sites)",
            self.worst.0,
            self.worst.1,
            self.best.0,
            self.best.1,
            self.best.1 - self.worst.1,
            self.std_dev,
            self.worst_tenth_mean,
            self.sites
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::SiteMetrics;

    #[test]
    fn the_spread_and_the_worst_served_are_the_sites_own() {
        let site = |a: Option<f64>| SiteMetrics {
            accuracy: a,
            loss: None,
            auc: None,
            n_test: 10,
        };
        let mut metrics = FinalMetrics {
            accuracy: None,
            mean_site_accuracy: None,
            auc: None,
            loss: None,
            binary: None,
            per_site: Default::default(),
        };
        for (i, a) in [0.9, 0.5, 0.7, 0.8, 0.6, 0.9, 0.7, 0.8, 0.6, 0.7, 0.8]
            .into_iter()
            .enumerate()
        {
            metrics.per_site.insert(format!("s{i:02}"), site(Some(a)));
        }
        metrics.per_site.insert("empty".into(), site(None));
        let f = Fairness::of(&metrics).unwrap();
        assert_eq!(f.sites, 11);
        assert_eq!(f.worst, ("s01".to_string(), 0.5));
        assert_eq!(f.best, ("s00".to_string(), 0.9));
        let mean = 8.0 / 11.0;
        assert!((f.mean - mean).abs() < 1e-12);
        // Two of 11 sites are the worst tenth (rounded up): 0.5 and 0.6.
        assert!((f.worst_tenth_mean - 0.55).abs() < 1e-12);
        let var = [0.9, 0.5, 0.7, 0.8, 0.6, 0.9, 0.7, 0.8, 0.6, 0.7, 0.8]
            .iter()
            .map(|a: &f64| (a - mean).powi(2))
            .sum::<f64>()
            / 11.0;
        assert!((f.std_dev - var.sqrt()).abs() < 1e-12);
        metrics.per_site.retain(|n, _| n == "s00" || n == "empty");
        assert_eq!(Fairness::of(&metrics), None);
    }
}
