//! Proposals: which of a site's columns is which of the target schema's,
//! and how its values become the target's, from the site's profile alone.
//!
//! Each pair of a target column and a site column is scored from two kinds
//! of evidence:
//! - **names**: the site's name against the target's name, description and
//!   synonyms ([`super::names::similarity`]); a birth year counts as an age
//!   where the target says the year ages are counted to;
//! - **values** (where the target declares what they look like): for a
//!   measurement, the share of the profile's noisy mass that falls in the
//!   target's typical range as it is, or after the unit conversion or
//!   derivation that fits best (a unit the name gives is taken as given);
//!   for a coded column, the share of the site's levels that recode to
//!   the target's codes by their labels and synonyms.
//!
//! The score is `0.7 names + 0.3 values` (names alone where the profile
//! shows no values), zero where the kinds cannot meet (text for a
//! measurement). Pairs are taken best first, each column once, while their
//! score is at least the threshold; a target column left over is reported
//! unmatched with its best candidates, never mapped silently.

use std::collections::BTreeMap;

use serde::Serialize;
use tessera_data::mapping::{Conversion, Derivation, Linear, Mapping, canonical_unit, conversion};

use super::names::{Words, is_birth_year, level_key, level_spellings, similarity, words};
use super::profile::{ColumnProfile, LevelRelease, MISSING_TOKENS, Profile, Spelling};
use super::target::{TargetColumn, TargetSchema};

/// Missing-value tokens every proposal has.
const ALWAYS_MISSING: &[&str] = &["", "?", "NA", "N/A", "NaN", "null", "NULL"];

/// The lowest score a proposal is made at.
pub const DEFAULT_THRESHOLD: f64 = 0.5;

/// How a site's values become the target's.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Transform {
    /// As they are.
    AsIs,
    /// A unit conversion.
    Convert {
        /// The site's unit.
        from: String,
    },
    /// `as_of - value` (an age from a birth year).
    YearsSince {
        /// The year.
        year: i32,
    },
    /// Levels recoded: the site's value = the target's code.
    Recode {
        /// The table.
        table: BTreeMap<String, String>,
    },
}

/// A proposed correspondence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Match {
    /// The target's column.
    pub target: String,
    /// The site's column.
    pub column: String,
    /// The combined score.
    pub score: f64,
    /// The name evidence.
    pub names: f64,
    /// The value evidence, where the profile and target give any.
    pub values: Option<f64>,
    /// How the values become the target's.
    pub transform: Transform,
    /// The evidence in words.
    pub evidence: String,
    /// Whether it may be proposed at all: not a coded column whose values
    /// are mostly not the target's codes (its codes may mean something
    /// else), nor text that mostly does not recode.
    pub proposable: bool,
}

/// A target column without a proposal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unmatched {
    /// The target's column.
    pub target: String,
    /// Its best candidates (site column, score), best first.
    pub candidates: Vec<(String, f64)>,
    /// The best candidate's evidence.
    pub evidence: Option<String>,
}

/// One site's proposal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Proposal {
    /// The site.
    pub site: String,
    /// The proposed mapping.
    pub mapping: Mapping,
    /// The correspondences, in the target's column order.
    pub matches: Vec<Match>,
    /// Target columns left unmatched.
    pub unmatched: Vec<Unmatched>,
    /// Site columns no target column took.
    pub unused: Vec<String>,
}

/// Scores one pair: `None` where the kinds cannot meet.
fn score(
    target: &TargetColumn,
    known: &[Words],
    column: &ColumnProfile,
    site: &Words,
    release: LevelRelease,
) -> Option<Match> {
    let mut names = known
        .iter()
        .map(|n| similarity(site, n))
        .fold(0.0, f64::max);
    let birth_year = target.as_of.is_some() && is_birth_year(site);
    if birth_year {
        names = names.max(0.9);
    }
    let (numeric, text) = (column.numeric_mass(), column.text_mass());
    let mut proposable = true;
    let (values, transform, evidence) = if !target.levels.is_empty() {
        if text > numeric {
            let (table, recoded) = recode(target, column, release);
            let share = (recoded / text).min(1.0);
            proposable = share >= 0.5;
            let evidence = format!(
                "{:.0}% of its text values recode to the target's codes{}",
                100.0 * share,
                if proposable {
                    ""
                } else {
                    ": too few to propose"
                }
            );
            (Some(share), Transform::Recode { table }, evidence)
        } else if numeric > 0.0 {
            let codes: Vec<f64> = target
                .levels
                .keys()
                .filter_map(|c| c.trim().parse().ok())
                .collect();
            let on: f64 = column
                .points
                .iter()
                .filter(|p| codes.contains(&p.value))
                .map(|p| p.count)
                .sum();
            // Against the exact values counted: other codes (1 and 2 for
            // sex) are exact values too; other numbers (a measurement)
            // count against where they outweigh them.
            let exact: f64 = column.points.iter().map(|p| p.count).sum();
            let other = numeric - exact;
            let share = if other > exact {
                0.0
            } else {
                (on / exact).min(1.0)
            };
            // Codes mean what the target says only where the values are
            // the target's codes: 1/2 for sex, 0-3 for chest pain are not.
            proposable = share >= 0.9;
            let evidence = format!(
                "{:.0}% of its numbers are the target's codes{}",
                100.0 * share,
                if proposable {
                    ", taken to mean the same"
                } else {
                    ": other codes, which may mean other things; map it by hand"
                }
            );
            (Some(share), Transform::AsIs, evidence)
        } else {
            (None, Transform::AsIs, "no values above the noise".into())
        }
    } else if text > numeric {
        return None;
    } else if numeric > 0.0 {
        let (share, transform, evidence) = measurement(target, column, &site.unit, birth_year);
        (share, transform, evidence)
    } else {
        (None, Transform::AsIs, "no values above the noise".into())
    };
    let score = match values {
        Some(v) => 0.7 * names + 0.3 * v,
        None => names,
    };
    Some(Match {
        target: target.name.clone(),
        column: column.name.clone(),
        score,
        names,
        values,
        transform,
        evidence,
        proposable,
    })
}

/// The share of `column`'s numbers inside `[lo, hi]` after `f`; bins ten
/// times wider than the range once mapped (a birth year's bin, 1000 to
/// 3162, as an age) tell nothing and are left out. `None`: no bin told.
fn inside(column: &ColumnProfile, lo: f64, hi: f64, f: &dyn Fn(f64) -> f64) -> Option<f64> {
    let (mut total, mut share) = (0.0, 0.0);
    for p in &column.points {
        total += p.count;
        if (lo..=hi).contains(&f(p.value)) {
            share += p.count;
        }
    }
    for b in &column.numbers {
        let (a, z) = b.range();
        let (a, z) = (f(a), f(z));
        let (a, z) = (a.min(z), a.max(z));
        let part = if a == z {
            f64::from(u8::from((lo..=hi).contains(&a)))
        } else if z.is_finite() && a.is_finite() {
            if z - a > 10.0 * (hi - lo) && a < hi && z > lo {
                continue;
            }
            ((z.min(hi) - a.max(lo)) / (z - a)).max(0.0)
        } else {
            0.0
        };
        total += b.count;
        share += part * b.count;
    }
    (total > 0.0).then(|| share / total)
}

/// A measurement's transform: as given by a unit in the name, an age from
/// a birth year, or the conversion whose values fit the typical range.
fn measurement(
    target: &TargetColumn,
    column: &ColumnProfile,
    hint: &Option<String>,
    birth_year: bool,
) -> (Option<f64>, Transform, String) {
    let unit = target.unit.as_deref().map(canonical_unit);
    let linear = |from: &str| {
        unit.as_deref()
            .and_then(|to| conversion(from, to, target.substance.as_deref()).ok())
    };
    let apply = |l: Linear| move |x: f64| l.scale * x + l.offset;
    let fit = |f: &dyn Fn(f64) -> f64| {
        target
            .typical
            .and_then(|[lo, hi]| inside(column, lo, hi, f))
    };
    let as_is = fit(&|x| x);
    let shown = |v: Option<f64>| {
        v.map_or_else(
            || "its values not checked (no typical range, or bins too coarse)".into(),
            |v| format!("{:.0}% in range", 100.0 * v),
        )
    };
    if let Some(year) = target.as_of
        && (birth_year || hint.as_deref() == Some("years") && as_is == Some(0.0))
    {
        let since = fit(&move |x| f64::from(year) - x);
        if birth_year || since.is_some_and(|s| s >= 0.5) {
            let evidence = format!("a birth year: {year} minus it, {}", shown(since));
            return (since, Transform::YearsSince { year }, evidence);
        }
    }
    if let (Some(h), Some(u)) = (hint, &unit) {
        if h == u {
            return (
                as_is,
                Transform::AsIs,
                format!("its name says {h}, {}", shown(as_is)),
            );
        }
        if let Some(l) = linear(h) {
            let v = fit(&apply(l));
            let evidence = format!("its name says {h}: converted to {u}, {}", shown(v));
            return (v, Transform::Convert { from: h.clone() }, evidence);
        }
    }
    let mut best = (
        as_is,
        Transform::AsIs,
        format!("as it is, {}", shown(as_is)),
    );
    if let (Some(u), Some(base)) = (&unit, as_is) {
        for from in tessera_data::mapping::units() {
            if from == u {
                continue;
            }
            let (Some(l), Some(current)) = (linear(from), best.0) else {
                continue;
            };
            let Some(v) = fit(&apply(l)) else { continue };
            if v >= 0.5 && v >= base + 0.25 && v > current {
                let evidence = format!(
                    "in {from} by its values: converted to {u}, {:.0}% in range against {:.0}% \
                     as it is",
                    100.0 * v,
                    100.0 * base
                );
                best = (Some(v), Transform::Convert { from: from.into() }, evidence);
            }
        }
    }
    best
}

/// The recoding of a text column to the target's codes, and the noisy
/// count of values it covers. A code whose label no released count shows
/// (rare, below the noise) gets its label and the label's synonyms in the
/// spellings the column's other values use, so that a rare level still
/// loads.
fn recode(
    target: &TargetColumn,
    column: &ColumnProfile,
    release: LevelRelease,
) -> (BTreeMap<String, String>, f64) {
    let code_of = |word: &str| {
        let key = level_key(word);
        target.levels.iter().find_map(|(code, label)| {
            let hit = level_key(code) == key
                || level_spellings(label).iter().any(|s| level_key(s) == key);
            hit.then(|| code.clone())
        })
    };
    let mut table = BTreeMap::new();
    let mut covered = 0.0;
    for w in &column.words {
        if let Some(code) = code_of(&w.word) {
            table.insert(w.spelling.spell(&w.word), code);
            covered += w.count;
        }
    }
    for l in &column.levels {
        // Released by name: recoded where its text is a label's. (A hash
        // cannot be a label's spelling: those are vocabulary words.)
        let found = match release {
            LevelRelease::Names => code_of(&l.level).map(|c| (l.level.clone(), c)),
            LevelRelease::Hashed | LevelRelease::None => None,
        };
        if let Some((level, code)) = found {
            table.insert(level, code);
            covered += l.count;
        }
    }
    // The spellings the column uses (all four where none shows).
    let mut seen: Vec<Spelling> = column.words.iter().map(|w| w.spelling).collect();
    seen.sort();
    seen.dedup();
    if seen.is_empty() {
        seen = Spelling::ALL.to_vec();
    }
    for (code, label) in &target.levels {
        if !table.values().any(|c| c == code) {
            for word in level_spellings(label) {
                for s in &seen {
                    table.entry(s.spell(&word)).or_insert_with(|| code.clone());
                }
            }
        }
    }
    (table, covered)
}

/// Proposes `profile`'s site's mapping to `schema`.
pub fn propose(schema: &TargetSchema, profile: &Profile, threshold: f64) -> Proposal {
    let mut pairs: Vec<Match> = Vec::new();
    // Each name split once: a wide schema meets a wide file.
    let sites: Vec<Words> = profile.columns.iter().map(|c| words(&c.name)).collect();
    for t in &schema.columns {
        let known: Vec<Words> = std::iter::once(t.name.as_str())
            .chain(t.description.as_deref())
            .chain(t.synonyms.iter().map(String::as_str))
            .map(words)
            .collect();
        for (c, site) in profile.columns.iter().zip(&sites) {
            if let Some(m) = score(t, &known, c, site, profile.level_release) {
                pairs.push(m);
            }
        }
    }
    pairs.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.target.cmp(&b.target))
            .then_with(|| a.column.cmp(&b.column))
    });
    let mut taken_targets = std::collections::BTreeSet::new();
    let mut taken_columns = std::collections::BTreeSet::new();
    let mut chosen: BTreeMap<String, Match> = BTreeMap::new();
    for m in &pairs {
        if m.score < threshold {
            break;
        }
        if m.names < 0.3 || !m.proposable {
            continue;
        }
        if taken_targets.contains(&m.target) || taken_columns.contains(&m.column) {
            continue;
        }
        taken_targets.insert(m.target.clone());
        taken_columns.insert(m.column.clone());
        chosen.insert(m.target.clone(), m.clone());
    }
    let mut matches = Vec::new();
    let mut unmatched = Vec::new();
    for t in &schema.columns {
        match chosen.remove(&t.name) {
            Some(m) => matches.push(m),
            None => unmatched.push(Unmatched {
                target: t.name.clone(),
                candidates: pairs
                    .iter()
                    .filter(|m| m.target == t.name)
                    .take(3)
                    .map(|m| (m.column.clone(), m.score))
                    .collect(),
                evidence: pairs
                    .iter()
                    .find(|m| m.target == t.name)
                    .map(|m| m.evidence.clone()),
            }),
        }
    }
    let unused = profile
        .columns
        .iter()
        .filter(|c| !taken_columns.contains(&c.name))
        .map(|c| c.name.clone())
        .collect();
    let mapping = mapping(schema, profile, &matches);
    Proposal {
        site: profile.site.clone(),
        mapping,
        matches,
        unmatched,
        unused,
    }
}

/// The mapping file the matches make.
fn mapping(schema: &TargetSchema, profile: &Profile, matches: &[Match]) -> Mapping {
    // Tokens that are never a value are always proposed (a site's rare
    // missing values stay below the noise); others where the profile shows
    // them.
    let missing: Vec<String> = MISSING_TOKENS
        .iter()
        .filter(|t| {
            ALWAYS_MISSING.contains(t)
                || profile.columns.iter().any(|c| c.missing.contains_key(**t))
        })
        .map(|t| t.to_string())
        .collect();
    let mut out = Mapping {
        version: 1,
        schema_version: Some(schema.version),
        header: true,
        delimiter: profile.delimiter,
        missing: Some(missing),
        columns: BTreeMap::new(),
        recode: BTreeMap::new(),
        convert: BTreeMap::new(),
        derive: BTreeMap::new(),
        absent: Vec::new(),
    };
    for m in matches {
        let Some(t) = schema.column(&m.target) else {
            continue;
        };
        match &m.transform {
            Transform::YearsSince { year } => {
                out.derive.insert(
                    m.target.clone(),
                    Derivation {
                        years_since: m.column.clone(),
                        year: *year,
                    },
                );
                continue;
            }
            Transform::Convert { from } => {
                out.convert.insert(
                    m.target.clone(),
                    Conversion {
                        from: from.clone(),
                        to: t.unit.clone().unwrap_or_default(),
                        substance: t.substance.clone(),
                        decimals: t.decimals,
                    },
                );
            }
            Transform::Recode { table } => {
                out.recode.insert(m.target.clone(), table.clone());
            }
            Transform::AsIs => {}
        }
        out.columns.insert(m.target.clone(), m.column.clone());
    }
    out
}
