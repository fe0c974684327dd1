//! Bad input is an error naming file, line and column; never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use tessera_data::{DataConfig, DataError, FileSource, InMemory, SchemaConfig, load};

/// `files` (path, text) held in memory.
fn in_memory(files: &[(&str, &str)]) -> InMemory {
    InMemory::new(files.iter().map(|(p, c)| (*p, c.as_bytes())))
}

fn one_file(target: &str) -> DataConfig {
    DataConfig {
        path: Some("d.csv".into()),
        site_column: Some("site".into()),
        partition: None,
        sites: Vec::new(),
        schema: SchemaConfig::inferred(target),
        split: Default::default(),
        standardize: Default::default(),
        synthetic: None,
        cross_silo: None,
    }
}

fn error(config: &DataConfig, files: &[(&str, &str)]) -> String {
    match load(config, Path::new(""), &in_memory(files)) {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains('\n'), "one line: {text}");
            text
        }
    }
}

#[test]
fn ragged_row_names_file_and_line() {
    let csv = "site,a,b,y\ns1,1,2,0\ns1,1,0\ns1,3,4,1\n";
    assert_eq!(
        error(&one_file("y"), &[("d.csv", csv)]),
        "d.csv:3: row has 3 fields, expected 4"
    );
}

#[test]
fn empty_file() {
    assert_eq!(
        error(&one_file("y"), &[("d.csv", "")]),
        "d.csv: file is empty"
    );
    assert_eq!(
        error(&one_file("y"), &[("d.csv", "\n  \n\n")]),
        "d.csv: file is empty"
    );
    assert_eq!(
        error(&one_file("y"), &[("d.csv", "site,a,y\n")]),
        "d.csv: no data rows"
    );
}

#[test]
fn missing_target_column() {
    let csv = "site,a,b,y\ns1,1,2,0\n";
    assert_eq!(
        error(&one_file("outcome"), &[("d.csv", csv)]),
        "d.csv:1: no target column named 'outcome' (columns: site, a, b, y)"
    );
}

#[test]
fn missing_file() {
    let e = error(&one_file("y"), &[]);
    assert!(e.starts_with("d.csv: cannot read:"), "{e}");
}

#[test]
fn text_in_declared_numeric_column() {
    let mut config = one_file("y");
    config.schema.columns.push(tessera_data::ColumnSpec {
        name: "b".into(),
        kind: tessera_data::ColumnKind::Numeric,
        levels: None,
        drop_first: false,
        min: None,
        max: None,
    });
    let csv = "site,a,b,y\ns1,1,2,0\ns1,1,x7,1\n";
    assert_eq!(
        error(&config, &[("d.csv", csv)]),
        "d.csv:3:3: column 'b': 'x7' is not a number, and the schema declares this column numeric"
    );
}

#[test]
fn config_contradictions_are_reported() {
    let mut config = one_file("y");
    config.split.test_fraction = 1.5;
    assert_eq!(
        error(&config, &[]),
        "data config: split.test_fraction must be between 0 and 1, got 1.5"
    );
    let mut config = one_file("y");
    config.site_column = None;
    assert!(error(&config, &[]).contains("`path` needs `site_column`"));
    // A categorical level listed twice, as the plan reads levels.
    let mut config = one_file("y");
    config.schema.columns = vec![tessera_data::ColumnSpec {
        name: "c".into(),
        kind: tessera_data::ColumnKind::Categorical,
        levels: Some(vec!["1".into(), "2".into(), "1.0".into()]),
        drop_first: false,
        min: None,
        max: None,
    }];
    assert_eq!(
        error(&config, &[]),
        "data config: column 'c': level '1' is listed twice (levels are read as numbers where \
         they are: `1` and `1.0` are one)"
    );
}

#[test]
fn single_class_target_is_unusable() {
    let csv = "site,a,y\ns1,1,0\ns1,2,0\ns2,3,0\n";
    assert!(error(&one_file("y"), &[("d.csv", csv)]).contains("single value"));
}

#[test]
fn site_column_and_inferred_types() {
    // Column c is text at s2 only: it becomes categorical everywhere, with the
    // union vocabulary. Column a has a missing value, imputed with s1's mean.
    let csv = "\
site,a,c,y
s2,5,red,1
s1,1,1.0,0
s1,,1,1
s1,3,2,0
s1,5,2,1
s2,6,blue,0
s2,7,red,1
s2,8,1,0
";
    let mut config = one_file("y");
    config.split.test_fraction = 0.25;
    config.standardize.enabled = false;
    let data = load(&config, Path::new(""), &in_memory(&[("d.csv", csv)])).unwrap();
    assert_eq!(data.feature_names, ["a", "c=1", "c=2", "c=blue", "c=red"]);
    assert_eq!(data.task.classes, ["0", "1"]);
    let names: Vec<&str> = data.sites.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["s1", "s2"]);
    assert_eq!(data.summary[0].imputed_values, 1);
    let s1 = &data.sites[0];
    assert_eq!(s1.train.n_rows() + s1.test.n_rows(), 4);
    // Every row one-hot encodes exactly one level of c.
    for site in &data.sites {
        for ds in [&site.train, &site.test] {
            for row in ds.x.dense().rows() {
                assert_eq!(row.iter().skip(1).sum::<f32>(), 1.0);
            }
        }
    }
    // The imputed value is the mean of s1's other training values of a.
    let train_a: Vec<f32> = s1.raw_train().column(0).to_vec();
    let observed: Vec<f32> = [1.0f32, 3.0, 5.0]
        .into_iter()
        .filter(|v| train_a.contains(v))
        .collect();
    let mean = observed.iter().sum::<f32>() / observed.len() as f32;
    assert!(train_a.contains(&mean) || s1.raw_test().column(0).to_vec().contains(&mean));
}

#[test]
fn split_is_seeded_and_stratified() {
    let mut csv = String::from("site,a,y\n");
    for i in 0..100 {
        csv.push_str(&format!("s1,{i},{}\n", u8::from(i % 4 == 0)));
    }
    let files = [("d.csv", csv.as_str())];
    let config = one_file("y");
    let a = load(&config, Path::new(""), &in_memory(&files)).unwrap();
    let b = load(&config, Path::new(""), &in_memory(&files)).unwrap();
    assert_eq!(a.sites[0].test.x, b.sites[0].test.x);
    let test = &a.sites[0].test;
    assert_eq!(test.n_rows(), 20);
    assert_eq!(
        test.y.iter().filter(|&&y| y == 1).count(),
        5,
        "25% positives kept in test"
    );
    let mut other = config.clone();
    other.split.seed = 1;
    let c = load(&other, Path::new(""), &in_memory(&files)).unwrap();
    assert_ne!(a.sites[0].test.x, c.sites[0].test.x);
}

#[test]
fn membership_file_must_cover_rows() {
    let mut config = one_file("y");
    config.split.membership = Some(tessera_data::MembershipFile {
        path: "m.csv".into(),
        site_column: "site".into(),
        row_column: "row".into(),
        split_column: "split".into(),
    });
    let csv = "site,a,y\ns1,1,0\ns1,2,1\n";
    let m = "site,row,split\ns1,0,train\n";
    let e = error(&config, &[("d.csv", csv), ("m.csv", m)]);
    assert_eq!(e, "m.csv: row 1 of site 's1' (d.csv:3) has no entry");
    let m = "site,row,split\ns1,0,train\ns1,1,validation\n";
    let e = error(&config, &[("d.csv", csv), ("m.csv", m)]);
    assert_eq!(
        e,
        "m.csv:3:3: split 'validation' is not train, test or dropped"
    );
}

#[test]
fn data_error_is_std_error() {
    fn takes(_: &dyn std::error::Error) {}
    takes(&DataError::Config("x".into()));
}

#[test]
fn numbers_beyond_f32_are_refused() {
    let csv = "site,a,y\ns1,1,0\ns1,1e39,1\n";
    assert_eq!(
        error(&one_file("y"), &[("d.csv", csv)]),
        "d.csv:3:2: column 'a': '1e39' is not a finite number within the 32-bit range (|x| < 3.4e38)"
    );
}

#[test]
fn byte_order_mark_is_not_part_of_the_first_name() {
    let csv = "\u{feff}site,a,y\ns1,1,0\ns1,2,1\ns1,3,0\ns1,4,1\ns1,5,0\n";
    let data = load(&one_file("y"), Path::new(""), &in_memory(&[("d.csv", csv)])).unwrap();
    assert_eq!(data.sites[0].name, "s1");
}

#[test]
fn an_identifier_column_is_not_one_hot_encoded_silently() {
    let mut csv = String::from("site,id,a,y\n");
    for i in 0..1500 {
        csv.push_str(&format!("s1,row{i},{i},{}\n", i % 2));
    }
    let e = error(&one_file("y"), &[("d.csv", &csv)]);
    assert!(
        e.starts_with("column 'id' has 1500 distinct values, more than 1000"),
        "{e}"
    );
    let mut config = one_file("y");
    config.schema.columns.push(tessera_data::ColumnSpec {
        name: "id".into(),
        kind: tessera_data::ColumnKind::Ignore,
        levels: None,
        drop_first: false,
        min: None,
        max: None,
    });
    let data = load(&config, Path::new(""), &in_memory(&[("d.csv", &csv)])).unwrap();
    assert_eq!(data.feature_names, ["a"]);
}

#[test]
fn one_class_among_the_training_rows_is_unusable() {
    let mut config = one_file("y");
    config.schema.positive = vec!["yes".into()];
    let csv = "site,a,y\ns1,1,yes\ns1,2,yes\ns2,3,yes\n";
    assert_eq!(
        error(&config, &[("d.csv", csv)]),
        "every training row has the same target class (yes): nothing to learn"
    );
}

#[test]
fn a_column_without_training_values_is_absent_at_that_site() {
    // Site s2 has no value of `a` in its training rows; its test row's 250 must not
    // reach the model unscaled.
    let csv = "site,a,y\ns1,1,0\ns1,2,1\ns1,3,0\ns1,4,1\ns2,,0\ns2,,1\ns2,,0\ns2,,1\ns2,250,0\n";
    let mut config = one_file("y");
    config.split.membership = Some(tessera_data::MembershipFile {
        path: "m.csv".into(),
        site_column: "site".into(),
        row_column: "row".into(),
        split_column: "split".into(),
    });
    let m = "site,row,split\ns1,0,train\ns1,1,train\ns1,2,test\ns1,3,test\ns2,4,train\ns2,5,train\ns2,6,train\ns2,7,train\ns2,8,test\n";
    let data = load(
        &config,
        Path::new(""),
        &in_memory(&[("d.csv", csv), ("m.csv", m)]),
    )
    .unwrap();
    let s2 = &data.sites[1];
    assert!(
        s2.test.x.dense().iter().all(|v| *v == 0.0),
        "{:?}",
        s2.test.x
    );
}

/// A file whose line never ends (`/dev/zero`): refused at 16 MiB, naming
/// the file, instead of filling memory.
#[test]
fn a_line_that_never_ends_is_refused() {
    struct Endless;
    impl FileSource for Endless {
        fn open(&self, _: &Path) -> std::io::Result<Box<dyn std::io::Read + '_>> {
            let header = std::io::Cursor::new(b"site,a,y\ns1,".to_vec());
            Ok(Box::new(std::io::Read::chain(
                header,
                std::io::repeat(b'7'),
            )))
        }
    }
    let e = match load(&one_file("y"), Path::new(""), &Endless) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.starts_with("d.csv") && e.contains("longer than 16 MiB"),
        "{e}"
    );
    assert!(!e.contains('\n'));
}

/// A `ddof` at or above a site's training rows: refused, naming the site,
/// instead of silently leaving every feature unscaled.
#[test]
fn ddof_above_the_rows_is_refused() {
    let mut config = one_file("y");
    config.standardize.ddof = 50;
    let csv = "site,a,y\ns1,1,0\ns1,2,1\ns1,3,0\ns1,4,1\ns1,5,0\n";
    let e = error(&config, &[("d.csv", csv)]);
    assert!(
        e.contains("site 's1'") && e.contains("standardisation with ddof = 50 needs more"),
        "{e}"
    );
}
