//! `[data.synthetic]`: rows generated where the plan runs are the rows
//! `tessera synth` writes, and settings that cannot work are refused,
//! every reason at once.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use tessera_data::synth::write_synthetic;
use tessera_data::{DataConfig, Filesystem, InMemory, SchemaConfig, SyntheticConfig};

fn config(synthetic: Option<SyntheticConfig>) -> DataConfig {
    DataConfig {
        path: Some("rows.csv".into()),
        site_column: Some("site".into()),
        partition: None,
        sites: Vec::new(),
        schema: SchemaConfig::inferred("y"),
        split: Default::default(),
        standardize: Default::default(),
        synthetic,
        cross_silo: None,
    }
}

fn synthetic() -> SyntheticConfig {
    SyntheticConfig {
        sites: 5,
        rows: 40,
        features: 6,
        classes: 3,
        alpha: 0.5,
        beta: 0.5,
        seed: 7,
    }
}

#[test]
fn generated_rows_are_the_rows_synth_writes() {
    let mut csv = Vec::new();
    write_synthetic(&synthetic().synth(), &mut csv).unwrap();
    let from_file = tessera_data::load(
        &config(None),
        Path::new(""),
        &InMemory::new([("rows.csv", csv)]),
    )
    .unwrap();
    // No file is read (the folder does not even exist), and none need be
    // named.
    let mut unnamed = config(Some(synthetic()));
    unnamed.path = None;
    unnamed.validate().unwrap();
    let generated = tessera_data::load(&unnamed, Path::new("/nonexistent"), &Filesystem).unwrap();
    assert_eq!(generated.sites.len(), 5);
    assert_eq!(generated.feature_names, from_file.feature_names);
    for (a, b) in generated.sites.iter().zip(&from_file.sites) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.train.x, b.train.x);
        assert_eq!(a.train.y, b.train.y);
        assert_eq!(a.test.x, b.test.x);
    }
}

#[test]
fn impossible_settings_are_refused_together() {
    let mut bad = config(Some(SyntheticConfig {
        sites: 0,
        classes: 1,
        alpha: f64::NAN,
        ..synthetic()
    }));
    bad.schema.target = "label".into();
    let e = bad.validate().unwrap_err().to_string();
    for reason in [
        "synthetic: ",
        "generates target column `y`, the schema says `label`",
        "sites, rows and features must be at least 1",
        "classes must be at least 2, got 1",
        "alpha must be a variance (finite, >= 0), got NaN",
    ] {
        assert!(e.contains(reason), "{reason}: {e}");
    }
    let huge = config(Some(SyntheticConfig {
        sites: usize::MAX,
        rows: usize::MAX,
        ..synthetic()
    }));
    let e = huge.validate().unwrap_err().to_string();
    assert!(e.contains("must be at most 100000000"), "{e}");
    let mut no_site = config(Some(synthetic()));
    no_site.site_column = Some("hospital".into());
    let e = no_site.validate().unwrap_err().to_string();
    assert!(e.contains("site_column = \"site\""), "{e}");
}
