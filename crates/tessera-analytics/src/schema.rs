//! The agreed schema a query is compiled against: each column numeric (with
//! bounds from the plan, or none) or categorical (with the agreed levels),
//! and each site's rows in it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::AnalyticsError;

pub use tessera_data::{RecordColumn as Values, SiteRecords as SiteTable};

/// What a column holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum ColumnKind {
    /// Numbers, with the agreed bounds where the plan gives them.
    Numeric {
        /// `(low, high)`.
        bounds: Option<(f64, f64)>,
    },
    /// One of the agreed levels.
    Categorical {
        /// The agreed vocabulary.
        levels: Vec<String>,
    },
}

/// A column of the agreed schema.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: ColumnKind,
    /// Categorical: whether the plan's schema declares its levels (else
    /// they are the union of the levels in the sites' data).
    pub declared_levels: bool,
}

/// The agreed schema.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schema {
    /// The columns, in the order of each site's values.
    pub columns: Vec<Column>,
}

impl Schema {
    /// Marks the categorical columns whose levels the plan's `[data]`
    /// schema declares (`levels = [...]`); the others' levels came from
    /// the data.
    pub fn declare_levels(mut self, data: &tessera_data::DataConfig) -> Self {
        for column in &mut self.columns {
            column.declared_levels = data
                .schema
                .columns
                .iter()
                .any(|c| c.name == column.name && c.levels.is_some());
        }
        self
    }

    /// The schema of the data's agreement, numeric columns bounded by
    /// `bounds` (by column name); a bound for an unknown or categorical
    /// column, or an empty one, is refused.
    pub fn from_records(
        records: &tessera_data::FederatedRecords,
        bounds: &BTreeMap<String, [f64; 2]>,
    ) -> Result<Self, AnalyticsError> {
        let columns: Vec<Column> = records
            .names
            .iter()
            .zip(&records.levels)
            .map(|(name, levels)| Column {
                name: name.clone(),
                declared_levels: false,
                kind: match levels {
                    Some(levels) => ColumnKind::Categorical {
                        levels: levels.clone(),
                    },
                    None => ColumnKind::Numeric {
                        bounds: bounds.get(name).map(|b| (b[0], b[1])),
                    },
                },
            })
            .collect();
        let schema = Schema { columns };
        for (name, [low, high]) in bounds {
            let (_, column) = schema.column(name).map_err(|_| {
                AnalyticsError::Query(format!(
                    "[analytics.bounds] names '{name}', which is not a column of the data"
                ))
            })?;
            if matches!(column.kind, ColumnKind::Categorical { .. }) {
                return Err(AnalyticsError::Query(format!(
                    "[analytics.bounds] bounds '{name}', a categorical column"
                )));
            }
            if !(low.is_finite() && high.is_finite() && low < high) {
                return Err(AnalyticsError::Query(format!(
                    "[analytics.bounds] {name} = [{low}, {high}]: the lower bound must be below \
                     the upper"
                )));
            }
        }
        Ok(schema)
    }

    /// The schema of a deployed run's agreement (what the coordinator and
    /// each site hold, without the others' rows): as [`Schema::from_records`]
    /// over `data`'s plan and `agreement`, its declared levels marked.
    pub fn of_agreement(
        data: &tessera_data::DataConfig,
        agreement: &tessera_data::Agreement,
        bounds: &BTreeMap<String, [f64; 2]>,
    ) -> Result<Self, AnalyticsError> {
        Ok(
            Self::from_records(&tessera_data::records_schema(data, agreement), bounds)?
                .declare_levels(data),
        )
    }

    /// The column called `name`, with its index.
    pub fn column(&self, name: &str) -> Result<(usize, &Column), AnalyticsError> {
        self.columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name)
            .ok_or_else(|| {
                AnalyticsError::Query(format!(
                    "no column '{name}' (the columns: {})",
                    self.columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }
}
