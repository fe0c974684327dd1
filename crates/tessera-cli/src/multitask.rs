//! `tessera simulate` of a plan with `[multitask]`: the multi-task run,
//! each task's own federation and every site alone, printed per task and
//! per site, written as a JSON report and a plot of each site's gain.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use tessera_data::FileSource;
use tessera_engine::Plan;
use tessera_sim::multitask::MultitaskRound;

/// Where a multi-task run writes, and what it says.
pub struct Outputs<'a> {
    /// The JSON report.
    pub report: &'a Path,
    /// The plot of each site's gains.
    pub plot: &'a Path,
    /// `--model-out`: each task's model beside it.
    pub model_out: Option<&'a Path>,
    /// The plan file (never overwritten).
    pub plan_file: Option<&'a Path>,
    /// No round table.
    pub quiet: bool,
}

/// Runs the multi-task plan and writes what `outputs` says.
pub fn simulate(
    plan: &Plan,
    base_dir: &Path,
    source: &dyn FileSource,
    outputs: &Outputs<'_>,
) -> anyhow::Result<()> {
    let Outputs {
        report: report_path,
        plot: plot_path,
        model_out,
        plan_file,
        quiet,
    } = *outputs;
    let specs = plan.multitask.as_ref().map(|m| &m.tasks[..]).unwrap_or(&[]);
    let data = tessera_sim::load_multitask(plan, base_dir, source)?;
    let model_paths: Vec<(String, std::path::PathBuf)> = match model_out {
        None => Vec::new(),
        Some(path) => specs
            .iter()
            .map(|t| (t.name.clone(), task_path(path, &t.name)))
            .collect(),
    };
    let flags: Vec<String> = model_paths
        .iter()
        .map(|(task, _)| format!("--model-out (task '{task}')"))
        .collect();
    let mut outputs = vec![("--report", report_path), ("--plot", plot_path)];
    outputs.extend(
        flags
            .iter()
            .map(String::as_str)
            .zip(model_paths.iter().map(|(_, p)| p.as_path())),
    );
    let mut inputs = crate::paths::plan_data_inputs(&plan.data, base_dir);
    if let Some(path) = plan_file {
        inputs.push(crate::paths::Input::new("the plan file", path));
    }
    crate::paths::check_outputs(&outputs, &inputs)?;
    let names = data.names();
    if !quiet {
        let tasks: Vec<String> = specs
            .iter()
            .zip(&data.tasks)
            .map(|(spec, d)| {
                format!(
                    "'{}' ({} from '{}', {} sites)",
                    spec.name,
                    d.task.classes.join("/"),
                    spec.target,
                    spec.sites.len()
                )
            })
            .collect();
        println!(
            "{}: {} sites, {} features, tasks {}; {} rounds, seed {}",
            plan.name,
            names.len(),
            data.tasks[0].n_features(),
            tasks.join(", "),
            plan.federation.rounds,
            plan.seed
        );
        println!(
            "{:>5}  {:>9}  {:>7}  {:>8}",
            "round", "mean-site", "loss", "accepted"
        );
    }
    let mut observer = |r: &MultitaskRound| {
        if crate::logging::is_json() {
            tracing::info!(
                round = r.round,
                mean_site_accuracy = r.mean_site_accuracy,
                train_loss = r.train_loss,
                accepted = r.accepted,
                "multitask round"
            );
        }
        if quiet {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{:>5}  {:>9.4}  {:>7.4}  {:>8}",
            r.round, r.mean_site_accuracy, r.train_loss, r.accepted
        );
        for error in &r.site_errors {
            let _ = writeln!(out, "       warning: {error}");
        }
    };
    let (report, models) = tessera_sim::simulate_multitask(plan, &data, &mut observer)?;
    // Each task's model: the shared body and the task's head, with the
    // task's target, classes and encoding.
    for (t, (task, path)) in model_paths.iter().enumerate() {
        let round = report.rounds.last().map_or(0, |r| r.round);
        let mut file = crate::model::of_parameters(plan, &data.tasks[t], round, models[t].clone())?;
        file.header.target = specs[t].target.clone();
        file.header.lineage.parent = format!(
            "the plan's initial model (seed {}), task '{task}' of [multitask]",
            plan.seed
        );
        crate::model::write(path, &file)?;
    }
    if let Some(dir) = report_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(report_path, json)
        .with_context(|| format!("cannot write {}", report_path.display()))?;
    let gains: Vec<(f64, Option<f64>)> = report
        .per_site
        .values()
        .filter_map(|s| Some((s.shared? - s.separate?, Some(s.shared? - s.local?))))
        .collect();
    crate::plot::gain_bars(
        plot_path,
        &format!("{} · per-site gain of the shared body", report.plan),
        gains,
        ["over the task's own federation", "over the site alone"],
    )?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<16}  {:>6}  {:>9}  {:>9}  {:>9}",
        "task", "sites", "shared", "separate", "alone"
    )?;
    let figure = |f: &tessera_sim::multitask::Figures| {
        if f.tested_sites == 0 {
            "-".to_string()
        } else {
            format!("{:.4}", f.mean_site_accuracy)
        }
    };
    for task in &report.tasks {
        writeln!(
            out,
            "{:<16}  {:>6}  {:>9}  {:>9}  {:>9}",
            task.name,
            task.sites.len(),
            figure(&task.shared),
            figure(&task.separate),
            figure(&task.local)
        )?;
    }
    writeln!(
        out,
        "{:<16}  {:>6}  {:>9.4}  {:>9.4}  {:>9.4}",
        "all",
        names.len(),
        report.shared.mean_site_accuracy,
        report.separate.mean_site_accuracy,
        report.local.mean_site_accuracy
    )?;
    let better = report
        .per_site
        .values()
        .filter(|s| match (s.shared, s.separate, s.local) {
            (Some(shared), Some(separate), Some(local)) => shared > separate.max(local),
            _ => false,
        })
        .count();
    let tested = report
        .per_site
        .values()
        .filter(|s| s.shared.is_some())
        .count();
    writeln!(
        out,
        "final: mean per-site accuracy {:.4} with the shared body, {:.4} with each task's own \
         federation, {:.4} alone; the shared body beats both at {better} of {tested} sites \
         with test rows",
        report.shared.mean_site_accuracy,
        report.separate.mean_site_accuracy,
        report.local.mean_site_accuracy,
    )?;
    for (task, path) in &model_paths {
        writeln!(out, "model of task '{task}': {}", path.display())?;
    }
    writeln!(out, "report: {}", report_path.display())?;
    writeln!(out, "plot: {}", plot_path.display())?;
    Ok(())
}

/// `path` with `-TASK` after its stem: `out/model.tsm` gives
/// `out/model-disease.tsm`.
fn task_path(path: &Path, task: &str) -> std::path::PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{task}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{task}"),
    };
    path.with_file_name(name)
}
