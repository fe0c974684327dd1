//! One file of rows dealt out to sites by a Dirichlet label-skew partition.

use std::collections::BTreeMap;
use std::path::Path;

use super::{FileSource, RawSite, SiteBuilder, read_file};
use crate::DataError;
use crate::config::{DataConfig, PartitionConfig};

/// Reads one file of rows without sites and deals them out by
/// [`PartitionConfig`]: per class, Dirichlet(alpha) shares of its shuffled rows.
pub(super) fn read_partitioned(
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
        None,
    )?;
    let columns = std::sync::Arc::new(layout.unwrap_or_default());
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
            columns: std::sync::Arc::clone(&columns),
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
