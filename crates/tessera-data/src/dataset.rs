//! Prepared data: feature matrices with labels, per site, ready for a learner.

use ndarray::Array2;
use serde::Serialize;

use crate::config::{IndicatorScaling, StandardizeConfig};
use crate::features::Features;

/// The prediction task shared by all sites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    /// Class names; a label `y` is an index into this list. Two classes make a
    /// binary task whose positive class is `classes[1]`.
    pub classes: Vec<String>,
}

impl Task {
    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.classes.len()
    }

    /// Whether the task is binary.
    pub fn is_binary(&self) -> bool {
        self.classes.len() == 2
    }
}

/// Rows of features with their class labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// One row per example.
    pub x: Features,
    /// Class index of each row.
    pub y: Vec<u32>,
}

impl Dataset {
    /// An empty dataset with `n_features` columns.
    pub fn empty(n_features: usize) -> Self {
        Self {
            x: Features::empty(n_features),
            y: Vec::new(),
        }
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.y.len()
    }

    /// Number of features.
    pub fn n_features(&self) -> usize {
        self.x.ncols()
    }

    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        Dataset {
            x: self.x.select(indices),
            y: indices.iter().map(|&i| self.y[i]).collect(),
        }
    }

    /// Rows of several datasets stacked, in order.
    pub fn concat(parts: &[&Dataset]) -> Dataset {
        let n_features = parts.first().map_or(0, |d| d.n_features());
        let xs: Vec<&Features> = parts.iter().map(|d| &d.x).collect();
        Dataset {
            x: Features::concat(n_features, &xs),
            y: parts.iter().flat_map(|d| d.y.iter().copied()).collect(),
        }
    }
}

/// Per-feature standardisation statistics, `(x - mean) / scale`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scaler {
    /// Mean of each feature over the training rows.
    pub mean: Vec<f64>,
    /// Standard deviation plus epsilon; 1 where the feature is constant or
    /// standardisation is off.
    pub scale: Vec<f64>,
}

/// Per-feature count, mean and sum of squared deviations of some rows: what
/// a site shares so that statistics can be combined without moving rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureStatistics {
    /// Rows.
    pub n: u64,
    /// Mean of each feature.
    pub mean: Vec<f64>,
    /// Sum of squared deviations from the mean, per feature.
    pub m2: Vec<f64>,
}

impl FeatureStatistics {
    /// Statistics of `rows` (two passes, in `f64`).
    pub fn of(rows: &Array2<f32>) -> Self {
        let n_features = rows.ncols();
        let n = rows.nrows();
        let mut mean = vec![0.0f64; n_features];
        for row in rows.rows() {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v);
            }
        }
        for m in &mut mean {
            *m = if n > 0 { *m / n as f64 } else { 0.0 };
        }
        let mut m2 = vec![0.0f64; n_features];
        for row in rows.rows() {
            for ((s, &v), m) in m2.iter_mut().zip(row).zip(&mean) {
                let d = f64::from(v) - m;
                *s += d * d;
            }
        }
        Self {
            n: n as u64,
            mean,
            m2,
        }
    }

    /// The statistics of `parts` merged in the order given (empty: no rows
    /// of `n_features` features).
    pub fn merge_all<'a>(
        n_features: usize,
        parts: impl IntoIterator<Item = &'a FeatureStatistics>,
    ) -> FeatureStatistics {
        let empty = FeatureStatistics {
            n: 0,
            mean: vec![0.0; n_features],
            m2: vec![0.0; n_features],
        };
        parts.into_iter().fold(empty, |all, part| all.merge(part))
    }

    /// Statistics of `rows` held either way: a dense matrix's as
    /// [`FeatureStatistics::of`] computes them; sparse rows' dense columns
    /// likewise, their listed columns from each column's sum and the
    /// deviations of its listed values (`m2 = sum over listed (v - mean)^2
    /// + unlisted rows x mean^2`).
    pub fn of_features(rows: &Features) -> Self {
        let Some(sparse) = rows.sparse_parts() else {
            return match rows {
                Features::Dense(x) => Self::of(x),
                Features::Sparse(_) => Self::of(&rows.dense().into_owned()),
            };
        };
        let n = rows.nrows();
        let n_cols = rows.ncols();
        let (dense_cols, block) = sparse.dense_block();
        let measured = Self::of(block);
        let (mut mean, mut m2) = (vec![0.0f64; n_cols], vec![0.0f64; n_cols]);
        let mut listed = vec![0u64; n_cols];
        for (c, v) in sparse.listed() {
            mean[c] += f64::from(v);
            listed[c] += 1;
        }
        for m in &mut mean {
            *m = if n > 0 { *m / n as f64 } else { 0.0 };
        }
        for (c, v) in sparse.listed() {
            let d = f64::from(v) - mean[c];
            m2[c] += d * d;
        }
        for c in 0..n_cols {
            m2[c] += (n as u64).saturating_sub(listed[c]) as f64 * mean[c] * mean[c];
        }
        for (k, &c) in dense_cols.iter().enumerate() {
            mean[c] = measured.mean[k];
            m2[c] = measured.m2[k];
        }
        Self {
            n: n as u64,
            mean,
            m2,
        }
    }

    /// Combines two sets of statistics (Chan, Golub and LeVeque's pairwise update).
    pub fn merge(&self, other: &FeatureStatistics) -> FeatureStatistics {
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = na + nb;
        if n == 0.0 {
            return self.clone();
        }
        let mut mean = Vec::with_capacity(self.mean.len());
        let mut m2 = Vec::with_capacity(self.mean.len());
        for j in 0..self.mean.len() {
            let delta = other.mean[j] - self.mean[j];
            mean.push(self.mean[j] + delta * nb / n);
            m2.push(self.m2[j] + other.m2[j] + delta * delta * na * nb / n);
        }
        FeatureStatistics {
            n: self.n.saturating_add(other.n),
            mean,
            m2,
        }
    }
}

impl Scaler {
    /// The standardisation of `rows` by their own statistics
    /// ([`Scaler::from_statistics`]).
    pub fn fit(rows: &Array2<f32>, config: &StandardizeConfig, indicators: &[bool]) -> Scaler {
        Scaler::from_statistics(&FeatureStatistics::of(rows), config, indicators)
    }

    /// The standardisation these statistics imply: `scale = std + epsilon`
    /// with `ddof` degrees of freedom removed, 1 for a constant feature.
    /// `indicators[j]` says feature `j` is a one-hot indicator (see
    /// [`crate::Agreement::indicators`]; a shorter slice: the features past
    /// it are measurements); with `config.indicators` at `keep` an
    /// indicator is left as it is (mean 0, scale 1).
    pub fn from_statistics(
        stats: &FeatureStatistics,
        config: &StandardizeConfig,
        indicators: &[bool],
    ) -> Scaler {
        let n_features = stats.mean.len();
        if !config.enabled {
            return Scaler::identity(n_features);
        }
        let keep = config.indicators == IndicatorScaling::Keep;
        let kept = |j: usize| keep && indicators.get(j).copied().unwrap_or(false);
        let dof = stats.n as f64 - f64::from(config.ddof);
        let scale = stats
            .m2
            .iter()
            .enumerate()
            .map(|(j, &s)| {
                let std = if dof > 0.0 && !kept(j) {
                    (s.max(0.0) / dof).sqrt()
                } else {
                    0.0
                };
                if std > 0.0 { std + config.epsilon } else { 1.0 }
            })
            .collect();
        let mean = (stats.mean.iter().enumerate())
            .map(|(j, &m)| if kept(j) { 0.0 } else { m })
            .collect();
        Scaler { mean, scale }
    }

    /// The standardisation that changes nothing.
    pub fn identity(n_features: usize) -> Scaler {
        Scaler {
            mean: vec![0.0; n_features],
            scale: vec![1.0; n_features],
        }
    }

    /// `rows` standardised into `out` (the same shape).
    fn apply_into(
        &self,
        rows: ndarray::ArrayView2<'_, f32>,
        mut out: ndarray::ArrayViewMut2<'_, f32>,
    ) {
        for (mut to, from) in out.rows_mut().into_iter().zip(rows.rows()) {
            for (((v, &x), m), s) in to.iter_mut().zip(from).zip(&self.mean).zip(&self.scale) {
                *v = ((f64::from(x) - m) / s) as f32;
            }
        }
    }

    /// `rows` standardised, held as they are (sparse rows stay sparse when
    /// their listed columns are left alone, mean 0 and scale 1).
    pub fn apply_features(&self, rows: &Features) -> Features {
        rows.clone().map_columns(
            |j, x| ((f64::from(x) - self.mean[j]) / self.scale[j]) as f32,
            |j| self.mean[j] == 0.0 && self.scale[j] == 1.0,
        )
    }

    /// `rows` standardised.
    pub fn apply(&self, rows: &Array2<f32>) -> Array2<f32> {
        let mut out = Array2::zeros(rows.raw_dim());
        self.apply_into(rows.view(), out.view_mut());
        out
    }
}

/// One site's prepared data.
#[derive(Debug, Clone)]
pub struct SiteData {
    /// The site's name.
    pub name: String,
    /// Training rows, standardised with the site's training statistics.
    pub train: Dataset,
    /// Test rows, standardised with the site's training statistics.
    pub test: Dataset,
    /// The rows before standardisation and the site's statistics; `None`
    /// once released ([`SiteData::release_unstandardised`]). Boxed: they
    /// are half a site's own size, and ten million simulated sites hold
    /// none.
    pub unstandardised: Option<Box<Unstandardised>>,
    /// The training cells (row, feature) whose value was imputed (the
    /// site's training mean, or 0 for a column absent at the site).
    pub imputed_train: Vec<(usize, usize)>,
}

/// A site's rows as encoded and imputed, before standardisation, and how
/// they were standardised.
#[derive(Debug, Clone, PartialEq)]
pub struct Unstandardised {
    /// Training rows encoded and imputed but not standardised.
    pub raw_train: Features,
    /// Test rows encoded and imputed but not standardised.
    pub raw_test: Features,
    /// The site's standardisation statistics.
    pub scaler: Scaler,
}

/// What a site whose rows before standardisation were released reads as
/// them: no rows, no statistics.
static RELEASED: std::sync::LazyLock<Unstandardised> =
    std::sync::LazyLock::new(|| Unstandardised {
        raw_train: Features::empty(0),
        raw_test: Features::empty(0),
        scaler: Scaler {
            mean: Vec::new(),
            scale: Vec::new(),
        },
    });

impl SiteData {
    /// Frees what training and evaluation never read: the rows as encoded
    /// before standardisation and the site's statistics (a third of what a
    /// small site holds). For a run that needs neither (no baselines, no
    /// model file, no departments, no new sites); what needs them refuses
    /// the site afterwards ([`SiteData::holds_unstandardised`]).
    pub fn release_unstandardised(&mut self) {
        self.unstandardised = None;
    }

    /// Whether the site still holds its rows as encoded before
    /// standardisation and its statistics (not released by
    /// [`SiteData::release_unstandardised`]).
    pub fn holds_unstandardised(&self) -> bool {
        self.unstandardised.is_some()
    }

    fn held(&self) -> &Unstandardised {
        self.unstandardised.as_deref().unwrap_or(&RELEASED)
    }

    /// Training rows encoded and imputed but not standardised (none once
    /// released).
    pub fn raw_train(&self) -> &Features {
        &self.held().raw_train
    }

    /// Test rows encoded and imputed but not standardised (none once
    /// released).
    pub fn raw_test(&self) -> &Features {
        &self.held().raw_test
    }

    /// The site's standardisation statistics (empty once released).
    pub fn scaler(&self) -> &Scaler {
        &self.held().scaler
    }

    /// Standardises the site's rows with `scaler` instead (federation
    /// scope); a site whose rows before standardisation were released is
    /// left as it is.
    pub fn rescale(&mut self, scaler: Scaler) {
        if let Some(held) = &mut self.unstandardised {
            self.train.x = scaler.apply_features(&held.raw_train);
            self.test.x = scaler.apply_features(&held.raw_test);
            held.scaler = scaler;
        }
    }
}

/// What loading found, per site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SiteSummary {
    /// The site.
    pub site: String,
    /// Data rows read.
    pub rows_read: usize,
    /// Rows without a target value, dropped.
    pub dropped_missing_target: usize,
    /// Rows dropped for a missing feature (missing policy `drop`).
    pub dropped_missing_feature: usize,
    /// Rows the membership file marks as dropped.
    pub dropped_by_membership: usize,
    /// Training rows.
    pub n_train: usize,
    /// Test rows.
    pub n_test: usize,
    /// Missing feature values filled with the training mean.
    pub imputed_values: usize,
    /// Numeric feature columns the schema gives bounds (`min`, `max`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bounded_columns: usize,
    /// Values of the training rows outside their column's bounds (kept as read).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub out_of_range_values: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Every site's prepared data and the shared layout.
#[derive(Debug, Clone)]
pub struct FederatedData {
    /// Names of the encoded features (`column` or `column=level`).
    pub feature_names: Vec<String>,
    /// The shared task.
    pub task: Task,
    /// Sites, sorted by name.
    pub sites: Vec<SiteData>,
    /// Per-site counts.
    pub summary: Vec<SiteSummary>,
    /// What every site encoded with (columns, vocabularies, classes).
    pub agreement: crate::Agreement,
}

impl FederatedData {
    /// Number of encoded features.
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// Which features are one-hot indicators ([`crate::Agreement::indicators`]).
    pub fn indicators(&self) -> Vec<bool> {
        self.agreement.indicators()
    }

    /// Every site's [`SiteData::release_unstandardised`].
    pub fn release_unstandardised(&mut self) {
        for site in &mut self.sites {
            site.release_unstandardised();
        }
    }

    /// Whether every site holds its rows as encoded before standardisation
    /// ([`SiteData::holds_unstandardised`]).
    pub fn holds_unstandardised(&self) -> bool {
        self.sites.iter().all(SiteData::holds_unstandardised)
    }

    /// The federation's training statistics, combined from each site's.
    ///
    /// # Panics
    /// Where a site's rows before standardisation were released
    /// ([`FederatedData::release_unstandardised`]): the caller's mistake,
    /// which would otherwise give statistics of no rows.
    pub fn federation_statistics(&self) -> FeatureStatistics {
        assert!(
            self.holds_unstandardised(),
            "federation statistics of sites whose rows before standardisation were released"
        );
        let empty = FeatureStatistics {
            n: 0,
            mean: vec![0.0; self.n_features()],
            m2: vec![0.0; self.n_features()],
        };
        self.sites.iter().fold(empty, |acc, s| {
            acc.merge(&FeatureStatistics::of_features(s.raw_train()))
        })
    }

    /// All sites' rows pooled (the centralised baseline): train and test
    /// standardised with the statistics of all training rows together, and
    /// that standardisation.
    ///
    /// # Panics
    /// As [`FederatedData::federation_statistics`].
    pub fn pooled(&self, config: &StandardizeConfig) -> (Dataset, Dataset, Scaler) {
        let d = self.n_features();
        let scaler =
            Scaler::from_statistics(&self.federation_statistics(), config, &self.indicators());
        // Dense rows standardised straight into their place: no stacked
        // copy of the raw rows beside the standardised ones.
        let stack = |part: fn(&SiteData) -> &Features| {
            if self.sites.iter().any(|s| part(s).is_sparse()) {
                let parts: Vec<Features> = (self.sites.iter())
                    .map(|s| scaler.apply_features(part(s)))
                    .collect();
                return Features::concat(d, &parts.iter().collect::<Vec<_>>());
            }
            let n = self.sites.iter().map(|s| part(s).nrows()).sum();
            let mut out = Array2::zeros((n, d));
            let mut at = 0;
            for site in &self.sites {
                let rows = part(site).dense();
                let to = out.slice_mut(ndarray::s![at..at + rows.nrows(), ..]);
                scaler.apply_into(rows.view(), to);
                at += rows.nrows();
            }
            Features::Dense(out)
        };
        let (train, test) = (stack(|s| s.raw_train()), stack(|s| s.raw_test()));
        let labels = |f: fn(&SiteData) -> &Dataset| {
            self.sites
                .iter()
                .flat_map(|s| f(s).y.iter().copied())
                .collect()
        };
        (
            Dataset {
                x: train,
                y: labels(|s| &s.train),
            },
            Dataset {
                x: test,
                y: labels(|s| &s.test),
            },
            scaler,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn scaler_matches_hand_computation() {
        let rows = array![[1.0f32, 5.0], [2.0, 5.0], [3.0, 5.0], [6.0, 5.0]];
        let cfg = StandardizeConfig::default();
        let s = Scaler::fit(&rows, &cfg, &[]);
        assert_eq!(s.mean, vec![3.0, 5.0]);
        // unbiased: sum of squares 4+1+0+9 = 14 over 3
        assert!((s.scale[0] - ((14.0f64 / 3.0).sqrt() + 1e-9)).abs() < 1e-12);
        assert_eq!(s.scale[1], 1.0, "a constant feature is centred, not scaled");
        let z = s.apply(&rows);
        assert!((z[[3, 0]] as f64 - 3.0 / (14.0f64 / 3.0).sqrt()).abs() < 1e-6);
        assert_eq!(z[[0, 1]], 0.0);
        let pop = Scaler::fit(
            &rows,
            &StandardizeConfig {
                ddof: 0,
                epsilon: 0.0,
                ..StandardizeConfig::default()
            },
            &[],
        );
        assert!((pop.scale[0] - (14.0f64 / 4.0).sqrt()).abs() < 1e-12);
    }

    proptest::proptest! {
        /// Statistics merged from any split of the rows equal those of all rows.
        #[test]
        fn merged_statistics_equal_pooled(values in proptest::collection::vec(-1e3f32..1e3, 2..60), cut in 0usize..60) {
            let rows = Array2::from_shape_vec((values.len(), 1), values.clone()).unwrap();
            let cut = cut.min(values.len());
            let a = FeatureStatistics::of(&rows.slice(ndarray::s![..cut, ..]).to_owned());
            let b = FeatureStatistics::of(&rows.slice(ndarray::s![cut.., ..]).to_owned());
            let merged = a.merge(&b);
            let all = FeatureStatistics::of(&rows);
            proptest::prop_assert_eq!(merged.n, all.n);
            proptest::prop_assert!((merged.mean[0] - all.mean[0]).abs() < 1e-9 * all.mean[0].abs().max(1.0));
            proptest::prop_assert!((merged.m2[0] - all.m2[0]).abs() < 1e-9 * all.m2[0].abs().max(1.0));
        }
    }
}
