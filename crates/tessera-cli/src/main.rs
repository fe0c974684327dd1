//! `tessera`: the command line of the Tessera federated learning system.
//!
//! This crate only parses arguments and wires the library crates together;
//! every decision lives in the libraries.
//!
//! One module a subcommand: `simulate.rs` (the main job), `deploy.rs`
//! (coordinator, participant, aggregator, peer), `ca.rs`, `ops.rs` (runs,
//! status, privacy), `synth.rs`, `harmonize.rs` (profile, harmonize, schema), `catalog.rs`; `status_json.rs` is `status --json`, a
//! stable document built from the run store's reads, which the end-to-end
//! tests read instead of the schema. Here too: the bundled plan and data
//! (`bundled.rs`, `include_bytes!`, so that `tessera simulate` runs from any
//! folder), the progress bar and round table, and report and plot writing;
//! `logging.rs` (log lines, `--log-format`, set up once here),
//! `dashboard.rs` (the coordinator's `--dashboard` page and `/api/status`).
//! Wall-clock times are `tessera_core::utc`'s, one format everywhere.
//! `anyhow` lives in this crate only.

mod ab;
mod analyze;
mod bundled;
mod ca;
mod catalog;
mod check;
mod continual;
mod contributions;
mod dashboard;
mod debug_bundle;
mod deploy;
mod dry_run;
mod harmonize;
mod lifecycle;
mod live;
mod logging;
mod mlflow;
mod model;
mod multitask;
mod ops;
mod otlp;
mod participation;
mod paths;
mod plot;
mod registry;
mod rollout;
mod shard;
mod simulate;
mod status_json;
mod synth;
mod synth_like;
mod tracking;
mod transfer;
mod tune;
mod versus;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Federated learning that brings the model to the data.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on stderr (coordinator, participant, aggregator, peer,
    /// simulate): text (coloured only on a terminal, never with NO_COLOR
    /// set) or json (one object a line).
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    log_format: Option<logging::LogFormat>,
    /// Export this process's trace spans over OTLP/gRPC to the collector at
    /// URL (http://HOST:PORT, usually port 4317, or https:// with
    /// --otlp-tls): coordinator, participant, aggregator and gossip peer.
    /// A round's spans at every process form one trace.
    #[arg(long, global = true, value_name = "URL")]
    otlp: Option<String>,
    /// With an https:// --otlp collector: the folder holding ca.pem (the
    /// roots that verify the collector) and, where the collector asks for
    /// a client certificate, cert.pem and key.pem.
    #[arg(long, global = true, value_name = "DIR", requires = "otlp")]
    otlp_tls: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate a federation in this process: by default the bundled Fed-Heart-Disease plan.
    Simulate(Box<simulate::SimulateArgs>),
    /// Answer a statistics query over the plan's data in simulation, with
    /// differential privacy charged to the plan's budgets.
    Analyze(Box<analyze::AnalyzeArgs>),
    /// Profile this site's columns for harmonization: DP counts on fixed
    /// bins against the federation's target schema, charged to this site's
    /// privacy ledger before the profile is written.
    Profile(Box<harmonize::ProfileArgs>),
    /// Propose each site's mapping to the target schema from the sites'
    /// profiles (or, with --plan, from the plan's files profiled here),
    /// with the evidence for each column, for a person to review.
    Harmonize(Box<harmonize::HarmonizeArgs>),
    /// The federation's features: sites, kind and unit, DP summaries and
    /// missingness, quality, similar features, and the runs that used
    /// them, from the sites' profiles.
    Catalog(Box<catalog::CatalogArgs>),
    /// The federation's target schema: `upgrade` writes the mapping that
    /// reads a site's file of an older schema version as the current one.
    Schema(harmonize::SchemaArgs),
    /// Tune a plan's settings by successive halving over a search space,
    /// judged on each site's held-out validation rows, then compared with
    /// the plan as given on the test rows on seeds never tuned on.
    Tune(Box<tune::TuneArgs>),
    /// A site's preflight: its data read against the plan's schema and
    /// taken through the data agreement alone, and this build's protocol
    /// version and capabilities, before it joins.
    Check(Box<check::CheckArgs>),
    /// A site's debug bundle: one JSON file of configuration, versions and
    /// DP summaries (the plan, this build, the privacy ledger's releases
    /// and spend), to hand to whoever helps debug; no row, value,
    /// parameter or query of the site.
    DebugBundle(Box<debug_bundle::DebugBundleArgs>),
    /// An A/B test of two model files on a plan's sites: sites or rows split
    /// by a keyed hash, each arm's sums (optionally DP), the difference with
    /// a 95% confidence interval.
    Ab(Box<ab::AbArgs>),
    /// This build's protocol version and capabilities, what a plan's run
    /// needs of its participants, and the compatibility matrix.
    Protocol(check::ProtocolArgs),
    /// The coordinator's preflight: a federated dry run in which the plan's
    /// sites join and take their data through the agreement, then stop
    /// before training; each site's outcome printed.
    DryRun(Box<dry_run::DryRunArgs>),
    /// Write FedProx's Synthetic(alpha, beta) data as CSV.
    Synth(synth::SynthArgs),
    /// Each site's contribution, reputation and credits from a run's
    /// report (a plan with `[contribution]`).
    Contributions(contributions::ContributionsArgs),
    /// Coordinate a federation over the network.
    Coordinator(Box<deploy::CoordinatorArgs>),
    /// Take part in a federation: train next to this site's data.
    Participant(Box<deploy::ParticipantArgs>),
    /// Aggregate a region of a hierarchical federation: a participant toward
    /// its parent, a coordinator toward its members.
    Aggregator(Box<deploy::AggregatorArgs>),
    /// Simulate one aggregator's sites of a hierarchical plan in this process,
    /// under a deployed coordinator: one simulation spread over several
    /// machines, one shard on each (the same model as simulating it in one
    /// process).
    Shard(Box<shard::ShardArgs>),
    /// Gossip with neighbours, no coordinator: train next to this site's data
    /// and average with the plan's graph neighbours.
    ///
    /// A neighbour unreachable for `--liveness` seconds is lost: the others
    /// stop waiting for it and average with the neighbours present
    /// (Metropolis-Hastings weights over them), as simulation does for a
    /// lost site. A
    /// peer restarted after a crash (the same command again) rejoins: every
    /// other peer must still be running (it redoes the data agreement), each
    /// neighbour stops waiting for it at once and takes it back from the
    /// round after its current one, and it adopts the model of the neighbour
    /// furthest behind and runs the rounds left. It loses its own state since
    /// the crash: its model, its rounds before (its report starts at the
    /// round it rejoined at, `topology.rejoined`), its traffic counts. Its
    /// neighbours log it ("neighbour restarted", "restarted neighbour taken
    /// back") and list it in their reports' `topology.lost` and
    /// `topology.rejoined`. A peer restarted after its neighbours finished
    /// cannot rejoin.
    Peer(Box<deploy::PeerArgs>),
    /// The federation's certificate authority: init, issue, revoke, rotate, list.
    Ca(ca::CaArgs),
    /// A coordinator's runs: list, show one's record (plan, code version,
    /// data fingerprints, metrics, privacy, artifacts), compare two, export
    /// one to MLflow.
    Runs(ops::RunsArgs),
    /// Where a run stands: rounds, the open round, participants, the audit log.
    Status(ops::StatusArgs),
    /// A run's privacy ledger: every release, its DP event, epsilon spent against the budgets.
    Privacy(ops::PrivacyArgs),
    /// End a run once its open round closes (its sites get that round's model).
    Stop(lifecycle::StopArgs),
    /// End a run now, its coordinator running or gone for good; it never resumes.
    Abort(lifecycle::AbortArgs),
    /// The model registry in a coordinator's database: register a run's
    /// model as a named version with its lineage, list, show, promote to
    /// canary or production, archive, roll back.
    Models(registry::ModelsArgs),
    /// A canary rollout of a registered model: the candidate to the sites
    /// that opted in, scored against production on their own test rows,
    /// promoted or rolled back by the pooled comparison, then served by
    /// every site.
    Rollout(Box<rollout::RolloutArgs>),
    /// A model file (`--model-out`): inspect it, export it to ONNX.
    Model(model::ModelArgs),
    /// Apply a model file to the rows of a CSV file: its stored feature
    /// order, vocabularies and standardisation, then the model.
    Predict(model::PredictArgs),
    /// Benchmark: a parameter set down and back over the wire protocol, with peak memory.
    BenchTransfer(transfer::TransferArgs),
}

/// A reader that stops reading (`tessera ... | head`) ends the command
/// quietly, as a Unix tool does on SIGPIPE, instead of the panic that
/// printing to a closed pipe raises.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line: what was wrong with the arguments.
            let text = e.render().to_string();
            let parts: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("{}", parts.join(" "));
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let service = match &cli.command {
        Command::Coordinator(_) => Some("tessera-coordinator"),
        Command::Participant(_) => Some("tessera-participant"),
        Command::Aggregator(_) => Some("tessera-aggregator"),
        Command::Shard(_) => Some("tessera-shard"),
        Command::Peer(_) => Some("tessera-peer"),
        _ => None,
    };
    let otlp = match (cli.otlp.as_deref(), service) {
        (None, _) => None,
        (Some(url), Some(service)) => Some(otlp::Export {
            url,
            tls: cli.otlp_tls.as_deref(),
            service,
        }),
        (Some(_), None) => {
            eprintln!(
                "--otlp traces the coordinator, participant, aggregator and peer commands only"
            );
            return ExitCode::from(2);
        }
    };
    let logs = match (service, cli.log_format) {
        (Some(_), format) => Some(format.unwrap_or_default()),
        // Simulation logs only when asked: its table and summary are its output.
        (None, Some(format)) if matches!(cli.command, Command::Simulate(_)) => Some(format),
        _ => None,
    };
    if let Some(format) = logs
        && let Err(e) = logging::init(format, otlp)
    {
        eprintln!("error: {}", one_line(&e));
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Simulate(args) => simulate::run(*args),
        Command::Analyze(args) => analyze::run(&args),
        Command::Profile(args) => harmonize::run_profile(&args),
        Command::Harmonize(args) => harmonize::run_harmonize(&args),
        Command::Catalog(args) => catalog::run(&args),
        Command::Schema(args) => harmonize::run_schema(&args),
        Command::Synth(args) => synth::run(&args),
        Command::Contributions(args) => contributions::run(&args),
        Command::Check(args) => check::run(&args),
        Command::DebugBundle(args) => debug_bundle::run(&args),
        Command::Protocol(args) => check::protocol(&args),
        Command::Ab(args) => ab::run(&args),
        Command::Tune(args) => tune::run(&args),
        Command::Coordinator(args) => deploy::coordinator(&args),
        Command::Participant(args) => deploy::participant(&args),
        Command::Aggregator(args) => deploy::aggregator(&args),
        Command::Shard(args) => shard::run(&args),
        Command::Peer(args) => deploy::peer(&args),
        Command::Ca(args) => ca::run(&args),
        Command::Runs(args) => ops::runs(&args),
        Command::Status(args) => ops::status(&args),
        Command::Privacy(args) => ops::privacy(&args),
        Command::Stop(args) => lifecycle::stop(&args),
        Command::Abort(args) => lifecycle::abort(&args),
        Command::Model(args) => model::model(&args),
        Command::Models(args) => registry::run(&args),
        Command::Rollout(args) => rollout::run(&args),
        Command::DryRun(args) => dry_run::run(&args),
        Command::Predict(args) => model::predict(&args),
        Command::BenchTransfer(args) => transfer::run(&args),
    };
    otlp::finish();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::say(tracing::Level::ERROR, &format!("error: {}", one_line(&e)));
            exit_code(&e)
        }
    }
}

/// The exit status of a failed command: 70 (`EX_SOFTWARE`) when a
/// coordinator or an aggregator stopped on a fatal database failure (a
/// restart on the same database resumes); 130 or 143 (128 + the signal)
/// when SIGINT or SIGTERM stopped a coordinator or a participant; 3 when the
/// run was aborted by its operator (at its coordinator); a participant's (or
/// an aggregator's toward its parent) named cause its own code, 10 to 18
/// (README, "Exit codes"); 1 otherwise.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    use tessera_aggregator::AggregatorError;
    use tessera_coordinator::CoordinatorError;
    use tessera_participant::ParticipantError;
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<lifecycle::Signalled>() {
            return ExitCode::from(lifecycle::signal_status(s.signal));
        }
        match cause.downcast_ref::<CoordinatorError>() {
            Some(CoordinatorError::Interrupted(signal)) => {
                return ExitCode::from(lifecycle::signal_status(signal));
            }
            Some(CoordinatorError::Aborted(_)) => return ExitCode::from(3),
            _ => {}
        }
    }
    let fatal = e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<CoordinatorError>(),
            Some(CoordinatorError::Fatal(_))
        ) || matches!(
            cause.downcast_ref::<AggregatorError>(),
            Some(AggregatorError::Members(CoordinatorError::Fatal(_)))
        )
    });
    if fatal {
        return ExitCode::from(70);
    }
    let site = e.chain().find_map(|cause| {
        cause.downcast_ref::<ParticipantError>().or_else(|| {
            match cause.downcast_ref::<AggregatorError>() {
                Some(AggregatorError::Parent(p)) => Some(p),
                _ => None,
            }
        })
    });
    match site {
        Some(p) => ExitCode::from(p.exit_code()),
        None => ExitCode::FAILURE,
    }
}

/// The error and its causes on one line, each cause once: errors that
/// already print their source (`"...: {source}"`) do not repeat it.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_aggregator::AggregatorError;
    use tessera_coordinator::CoordinatorError;

    /// A fatal database failure exits 70, directly, through an aggregator
    /// or under context; any other failure exits 1.
    #[test]
    fn a_fatal_database_failure_exits_70() {
        let fatal = || CoordinatorError::Fatal("cannot store an accepted update".into());
        let seventy = ExitCode::from(70);
        assert_eq!(exit_code(&anyhow::Error::from(fatal())), seventy);
        assert_eq!(
            exit_code(&anyhow::Error::from(AggregatorError::Members(fatal()))),
            seventy
        );
        assert_eq!(
            exit_code(&anyhow::Error::from(fatal()).context("the coordinator")),
            seventy
        );
        let other = CoordinatorError::Config("no".into());
        assert_eq!(exit_code(&anyhow::Error::from(other)), ExitCode::FAILURE);
        let other = AggregatorError::Members(CoordinatorError::Network("down".into()));
        assert_eq!(exit_code(&anyhow::Error::from(other)), ExitCode::FAILURE);
        assert_eq!(exit_code(&anyhow::anyhow!("plain")), ExitCode::FAILURE);
    }

    /// A participant's named causes exit with their own codes, directly or
    /// through an aggregator; its other failures exit 1.
    #[test]
    fn a_participants_causes_exit_with_their_codes() {
        use tessera_participant::ParticipantError;
        use tessera_participant::cause::Cause;
        let revoked = || {
            ParticipantError::Stop(Cause::Revoked {
                server: "the coordinator".into(),
                ours: true,
            })
        };
        assert_eq!(
            exit_code(&anyhow::Error::from(revoked())),
            ExitCode::from(13)
        );
        assert_eq!(
            exit_code(&anyhow::Error::from(AggregatorError::Parent(revoked()))),
            ExitCode::from(13)
        );
        let unreachable = ParticipantError::Unreachable("gave up".into());
        assert_eq!(
            exit_code(&anyhow::Error::from(unreachable)),
            ExitCode::from(10)
        );
        let refused = ParticipantError::Refused("not among the plan's sites".into());
        assert_eq!(exit_code(&anyhow::Error::from(refused)), ExitCode::from(18));
        let local = ParticipantError::Local("no data".into());
        assert_eq!(exit_code(&anyhow::Error::from(local)), ExitCode::FAILURE);
    }
}
