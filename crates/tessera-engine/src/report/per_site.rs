//! A report whose size does not grow with the site count: what the report
//! holds per site (its data summary, its final metrics, its baselines, its
//! bytes sent, its traffic in each round) moves to a file of its own, one JSON line a site,
//! and the report keeps a summary ([`PerSiteSummary`]) with the file's
//! name. The CLI splits a report past [`SPLIT_ABOVE`] sites (or when told).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_data::SiteSummary;

use super::{RunReport, SiteMetrics, SiteTraffic};
use crate::baseline::BaselineChoice;

/// Above this many sites the CLI writes the per-site figures apart.
pub const SPLIT_ABOVE: usize = 1000;

/// The sites' training failures a round keeps in a split report (the rest
/// are in the per-site file, each at its site).
pub const ERRORS_KEPT: usize = 10;

/// One site's line of the per-site file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SiteLine {
    /// The site.
    pub site: String,
    /// Its rows as read and split (`data` of the report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<SiteSummary>,
    /// The final global model on its test rows (`final_metrics.per_site`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_metrics: Option<SiteMetrics>,
    /// Its own model on its test rows (`baselines.local.per_site`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<SiteMetrics>,
    /// Its own model's mean accuracy over every site's test rows
    /// (`baselines.local.cross_site_mean_accuracy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_cross_site_mean_accuracy: Option<f64>,
    /// How its own model was chosen (`baselines.local.choices`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_choice: Option<BaselineChoice>,
    /// The pooled model on its test rows (`baselines.pooled.per_site`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooled: Option<SiteMetrics>,
    /// Bytes it sent over the run (`communication.bytes_up_per_site`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<u64>,
    /// Why its local training failed, in each round it did
    /// (`rounds[].site_errors`), by round.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<u32, String>,
    /// Its traffic in each round it had any (`rounds[].traffic`), by round.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub traffic: BTreeMap<u32, SiteTraffic>,
}

/// What the report keeps of the figures it wrote apart.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PerSiteSummary {
    /// The per-site file (JSON lines, one [`SiteLine`] a site, by name).
    pub file: String,
    /// Sites in it.
    pub sites: usize,
    /// Training and test rows over every site.
    pub train_rows: u64,
    /// Test rows over every site.
    pub test_rows: u64,
    /// The final model's accuracy over the sites that have one: the
    /// smallest, the 10th, 50th and 90th percentiles, the largest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_accuracy: Option<Spread>,
    /// Each site's own model's accuracy, so summarised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_accuracy: Option<Spread>,
    /// Per round, how many sites' local training failed (the report keeps
    /// the first few of each round's `site_errors`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub site_errors: BTreeMap<u32, usize>,
    /// Per round, how many sites had traffic (the bytes are the round's
    /// `bytes_up` and `bytes_down`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sites_with_traffic: BTreeMap<u32, usize>,
}

/// A distribution over sites, by nearest rank.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// The smallest.
    pub min: f64,
    /// 10th percentile.
    pub p10: f64,
    /// Median.
    pub median: f64,
    /// 90th percentile.
    pub p90: f64,
    /// The largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (NaN left out); `None` when there are none.
    pub fn of(values: impl Iterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Spread {
            min: v[0],
            p10: at(0.1),
            median: at(0.5),
            p90: at(0.9),
            max: v[v.len() - 1],
        })
    }
}

/// What a report holds per site, taken out of it
/// ([`RunReport::take_per_site`]) to be written apart and put back
/// ([`RunReport::put_per_site`]) as it was.
#[derive(Debug, Default)]
pub struct PerSiteParts {
    data: Vec<SiteSummary>,
    final_metrics: BTreeMap<String, SiteMetrics>,
    traffic: Vec<(u32, BTreeMap<String, SiteTraffic>)>,
    local: BTreeMap<String, SiteMetrics>,
    cross_site: BTreeMap<String, f64>,
    choices: BTreeMap<String, BaselineChoice>,
    pooled: BTreeMap<String, SiteMetrics>,
    bytes_up: BTreeMap<String, u64>,
    errors: Vec<(u32, Vec<String>)>,
}

/// The site a training failure names (`site 'NAME': why`), and why.
fn failed_site(message: &str) -> Option<(&str, &str)> {
    let rest = message.strip_prefix("site '")?;
    let (site, why) = rest.split_once("': ")?;
    Some((site, why))
}

impl RunReport {
    /// Takes what the report holds per site out of it (its `data`, its
    /// final metrics per site, the baselines' per-site maps, each site's
    /// bytes sent, each round's `traffic`), leaving those empty.
    pub fn take_per_site(&mut self) -> PerSiteParts {
        let (mut local, mut cross_site, mut choices, mut pooled) = Default::default();
        if let Some(b) = &mut self.baselines {
            local = std::mem::take(&mut b.local.per_site);
            cross_site = std::mem::take(&mut b.local.cross_site_mean_accuracy);
            choices = std::mem::take(&mut b.local.choices);
            if let Some(p) = &mut b.pooled {
                pooled = std::mem::take(&mut p.per_site);
            }
        }
        PerSiteParts {
            data: std::mem::take(&mut self.data),
            final_metrics: std::mem::take(&mut self.final_metrics.per_site),
            traffic: self
                .rounds
                .iter_mut()
                .map(|r| (r.round, std::mem::take(&mut r.traffic)))
                .collect(),
            local,
            cross_site,
            choices,
            pooled,
            bytes_up: std::mem::take(&mut self.communication.bytes_up_per_site),
            // The report keeps each round's first few.
            errors: self
                .rounds
                .iter_mut()
                .map(|r| {
                    let kept = r.site_errors.iter().take(ERRORS_KEPT).cloned().collect();
                    (r.round, std::mem::replace(&mut r.site_errors, kept))
                })
                .collect(),
        }
    }

    /// Puts back what [`RunReport::take_per_site`] took: the report is as
    /// it was.
    pub fn put_per_site(&mut self, parts: PerSiteParts) {
        self.data = parts.data;
        self.final_metrics.per_site = parts.final_metrics;
        self.communication.bytes_up_per_site = parts.bytes_up;
        for (round, (_, traffic)) in self.rounds.iter_mut().zip(parts.traffic) {
            round.traffic = traffic;
        }
        for (round, (_, errors)) in self.rounds.iter_mut().zip(parts.errors) {
            round.site_errors = errors;
        }
        if let Some(b) = &mut self.baselines {
            b.local.per_site = parts.local;
            b.local.cross_site_mean_accuracy = parts.cross_site;
            b.local.choices = parts.choices;
            if let Some(p) = &mut b.pooled {
                p.per_site = parts.pooled;
            }
        }
    }
}

impl PerSiteParts {
    /// The report's summary of these figures, written to `file`.
    pub fn summary(&self, file: &str) -> PerSiteSummary {
        PerSiteSummary {
            file: file.to_string(),
            sites: self.sites().len(),
            train_rows: self.data.iter().map(|d| d.n_train as u64).sum(),
            test_rows: self.data.iter().map(|d| d.n_test as u64).sum(),
            final_accuracy: Spread::of(self.final_metrics.values().filter_map(|m| m.accuracy)),
            local_accuracy: Spread::of(self.local.values().filter_map(|m| m.accuracy)),
            site_errors: self
                .errors
                .iter()
                .filter(|(_, e)| !e.is_empty())
                .map(|(round, e)| (*round, e.len()))
                .collect(),
            sites_with_traffic: self
                .traffic
                .iter()
                .filter(|(_, t)| !t.is_empty())
                .map(|(round, t)| (*round, t.len()))
                .collect(),
        }
    }

    /// Every site named anywhere in these figures, sorted.
    fn sites(&self) -> std::collections::BTreeSet<&str> {
        let mut sites: std::collections::BTreeSet<&str> =
            self.data.iter().map(|d| d.site.as_str()).collect();
        sites.extend(self.final_metrics.keys().map(String::as_str));
        for (_, t) in &self.traffic {
            sites.extend(t.keys().map(String::as_str));
        }
        sites.extend(self.local.keys().map(String::as_str));
        sites.extend(self.cross_site.keys().map(String::as_str));
        sites.extend(self.choices.keys().map(String::as_str));
        sites.extend(self.pooled.keys().map(String::as_str));
        sites.extend(self.bytes_up.keys().map(String::as_str));
        for (_, errors) in &self.errors {
            sites.extend(errors.iter().filter_map(|e| failed_site(e)).map(|(s, _)| s));
        }
        sites
    }

    /// One line a site, by name.
    pub fn lines(&self) -> impl Iterator<Item = SiteLine> + '_ {
        let data: BTreeMap<&str, &SiteSummary> =
            self.data.iter().map(|d| (d.site.as_str(), d)).collect();
        let mut errors: BTreeMap<&str, BTreeMap<u32, String>> = BTreeMap::new();
        for (round, messages) in &self.errors {
            for (site, why) in messages.iter().filter_map(|e| failed_site(e)) {
                errors
                    .entry(site)
                    .or_default()
                    .insert(*round, why.to_string());
            }
        }
        self.sites().into_iter().map(move |site| SiteLine {
            site: site.to_string(),
            data: data.get(site).map(|d| (*d).clone()),
            final_metrics: self.final_metrics.get(site).cloned(),
            local: self.local.get(site).cloned(),
            local_cross_site_mean_accuracy: self.cross_site.get(site).copied(),
            local_choice: self.choices.get(site).cloned(),
            pooled: self.pooled.get(site).cloned(),
            bytes_up: self.bytes_up.get(site).copied(),
            errors: errors.get(site).cloned().unwrap_or_default(),
            traffic: self
                .traffic
                .iter()
                .filter_map(|(round, t)| t.get(site).map(|x| (*round, x.clone())))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_its_site() {
        assert_eq!(
            failed_site("site 'st. mary's': local training diverged: loss NaN"),
            Some(("st. mary's", "local training diverged: loss NaN"))
        );
        assert_eq!(failed_site("something else"), None);
    }

    #[test]
    fn spreads_by_nearest_rank() {
        let s = Spread::of((1..=10).map(f64::from)).unwrap();
        assert_eq!(
            (s.min, s.p10, s.median, s.p90, s.max),
            (1.0, 1.0, 5.0, 9.0, 10.0)
        );
        assert_eq!(Spread::of([f64::NAN].into_iter()), None);
        let one = Spread::of([0.5].into_iter()).unwrap();
        assert_eq!((one.min, one.median, one.max), (0.5, 0.5, 0.5));
    }
}
