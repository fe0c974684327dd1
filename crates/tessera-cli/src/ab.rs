//! `tessera ab`: an A/B test of two model files on a plan's sites, from
//! aggregated statistics. The units (each site, or each row of a site's
//! test split) fall in arm A or B by a keyed hash (`--key-file`, 32 secret
//! bytes written at first use); each site scores its own test rows with its
//! arm's model and contributes only each arm's sums (rows scored, rows
//! right), optionally with Gaussian noise for differential privacy (a
//! model standardised with each site's own statistics is applied with
//! the site's training rows' statistics, as in training); the
//! report is each arm's accuracy and the difference with a 95% confidence
//! interval. In simulation: the sites' data are read here, as
//! `tessera simulate` reads them.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::json;
use tessera_analytics::ab::{ArmSums, arm_of, compare};
use tessera_engine::Plan;
use tessera_engine::model_file::ModelFile;

/// Arguments of `tessera ab`.
#[derive(Debug, clap::Args)]
pub struct AbArgs {
    /// The plan whose sites (and test split) the test runs on.
    #[arg(long)]
    plan: PathBuf,
    /// Arm A's model file.
    #[arg(long)]
    a: PathBuf,
    /// Arm B's model file.
    #[arg(long)]
    b: PathBuf,
    /// The split's secret key (64 hexadecimal digits); written, from the
    /// operating system's randomness, where the file does not exist.
    #[arg(long)]
    key_file: PathBuf,
    /// What is split between the arms: whole sites, or each site's rows
    /// (each test row a unit, named by its site and line).
    #[arg(long, value_enum, default_value = "site")]
    by: Unit,
    /// Release the sums with Gaussian noise spending this epsilon (at
    /// --delta): differential privacy for every row.
    #[arg(long)]
    epsilon: Option<f64>,
    /// The delta of --epsilon.
    #[arg(long, default_value_t = 1e-6)]
    delta: f64,
    /// The result as one JSON document.
    #[arg(long)]
    json: bool,
}

/// The unit of the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Unit {
    /// Each site in one arm.
    Site,
    /// Each test row in one arm.
    Row,
}

/// The key in `path`, or a new one written there (readable by its owner only).
fn key(path: &Path) -> anyhow::Result<[u8; 32]> {
    let hex = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = text.trim();
            let bytes: Option<Vec<u8>> = (text.len() == 64 && text.is_ascii())
                .then(|| {
                    (0..32)
                        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
                        .collect()
                })
                .flatten();
            match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                Some(key) => Ok(key),
                None => bail!(
                    "--key-file {}: not a key (64 hexadecimal digits)",
                    path.display()
                ),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("cannot draw a key: {e}"))?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(path)
                .with_context(|| format!("--key-file {}", path.display()))?;
            writeln!(file, "{}", hex(&key))?;
            eprintln!(
                "wrote a new split key to {} (keep it to repeat this split)",
                path.display()
            );
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("--key-file {}", path.display())),
    }
}

/// One arm's exact sums and the sites with units in it.
#[derive(Default)]
struct Arm {
    rows: u64,
    correct: u64,
    sites: Vec<String>,
}

pub fn run(args: &AbArgs) -> anyhow::Result<()> {
    let plan = Plan::from_file(&args.plan).context("--plan")?;
    plan.validate().context("--plan")?;
    let models = [
        crate::model::read(&args.a).context("--a")?,
        crate::model::read(&args.b).context("--b")?,
    ];
    for (flag, model) in ["--a", "--b"].iter().zip(&models) {
        if model.header.target != plan.data.schema.target {
            bail!(
                "{flag}: the model predicts '{}', the plan's target is '{}'",
                model.header.target,
                plan.data.schema.target
            );
        }
    }
    let sigma = match args.epsilon {
        Some(epsilon) => {
            // One row moves its arm's two sums by at most 1 each.
            let z = tessera_privacy::calibrate_noise_multiplier(1.0, 1, epsilon, args.delta)
                .context("--epsilon")?;
            z * std::f64::consts::SQRT_2
        }
        None => 0.0,
    };
    let key = key(&args.key_file)?;
    let plan_dir = args
        .plan
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let sites = tessera_data::read_local_sites(&plan.data, &plan_dir, &tessera_data::Filesystem)
        .context("the plan's sites")?;
    let mut arms = [Arm::default(), Arm::default()];
    for site in &sites {
        let (table, labels) = site.test_rows();
        let (train, _) = site.train_rows();
        // Each arm's rows of this site.
        let mut parts: [(tessera_data::Table, Vec<Option<String>>); 2] = Default::default();
        for ((line, fields), label) in table.rows.into_iter().zip(labels) {
            let b = match args.by {
                Unit::Site => arm_of(&key, site.name()),
                Unit::Row => arm_of(&key, &format!("{}/{line}", site.name())),
            };
            let part = &mut parts[usize::from(b)];
            part.0.rows.push((line, fields));
            part.1.push(label);
        }
        for ((arm, model), (mut rows, labels)) in arms.iter_mut().zip(&models).zip(parts) {
            if rows.rows.is_empty() {
                continue;
            }
            rows.header = table.header.clone();
            let scores = score(model, &train, &rows, &labels)
                .with_context(|| format!("site '{}'", site.name()))?;
            arm.rows += scores.n;
            arm.correct += scores.correct;
            arm.sites.push(site.name().to_string());
        }
    }
    // What leaves the sites: each arm's sums, noised where asked.
    let mut noise = {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("cannot draw noise: {e}"))?;
        tessera_privacy::GaussianNoise::new(seed, 0)
    };
    let mut released = |arm: &Arm| ArmSums {
        n: arm.rows as f64 + sigma * noise.standard_normal(),
        correct: arm.correct as f64 + sigma * noise.standard_normal(),
    };
    let (a, b) = (released(&arms[0]), released(&arms[1]));
    let c = compare(&a, &b, sigma).map_err(anyhow::Error::msg)?;
    let unit = match args.by {
        Unit::Site => "site",
        Unit::Row => "row",
    };
    if args.json {
        let arm = |sums: &ArmSums, arm: &Arm, model: &Path, accuracy: f64| {
            json!({"model": model.display().to_string(), "rows": sums.n, "correct": sums.correct,
                   "accuracy": accuracy, "sites": arm.sites})
        };
        let doc = json!({
            "plan": plan.name,
            "by": unit,
            "a": arm(&a, &arms[0], &args.a, c.accuracy_a),
            "b": arm(&b, &arms[1], &args.b, c.accuracy_b),
            "difference": c.difference,
            "standard_error": c.standard_error,
            "ci95": [c.ci95.0, c.ci95.1],
            "privacy": args.epsilon.map(|e| json!({"epsilon": e, "delta": args.delta, "sigma": sigma})),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "A/B test on plan '{}', split by {unit} (key {}):",
        plan.name,
        args.key_file.display()
    );
    for (name, sums, arm, path, accuracy) in [
        ("A", &a, &arms[0], &args.a, c.accuracy_a),
        ("B", &b, &arms[1], &args.b, c.accuracy_b),
    ] {
        println!(
            "  arm {name} ({}): {:.0} test rows at {} site(s) ({}), accuracy {accuracy:.4}",
            path.display(),
            sums.n,
            arm.sites.len(),
            arm.sites.join(", ")
        );
    }
    println!(
        "  B - A: {:+.4}, 95% confidence interval [{:+.4}, {:+.4}] (standard error {:.4})",
        c.difference, c.ci95.0, c.ci95.1, c.standard_error
    );
    match args.epsilon {
        Some(epsilon) => println!(
            "  released: each arm's sums (rows, rows right) with Gaussian noise of standard \
             deviation {sigma:.3}, epsilon {epsilon} at delta {:e} for every row",
            args.delta
        ),
        None => println!("  released: each arm's sums (rows, rows right), exact"),
    }
    Ok(())
}

fn score(
    model: &ModelFile,
    train: &tessera_data::Table,
    rows: &tessera_data::Table,
    labels: &[Option<String>],
) -> anyhow::Result<tessera_engine::model_file::Scores> {
    Ok(model.score(train, rows, labels)?)
}
