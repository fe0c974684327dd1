//! `tessera model inspect`, `tessera model export`, `tessera predict`, and
//! the model files `simulate`, `coordinator` and `participant` write
//! (`tessera_engine::model_file`: self-describing, versioned).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tessera_data::{Agreement, FederatedData, ScaleScope, Scaler};
use tessera_engine::Plan;
use tessera_engine::model_file::{ModelFile, RunInfo, Standardization, to_onnx};

use crate::paths::{Input, check_outputs};

/// The largest model file read (the header and a model's largest parameter count).
const MAX_FILE_BYTES: u64 =
    20 + tessera_engine::model_file::MAX_HEADER_BYTES + 4 * tessera_engine::model_file::MAX_VALUES;

/// Arguments of `tessera model`.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ModelCommand {
    /// What a model file holds: model, task, feature order, vocabularies,
    /// standardisation, plan, run and lineage.
    Inspect(InspectArgs),
    /// Writes the model in another format.
    Export(ExportArgs),
}

#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// The model file (`--model-out` of simulate, coordinator or participant).
    file: PathBuf,
    /// The whole header as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ExportArgs {
    /// The model file.
    file: PathBuf,
    /// Write an ONNX model here (input `input`: rows of the raw encoded
    /// features in the file's order; output `probabilities`), replaced if it
    /// exists.
    #[arg(long, value_name = "FILE")]
    onnx: PathBuf,
}

/// Arguments of `tessera predict`.
#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// The model file.
    #[arg(long)]
    model: PathBuf,
    /// Rows to predict (CSV with a header; the model's feature columns, in
    /// any order; other columns are ignored).
    #[arg(long)]
    data: PathBuf,
    /// Write the predictions here (CSV: row, class, one probability per
    /// class) instead of to standard output; replaced if it exists.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Reads and checks a model file.
pub fn read(path: &Path) -> anyhow::Result<ModelFile> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .len();
    if size > MAX_FILE_BYTES {
        bail!(
            "{}: {size} bytes, more than a model file may hold ({MAX_FILE_BYTES})",
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    ModelFile::from_bytes(&bytes).with_context(|| path.display().to_string())
}

/// Under a strategy that keeps the model's head at the sites (FedPer,
/// FedRep), says that the global model's head at `path` is the initial,
/// untrained one: the model is each site's body and head together.
pub fn warn_if_heads_stay_home(plan: &Plan, path: &Path) {
    use tessera_aggregate::StrategyKind;
    let strategy = plan.federation.strategy;
    if matches!(strategy, StrategyKind::FedPer | StrategyKind::FedRep) {
        crate::logging::say(
            tracing::Level::WARN,
            &format!(
                "{}: under {strategy} the global model's head (its last layers) is the initial, \
                 untrained one; each site's own head stays at the site, and its personalized \
                 model is the one to predict with (tessera participant --personal-model-out)",
                path.display()
            ),
        );
    }
    if strategy == StrategyKind::Ifca {
        crate::logging::say(
            tracing::Level::WARN,
            &format!(
                "{}: under ifca this is the cluster model that took the largest share of the \
                 last round's examples; a site in another cluster predicts with its own \
                 cluster's model (tessera participant --personal-model-out)",
                path.display()
            ),
        );
    }
}

/// Writes `file` at `path`, creating its folder.
pub fn write(path: &Path, file: &ModelFile) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the folder", dir.display()))?;
    }
    std::fs::write(path, file.to_bytes())
        .with_context(|| format!("{}: cannot write the model", path.display()))
}

/// The standardisation a global model's file records: the federation's
/// statistics under federation scope, nothing under site scope (each site
/// standardised with its own), zero means and unit scales when off.
pub fn global_standardization(plan: &Plan, federation: Option<Scaler>) -> Standardization {
    let config = plan.data.standardize.clone();
    let (source, scaler) = if !config.enabled {
        (Some("none".to_string()), federation)
    } else if config.scope == ScaleScope::Federation {
        (
            federation.as_ref().map(|_| "federation".to_string()),
            federation,
        )
    } else {
        (None, None)
    };
    Standardization {
        config,
        source,
        mean: scaler.as_ref().map(|s| s.mean.clone()),
        scale: scaler.map(|s| s.scale),
    }
}

/// The model file of a simulation's final model.
pub fn of_simulation(
    plan: &Plan,
    data: &FederatedData,
    report: &tessera_engine::report::RunReport,
) -> anyhow::Result<ModelFile> {
    of_parameters(
        plan,
        data,
        report.rounds.last().map_or(0, |r| r.round),
        report.final_parameters.clone(),
    )
}

/// The model file of `parameters` after `round` of a simulation on `data`.
pub fn of_parameters(
    plan: &Plan,
    data: &FederatedData,
    round: u32,
    parameters: tessera_core::ParameterSet,
) -> anyhow::Result<ModelFile> {
    anyhow::ensure!(
        data.holds_unstandardised(),
        "a model file needs the sites' standardisation, released before the run"
    );
    let federation = if plan.data.standardize.enabled {
        (plan.data.standardize.scope == ScaleScope::Federation)
            .then(|| data.sites.first().map(|s| s.scaler().clone()))
            .flatten()
    } else {
        Some(Scaler::from_statistics(
            &data.federation_statistics(),
            &plan.data.standardize,
            &data.indicators(),
        ))
    };
    Ok(ModelFile::new(
        plan,
        &data.agreement,
        global_standardization(plan, federation),
        RunInfo {
            id: None,
            written_by: "simulation".into(),
        },
        round,
        parameters,
    )?)
}

/// The model file of a coordinator's final model: the agreement and the
/// federation's statistics as its database holds them.
pub fn of_coordinator(
    plan: &Plan,
    plan_text: &str,
    db: &Path,
    report: &tessera_engine::report::RunReport,
) -> anyhow::Result<ModelFile> {
    of_database(plan, plan_text, db, report, "coordinator")
}

/// The model file of an aggregator's last regional model: the plan, data
/// agreement and statistics its parent sent, as its database keeps them.
pub fn of_aggregator(
    name: &str,
    db: &Path,
    report: &tessera_engine::report::RunReport,
) -> anyhow::Result<ModelFile> {
    use tessera_coordinator::RunStore;
    let store = tessera_coordinator::SqliteStore::open_existing(db)?;
    let run = store
        .runs()?
        .into_iter()
        .next_back()
        .with_context(|| format!("{}: no run", tessera_coordinator::store::shown(db)))?;
    let plan = Plan::from_toml(&run.plan, "the aggregator's run")
        .with_context(|| format!("{}: the run's plan", tessera_coordinator::store::shown(db)))?;
    of_database(&plan, &run.plan, db, report, &format!("aggregator {name}"))
}

/// The model file of `report`'s final model, from the run of `plan` in
/// `db`, written by `who`.
fn of_database(
    plan: &Plan,
    plan_text: &str,
    db: &Path,
    report: &tessera_engine::report::RunReport,
    who: &str,
) -> anyhow::Result<ModelFile> {
    let store = tessera_coordinator::open_existing_store(db)?;
    let run = store
        .runs()?
        .into_iter()
        .rev()
        .find(|r| r.plan == plan_text)
        .with_context(|| {
            format!(
                "{}: no run of this plan",
                tessera_coordinator::store::shown(db)
            )
        })?;
    of_stored_run(
        plan,
        &*store,
        &run.id,
        report.rounds.last().map_or(0, |r| r.round),
        report.final_parameters.clone(),
        who,
    )
}

/// The model file of `parameters` after `round` of run `run` of `plan` in
/// `store`, with the run's data agreement and statistics, written by `who`.
pub fn of_stored_run(
    plan: &Plan,
    store: &dyn tessera_coordinator::RunStore,
    run: &str,
    round: u32,
    parameters: tessera_core::ParameterSet,
    who: &str,
) -> anyhow::Result<ModelFile> {
    use prost::Message;
    use tessera_coordinator::AgreementStep;
    let run = store
        .runs()?
        .into_iter()
        .find(|r| r.id == run)
        .with_context(|| format!("no run '{run}'"))?;
    let agreement: Agreement = match store.agreement(&run.id, AgreementStep::Levels)? {
        Some(bytes) => tessera_proto::convert::agreement_from_pb(
            tessera_proto::pb::Agreement::decode(bytes.as_slice())
                .context("the stored agreement")?,
        )?,
        None => bail!("run {}: no data agreement was reached", run.id),
    };
    let n_features = agreement.feature_names().len();
    let statistics = match store.agreement(&run.id, AgreementStep::Statistics)? {
        Some(bytes) => Some(tessera_proto::convert::statistics_from_pb(
            tessera_proto::pb::FeatureStatistics::decode(bytes.as_slice())
                .context("the stored feature statistics")?,
            n_features,
        )?),
        None => None,
    };
    let federation = if plan.data.standardize.enabled {
        statistics
            .map(|s| Scaler::from_statistics(&s, &plan.data.standardize, &agreement.indicators()))
    } else {
        Some(Scaler {
            mean: vec![0.0; n_features],
            scale: vec![1.0; n_features],
        })
    };
    Ok(ModelFile::new(
        plan,
        &agreement,
        global_standardization(plan, federation),
        RunInfo {
            id: Some(run.id.clone()),
            written_by: who.into(),
        },
        round,
        parameters,
    )?)
}

/// Where a participant writes its results (each where asked for).
pub struct SiteOutputs<'a> {
    /// The final global model (`--model-out`).
    pub model: Option<&'a Path>,
    /// The site's personalized model (`--personal-model-out`).
    pub personal_model: Option<&'a Path>,
    /// The site's report (`--report`).
    pub report: Option<&'a Path>,
}

/// A participant's results: its model files and report where asked for,
/// and the global model's accuracy on its test rows (against its
/// local-only baseline when the report is asked for, and its personalized
/// model where the plan personalizes), logged and printed. Without an
/// output asked for, a site that has no global model to show (it never
/// evaluated one) says so and succeeds.
pub fn site_results(
    results: Option<&tessera_participant::results::SiteResults>,
    out: SiteOutputs<'_>,
) -> anyhow::Result<()> {
    let wanted = out.model.is_some() || out.report.is_some() || out.personal_model.is_some();
    let Some(results) = results else {
        if wanted {
            bail!("the run ended before this site was ready: no model or report to write");
        }
        return Ok(());
    };
    let (round, global) = match results.global() {
        Ok(global) => global,
        Err(e) if !wanted => {
            tracing::warn!(reason = %e, "no global model to evaluate at this site");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(path) = out.model {
        write(path, &results.model_file()?)?;
    }
    if let Some(path) = out.personal_model {
        let Some(file) = results.personal_model_file()? else {
            bail!(
                "--personal-model-out: the plan keeps no personalized model (a personalized \
                 strategy such as ditto, fedper or fedrep, or [personalization] finetune_epochs)"
            );
        };
        write(path, &file)?;
    }
    let shown = |a: Option<f64>| {
        a.map_or("not evaluated (no test rows)".to_string(), |a| {
            format!("{a:.4}")
        })
    };
    let mut alone = String::new();
    if let Some(path) = out.report {
        let report = results.report()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create the folder", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("{}: cannot write", path.display()))?;
        alone = format!(
            "; trained alone: {}",
            shown(report.local_baseline.metrics.accuracy)
        );
    }
    if let Some(continued) = results.continued()? {
        alone = format!(
            "; the model it continued from: {}{alone}",
            shown(continued.before.accuracy)
        );
    }
    if let Some(personal) = results.personalized()? {
        alone = format!("; personalized: {}{alone}", shown(personal.accuracy));
    }
    let accuracy = shown(global.accuracy);
    tracing::info!(
        round,
        test_rows = global.n_test,
        %accuracy,
        "the global model on this site's test rows"
    );
    println!(
        "site '{}': the global model (round {round}) on its {} test rows: accuracy {accuracy}{alone}",
        results.site, global.n_test
    );
    let departments = results.departments().unwrap_or_else(|e| {
        println!("site '{}': {e}", results.site);
        Default::default()
    });
    for (name, d) in departments {
        println!(
            "  department '{name}' ({} test rows): global {:.4}{}, this site's model {:.4}, the \
             department's own {}, trained alone {}",
            d.n_test,
            d.global,
            d.regional
                .map_or_else(String::new, |r| format!(", its region's {r:.4}")),
            d.site,
            d.department.map_or_else(
                || "none (no training rows)".to_string(),
                |a| format!("{a:.4}")
            ),
            d.local_only
                .map_or_else(|| "none".to_string(), |a| format!("{a:.4}"))
        );
    }
    Ok(())
}

pub fn model(args: &ModelArgs) -> anyhow::Result<()> {
    match &args.command {
        ModelCommand::Inspect(a) => inspect(a),
        ModelCommand::Export(a) => export(a),
    }
}

fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let file = read(&args.file)?;
    let h = &file.header;
    if args.json {
        let mut document = serde_json::to_value(h).context("cannot encode the header")?;
        if let Some(map) = document.as_object_mut() {
            map.insert(
                "format_version".into(),
                tessera_engine::model_file::MODEL_FILE_VERSION.into(),
            );
            map.insert("n_parameters".into(), file.parameters.n_values().into());
        }
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    let mut out = String::new();
    let line = |out: &mut String, text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(
        &mut out,
        format!(
            "model file, format version {}",
            tessera_engine::model_file::MODEL_FILE_VERSION
        ),
    );
    let hidden = if h.model.hidden.is_empty() {
        String::new()
    } else {
        format!(", hidden layers {:?}", h.model.hidden)
    };
    line(
        &mut out,
        format!(
            "model: {:?}{hidden}, {} parameters",
            h.model.kind,
            file.parameters.n_values()
        )
        .to_lowercase(),
    );
    line(
        &mut out,
        format!(
            "task: predict '{}', classes: {}",
            h.target,
            file.classes().join(", ")
        ),
    );
    line(
        &mut out,
        format!(
            "plan: '{}', seed {}, sha256 {}",
            h.plan.name, h.plan.seed, h.plan.hash
        ),
    );
    line(
        &mut out,
        format!(
            "run: {} (written by {})",
            h.run.id.as_deref().unwrap_or("none, a simulation"),
            h.run.written_by
        ),
    );
    line(
        &mut out,
        format!(
            "lineage: the model after round {} of {}, from {}",
            h.lineage.round, h.lineage.rounds_planned, h.lineage.parent
        ),
    );
    let s = &h.standardization;
    line(
        &mut out,
        match (&s.source, &s.mean) {
            (Some(source), Some(_)) => format!("standardisation: stored ({source})"),
            _ => "standardisation: each site's own statistics (none stored; rows are \
                  standardised with their own)"
                .to_string(),
        },
    );
    line(&mut out, format!("feature order ({}):", file.n_features()));
    for (i, name) in h.features.iter().enumerate() {
        let stats = match (&s.mean, &s.scale) {
            (Some(m), Some(sc)) => format!("  mean {:.6}  scale {:.6}", m[i], sc[i]),
            _ => String::new(),
        };
        line(&mut out, format!("  {:>4}  {name}{stats}", i + 1));
    }
    line(&mut out, "columns:".to_string());
    for (name, encoding) in h.agreement.columns.iter().zip(&h.agreement.encodings) {
        line(
            &mut out,
            match encoding {
                tessera_data::Encoding::Numeric => format!("  {name}: numeric"),
                tessera_data::Encoding::OneHot { levels, drop_first } => format!(
                    "  {name}: one-hot over {}{}",
                    levels.join(", "),
                    if *drop_first { " (first dropped)" } else { "" }
                ),
            },
        );
    }
    print!("{out}");
    Ok(())
}

fn export(args: &ExportArgs) -> anyhow::Result<()> {
    check_outputs(
        &[("--onnx", args.onnx.as_path())],
        &[Input::new("the model file", &args.file)],
    )?;
    let file = read(&args.file)?;
    let bytes = to_onnx(&file)?;
    std::fs::write(&args.onnx, bytes)
        .with_context(|| format!("{}: cannot write", args.onnx.display()))?;
    eprintln!(
        "wrote {} (input 'input': {} features in the model file's order; output 'probabilities': {})",
        args.onnx.display(),
        file.n_features(),
        file.classes().join(", ")
    );
    Ok(())
}

pub fn predict(args: &PredictArgs) -> anyhow::Result<()> {
    let inputs = [
        Input::new("the --model file", &args.model),
        Input::new("the --data file", &args.data),
    ];
    if let Some(out) = &args.out {
        check_outputs(&[("--out", out.as_path())], &inputs)?;
    }
    let file = read(&args.model)?;
    let table =
        tessera_data::read_table(&tessera_data::Filesystem, &args.data, file.header.delimiter)?;
    let predictions = file
        .predict(&table)
        .with_context(|| args.data.display().to_string())?;
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["row".to_string(), "class".to_string()];
    header.extend(file.classes().iter().map(|c| format!("p_{c}")));
    writer.write_record(&header)?;
    for (i, (class, row)) in predictions
        .class
        .iter()
        .zip(predictions.probabilities.rows())
        .enumerate()
    {
        let mut record = vec![(i + 1).to_string(), file.classes()[*class].clone()];
        record.extend(row.iter().map(|p| format!("{p:e}")));
        writer.write_record(&record)?;
    }
    let bytes = writer
        .into_inner()
        .context("cannot write the predictions")?;
    match &args.out {
        Some(path) => std::fs::write(path, bytes)
            .with_context(|| format!("{}: cannot write", path.display()))?,
        None => std::io::stdout()
            .write_all(&bytes)
            .context("cannot write the predictions")?,
    }
    Ok(())
}
