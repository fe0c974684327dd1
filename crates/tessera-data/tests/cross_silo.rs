//! `[data.cross_silo]` read at one deployed site: the identifier column is
//! taken out before anything else, the feature comes back as the last
//! column, and what does not fit is refused naming it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tessera_data::InMemory as Files;
use tessera_data::{DataConfig, read_local_site, read_pending_site};

const CSV: &str = "patient_id,age,readmitted\nP1,50,yes\nP2,60,no\n,70,no\nP1,55,yes\n";

fn files() -> Files {
    Files(HashMap::from([(
        PathBuf::from("a.csv"),
        CSV.as_bytes().to_vec(),
    )]))
}

fn config(extra: &str) -> DataConfig {
    toml::from_str(&format!(
        "[schema]\ntarget = \"readmitted\"\npositive = [\"yes\"]\n\
         [[sites]]\nname = \"a\"\npath = \"a.csv\"\n\
         [cross_silo]\nidentifier = \"patient_id\"\nepsilon = 1.0\n{extra}"
    ))
    .unwrap()
}

#[test]
fn the_identifier_leaves_and_the_feature_comes_back_last() {
    let pending = read_pending_site(&config(""), "a", None, Path::new(""), &files()).unwrap();
    let ids = &pending.identifiers().identifiers;
    assert_eq!(
        ids,
        &[
            Some("P1".to_string()),
            Some("P2".into()),
            None,
            Some("P1".into())
        ]
    );
    // The identifiers never show in its Debug.
    assert!(!format!("{pending:?}").contains("P1"));
    let site = pending.finish(vec![1.0, 0.0, f64::NAN, 1.0]).unwrap();
    let kinds = site.kinds_offer();
    assert_eq!(
        kinds.columns.last().map(String::as_str),
        Some("visits_elsewhere")
    );
    assert!(
        !kinds.columns.iter().any(|c| c == "patient_id"),
        "{:?}",
        kinds.columns
    );
}

#[test]
fn what_does_not_fit_is_refused_naming_it() {
    let read = |c: &DataConfig| read_pending_site(c, "a", None, Path::new(""), &files());
    // Values for another number of rows, or infinite ones.
    let e = read(&config(""))
        .unwrap()
        .finish(vec![1.0; 3])
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("3 values for site 'a', which has 4 rows"),
        "{e}"
    );
    let e = read(&config(""))
        .unwrap()
        .finish(vec![1.0, f64::INFINITY, 0.0, 0.0])
        .err()
        .unwrap();
    assert!(e.to_string().contains("infinite"), "{e}");
    // No such identifier column.
    let e = read(&with_identifier(config(""), "mrn")).unwrap_err();
    assert!(e.to_string().contains("no identifier column 'mrn'"), "{e}");
    // The plain reader refuses the section, naming who computes it.
    let e = read_local_site(&config(""), "a", None, Path::new(""), &files())
        .err()
        .unwrap();
    assert!(e.to_string().contains("tessera participant"), "{e}");
    // The pending reader refuses a plan without it.
    let mut plain = config("");
    plain.cross_silo = None;
    assert!(read(&plain).is_err());
}

fn with_identifier(config: DataConfig, name: &str) -> DataConfig {
    let mut c = config;
    if let Some(x) = c.cross_silo.as_mut() {
        x.identifier = name.into();
    }
    c
}
