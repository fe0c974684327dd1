//! The federation's target schema: what each of the plan's columns means,
//! written once by the people who agree the plan (a data dictionary), and
//! public to every site. Harmonization matches a site's own columns to it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_data::mapping::{canonical_unit, units};

use crate::AnalyticsError;

/// The most columns, and levels of one column, a target schema may have.
pub const MAX_COLUMNS: usize = 4096;
const MAX_LEVELS: usize = 256;
const MAX_TEXT: usize = 512;

/// A target schema file (TOML).
///
/// ```toml
/// name = "uci-heart-disease"
/// version = 1
///
/// [[columns]]
/// name = "chol"
/// description = "serum cholesterol"
/// unit = "mg/dL"
/// substance = "cholesterol"      # where a conversion depends on it
/// decimals = 0                   # the precision values are kept at
/// typical = [100, 600]           # where nearly all values lie, in `unit`
///
/// [[columns]]
/// name = "sex"
/// levels = { "1" = "male", "0" = "female" }   # code = what it means
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSchema {
    /// The schema's name.
    pub name: String,
    /// Its version (from 1); a mapping names the version it maps to.
    pub version: u32,
    /// The columns.
    pub columns: Vec<TargetColumn>,
    /// How each version changed the one before (oldest first), so that a
    /// site on an older version can join through a mapping
    /// ([`TargetSchema::upgrade`]).
    #[serde(default)]
    pub history: Vec<Change>,
}

/// What one version changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// The version this change made (from 2).
    pub version: u32,
    /// Columns renamed: the old name = the new name.
    #[serde(default)]
    pub renamed: BTreeMap<String, String>,
    /// Columns new in this version.
    #[serde(default)]
    pub added: Vec<String>,
}

/// One column of the target schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetColumn {
    /// The plan's name of the column.
    pub name: String,
    /// What it is, in words (a data dictionary's line); compared with the
    /// sites' column names like the name itself.
    #[serde(default)]
    pub description: Option<String>,
    /// Other names it goes by.
    #[serde(default)]
    pub synonyms: Vec<String>,
    /// Its unit (from the unit table where a conversion may be needed).
    #[serde(default)]
    pub unit: Option<String>,
    /// The substance measured, where a unit conversion depends on it.
    #[serde(default)]
    pub substance: Option<String>,
    /// Decimal places values are kept at (a converted value is rounded).
    #[serde(default)]
    pub decimals: Option<u32>,
    /// Where nearly all values lie, in `unit` (declared, never the data's).
    #[serde(default)]
    pub typical: Option<[f64; 2]>,
    /// For an age in years: the year it is counted to, so that a site
    /// keeping birth years can derive it.
    #[serde(default)]
    pub as_of: Option<i32>,
    /// A coded column's codes and what each means.
    #[serde(default)]
    pub levels: BTreeMap<String, String>,
}

impl TargetSchema {
    /// Parses and checks a target schema.
    pub fn parse(text: &str) -> Result<TargetSchema, AnalyticsError> {
        let schema: TargetSchema = toml::from_str(text)
            .map_err(|e| AnalyticsError::Harmonize(format!("target schema: {e}")))?;
        schema.check()?;
        Ok(schema)
    }

    /// Refuses what harmonization could not use.
    pub fn check(&self) -> Result<(), AnalyticsError> {
        let bad = |m: String| Err(AnalyticsError::Harmonize(format!("target schema: {m}")));
        if self.name.trim().is_empty()
            || self.name.len() > 200
            || self.name.chars().any(char::is_control)
        {
            return bad(
                "its name is empty, longer than 200 bytes or has control characters".into(),
            );
        }
        if self.version == 0 {
            return bad("version counts from 1".into());
        }
        if self.columns.is_empty() || self.columns.len() > MAX_COLUMNS {
            return bad(format!(
                "has {} columns; from 1 to {MAX_COLUMNS} are allowed",
                self.columns.len()
            ));
        }
        let mut previous = 1;
        for change in &self.history {
            let names = change
                .renamed
                .iter()
                .flat_map(|(a, b)| [a, b])
                .chain(&change.added);
            for n in names {
                if n.trim().is_empty() || n.len() > MAX_TEXT || n.chars().any(char::is_control) {
                    return bad(format!(
                        "history: version {}: a name is empty, longer than {MAX_TEXT} bytes or \
                         has control characters",
                        change.version
                    ));
                }
            }
            let mut new: Vec<&String> = change.renamed.values().chain(&change.added).collect();
            new.sort();
            if new.windows(2).any(|w| w[0] == w[1]) {
                return bad(format!(
                    "history: version {}: a name is renamed to twice, or both renamed to and \
                     added",
                    change.version
                ));
            }
            if change.version <= previous || change.version > self.version {
                return bad(format!(
                    "history: version {} follows {previous} and is at most the schema's {}; list \
                     the changes oldest first, one per version",
                    change.version, self.version
                ));
            }
            previous = change.version;
        }
        let mut seen = std::collections::BTreeSet::new();
        let known = units();
        for c in &self.columns {
            let name = tessera_core::shown(&c.name, 80);
            if c.name.trim().is_empty() || !seen.insert(c.name.as_str()) {
                return bad(format!("column '{name}' is empty or named twice"));
            }
            let texts = std::iter::once(&c.name)
                .chain(&c.description)
                .chain(&c.synonyms)
                .chain(c.levels.keys())
                .chain(c.levels.values());
            for t in texts {
                if t.len() > MAX_TEXT || t.trim().is_empty() || t.chars().any(char::is_control) {
                    return bad(format!(
                        "column '{name}': a name, description, synonym or level is empty, \
                         longer than {MAX_TEXT} bytes or has control characters"
                    ));
                }
            }
            if c.decimals.is_some_and(|d| d > 12) {
                return bad(format!("column '{name}': decimals is at most 12"));
            }
            if c.levels.len() > MAX_LEVELS {
                return bad(format!(
                    "column '{name}' has {} levels; at most {MAX_LEVELS}",
                    c.levels.len()
                ));
            }
            if let Some([lo, hi]) = c.typical
                && !(lo.is_finite() && hi.is_finite() && lo < hi)
            {
                return bad(format!(
                    "column '{name}': typical [{lo}, {hi}] is not a finite range"
                ));
            }
            if let Some(unit) = &c.unit {
                let canonical = canonical_unit(unit);
                if c.typical.is_none() && known.contains(&canonical.as_str()) {
                    return bad(format!(
                        "column '{name}' is in {canonical}, a unit others convert from: give \
                         its typical range, which is how a site's unit is told"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&TargetColumn> {
        self.columns.iter().find(|c| c.name == name)
    }
}
