//! One site's side: its rows read, kept and split, its offers, and its preparation.

use std::collections::BTreeSet;
use std::path::Path;

use super::agreement::{Agreement, ColumnKinds, Encoding, KindsOffer, LevelsOffer};
use super::derived::{
    DeriveFeature, SiteIdentifiers, append_feature, derive_column, take_identifiers, unsupported,
};
use super::encode::{encode_site, present_levels};
use super::membership::{
    Membership, MembershipTable, membership_from_table, random_split, read_membership,
};
use crate::DataError;
use crate::config::{DataConfig, MissingPolicy, ScaleScope};
use crate::dataset::{SiteData, SiteSummary};
use crate::levels::canonical_level;
use crate::read::{FileSource, MISSING_CODE, RawSite, Values, read_site, read_sites};

/// One site's rows after the local decisions: which rows are kept and how
/// they split. Everything here stays at the site.
pub struct LocalSite {
    raw: RawSite,
    /// The class name of each target level (a row's class is its level's).
    level_class: Vec<String>,
    membership: Vec<Membership>,
    summary: SiteSummary,
}

/// Each row's class name: its target level's, `None` where the target is
/// missing (held by level, not copied into every row).
#[derive(Clone, Copy)]
pub(super) struct RowClasses<'a> {
    codes: &'a [u32],
    names: &'a [String],
}

impl<'a> RowClasses<'a> {
    /// Row `row`'s class.
    pub(super) fn get(self, row: usize) -> Option<&'a String> {
        let code = *self.codes.get(row)?;
        (code != MISSING_CODE)
            .then(|| self.names.get(code as usize))
            .flatten()
    }

    /// Each row's class, in order.
    pub(super) fn iter(self) -> impl Iterator<Item = Option<&'a String>> {
        (0..self.codes.len()).map(move |row| self.get(row))
    }
}

/// Reads every site's rows as `config` describes (simulation).
/// Refused with `[data.cross_silo]`, whose feature needs the sites to
/// compute it together ([`crate::load_cross_silo`]).
pub fn read_local_sites(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<Vec<LocalSite>, DataError> {
    read_local_sites_with(config, base_dir, source, None, None)
}

/// [`read_local_sites`], with `[data.cross_silo]`'s identifier column
/// replaced by the feature `derive` computes.
pub(super) fn read_local_sites_with(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
    derive: Option<&mut DeriveFeature<'_>>,
    keep: Option<&mut super::KeepSite<'_>>,
) -> Result<Vec<LocalSite>, DataError> {
    config.validate()?;
    let table = membership_table(config, base_dir, source)?;
    let mut raws = read_sites(config, base_dir, source)?;
    if let Some(keep) = keep {
        let mut kept = Vec::with_capacity(raws.len());
        for raw in raws {
            if keep(&raw.name)? {
                kept.push(raw);
            }
        }
        raws = kept;
    }
    match derive {
        Some(derive) => derive_column(config, &mut raws, derive)?,
        None if config.cross_silo.is_some() => return Err(unsupported()),
        None => {}
    }
    let mut sites = Vec::with_capacity(raws.len());
    for raw in raws {
        sites.push(LocalSite::new(config, raw, table.as_ref())?);
    }
    Ok(sites)
}

/// Reads the rows of the sites in `members` (a simulator shard's): `path`
/// replaces the plan's one file of every site's rows (the shard's copy,
/// which may hold other sites' rows too); with `[data.synthetic]` (and no
/// `path`) the plan's rows are generated and the members' kept, the very
/// rows the single-process simulation gives them. Sorted by name; a member
/// without rows is refused.
pub fn read_member_sites(
    config: &DataConfig,
    members: &[String],
    path: Option<&Path>,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<Vec<LocalSite>, DataError> {
    let mut config = config.clone();
    if let Some(path) = path {
        if config.synthetic.is_some() || config.path.is_none() {
            return Err(DataError::Config(format!(
                "the plan does not read one file of every site's rows ([data] path), so no \
                 file replaces it: {} was given",
                path.display()
            )));
        }
        // Sites drawn from the whole file, and memberships by row of the
        // file, would change with a file of fewer rows.
        if config.partition.is_some() || config.split.membership.is_some() {
            return Err(DataError::Config(format!(
                "the plan draws its sites ([data.partition]) or its split ([data.split] \
                 membership) from its file's rows: a shard reads the plan's own file, not {}",
                path.display()
            )));
        }
        config.path = Some(path.to_path_buf());
    }
    let synthetic = super::generated(&config, base_dir, source)?;
    let (config, source) = match &synthetic {
        Some((named, generated)) => (named, generated as &dyn FileSource),
        None => (&config, source),
    };
    let mut keep = |name: &str| Ok(members.iter().any(|m| m == name));
    let mut sites = read_local_sites_with(config, base_dir, source, None, Some(&mut keep))?;
    sites.sort_by(|a, b| a.name().cmp(b.name()));
    let missing: Vec<&str> = members
        .iter()
        .filter(|m| !sites.iter().any(|s| s.name() == m.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(DataError::Unusable(format!(
            "no rows for the sites [{}]",
            missing.join(", ")
        )));
    }
    Ok(sites)
}

/// Reads one site's rows (deployment): `path` replaces the plan's file for
/// the site; with a site column, only the rows naming `site` are kept. With
/// `[data.synthetic]` (and no `path`) the site generates the plan's rows
/// and keeps its own: the very rows the simulation gives it.
pub fn read_local_site(
    config: &DataConfig,
    site: &str,
    path: Option<&Path>,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<LocalSite, DataError> {
    config.validate()?;
    if config.cross_silo.is_some() {
        return Err(unsupported());
    }
    if config.synthetic.is_some() {
        if let Some(path) = path {
            return Err(DataError::Config(format!(
                "the plan generates every site's rows ([data.synthetic]): this site reads no \
                 data file, yet one was given ({})",
                path.display()
            )));
        }
        if let Some((named, generated)) = super::generated(config, base_dir, source)? {
            let table = membership_table(&named, base_dir, &generated)?;
            return LocalSite::new(
                &named,
                read_site(&named, site, None, base_dir, &generated)?,
                table.as_ref(),
            );
        }
    }
    let table = membership_table(config, base_dir, source)?;
    LocalSite::new(
        config,
        read_site(config, site, path, base_dir, source)?,
        table.as_ref(),
    )
}

/// One site's rows read for a plan with `[data.cross_silo]` (deployment):
/// the identifier column taken out, the feature still to be computed with
/// the other sites ([`PendingSite::finish`] appends it).
pub struct PendingSite {
    config: DataConfig,
    raw: RawSite,
    table: Option<MembershipTable>,
    identifiers: SiteIdentifiers,
}

impl std::fmt::Debug for PendingSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PendingSite({:?})", self.identifiers)
    }
}

impl PendingSite {
    /// Each row's identifier, in the order the rows were read.
    pub fn identifiers(&self) -> &SiteIdentifiers {
        &self.identifiers
    }

    /// The site's rows with the feature's `values` (one per row, `NaN`
    /// where unknown) as their last column.
    pub fn finish(self, values: Vec<f64>) -> Result<LocalSite, DataError> {
        let Some(cross) = &self.config.cross_silo else {
            return Err(unsupported());
        };
        let mut raw = self.raw;
        append_feature(cross, &mut raw, values, self.identifiers.identifiers.len())?;
        LocalSite::new(&self.config, raw, self.table.as_ref())
    }
}

/// [`read_local_site`] for a plan with `[data.cross_silo]`: the site's rows
/// with the identifier column taken out, the feature to be computed with the
/// other sites. Refused for a plan without the section, or one that
/// generates its rows (`[data.synthetic]` has no identifiers).
pub fn read_pending_site(
    config: &DataConfig,
    site: &str,
    path: Option<&Path>,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<PendingSite, DataError> {
    config.validate()?;
    let Some(cross) = &config.cross_silo else {
        return Err(DataError::Config(
            "the plan has no [data.cross_silo]: read the site with read_local_site".into(),
        ));
    };
    if config.synthetic.is_some() {
        return Err(DataError::Config(
            "[data.cross_silo] with [data.synthetic]: generated rows carry no identifiers".into(),
        ));
    }
    let table = membership_table(config, base_dir, source)?;
    let mut raw = read_site(config, site, path, base_dir, source)?;
    let identifiers = take_identifiers(cross, &mut raw)?;
    Ok(PendingSite {
        config: config.clone(),
        raw,
        table,
        identifiers,
    })
}

pub(super) fn membership_table(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<Option<MembershipTable>, DataError> {
    match &config.split.membership {
        Some(file) => Ok(Some(read_membership(file, base_dir, source)?)),
        None => Ok(None),
    }
}

/// Counts, over the training rows, the values outside their column's bounds
/// in the schema (`min`, `max`), and the columns that have bounds.
fn count_out_of_range(
    config: &DataConfig,
    raw: &RawSite,
    membership: &[Membership],
    summary: &mut SiteSummary,
) {
    for (column, values) in raw.columns.iter().zip(&raw.features) {
        let Some(spec) = config
            .schema
            .columns
            .iter()
            .find(|c| c.name == column.name && c.is_bounded())
        else {
            continue;
        };
        let Values::Numeric(values) = values else {
            continue;
        };
        summary.bounded_columns += 1;
        summary.out_of_range_values += values
            .iter()
            .zip(membership)
            .filter(|&(&v, &m)| m == Membership::Train && spec.out_of_range(v))
            .count();
    }
}

/// The class name of each target level at a site: the positive/negative
/// classes when the schema names them, else the level itself.
pub(super) fn class_names(config: &DataConfig) -> impl Fn(&str) -> String {
    let schema = &config.schema;
    let positive: Vec<String> = schema.positive.iter().map(|v| canonical_level(v)).collect();
    let negative: Vec<String> = schema.negative.iter().map(|v| canonical_level(v)).collect();
    move |level: &str| {
        if !positive.is_empty() {
            let p = positive.join("|");
            if positive.iter().any(|v| v == level) {
                p
            } else {
                format!("not {p}")
            }
        } else if !negative.is_empty() {
            let n = negative.join("|");
            if negative.iter().any(|v| v == level) {
                n
            } else {
                format!("not {n}")
            }
        } else {
            level.to_string()
        }
    }
}

impl LocalSite {
    pub(super) fn new(
        config: &DataConfig,
        raw: RawSite,
        table: Option<&MembershipTable>,
    ) -> Result<Self, DataError> {
        let class_of = class_names(config);
        let level_class: Vec<String> = raw.target_levels.iter().map(|l| class_of(l)).collect();
        let classes = RowClasses {
            codes: &raw.target,
            names: &level_class,
        };
        let mut summary = SiteSummary {
            site: raw.name.clone(),
            rows_read: raw.lines.len(),
            ..SiteSummary::default()
        };
        let mut kept: Vec<bool> = Vec::with_capacity(raw.lines.len());
        for (row, class) in classes.iter().enumerate() {
            let keep = if class.is_none() {
                summary.dropped_missing_target += 1;
                false
            } else if config.schema.missing_policy == MissingPolicy::Drop
                && raw.features.iter().any(|v| v.is_missing(row))
            {
                summary.dropped_missing_feature += 1;
                false
            } else {
                true
            };
            kept.push(keep);
        }
        let membership = match table {
            Some(table) => {
                let file = config
                    .split
                    .membership
                    .as_ref()
                    .map_or(Path::new(""), |m| m.path.as_path());
                membership_from_table(table, file, &raw, &kept, &mut summary)?
            }
            None => random_split(config, &raw.name, classes, &kept),
        };
        summary.n_train = membership
            .iter()
            .filter(|&&m| m == Membership::Train)
            .count();
        summary.n_test = membership
            .iter()
            .filter(|&&m| m == Membership::Test)
            .count();
        count_out_of_range(config, &raw, &membership, &mut summary);
        if summary.n_train == 0 {
            return Err(DataError::Unusable(format!(
                "site '{}' ({}) has no training rows left ({} read)",
                raw.name,
                raw.file.display(),
                summary.rows_read
            )));
        }
        let standardize = &config.standardize;
        if standardize.enabled
            && standardize.scope == ScaleScope::Site
            && summary.n_train >= 2
            && summary.n_train as u64 <= u64::from(standardize.ddof)
        {
            // Otherwise every scale falls back to 1: no standardisation at
            // all, without a word. (One row has no spread under any ddof.)
            return Err(DataError::Unusable(format!(
                "site '{}' ({}) has {} training rows; standardisation with ddof = {} needs more \
                 (lower [data.standardize] ddof, or use scope = \"federation\")",
                raw.name,
                raw.file.display(),
                summary.n_train,
                standardize.ddof
            )));
        }
        Ok(Self {
            raw,
            level_class,
            membership,
            summary,
        })
    }

    /// The rows as read, each row's class and each row's membership.
    pub(super) fn parts(&self) -> (&RawSite, RowClasses<'_>, &[Membership]) {
        (&self.raw, self.classes(), &self.membership)
    }

    fn classes(&self) -> RowClasses<'_> {
        RowClasses {
            codes: &self.raw.target,
            names: &self.level_class,
        }
    }

    /// The site's name.
    pub fn name(&self) -> &str {
        &self.raw.name
    }

    /// What reading and splitting found.
    pub fn summary(&self) -> &SiteSummary {
        &self.summary
    }

    /// Step 2: the site's columns and which of them hold text.
    pub fn kinds_offer(&self) -> KindsOffer {
        KindsOffer {
            site: self.raw.name.clone(),
            columns: self.raw.columns.iter().map(|c| c.name.clone()).collect(),
            text: self
                .raw
                .features
                .iter()
                .map(|v| matches!(v, Values::Categorical(_)))
                .collect(),
        }
    }

    /// Puts the columns in the agreed order and types (step 3 before its
    /// offer; again before preparing, when the site was read afresh).
    pub fn apply_kinds(&mut self, kinds: &ColumnKinds) -> Result<(), DataError> {
        let in_order = self.raw.columns.len() == kinds.columns.len()
            && self
                .raw
                .columns
                .iter()
                .zip(&kinds.columns)
                .all(|(c, name)| &c.name == name);
        let mut features = Vec::with_capacity(kinds.columns.len());
        let mut columns = Vec::with_capacity(if in_order { 0 } else { kinds.columns.len() });
        for (name, &categorical) in kinds.columns.iter().zip(&kinds.categorical) {
            let Some(slot) = self.raw.columns.iter().position(|c| &c.name == name) else {
                return Err(DataError::at(
                    &self.raw.file,
                    None,
                    None,
                    format!(
                        "site '{}' has no column '{name}', which other sites have",
                        self.raw.name
                    ),
                ));
            };
            let values =
                std::mem::replace(&mut self.raw.features[slot], Values::Numeric(Vec::new()));
            features.push(if categorical {
                values.into_categorical()
            } else {
                values
            });
            if !in_order {
                columns.push(self.raw.columns[slot].clone());
            }
        }
        self.raw.features = features;
        if !in_order {
            // This site's file orders its columns otherwise: its own layout.
            self.raw.columns = std::sync::Arc::new(columns);
        }
        Ok(())
    }

    /// Step 3: puts the columns in the agreed order and types
    /// ([`LocalSite::apply_kinds`]), and offers the sets of levels and
    /// classes the kept rows hold.
    pub fn levels_offer(
        &mut self,
        config: &DataConfig,
        kinds: &ColumnKinds,
    ) -> Result<LevelsOffer, DataError> {
        self.apply_kinds(kinds)?;
        let mut levels = Vec::with_capacity(kinds.columns.len());
        for (slot, name) in kinds.columns.iter().enumerate() {
            let declared = config
                .schema
                .columns
                .iter()
                .find(|c| &c.name == name)
                .and_then(|c| c.levels.as_ref());
            if let Some(declared) = declared {
                let declared: Vec<String> = declared.iter().map(|l| canonical_level(l)).collect();
                self.check_declared_levels(slot, name, &declared)?;
            }
            levels.push(present_levels(&self.raw.features[slot], &self.membership));
        }
        let set = |train_only: bool| -> Vec<String> {
            let found: BTreeSet<&String> = self
                .classes()
                .iter()
                .zip(&self.membership)
                .filter(|(_, m)| {
                    if train_only {
                        **m == Membership::Train
                    } else {
                        **m != Membership::Excluded
                    }
                })
                .filter_map(|(c, _)| c)
                .collect();
            found.into_iter().cloned().collect()
        };
        let count =
            |want: Membership| self.membership.iter().filter(|m| **m == want).count() as u64;
        Ok(LevelsOffer {
            site: self.raw.name.clone(),
            levels,
            classes: set(false),
            train_classes: set(true),
            train_rows: count(Membership::Train),
            test_rows: count(Membership::Test),
        })
    }

    fn check_declared_levels(
        &self,
        slot: usize,
        column: &str,
        declared: &[String],
    ) -> Result<(), DataError> {
        let Values::Categorical(coded) = &self.raw.features[slot] else {
            return Ok(());
        };
        let (codes, levels) = (&coded.codes, &coded.levels);
        for (row, &code) in codes.iter().enumerate() {
            if code != MISSING_CODE
                && self.membership[row] != Membership::Excluded
                && !declared.contains(&levels[code as usize])
            {
                return Err(DataError::at(
                    &self.raw.file,
                    Some(self.raw.lines[row]),
                    None,
                    format!(
                        "column '{column}': value '{}' is not among the declared levels {}",
                        levels[code as usize],
                        declared.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Step 4: encodes, imputes (with the site's training means) and
    /// standardises with the site's training statistics. Call after
    /// [`LocalSite::levels_offer`], with the agreement built from it.
    pub fn prepare(
        self,
        config: &DataConfig,
        agreement: &Agreement,
    ) -> Result<(SiteData, SiteSummary), DataError> {
        if self.raw.columns.len() != agreement.columns.len()
            || self
                .raw
                .columns
                .iter()
                .zip(&agreement.columns)
                .any(|(c, a)| &c.name != a)
        {
            return Err(DataError::Config(format!(
                "site '{}': the agreement's columns differ from the site's ({})",
                self.raw.name,
                tessera_core::shown(&agreement.columns.join(", "), 500)
            )));
        }
        if agreement.encodings.len() != agreement.columns.len() {
            return Err(DataError::Config(format!(
                "the agreement has {} encodings for {} columns",
                agreement.encodings.len(),
                agreement.columns.len()
            )));
        }
        for ((values, encoding), name) in (self.raw.features.iter())
            .zip(&agreement.encodings)
            .zip(&agreement.columns)
        {
            let categorical = matches!(values, Values::Categorical(_));
            if categorical != matches!(encoding, Encoding::OneHot { .. }) {
                return Err(DataError::Config(format!(
                    "site '{}': the agreement encodes column '{}' as {}, which the agreed kinds \
                     made {}",
                    self.raw.name,
                    tessera_core::shown(name, 100),
                    if categorical { "a number" } else { "one-hot" },
                    if categorical {
                        "categorical"
                    } else {
                        "numeric"
                    },
                )));
            }
        }
        let mut summary = self.summary.clone();
        let labels: Vec<Option<u32>> = self
            .classes()
            .iter()
            .map(|c| {
                c.and_then(|c| agreement.classes.iter().position(|k| k == c))
                    .map(|i| i as u32)
            })
            .collect();
        let site = encode_site(
            config,
            &self.raw,
            &labels,
            &self.membership,
            &agreement.encodings,
            agreement.n_features(),
            &mut summary,
        );
        Ok((site, summary))
    }
}
