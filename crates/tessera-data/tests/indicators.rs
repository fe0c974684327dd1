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

/// `text` as `d.csv`, loaded with the site column `site`, the target `y`,
/// a quarter of the rows for testing, and this standardisation.
fn load_csv(text: &str, scope: ScaleScope, indicators: IndicatorScaling) -> FederatedData {
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
    let files = InMemory::new([("d.csv", text.as_bytes())]);
    load(&config, Path::new(""), &files).unwrap()
}

fn loaded(scope: ScaleScope, indicators: IndicatorScaling) -> FederatedData {
    load_csv(&csv(), scope, indicators)
}

#[test]
fn indicators_stay_zero_and_one_and_measurements_are_standardised() {
    for scope in [ScaleScope::Site, ScaleScope::Federation] {
        let data = loaded(scope, IndicatorScaling::Keep);
        assert_eq!(data.feature_names, ["a", "code=rare", "code=x", "code=y"]);
        assert_eq!(data.indicators(), [false, true, true, true]);
        for site in &data.sites {
            assert_eq!(&site.scaler().mean[1..], [0.0; 3], "{scope:?}");
            assert_eq!(&site.scaler().scale[1..], [1.0; 3], "{scope:?}");
            for (z, raw) in [
                (&site.train.x, site.raw_train()),
                (&site.test.x, site.raw_test()),
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
                s.raw_train()
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
            for (z, raw) in site
                .train
                .x
                .column(0)
                .iter()
                .zip(site.raw_train().column(0))
            {
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

/// Mostly indicators: two measurements, one between the coded columns and
/// one after them (`a` with missing values), and two coded columns of ten
/// levels each.
fn wide_csv() -> String {
    let mut text = String::from("site,p,a,q,b,y\n");
    for i in 0..60 {
        let site = if i % 3 == 0 { "s1" } else { "s2" };
        let a = if i % 11 == 8 {
            String::new()
        } else {
            format!("{}", (i * 7) % 13)
        };
        text.push_str(&format!(
            "{site},p{},{a},q{},{},{}\n",
            i % 10,
            (i * 3) % 10,
            (i * i) % 17,
            i % 2
        ));
    }
    text
}

fn load_wide(scope: ScaleScope, indicators: IndicatorScaling) -> FederatedData {
    load_csv(&wide_csv(), scope, indicators)
}

#[test]
fn mostly_indicator_rows_are_held_sparsely_with_the_same_values() {
    for scope in [ScaleScope::Site, ScaleScope::Federation] {
        let sparse = load_wide(scope, IndicatorScaling::Keep);
        let dense = load_wide(scope, IndicatorScaling::Standardize);
        assert_eq!(sparse.n_features(), 22);
        let measured = [10, 21];
        assert_eq!(sparse.feature_names[10], "a");
        assert_eq!(sparse.feature_names[21], "b");
        for (s, d) in sparse.sites.iter().zip(&dense.sites) {
            for x in [s.raw_train(), s.raw_test(), &s.train.x, &s.test.x] {
                assert!(x.is_sparse(), "{}", s.name);
            }
            assert!(!d.raw_train().is_sparse() && !d.train.x.is_sparse());
            // The same encoding and imputation either way.
            assert_eq!(s.raw_train().dense(), d.raw_train().dense(), "{}", s.name);
            assert_eq!(s.raw_test().dense(), d.raw_test().dense(), "{}", s.name);
            assert_eq!(s.imputed_train, d.imputed_train);
            for j in 0..22 {
                if measured.contains(&j) {
                    // Measurements standardised alike.
                    assert_eq!(s.train.x.column(j), d.train.x.column(j), "{scope:?} {j}");
                    assert_eq!(s.test.x.column(j), d.test.x.column(j), "{scope:?} {j}");
                    assert_eq!(s.scaler().mean[j], d.scaler().mean[j]);
                } else {
                    // Indicators left as read.
                    assert_eq!(s.train.x.column(j), s.raw_train().column(j));
                    assert_eq!(s.test.x.column(j), s.raw_test().column(j));
                }
            }
        }
        assert!(sparse.sites.iter().any(|s| !s.imputed_train.is_empty()));
        // Pooled: sparse as well; measurements as the dense rows', the
        // indicators the sites' raw ones stacked.
        let (train, test, _) = sparse.pooled(&Default::default());
        let (dense_train, dense_test, _) = dense.pooled(&Default::default());
        assert!(train.x.is_sparse() && test.x.is_sparse());
        let raw_train = |s: &tessera_data::SiteData| s.raw_train().column(3);
        let raw_test = |s: &tessera_data::SiteData| s.raw_test().column(3);
        type Column = dyn Fn(&tessera_data::SiteData) -> Vec<f32>;
        let parts: [(_, _, &Column); 2] = [
            (&train.x, &dense_train.x, &raw_train),
            (&test.x, &dense_test.x, &raw_test),
        ];
        for (x, d, raw) in parts {
            for &j in &measured {
                assert_eq!(x.column(j), d.column(j));
            }
            let stacked: Vec<f32> = sparse.sites.iter().flat_map(raw).collect();
            assert_eq!(x.column(3), stacked);
        }
    }
}
