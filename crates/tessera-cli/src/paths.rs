//! Output paths that would write over an input, or over each other, are
//! refused before a command does any work.
//!
//! Paths are compared as the system resolves them: canonicalized (symbolic
//! links and `..` followed); an output that does not exist yet by its
//! nearest existing folder and the names below it. On Unix two existing
//! paths that are one file (a hard link) are also the same.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::bail;
use tessera_data::DataConfig;

/// A file the command reads or keeps (the plan, data, a database, TLS files).
pub struct Input {
    /// What it is, for the error: "the plan file", "a data file of the plan".
    what: String,
    /// The path as the command opens it.
    path: PathBuf,
}

impl Input {
    pub fn new(what: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            what: what.into(),
            path: path.into(),
        }
    }
}

/// The files of a `--tls DIR` folder (as [`tessera_tls::TlsFiles::in_dir`] names them).
pub fn tls_inputs(flag: &str, dir: Option<&Path>) -> Vec<Input> {
    let Some(dir) = dir else {
        return Vec::new();
    };
    let files = tessera_tls::TlsFiles::in_dir(dir);
    [files.cert, files.key, files.ca, files.crl]
        .into_iter()
        .map(|path| Input::new(format!("a {flag} file"), path))
        .collect()
}

/// A SQLite database and the files SQLite keeps beside it.
pub fn db_inputs(db: &Path) -> Vec<Input> {
    if db.to_str().is_some_and(tessera_coordinator::is_postgres) {
        return Vec::new();
    }
    let mut inputs = vec![Input::new("the --db database", db)];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name: OsString = db.as_os_str().to_owned();
        name.push(suffix);
        inputs.push(Input::new("a file of the --db database", name));
    }
    inputs
}

/// Every file the plan's `[data]` names, resolved against `base_dir` (the
/// plan's folder) as `tessera_data` opens them.
pub fn plan_data_inputs(data: &DataConfig, base_dir: &Path) -> Vec<Input> {
    let mut inputs = Vec::new();
    if let Some(path) = &data.path {
        inputs.push(Input::new("a data file of the plan", base_dir.join(path)));
    }
    for site in &data.sites {
        inputs.push(Input::new(
            format!("the data file of site '{}' in the plan", site.name),
            base_dir.join(&site.path),
        ));
    }
    if let Some(membership) = &data.split.membership {
        inputs.push(Input::new(
            "the plan's split membership file",
            base_dir.join(&membership.path),
        ));
    }
    inputs
}

/// Refuses an output that is one of the inputs, or the same file as an
/// earlier output: `outputs` are (flag, path), e.g. ("--report", "r.json").
pub fn check_outputs(outputs: &[(&str, &Path)], inputs: &[Input]) -> anyhow::Result<()> {
    let inputs: Vec<(&Input, Resolved)> = inputs.iter().map(|i| (i, resolve(&i.path))).collect();
    let mut seen: Vec<(&str, &Path, Resolved)> = Vec::new();
    for &(flag, path) in outputs {
        let resolved = resolve(path);
        if let Some((input, _)) = inputs.iter().find(|(_, r)| r.same_as(&resolved)) {
            bail!(
                "{flag} {} is {} ({}): choose another path",
                path.display(),
                input.what,
                input.path.display()
            );
        }
        if let Some((other, other_path, _)) = seen.iter().find(|(_, _, r)| r.same_as(&resolved)) {
            bail!(
                "{flag} {} is the same file as {other} {}: choose another path",
                path.display(),
                other_path.display()
            );
        }
        seen.push((flag, path, resolved));
    }
    Ok(())
}

/// A path as the system would open it.
struct Resolved {
    path: PathBuf,
    /// Device and inode, where the file exists (Unix).
    id: Option<(u64, u64)>,
}

impl Resolved {
    fn same_as(&self, other: &Self) -> bool {
        self.path == other.path || (self.id.is_some() && self.id == other.id)
    }
}

fn resolve(path: &Path) -> Resolved {
    Resolved {
        path: canonical(path),
        id: file_id(path),
    }
}

#[cfg(unix)]
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_path: &Path) -> Option<(u64, u64)> {
    None
}

/// The canonical path; for a path that does not exist, its nearest existing
/// folder canonicalized with the missing names joined below it.
fn canonical(path: &Path) -> PathBuf {
    if let Ok(found) = std::fs::canonicalize(path) {
        return found;
    }
    let mut missing: Vec<&std::ffi::OsStr> = Vec::new();
    let mut current = path;
    while let (Some(parent), Some(name)) = (current.parent(), current.file_name()) {
        missing.push(name);
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(mut found) = std::fs::canonicalize(parent) {
            found.extend(missing.iter().rev());
            return found;
        }
        current = parent;
    }
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tessera-paths-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn missing_outputs_resolve_through_their_existing_folder() {
        let dir = scratch("missing");
        std::fs::create_dir_all(dir.join("a")).unwrap();
        let via_dotdot = dir.join("a/../b/c.json");
        let direct = dir.join("b/c.json");
        assert_eq!(canonical(&via_dotdot), canonical(&direct));
        let error = check_outputs(&[("--report", &via_dotdot), ("--model-out", &direct)], &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("is the same file as --report"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_input_reached_another_way_is_refused_and_distinct_paths_pass() {
        let dir = scratch("input");
        let plan = dir.join("plan.toml");
        std::fs::write(&plan, "x").unwrap();
        let other = dir.join("sub/../plan.toml");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let inputs = [Input::new("the plan file", &plan)];
        let error = check_outputs(&[("--report", &other)], &inputs)
            .unwrap_err()
            .to_string();
        assert!(error.contains("is the plan file"), "{error}");
        check_outputs(
            &[
                ("--report", &dir.join("r.json")),
                ("--plot", &dir.join("r.svg")),
            ],
            &inputs,
        )
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
