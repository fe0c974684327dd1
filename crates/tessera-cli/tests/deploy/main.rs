//! Deployment end to end with real processes on 127.0.0.1: the same model as
//! simulation bit for bit, a coordinator killed with SIGKILL mid-round and
//! resumed, a participant killed mid-round, malformed updates rejected.
//!
//! One test binary: the tests are grouped by topic in the modules below,
//! and the helpers they share are here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../util/mod.rs"]
mod util;

mod analytics;
mod attribution;
mod canary;
mod compression;
mod continual;
mod cross_silo;
mod dp;
mod dry_run;
mod external;
mod failover;
mod faults;
mod homomorphic;
mod hostile;
mod joins;
mod lifecycle;
mod logging;
mod malformed;
mod mapped;
mod multitask;
mod personal;
mod plans;
mod psi_joins;
mod results;
mod runs;
mod secure;
mod secure_buffers;
mod site_failures;
mod site_metrics;
mod synthetic;
mod tls;
mod tracing;
mod tracking;
mod trust;
mod waiting;
mod wide;

use std::time::Duration;

use util::Scratch;
use util::procs::{HEART_SITES, Proc, coordinator, examples, participant};

const LIMIT: Duration = Duration::from_secs(180);

/// A plain HTTP GET, the body.
fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A participant's greeting as `site`, with every capability of this build.
fn hello(site: &str) -> tessera_proto::pb::Hello {
    tessera_proto::pb::Hello {
        major: tessera_proto::MAJOR,
        minor: tessera_proto::MINOR,
        capabilities: tessera_proto::CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect(),
        site: site.into(),
        canary: false,
        serving: Vec::new(),
    }
}

/// The bundled plan under another strategy, written to the scratch folder.
fn plan(s: &Scratch, strategy: &str, federation_extra: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(examples().join("fed-heart-disease.toml")).unwrap();
    let text = text.replace(
        "strategy = \"fedavg\"",
        &format!("strategy = \"{strategy}\"\n{federation_extra}"),
    );
    let text = text.replace("\"../data/", &format!("\"{}/data/", util::root().display()));
    s.write(&format!("{strategy}.toml"), &text)
}

/// The bundled FedAvg plan's text (data paths made absolute) with `rounds`
/// rounds.
fn heart_text(s: &Scratch, rounds: u32) -> String {
    std::fs::read_to_string(plan(s, "fedavg", ""))
        .unwrap()
        .replace("rounds = 15", &format!("rounds = {rounds}"))
}

/// A coordinator's outputs to compare with its simulation: the model and
/// the report.
const OUTPUTS: &[&str] = &["--model-out", "dep.model", "--report", "dep.json"];

fn simulated_model(s: &Scratch, plan: &std::path::Path, name: &str) -> Vec<u8> {
    s.simulate(plan, name).1
}

/// `plan` deployed to participants `site0`..: each finishes with `rounds`
/// updates accepted; the coordinator's model file's bytes.
fn deployed_model(s: &Scratch, plan: &std::path::Path, sites: usize, rounds: u32) -> Vec<u8> {
    let (mut coordinator, url) = util::procs::coordinator(
        &s.dir,
        plan,
        &s.path("c.sqlite"),
        0,
        &["--model-out", "dep.model"],
    );
    let mut sites: Vec<util::procs::Proc> = (0..sites)
        .map(|i| {
            let site = format!("site{i}");
            let args = [
                "participant",
                "--coordinator",
                &url,
                "--site",
                &site,
                "--insecure",
            ];
            util::procs::Proc::start(&site, &s.dir, &args, None)
        })
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    let done = format!("done: {rounds} updates accepted");
    for p in &mut sites {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
        assert!(p.log().contains(&done), "{}", p.log());
    }
    util::model(&s.path("dep.model"))
}

fn run_federation(s: &Scratch, plan: &std::path::Path, db: &str, model: &str) -> (Proc, Vec<Proc>) {
    let (coordinator, url) = coordinator(
        &s.dir,
        plan,
        &s.path(db),
        0,
        &["--model-out", model, "--report", &format!("{model}.json")],
    );
    let participants = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    (coordinator, participants)
}

/// The four heart sites' participants of the coordinator at `url`, VA
/// pausing `pause` seconds before each update, so that each round sits
/// open with the other three updates accepted.
fn heart_with_slow_va(s: &Scratch, url: &str, pause: &str) -> Vec<Proc> {
    HEART_SITES
        .iter()
        .map(|site| {
            let extra: &[&str] = if *site == "va" {
                &["--pause-before-update", pause]
            } else {
                &[]
            };
            participant(&s.dir, url, site, extra)
        })
        .collect()
}

/// The bundled plan with `[privacy]` (and other tables) appended.
fn plan_with(s: &Scratch, name: &str, tables: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(plan(s, "fedavg", "")).unwrap();
    s.write(&format!("{name}.toml"), &format!("{text}\n{tables}\n"))
}
