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
pub(super) struct CategoricalBuilder {
    codes: Vec<u32>,
    levels: Vec<String>,
    index: HashMap<String, u32>,
    /// Keeps the text as read (identifiers), without reading numbers as numbers.
    raw: bool,
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

    fn finish(mut self) -> Values {
        self.codes.shrink_to_fit();
        Values::Categorical(Box::new(Coded {
            codes: self.codes,
            levels: self.levels,
        }))
    }
}

/// A column as it is being read: numeric until proven otherwise when inferred.
/// (The categorical builder is boxed: a site holds one builder a column
/// while a file is read, and a million sites' numeric columns would
/// otherwise each take a categorical builder's size, 96 bytes, not 32.)
pub(super) enum Builder {
    Numeric { values: Vec<f64>, declared: bool },
    Categorical(Box<CategoricalBuilder>),
}

impl Builder {
    pub(super) fn new(kind: FeatureKind) -> Self {
        match kind {
            FeatureKind::Categorical => Builder::Categorical(Box::default()),
            FeatureKind::Identifier => Builder::Categorical(Box::new(CategoricalBuilder {
                raw: true,
                ..CategoricalBuilder::default()
            })),
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
    pub(super) fn push(&mut self, token: Option<&str>) -> Result<(), String> {
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
                        let Values::Categorical(coded) = Values::Numeric(taken).into_categorical()
                        else {
                            unreachable!("into_categorical always returns a categorical column")
                        };
                        let Coded { codes, levels } = *coded;
                        let index = levels
                            .iter()
                            .enumerate()
                            .map(|(i, l)| (l.clone(), i as u32))
                            .collect();
                        let mut builder = CategoricalBuilder {
                            codes,
                            levels,
                            index,
                            raw: false,
                        };
                        builder.push_level(&canonical_level(text));
                        *self = Builder::Categorical(Box::new(builder));
                    }
                },
            },
            Builder::Categorical(builder) => match token {
                None => builder.codes.push(MISSING_CODE),
                Some(text) if builder.raw => builder.push_level(text),
                Some(text) => builder.push_level(&canonical_level(text)),
            },
        }
        Ok(())
    }

    pub(super) fn finish(self) -> Values {
        match self {
            // Held for the whole run at a million sites: no room to spare.
            Builder::Numeric { mut values, .. } => {
                values.shrink_to_fit();
                Values::Numeric(values)
            }
            Builder::Categorical(builder) => (*builder).finish(),
        }
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
    #[test]
    fn a_column_takes_a_vec_of_room() {
        // A million sites of 30 columns each hold 30 of these.
        assert_eq!(
            std::mem::size_of::<super::Values>(),
            std::mem::size_of::<Vec<f64>>()
        );
    }
}
