//! The plan's secure joins (`[[analytics.joins]]`): which sites may match
//! their records on an identifier column, and what a join reveals.
//!
//! ```toml
//! [[analytics.joins]]
//! name = "shared-patients"
//! sites = ["north", "south"]   # two sites (several: not yet in deployment)
//! identifier = "patient_id"    # must be `type = "ignore"` in [data.schema]
//! value = "length_of_stay"     # a numeric column of both sites
//! reveal = "count_mean"        # the count of shared identifiers, and the
//!                              # mean of `value` at each site over them;
//!                              # "members": each site learns which of its
//!                              # identifiers are shared (no value), or
//!                              # "members_first" (the first site only),
//!                              # "count" (the number only)
//! value_bounds = [0, 365]      # values are clamped here (never from the data)
//! decimals = 2                 # fixed point: value resolution 10^-decimals
//! max_elements = 100000        # the most identifiers either site may bring
//! min_elements = 10            # the fewest: a smaller set is refused, a smaller intersection releases nothing
//! ```
//!
//! A join runs only between deployed sites that the plan lists and that
//! consent locally (`tessera participant --consent-join NAME`). The result
//! is exact (no noise): an unprotected release, recorded as such.

use serde::{Deserialize, Serialize};

/// The most identifiers a deployed join may bring per site: the largest
/// message of a run (about 128 bytes per element) must fit the transport's
/// 16 MiB.
pub const MAX_JOIN_ELEMENTS: usize = 100_000;

/// The longest join name, in bytes.
pub const MAX_JOIN_NAME: usize = 64;

/// What a join reveals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinReveal {
    /// The number of shared identifiers and, for each site, the mean of
    /// its `value` over them (intersection-sum both ways); nothing else.
    CountMean,
    /// Each site learns which of its own identifiers the other holds (and
    /// so their number): ECDH-PSI, mode both.
    Members,
    /// The first site of `sites` learns which of its identifiers the other
    /// holds; the other learns only the first's set size: ECDH-PSI,
    /// receiver-only.
    MembersFirst,
    /// Both sites learn only the number of shared identifiers: ECDH-PSI,
    /// cardinality mode.
    Count,
}

impl JoinReveal {
    /// The plan's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JoinReveal::CountMean => "count_mean",
            JoinReveal::Members => "members",
            JoinReveal::MembersFirst => "members_first",
            JoinReveal::Count => "count",
        }
    }

    /// Whether a `value` column is matched too (intersection-sum).
    pub fn has_value(self) -> bool {
        self == JoinReveal::CountMean
    }
}

/// One join the plan allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSpec {
    /// Its name (what sites consent to).
    pub name: String,
    /// The sites that match their records.
    pub sites: Vec<String>,
    /// The identifier column (never a training feature).
    pub identifier: String,
    /// The numeric column whose mean over the shared identifiers is
    /// revealed (`count_mean` only; empty for the other reveals).
    #[serde(default)]
    pub value: String,
    /// What the join reveals.
    #[serde(default = "default_reveal")]
    pub reveal: JoinReveal,
    /// Values are clamped to `[low, high]` (`count_mean` only).
    #[serde(default)]
    pub value_bounds: [f64; 2],
    /// Decimal places kept (fixed point).
    #[serde(default = "default_decimals")]
    pub decimals: u32,
    /// The most identifiers a site may bring.
    #[serde(default = "default_max_elements")]
    pub max_elements: usize,
    /// The fewest identifiers a site may bring, and the fewest shared ones
    /// for a result to be released (fewer: the sites release nothing).
    #[serde(default = "default_min_elements")]
    pub min_elements: usize,
}

fn default_reveal() -> JoinReveal {
    JoinReveal::CountMean
}

fn default_decimals() -> u32 {
    2
}

fn default_max_elements() -> usize {
    10_000
}

fn default_min_elements() -> usize {
    10
}

impl JoinSpec {
    /// `10^decimals`.
    pub fn scale(&self) -> f64 {
        10f64.powi(self.decimals.min(9) as i32)
    }

    /// The largest fixed-point value, `(high - low) 10^decimals` rounded.
    pub fn max_value(&self) -> u64 {
        let [low, high] = self.value_bounds;
        ((high - low) * self.scale())
            .round()
            .clamp(0.0, u64::MAX as f64) as u64
    }

    /// A value in fixed point: clamped to the bounds, shifted by the lower
    /// bound, scaled and rounded; `None` when it is not finite.
    pub fn fixed(&self, value: f64) -> Option<u64> {
        if !value.is_finite() {
            return None;
        }
        let [low, high] = self.value_bounds;
        let shifted = (value.clamp(low, high) - low) * self.scale();
        Some((shifted.round().max(0.0) as u64).min(self.max_value()))
    }

    /// The mean of values whose fixed-point sum over `count` identifiers is
    /// `sum` (`None` when none are shared).
    pub fn mean(&self, sum: u64, count: u64) -> Option<f64> {
        (count > 0).then(|| self.value_bounds[0] + sum as f64 / self.scale() / count as f64)
    }

    /// The spec's problems on its own, each naming its key.
    pub fn problems(&self, index: usize) -> Vec<String> {
        let key = format!("analytics.joins[{index}]");
        let mut out = Vec::new();
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_JOIN_NAME
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !name_ok {
            out.push(format!(
                "{key}.name '{}' must be 1 to {MAX_JOIN_NAME} letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        let mut sites = self.sites.clone();
        sites.sort();
        sites.dedup();
        if sites.len() != self.sites.len() {
            out.push(format!("{key}.sites names a site twice"));
        }
        if self.sites.len() != 2 {
            out.push(format!(
                "{key}.sites: a deployed join matches exactly two sites for now, got {} \
                 (joins of several sites are tessera-psi's `intersect_sites`, not yet deployed)",
                self.sites.len()
            ));
        }
        if self.identifier.is_empty() {
            out.push(format!("{key}: identifier names a column"));
        }
        if self.reveal.has_value() {
            if self.value.is_empty() {
                out.push(format!(
                    "{key}: reveal = \"count_mean\" needs value, a numeric column"
                ));
            }
            if self.identifier == self.value {
                out.push(format!(
                    "{key}: the identifier column cannot be the value column"
                ));
            }
            let [low, high] = self.value_bounds;
            if !(low.is_finite() && high.is_finite() && low < high && (high - low).is_finite()) {
                out.push(format!(
                    "{key}.value_bounds = [{low}, {high}]: the lower bound must be below the \
                     upper, both finite"
                ));
            }
        } else if !self.value.is_empty() || self.value_bounds != [0.0, 0.0] {
            out.push(format!(
                "{key}: value and value_bounds are for reveal = \"count_mean\"; reveal = \"{}\" \
                 matches identifiers only",
                self.reveal.as_str()
            ));
        }
        if self.decimals > 6 {
            out.push(format!(
                "{key}.decimals must be in 0..=6, got {}",
                self.decimals
            ));
        }
        if !(1..=MAX_JOIN_ELEMENTS).contains(&self.max_elements) {
            out.push(format!(
                "{key}.max_elements must be in 1..={MAX_JOIN_ELEMENTS}, got {}",
                self.max_elements
            ));
        }
        if self.min_elements > self.max_elements {
            out.push(format!(
                "{key}.min_elements {} exceeds max_elements {}",
                self.min_elements, self.max_elements
            ));
        }
        if out.is_empty() && self.reveal.has_value() {
            let product = self.max_elements as u128 * u128::from(self.max_value());
            if product > 1u128 << 40 {
                out.push(format!(
                    "{key}: max_elements x (high - low) x 10^decimals = {product} exceeds 2^40 \
                     (the sum a site can decrypt): narrow value_bounds, fewer decimals or fewer \
                     elements"
                ));
            }
        }
        out
    }
}

/// Problems of the joins together and against the data schema: names
/// unique, every site one of the plan's (when it names them), the
/// identifier column declared `type = "ignore"` (so it is never a training
/// feature), the value column not ignored nor the target.
pub fn join_problems(
    joins: &[JoinSpec],
    schema: &tessera_data::SchemaConfig,
    named_sites: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (i, join) in joins.iter().enumerate() {
        let key = format!("analytics.joins[{i}]");
        out.extend(join.problems(i));
        if !names.insert(join.name.as_str()) {
            out.push(format!("{key}.name '{}' is used twice", join.name));
        }
        if !named_sites.is_empty() {
            for site in &join.sites {
                if !named_sites.contains(site) {
                    out.push(format!(
                        "{key}.sites: '{site}' is not one of the plan's sites ({})",
                        named_sites.join(", ")
                    ));
                }
            }
        }
        let kind = |name: &str| {
            schema
                .columns
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.kind)
        };
        if kind(&join.identifier) != Some(tessera_data::ColumnKind::Ignore) {
            out.push(format!(
                "{key}.identifier '{}' must be declared in [data.schema] columns with \
                 type = \"ignore\", so that it is never a training feature",
                join.identifier
            ));
        }
        if !schema.header {
            out.push(format!(
                "{key}: a join reads its columns by name, so [data.schema] needs header = true"
            ));
        }
        if join.reveal.has_value()
            && (kind(&join.value) == Some(tessera_data::ColumnKind::Ignore)
                || kind(&join.value) == Some(tessera_data::ColumnKind::Categorical))
        {
            out.push(format!(
                "{key}.value '{}' must be a numeric column",
                join.value
            ));
        }
        if (join.reveal.has_value() && join.value == schema.target)
            || join.identifier == schema.target
        {
            out.push(format!(
                "{key}: the target column '{}' cannot be joined on or revealed",
                schema.target
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JoinSpec {
        JoinSpec {
            name: "j".into(),
            sites: vec!["a".into(), "b".into()],
            identifier: "patient_id".into(),
            value: "x".into(),
            reveal: JoinReveal::CountMean,
            value_bounds: [0.0, 100.0],
            decimals: 2,
            max_elements: 1000,
            min_elements: 2,
        }
    }

    #[test]
    fn fixed_point_clamps_and_the_mean_inverts_it() {
        let s = spec();
        assert_eq!(s.fixed(12.345), Some(1235));
        assert_eq!(s.fixed(-3.0), Some(0));
        assert_eq!(s.fixed(1e9), Some(10_000));
        assert_eq!(s.fixed(f64::NAN), None);
        assert_eq!(s.mean(3000, 2), Some(15.0));
        assert_eq!(s.mean(0, 0), None);
        assert!(s.problems(0).is_empty());
    }

    #[test]
    fn bad_specs_are_refused_naming_the_key() {
        let mut s = spec();
        s.sites = vec!["a".into()];
        s.max_elements = MAX_JOIN_ELEMENTS + 1;
        s.value_bounds = [1.0, 1.0];
        let problems = s.problems(3).join("\n");
        assert!(problems.contains("analytics.joins[3].sites"), "{problems}");
        assert!(problems.contains("max_elements"), "{problems}");
        assert!(problems.contains("value_bounds"), "{problems}");
    }

    /// The PSI reveals match identifiers only: a value is refused with
    /// them, and needed by `count_mean`.
    #[test]
    fn membership_reveals_take_no_value() {
        let mut s = spec();
        s.reveal = JoinReveal::Members;
        let problems = s.problems(0).join("\n");
        assert!(
            problems.contains("for reveal = \"count_mean\""),
            "{problems}"
        );
        s.value = String::new();
        s.value_bounds = [0.0, 0.0];
        for reveal in [
            JoinReveal::Members,
            JoinReveal::MembersFirst,
            JoinReveal::Count,
        ] {
            s.reveal = reveal;
            assert!(s.problems(0).is_empty(), "{:?}", s.problems(0));
        }
        s.reveal = JoinReveal::CountMean;
        let problems = s.problems(0).join("\n");
        assert!(problems.contains("needs value"), "{problems}");
    }
}
