//! `tessera analyze`: a query over the plan's data, answered in simulation
//! (every site's contribution computed here, as `tessera simulate` reads
//! the data), printed as a table, optionally written as JSON and plotted
//! (histograms), and with `--db` recorded with its ledger rows in a run
//! store, where training's releases and earlier answers are charged too.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use plotters::prelude::*;
use tessera_analytics::{Answer, Report, Schema, Settings};
use tessera_coordinator::store::{AnalyticsRow, LedgerRow, RunRow, RunStatus};
use tessera_coordinator::{RunStore, SqliteStore};
use tessera_data::Filesystem;
use tessera_engine::Plan;

mod remote;

/// Arguments of `tessera analyze`.
#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// The plan: its data, `[analytics]` and `[privacy]` budgets (not with
    /// --coordinator: the coordinator's plan holds them).
    #[arg(long, required_unless_present = "coordinator")]
    plan: Option<PathBuf>,
    /// The query, e.g. "SELECT cp, count(*), mean(age) FROM data GROUP BY cp CLAMP age 0 120".
    #[arg(long, required_unless_present = "close")]
    query: Option<String>,
    /// Ask a deployed federation instead of simulating: its coordinator's
    /// URL (https:// with --tls). The sites answer after the last training
    /// round while the plan's `[analytics] serve_seconds` keeps them
    /// connected; the coordinator checks the query and the run's budgets,
    /// sums the sites' noised contributions through secure aggregation, and
    /// records the answer and its ledger rows in its store.
    #[arg(long, conflicts_with_all = ["plan", "db", "run", "seed", "epsilon", "delta", "settings"])]
    coordinator: Option<String>,
    /// With --coordinator: the analyst's name, as its certificate gives it
    /// and the plan's `[analytics] analysts` lists it.
    #[arg(long, requires = "coordinator")]
    analyst: Option<String>,
    /// With --coordinator: mutual TLS with this folder (cert.pem, key.pem,
    /// ca.pem) holding the analyst's certificate of the federation CA,
    /// issued like a site's: `tessera ca issue --site NAME`.
    #[arg(long, requires = "coordinator", conflicts_with = "insecure")]
    tls: Option<PathBuf>,
    /// With --tls: the coordinator's name in its certificate (default: the URL's host).
    #[arg(long, requires = "tls")]
    tls_domain: Option<String>,
    /// With --coordinator: plain text without authentication (local experiments only).
    #[arg(long, requires = "coordinator")]
    insecure: bool,
    /// With --coordinator: end the sites' serving period now (after the
    /// query, if one is given): the sites are told the run is over.
    #[arg(long, requires = "coordinator")]
    close: bool,
    /// The query's epsilon (default: the plan's `[analytics] epsilon`).
    #[arg(long)]
    epsilon: Option<f64>,
    /// The query's delta (default: the plan's `[analytics] delta`).
    #[arg(long)]
    delta: Option<f64>,
    /// Derive the simulated sites' noise from this public seed, for an
    /// experiment: the answer is then reproducible by anyone who knows it,
    /// and says so (default: a fresh key from the operating system).
    #[arg(long)]
    seed: Option<u64>,
    /// Write the answer as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the federation's histograms as SVG here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Record the query, its answer and its ledger rows in this run store
    /// (created if needed), charging it with the run's earlier releases.
    #[arg(long)]
    db: Option<PathBuf>,
    /// With --db: the run to charge (default: the newest run of the
    /// plan's name, else a new one).
    #[arg(long)]
    run: Option<String>,
    /// Change a plan setting (`--set analytics.epsilon=0.5`).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    settings: Vec<String>,
}

/// Runs `tessera analyze`.
pub fn run(args: &AnalyzeArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.coordinator {
        return remote::run(args, url);
    }
    let (Some(plan_path), Some(query)) = (&args.plan, &args.query) else {
        bail!("give --plan and --query (or --coordinator URL to ask a deployed federation)");
    };
    let mut plan = Plan::from_file_with(plan_path, &args.settings)?;
    if let Some(e) = args.epsilon {
        plan.analytics.epsilon = e;
    }
    if let Some(d) = args.delta {
        plan.analytics.delta = d;
    }
    plan.validate()?;
    // Everything that could fail after the answer is drawn is checked
    // first: an answer drawn is charged, and one shown is recorded.
    check_outputs(args)?;
    let base_dir = plan_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let records = tessera_data::load_records(&plan.data, &base_dir, &Filesystem)?;
    let schema = Schema::from_records(&records, &plan.analytics.bounds)?.declare_levels(&plan.data);
    let mut ledger = plan.privacy.ledger();
    let mut release = 1;
    let store = match &args.db {
        Some(db) => {
            let store = SqliteStore::open(db)?;
            let run = find_run(&store, args, &plan)?;
            for row in store.privacy_ledger(&run)? {
                ledger.restore(row.entry)?;
            }
            release = store
                .analytics(&run)?
                .iter()
                .map(|r| r.release)
                .max()
                .unwrap_or(0)
                + 1;
            Some((store, run))
        }
        None => None,
    };
    let settings = match args.seed {
        Some(seed) => Settings::seeded(plan.analytics.clone(), seed),
        None => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key)
                .map_err(|e| anyhow::anyhow!("drawing the noise key from the system: {e}"))?;
            Settings::secret(plan.analytics.clone(), key)
        }
    };
    let report = tessera_analytics::answer(
        query,
        &schema,
        &records.sites,
        &settings,
        &mut ledger,
        release,
    )?;
    let recorded = if let Some((store, run)) = &store {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let federation = &report.answers[0].release;
        let rows: Vec<LedgerRow> = report
            .ledger
            .iter()
            .map(|entry| LedgerRow {
                entry: tessera_privacy::LedgerEntry {
                    kind: "analytics".into(),
                    ..entry.clone()
                },
                delta: ledger.budgets().delta,
                clip_norm: federation.sensitivity,
                next_clip_norm: federation.sensitivity,
                noise_std: federation.noise_std,
                updates: records.sites.len() as u64,
                recorded_micros: now,
            })
            .collect();
        store.record_analytics(
            run,
            &AnalyticsRow {
                release,
                query: query.clone(),
                answer: serde_json::to_string(&report)?,
                protected: federation.protected,
                epsilon: federation.epsilon.unwrap_or(0.0),
                delta: federation.delta.unwrap_or(0.0),
                noise_std: federation.noise_std,
                recorded_micros: now,
            },
            &rows,
        )?;
        Some(release)
    } else {
        None
    };
    print_report(&report, plan.analytics.min_group);
    if store.is_none() {
        println!(
            "charged to no stored ledger: without --db nothing is recorded, and this answer's \
             epsilon does not add up with earlier or later ones"
        );
    }
    if let (Some(release), Some((_, run))) = (recorded, &store) {
        println!(
            "recorded as analytics release {release} of run {run}: run epsilon now {:.4}{}",
            ledger.run_epsilon(),
            if report.answers[0].release.protected {
                String::new()
            } else {
                " (this answer is an UNPROTECTED release, recorded as such)".into()
            }
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("answer written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot_histograms(&report.answers[0], path)?;
        println!("histograms drawn in {}", path.display());
    }
    Ok(())
}

/// Refuses, before anything is answered, what would fail once the answer
/// is drawn: `--plot` for a query without histograms, and output paths that
/// cannot be written.
pub(crate) fn check_outputs(args: &AnalyzeArgs) -> anyhow::Result<()> {
    if args.plot.is_some() {
        let query = tessera_analytics::parse(args.query.as_deref().unwrap_or_default())?;
        let histograms = query.items.iter().any(|i| {
            matches!(
                i,
                tessera_analytics::query::Item::Aggregate(
                    tessera_analytics::query::Aggregate::Histogram { .. }
                )
            )
        });
        if !histograms {
            bail!(
                "--plot draws histograms, and the query asks for none (histogram(column, \
                 bins)); nothing was answered or charged"
            );
        }
    }
    for (flag, path) in [("--json", &args.json), ("--plot", &args.plot)] {
        if let Some(path) = path {
            writable(path).with_context(|| {
                format!(
                    "{flag} {}: cannot be written; nothing was answered or charged",
                    path.display()
                )
            })?;
        }
    }
    Ok(())
}

/// Whether `path` can be opened for writing (a new file is created and
/// removed again; an existing one is left as it is).
fn writable(path: &Path) -> std::io::Result<()> {
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    if !existed {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// The run to charge: `--run`, else the newest of the plan's name, else a
/// new one (finished from the start: no coordinator resumes it). A run
/// still running is refused: its coordinator would read the answers' ledger
/// rows as rounds when it resumes.
fn find_run(store: &SqliteStore, args: &AnalyzeArgs, plan: &Plan) -> anyhow::Result<String> {
    let runs = store.runs()?;
    // A running run's coordinator restores its ledger rows as rounds when it
    // resumes: answers are charged to runs that have ended.
    let usable = |r: &RunRow| -> anyhow::Result<String> {
        if r.status == RunStatus::Running.as_str() {
            bail!(
                "run '{}' is still running: charge answers to it once it has ended, or name \
                 another with --run",
                r.id
            );
        }
        Ok(r.id.clone())
    };
    if let Some(id) = &args.run {
        if let Some(r) = runs.iter().find(|r| &r.id == id) {
            return usable(r);
        }
        bail!("no run '{id}' in the store; leave out --run to use or start one for the plan");
    }
    if let Some(r) = runs.iter().find(|r| r.name == plan.name) {
        return usable(r);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let id = format!("analytics-{}-{now}", plan.name);
    let path = args.plan.as_deref().unwrap_or(Path::new(""));
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    store.create_run(&RunRow {
        id: id.clone(),
        name: plan.name.clone(),
        plan: text,
        strategy: "analytics".into(),
        seed: plan.seed,
        rounds: 0,
        created_unix_micros: now,
        status: RunStatus::Finished.as_str().into(),
    })?;
    Ok(id)
}

fn number(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 1000.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn print_report(report: &Report, min_group: f64) {
    println!("query: {}", report.query);
    println!(
        "{}",
        if report.secure_aggregation {
            "the sites' contributions were summed through secure aggregation (SecAgg+, in process)"
        } else {
            "the sites' contributions were summed in the clear (secure aggregation needs 3 sites)"
        }
    );
    if let Some(note) = &report.experiment {
        println!("EXPERIMENT: {note}");
    }
    for answer in &report.answers {
        print_answer(answer, Some(min_group));
    }
}

pub(crate) fn print_answer(answer: &Answer, min_group: Option<f64>) {
    let r = &answer.release;
    match (r.epsilon, r.delta, r.noise_multiplier) {
        (Some(e), Some(d), Some(z)) => println!(
            "\n{}: epsilon {e} at delta {d:e}; noise multiplier {z:.4} x sensitivity {:.4} = \
             sigma {:.4}; noise std {:.4} per value",
            answer.scope, r.sensitivity, r.sigma, r.noise_std
        ),
        _ => println!(
            "\n{}: UNPROTECTED (exact; the plan's [analytics] dp = false)",
            answer.scope
        ),
    }
    for group in &answer.groups {
        let key: Vec<String> = answer
            .group_by
            .iter()
            .zip(&group.key)
            .map(|(c, l)| format!("{c}={l}"))
            .collect();
        let head = if key.is_empty() {
            "all rows".to_string()
        } else {
            key.join(", ")
        };
        if group.suppressed {
            match min_group {
                Some(m) => println!("  {head}: suppressed (noisy row count below {m})"),
                None => {
                    println!("  {head}: suppressed (noisy row count below the plan's min_group)")
                }
            }
            continue;
        }
        println!("  {head}:");
        for s in &group.statistics {
            let pm = |i: usize| {
                if s.errors[i] > 0.0 {
                    format!("{} ± {}", number(s.values[i]), number(s.errors[i]))
                } else {
                    number(s.values[i])
                }
            };
            if s.labels.is_empty() {
                println!("    {:<36} {}", s.name, pm(0));
            } else if s.columns.is_empty() {
                println!("    {}", s.name);
                for (i, label) in s.labels.iter().enumerate() {
                    println!("      {label:<34} {}", pm(i));
                }
            } else {
                println!(
                    "    {}  (rows: {}; columns: {})",
                    s.name,
                    s.labels.join(", "),
                    s.columns.join(", ")
                );
                for (i, label) in s.labels.iter().enumerate() {
                    let cells: Vec<String> = (0..s.columns.len())
                        .map(|j| pm(i * s.columns.len() + j))
                        .collect();
                    println!("      {label:<12} {}", cells.join("  "));
                }
            }
        }
    }
}

/// One bar chart per histogram of the federation's answer (first group
/// that is not suppressed), stacked.
pub(crate) fn plot_histograms(answer: &Answer, path: &Path) -> anyhow::Result<()> {
    let mut charts = Vec::new();
    for group in answer.groups.iter().filter(|g| !g.suppressed) {
        for s in group
            .statistics
            .iter()
            .filter(|s| s.name.starts_with("histogram"))
        {
            let title = if group.key.is_empty() {
                s.name.clone()
            } else {
                format!("{} ({})", s.name, group.key.join(", "))
            };
            charts.push((title, s.values.clone(), s.errors.clone()));
        }
    }
    if charts.is_empty() {
        bail!("--plot draws histograms, and the query asks for none (histogram(column, bins))");
    }
    let height = 320 * charts.len() as u32;
    let root = SVGBackend::new(path, (720, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    for (area, (title, values, errors)) in root.split_evenly((charts.len(), 1)).iter().zip(&charts)
    {
        let top = values
            .iter()
            .zip(errors)
            .map(|(v, e)| v + e)
            .fold(1.0f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..values.len() as f64, 0f64..top)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("bin")
            .y_desc("rows")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .draw_series(values.iter().enumerate().map(|(i, &v)| {
                Rectangle::new(
                    [(i as f64 + 0.05, 0.0), (i as f64 + 0.95, v.max(0.0))],
                    RGBColor(31, 119, 180).filled(),
                )
            }))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .draw_series(values.iter().zip(errors).enumerate().map(|(i, (&v, &e))| {
                PathElement::new(
                    vec![(i as f64 + 0.5, (v - e).max(0.0)), (i as f64 + 0.5, v + e)],
                    BLACK,
                )
            }))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
