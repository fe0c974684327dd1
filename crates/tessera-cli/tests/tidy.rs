//! The house rules ARCHITECTURE.md states, checked: dependencies between the
//! workspace's crates point down the layers, the simulator has no transport,
//! the pure crates (the engine among them) never read the clock, sleep or
//! open sockets, and no source file is longer than 800 lines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Each crate's layer, as ARCHITECTURE.md draws them: a crate may depend
/// only on crates of lower layers.
const LAYERS: &[(&str, u32)] = &[
    ("tessera-core", 0),
    ("tessera-secagg", 0),
    ("tessera-psi", 0),
    ("tessera-tls", 1),
    ("tessera-he", 1),
    ("tessera-data", 1),
    ("tessera-privacy", 1),
    ("tessera-aggregate", 1),
    ("tessera-compress", 1),
    ("tessera-contribution", 1),
    ("tessera-learn", 2),
    ("tessera-analytics", 2),
    ("tessera-plan", 3),
    ("tessera-proto", 3),
    ("tessera-engine", 4),
    ("tessera-orchestrator", 5),
    ("tessera-participant", 5),
    ("tessera-sim", 6),
    ("tessera-coordinator", 6),
    ("tessera-peer", 6),
    ("tessera-aggregator", 7),
    ("tessera-python", 7),
    ("tessera-cli", 8),
];

/// The pure crates: no clock, no sleeping, no sockets, no async runtime.
const PURE: &[&str] = &[
    "tessera-core",
    "tessera-data",
    "tessera-learn",
    "tessera-analytics",
    "tessera-aggregate",
    "tessera-contribution",
    "tessera-privacy",
    "tessera-secagg",
    "tessera-psi",
    "tessera-he",
    "tessera-compress",
    "tessera-plan",
    "tessera-engine",
    "tessera-orchestrator",
];

/// What a pure crate's code never names.
const IMPURE: &[&str] = &[
    "Instant::now",
    "SystemTime",
    "std::net",
    "TcpStream",
    "TcpListener",
    "tokio",
    "thread::sleep",
];

/// The workspace crates each crate's `[dependencies]` names.
fn workspace_dependencies() -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(crates_dir()).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let value: toml::Value = toml::from_str(&text).unwrap();
        let name = value["package"]["name"].as_str().unwrap().to_string();
        let deps = value
            .get("dependencies")
            .and_then(toml::Value::as_table)
            .map(|t| {
                t.keys()
                    .filter(|k| k.starts_with("tessera-"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        out.insert(name, deps);
    }
    out
}

#[test]
fn dependencies_point_down_the_layers() {
    let layers: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let deps = workspace_dependencies();
    assert!(deps.len() >= 16, "{deps:?}");
    let mut wrong = Vec::new();
    for (name, deps) in &deps {
        let Some(&layer) = layers.get(name.as_str()) else {
            wrong.push(format!(
                "{name} has no layer: place it in LAYERS and ARCHITECTURE.md"
            ));
            continue;
        };
        for dep in deps {
            match layers.get(dep.as_str()) {
                Some(&below) if below < layer => {}
                _ => wrong.push(format!("{name} (layer {layer}) depends on {dep}")),
            }
        }
    }
    // Simulation has no transport: the same engine, in process.
    for dep in &deps["tessera-sim"] {
        if ["tessera-proto", "tessera-tls"].contains(&dep.as_str()) {
            wrong.push(format!("tessera-sim depends on {dep}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// `text` without its test modules (everything from the first
/// `#[cfg(test)]`: test code may time itself).
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn pure_crates_never_read_the_clock_or_open_sockets() {
    let mut found = Vec::new();
    for krate in PURE {
        let mut files = Vec::new();
        rust_files(&crates_dir().join(krate).join("src"), &mut files);
        assert!(!files.is_empty(), "{krate}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (i, line) in without_tests(&text).lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for word in IMPURE {
                    if code.contains(word) {
                        found.push(format!("{}:{}: {word}", file.display(), i + 1));
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

/// Every crate denies missing documentation.
#[test]
fn every_library_denies_missing_docs() {
    let mut missing = Vec::new();
    for (name, _) in LAYERS {
        if *name == "tessera-cli" {
            continue;
        }
        let lib = crates_dir().join(name).join("src/lib.rs");
        let text = std::fs::read_to_string(&lib).unwrap();
        if !text.contains("#![deny(missing_docs)]") {
            missing.push(lib.display().to_string());
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

/// The longest a source file may be (ARCHITECTURE.md, invariants): a longer
/// one is split along its seams.
const MAX_LINES: usize = 800;

#[test]
fn no_source_file_is_longer_than_800_lines() {
    let mut files = Vec::new();
    rust_files(&crates_dir(), &mut files);
    assert!(files.len() > 100, "found only {} files", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "longer than {MAX_LINES} lines: {long:?}");
}
