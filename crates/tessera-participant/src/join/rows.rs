//! A join's inputs at a site: the identifier and value columns of the
//! site's own data file, read by name (the identifier column is declared
//! `type = "ignore"`, so training never reads it). Rows with a missing
//! identifier or value are left out; a repeated identifier keeps its first
//! row. Only counts are logged.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tessera_analytics::JoinSpec;
use tessera_data::DataConfig;

/// A site's identifiers with their fixed-point values (0 where the join
/// matches identifiers only).
pub(crate) struct JoinRows {
    pub rows: Vec<(String, u64)>,
    pub skipped: usize,
    pub repeated: usize,
}

/// The site's data file: `--data`, else the plan's file for the site.
fn site_file(
    data: &DataConfig,
    site: &str,
    given: Option<&Path>,
    plan_dir: &Path,
) -> Result<(PathBuf, Option<String>), String> {
    if let Some(path) = given {
        return Ok((path.to_path_buf(), None));
    }
    if let Some(file) = data.sites.iter().find(|s| s.name == site) {
        return Ok((plan_dir.join(&file.path), None));
    }
    match (&data.path, &data.site_column) {
        (Some(path), Some(column)) => Ok((plan_dir.join(path), Some(column.clone()))),
        _ => Err(format!(
            "no data file of site '{site}' to join: give --data, or a plan that names the site's file"
        )),
    }
}

/// Reads the join's columns of this site's rows.
pub(crate) fn read(
    spec: &JoinSpec,
    data: &DataConfig,
    site: &str,
    given: Option<&Path>,
    plan_dir: &Path,
) -> Result<JoinRows, String> {
    let (path, site_column) = site_file(data, site, given, plan_dir)?;
    let table = tessera_data::read_table(&tessera_data::Filesystem, &path, data.schema.delimiter)
        .map_err(|e| e.to_string())?;
    let column = |name: &str| {
        table.header.iter().position(|h| h == name).ok_or_else(|| {
            format!(
                "{}: no column '{name}' (join '{}' needs it)",
                path.display(),
                spec.name
            )
        })
    };
    let id = column(&spec.identifier)?;
    // The PSI reveals match identifiers only (each row's value is 0).
    let value = if spec.reveal.has_value() {
        Some(column(&spec.value)?)
    } else {
        None
    };
    let own = site_column.as_deref().map(column).transpose()?;
    let missing = &data.schema.missing;
    let mut seen = HashSet::new();
    let mut out = JoinRows {
        rows: Vec::new(),
        skipped: 0,
        repeated: 0,
    };
    for (_, fields) in &table.rows {
        if let Some(c) = own
            && fields.get(c).map(String::as_str) != Some(site)
        {
            continue;
        }
        let Some(raw_id) = fields.get(id) else {
            out.skipped += 1;
            continue;
        };
        // An identifier spelled as a missing value is no identifier.
        if missing.iter().any(|m| m == raw_id) {
            out.skipped += 1;
            continue;
        }
        let normalised = tessera_psi::normalise(raw_id);
        let fixed = match value.map(|v| fields.get(v)) {
            None => Some(0),
            Some(None) => None,
            Some(Some(raw)) if missing.iter().any(|m| m == raw) => None,
            Some(Some(raw)) => raw.parse::<f64>().ok().and_then(|v| spec.fixed(v)),
        };
        let Some(fixed) = fixed.filter(|_| !normalised.is_empty()) else {
            out.skipped += 1;
            continue;
        };
        if !seen.insert(normalised) {
            out.repeated += 1;
            continue;
        }
        if out.rows.len() >= spec.max_elements {
            return Err(format!(
                "join '{}': this site has more than max_elements = {} identifiers",
                spec.name, spec.max_elements
            ));
        }
        out.rows.push((raw_id.clone(), fixed));
    }
    if out.rows.len() < spec.min_elements {
        return Err(format!(
            "join '{}': this site has {} identifiers, fewer than min_elements = {}",
            spec.name,
            out.rows.len(),
            spec.min_elements
        ));
    }
    Ok(out)
}
