//! The values of a column as read, the builders that type them, and the layout's columns.

use std::collections::HashMap;

use crate::levels::canonical_level;

/// Marker for a missing categorical value.
pub(crate) const MISSING_CODE: u32 = u32::MAX;

/// The values of one column at one site.
#[derive(Debug, Clone)]
pub(crate) enum Values {
    /// Numbers; `NaN` marks a missing value.
    Numeric(Vec<f64>),
    /// Codes into levels (boxed: a million sites' numeric columns each
    /// take a `Vec`'s size, 24 bytes, not 48).
    Categorical(Box<Coded>),
}

/// A categorical column's values.
#[derive(Debug, Clone)]
pub(crate) struct Coded {
    /// Codes into `levels`; [`MISSING_CODE`] marks a missing value.
    pub codes: Vec<u32>,
    pub levels: Vec<String>,
}

impl Values {
    pub(crate) fn is_missing(&self, row: usize) -> bool {
        match self {
            Values::Numeric(v) => v[row].is_nan(),
            Values::Categorical(c) => c.codes[row] == MISSING_CODE,
        }
    }

    /// The values at `rows`, in that order (categorical levels: only those used, in order of use).
    pub(crate) fn select(&self, rows: &[usize]) -> Values {
        match self {
            Values::Numeric(v) => Values::Numeric(rows.iter().map(|&r| v[r]).collect()),
            Values::Categorical(c) => {
                let mut builder = CategoricalBuilder::default();
                for &r in rows {
                    match c.levels.get(c.codes[r] as usize) {
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
            Values::Numeric(values) => CategoricalBuilder::of_numbers(values.into_iter()).finish(),
            categorical => categorical,
        }
    }
}

/// Levels are looked up by a scan up to this many, by a hash index past it
/// (most columns have a few levels, and a million sites each hold one
/// builder a categorical column while a file is read).
const SCANNED_LEVELS: usize = 16;

#[derive(Default)]
pub(super) struct CategoricalBuilder {
    codes: Vec<u32>,
    levels: Vec<String>,
    /// Code by level, once there are more than [`SCANNED_LEVELS`].
    index: Option<HashMap<String, u32>>,
    /// Keeps the text as read (identifiers), without reading numbers as numbers.
    raw: bool,
}

impl CategoricalBuilder {
    /// A builder keeping the text as read (an identifier column).
    pub(super) fn identifier() -> Self {
        Self {
            raw: true,
            ..Self::default()
        }
    }

    /// The column of `numbers` (`NaN` missing), each number as its canonical text.
    fn of_numbers(numbers: impl Iterator<Item = f64>) -> Self {
        let mut builder = Self::default();
        for v in numbers {
            if v.is_nan() {
                builder.codes.push(MISSING_CODE);
            } else {
                builder.push_level(&canonical_level(&format!("{v}")));
            }
        }
        builder
    }

    fn push_level(&mut self, level: &str) {
        let found = match &self.index {
            Some(index) => index.get(level).copied(),
            None => self
                .levels
                .iter()
                .position(|l| l == level)
                .map(|i| i as u32),
        };
        let code = match found {
            Some(code) => code,
            None => {
                let code = self.levels.len() as u32;
                self.levels.push(level.to_string());
                match &mut self.index {
                    Some(index) => {
                        index.insert(level.to_string(), code);
                    }
                    None if self.levels.len() > SCANNED_LEVELS => {
                        self.index = Some(
                            (self.levels.iter().enumerate())
                                .map(|(i, l)| (l.clone(), i as u32))
                                .collect(),
                        );
                    }
                    None => {}
                }
                code
            }
        };
        self.codes.push(code);
    }

    /// Adds one value (`None`: missing).
    pub(super) fn push(&mut self, token: Option<&str>) {
        match token {
            None => self.codes.push(MISSING_CODE),
            Some(text) if self.raw => self.push_level(text),
            Some(text) => self.push_level(&canonical_level(text)),
        }
    }

    pub(super) fn finish(mut self) -> Values {
        self.codes.shrink_to_fit();
        Values::Categorical(Box::new(Coded {
            codes: self.codes,
            levels: self.levels,
        }))
    }
}

/// One site's feature columns as they are read: the numbers row after row
/// in one buffer (one allocation a site, not one a column: a million sites
/// are read at once), each column numeric until proven otherwise when
/// inferred; the columns categorical at this site beside.
pub(super) struct RowsBuilder {
    width: usize,
    rows: usize,
    /// Row-major; a categorical column's place holds `NaN`.
    numbers: Vec<f64>,
    /// Per column: its builder where the column is categorical at this site.
    categorical: Vec<Option<Box<CategoricalBuilder>>>,
}

impl RowsBuilder {
    pub(super) fn new(layout: &[FeatureColumn]) -> Self {
        Self {
            width: layout.len(),
            rows: 0,
            numbers: Vec::new(),
            categorical: layout
                .iter()
                .map(|c| match c.kind {
                    FeatureKind::Categorical => Some(Box::default()),
                    FeatureKind::Identifier => Some(Box::new(CategoricalBuilder::identifier())),
                    FeatureKind::Numeric | FeatureKind::Infer => None,
                })
                .collect(),
        }
    }

    /// Adds column `slot`'s token (`None`: missing) to the row being read;
    /// a row gives every column's, in order, then [`RowsBuilder::end_row`].
    /// `Err` carries the message for a number out of range, or text in a
    /// column the schema declares numeric (`kind`).
    pub(super) fn push(
        &mut self,
        slot: usize,
        kind: FeatureKind,
        token: Option<&str>,
    ) -> Result<(), String> {
        let value = match (&mut self.categorical[slot], token) {
            (Some(builder), token) => {
                builder.push(token);
                f64::NAN
            }
            (None, None) => f64::NAN,
            (None, Some(text)) => match text.parse::<f64>() {
                Ok(v) if v.is_finite() && (v as f32).is_finite() => v,
                Ok(_) => {
                    return Err(format!(
                        "'{text}' is not a finite number within the 32-bit range (|x| < 3.4e38)"
                    ));
                }
                Err(_) if kind == FeatureKind::Numeric => {
                    return Err(format!(
                        "'{text}' is not a number, and the schema declares this column numeric"
                    ));
                }
                Err(_) => {
                    // Text in an inferred column: categorical at this
                    // site, its numbers so far as their canonical text.
                    let (width, numbers) = (self.width, &self.numbers);
                    let earlier = (0..self.rows).map(|r| numbers[r * width + slot]);
                    let mut builder = CategoricalBuilder::of_numbers(earlier);
                    builder.push_level(&canonical_level(text));
                    self.categorical[slot] = Some(Box::new(builder));
                    f64::NAN
                }
            },
        };
        if self.numbers.len() == self.numbers.capacity() {
            // By a quarter, at least a row: a site of a few rows holds
            // about what it read, a large one grows geometrically.
            let more = self.width.max(self.numbers.capacity() / 4);
            self.numbers.reserve_exact(more);
        }
        self.numbers.push(value);
        Ok(())
    }

    /// Ends the row being read.
    pub(super) fn end_row(&mut self) {
        self.rows += 1;
    }

    /// Each column's values, in the layout's order.
    pub(super) fn finish(self) -> Vec<Values> {
        let (width, rows, numbers) = (self.width, self.rows, self.numbers);
        (self.categorical.into_iter().enumerate())
            .map(|(slot, builder)| match builder {
                Some(builder) => builder.finish(),
                None => Values::Numeric((0..rows).map(|r| numbers[r * width + slot]).collect()),
            })
            .collect()
    }
}

/// How a feature column's type is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FeatureKind {
    Numeric,
    Categorical,
    Infer,
    /// `[data.cross_silo]`'s identifier: text as read, taken out before
    /// the agreement (never a feature).
    Identifier,
}

/// A feature column of the federation's layout.
#[derive(Debug, Clone)]
pub(crate) struct FeatureColumn {
    pub name: String,
    pub kind: FeatureKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, kind: FeatureKind) -> FeatureColumn {
        FeatureColumn {
            name: name.into(),
            kind,
        }
    }

    #[test]
    fn rows_read_into_one_buffer_come_out_as_columns() {
        let layout = [
            column("age", FeatureKind::Infer),
            column("code", FeatureKind::Infer),
            column("ward", FeatureKind::Categorical),
            column("dose", FeatureKind::Numeric),
        ];
        let mut rows = RowsBuilder::new(&layout);
        // 40 rows: "code" holds numbers until row 30 holds text, and
        // takes more than the scanned levels (an index then finds them).
        for r in 0..40 {
            let age = (r % 7 != 3).then(|| format!("{}", 20 + r));
            let code = if r == 30 {
                "x".to_string()
            } else {
                format!("{}.0", r % 20)
            };
            let ward = ["a", "b", "c"][r % 3];
            for (slot, token) in [age.as_deref(), Some(&code), Some(ward), Some("1.5")]
                .into_iter()
                .enumerate()
            {
                rows.push(slot, layout[slot].kind, token).unwrap();
            }
            rows.end_row();
        }
        let columns = rows.finish();
        let Values::Numeric(age) = &columns[0] else {
            panic!("age is numeric")
        };
        assert_eq!(age.len(), 40);
        assert!(age[3].is_nan() && age[10].is_nan());
        assert_eq!((age[0], age[39]), (20.0, 59.0));
        let Values::Categorical(code) = &columns[1] else {
            panic!("code turned categorical")
        };
        let level = |r: usize| code.levels[code.codes[r] as usize].as_str();
        // Numbers read before the text, as their canonical text.
        assert_eq!(
            (level(0), level(19), level(21), level(30)),
            ("0", "19", "1", "x")
        );
        assert_eq!((level(31), level(39)), ("11", "19"));
        assert_eq!(code.levels.len(), 21);
        assert_eq!(code.codes[39], code.codes[19]);
        let Values::Categorical(ward) = &columns[2] else {
            panic!("ward is declared categorical")
        };
        assert_eq!(ward.levels, ["a", "b", "c"]);
        assert_eq!(ward.codes[..4], [0, 1, 2, 0]);
        let Values::Numeric(dose) = &columns[3] else {
            panic!("dose is numeric")
        };
        assert!(dose.iter().all(|&d| d == 1.5));

        let mut rows = RowsBuilder::new(&layout);
        let e = rows
            .push(3, FeatureKind::Numeric, Some("high"))
            .unwrap_err();
        assert!(e.contains("declares this column numeric"), "{e}");
        let e = rows.push(0, FeatureKind::Infer, Some("1e39")).unwrap_err();
        assert!(e.contains("32-bit range"), "{e}");
    }

    #[test]
    fn a_column_takes_a_vec_of_room() {
        // A million sites of 30 columns each hold 30 of these.
        assert_eq!(
            std::mem::size_of::<super::Values>(),
            std::mem::size_of::<Vec<f64>>()
        );
    }
}
