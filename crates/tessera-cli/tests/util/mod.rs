//! Runs the real `tessera` binary in a scratch folder (ripgrep's `TestCommand` is the model).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Whether the slow end-to-end suites (real coordinator, participant,
/// aggregator and peer processes) run: with `TESSERA_E2E=1`, which `.ci/run`
/// sets; otherwise each such test says it is skipped and passes, so that a
/// developer's `cargo test --workspace` stays fast.
pub fn skip_e2e(test: &str) -> bool {
    if std::env::var_os("TESSERA_E2E").is_some_and(|v| v == "1") {
        return false;
    }
    eprintln!("{test}: skipped (an end-to-end test: TESSERA_E2E=1 runs it, as .ci/run does)");
    true
}

/// A scratch folder, removed when dropped.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("tessera-test-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch folder");
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write scratch file");
        path
    }

    /// `tessera <args>` run in this folder.
    pub fn run(&self, args: &[&str]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("run tessera");
        Run { output }
    }

    /// `tessera simulate` of `plan`, its report in `name.json` and its model
    /// in `name`: the report and the model as [`model`] gives it.
    pub fn simulate(&self, plan: &Path, name: &str) -> (serde_json::Value, Vec<u8>) {
        let report = format!("{name}.json");
        self.run(&[
            "simulate",
            "-q",
            "--plan",
            plan.to_str().expect("plan path"),
            "--report",
            &report,
            "--model-out",
            name,
        ])
        .ok();
        (self.json(&report), model(&self.path(name)))
    }

    pub fn json(&self, name: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.path(name)).expect("report exists");
        serde_json::from_str(&text).expect("report is JSON")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Run {
    pub output: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Asserts success and returns stdout.
    pub fn ok(&self) -> String {
        assert!(
            self.output.status.success(),
            "tessera failed: {}",
            self.stderr()
        );
        self.stdout()
    }

    /// Asserts failure with a one-line error and no panic; returns that line.
    pub fn fails(&self) -> String {
        assert!(
            !self.output.status.success(),
            "expected failure, got: {}",
            self.stdout()
        );
        let stderr = self.stderr();
        assert!(!stderr.contains("panicked"), "panic: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line expected: {stderr}");
        lines[0].to_string()
    }
}

/// Synthetic(0.5, 0.5) with 10 classes and 20 features over `sites` sites of
/// 150 rows (`syn.csv`), and a softmax plan of `rounds` rounds with this
/// `[topology]` body (`plan.toml`): the plan and the data.
pub fn synthetic(s: &Scratch, sites: usize, rounds: u32, topology: &str) -> (PathBuf, PathBuf) {
    let n = sites.to_string();
    s.run(&[
        "synth",
        "--sites",
        &n,
        "--rows",
        "150",
        "--features",
        "20",
        "--classes",
        "10",
        "--alpha",
        "0.5",
        "--beta",
        "0.5",
        "--seed",
        "3",
        "--out",
        "syn.csv",
    ])
    .ok();
    // Trees and gossip cannot keep evaluations to their sums yet (the
    // default elsewhere): their plans let the coordinator see each site's.
    let privacy = if topology.contains("kind = \"flat\"") {
        ""
    } else {
        "\n[privacy]\nsite_metrics = \"clear\"\n"
    };
    let plan = s.write(
        "plan.toml",
        &format!(
            r#"name = "synthetic"
seed = 5

[data]
path = "syn.csv"
site_column = "site"

[data.schema]
target = "y"

[data.standardize]
enabled = false

[model]
kind = "softmax"

[training]
epochs = 1
batch_size = 32
lr = 0.2

[federation]
rounds = {rounds}

[topology]
{topology}
{privacy}"#
        ),
    );
    (plan, s.path("syn.csv"))
}

/// A model file's bytes with its run's id and writer left out: what a
/// simulation's and a deployment's files of the same model share, bit for
/// bit (the model, its parameters, feature order, vocabularies,
/// standardisation, plan hash and lineage).
pub fn model(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("model file");
    let mut file = tessera_engine::model_file::ModelFile::from_bytes(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.header.run = tessera_engine::model_file::RunInfo {
        id: None,
        written_by: String::new(),
    };
    file.to_bytes()
}

/// The parameters of [`model`]'s bytes.
pub fn parameters(bytes: &[u8]) -> tessera_core::ParameterSet {
    tessera_engine::model_file::ModelFile::from_bytes(bytes)
        .expect("model file")
        .parameters
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a folder of the copy");
    for entry in std::fs::read_dir(from).expect("read a folder of the repository") {
        let entry = entry.expect("a folder entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy a file");
        }
    }
}

/// A scratch folder holding what a fresh clone has for running plans: a
/// copy of the repository's `examples/` and `data/`.
pub fn fresh_copy(name: &str) -> Scratch {
    let s = Scratch::new(name);
    for dir in ["examples", "data"] {
        copy_dir(&root().join(dir), &s.path(dir));
    }
    s
}

/// The sh blocks of the repository's document `file` with the marker in
/// the HTML comment just above each (`<!-- checked -->` gives `checked`;
/// empty for unmarked blocks), each as its lines.
pub fn doc_blocks(file: &str) -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut blocks = Vec::new();
    let mut marker = String::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        if let Some(lines) = &mut current {
            if line.trim_start().starts_with("```") {
                blocks.push((
                    std::mem::take(&mut marker),
                    current.take().unwrap_or_default(),
                ));
            } else {
                lines.push(line.to_string());
            }
        } else if line.starts_with("```sh") || line.starts_with("```bash") {
            current = Some(Vec::new());
        } else if let Some(rest) = line.strip_prefix("<!--") {
            marker = rest.trim_end_matches("-->").trim().to_string();
        } else if !line.trim().is_empty() {
            marker.clear();
        }
    }
    blocks
}

pub mod postgres;
pub mod procs;
pub mod status;

/// The number at `path` (keys joined by dots) in a report.
pub fn number(v: &serde_json::Value, path: &str) -> f64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = &cur[key];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number: {cur}"))
}
