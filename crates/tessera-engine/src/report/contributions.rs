//! Each site's contribution to the global model: per round and over the
//! run (`[contribution]`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One round's attribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundContribution {
    /// The round.
    pub round: u32,
    /// The utility of the whole round's model over the round's start.
    pub gain: f64,
    /// Each counted site's value (the round's values add up to `gain`
    /// where the method is Shapley's).
    pub values: BTreeMap<String, f64>,
    /// Orders of sites sampled (GTG-Shapley; 0 for the other methods, and
    /// where the round gained too little to attribute).
    pub orders: usize,
    /// Sets of sites whose model was evaluated.
    pub evaluations: usize,
    /// Wall-clock seconds the round's attribution took.
    pub seconds: f64,
}

/// A site's contribution over the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteContribution {
    /// The site.
    pub name: String,
    /// Its values added up over the rounds.
    pub total: f64,
    /// Rounds whose model counted its update.
    pub rounds: u32,
    /// Its place, 1 for the largest total.
    pub rank: usize,
    /// Rounds whose model counted its update over rounds that asked it.
    pub reliability: f64,
    /// Its data quality score, as released (see [`ContributionsReport`]);
    /// none where sites release none (a deployed run, for now).
    pub quality: Option<f64>,
    /// [`REPUTATION_WEIGHTS`] of its attribution score (see
    /// [`attribution_scores`]), reliability and quality.
    pub reputation: f64,
    /// Its share of the plan's value (`contribution.value`), by its
    /// positive total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<f64>,
}

/// How a site's reputation weighs its attribution score
/// ([`attribution_scores`]), its reliability and its data quality.
/// Attribution weighs most: it is measured on the model, not reported by
/// the site.
pub const REPUTATION_WEIGHTS: [f64; 3] = [0.6, 0.25, 0.15];

/// Each total's attribution score, between 0 and 1: the logistic function
/// of its robust z-score, `(total - median) / spread`, with `spread`
/// 1.4826 times the totals' median absolute deviation from their median
/// (the standard deviation where totals are normal, and moved by no
/// fewer than half of the sites whatever they send). Where more than half
/// share one total (a spread of 0), the spread is 1.2533 times the mean
/// absolute deviation from the median instead (again the standard
/// deviation for normal totals, but one that grows with how far an
/// outlier is: with most totals at one value, a far outlier pulls every
/// other site towards 0.5); where every total is the same, every score is
/// 0.5. A total that is not a finite number scores 0 and is left out of
/// the median and spread.
///
/// Unlike a place among the sites, the score keeps the gaps between
/// totals: a site whose update set the model back by many spreads scores
/// near 0 however close its place is to an honest site's, so the other
/// parts of reputation, which do not see the model, cannot lift it over
/// honest sites that only contributed little.
pub fn attribution_scores(totals: &[f64]) -> Vec<f64> {
    let median = |v: &mut Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            0.0
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let finite: Vec<f64> = totals.iter().copied().filter(|t| t.is_finite()).collect();
    let center = median(&mut finite.clone());
    let mut deviations: Vec<f64> = finite.iter().map(|t| (t - center).abs()).collect();
    let mut spread = 1.4826 * median(&mut deviations);
    if spread == 0.0 && !deviations.is_empty() {
        spread = 1.2533 * deviations.iter().sum::<f64>() / deviations.len() as f64;
    }
    totals
        .iter()
        .map(|t| {
            if !t.is_finite() {
                0.0
            } else if spread > 0.0 && spread.is_finite() {
                // exp of at most 700 is finite; beyond, the score is 0 or 1.
                let z = ((t - center) / spread).clamp(-700.0, 700.0);
                1.0 / (1.0 + (-z).exp())
            } else {
                0.5
            }
        })
        .collect()
}

/// What a site was asked and gave, for its reputation.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SiteRecord {
    /// Rounds that asked it for an update.
    pub asked: u32,
    /// Rounds whose model counted its update.
    pub counted: u32,
    /// Its data quality score, as released (`None`: none released, and
    /// reputation weighs attribution and reliability alone).
    pub quality: Option<f64>,
}

/// The run's attribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContributionsReport {
    /// How values were computed (`gtg`, `exact`, `leave-one-out`).
    pub method: String,
    /// What a set's model is worth (`loss`, `accuracy`).
    pub utility: String,
    /// Every site, largest total first (a site never counted has 0).
    pub sites: Vec<SiteContribution>,
    /// Each round's attribution.
    pub rounds: Vec<RoundContribution>,
    /// Wall-clock seconds all attribution took.
    pub seconds: f64,
    /// Those seconds as a fraction of the rounds' other seconds.
    pub cost: f64,
    /// Each site's quality score is the mean of its completeness (from the
    /// counts its reading reports, as they are) and its label balance and
    /// distinct rows, each released by the site with the Laplace mechanism
    /// at half this epsilon.
    pub quality_epsilon: f64,
}

impl ContributionsReport {
    /// The run's report from its rounds, over the sites `names`.
    pub fn of_rounds(
        method: &str,
        utility: &str,
        names: &[&str],
        rounds: Vec<RoundContribution>,
        rounds_seconds: f64,
    ) -> ContributionsReport {
        let mut totals: BTreeMap<&str, (f64, u32)> = names.iter().map(|&n| (n, (0.0, 0))).collect();
        for round in &rounds {
            for (name, v) in &round.values {
                if let Some(t) = totals.get_mut(name.as_str()) {
                    t.0 += v;
                    t.1 += 1;
                }
            }
        }
        let mut sites: Vec<SiteContribution> = totals
            .into_iter()
            .map(|(name, (total, rounds))| SiteContribution {
                name: name.to_string(),
                total,
                rounds,
                rank: 0,
                reliability: 0.0,
                quality: None,
                reputation: 0.0,
                credits: None,
            })
            .collect();
        sites.sort_by(|a, b| b.total.total_cmp(&a.total).then(a.name.cmp(&b.name)));
        for (i, s) in sites.iter_mut().enumerate() {
            s.rank = i + 1;
        }
        let seconds: f64 = rounds.iter().map(|r| r.seconds).sum();
        let training = (rounds_seconds - seconds).max(f64::MIN_POSITIVE);
        ContributionsReport {
            method: method.to_string(),
            utility: utility.to_string(),
            sites,
            rounds,
            seconds,
            cost: seconds / training,
            quality_epsilon: 0.0,
        }
    }

    /// Each site's reputation from its `records` (a site without one was
    /// never asked: reliability 0), and `value` shared out by positive
    /// totals (nothing to anyone where no total is positive).
    pub fn with_reputation(
        mut self,
        records: &BTreeMap<String, SiteRecord>,
        quality_epsilon: f64,
        value: Option<f64>,
    ) -> ContributionsReport {
        let positive: f64 = self.sites.iter().map(|s| s.total.max(0.0)).sum();
        let [wa, wr, wq] = REPUTATION_WEIGHTS;
        let totals: Vec<f64> = self.sites.iter().map(|s| s.total).collect();
        for (s, score) in self.sites.iter_mut().zip(attribution_scores(&totals)) {
            let record = records.get(&s.name).copied().unwrap_or_default();
            s.reliability = f64::from(record.counted) / f64::from(record.asked.max(1));
            s.quality = record.quality;
            s.reputation = match s.quality {
                Some(q) => wa * score + wr * s.reliability + wq * q,
                // The weights of what there is, rescaled to add up to 1.
                None => (wa * score + wr * s.reliability) / (wa + wr),
            };
            s.credits = value.map(|v| {
                if positive > 0.0 {
                    v * s.total.max(0.0) / positive
                } else {
                    0.0
                }
            });
        }
        self.quality_epsilon = quality_epsilon;
        self
    }

    /// The sites ranked in the bottom `fraction` by reputation.
    pub fn bottom_by_reputation(&self, fraction: f64) -> Vec<&str> {
        let mut sites: Vec<&SiteContribution> = self.sites.iter().collect();
        sites.sort_by(|a, b| {
            a.reputation
                .total_cmp(&b.reputation)
                .then(b.name.cmp(&a.name))
        });
        let n = (sites.len() as f64 * fraction.clamp(0.0, 1.0)).floor() as usize;
        sites[..n].iter().map(|s| s.name.as_str()).collect()
    }

    /// One line for a terminal: the method, the first and last three
    /// sites, and the cost.
    pub fn summary_line(&self) -> String {
        let show = |s: &[SiteContribution]| {
            s.iter()
                .map(|s| format!("{} {:.4}", s.name, s.total))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let n = self.sites.len();
        let (top, bottom) = if n <= 6 {
            (show(&self.sites), String::new())
        } else {
            (
                show(&self.sites[..3]),
                format!(" ... {}", show(&self.sites[n - 3..])),
            )
        };
        format!(
            "contributions ({} {}, {} rounds, {:.1}% of the rounds' time): {top}{bottom}",
            self.method,
            self.utility,
            self.rounds.len(),
            100.0 * self.cost
        )
    }

    /// The sites ranked in the bottom `fraction` (by total).
    pub fn bottom(&self, fraction: f64) -> Vec<&str> {
        let n = (self.sites.len() as f64 * fraction.clamp(0.0, 1.0)).floor() as usize;
        self.sites[self.sites.len() - n..]
            .iter()
            .map(|s| s.name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_each_sites_rounds_and_rank_them() {
        let round = |r: u32, values: &[(&str, f64)]| RoundContribution {
            round: r,
            gain: values.iter().map(|v| v.1).sum(),
            values: values.iter().map(|&(n, v)| (n.to_string(), v)).collect(),
            orders: 0,
            evaluations: 0,
            seconds: 0.5,
        };
        let report = ContributionsReport::of_rounds(
            "exact",
            "loss",
            &["a", "b", "c", "d"],
            vec![
                round(1, &[("a", 0.1), ("b", 0.3)]),
                round(2, &[("a", 0.25), ("b", -0.2), ("c", 0.01)]),
            ],
            3.0,
        );
        let got: Vec<(&str, f64, u32, usize)> = report
            .sites
            .iter()
            .map(|s| (s.name.as_str(), s.total, s.rounds, s.rank))
            .collect();
        assert_eq!(got[0], ("a", 0.35, 2, 1));
        assert_eq!(got[1].0, "b");
        assert!((got[1].1 - 0.1).abs() < 1e-12);
        assert_eq!(got[2], ("c", 0.01, 1, 3));
        assert_eq!(got[3], ("d", 0.0, 0, 4));
        assert_eq!(report.seconds, 1.0);
        assert_eq!(report.cost, 0.5);
        assert_eq!(report.bottom(0.25), vec!["d"]);
        assert_eq!(report.bottom(0.5), vec!["c", "d"]);
        assert!(report.bottom(7.0).len() == 4 && report.bottom(-1.0).is_empty());
        let record = |asked, counted, quality| SiteRecord {
            asked,
            counted,
            quality: Some(quality),
        };
        let records = [
            ("a", record(2, 2, 0.5)),
            ("b", record(2, 1, 1.0)),
            ("c", record(4, 1, 0.0)),
        ]
        .into_iter()
        .map(|(n, r)| (n.to_string(), r))
        .collect();
        let report = report.with_reputation(&records, 1.0, Some(92.0));
        let by_name = |n: &str| report.sites.iter().find(|s| s.name == n).unwrap();
        // Totals 0.35, 0.1, 0.01, 0: median 0.055, absolute deviations
        // 0.295, 0.045, 0.045, 0.055, their median 0.05.
        let score = |t: f64| 1.0 / (1.0 + (-(t - 0.055) / (1.4826 * 0.05)).exp());
        // a: always counted, quality 0.5.
        let a = 0.6 * score(0.35) + 0.25 + 0.15 * 0.5;
        assert!((by_name("a").reputation - a).abs() < 1e-12);
        // c: one of four rounds, quality 0.
        let c = 0.6 * score(0.01) + 0.25 / 4.0;
        assert!((by_name("c").reputation - c).abs() < 1e-12);
        // d: never asked, no quality: rescaled.
        assert!((by_name("d").reputation - 0.6 * score(0.0) / 0.85).abs() < 1e-12);
        // Credits by positive totals: 0.35, 0.1, 0.01 of 0.46.
        assert!((by_name("a").credits.unwrap() - 70.0).abs() < 1e-9);
        assert!((by_name("c").credits.unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(by_name("d").credits, Some(0.0));
        assert_eq!(report.bottom_by_reputation(0.25), vec!["d"]);
        // Equal totals score alike.
        let tied = ContributionsReport::of_rounds(
            "exact",
            "loss",
            &["a", "b", "c"],
            vec![round(1, &[("a", 0.5)])],
            1.0,
        )
        .with_reputation(&BTreeMap::new(), 1.0, None);
        let by = |n: &str| tied.sites.iter().find(|s| s.name == n).unwrap().reputation;
        assert_eq!(by("b"), by("c"));
        // No quality released: attribution and reliability, their weights
        // rescaled to add up to 1. Totals 0.5, 0, 0: median 0, absolute
        // deviations' median 0, so the spread is 1.2533 x their mean (1/6).
        let score = 1.0 / (1.0 + (-0.5f64 / (1.2533 / 6.0)).exp());
        assert!((by("b") - 0.6 * 0.5 / 0.85).abs() < 1e-12);
        assert!((by("a") - 0.6 * score / 0.85).abs() < 1e-12);
    }

    #[test]
    fn attribution_scores_keep_the_gap_that_a_place_drops() {
        // 37 honest sites spread over 0.01..0.37, and 10 that set the
        // model back: however far back, the honest sites' scores are the
        // same (median and median deviation see only how many are below),
        // and the attackers' are near 0, far under the lowest honest one.
        let honest: Vec<f64> = (1..=37).map(|i| f64::from(i) / 100.0).collect();
        let with = |bad: f64| {
            let mut t = honest.clone();
            t.extend(std::iter::repeat_n(bad, 10));
            attribution_scores(&t)
        };
        let (near, far) = (with(-0.1), with(-1e12));
        assert_eq!(near[..37], far[..37]);
        // Median of the 47: the 24th smallest, 0.14; deviations' median
        // 0.12 (by hand: 23 honest deviations are at most 0.11, then 0.12
        // twice, and the 10 attackers' are above every honest one).
        let spread: f64 = 1.4826 * 0.12;
        let low = 1.0 / (1.0 + ((0.14 - 0.01) / spread).exp());
        assert!((far[0] - low).abs() < 1e-12, "{} vs {low}", far[0]);
        assert!(
            near[37] < 0.21 && far[37] < 1e-300 && low > 0.32,
            "{near:?}"
        );
        // A place would give the lowest honest site 10/46 and the highest
        // attacker 9/46; the score gives them 0.33, and 0.21 (near) or 0.
        // Every total alike: 0.5 each; none: none.
        assert_eq!(attribution_scores(&[2.0; 5]), vec![0.5; 5]);
        assert_eq!(attribution_scores(&[7.0]), vec![0.5]);
        assert!(attribution_scores(&[]).is_empty());
        // Over half at one total: the mean deviation stands in.
        let s = attribution_scores(&[0.0, 0.0, 0.0, 1.0]);
        let top = 1.0 / (1.0 + (-1.0f64 / (1.2533 * 0.25)).exp());
        assert!(s[0] == 0.5 && (s[3] - top).abs() < 1e-12, "{s:?}");
        // A total that is no number scores 0 and moves no one else.
        let s = attribution_scores(&[0.0, 0.0, 0.0, 1.0, f64::NAN, f64::INFINITY]);
        assert_eq!(s[4..], [0.0, 0.0]);
        assert!(s[0] == 0.5 && (s[3] - top).abs() < 1e-12, "{s:?}");
    }
}
