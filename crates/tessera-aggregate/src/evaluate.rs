//! The evaluate half of the strategy pair: what each site evaluates, and
//! how the sites' evaluations combine into the round's figures.
//!
//! The types are sums over rows, named, rather than the learner's own
//! evaluation type: this crate sits below the learner, and what a strategy
//! decides (which model a site evaluates, how sites weigh) is stated in
//! counts and sums. The score histograms behind the pooled AUC stay with
//! the learner's type and pool by addition whatever the strategy.

use tessera_core::ParticipantId;

/// What a strategy's server part tells one site to evaluate after a round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EvaluateInstructions {
    /// The round's global model on the site's test rows.
    #[default]
    GlobalOnTest,
}

/// What one evaluation sums over its rows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EvaluationSums {
    /// Rows evaluated.
    pub n_examples: u64,
    /// Sum of per-row log loss.
    pub loss_sum: f64,
    /// Rows predicted right.
    pub n_correct: u64,
}

impl EvaluationSums {
    /// Share of rows predicted right (0 for no rows).
    pub fn accuracy(&self) -> f64 {
        if self.n_examples == 0 {
            0.0
        } else {
            self.n_correct as f64 / self.n_examples as f64
        }
    }
}

/// One site's evaluation, as the strategy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteEvaluation {
    /// The site.
    pub site: ParticipantId,
    /// Its sums.
    pub sums: EvaluationSums,
}

/// The round's evaluation figures a strategy gives from the sites'.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EvaluationAggregate {
    /// Over every row: accuracy and mean loss follow (example-weighted).
    pub pooled: EvaluationSums,
    /// Mean over the sites with rows of each site's accuracy.
    pub mean_site_accuracy: f64,
}

/// The default aggregation: counts and loss added up over every site's
/// rows (so that accuracy and loss are example-weighted), beside the
/// unweighted mean of the accuracies of the sites that have rows. Counts
/// saturate rather than wrap.
pub fn pool_evaluations(results: &[SiteEvaluation]) -> EvaluationAggregate {
    let mut pooled = EvaluationSums::default();
    let (mut accuracy_sum, mut with_rows) = (0.0, 0usize);
    for r in results {
        pooled.n_examples = pooled.n_examples.saturating_add(r.sums.n_examples);
        pooled.loss_sum += r.sums.loss_sum;
        pooled.n_correct = pooled.n_correct.saturating_add(r.sums.n_correct);
        if r.sums.n_examples > 0 {
            accuracy_sum += r.sums.accuracy();
            with_rows += 1;
        }
    }
    EvaluationAggregate {
        pooled,
        mean_site_accuracy: if with_rows == 0 {
            0.0
        } else {
            accuracy_sum / with_rows as f64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, n_examples: u64, loss_sum: f64, n_correct: u64) -> SiteEvaluation {
        SiteEvaluation {
            site: ParticipantId::new(name),
            sums: EvaluationSums {
                n_examples,
                loss_sum,
                n_correct,
            },
        }
    }

    #[test]
    fn pooling_weighs_rows_and_the_site_mean_weighs_sites() {
        let got = pool_evaluations(&[
            site("a", 10, 2.0, 9),
            site("b", 90, 30.0, 45),
            site("empty", 0, 0.0, 0),
        ]);
        assert_eq!(got.pooled.n_examples, 100);
        assert_eq!(got.pooled.n_correct, 54);
        assert_eq!(got.pooled.loss_sum, 32.0);
        assert_eq!(got.pooled.accuracy(), 0.54);
        // (0.9 + 0.5) / 2: the site without rows is not in the mean.
        assert!((got.mean_site_accuracy - 0.7).abs() < 1e-12);
        assert_eq!(pool_evaluations(&[]), EvaluationAggregate::default());
        let huge = pool_evaluations(&[site("a", u64::MAX, 0.0, 1), site("b", 5, 0.0, 1)]);
        assert_eq!(huge.pooled.n_examples, u64::MAX);
    }
}
