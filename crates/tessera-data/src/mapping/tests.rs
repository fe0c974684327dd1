#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::config::DataConfig;
use crate::{Filesystem, load};

/// A scratch folder, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("tessera-mapping-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The plan's layout: no header, five named columns (one ignored).
const PLAN: &str = r#"
[schema]
header = false
missing = ["?"]
target = "y"
columns = [
  { name = "age", type = "numeric" },
  { name = "sex", type = "numeric" },
  { name = "cp", type = "categorical", levels = ["1", "2", "3"] },
  { name = "chol", type = "numeric" },
  { name = "note", type = "ignore" },
  { name = "y", type = "categorical" },
]

[[sites]]
name = "a"
path = "a.csv"

[[sites]]
name = "b"
path = "b.csv"
"#;

const A: &str = "63,1,1,233,x,0\n67,0,3,286,y,1\n41,1,2,204,z,0\n56,0,2,236,w,1\n";
const B: &str = "57,0,3,354,x,1\n44,1,1,?,y,0\n52,1,2,199,z,1\n48,0,1,275,w,0\n";

/// B rewritten as another hospital keeps it: a header of its own names in
/// its own order, sex as M/F, chest pain in words, cholesterol in mmol/L,
/// a birth year instead of an age, "NA" for missing, no note column.
const B_REWRITTEN: &str = "\
Chol (mmol/L),Outcome,Sex,Chest pain,Birth year
9.154383,1,F,asymptomatic,1931
NA,0,M,typical,1944
5.146108,1,M,atypical,1936
7.111456,0,F,typical,1940
";

const B_MAPPING: &str = r#"
version = 1
missing = ["NA"]

[columns]
y = "Outcome"
sex = "Sex"
cp = "Chest pain"
chol = "Chol (mmol/L)"

[recode.sex]
M = "1"
F = "0"

[recode.cp]
typical = "1"
atypical = "2"
asymptomatic = "3"

[convert.chol]
from = "mmol/L"
to = "mg/dL"
substance = "cholesterol"
decimals = 0

[derive.age]
years_since = "Birth year"
year = 1988
"#;

fn config(mapped: bool) -> DataConfig {
    let mut config: DataConfig = toml::from_str(PLAN).unwrap();
    if mapped {
        config.sites[1].path = "b-rewritten.csv".into();
        config.sites[1].mapping = Some("b.mapping.toml".into());
    }
    config
}

#[test]
fn a_mapped_file_loads_as_the_file_in_the_plans_layout() {
    let dir = Dir::new("equal");
    dir.write("a.csv", A);
    dir.write("b.csv", B);
    dir.write("b-rewritten.csv", B_REWRITTEN);
    dir.write("b.mapping.toml", B_MAPPING);
    let clean = load(&config(false), &dir.0, &Filesystem).unwrap();
    let mapped = load(&config(true), &dir.0, &Filesystem).unwrap();
    assert_eq!(mapped.feature_names, clean.feature_names);
    assert_eq!(mapped.task, clean.task);
    for (m, c) in mapped.sites.iter().zip(&clean.sites) {
        assert_eq!(m.name, c.name);
        assert_eq!(m.raw_train(), c.raw_train(), "{}", m.name);
        assert_eq!(m.raw_test(), c.raw_test(), "{}", m.name);
        assert_eq!(m.train, c.train, "{}", m.name);
    }
}

#[test]
fn what_a_mapping_cannot_do_is_refused_by_name() {
    let dir = Dir::new("refused");
    dir.write("a.csv", A);
    dir.write("b-rewritten.csv", B_REWRITTEN);
    let refused = |mapping: &str| {
        dir.write("b.mapping.toml", mapping);
        load(&config(true), &dir.0, &Filesystem)
            .unwrap_err()
            .to_string()
    };
    // A plan column with no source names the file's columns.
    let e = refused(&B_MAPPING.replace("cp = \"Chest pain\"\n", ""));
    assert!(
        e.contains("'cp' comes from 'cp', which the file lacks"),
        "{e}"
    );
    assert!(e.contains("Chest pain"), "{e}");
    // A value the recoding does not know, with its line.
    let e = refused(&B_MAPPING.replace("F = \"0\"\n", ""));
    assert!(
        e.contains("line 2, column 'sex': 'F' has no recoding"),
        "{e}"
    );
    // A column the plan does not have.
    let e = refused(&format!("{B_MAPPING}\n[recode.smoker]\nyes = \"1\"\n"));
    assert!(
        e.contains("maps 'smoker', which is not a column of the plan"),
        "{e}"
    );
    // An unknown unit pair names the table.
    let e = refused(&B_MAPPING.replace("substance = \"cholesterol\"\n", ""));
    assert!(e.contains("no conversion from mmol/L to mg/dL"), "{e}");
    // A value that is not a number where one is converted.
    dir.write("b-rewritten.csv", &B_REWRITTEN.replace("9.154383", "high"));
    let e = refused(B_MAPPING);
    assert!(e.contains("'high' is not a number to convert"), "{e}");
    // A row of another width (a delimiter inside a value) is not shifted.
    dir.write(
        "b-rewritten.csv",
        &B_REWRITTEN.replace("1,M,atypical", "1,M,a,typical"),
    );
    let e = refused(B_MAPPING);
    assert!(
        e.contains("line 4: the row has 6 fields, expected 5"),
        "{e}"
    );
    // A column named twice, and a birth year that is not a number.
    dir.write("b-rewritten.csv", &B_REWRITTEN.replace("Sex,", "Outcome,"));
    let e = refused(B_MAPPING);
    assert!(e.contains("names column 'Outcome' twice"), "{e}");
    dir.write("b-rewritten.csv", &B_REWRITTEN.replace("1931", "inf"));
    let e = refused(B_MAPPING);
    assert!(e.contains("column 'age': 'inf' is not a year"), "{e}");
    // Unknown keys, version 0, a line break as the delimiter.
    assert!(Mapping::from_toml("version = 1\ndelimiter = \"\\n\"\n").is_err());
    assert!(Mapping::from_toml("version = 1\ncolumn = {}\n").is_err());
    let e = Mapping::from_toml("version = 0\n").unwrap_err();
    assert!(e.contains("starts at 1"), "{e}");
}

#[test]
fn ignored_columns_without_a_source_are_left_missing() {
    let schema: DataConfig = toml::from_str(PLAN).unwrap();
    let mapping = Mapping::from_toml(B_MAPPING).unwrap();
    let files = crate::InMemory::new([("b.csv", B_REWRITTEN)]);
    let mapped = Mapped::new(&files, Path::new("b.csv"), &mapping, &schema.schema).unwrap();
    let mut text = String::new();
    mapped
        .open(Path::new("b.csv"))
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(
        text,
        "57,0,3,354,?,1\n44,1,1,?,?,0\n52,1,2,199,?,1\n48,0,1,275,?,0\n"
    );
}

/// A column the schema added after the file's version (`absent`) is
/// never read from a file column of the same name: missing where the plan
/// ignores it, refused where the plan uses it. A plan naming its schema
/// version refuses a mapping that names none or another.
#[test]
fn absent_columns_and_schema_versions_are_kept_apart() {
    let dir = Dir::new("absent");
    dir.write("a.csv", A);
    // The file has a "note" column the schema's newer "note" is not.
    dir.write(
        "b-rewritten.csv",
        &B_REWRITTEN
            .lines()
            .enumerate()
            .map(|(i, l)| format!("{l},{}\n", if i == 0 { "note" } else { "old" }))
            .collect::<String>(),
    );
    let mapped = |mapping: &str, version: Option<u32>| {
        dir.write("b.mapping.toml", mapping);
        let mut c = config(true);
        c.schema.version = version;
        load(&c, &dir.0, &Filesystem)
    };
    let absent = B_MAPPING.replacen(
        "version = 1\n",
        "version = 1\nschema_version = 2\nabsent = [\"note\"]\n",
        1,
    );
    // Absent and ignored: loads (the file's "note" is not read).
    mapped(&absent, Some(2)).unwrap();
    // Absent and used: refused by name unless the plan says to impute
    // (then no level set at this site), and refused there too where the
    // plan drops incomplete rows.
    dir.write("b.mapping.toml", &absent);
    let mut used = config(true);
    used.schema.version = Some(2);
    used.schema.columns[4].kind = ColumnKind::Categorical;
    let e = load(&used, &dir.0, &Filesystem).unwrap_err().to_string();
    assert!(
        e.contains("the plan uses 'note', which this file does not have"),
        "{e}"
    );
    assert!(e.contains("absent = \"impute\""), "{e}");
    used.schema.absent = crate::config::AbsentPolicy::Impute;
    let loaded = load(&used, &dir.0, &Filesystem).unwrap();
    assert_eq!(
        loaded.sites[1].raw_train().nrows() + loaded.sites[1].raw_test().nrows(),
        4
    );
    used.schema.missing_policy = crate::config::MissingPolicy::Drop;
    let e = load(&used, &dir.0, &Filesystem).unwrap_err().to_string();
    assert!(e.contains("every row would go"), "{e}");
    // Listed absent and mapped at once: refused.
    let e = Mapping::from_toml(&absent.replace("y = \"Outcome\"", "y = \"Outcome\"\nnote = \"x\""))
        .unwrap_err();
    assert!(e.contains("listed absent and also mapped"), "{e}");
    // Versions: undeclared, or another, refused where the plan names one.
    let e = mapped(B_MAPPING, Some(2)).unwrap_err().to_string();
    assert!(e.contains("does not say which version"), "{e}");
    let e = mapped(
        &absent.replace("schema_version = 2", "schema_version = 1"),
        Some(2),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("maps to schema version 1") && e.contains("tessera schema upgrade"),
        "{e}"
    );
}
