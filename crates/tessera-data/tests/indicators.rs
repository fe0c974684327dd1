//! One-hot indicators left as 0 and 1 by default, measurements standardised;
//! the old rule (`indicators = "standardize"`) on request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use tessera_data::{
    DataConfig, FederatedData, InMemory, IndicatorScaling, ScaleScope, SchemaConfig, load,
};

/// Two sites; `code` has a level (`rare`) in one row of 40.
fn csv() -> String {
    let mut text = String::from("site,a,code,y\n");
    for i in 0..40 {
        let site = if i % 2 == 0 { "s1" } else { "s2" };
        let code = match i {
            7 => "rare",
            _ if i % 3 == 0 => "x",
            _ => "y",
        };
        text.push_str(&format!("{site},{},{code},{}\n", i * 3 + 1, i % 2));
    }
    text
}

fn loaded(scope: ScaleScope, indicators: IndicatorScaling) -> FederatedData {
    let mut config = DataConfig {
        path: Some("d.csv".into()),
        site_column: Some("site".into()),
        partition: None,
        sites: Vec::new(),
        schema: SchemaConfig::inferred("y"),
        split: Default::default(),
        standardize: Default::default(),
        synthetic: None,
        cross_silo: None,
    };
    config.split.test_fraction = 0.25;
    config.standardize.scope = scope;
    config.standardize.indicators = indicators;
    let text = csv();
    let files = InMemory::new([("d.csv", text.as_bytes())]);
    load(&config, Path::new(""), &files).unwrap()
}

#[test]
fn indicators_stay_zero_and_one_and_measurements_are_standardised() {
    for scope in [ScaleScope::Site, ScaleScope::Federation] {
        let data = loaded(scope, IndicatorScaling::Keep);
        assert_eq!(data.feature_names, ["a", "code=rare", "code=x", "code=y"]);
        assert_eq!(data.indicators(), [false, true, true, true]);
        for site in &data.sites {
            assert_eq!(&site.scaler.mean[1..], [0.0; 3], "{scope:?}");
            assert_eq!(&site.scaler.scale[1..], [1.0; 3], "{scope:?}");
            for (z, raw) in [
                (&site.train.x, &site.raw_train),
                (&site.test.x, &site.raw_test),
            ] {
                for (zr, rr) in z.dense().rows().into_iter().zip(raw.dense().rows()) {
                    assert_eq!(zr.iter().skip(1).sum::<f32>(), 1.0);
                    assert_eq!(zr.slice(ndarray::s![1..]), rr.slice(ndarray::s![1..]));
                }
            }
        }
        // The measurement: (x - mean) / (sample std + 1e-9) of the scope's
        // training rows, computed here from the raw values.
        let training: Vec<Vec<f64>> = data
            .sites
            .iter()
            .map(|s| {
                s.raw_train
                    .column(0)
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect()
            })
            .collect();
        for (k, site) in data.sites.iter().enumerate() {
            let rows: Vec<f64> = match scope {
                ScaleScope::Site => training[k].clone(),
                ScaleScope::Federation => training.concat(),
            };
            let n = rows.len() as f64;
            let mean = rows.iter().sum::<f64>() / n;
            let std = (rows.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            for (z, raw) in site.train.x.column(0).iter().zip(site.raw_train.column(0)) {
                let want = (f64::from(raw) - mean) / (std + 1e-9);
                assert!(
                    (f64::from(*z) - want).abs() < 1e-5,
                    "{scope:?}: {z} against {want}"
                );
            }
        }
        // Pooled: the same rule with all training rows' statistics.
        let (train, test, scaler) = data.pooled(&Default::default());
        assert_eq!(&scaler.scale[1..], [1.0; 3]);
        for x in [&train.x, &test.x] {
            assert!(
                x.dense()
                    .rows()
                    .into_iter()
                    .all(|r| r.iter().skip(1).sum::<f32>() == 1.0)
            );
        }
    }
}

#[test]
fn standardised_indicators_on_request_make_a_rare_code_large() {
    let data = loaded(ScaleScope::Federation, IndicatorScaling::Standardize);
    let rare = data
        .sites
        .iter()
        .flat_map(|s| s.train.x.column(1))
        .fold(f32::MIN, f32::max);
    let kept = loaded(ScaleScope::Federation, IndicatorScaling::Keep);
    let kept_rare = kept
        .sites
        .iter()
        .flat_map(|s| s.train.x.column(1))
        .fold(f32::MIN, f32::max);
    // One row of the training rows: about sqrt(n), far above the kept 1.
    assert_eq!(kept_rare, 1.0);
    assert!(rare > 4.0, "{rare}");
}

/// Mostly indicators: one measurement (with a missing value) and two coded
/// columns of ten levels each.
fn wide_csv() -> String {
    let mut text = String::from("site,a,p,q,y\n");
    for i in 0..60 {
        let site = if i % 3 == 0 { "s1" } else { "s2" };
        let a = if i % 11 == 8 {
            String::new()
        } else {
            format!("{}", (i * 7) % 13)
        };
        text.push_str(&format!(
            "{site},{a},p{},q{},{}\n",
            i % 10,
            (i * 3) % 10,
            i % 2
        ));
    }
    text
}

fn load_wide(indicators: IndicatorScaling) -> FederatedData {
    let mut config = DataConfig {
        path: Some("d.csv".into()),
        site_column: Some("site".into()),
        partition: None,
        sites: Vec::new(),
        schema: SchemaConfig::inferred("y"),
        split: Default::default(),
        standardize: Default::default(),
        synthetic: None,
        cross_silo: None,
    };
    config.standardize.indicators = indicators;
    let text = wide_csv();
    load(
        &config,
        Path::new(""),
        &InMemory::new([("d.csv", text.as_bytes())]),
    )
    .unwrap()
}

#[test]
fn mostly_indicator_rows_are_held_sparsely_with_the_same_values() {
    let sparse = load_wide(IndicatorScaling::Keep);
    let dense = load_wide(IndicatorScaling::Standardize);
    assert_eq!(sparse.n_features(), 21);
    for (s, d) in sparse.sites.iter().zip(&dense.sites) {
        for x in [&s.raw_train, &s.raw_test, &s.train.x, &s.test.x] {
            assert!(x.is_sparse(), "{}", s.name);
        }
        assert!(!d.raw_train.is_sparse() && !d.train.x.is_sparse());
        // The same encoding and imputation either way.
        assert_eq!(s.raw_train.dense(), d.raw_train.dense(), "{}", s.name);
        assert_eq!(s.raw_test.dense(), d.raw_test.dense(), "{}", s.name);
        assert_eq!(s.imputed_train, d.imputed_train);
        // The measurement standardised alike; the indicators left as read.
        assert_eq!(s.train.x.column(0), d.train.x.column(0));
        assert_eq!(s.scaler.mean[0], d.scaler.mean[0]);
        assert_eq!(
            s.train.x.dense().slice(ndarray::s![.., 1..]),
            s.raw_train.dense().slice(ndarray::s![.., 1..])
        );
    }
    assert!(sparse.sites.iter().any(|s| !s.imputed_train.is_empty()));
    // Pooled: sparse as well, the same values as the dense rows where the
    // rule is the same (the measurement).
    let (train, _, _) = sparse.pooled(&Default::default());
    assert!(train.x.is_sparse());
    let (dense_train, _, _) = dense.pooled(&Default::default());
    assert_eq!(train.x.column(0), dense_train.x.column(0));
}
