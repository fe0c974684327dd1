//! A site's rows encoded, imputed and standardised into its datasets.

use std::collections::BTreeSet;

use ndarray::Array2;

use super::agreement::{Encoding, indicators_of};
use super::membership::Membership;
use crate::config::DataConfig;
use crate::dataset::{Dataset, Scaler, SiteData, SiteSummary};
use crate::levels::agree_levels;
use crate::read::{MISSING_CODE, RawSite, Values};

/// The levels a site's kept rows use, sorted.
pub(super) fn present_levels(values: &Values, membership: &[Membership]) -> Vec<String> {
    let Values::Categorical { codes, levels } = values else {
        return Vec::new();
    };
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
    let matrix = |rows: &[usize]| -> Array2<f32> {
        let mut x = Array2::<f32>::zeros((rows.len(), n_features));
        let mut offset = 0;
        for (values, encoder) in site.features.iter().zip(encoders) {
            match (values, encoder) {
                (Values::Numeric(v), Encoding::Numeric) => {
                    for (i, &r) in rows.iter().enumerate() {
                        x[[i, offset]] = v[r] as f32;
                    }
                }
                (
                    Values::Categorical {
                        codes,
                        levels: local,
                    },
                    Encoding::OneHot { levels, drop_first },
                ) => {
                    let skip = usize::from(*drop_first);
                    let column_of: Vec<Option<usize>> = local
                        .iter()
                        .map(|l| {
                            levels
                                .iter()
                                .position(|g| g == l)
                                .and_then(|p| p.checked_sub(skip))
                        })
                        .collect();
                    for (i, &r) in rows.iter().enumerate() {
                        if codes[r] != MISSING_CODE
                            && let Some(c) = column_of[codes[r] as usize]
                        {
                            x[[i, offset + c]] = 1.0;
                        }
                    }
                }
                _ => unreachable!("encoders are built from the same columns"),
            }
            offset += encoder.width();
        }
        x
    };
    let mut raw_train = matrix(&train_rows);
    let mut raw_test = matrix(&test_rows);
    // Impute missing numbers with the site's training mean of the column.
    let mut imputed_train = Vec::new();
    for j in 0..n_features {
        let column = raw_train.column(j);
        let present: Vec<f64> = column
            .iter()
            .filter(|v| !v.is_nan())
            .map(|&v| f64::from(v))
            .collect();
        if present.len() == column.len() && !raw_test.column(j).iter().any(|v| v.is_nan()) {
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
            for (i, v) in m.column_mut(j).into_iter().enumerate() {
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
    let scaler = Scaler::fit(&raw_train, &config.standardize, &indicators_of(encoders));
    let labels_of = |rows: &[usize]| {
        rows.iter()
            .map(|&r| labels[r].unwrap_or(0))
            .collect::<Vec<u32>>()
    };
    SiteData {
        name: site.name.clone(),
        train: Dataset {
            x: scaler.apply(&raw_train),
            y: labels_of(&train_rows),
        },
        test: Dataset {
            x: scaler.apply(&raw_test),
            y: labels_of(&test_rows),
        },
        raw_train,
        raw_test,
        scaler,
        imputed_train,
    }
}
