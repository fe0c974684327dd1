//! `tessera coordinator`, `tessera participant`, `tessera aggregator` and `tessera peer`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tessera_coordinator::{CoordinatorConfig, serve};
use tessera_engine::Plan;
use tessera_participant::ParticipantConfig;

use crate::paths::{Input, check_outputs, db_inputs, plan_data_inputs, tls_inputs};

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
    /// The database (SQLite); a restart with the same file resumes the run.
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
}

/// Arguments of `tessera participant`.
#[derive(Debug, clap::Args)]
pub struct ParticipantArgs {
    /// The coordinator's URL, e.g. http://127.0.0.1:7000.
    #[arg(long)]
    coordinator: String,
    /// This site's name.
    #[arg(long)]
    site: String,
    /// This site's data file (CSV, read as the plan's schema says).
    #[arg(long)]
    data: PathBuf,
    /// Folder for the plan's other relative paths (a split membership file).
    #[arg(long, default_value = ".")]
    plan_dir: PathBuf,
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
    /// At the end of the run, write this site's report here (JSON): the
    /// global model on this site's test rows against a model trained on this
    /// site's rows alone, and the privacy this site spent; replaced if it exists.
    #[arg(long)]
    report: Option<PathBuf>,
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
    /// Mutual TLS toward the members: a coordinator's files (`tessera ca issue --coordinator`).
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
    /// This site's data file.
    #[arg(long)]
    data: PathBuf,
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
    /// Seconds a neighbour may be unreachable before it is lost for good.
    #[arg(long, default_value_t = 10.0)]
    liveness: f64,
    /// Seconds to wait for every peer during the data agreement.
    #[arg(long, default_value_t = 300.0)]
    give_up_after: f64,
    /// Report file (JSON): this site's own model each round, the neighbours
    /// it lost; replaced if it exists.
    #[arg(long)]
    report: Option<PathBuf>,
    /// File for this site's final model, replaced if it exists.
    #[arg(long)]
    model_out: Option<PathBuf>,
    /// Fault injection for drills and tests: seconds to pause after each round's training.
    #[arg(long, default_value_t = 0.0)]
    pause_each_round: f64,
}

fn logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn insecure_warning(who: &str) {
    eprintln!(
        "WARNING: {who} runs with --insecure: no encryption, no authentication; any process that can reach it can \
         take part. For local experiments only."
    );
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
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
    let mut plan = Plan::from_toml(&plan_text, &args.plan.display().to_string())?;
    if !args.settings.is_empty() {
        plan = plan.with_settings(&args.settings)?;
        plan_text = toml::to_string(&plan).context("cannot write the changed plan")?;
    }
    let mut inputs = vec![Input::new("the plan file", &args.plan)];
    inputs.extend(plan_data_inputs(&plan.data, &plan_dir(&args.plan)));
    inputs.extend(db_inputs(&args.db));
    inputs.extend(tls_inputs("--tls", args.tls.as_deref()));
    check_outputs(&outputs(&args.report, &args.model_out), &inputs)?;
    let liveness = liveness(args.liveness)?;
    logging();
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
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime.block_on(serve(config, |address| {
        eprintln!("listening on {address}");
    }))?;
    write_outputs(&report, args.report.as_deref(), None)?;
    if let Some(path) = &args.model_out {
        let file =
            crate::model::of_coordinator(&plan_for_model, &plan_text_for_model, &args.db, &report)?;
        crate::model::write(path, &file)?;
    }
    let f = &report.final_metrics;
    println!("finished {} rounds: {}", report.rounds.len(), f.summary());
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

fn liveness(value: f64) -> anyhow::Result<Duration> {
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
    if let Some(path) = report_path {
        write(
            path,
            serde_json::to_string_pretty(report)
                .context("cannot encode the report")?
                .as_bytes(),
        )?;
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
    logging();
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
        eprintln!("listening on {address}");
    }))?;
    write_outputs(&report, args.report.as_deref(), args.model_out.as_deref())?;
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
    check_outputs(
        &outputs(&args.report, &args.model_out),
        &[Input::new("the --data file", &args.data)],
    )?;
    logging();
    if args.insecure {
        insecure_warning("the participant");
    }
    let config = ParticipantConfig {
        coordinator: args.coordinator.clone(),
        site: args.site.clone(),
        data: args.data.clone(),
        plan_dir: args.plan_dir.clone(),
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
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let (summary, results) = runtime.block_on(tessera_participant::run_with_results(config))?;
    println!(
        "done: {} updates accepted, {} refused, {} evaluations, {} reconnections",
        summary.updates_accepted,
        summary.updates_refused,
        summary.evaluations,
        summary.reconnections
    );
    crate::model::site_results(
        results.as_ref(),
        args.model_out.as_deref(),
        args.report.as_deref(),
    )
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
    let mut inputs = vec![Input::new("the plan file", &args.plan)];
    // The peer opens --data, like the plan's own paths, from the plan's folder.
    inputs.push(Input::new("the --data file", plan_dir.join(&args.data)));
    inputs.extend(plan_data_inputs(&plan.data, &plan_dir));
    inputs.extend(tls_inputs("--tls", args.tls.as_deref()));
    check_outputs(&outputs(&args.report, &args.model_out), &inputs)?;
    let liveness = liveness(args.liveness)?;
    logging();
    if args.insecure {
        insecure_warning("the peer");
    }
    let config = tessera_peer::PeerConfig {
        plan,
        plan_text,
        site: args.site.clone(),
        data: args.data.clone(),
        plan_dir,
        listen: args.listen,
        peers,
        liveness,
        give_up_after: seconds("--give-up-after", args.give_up_after)?,
        tls: args.tls.as_deref().map(tessera_tls::TlsFiles::in_dir),
        pause_each_round: pause("--pause-each-round", args.pause_each_round)?,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime.block_on(tessera_peer::run(config, |address| {
        eprintln!("listening on {address}");
    }))?;
    write_outputs(&report, args.report.as_deref(), args.model_out.as_deref())?;
    let lost = report
        .topology
        .as_ref()
        .map(|t| t.lost.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    println!(
        "finished {} rounds as peer '{}': its model on its test rows: accuracy {}; neighbours lost: {}",
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
