//! From raw site columns to standardised per-site datasets, in the steps a
//! federation takes, so that simulation and deployment share them:
//!
//! 1. each site reads its rows and decides locally which rows it keeps and
//!    how they split ([`LocalSite`]);
//! 2. sites offer their column types ([`KindsOffer`]); a column that is text
//!    at any site is categorical everywhere ([`agree_kinds`]);
//! 3. sites offer the *sets* of categorical levels and target classes in
//!    their kept rows ([`LevelsOffer`]); the union is the shared vocabulary
//!    ([`agree_vocabulary`] gives the [`Agreement`]);
//! 4. each site encodes, imputes and standardises its own rows
//!    ([`LocalSite::prepare`]).
//!
//! No row crosses sites in any step.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use ndarray::Array2;
use serde::{Deserialize, Serialize};
use tessera_core::{SeededRng, tag};

use crate::DataError;
use crate::config::{DataConfig, MembershipFile, MissingPolicy, ScaleScope};
use crate::dataset::{Dataset, FederatedData, Scaler, SiteData, SiteSummary, Task};
use crate::levels::{agree_levels, canonical_level};
use crate::read::{FileSource, MISSING_CODE, RawSite, Values, read_site, read_sites};

/// Most levels a categorical column (or a target) may have.
const MAX_LEVELS: usize = 1000;

/// Where a row goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Membership {
    Train,
    Test,
    Excluded,
}

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
    fn width(&self) -> usize {
        match self {
            Encoding::Numeric => 1,
            Encoding::OneHot { levels, drop_first } => {
                levels.len() - usize::from(*drop_first && !levels.is_empty())
            }
        }
    }
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

    fn n_features(&self) -> usize {
        self.encodings.iter().map(Encoding::width).sum()
    }
}

/// One site's rows after the local decisions: which rows are kept and how
/// they split. Everything here stays at the site.
pub struct LocalSite {
    raw: RawSite,
    /// Each row's class name, `None` where the target is missing.
    classes: Vec<Option<String>>,
    membership: Vec<Membership>,
    summary: SiteSummary,
}

/// Reads every site's rows as `config` describes (simulation).
pub fn read_local_sites(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<Vec<LocalSite>, DataError> {
    config.validate()?;
    let table = membership_table(config, base_dir, source)?;
    read_sites(config, base_dir, source)?
        .into_iter()
        .map(|raw| LocalSite::new(config, raw, table.as_ref()))
        .collect()
}

/// Reads one site's rows (deployment): `path` replaces the plan's file for
/// the site; with a site column, only the rows naming `site` are kept.
pub fn read_local_site(
    config: &DataConfig,
    site: &str,
    path: Option<&Path>,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<LocalSite, DataError> {
    config.validate()?;
    let table = membership_table(config, base_dir, source)?;
    LocalSite::new(
        config,
        read_site(config, site, path, base_dir, source)?,
        table.as_ref(),
    )
}

fn membership_table(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<Option<MembershipTable>, DataError> {
    match &config.split.membership {
        Some(file) => Ok(Some(read_membership(file, base_dir, source)?)),
        None => Ok(None),
    }
}

/// The class name of each target level at a site: the positive/negative
/// classes when the schema names them, else the level itself.
fn class_names(config: &DataConfig) -> impl Fn(&str) -> String {
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
    fn new(
        config: &DataConfig,
        raw: RawSite,
        table: Option<&MembershipTable>,
    ) -> Result<Self, DataError> {
        let class_of = class_names(config);
        let level_class: Vec<String> = raw.target_levels.iter().map(|l| class_of(l)).collect();
        let classes: Vec<Option<String>> = raw
            .target
            .iter()
            .map(|&code| (code != MISSING_CODE).then(|| level_class[code as usize].clone()))
            .collect();
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
            None => random_split(config, &raw.name, &classes, &kept),
        };
        summary.n_train = membership
            .iter()
            .filter(|&&m| m == Membership::Train)
            .count();
        summary.n_test = membership
            .iter()
            .filter(|&&m| m == Membership::Test)
            .count();
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
            classes,
            membership,
            summary,
        })
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
                .map(|v| matches!(v, Values::Categorical { .. }))
                .collect(),
        }
    }

    /// Step 3: puts the columns in the agreed order and types, and offers the
    /// sets of levels and classes the kept rows hold.
    pub fn levels_offer(
        &mut self,
        config: &DataConfig,
        kinds: &ColumnKinds,
    ) -> Result<LevelsOffer, DataError> {
        let mut features = Vec::with_capacity(kinds.columns.len());
        let mut columns = Vec::with_capacity(kinds.columns.len());
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
            let column = self.raw.columns[slot].clone();
            features.push(if categorical {
                values.into_categorical()
            } else {
                values
            });
            columns.push(column);
        }
        self.raw.features = features;
        self.raw.columns = columns;
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
                .classes
                .iter()
                .zip(&self.membership)
                .filter(|(_, m)| {
                    if train_only {
                        **m == Membership::Train
                    } else {
                        **m != Membership::Excluded
                    }
                })
                .filter_map(|(c, _)| c.as_ref())
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
        let Values::Categorical { codes, levels } = &self.raw.features[slot] else {
            return Ok(());
        };
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
        let mut summary = self.summary.clone();
        let labels: Vec<Option<u32>> = self
            .classes
            .iter()
            .map(|c| {
                c.as_ref()
                    .and_then(|c| agreement.classes.iter().position(|k| k == c))
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

impl KindsOffer {
    /// What an aggregator offers for its members: the columns of the first
    /// member by name, each categorical where any member found text. The
    /// parent agrees the same kinds from it as from the members' own offers.
    pub fn merge(site: &str, offers: &[KindsOffer]) -> Result<KindsOffer, DataError> {
        let mut sorted: Vec<&KindsOffer> = offers.iter().collect();
        sorted.sort_by(|a, b| a.site.cmp(&b.site));
        let Some(first) = sorted.first() else {
            return Err(DataError::Unusable(format!(
                "aggregator '{site}' has no member offers"
            )));
        };
        let mut agreed: Vec<&String> = first.columns.iter().collect();
        agreed.sort();
        let mut text = vec![false; first.columns.len()];
        for offer in &sorted {
            let mut own: Vec<&String> = offer.columns.iter().collect();
            own.sort();
            if own != agreed {
                return Err(DataError::Unusable(format!(
                    "sites '{}' and '{}' have different feature columns ({} against {})",
                    first.site,
                    offer.site,
                    tessera_core::shown(&first.columns.join(", "), 500),
                    tessera_core::shown(&offer.columns.join(", "), 500)
                )));
            }
            for (name, &found) in offer.columns.iter().zip(&offer.text) {
                if found && let Some(i) = first.columns.iter().position(|c| c == name) {
                    text[i] = true;
                }
            }
        }
        Ok(KindsOffer {
            site: site.to_string(),
            columns: first.columns.clone(),
            text,
        })
    }
}

impl LevelsOffer {
    /// What an aggregator offers for its members: the union of their sets
    /// (the parent's vocabulary is the sorted union, so it comes out the same).
    pub fn merge(site: &str, columns: usize, offers: &[LevelsOffer]) -> LevelsOffer {
        let union = |sets: Vec<&[String]>| agree_levels(sets);
        LevelsOffer {
            site: site.to_string(),
            levels: (0..columns)
                .map(|c| {
                    union(
                        offers
                            .iter()
                            .filter_map(|o| o.levels.get(c).map(Vec::as_slice))
                            .collect(),
                    )
                })
                .collect(),
            classes: union(offers.iter().map(|o| o.classes.as_slice()).collect()),
            train_classes: union(offers.iter().map(|o| o.train_classes.as_slice()).collect()),
            train_rows: offers
                .iter()
                .fold(0u64, |n, o| n.saturating_add(o.train_rows)),
            test_rows: offers
                .iter()
                .fold(0u64, |n, o| n.saturating_add(o.test_rows)),
        }
    }
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
    Ok(Agreement {
        columns: kinds.columns.clone(),
        encodings,
        classes,
    })
}

/// `[data.synthetic]`: the generated rows at `path`, every other file from
/// `rest`.
struct Generated<'a> {
    path: std::path::PathBuf,
    csv: Vec<u8>,
    rest: &'a dyn FileSource,
}

impl<'a> Generated<'a> {
    fn new(
        config: &crate::SyntheticConfig,
        path: std::path::PathBuf,
        rest: &'a dyn FileSource,
    ) -> Result<Self, DataError> {
        let mut csv = Vec::new();
        crate::synth::write_synthetic(&config.synth(), &mut csv).map_err(|source| {
            DataError::Io {
                path: path.clone(),
                source,
            }
        })?;
        Ok(Self { path, csv, rest })
    }
}

impl FileSource for Generated<'_> {
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn std::io::Read + '_>> {
        if path == self.path {
            Ok(Box::new(self.csv.as_slice()))
        } else {
            self.rest.open(path)
        }
    }
}

/// Reads and prepares every site's data as `config` describes, running the
/// agreement steps in process. Relative paths are resolved against
/// `base_dir` (the plan file's folder).
pub fn load(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<FederatedData, DataError> {
    let (generated, named);
    let (config, source) = match &config.synthetic {
        Some(synthetic) => {
            // The generated rows go by `path`, or by a name of their own.
            let mut with_path = config.clone();
            let path = with_path
                .path
                .get_or_insert_with(|| "synthetic.csv".into())
                .clone();
            named = with_path;
            generated = Generated::new(synthetic, base_dir.join(path), source)?;
            (&named, &generated as &dyn FileSource)
        }
        None => (config, source),
    };
    let mut sites = read_local_sites(config, base_dir, source)?;
    if sites.is_empty() {
        return Err(DataError::Unusable("no site has any rows".into()));
    }
    let kinds = agree_kinds(
        config,
        &sites.iter().map(LocalSite::kinds_offer).collect::<Vec<_>>(),
    )?;
    let offers = sites
        .iter_mut()
        .map(|s| s.levels_offer(config, &kinds))
        .collect::<Result<Vec<_>, _>>()?;
    let agreement = agree_vocabulary(config, &kinds, &offers)?;
    // Each site's raw columns are freed as soon as it is encoded.
    let mut prepared = Vec::with_capacity(sites.len());
    let mut summary = Vec::with_capacity(sites.len());
    for site in sites {
        let (data, counts) = site.prepare(config, &agreement)?;
        prepared.push(data);
        summary.push(counts);
    }
    let mut data = FederatedData {
        feature_names: agreement.feature_names(),
        task: agreement.task(),
        sites: prepared,
        summary,
    };
    if config.standardize.scope == ScaleScope::Federation {
        let scaler = Scaler::from_statistics(&data.federation_statistics(), &config.standardize);
        for site in &mut data.sites {
            site.rescale(scaler.clone());
        }
    }
    Ok(data)
}

/// Seeded split of the kept rows, per class when stratified.
fn random_split(
    config: &DataConfig,
    site: &str,
    classes: &[Option<String>],
    kept: &[bool],
) -> Vec<Membership> {
    let split = &config.split;
    let mut membership = vec![Membership::Excluded; classes.len()];
    let mut groups: std::collections::BTreeMap<&str, Vec<usize>> =
        std::collections::BTreeMap::new();
    for (row, class) in classes.iter().enumerate() {
        if let (true, Some(class)) = (kept[row], class) {
            let key = if split.stratify { class.as_str() } else { "" };
            groups.entry(key).or_default().push(row);
        }
    }
    for (key, rows) in groups {
        let mut rng = SeededRng::derived(split.seed, &[tag(site), tag(key)]);
        let order = rng.permutation(rows.len());
        let n_test = ((rows.len() as f64) * split.test_fraction).round() as usize;
        let n_test = n_test.min(rows.len().saturating_sub(1));
        for (rank, &i) in order.iter().enumerate() {
            membership[rows[i]] = if rank < n_test {
                Membership::Test
            } else {
                Membership::Train
            };
        }
    }
    membership
}

/// (site, row_in_file) -> membership, with the line of each entry.
type MembershipTable = HashMap<(String, u64), (Membership, u64)>;

fn read_membership(
    file: &MembershipFile,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<MembershipTable, DataError> {
    let path = &file.path;
    let stream = crate::read::source_open(source, &base_dir.join(path), path)?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(stream);
    let headers = reader
        .headers()
        .map_err(|e| DataError::at(path, Some(1), None, format!("malformed CSV: {e}")))?
        .clone();
    let find = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            DataError::at(
                path,
                Some(1),
                None,
                format!(
                    "no column named '{name}' (columns: {})",
                    tessera_core::shown(&headers.iter().collect::<Vec<_>>().join(", "), 500)
                ),
            )
        })
    };
    let (site_i, row_i, split_i) = (
        find(&file.site_column)?,
        find(&file.row_column)?,
        find(&file.split_column)?,
    );
    let mut table = MembershipTable::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            DataError::at(
                path,
                e.position().map(|p| p.line()),
                None,
                format!("malformed CSV: {e}"),
            )
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or_default();
        let row: u64 = field(row_i).parse().map_err(|_| {
            DataError::at(
                path,
                Some(line),
                Some(row_i + 1),
                format!("row index '{}' is not a non-negative integer", field(row_i)),
            )
        })?;
        let membership = match field(split_i) {
            "train" => Membership::Train,
            "test" => Membership::Test,
            "dropped" => Membership::Excluded,
            other => {
                return Err(DataError::at(
                    path,
                    Some(line),
                    Some(split_i + 1),
                    format!("split '{other}' is not train, test or dropped"),
                ));
            }
        };
        if table
            .insert((field(site_i).to_string(), row), (membership, line))
            .is_some()
        {
            return Err(DataError::at(
                path,
                Some(line),
                None,
                format!("row {row} of site '{}' is listed twice", field(site_i)),
            ));
        }
    }
    Ok(table)
}

fn membership_from_table(
    table: &MembershipTable,
    file: &Path,
    site: &RawSite,
    kept: &[bool],
    counts: &mut SiteSummary,
) -> Result<Vec<Membership>, DataError> {
    let mut membership = Vec::with_capacity(kept.len());
    for (row, &keep) in kept.iter().enumerate() {
        let key = (site.name.clone(), site.row_in_file[row]);
        let Some(&(listed, _line)) = table.get(&key) else {
            return Err(DataError::at(
                file,
                None,
                None,
                format!(
                    "row {} of site '{}' ({}:{}) has no entry",
                    site.row_in_file[row],
                    site.name,
                    site.file.display(),
                    site.lines[row]
                ),
            ));
        };
        if listed == Membership::Excluded && keep {
            counts.dropped_by_membership += 1;
        }
        membership.push(if keep { listed } else { Membership::Excluded });
    }
    Ok(membership)
}

/// The levels a site's kept rows use, sorted.
fn present_levels(values: &Values, membership: &[Membership]) -> Vec<String> {
    let Values::Categorical { codes, levels } = values else {
        return Vec::new();
    };
    let used: BTreeSet<u32> = codes
        .iter()
        .zip(membership)
        .filter(|&(&code, &m)| code != MISSING_CODE && m != Membership::Excluded)
        .map(|(&code, _)| code)
        .collect();
    agree_levels([used
        .iter()
        .map(|&c| levels[c as usize].clone())
        .collect::<Vec<_>>()
        .as_slice()])
}

/// Encodes, imputes and standardises one site's rows.
fn encode_site(
    config: &DataConfig,
    site: &RawSite,
    labels: &[Option<u32>],
    membership: &[Membership],
    encoders: &[Encoding],
    n_features: usize,
    counts: &mut SiteSummary,
) -> SiteData {
    let rows_of = |which: Membership| -> Vec<usize> {
        (0..labels.len())
            .filter(|&r| membership[r] == which)
            .collect()
    };
    let (train_rows, test_rows) = (rows_of(Membership::Train), rows_of(Membership::Test));
    let matrix = |rows: &[usize]| -> Array2<f32> {
        let mut x = Array2::<f32>::zeros((rows.len(), n_features));
        let mut offset = 0;
        for (values, encoder) in site.features.iter().zip(encoders) {
            match (values, encoder) {
                (Values::Numeric(v), Encoding::Numeric) => {
                    for (i, &r) in rows.iter().enumerate() {
                        x[[i, offset]] = v[r] as f32;
                    }
                }
                (
                    Values::Categorical {
                        codes,
                        levels: local,
                    },
                    Encoding::OneHot { levels, drop_first },
                ) => {
                    let skip = usize::from(*drop_first);
                    let column_of: Vec<Option<usize>> = local
                        .iter()
                        .map(|l| {
                            levels
                                .iter()
                                .position(|g| g == l)
                                .and_then(|p| p.checked_sub(skip))
                        })
                        .collect();
                    for (i, &r) in rows.iter().enumerate() {
                        if codes[r] != MISSING_CODE
                            && let Some(c) = column_of[codes[r] as usize]
                        {
                            x[[i, offset + c]] = 1.0;
                        }
                    }
                }
                _ => unreachable!("encoders are built from the same columns"),
            }
            offset += encoder.width();
        }
        x
    };
    let mut raw_train = matrix(&train_rows);
    let mut raw_test = matrix(&test_rows);
    // Impute missing numbers with the site's training mean of the column.
    for j in 0..n_features {
        let column = raw_train.column(j);
        let present: Vec<f64> = column
            .iter()
            .filter(|v| !v.is_nan())
            .map(|&v| f64::from(v))
            .collect();
        if present.len() == column.len() && !raw_test.column(j).iter().any(|v| v.is_nan()) {
            continue;
        }
        // Without any training value the column is absent at this site: every
        // value becomes 0, test rows included, so none reaches the model unscaled.
        let absent = present.is_empty();
        let mean = if absent {
            0.0
        } else {
            present.iter().sum::<f64>() / present.len() as f64
        };
        for m in [&mut raw_train, &mut raw_test] {
            for v in m.column_mut(j) {
                if v.is_nan() || absent {
                    *v = mean as f32;
                    counts.imputed_values += 1;
                }
            }
        }
    }
    let scaler = Scaler::fit(&raw_train, &config.standardize);
    let labels_of = |rows: &[usize]| {
        rows.iter()
            .map(|&r| labels[r].unwrap_or(0))
            .collect::<Vec<u32>>()
    };
    SiteData {
        name: site.name.clone(),
        train: Dataset {
            x: scaler.apply(&raw_train),
            y: labels_of(&train_rows),
        },
        test: Dataset {
            x: scaler.apply(&raw_test),
            y: labels_of(&test_rows),
        },
        raw_train,
        raw_test,
        scaler,
    }
}
