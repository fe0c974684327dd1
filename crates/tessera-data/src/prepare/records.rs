//! Each site's kept rows as values (numbers, and categorical levels coded
//! into the agreed vocabulary), before encoding and standardisation: what
//! federated statistics read. The same reading and agreement steps as
//! [`crate::load`], so the rows are the ones training sees (train and test).

use std::path::Path;

use super::agreement::{Agreement, Encoding};
use super::membership::Membership;
use super::site::LocalSite;
use crate::DataError;
use crate::config::DataConfig;
use crate::read::{FileSource, MISSING_CODE, Values};

/// Marks a missing categorical value in [`RecordColumn::Categorical`].
pub const MISSING_LEVEL: u32 = MISSING_CODE;

/// One column of a site's kept rows.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordColumn {
    /// Numbers; `NaN` where missing.
    Numeric(Vec<f64>),
    /// Indices into the agreed levels of the column; [`MISSING_LEVEL`] where missing.
    Categorical(Vec<u32>),
}

/// One site's kept rows, column by column in the agreement's order, the
/// target last (named as in the schema, coded into the agreed classes).
#[derive(Debug, Clone, PartialEq)]
pub struct SiteRecords {
    /// The site.
    pub site: String,
    /// Kept rows (training and test).
    pub rows: usize,
    /// One per agreed column, then the target.
    pub columns: Vec<RecordColumn>,
}

/// Every site's kept rows and the agreed schema they are coded in.
#[derive(Debug, Clone, PartialEq)]
pub struct FederatedRecords {
    /// Column names: the agreement's, then the target's.
    pub names: Vec<String>,
    /// Agreed levels of each categorical column (the target's are the
    /// classes); `None` for a numeric column.
    pub levels: Vec<Option<Vec<String>>>,
    /// The sites, by name.
    pub sites: Vec<SiteRecords>,
}

impl LocalSite {
    /// A site's kept rows as values coded into `agreement`'s vocabulary.
    /// Call after [`LocalSite::levels_offer`].
    pub fn records(&self, agreement: &Agreement) -> Result<SiteRecords, DataError> {
        let (raw, classes, membership) = self.parts();
        let kept: Vec<usize> = (0..membership.len())
            .filter(|&r| membership[r] != Membership::Excluded)
            .collect();
        let mut columns = Vec::with_capacity(agreement.columns.len() + 1);
        for (slot, (name, encoding)) in agreement
            .columns
            .iter()
            .zip(&agreement.encodings)
            .enumerate()
        {
            let values = raw.features.get(slot).ok_or_else(|| {
                DataError::Config(format!("site '{}' has no column '{name}'", raw.name))
            })?;
            columns.push(match (encoding, values) {
                (Encoding::Numeric, Values::Numeric(v)) => {
                    RecordColumn::Numeric(kept.iter().map(|&r| v[r]).collect())
                }
                (Encoding::OneHot { levels: agreed, .. }, Values::Categorical(coded)) => {
                    let codes = &coded.codes;
                    let map: Vec<u32> = coded
                        .levels
                        .iter()
                        .map(|l| {
                            agreed
                                .iter()
                                .position(|a| a == l)
                                .map_or(MISSING_CODE, |i| i as u32)
                        })
                        .collect();
                    RecordColumn::Categorical(
                        kept.iter()
                            .map(|&r| map.get(codes[r] as usize).copied().unwrap_or(MISSING_CODE))
                            .collect(),
                    )
                }
                _ => {
                    return Err(DataError::Config(format!(
                        "site '{}': column '{name}' is not of the agreed type",
                        raw.name
                    )));
                }
            });
        }
        columns.push(RecordColumn::Categorical(
            kept.iter()
                .map(|&r| {
                    classes
                        .get(r)
                        .and_then(|c| agreement.classes.iter().position(|k| k == c))
                        .map_or(MISSING_CODE, |i| i as u32)
                })
                .collect(),
        ));
        Ok(SiteRecords {
            site: raw.name.clone(),
            rows: kept.len(),
            columns,
        })
    }
}

/// Reads every site's kept rows as `config` describes, running the same
/// agreement steps in process as [`crate::load`] (simulation).
pub fn load_records(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<FederatedRecords, DataError> {
    super::with_agreed_sites(
        config,
        base_dir,
        source,
        None,
        None,
        |config, sites, agreement| records_of(config, &sites, &agreement),
    )
}

/// The agreed sites' kept rows as records.
fn records_of(
    config: &DataConfig,
    sites: &[LocalSite],
    agreement: &Agreement,
) -> Result<FederatedRecords, DataError> {
    let sites = sites
        .iter()
        .map(|s| s.records(agreement))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FederatedRecords {
        sites,
        ..records_schema(config, agreement)
    })
}

/// The agreed schema records are coded in (names and levels), without any
/// site's rows: what a deployed party that holds the agreement, not the
/// data, compiles queries against.
pub fn records_schema(config: &DataConfig, agreement: &Agreement) -> FederatedRecords {
    let mut names = agreement.columns.clone();
    names.push(config.schema.target.clone());
    let mut levels: Vec<Option<Vec<String>>> = agreement
        .encodings
        .iter()
        .map(|e| match e {
            Encoding::Numeric => None,
            Encoding::OneHot { levels, .. } => Some(levels.clone()),
        })
        .collect();
    levels.push(Some(agreement.classes.clone()));
    FederatedRecords {
        names,
        levels,
        sites: Vec::new(),
    }
}
