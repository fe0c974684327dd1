//! `tessera dry-run`: the coordinator's preflight. The plan's sites join
//! as for a run and take their data through the data agreement (each
//! site's schema, column kinds, levels and statistics; its version and
//! capabilities at the join); the run ends there, before any model is
//! trained, and each site's outcome is printed from the audit log: agreed,
//! refused at its join, withdrew (with the reason it gave), or not joined.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use tessera_coordinator::{CoordinatorConfig, RunStore, SqliteStore};
use tessera_engine::Plan;

/// Arguments of `tessera dry-run`.
#[derive(Debug, clap::Args)]
pub struct DryRunArgs {
    /// The plan.
    #[arg(long)]
    plan: PathBuf,
    /// A database for the dry run's record (its audit log): one of its
    /// own, not the run's (a dry run is a run that ends at the agreement).
    #[arg(long)]
    db: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Mutual TLS with the files of this folder, as for `tessera coordinator`.
    #[arg(long, conflicts_with = "insecure")]
    tls: Option<PathBuf>,
    /// Plain-text connections without authentication: for local experiments only.
    #[arg(long)]
    insecure: bool,
    /// Seconds to wait for every site to join and agree.
    #[arg(long, default_value_t = 300.0)]
    wait: f64,
}

/// Runs `tessera dry-run`; fails when the dry run did.
pub fn run(args: &DryRunArgs) -> anyhow::Result<()> {
    if !args.insecure && args.tls.is_none() {
        bail!(
            "give --tls DIR (mutual TLS, see `tessera ca`) or --insecure (local experiments only)"
        );
    }
    if !(args.wait.is_finite() && args.wait > 0.0 && args.wait <= 86_400.0) {
        bail!("--wait is a number of seconds, above 0 and at most a day");
    }
    if args.db.exists() {
        bail!(
            "{} exists: a dry run keeps its record in a database of its own (give a new file)",
            args.db.display()
        );
    }
    let plan_text = std::fs::read_to_string(&args.plan)
        .with_context(|| format!("{}: cannot read", args.plan.display()))?;
    let plan = Plan::from_toml(&plan_text, &args.plan.display().to_string())?;
    if args.insecure {
        crate::deploy::insecure_warning("the dry run's coordinator");
    }
    let config = CoordinatorConfig {
        plan,
        plan_text,
        db: args.db.clone(),
        listen: args.listen,
        liveness: Duration::from_secs(30),
        tls: args.tls.as_deref().map(tessera_tls::TlsFiles::in_dir),
        metrics: None,
        new_run: false,
        initial: None,
        rollout: None,
        dry_run: Some(Duration::from_secs_f64(args.wait)),
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let _context = runtime.enter();
    runtime.block_on(tessera_coordinator::serve_until(
        config,
        |address| crate::logging::say(tracing::Level::INFO, &format!("listening on {address}")),
        crate::lifecycle::termination(),
    ))?;
    report(&args.db)
}

/// Each site's outcome and the dry run's, from the audit log.
fn report(db: &std::path::Path) -> anyhow::Result<()> {
    let store = SqliteStore::open_existing(db)?;
    let run = store.runs()?.into_iter().next().context("no run")?;
    let plan = Plan::from_toml(&run.plan, "the dry run's plan")?;
    let audit = store.audit_log(&run.id)?;
    let joined = store.participants(&run.id)?;
    let mut sites: Vec<String> = plan.data.sites.iter().map(|s| s.name.clone()).collect();
    for row in &audit {
        if row.site != "-" && !sites.contains(&row.site) {
            sites.push(row.site.clone());
        }
    }
    let outcome = audit
        .iter()
        .rev()
        .find(|r| r.action == "dry-run" && r.outcome != "opened")
        .context("the dry run ended without an outcome")?;
    let passed = outcome.outcome == "passed";
    for site in &sites {
        let last = |action: &str| {
            audit
                .iter()
                .rev()
                .find(|r| &r.site == site && r.action == action)
        };
        let line = if let Some(w) = last("withdraw") {
            format!("withdrew: {}", w.detail)
        } else if joined.contains(site) {
            if passed {
                "agreed".to_string()
            } else {
                "joined; no problem found before the dry run ended".to_string()
            }
        } else if let Some(refused) = audit
            .iter()
            .rev()
            .find(|r| &r.site == site && r.outcome == "refused")
        {
            format!("refused at its {}: {}", refused.action, refused.detail)
        } else {
            "did not join".to_string()
        };
        println!("site '{site}': {line}");
    }
    println!("dry run {}: {}", outcome.outcome, outcome.detail);
    if !passed {
        bail!("the dry run failed: {}", outcome.detail);
    }
    Ok(())
}
