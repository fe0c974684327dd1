//! `tessera coordinator`, `tessera participant`, `tessera aggregator` and `tessera peer`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tessera_coordinator::CoordinatorConfig;
use tessera_engine::Plan;
use tessera_participant::ParticipantConfig;

use crate::logging::say;
use crate::paths::{Input, check_outputs, db_inputs, plan_data_inputs, tls_inputs};
use tracing::Level;

/// Arguments of `tessera coordinator`.
#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    /// The plan (TOML).
    #[arg(long)]
    plan: PathBuf,
    /// Changes one plan setting, SECTION.KEY=VALUE at any depth (repeatable;
    /// the value as TOML, a bare word as text; nothing after `=` gives the
    /// key its default); sites receive the plan as changed.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    settings: Vec<String>,
    /// The database: a SQLite file (a restart with the same file resumes the
    /// run), or a PostgreSQL URL, postgres://USER@HOST/DB, which several
    /// coordinators can share: one leads, the others wait as standbys and
    /// the first to take its lease resumes the run where it stopped.
    #[arg(long)]
    db: PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:7000 (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Mutual TLS with the files of this folder (cert.pem, key.pem, ca.pem,
    /// crl.pem), as `tessera ca issue --coordinator` writes them.
    #[arg(long, conflicts_with = "insecure")]
    tls: Option<PathBuf>,
    /// Plain-text connections without authentication: for local experiments only.
    #[arg(long)]
    insecure: bool,
    /// Seconds of silence after which a participant counts as gone.
    #[arg(long, default_value_t = 30.0)]
    liveness: f64,
    /// Report file (JSON) written when the run is over, replaced if it exists.
    #[arg(long)]
    report: Option<PathBuf>,
    /// File for the final model, self-describing (see `tessera model
    /// inspect`), replaced if it exists.
    #[arg(long)]
    model_out: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Start a new run even though the database's newest run has ended
    /// (finished, stopped or aborted); without it such a database is refused.
    #[arg(long)]
    new_run: bool,
    /// Serve a live dashboard of the run at http://ADDR/ (and its data at
    /// /api/status), e.g. 127.0.0.1:7080; nowhere unless given.
    #[arg(long, value_name = "ADDR")]
    dashboard: Option<SocketAddr>,
    /// With --dashboard: the federation's feature catalog (`tessera
    /// catalog --json`), shown at /catalog (data at /api/catalog) with each
    /// feature's runs from this coordinator's database.
    #[arg(long, value_name = "FILE", requires = "dashboard")]
    catalog: Option<PathBuf>,
    /// Continual learning: start the run from this model file (an earlier
    /// run's --model-out, of the plan's model, on data of the same
    /// features and classes, checked when the sites agree their layout)
    /// instead of the plan's initial model. Flat synchronous rounds, a
    /// built-in model, a FedAvg-family strategy.
    #[arg(long, value_name = "FILE")]
    continue_from: Option<PathBuf>,
}

/// Arguments of `tessera participant`.
#[derive(Debug, clap::Args)]
pub struct ParticipantArgs {
    /// The coordinator's URL, e.g. http://127.0.0.1:7000. Several (repeated,
    /// or separated by commas): coordinators sharing one PostgreSQL
    /// database, tried in turn when the one in use cannot be reached.
    #[arg(long, value_delimiter = ',', required = true)]
    coordinator: Vec<String>,
    /// This site's name.
    #[arg(long)]
    site: String,
    /// This site's data file (CSV, read as the plan's schema says), relative
    /// to the working folder; checked before the coordinator is called.
    /// Without it: the plan's file for this site, or the rows the plan
    /// generates (`[data.synthetic]`).
    #[arg(long)]
    data: Option<PathBuf>,
    /// This site's mapping file (TOML): how its data file's own column
    /// names, codings and units become the plan's, applied as the file is
    /// read (see README, "Mapping a site's columns"). Needs --data.
    #[arg(long, requires = "data")]
    mapping: Option<PathBuf>,
    /// The plan's folder: the plan's relative paths (its data files, a split
    /// membership file) are read from there, and an absolute one only below
    /// it. Default: the folder of --expect-plan, else the working folder.
    #[arg(long)]
    plan_dir: Option<PathBuf>,
    /// Mutual TLS with the files of this folder (cert.pem, key.pem, ca.pem),
    /// as `tessera ca issue --site` writes them.
    #[arg(long, conflicts_with = "insecure")]
    tls: Option<PathBuf>,
    /// The coordinator's name in its certificate (default: the URL's host).
    #[arg(long, requires = "tls")]
    tls_domain: Option<String>,
    /// Plain-text connections without authentication: for local experiments only.
    #[arg(long)]
    insecure: bool,
    /// Seconds to keep trying to reach the coordinator before giving up.
    #[arg(long, default_value_t = 300.0)]
    give_up_after: f64,
    /// Fault injection for drills and tests: seconds to wait before sending each update.
    #[arg(long, default_value_t = 0.0)]
    pause_before_update: f64,
    /// The plan this site agreed to: refuse a coordinator whose plan differs
    /// (its privacy, secure aggregation and every other setting).
    #[arg(long, value_name = "PLAN")]
    expect_plan: Option<PathBuf>,
    /// Consent to send the value sets of columns the coordinator's plan
    /// declares categorical without their levels (implied by --expect-plan;
    /// without either, such a plan is refused).
    #[arg(long)]
    share_levels: bool,
    /// The most memory, in GB, this site gives the run: a plan whose model
    /// needs more here is refused before any model is built (the machine's
    /// available memory bounds it too).
    #[arg(long, value_name = "GB")]
    max_memory_gb: Option<f64>,
    /// At the end of the run, write the final global model here,
    /// self-describing with this site's standardisation (see `tessera model
    /// inspect`); replaced if it exists.
    #[arg(long)]
    model_out: Option<PathBuf>,
    /// Under a personalized strategy (`ditto`, `fedper`, `fedrep`) or
    /// `[personalization]` fine-tuning: at the end of the run, write this
    /// site's own model here (it never left the site); replaced if it exists.
    #[arg(long)]
    personal_model_out: Option<PathBuf>,
    /// At the end of the run, write this site's report here (JSON): the
    /// global model on this site's test rows against a model trained on this
    /// site's rows alone (and this site's personalized model, where the plan
    /// personalizes), and the privacy this site spent; replaced if it exists.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Consent to the plan's secure join NAME (`[[analytics.joins]]`;
    /// repeat for several): without it this site refuses the join, says why
    /// to the other site and the coordinator, and trains anyway.
    #[arg(long, value_name = "NAME")]
    consent_join: Vec<String>,
    /// Where each join's result and the transcript of what this site
    /// received (`join-NAME.json`) are written; default: the working folder.
    #[arg(long, value_name = "DIR")]
    join_out: Option<PathBuf>,
    /// This site's own privacy ledger (JSON): every release of its data
    /// (training rounds under DP, analytics answers), per plan, across runs
    /// and restarts, checked against the plan's [privacy] budgets before
    /// each, so that a coordinator whose ledger lies or is lost cannot ask
    /// past them; one process at a time keeps it. Default:
    /// tessera-ledger-SITE.json in the working folder.
    #[arg(long, value_name = "FILE")]
    ledger: Option<PathBuf>,
    /// Under a personalized strategy: this site's personal state (its
    /// personal model, head or mixing weight), saved after each training
    /// and read back when the participant starts again in the same run, so
    /// that a restart loses none of it. Default:
    /// tessera-state-SITE.bin in the working folder.
    #[arg(long, value_name = "FILE")]
    local_state: Option<PathBuf>,
    #[command(flatten)]
    continual: crate::continual::SiteContinualArgs,
    #[command(flatten)]
    rollout: crate::rollout::SiteRolloutArgs,
}

/// `--local-state`, or `tessera-state-SITE.bin` (the site's name as in
/// [`ledger_path`]).
fn local_state_path(args: &ParticipantArgs) -> PathBuf {
    args.local_state
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("tessera-state-{}.bin", safe_name(&args.site))))
}

/// `--ledger`, or `tessera-ledger-SITE.json` (the site's name with
/// anything but letters, digits, `.`, `-` and `_` replaced by `_`).
fn ledger_path(args: &ParticipantArgs) -> PathBuf {
    site_ledger(args.ledger.as_deref(), &args.site)
}

/// A site's privacy ledger: `given`, or the participant's default,
/// `tessera-ledger-SITE.json` in the working folder (every command that
/// charges or reads a site's ledger finds the same file).
pub(crate) fn site_ledger(given: Option<&std::path::Path>, site: &str) -> PathBuf {
    given.map_or_else(
        || PathBuf::from(format!("tessera-ledger-{}.json", safe_name(site))),
        std::path::Path::to_path_buf,
    )
}

/// `site` with anything but letters, digits, `.`, `-` and `_` replaced by `_`.
pub(crate) fn safe_name(site: &str) -> String {
    site.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Arguments of `tessera aggregator`.
#[derive(Debug, clap::Args)]
pub struct AggregatorArgs {
    /// The parent's URL (the coordinator, or the aggregator above), e.g. http://127.0.0.1:7000.
    #[arg(long)]
    upstream: String,
    /// Address the members connect to, e.g. 127.0.0.1:7100.
    #[arg(long)]
    listen: SocketAddr,
    /// This aggregator's name in the plan's `[topology]` (e.g. region-1).
    #[arg(long)]
    name: String,
    /// Its database (SQLite); a restart with the same file resumes its round.
    #[arg(long)]
    db: PathBuf,
    /// Mutual TLS toward the members: this aggregator's server files
    /// (`tessera ca issue --aggregator NAME --host HOST`).
    #[arg(long, conflicts_with = "insecure", requires = "upstream_tls")]
    tls: Option<PathBuf>,
    /// Mutual TLS toward the parent: a site's files naming this aggregator
    /// (`tessera ca issue --site NAME`).
    #[arg(long, conflicts_with = "insecure", requires = "tls")]
    upstream_tls: Option<PathBuf>,
    /// The parent's name in its certificate (default: the URL's host).
    #[arg(long, requires = "upstream_tls")]
    upstream_domain: Option<String>,
    /// Plain-text connections without authentication, both ways: for local experiments only.
    #[arg(long)]
    insecure: bool,
    /// Seconds of silence after which a member counts as gone.
    #[arg(long, default_value_t = 30.0)]
    liveness: f64,
    /// Seconds to keep trying to reach the parent before giving up.
    #[arg(long, default_value_t = 300.0)]
    give_up_after: f64,
    /// Report file (JSON) of this aggregator's rounds, written when the run
    /// is over, replaced if it exists.
    #[arg(long)]
    report: Option<PathBuf>,
    /// File for this aggregator's last regional model, replaced if it exists.
    #[arg(long)]
    model_out: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
}

/// Arguments of `tessera peer`.
#[derive(Debug, clap::Args)]
pub struct PeerArgs {
    /// The plan (TOML, `[topology] kind = "gossip"`); every peer runs the same.
    #[arg(long)]
    plan: PathBuf,
    /// This site's name.
    #[arg(long)]
    site: String,
    /// This site's data file, relative to the working folder. Without it:
    /// the plan's file for this site, or the rows the plan generates
    /// (`[data.synthetic]`).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Address the other peers connect to, e.g. 127.0.0.1:7400.
    #[arg(long)]
    listen: SocketAddr,
    /// Another site of the run and its URL, as NAME=URL; once per other site.
    #[arg(long = "peer", value_name = "NAME=URL")]
    peers: Vec<String>,
    /// Mutual TLS with this site's files (`tessera ca issue --site NAME`).
    #[arg(long, conflicts_with = "insecure")]
    tls: Option<PathBuf>,
    /// Plain-text connections without authentication: for local experiments only.
    #[arg(long)]
    insecure: bool,
    /// Seconds a neighbour may be unreachable before the others stop waiting
    /// for it and mix without it, until it rejoins after a restart; also how
    /// long a restarted peer waits for each neighbour to take it back.
    #[arg(long, default_value_t = 10.0)]
    liveness: f64,
    /// Seconds to wait for every peer during the data agreement.
    #[arg(long, default_value_t = 300.0)]
    give_up_after: f64,
    /// Report file (JSON): this site's own model each round, the neighbours
    /// it lost (`topology.lost`) and took back after a restart, and the round
    /// this peer rejoined at (`topology.rejoined`); replaced if it exists.
    #[arg(long)]
    report: Option<PathBuf>,
    /// File for this site's final model, replaced if it exists.
    #[arg(long)]
    model_out: Option<PathBuf>,
    /// Fault injection for drills and tests: seconds to pause after each round's training.
    #[arg(long, default_value_t = 0.0)]
    pause_each_round: f64,
}

pub fn insecure_warning(who: &str) {
    say(
        Level::WARN,
        &format!(
            "WARNING: {who} runs with --insecure: no encryption, no authentication; any process that can reach \
             it can take part. For local experiments only."
        ),
    );
}

pub(crate) fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    if !(value.is_finite() && value > 0.0 && value < 1e9) {
        bail!("{name} must be a positive number of seconds, got {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

pub fn coordinator(args: &CoordinatorArgs) -> anyhow::Result<()> {
    if !args.insecure && args.tls.is_none() {
        bail!(
            "give --tls DIR (mutual TLS, see `tessera ca`) or --insecure (local experiments only)"
        );
    }
    let mut plan_text = std::fs::read_to_string(&args.plan)
        .with_context(|| format!("{}: cannot read", args.plan.display()))?;
    let plan = Plan::from_toml_with(&plan_text, &args.plan.display().to_string(), &args.settings)?;
    if !args.settings.is_empty() {
        plan_text = toml::to_string(&plan).context("cannot write the changed plan")?;
    }
    if plan.model.kind.is_external() && args.model_out.is_some() {
        bail!(
            "--model-out writes a built-in model with its data layout; an external model's \
             final parameters are the database's last model version, and each site's \
             participant returns them to its learner's program"
        );
    }
    if plan.multitask.is_some() && args.model_out.is_some() {
        bail!(
            "--model-out writes one model, and a multi-task run has one per task (the shared \
             body and the task's head): each site's participant writes its task's model \
             (tessera participant --model-out)"
        );
    }
    let continued = args
        .continue_from
        .as_deref()
        .map(|path| crate::continual::deployed_from(path, &plan))
        .transpose()?;
    let mut inputs = vec![Input::new("the plan file", &args.plan)];
    inputs.extend(plan_data_inputs(&plan.data, &plan_dir(&args.plan)));
    inputs.extend(db_inputs(&args.db));
    inputs.extend(tls_inputs("--tls", args.tls.as_deref()));
    check_outputs(&outputs(&args.report, &args.model_out), &inputs)?;
    let liveness = liveness(args.liveness)?;
    if args.insecure {
        insecure_warning("the coordinator");
    }
    let (plan_for_model, plan_text_for_model) = (plan.clone(), plan_text.clone());
    let config = CoordinatorConfig {
        plan,
        plan_text,
        db: args.db.clone(),
        listen: args.listen,
        liveness,
        tls: args.tls.as_deref().map(tessera_tls::TlsFiles::in_dir),
        metrics: args.metrics,
        new_run: args.new_run,
        initial: continued.as_ref().map(|(initial, _)| initial.clone()),
        rollout: None,
        dry_run: None,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        // The dashboard's address is taken first: a bad one is refused
        // before the run is opened.
        let dashboard = match args.dashboard {
            Some(address) => Some(crate::dashboard::bind(address).await?),
            None => None,
        };
        let catalog = match &args.catalog {
            Some(path) => Some(std::sync::Arc::new(crate::catalog::read_document(path)?)),
            None => None,
        };
        let shared = tessera_coordinator::open(&config).await?;
        if let Some(listener) = dashboard {
            let bound = crate::dashboard::serve(listener, std::sync::Arc::clone(&shared), catalog)?;
            say(Level::INFO, &format!("dashboard at http://{bound}/"));
        }
        let listener = tessera_coordinator::bind(config.listen).await?;
        let served = tessera_coordinator::serve_shared_until(
            shared,
            listener,
            config.tls,
            config.metrics,
            |address| say(Level::INFO, &format!("listening on {address}")),
            crate::lifecycle::termination(),
        )
        .await?;
        anyhow::Ok(served)
    })?;
    write_outputs(&report, args.report.as_deref(), None)?;
    if let Some(path) = &args.model_out {
        let mut file =
            crate::model::of_coordinator(&plan_for_model, &plan_text_for_model, &args.db, &report)?;
        if let Some((_, parent)) = continued {
            file.header.lineage.parent = parent;
        }
        crate::model::write(path, &file)?;
        crate::model::warn_if_heads_stay_home(&plan_for_model, path);
    }
    let f = &report.final_metrics;
    // A run its operator stopped early says so.
    let stopped = tessera_coordinator::open_existing_store(&args.db)
        .and_then(|store| store.runs())
        .ok()
        .and_then(|runs| runs.into_iter().next())
        .is_some_and(|run| run.status == tessera_coordinator::RunStatus::Stopped.as_str());
    let ended = if stopped {
        "stopped by its operator after"
    } else {
        "finished"
    };
    println!("{ended} {} rounds: {}", report.rounds.len(), f.summary());
    if let Some(line) = tessera_engine::report::population_line(&report.population_changes) {
        println!("{line}");
    }
    Ok(())
}

/// A fault-injection pause: zero, or a positive number of seconds.
fn pause(name: &str, value: f64) -> anyhow::Result<Duration> {
    if value == 0.0 {
        Ok(Duration::ZERO)
    } else {
        seconds(name, value)
    }
}

pub fn liveness(value: f64) -> anyhow::Result<Duration> {
    let liveness = seconds("--liveness", value)?;
    if liveness < Duration::from_millis(500) {
        bail!("--liveness must be at least 0.5 seconds, got {value}");
    }
    Ok(liveness)
}

/// The folder the plan's relative paths are read from.
fn plan_dir(plan: &Path) -> PathBuf {
    plan.parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// A path given on the command line, made absolute against the working
/// folder, so that no other folder is ever put in front of it.
fn resolved(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| {
        format!(
            "{}: cannot resolve against the working folder",
            path.display()
        )
    })
}

/// `--report` and `--model-out`, where given.
fn outputs<'a>(
    report: &'a Option<PathBuf>,
    model_out: &'a Option<PathBuf>,
) -> Vec<(&'static str, &'a Path)> {
    let mut outputs = Vec::new();
    if let Some(path) = report {
        outputs.push(("--report", path.as_path()));
    }
    if let Some(path) = model_out {
        outputs.push(("--model-out", path.as_path()));
    }
    outputs
}

/// The report (JSON) and the final model, where asked for.
fn write_outputs(
    report: &tessera_engine::report::RunReport,
    report_path: Option<&Path>,
    model_path: Option<&Path>,
) -> anyhow::Result<()> {
    let sites = report.data.len().max(report.final_metrics.per_site.len());
    if let Some(path) = report_path {
        if sites > tessera_engine::report::SPLIT_ABOVE {
            // The per-site figures go beside it, as a simulation's.
            let per_site = path.with_extension("sites.jsonl");
            crate::simulate::write_report(&mut report.clone(), None, path, Some(&per_site))?;
        } else {
            let text = serde_json::to_string_pretty(report).context("cannot encode the report")?;
            write(path, text.as_bytes())?;
        }
    }
    if let Some(path) = model_path {
        write(
            path,
            &tessera_proto::encode_parameters(&report.final_parameters),
        )?;
    }
    Ok(())
}

pub fn aggregator(args: &AggregatorArgs) -> anyhow::Result<()> {
    if !args.insecure && args.tls.is_none() {
        bail!(
            "give --tls DIR and --upstream-tls DIR (mutual TLS, see `tessera ca`) or --insecure (local experiments only)"
        );
    }
    let mut inputs = db_inputs(&args.db);
    inputs.extend(tls_inputs("--tls", args.tls.as_deref()));
    inputs.extend(tls_inputs("--upstream-tls", args.upstream_tls.as_deref()));
    check_outputs(&outputs(&args.report, &args.model_out), &inputs)?;
    let liveness = liveness(args.liveness)?;
    if args.insecure {
        insecure_warning("the aggregator");
    }
    let config = tessera_aggregator::AggregatorConfig {
        upstream: args.upstream.clone(),
        name: args.name.clone(),
        listen: args.listen,
        db: args.db.clone(),
        liveness,
        tls: args.tls.as_deref().map(tessera_tls::TlsFiles::in_dir),
        upstream_tls: args
            .upstream_tls
            .as_deref()
            .map(tessera_tls::TlsFiles::in_dir),
        upstream_domain: args.upstream_domain.clone(),
        metrics: args.metrics,
        max_backoff: Duration::from_secs(2),
        give_up_after: seconds("--give-up-after", args.give_up_after)?,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime.block_on(tessera_aggregator::run(config, |address| {
        say(Level::INFO, &format!("listening on {address}"));
    }))?;
    write_outputs(&report, args.report.as_deref(), None)?;
    if let Some(path) = &args.model_out {
        // Its last regional model, described by the run in its database.
        crate::model::write(
            path,
            &crate::model::of_aggregator(&args.name, &args.db, &report)?,
        )?;
    }
    println!(
        "finished {} rounds as aggregator '{}': the parent's model on its sites' rows: accuracy {:.4}",
        report.rounds.len(),
        args.name,
        report.rounds.last().map_or(0.0, |r| r.accuracy),
    );
    Ok(())
}

pub fn participant(args: &ParticipantArgs) -> anyhow::Result<()> {
    if !args.insecure && args.tls.is_none() {
        bail!(
            "give --tls DIR (mutual TLS, see `tessera ca`) or --insecure (local experiments only)"
        );
    }
    let data_input: Vec<Input> = match &args.data {
        Some(data) => vec![Input::new("the --data file", data)],
        None => Vec::new(),
    };
    let mut written = outputs(&args.report, &args.model_out);
    if let Some(path) = &args.personal_model_out {
        written.push(("--personal-model-out", path.as_path()));
    }
    if let Some(path) = &args.continual.importance_out {
        written.push(("--importance-out", path.as_path()));
    }
    let mut inputs = data_input;
    for (what, path) in [
        ("the --continue-from model", &args.continual.continue_from),
        ("the --importance file", &args.continual.importance),
    ] {
        if let Some(path) = path {
            inputs.push(Input::new(what, path));
        }
    }
    check_outputs(&written, &inputs)?;
    let continual = args.continual.site_continual()?;
    if args.insecure {
        insecure_warning("the participant");
    }
    // Paths given here are the working folder's; the plan's paths, its folder's.
    let plan_dir = match (&args.plan_dir, &args.expect_plan) {
        (Some(dir), _) => dir.clone(),
        (None, Some(plan)) => plan_dir(plan),
        (None, None) => PathBuf::from("."),
    };
    let Some((coordinator, standbys)) = args.coordinator.split_first() else {
        bail!("give --coordinator URL");
    };
    let config = ParticipantConfig {
        coordinator: coordinator.clone(),
        standbys: standbys.to_vec(),
        site: args.site.clone(),
        data: args.data.as_deref().map(resolved).transpose()?,
        // A mapping that cannot be read is found here, not after joining.
        mapping: match &args.mapping {
            Some(path) => Some(tessera_data::mapping::Mapping::from_file(path)?),
            None => None,
        },
        plan_dir: resolved(&plan_dir)?,
        max_backoff: Duration::from_secs(2),
        give_up_after: seconds("--give-up-after", args.give_up_after)?,
        pause_before_update: pause("--pause-before-update", args.pause_before_update)?,
        tls: args.tls.as_deref().map(tessera_tls::TlsFiles::in_dir),
        tls_domain: args.tls_domain.clone(),
        expect_plan: match &args.expect_plan {
            Some(path) => Some(
                tessera_engine::Plan::from_file(path)
                    .with_context(|| format!("cannot read the expected plan {}", path.display()))?,
            ),
            None => None,
        },
        share_levels: args.share_levels,
        max_memory_bytes: match args.max_memory_gb {
            Some(gb) if gb.is_finite() && gb > 0.0 => Some(gb * 1e9),
            Some(gb) => anyhow::bail!(
                "--max-memory-gb must be a positive number of GB, got {}",
                tessera_core::value(gb)
            ),
            None => None,
        },
        joins: tessera_participant::JoinSettings {
            consent: args.consent_join.clone(),
            out_dir: args.join_out.as_deref().map(resolved).transpose()?,
        },
        ledger: Some(resolved(&ledger_path(args))?),
        local_state: Some(resolved(&local_state_path(args))?),
        continual,
        importance_out: args.continual.importance_out.is_some(),
        rollout: args.rollout.settings()?,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let (summary, results) = runtime.block_on(async {
        tokio::select! {
            done = tessera_participant::run_with_results(config.clone()) => Ok(done?),
            signal = crate::lifecycle::termination() => {
                // The site leaves for good, so that no round waits for it.
                let reason = format!("the site's operator stopped it ({signal})");
                let within = Duration::from_secs(5);
                let what = match tessera_participant::leave(&config, &reason, within).await {
                    Ok(_) => "left the run; the coordinator was told".to_string(),
                    Err(e) => format!("left the run without telling the coordinator: {e}"),
                };
                Err(anyhow::Error::new(crate::lifecycle::Signalled { signal, what }))
            }
        }
    })?;
    println!(
        "done: {} updates accepted, {} refused, {} evaluations, {} reconnections",
        summary.updates_accepted,
        summary.updates_refused,
        summary.evaluations,
        summary.reconnections
    );
    args.rollout.report(&args.site);
    crate::model::site_results(
        results.as_ref(),
        crate::model::SiteOutputs {
            model: args.model_out.as_deref(),
            personal_model: args.personal_model_out.as_deref(),
            report: args.report.as_deref(),
        },
    )?;
    args.continual.write_importance(results.as_ref())
}

pub fn peer(args: &PeerArgs) -> anyhow::Result<()> {
    if !args.insecure && args.tls.is_none() {
        bail!(
            "give --tls DIR (mutual TLS, see `tessera ca`) or --insecure (local experiments only)"
        );
    }
    let plan_text = std::fs::read_to_string(&args.plan)
        .with_context(|| format!("{}: cannot read", args.plan.display()))?;
    let plan = Plan::from_toml(&plan_text, &args.plan.display().to_string())?;
    let mut peers = std::collections::BTreeMap::new();
    for entry in &args.peers {
        let Some((name, url)) = entry.split_once('=') else {
            bail!("--peer '{entry}': give NAME=URL");
        };
        if name.is_empty() || url.is_empty() {
            bail!("--peer '{entry}': give NAME=URL");
        }
        if peers.insert(name.to_string(), url.to_string()).is_some() {
            bail!("--peer '{name}' is given twice");
        }
    }
    if peers.is_empty() {
        bail!("give every other site of the run with --peer NAME=URL");
    }
    let plan_dir = plan_dir(&args.plan);
    // --data is the working folder's; the plan's own paths, the plan's folder's.
    let data = args.data.as_deref().map(resolved).transpose()?;
    let mut inputs = vec![Input::new("the plan file", &args.plan)];
    if let Some(data) = &data {
        inputs.push(Input::new("the --data file", data));
    }
    inputs.extend(plan_data_inputs(&plan.data, &plan_dir));
    inputs.extend(tls_inputs("--tls", args.tls.as_deref()));
    check_outputs(&outputs(&args.report, &args.model_out), &inputs)?;
    let liveness = liveness(args.liveness)?;
    if args.insecure {
        insecure_warning("the peer");
    }
    let config = tessera_peer::PeerConfig {
        plan,
        plan_text,
        site: args.site.clone(),
        data,
        plan_dir,
        listen: args.listen,
        peers,
        liveness,
        give_up_after: seconds("--give-up-after", args.give_up_after)?,
        tls: args.tls.as_deref().map(tessera_tls::TlsFiles::in_dir),
        pause_each_round: pause("--pause-each-round", args.pause_each_round)?,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let outcome = runtime.block_on(tessera_peer::run(config, |address| {
        say(Level::INFO, &format!("listening on {address}"));
    }))?;
    let report = outcome.report;
    write_outputs(&report, args.report.as_deref(), None)?;
    if let Some(path) = &args.model_out {
        crate::model::write(path, &outcome.model)?;
    }
    let lost = report
        .topology
        .as_ref()
        .map(|t| t.lost.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    let rejoined = report
        .topology
        .as_ref()
        .and_then(|t| t.rejoined.get(&args.site))
        .map_or(String::new(), |round| {
            format!(" (restarted: rejoined at round {round})")
        });
    // Fine-tuning: its own fine-tuned model and one trained alone, on the
    // same rows.
    let personal = report
        .personalization
        .as_ref()
        .and_then(|p| p.per_site.get(&args.site))
        .map_or(String::new(), |own| {
            format!(
                "; fine-tuned: {:.4}{}",
                own.personalized,
                own.local_only
                    .map_or(String::new(), |a| format!("; trained alone: {a:.4}"))
            )
        });
    println!(
        "finished {} rounds as peer '{}'{rejoined}: its model on its test rows: accuracy {}{personal}; neighbours lost: {}",
        report.rounds.len(),
        args.site,
        report
            .final_metrics
            .accuracy
            .map_or("not evaluated (no test rows)".to_string(), |a| format!(
                "{a:.4}"
            )),
        if lost.is_empty() {
            "none".to_string()
        } else {
            lost.join(", ")
        }
    );
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the folder", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("{}: cannot write", path.display()))
}
