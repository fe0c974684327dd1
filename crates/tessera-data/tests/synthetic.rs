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
        departments: 0,
        department_variance: 1.0,
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
        departments: 5000,
        department_variance: -1.0,
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
        "departments must be at most 1000, got 5000",
        "department_variance must be a variance (finite, >= 0), got -1",
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
    // Each department's shift of a site's model is classes x (features + 1).
    let shifts = config(Some(SyntheticConfig {
        classes: 1000,
        features: 1000,
        departments: 1000,
        ..synthetic()
    }));
    let e = shifts.validate().unwrap_err().to_string();
    assert!(
        e.contains("departments x classes x (features + 1) must be at most 100000000"),
        "{e}"
    );
    let mut no_site = config(Some(synthetic()));
    no_site.site_column = Some("hospital".into());
    let e = no_site.validate().unwrap_err().to_string();
    assert!(e.contains("site_column = \"site\""), "{e}");
}

/// Each site's generated rows per department, counted from the CSV itself.
fn departments_in_csv(csv: &str) -> std::collections::BTreeMap<(String, String), usize> {
    let mut counts = std::collections::BTreeMap::new();
    for line in csv.lines().skip(1) {
        let mut fields = line.split(',');
        let site = fields.next().unwrap().to_string();
        let department = fields.next().unwrap().to_string();
        *counts.entry((site, department)).or_insert(0) += 1;
    }
    counts
}

#[test]
fn departments_name_each_rows_group_and_groups_find_them_after_the_split() {
    let generated = SyntheticConfig {
        departments: 3,
        ..synthetic()
    };
    let mut csv = Vec::new();
    write_synthetic(&generated.synth(), &mut csv).unwrap();
    let text = String::from_utf8(csv).unwrap();
    assert!(text.starts_with("site,department,x0,"), "{}", &text[..40]);
    let expected = departments_in_csv(&text);
    assert_eq!(
        expected.keys().filter(|(site, _)| site == "site0").count(),
        3
    );
    for drop_first in [false, true] {
        let mut with = config(Some(generated.clone()));
        with.schema.columns.push(tessera_data::ColumnSpec {
            name: "department".into(),
            kind: tessera_data::ColumnKind::Categorical,
            levels: None,
            drop_first,
            min: None,
            max: None,
        });
        let data = tessera_data::load(&with, Path::new("/nonexistent"), &Filesystem).unwrap();
        for site in &data.sites {
            let train = data
                .agreement
                .groups("department", site.raw_train())
                .unwrap();
            let test = data
                .agreement
                .groups("department", site.raw_test())
                .unwrap();
            for (level, n) in ["dept0", "dept1", "dept2"].map(|l| {
                let count = |groups: &[tessera_data::Group]| {
                    groups
                        .iter()
                        .find(|g| g.level == l)
                        .map_or(0, |g| g.rows.len())
                };
                (l, count(&train) + count(&test))
            }) {
                let want = expected
                    .get(&(site.name.clone(), level.to_string()))
                    .copied()
                    .unwrap_or(0);
                assert_eq!(n, want, "{} {level} drop_first {drop_first}", site.name);
            }
            let all: usize = train.iter().map(|g| g.rows.len()).sum();
            assert_eq!(all, site.train.n_rows());
        }
        for (column, why) in [
            ("x0", "is numeric"),
            ("y", "no feature column is named `y`"),
            ("ward", "no feature column is named `ward`"),
        ] {
            let e = data
                .agreement
                .groups(column, data.sites[0].raw_train())
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{column}: {e}");
        }
    }
}
