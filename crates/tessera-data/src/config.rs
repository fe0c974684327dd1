//! The data section of a plan: where each site's rows are, what the columns
//! mean, how rows are split and scaled. Pure configuration, deserialised from
//! TOML; `load` turns it into per-site datasets.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::DataError;

mod cross_silo;
pub use cross_silo::{CrossSiloConfig, MAX_VISITS};

/// Where the data is and how to read it.
///
/// Either `path` + `site_column` (one file, a column names each row's site),
/// `path` + `partition` (one file without sites, split into synthetic sites),
/// or `sites` (one file per site). Files ending in `.gz` are gunzipped as read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// One file holding every site's rows.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// With `path`: the column naming each row's site.
    #[serde(default)]
    pub site_column: Option<String>,
    /// With `path` and no site column: deal the rows out to synthetic sites.
    #[serde(default)]
    pub partition: Option<PartitionConfig>,
    /// One file per site.
    #[serde(default)]
    pub sites: Vec<SiteFile>,
    /// Columns, target, missing values.
    pub schema: SchemaConfig,
    /// Train/test split.
    #[serde(default)]
    pub split: SplitConfig,
    /// Per-site standardisation.
    #[serde(default)]
    pub standardize: StandardizeConfig,
    /// The rows are generated (Synthetic(alpha, beta)) in memory, as
    /// `tessera synth` would write them, instead of read (with
    /// `site_column = "site"`; a `path`, if given, only names them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<SyntheticConfig>,
    /// A feature computed across sites from an identifier column under
    /// differential privacy (`[data.cross_silo]`; simulation and deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_silo: Option<CrossSiloConfig>,
}

/// Li et al.'s Synthetic(alpha, beta) rows, generated where a plan is run
/// (`[data.synthetic]`): columns `site`, `x0..`, `y`; sites `site0`, `site1`, ...
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Sites.
    pub sites: usize,
    /// Rows per site.
    pub rows: usize,
    /// Features per row.
    pub features: usize,
    /// Classes.
    pub classes: usize,
    /// Variance of the per-site model mean: how much site models differ.
    pub alpha: f64,
    /// Variance of the per-site input mean: how much site inputs differ.
    pub beta: f64,
    /// Seed.
    pub seed: u64,
    /// Departments within each site, named in a `department` column (0,
    /// the default: none, the paper's rows).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub departments: usize,
    /// Variance of a department's shift of its site's model (default 1).
    #[serde(
        default = "default_department_variance",
        skip_serializing_if = "is_default_department_variance"
    )]
    pub department_variance: f64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn default_department_variance() -> f64 {
    1.0
}

fn is_default_department_variance(v: &f64) -> bool {
    *v == default_department_variance()
}

/// Most departments per site `[data.synthetic]` generates.
pub const MAX_SYNTHETIC_DEPARTMENTS: usize = 1000;

/// Most values `[data.synthetic]` generates (sites x rows x columns): about
/// 2 GB of text.
pub const MAX_SYNTHETIC_VALUES: u64 = 100_000_000;

impl SyntheticConfig {
    /// The generator's parameters.
    pub fn synth(&self) -> crate::synth::SynthConfig {
        crate::synth::SynthConfig {
            sites: self.sites,
            rows_per_site: self.rows,
            features: self.features,
            classes: self.classes,
            alpha: self.alpha,
            beta: self.beta,
            seed: self.seed,
            departments: self.departments,
            department_variance: self.department_variance,
        }
    }

    fn validate(&self, config: &DataConfig) -> Result<(), String> {
        let mut reasons = Vec::new();
        if config.site_column.as_deref() != Some("site") || config.partition.is_some() {
            reasons.push(
                "needs site_column = \"site\" (the generated rows name their sites there), \
                 without `partition`"
                    .to_string(),
            );
        }
        if !config.sites.is_empty() {
            reasons.push("generates one set of rows: give no `sites`".to_string());
        }
        if config.schema.target != "y" {
            reasons.push(format!(
                "generates target column `y`, the schema says `{}`",
                tessera_core::shown(&config.schema.target, 100)
            ));
        }
        if self.sites == 0 || self.rows == 0 || self.features == 0 {
            reasons.push("sites, rows and features must be at least 1".to_string());
        }
        if self.classes < 2 {
            reasons.push(format!("classes must be at least 2, got {}", self.classes));
        }
        let shifts = (self.departments as u64).checked_mul(
            (self.classes as u64)
                .saturating_mul(self.features as u64)
                .saturating_add(self.classes as u64),
        );
        if shifts.is_none_or(|n| n > MAX_SYNTHETIC_VALUES) {
            reasons.push(format!(
                "departments x classes x (features + 1) must be at most {MAX_SYNTHETIC_VALUES}"
            ));
        }
        if self.departments > MAX_SYNTHETIC_DEPARTMENTS {
            reasons.push(format!(
                "departments must be at most {MAX_SYNTHETIC_DEPARTMENTS}, got {}",
                self.departments
            ));
        }
        for (name, v) in [
            ("alpha", self.alpha),
            ("beta", self.beta),
            ("department_variance", self.department_variance),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                reasons.push(format!(
                    "{name} must be a variance (finite, >= 0), got {}",
                    tessera_core::value(v)
                ));
            }
        }
        let values = (self.sites as u64)
            .checked_mul(self.rows as u64)
            .and_then(|n| {
                let columns = (self.features as u64)
                    .saturating_add(2)
                    .saturating_add(u64::from(self.departments > 0));
                n.checked_mul(columns)
            });
        if values.is_none_or(|v| v > MAX_SYNTHETIC_VALUES) {
            reasons.push(format!(
                "sites x rows x columns (features + 2, one more with departments) \
                 must be at most {MAX_SYNTHETIC_VALUES}"
            ));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }
}

/// Synthetic sites for data that has none: each class's rows are dealt to
/// the sites in proportions drawn from a symmetric Dirichlet(alpha) (label
/// skew as in Hsu et al. 2019 and Flower's `DirichletPartitioner`; small
/// alpha, strong skew). Sites are named `site-01`, `site-02`, ...
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    /// Number of sites.
    pub sites: usize,
    /// Dirichlet concentration.
    pub alpha: f64,
    /// Seed of the draw (independent of the run seed).
    #[serde(default)]
    pub seed: u64,
    /// Fewest rows a site may get; the proportions are drawn again until
    /// every site has this many (at most 1000 draws).
    #[serde(default = "default_min_rows")]
    pub min_rows: usize,
}

fn default_min_rows() -> usize {
    10
}

/// One site's file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteFile {
    /// The site's name.
    pub name: String,
    /// Its CSV file (relative paths are relative to the plan file).
    pub path: PathBuf,
    /// The site's mapping file ([`crate::mapping::Mapping`]: its own column
    /// names, codings and units to the plan's), applied as the file is
    /// read (relative to the plan file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<PathBuf>,
}

/// What the columns of the CSV files are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// Whether the first line of each file names the columns. Without a header
    /// and without `columns`, columns are named by position: "1", "2", ...
    #[serde(default = "default_true")]
    pub header: bool,
    /// Field separator.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Column descriptions. Without a header: every column, in file order.
    /// With a header: overrides by name; unlisted columns are features whose
    /// type is inferred (numeric unless a non-missing value fails to parse).
    #[serde(default)]
    pub columns: Vec<ColumnSpec>,
    /// Tokens that mark a missing value (compared after trimming spaces).
    #[serde(default = "default_missing")]
    pub missing: Vec<String>,
    /// The column to predict.
    pub target: String,
    /// Target values counted as the positive class (binary tasks).
    #[serde(default)]
    pub positive: Vec<String>,
    /// Target values counted as the negative class; every other value is positive.
    #[serde(default)]
    pub negative: Vec<String>,
    /// What to do with a row whose feature is missing.
    #[serde(default)]
    pub missing_policy: MissingPolicy,
    /// What a site's mapping that lists a column the plan uses as
    /// `absent` (new since the site's schema version) gets: refused
    /// (default), or imputed like a missing value (`"impute"`, with
    /// `missing_policy = "impute_mean"`: zero at that site).
    #[serde(default, skip_serializing_if = "AbsentPolicy::is_refuse")]
    pub absent: AbsentPolicy,
    /// The version of the federation's target schema these columns follow
    /// (`examples/schemas/`); a site's mapping made for another version is
    /// refused, naming the upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// One column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Column name.
    pub name: String,
    /// Numeric, categorical or ignored.
    #[serde(rename = "type")]
    pub kind: ColumnKind,
    /// Categorical: the levels, fixing the one-hot layout. Without it the
    /// levels are the union of the sites' levels, sorted.
    #[serde(default)]
    pub levels: Option<Vec<String>>,
    /// Categorical: leave out the first level's indicator (as pandas `drop_first`).
    #[serde(default)]
    pub drop_first: bool,
    /// Numeric: the smallest value expected (inclusive). A value below it
    /// is kept as read, and counted against the site's data quality score
    /// (`in_range`); reading never clips or drops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Numeric: the largest value expected (inclusive), as `min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl ColumnSpec {
    /// Whether a value is outside the column's bounds (never a missing one).
    pub fn out_of_range(&self, value: f64) -> bool {
        !value.is_nan()
            && (self.min.is_some_and(|min| value < min) || self.max.is_some_and(|max| value > max))
    }

    /// Whether the column gives a bound.
    pub fn is_bounded(&self) -> bool {
        self.min.is_some() || self.max.is_some()
    }
}

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    /// Parsed as a number; one feature.
    Numeric,
    /// Any text; one-hot encoded with a vocabulary shared by all sites.
    Categorical,
    /// Not used.
    Ignore,
}

/// What a plan does with a column a site's mapping lists as absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbsentPolicy {
    /// Refuse the site's file, naming the column.
    #[default]
    Refuse,
    /// Impute it like a missing value.
    Impute,
}

impl AbsentPolicy {
    fn is_refuse(&self) -> bool {
        *self == AbsentPolicy::Refuse
    }
}

/// Handling of missing feature values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingPolicy {
    /// Numeric: the site's training mean; categorical: no level set.
    #[default]
    ImputeMean,
    /// Drop the row.
    Drop,
}

/// How each site's rows are split into train and test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Share of each site's rows held out for testing.
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// Split each class separately so train and test keep the site's class balance.
    #[serde(default = "default_true")]
    pub stratify: bool,
    /// Seed of the split; independent of the run seed so that runs with
    /// different seeds see the same rows.
    #[serde(default)]
    pub seed: u64,
    /// Explicit row membership, overriding the random split.
    #[serde(default)]
    pub membership: Option<MembershipFile>,
}

/// A CSV (with header) that says for each row of each site whether it is in
/// the training or test split, or dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipFile {
    /// The file.
    pub path: PathBuf,
    /// Column holding the site name.
    pub site_column: String,
    /// Column holding the 0-based index of the data row in its file (header excluded).
    pub row_column: String,
    /// Column holding `train`, `test` or `dropped`.
    pub split_column: String,
}

/// Standardisation: `(x - mean) / (std + epsilon)` with training statistics,
/// each site's own (`scope = "site"`) or the federation's (`"federation"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandardizeConfig {
    /// Whether to standardise at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Whose statistics.
    #[serde(default)]
    pub scope: ScaleScope,
    /// Delta degrees of freedom of the standard deviation (1: unbiased).
    #[serde(default = "default_ddof")]
    pub ddof: u32,
    /// Added to the standard deviation.
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
    /// What becomes of a categorical column's one-hot indicators.
    #[serde(default)]
    pub indicators: IndicatorScaling,
}

/// What standardisation does to one-hot indicators (measurements are
/// always standardised when standardisation is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndicatorScaling {
    /// Left as 0 and 1: an indicator's weight is the code's effect on the
    /// log-odds, and a rare code stays 1 instead of becoming a value near
    /// `1 / sqrt(frequency)` (about 100 for a code in one row of 10,000).
    #[default]
    Keep,
    /// Standardised like a measurement, `(x - mean) / (std + epsilon)`
    /// (FLamby's protocol for Fed-Heart-Disease does this).
    Standardize,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            test_fraction: default_test_fraction(),
            stratify: true,
            seed: 0,
            membership: None,
        }
    }
}

/// Whose training statistics standardise a site's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleScope {
    /// The site's own: removes differences of scale and offset between sites.
    #[default]
    Site,
    /// The federation's, combined from each site's count, mean and sum of
    /// squared deviations (never rows): keeps differences between sites.
    Federation,
}

impl Default for StandardizeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            scope: ScaleScope::default(),
            ddof: default_ddof(),
            epsilon: default_epsilon(),
            indicators: IndicatorScaling::default(),
        }
    }
}

impl SchemaConfig {
    /// A schema for a headed CSV with every column inferred.
    pub fn inferred(target: impl Into<String>) -> Self {
        Self {
            header: true,
            delimiter: default_delimiter(),
            columns: Vec::new(),
            missing: default_missing(),
            target: target.into(),
            positive: Vec::new(),
            negative: Vec::new(),
            missing_policy: MissingPolicy::default(),
            absent: AbsentPolicy::default(),
            version: None,
        }
    }
}

impl DataConfig {
    /// The sites the plan names: its `sites`, or those `[data.synthetic]`
    /// generates (`site0`, `site1`, ...); empty where the sites are
    /// whoever holds rows of the plan's file.
    pub fn named_sites(&self) -> Vec<String> {
        match &self.synthetic {
            Some(synthetic) if self.sites.is_empty() => {
                (0..synthetic.sites).map(|k| format!("site{k}")).collect()
            }
            _ => self.sites.iter().map(|s| s.name.clone()).collect(),
        }
    }

    /// Checks what can be checked without reading any file.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |msg: &str| Err(DataError::Config(msg.to_string()));
        if let Some(synthetic) = &self.synthetic {
            synthetic
                .validate(self)
                .map_err(|e| DataError::Config(format!("synthetic: {e}")))?;
        }
        if let Some(cross_silo) = &self.cross_silo {
            cross_silo
                .validate(self)
                .map_err(|e| DataError::Config(format!("cross_silo: {e}")))?;
        }
        match (&self.path, self.sites.is_empty()) {
            (None, true) if self.synthetic.is_some() => {}
            (Some(_), false) => {
                return bad("give either `path` with `site_column` or `sites`, not both");
            }
            (None, true) => return bad("no data: give `path` with `site_column`, or `sites`"),
            (Some(_), true) if self.site_column.is_none() && self.partition.is_none() => {
                return bad(
                    "`path` needs `site_column` naming the column that holds each row's site, or `partition`",
                );
            }
            (Some(_), true) if self.site_column.is_some() && self.partition.is_some() => {
                return bad(
                    "give `site_column` (the file names each row's site) or `partition`, not both",
                );
            }
            (None, _) if self.partition.is_some() => {
                return bad("`partition` deals out the rows of one `path`");
            }
            (None, false) if self.site_column.is_some() => {
                return bad(
                    "`site_column` is only for a single `path`; with `sites` each file is one site",
                );
            }
            _ => {}
        }
        let mut names: Vec<&str> = self.sites.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(DataError::Config(format!(
                "site '{}' is listed twice",
                w[0]
            )));
        }
        let split = &self.split;
        if !(split.test_fraction > 0.0 && split.test_fraction < 1.0) {
            return Err(DataError::Config(format!(
                "split.test_fraction must be between 0 and 1, got {}",
                tessera_core::value(split.test_fraction)
            )));
        }
        if !(self.standardize.epsilon >= 0.0 && self.standardize.epsilon.is_finite()) {
            return bad("standardize.epsilon must be a finite number >= 0");
        }
        let schema = &self.schema;
        if !schema.positive.is_empty() && !schema.negative.is_empty() {
            return bad("give the target's `positive` values or its `negative` values, not both");
        }
        if let Some(p) = &self.partition {
            if p.sites == 0 {
                return bad("partition.sites must be at least 1");
            }
            if !(p.alpha > 0.0 && p.alpha.is_finite()) {
                return Err(DataError::Config(format!(
                    "partition.alpha must be positive, got {}",
                    tessera_core::value(p.alpha)
                )));
            }
        }
        if !schema.delimiter.is_ascii() {
            return bad("the delimiter must be one ASCII character");
        }
        let mut seen: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        seen.sort_unstable();
        if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
            return Err(DataError::Config(format!(
                "column '{}' is described twice",
                w[0]
            )));
        }
        for column in &schema.columns {
            if column.kind != ColumnKind::Categorical
                && (column.levels.is_some() || column.drop_first)
            {
                return Err(DataError::Config(format!(
                    "column '{}': `levels` and `drop_first` apply to categorical columns only",
                    column.name
                )));
            }
            if column.is_bounded() {
                let name = &column.name;
                if column.kind != ColumnKind::Numeric || *name == schema.target {
                    return Err(DataError::Config(format!(
                        "column '{name}': `min` and `max` apply to numeric feature columns only"
                    )));
                }
                if column
                    .min
                    .into_iter()
                    .chain(column.max)
                    .any(|b| !b.is_finite())
                {
                    return Err(DataError::Config(format!(
                        "column '{name}': `min` and `max` must be finite numbers"
                    )));
                }
                if let (Some(min), Some(max)) = (column.min, column.max)
                    && min > max
                {
                    return Err(DataError::Config(format!(
                        "column '{name}': min = {min} is above max = {max}"
                    )));
                }
            }
            // Levels are read canonically: `1` and `1.0` are one level,
            // which a list must not give twice (a row would count twice).
            let mut levels: Vec<String> = column
                .levels
                .iter()
                .flatten()
                .map(|l| crate::canonical_level(l))
                .collect();
            levels.sort_unstable();
            if let Some(w) = levels.windows(2).find(|w| w[0] == w[1]) {
                return Err(DataError::Config(format!(
                    "column '{}': level '{}' is listed twice (levels are read as numbers where \
                     they are: `1` and `1.0` are one)",
                    column.name, w[0]
                )));
            }
        }
        if !schema.header
            && !schema.columns.is_empty()
            && !schema.columns.iter().any(|c| c.name == schema.target)
        {
            return Err(DataError::Config(format!(
                "target '{}' is not among the listed columns",
                schema.target
            )));
        }
        Ok(())
    }
}

fn default_true() -> bool {
    true
}
fn default_delimiter() -> char {
    ','
}
fn default_missing() -> Vec<String> {
    ["", "?", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"]
        .into_iter()
        .map(String::from)
        .collect()
}
fn default_test_fraction() -> f64 {
    0.2
}
fn default_ddof() -> u32 {
    1
}
fn default_epsilon() -> f64 {
    1e-9
}
