//! A run's lifecycle from the command line: `tessera stop` and `tessera
//! abort` (written into the coordinator's database, which a running
//! coordinator reads every second), and the signals (SIGTERM, SIGINT) that
//! stop a coordinator or a participant gracefully.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use tessera_coordinator::{Control, ControlRow, RunStatus, RunStore, SqliteStore};

/// Arguments of `tessera stop`.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The coordinator's database.
    #[arg(long)]
    db: PathBuf,
    /// Why, recorded in the audit log and told to the sites.
    #[arg(long, default_value = "")]
    reason: String,
    /// Seconds to wait for the run to end (0: return at once).
    #[arg(long, default_value_t = 0.0)]
    wait: f64,
}

/// Arguments of `tessera abort`.
#[derive(Debug, clap::Args)]
pub struct AbortArgs {
    /// The coordinator's database.
    #[arg(long)]
    db: PathBuf,
    /// Why, recorded in the audit log and told to the sites.
    #[arg(long, default_value = "")]
    reason: String,
}

/// The running run of `db`, and the store, opened for writing.
fn running(
    db: &std::path::Path,
) -> anyhow::Result<(Box<dyn RunStore>, tessera_coordinator::store::RunRow)> {
    // Refuse a path that is not a database before creating anything.
    let store = tessera_coordinator::open_existing_store(db)?;
    let store: Box<dyn RunStore> = if db.to_str().is_some_and(tessera_coordinator::is_postgres) {
        store
    } else {
        drop(store);
        Box::new(SqliteStore::open(db)?)
    };
    match store.unfinished_run()? {
        Some(run) => Ok((store, run)),
        None => match store.runs()?.into_iter().next() {
            Some(newest) => bail!(
                "no running run in {}: the newest, {}, is {}",
                tessera_coordinator::store::shown(db),
                newest.id,
                newest.status
            ),
            None => bail!("no run in {}", tessera_coordinator::store::shown(db)),
        },
    }
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// `tessera stop`: the run ends once its open round closes, keeping that
/// round's model; its sites are told it finished.
pub fn stop(args: &StopArgs) -> anyhow::Result<()> {
    if !(args.wait.is_finite() && (0.0..1e6).contains(&args.wait)) {
        bail!(
            "--wait must be a number of seconds from 0, got {}",
            args.wait
        );
    }
    let (store, run) = running(&args.db)?;
    let open = store.open_round_of(&run.id)?.map(|r| r.round);
    store.request(
        &run.id,
        &ControlRow {
            action: Control::Stop,
            reason: args.reason.clone(),
            at_unix_micros: now_micros(),
        },
    )?;
    match open {
        Some(round) => println!(
            "stop requested for run {}: it ends once round {round} closes",
            run.id
        ),
        None => println!(
            "stop requested for run {}: it ends once the next round closes",
            run.id
        ),
    }
    if args.wait == 0.0 {
        println!(
            "a running coordinator reads the request within a second; a stopped one when it starts again"
        );
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.wait);
    loop {
        let status = tessera_coordinator::open_existing_store(&args.db)?
            .runs()?
            .into_iter()
            .find(|r| r.id == run.id)
            .map(|r| r.status);
        match status.as_deref().and_then(RunStatus::parse) {
            Some(RunStatus::Running) | None => {}
            Some(status) => {
                println!("run {} is {}", run.id, status.as_str());
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "run {} is still running after {}s: is its coordinator running? \
                 `tessera abort --db {}` ends it at once",
                run.id,
                args.wait,
                tessera_coordinator::store::shown(&args.db)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `tessera abort`: the run ends now and never resumes, whether its
/// coordinator is running (it tells its sites and stops within seconds) or
/// gone for good.
pub fn abort(args: &AbortArgs) -> anyhow::Result<()> {
    let (store, run) = running(&args.db)?;
    let control = ControlRow {
        action: Control::Abort,
        reason: args.reason.clone(),
        at_unix_micros: now_micros(),
    };
    store.write(&mut |tx| {
        tx.put_control(&run.id, &control)?;
        tx.set_run_status(&run.id, RunStatus::Aborted)
    })?;
    let closed = store.rounds(&run.id)?.len();
    println!(
        "run {} aborted after {closed} closed rounds of {}; a running coordinator tells its sites and stops within seconds",
        run.id, run.rounds
    );
    Ok(())
}

/// The first SIGTERM or SIGINT (Ctrl-C) this process receives: its name.
/// The handlers are installed when this is called (in a Tokio runtime's
/// context), not when the future is first polled: a signal sent as soon as
/// the process says it is listening takes the process's own way out, not
/// the default one that ends it at once.
pub fn termination() -> impl std::future::Future<Output = &'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        match (term, int) {
            (Some(mut term), Some(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            (Some(mut term), None) => {
                term.recv().await;
                "SIGTERM"
            }
            (None, Some(mut int)) => {
                int.recv().await;
                "SIGINT"
            }
            (None, None) => std::future::pending().await,
        }
    }
}

/// A process stopped by a signal; it exits with 128 + the signal's number.
#[derive(Debug)]
pub struct Signalled {
    /// `SIGTERM` or `SIGINT`.
    pub signal: &'static str,
    /// What was done about it.
    pub what: String,
}

impl std::fmt::Display for Signalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped by {}: {}", self.signal, self.what)
    }
}

impl std::error::Error for Signalled {}

/// The exit status for a stop by `signal`: 128 + its number.
pub fn signal_status(signal: &str) -> u8 {
    match signal {
        "SIGINT" => 130,
        _ => 143,
    }
}
