//! A site's rows encoded, imputed and standardised into its datasets.

use std::collections::BTreeSet;

use ndarray::Array2;

use super::agreement::{Encoding, indicators_of};
use super::membership::Membership;
use crate::config::DataConfig;
use crate::config::IndicatorScaling;
use crate::dataset::{Dataset, FeatureStatistics, Scaler, SiteData, SiteSummary, Unstandardised};
use crate::features::{Features, SparseBuilder};
use crate::levels::agree_levels;
use crate::read::{MISSING_CODE, RawSite, Values};

/// The levels a site's kept rows use, sorted.
pub(super) fn present_levels(values: &Values, membership: &[Membership]) -> Vec<String> {
    let Values::Categorical(coded) = values else {
        return Vec::new();
    };
    let (codes, levels) = (&coded.codes, &coded.levels);
    let used: BTreeSet<u32> = codes
        .iter()
        .zip(membership)
        .filter(|&(&code, &m)| code != MISSING_CODE && m != Membership::Excluded)
        .map(|(&code, _)| code)
        .collect();
    agree_levels([used
        .iter()
        .map(|&c| levels[c as usize].clone())
        .collect::<Vec<_>>()
        .as_slice()])
}

/// Encodes, imputes and standardises one site's rows.
pub(super) fn encode_site(
    config: &DataConfig,
    site: &RawSite,
    labels: &[Option<u32>],
    membership: &[Membership],
    encoders: &[Encoding],
    n_features: usize,
    counts: &mut SiteSummary,
) -> SiteData {
    let rows_of = |which: Membership| -> Vec<usize> {
        (0..labels.len())
            .filter(|&r| membership[r] == which)
            .collect()
    };
    let (train_rows, test_rows) = (rows_of(Membership::Train), rows_of(Membership::Test));
    let indicators = indicators_of(encoders);
    // Mostly indicators left as 0 and 1: measurements dense, indicators
    // by their columns (see `Features`).
    let kept =
        !config.standardize.enabled || config.standardize.indicators == IndicatorScaling::Keep;
    let n_indicators = indicators.iter().filter(|&&i| i).count();
    let sparse = kept && 2 * n_indicators >= n_features && u32::try_from(n_features).is_ok();
    // The numeric columns' features, and where each categorical column's
    // indicators start.
    let mut measured = Vec::new();
    let mut offset = 0;
    for encoder in encoders {
        if matches!(encoder, Encoding::Numeric) {
            measured.push(offset);
        }
        offset += encoder.width();
    }
    // Each categorical column's levels' indicator places, found once.
    let maps: Vec<Vec<Option<usize>>> = (site.features.iter().zip(encoders))
        .map(|(values, encoder)| match values {
            Values::Categorical(c) => indicator_columns(&c.levels, encoder),
            Values::Numeric(_) => Vec::new(),
        })
        .collect();
    let place = |map: &[Option<usize>], code: u32| {
        (code != MISSING_CODE)
            .then(|| map.get(code as usize).copied().flatten())
            .flatten()
    };
    // The matrix of the columns a row holds densely: every feature, or
    // (sparse) the measurements alone.
    let width = if sparse { measured.len() } else { n_features };
    let matrix = |rows: &[usize]| -> Array2<f32> {
        let mut x = Array2::<f32>::zeros((rows.len(), width));
        let (mut offset, mut k) = (0, 0);
        for ((values, encoder), map) in site.features.iter().zip(encoders).zip(&maps) {
            match (values, encoder) {
                (Values::Numeric(v), Encoding::Numeric) => {
                    let at = if sparse { k } else { offset };
                    for (i, &r) in rows.iter().enumerate() {
                        x[[i, at]] = v[r] as f32;
                    }
                    k += 1;
                }
                (Values::Categorical(coded), Encoding::OneHot { .. }) if !sparse => {
                    for (i, &r) in rows.iter().enumerate() {
                        if let Some(c) = place(map, coded.codes[r]) {
                            x[[i, offset + c]] = 1.0;
                        }
                    }
                }
                _ => {}
            }
            offset += encoder.width();
        }
        x
    };
    let mut raw_train = matrix(&train_rows);
    let mut raw_test = matrix(&test_rows);
    // Impute missing numbers with the site's training mean of the column.
    let mut imputed_train = Vec::new();
    for k in 0..width {
        let j = if sparse {
            measured.get(k).copied().unwrap_or(k)
        } else {
            k
        };
        let column = raw_train.column(k);
        let present: Vec<f64> = column
            .iter()
            .filter(|v| !v.is_nan())
            .map(|&v| f64::from(v))
            .collect();
        if present.len() == column.len() && !raw_test.column(k).iter().any(|v| v.is_nan()) {
            continue;
        }
        // Without any training value the column is absent at this site: every
        // value becomes 0, test rows included, so none reaches the model unscaled.
        let absent = present.is_empty();
        let mean = if absent {
            0.0
        } else {
            present.iter().sum::<f64>() / present.len() as f64
        };
        for (is_train, m) in [(true, &mut raw_train), (false, &mut raw_test)] {
            for (i, v) in m.column_mut(k).into_iter().enumerate() {
                if v.is_nan() || absent {
                    *v = mean as f32;
                    counts.imputed_values += 1;
                    if is_train {
                        imputed_train.push((i, j));
                    }
                }
            }
        }
    }
    let (raw_train, raw_test) = if sparse {
        let indicator_rows = |block: Array2<f32>, rows: &[usize]| {
            let mut b = SparseBuilder::new(n_features, measured.clone());
            for (i, &r) in rows.iter().enumerate() {
                let mut entries = Vec::new();
                let mut offset = 0;
                for ((values, encoder), map) in site.features.iter().zip(encoders).zip(&maps) {
                    if let Values::Categorical(coded) = values
                        && let Some(c) = place(map, coded.codes[r])
                    {
                        entries.push((offset + c, 1.0));
                    }
                    offset += encoder.width();
                }
                let dense = block.row(i);
                match dense.as_slice() {
                    Some(values) => b.push(values, entries),
                    None => b.push(&dense.to_vec(), entries),
                }
            }
            b.finish()
        };
        (
            indicator_rows(raw_train, &train_rows),
            indicator_rows(raw_test, &test_rows),
        )
    } else {
        (Features::Dense(raw_train), Features::Dense(raw_test))
    };
    let scaler = Scaler::from_statistics(
        &FeatureStatistics::of_features(&raw_train),
        &config.standardize,
        &indicators,
    );
    let labels_of = |rows: &[usize]| {
        rows.iter()
            .map(|&r| labels[r].unwrap_or(0))
            .collect::<Vec<u32>>()
    };
    SiteData {
        name: site.name.clone(),
        train: Dataset {
            x: scaler.apply_features(&raw_train),
            y: labels_of(&train_rows),
        },
        test: Dataset {
            x: scaler.apply_features(&raw_test),
            y: labels_of(&test_rows),
        },
        unstandardised: Some(Box::new(Unstandardised {
            raw_train,
            raw_test,
            scaler,
        })),
        imputed_train,
    }
}

/// For each of a site's levels of a categorical column, its indicator's
/// place among the column's features (none for a level outside the
/// vocabulary, or the dropped first level).
fn indicator_columns(local: &[String], encoder: &Encoding) -> Vec<Option<usize>> {
    let Encoding::OneHot { levels, drop_first } = encoder else {
        return Vec::new();
    };
    let skip = usize::from(*drop_first);
    local
        .iter()
        .map(|l| {
            levels
                .iter()
                .position(|g| g == l)
                .and_then(|p| p.checked_sub(skip))
        })
        .collect()
}
