//! Feature flags (`[[features]]`): a feature of the plan turned on for a
//! named cohort of sites first, while every other site runs without it.
//! A federation tries a new protocol feature on a few willing sites,
//! watches it, then widens the cohort (or removes the flag: on for all).
//!
//! ```toml
//! [compression]
//! upload = "topk:0.1+q8"
//!
//! [[features]]
//! name = "compression.upload"
//! sites = ["cleveland", "hungarian"]
//! ```
//!
//! The flag is part of the plan, so the simulation and the deployment of
//! one plan give the same sites the feature, and a site outside the cohort
//! is not asked for the feature's capabilities at its join. Every site
//! needs `feature-flags` (1.21) to read the plan, and the codecs date from
//! 1.2: today a flag gates what sites do, not which builds may join.

use serde::{Deserialize, Serialize};
use tessera_compress::{Codec, CompressionConfig};

use crate::{Conflict, Plan, TopologyKind};

/// The features a flag can name, each with what it turns on.
pub const FLAGGABLE: &[(&str, &str)] = &[(
    "compression.upload",
    "the upload codec of [compression] (upload, and adaptive): sites outside the cohort send \
     their updates whole",
)];

/// The most sites one flag names.
const MAX_COHORT: usize = 100_000;
/// The most conflicts reported about one flag's sites.
const MAX_SITE_CONFLICTS: usize = 10;

/// One feature flag: `name` is on for `sites` only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureFlag {
    /// The feature (one of [`FLAGGABLE`]).
    pub name: String,
    /// The cohort: the sites it is on for.
    pub sites: Vec<String>,
}

impl Plan {
    /// Whether feature `name` is on at `site`: a feature no flag names is
    /// on at every site.
    pub fn feature_on(&self, name: &str, site: &str) -> bool {
        self.features
            .iter()
            .find(|f| f.name == name)
            .is_none_or(|f| f.sites.iter().any(|s| s == site))
    }

    /// The compression `site` runs with: the plan's, without its upload
    /// codec where the `compression.upload` flag leaves the site out.
    pub fn compression_for(&self, site: &str) -> CompressionConfig {
        if self.feature_on("compression.upload", site) {
            self.compression.clone()
        } else {
            CompressionConfig {
                upload: Codec::NONE,
                adaptive: None,
                ..self.compression.clone()
            }
        }
    }

    /// Each feature flag's cohort names only sites of `sites` (the sites
    /// the data has): a misspelt name would leave the feature off there
    /// without a word.
    pub fn check_feature_sites<'a>(
        &self,
        sites: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), crate::PlanError> {
        if self.features.is_empty() {
            return Ok(());
        }
        let names: std::collections::BTreeSet<&str> = sites.into_iter().collect();
        for flag in &self.features {
            if let Some(site) = flag.sites.iter().find(|s| !names.contains(s.as_str())) {
                return Err(crate::PlanError::Invalid(format!(
                    "feature flag '{}' names site '{}', which the data does not have",
                    tessera_core::shown(&flag.name, 64),
                    tessera_core::shown(site, 64)
                )));
            }
        }
        Ok(())
    }

    /// Each flag's problems: an unknown feature, a feature named twice, a
    /// cohort empty, too large, naming a site twice or a site the plan
    /// does not have (where the plan's sites are known: listed, synthetic
    /// or partitioned), a feature the plan does not use, or one every site
    /// must share. At most [`MAX_SITE_CONFLICTS`] about a flag's sites.
    pub(crate) fn feature_conflicts(&self) -> Vec<Conflict> {
        let mut out = Vec::new();
        let mut push = |reason: String| out.push(Conflict::new(&["features"], reason));
        if self.features.is_empty() {
            return out;
        }
        let files: std::collections::BTreeSet<&str> =
            self.data.sites.iter().map(|s| s.name.as_str()).collect();
        let mut names = std::collections::BTreeSet::new();
        for flag in &self.features {
            let name = tessera_core::shown(&flag.name, 64);
            if !FLAGGABLE.iter().any(|(known, _)| *known == flag.name) {
                let known: Vec<&str> = FLAGGABLE.iter().map(|(k, _)| *k).collect();
                push(format!(
                    "features: no feature '{name}' can be flagged (known: {})",
                    known.join(", ")
                ));
                continue;
            }
            if !names.insert(flag.name.as_str()) {
                push(format!("features: '{name}' is flagged twice"));
            }
            if flag.sites.is_empty() || flag.sites.len() > MAX_COHORT {
                push(format!(
                    "features: '{name}' names {} sites (1 to {MAX_COHORT})",
                    flag.sites.len()
                ));
            } else {
                let mut seen = std::collections::BTreeSet::new();
                let mut problems = Vec::new();
                for site in &flag.sites {
                    let shown = tessera_core::shown(site, 64);
                    if !seen.insert(site.as_str()) {
                        problems.push(format!("features: '{name}' names site '{shown}' twice"));
                    } else if self.site_listed(&files, site) == Some(false) {
                        problems.push(format!(
                            "features: '{name}' names site '{shown}', which is not among the \
                             plan's sites"
                        ));
                    }
                }
                let more = problems.len().saturating_sub(MAX_SITE_CONFLICTS);
                for problem in problems.into_iter().take(MAX_SITE_CONFLICTS) {
                    push(problem);
                }
                if more > 0 {
                    push(format!("features: '{name}': {more} more such sites"));
                }
            }
            let unused = self.compression.upload.is_identity()
                && self
                    .compression
                    .adaptive
                    .as_ref()
                    .is_none_or(|a| a.ladder.iter().all(|c| c.is_identity()));
            if unused {
                push(format!(
                    "features: '{name}' is flagged, and the plan has no upload codec \
                     ([compression] upload, or an adaptive ladder with one): there is nothing \
                     to turn on"
                ));
            }
            if self.secure_aggregation.enabled {
                push(format!(
                    "features: '{name}' gives sites different upload codecs, and secure \
                     aggregation masks every site's update alike: flag it without \
                     secure_aggregation"
                ));
            }
            if self.topology.kind != TopologyKind::Flat {
                push(format!(
                    "features: '{name}' is flagged on a plan whose topology is not flat: \
                     feature flags are for one coordinator and its sites"
                ));
            }
        }
        out
    }

    /// Whether the plan has a site named `site` (`None`: its sites are
    /// named by the data, a site column or an external learner's), read
    /// without listing a synthetic or partitioned plan's sites, which may
    /// be many. `files`: the names of the plan's site files.
    fn site_listed(&self, files: &std::collections::BTreeSet<&str>, site: &str) -> Option<bool> {
        if !files.is_empty() {
            return Some(files.contains(site));
        }
        // `siteK`, K from 0 (synthetic); `site-KK`, K from 1, zero-padded
        // to the digits of the count and at least 2 (partitioned).
        let number = |digits: &str| {
            digits
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| digits.parse::<u64>().ok())
                .flatten()
        };
        if let Some(synthetic) = &self.data.synthetic {
            let k = site
                .strip_prefix("site")
                .filter(|k| k.len() == 1 || !k.starts_with('0'))
                .and_then(number);
            return Some(k.is_some_and(|k| k < synthetic.sites as u64));
        }
        let partition = self.data.partition.as_ref()?;
        let width = partition.sites.to_string().len().max(2);
        let k = site
            .strip_prefix("site-")
            .filter(|k| k.len() == width)
            .and_then(number);
        Some(k.is_some_and(|k| (1..=partition.sites as u64).contains(&k)))
    }
}
