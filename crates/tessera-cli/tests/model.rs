//! Model files from the command line: `model inspect` shows what a file
//! holds, `predict` applies its stored preprocessing to raw CSV rows and
//! refuses rows without a column it needs, hostile files are refused
//! without a panic, and `model export --onnx` gives, in `onnxruntime`, the
//! probabilities `predict` gives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::path::{Path, PathBuf};

use tessera_engine::model_file::ModelFile;
use util::Scratch;

/// The bundled plan simulated for `rounds` rounds with `settings`: the model file.
fn simulated(s: &Scratch, name: &str, settings: &[&str]) -> PathBuf {
    let mut args = vec![
        "simulate",
        "-q",
        "--rounds",
        "3",
        "--report",
        "r.json",
        "--model-out",
        name,
    ];
    for setting in settings {
        args.extend(["--set", setting]);
    }
    s.run(&args).ok();
    s.path(name)
}

/// The rows of one heart-disease site as CSV with a header, every row kept.
fn heart_rows(s: &Scratch, site: &str, name: &str) -> PathBuf {
    let columns = "age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num";
    let data = std::fs::read_to_string(
        util::root().join(format!("data/uci-heart-disease/processed.{site}.data")),
    )
    .unwrap();
    let rows: Vec<&str> = data
        .lines()
        .filter(|l| !l.split(',').take(10).any(|f| f == "?"))
        .collect();
    s.write(name, &format!("{columns}\n{}\n", rows.join("\n")))
}

/// `predict`'s output: each row's class and probabilities.
fn predictions(csv: &str) -> Vec<(String, Vec<f64>)> {
    csv.lines()
        .skip(1)
        .map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            (
                fields[1].to_string(),
                fields[2..].iter().map(|p| p.parse().unwrap()).collect(),
            )
        })
        .collect()
}

#[test]
fn inspect_shows_the_feature_order_and_predict_applies_it() {
    let s = Scratch::new("model-inspect");
    let model = simulated(&s, "m.model", &["data.standardize.scope=federation"]);
    let text = s.run(&["model", "inspect", "m.model"]).ok();
    for expected in [
        "format version 1",
        "model: logistic, 14 parameters",
        "classes: 0, not 0",
        "standardisation: stored (federation)",
        "feature order (13):",
        "cp: one-hot over 1, 2, 3, 4 (first dropped)",
        "lineage: the model after round 3 of 3",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
    let lines: Vec<&str> = text.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.contains("feature order"))
        .unwrap();
    assert!(lines[first + 1].trim().starts_with("1  age"), "{text}");
    assert!(lines[first + 3].trim().starts_with("3  cp=2"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&s.run(&["model", "inspect", "--json", "m.model"]).ok()).unwrap();
    let file = ModelFile::from_bytes(&std::fs::read(&model).unwrap()).unwrap();
    assert_eq!(json["features"], serde_json::json!(file.header.features));
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["run"]["written_by"], "simulation");

    // Predictions: a column order of its own, extra columns ignored; the
    // same rows give the same probabilities through the library.
    let rows = heart_rows(&s, "va", "va.csv");
    let out = s
        .run(&["predict", "--model", "m.model", "--data", "va.csv"])
        .ok();
    let got = predictions(&out);
    let table = tessera_data::read_table(&tessera_data::Filesystem, &rows, ',').unwrap();
    let expected = file.predict(&table).unwrap();
    assert_eq!(got.len(), table.rows.len());
    for (i, (class, p)) in got.iter().enumerate() {
        assert_eq!(class, &file.classes()[expected.class[i]]);
        for (a, b) in p.iter().zip(expected.probabilities.row(i)) {
            assert_eq!(*a as f32, *b, "row {i}");
        }
    }
    s.run(&[
        "predict", "--model", "m.model", "--data", "va.csv", "--out", "p.csv",
    ])
    .ok();
    assert_eq!(std::fs::read_to_string(s.path("p.csv")).unwrap(), out);

    // A CSV without a column the model needs is refused by that column's name.
    let without: String = std::fs::read_to_string(&rows)
        .unwrap()
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(',').collect();
            f.remove(4);
            f.join(",") + "\n"
        })
        .collect();
    s.write("nochol.csv", &without);
    let e = s
        .run(&["predict", "--model", "m.model", "--data", "nochol.csv"])
        .fails();
    assert!(e.contains("no column 'chol', which the model needs"), "{e}");
}

#[test]
fn hostile_model_files_are_refused_without_panic() {
    let s = Scratch::new("model-hostile");
    let model = simulated(&s, "m.model", &[]);
    let bytes = std::fs::read(&model).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.model",
            bytes[..bytes.len() - 3].to_vec(),
            "truncated",
        ),
        ("header.model", bytes[..100].to_vec(), "truncated"),
        (
            "version.model",
            {
                let mut b = bytes.clone();
                b[8..12].copy_from_slice(&7u32.to_le_bytes());
                b
            },
            "format version 7",
        ),
        (
            "huge.model",
            {
                let mut b = bytes.clone();
                b[12..20].copy_from_slice(&(1u64 << 60).to_le_bytes());
                b
            },
            "more than",
        ),
        (
            "bare.model",
            tessera_proto::encode_parameters(&ModelFile::from_bytes(&bytes).unwrap().parameters),
            "older tessera",
        ),
        ("empty.model", Vec::new(), "TSRMODEL"),
    ];
    for (name, bytes, why) in cases {
        s.write(name, "");
        std::fs::write(s.path(name), bytes).unwrap();
        for args in [
            vec!["model", "inspect", name],
            vec!["predict", "--model", name, "--data", "x.csv"],
            vec!["model", "export", name, "--onnx", "x.onnx"],
        ] {
            let e = s.run(&args).fails();
            assert!(e.contains(name) && e.contains(why), "{args:?}: {e}");
        }
    }
}

/// The Python that has `onnxruntime`, if any: the CI's venv, else `python3`.
fn onnxruntime() -> Option<PathBuf> {
    let candidates = [
        util::root().join(".ci/venv/bin/python3"),
        PathBuf::from("python3"),
    ];
    candidates.into_iter().find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import onnxruntime, numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

const CHECK: &str = r#"
import sys, numpy, onnxruntime
model, inputs, expected = sys.argv[1:4]
x = numpy.loadtxt(inputs, delimiter=",", dtype=numpy.float32, ndmin=2)
session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
(p,) = session.run(["probabilities"], {"input": x})
want = numpy.loadtxt(expected, delimiter=",", skiprows=1, usecols=range(2, 2 + p.shape[1]), ndmin=2)
gap = float(numpy.max(numpy.abs(p - want)))
print(f"rows {p.shape[0]} classes {p.shape[1]} gap {gap:.3e}")
sys.exit(0 if p.shape == want.shape and gap <= 1e-5 else 1)
"#;

/// Writes `file`'s encoded inputs for `rows` (before standardisation), as
/// the ONNX model takes them.
fn encoded(file: &ModelFile, rows: &Path, out: &Path) {
    let table = tessera_data::read_table(&tessera_data::Filesystem, rows, ',').unwrap();
    let x = file.encode(&table).unwrap();
    let text: String = x
        .rows()
        .into_iter()
        .map(|r| {
            r.iter()
                .map(|v| format!("{v:e}"))
                .collect::<Vec<_>>()
                .join(",")
                + "\n"
        })
        .collect();
    std::fs::write(out, text).unwrap();
}

#[test]
fn onnx_export_predicts_what_predict_does() {
    let s = Scratch::new("model-onnx");
    let Some(python) = onnxruntime() else {
        eprintln!(
            "onnx_export_predicts_what_predict_does: skipped (no Python with onnxruntime; .ci/run installs it in .ci/venv)"
        );
        return;
    };
    s.write("check.py", CHECK);
    // Logistic regression with federation statistics; an MLP; softmax
    // regression on ten classes without standardisation.
    let heart = heart_rows(&s, "hungarian", "rows.csv");
    let (plan, _) = util::synthetic(&s, 3, 2, "kind = \"flat\"");
    s.run(&[
        "simulate",
        "-q",
        "--plan",
        plan.to_str().unwrap(),
        "--report",
        "syn.json",
        "--model-out",
        "softmax.model",
    ])
    .ok();
    let synthetic = s.path("syn.csv");
    let models = [
        (
            simulated(&s, "logistic.model", &["data.standardize.scope=federation"]),
            &heart,
        ),
        (
            simulated(
                &s,
                "mlp.model",
                &[
                    "data.standardize.scope=federation",
                    "model.kind=mlp",
                    "model.hidden=[6,4]",
                ],
            ),
            &heart,
        ),
        (s.path("softmax.model"), &synthetic),
    ];
    for (model, rows) in models {
        let name = model.file_name().unwrap().to_str().unwrap().to_string();
        let file = ModelFile::from_bytes(&std::fs::read(&model).unwrap()).unwrap();
        let onnx = format!("{name}.onnx");
        s.run(&["model", "export", &name, "--onnx", &onnx]).ok();
        let predicted = format!("{name}.predicted.csv");
        s.run(&[
            "predict",
            "--model",
            &name,
            "--data",
            rows.to_str().unwrap(),
            "--out",
            &predicted,
        ])
        .ok();
        let inputs = s.path(&format!("{name}.inputs.csv"));
        encoded(&file, rows, &inputs);
        let output = std::process::Command::new(&python)
            .current_dir(&s.dir)
            .args(["check.py", &onnx, inputs.to_str().unwrap(), &predicted])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // A global model whose sites each standardised with their own
    // statistics has none to export: the refusal says which file has them.
    simulated(&s, "site.model", &[]);
    let e = s
        .run(&["model", "export", "site.model", "--onnx", "site.onnx"])
        .fails();
    assert!(e.contains("participant --model-out"), "{e}");
}
