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
//! is not asked for the feature's capabilities at its join.

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

    /// Each flag's problems: an unknown feature, a feature named twice, a
    /// cohort empty or naming a site twice or a site the plan does not
    /// list, a feature the plan does not use, or one every site must share.
    pub(crate) fn feature_conflicts(&self) -> Vec<Conflict> {
        let mut out = Vec::new();
        let mut push = |reason: String| out.push(Conflict::new(&["features"], reason));
        if self.features.is_empty() {
            return out;
        }
        // Whether the plan lists `site` (`None`: the plan names no sites);
        // read without listing a synthetic plan's sites, which may be many.
        let listed = |site: &str| -> Option<bool> {
            if !self.data.sites.is_empty() {
                return Some(self.data.sites.iter().any(|s| s.name == site));
            }
            let synthetic = self.data.synthetic.as_ref()?;
            Some(
                site.strip_prefix("site")
                    .filter(|k| k.bytes().all(|b| b.is_ascii_digit()))
                    .filter(|k| k.len() == 1 || !k.starts_with('0'))
                    .and_then(|k| k.parse::<u64>().ok())
                    .is_some_and(|k| k < synthetic.sites as u64),
            )
        };
        let mut names = std::collections::BTreeSet::new();
        for flag in &self.features {
            let name = tessera_core::one_line(&flag.name);
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
            }
            let mut seen = std::collections::BTreeSet::new();
            for site in &flag.sites {
                let shown = tessera_core::one_line(site);
                if !seen.insert(site.as_str()) {
                    push(format!("features: '{name}' names site '{shown}' twice"));
                } else if listed(site) == Some(false) {
                    push(format!(
                        "features: '{name}' names site '{shown}', which is not among the \
                         plan's sites"
                    ));
                }
            }
            let unused =
                self.compression.upload.is_identity() && self.compression.adaptive.is_none();
            if unused {
                push(format!(
                    "features: '{name}' is flagged, and the plan has no upload codec \
                     ([compression] upload or adaptive): there is nothing to turn on"
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
}
