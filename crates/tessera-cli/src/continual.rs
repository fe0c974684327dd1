//! `tessera simulate --continue-from`: continual learning from an earlier
//! run's model file, optionally held to it by elastic weight consolidation
//! with the importance that run wrote (`--importance-out`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tessera_data::{FederatedData, FileSource};
use tessera_engine::Plan;
use tessera_engine::model_file::ModelFile;
use tessera_engine::report::{ContinualReport, EarlierData, RunReport};
use tessera_sim::Continuation;

use tessera_engine::continual::IMPORTANCE_ROWS;

/// What the command line asked for.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ContinualArgs {
    /// Continual learning: start from this model file (an earlier run's
    /// --model-out, of the same model, features and classes) instead of
    /// the plan's initial model.
    #[arg(long, value_name = "FILE")]
    pub continue_from: Option<PathBuf>,
    /// Continual learning: hold the model to the one continued from by
    /// elastic weight consolidation of this weight (the pull on its most
    /// important parameter; 1 is a good start), with the importance the
    /// earlier run wrote (--importance or --site-importance).
    #[arg(long, requires = "continue_from")]
    pub ewc_lambda: Option<f32>,
    /// Continual learning: the earlier run's --importance-out.
    #[arg(
        long,
        value_name = "FILE",
        requires = "ewc_lambda",
        conflicts_with = "site_importance"
    )]
    pub importance: Option<PathBuf>,
    /// Continual learning: the earlier run's --site-importance-out folder;
    /// each site is held by its own importance (SITE.importance), as
    /// deployed participants are with their own --importance.
    #[arg(long, value_name = "DIR", requires = "ewc_lambda")]
    pub site_importance: Option<PathBuf>,
    /// After the run, measure how much each parameter of the final model
    /// matters on the sites' training rows (the diagonal Fisher
    /// information, up to 1,000 rows a site, averaged over sites, the
    /// largest scaled to 1) and write it here as a model file, for a later
    /// run's --ewc-lambda. It is a statistic of the sites' data, as the
    /// model is.
    #[arg(long, value_name = "FILE")]
    pub importance_out: Option<PathBuf>,
    /// After the run, measure each site's own importance of the final
    /// model's parameters (as --importance-out, on that site's rows alone,
    /// its largest scaled to 1) and write it to DIR/SITE.importance: what a
    /// deployed participant's --importance-out keeps at the site.
    #[arg(long, value_name = "DIR")]
    pub site_importance_out: Option<PathBuf>,
    /// Continual learning in simulation: the data the earlier run trained
    /// on, as this plan with this setting changed (repeatable, as --set,
    /// e.g. `--earlier data.synthetic.seed=17`); the model continued from
    /// and the final one are both evaluated on its test rows, which shows
    /// what the continued run forgot.
    #[arg(long, value_name = "SECTION.KEY=VALUE", requires = "continue_from")]
    pub earlier: Vec<String>,
}

impl ContinualArgs {
    /// Whether anything asked for reads the sites' standardisation (a
    /// continuation, or an importance written as a model file).
    pub fn reads_standardisation(&self) -> bool {
        self.continue_from.is_some()
            || self.importance_out.is_some()
            || self.site_importance_out.is_some()
    }

    /// The continuation asked for, checked against the plan's model on
    /// `data`; `None` without --continue-from.
    pub fn continuation(
        &self,
        plan: &Plan,
        data: &FederatedData,
    ) -> anyhow::Result<Option<(Continuation, String, ModelFile)>> {
        let Some(path) = &self.continue_from else {
            return Ok(None);
        };
        let from = read_model_to_continue(path)?;
        check_fits(path, &from, plan, data)?;
        let mut said = format!(
            "continued from {} (plan '{}', round {})",
            path.display(),
            from.header.plan.name,
            from.header.lineage.round
        );
        let continuation = match (self.ewc_lambda, &self.importance, &self.site_importance) {
            (Some(lambda), Some(importance_path), _) => {
                let importance = read_importance(importance_path, path, &from)?;
                said.push_str(&format!(", elastic weight consolidation lambda {lambda}"));
                Continuation::elastic(from.parameters.clone(), importance, lambda)
                    .with_context(|| format!("--ewc-lambda {lambda}"))?
            }
            (Some(lambda), None, Some(dir)) => {
                let mut by_site = std::collections::BTreeMap::new();
                let training = data.sites.iter().filter(|s| s.train.n_rows() > 0);
                for (site, file) in importance_file_names(training.map(|s| s.name.as_str()))? {
                    let importance = read_importance(&dir.join(file), path, &from)?;
                    by_site.insert(site.to_string(), importance);
                }
                said.push_str(&format!(
                    ", elastic weight consolidation lambda {lambda}, each site by its own \
                     importance"
                ));
                Continuation::per_site(from.parameters.clone(), by_site, lambda)
                    .with_context(|| format!("--ewc-lambda {lambda}"))?
            }
            (Some(_), None, None) => {
                bail!("--ewc-lambda needs the importance: --importance or --site-importance")
            }
            _ => {
                said.push_str(", plain continued training");
                Continuation::plain(from.parameters.clone())
            }
        };
        Ok(Some((continuation, said, from)))
    }

    /// The earlier data (--earlier), loaded and checked against `from`, the
    /// model continued from, before the run; `None` without --earlier.
    pub fn earlier_data(
        &self,
        plan: &Plan,
        base_dir: &Path,
        source: &dyn FileSource,
        from: &ModelFile,
    ) -> anyhow::Result<Option<(Plan, FederatedData)>> {
        let Some(path) = self
            .continue_from
            .as_ref()
            .filter(|_| !self.earlier.is_empty())
        else {
            return Ok(None);
        };
        let earlier_plan = plan
            .clone()
            .with_settings(&self.earlier)
            .context("--earlier")?;
        let (data, _) = tessera_sim::load_data(&earlier_plan, base_dir, source)
            .context("--earlier: the earlier data")?;
        check_fits(path, from, &earlier_plan, &data).context("--earlier: the earlier data")?;
        Ok(Some((earlier_plan, data)))
    }

    /// Completes a continued run's `continual` section: where it continued
    /// from, and both models' accuracy on the `earlier` data.
    pub fn complete(
        &self,
        report: &mut RunReport,
        from: &ModelFile,
        earlier: Option<&(Plan, FederatedData)>,
    ) -> anyhow::Result<()> {
        let (Some(path), Some(continual)) = (&self.continue_from, report.continual.as_mut()) else {
            return Ok(());
        };
        continual.from = path.display().to_string();
        continual.from_round = from.header.lineage.round;
        if let Some((plan, data)) = earlier {
            continual.earlier = Some(EarlierData {
                settings: self.earlier.clone(),
                before: tessera_sim::accuracy(plan, data, &from.parameters)?,
                after: tessera_sim::accuracy(plan, data, &report.final_parameters)?,
            });
        }
        Ok(())
    }

    /// Writes each site's own importance of the run's final model, if asked.
    pub fn write_site_importance(
        &self,
        plan: &Plan,
        data: &FederatedData,
        report: &RunReport,
    ) -> anyhow::Result<()> {
        let Some(dir) = &self.site_importance_out else {
            return Ok(());
        };
        refuse_under_dp(plan, "--site-importance-out")?;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--site-importance-out {}", dir.display()))?;
        let of = format!("importance of {}", digest(&report.final_parameters));
        let importances = tessera_sim::site_importance(plan, data, &report.final_parameters)?;
        let files = importance_file_names(importances.keys().map(String::as_str))?;
        for ((site, importance), (_, name)) in importances.iter().zip(files) {
            let mut file = crate::model::of_simulation(plan, data, report)?;
            file.parameters = importance.clone();
            file.header.run.id = Some(of.clone());
            file.header.run.written_by = format!(
                "simulation, importance of site {site} (diagonal Fisher information on its own \
                 rows, largest 1)"
            );
            crate::model::write(&dir.join(name), &file)?;
        }
        Ok(())
    }

    /// Writes the importance of the run's final model, if asked.
    pub fn write_importance(
        &self,
        plan: &Plan,
        data: &FederatedData,
        report: &RunReport,
    ) -> anyhow::Result<()> {
        let Some(path) = &self.importance_out else {
            return Ok(());
        };
        refuse_under_dp(plan, "--importance-out")?;
        let importance =
            tessera_sim::importance(plan, data, &report.final_parameters, IMPORTANCE_ROWS)?;
        let mut file = crate::model::of_simulation(plan, data, report)?;
        file.parameters = importance;
        file.header.run.id = Some(format!(
            "importance of {}",
            digest(&report.final_parameters)
        ));
        file.header.run.written_by =
            "simulation, importance (diagonal Fisher information, largest 1)".into();
        crate::model::write(path, &file)
    }
}

/// What `tessera participant` is asked for continual learning.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SiteContinualArgs {
    /// Continual learning: this site continues from this model file (an
    /// earlier run's --model-out, kept here). The run must start from it
    /// (the coordinator's --continue-from the same model), or this site
    /// refuses to train, saying why.
    #[arg(long, value_name = "FILE")]
    pub continue_from: Option<PathBuf>,
    /// Continual learning: hold this site's local training to the model it
    /// continues from by elastic weight consolidation of this weight (1 is
    /// a good start), with this site's own importance (--importance).
    #[arg(long, requires_all = ["continue_from", "importance"])]
    pub ewc_lambda: Option<f32>,
    /// Continual learning: this site's own importance of that model, which
    /// its --importance-out wrote at the end of the earlier run.
    #[arg(long, value_name = "FILE", requires = "ewc_lambda")]
    pub importance: Option<PathBuf>,
    /// At the end of the run, measure how much each parameter of the final
    /// global model matters on this site's training rows (the diagonal
    /// Fisher information, up to 1,000 rows, the largest scaled to 1) and
    /// write it here as a model file, for this site's --ewc-lambda in a
    /// later run. It is a statistic of this site's rows: it never leaves
    /// the site (refused under a plan with DP).
    #[arg(long, value_name = "FILE")]
    pub importance_out: Option<PathBuf>,
}

impl SiteContinualArgs {
    /// What the site continues from, its files read and checked against
    /// each other; `None` without --continue-from.
    pub fn site_continual(
        &self,
    ) -> anyhow::Result<Option<tessera_participant::continual::SiteContinual>> {
        let Some(path) = &self.continue_from else {
            return Ok(None);
        };
        let from = read_model_to_continue(path)?;
        let ewc = match (self.ewc_lambda, &self.importance) {
            (Some(lambda), Some(importance)) => {
                if !(lambda.is_finite() && lambda >= 0.0) {
                    bail!(
                        "--ewc-lambda must be a number >= 0, got {}",
                        tessera_core::value(lambda)
                    );
                }
                Some((lambda, read_importance(importance, path, &from)?))
            }
            _ => None,
        };
        Ok(Some(tessera_participant::continual::SiteContinual {
            from: format!("{} (round {})", path.display(), from.header.lineage.round),
            features: from.header.features.clone(),
            classes: from.classes().to_vec(),
            anchor: from.parameters,
            ewc,
        }))
    }

    /// Writes this site's own importance of the final global model, if
    /// asked.
    pub fn write_importance(
        &self,
        results: Option<&tessera_participant::results::SiteResults>,
    ) -> anyhow::Result<()> {
        let Some(path) = &self.importance_out else {
            return Ok(());
        };
        let Some(results) = results else {
            bail!("--importance-out: the run ended before this site was ready");
        };
        let model = results.model_file()?;
        let mut file = results.importance_file()?;
        file.header.run.id = Some(format!("importance of {}", digest(&model.parameters)));
        crate::model::write(path, &file)
    }
}

/// Refuses to measure an importance under a plan with DP.
pub fn refuse_under_dp(plan: &Plan, flag: &str) -> anyhow::Result<()> {
    if plan.privacy.mode != tessera_privacy::PrivacyMode::Off {
        bail!(
            "{flag}: the importance is a statistic of the sites' rows without noise, which the \
             plan's {:?} DP does not account for; measure it on a plan without DP",
            plan.privacy.mode
        );
    }
    Ok(())
}

/// The importance file at `path`, refused unless it is the importance of
/// `from` (the model file at `from_path`) and scaled as written.
pub fn read_importance(
    path: &Path,
    from_path: &Path,
    from: &ModelFile,
) -> anyhow::Result<tessera_core::ParameterSet> {
    let importance = crate::model::read(path)?;
    let of = importance.header.run.id.as_deref().unwrap_or("");
    let model = digest(&from.parameters);
    if !importance.header.run.written_by.contains("importance")
        || of != format!("importance of {model}")
    {
        bail!(
            "{}: not the importance of {} (written by '{}', of the model {}; the model's \
             parameters are {}); write both with the same run's --model-out and \
             --importance-out",
            path.display(),
            from_path.display(),
            importance.header.run.written_by,
            short(of.trim_start_matches("importance of ")),
            short(&model)
        );
    }
    let largest = importance.parameters.values().fold(0.0f32, f32::max);
    if largest > 1.0 {
        bail!(
            "{}: its largest importance is {largest}, where --importance-out scales the largest \
             to 1",
            path.display()
        );
    }
    Ok(importance.parameters)
}

/// `SITE.importance`, refused for a site name that is not a plain file
/// name (letters, digits, `-`, `_` and `.`, not first).
fn importance_file_name(site: &str) -> anyhow::Result<String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if site.is_empty() || site.starts_with('.') || !site.chars().all(plain) {
        bail!(
            "site '{site}' cannot name a file in the importance folder (letters, digits, '-', \
             '_' and '.' only, not first)"
        );
    }
    Ok(format!("{site}.importance"))
}

/// Each site's `SITE.importance`, refused (before anything is written)
/// where a name is not a plain file name or two differ only in case.
fn importance_file_names<'a>(
    sites: impl Iterator<Item = &'a str>,
) -> anyhow::Result<Vec<(&'a str, String)>> {
    let mut seen = std::collections::BTreeMap::new();
    let mut names = Vec::new();
    for site in sites {
        let file = importance_file_name(site)?;
        if let Some(other) = seen.insert(file.to_lowercase(), site) {
            bail!(
                "sites '{other}' and '{site}' would share one file in the importance folder \
                 (names that differ only in case)"
            );
        }
        names.push((site, file));
    }
    Ok(names)
}

/// The model file at `path`, refused where it is an importance file.
pub fn read_model_to_continue(path: &Path) -> anyhow::Result<ModelFile> {
    let file = crate::model::read(path)?;
    if file
        .header
        .run
        .id
        .as_deref()
        .is_some_and(|id| id.starts_with("importance of "))
    {
        bail!(
            "{}: an importance file, not a model: continue from the earlier run's --model-out",
            path.display()
        );
    }
    Ok(file)
}

/// `tessera coordinator --continue-from`: the model file at `path` as the
/// run's initial model (its features and classes are checked against the
/// sites' agreement when it closes), and the lineage the run's model file
/// names as its parent. Refused, saying why, where the plan cannot
/// continue or the file is not of the plan's model.
pub fn deployed_from(
    path: &Path,
    plan: &Plan,
) -> anyhow::Result<(tessera_coordinator::InitialModel, String)> {
    tessera_sim::check_continuable(plan).context("--continue-from")?;
    let from = read_model_to_continue(path)?;
    check_model(path, &from, plan)?;
    let parent = format!(
        "{} (round {} of plan {}, parameters sha256 {})",
        path.display(),
        from.header.lineage.round,
        from.header.plan.hash,
        digest(&from.parameters)
    );
    let initial = tessera_coordinator::InitialModel {
        features: from.header.features.clone(),
        classes: from.classes().to_vec(),
        from: format!("{} (round {})", path.display(), from.header.lineage.round),
        parameters: from.parameters,
    };
    Ok((initial, parent))
}

/// Refuses a model file that is not of the plan's model on `data`, naming
/// the difference.
fn check_fits(
    path: &Path,
    from: &ModelFile,
    plan: &Plan,
    data: &FederatedData,
) -> anyhow::Result<()> {
    let here = data.agreement.feature_names();
    if from.header.features != here {
        let missing: Vec<&String> = here
            .iter()
            .filter(|f| !from.header.features.contains(f))
            .collect();
        bail!(
            "{}: its {} features are not this data's {} (in order){}; continue only on data of \
             the same columns",
            path.display(),
            from.header.features.len(),
            here.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!(", e.g. it lacks '{}'", missing[0])
            }
        );
    }
    let classes = &data.agreement.classes;
    if from.classes() != classes.as_slice() {
        bail!(
            "{}: a model of the classes {:?}, and this data's are {:?} (the classes its labels \
             hold); continue on data with the same classes",
            path.display(),
            from.classes(),
            classes
        );
    }
    check_model(path, from, plan)
}

/// Refuses a model file of another `[model]` than the plan's.
fn check_model(path: &Path, from: &ModelFile, plan: &Plan) -> anyhow::Result<()> {
    if from.header.model != plan.model {
        bail!(
            "{}: a {:?} model with hidden layers {:?}, and the plan's is {:?} with {:?} (or \
             differs in its initialisation); continue with the plan's [model] as the earlier \
             run had it",
            path.display(),
            from.header.model.kind,
            from.header.model.hidden,
            plan.model.kind,
            plan.model.hidden
        );
    }
    Ok(())
}

/// One line on what a continued run learned and kept.
pub fn print_summary(c: &ContinualReport) {
    let how = match (c.ewc_lambda, c.ewc_importance.as_deref()) {
        (Some(l), Some("site")) => format!("EWC lambda {l}, each site's own importance"),
        (Some(l), _) => format!("EWC lambda {l}"),
        (None, _) => "plain".to_string(),
    };
    let earlier = c.earlier.as_ref().map_or_else(String::new, |e| {
        format!(
            "; earlier data ({}): {:.4} before, {:.4} after (forgot {:.4})",
            e.settings.join(" "),
            e.before,
            e.after,
            e.before - e.after
        )
    });
    println!(
        "continued ({how}) from {}: this data {:.4} before, {:.4} after{earlier}",
        c.from, c.new_before, c.new_after
    );
}

/// SHA-256 (hex) of `parameters`' values, little-endian, in order.
pub fn digest(parameters: &tessera_core::ParameterSet) -> String {
    tessera_engine::model_file::parameters_sha256(parameters)
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
