//! `tessera runs`, `tessera status` and `tessera privacy`: what a
//! coordinator's database says.

use std::path::PathBuf;

use anyhow::{Context, bail};
use tessera_coordinator::RunStore;
use tessera_coordinator::store::{OpenRoundRow, RoundRow};
use tessera_engine::report::RoundRecord;

use tessera_core::utc;

/// Arguments of `tessera runs`.
#[derive(Debug, clap::Args)]
pub struct RunsArgs {
    /// The coordinator's database.
    #[arg(long, global = true)]
    db: Option<PathBuf>,
    /// What to do (default: list).
    #[command(subcommand)]
    action: Option<RunsAction>,
}

/// `tessera runs list|show|compare|export`.
#[derive(Debug, clap::Subcommand)]
pub enum RunsAction {
    /// Every run the database holds.
    List,
    /// One run's record: plan, code version, each site's data fingerprint,
    /// metrics per round, privacy spent, artifacts.
    Show {
        /// The run (default: the newest).
        #[arg(long)]
        run: Option<String>,
        /// The record as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Two runs side by side: plan differences, metric curves, versions,
    /// privacy, data.
    Compare {
        /// Run A.
        a: String,
        /// Run B.
        b: String,
        /// Run B's database, where it is another.
        #[arg(long)]
        db_b: Option<PathBuf>,
    },
    /// Log a run to an MLflow tracking server: params (the plan's
    /// settings), metrics per round, tags (versions, data fingerprints),
    /// artifacts (the plan, the status document, and files given).
    Export {
        /// The run (default: the newest).
        #[arg(long)]
        run: Option<String>,
        /// The tracking server, http://HOST:PORT.
        #[arg(long)]
        mlflow: String,
        /// The experiment (default: the plan's name).
        #[arg(long)]
        experiment: Option<String>,
        /// A file to log as an artifact too (the coordinator's
        /// --model-out, a report, a plot); repeatable.
        #[arg(long = "artifact", value_name = "FILE")]
        artifacts: Vec<PathBuf>,
    },
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
    /// Print the whole status as one JSON document (see `status_json`).
    #[arg(long)]
    json: bool,
}

/// Arguments of `tessera privacy`.
#[derive(Debug, clap::Args)]
pub struct PrivacyArgs {
    /// The coordinator's database.
    #[arg(long)]
    db: PathBuf,
    /// The run (default: every run).
    #[arg(long)]
    run: Option<String>,
}

/// The database at `db`: a SQLite file, which must exist, or a
/// PostgreSQL URL (read without taking the coordinators' lease).
fn open(db: &std::path::Path) -> anyhow::Result<Box<dyn RunStore>> {
    Ok(tessera_coordinator::open_existing_store(db)?)
}

/// Prints each run's privacy ledger: every release, its DP event, and the
/// run's epsilon after it, against the plan's budgets; and each
/// participant's own epsilon (central releases plus its own local DP-SGD)
/// against its budget.
pub fn privacy(args: &PrivacyArgs) -> anyhow::Result<()> {
    let store = open(&args.db)?;
    let runs: Vec<_> = store
        .runs()?
        .into_iter()
        .filter(|r| args.run.as_ref().is_none_or(|id| &r.id == id))
        .collect();
    if runs.is_empty() {
        match &args.run {
            Some(id) => anyhow::bail!(
                "no run '{id}' in {}",
                tessera_coordinator::store::shown(&args.db)
            ),
            None => println!("no runs in {}", tessera_coordinator::store::shown(&args.db)),
        }
        return Ok(());
    }
    for run in runs {
        let unprotected: Vec<u32> = store
            .answered_queries(&run.id)?
            .iter()
            .filter(|a| !a.protected)
            .map(|a| a.release)
            .collect();
        if !unprotected.is_empty() {
            println!(
                "run {}: {} UNPROTECTED analytics release(s) (the plan's [analytics] dp = false, or its secure joins): \
                 analytics release(s) {}; no epsilon bounds what they reveal",
                run.id,
                unprotected.len(),
                unprotected
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let rows = store.privacy_ledger(&run.id)?;
        let plan = tessera_engine::Plan::from_toml(&run.plan, &run.id).ok();
        let privacy = plan.as_ref().map(|p| &p.privacy);
        if let Some(p) = privacy.filter(|p| p.site_metrics == tessera_privacy::SiteMetrics::Dp) {
            // The metrics' releases are in the rounds' records.
            let mut released = 0usize;
            let mut spent = 0.0f64;
            for RoundRow { record, .. } in store.rounds(&run.id)? {
                let record: tessera_engine::report::RoundRecord = serde_json::from_str(&record)
                    .with_context(|| format!("run {}: a damaged round record", run.id))?;
                if let Some(e) = record.metrics_epsilon {
                    released += 1;
                    spent = spent.max(e);
                }
            }
            let budget = p
                .metrics_epsilon
                .unwrap_or(tessera_privacy::metrics::DEFAULT_METRICS_EPSILON);
            println!(
                "run {} ({}): DP metrics, {released} evaluation(s) released, epsilon {spent:.4} \
                 of a budget of {budget} at delta {:e}, for one row of a site's test set",
                run.id, run.status, p.delta
            );
        }
        if rows.is_empty() && !privacy.is_some_and(|p| p.is_on()) {
            if privacy.is_none_or(|p| p.site_metrics != tessera_privacy::SiteMetrics::Dp) {
                println!("run {}: no differential privacy", run.id);
            }
            continue;
        }
        let delta = rows
            .last()
            .map(|r| r.delta)
            .or(privacy.map(|p| p.delta))
            .unwrap_or(f64::NAN);
        let budget = privacy.and_then(|p| p.budgets().run);
        let spent = rows.iter().map(|r| r.entry.run_epsilon).fold(0.0, f64::max);
        println!(
            "run {} ({}): {} DP, {} release(s), epsilon {spent:.4} spent at delta {delta:e}{}",
            run.id,
            run.status,
            privacy.map_or("central", |p| match p.mode {
                tessera_privacy::PrivacyMode::Local => "local",
                _ => "central",
            }),
            rows.len(),
            budget.map_or(String::new(), |b| format!(
                " of a budget of {b} ({:.4} left)",
                (b - spent).max(0.0)
            )),
        );
        // Each participant's own spend: the central releases plus its own
        // local ones, from the ledger as stored.
        let mut ledger = tessera_privacy::Ledger::new(tessera_privacy::Budgets {
            delta,
            run: budget,
            participants: privacy
                .map(|p| p.participant_budgets.clone())
                .unwrap_or_default(),
        });
        for row in &rows {
            ledger
                .restore(row.entry.clone())
                .with_context(|| format!("run {}: a damaged ledger entry", run.id))?;
        }
        let mut names: Vec<String> = store.participants(&run.id)?;
        names.extend(rows.iter().filter_map(|r| r.entry.participant.clone()));
        names.extend(ledger.budgets().participants.keys().cloned());
        names.sort();
        names.dedup();
        if !names.is_empty() {
            println!("  {:<14} {:>10} {:>10}", "participant", "epsilon", "budget");
        }
        for name in &names {
            let spent = ledger.participant_epsilon(name);
            let own = ledger.budgets().participants.get(name).copied();
            println!(
                "  {:<14} {:>10.4} {:>10}{}",
                name,
                spent,
                own.map_or("-".to_string(), |b| b.to_string()),
                own.map_or(String::new(), |b| format!(
                    " ({:.4} left)",
                    (b - spent).max(0.0)
                ))
            );
        }
        println!(
            "  {:>7}  {:<8} {:<14} {:>8} {:>6} {:>10} {:>10} {:>11} {:>7} {:>10}",
            "release",
            "kind",
            "participant",
            "q",
            "steps",
            "noise-mult",
            "clip-norm",
            "noise-std",
            "updates",
            "epsilon"
        );
        for row in &rows {
            println!(
                "  {:>7}  {:<8} {:<14} {:>8.4} {:>6} {:>10.4} {:>10.4} {:>11.3e} {:>7} {:>10.4}",
                row.entry.release,
                row.entry.kind,
                row.entry.participant.as_deref().unwrap_or("all"),
                row.entry.event.sampling_rate,
                row.entry.event.steps,
                row.entry.event.noise_multiplier,
                row.clip_norm,
                row.noise_std,
                row.updates,
                row.entry.run_epsilon
            );
        }
    }
    Ok(())
}

/// The run `id` of `store` (default: the newest).
fn run_of(
    store: &dyn RunStore,
    db: &std::path::Path,
    id: Option<&str>,
) -> anyhow::Result<tessera_coordinator::store::RunRow> {
    let runs = store.runs()?;
    match id {
        Some(id) => runs
            .into_iter()
            .find(|r| r.id == id)
            .with_context(|| format!("no run '{id}' in {}", tessera_coordinator::store::shown(db))),
        None => runs
            .into_iter()
            .next()
            .with_context(|| format!("no runs in {}", tessera_coordinator::store::shown(db))),
    }
}

pub fn runs(args: &RunsArgs) -> anyhow::Result<()> {
    let db = args
        .db
        .as_deref()
        .context("give the coordinator's database: --db FILE")?;
    let store = open(db)?;
    match &args.action {
        None | Some(RunsAction::List) => list(&*store, db),
        Some(RunsAction::Show { run, json }) => {
            let row = run_of(&*store, db, run.as_deref())?;
            let tracked = crate::tracking::from_store(&*store, &row)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&tracked)?);
            } else {
                crate::tracking::print(&tracked);
            }
            Ok(())
        }
        Some(RunsAction::Compare { a, b, db_b }) => {
            let row_a = run_of(&*store, db, Some(a))?;
            let tracked_a = crate::tracking::from_store(&*store, &row_a)?;
            let tracked_b = match db_b {
                Some(other) => {
                    let store_b = open(other)?;
                    let row_b = run_of(&*store_b, other, Some(b))?;
                    crate::tracking::from_store(&*store_b, &row_b)?
                }
                None => crate::tracking::from_store(&*store, &run_of(&*store, db, Some(b))?)?,
            };
            crate::tracking::print_comparison(&tracked_a, &tracked_b);
            Ok(())
        }
        Some(RunsAction::Export {
            run,
            mlflow,
            experiment,
            artifacts,
        }) => {
            let row = run_of(&*store, db, run.as_deref())?;
            let tracked = crate::tracking::from_store(&*store, &row)?;
            // The record, not the status document: that one holds the
            // audit log and exact example counts, which stay with the
            // coordinator.
            let mut files = vec![
                ("plan.toml".to_string(), row.plan.clone().into_bytes()),
                (
                    "record.json".to_string(),
                    serde_json::to_vec_pretty(&tracked)?,
                ),
            ];
            for path in artifacts {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .with_context(|| format!("--artifact {}: not a file", path.display()))?;
                if files.iter().any(|(n, _)| *n == name) {
                    bail!(
                        "--artifact {}: a second artifact named '{name}'",
                        path.display()
                    );
                }
                let bytes = std::fs::read(path)
                    .with_context(|| format!("--artifact {}", path.display()))?;
                files.push((name, bytes));
            }
            let exported = crate::mlflow::export(mlflow, experiment.as_deref(), &tracked, &files)?;
            crate::mlflow::say(mlflow, &exported);
            Ok(())
        }
    }
}

fn list(store: &dyn RunStore, db: &std::path::Path) -> anyhow::Result<()> {
    let runs = store.runs()?;
    if runs.is_empty() {
        println!("no runs in {}", tessera_coordinator::store::shown(db));
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
        Some(id) => runs.into_iter().find(|r| &r.id == id).with_context(|| {
            format!(
                "no run '{id}' in {}",
                tessera_coordinator::store::shown(&args.db)
            )
        })?,
        None => runs.into_iter().next().with_context(|| {
            format!("no runs in {}", tessera_coordinator::store::shown(&args.db))
        })?,
    };
    if args.json {
        let document = crate::status_json::document(&*store, &run)?;
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    let rounds = store.rounds(&run.id)?;
    // Times in the store are on the run clock: microseconds since the run's creation.
    let wall = |run_micros: u64| utc(run.created_unix_micros.saturating_add(run_micros));
    println!(
        "run {} ({}, {}, seed {}): {}, started {}",
        run.id,
        run.name,
        run.strategy,
        run.seed,
        run.status,
        utc(run.created_unix_micros)
    );
    println!("rounds closed: {} of {}", rounds.len(), run.rounds);
    if let Some(OpenRoundRow {
        round,
        cohort,
        opened,
    }) = store.open_round_of(&run.id)?
    {
        let accepted = store.updates(&run.id, round)?.len();
        println!(
            "round {round} open: {accepted} of {} updates accepted (opened {})",
            cohort.len(),
            wall(opened.0)
        );
    }
    if let Some(RoundRow {
        round,
        record,
        evaluated,
        ..
    }) = rounds.last()
    {
        let record: RoundRecord = serde_json::from_str(record).context("a damaged round record")?;
        if *evaluated {
            println!(
                "round {round}: {}; accuracy {:.4} on {} test rows, mean of sites {:.4}; {} accepted, {} stragglers, {} dropped, {} rejected",
                record.status,
                record.accuracy,
                record.n_test,
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
    if let Some(view) = store.live_view(&run.id)? {
        for line in crate::live::lines(&view) {
            println!("{line}");
        }
    }
    let audit = store.audit_log(&run.id)?;
    if !audit.is_empty() {
        println!("last {} audit entries:", args.audit.min(audit.len()));
        for entry in audit.iter().rev().take(args.audit).rev() {
            println!(
                "  {}  {:>10.3}s  {:<14} {:<16} {:<9} {}",
                wall(entry.at_micros),
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
