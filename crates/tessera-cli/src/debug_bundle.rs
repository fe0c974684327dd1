//! `tessera debug-bundle`: what a site can hand to whoever helps it debug a
//! failure, and nothing of its data. One JSON file of configuration (the
//! plan and its checks, the site's data file's place, Tessera's
//! environment variables), versions (this build, its protocol and
//! capabilities, what the plan's run needs of the site, the system) and DP
//! summaries (the site's privacy ledger: releases per plan and kind, and
//! under the plan the epsilon spent against its budget). It never opens
//! the data file, and holds no value, row, parameter or query.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;
use tessera_engine::Plan;

/// Arguments of `tessera debug-bundle`.
#[derive(Debug, clap::Args)]
pub struct DebugBundleArgs {
    /// This site's name, as the plan names it.
    #[arg(long)]
    site: String,
    /// The plan the site takes part in (its canonical text, checks and
    /// needs go in the bundle, and the ledger's spend under it).
    #[arg(long)]
    plan: Option<PathBuf>,
    /// This site's privacy ledger (default: the participant's,
    /// tessera-ledger-SITE.json here); a missing file is noted, not an error.
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// This site's data file (default: the plan's file for the site): its
    /// path and whether it is there only; it is never opened.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The bundle to write (default: tessera-debug-SITE.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The format written.
const FORMAT: &str = "tessera-debug-bundle/1";

/// Environment variables that configure Tessera, shown with their values.
const ENVIRONMENT: &[&str] = &["TESSERA_LOG", "TESSERA_PSI_ENGINE", "RUST_LOG"];

#[derive(Debug, Serialize)]
struct Bundle {
    format: &'static str,
    created_unix: u64,
    site: String,
    build: Build,
    environment: std::collections::BTreeMap<String, String>,
    plan: Option<PlanPart>,
    data: Option<DataPart>,
    ledger: LedgerPart,
}

#[derive(Debug, Serialize)]
struct Build {
    tessera: &'static str,
    protocol: String,
    capabilities: Vec<&'static str>,
    os: &'static str,
    arch: &'static str,
    cpus: usize,
}

#[derive(Debug, Serialize)]
struct PlanPart {
    path: PathBuf,
    name: String,
    hash: String,
    /// Every conflict validation finds (empty: the plan is valid).
    conflicts: Vec<String>,
    /// Whether the plan names this site (or has no site list).
    names_site: bool,
    /// The capabilities the plan's run needs of this site's participant.
    run_needs: Vec<&'static str>,
    /// The plan as Tessera reads it (canonical TOML: defaults filled in).
    text: String,
}

/// The data file's place only: its size or time would tell its row count
/// and when rows were added, which are not DP.
#[derive(Debug, Serialize)]
struct DataPart {
    path: PathBuf,
    exists: bool,
}

#[derive(Debug, Serialize)]
struct LedgerPart {
    path: PathBuf,
    /// `None`: there is no file (the site has released nothing yet, or
    /// keeps its ledger elsewhere).
    summary: Option<tessera_participant::ledger::summary::LedgerSummary>,
}

fn unix(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The plan's part, and where the plan says the site's data file is.
fn plan_part(path: &Path, site: &str) -> anyhow::Result<(PlanPart, Plan, Option<PathBuf>)> {
    let plan = Plan::from_file(path)
        .with_context(|| format!("{}: the plan does not read", path.display()))?;
    let conflicts = plan.conflicts().iter().map(|c| c.to_string()).collect();
    let named = plan.data.named_sites();
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let file = match plan.data.sites.iter().find(|s| s.name == site) {
        Some(s) => Some(dir.join(&s.path)),
        None => plan.data.path.as_ref().map(|p| dir.join(p)),
    };
    let part = PlanPart {
        path: path.to_path_buf(),
        name: plan.name.clone(),
        hash: tessera_engine::model_file::plan_hash(&plan),
        conflicts,
        names_site: named.is_empty() || named.iter().any(|s| s == site),
        run_needs: tessera_coordinator::site_capabilities(&plan, site),
        text: toml::to_string(&plan).context("the plan as TOML")?,
    };
    Ok((part, plan, file))
}

pub fn run(args: &DebugBundleArgs) -> anyhow::Result<()> {
    let site = args.site.as_str();
    if site.is_empty() || site.len() > 256 || site.contains(['/', '\\']) {
        bail!("--site: '{site}' is not a site name (1 to 256 characters, no slash)");
    }
    let (plan_part, plan, plan_file) = match &args.plan {
        Some(path) => {
            let (part, plan, file) = plan_part(path, site)?;
            (Some(part), Some(plan), file)
        }
        None => (None, None, None),
    };
    let data = args.data.clone().or(plan_file).map(|path| DataPart {
        exists: path.is_file(),
        path,
    });
    let ledger_path = crate::deploy::site_ledger(args.ledger.as_deref(), site);
    let summary = tessera_participant::ledger::summary::summary(&ledger_path, site, plan.as_ref())
        .map_err(anyhow::Error::msg)
        .context("the site's privacy ledger (--ledger)")?;
    let bundle = Bundle {
        format: FORMAT,
        created_unix: unix(std::time::SystemTime::now()),
        site: site.to_string(),
        build: Build {
            tessera: env!("CARGO_PKG_VERSION"),
            protocol: format!("{}.{}", tessera_proto::MAJOR, tessera_proto::MINOR),
            capabilities: tessera_proto::CAPABILITIES.to_vec(),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
        },
        environment: ENVIRONMENT
            .iter()
            .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
            .collect(),
        plan: plan_part,
        data,
        ledger: LedgerPart {
            path: ledger_path,
            summary,
        },
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("tessera-debug-{site}.json")));
    let text = serde_json::to_string_pretty(&bundle)?;
    std::fs::write(&out, text + "\n").with_context(|| format!("{}", out.display()))?;
    let releases: usize = bundle
        .ledger
        .summary
        .iter()
        .flat_map(|s| &s.plans)
        .flat_map(|p| p.releases.values())
        .sum();
    println!(
        "debug bundle for site '{site}': {} (tessera {}, protocol {}; plan: {}; ledger: {})",
        out.display(),
        bundle.build.tessera,
        bundle.build.protocol,
        bundle.plan.as_ref().map_or_else(
            || "none given".to_string(),
            |p| format!(
                "'{}', {}",
                p.name,
                if p.conflicts.is_empty() {
                    "valid".to_string()
                } else {
                    format!("{} conflict(s)", p.conflicts.len())
                }
            )
        ),
        match &bundle.ledger.summary {
            None => format!("none at {}", bundle.ledger.path.display()),
            Some(s) => format!("{releases} release(s) under {} plan(s)", s.plans.len()),
        }
    );
    println!(
        "it holds configuration, versions and DP summaries only: no row, value, parameter or \
         query of this site"
    );
    Ok(())
}
