//! Log lines: no ANSI colours when stderr is not a terminal, and one JSON
//! object a line with `--log-format json`, for the coordinator, a
//! participant (its error too) and a simulation.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, Scratch};
use crate::{LIMIT, heart_plan};

/// `tessera args` with stderr into `file`, killed once the file holds
/// `until` (or once it exits): the file's text.
fn stderr_of(s: &Scratch, args: &[&str], file: &str, until: &str) -> String {
    let path = s.path(file);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .current_dir(&s.dir)
        .env("TESSERA_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&path).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let exited = child.try_wait().unwrap().is_some();
        if text.contains(until) || exited {
            let _ = child.kill();
            let _ = child.wait();
            return std::fs::read_to_string(&path).unwrap_or_default();
        }
        assert!(start.elapsed() < LIMIT, "no '{until}' in {file}:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn coordinator_args<'a>(plan: &'a str, db: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "coordinator",
        "--plan",
        plan,
        "--db",
        db,
        "--listen",
        "127.0.0.1:0",
        "--insecure",
    ];
    args.extend_from_slice(extra);
    args
}

/// A coordinator whose stderr is a file writes no escape sequence: its
/// log lines (levels included) are plain text.
#[test]
fn logs_into_a_file_carry_no_colours() {
    if util::skip_e2e("logs_into_a_file_carry_no_colours") {
        return;
    }
    let s = Scratch::new("logs-plain");
    let plan = heart_plan(&s);
    let args = coordinator_args(plan.to_str().unwrap(), "c.sqlite", &[]);
    let log = stderr_of(&s, &args, "coordinator.log", "coordinator ready");
    assert!(log.contains("coordinator ready"), "{log}");
    assert!(log.contains("INFO"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "an escape sequence in a file:\n{log:?}"
    );
}

/// Every line a JSON object with its level and message.
fn assert_json_lines(who: &str, log: &str) -> Vec<serde_json::Value> {
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{who}: not JSON ({e}): {l}\n{log}"))
        })
        .collect();
    assert!(!lines.is_empty(), "{who}: no log line");
    for line in &lines {
        assert!(line["level"].is_string(), "{who}: no level: {line}");
        assert!(
            line["fields"]["message"].is_string(),
            "{who}: no message: {line}"
        );
    }
    lines
}

fn messages(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["fields"]["message"].as_str().unwrap_or("").to_string())
        .collect()
}

/// `--log-format json`: every line the coordinator, a participant (its
/// final error too) and a simulation write to stderr is a JSON object with
/// a level and a message.
#[test]
fn json_logs_are_one_object_a_line() {
    if util::skip_e2e("json_logs_are_one_object_a_line") {
        return;
    }
    let s = Scratch::new("logs-json");
    let plan = heart_plan(&s);
    let args = coordinator_args(
        plan.to_str().unwrap(),
        "c.sqlite",
        &["--log-format", "json"],
    );
    let log = stderr_of(&s, &args, "coordinator.log", "coordinator ready");
    let lines = assert_json_lines("coordinator", &log);
    let said = messages(&lines);
    assert!(said.iter().any(|m| m == "coordinator ready"), "{log}");
    assert!(said.iter().any(|m| m.starts_with("listening on ")), "{log}");
    assert!(said.iter().any(|m| m.contains("--insecure")), "{log}");

    // Nobody listens at this port: the participant gives up with an error.
    let port = util::procs::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let data = util::procs::heart_file("va");
    let args = [
        "--log-format",
        "json",
        "participant",
        "--coordinator",
        &url,
        "--site",
        "va",
        "--data",
        data.to_str().unwrap(),
        "--insecure",
        "--give-up-after",
        "1",
    ];
    let log = stderr_of(&s, &args, "participant.log", "\"error: ");
    let lines = assert_json_lines("participant", &log);
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR", "{log}");
    assert!(
        last["fields"]["message"]
            .as_str()
            .unwrap()
            .starts_with("error: "),
        "{log}"
    );

    let args = [
        "simulate",
        "--rounds",
        "2",
        "--report",
        "r.json",
        "--plot",
        "p.svg",
        "--log-format",
        "json",
    ];
    let log = stderr_of(&s, &args, "simulate.log", "\"report: ");
    let lines = assert_json_lines("simulate", &log);
    let rounds = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "round evaluated")
        .count();
    assert_eq!(rounds, 2, "{log}");
    let report = s.json("r.json");
    let second = lines
        .iter()
        .find(|l| l["fields"]["message"] == "round evaluated" && l["fields"]["round"] == 2)
        .unwrap();
    assert_eq!(
        second["fields"]["accuracy"],
        report["rounds"][1]["accuracy"]
    );
}
