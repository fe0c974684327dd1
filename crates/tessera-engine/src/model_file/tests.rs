use std::path::Path;

use super::*;
use crate::Plan;
use tessera_data::{InMemory, ScaleScope, read_table};

fn plan(model: &str) -> Plan {
    Plan::from_toml(
        &format!(
            r#"name = "m"
seed = 3
[data]
path = "d.csv"
site_column = "site"
[data.schema]
target = "y"
[model]
{model}
[training]
epochs = 1
batch_size = 8
lr = 0.1
[federation]
rounds = 2
"#
        ),
        "test",
    )
    .unwrap()
}

fn agreement() -> Agreement {
    Agreement {
        columns: vec!["age".into(), "sex".into()],
        encodings: vec![
            Encoding::Numeric,
            Encoding::OneHot {
                levels: vec!["f".into(), "m".into(), "x".into()],
                drop_first: false,
            },
        ],
        classes: vec!["0".into(), "1".into()],
    }
}

fn file(model: &str, stats: bool) -> ModelFile {
    let plan = plan(model);
    let a = agreement();
    let parameters = tessera_learn::initial_parameters(&plan.model, 4, 2, 9).unwrap();
    let standardization = Standardization {
        config: plan.data.standardize.clone(),
        source: stats.then(|| "site:a".to_string()),
        mean: stats.then(|| vec![50.0, 0.5, 0.5, 0.0]),
        scale: stats.then(|| vec![10.0, 0.5, 0.5, 1.0]),
    };
    let run = RunInfo {
        id: Some("m-1".into()),
        written_by: "coordinator".into(),
    };
    ModelFile::new(&plan, &a, standardization, run, 2, parameters).unwrap()
}

fn table(csv: &str) -> tessera_data::Table {
    read_table(&InMemory::new([("t.csv", csv)]), Path::new("t.csv"), ',').unwrap()
}

#[test]
fn a_model_file_reads_back_as_written() {
    for model in [
        "kind = \"logistic\"",
        "kind = \"softmax\"",
        "kind = \"mlp\"\nhidden = [5, 3]",
    ] {
        let original = file(model, true);
        let bytes = original.to_bytes();
        let read = ModelFile::from_bytes(&bytes).unwrap();
        assert_eq!(read, original);
        assert_eq!(read.to_bytes(), bytes);
        assert_eq!(read.header.features, ["age", "sex=f", "sex=m", "sex=x"]);
        assert_eq!(read.header.plan.hash.len(), 64);
    }
}

#[test]
fn hostile_model_files_are_refused_without_panic() {
    let bytes = file("kind = \"mlp\"\nhidden = [4]", true).to_bytes();
    // Every truncation.
    for end in 0..bytes.len() {
        let error = ModelFile::from_bytes(&bytes[..end]).unwrap_err();
        assert!(
            matches!(error, ModelFileError::Malformed(_)),
            "{end}: {error}"
        );
    }
    // Another version.
    let mut other = bytes.clone();
    other[8..12].copy_from_slice(&2u32.to_le_bytes());
    let error = ModelFile::from_bytes(&other).unwrap_err().to_string();
    assert!(error.contains("format version 2"), "{error}");
    // A huge declared header.
    let mut huge = bytes.clone();
    huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    let error = ModelFile::from_bytes(&huge).unwrap_err().to_string();
    assert!(error.contains("more than"), "{error}");
    // A huge declared tensor, and a model larger than its values.
    let mut f = file("kind = \"logistic\"", true);
    f.header.parameters[0].shape = vec![1 << 40, 1 << 40];
    let error = ModelFile::from_bytes(&f.to_bytes())
        .unwrap_err()
        .to_string();
    assert!(error.contains("more than"), "{error}");
    let mut f = file("kind = \"mlp\"\nhidden = [4]", true);
    f.header.model.hidden = vec![100];
    let error = ModelFile::from_bytes(&f.to_bytes())
        .unwrap_err()
        .to_string();
    assert!(error.contains("has 601 parameters"), "{error}");
    f.header.model.hidden = vec![1 << 40];
    let error = ModelFile::from_bytes(&f.to_bytes())
        .unwrap_err()
        .to_string();
    assert!(error.contains("too large"), "{error}");
    // Flipped bytes anywhere: refused or read, never a panic.
    for i in (0..bytes.len()).step_by(7) {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0x5a;
        let _ = ModelFile::from_bytes(&flipped);
    }
    // A bare parameter file of an older tessera says what to do.
    let error = ModelFile::from_bytes(b"\x0a\x05dense")
        .unwrap_err()
        .to_string();
    assert!(error.contains("older tessera"), "{error}");
}

#[test]
fn inconsistent_headers_are_refused() {
    let mut f = file("kind = \"logistic\"", true);
    f.header.features.swap(0, 1);
    let error = ModelFile::from_bytes(&f.to_bytes())
        .unwrap_err()
        .to_string();
    assert!(error.contains("feature list"), "{error}");
    let mut f = file("kind = \"logistic\"", true);
    f.header.standardization.scale = Some(vec![1.0, 0.0, 1.0, 1.0]);
    let error = ModelFile::from_bytes(&f.to_bytes())
        .unwrap_err()
        .to_string();
    assert!(error.contains("not positive"), "{error}");
    let mut f = file("kind = \"logistic\"", true);
    f.header.standardization.mean = Some(vec![1.0]);
    let error = ModelFile::from_bytes(&f.to_bytes())
        .unwrap_err()
        .to_string();
    assert!(error.contains("1 means"), "{error}");
}

#[test]
fn rows_are_encoded_with_the_stored_preprocessing() {
    let f = file("kind = \"logistic\"", true);
    // Columns in another order, an extra column, a missing number, an
    // unknown level, a level written as the agreement does not.
    let t = table("sex,extra,age\nm,1,60\nz,2,NA\nf,3,40\n");
    let x = f.encode(&t).unwrap();
    assert_eq!(x.row(0).to_vec(), [60.0, 0.0, 1.0, 0.0]);
    assert!(x[[1, 0]].is_nan());
    assert_eq!(
        x.row(1).iter().skip(1).copied().collect::<Vec<_>>(),
        [0.0; 3]
    );
    let inputs = f.inputs(&t).unwrap();
    assert_eq!(inputs.row(0).to_vec(), [1.0, -1.0, 1.0, 0.0]);
    assert_eq!(
        inputs[[1, 0]],
        0.0,
        "a missing number takes the stored mean"
    );
    let predictions = f.predict(&t).unwrap();
    assert_eq!(predictions.probabilities.dim(), (3, 2));
    for row in predictions.probabilities.rows() {
        assert!((row.sum() - 1.0).abs() < 1e-6);
    }
    let error = f.predict(&table("age\n1\n")).unwrap_err().to_string();
    assert!(error.contains("no column 'sex'"), "{error}");
    let error = f
        .predict(&table("age,sex\nold,m\n"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("line 2, column 'age'"), "{error}");
}

#[test]
fn without_stored_statistics_rows_are_standardised_with_their_own() {
    let f = file("kind = \"logistic\"", false);
    assert_eq!(f.header.standardization.config.scope, ScaleScope::Site);
    let x = f.inputs(&table("age,sex\n10,m\n20,f\n30,m\n")).unwrap();
    assert!(
        (x[[0, 0]] + 1.0).abs() < 1e-3 && (x[[2, 0]] - 1.0).abs() < 1e-3,
        "{x}"
    );
    let error = to_onnx(&f).unwrap_err().to_string();
    assert!(error.contains("participant --model-out"), "{error}");
    assert!(
        !to_onnx(&file("kind = \"mlp\"\nhidden = [3]", true))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn indicators_are_kept_and_a_file_from_before_the_setting_standardises_them() {
    let f = file("kind = \"logistic\"", false);
    let rows = table("age,sex\n10,m\n20,f\n30,m\n");
    let x = f.inputs(&rows).unwrap();
    assert_eq!(x.row(0).to_vec()[1..], [0.0, 1.0, 0.0]);
    assert_eq!(x.row(1).to_vec()[1..], [1.0, 0.0, 0.0]);
    // The same file as an older tessera wrote it: no `indicators` key.
    let mut header = serde_json::to_value(&f.header).unwrap();
    let config = header
        .pointer_mut("/standardization/config")
        .and_then(|c| c.as_object_mut())
        .unwrap();
    assert!(config.remove("indicators").is_some());
    let header = serde_json::to_vec(&header).unwrap();
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&MODEL_FILE_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header);
    for v in f.parameters.values() {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let old = ModelFile::from_bytes(&bytes).unwrap();
    assert_eq!(
        old.header.standardization.config.indicators,
        tessera_data::IndicatorScaling::Standardize
    );
    let z = old.inputs(&rows).unwrap();
    // sex=m in two rows of three: (1 - 2/3) / sqrt(1/3), as before.
    let want = (1.0 - 2.0 / 3.0) / (1.0f64 / 3.0).sqrt();
    assert!((f64::from(z[[0, 2]]) - want).abs() < 1e-5, "{z}");
    assert_eq!(x.column(0), z.column(0));
}
