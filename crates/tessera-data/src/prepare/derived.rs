//! `[data.cross_silo]`: the identifier column taken out of each site's rows
//! before any agreement, and the feature computed from it across sites put
//! in its place (last in the layout). What computes the feature (a
//! protocol between the sites) is the caller's; this crate only hands each
//! site's identifiers over and checks what comes back.

use crate::DataError;
use crate::config::{CrossSiloConfig, DataConfig};
use crate::read::{FeatureColumn, FeatureKind, RawSite, Values};

/// One site's identifiers, one per row read (`None` where missing), in the
/// order the rows were read.
#[derive(Clone, PartialEq, Eq)]
pub struct SiteIdentifiers {
    /// The site.
    pub site: String,
    /// Each row's identifier as read.
    pub identifiers: Vec<Option<String>>,
}

impl std::fmt::Debug for SiteIdentifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SiteIdentifiers({}: {} rows, <redacted>)",
            self.site,
            self.identifiers.len()
        )
    }
}

/// Computes, from every site's identifiers, one value per row of each site
/// (same order; `NaN` where unknown): the cross-silo feature.
pub type DeriveFeature<'a> =
    dyn FnMut(&CrossSiloConfig, &[SiteIdentifiers]) -> Result<Vec<Vec<f64>>, DataError> + 'a;

/// The refusal of a plan with `[data.cross_silo]` on a path that does not
/// run the protocol.
pub(crate) fn unsupported() -> DataError {
    DataError::Config(
        "[data.cross_silo] needs the sites to compute the feature together: `tessera simulate` \
         and `tessera participant` do; `tessera analyze` does not support it yet (remove the \
         section there)"
            .into(),
    )
}

/// Takes the identifier column out of every site, computes the feature and
/// appends it as a numeric column.
pub(crate) fn derive_column(
    config: &DataConfig,
    raws: &mut [RawSite],
    derive: &mut DeriveFeature<'_>,
) -> Result<(), DataError> {
    let Some(cross) = &config.cross_silo else {
        return Ok(());
    };
    let sites = raws
        .iter_mut()
        .map(|raw| take_identifiers(cross, raw))
        .collect::<Result<Vec<_>, _>>()?;
    let values = derive(cross, &sites)?;
    if values.len() != raws.len() {
        return Err(DataError::Config(format!(
            "cross_silo: the feature came back for {} sites, {} were read",
            values.len(),
            raws.len()
        )));
    }
    for (raw, (column, site)) in raws.iter_mut().zip(values.into_iter().zip(&sites)) {
        append_feature(cross, raw, column, site.identifiers.len())?;
    }
    Ok(())
}

/// Takes the identifier column out of one site's rows (it never becomes a
/// feature): its identifiers, one per row.
pub(crate) fn take_identifiers(
    cross: &CrossSiloConfig,
    raw: &mut RawSite,
) -> Result<SiteIdentifiers, DataError> {
    if raw.columns.iter().any(|c| c.name == cross.feature) {
        return Err(DataError::Config(format!(
            "cross_silo: feature '{}' is already a column of site '{}' ({})",
            cross.feature,
            raw.name,
            raw.file.display()
        )));
    }
    let slot = raw
        .columns
        .iter()
        .position(|c| c.name == cross.identifier)
        .ok_or_else(|| {
            DataError::Config(format!(
                "cross_silo: site '{}' ({}) has no identifier column '{}'",
                raw.name,
                raw.file.display(),
                cross.identifier
            ))
        })?;
    std::sync::Arc::make_mut(&mut raw.columns).remove(slot);
    let identifiers = match raw.features.remove(slot) {
        Values::Categorical(coded) => coded
            .codes
            .iter()
            .map(|&c| coded.levels.get(c as usize).cloned())
            .collect(),
        Values::Numeric(_) => {
            return Err(DataError::Config(format!(
                "cross_silo: identifier column '{}' was not read as text",
                cross.identifier
            )));
        }
    };
    Ok(SiteIdentifiers {
        site: raw.name.clone(),
        identifiers,
    })
}

/// Appends the feature's `column` (one value per row, `rows` of them) to
/// one site's rows, last.
pub(crate) fn append_feature(
    cross: &CrossSiloConfig,
    raw: &mut RawSite,
    column: Vec<f64>,
    rows: usize,
) -> Result<(), DataError> {
    if column.len() != rows {
        return Err(DataError::Config(format!(
            "cross_silo: {} values for site '{}', which has {rows} rows",
            column.len(),
            raw.name,
        )));
    }
    if column.iter().any(|v| v.is_infinite()) {
        return Err(DataError::Config(format!(
            "cross_silo: an infinite value for site '{}'",
            raw.name
        )));
    }
    std::sync::Arc::make_mut(&mut raw.columns).push(FeatureColumn {
        name: cross.feature.clone(),
        kind: FeatureKind::Numeric,
    });
    raw.features.push(Values::Numeric(column));
    Ok(())
}
