//! Data quality measured at the site from its own rows: values outside the
//! schema's bounds (counted on the training rows, kept as read) and drift
//! from the federation's statistics, each checked against a count made here
//! from the rows themselves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use tessera_data::quality::{DRIFT_CLIP, Quality};
use tessera_data::{
    ColumnKind, ColumnSpec, DataConfig, FederatedData, InMemory, ScaleScope, SchemaConfig, load,
};

fn config(columns: Vec<ColumnSpec>) -> DataConfig {
    let mut schema = SchemaConfig::inferred("y");
    schema.columns = columns;
    DataConfig {
        path: Some("d.csv".into()),
        site_column: Some("site".into()),
        partition: None,
        sites: Vec::new(),
        schema,
        split: Default::default(),
        standardize: Default::default(),
        synthetic: None,
        cross_silo: None,
    }
}

fn numeric(name: &str, min: Option<f64>, max: Option<f64>) -> ColumnSpec {
    ColumnSpec {
        name: name.into(),
        kind: ColumnKind::Numeric,
        levels: None,
        drop_first: false,
        min,
        max,
    }
}

/// Two sites of 40 rows: `a` in [0, 10] at s1 except every fifth row (50),
/// and at s2 every row below 0 half the time; `b` unbounded. s2's `b` sits
/// 3 units above s1's.
fn csv() -> String {
    let mut text = String::from("site,a,b,y\n");
    for i in 0..40 {
        let a = if i % 5 == 0 { 50.0 } else { f64::from(i % 10) };
        text.push_str(&format!("s1,{a},{},{}\n", f64::from(i % 7) * 0.5, i % 2));
    }
    for i in 0..40 {
        let a = if i % 2 == 0 { -1.0 } else { 4.0 };
        text.push_str(&format!(
            "s2,{a},{},{}\n",
            3.0 + f64::from(i % 7) * 0.5,
            i % 2
        ));
    }
    text
}

fn loaded(config: &DataConfig) -> FederatedData {
    let text = csv();
    let files = InMemory::new([("d.csv", text.as_bytes())]);
    load(config, Path::new(""), &files).unwrap()
}

#[test]
fn values_outside_the_schemas_bounds_are_counted_on_training_rows_and_kept() {
    let mut with_bounds = config(vec![numeric("a", Some(0.0), Some(10.0))]);
    with_bounds.standardize.enabled = false;
    let data = loaded(&with_bounds);
    let a = data.feature_names.iter().position(|n| n == "a").unwrap();
    for (site, summary) in data.sites.iter().zip(&data.summary) {
        assert_eq!(site.name, summary.site);
        // Counted here from the training rows as encoded (not standardised).
        let outside = site
            .raw_train()
            .column(a)
            .iter()
            .filter(|&&v| !(0.0..=10.0).contains(&v))
            .count();
        assert!(outside > 0, "{}", site.name);
        assert_eq!(summary.bounded_columns, 1, "{}", site.name);
        assert_eq!(summary.out_of_range_values, outside, "{}", site.name);
        // Kept as read: the values are there, neither clipped nor dropped.
        let kept = site
            .raw_train()
            .column(a)
            .iter()
            .any(|&v| v == 50.0 || v == -1.0);
        assert!(kept, "{}", site.name);
        assert_eq!(summary.n_train + summary.n_test, 40);
        let quality = Quality::of(&site.train, summary, 2);
        let expected = 1.0 - outside as f64 / summary.n_train as f64;
        assert_eq!(quality.in_range, Some(expected), "{}", site.name);
        eprintln!(
            "{}: {outside} of {} training values of a out of range, in_range {expected:.3}",
            site.name, summary.n_train
        );
    }
    // Without bounds: no count, no score.
    let mut plain = config(Vec::new());
    plain.standardize.enabled = false;
    let data = loaded(&plain);
    for summary in &data.summary {
        assert_eq!(
            (summary.bounded_columns, summary.out_of_range_values),
            (0, 0)
        );
    }
    assert!(
        data.sites
            .iter()
            .zip(&data.summary)
            .all(|(s, m)| Quality::of(&s.train, m, 2).in_range.is_none())
    );
    // A bound of one side only.
    let mut low = config(vec![numeric("a", Some(0.0), None)]);
    low.standardize.enabled = false;
    let data = loaded(&low);
    assert_eq!(data.summary[0].out_of_range_values, 0);
    assert!(data.summary[1].out_of_range_values > 0);
}

#[test]
fn drift_is_the_distance_from_the_federations_statistics() {
    let mut federation = config(Vec::new());
    federation.standardize.scope = ScaleScope::Federation;
    let data = loaded(&federation);
    let b = data.feature_names.iter().position(|n| n == "b").unwrap();
    let mut scores = Vec::new();
    for (site, summary) in data.sites.iter().zip(&data.summary) {
        let quality = Quality::measure(site, summary, 2, &federation.standardize);
        let drift = quality.drift.unwrap();
        // Recomputed here: each feature's mean of the clipped standardised
        // training values, its distance from 0 averaged over the features.
        let x = &site.train.x;
        let distance: f64 = (0..x.ncols())
            .map(|j| {
                let column = x.column(j);
                let sum: f64 = column
                    .iter()
                    .map(|&v| f64::from(v).clamp(-DRIFT_CLIP, DRIFT_CLIP))
                    .sum();
                (sum / column.len() as f64).abs()
            })
            .sum::<f64>()
            / x.ncols() as f64;
        assert!((drift - (1.0 - distance / DRIFT_CLIP)).abs() < 1e-12);
        // `b` is 3 apart between the sites: each site's mean of it is far
        // from the federation's.
        let mean_b = x.column(b).iter().map(|&v| f64::from(v)).sum::<f64>() / x.nrows() as f64;
        assert!(mean_b.abs() > 0.5, "{}: {mean_b}", site.name);
        scores.push(drift);
    }
    assert!(scores.iter().all(|s| (0.0..1.0).contains(s)), "{scores:?}");
    // Each site standardised with its own statistics: no drift measured.
    let own = config(Vec::new());
    let data = loaded(&own);
    let quality = Quality::measure(&data.sites[0], &data.summary[0], 2, &own.standardize);
    assert_eq!(quality.drift, None);
    // A site with the federation's own rows (one site alone) has none.
    let text: String = csv().lines().take(41).collect::<Vec<_>>().join("\n");
    let files = InMemory::new([("d.csv", text.as_bytes())]);
    let alone = load(&federation, Path::new(""), &files).unwrap();
    let quality = Quality::measure(
        &alone.sites[0],
        &alone.summary[0],
        2,
        &federation.standardize,
    );
    assert!(quality.drift.unwrap() > 0.999, "{quality:?}");
}

/// A missing value is imputed with the site's own mean, which one changed
/// row moves in every imputed cell: drift counts imputed cells as the
/// federation's mean, so that a changed row moves its own cells alone.
#[test]
fn drift_counts_imputed_cells_as_the_federations_mean() {
    let mut federation = config(Vec::new());
    federation.standardize.scope = ScaleScope::Federation;
    // Every fourth of s2's values of b missing.
    let text: String = csv()
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.split(',').collect();
            if f[0] == "s2" && i % 4 == 0 {
                format!("{},{},NA,{}\n", f[0], f[1], f[3])
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    let files = InMemory::new([("d.csv", text.as_bytes())]);
    let data = load(&federation, Path::new(""), &files).unwrap();
    let b = data.feature_names.iter().position(|n| n == "b").unwrap();
    let s2 = &data.sites[1];
    assert!(!s2.imputed_train.is_empty());
    assert!(s2.imputed_train.iter().all(|&(_, j)| j == b));
    assert!(data.sites[0].imputed_train.is_empty());
    // Recomputed here with the imputed cells at 0.
    let x = s2.train.x.dense();
    let distance: f64 = (0..x.ncols())
        .map(|j| {
            let sum: f64 = (0..x.nrows())
                .filter(|&i| !s2.imputed_train.contains(&(i, j)))
                .map(|i| f64::from(x[[i, j]]).clamp(-DRIFT_CLIP, DRIFT_CLIP))
                .sum();
            (sum / x.nrows() as f64).abs()
        })
        .sum::<f64>()
        / x.ncols() as f64;
    let drift = Quality::measure(s2, &data.summary[1], 2, &federation.standardize).drift;
    let drift = drift.unwrap();
    assert!(
        (drift - (1.0 - distance / DRIFT_CLIP)).abs() < 1e-12,
        "{drift}"
    );
    // Not the same as counting the imputed values as they are.
    let counted = Quality::of(&s2.train, &data.summary[1], 2).with_drift(&s2.train, &[]);
    assert!((counted.drift.unwrap() - drift).abs() > 1e-6);
}

#[test]
fn bounds_are_refused_where_they_mean_nothing() {
    let text = csv();
    let files = InMemory::new([("d.csv", text.as_bytes())]);
    let refused = |column: ColumnSpec| -> String {
        let e = load(&config(vec![column]), Path::new(""), &files).unwrap_err();
        e.to_string()
    };
    let mut categorical = numeric("a", Some(0.0), None);
    categorical.kind = ColumnKind::Categorical;
    assert!(refused(categorical).contains("numeric feature columns only"));
    assert!(refused(numeric("y", None, Some(1.0))).contains("numeric feature columns only"));
    assert!(refused(numeric("a", Some(5.0), Some(1.0))).contains("min = 5 is above max = 1"));
    assert!(refused(numeric("a", Some(f64::NEG_INFINITY), None)).contains("finite"));
    assert!(refused(numeric("a", None, Some(f64::NAN))).contains("finite"));
}
