//! Byzantine-robust aggregation: norm bounding, coordinate-wise median,
//! trimmed mean, Krum and Multi-Krum.
//!
//! Unlike the streaming mean, these rules need every update of the round at
//! once (memory grows with the cohort), and they ignore example counts: each
//! update counts once, since a malicious participant could claim any count.

use serde::{Deserialize, Serialize};
use tessera_core::{ParameterSet, ParticipantId, Update};

use crate::{
    AggregateError, Attendance, EvaluateInstructions, EvaluationAggregate, Instructions,
    RoundAggregate, SiteEvaluation, Strategy,
};

/// How a round's updates are combined when some may be malicious.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RobustRule {
    /// The (weighted) mean: no defence beyond an optional norm bound.
    #[default]
    Mean,
    /// Coordinate-wise median (Yin et al. 2018).
    Median,
    /// Coordinate-wise mean after dropping the largest and smallest values
    /// (Yin et al. 2018).
    TrimmedMean,
    /// The update closest to its neighbours (Blanchard et al. 2017).
    Krum,
    /// The mean of the `m` updates with the best Krum scores.
    MultiKrum,
}

impl RobustRule {
    /// Every rule, in a fixed order.
    pub const ALL: [RobustRule; 5] = [
        RobustRule::Mean,
        RobustRule::Median,
        RobustRule::TrimmedMean,
        RobustRule::Krum,
        RobustRule::MultiKrum,
    ];

    /// The name in plans and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            RobustRule::Mean => "mean",
            RobustRule::Median => "median",
            RobustRule::TrimmedMean => "trimmed_mean",
            RobustRule::Krum => "krum",
            RobustRule::MultiKrum => "multi_krum",
        }
    }

    /// Whether the rule needs every update at once.
    pub fn needs_all_updates(self) -> bool {
        self != RobustRule::Mean
    }
}

impl std::fmt::Display for RobustRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RobustRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RobustRule::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = RobustRule::ALL.iter().map(|r| r.as_str()).collect();
                format!(
                    "unknown robust rule '{s}' (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// The plan's `[robust]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobustConfig {
    /// The aggregation rule.
    #[serde(default)]
    pub rule: RobustRule,
    /// Every update is scaled down to at most this L2 norm before it counts.
    #[serde(default)]
    pub norm_bound: Option<f64>,
    /// Trimmed mean: share of updates dropped at each end, per coordinate.
    #[serde(default = "default_trim")]
    pub trim_fraction: f64,
    /// Krum: the number of malicious participants to tolerate (f).
    #[serde(default)]
    pub assumed_malicious: usize,
    /// Multi-Krum: how many updates to average (default: cohort minus f).
    #[serde(default)]
    pub multi_krum_m: Option<usize>,
}

fn default_trim() -> f64 {
    0.2
}

impl Default for RobustConfig {
    fn default() -> Self {
        Self {
            rule: RobustRule::Mean,
            norm_bound: None,
            trim_fraction: default_trim(),
            assumed_malicious: 0,
            multi_krum_m: None,
        }
    }
}

impl RobustConfig {
    /// The streaming weighted mean, unbounded (the default).
    pub const MEAN: RobustConfig = RobustConfig {
        rule: RobustRule::Mean,
        norm_bound: None,
        trim_fraction: 0.2,
        assumed_malicious: 0,
        multi_krum_m: None,
    };

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), AggregateError> {
        if let Some(b) = self.norm_bound
            && !(b.is_finite() && b > 0.0)
        {
            return Err(AggregateError::Config(format!(
                "norm_bound {b} must be positive"
            )));
        }
        if !(0.0..0.5).contains(&self.trim_fraction) {
            return Err(AggregateError::Config(format!(
                "trim_fraction {} must be in [0, 0.5)",
                self.trim_fraction
            )));
        }
        if self.multi_krum_m == Some(0) {
            return Err(AggregateError::Config(
                "multi_krum_m must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Combines `updates` (all of the same layout) by the rule; for
    /// [`RobustRule::Mean`] the unweighted mean.
    pub fn combine(&self, updates: &[ParameterSet]) -> Result<ParameterSet, AggregateError> {
        let first = updates.first().ok_or(AggregateError::Empty)?;
        for u in updates {
            first.check_same_layout(u)?;
        }
        let k = updates.len();
        let values: Vec<Vec<f32>> = updates.iter().map(|u| u.values().collect()).collect();
        let d = first.n_values();
        let combined: Vec<f32> = match self.rule {
            RobustRule::Mean => mean_of(&values, &(0..k).collect::<Vec<_>>(), d),
            RobustRule::Median | RobustRule::TrimmedMean => {
                let trim = if self.rule == RobustRule::Median {
                    None
                } else {
                    Some((self.trim_fraction * k as f64).floor() as usize)
                };
                let mut column = vec![0f32; k];
                (0..d)
                    .map(|j| {
                        for (c, v) in column.iter_mut().zip(&values) {
                            *c = v[j];
                        }
                        column.sort_by(f32::total_cmp);
                        match trim {
                            None if k % 2 == 1 => column[k / 2],
                            None => {
                                ((f64::from(column[k / 2 - 1]) + f64::from(column[k / 2])) / 2.0)
                                    as f32
                            }
                            Some(t) => {
                                let kept = &column[t..k - t];
                                (kept.iter().map(|&x| f64::from(x)).sum::<f64>()
                                    / kept.len() as f64) as f32
                            }
                        }
                    })
                    .collect()
            }
            RobustRule::Krum | RobustRule::MultiKrum => {
                let f = self.assumed_malicious;
                let need = f.saturating_mul(2).saturating_add(3);
                if k < need {
                    return Err(AggregateError::Config(format!(
                        "Krum tolerating {f} malicious participants needs at least {need} updates, got {k}"
                    )));
                }
                let scores = krum_scores(&values, f);
                let mut order: Vec<usize> = (0..k).collect();
                order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
                let m = match self.rule {
                    RobustRule::Krum => 1,
                    _ => self.multi_krum_m.unwrap_or(k - f).min(k),
                };
                mean_of(&values, &order[..m], d)
            }
        };
        Ok(first.with_values(&combined)?)
    }
}

/// A strategy with the plan's robust rule as its combine step
/// ([`Strategy::robust`]); everything else is the inner strategy's.
pub struct Robust {
    inner: Box<dyn Strategy>,
    rule: RobustConfig,
}

impl Robust {
    /// `inner`, its rounds combined by `rule`.
    pub fn new(inner: Box<dyn Strategy>, rule: RobustConfig) -> Self {
        Self { inner, rule }
    }
}

impl Strategy for Robust {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn configure_fit(&self, global: &ParameterSet, site: &ParticipantId) -> Instructions {
        self.inner.configure_fit(global, site)
    }

    fn weight(&self, update: &Update) -> f64 {
        self.inner.weight(update)
    }

    fn scale(&self, update: &Update) -> f64 {
        self.inner.scale(update)
    }

    fn aux_sum(&self) -> Option<&'static str> {
        self.inner.aux_sum()
    }

    fn check_update(&self, from: &ParticipantId, update: &Update) -> Result<(), AggregateError> {
        self.inner.check_update(from, update)
    }

    fn aggregate_fit(
        &mut self,
        global: &ParameterSet,
        round: &RoundAggregate,
        attendance: &Attendance,
    ) -> Result<ParameterSet, AggregateError> {
        self.inner.aggregate_fit(global, round, attendance)
    }

    fn robust(&self) -> &RobustConfig {
        &self.rule
    }

    fn configure_evaluate(
        &self,
        global: &ParameterSet,
        site: &ParticipantId,
    ) -> EvaluateInstructions {
        self.inner.configure_evaluate(global, site)
    }

    fn aggregate_evaluate(&self, results: &[SiteEvaluation]) -> EvaluationAggregate {
        self.inner.aggregate_evaluate(results)
    }
}

fn mean_of(values: &[Vec<f32>], chosen: &[usize], d: usize) -> Vec<f32> {
    let mut sum = vec![0f64; d];
    for &i in chosen {
        for (s, &v) in sum.iter_mut().zip(&values[i]) {
            *s += f64::from(v);
        }
    }
    let n = chosen.len().max(1) as f64;
    sum.into_iter().map(|s| (s / n) as f32).collect()
}

/// Krum's score of each update: the sum of squared distances to its
/// `k - f - 2` nearest other updates.
fn krum_scores(values: &[Vec<f32>], f: usize) -> Vec<f64> {
    let k = values.len();
    let mut dist = vec![vec![0f64; k]; k];
    for i in 0..k {
        for j in i + 1..k {
            let d2: f64 = values[i]
                .iter()
                .zip(&values[j])
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum();
            dist[i][j] = d2;
            dist[j][i] = d2;
        }
    }
    let nearest = k - f - 2;
    (0..k)
        .map(|i| {
            let mut others: Vec<f64> = (0..k).filter(|&j| j != i).map(|j| dist[i][j]).collect();
            others.sort_by(f64::total_cmp);
            others[..nearest].iter().sum()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tessera_core::Tensor;

    use super::*;
    use crate::Strategy;

    fn set(values: &[f32]) -> ParameterSet {
        let mut p = ParameterSet::new();
        p.push(
            "w",
            Tensor::new(vec![values.len()], values.to_vec()).expect("tensor"),
        )
        .expect("push");
        p
    }

    fn rule(rule: RobustRule) -> RobustConfig {
        RobustConfig {
            rule,
            ..RobustConfig::default()
        }
    }

    #[test]
    fn the_default_rule_is_the_mean_and_robust_strategies_keep_their_inner_part() {
        assert_eq!(RobustConfig::MEAN, RobustConfig::default());
        let inner = crate::StrategyConfig::default()
            .build(crate::StrategyKind::FedProx)
            .expect("fedprox");
        assert_eq!(inner.robust(), &RobustConfig::MEAN);
        let strategy = Robust::new(inner, rule(RobustRule::Median));
        assert_eq!(strategy.name(), "fedprox");
        assert_eq!(strategy.robust().rule, RobustRule::Median);
        assert_eq!(
            strategy.configure_fit(&set(&[0.0]), &ParticipantId::new("a")),
            Instructions::Proximal { mu: 0.01 }
        );
        let aggregate = RoundAggregate {
            mean_delta: set(&[2.0]),
            aux_step: None,
            n_updates: 3,
            n_participants: 3,
            n_examples: 3,
            weight_sum: 3.0,
            mean_train_loss: 0.0,
        };
        let updates = [set(&[1.0]), set(&[2.0]), set(&[9.0])];
        let combined = strategy
            .combine(aggregate.clone(), &updates)
            .expect("median");
        assert_eq!(combined.mean_delta.values().collect::<Vec<_>>(), [2.0]);
        let plain = crate::FedAvg { server_lr: 1.0 };
        assert_eq!(
            plain.combine(aggregate.clone(), &[]).expect("mean"),
            aggregate
        );
    }

    #[test]
    fn median_and_trimmed_mean_ignore_outliers() {
        let updates: Vec<ParameterSet> = [1.0, 2.0, 3.0, 4.0, 1000.0]
            .iter()
            .map(|&x| set(&[x, -x]))
            .collect();
        let median = rule(RobustRule::Median).combine(&updates).expect("median");
        assert_eq!(median.values().collect::<Vec<_>>(), vec![3.0, -3.0]);
        // trim_fraction 0.2 of 5 drops one at each end: mean of 2, 3, 4.
        let trimmed = rule(RobustRule::TrimmedMean)
            .combine(&updates)
            .expect("trimmed");
        assert_eq!(trimmed.values().collect::<Vec<_>>(), vec![3.0, -3.0]);
        let even = rule(RobustRule::Median)
            .combine(&updates[..4])
            .expect("median");
        assert_eq!(even.values().collect::<Vec<_>>(), vec![2.5, -2.5]);
    }

    #[test]
    fn krum_picks_from_the_honest_cluster() {
        let mut updates: Vec<ParameterSet> =
            (0..7).map(|i| set(&[1.0 + 0.01 * i as f32, 1.0])).collect();
        updates.push(set(&[-50.0, 80.0]));
        updates.push(set(&[60.0, -90.0]));
        let config = RobustConfig {
            rule: RobustRule::Krum,
            assumed_malicious: 2,
            ..RobustConfig::default()
        };
        let chosen = config.combine(&updates).expect("krum");
        let v: Vec<f32> = chosen.values().collect();
        assert!((v[0] - 1.03).abs() < 0.031 && v[1] == 1.0, "{v:?}");
        let multi = RobustConfig {
            rule: RobustRule::MultiKrum,
            ..config.clone()
        };
        let v: Vec<f32> = multi
            .combine(&updates)
            .expect("multi-krum")
            .values()
            .collect();
        // The 7 honest updates, averaged.
        assert!(
            (v[0] - 1.03).abs() < 1e-6 && (v[1] - 1.0).abs() < 1e-6,
            "{v:?}"
        );
        assert!(config.combine(&updates[..6]).is_err());
    }

    proptest! {
        #[test]
        fn median_is_the_middle_of_an_independent_sort(
            columns in prop::collection::vec(prop::collection::vec(-1e6f32..1e6, 3), 1..12),
        ) {
            let updates: Vec<ParameterSet> = columns.iter().map(|c| set(c)).collect();
            let got: Vec<f32> = rule(RobustRule::Median).combine(&updates).expect("median").values().collect();
            for j in 0..3 {
                let mut col: Vec<f64> = columns.iter().map(|c| f64::from(c[j])).collect();
                col.sort_by(f64::total_cmp);
                let n = col.len();
                let want = if n % 2 == 1 { col[n / 2] } else { (col[n / 2 - 1] + col[n / 2]) / 2.0 };
                prop_assert!((f64::from(got[j]) - want).abs() <= 1e-6 * want.abs().max(1.0));
            }
        }

        #[test]
        fn trimmed_mean_with_no_trim_is_the_mean(
            columns in prop::collection::vec(prop::collection::vec(-1e3f32..1e3, 2), 1..12),
        ) {
            let updates: Vec<ParameterSet> = columns.iter().map(|c| set(c)).collect();
            let config = RobustConfig { rule: RobustRule::TrimmedMean, trim_fraction: 0.0, ..RobustConfig::default() };
            let got: Vec<f32> = config.combine(&updates).expect("trimmed").values().collect();
            for j in 0..2 {
                let want = columns.iter().map(|c| f64::from(c[j])).sum::<f64>() / columns.len() as f64;
                prop_assert!((f64::from(got[j]) - want).abs() <= 1e-4);
            }
        }
    }
}
