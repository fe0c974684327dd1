//! A query compiled against the agreed schema: the groups, each aggregate's
//! slots in the contribution vector, and the vector's L2 sensitivity; and a
//! site's contribution, computed from its rows.
//!
//! The layout is a pure function of the query and the schema (never of the
//! data), so every site computes vectors of the same shape that add up slot
//! by slot. Each numeric value is clamped to its column's bounds and
//! rescaled to `u = (x - low) / (high - low)` in `[0, 1]` (bins and tree
//! leaves), centred as `c = u - 1/2` in `[-1/2, 1/2]` for sums: a row adds
//! 1 to a count, a bin, a tree node or a sketch cell, at most 1/2 in
//! magnitude to a sum (`c`) and at most 1/4 to a sum of squares or cross
//! products (`c²`, `c·d`), so the L2 norm of what it adds is at most the
//! square root of the sum of those squared bounds over the slots it
//! touches, the same for every row. Values are fixed point,
//! `round(v · 2^40)` in `Z_2^64`.

use crate::AnalyticsError;
use crate::query::{Aggregate, CompareOp, Expr, Item, Literal, Query};
use crate::schema::{Column, ColumnKind, Schema, SiteTable, Values};

/// One unit in the contribution vector's fixed point.
pub const SCALE: f64 = (1u64 << 40) as f64;

/// The most rows a query may read: the sum of `2^22` values of at most
/// `2^40` stays below `2^62`. Noise is not bounded by it: a query is
/// refused before it runs when 9 noise standard deviations reach `2^52` in
/// fixed point (`run`), where the `f64` draw would lose its low bits; past
/// that the noisy value could still wrap, but only with probability below
/// `1e-18` a value.
pub const MAX_ROWS: usize = 1 << 22;

/// The most slots a contribution may have.
pub const MAX_SLOTS: usize = 1 << 24;

/// Settings that shape a layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Levels of the quantile tree (`2^depth` leaves).
    pub quantile_depth: u32,
    /// Cells of a count-distinct sketch.
    pub sketch_cells: usize,
    /// Whether GROUP BY and crosstab may list levels the schema does not
    /// declare (`[analytics] public_levels`).
    pub public_levels: bool,
}

/// A numeric column as an aggregate reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounded {
    /// Index in the schema.
    pub index: usize,
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

impl Bounded {
    /// `x` clamped and rescaled into `[0, 1]`.
    pub fn unit(&self, x: f64) -> f64 {
        let range = self.high - self.low;
        if range > 0.0 {
            (x.clamp(self.low, self.high) - self.low) / range
        } else {
            0.0
        }
    }

    /// The width of the range.
    pub fn range(&self) -> f64 {
        self.high - self.low
    }
}

/// An aggregate with its columns resolved and its place in a group's slots.
#[derive(Debug, Clone, PartialEq)]
pub struct Slotted {
    /// The aggregate.
    pub aggregate: Aggregate,
    /// First slot, relative to the group's first.
    pub offset: usize,
    /// Slots.
    pub len: usize,
    /// Its numeric columns.
    pub numeric: Vec<Bounded>,
    /// Its categorical columns: schema index and number of levels.
    pub categorical: Vec<(usize, usize)>,
    /// The most one row adds to its slots' squared L2 norm.
    pub norm_sq: f64,
    /// The agreed levels of its categorical columns (crosstab).
    pub levels: Vec<Vec<String>>,
    /// Reads the slots of an earlier aggregate (quantiles, min and max of
    /// one column within the same bounds share one tree) and adds none.
    pub shared: bool,
}

/// A compiled query.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// GROUP BY columns: schema index and agreed levels.
    pub group_by: Vec<(usize, Vec<String>)>,
    /// Groups: the product of the GROUP BY vocabularies (1 without GROUP BY).
    pub groups: usize,
    /// The aggregates, in SELECT order.
    pub aggregates: Vec<Slotted>,
    /// Slots per group: the group's row count, then each aggregate's.
    pub group_len: usize,
    /// The most one row adds to the vector's squared L2 norm.
    pub norm_sq: f64,
    /// Every column the query needs present in a row.
    pub needed: Vec<usize>,
    /// Settings.
    pub shape: Shape,
}

impl Layout {
    /// Slots in the whole vector.
    pub fn len(&self) -> usize {
        self.groups * self.group_len
    }

    /// Whether the vector is empty (never: each group has its count).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The L2 sensitivity of the vector, in units of one row's count: the
    /// norm of what one row adds (add/remove-one neighbours).
    pub fn sensitivity(&self) -> f64 {
        self.norm_sq.sqrt()
    }

    /// The key (levels) of group `g`.
    pub fn group_key(&self, g: usize) -> Vec<String> {
        let mut key = Vec::with_capacity(self.group_by.len());
        let mut rest = g;
        for (_, levels) in self.group_by.iter().rev() {
            key.push(levels[rest % levels.len()].clone());
            rest /= levels.len();
        }
        key.reverse();
        key
    }
}

/// Compiles `query` against `schema`: bounds from the query's CLAMP, else
/// the schema's; GROUP BY over categorical columns' agreed levels.
pub fn compile(query: &Query, schema: &Schema, shape: Shape) -> Result<Layout, AnalyticsError> {
    if !query.from.eq_ignore_ascii_case("data") {
        return Err(AnalyticsError::Query(format!(
            "FROM '{}': the federation's table is called data",
            query.from
        )));
    }
    for (column, low, high) in &query.clamps {
        let (_, kind) = schema.column(column)?;
        if let ColumnKind::Categorical { .. } = kind.kind {
            return Err(AnalyticsError::Query(format!(
                "CLAMP {column}: column '{column}' is categorical, and only numeric columns \
                 have bounds"
            )));
        }
        if low.partial_cmp(high) != Some(std::cmp::Ordering::Less) {
            return Err(AnalyticsError::Query(format!(
                "CLAMP {column} {low} {high}: the lower bound must be below the upper"
            )));
        }
        if !(high - low).is_finite() {
            return Err(AnalyticsError::Query(format!(
                "CLAMP {column} {low} {high}: the range is not finite (high - low overflows); \
                 give bounds the column's values can actually take"
            )));
        }
    }
    let bounded = |name: &str| -> Result<Bounded, AnalyticsError> {
        let (index, column) = schema.column(name)?;
        let ColumnKind::Numeric { bounds } = &column.kind else {
            return Err(AnalyticsError::Query(format!(
                "column '{name}' is categorical: a numeric aggregate needs a numeric column"
            )));
        };
        let clamp = query.clamps.iter().rev().find(|(c, _, _)| c == name);
        match (clamp, bounds) {
            (Some((_, low, high)), _) => Ok(Bounded {
                index,
                low: *low,
                high: *high,
            }),
            (None, Some((low, high))) => Ok(Bounded {
                index,
                low: *low,
                high: *high,
            }),
            (None, None) => Err(AnalyticsError::Query(format!(
                "column '{name}' has no bounds: give them in the query (CLAMP {name} LOW HIGH) \
                 or in the plan ([analytics.bounds] {name} = [LOW, HIGH]); they may not come \
                 from the data"
            ))),
        }
    };
    let categorical = |name: &str| -> Result<(usize, Vec<String>), AnalyticsError> {
        let (index, column) = schema.column(name)?;
        match &column.kind {
            ColumnKind::Categorical { levels } => Ok((index, levels.clone())),
            ColumnKind::Numeric { .. } => Err(AnalyticsError::Query(format!(
                "column '{name}' is numeric: it has no agreed levels to group or count by"
            ))),
        }
    };
    let public = |what: &str, name: &str| -> Result<(), AnalyticsError> {
        let (_, column) = schema.column(name)?;
        if matches!(column.kind, ColumnKind::Categorical { .. })
            && !column.declared_levels
            && !shape.public_levels
        {
            return Err(AnalyticsError::Query(format!(
                "{what}: the schema does not declare the levels of '{name}', so the answer \
                 would list the levels the sites' data holds (a rare one would show); declare \
                 them in [data] ({{ name = \"{name}\", type = \"categorical\", levels = [...] }}) \
                 or, where they are public, set [analytics] public_levels = true"
            )));
        }
        Ok(())
    };
    let mut group_by = Vec::new();
    let mut groups: usize = 1;
    for name in &query.group_by {
        public(&format!("GROUP BY {name}"), name)?;
        let (index, column) = schema.column(name)?;
        let ColumnKind::Categorical { levels } = &column.kind else {
            return Err(AnalyticsError::Query(format!(
                "GROUP BY {name}: a numeric column has no agreed levels; group by a categorical \
                 column"
            )));
        };
        if levels.is_empty() {
            return Err(AnalyticsError::Query(format!(
                "GROUP BY {name}: the column has no levels"
            )));
        }
        groups = groups.saturating_mul(levels.len());
        group_by.push((index, levels.clone()));
    }
    let mut aggregates = Vec::new();
    let mut offset = 1;
    let mut norm_sq = 1.0;
    let depth = shape.quantile_depth as usize;
    let tree = (1usize << (depth + 1)) - 2;
    // Trees by (column, bounds): every quantile of a column reads one.
    let mut trees: Vec<(usize, u64, u64, usize)> = Vec::new();
    for item in &query.items {
        let aggregate = match item {
            Item::Column(name) => {
                if !query.group_by.contains(name) {
                    return Err(AnalyticsError::Query(format!(
                        "'{name}' in SELECT is neither an aggregate nor in GROUP BY"
                    )));
                }
                continue;
            }
            Item::Aggregate(a) => a.clone(),
        };
        let mut numeric = Vec::new();
        let mut cats = Vec::new();
        let mut levels = Vec::new();
        let (len, touch): (usize, f64) = match &aggregate {
            Aggregate::Count => (0, 0.0),
            Aggregate::Sum(c) | Aggregate::Mean(c) => {
                numeric.push(bounded(c)?);
                (1, 0.25)
            }
            Aggregate::Variance(c) | Aggregate::Stddev(c) => {
                numeric.push(bounded(c)?);
                (2, 0.25 + 0.0625)
            }
            Aggregate::Histogram {
                column,
                bins,
                hierarchical,
            } => {
                numeric.push(bounded(column)?);
                if *hierarchical {
                    let levels = bins.trailing_zeros() as usize;
                    (2 * bins - 2, levels as f64)
                } else {
                    (*bins, 1.0)
                }
            }
            Aggregate::Quantile(c, _) | Aggregate::Min(c) | Aggregate::Max(c) => {
                numeric.push(bounded(c)?);
                (tree, depth as f64)
            }
            Aggregate::Corr(cs) | Aggregate::Cov(cs) => {
                for c in cs {
                    numeric.push(bounded(c)?);
                }
                let k = cs.len();
                let pairs = k * (k - 1) / 2;
                (2 * k + pairs, 0.25 * k as f64 + 0.0625 * (k + pairs) as f64)
            }
            Aggregate::Crosstab(a, b) => {
                public(&format!("crosstab({a}, {b})"), a)?;
                public(&format!("crosstab({a}, {b})"), b)?;
                let (a, la) = categorical(a)?;
                let (b, lb) = categorical(b)?;
                cats.push((a, la.len()));
                cats.push((b, lb.len()));
                let len = la.len() * lb.len();
                levels.push(la);
                levels.push(lb);
                (len, 1.0)
            }
            Aggregate::CountDistinct(c) => {
                let (index, _) = schema.column(c)?;
                cats.push((index, 0));
                (shape.sketch_cells, 1.0)
            }
        };
        let tree_of = match &aggregate {
            Aggregate::Quantile(..) | Aggregate::Min(_) | Aggregate::Max(_) => {
                let b = &numeric[0];
                Some((b.index, b.low.to_bits(), b.high.to_bits()))
            }
            _ => None,
        };
        let earlier = tree_of.and_then(|(i, l, h)| {
            trees
                .iter()
                .find(|t| (t.0, t.1, t.2) == (i, l, h))
                .map(|t| t.3)
        });
        if let Some(at) = earlier {
            aggregates.push(Slotted {
                aggregate,
                offset: at,
                len,
                numeric,
                categorical: cats,
                norm_sq: 0.0,
                levels,
                shared: true,
            });
            continue;
        }
        if let Some((i, l, h)) = tree_of {
            trees.push((i, l, h, offset));
        }
        aggregates.push(Slotted {
            aggregate,
            offset,
            len,
            numeric,
            categorical: cats,
            norm_sq: touch,
            levels,
            shared: false,
        });
        offset += len;
        norm_sq += touch;
    }
    let mut needed: Vec<usize> = group_by.iter().map(|(i, _)| *i).collect();
    for a in &aggregates {
        needed.extend(a.numeric.iter().map(|b| b.index));
        needed.extend(a.categorical.iter().map(|c| c.0));
    }
    needed.sort_unstable();
    needed.dedup();
    let layout = Layout {
        group_by,
        groups,
        aggregates,
        group_len: offset,
        norm_sq,
        needed,
        shape,
    };
    if layout.groups.saturating_mul(layout.group_len) > MAX_SLOTS {
        return Err(AnalyticsError::Query(format!(
            "the query needs {} groups of {} values, more than {MAX_SLOTS} in all: group by \
             fewer columns or ask for fewer bins",
            layout.groups, layout.group_len
        )));
    }
    if let Some(filter) = &query.filter {
        check_filter(filter, schema)?;
    }
    Ok(layout)
}

fn check_filter(e: &Expr, schema: &Schema) -> Result<(), AnalyticsError> {
    match e {
        Expr::And(a, b) | Expr::Or(a, b) => {
            check_filter(a, schema)?;
            check_filter(b, schema)
        }
        Expr::Not(a) => check_filter(a, schema),
        Expr::Compare(c, op, lit) => check_literal(schema, c, Some(*op), lit),
        Expr::In(c, lits) => lits
            .iter()
            .try_for_each(|l| check_literal(schema, c, None, l)),
    }
}

fn check_literal(
    schema: &Schema,
    name: &str,
    op: Option<CompareOp>,
    lit: &Literal,
) -> Result<(), AnalyticsError> {
    let (_, column) = schema.column(name)?;
    match (&column.kind, lit) {
        (ColumnKind::Numeric { .. }, Literal::Number(_)) => Ok(()),
        (ColumnKind::Numeric { .. }, Literal::Text(t)) => Err(AnalyticsError::Query(format!(
            "column '{name}' is numeric, compared with the text '{t}'"
        ))),
        (ColumnKind::Categorical { levels }, lit) => {
            if matches!(
                op,
                Some(CompareOp::Lt | CompareOp::Le | CompareOp::Gt | CompareOp::Ge)
            ) {
                return Err(AnalyticsError::Query(format!(
                    "column '{name}' is categorical: compare it with =, <> or IN"
                )));
            }
            let level = level_text(lit);
            if levels.contains(&level) {
                Ok(())
            } else {
                Err(AnalyticsError::Query(format!(
                    "'{level}' is not a level of column '{name}' (its levels: {})",
                    levels.join(", ")
                )))
            }
        }
    }
}

/// A literal as a categorical level (numbers canonical, as the data's).
pub(crate) fn level_text(lit: &Literal) -> String {
    match lit {
        Literal::Number(v) => tessera_data::canonical_level(&format!("{v}")),
        Literal::Text(t) => tessera_data::canonical_level(t),
    }
}

fn present(table: &SiteTable, index: usize, row: usize) -> bool {
    match &table.columns[index] {
        Values::Numeric(v) => !v[row].is_nan(),
        Values::Categorical(c) => c[row] != tessera_data::MISSING_LEVEL,
    }
}

fn fixed(v: f64) -> u64 {
    (v * SCALE).round() as i64 as u64
}

/// SplitMix64's finaliser: the sketch's hash of a value.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The leaf of `u` among `leaves` equal bins of `[0, 1]`.
pub fn bin_of(u: f64, leaves: usize) -> usize {
    ((u * leaves as f64) as usize).min(leaves - 1)
}

/// One site's contribution: for each group, its rows that pass the filter
/// and have every needed column, as fixed-point sums in `Z_2^64`.
pub fn contribute(layout: &Layout, query: &Query, schema: &Schema, table: &SiteTable) -> Vec<u64> {
    let mut out = vec![0u64; layout.len()];
    let add = |out: &mut Vec<u64>, slot: usize, v: f64| {
        out[slot] = out[slot].wrapping_add(fixed(v));
    };
    let filter = query
        .filter
        .as_ref()
        .map(|f| crate::filter::Filter::resolve(f, schema));
    'rows: for row in 0..table.rows {
        if layout.needed.iter().any(|&i| !present(table, i, row)) {
            continue;
        }
        if let Some(f) = &filter
            && !f.matches(table, row)
        {
            continue;
        }
        let mut group = 0usize;
        for (index, levels) in &layout.group_by {
            let Values::Categorical(codes) = &table.columns[*index] else {
                continue 'rows;
            };
            group = group * levels.len() + codes[row] as usize;
        }
        let base = group * layout.group_len;
        add(&mut out, base, 1.0);
        for a in layout.aggregates.iter().filter(|a| !a.shared) {
            let at = base + a.offset;
            let unit = |b: &Bounded| match &table.columns[b.index] {
                Values::Numeric(v) => b.unit(v[row]),
                Values::Categorical(_) => 0.0,
            };
            match &a.aggregate {
                Aggregate::Count => {}
                Aggregate::Sum(_) | Aggregate::Mean(_) => {
                    add(&mut out, at, unit(&a.numeric[0]) - 0.5)
                }
                Aggregate::Variance(_) | Aggregate::Stddev(_) => {
                    let u = unit(&a.numeric[0]) - 0.5;
                    add(&mut out, at, u);
                    add(&mut out, at + 1, u * u);
                }
                Aggregate::Histogram {
                    bins, hierarchical, ..
                } => {
                    let u = unit(&a.numeric[0]);
                    if *hierarchical {
                        tree_add(&mut out, at, u, bins.trailing_zeros() as usize);
                    } else {
                        add(&mut out, at + bin_of(u, *bins), 1.0);
                    }
                }
                Aggregate::Quantile(..) | Aggregate::Min(_) | Aggregate::Max(_) => {
                    let u = unit(&a.numeric[0]);
                    tree_add(&mut out, at, u, layout.shape.quantile_depth as usize);
                }
                Aggregate::Corr(_) | Aggregate::Cov(_) => {
                    let us: Vec<f64> = a.numeric.iter().map(|b| unit(b) - 0.5).collect();
                    let k = us.len();
                    for (i, u) in us.iter().enumerate() {
                        add(&mut out, at + i, *u);
                        add(&mut out, at + k + i, u * u);
                    }
                    let mut p = at + 2 * k;
                    for i in 0..k {
                        for j in i + 1..k {
                            add(&mut out, p, us[i] * us[j]);
                            p += 1;
                        }
                    }
                }
                Aggregate::Crosstab(..) => {
                    let code = |c: &(usize, usize)| match &table.columns[c.0] {
                        Values::Categorical(codes) => codes[row] as usize,
                        Values::Numeric(_) => 0,
                    };
                    let (x, y) = (code(&a.categorical[0]), code(&a.categorical[1]));
                    add(&mut out, at + x * a.categorical[1].1 + y, 1.0);
                }
                Aggregate::CountDistinct(_) => {
                    let key = match &table.columns[a.categorical[0].0] {
                        Values::Numeric(v) => {
                            let x = v[row];
                            (if x == 0.0 { 0.0f64 } else { x }).to_bits()
                        }
                        Values::Categorical(codes) => u64::from(codes[row]),
                    };
                    let cell = (mix(key) % layout.shape.sketch_cells as u64) as usize;
                    add(&mut out, at + cell, 1.0);
                }
            }
        }
    }
    out
}

/// Adds a row at `u` to a tree of `depth` levels below the root (level
/// `l` has `2^l` nodes, stored from slot `2^l - 2`).
fn tree_add(out: &mut [u64], at: usize, u: f64, depth: usize) {
    let leaf = bin_of(u, 1 << depth);
    for level in 1..=depth {
        let node = leaf >> (depth - level);
        let slot = at + (1 << level) - 2 + node;
        out[slot] = out[slot].wrapping_add(fixed(1.0));
    }
}

/// A column's agreed description, for messages.
pub fn describe(column: &Column) -> String {
    match &column.kind {
        ColumnKind::Numeric {
            bounds: Some((l, h)),
        } => format!("{} (numeric, [{l}, {h}])", column.name),
        ColumnKind::Numeric { bounds: None } => format!("{} (numeric, no bounds)", column.name),
        ColumnKind::Categorical { levels } => {
            format!("{} (categorical: {})", column.name, levels.join(", "))
        }
    }
}
