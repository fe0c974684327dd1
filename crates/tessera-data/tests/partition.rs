//! Synthetic sites for data without sites: a Dirichlet label-skew partition
//! of one file (gzip or plain, with or without a header).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use tessera_data::InMemory as Files;
use tessera_data::{
    DataConfig, PartitionConfig, SchemaConfig, load, read_local_site, read_local_sites,
};

/// 1000 rows, 3 features, 5 classes (200 each), no header, gzipped.
fn files() -> Files {
    let mut csv = String::new();
    for i in 0..1000 {
        csv.push_str(&format!("{},{},{},{}\n", i % 7, i % 11, i % 13, i % 5));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(csv.as_bytes()).unwrap();
    Files(HashMap::from([
        (PathBuf::from("rows.csv.gz"), gz.finish().unwrap()),
        (PathBuf::from("rows.csv"), csv.into_bytes()),
    ]))
}

fn config(path: &str, alpha: f64) -> DataConfig {
    let mut schema = SchemaConfig::inferred("4");
    schema.header = false;
    DataConfig {
        path: Some(path.into()),
        site_column: None,
        partition: Some(PartitionConfig {
            sites: 8,
            alpha,
            seed: 3,
            min_rows: 10,
        }),
        sites: Vec::new(),
        schema,
        split: Default::default(),
        standardize: Default::default(),
        synthetic: None,
        cross_silo: None,
    }
}

/// Mean over sites of the largest class's share of the site's rows.
fn skew(data: &tessera_data::FederatedData) -> f64 {
    let shares: Vec<f64> = data
        .sites
        .iter()
        .map(|s| {
            let mut counts = [0usize; 5];
            for &y in s.train.y.iter().chain(&s.test.y) {
                counts[y as usize] += 1;
            }
            let total: usize = counts.iter().sum();
            *counts.iter().max().unwrap() as f64 / total as f64
        })
        .collect();
    shares.iter().sum::<f64>() / shares.len() as f64
}

#[test]
fn every_row_goes_to_exactly_one_site() {
    let files = files();
    let sites = read_local_sites(&config("rows.csv.gz", 0.5), Path::new(""), &files).unwrap();
    assert_eq!(sites.len(), 8);
    let names: Vec<&str> = sites.iter().map(|s| s.name()).collect();
    assert_eq!(names[0], "site-01");
    assert_eq!(names[7], "site-08");
    let total: usize = sites.iter().map(|s| s.summary().rows_read).sum();
    assert_eq!(total, 1000);
    assert!(sites.iter().all(|s| s.summary().rows_read >= 10));
    // Gzip or not, the same partition; and deployment reads the same rows.
    let plain = read_local_sites(&config("rows.csv", 0.5), Path::new(""), &files).unwrap();
    for (a, b) in sites.iter().zip(&plain) {
        assert_eq!(a.summary().rows_read, b.summary().rows_read);
    }
    let one = read_local_site(
        &config("rows.csv.gz", 0.5),
        "site-05",
        None,
        Path::new(""),
        &files,
    )
    .unwrap();
    assert_eq!(one.summary().rows_read, sites[4].summary().rows_read);
    let err = read_local_site(
        &config("rows.csv.gz", 0.5),
        "site-9",
        None,
        Path::new(""),
        &files,
    )
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("not among the partition's 8 sites"),
        "{err}"
    );
}

#[test]
fn small_alpha_skews_labels_large_alpha_does_not() {
    let files = files();
    let skewed = load(&config("rows.csv.gz", 0.1), Path::new(""), &files).unwrap();
    let even = load(&config("rows.csv.gz", 1000.0), Path::new(""), &files).unwrap();
    let (s, e) = (skew(&skewed), skew(&even));
    assert!(s > 0.6, "alpha 0.1: largest class share {s}");
    assert!(e < 0.3, "alpha 1000: largest class share {e}");
}

#[test]
fn impossible_partitions_and_bad_gzip_are_errors() {
    let files = files();
    let mut too_many = config("rows.csv.gz", 0.5);
    if let Some(p) = too_many.partition.as_mut() {
        p.sites = 200;
    }
    let err = load(&too_many, Path::new(""), &files).err().unwrap();
    assert!(
        err.to_string()
            .contains("cannot give 200 sites 10 rows each"),
        "{err}"
    );
    let broken = Files(HashMap::from([(
        PathBuf::from("rows.csv.gz"),
        b"this is not gzip".to_vec(),
    )]));
    let err = load(&config("rows.csv.gz", 0.5), Path::new(""), &broken)
        .err()
        .unwrap();
    assert!(err.to_string().contains("rows.csv.gz"), "{err}");
    let mut both = config("rows.csv", 0.5);
    both.site_column = Some("4".into());
    let err = load(&both, Path::new(""), &files).err().unwrap();
    assert!(err.to_string().contains("not both"), "{err}");
}
