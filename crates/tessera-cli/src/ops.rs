//! `tessera runs` and `tessera status`: what a coordinator's database says.

use std::path::PathBuf;

use anyhow::Context;
use tessera_coordinator::Store;
use tessera_engine::report::RoundRecord;

/// Arguments of `tessera runs`.
#[derive(Debug, clap::Args)]
pub struct RunsArgs {
    /// The coordinator's database.
    #[arg(long)]
    db: PathBuf,
}

/// Arguments of `tessera status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The coordinator's database.
    #[arg(long)]
    db: PathBuf,
    /// The run (default: the newest).
    #[arg(long)]
    run: Option<String>,
    /// Audit entries to show.
    #[arg(long, default_value_t = 10)]
    audit: usize,
}

fn open(db: &std::path::Path) -> anyhow::Result<Store> {
    Ok(Store::open_existing(db)?)
}

pub fn runs(args: &RunsArgs) -> anyhow::Result<()> {
    let store = open(&args.db)?;
    let runs = store.runs()?;
    if runs.is_empty() {
        println!("no runs in {}", args.db.display());
        return Ok(());
    }
    println!(
        "{:<32} {:<20} {:<10} {:>6} {:>8}  status",
        "run", "plan", "strategy", "seed", "rounds"
    );
    for run in runs {
        let closed = store.rounds(&run.id)?.len();
        println!(
            "{:<32} {:<20} {:<10} {:>6} {:>8}  {}",
            run.id,
            run.name,
            run.strategy,
            run.seed,
            format!("{closed}/{}", run.rounds),
            run.status
        );
    }
    Ok(())
}

pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let store = open(&args.db)?;
    let runs = store.runs()?;
    let run = match &args.run {
        Some(id) => runs
            .into_iter()
            .find(|r| &r.id == id)
            .with_context(|| format!("no run '{id}' in {}", args.db.display()))?,
        None => runs
            .into_iter()
            .next()
            .with_context(|| format!("no runs in {}", args.db.display()))?,
    };
    let rounds = store.rounds(&run.id)?;
    println!(
        "run {} ({}, {}, seed {}): {}",
        run.id, run.name, run.strategy, run.seed, run.status
    );
    println!("rounds closed: {} of {}", rounds.len(), run.rounds);
    if let Some((round, cohort, _)) = store.open_round_of(&run.id)? {
        let accepted = store.updates(&run.id, round)?.len();
        println!(
            "round {round} open: {accepted} of {} updates accepted",
            cohort.len()
        );
    }
    if let Some((round, _, record, evaluated)) = rounds.last() {
        let record: RoundRecord = serde_json::from_str(record).context("a damaged round record")?;
        if *evaluated {
            println!(
                "round {round}: {}; accuracy {:.4}, mean of sites {:.4}; {} accepted, {} stragglers, {} dropped, {} rejected",
                record.status,
                record.accuracy,
                record.mean_site_accuracy,
                record.accepted,
                record.stragglers,
                record.dropped,
                record.rejected
            );
        } else {
            println!("round {round}: {}; evaluation in progress", record.status);
        }
    }
    let participants = store.participants(&run.id)?;
    println!(
        "participants ({}): {}",
        participants.len(),
        participants.join(", ")
    );
    let audit = store.audit_log(&run.id)?;
    if !audit.is_empty() {
        println!("last {} audit entries:", args.audit.min(audit.len()));
        for entry in audit.iter().rev().take(args.audit).rev() {
            println!(
                "  {:>10.3}s  {:<14} {:<16} {:<9} {}",
                entry.at_micros as f64 / 1e6,
                entry.site,
                entry.action,
                entry.outcome,
                entry.detail
            );
        }
    }
    Ok(())
}
