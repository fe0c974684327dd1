//! Experiment tracking of deployed runs: `tessera runs show` gives a run's
//! record as the run's own report has it (metrics per round, each site's
//! data fingerprint and rows, the code version, the last model's hash),
//! `tessera runs compare` sets two runs side by side, and `tessera runs
//! export --mlflow` and `tessera simulate --mlflow` log runs to a real
//! MLflow tracking server (`mlflow server`, started here), read back with
//! MLflow's own Python client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::util::procs::{HEART_SITES, coordinator, free_port, participant, wait_until};
use crate::util::{self, Scratch};
use crate::{LIMIT, plan};

/// The `mlflow` executable: `TESSERA_MLFLOW`, or `mlflow` on the PATH;
/// none (the test says so) unless `TESSERA_REQUIRE_MLFLOW` is set, which
/// makes its absence a failure (CI installs it).
fn mlflow() -> Option<PathBuf> {
    let found = std::env::var_os("TESSERA_MLFLOW")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join("mlflow"))
                    .find(|p| p.is_file())
            })
        })
        .filter(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("TESSERA_REQUIRE_MLFLOW").is_none(),
            "TESSERA_REQUIRE_MLFLOW is set and no mlflow was found (TESSERA_MLFLOW or PATH)"
        );
        eprintln!(
            "skipped: the MLflow part needs MLflow's server (pip install mlflow; \
             TESSERA_MLFLOW=path/to/mlflow); .ci/run installs it"
        );
    }
    found
}

/// MLflow's own client reads back every run of `experiment`: status,
/// params, tessera tags, metric histories, artifact names.
const READ_BACK: &str = r#"
import json, sys
from mlflow import MlflowClient
c = MlflowClient(tracking_uri=sys.argv[1])
exp = c.get_experiment_by_name(sys.argv[2])
out = []
for r in c.search_runs([exp.experiment_id]):
    out.append({
        "status": r.info.status,
        "params": r.data.params,
        "tags": {k: v for k, v in r.data.tags.items() if k.startswith("tessera")},
        "metrics": {k: [[m.step, m.value] for m in c.get_metric_history(r.info.run_id, k)]
                    for k in r.data.metrics},
        "artifacts": sorted(a.path for a in c.list_artifacts(r.info.run_id)),
    })
print(json.dumps(out))
"#;

fn read_back(s: &Scratch, mlflow: &Path, url: &str, experiment: &str) -> serde_json::Value {
    let python = mlflow.with_file_name("python");
    let python = if python.is_file() {
        python
    } else {
        PathBuf::from("python3")
    };
    let script = s.write("read_back.py", READ_BACK);
    let out = Command::new(python)
        .arg(script)
        .args([url, experiment])
        .output()
        .expect("run MLflow's client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the client")
}

/// `mlflow server` in its own process group, killed whole when dropped
/// (it starts its web server as a child).
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// A metric's history as MLflow's client gives it: (step, value).
fn history(points: &serde_json::Value) -> Vec<(u64, f64)> {
    points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

/// Each round's accuracy of a report or a run's record: (round, accuracy).
fn accuracies(report: &serde_json::Value) -> Vec<(u64, f64)> {
    report["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["round"].as_u64().unwrap(),
                r["accuracy"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The registry on the two runs: A's model goes to production, B's
/// through canary to production (A's archived), a rollback returns A's,
/// each change with its reason and evidence; wrong moves are refused.
fn registry_drill(s: &Scratch, db: &str, a: &str, b: &str) {
    let models = |args: &[&str]| {
        let mut all = vec!["models", "--db", db];
        all.extend_from_slice(args);
        s.run(&all)
    };
    let out = models(&["register", "--name", "heart", "--run", a]).ok();
    assert!(
        out.contains("version 1: run") && out.contains("round 15"),
        "{out}"
    );
    models(&[
        "promote",
        "--name",
        "heart",
        "--version",
        "1",
        "--to",
        "production",
    ])
    .ok();
    let out = models(&["register", "--name", "heart", "--run", b, "--round", "10"]).ok();
    assert!(
        out.contains("version 2") && out.contains("follows version 1"),
        "{out}"
    );
    let e = models(&[
        "promote",
        "--name",
        "heart",
        "--version",
        "2",
        "--to",
        "archived",
    ])
    .fails();
    assert!(e.contains("promote to canary or production"), "{e}");
    models(&[
        "promote",
        "--name",
        "heart",
        "--version",
        "2",
        "--to",
        "canary",
    ])
    .ok();
    s.write(
        "evidence.json",
        r#"{"canary_sites": 2, "difference": 0.01}"#,
    );
    models(&[
        "promote",
        "--name",
        "heart",
        "--version",
        "2",
        "--to",
        "production",
        "--reason",
        "better at the canary sites",
        "--evidence",
        "evidence.json",
    ])
    .ok();
    let listed = models(&["list"]).ok();
    let stage = |v: &str| {
        listed
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(v))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        (stage("1"), stage("2")),
        ("archived".into(), "production".into()),
        "{listed}"
    );
    let shown: serde_json::Value = serde_json::from_str(
        &models(&["show", "--name", "heart", "--version", "2", "--json"]).ok(),
    )
    .unwrap();
    let lineage = &shown["lineage"];
    assert_eq!(lineage["run"], b);
    assert_eq!(lineage["round"], 10);
    assert_eq!(lineage["parent_version"], 1);
    assert_eq!(lineage["code_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(lineage["sites_joined"].as_array().unwrap().len(), 4);
    assert_eq!(lineage["data_fingerprints"].as_object().unwrap().len(), 4);
    assert!(lineage["privacy_to_round"].is_null());
    let history: Vec<&str> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["candidate", "canary", "production"]);
    assert!(
        shown["history"][2]["evidence"]
            .as_str()
            .unwrap()
            .contains("difference")
    );
    let out = models(&["rollback", "--name", "heart", "--reason", "worse at va"]).ok();
    assert!(
        out.contains("version 2 rolled back") && out.contains("version 1 is in production"),
        "{out}"
    );
    let e = models(&["rollback", "--name", "heart", "--reason", "again"]).fails();
    assert!(e.contains("no earlier production version"), "{e}");
    let e = models(&[
        "promote",
        "--name",
        "heart",
        "--version",
        "2",
        "--to",
        "production",
    ])
    .fails();
    assert!(e.contains("version 2 is archived"), "{e}");
    let e = models(&["register", "--name", "bad name", "--run", a]).fails();
    assert!(e.contains("1 to 64 letters"), "{e}");
    let e = models(&["register", "--name", "heart", "--run", a, "--round", "99"]).fails();
    assert!(e.contains("rounds 1 to 15"), "{e}");
    // A reason that would show other than it reads, and evidence that is
    // not a file, are refused.
    let e = models(&[
        "archive",
        "--name",
        "heart",
        "--version",
        "1",
        "--reason",
        "ok\u{202E}dab",
    ])
    .fails();
    assert!(e.contains("direction-changing"), "{e}");
    let e = models(&[
        "rollback",
        "--name",
        "heart",
        "--reason",
        "r",
        "--evidence",
        ".",
    ])
    .fails();
    assert!(e.contains("not a regular file"), "{e}");
    // A run not finished (here one marked running again) is refused.
    let copy = s.path("copy.sqlite");
    std::fs::copy(db, &copy).unwrap();
    rusqlite::Connection::open(&copy)
        .unwrap()
        .execute("UPDATE runs SET status = 'running' WHERE id = ?1", [a])
        .unwrap();
    let e = s
        .run(&[
            "models",
            "--db",
            copy.to_str().unwrap(),
            "register",
            "--name",
            "x",
            "--run",
            a,
        ])
        .fails();
    assert!(
        e.contains("is running: register the model of a run that finished"),
        "{e}"
    );
    // Reading changes nothing in the database, not even its mode, and a
    // database from before the registry stays without its tables.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode();
    std::fs::set_permissions(db, std::fs::Permissions::from_mode(0o640)).unwrap();
    let before = std::fs::read(db).unwrap();
    models(&["list"]).ok();
    models(&["show", "--name", "heart"]).ok();
    assert!(std::fs::read(db).unwrap() == before);
    assert_eq!(mode(db) & 0o777, 0o640);
    std::fs::set_permissions(db, std::fs::Permissions::from_mode(0o600)).unwrap();
    let old = s.path("old.sqlite");
    std::fs::copy(db, &old).unwrap();
    let tables = |p: &std::path::Path| -> i64 {
        rusqlite::Connection::open(p)
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'registry%'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    rusqlite::Connection::open(&old)
        .unwrap()
        .execute_batch("DROP TABLE registry_events; DROP TABLE registry_versions;")
        .unwrap();
    assert_eq!(tables(&old), 0);
    let out = s
        .run(&["models", "--db", old.to_str().unwrap(), "list"])
        .ok();
    assert!(out.contains("no models registered"), "{out}");
    assert_eq!(tables(&old), 0);
}

#[test]
fn runs_are_tracked_compared_and_logged_to_mlflow() {
    if util::skip_e2e("runs_are_tracked_compared_and_logged_to_mlflow") {
        return;
    }
    let s = Scratch::new("deploy-tracking");
    // Two runs in one database: FedAvg, then FedProx (--new-run).
    for (strategy, model) in [("fedavg", "a.model"), ("fedprox", "b.model")] {
        let plan = plan(&s, strategy, "");
        let mut extra = vec!["--model-out", model];
        let report = format!("{model}.json");
        extra.extend(["--report", &report]);
        if strategy == "fedprox" {
            extra.push("--new-run");
        }
        let (mut coordinator, url) = coordinator(&s.dir, &plan, &s.path("c.sqlite"), 0, &extra);
        let mut participants: Vec<_> = HEART_SITES
            .iter()
            .map(|site| participant(&s.dir, &url, site, &[]))
            .collect();
        assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
        for p in &mut participants {
            assert!(p.wait(LIMIT).success(), "{}", p.log());
        }
    }
    let db = s.path("c.sqlite");
    let db = db.to_str().unwrap();
    let listed = s.run(&["runs", "list", "--db", db]).ok();
    let ids: Vec<String> = listed
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{listed}");
    // Newest first: B (FedProx), then A (FedAvg).
    let (b, a) = (&ids[0], &ids[1]);
    let record: serde_json::Value = serde_json::from_str(
        &s.run(&["runs", "--db", db, "show", "--run", a, "--json"])
            .ok(),
    )
    .unwrap();
    let report = s.json("a.model.json");
    assert_eq!(record["code_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(record["strategy"], "fedavg");
    assert_eq!(record["status"], "finished");
    assert_eq!(accuracies(&record), accuracies(&report));
    // Each site's fingerprint: its declared rows are the report's (both
    // rounded up: the plan keeps the sites' metrics to sums), its layout a
    // hash.
    let sites = record["sites"].as_object().unwrap();
    assert_eq!(sites.len(), 4);
    for summary in report["data"].as_array().unwrap() {
        let site = &sites[summary["site"].as_str().unwrap()];
        assert_eq!(site["train_rows"], summary["n_train"]);
        assert_eq!(site["test_rows"], summary["n_test"]);
        assert_eq!(site["schema_sha256"].as_str().unwrap().len(), 64);
    }
    // The last model's hash is the model file's parameters'.
    let parameters = util::parameters(&std::fs::read(s.path("a.model")).unwrap());
    let last = record["artifacts"].as_array().unwrap().last().unwrap();
    assert_eq!(
        last["sha256"].as_str().unwrap(),
        tessera_engine::model_file::parameters_sha256(&parameters)
    );
    let shown = s.run(&["runs", "show", "--db", db, "--run", a]).ok();
    assert!(
        shown.contains("data fingerprints (never rows; rows as each site declared them"),
        "{shown}"
    );
    assert!(shown.contains("va                   layout"), "{shown}");
    assert!(shown.contains("privacy spent: none"), "{shown}");

    let compared = s.run(&["runs", "compare", "--db", db, a, b]).ok();
    assert!(compared.contains("plans differ in"), "{compared}");
    let line = compared
        .lines()
        .find(|l| l.trim_start().starts_with("federation.strategy "))
        .unwrap_or_else(|| panic!("{compared}"));
    assert!(
        line.contains("A \"fedavg\"") && line.contains("B \"fedprox\""),
        "{line}"
    );
    assert_eq!(
        compared
            .lines()
            .filter(|l| l.trim_start().starts_with("15 "))
            .count(),
        1,
        "{compared}"
    );
    let e = s.run(&["runs", "compare", "--db", db, a, "nope"]).fails();
    assert!(e.contains("no run 'nope'"), "{e}");

    registry_drill(&s, db, a, b);

    let Some(mlflow) = mlflow() else {
        return;
    };
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let store = format!("sqlite:///{}", s.path("mlflow.sqlite").display());
    let artifacts = s.path("mlartifacts");
    let log = std::fs::File::create(s.path("mlflow.log")).unwrap();
    let _server = Server({
        use std::os::unix::process::CommandExt;
        Command::new(&mlflow)
            .args([
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--backend-store-uri",
                &store,
                "--artifacts-destination",
                artifacts.to_str().unwrap(),
                "--workers",
                "1",
            ])
            .current_dir(&s.dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start mlflow server")
    });
    wait_until(Duration::from_secs(120), "mlflow server", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && Command::new("curl")
                .args(["-sf", &format!("{url}/health")])
                .output()
                .is_ok_and(|o| o.status.success())
    });
    let export = || {
        s.run(&[
            "runs",
            "export",
            "--db",
            db,
            "--run",
            a,
            "--mlflow",
            &url,
            "--artifact",
            "a.model",
        ])
        .ok()
    };
    let out = export();
    assert!(out.contains("logged to MLflow"), "{out}");
    let again = s
        .run(&["runs", "export", "--db", db, "--run", a, "--mlflow", &url])
        .ok();
    assert!(again.contains("not logged again"), "{again}");
    // An export left half done (its mark of completion missing) is logged
    // again whole, the half one deleted.
    let id = again
        .split("as run ")
        .nth(1)
        .and_then(|t| t.split(':').next())
        .unwrap()
        .trim()
        .to_string();
    let unmark = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &format!(r#"{{"run_id": "{id}", "key": "tessera.export", "value": "partial"}}"#),
            &format!("{url}/api/2.0/mlflow/runs/set-tag"),
        ])
        .output()
        .unwrap();
    assert!(unmark.status.success(), "{unmark:?}");
    let redone = export();
    assert!(
        redone.contains("logged to MLflow") && !redone.contains(&id),
        "{redone}"
    );
    let runs = read_back(&s, &mlflow, &url, "fed-heart-disease");
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(run["status"], "FINISHED");
    assert_eq!(run["params"]["federation.strategy"], "\"fedavg\"");
    assert_eq!(run["params"]["federation.rounds"], "15");
    assert_eq!(run["tags"]["tessera.run_id"], a.as_str());
    assert_eq!(
        run["tags"]["tessera.code_version"],
        env!("CARGO_PKG_VERSION")
    );
    // The rows as the site declared them (to the next power of two: the
    // plan keeps the sites' metrics to sums).
    let va = &record["sites"]["va"];
    assert_eq!(
        run["tags"]["tessera.site.va.rows"],
        format!("{} train, {} test", va["train_rows"], va["test_rows"])
    );
    let logged = history(&run["metrics"]["accuracy"]);
    assert_eq!(logged, accuracies(&report));
    assert_eq!(
        run["artifacts"],
        serde_json::json!(["a.model", "plan.toml", "record.json"])
    );
    // A simulation, logged as it ends, in an experiment of its own.
    let plan = plan(&s, "fedavg", "");
    s.run(&[
        "simulate",
        "-q",
        "--plan",
        plan.to_str().unwrap(),
        "--rounds",
        "3",
        "--report",
        "sim.json",
        "--mlflow",
        &url,
        "--mlflow-experiment",
        "simulated",
        "--set",
        "privacy.site_metrics=dp",
    ])
    .ok();
    let sim = read_back(&s, &mlflow, &url, "simulated");
    let sim = &sim.as_array().unwrap()[0];
    let logged = history(&sim["metrics"]["accuracy"]);
    assert_eq!(logged, accuracies(&s.json("sim.json")));
    assert_eq!(sim["tags"]["tessera.runtime"], "simulation");
    let spent = s.json("sim.json")["metrics_privacy"]["epsilon"]
        .as_f64()
        .unwrap();
    assert!(spent > 0.0);
    assert_eq!(
        sim["tags"]["tessera.privacy.metrics_epsilon"],
        spent.to_string()
    );
    assert_eq!(
        sim["artifacts"],
        serde_json::json!(["plan.toml", "sim.json", "sim.svg"])
    );
}
