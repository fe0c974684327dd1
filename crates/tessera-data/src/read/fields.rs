//! A file's fields, resolved against its header and the federation's layout.

use std::path::Path;

use super::{FeatureColumn, FeatureKind};
use crate::DataError;
use crate::config::{ColumnKind, DataConfig};

/// What a file's fields are, resolved against its header.
pub(super) struct FieldMap {
    pub(super) n_fields: usize,
    pub(super) feature_fields: Vec<usize>,
    pub(super) target_field: usize,
    pub(super) site_field: Option<usize>,
}

/// Maps a file's fields to the layout; creates the layout from the first file.
pub(super) fn resolve_fields(
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
    let identifier = config.cross_silo.as_ref().map(|c| c.identifier.as_str());
    let kind_of = |name: &str| -> Option<FeatureKind> {
        if identifier == Some(name) {
            return Some(FeatureKind::Identifier);
        }
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
