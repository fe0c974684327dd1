//! A WHERE filter resolved against the schema before any row is read:
//! columns to their indices, and a categorical column's literals (one, or
//! an IN list) to the agreed level codes, so that testing a row compares
//! codes, never texts.

use std::cmp::Ordering;

use crate::layout::level_text;
use crate::query::{CompareOp, Expr, Literal};
use crate::schema::{ColumnKind, Schema, SiteTable, Values};

/// A resolved filter.
pub(crate) enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    /// A numeric column against a number; a missing value matches nothing.
    Number {
        index: usize,
        op: CompareOp,
        value: f64,
    },
    /// A categorical column's code among `codes` (`inside`), or present and
    /// not among them; a missing value matches neither.
    Level {
        index: usize,
        codes: Vec<u32>,
        levels: usize,
        inside: bool,
    },
    /// A comparison the schema makes impossible (compiling refuses those).
    Never,
}

impl Filter {
    /// `e` resolved against `schema`.
    pub(crate) fn resolve(e: &Expr, schema: &Schema) -> Self {
        let level = |name: &str, lits: &[Literal], inside: bool| -> Self {
            let Ok((index, column)) = schema.column(name) else {
                return Self::Never;
            };
            match &column.kind {
                ColumnKind::Categorical { levels } => {
                    let codes = lits
                        .iter()
                        .filter_map(|l| {
                            let text = level_text(l);
                            levels.iter().position(|x| *x == text).map(|p| p as u32)
                        })
                        .collect();
                    Self::Level {
                        index,
                        codes,
                        levels: levels.len(),
                        inside,
                    }
                }
                ColumnKind::Numeric { .. } => match (lits, inside) {
                    ([Literal::Number(n)], true) => Self::Number {
                        index,
                        op: CompareOp::Eq,
                        value: *n,
                    },
                    ([Literal::Number(n)], false) => Self::Number {
                        index,
                        op: CompareOp::Ne,
                        value: *n,
                    },
                    _ => Self::Never,
                },
            }
        };
        match e {
            Expr::And(a, b) => Self::And(
                Box::new(Self::resolve(a, schema)),
                Box::new(Self::resolve(b, schema)),
            ),
            Expr::Or(a, b) => Self::Or(
                Box::new(Self::resolve(a, schema)),
                Box::new(Self::resolve(b, schema)),
            ),
            Expr::Not(a) => Self::Not(Box::new(Self::resolve(a, schema))),
            Expr::Compare(c, op, lit) => match (schema.column(c), lit) {
                (Ok((index, column)), Literal::Number(n))
                    if matches!(column.kind, ColumnKind::Numeric { .. }) =>
                {
                    Self::Number {
                        index,
                        op: *op,
                        value: *n,
                    }
                }
                _ => match op {
                    CompareOp::Eq => level(c, std::slice::from_ref(lit), true),
                    CompareOp::Ne => level(c, std::slice::from_ref(lit), false),
                    _ => Self::Never,
                },
            },
            Expr::In(c, lits) => match schema.column(c) {
                Ok((index, column)) if matches!(column.kind, ColumnKind::Numeric { .. }) => lits
                    .iter()
                    .map(|l| match l {
                        Literal::Number(n) => Self::Number {
                            index,
                            op: CompareOp::Eq,
                            value: *n,
                        },
                        Literal::Text(_) => Self::Never,
                    })
                    .reduce(|a, b| Self::Or(Box::new(a), Box::new(b)))
                    .unwrap_or(Self::Never),
                _ => level(c, lits, true),
            },
        }
    }

    /// Whether row `row` of `table` passes.
    pub(crate) fn matches(&self, table: &SiteTable, row: usize) -> bool {
        match self {
            Self::And(a, b) => a.matches(table, row) && b.matches(table, row),
            Self::Or(a, b) => a.matches(table, row) || b.matches(table, row),
            Self::Not(a) => !a.matches(table, row),
            Self::Number { index, op, value } => {
                let Some(Values::Numeric(v)) = table.columns.get(*index) else {
                    return false;
                };
                let x = v[row];
                if x.is_nan() {
                    return false;
                }
                let ord = x.partial_cmp(value);
                match op {
                    CompareOp::Eq => x == *value,
                    CompareOp::Ne => x != *value,
                    CompareOp::Lt => ord == Some(Ordering::Less),
                    CompareOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
                    CompareOp::Gt => ord == Some(Ordering::Greater),
                    CompareOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
                }
            }
            Self::Level {
                index,
                codes,
                levels,
                inside,
            } => {
                let Some(Values::Categorical(c)) = table.columns.get(*index) else {
                    return false;
                };
                let code = c[row];
                (code as usize) < *levels && codes.contains(&code) == *inside
            }
            Self::Never => false,
        }
    }
}
