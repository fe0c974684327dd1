//! Reading CSV files into typed per-site columns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::DataError;
use crate::config::DataConfig;

mod binary;
mod columns;
mod fields;
mod partition;
pub(crate) mod source;

use columns::{CategoricalBuilder, RowsBuilder};
pub(crate) use columns::{FeatureColumn, FeatureKind};
use fields::{FieldMap, resolve_fields};
use partition::read_partitioned;

pub(crate) use binary::for_each_rows_site;
pub use binary::{ROWS_EXTENSION, SavedRows, is_rows_file, save_rows};
pub(crate) use columns::{MISSING_CODE, Values};
pub(crate) use source::source_open;
pub use source::{FileSource, Filesystem, InMemory};

/// One site's rows as read.
pub(crate) struct RawSite {
    pub name: String,
    pub file: PathBuf,
    /// The feature columns, in this file's layout order (one layout shared
    /// by the sites read together).
    pub columns: Arc<Vec<FeatureColumn>>,
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

/// Per-site builders while a file is read.
struct SiteBuilder {
    lines: Vec<u64>,
    row_in_file: Vec<u64>,
    features: RowsBuilder,
    target: CategoricalBuilder,
}

impl SiteBuilder {
    fn new(layout: &[FeatureColumn]) -> Self {
        Self {
            lines: Vec::new(),
            row_in_file: Vec::new(),
            features: RowsBuilder::new(layout),
            target: CategoricalBuilder::default(),
        }
    }

    fn finish(self, name: String, file: PathBuf, columns: &Arc<Vec<FeatureColumn>>) -> RawSite {
        let Values::Categorical(coded) = self.target.finish() else {
            unreachable!("the target builder is categorical")
        };
        let columns::Coded { codes, levels } = *coded;
        RawSite {
            name,
            file,
            columns: Arc::clone(columns),
            lines: shrunk(self.lines),
            row_in_file: shrunk(self.row_in_file),
            features: self.features.finish(),
            target: codes,
            target_levels: levels,
        }
    }
}

fn shrunk<T>(mut values: Vec<T>) -> Vec<T> {
    values.shrink_to_fit();
    values
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
    if let Some(path) = config.path.as_ref().filter(|p| is_rows_file(p)) {
        return binary::read_rows(config, source, &base_dir.join(path), path, None);
    }
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
            None,
        )?;
        let columns = Arc::new(layout.clone().unwrap_or_default());
        for (name, builder) in per_site {
            sites.push(builder.finish(name, path.clone(), &columns));
        }
    } else {
        for site in &config.sites {
            if is_rows_file(&site.path) {
                return Err(DataError::Config(format!(
                    "site '{}': a rows file ({}) is read as the plan's data.path, not as one \
                     site's file",
                    site.name,
                    site.path.display()
                )));
            }
            let mut per_site: BTreeMap<String, SiteBuilder> = BTreeMap::new();
            let full_path = base_dir.join(&site.path);
            let mapping = match &site.mapping {
                Some(m) => Some(crate::mapping::Mapping::from_file(&base_dir.join(m))?),
                None => None,
            };
            let mapped;
            let source = match &mapping {
                Some(m) => {
                    mapped = crate::mapping::Mapped::new(source, &full_path, m, &config.schema)?;
                    &mapped as &dyn FileSource
                }
                None => source,
            };
            read_file(
                config,
                source,
                &full_path,
                &site.path,
                None,
                Some(&site.name),
                None,
                &mut layout,
                &mut per_site,
                None,
            )?;
            let columns = Arc::new(layout.clone().unwrap_or_default());
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
    if let Some(file) = (path.or(config.path.as_deref())).filter(|p| is_rows_file(p)) {
        return binary::read_rows(config, source, &base_dir.join(file), file, Some(site))?
            .pop()
            .ok_or_else(|| DataError::at(file, None, None, format!("no rows for site '{site}'")));
    }
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
                (None, Some(listed)) if listed.mapping.is_some() => {
                    return Err(DataError::Config(format!(
                        "the plan reads site '{site}' through a mapping, which a site gives \
                         itself when deployed: give its file and mapping (--data FILE \
                         --mapping FILE)"
                    )));
                }
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
        None,
    )?;
    let columns = Arc::new(layout.unwrap_or_default());
    let builder = per_site
        .remove(site)
        .ok_or_else(|| DataError::at(file, None, None, format!("no rows for site '{site}'")))?;
    Ok(builder.finish(site.to_string(), file.to_path_buf(), &columns))
}

/// Reads the one CSV file `config` names, with its site column, handing
/// each site's rows to `each` as soon as a row of another site follows
/// them (a file whose sites' rows are together is read holding one site's
/// rows at a time; a site whose rows are apart is handed over once for
/// each stretch of them). Gives the columns' layout.
pub(crate) fn for_each_csv_stretch(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
    each: &mut dyn FnMut(RawSite) -> Result<(), DataError>,
) -> Result<Vec<FeatureColumn>, DataError> {
    let (Some(path), Some(site_column)) = (&config.path, &config.site_column) else {
        return Err(DataError::Config(
            "sites are read one at a time from one file with a site column".into(),
        ));
    };
    let mut layout = None;
    read_file(
        config,
        source,
        &base_dir.join(path),
        path,
        Some(site_column),
        None,
        None,
        &mut layout,
        &mut BTreeMap::new(),
        Some(each),
    )?;
    Ok(layout.unwrap_or_default())
}

/// Reads one CSV file into `per_site`, or (`each`) hands each site over
/// as soon as a row of another site follows its rows.
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
    mut each: Option<&mut dyn FnMut(RawSite) -> Result<(), DataError>>,
) -> Result<(), DataError> {
    let schema = &config.schema;
    let file = source_open(source, full_path)?;
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
    // Handed over a stretch at a time: the site whose rows are being read.
    let columns = Arc::new(layout.to_vec());
    let mut current: Option<String> = None;
    let hand_over = |per_site: &mut BTreeMap<String, SiteBuilder>,
                     each: &mut dyn FnMut(RawSite) -> Result<(), DataError>,
                     site: String| {
        match per_site.remove(&site) {
            Some(builder) => each(builder.finish(site, shown_path.to_path_buf(), &columns)),
            None => Ok(()),
        }
    };
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
        // (The first site's name is kept with nothing handed over.)
        if let Some(each) = each.as_deref_mut()
            && current.as_deref() != Some(site_name)
            && let Some(done) = current.replace(site_name.to_string())
        {
            hand_over(per_site, each, done)?;
        }
        let builder = match per_site.get_mut(site_name) {
            Some(builder) => builder,
            None => per_site
                .entry(site_name.to_string())
                .or_insert_with(|| SiteBuilder::new(layout)),
        };
        for (slot, &field) in fields.feature_fields.iter().enumerate() {
            builder
                .features
                .push(slot, layout[slot].kind, text(field)?)
                .map_err(|message| {
                    DataError::at(
                        shown_path,
                        Some(line),
                        Some(field + 1),
                        format!("column '{}': {message}", layout[slot].name),
                    )
                })?;
        }
        builder.features.end_row();
        builder.target.push(text(fields.target_field)?);
        builder.lines.push(line);
        builder.row_in_file.push(row_index);
    }
    if !saw_row {
        return Err(DataError::at(shown_path, None, None, "no data rows"));
    }
    if let (Some(each), Some(last)) = (each, current) {
        hand_over(per_site, each, last)?;
    }
    Ok(())
}

fn csv_error(path: &Path, error: &csv::Error) -> DataError {
    let line = error.position().map(|p| p.line());
    DataError::at(path, line, None, format!("malformed CSV: {error}"))
}
