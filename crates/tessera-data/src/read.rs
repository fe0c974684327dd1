//! Reading CSV files into typed per-site columns.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::DataError;
use crate::config::{ColumnKind, DataConfig, PartitionConfig};
use crate::levels::canonical_level;

/// Opens files for the loader. The filesystem in production; tests and the
/// bundled demo plug in other sources. Files are read as streams, never held
/// whole in memory.
pub trait FileSource: Sync {
    /// A reader over the file at `path`.
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn Read + '_>>;
}

/// Reads from the local filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filesystem;

impl FileSource for Filesystem {
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(std::fs::File::open(path)?))
    }
}

/// Files held in memory, by the path the loader asks for (tests, generated
/// data, data handed over by a caller); other paths are not found.
#[derive(Debug, Clone, Default)]
pub struct InMemory(pub HashMap<PathBuf, Vec<u8>>);

impl InMemory {
    /// `files`, each a path and its bytes.
    pub fn new<P: Into<PathBuf>, B: Into<Vec<u8>>>(
        files: impl IntoIterator<Item = (P, B)>,
    ) -> Self {
        Self(
            files
                .into_iter()
                .map(|(p, b)| (p.into(), b.into()))
                .collect(),
        )
    }
}

impl FileSource for InMemory {
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn Read + '_>> {
        self.0
            .get(path)
            .map(|bytes| Box::new(bytes.as_slice()) as Box<dyn Read>)
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file in memory")
            })
    }
}

/// Marker for a missing categorical value.
pub(crate) const MISSING_CODE: u32 = u32::MAX;

/// The values of one column at one site.
#[derive(Debug, Clone)]
pub(crate) enum Values {
    /// Numbers; `NaN` marks a missing value.
    Numeric(Vec<f64>),
    /// Codes into `levels`; [`MISSING_CODE`] marks a missing value.
    Categorical {
        codes: Vec<u32>,
        levels: Vec<String>,
    },
}

impl Values {
    pub(crate) fn is_missing(&self, row: usize) -> bool {
        match self {
            Values::Numeric(v) => v[row].is_nan(),
            Values::Categorical { codes, .. } => codes[row] == MISSING_CODE,
        }
    }

    /// The values at `rows`, in that order (categorical levels: only those used, in order of use).
    pub(crate) fn select(&self, rows: &[usize]) -> Values {
        match self {
            Values::Numeric(v) => Values::Numeric(rows.iter().map(|&r| v[r]).collect()),
            Values::Categorical { codes, levels } => {
                let mut builder = CategoricalBuilder::default();
                for &r in rows {
                    match levels.get(codes[r] as usize) {
                        Some(level) => builder.push_level(level),
                        None => builder.codes.push(MISSING_CODE),
                    }
                }
                builder.finish()
            }
        }
    }

    /// Turns a numeric column into a categorical one (numbers become their canonical text).
    pub(crate) fn into_categorical(self) -> Values {
        match self {
            Values::Numeric(values) => {
                let mut builder = CategoricalBuilder::default();
                for v in values {
                    if v.is_nan() {
                        builder.codes.push(MISSING_CODE);
                    } else {
                        builder.push_level(&canonical_level(&format!("{v}")));
                    }
                }
                builder.finish()
            }
            categorical => categorical,
        }
    }
}

#[derive(Default)]
struct CategoricalBuilder {
    codes: Vec<u32>,
    levels: Vec<String>,
    index: HashMap<String, u32>,
}

impl CategoricalBuilder {
    fn push_level(&mut self, level: &str) {
        let code = match self.index.get(level) {
            Some(&code) => code,
            None => {
                let code = self.levels.len() as u32;
                self.levels.push(level.to_string());
                self.index.insert(level.to_string(), code);
                code
            }
        };
        self.codes.push(code);
    }

    fn finish(self) -> Values {
        Values::Categorical {
            codes: self.codes,
            levels: self.levels,
        }
    }
}

/// A column as it is being read: numeric until proven otherwise when inferred.
enum Builder {
    Numeric { values: Vec<f64>, declared: bool },
    Categorical(CategoricalBuilder),
}

impl Builder {
    fn new(kind: FeatureKind) -> Self {
        match kind {
            FeatureKind::Categorical => Builder::Categorical(CategoricalBuilder::default()),
            FeatureKind::Numeric => Builder::Numeric {
                values: Vec::new(),
                declared: true,
            },
            FeatureKind::Infer => Builder::Numeric {
                values: Vec::new(),
                declared: false,
            },
        }
    }

    /// Adds one token; `Err` carries the message for a declared-numeric column that got text.
    fn push(&mut self, token: Option<&str>) -> Result<(), String> {
        match self {
            Builder::Numeric { values, declared } => match token {
                None => values.push(f64::NAN),
                Some(text) => match text.parse::<f64>() {
                    Ok(v) if v.is_finite() && (v as f32).is_finite() => values.push(v),
                    Ok(_) => {
                        return Err(format!(
                            "'{text}' is not a finite number within the 32-bit range (|x| < 3.4e38)"
                        ));
                    }
                    Err(_) if *declared => {
                        return Err(format!(
                            "'{text}' is not a number, and the schema declares this column numeric"
                        ));
                    }
                    Err(_) => {
                        let taken = std::mem::take(values);
                        let Values::Categorical { codes, levels } =
                            Values::Numeric(taken).into_categorical()
                        else {
                            unreachable!("into_categorical always returns a categorical column")
                        };
                        let index = levels
                            .iter()
                            .enumerate()
                            .map(|(i, l)| (l.clone(), i as u32))
                            .collect();
                        let mut builder = CategoricalBuilder {
                            codes,
                            levels,
                            index,
                        };
                        builder.push_level(&canonical_level(text));
                        *self = Builder::Categorical(builder);
                    }
                },
            },
            Builder::Categorical(builder) => match token {
                None => builder.codes.push(MISSING_CODE),
                Some(text) => builder.push_level(&canonical_level(text)),
            },
        }
        Ok(())
    }

    fn finish(self) -> Values {
        match self {
            Builder::Numeric { values, .. } => Values::Numeric(values),
            Builder::Categorical(builder) => builder.finish(),
        }
    }
}

/// How a feature column's type is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FeatureKind {
    Numeric,
    Categorical,
    Infer,
}

/// A feature column of the federation's layout.
#[derive(Debug, Clone)]
pub(crate) struct FeatureColumn {
    pub name: String,
    pub kind: FeatureKind,
}

/// One site's rows as read.
pub(crate) struct RawSite {
    pub name: String,
    pub file: PathBuf,
    /// The feature columns, in this file's layout order.
    pub columns: Vec<FeatureColumn>,
    /// 1-based line of each row.
    pub lines: Vec<u64>,
    /// 0-based index of each row among the file's data rows.
    pub row_in_file: Vec<u64>,
    /// One entry per feature column of the layout.
    pub features: Vec<Values>,
    /// Target codes into `target_levels`; [`MISSING_CODE`] where missing.
    pub target: Vec<u32>,
    pub target_levels: Vec<String>,
}

/// What a file's fields are, resolved against its header.
struct FieldMap {
    n_fields: usize,
    feature_fields: Vec<usize>,
    target_field: usize,
    site_field: Option<usize>,
}

/// Per-site builders while a file is read.
struct SiteBuilder {
    lines: Vec<u64>,
    row_in_file: Vec<u64>,
    features: Vec<Builder>,
    target: Builder,
}

impl SiteBuilder {
    fn new(layout: &[FeatureColumn]) -> Self {
        Self {
            lines: Vec::new(),
            row_in_file: Vec::new(),
            features: layout.iter().map(|c| Builder::new(c.kind)).collect(),
            target: Builder::new(FeatureKind::Categorical),
        }
    }

    fn finish(self, name: String, file: PathBuf, columns: &[FeatureColumn]) -> RawSite {
        let Values::Categorical { codes, levels } = self.target.finish() else {
            unreachable!("the target builder is categorical")
        };
        RawSite {
            name,
            file,
            columns: columns.to_vec(),
            lines: self.lines,
            row_in_file: self.row_in_file,
            features: self.features.into_iter().map(Builder::finish).collect(),
            target: codes,
            target_levels: levels,
        }
    }
}

/// Reads every site's rows. Sites come back sorted by name, features in the
/// layout's order (the schema's order, else the first file's header order).
pub(crate) fn read_sites(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<Vec<RawSite>, DataError> {
    let mut layout: Option<Vec<FeatureColumn>> = None;
    let mut sites = Vec::new();
    if let (Some(path), Some(partition)) = (&config.path, &config.partition) {
        return read_partitioned(config, partition, path, base_dir, source);
    }
    if let Some(path) = &config.path {
        let site_column = config.site_column.as_deref();
        let mut per_site: BTreeMap<String, SiteBuilder> = BTreeMap::new();
        read_file(
            config,
            source,
            &base_dir.join(path),
            path,
            site_column,
            None,
            None,
            &mut layout,
            &mut per_site,
        )?;
        let columns = layout.clone().unwrap_or_default();
        for (name, builder) in per_site {
            sites.push(builder.finish(name, path.clone(), &columns));
        }
    } else {
        for site in &config.sites {
            let mut per_site: BTreeMap<String, SiteBuilder> = BTreeMap::new();
            read_file(
                config,
                source,
                &base_dir.join(&site.path),
                &site.path,
                None,
                Some(&site.name),
                None,
                &mut layout,
                &mut per_site,
            )?;
            let columns = layout.clone().unwrap_or_default();
            let builder = per_site
                .remove(&site.name)
                .unwrap_or_else(|| SiteBuilder::new(&columns));
            sites.push(builder.finish(site.name.clone(), site.path.clone(), &columns));
        }
        sites.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(sites)
}

/// Reads one site's rows: its own file (`path`, else the plan's file for the
/// site), or, with a site column, the rows of that file that name the site.
pub(crate) fn read_site(
    config: &DataConfig,
    site: &str,
    path: Option<&Path>,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<RawSite, DataError> {
    if let (Some(plan_path), Some(partition)) = (&config.path, &config.partition) {
        let file = path.unwrap_or(plan_path);
        let mut sites = read_partitioned(config, partition, file, base_dir, source)?;
        let position = sites.iter().position(|s| s.name == site).ok_or_else(|| {
            DataError::Config(format!(
                "site '{site}' is not among the partition's {} sites (site-01 ...)",
                partition.sites
            ))
        })?;
        return Ok(sites.swap_remove(position));
    }
    let (file, site_column, fixed_site, only_site) = match (&config.path, &config.site_column) {
        (Some(plan_path), Some(column)) => (
            path.unwrap_or(plan_path),
            Some(column.as_str()),
            None,
            Some(site),
        ),
        _ => {
            let listed = config.sites.iter().find(|s| s.name == site);
            let file = match (path, listed) {
                (Some(p), _) => p,
                (None, Some(listed)) => listed.path.as_path(),
                (None, None) => {
                    return Err(DataError::Config(format!(
                        "site '{site}' is not among the plan's sites and no data file was given"
                    )));
                }
            };
            (file, None, Some(site), None)
        }
    };
    let mut layout = None;
    let mut per_site: BTreeMap<String, SiteBuilder> = BTreeMap::new();
    read_file(
        config,
        source,
        &base_dir.join(file),
        file,
        site_column,
        fixed_site,
        only_site,
        &mut layout,
        &mut per_site,
    )?;
    let columns = layout.unwrap_or_default();
    let builder = per_site
        .remove(site)
        .ok_or_else(|| DataError::at(file, None, None, format!("no rows for site '{site}'")))?;
    Ok(builder.finish(site.to_string(), file.to_path_buf(), &columns))
}

#[allow(clippy::too_many_arguments)]
fn read_file(
    config: &DataConfig,
    source: &dyn FileSource,
    full_path: &Path,
    shown_path: &Path,
    site_column: Option<&str>,
    fixed_site: Option<&str>,
    only_site: Option<&str>,
    layout: &mut Option<Vec<FeatureColumn>>,
    per_site: &mut BTreeMap<String, SiteBuilder>,
) -> Result<(), DataError> {
    let schema = &config.schema;
    let file = source_open(source, full_path, shown_path)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .delimiter(schema.delimiter as u8)
        .from_reader(file);
    let is_blank = |r: &csv::ByteRecord| r.len() == 1 && r.get(0).is_some_and(<[u8]>::is_empty);
    let mut records = reader
        .byte_records()
        .filter(|r| !r.as_ref().is_ok_and(is_blank));
    let mut first_record = None;
    let mut fields = FieldMap {
        n_fields: 0,
        feature_fields: Vec::new(),
        target_field: 0,
        site_field: None,
    };
    let Some(first) = records.next() else {
        return Err(DataError::at(shown_path, None, None, "file is empty"));
    };
    let first = first.map_err(|e| csv_error(shown_path, &e))?;
    let header_line = schema
        .header
        .then(|| first.position().map_or(1, |p| p.line()));
    let header_names: Vec<String> = if schema.header {
        first
            .iter()
            .enumerate()
            .map(|(i, f)| {
                // A UTF-8 byte-order mark (as spreadsheet programs write) is not part of the name.
                let f = if i == 0 {
                    f.strip_prefix(b"\xef\xbb\xbf").unwrap_or(f)
                } else {
                    f
                };
                std::str::from_utf8(f).map(str::to_string).map_err(|_| {
                    DataError::at(
                        shown_path,
                        header_line,
                        Some(i + 1),
                        "header is not valid UTF-8",
                    )
                })
            })
            .collect::<Result<_, _>>()?
    } else if schema.columns.is_empty() {
        // No header and no column list: columns are named by position.
        let names = (1..=first.len()).map(|i| i.to_string()).collect();
        first_record = Some(first);
        names
    } else {
        first_record = Some(first);
        schema.columns.iter().map(|c| c.name.clone()).collect()
    };
    resolve_fields(
        config,
        shown_path,
        header_line,
        &header_names,
        site_column,
        layout,
        &mut fields,
    )?;
    let layout = layout.as_deref().unwrap_or_default();
    let missing: Vec<&[u8]> = schema.missing.iter().map(|m| m.as_bytes()).collect();
    let mut saw_row = false;
    for (row_index, record) in (0u64..).zip(first_record.map(Ok).into_iter().chain(records)) {
        let record = record.map_err(|e| csv_error(shown_path, &e))?;
        let line = record.position().map_or(0, |p| p.line());
        saw_row = true;
        if record.len() != fields.n_fields {
            return Err(DataError::at(
                shown_path,
                Some(line),
                None,
                format!(
                    "row has {} fields, expected {}",
                    record.len(),
                    fields.n_fields
                ),
            ));
        }
        let text = |i: usize| -> Result<Option<&str>, DataError> {
            let raw = record.get(i).unwrap_or_default();
            if missing.contains(&raw) {
                return Ok(None);
            }
            std::str::from_utf8(raw).map(Some).map_err(|_| {
                DataError::at(
                    shown_path,
                    Some(line),
                    Some(i + 1),
                    "value is not valid UTF-8",
                )
            })
        };
        let site_name = match (fields.site_field, fixed_site) {
            (Some(i), _) => text(i)?.ok_or_else(|| {
                DataError::at(
                    shown_path,
                    Some(line),
                    Some(i + 1),
                    "the site column is empty",
                )
            })?,
            (None, Some(name)) => name,
            (None, None) => unreachable!("a file is either one site's or has a site column"),
        };
        if only_site.is_some_and(|only| only != site_name) {
            continue;
        }
        let builder = match per_site.get_mut(site_name) {
            Some(builder) => builder,
            None => per_site
                .entry(site_name.to_string())
                .or_insert_with(|| SiteBuilder::new(layout)),
        };
        for (slot, &field) in fields.feature_fields.iter().enumerate() {
            builder.features[slot]
                .push(text(field)?)
                .map_err(|message| {
                    DataError::at(
                        shown_path,
                        Some(line),
                        Some(field + 1),
                        format!("column '{}': {message}", layout[slot].name),
                    )
                })?;
        }
        builder
            .target
            .push(text(fields.target_field)?)
            .map_err(|message| {
                DataError::at(
                    shown_path,
                    Some(line),
                    Some(fields.target_field + 1),
                    message,
                )
            })?;
        builder.lines.push(line);
        builder.row_in_file.push(row_index);
    }
    if !saw_row {
        return Err(DataError::at(shown_path, None, None, "no data rows"));
    }
    Ok(())
}

pub(crate) fn source_open<'a>(
    source: &'a dyn FileSource,
    full_path: &Path,
    shown_path: &Path,
) -> Result<Box<dyn Read + 'a>, DataError> {
    let file = source.open(full_path).map_err(|e| DataError::Io {
        path: shown_path.to_path_buf(),
        source: e,
    })?;
    if full_path.extension().is_some_and(|e| e == "gz") {
        return Ok(Box::new(LineLimit::new(GunzipErrors {
            inner: flate2::read::MultiGzDecoder::new(file),
        })));
    }
    Ok(Box::new(LineLimit::new(file)))
}

/// The longest line a data or membership file may have (16 MiB): a file
/// whose line never ends (`/dev/zero`) is refused instead of filling memory.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Fails a read once a line passes [`MAX_LINE_BYTES`].
struct LineLimit<R> {
    inner: R,
    line: usize,
}

impl<R> LineLimit<R> {
    fn new(inner: R) -> Self {
        Self { inner, line: 0 }
    }
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        // Readers ask for small buffers, so only the line that runs on past
        // the last newline can grow long.
        self.line = match buf[..n].iter().rposition(|&b| b == b'\n') {
            Some(at) => n - at - 1,
            None => self.line.saturating_add(n),
        };
        if self.line > MAX_LINE_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a line is longer than {} MiB", MAX_LINE_BYTES >> 20),
            ));
        }
        Ok(n)
    }
}

/// Gunzips, saying so when the bytes are not gzip (the CSV reader then names the file).
struct GunzipErrors<R> {
    inner: flate2::read::MultiGzDecoder<R>,
}

impl<R: Read> Read for GunzipErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| std::io::Error::new(e.kind(), format!("not valid gzip data: {e}")))
    }
}

/// Reads one file of rows without sites and deals them out by
/// [`PartitionConfig`]: per class, Dirichlet(alpha) shares of its shuffled rows.
fn read_partitioned(
    config: &DataConfig,
    partition: &PartitionConfig,
    path: &Path,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<Vec<RawSite>, DataError> {
    const ALL: &str = "";
    let mut layout = None;
    let mut per_site: BTreeMap<String, SiteBuilder> = BTreeMap::new();
    read_file(
        config,
        source,
        &base_dir.join(path),
        path,
        None,
        Some(ALL),
        None,
        &mut layout,
        &mut per_site,
    )?;
    let columns = layout.unwrap_or_default();
    let all = per_site
        .remove(ALL)
        .ok_or_else(|| DataError::at(path, None, None, "no data rows"))?
        .finish(String::new(), path.to_path_buf(), &columns);
    let assignment = dirichlet_partition(&all.target, partition)
        .map_err(|m| DataError::at(path, None, None, format!("partition: {m}")))?;
    let width = partition.sites.to_string().len().max(2);
    Ok(assignment
        .iter()
        .enumerate()
        .map(|(i, rows)| RawSite {
            name: format!("site-{:0width$}", i + 1),
            file: path.to_path_buf(),
            columns: columns.clone(),
            lines: rows.iter().map(|&r| all.lines[r]).collect(),
            row_in_file: rows.iter().map(|&r| all.row_in_file[r]).collect(),
            features: all.features.iter().map(|f| f.select(rows)).collect(),
            target: rows.iter().map(|&r| all.target[r]).collect(),
            target_levels: all.target_levels.clone(),
        })
        .collect())
}

/// Each site's rows (ascending) under a Dirichlet label-skew partition of
/// rows with class codes `labels`.
pub(crate) fn dirichlet_partition(
    labels: &[u32],
    partition: &PartitionConfig,
) -> Result<Vec<Vec<usize>>, String> {
    let k = partition.sites;
    if labels.len() < k.saturating_mul(partition.min_rows) {
        return Err(format!(
            "{} rows cannot give {k} sites {} rows each",
            labels.len(),
            partition.min_rows
        ));
    }
    let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (row, &label) in labels.iter().enumerate() {
        by_class.entry(label).or_default().push(row);
    }
    let mut rng = tessera_core::SeededRng::new(partition.seed);
    for _ in 0..1000 {
        let mut sites: Vec<Vec<usize>> = vec![Vec::new(); k];
        for rows in by_class.values() {
            let mut rows = rows.clone();
            rng.shuffle(&mut rows);
            let shares = rng.dirichlet(k, partition.alpha);
            let mut cumulative = 0.0;
            let mut start = 0usize;
            for (site, share) in shares.iter().enumerate() {
                cumulative += share;
                let end = if site + 1 == k {
                    rows.len()
                } else {
                    ((cumulative * rows.len() as f64) as usize).min(rows.len())
                };
                sites[site].extend_from_slice(&rows[start..end.max(start)]);
                start = end.max(start);
            }
        }
        if sites.iter().all(|s| s.len() >= partition.min_rows) {
            for s in &mut sites {
                s.sort_unstable();
            }
            return Ok(sites);
        }
    }
    Err(format!(
        "1000 draws at alpha {} never gave each of the {k} sites {} rows; lower min_rows or raise alpha",
        partition.alpha, partition.min_rows
    ))
}

fn csv_error(path: &Path, error: &csv::Error) -> DataError {
    let line = error.position().map(|p| p.line());
    DataError::at(path, line, None, format!("malformed CSV: {error}"))
}

/// Maps a file's fields to the layout; creates the layout from the first file.
fn resolve_fields(
    config: &DataConfig,
    path: &Path,
    header_line: Option<u64>,
    names: &[String],
    site_column: Option<&str>,
    layout: &mut Option<Vec<FeatureColumn>>,
    fields: &mut FieldMap,
) -> Result<(), DataError> {
    let schema = &config.schema;
    let position = |name: &str| names.iter().position(|n| n == name);
    let missing_column = |name: &str, what: &str| {
        DataError::at(
            path,
            header_line,
            None,
            format!(
                "no {what} column named '{name}' (columns: {})",
                tessera_core::shown(&names.join(", "), 500)
            ),
        )
    };
    for spec in &schema.columns {
        if position(&spec.name).is_none() {
            return Err(missing_column(&spec.name, "described"));
        }
    }
    let target_field =
        position(&schema.target).ok_or_else(|| missing_column(&schema.target, "target"))?;
    let site_field = match site_column {
        Some(column) => Some(position(column).ok_or_else(|| missing_column(column, "site"))?),
        None => None,
    };
    if let Some(dup) = names
        .iter()
        .enumerate()
        .find(|(i, n)| names[..*i].contains(n))
    {
        return Err(DataError::at(
            path,
            header_line,
            Some(dup.0 + 1),
            format!("column '{}' appears twice", dup.1),
        ));
    }
    let kind_of = |name: &str| -> Option<FeatureKind> {
        match schema
            .columns
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.kind)
        {
            Some(ColumnKind::Ignore) => None,
            Some(ColumnKind::Numeric) => Some(FeatureKind::Numeric),
            Some(ColumnKind::Categorical) => Some(FeatureKind::Categorical),
            None => Some(FeatureKind::Infer),
        }
    };
    let is_feature = |i: usize, name: &str| {
        i != target_field && Some(i) != site_field && kind_of(name).is_some()
    };
    let layout = layout.get_or_insert_with(|| {
        names
            .iter()
            .enumerate()
            .filter(|(i, n)| is_feature(*i, n))
            .filter_map(|(_, n)| {
                kind_of(n).map(|kind| FeatureColumn {
                    name: n.clone(),
                    kind,
                })
            })
            .collect()
    });
    let mut feature_fields = Vec::with_capacity(layout.len());
    for column in layout.iter() {
        feature_fields
            .push(position(&column.name).ok_or_else(|| missing_column(&column.name, "feature"))?);
    }
    if let Some((i, extra)) = names
        .iter()
        .enumerate()
        .find(|(i, n)| is_feature(*i, n) && !layout.iter().any(|c| &c.name == *n))
    {
        return Err(DataError::at(
            path,
            header_line,
            Some(i + 1),
            format!(
                "column '{extra}' is not in the first site's file; every site must have the same columns"
            ),
        ));
    }
    *fields = FieldMap {
        n_fields: names.len(),
        feature_fields,
        target_field,
        site_field,
    };
    Ok(())
}
