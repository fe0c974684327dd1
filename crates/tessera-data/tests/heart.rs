//! The bundled Fed-Heart-Disease plan reproduces FLamby's rows and features.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use tessera_data::{DataConfig, Filesystem, load};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn heart_config() -> DataConfig {
    let text = std::fs::read_to_string(examples_dir().join("fed-heart-disease.toml")).unwrap();
    let plan: toml::Table = toml::from_str(&text).unwrap();
    plan["data"].clone().try_into().unwrap()
}

#[test]
fn flamby_rows_features_and_scaling() {
    let data = load(&heart_config(), &examples_dir(), &Filesystem).unwrap();
    assert_eq!(
        data.feature_names,
        [
            "age",
            "sex",
            "cp=2",
            "cp=3",
            "cp=4",
            "trestbps",
            "chol",
            "fbs",
            "restecg=1",
            "restecg=2",
            "thalach",
            "exang",
            "oldpeak"
        ]
    );
    let names: Vec<&str> = data.sites.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["cleveland", "hungarian", "switzerland", "va"]);
    let counts: Vec<(usize, usize)> = data.summary.iter().map(|s| (s.n_train, s.n_test)).collect();
    assert_eq!(
        counts,
        [(199, 104), (172, 89), (30, 16), (85, 45)],
        "FLamby's README counts"
    );
    let rows_read: Vec<usize> = data.summary.iter().map(|s| s.rows_read).collect();
    assert_eq!(rows_read, [303, 294, 123, 200]);
    // Every row FLamby drops has a missing value: the membership file and the
    // drop policy agree, nothing is dropped by the file alone.
    assert!(
        data.summary.iter().all(|s| s.dropped_by_membership == 0),
        "{:?}",
        data.summary
    );
    assert_eq!(
        data.summary
            .iter()
            .map(|s| s.n_train + s.n_test)
            .sum::<usize>(),
        740
    );
    // Switzerland's test split: 16 rows, 15 positive (BENCHMARKS.md).
    let swiss = &data.sites[2];
    assert_eq!(swiss.test.y.iter().filter(|&&y| y == 1).count(), 15);
    // Positives over all 740 kept rows, recomputed from the raw files below.
    let positives: usize = data
        .sites
        .iter()
        .map(|s| {
            s.train
                .y
                .iter()
                .chain(&s.test.y)
                .filter(|&&y| y == 1)
                .count()
        })
        .sum();
    assert_eq!(positives, count_kept_positives());
    // Standardised training columns: mean 0, unbiased std 1, except chol in
    // Switzerland which is 0 throughout (centred, left unscaled).
    for site in &data.sites {
        let x = &site.train.x;
        let n = x.nrows() as f64;
        for j in 0..x.ncols() {
            let col: Vec<f64> = x.column(j).iter().map(|&v| f64::from(v)).collect();
            let mean = col.iter().sum::<f64>() / n;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
            assert!(mean.abs() < 1e-5, "{} {j} mean {mean}", site.name);
            if site.name == "switzerland" && data.feature_names[j] == "chol" {
                assert_eq!(var, 0.0);
            } else {
                assert!(
                    (var - 1.0).abs() < 1e-4,
                    "{} {} var {var}",
                    site.name,
                    data.feature_names[j]
                );
            }
        }
    }
}

/// Positives among rows without `?` in the kept columns, straight from the files.
fn count_kept_positives() -> usize {
    let dir = examples_dir().join("../data/uci-heart-disease");
    let mut positives = 0;
    for site in ["cleveland", "hungarian", "switzerland", "va"] {
        let text = std::fs::read_to_string(dir.join(format!("processed.{site}.data"))).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split(',').collect();
            let kept = fields[..10].iter().chain(&fields[13..]).all(|f| *f != "?");
            if kept && fields[13].trim().parse::<f64>().unwrap() > 0.0 {
                positives += 1;
            }
        }
    }
    positives
}

#[test]
fn pooled_baseline_uses_pooled_statistics() {
    let config = heart_config();
    let data = load(&config, &examples_dir(), &Filesystem).unwrap();
    let (train, test, _) = data.pooled(&config.standardize);
    assert_eq!((train.n_rows(), test.n_rows()), (486, 254));
    let n = train.n_rows() as f64;
    let age: Vec<f64> = train.x.column(0).iter().map(|&v| f64::from(v)).collect();
    let mean = age.iter().sum::<f64>() / n;
    let var = age.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4);
}

/// Each site read on its own (as a participant would) and agreed through the
/// offers gives exactly what `load` gives in one process.
#[test]
fn sites_read_apart_agree_to_the_same_data() {
    let config = heart_config();
    let together = load(&config, &examples_dir(), &Filesystem).unwrap();
    let mut apart: Vec<tessera_data::LocalSite> = ["va", "cleveland", "switzerland", "hungarian"]
        .iter()
        .map(|site| {
            tessera_data::read_local_site(&config, site, None, &examples_dir(), &Filesystem)
                .unwrap()
        })
        .collect();
    let kinds = tessera_data::agree_kinds(
        &config,
        &apart.iter().map(|s| s.kinds_offer()).collect::<Vec<_>>(),
    )
    .unwrap();
    let offers: Vec<_> = apart
        .iter_mut()
        .map(|s| s.levels_offer(&config, &kinds).unwrap())
        .collect();
    let agreement = tessera_data::agree_vocabulary(&config, &kinds, &offers).unwrap();
    assert_eq!(agreement.feature_names(), together.feature_names);
    for site in apart {
        let name = site.name().to_string();
        let (data, _) = site.prepare(&config, &agreement).unwrap();
        let same = together.sites.iter().find(|s| s.name == name).unwrap();
        assert_eq!(data.train, same.train, "{name}");
        assert_eq!(data.test, same.test, "{name}");
    }
}

/// Offers merged by aggregators (two regions of two sites) and agreed at the
/// root give the same kinds and vocabulary as every site's own offer.
#[test]
fn offers_merged_by_aggregators_agree_to_the_same_data() {
    let config = heart_config();
    let mut sites: Vec<tessera_data::LocalSite> = ["cleveland", "hungarian", "switzerland", "va"]
        .iter()
        .map(|site| {
            tessera_data::read_local_site(&config, site, None, &examples_dir(), &Filesystem)
                .unwrap()
        })
        .collect();
    let offers: Vec<_> = sites.iter().map(|s| s.kinds_offer()).collect();
    let flat = tessera_data::agree_kinds(&config, &offers).unwrap();
    let regions = [
        tessera_data::KindsOffer::merge("east", &offers[..2]).unwrap(),
        tessera_data::KindsOffer::merge("west", &offers[2..]).unwrap(),
    ];
    let kinds = tessera_data::agree_kinds(&config, &regions).unwrap();
    assert_eq!(kinds, flat);
    let offers: Vec<_> = sites
        .iter_mut()
        .map(|s| s.levels_offer(&config, &kinds).unwrap())
        .collect();
    let flat = tessera_data::agree_vocabulary(&config, &kinds, &offers).unwrap();
    let n = kinds.columns.len();
    let regions = [
        tessera_data::LevelsOffer::merge("east", n, &offers[..2]),
        tessera_data::LevelsOffer::merge("west", n, &offers[2..]),
    ];
    assert_eq!(
        tessera_data::agree_vocabulary(&config, &kinds, &regions).unwrap(),
        flat
    );
    // Members with different columns are refused, naming them.
    let mut odd = sites[0].kinds_offer();
    odd.columns.pop();
    let e = tessera_data::KindsOffer::merge("east", &[odd, sites[1].kinds_offer()]).unwrap_err();
    assert!(e.to_string().contains("different feature columns"), "{e}");
}

/// A multi-task agreement: the disease grade (num, five classes, no
/// positive value named) at Cleveland and VA, exercise-induced angina
/// (exang, binary) at Hungary and Switzerland. Every site reads the same
/// features; each task's classes come from its own sites' offers alone;
/// a task whose sites made no offer is refused, naming its target.
#[test]
fn a_multitask_agreement_gives_each_task_its_own_classes() {
    let base = heart_config();
    let task = |target: &str, negative: &[&str], other: &str| {
        let mut config = base.clone();
        config.schema.target = target.into();
        config.schema.positive = Vec::new();
        config.schema.negative = negative.iter().map(|s| s.to_string()).collect();
        for spec in &mut config.schema.columns {
            if spec.name == target {
                spec.kind = tessera_data::ColumnKind::Categorical;
            } else if spec.name == other {
                spec.kind = tessera_data::ColumnKind::Ignore;
            }
        }
        config
    };
    let configs = [task("num", &[], "exang"), task("exang", &["0"], "num")];
    let sites = [
        ("cleveland", 0),
        ("hungarian", 1),
        ("switzerland", 1),
        ("va", 0),
    ];
    let mut local: Vec<tessera_data::LocalSite> = sites
        .iter()
        .map(|(site, t)| {
            tessera_data::read_local_site(&configs[*t], site, None, &examples_dir(), &Filesystem)
                .unwrap()
        })
        .collect();
    let kinds = tessera_data::agree_kinds(
        &configs[0],
        &local.iter().map(|s| s.kinds_offer()).collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(!kinds.columns.iter().any(|c| c == "num" || c == "exang"));
    let offers: Vec<_> = local
        .iter_mut()
        .zip(&sites)
        .map(|(s, (_, t))| s.levels_offer(&configs[*t], &kinds).unwrap())
        .collect();
    let tasks: Vec<usize> = sites.iter().map(|(_, t)| *t).collect();
    let (agreement, classes) =
        tessera_data::agree_multitask(&configs, &kinds, &offers, &tasks).unwrap();
    assert_eq!(classes[0], ["0", "1", "2", "3", "4"]);
    assert_eq!(classes[1], ["0", "not 0"]);
    assert_eq!(agreement.classes, classes[0]);
    // The features are every offer's: the same as one task's reading.
    let alone = tessera_data::agree_vocabulary(&configs[0], &kinds, &offers[..]).unwrap();
    assert_eq!(agreement.encodings, alone.encodings);
    let e = tessera_data::agree_multitask(&configs, &kinds, &offers[..1], &tasks[..1])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no site of the task of target 'exang' offered its rows"),
        "{e}"
    );
}

/// An agreement (a coordinator's word) whose encodings contradict the agreed
/// kinds is refused by name at the site, not encoded into wrong rows.
#[test]
fn an_agreement_that_contradicts_the_kinds_is_refused() {
    let config = heart_config();
    let mut site =
        tessera_data::read_local_site(&config, "cleveland", None, &examples_dir(), &Filesystem)
            .unwrap();
    let kinds = tessera_data::agree_kinds(&config, &[site.kinds_offer()]).unwrap();
    let offer = site.levels_offer(&config, &kinds).unwrap();
    let mut agreement = tessera_data::agree_vocabulary(&config, &kinds, &[offer]).unwrap();
    let cp = agreement.columns.iter().position(|c| c == "cp").unwrap();
    agreement.encodings[cp] = tessera_data::Encoding::Numeric;
    let error = site.prepare(&config, &agreement).unwrap_err().to_string();
    assert!(error.contains("column 'cp'"), "{error}");
    assert!(error.contains("categorical"), "{error}");
}
