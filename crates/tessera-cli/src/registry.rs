//! `tessera models`: the model registry in a coordinator's database.
//! `register` takes a run's model at a round as the next version of a
//! named model, a candidate, with its lineage (run, round, sites, privacy
//! spent, data fingerprints, schema version, parent version, code version);
//! `list` and `show` read it; `promote` moves a version to canary or
//! production (the production version it replaces archived), `archive`
//! retires one, and `rollback` returns the production version before.
//! Each change is an append-only event with its reason and evidence.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::json;
use tessera_coordinator::store::{NewVersion, Stage, VersionRow};
use tessera_coordinator::{RunStore, SqliteStore};

/// Arguments of `tessera models`.
#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    /// The coordinator's database (it must exist).
    #[arg(long, global = true)]
    db: Option<PathBuf>,
    #[command(subcommand)]
    action: ModelsAction,
}

/// What `tessera models` does.
#[derive(Debug, clap::Subcommand)]
pub enum ModelsAction {
    /// Register a run's model as the next version of NAME, a candidate.
    Register {
        /// The model's name (letters, digits, '-', '_', '.').
        #[arg(long)]
        name: String,
        /// The run (default: the newest).
        #[arg(long)]
        run: Option<String>,
        /// The round whose model (default: the run's last).
        #[arg(long)]
        round: Option<u32>,
        /// The version it follows (default: NAME's production version).
        #[arg(long)]
        parent: Option<u32>,
    },
    /// Every version, its stage, run and round.
    List {
        /// Only this model.
        #[arg(long)]
        name: Option<String>,
    },
    /// A version's lineage and its model's history of stages.
    Show {
        /// The model.
        #[arg(long)]
        name: String,
        /// The version (default: the production one, else the newest).
        #[arg(long)]
        version: Option<u32>,
        /// As one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Move a version to canary or production (the production version it
    /// replaces is archived).
    Promote {
        /// The model.
        #[arg(long)]
        name: String,
        /// The version.
        #[arg(long)]
        version: u32,
        /// canary or production.
        #[arg(long)]
        to: String,
        /// Why (kept with the change).
        #[arg(long, default_value = "promoted by its operator")]
        reason: String,
        /// A file whose text is the evidence (JSON or text, at most 1 MiB).
        #[arg(long)]
        evidence: Option<PathBuf>,
    },
    /// Retire a version.
    Archive {
        /// The model.
        #[arg(long)]
        name: String,
        /// The version.
        #[arg(long)]
        version: u32,
        /// Why.
        #[arg(long, default_value = "archived by its operator")]
        reason: String,
    },
    /// Return NAME's production version before the current one to
    /// production, archiving the current one.
    Rollback {
        /// The model.
        #[arg(long)]
        name: String,
        /// Why (kept with the change).
        #[arg(long)]
        reason: String,
        /// A file whose text is the evidence (JSON or text, at most 1 MiB).
        #[arg(long)]
        evidence: Option<PathBuf>,
    },
}

pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A model name as the registry takes it.
fn checked_name(name: &str) -> anyhow::Result<&str> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!(
            "model name '{}': 1 to 64 letters, digits, '-', '_' or '.'",
            tessera_core::shown(name, 80)
        );
    }
    Ok(name)
}

fn checked_reason(reason: &str) -> anyhow::Result<&str> {
    // Control and direction-changing characters would let a reason show
    // other than it reads in `models show` (a right-to-left override).
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
    };
    if reason.trim().is_empty() || reason.chars().count() > 1000 || reason.chars().any(hidden) {
        bail!(
            "--reason: give 1 to 1000 characters on one line, without control or \
             direction-changing characters"
        );
    }
    Ok(reason)
}

fn evidence(path: Option<&Path>) -> anyhow::Result<String> {
    use std::io::Read;
    let Some(path) = path else {
        return Ok(String::new());
    };
    // A folder or a pipe is not a file's text (opening a pipe would block):
    // refused before it is opened.
    if !std::fs::metadata(path)
        .with_context(|| format!("--evidence {}", path.display()))?
        .is_file()
    {
        bail!("--evidence {}: not a regular file", path.display());
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("--evidence {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take((1 << 20) + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("--evidence {}", path.display()))?;
    if bytes.len() > 1 << 20 {
        bail!("--evidence {}: larger than 1 MiB", path.display());
    }
    String::from_utf8(bytes)
        .with_context(|| format!("--evidence {}: not UTF-8 text", path.display()))
}

pub fn run(args: &ModelsArgs) -> anyhow::Result<()> {
    let db = args
        .db
        .as_deref()
        .context("give the coordinator's database: --db FILE")?;
    if !db.exists() {
        bail!("{}: no such database", db.display());
    }
    // Reading opens the database read-only: nothing is created or changed.
    let read_only = || -> anyhow::Result<Option<SqliteStore>> {
        let store = SqliteStore::open_existing(db)?;
        if !store.has_registry()? {
            println!("no models registered in {}", db.display());
            return Ok(None);
        }
        Ok(Some(store))
    };
    match &args.action {
        ModelsAction::List { name } => match read_only()? {
            Some(store) => list(&store, db, name.as_deref()),
            None => Ok(()),
        },
        ModelsAction::Show {
            name,
            version,
            json,
        } => match read_only()? {
            Some(store) => show(&store, name, *version, *json),
            None => Ok(()),
        },
        action => change(&SqliteStore::open(db)?, db, action),
    }
}

fn change(store: &SqliteStore, db: &Path, action: &ModelsAction) -> anyhow::Result<()> {
    match action {
        ModelsAction::Register {
            name,
            run,
            round,
            parent,
        } => register(
            store,
            db,
            checked_name(name)?,
            run.as_deref(),
            *round,
            *parent,
        ),
        ModelsAction::List { .. } | ModelsAction::Show { .. } => {
            bail!("listing and showing read the registry, they change nothing")
        }
        ModelsAction::Promote {
            name,
            version,
            to,
            reason,
            evidence: file,
        } => {
            let to: Stage = to.parse().map_err(anyhow::Error::msg)?;
            if !matches!(to, Stage::Canary | Stage::Production) {
                bail!("--to {to}: promote to canary or production (archive retires a version)");
            }
            let evidence = evidence(file.as_deref())?;
            store.set_stage(
                name,
                *version,
                to,
                checked_reason(reason)?,
                &evidence,
                now_micros(),
            )?;
            println!("model '{name}' version {version} is now {to}");
            Ok(())
        }
        ModelsAction::Archive {
            name,
            version,
            reason,
        } => {
            store.set_stage(
                name,
                *version,
                Stage::Archived,
                checked_reason(reason)?,
                "",
                now_micros(),
            )?;
            println!("model '{name}' version {version} is now archived");
            Ok(())
        }
        ModelsAction::Rollback {
            name,
            reason,
            evidence: file,
        } => {
            let evidence = evidence(file.as_deref())?;
            let (from, to) =
                store.roll_back(name, checked_reason(reason)?, &evidence, now_micros())?;
            println!(
                "model '{name}': version {from} rolled back and archived; version {to} is in \
                 production again"
            );
            Ok(())
        }
    }
}

fn list(store: &SqliteStore, db: &Path, name: Option<&str>) -> anyhow::Result<()> {
    let versions = store.versions(name)?;
    if versions.is_empty() {
        println!("no models registered in {}", db.display());
        return Ok(());
    }
    println!(
        "{:<24} {:>7}  {:<10}  {:<32} {:>5}  {:<16}  registered",
        "model", "version", "stage", "run", "round", "parameters"
    );
    for v in versions {
        println!(
            "{:<24} {:>7}  {:<10}  {:<32} {:>5}  {:<16}  {}",
            v.name,
            v.version,
            v.stage,
            v.run_id,
            v.round,
            v.params_sha256.get(..16).unwrap_or(&v.params_sha256),
            tessera_core::utc(v.created_unix_micros)
        );
    }
    Ok(())
}

fn register(
    store: &SqliteStore,
    db: &Path,
    name: &str,
    run: Option<&str>,
    round: Option<u32>,
    parent: Option<u32>,
) -> anyhow::Result<()> {
    let runs = store.runs()?;
    let row = match run {
        Some(id) => runs
            .into_iter()
            .find(|r| r.id == id)
            .with_context(|| format!("no run '{id}' in {}", db.display()))?,
        None => runs
            .into_iter()
            .next()
            .with_context(|| format!("no runs in {}", db.display()))?,
    };
    // A multi-task run's model stacks one head per task: no one model to
    // serve.
    // Read as a table: a plan this build cannot read is refused, not taken
    // for a one-model run.
    let stored = toml::from_str::<toml::Table>(&row.plan)
        .with_context(|| format!("run '{}': its stored plan cannot be read", row.id))?;
    if stored.contains_key("multitask") {
        bail!(
            "run '{}' is a multi-task run: its model stacks a body and one head per task, and \
             the registry keeps models one site serves; each site's participant writes its \
             task's model (--model-out)",
            row.id
        );
    }
    // A running run's model may still change its round's meaning (a
    // resumed round) and an aborted one ended for a reason: only a
    // finished run's models are registered.
    if row.status != "finished" && row.status != "stopped" {
        bail!(
            "run '{}' is {}: register the model of a run that finished (or was stopped after \
             a round)",
            row.id,
            row.status
        );
    }
    let latest = store
        .latest_model_version(&row.id)?
        .filter(|v| *v > 0)
        .with_context(|| format!("run '{}' has no round's model yet", row.id))?;
    let round = round.unwrap_or(latest);
    if round == 0 || round > latest {
        bail!(
            "run '{}' has the models of rounds 1 to {latest}; --round {round} is not one",
            row.id
        );
    }
    let params = store
        .model(&row.id, round)?
        .with_context(|| format!("run '{}' keeps no model of round {round}", row.id))?;
    let tracked = crate::tracking::from_store(store, &row)?;
    let existing = store.versions(Some(name))?;
    let parent = match parent {
        Some(p) if existing.iter().any(|v| v.version == p) => Some(p),
        Some(p) => bail!("model '{name}' has no version {p} to follow (--parent)"),
        None => existing
            .iter()
            .find(|v| v.stage == Stage::Production)
            .map(|v| v.version),
    };
    let schema_version = toml::from_str::<tessera_engine::Plan>(&row.plan)
        .ok()
        .and_then(|p| p.data.schema.version);
    let sha = tessera_engine::model_file::parameters_sha256(&params);
    let lineage = json!({
        "run": row.id,
        "plan": row.name,
        "plan_sha256": tracked.plan_sha256,
        "round": round,
        "rounds_planned": row.rounds,
        "run_status": row.status,
        "sites_joined": store.participants(&row.id)?,
        "privacy_to_round": privacy_to(&store.privacy_ledger(&row.id)?, round),
        "data_fingerprints": tracked.sites,
        "schema_version": schema_version,
        "parent_version": parent,
        "code_version": tracked.code_version,
        "parameters_sha256": sha,
    });
    let version = store.register_version(&NewVersion {
        name,
        run_id: &row.id,
        round,
        params: &params,
        params_sha256: &sha,
        lineage: &serde_json::to_string(&lineage)?,
        parent,
        at_unix_micros: now_micros(),
    })?;
    println!(
        "model '{name}' version {version}: run {} round {round}, a candidate{}",
        row.id,
        parent.map_or(String::new(), |p| format!(" (follows version {p})"))
    );
    Ok(())
}

/// The privacy spent on the model up to and including `round`: the run
/// epsilon its releases reached (training's releases are numbered by round;
/// analytics answers, numbered by query and spent after training, are not
/// the model's), at that release's delta.
fn privacy_to(
    ledger: &[tessera_coordinator::store::LedgerRow],
    round: u32,
) -> Option<serde_json::Value> {
    ledger
        .iter()
        .filter(|r| r.entry.kind != "analytics" && r.entry.release <= round)
        .max_by(|a, b| a.entry.run_epsilon.total_cmp(&b.entry.run_epsilon))
        .map(|r| json!({"epsilon": r.entry.run_epsilon, "delta": r.delta}))
}

fn show(store: &SqliteStore, name: &str, version: Option<u32>, json: bool) -> anyhow::Result<()> {
    let versions = store.versions(Some(name))?;
    let chosen: &VersionRow = match version {
        Some(v) => versions
            .iter()
            .find(|x| x.version == v)
            .with_context(|| format!("model '{name}' has no version {v}"))?,
        None => versions
            .iter()
            .find(|x| x.stage == Stage::Production)
            .or(versions.last())
            .with_context(|| format!("no model '{name}' is registered"))?,
    };
    let events: Vec<_> = store
        .stage_events(Some(name))?
        .into_iter()
        .filter(|e| e.version == chosen.version)
        .collect();
    let lineage: serde_json::Value =
        serde_json::from_str(&chosen.lineage).context("a damaged lineage in the registry")?;
    if json {
        let doc = json!({
            "name": chosen.name,
            "version": chosen.version,
            "stage": chosen.stage.as_str(),
            "run": chosen.run_id,
            "round": chosen.round,
            "parameters_sha256": chosen.params_sha256,
            "parent": chosen.parent,
            "registered_unix_micros": chosen.created_unix_micros,
            "lineage": lineage,
            "history": events.iter().map(|e| json!({
                "from": e.from, "to": e.to.as_str(), "reason": e.reason,
                "evidence": e.evidence, "at_unix_micros": e.at_unix_micros,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "model '{}' version {}: {}, run {} round {}, parameters sha256 {}",
        chosen.name,
        chosen.version,
        chosen.stage,
        chosen.run_id,
        chosen.round,
        chosen.params_sha256
    );
    println!("lineage:");
    if let Some(map) = lineage.as_object() {
        for (k, v) in map {
            println!("  {k:<18} {v}");
        }
    }
    println!("history:");
    for e in &events {
        println!(
            "  {}  {} -> {}: {}{}",
            tessera_core::utc(e.at_unix_micros),
            e.from,
            e.to,
            e.reason,
            if e.evidence.is_empty() {
                String::new()
            } else {
                format!(" (evidence: {})", tessera_core::shown(&e.evidence, 200))
            }
        );
    }
    Ok(())
}
