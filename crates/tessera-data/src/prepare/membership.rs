//! Where each row goes (train, test or excluded): a seeded split, or a membership file.

use std::collections::HashMap;
use std::path::Path;

use tessera_core::{SeededRng, tag};

use crate::DataError;
use crate::config::{DataConfig, MembershipFile};
use crate::dataset::SiteSummary;
use crate::read::{FileSource, RawSite};

/// Where a row goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Membership {
    Train,
    Test,
    Excluded,
}

/// Seeded split of the kept rows, per class when stratified.
pub(super) fn random_split(
    config: &DataConfig,
    site: &str,
    classes: super::site::RowClasses<'_>,
    kept: &[bool],
) -> Vec<Membership> {
    let split = &config.split;
    let mut membership = vec![Membership::Excluded; kept.len()];
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
pub(super) type MembershipTable = HashMap<(String, u64), (Membership, u64)>;

pub(super) fn read_membership(
    file: &MembershipFile,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<MembershipTable, DataError> {
    let path = &file.path;
    let stream = crate::read::source_open(source, &base_dir.join(path))?;
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

pub(super) fn membership_from_table(
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
