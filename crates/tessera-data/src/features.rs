//! A feature matrix, held densely or, where most features are one-hot
//! indicators left as 0 and 1, as dense measurements beside each row's
//! indicators set.
//!
//! Wide coded data (a few columns of hundreds of codes each) is almost all
//! zeros once one-hot encoded: 100,000 rows of 2,461 features are about
//! 1 GB as `f32`, and a row holds 61 measurements and 3 codes. The sparse
//! form keeps the measurements as a dense block and, per row, the columns
//! of its nonzero indicators: about 27 MB for the same rows. Learners read
//! it a batch of rows at a time ([`Features::write_row`],
//! [`Features::rows`]), so a densified batch, never the matrix, is what
//! their arithmetic sees.

use std::ops::Range;

use ndarray::{Array2, ArrayViewMut1, Axis, CowArray, Ix2};

/// One row per example, one column per feature.
#[derive(Debug, Clone, PartialEq)]
pub enum Features {
    /// Every value stored.
    Dense(Array2<f32>),
    /// Measurements stored, indicators by their columns (boxed: a million
    /// sites each hold four of these, most of them dense).
    Sparse(Box<SparseRows>),
}

/// Rows whose measurement columns are held densely and whose other
/// columns are zero except where listed.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseRows {
    n_cols: usize,
    /// The columns held densely, ascending.
    dense_cols: Vec<usize>,
    /// Their values, one row per example.
    dense: Array2<f32>,
    /// Row `r`'s listed entries are `cols[starts[r]..starts[r + 1]]`.
    starts: Vec<usize>,
    /// Listed columns (never a dense one), ascending within a row.
    cols: Vec<u32>,
    /// Their values.
    values: Vec<f32>,
}

/// The sparse rows built one row at a time ([`SparseBuilder::push`]).
#[derive(Debug)]
pub struct SparseBuilder {
    rows: SparseRows,
    dense: Vec<f32>,
}

impl SparseBuilder {
    /// No rows yet, of `n_cols` columns (at most `u32::MAX + 1`: more are
    /// held as that many) of which `dense_cols` are held densely (sorted,
    /// and those past the columns left out, here).
    pub fn new(n_cols: usize, mut dense_cols: Vec<usize>) -> Self {
        let n_cols = n_cols.min(u32::MAX as usize + 1);
        dense_cols.retain(|&c| c < n_cols);
        dense_cols.sort_unstable();
        dense_cols.dedup();
        let width = dense_cols.len();
        Self {
            rows: SparseRows {
                n_cols,
                dense_cols,
                dense: Array2::zeros((0, width)),
                starts: vec![0],
                cols: Vec::new(),
                values: Vec::new(),
            },
            dense: Vec::new(),
        }
    }

    /// Adds a row: its dense columns' values (in `dense_cols` order; a
    /// shorter slice is padded with zeros, a longer one cut) and its other
    /// nonzero entries (column, value), in any order. An entry outside the
    /// columns, or in a dense one, is left out; of one column listed twice
    /// the last counts.
    pub fn push(&mut self, dense: &[f32], entries: impl IntoIterator<Item = (usize, f32)>) {
        let width = self.rows.dense_cols.len();
        let padding = std::iter::repeat_n(0.0, width.saturating_sub(dense.len()));
        self.dense
            .extend(dense.iter().copied().take(width).chain(padding));
        let mut row: Vec<(usize, f32)> = entries
            .into_iter()
            .filter(|&(c, _)| c < self.rows.n_cols && !self.rows.is_dense(c))
            .collect();
        row.sort_by_key(|&(c, _)| c);
        for (k, &(c, v)) in row.iter().enumerate() {
            let last = row.get(k + 1).is_none_or(|&(next, _)| next != c);
            if last && v != 0.0 {
                self.rows.cols.push(c as u32);
                self.rows.values.push(v);
            }
        }
        self.rows.starts.push(self.rows.cols.len());
    }

    /// The rows.
    pub fn finish(self) -> Features {
        let mut rows = self.rows;
        let n = rows.starts.len() - 1;
        let width = rows.dense_cols.len();
        // Every row pushed exactly `width` values: the shape holds.
        rows.dense = Array2::from_shape_vec((n, width), self.dense)
            .unwrap_or_else(|_| Array2::zeros((n, width)));
        Features::Sparse(Box::new(rows))
    }
}

impl From<Array2<f32>> for Features {
    fn from(x: Array2<f32>) -> Self {
        Features::Dense(x)
    }
}

impl Features {
    /// No rows of `n_cols` columns.
    pub fn empty(n_cols: usize) -> Self {
        Features::Dense(Array2::zeros((0, n_cols)))
    }

    /// Number of rows.
    pub fn nrows(&self) -> usize {
        match self {
            Features::Dense(x) => x.nrows(),
            Features::Sparse(s) => s.starts.len() - 1,
        }
    }

    /// Number of columns.
    pub fn ncols(&self) -> usize {
        match self {
            Features::Dense(x) => x.ncols(),
            Features::Sparse(s) => s.n_cols,
        }
    }

    /// Whether the rows are held sparsely.
    pub fn is_sparse(&self) -> bool {
        matches!(self, Features::Sparse(_))
    }

    /// Bytes the values take in memory (the allocations' lengths).
    pub fn stored_bytes(&self) -> usize {
        match self {
            Features::Dense(x) => 4 * x.len(),
            Features::Sparse(s) => {
                4 * (s.dense.len() + s.cols.len() + s.values.len())
                    + 8 * (s.starts.len() + s.dense_cols.len())
            }
        }
    }

    /// The value at row `i`, column `j` (0 outside the matrix).
    pub fn get(&self, i: usize, j: usize) -> f32 {
        match self {
            Features::Dense(x) => x.get((i, j)).copied().unwrap_or(0.0),
            Features::Sparse(s) => {
                if i >= s.starts.len() - 1 {
                    return 0.0;
                }
                if let Ok(k) = s.dense_cols.binary_search(&j) {
                    return s.dense[[i, k]];
                }
                let (cols, values) = s.row(i);
                cols.binary_search(&(j as u32)).map_or(0.0, |k| values[k])
            }
        }
    }

    /// Row `i` written into `out` (`ncols` long).
    pub fn write_row(&self, i: usize, mut out: ArrayViewMut1<'_, f32>) {
        match self {
            Features::Dense(x) => out.assign(&x.row(i)),
            Features::Sparse(s) => {
                out.fill(0.0);
                for (&c, &v) in s.dense_cols.iter().zip(s.dense.row(i)) {
                    out[c] = v;
                }
                let (cols, values) = s.row(i);
                for (&c, &v) in cols.iter().zip(values) {
                    out[c as usize] = v;
                }
            }
        }
    }

    /// `f(i, row)` for every row in order, each row dense in one reused
    /// buffer (the matrix is never densified whole).
    pub fn for_each_row(&self, mut f: impl FnMut(usize, &[f32])) {
        let mut row = ndarray::Array1::<f32>::zeros(self.ncols());
        for i in 0..self.nrows() {
            self.write_row(i, row.view_mut());
            f(i, row.as_slice().unwrap_or(&[]));
        }
    }

    /// Rows `range` as a dense matrix (borrowed when dense).
    pub fn rows(&self, range: Range<usize>) -> CowArray<'_, f32, Ix2> {
        match self {
            Features::Dense(x) => CowArray::from(x.slice(ndarray::s![range, ..])),
            Features::Sparse(_) => {
                let mut out = Array2::zeros((range.len(), self.ncols()));
                for (k, i) in range.enumerate() {
                    self.write_row(i, out.row_mut(k));
                }
                CowArray::from(out)
            }
        }
    }

    /// Every row as a dense matrix (borrowed when dense).
    pub fn dense(&self) -> CowArray<'_, f32, Ix2> {
        self.rows(0..self.nrows())
    }

    /// Every row as a dense matrix, owned.
    pub fn into_dense(self) -> Array2<f32> {
        match self {
            Features::Dense(x) => x,
            sparse => sparse.dense().into_owned(),
        }
    }

    /// Column `j`'s values.
    pub fn column(&self, j: usize) -> Vec<f32> {
        match self {
            Features::Dense(x) => x.column(j).to_vec(),
            Features::Sparse(_) => (0..self.nrows()).map(|i| self.get(i, j)).collect(),
        }
    }

    /// The rows at `indices`, in that order, held as these are.
    pub fn select(&self, indices: &[usize]) -> Features {
        match self {
            Features::Dense(x) => Features::Dense(x.select(Axis(0), indices)),
            Features::Sparse(s) => {
                let mut b = SparseBuilder::new(s.n_cols, s.dense_cols.clone());
                for &i in indices {
                    let (cols, values) = s.row(i);
                    let dense = s.dense.row(i);
                    let entries = cols.iter().map(|&c| c as usize).zip(values.iter().copied());
                    match dense.as_slice() {
                        Some(d) => b.push(d, entries),
                        None => b.push(&dense.to_vec(), entries),
                    }
                }
                b.finish()
            }
        }
    }

    /// `parts` stacked, in order: sparse when every part is sparse with the
    /// same dense columns, dense otherwise.
    pub fn concat(n_cols: usize, parts: &[&Features]) -> Features {
        let layout = |f: &Features| match f {
            Features::Sparse(s) => Some(s.dense_cols.clone()),
            Features::Dense(_) => None,
        };
        let first = parts.first().and_then(|f| layout(f));
        if let Some(dense_cols) = first
            && parts
                .iter()
                .all(|f| layout(f).as_ref() == Some(&dense_cols) && f.ncols() == n_cols)
        {
            let mut out = SparseRows {
                n_cols,
                dense_cols,
                dense: Array2::zeros((0, 0)),
                starts: vec![0],
                cols: Vec::new(),
                values: Vec::new(),
            };
            let mut views = Vec::new();
            for part in parts {
                if let Features::Sparse(s) = part {
                    let base = out.cols.len();
                    out.starts.extend(s.starts[1..].iter().map(|&p| base + p));
                    out.cols.extend_from_slice(&s.cols);
                    out.values.extend_from_slice(&s.values);
                    views.push(s.dense.view());
                }
            }
            out.dense = ndarray::concatenate(Axis(0), &views)
                .unwrap_or_else(|_| Array2::zeros((0, out.dense_cols.len())));
            return Features::Sparse(Box::new(out));
        }
        let views: Vec<CowArray<'_, f32, Ix2>> = parts.iter().map(|p| p.dense()).collect();
        let views: Vec<_> = views.iter().map(|v| v.view()).collect();
        Features::Dense(
            ndarray::concatenate(Axis(0), &views).unwrap_or_else(|_| Array2::zeros((0, n_cols))),
        )
    }

    /// Every value mapped by its column, `f(j, v)`, in place. Sparse rows
    /// stay sparse when `alone(j)` says `f` leaves every listed column `j`
    /// as it is; otherwise the result is dense.
    pub fn map_columns(
        self,
        f: impl Fn(usize, f32) -> f32,
        alone: impl Fn(usize) -> bool,
    ) -> Features {
        let mut x = match self {
            Features::Sparse(mut s) if (0..s.n_cols).all(|j| s.is_dense(j) || alone(j)) => {
                for mut row in s.dense.rows_mut() {
                    for (v, &j) in row.iter_mut().zip(&s.dense_cols) {
                        *v = f(j, *v);
                    }
                }
                return Features::Sparse(s);
            }
            other => other.into_dense(),
        };
        for mut row in x.rows_mut() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = f(j, *v);
            }
        }
        Features::Dense(x)
    }

    /// The matrix, when dense.
    pub fn as_dense_mut(&mut self) -> Option<&mut Array2<f32>> {
        match self {
            Features::Dense(x) => Some(x),
            Features::Sparse(_) => None,
        }
    }

    /// The sparse rows, when sparse.
    pub(crate) fn sparse_parts(&self) -> Option<&SparseRows> {
        match self {
            Features::Sparse(s) => Some(s),
            Features::Dense(_) => None,
        }
    }
}

impl SparseRows {
    /// Row `i`'s listed columns and values.
    fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.starts[i], self.starts[i + 1]);
        (&self.cols[a..b], &self.values[a..b])
    }

    /// Whether column `j` is held densely.
    pub(crate) fn is_dense(&self, j: usize) -> bool {
        self.dense_cols.binary_search(&j).is_ok()
    }

    /// The dense columns and their values.
    pub(crate) fn dense_block(&self) -> (&[usize], &Array2<f32>) {
        (&self.dense_cols, &self.dense)
    }

    /// Every listed (column, value), row by row.
    pub(crate) fn listed(&self) -> impl Iterator<Item = (usize, f32)> + '_ {
        self.cols
            .iter()
            .zip(&self.values)
            .map(|(&c, &v)| (c as usize, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FeatureStatistics;

    /// A 5 x 6 matrix with measurements in columns 0 and 3 and indicators
    /// elsewhere, and its sparse form.
    fn both() -> (Features, Features) {
        let x = ndarray::array![
            [0.5f32, 1.0, 0.0, -2.0, 0.0, 0.0],
            [1.5, 0.0, 1.0, 3.0, 0.0, 1.0],
            [-1.0, 0.0, 0.0, 0.25, 0.0, 0.0],
            [2.0, 1.0, 0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 7.0, 0.0, 1.0],
        ];
        let dense_cols = vec![0, 3];
        let mut b = SparseBuilder::new(6, dense_cols.clone());
        for row in x.rows() {
            let d: Vec<f32> = dense_cols.iter().map(|&c| row[c]).collect();
            b.push(
                &d,
                (0..6)
                    .filter(|c| !dense_cols.contains(c))
                    .map(|c| (c, row[c])),
            );
        }
        (Features::Dense(x), b.finish())
    }

    #[test]
    fn sparse_rows_read_back_as_the_dense_matrix() {
        let (dense, sparse) = both();
        assert!(sparse.is_sparse() && !dense.is_sparse());
        assert_eq!((sparse.nrows(), sparse.ncols()), (5, 6));
        assert_eq!(sparse.dense(), dense.dense());
        assert_eq!(sparse.rows(1..4), dense.rows(1..4));
        for i in 0..6 {
            for j in 0..7 {
                assert_eq!(sparse.get(i, j), dense.get(i, j), "({i}, {j})");
            }
        }
        let mut out = ndarray::Array1::from_elem(6, 9.0f32);
        sparse.write_row(3, out.view_mut());
        assert_eq!(out, dense.dense().row(3));
        assert_eq!(sparse.column(5), dense.column(5));
        // Selected and stacked, still sparse, still the same values.
        let picked = sparse.select(&[4, 0, 0, 2]);
        assert!(picked.is_sparse());
        assert_eq!(picked.dense(), dense.select(&[4, 0, 0, 2]).dense());
        let stacked = Features::concat(6, &[&picked, &sparse]);
        assert!(stacked.is_sparse());
        assert_eq!(
            stacked.dense(),
            Features::concat(6, &[&dense.select(&[4, 0, 0, 2]), &dense]).dense()
        );
        // Mixed: dense.
        assert!(!Features::concat(6, &[&sparse, &dense]).is_sparse());
        assert!(sparse.stored_bytes() > 0);
    }

    #[test]
    fn rows_pushed_out_of_shape_are_made_whole_not_wrong() {
        let mut b = SparseBuilder::new(5, vec![3, 0, 9]);
        // Short dense part, entries unsorted, repeated, in a dense column,
        // past the columns, and zero.
        b.push(
            &[2.0],
            [(4, 1.0), (2, 5.0), (2, 1.0), (0, 7.0), (8, 1.0), (1, 0.0)],
        );
        b.push(&[1.0, 2.0, 3.0], []);
        let x = b.finish();
        let want = ndarray::array![[2.0f32, 0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 2.0, 0.0]];
        assert_eq!(x.dense(), want);
        assert_eq!(x.get(0, 2), 1.0);
    }

    #[test]
    fn mapping_keeps_rows_sparse_only_where_the_listed_columns_are_left_alone() {
        let (dense, sparse) = both();
        let f = |j: usize, v: f32| if j == 0 || j == 3 { v * 2.0 - 1.0 } else { v };
        let alone = |j: usize| j != 0 && j != 3;
        let a = sparse.clone().map_columns(f, alone);
        assert!(a.is_sparse());
        assert_eq!(a.dense(), dense.clone().map_columns(f, alone).dense());
        // A map that moves an indicator's zeros: dense, and still right.
        let g = |j: usize, v: f32| v - j as f32;
        let b = sparse.map_columns(g, |_| false);
        assert!(!b.is_sparse());
        assert_eq!(b.dense(), dense.map_columns(g, |_| false).dense());
    }

    #[test]
    fn statistics_of_sparse_rows_equal_the_dense_ones() {
        let (dense, sparse) = both();
        let (a, b) = (
            FeatureStatistics::of_features(&dense),
            FeatureStatistics::of_features(&sparse),
        );
        assert_eq!(a.n, b.n);
        for j in 0..6 {
            assert!((a.mean[j] - b.mean[j]).abs() < 1e-12, "{j}");
            assert!((a.m2[j] - b.m2[j]).abs() < 1e-12, "{j}");
        }
        // The dense columns exactly as the dense matrix's.
        assert_eq!((a.mean[0], a.m2[3]), (b.mean[0], b.m2[3]));
    }
}
