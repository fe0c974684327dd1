//! Watching a federation: `tessera status`'s wall-clock times, the plot's
//! numbered axes, log lines (no colours into files, JSON on request), the
//! Prometheus endpoint's descriptions and figures, and the live dashboard
//! in a real headless browser.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../util/mod.rs"]
mod util;

mod dashboard;
mod logs;

use std::time::Duration;

use tessera_coordinator::store::{AuditRow, RunRow};
use tessera_coordinator::{RunStore, SqliteStore};
use tessera_core::{ParticipantId, Timestamp};
use util::Scratch;

const LIMIT: Duration = Duration::from_secs(180);

/// The bundled heart-disease plan with its data paths made absolute, in
/// the scratch folder.
fn heart_plan(s: &Scratch) -> std::path::PathBuf {
    let text = std::fs::read_to_string(util::procs::examples().join("fed-heart-disease.toml"))
        .unwrap()
        .replace("\"../data/", &format!("\"{}/data/", util::root().display()));
    s.write("heart.toml", &text)
}

/// `tessera status` gives wall-clock times (UTC) beside the run clock: when
/// the run started, when the open round opened, when each audit entry was
/// written.
#[test]
fn status_shows_wall_clock_times_in_utc() {
    let s = Scratch::new("status-utc");
    let db = s.path("c.sqlite");
    let store = SqliteStore::open(&db).unwrap();
    // 2026-12-02 05:48:45 UTC.
    let created: u64 = 1_796_190_525_000_000;
    let run = RunRow {
        id: "r".into(),
        name: "n".into(),
        plan: "name = \"n\"".into(),
        strategy: "fedavg".into(),
        seed: 1,
        rounds: 3,
        created_unix_micros: created,
        status: "running".into(),
    };
    store
        .write(&mut |tx| {
            tx.create_run(&run)?;
            tx.add_participant("r", "a", Timestamp(1))?;
            // Round 1 opened 75 s into the run, the audit entry 3,600.5 s in.
            tx.open_round("r", 1, &[ParticipantId::new("a")], Timestamp(75_000_000))?;
            tx.audit(
                "r",
                &AuditRow {
                    at_micros: 3_600_500_000,
                    site: "a".into(),
                    action: "update".into(),
                    outcome: "accepted".into(),
                    detail: "round 1".into(),
                },
            )
        })
        .unwrap();
    drop(store);
    let out = s.run(&["status", "--db", db.to_str().unwrap()]).ok();
    assert!(out.contains("started 2026-12-02 05:48:45 UTC"), "{out}");
    assert!(
        out.contains("round 1 open: 0 of 1 updates accepted (opened 2026-12-02 05:50:00 UTC)"),
        "{out}"
    );
    let audit = out
        .lines()
        .find(|l| l.ends_with("accepted  round 1"))
        .unwrap_or_else(|| panic!("no audit line: {out}"));
    assert!(audit.contains("2026-12-02 06:48:45 UTC"), "{out}");
    assert!(audit.contains("3600.500s"), "the run clock stays: {out}");
}

/// Every panel of the plot has numbered axes: for each chart, tick labels
/// that are numbers (or byte counts) along both its x and its y axis.
#[test]
fn every_plot_panel_has_numbered_axes() {
    let s = Scratch::new("plot-axes");
    s.run(&[
        "simulate", "-q", "--rounds", "4", "--report", "r.json", "--plot", "p.svg",
    ])
    .ok();
    let svg = std::fs::read_to_string(s.path("p.svg")).unwrap();
    let panels = plot_panels(&svg);
    assert_eq!(
        panels.len(),
        2,
        "two panels, accuracy and traffic: {panels:?}"
    );
    for (i, panel) in panels.iter().enumerate() {
        assert!(
            panel.x_numbers >= 2 && panel.y_numbers >= 2,
            "panel {i} needs numbers on both axes: {panel:?}\n{svg}"
        );
    }
}

/// Tick labels of each panel of a plotters SVG: text elements numbered
/// along a shared baseline (x axis) or a shared right edge (y axis); a
/// panel is the part of the picture above or below the split at y = 480.
#[derive(Debug, Default)]
struct Panel {
    x_numbers: usize,
    y_numbers: usize,
}

fn plot_panels(svg: &str) -> Vec<Panel> {
    let mut panels = vec![Panel::default(), Panel::default()];
    let mut texts: Vec<(f64, f64, String, String)> = Vec::new();
    for element in svg.split("<text").skip(1) {
        let Some((attributes, rest)) = element.split_once('>') else {
            continue;
        };
        let Some((content, _)) = rest.split_once("</text>") else {
            continue;
        };
        let attribute = |name: &str| {
            attributes
                .split(&format!(" {name}=\""))
                .nth(1)
                .and_then(|v| v.split('"').next())
                .map(str::to_string)
        };
        let (Some(x), Some(y)) = (attribute("x"), attribute("y")) else {
            continue;
        };
        let (Ok(x), Ok(y)) = (x.parse::<f64>(), y.parse::<f64>()) else {
            continue;
        };
        let anchor = attribute("text-anchor").unwrap_or_default();
        texts.push((x, y, anchor, content.trim().to_string()));
    }
    let numeric = |t: &str| {
        let t = t.trim_end_matches(['B', 'k', 'M', 'G']).trim();
        !t.is_empty() && t.parse::<f64>().is_ok()
    };
    for (x, y, anchor, content) in &texts {
        if !numeric(content) {
            continue;
        }
        let panel = usize::from(*y > 480.0);
        // Tick labels of the x axis are centred under the axis, those of
        // the y axis end at its left.
        if anchor == "middle" {
            panels[panel].x_numbers += 1;
        } else if anchor == "end" || *x < 80.0 {
            panels[panel].y_numbers += 1;
        }
    }
    panels
}

/// A plain HTTP GET on 127.0.0.1: the status line and the body.
fn http_get(address: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// What the store says the run holds: how many rounds are evaluated.
fn evaluated_rounds(document: &serde_json::Value) -> usize {
    document["rounds"]
        .as_array()
        .map_or(0, |r| r.iter().filter(|r| r["evaluated"] == true).count())
}

/// A dashboard address that cannot be had is refused before the run opens,
/// naming `--dashboard` and what to give instead; one that is not an
/// address at all is refused by the argument parser.
#[test]
fn a_dashboard_address_that_cannot_be_had_is_refused() {
    let s = Scratch::new("dashboard-address");
    let plan = heart_plan(&s);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let coordinator = |dashboard: &str| {
        s.run(&[
            "coordinator",
            "--plan",
            plan.to_str().unwrap(),
            "--db",
            "c.sqlite",
            "--listen",
            "127.0.0.1:0",
            "--insecure",
            "--dashboard",
            dashboard,
        ])
    };
    let run = coordinator(&address);
    assert!(!run.output.status.success());
    let error = run.stderr();
    let line = error
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{error}"));
    assert!(
        line.contains(&format!("--dashboard {address}: cannot listen there"))
            && line.contains("127.0.0.1:7080"),
        "{error}"
    );
    assert!(
        !s.path("c.sqlite").exists(),
        "refused before the run opened"
    );
    let line = coordinator("localhost").fails();
    assert!(line.contains("--dashboard"), "{line}");
}
