//! A site's mapping: how its own CSV file (its column names, codings and
//! units) becomes the plan's columns, applied as the site reads its data.
//!
//! A mapping file (TOML, reviewed and kept by the site) says, for each of
//! the plan's columns, where it comes from:
//!
//! ```toml
//! version = 1                      # this mapping's own version
//! schema_version = 2               # the schema version it maps to (required where the plan names one)
//! missing = ["", "NA"]             # this file's missing-value tokens
//!
//! [columns]                        # the plan's name = this file's name
//! age = "Age (years)"
//! sex = "Sex"
//! chol = "Cholesterol"
//!
//! [recode.sex]                     # this file's value = the plan's value
//! M = "1"
//! F = "0"
//!
//! [convert.chol]                   # a unit conversion from the unit table
//! from = "mmol/L"
//! to = "mg/dL"
//! substance = "cholesterol"        # where the units depend on it
//! decimals = 0                     # round to the plan's precision
//!
//! [derive.age]                     # a column computed from another
//! years_since = "birth_year"       # age = year - birth_year
//! year = 1988
//!
//! # absent = ["smoker"]            # (top level) schema columns the file does
//! #                                # not have: never read by name
//! ```
//!
//! A plan column the mapping does not name comes from the file's column of
//! the same name; one with no source is refused, naming the file's columns
//! (a column the plan ignores is left missing instead). The file's other
//! columns are not read. The file is read as a stream, row by row, and
//! rewritten into the plan's layout before the loader parses it, so a
//! mapped file and a file already in the plan's layout load alike.

mod units;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::DataError;
use crate::config::{ColumnKind, SchemaConfig};
use crate::read::source::MAX_LINE_BYTES;
use crate::read::{FileSource, source_open};

pub use units::{Linear, canonical as canonical_unit, conversion, units};

/// The largest mapping file read (1 MiB).
pub const MAX_MAPPING_BYTES: u64 = 1 << 20;

/// A site's mapping file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// The mapping's own version (from 1), kept with it as it is reviewed.
    pub version: u32,
    /// The version of the plan's schema this mapping maps to, where the
    /// federation versions its schema.
    #[serde(default)]
    pub schema_version: Option<u32>,
    /// Whether the file's first line names its columns (without one they
    /// are named by position: "1", "2", ...).
    #[serde(default = "yes")]
    pub header: bool,
    /// The file's field separator.
    #[serde(default = "comma")]
    pub delimiter: char,
    /// The file's missing-value tokens (default: the plan's).
    #[serde(default)]
    pub missing: Option<Vec<String>>,
    /// The plan's column name = the file's column name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, String>,
    /// Per plan column: the file's value = the plan's value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub recode: BTreeMap<String, BTreeMap<String, String>>,
    /// Per plan column: a unit conversion.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub convert: BTreeMap<String, Conversion>,
    /// Per plan column: computed from another of the file's columns.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub derive: BTreeMap<String, Derivation>,
    /// Schema columns this file does not have (added since the file's
    /// version): never read from a column of the same name; missing where
    /// the plan ignores them; where it uses them, refused unless the plan
    /// says `[data.schema] absent = "impute"` (with `missing_policy =
    /// "impute_mean"`: zero at this site, as for any column a site lacks;
    /// never the target or a `drop_first` column).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<String>,
}

fn yes() -> bool {
    true
}

fn comma() -> char {
    ','
}

/// A unit conversion of one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conversion {
    /// The file's unit.
    pub from: String,
    /// The plan's unit.
    pub to: String,
    /// The substance, where the conversion depends on it (mg/dL and mmol/L).
    #[serde(default)]
    pub substance: Option<String>,
    /// Decimal places to round the converted value to (none: as computed).
    #[serde(default)]
    pub decimals: Option<u32>,
}

/// A column computed from another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Derivation {
    /// `year - value` of this column of the file (an age from a birth year).
    pub years_since: String,
    /// The year it counts to.
    pub year: i32,
}

impl Mapping {
    /// Reads and checks the mapping file at `path`.
    pub fn from_file(path: &Path) -> Result<Mapping, DataError> {
        let bad = |message: String| DataError::Config(format!("{}: {message}", path.display()));
        let file = std::fs::File::open(path).map_err(|e| DataError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mut text = String::new();
        file.take(MAX_MAPPING_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| bad(format!("cannot read: {e}")))?;
        if text.len() as u64 > MAX_MAPPING_BYTES {
            return Err(bad(format!(
                "a mapping file is at most {} KiB",
                MAX_MAPPING_BYTES >> 10
            )));
        }
        Mapping::from_toml(&text).map_err(bad)
    }

    /// Parses and checks a mapping.
    pub fn from_toml(text: &str) -> Result<Mapping, String> {
        let mapping: Mapping = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(name) = mapping.named().find(|n| mapping.absent.contains(n)) {
            return Err(format!(
                "'{name}' is listed absent and also mapped: it is one or the other"
            ));
        }
        if mapping.version == 0 {
            return Err("`version` starts at 1".into());
        }
        let d = mapping.delimiter;
        if !d.is_ascii() || d.is_ascii_control() && d != '\t' || d == '"' {
            return Err(format!(
                "`delimiter` must be one printable ASCII character (or a tab) other than '\"', \
                 got {:?}",
                mapping.delimiter
            ));
        }
        for (column, c) in &mapping.convert {
            conversion(&c.from, &c.to, c.substance.as_deref())
                .map_err(|e| format!("[convert.{column}]: {e}"))?;
            if c.decimals.is_some_and(|d| d > 12) {
                return Err(format!("[convert.{column}]: `decimals` is at most 12"));
            }
        }
        for column in mapping.derive.keys() {
            if mapping.columns.contains_key(column) {
                return Err(format!(
                    "'{column}' is both renamed ([columns]) and derived ([derive]); keep one"
                ));
            }
        }
        Ok(mapping)
    }

    /// The plan columns this mapping names anywhere, each once.
    fn named(&self) -> impl Iterator<Item = &String> {
        let mut all: Vec<&String> = self
            .columns
            .keys()
            .chain(self.recode.keys())
            .chain(self.convert.keys())
            .chain(self.derive.keys())
            .collect();
        all.sort();
        all.dedup();
        all.into_iter()
    }
}

/// The plan's columns a mapped file is rewritten into, in order: without a
/// header the schema's columns; with one, the schema's listed columns, the
/// target, then the mapping's other columns.
fn target_columns(schema: &SchemaConfig, mapping: &Mapping) -> Result<Vec<Target>, String> {
    if let (Some(plan), None) = (schema.version, mapping.schema_version) {
        return Err(format!(
            "the plan's columns are schema version {plan} and the mapping does not say which \
             version it maps to: declare `schema_version` (after `tessera schema upgrade` where \
             it maps to an older one)"
        ));
    }
    if let (Some(plan), Some(own)) = (schema.version, mapping.schema_version)
        && plan != own
    {
        return Err(format!(
            "the mapping maps to schema version {own} and the plan's columns are version {plan}: \
             upgrade it with `tessera schema upgrade --schema SCHEMA --from {own} --mapping \
             THIS_FILE --out NEW_FILE`"
        ));
    }
    let mut names: Vec<(String, bool)> = schema
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.kind == ColumnKind::Ignore))
        .collect();
    if !schema.header {
        if names.is_empty() {
            return Err(
                "the plan's files have no header and it lists no columns, so its columns have \
                 no names to map to; list them in [data.schema] columns"
                    .into(),
            );
        }
    } else if !names.iter().any(|(n, _)| *n == schema.target) {
        // With a header the plan lists only some columns: a mapped file
        // gives those and the target.
        names.push((schema.target.clone(), false));
    }
    for name in mapping.named() {
        if !names.iter().any(|(n, _)| n == name) {
            let all: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
            return Err(format!(
                "it maps '{name}', which is not a column of the plan (its columns: {}{})",
                tessera_core::shown(&all.join(", "), 500),
                if schema.header {
                    "; a mapped file gives the columns the plan lists and its target"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(names
        .into_iter()
        .map(|(name, ignored)| Target { name, ignored })
        .collect())
}

#[derive(Debug, Clone)]
struct Target {
    name: String,
    ignored: bool,
}

/// A file source that reads one site's file through its mapping; every
/// other path is read as it is.
pub struct Mapped<'a> {
    inner: &'a dyn FileSource,
    path: PathBuf,
    mapping: &'a Mapping,
    targets: Vec<Target>,
    /// The plan's field separator and its token for a missing value.
    delimiter: u8,
    missing_out: String,
    missing_in: Vec<String>,
    header_out: bool,
    /// Why an absent column the plan uses is refused (`None`: imputed).
    no_impute: Option<String>,
    /// The plan's target, and its columns without a first indicator.
    target: String,
    drop_first: Vec<String>,
}

impl<'a> Mapped<'a> {
    /// Reads `path` (as the loader will ask for it) through `mapping` into
    /// the layout of `schema`; refused, naming why, where they cannot meet.
    pub fn new(
        inner: &'a dyn FileSource,
        path: &Path,
        mapping: &'a Mapping,
        schema: &SchemaConfig,
    ) -> Result<Mapped<'a>, DataError> {
        let bad = |message: String| {
            DataError::Config(format!("mapping of {}: {message}", path.display()))
        };
        if path.extension().is_some_and(|e| e == "gz") {
            return Err(bad(
                "a mapped file is read as plain CSV; gunzip it first".into()
            ));
        }
        let targets = target_columns(schema, mapping).map_err(bad)?;
        Ok(Mapped {
            inner,
            path: path.to_path_buf(),
            mapping,
            targets,
            delimiter: schema.delimiter as u8,
            missing_out: schema.missing.first().cloned().unwrap_or_default(),
            missing_in: mapping
                .missing
                .clone()
                .unwrap_or_else(|| schema.missing.clone()),
            header_out: schema.header,
            no_impute: match (schema.absent, schema.missing_policy) {
                (crate::config::AbsentPolicy::Refuse, _) => Some(
                    "the plan refuses it ([data.schema] absent = \"impute\" would impute it \
                     instead)"
                        .into(),
                ),
                (_, crate::config::MissingPolicy::Drop) => {
                    Some("the plan drops rows with a missing value, so every row would go".into())
                }
                _ => None,
            },
            target: schema.target.clone(),
            drop_first: schema
                .columns
                .iter()
                .filter(|c| c.drop_first)
                .map(|c| c.name.clone())
                .collect(),
        })
    }

    fn open_mapped(&self) -> Result<MappedReader<'_>, String> {
        let file = source_open(self.inner, &self.path).map_err(|e| e.to_string())?;
        let mut records = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .delimiter(self.mapping.delimiter as u8)
            .from_reader(file)
            .into_records();
        let header: Vec<String> = if self.mapping.header {
            let first = records
                .next()
                .ok_or("the file is empty")?
                .map_err(|e| e.to_string())?;
            first
                .iter()
                .enumerate()
                .map(|(i, f)| match i {
                    0 => f.trim_start_matches('\u{feff}').to_string(),
                    _ => f.to_string(),
                })
                .collect()
        } else {
            Vec::new()
        };
        if let Some((_, twice)) =
            (header.iter().enumerate()).find(|(i, h)| header[..*i].contains(h))
        {
            return Err(format!(
                "the file names column '{}' twice",
                tessera_core::shown(twice, 200)
            ));
        }
        let field = |name: &str| -> Option<usize> {
            if self.mapping.header {
                header.iter().position(|h| h == name)
            } else {
                name.parse::<usize>()
                    .ok()
                    .filter(|&i| i >= 1)
                    .map(|i| i - 1)
            }
        };
        let mut ops = Vec::with_capacity(self.targets.len());
        for target in &self.targets {
            let name = target.name.as_str();
            let source = if self.mapping.absent.iter().any(|a| a == name) {
                // Used by the plan: imputed where the plan imputes (a
                // column no row has is zero at this site, as the loader
                // does for any column absent at a site), refused where the
                // plan drops rows with a missing value (every row would go).
                if !target.ignored {
                    if let Some(why) = &self.no_impute {
                        return Err(format!(
                            "the plan uses '{name}', which this file does not have (its \
                             mapping lists it as absent: new in a later schema version than \
                             the file's), and {why}"
                        ));
                    }
                    if *name == self.target || self.drop_first.contains(&name.to_string()) {
                        return Err(format!(
                            "'{name}' is absent from this file and is the plan's {}: it \
                             cannot be imputed",
                            if *name == self.target {
                                "target"
                            } else {
                                "column without its first level's indicator (drop_first), \
                                 whose imputed rows would read as that level"
                            }
                        ));
                    }
                }
                Source::Missing
            } else if let Some(d) = self.mapping.derive.get(name) {
                let i = field(&d.years_since)
                    .ok_or_else(|| self.lacks(name, &d.years_since, &header))?;
                Source::YearsSince(i, f64::from(d.year))
            } else {
                let from = self.mapping.columns.get(name).map_or(name, String::as_str);
                match field(from) {
                    Some(i) => Source::Field(i),
                    None if target.ignored && !self.mapping.columns.contains_key(name) => {
                        Source::Missing
                    }
                    None => return Err(self.lacks(name, from, &header)),
                }
            };
            let convert = match self.mapping.convert.get(name) {
                Some(c) => Some((
                    conversion(&c.from, &c.to, c.substance.as_deref())?,
                    c.decimals,
                )),
                None => None,
            };
            ops.push(Op {
                name: name.to_string(),
                source,
                recode: self.mapping.recode.get(name),
                convert,
            });
        }
        let mut pending = Vec::new();
        if self.header_out {
            let names: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
            write_row(&mut pending, &names, self.delimiter);
        }
        Ok(MappedReader {
            records,
            ops,
            source: self,
            width: (!header.is_empty()).then_some(header.len()),
            pending,
            at: 0,
        })
    }

    fn lacks(&self, target: &str, from: &str, header: &[String]) -> String {
        if self.mapping.header {
            format!(
                "the plan's column '{target}' comes from '{from}', which the file lacks (its \
                 columns: {}); map it in [columns] or [derive]",
                tessera_core::shown(&header.join(", "), 500)
            )
        } else {
            format!(
                "the plan's column '{target}' comes from '{from}', and a file without a header \
                 names its columns by position (\"1\", \"2\", ...)"
            )
        }
    }
}

/// Calls `read` with `inner`, or, given a `mapping` of this site's file
/// `file` (resolved against `base_dir` as the loader resolves it), with
/// `inner` reading that file through it.
pub fn with_mapping<T>(
    inner: &dyn FileSource,
    file: Option<&Path>,
    base_dir: &Path,
    mapping: Option<&Mapping>,
    schema: &SchemaConfig,
    read: impl FnOnce(&dyn FileSource) -> Result<T, DataError>,
) -> Result<T, DataError> {
    match (mapping, file) {
        (None, _) => read(inner),
        (Some(mapping), Some(file)) => {
            read(&Mapped::new(inner, &base_dir.join(file), mapping, schema)?)
        }
        (Some(_), None) => Err(DataError::Config(
            "a mapping applies to the site's own data file: give it (--data)".into(),
        )),
    }
}

impl FileSource for Mapped<'_> {
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn Read + '_>> {
        if path != self.path {
            return self.inner.open(path);
        }
        self.open_mapped()
            .map(|r| Box::new(r) as Box<dyn Read>)
            .map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("through its mapping: {e}"),
                )
            })
    }
}

/// Where a plan column's value comes from.
enum Source {
    Field(usize),
    YearsSince(usize, f64),
    Missing,
}

/// How one plan column is made.
struct Op<'a> {
    name: String,
    source: Source,
    recode: Option<&'a BTreeMap<String, String>>,
    convert: Option<(Linear, Option<u32>)>,
}

/// The mapped file as a stream of the plan's rows.
struct MappedReader<'a> {
    records: csv::StringRecordsIntoIter<Box<dyn Read + 'a>>,
    ops: Vec<Op<'a>>,
    source: &'a Mapped<'a>,
    /// Fields in every row: the header's, else the first row's.
    width: Option<usize>,
    pending: Vec<u8>,
    at: usize,
}

impl MappedReader<'_> {
    /// The next row of the plan's layout, or `None` at the end.
    fn next_row(&mut self) -> Result<Option<Vec<String>>, String> {
        let Some(record) = self.records.next() else {
            return Ok(None);
        };
        let record = record.map_err(|e| e.to_string())?;
        let line = record.position().map_or(0, csv::Position::line);
        if record.len() == 1 && record.get(0) == Some("") {
            return Ok(Some(Vec::new()));
        }
        // A row of another width would shift values into other columns.
        let width = *self.width.get_or_insert(record.len());
        if record.len() != width {
            return Err(format!(
                "line {line}: the row has {} fields, expected {width}",
                record.len()
            ));
        }
        let mapped = &self.source;
        let mut row = Vec::with_capacity(self.ops.len());
        let mut bytes = 0usize;
        for op in &self.ops {
            let at = |message: String| format!("line {line}, column '{}': {message}", op.name);
            let raw = match op.source {
                Source::Missing => None,
                Source::Field(i) | Source::YearsSince(i, _) => {
                    let raw = record.get(i).ok_or_else(|| {
                        format!("line {line}: the row has {} fields", record.len())
                    })?;
                    (!mapped.missing_in.iter().any(|m| m == raw)).then_some(raw)
                }
            };
            let value = match raw {
                None => mapped.missing_out.clone(),
                Some(raw) => op.value(raw).map_err(at)?,
            };
            // The row is bounded as the loader bounds a line, before it grows.
            bytes = bytes.saturating_add(value.len() + 1);
            if bytes > MAX_LINE_BYTES {
                return Err(format!(
                    "line {line}: the mapped row is longer than {} MiB",
                    MAX_LINE_BYTES >> 20
                ));
            }
            row.push(value);
        }
        Ok(Some(row))
    }
}

impl Op<'_> {
    /// The plan's value of this column from the file's `raw` value.
    fn value(&self, raw: &str) -> Result<String, String> {
        let mut value = match self.source {
            Source::YearsSince(_, year) => {
                let v: f64 = raw.parse().map_err(|_| not_a("year", raw))?;
                if !(year - v).is_finite() {
                    return Err(not_a("year", raw));
                }
                format!("{}", year - v)
            }
            _ => raw.to_string(),
        };
        if let Some(table) = self.recode {
            value = table.get(&value).cloned().ok_or_else(|| {
                let keys = table.keys().cloned().collect::<Vec<_>>().join(", ");
                format!(
                    "'{}' has no recoding (its [recode] table has {})",
                    tessera_core::shown(&value, 200),
                    tessera_core::shown(&keys, 500)
                )
            })?;
        }
        if let Some((linear, decimals)) = self.convert {
            let v: f64 = value
                .parse()
                .map_err(|_| not_a("number to convert", &value))?;
            let converted = linear.scale * v + linear.offset;
            if !converted.is_finite() {
                return Err(format!("'{value}' converts to {converted}"));
            }
            value = match decimals {
                Some(d) => format!("{converted:.*}", d as usize),
                None => format!("{converted}"),
            };
        }
        Ok(value)
    }
}

fn not_a(what: &str, raw: &str) -> String {
    format!("'{}' is not a {what}", tessera_core::shown(raw, 200))
}

impl Read for MappedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.pending.len() {
            self.pending.clear();
            self.at = 0;
            match self.next_row() {
                Ok(Some(row)) if row.is_empty() => {}
                Ok(Some(row)) => write_row(&mut self.pending, &row, self.source.delimiter),
                Ok(None) => return Ok(0),
                Err(e) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("through its mapping: {e}"),
                    ));
                }
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Appends one CSV row, quoting a value that holds the separator, a quote
/// or a line break.
fn write_row(out: &mut Vec<u8>, row: &[impl AsRef<str>], delimiter: u8) {
    for (i, value) in row.iter().enumerate() {
        if i > 0 {
            out.push(delimiter);
        }
        let value = value.as_ref();
        if value
            .bytes()
            .any(|b| b == delimiter || b == b'"' || b == b'\n' || b == b'\r')
        {
            out.push(b'"');
            out.extend_from_slice(value.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(value.as_bytes());
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests;
