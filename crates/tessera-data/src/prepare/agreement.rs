//! What sites offer, what the coordinator agrees from the offers, and the encodings.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::site::class_names;
use crate::DataError;
use crate::config::DataConfig;
use crate::dataset::Task;
use crate::levels::{agree_levels, canonical_level};

/// Most levels a categorical column (or a target) may have.
const MAX_LEVELS: usize = 1000;

/// A site's column names and, for each, whether the site found text in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindsOffer {
    /// The site.
    pub site: String,
    /// Feature columns, in the site's file order.
    pub columns: Vec<String>,
    /// Whether each column is categorical at this site (declared, or text found).
    pub text: Vec<bool>,
}

/// The agreed feature columns and their types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnKinds {
    /// Feature columns, in the agreed order.
    pub columns: Vec<String>,
    /// Whether each column is categorical.
    pub categorical: Vec<bool>,
}

/// The sets of values a site's kept rows hold: categorical levels per column
/// and target classes. Sets only, never rows or counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelsOffer {
    /// The site.
    pub site: String,
    /// Per agreed column: the levels present (empty for numeric columns).
    pub levels: Vec<Vec<String>>,
    /// Target classes present in the kept rows.
    pub classes: Vec<String>,
    /// Target classes present in the training rows.
    pub train_classes: Vec<String>,
    /// Training rows the site declares: fixed for the run, the bound on
    /// every update's example count (a participant may round it up to hide
    /// the exact count; see [`declared_rows`]).
    pub train_rows: u64,
    /// Test rows the site declares: the bound on its evaluations' counts.
    pub test_rows: u64,
}

/// The most rows a site may declare (2^40, about 1.1 x 10^12): bounds every
/// count a coordinator sums, so that no sum of declared or reported counts
/// over [`MAX_DECLARED_SITES`] sites can overflow 64 bits.
pub const MAX_DECLARED_ROWS: u64 = 1 << 40;

/// The most sites whose declared rows are summed (2^20).
pub const MAX_DECLARED_SITES: u64 = 1 << 20;

/// What a site declares of `rows` rows: the count itself, or with `hide`
/// (secure aggregation or sums-only metrics keep the count from the
/// coordinator) the next power of two at or above it, which bounds the
/// site's reports as well while revealing only its magnitude.
pub fn declared_rows(rows: u64, hide: bool) -> u64 {
    if hide {
        rows.max(1).checked_next_power_of_two().unwrap_or(u64::MAX)
    } else {
        rows
    }
}

/// How an agreed column becomes features.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// One feature.
    Numeric,
    /// One indicator per level (the first left out with `drop_first`).
    OneHot {
        /// The shared vocabulary.
        levels: Vec<String>,
        /// Whether the first level has no indicator.
        drop_first: bool,
    },
}

impl Encoding {
    pub(super) fn width(&self) -> usize {
        match self {
            Encoding::Numeric => 1,
            Encoding::OneHot { levels, drop_first } => {
                levels.len() - usize::from(*drop_first && !levels.is_empty())
            }
        }
    }
}

/// Whether each feature `encodings` make is a one-hot indicator.
pub(super) fn indicators_of(encodings: &[Encoding]) -> Vec<bool> {
    encodings
        .iter()
        .flat_map(|e| std::iter::repeat_n(matches!(e, Encoding::OneHot { .. }), e.width()))
        .collect()
}

/// The rows of one level of a categorical column ([`Agreement::groups`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The level.
    pub level: String,
    /// Row indices, ascending.
    pub rows: Vec<usize>,
}

/// What every site encodes with: the columns, their encodings and the classes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agreement {
    /// Feature columns, in order.
    pub columns: Vec<String>,
    /// How each becomes features.
    pub encodings: Vec<Encoding>,
    /// Class names; a label is an index into this list.
    pub classes: Vec<String>,
}

impl Agreement {
    /// The shared task.
    pub fn task(&self) -> Task {
        Task {
            classes: self.classes.clone(),
        }
    }

    /// Whether each encoded feature is a one-hot indicator (in
    /// [`Agreement::feature_names`]' order): what
    /// [`crate::Scaler::from_statistics`] leaves as 0 and 1.
    pub fn indicators(&self) -> Vec<bool> {
        indicators_of(&self.encodings)
    }

    /// Names of the encoded features (`column` or `column=level`).
    pub fn feature_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for (name, encoding) in self.columns.iter().zip(&self.encodings) {
            match encoding {
                Encoding::Numeric => names.push(name.clone()),
                Encoding::OneHot { levels, drop_first } => {
                    let skip = usize::from(*drop_first);
                    names.extend(levels.iter().skip(skip).map(|l| format!("{name}={l}")));
                }
            }
        }
        names
    }

    /// The rows of `raw` in each level of the categorical feature
    /// `column`, in the vocabulary's order (`raw` encoded, not
    /// standardised: its indicators are 0 or 1); levels without rows are
    /// left out. Refused when `column` is not a categorical feature or
    /// `raw` is not this layout.
    pub fn groups(&self, column: &str, raw: &crate::Features) -> Result<Vec<Group>, DataError> {
        if raw.ncols() != self.n_features() {
            return Err(DataError::Unusable(format!(
                "rows have {} features, the agreement {}",
                raw.ncols(),
                self.n_features()
            )));
        }
        let mut start = 0;
        for (name, encoding) in self.columns.iter().zip(&self.encodings) {
            let width = encoding.width();
            if name == column {
                let Encoding::OneHot { levels, drop_first } = encoding else {
                    return Err(DataError::Config(format!(
                        "column `{}` is numeric; groups need a categorical column",
                        tessera_core::shown(column, 100)
                    )));
                };
                let skip = usize::from(*drop_first);
                let mut rows = vec![Vec::new(); levels.len()];
                for i in 0..raw.nrows() {
                    let hot = (0..width).find(|&j| raw.get(i, start + j) == 1.0);
                    // No indicator: the first level's row under `drop_first`,
                    // otherwise (a missing value) in no group.
                    let level = match hot {
                        Some(j) => Some(j + skip),
                        None if *drop_first => Some(0),
                        None => None,
                    };
                    if let Some(group) = level.and_then(|l| rows.get_mut(l)) {
                        group.push(i);
                    }
                }
                return Ok(levels
                    .iter()
                    .zip(rows)
                    .filter(|(_, rows)| !rows.is_empty())
                    .map(|(level, rows)| Group {
                        level: level.clone(),
                        rows,
                    })
                    .collect());
            }
            start += width;
        }
        Err(DataError::Config(format!(
            "no feature column is named `{}` (an ignored column or the target cannot name groups)",
            tessera_core::shown(column, 100)
        )))
    }

    pub(super) fn n_features(&self) -> usize {
        self.encodings.iter().map(Encoding::width).sum()
    }
}

impl KindsOffer {
    /// What an aggregator offers for its members: the columns of the first
    /// member by name, each categorical where any member found text. The
    /// parent agrees the same kinds from it as from the members' own offers.
    pub fn merge(site: &str, offers: &[KindsOffer]) -> Result<KindsOffer, DataError> {
        let Some((first, rest)) = offers.split_first() else {
            return Err(DataError::Unusable(format!(
                "aggregator '{site}' has no member offers"
            )));
        };
        let mut merged = first.clone();
        for offer in rest {
            merged.absorb(offer)?;
        }
        merged.site = site.to_string();
        Ok(merged)
    }

    /// Adds `other` to these offers (one site's, or several already
    /// absorbed): the columns stay in the order of the offer of the first
    /// site by name, each categorical where any offer found text, so that
    /// absorbing offers one at a time, in any order, gives their
    /// [`KindsOffer::merge`] (under the first site's name), and no more than
    /// one offer is held at a time. Refused where the two offers' columns differ.
    pub fn absorb(&mut self, other: &KindsOffer) -> Result<(), DataError> {
        fn sorted(columns: &[String]) -> Vec<&String> {
            let mut names: Vec<&String> = columns.iter().collect();
            names.sort();
            names
        }
        if sorted(&self.columns) != sorted(&other.columns) {
            let (first, second) = if other.site < self.site {
                (other, &*self)
            } else {
                (&*self, other)
            };
            return Err(DataError::Unusable(format!(
                "sites '{}' and '{}' have different feature columns ({} against {})",
                first.site,
                second.site,
                tessera_core::shown(&first.columns.join(", "), 500),
                tessera_core::shown(&second.columns.join(", "), 500)
            )));
        }
        if other.site < self.site {
            // The other offer's order is the first site's.
            let mut text = other.text.clone();
            text.resize(other.columns.len(), false);
            for (name, &found) in self.columns.iter().zip(&self.text) {
                if found && let Some(i) = other.columns.iter().position(|c| c == name) {
                    text[i] = true;
                }
            }
            *self = KindsOffer {
                site: other.site.clone(),
                columns: other.columns.clone(),
                text,
            };
        } else {
            self.text.resize(self.columns.len(), false);
            for (name, &found) in other.columns.iter().zip(&other.text) {
                if found && let Some(i) = self.columns.iter().position(|c| c == name) {
                    self.text[i] = true;
                }
            }
        }
        Ok(())
    }
}

impl LevelsOffer {
    /// What an aggregator offers for its members: the union of their sets
    /// (the parent's vocabulary is the sorted union, so it comes out the same).
    pub fn merge(site: &str, columns: usize, offers: &[LevelsOffer]) -> LevelsOffer {
        let mut merged = LevelsOffer::empty(site, columns);
        for offer in offers {
            merged.absorb(offer);
        }
        merged
    }

    /// No sets yet, of `columns` columns: where [`LevelsOffer::absorb`] starts.
    pub fn empty(site: &str, columns: usize) -> LevelsOffer {
        LevelsOffer {
            site: site.to_string(),
            levels: vec![Vec::new(); columns],
            classes: Vec::new(),
            train_classes: Vec::new(),
            train_rows: 0,
            test_rows: 0,
        }
    }

    /// Adds `other`'s sets to these (each kept as a sorted union) and its
    /// rows to the counts: offers absorbed one at a time from
    /// [`LevelsOffer::empty`] give their [`LevelsOffer::merge`] without
    /// being held together. Columns past this offer's are not read.
    pub fn absorb(&mut self, other: &LevelsOffer) {
        for (own, theirs) in self.levels.iter_mut().zip(&other.levels) {
            union_into(own, theirs);
        }
        union_into(&mut self.classes, &other.classes);
        union_into(&mut self.train_classes, &other.train_classes);
        self.train_rows = self.train_rows.saturating_add(other.train_rows);
        self.test_rows = self.test_rows.saturating_add(other.test_rows);
    }
}

/// `set` (sorted in [`crate::levels::level_order`], no repeats) becomes its
/// union with `more` (any order), as [`agree_levels`] would make it.
fn union_into(set: &mut Vec<String>, more: &[String]) {
    let order = |a: &String, b: &String| crate::levels::level_order(a, b);
    let new: Vec<&String> = more
        .iter()
        .filter(|level| set.binary_search_by(|s| order(s, level)).is_err())
        .collect();
    if new.is_empty() {
        return;
    }
    set.extend(new.into_iter().cloned());
    set.sort_by(order);
    set.dedup();
}

/// Step 2 at the coordinator: the feature columns (the first offer's order,
/// offers sorted by site) and their types.
pub fn agree_kinds(config: &DataConfig, offers: &[KindsOffer]) -> Result<ColumnKinds, DataError> {
    if offers.is_empty() {
        return Err(DataError::Unusable("no site has any rows".into()));
    }
    let KindsOffer {
        columns,
        text: mut categorical,
        ..
    } = KindsOffer::merge("the federation", offers)?;
    // Declared types hold whatever the sites found.
    for (name, flag) in columns.iter().zip(&mut categorical) {
        if let Some(spec) = config.schema.columns.iter().find(|c| &c.name == name) {
            *flag = spec.kind == crate::ColumnKind::Categorical;
        }
    }
    Ok(ColumnKinds {
        columns,
        categorical,
    })
}

/// Step 3 at the coordinator: the shared vocabularies (declared levels, else
/// the sorted union of the sites' levels) and classes.
pub fn agree_vocabulary(
    config: &DataConfig,
    kinds: &ColumnKinds,
    offers: &[LevelsOffer],
) -> Result<Agreement, DataError> {
    Ok(Agreement {
        columns: kinds.columns.clone(),
        encodings: agree_encodings(config, kinds, offers)?,
        classes: agree_classes(config, offers)?,
    })
}

/// Step 3 at the coordinator of a multi-task run, whose task `t` reads the
/// data as `configs[t]` says and `tasks[i]` is the task of `offers[i]`:
/// the features' vocabularies from every offer (every task reads the same
/// features), each task's classes from its own sites' offers. The
/// agreement holds the first task's classes; the second value every task's.
pub fn agree_multitask(
    configs: &[DataConfig],
    kinds: &ColumnKinds,
    offers: &[LevelsOffer],
    tasks: &[usize],
) -> Result<(Agreement, Vec<Vec<String>>), DataError> {
    let first = configs
        .first()
        .ok_or_else(|| DataError::Config("multitask: no tasks".into()))?;
    if tasks.len() != offers.len() {
        return Err(DataError::Config(format!(
            "multitask: {} offers with {} tasks",
            offers.len(),
            tasks.len()
        )));
    }
    let encodings = agree_encodings(first, kinds, offers)?;
    let task_classes = configs
        .iter()
        .enumerate()
        .map(|(t, config)| {
            let own: Vec<LevelsOffer> = offers
                .iter()
                .zip(tasks)
                .filter(|(_, task)| **task == t)
                .map(|(o, _)| o.clone())
                .collect();
            let target = &config.schema.target;
            if own.is_empty() {
                return Err(DataError::Unusable(format!(
                    "multitask: no site of the task of target '{target}' offered its rows"
                )));
            }
            agree_classes(config, &own).map_err(|e| {
                DataError::Unusable(format!("multitask, the task of target '{target}': {e}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        Agreement {
            columns: kinds.columns.clone(),
            encodings,
            classes: task_classes[0].clone(),
        },
        task_classes,
    ))
}

/// The shared vocabularies of the categorical features: declared levels,
/// else the sorted union of the sites' levels.
fn agree_encodings(
    config: &DataConfig,
    kinds: &ColumnKinds,
    offers: &[LevelsOffer],
) -> Result<Vec<Encoding>, DataError> {
    let schema = &config.schema;
    let mut encodings = Vec::with_capacity(kinds.columns.len());
    for (slot, (name, &categorical)) in kinds.columns.iter().zip(&kinds.categorical).enumerate() {
        if !categorical {
            encodings.push(Encoding::Numeric);
            continue;
        }
        let spec = schema.columns.iter().find(|c| &c.name == name);
        let levels = match spec.and_then(|s| s.levels.as_ref()) {
            Some(declared) => declared.iter().map(|l| canonical_level(l)).collect(),
            None => agree_levels(
                offers
                    .iter()
                    .filter_map(|o| o.levels.get(slot))
                    .map(Vec::as_slice),
            ),
        };
        if levels.len() > MAX_LEVELS {
            return Err(DataError::Unusable(format!(
                "column '{name}' has {} distinct values, more than {MAX_LEVELS}: one-hot encoding it would \
                 make that many features; mark it `type = \"ignore\"` in the schema (or --ignore {name})",
                levels.len()
            )));
        }
        encodings.push(Encoding::OneHot {
            levels,
            drop_first: spec.is_some_and(|s| s.drop_first),
        });
    }
    Ok(encodings)
}

/// The target's classes: the two named ones of a binary target, else the
/// sorted union of the sites' classes; refused where there is nothing to
/// learn or too many classes.
fn agree_classes(config: &DataConfig, offers: &[LevelsOffer]) -> Result<Vec<String>, DataError> {
    let schema = &config.schema;
    let seen = agree_levels(offers.iter().map(|o| o.classes.as_slice()));
    let classes = if !schema.positive.is_empty() || !schema.negative.is_empty() {
        // Always the two named classes, negative first.
        let class_of = class_names(config);
        let named = if !schema.positive.is_empty() {
            &schema.positive
        } else {
            &schema.negative
        };
        let named_class = class_of(&canonical_level(&named[0]));
        let other = if named_class.starts_with("not ") {
            named_class.trim_start_matches("not ").to_string()
        } else {
            format!("not {named_class}")
        };
        let (negative, positive) = if !schema.positive.is_empty() {
            (other, named_class)
        } else {
            (named_class, other)
        };
        vec![negative, positive]
    } else {
        seen
    };
    if classes.len() < 2 {
        return Err(DataError::Unusable(format!(
            "target '{}' has a single value ({}) at every site: nothing to learn",
            schema.target,
            classes.join(", ")
        )));
    }
    if classes.len() > MAX_LEVELS {
        return Err(DataError::Unusable(format!(
            "target '{}' has {} distinct values, more than {MAX_LEVELS} classes: is it the right column?",
            schema.target,
            classes.len()
        )));
    }
    let trained: BTreeSet<&String> = offers.iter().flat_map(|o| &o.train_classes).collect();
    if trained.len() < 2 {
        let only = trained.iter().next().map_or("none", |c| c.as_str());
        return Err(DataError::Unusable(format!(
            "every training row has the same target class ({only}): nothing to learn"
        )));
    }
    Ok(classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(site: &str, columns: &[&str], text: &[bool]) -> KindsOffer {
        KindsOffer {
            site: site.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            text: text.to_vec(),
        }
    }

    fn levels(site: &str, columns: &[&[&str]], classes: &[&str], rows: u64) -> LevelsOffer {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        LevelsOffer {
            site: site.into(),
            levels: columns.iter().map(|c| owned(c)).collect(),
            classes: owned(classes),
            train_classes: owned(&classes[..1]),
            train_rows: rows,
            test_rows: rows / 2,
        }
    }

    #[test]
    fn offers_absorbed_one_at_a_time_in_any_order_are_their_merge() {
        // The first site by name orders the columns ("b" reads them c, a).
        let offers = [
            kinds("d", &["a", "c"], &[false, true]),
            kinds("b", &["c", "a"], &[false, false]),
            kinds("c", &["a", "c"], &[true, false]),
        ];
        let merged = KindsOffer::merge("all", &offers).unwrap();
        assert_eq!(merged, kinds("all", &["c", "a"], &[true, true]));
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let mut folded = offers[order[0]].clone();
            for &i in &order[1..] {
                folded.absorb(&offers[i]).unwrap();
            }
            folded.site = "all".into();
            assert_eq!(folded, merged, "{order:?}");
        }
        let odd = kinds("a", &["a", "x"], &[false, false]);
        let mut folded = offers[0].clone();
        let e = folded.absorb(&odd).unwrap_err().to_string();
        assert!(
            e.contains("sites 'a' and 'd' have different feature columns"),
            "{e}"
        );

        let offers = [
            levels("x", &[&["10", "2", "b"], &[]], &["yes", "no"], 7),
            levels("y", &[&["a", "2"], &[]], &["no"], 3),
            levels("z", &[&["1e1", "-1"]], &["maybe"], 5),
        ];
        let merged = LevelsOffer::merge("all", 2, &offers);
        // Numbers by value (equal values by text), then text; as agreed.
        assert_eq!(merged.levels[0], ["-1", "2", "10", "1e1", "a", "b"]);
        assert_eq!(
            merged.levels[0],
            agree_levels(offers.iter().map(|o| o.levels[0].as_slice()))
        );
        assert_eq!(merged.levels[1], Vec::<String>::new());
        assert_eq!(merged.classes, ["maybe", "no", "yes"]);
        assert_eq!((merged.train_rows, merged.test_rows), (15, 6));
        let mut folded = LevelsOffer::empty("all", 2);
        for offer in offers.iter().rev() {
            folded.absorb(offer);
        }
        assert_eq!(folded, merged);
    }
}
