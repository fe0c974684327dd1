#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use tessera_data::mapping::Mapping;

use super::*;
use crate::harmonize::propose::Proposal;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn heart() -> TargetSchema {
    TargetSchema::parse(&std::fs::read_to_string(repo("examples/schemas/heart.toml")).unwrap())
        .unwrap()
}

fn site_profile(site: &str, key: u8, release: LevelRelease) -> Profile {
    let path = repo(&format!("data/uci-heart-disease/rewritten/{site}.csv"));
    let table = tessera_data::read_table(&tessera_data::Filesystem, &path, ',').unwrap();
    let rows: Vec<Vec<String>> = table.rows.into_iter().map(|(_, r)| r).collect();
    let settings = ProfileSettings {
        level_release: release,
        ..ProfileSettings::default()
    };
    profile(site, &heart(), &table.header, &rows, settings, [key; 32]).unwrap()
}

/// The plan column's source in `m`: its file column (the same name where
/// the mapping names none), or the derivation.
fn source(m: &Mapping, column: &str) -> String {
    if let Some(d) = m.derive.get(column) {
        return format!("{} since {}", d.years_since, d.year);
    }
    m.columns.get(column).cloned().unwrap_or(column.into())
}

/// The heart plan's used columns: the proposal must give each the source,
/// conversion and recoding of the mapping written by hand (whose recodings
/// it may extend with other spellings of the same labels).
#[test]
fn proposals_for_the_rewritten_hospitals_are_the_hand_written_mappings() {
    let used = [
        "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak",
        "num",
    ];
    // The default release (levels add a parallel count, so more noise:
    // at 123 to 303 rows a site's level words then sink below it).
    for release in [LevelRelease::None] {
        for key in 1..=50u8 {
            for site in ["cleveland", "hungarian", "switzerland", "va"] {
                let p = propose(
                    &heart(),
                    &site_profile(site, key, release),
                    DEFAULT_THRESHOLD,
                );
                let hand =
                    Mapping::from_file(&repo(&format!("examples/mappings/heart-{site}.toml")))
                        .unwrap();
                let m = &p.mapping;
                let unmatched: Vec<&str> = p.unmatched.iter().map(|u| u.target.as_str()).collect();
                for column in used {
                    let what = format!("{site}, key {key}, {release:?}, {column}: {p:#?}");
                    assert!(!unmatched.contains(&column), "{what}");
                    assert_eq!(source(m, column), source(&hand, column), "{what}");
                    assert_eq!(m.convert.get(column), hand.convert.get(column), "{what}");
                    for (from, to) in hand.recode.get(column).into_iter().flatten() {
                        let got = m.recode.get(column).and_then(|r| r.get(from));
                        assert_eq!(got, Some(to), "{what}");
                    }
                    assert_eq!(
                        m.recode.contains_key(column),
                        hand.recode.contains_key(column),
                        "{what}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_column_with_no_match_is_reported_with_its_candidates_not_mapped() {
    let mut schema = heart();
    schema.columns.push(TargetColumn {
        name: "hba1c".into(),
        description: Some("glycated haemoglobin".into()),
        synonyms: vec![],
        unit: Some("%".into()),
        substance: None,
        decimals: None,
        typical: Some([3.0, 15.0]),
        as_of: None,
        levels: Default::default(),
    });
    let p = propose(
        &schema,
        &site_profile("va", 3, LevelRelease::Hashed),
        DEFAULT_THRESHOLD,
    );
    let u = p
        .unmatched
        .iter()
        .find(|u| u.target == "hba1c")
        .expect("unmatched");
    assert!(!u.candidates.is_empty(), "its best candidates are listed");
    assert!(u.candidates.iter().all(|(_, s)| *s < DEFAULT_THRESHOLD));
    assert!(!p.mapping.columns.contains_key("hba1c"));
}

#[test]
fn a_profile_holds_noisy_counts_on_fixed_bins_and_no_rare_value() {
    let header = vec!["id".to_string(), "age".to_string()];
    let mut rows: Vec<Vec<String>> = (0..400)
        .map(|i| vec!["common".to_string(), format!("{}", 40 + i % 20)])
        .collect();
    rows.push(vec!["MRN-12345".into(), "41".into()]);
    let p = profile(
        "a",
        &heart(),
        &header,
        &rows,
        ProfileSettings::default(),
        [9; 32],
    )
    .unwrap();
    assert!(
        p.columns[0].levels.is_empty(),
        "no levels unless the site releases them"
    );
    assert!((p.columns[0].other_text - 401.0).abs() < 6.0 * p.sigma);
    assert_eq!(p.level_delta, 0.0);
    for release in [LevelRelease::Names, LevelRelease::Hashed] {
        let settings = ProfileSettings {
            level_release: release,
            ..ProfileSettings::default()
        };
        let p = profile("a", &heart(), &header, &rows, settings, [9; 32]).unwrap();
        assert!(p.level_delta > 0.0);
        let text = serde_json::to_string(&p).unwrap();
        assert!(!text.contains("MRN-12345") && !text.contains(&level_hash("MRN-12345")));
        assert!(
            p.columns[0].levels.len() == 1,
            "the common level passes: {:?}",
            p.columns[0]
        );
        assert_eq!(
            text.contains("common"),
            release == LevelRelease::Names,
            "by name only where allowed"
        );
        assert!((p.rows - 401.0).abs() < 6.0 * p.sigma);
        assert_eq!(p.event.steps, 1);
        assert!(p.event.noise_multiplier > 1.0);
    }
    // Another key, other noise: the noise is the site's, not a seed's.
    let a = profile(
        "a",
        &heart(),
        &header,
        &rows,
        ProfileSettings::default(),
        [1; 32],
    )
    .unwrap();
    let b = profile(
        "a",
        &heart(),
        &header,
        &rows,
        ProfileSettings::default(),
        [2; 32],
    )
    .unwrap();
    assert_ne!(a.rows, b.rows);
}

#[test]
fn bad_schemas_and_profiles_are_refused_naming_the_fault() {
    let e = TargetSchema::parse("name = 'x'\nversion = 0\n[[columns]]\nname = 'a'\n").unwrap_err();
    assert!(e.to_string().contains("version counts from 1"), "{e}");
    let e = TargetSchema::parse(
        "name = 'x'\nversion = 1\n[[columns]]\nname = 'a'\n[[columns]]\nname = 'a'\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("named twice"), "{e}");
    let e =
        TargetSchema::parse("name = 'x'\nversion = 1\n[[columns]]\nname = 'a'\ntypical = [5, 1]\n")
            .unwrap_err();
    assert!(e.to_string().contains("not a finite range"), "{e}");
    let e =
        TargetSchema::parse("name = 'x'\nversion = 1\n[[columns]]\nname = 'a'\nunit = 'mg/dL'\n")
            .unwrap_err();
    assert!(e.to_string().contains("typical range"), "{e}");
    let mut p = site_profile("va", 1, LevelRelease::Hashed);
    p.format = "other/9".into();
    let e = Profile::parse(&serde_json::to_string(&p).unwrap()).unwrap_err();
    assert!(e.to_string().contains("is not tessera-profile/1"), "{e}");
    let e = Profile::parse("{").unwrap_err();
    assert!(e.to_string().contains("profile"), "{e}");
    let good = site_profile("va", 1, LevelRelease::Hashed);
    let refused = |change: &dyn Fn(&mut Profile)| {
        let mut p = good.clone();
        change(&mut p);
        Profile::parse(&serde_json::to_string(&p).unwrap())
            .unwrap_err()
            .to_string()
    };
    let bin = |exponent: i32, count: f64| NumberBin {
        sign: 1,
        exponent,
        count,
    };
    let e = refused(&|p| p.columns[1].numbers.push(bin(1000, 1.0)));
    assert!(e.contains("out of range"), "{e}");
    let e = refused(&|p| p.columns[1].numbers.push(bin(2, -5.0)));
    assert!(e.contains("negative"), "{e}");
    let e = refused(&|p| p.columns[1].name = "age\n[recode.sex]".into());
    assert!(e.contains("column"), "{e}");
    let e = refused(&|p| p.columns[1].name = "x".repeat(10_000));
    assert!(e.contains("column"), "{e}");
    let e = refused(&|p| p.site = "va\u{1b}[2J".into());
    assert!(e.contains("control characters"), "{e}");
    let e = refused(&|p| {
        p.columns[1].levels = (0..1000)
            .map(|i| LevelCount {
                level: format!("{i}"),
                count: 1.0,
            })
            .collect()
    });
    assert!(e.contains("more bins, words or levels"), "{e}");
    let e = refused(&|p| {
        p.columns[1].missing.insert("-9".into(), 10.0);
    });
    assert!(e.contains("token"), "{e}");
    assert!(Profile::parse(&serde_json::to_string(&good).unwrap()).is_ok());
    // A file whose column names could not be written into a mapping.
    let header = vec!["a\nb".to_string()];
    let e = profile(
        "s",
        &heart(),
        &header,
        &[],
        ProfileSettings::default(),
        [1; 32],
    )
    .unwrap_err();
    assert!(e.to_string().contains("control characters"), "{e}");
}

/// Numbers that are not the target's codes (sex as 1 and 2, chest pain 0
/// to 3) are not proposed as the same codes: they may mean other things.
#[test]
fn other_numeric_codes_are_not_taken_for_the_targets() {
    let header = vec!["sex".to_string(), "cp".to_string(), "age".to_string()];
    let rows: Vec<Vec<String>> = (0..600)
        .map(|i| {
            vec![
                format!("{}", 1 + i % 2),
                format!("{}", i % 4),
                format!("{}", 30 + i % 40),
            ]
        })
        .collect();
    let p = profile(
        "s",
        &heart(),
        &header,
        &rows,
        ProfileSettings::default(),
        [4; 32],
    )
    .unwrap();
    let proposal = propose(&heart(), &p, DEFAULT_THRESHOLD);
    for target in ["sex", "cp"] {
        let u = proposal.unmatched.iter().find(|u| u.target == target);
        let u = u.unwrap_or_else(|| panic!("{target} proposed: {proposal:#?}"));
        assert!(
            u.evidence.as_deref().unwrap().contains("other codes"),
            "{u:?}"
        );
    }
    assert!(proposal.matches.iter().any(|m| m.target == "age"));
    // The same columns coded as the target codes them are proposed.
    let rows: Vec<Vec<String>> = (0..600)
        .map(|i| {
            vec![
                format!("{}", i % 2),
                format!("{}", 1 + i % 4),
                format!("{}", 30 + i % 40),
            ]
        })
        .collect();
    let p = profile(
        "s",
        &heart(),
        &header,
        &rows,
        ProfileSettings::default(),
        [4; 32],
    )
    .unwrap();
    let proposal = propose(&heart(), &p, DEFAULT_THRESHOLD);
    assert!(
        proposal
            .unmatched
            .iter()
            .all(|u| u.target != "sex" && u.target != "cp")
    );
}

fn heart_v2() -> TargetSchema {
    TargetSchema::parse(&std::fs::read_to_string(repo("examples/schemas/heart-v2.toml")).unwrap())
        .unwrap()
}

/// A site's mapping to version 1 carried to version 2: renamed columns
/// from their old sources, recodings, conversions and derivations moved to
/// the new names, the new column without a source.
#[test]
fn an_upgrade_carries_a_sites_mapping_through_the_schemas_renames() {
    let va = Mapping::from_file(&repo("examples/mappings/heart-va.toml")).unwrap();
    let up = heart_v2().upgrade(1, Some(&va)).unwrap();
    let m = &up.mapping;
    assert_eq!(m.schema_version, Some(2));
    assert_eq!(m.version, va.version + 1);
    assert_eq!(m.columns["resting_bp"], "bp_rest");
    assert_eq!(m.columns["max_heart_rate"], "hr_max");
    assert!(!m.columns.contains_key("trestbps") && !m.columns.contains_key("thalach"));
    assert_eq!(m.convert["chol"], va.convert["chol"]);
    assert_eq!(m.derive["age"], va.derive["age"]);
    assert_eq!(m.missing, va.missing);
    assert!(!m.columns.contains_key("slope"), "same names stay implicit");
    assert_eq!(up.added, ["smoker"]);
    // A file in version 1's own names, without a mapping.
    let bare = heart_v2().upgrade(1, None).unwrap();
    assert_eq!(bare.mapping.columns["resting_bp"], "trestbps");
    assert_eq!(bare.mapping.columns.len(), 2);
    // Already at version 2: nothing renamed.
    assert!(
        heart_v2()
            .upgrade(2, None)
            .unwrap()
            .mapping
            .columns
            .is_empty()
    );
    // Refusals: a version the schema never had, a mapping to another.
    let e = heart_v2().upgrade(3, None).unwrap_err().to_string();
    assert!(e.contains("not one of this schema's (1 to 2)"), "{e}");
    let mut other = va.clone();
    other.schema_version = Some(2);
    let e = heart_v2().upgrade(1, Some(&other)).unwrap_err().to_string();
    assert!(e.contains("maps to version 2, not 1"), "{e}");
    let e = TargetSchema::parse(
        "name = 'x'\nversion = 2\n[[columns]]\nname = 'a'\n[[history]]\nversion = 3\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("history"), "{e}");
}

/// Renames chained over versions and a name reused: version 2 renames
/// `bp` to `sbp`, version 3 adds a new `bp` (another measurement). A file
/// of version 1 reads `sbp` from its `bp`, and the new `bp` is absent:
/// never read from the old one.
#[test]
fn an_upgrade_over_several_versions_never_reads_a_reused_name() {
    let schema = TargetSchema::parse(
        "name = 's'\nversion = 3\n[[columns]]\nname = 'sbp'\n[[columns]]\nname = 'bp'\n\
         [[columns]]\nname = 'hr'\n\
         [[history]]\nversion = 2\nrenamed = { bp = 'sbp', pulse = 'hr' }\n\
         [[history]]\nversion = 3\nadded = ['bp']\n",
    )
    .unwrap();
    let up = schema.upgrade(1, None).unwrap();
    assert_eq!(up.mapping.columns["sbp"], "bp");
    assert_eq!(up.mapping.columns["hr"], "pulse");
    assert_eq!(up.mapping.absent, ["bp"]);
    assert!(!up.mapping.columns.contains_key("bp"));
    let from2 = schema.upgrade(2, None).unwrap();
    assert!(from2.mapping.columns.is_empty());
    assert_eq!(from2.mapping.absent, ["bp"]);
    // A history that renames two columns to one name is refused.
    let e = TargetSchema::parse(
        "name = 's'\nversion = 2\n[[columns]]\nname = 'a'\n\
         [[history]]\nversion = 2\nrenamed = { x = 'a', y = 'a' }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("renamed to twice"), "{e}");
}

/// The catalog of the four rewritten hospitals: each site's values in the
/// target's unit after its conversion (two hospitals keep cholesterol in
/// mmol/L), VA's birth years left out of the age summary (a half-decade
/// bin of years says nothing about an age), codes counted from numbers and
/// recoded text alike, and similar features only of the same kind and unit.
#[test]
fn the_catalog_summarises_in_the_targets_units() {
    let schema = heart();
    let profiles: Vec<Profile> = ["cleveland", "hungarian", "switzerland", "va"]
        .iter()
        .map(|s| site_profile(s, 7, LevelRelease::None))
        .collect();
    let proposals: Vec<Proposal> = profiles
        .iter()
        .map(|p| propose(&schema, p, DEFAULT_THRESHOLD))
        .collect();
    let features = catalog(&schema, &profiles, &proposals);
    let f = |name: &str| features.iter().find(|f| f.name == name).unwrap();
    let [_, (lo, hi), _] = f("chol").quartiles.unwrap();
    assert!(lo <= 240.0 && 240.0 <= hi, "chol median in [{lo}, {hi}]");
    let [_, (lo, hi), _] = f("age").quartiles.unwrap();
    assert!(lo >= 10.0 && hi <= 101.0, "age median in [{lo}, {hi}]");
    let codes: Vec<&str> = f("sex").codes.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(codes, ["0", "1"]);
    assert!(
        f("chol").similar.iter().all(|(n, _)| n != "trestbps"),
        "another unit"
    );
    assert_eq!(f("chol").sites.len(), 4);
}

/// A mapping that already lists a column absent keeps it absent through a
/// later upgrade, under the column's new name.
#[test]
fn an_upgrade_keeps_what_the_sites_mapping_lists_absent() {
    let schema = TargetSchema::parse(
        "name = 's'\nversion = 3\n[[columns]]\nname = 'smoking'\n[[columns]]\nname = 'hr'\n\
         [[history]]\nversion = 2\nadded = ['smoker']\n\
         [[history]]\nversion = 3\nrenamed = { smoker = 'smoking' }\n",
    )
    .unwrap();
    let v2 = schema.upgrade(1, None).unwrap().mapping;
    assert_eq!(v2.absent, ["smoking"]);
    let mut at2 = v2.clone();
    at2.schema_version = Some(2);
    at2.absent = vec!["smoker".into()];
    let v3 = schema.upgrade(2, Some(&at2)).unwrap().mapping;
    assert_eq!(v3.absent, ["smoking"]);
    assert!(!v3.columns.contains_key("smoking"), "{v3:?}");
}
