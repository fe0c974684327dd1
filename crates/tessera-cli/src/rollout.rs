//! `tessera rollout`: a canary rollout of a registered model. The
//! candidate (a `candidate` or `canary` version in the coordinator's
//! registry) is moved to the canary stage and sent with the production
//! version to the sites that opted in (`tessera participant --canary`);
//! each scores both on its own test rows; the pooled comparison promotes
//! the candidate or rolls it back (the registry records the decision and
//! its evidence), and every site is sent the version it serves from then
//! on. The participant's side is `--canary` and `--models DIR`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tessera_coordinator::{
    CoordinatorConfig, Rollout, RolloutModel, RunStore, SqliteStore, Stage, VersionRow,
};
use tessera_engine::Plan;
use tessera_engine::model_file::ModelFile;

/// Arguments of `tessera rollout`.
#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    /// The plan the sites read their data with (their --expect-plan); under
    /// site metrics that are sums only, the canaries' comparison is summed
    /// securely (at least 3 canaries).
    #[arg(long)]
    plan: PathBuf,
    /// The coordinator's database, whose registry holds the model.
    #[arg(long)]
    db: PathBuf,
    /// The registered model's name.
    #[arg(long)]
    name: String,
    /// The candidate version (default: the newest candidate or canary version).
    #[arg(long)]
    version: Option<u32>,
    /// No comparison: send the production version to every site to serve
    /// (after `tessera models rollback`, or a rollout stopped before every
    /// site took the version decided).
    #[arg(long, conflicts_with_all = ["version", "canaries", "max_drop"])]
    serve: bool,
    /// The most the candidate's pooled accuracy on the canary sites' test
    /// rows may fall below production's and still be promoted.
    #[arg(long, default_value_t = 0.0)]
    max_drop: f64,
    /// Seconds the sites have to join and the canaries to score (the
    /// decision is then taken on the scores in hand), and again, after
    /// the decision, for the sites to take the version decided. Without
    /// it, the rollout waits for every site of the plan.
    #[arg(long)]
    deadline: Option<f64>,
    /// The sites whose opt-in (`--canary`) counts, comma-separated
    /// (default: every site that opts in); another site that opts in is
    /// sent only the version decided.
    #[arg(long, value_delimiter = ',', value_name = "SITE,...")]
    canaries: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Mutual TLS with the files of this folder, as for `tessera coordinator`.
    #[arg(long, conflicts_with = "insecure")]
    tls: Option<PathBuf>,
    /// Plain-text connections without authentication: for local experiments only.
    #[arg(long)]
    insecure: bool,
    /// Seconds of silence after which a site counts as gone.
    #[arg(long, default_value_t = 30.0)]
    liveness: f64,
}

/// A participant's part in rollouts (`tessera participant`).
#[derive(Debug, Clone, clap::Args)]
pub struct SiteRolloutArgs {
    /// This site tries candidate models first: in a rollout it scores the
    /// candidate and production models on its own test rows, and only
    /// their sums leave.
    #[arg(long)]
    canary: bool,
    /// Where the registered model versions this site receives are kept
    /// (NAME/vVERSION.model) and which it serves (NAME/serving); needed to
    /// take part in a rollout.
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
}

impl SiteRolloutArgs {
    /// The participant's settings.
    pub fn settings(&self) -> anyhow::Result<tessera_participant::rollout::RolloutSettings> {
        if self.canary && self.models.is_none() {
            bail!("--canary needs --models DIR, where the versions this site receives are kept");
        }
        Ok(tessera_participant::rollout::RolloutSettings {
            canary: self.canary,
            models: self.models.clone(),
        })
    }

    /// Prints the versions the site serves.
    pub fn report(&self, site: &str) {
        let Some(models) = &self.models else { return };
        for served in tessera_participant::rollout::served(models) {
            println!(
                "site {site} serves '{}' version {} ({})",
                served.name,
                served.version,
                tessera_participant::rollout::version_file(models, &served.name, served.version)
                    .display()
            );
        }
    }
}

/// The model file of a registered version.
fn model_file(store: &SqliteStore, row: &VersionRow) -> anyhow::Result<ModelFile> {
    let run = store
        .runs()?
        .into_iter()
        .find(|r| r.id == row.run_id)
        .with_context(|| format!("version {}'s run {} is not here", row.version, row.run_id))?;
    let plan = Plan::from_toml(&run.plan, "the version's run")?;
    let params = store
        .version_parameters(&row.name, row.version)?
        .with_context(|| format!("version {} keeps no parameters", row.version))?;
    let who = format!("registry '{}' version {}", row.name, row.version);
    crate::model::of_stored_run(&plan, store, &run.id, row.round, params, &who)
}

/// Both models score the same rows: each predicts the same classes from
/// the same features (otherwise a canary's rows scored would differ
/// between them, and its scores be refused).
fn comparable(
    name: &str,
    (candidate, candidate_file): (u32, &ModelFile),
    (production, production_file): (u32, &ModelFile),
) -> anyhow::Result<()> {
    let features = |f: &ModelFile| f.header.features.clone();
    if candidate_file.classes() != production_file.classes() {
        bail!(
            "model '{name}' version {candidate} predicts {:?}, production version {production} \
             {:?}: a rollout compares models of the same classes and features",
            candidate_file.classes(),
            production_file.classes(),
        );
    }
    if features(candidate_file) != features(production_file) {
        let (c, p) = (features(candidate_file), features(production_file));
        let first = c.iter().zip(&p).position(|(a, b)| a != b);
        let differ = match first {
            Some(i) => format!(
                "feature {} is '{}' in one and '{}' in the other",
                i + 1,
                c[i],
                p[i]
            ),
            None => format!("{} features against {}", c.len(), p.len()),
        };
        bail!(
            "model '{name}' version {candidate} and production version {production} read \
             other features ({differ}): a rollout compares models of the same classes and \
             features"
        );
    }
    Ok(())
}

/// The candidate and production versions, the candidate moved to canary.
fn versions(args: &RolloutArgs, db: &Path) -> anyhow::Result<(Rollout, String)> {
    if !db.exists() {
        bail!("{}: no such database", db.display());
    }
    let store = SqliteStore::open(db)?;
    // A rollout is a new run: it must not take over (and end) a run
    // still unfinished here.
    if let Some(run) = store.unfinished_run()? {
        bail!(
            "run {} is unfinished in {} (a training run, or a rollout that was interrupted): \
             let it finish, or end it with `tessera abort --db {}`, before a rollout",
            run.id,
            db.display(),
            db.display()
        );
    }
    let rows = store.versions(Some(&args.name))?;
    if rows.is_empty() {
        bail!("{}: no model '{}' in the registry", db.display(), args.name);
    }
    let production = rows
        .iter()
        .find(|v| v.stage == Stage::Production)
        .with_context(|| {
            format!(
                "model '{}' has no version in production to compare a candidate with: promote \
                 the first one by hand (`tessera models promote`)",
                args.name
            )
        })?;
    if args.serve {
        let file = Arc::new(model_file(&store, production)?.to_bytes());
        let model = || RolloutModel {
            version: production.version,
            file: Arc::clone(&file),
        };
        let rollout = Rollout {
            name: args.name.clone(),
            candidate: model(),
            production: model(),
            max_drop: 0.0,
            deadline: deadline(args.deadline)?,
            canaries: None,
            serve_only: true,
        };
        let line = format!(
            "model '{}': production version {} to every site",
            args.name, production.version
        );
        return Ok((rollout, line));
    }
    let trying = |v: &&VersionRow| matches!(v.stage, Stage::Candidate | Stage::Canary);
    let candidate =
        match args.version {
            Some(n) => rows
                .iter()
                .find(|v| v.version == n)
                .with_context(|| format!("model '{}' has no version {n}", args.name))?,
            None => rows.iter().rev().find(trying).with_context(|| {
                format!("model '{}' has no candidate or canary version", args.name)
            })?,
        };
    if !trying(&candidate) {
        bail!(
            "model '{}' version {} is {}: a rollout tries a candidate or canary version",
            args.name,
            candidate.version,
            candidate.stage
        );
    }
    let (candidate_file, production_file) = (
        model_file(&store, candidate)?,
        model_file(&store, production)?,
    );
    comparable(
        &args.name,
        (candidate.version, &candidate_file),
        (production.version, &production_file),
    )?;
    let rollout = Rollout {
        name: args.name.clone(),
        candidate: RolloutModel {
            version: candidate.version,
            file: Arc::new(candidate_file.to_bytes()),
        },
        production: RolloutModel {
            version: production.version,
            file: Arc::new(production_file.to_bytes()),
        },
        max_drop: args.max_drop,
        deadline: deadline(args.deadline)?,
        canaries: (!args.canaries.is_empty())
            .then(|| args.canaries.iter().map(|s| s.trim().to_string()).collect()),
        serve_only: false,
    };
    if candidate.stage == Stage::Candidate {
        store.set_stage(
            &args.name,
            candidate.version,
            Stage::Canary,
            "rolled out to the canary sites",
            "",
            crate::registry::now_micros(),
        )?;
    }
    let line = format!(
        "model '{}': version {} to the canary sites, against production version {}",
        args.name, candidate.version, production.version
    );
    Ok((rollout, line))
}

/// `--deadline`, checked.
fn deadline(seconds: Option<f64>) -> anyhow::Result<Option<Duration>> {
    match seconds {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= 366.0 * 86_400.0 => {
            Ok(Some(Duration::from_secs_f64(s)))
        }
        Some(s) => bail!("--deadline {s}: give seconds, more than 0 and at most a year"),
    }
}

/// What `tessera rollout --serve` says at its end.
fn line_of_serve(name: &str, version: u32) -> String {
    format!("every site was sent '{name}' version {version}")
}

/// Runs `tessera rollout`.
pub fn run(args: &RolloutArgs) -> anyhow::Result<()> {
    if !args.insecure && args.tls.is_none() {
        bail!(
            "give --tls DIR (mutual TLS, see `tessera ca`) or --insecure (local experiments only)"
        );
    }
    let plan_text = std::fs::read_to_string(&args.plan)
        .with_context(|| format!("{}: cannot read", args.plan.display()))?;
    let plan = Plan::from_toml(&plan_text, &args.plan.display().to_string())?;
    // A plan that lists its sites: the canaries must be among them.
    let sites: Vec<&str> = plan.data.sites.iter().map(|s| s.name.as_str()).collect();
    if !sites.is_empty()
        && let Some(other) = args.canaries.iter().find(|c| !sites.contains(&c.trim()))
    {
        bail!(
            "--canaries names '{other}', which is not a site of the plan ({})",
            sites.join(", ")
        );
    }
    if !(args.max_drop.is_finite() && (0.0..=1.0).contains(&args.max_drop)) {
        bail!("--max-drop is a share of accuracy between 0 and 1");
    }
    let liveness = crate::deploy::liveness(args.liveness)?;
    let (rollout, line) = versions(args, &args.db)?;
    let candidate = rollout.candidate.version;
    println!("{line}");
    if args.insecure {
        crate::deploy::insecure_warning("the rollout's coordinator");
    }
    let config = CoordinatorConfig {
        plan,
        plan_text,
        db: args.db.clone(),
        listen: args.listen,
        liveness,
        tls: args.tls.as_deref().map(tessera_tls::TlsFiles::in_dir),
        metrics: None,
        new_run: true,
        initial: None,
        rollout: Some(rollout),
        dry_run: None,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let _context = runtime.enter();
    let served = runtime.block_on(tessera_coordinator::serve_until(
        config,
        |address| {
            crate::logging::say(tracing::Level::INFO, &format!("listening on {address}"));
        },
        crate::lifecycle::termination(),
    ));
    // A rollout is never resumed: the way on is to end its run and roll out
    // again (the registry shows whether it decided).
    let again = format!(
        "a rollout is not resumed: end its run with `tessera abort --db {db}`; then, if \
         `tessera models show --db {db} --name {name}` shows it decided, `tessera rollout --serve` \
         sends every site the version now in production, and otherwise `tessera rollout` starts \
         again",
        db = args.db.display(),
        name = args.name
    );
    match served {
        Err(tessera_coordinator::CoordinatorError::Interrupted(signal)) => {
            return Err(anyhow::Error::new(crate::lifecycle::Signalled {
                signal,
                what: again,
            }));
        }
        // Exits 70, as any coordinator's database failure does.
        Err(e @ tessera_coordinator::CoordinatorError::Fatal(_)) => {
            return Err(anyhow::Error::new(e).context(format!("the rollout stopped: {again}")));
        }
        other => {
            other?;
        }
    }
    let store = SqliteStore::open_existing(&args.db)?;
    let run = store
        .runs()?
        .into_iter()
        .max_by_key(|r| r.created_unix_micros)
        .context("the database holds no run")?;
    if args.serve {
        let end = store
            .audit_log(&run.id)?
            .into_iter()
            .rev()
            .find(|r| r.site == "-" && r.action == "run" && r.outcome == "finished")
            .context("the rollout stopped before every site was told")?;
        println!("{}: {}", line_of_serve(&args.name, candidate), end.detail);
        return Ok(());
    }
    let ended = store
        .audit_log(&run.id)?
        .into_iter()
        .rev()
        .find(|r| r.site == "-" && r.action == "rollout" && r.outcome.ends_with("decided"));
    match ended {
        Some(row) if row.outcome == "undecided" => {
            println!("{}", row.detail);
            return Ok(());
        }
        Some(_) => {}
        None => bail!(
            "the rollout stopped before its decision: version {candidate} stays at canary, and \
             each site serves what it served before"
        ),
    }
    let decided = store
        .stage_events(Some(&args.name))?
        .into_iter()
        .rev()
        .find(|e| e.version == candidate)
        .context("the rollout ended without a decision")?;
    println!("version {candidate} is {}: {}", decided.to, decided.reason);
    println!("evidence: {}", decided.evidence);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_data::{Agreement, Encoding};
    use tessera_engine::model_file::{RunInfo, Standardization};

    /// A logistic model of two numeric features and classes 0 and 1.
    fn model() -> ModelFile {
        let plan = Plan::from_toml(
            "name = \"m\"\nseed = 3\n[data]\npath = \"d.csv\"\nsite_column = \"site\"\n\
             [data.schema]\ntarget = \"y\"\n[model]\nkind = \"logistic\"\n[training]\n\
             epochs = 1\nbatch_size = 8\nlr = 0.1\n[federation]\nrounds = 2\n",
            "test",
        )
        .unwrap();
        let agreement = Agreement {
            columns: vec!["age".into(), "bp".into()],
            encodings: vec![Encoding::Numeric, Encoding::Numeric],
            classes: vec!["0".into(), "1".into()],
        };
        let parameters = tessera_learn::initial_parameters(&plan.model, 2, 2, 9).unwrap();
        let standardization = Standardization {
            config: plan.data.standardize.clone(),
            source: None,
            mean: None,
            scale: None,
        };
        let run = RunInfo {
            id: Some("m-1".into()),
            written_by: "coordinator".into(),
        };
        ModelFile::new(&plan, &agreement, standardization, run, 2, parameters).unwrap()
    }

    #[test]
    fn a_candidate_of_other_classes_or_features_is_refused_naming_both() {
        let production = model();
        assert!(comparable("heart", (2, &production), (1, &production.clone())).is_ok());
        let refused = |version: u32, file: &ModelFile| {
            comparable("heart", (version, file), (1, &production))
                .unwrap_err()
                .to_string()
        };
        let mut classes = production.clone();
        classes.header.agreement.classes = vec!["no".into(), "yes".into()];
        let e = refused(2, &classes);
        assert!(
            e.contains("version 2 predicts [\"no\", \"yes\"], production version 1 [\"0\", \"1\"]")
                && e.contains("same classes and features"),
            "{e}"
        );
        let mut more = production.clone();
        more.header.features.push("chol".into());
        let e = refused(3, &more);
        assert!(e.contains("(3 features against 2)"), "{e}");
        // As many features, other names.
        let mut renamed = production.clone();
        renamed.header.features[1] = "chol".into();
        let e = refused(4, &renamed);
        assert!(
            e.contains(
                "version 4 and production version 1 read other features (feature 2 is 'chol' \
                 in one and 'bp' in the other)"
            ),
            "{e}"
        );
    }
}
