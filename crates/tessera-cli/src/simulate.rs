//! `tessera simulate`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tessera_data::{FileSource, Filesystem};
use tessera_engine::Plan;
use tessera_sim::{Attack, AttackKind, RoundRecord, RunReport, SimOptions, simulate};

use crate::bundled::{self, Bundled};
use crate::paths::{self, Input, plan_data_inputs};
use crate::plot::{personal_plot_path, write_personal_plot, write_plot};

/// Arguments of `tessera simulate`.
#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true)]
pub struct SimulateArgs {
    /// Plan file (TOML). Without it and without --data: the bundled Fed-Heart-Disease plan.
    #[arg(long, conflicts_with = "data")]
    plan: Option<PathBuf>,
    /// Ad-hoc: one CSV with a header and a site column; every other column is a feature.
    #[arg(long, requires_all = ["site_column", "target"])]
    data: Option<PathBuf>,
    /// Ad-hoc: the column naming each row's site.
    #[arg(long, requires = "data")]
    site_column: Option<String>,
    /// Ad-hoc: the column to predict.
    #[arg(long, requires = "data")]
    target: Option<String>,
    /// Ad-hoc: the target value that is the positive class (binary tasks).
    #[arg(long, requires = "data")]
    positive: Option<String>,
    /// Ad-hoc: logistic, softmax or mlp.
    #[arg(long, requires = "data")]
    model: Option<String>,
    /// Ad-hoc: hidden layer widths of the mlp, e.g. 64,32.
    #[arg(long, requires = "data", value_delimiter = ',')]
    hidden: Vec<usize>,
    /// Ad-hoc: columns to leave out (identifiers, free text), e.g. id,name.
    #[arg(long, requires = "data", value_delimiter = ',')]
    ignore: Vec<String>,
    /// The strategy, by name (fedavg, fedprox, scaffold, ...; an unknown name lists them all).
    #[arg(long)]
    strategy: Option<String>,
    /// Run seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Number of rounds.
    #[arg(long)]
    rounds: Option<u32>,
    /// Also train local-only and pooled baselines on the same splits.
    #[arg(long)]
    baselines: bool,
    /// Report the run-clock time when accuracy (all test rows) first reaches this.
    #[arg(long)]
    target_accuracy: Option<f64>,
    /// Simulated attack: sign_flip, scaling, gaussian, label_flip or free_rider.
    #[arg(long, requires = "malicious")]
    attack: Option<String>,
    /// Simulated attack: how many sites are malicious.
    #[arg(long, requires = "attack")]
    malicious: Option<usize>,
    /// Simulated attack: its strength (default: sign_flip 4, scaling 100, gaussian 1).
    #[arg(long, requires = "attack")]
    attack_strength: Option<f64>,
    /// Report file (JSON), replaced if it exists. Default:
    /// tessera-out/<plan>-<strategy>-seed<seed>.json
    #[arg(long)]
    report: Option<PathBuf>,
    /// Plot file (SVG), replaced if it exists. Default: beside the report.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Writes the per-site figures (each site's data summary, final
    /// metrics, baselines, traffic per round) to this file, one JSON line
    /// a site, and only their summary in the report. Done without asking,
    /// beside the report (REPORT.sites.jsonl), past 1000 sites, so that the
    /// report's size does not grow with the site count.
    #[arg(long, value_name = "FILE")]
    per_site: Option<PathBuf>,
    /// File for the final model, self-describing (see `tessera model
    /// inspect`), replaced if it exists.
    #[arg(long)]
    model_out: Option<PathBuf>,
    /// Read the plan's CSV (one file with a site column) as a run would,
    /// save its rows as read to FILE (ending in .trows) and stop: a later
    /// run with the same reading settings reads FILE (--data FILE, or the
    /// plan's data.path) at the speed of the disk instead of parsing the
    /// CSV again.
    #[arg(long, value_name = "FILE")]
    save_rows: Option<PathBuf>,
    /// No progress bar or round table.
    #[arg(long, short)]
    quiet: bool,
    /// Log the run to an MLflow tracking server (http://HOST:PORT) when it
    /// ends: the plan's settings as params, metrics per round, versions
    /// and data fingerprints as tags, the plan, report, plot and model as
    /// artifacts.
    #[arg(long, value_name = "URL")]
    mlflow: Option<String>,
    /// The MLflow experiment (default: the plan's name).
    #[arg(long, requires = "mlflow", value_name = "NAME")]
    mlflow_experiment: Option<String>,
    /// Changes one plan setting, SECTION.KEY=VALUE at any depth (repeatable;
    /// the value as TOML, a bare word as text; nothing after `=` gives the
    /// key its default), e.g. `--set privacy.mode=central --set
    /// privacy.epsilon=3`, `--set compression.upload=topk:0.01+q8`,
    /// `--set model.hidden=[32,16]`; every key of a plan file (README:
    /// "Plans"); applied before --strategy, --seed and --rounds.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    settings: Vec<String>,
    #[command(flatten)]
    continual: crate::continual::ContinualArgs,
}

mod plan;
mod report_file;
pub(crate) use report_file::write_report;

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let (mut plan, base_dir, source): (Plan, PathBuf, Box<dyn FileSource>) =
        match (&args.plan, &args.data) {
            (Some(path), _) => {
                let plan = Plan::from_file_with(path, &args.settings)?;
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (plan, dir, Box::new(Filesystem))
            }
            (None, Some(data)) => (
                plan::ad_hoc_plan(&args, data)?,
                PathBuf::new(),
                Box::new(Filesystem),
            ),
            (None, None) => {
                let plan = Plan::from_toml_with(bundled::PLAN, bundled::PLAN_PATH, &args.settings)?;
                (plan, PathBuf::from("examples"), Box::new(Bundled))
            }
        };
    if args.plan.is_none() && args.data.is_some() && !args.settings.is_empty() {
        plan = plan.with_settings(&args.settings)?;
    }
    plan::apply_overrides(&mut plan, &args)?;
    plan.validate()?;
    if plan.model.kind.is_external() {
        anyhow::bail!(
            "the plan's model is external (kind = \"external\" in [model]): each site's learner \
             lives outside Tessera, so there are no rows to simulate here; run it with its \
             learners (tessera_sim::simulate_with_learners, or the Python package's \
             tessera.simulate)"
        );
    }
    let strategy = plan.federation.strategy;
    let report_path = args.report.clone().unwrap_or_else(|| {
        // The plan's name may hold anything: keep letters, digits, '-', '_' and '.'.
        let name: String = plan
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = name.trim_start_matches('.');
        PathBuf::from("tessera-out").join(format!("{name}-{strategy}-seed{}.json", plan.seed))
    });
    let plot_path = args
        .plot
        .clone()
        .unwrap_or_else(|| report_path.with_extension("svg"));
    check_outputs(&args, &plan, &base_dir, &report_path, &plot_path)?;
    if let Some(url) = &args.mlflow {
        crate::mlflow::Server::new(url)?;
    }
    if plan.multitask.is_some() {
        let c = &args.continual;
        let flags = [
            ("--baselines", args.baselines),
            ("--target-accuracy", args.target_accuracy.is_some()),
            ("--attack", args.attack.is_some()),
            ("--continue-from", c.continue_from.is_some()),
            ("--importance-out", c.importance_out.is_some()),
            ("--site-importance-out", c.site_importance_out.is_some()),
            ("--mlflow", args.mlflow.is_some()),
        ];
        if let Some((flag, _)) = flags.iter().find(|(_, used)| *used) {
            bail!(
                "{flag} is not for a [multitask] plan: it reports each task's own federation \
                 and every site alone beside the multi-task run (--model-out writes one model \
                 per task)"
            );
        }
        let source = source.as_ref();
        return crate::multitask::simulate(
            &plan,
            &base_dir,
            source,
            &crate::multitask::Outputs {
                report: &report_path,
                plot: &plot_path,
                model_out: args.model_out.as_deref(),
                plan_file: args.plan.as_deref(),
                quiet: args.quiet,
            },
        );
    }

    if let Some(out) = &args.save_rows {
        let saved = tessera_data::save_rows(&plan.data, &base_dir, source.as_ref(), out)?;
        println!(
            "saved {} rows of {} sites to {}: read them with --data {} (and the same --site-column \
             and --target), or as the plan's data.path",
            saved.rows,
            saved.sites,
            out.display(),
            out.display()
        );
        return Ok(());
    }
    let data_started = Instant::now();
    // Nothing after loading reads the rows as encoded before
    // standardisation or the sites' statistics unless one of these asks:
    // else each site's go as soon as it is prepared.
    let release = !args.baselines
        && args.model_out.is_none()
        && !args.continual.reads_standardisation()
        && plan.personalization.department.is_none()
        && plan.personalization.new_sites.is_empty();
    let (data, cross_silo) =
        tessera_sim::load_data_with(&plan, &base_dir, source.as_ref(), release)?;
    release_free_memory();
    let data_seconds = data_started.elapsed().as_secs_f64();
    let n_train: usize = data.summary.iter().map(|s| s.n_train).sum();
    let n_test: usize = data.summary.iter().map(|s| s.n_test).sum();
    // The model must fit the data before anything runs.
    tessera_sim::initial_model(&plan, &data)?;
    if !args.quiet {
        crate::logging::say(
            tracing::Level::INFO,
            &format!(
                "{}: {} sites{}, {} training and {} test rows, {} features, {} classes; {} {} rounds, seed {}",
                plan.name,
                data.sites.len(),
                match plan.personalization.new_sites.len() {
                    0 => String::new(),
                    n => format!(" ({n} of them new: they take no part in the rounds)"),
                },
                n_train,
                n_test,
                data.n_features(),
                data.task.n_classes(),
                strategy,
                plan.federation.rounds,
                plan.seed,
            ),
        );
    }

    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(u64::from(plan.federation.rounds));
        bar.set_style(
            ProgressStyle::with_template("{spinner} round {pos}/{len} [{bar:30}] {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    };
    let quiet = args.quiet;
    let mut header_printed = false;
    let mut observer = |r: &RoundRecord| {
        if crate::logging::is_json() {
            tracing::info!(
                round = r.round,
                status = %r.status,
                accuracy = r.accuracy,
                mean_site_accuracy = r.mean_site_accuracy,
                loss = r.loss,
                "round evaluated"
            );
        }
        if !quiet {
            progress.suspend(|| {
                let mut out = std::io::stdout().lock();
                if !header_printed {
                    let _ = writeln!(
                        out,
                        "{:>5}  {:>8}  {:>9}  {:>7}  {:>6}  {:>8}  {:>8}  {:>9}  status",
                        "round",
                        "accuracy",
                        "mean-site",
                        "loss",
                        "auc",
                        "accepted",
                        "seconds",
                        "virtual-s"
                    );
                    header_printed = true;
                }
                let _ = writeln!(
                    out,
                    "{:>5}  {:>8.4}  {:>9.4}  {:>7.4}  {:>6}  {:>8}  {:>8.3}  {:>9.2}  {}",
                    r.round,
                    r.accuracy,
                    r.mean_site_accuracy,
                    r.loss,
                    r.auc.map_or("-".to_string(), |a| format!("{a:.4}")),
                    r.accepted,
                    r.seconds,
                    r.virtual_seconds,
                    r.status
                );
                if r.rejected > 0 {
                    // Refused updates are not in `accepted`: say so here,
                    // not only in the report's `rounds[].rejected`.
                    let _ = writeln!(
                        out,
                        "       warning: {} updates refused this round (the report's \
                         rounds[].rejected; site_errors say why)",
                        r.rejected
                    );
                }
                for error in &r.site_errors {
                    let _ = writeln!(out, "       warning: {error}");
                }
            });
        }
        progress.set_message(format!("accuracy {:.4}", r.accuracy));
        progress.inc(1);
    };
    let attack = match &args.attack {
        None => None,
        Some(name) => {
            let kind: AttackKind = name.parse().map_err(anyhow::Error::msg)?;
            let malicious = args.malicious.unwrap_or(0);
            if malicious > data.sites.len() {
                bail!(
                    "--malicious {malicious}: the federation has only {} sites",
                    data.sites.len()
                );
            }
            let strength = args
                .attack_strength
                .unwrap_or_else(|| kind.default_strength());
            if !strength.is_finite() {
                bail!("--attack-strength must be a finite number, got {strength}");
            }
            Some(Attack {
                kind,
                malicious,
                strength,
            })
        }
    };
    let options = SimOptions {
        baselines: args.baselines,
        target_accuracy: args.target_accuracy,
        attack,
    };
    if args.baselines && !quiet {
        progress.println("baselines (local-only and pooled) train after the rounds");
    }
    let continuation = args.continual.continuation(&plan, &data)?;
    let earlier = match &continuation {
        Some((_, _, from)) => {
            let source = source.as_ref();
            args.continual
                .earlier_data(&plan, &base_dir, source, from)?
        }
        None => None,
    };
    let mut continued_from = None;
    let mut report = match continuation {
        Some((continuation, said, from)) => {
            if !quiet {
                progress.println(said);
            }
            let mut report = tessera_sim::simulate_continued(
                &plan,
                &data,
                continuation,
                &options,
                &mut observer,
            )?;
            args.continual
                .complete(&mut report, &from, earlier.as_ref())?;
            continued_from = Some(from);
            report
        }
        None => simulate(&plan, &data, &options, &mut observer)?,
    };
    progress.finish_and_clear();
    report.timing.data_seconds = data_seconds;
    report.timing.total_seconds = started.elapsed().as_secs_f64();
    report.timing.peak_rss_bytes = peak_rss_bytes();

    let sites = report.data.len().max(report.final_metrics.per_site.len());
    let per_site = args.per_site.clone().or_else(|| {
        (sites > tessera_engine::report::SPLIT_ABOVE)
            .then(|| report_path.with_extension("sites.jsonl"))
    });
    write_report(
        &mut report,
        cross_silo.as_ref(),
        &report_path,
        per_site.as_deref(),
    )?;
    if let Some(path) = &args.model_out {
        let mut file = crate::model::of_simulation(&plan, &data, &report)?;
        if let (Some(from), Some(c)) = (&continued_from, &report.continual) {
            file.header.lineage.parent = format!(
                "{} (round {} of plan {}, parameters sha256 {})",
                c.from,
                from.header.lineage.round,
                from.header.plan.hash,
                crate::continual::digest(&from.parameters)
            );
        }
        crate::model::write(path, &file)?;
        crate::model::warn_if_heads_stay_home(&plan, path);
    }
    args.continual.write_importance(&plan, &data, &report)?;
    args.continual
        .write_site_importance(&plan, &data, &report)?;
    write_plot(&report, &plot_path)?;
    let personal_plot = personal_plot_path(&plot_path);
    let personal_plotted = write_personal_plot(&report, &personal_plot)?;
    if !quiet {
        print_summary(&report, per_site.as_deref());
        if let Some(c) = &cross_silo {
            println!(
                "cross-silo feature '{}' from '{}': each site spent epsilon {} at delta {} \
                 (noise multiplier {:.4}, noise sd {:.3} on a row's feature; simulation, not a release)",
                c.feature, c.identifier, c.epsilon, c.delta, c.noise_multiplier, c.feature_noise
            );
        }
        crate::logging::say(
            tracing::Level::INFO,
            &format!(
                "report: {}  plot: {}{}",
                report_path.display(),
                plot_path.display(),
                if personal_plotted {
                    format!("  per-site gains: {}", personal_plot.display())
                } else {
                    String::new()
                }
            ),
        );
        if let Some(path) = &per_site {
            crate::logging::say(
                tracing::Level::INFO,
                &format!(
                    "per-site figures of {sites} sites: {} (one JSON line a site)",
                    path.display()
                ),
            );
        }
    }
    if let Some(url) = &args.mlflow {
        let mut files = vec![(
            "plan.toml".to_string(),
            toml::to_string(&plan)?.into_bytes(),
        )];
        let mut outputs = vec![report_path.clone(), plot_path.clone()];
        outputs.extend(per_site.clone());
        outputs.extend(args.model_out.clone());
        for path in outputs {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push((
                name,
                std::fs::read(&path).with_context(|| path.display().to_string())?,
            ));
        }
        let plan_text = String::from_utf8_lossy(&files[0].1).into_owned();
        let tracked = crate::tracking::from_report(&plan_text, &report, &files);
        let exported =
            crate::mlflow::export(url, args.mlflow_experiment.as_deref(), &tracked, &files)
                .context("logging to MLflow (the report and plot are written)")?;
        crate::mlflow::say(url, &exported);
    }
    Ok(())
}

fn print_summary(report: &RunReport, per_site: Option<&Path>) {
    if let Some(t) = report.timing.virtual_seconds_to_target {
        println!("target accuracy reached at {t:.2} s on the run clock");
    }
    if let Some(p) = &report.privacy {
        println!(
            "privacy: {} DP spent epsilon {} at delta {:e} ({} accountant, budget {}), noise multiplier {}{}, clipping norm {}{}; {} releases in the ledger",
            p.mode,
            tessera_core::number(p.epsilon, 4),
            p.delta,
            p.accountant,
            p.budget
                .map_or("none".to_string(), |b| tessera_core::number(b, 4)),
            if p.site_noise_multipliers.len() > 1 {
                "(smallest) "
            } else {
                ""
            },
            tessera_core::number(p.noise_multiplier, 4),
            tessera_core::number(p.clip_norm, 4),
            if p.adaptive_clipping {
                " (adaptive)"
            } else {
                ""
            },
            p.ledger.len()
        );
        if !p.site_noise_multipliers.is_empty() {
            let each: Vec<String> = p
                .site_noise_multipliers
                .iter()
                .map(|(site, z)| format!("{site} {z:.4}"))
                .collect();
            println!("privacy: noise multiplier per site: {}", each.join(", "));
        }
        if !p.release {
            println!("privacy: {}", p.note);
        }
    }
    if let Some(m) = &report.metrics_privacy {
        println!(
            "metrics: noised sums across sites, {} evaluation(s) spent epsilon {:.4} of {} at delta {:e} ({} accountant, noise multiplier {:.4}), for one row of a site's test set",
            m.releases, m.epsilon, m.budget, m.delta, m.accountant, m.noise_multiplier
        );
        if !m.release {
            println!("metrics: {}", m.note);
        }
    }
    if let Some(r) = &report.robustness {
        println!(
            "robustness: rule {}{}; attack {} by {} site(s)",
            r.rule,
            r.norm_bound
                .map_or(String::new(), |b| format!(", norm bound {b}")),
            r.attack,
            r.malicious.len()
        );
    }
    if let Some(line) = tessera_engine::report::population_line(&report.population_changes) {
        println!("{line}");
    }
    if let Some(c) = &report.contributions {
        println!("{}", c.summary_line());
    }
    let f = &report.final_metrics;
    println!("final: {}", f.summary());
    if f.per_site.is_empty() {
        println!(
            "per site: not reported (site_metrics = \"{}\": sums across sites only)",
            report
                .metrics_privacy
                .as_ref()
                .map_or("aggregate-only", |_| "dp")
        );
    } else if f.per_site.len() <= 12 {
        let sites: Vec<String> = f
            .per_site
            .iter()
            .map(|(s, m)| {
                format!(
                    "{s} {}",
                    m.accuracy.map_or("-".to_string(), |a| format!("{a:.4}"))
                )
            })
            .collect();
        println!("per site: {}", sites.join(", "));
    } else {
        match per_site {
            Some(path) => println!(
                "per site: {} sites, in {} (one JSON line a site)",
                f.per_site.len(),
                path.display()
            ),
            None => println!("per site: {} sites, in the report", f.per_site.len()),
        }
        if let Some(fairness) = &report.fairness {
            println!("{}", fairness.summary_line());
        }
    }
    if let Some(b) = &report.baselines {
        if let Some(pooled) = &b.pooled {
            println!(
                "baselines: pooled {:.4} (all test rows), {:.4} (mean of sites); local only {:.4} (mean of sites)",
                pooled.accuracy, pooled.mean_site_accuracy, b.local.mean_site_accuracy
            );
        } else {
            println!(
                "baselines: local only {:.4} (mean of sites)",
                b.local.mean_site_accuracy
            );
        }
        if let Some(line) = rare_baselines_line(b) {
            println!("{line}");
        }
        if let Some(line) = crate::versus::choices_line(b) {
            println!("{line}");
        }
        for line in crate::versus::lines(report) {
            println!("{line}");
        }
        for error in &b.errors {
            println!("warning: {error}");
        }
    }
    if let Some(p) = &report.personalization {
        let local = p
            .mean_local_only
            .map_or_else(|| "n/a".to_string(), |l| format!("{l:.4}"));
        let tuned = if p.finetune_epochs > 0 {
            let s = if p.finetune_epochs == 1 { "" } else { "s" };
            let rows = p
                .finetune_rows
                .map_or_else(String::new, |n| format!(" on {n} rows"));
            format!(", fine-tuned {} epoch{s}{rows}", p.finetune_epochs)
        } else {
            String::new()
        };
        let regional = p.mean_regional.map_or_else(String::new, |r| {
            format!(" (from each site's region's model, itself {r:.4})")
        });
        println!(
            "personalized ({}{tuned}){regional}: {:.4} mean of sites; global {:.4}; local only \
             {local}; beats both at {} of {} sites",
            p.strategy, p.mean_personalized, p.mean_global, p.sites_beating_both, p.sites
        );
        if let Some(d) = &p.departments {
            let show = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.4}"));
            let regional = d
                .mean_regional
                .map_or_else(String::new, |r| format!("; regional {r:.4}"));
            println!(
                "departments ({}, {} populations): department {} mean; site {:.4}{regional}; \
                 global {:.4}; trained alone {}; department beats site at {}",
                d.column,
                d.populations,
                show(d.mean_department),
                d.mean_site,
                d.mean_global,
                show(d.mean_local_only),
                d.department_beats_site
            );
        }
    }
    if let Some(n) = &report.new_sites {
        let local = n
            .mean_local_only
            .map_or_else(|| "n/a".to_string(), |l| format!("{l:.4}"));
        let rows = n
            .finetune_rows
            .map_or_else(|| "all their rows".to_string(), |r| format!("{r} rows"));
        println!(
            "new sites (took no part; adapted {} epoch{} on {rows}): {:.4} mean; global {:.4}; \
             trained alone on the same rows {local}; adapted beats both at {} of {}",
            n.finetune_epochs,
            if n.finetune_epochs == 1 { "" } else { "s" },
            n.mean_adapted,
            n.mean_global,
            n.sites_beating_both,
            n.sites
        );
    }
    if let Some(c) = &report.continual {
        crate::continual::print_summary(c);
    }
    let t = &report.timing;
    println!(
        "time: {:.3} s total, {:.4} s per round ({} threads); virtual {:.2} s",
        t.total_seconds, t.seconds_per_round, t.threads, t.virtual_seconds,
    );
    let c = &report.communication;
    println!(
        "traffic: {} bytes up (updates {}), {} bytes down",
        c.bytes_up, c.update_bytes_up, c.bytes_down
    );
}

/// Refuses outputs that are the plan, a data file, or one another, before
/// any data is read.
fn check_outputs(
    args: &SimulateArgs,
    plan: &Plan,
    base_dir: &Path,
    report_path: &Path,
    plot_path: &Path,
) -> anyhow::Result<()> {
    let mut inputs = Vec::new();
    if let Some(path) = &args.plan {
        inputs.push(Input::new("the plan file", path));
        inputs.extend(plan_data_inputs(&plan.data, base_dir));
    } else if let Some(path) = &args.data {
        inputs.push(Input::new("the --data file", path));
    }
    let report_flag = if args.report.is_some() {
        "--report"
    } else {
        "--report (default)"
    };
    let plot_flag = if args.plot.is_some() {
        "--plot"
    } else {
        "--plot (default: the report's path with .svg)"
    };
    let mut outputs = vec![(report_flag, report_path), (plot_flag, plot_path)];
    if let Some(path) = &args.model_out {
        outputs.push(("--model-out", path.as_path()));
    }
    if let Some(path) = &args.per_site {
        outputs.push(("--per-site", path.as_path()));
    }
    paths::check_outputs(&outputs, &inputs)
}

/// Gives the allocator's free pages back to the system: what reading a
/// large federation freed stays in the middle of glibc's heaps, and a
/// round's allocations reuse only part of it (a million sites: ~0.3 GB of
/// peak memory).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_free_memory() {
    // SAFETY: malloc_trim takes no pointer and has no precondition: it only
    // returns the free memory of the allocator's heaps to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

/// Peak resident set size of this process, where the system tells it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Where positives are rare, the baselines by AUC, PR-AUC and balanced
/// accuracy, as the `final:` line then leads (`None` otherwise).
fn rare_baselines_line(b: &tessera_engine::report::Baselines) -> Option<String> {
    let show = |name: &str, auc: Option<f64>, binary: Option<&tessera_learn::BinaryMetrics>| {
        let (auc, m) = (auc?, binary?);
        Some(format!(
            "{name} AUC {auc:.4}, PR-AUC {:.4}, balanced accuracy {:.4}",
            m.pr_auc, m.balanced_accuracy
        ))
    };
    let pooled = b.pooled.as_ref();
    let rare = pooled
        .and_then(|p| p.binary.as_ref())
        .or(b.local.binary.as_ref())
        .is_some_and(tessera_learn::BinaryMetrics::positives_rare);
    let parts: Vec<String> = [
        pooled.and_then(|p| show("pooled", p.auc, p.binary.as_ref())),
        show("local only", b.local.auc, b.local.binary.as_ref()),
    ]
    .into_iter()
    .flatten()
    .collect();
    (rare && !parts.is_empty()).then(|| format!("baselines (positives rare): {}", parts.join("; ")))
}
