//! What a report shows of the sites' evaluations of one model: each site's
//! in the clear, or only their (possibly noised) sum.

use tessera_aggregate::{EvaluationSums, SiteEvaluation, Strategy};
use tessera_core::ParticipantId;
use tessera_learn::Evaluation;

/// What `e` sums over its rows, as a strategy sees it.
pub fn sums(e: &Evaluation) -> EvaluationSums {
    EvaluationSums {
        n_examples: e.n_examples,
        loss_sum: e.loss_sum,
        n_correct: e.n_correct,
    }
}

/// The aggregation every built-in strategy uses
/// ([`tessera_aggregate::pool_evaluations`]), where no run's strategy is at
/// hand (gossip peers, reports rebuilt from stored evaluations).
pub static POOLED: tessera_aggregate::FedAvg = tessera_aggregate::FedAvg { server_lr: 1.0 };

/// What a report shows of the sites' evaluations of one model: the pooled
/// evaluation and the mean of the sites' accuracies.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluationView {
    /// Counts, loss and score histogram over every site's test rows.
    pub pooled: Evaluation,
    /// Unweighted mean accuracy over the sites with test rows.
    pub mean_site_accuracy: f64,
}

impl EvaluationView {
    /// From each site's evaluation (`site_metrics = "clear"`), `sites[i]`
    /// having sent `evaluations[i]`, as `strategy` aggregates them
    /// ([`Strategy::aggregate_evaluate`]); the score histograms behind the
    /// AUC add up whatever the strategy.
    pub fn clear(strategy: &dyn Strategy, sites: &[&str], evaluations: &[Evaluation]) -> Self {
        let results: Vec<SiteEvaluation> = sites
            .iter()
            .zip(evaluations)
            .map(|(site, e)| SiteEvaluation {
                site: ParticipantId::new(*site),
                sums: sums(e),
            })
            .collect();
        let aggregate = strategy.aggregate_evaluate(&results);
        let pooled = Evaluation::pool(evaluations);
        Self {
            pooled: Evaluation {
                n_examples: aggregate.pooled.n_examples,
                loss_sum: aggregate.pooled.loss_sum,
                n_correct: aggregate.pooled.n_correct,
                ..pooled
            },
            mean_site_accuracy: aggregate.mean_site_accuracy,
        }
    }

    /// [`EvaluationView::clear`] as the default pooling aggregates them, for
    /// the runs whose strategy has no say in evaluation (asynchronous steps,
    /// gossip), where the sites' names do not matter.
    pub fn pooled(evaluations: &[Evaluation]) -> Self {
        let sites = vec![""; evaluations.len()];
        Self::clear(&POOLED, &sites, evaluations)
    }

    /// From the unmasked sum of the sites' summable evaluations
    /// (`site_metrics = "aggregate-only"` in deployment).
    pub fn summed(summed: &tessera_learn::SummedEvaluation) -> Self {
        Self {
            pooled: summed.pooled.clone(),
            mean_site_accuracy: summed.mean_site_accuracy,
        }
    }

    /// What a coordinator unmasks under `aggregate-only` from these sites'
    /// evaluations: the sum of their summable encodings, decoded (fixed
    /// point to 2^-16 in the loss and accuracies), so that a simulation
    /// reports the numbers its deployment would.
    pub fn aggregate_only(evaluations: &[Evaluation]) -> Result<Self, String> {
        Self::summed_of(evaluations).map(|s| Self::summed(&s))
    }

    /// `site_metrics = "dp"`: the summed evaluation with Gaussian noise of
    /// `dp`'s calibration on every part (see [`tessera_privacy::metrics`]):
    /// row counts, rows predicted right, the loss sum, the sum of the sites'
    /// accuracies and the count of sites with rows, and every bin of the
    /// score histogram, coarsened first to [`DP_HISTOGRAM_BINS`] bins so
    /// that fewer noised counts make up the AUC. Counts are rounded and
    /// clamped at zero (post-processing).
    pub fn noised(
        summed: &tessera_learn::SummedEvaluation,
        dp: &tessera_privacy::MetricsDp,
        noise: &mut tessera_privacy::GaussianNoise,
    ) -> Self {
        let std = dp.unit_std();
        let count = |value: f64, noise: &mut tessera_privacy::GaussianNoise| {
            (value + std * noise.standard_normal()).round().max(0.0)
        };
        let n_examples = count(summed.pooled.n_examples as f64, noise);
        let n_correct = count(summed.pooled.n_correct as f64, noise).min(n_examples);
        let loss_sum = (summed.pooled.loss_sum
            + std * tessera_privacy::metrics::LOSS_BOUND * noise.standard_normal())
        .max(0.0);
        let accuracy_sum = summed.mean_site_accuracy * summed.sites_with_rows as f64
            + std * noise.standard_normal();
        let with_rows = summed.sites_with_rows as f64 + std * noise.standard_normal();
        let histogram = summed.pooled.histogram.as_ref().map(|h| {
            let width = (tessera_learn::HISTOGRAM_BINS / DP_HISTOGRAM_BINS) as u32;
            let mut coarse = vec![(0u64, 0u64); DP_HISTOGRAM_BINS];
            for &(bin, p, n) in &h.bins {
                if let Some(slot) = coarse.get_mut((bin / width) as usize) {
                    slot.0 = slot.0.saturating_add(p);
                    slot.1 = slot.1.saturating_add(n);
                }
            }
            tessera_learn::ScoreHistogram {
                bins: coarse
                    .into_iter()
                    .enumerate()
                    .map(|(i, (p, n))| {
                        (
                            i as u32 * width + width / 2,
                            count(p as f64, noise) as u64,
                            count(n as f64, noise) as u64,
                        )
                    })
                    .filter(|&(_, p, n)| p + n > 0)
                    .collect(),
            }
        });
        let pooled = Evaluation {
            n_examples: n_examples as u64,
            loss_sum,
            n_correct: n_correct as u64,
            auc: histogram
                .as_ref()
                .and_then(tessera_learn::ScoreHistogram::auc),
            histogram,
        };
        Self {
            pooled,
            mean_site_accuracy: (accuracy_sum / with_rows.max(1.0)).clamp(0.0, 1.0),
        }
    }

    /// As the plan's `site_metrics` lets the coordinator see them; `dp`
    /// needs the calibration and the noise.
    pub fn of(
        site_metrics: tessera_privacy::SiteMetrics,
        strategy: &dyn Strategy,
        sites: &[&str],
        evaluations: &[Evaluation],
        dp: Option<(
            &tessera_privacy::MetricsDp,
            &mut tessera_privacy::GaussianNoise,
        )>,
    ) -> Result<Self, String> {
        match (site_metrics, dp) {
            (tessera_privacy::SiteMetrics::Clear, _) => {
                Ok(Self::clear(strategy, sites, evaluations))
            }
            (tessera_privacy::SiteMetrics::AggregateOnly, _) => Self::aggregate_only(evaluations),
            (tessera_privacy::SiteMetrics::Dp, Some((dp, noise))) => {
                Ok(Self::noised(&Self::summed_of(evaluations)?, dp, noise))
            }
            (tessera_privacy::SiteMetrics::Dp, None) => {
                Err("site_metrics = \"dp\" needs the metrics' noise calibration".into())
            }
        }
    }

    /// What the secure sum of these evaluations decodes to.
    pub fn summed_of(
        evaluations: &[Evaluation],
    ) -> Result<tessera_learn::SummedEvaluation, String> {
        let mut sum = vec![0u32; tessera_learn::SUMMABLE_LEN];
        for e in evaluations {
            for (s, v) in sum.iter_mut().zip(tessera_learn::encode_summable(e)) {
                *s = s.wrapping_add(v);
            }
        }
        tessera_learn::decode_summable(&sum, evaluations.len())
    }
}

/// Bins of the score histogram released under `site_metrics = "dp"`.
pub const DP_HISTOGRAM_BINS: usize = 32;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::report::final_metrics;
    use tessera_learn::{ScoreHistogram, SummedEvaluation};
    use tessera_privacy::{GaussianNoise, MetricsDp, PrivacyConfig, SiteMetrics};

    fn summed() -> SummedEvaluation {
        let bins: Vec<(u32, u64, u64)> = (0..1024u32)
            .step_by(8)
            .map(|b| (b, u64::from(b / 8), u64::from(128 - b / 8)))
            .collect();
        let histogram = ScoreHistogram { bins };
        SummedEvaluation {
            sites: 5,
            pooled: Evaluation {
                n_examples: 5_000,
                loss_sum: 2_500.0,
                n_correct: 3_500,
                auc: histogram.auc(),
                histogram: Some(histogram),
            },
            mean_site_accuracy: 0.7,
            sites_with_rows: 5,
        }
    }

    /// A run whose sites had no test rows reports its final accuracy, loss
    /// and mean of sites as null, not 0 (which reads as a model that is
    /// always wrong).
    #[test]
    fn nothing_evaluated_is_null_not_zero() {
        let none = Evaluation {
            n_examples: 0,
            loss_sum: 0.0,
            n_correct: 0,
            auc: None,
            histogram: None,
        };
        let f = final_metrics(&POOLED, &["a", "b"], &[none.clone(), none]);
        assert_eq!(
            (f.accuracy, f.loss, f.mean_site_accuracy),
            (None, None, None)
        );
        let json = serde_json::to_value(&f).unwrap();
        assert!(
            json["accuracy"].is_null() && json["loss"].is_null(),
            "{json}"
        );
        assert_eq!(f.summary(), "not evaluated (no test rows)");
        let one = Evaluation {
            n_examples: 4,
            loss_sum: 2.0,
            n_correct: 3,
            auc: None,
            histogram: None,
        };
        let f = final_metrics(&POOLED, &["a"], &[one]);
        assert_eq!((f.accuracy, f.loss), (Some(0.75), Some(0.5)));
    }

    /// Two sites, 11% positives between them, and a model that never
    /// predicts one: 89% accurate, and the headline says what it misses.
    #[test]
    fn rare_positives_lead_with_the_auc_and_what_is_missed() {
        use ndarray::Array2;
        let site = |positives: usize, negatives: usize| {
            let rows = positives + negatives;
            // Probability 0.3 for every positive, 0.1 for every negative:
            // ranked perfectly, never over 0.5.
            let proba = Array2::from_shape_fn((rows, 2), |(i, c)| {
                let p1 = if i < positives { 0.3 } else { 0.1 };
                if c == 1 { p1 } else { 1.0 - p1 }
            });
            let y: Vec<u32> = (0..rows).map(|i| u32::from(i < positives)).collect();
            Evaluation::from_probabilities(&proba, &y)
        };
        let f = final_metrics(&POOLED, &["a", "b"], &[site(5, 45), site(6, 44)]);
        assert_eq!(f.accuracy, Some(0.89));
        let b = f.binary.clone().unwrap();
        assert!((b.positive_rate - 0.11).abs() < 1e-12 && b.positives_rare());
        assert_eq!(
            (b.sensitivity, b.specificity, b.balanced_accuracy),
            (0.0, 1.0, 0.5)
        );
        assert_eq!((f.auc, b.pr_auc), (Some(1.0), 1.0));
        let line = f.summary();
        assert!(
            line.starts_with(
                "AUC 1.0000, PR-AUC 1.0000, balanced accuracy 0.5000 (sensitivity 0.0000"
            ),
            "{line}"
        );
        assert!(line.contains("positives 11.0%); accuracy 0.8900"), "{line}");
        // Common positives: accuracy leads, the AUC follows it.
        let even = final_metrics(&POOLED, &["a"], &[site(50, 50)]);
        assert!(!even.binary.as_ref().unwrap().positives_rare());
        assert!(
            even.summary().starts_with("accuracy 0.5000"),
            "{}",
            even.summary()
        );
        assert!(
            even.summary().ends_with(", auc 1.0000"),
            "{}",
            even.summary()
        );
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["binary"]["sensitivity"], 0.0, "{json}");
    }

    fn mean_std(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt())
    }

    /// The released parts carry noise of the calibrated standard deviation
    /// (the loss scaled by its bound), centred on the exact sums, and the
    /// histogram is coarsened to `DP_HISTOGRAM_BINS` noised bins.
    #[test]
    fn noised_views_carry_the_calibrated_noise() {
        let config = PrivacyConfig {
            site_metrics: SiteMetrics::Dp,
            metrics_epsilon: Some(1.0),
            ..PrivacyConfig::default()
        };
        let dp = MetricsDp::new(&config, 10).unwrap();
        let exact = summed();
        let (mut rows, mut correct, mut loss) = (Vec::new(), Vec::new(), Vec::new());
        for stream in 0..3_000u64 {
            let mut noise = GaussianNoise::new([7; 32], stream);
            let view = EvaluationView::noised(&exact, &dp, &mut noise);
            rows.push(view.pooled.n_examples as f64);
            correct.push(view.pooled.n_correct as f64);
            loss.push(view.pooled.loss_sum);
            let h = view.pooled.histogram.unwrap();
            assert!(h.bins.len() <= DP_HISTOGRAM_BINS);
            assert!((0.0..=1.0).contains(&view.mean_site_accuracy));
        }
        let std = dp.unit_std();
        assert!(
            std > 10.0,
            "ten releases at epsilon 1 need real noise: {std}"
        );
        for (values, exact, scale) in [
            (&rows, 5_000.0, 1.0),
            (&correct, 3_500.0, 1.0),
            (&loss, 2_500.0, tessera_privacy::metrics::LOSS_BOUND),
        ] {
            let (mean, sd) = mean_std(values);
            let want = std * scale;
            assert!((sd / want - 1.0).abs() < 0.06, "sd {sd} against {want}");
            // The mean within 4 standard errors (rounding adds at most 0.5).
            assert!(
                (mean - exact).abs() < 4.0 * want / (values.len() as f64).sqrt() + 0.5,
                "mean {mean} against {exact}"
            );
        }
    }

    /// Without noise (a vanishing multiplier is not constructible, so the
    /// check is on the coarsening alone): the coarse histogram keeps the
    /// counts and the AUC stays near the fine one.
    #[test]
    fn the_coarse_histogram_keeps_counts_and_nearly_the_auc() {
        let exact = summed();
        let config = PrivacyConfig {
            site_metrics: SiteMetrics::Dp,
            metrics_epsilon: Some(1e6),
            ..PrivacyConfig::default()
        };
        let dp = MetricsDp::new(&config, 1).unwrap();
        // Far below the half unit that could change a rounded count.
        assert!(dp.unit_std() < 0.05, "{}", dp.unit_std());
        let view = EvaluationView::noised(&exact, &dp, &mut GaussianNoise::new([1; 32], 0));
        let h = view.pooled.histogram.unwrap();
        let total: u64 = h.bins.iter().map(|b| b.1 + b.2).sum();
        let exact_total: u64 = exact
            .pooled
            .histogram
            .as_ref()
            .unwrap()
            .bins
            .iter()
            .map(|b| b.1 + b.2)
            .sum();
        assert_eq!(total, exact_total);
        let (fine, coarse) = (exact.pooled.auc.unwrap(), view.pooled.auc.unwrap());
        // Pairs within one coarse bin count half: here 0.025 lower.
        assert!((fine - coarse).abs() < 0.03, "{fine} {coarse}");
        assert_eq!(view.pooled.n_examples, 5_000);
        // A ratio of two noised sums over five sites.
        assert!((view.mean_site_accuracy - 0.7).abs() < 0.03);
    }
}
