//! `tessera tune`: successive halving over a search space
//! (`tessera_sim::tune`), each trial a simulation of the plan with the
//! configuration's settings, judged on the sites' held-out validation rows;
//! then the best configuration against the plan as given on the test rows,
//! on seeds the search never ran.
//!
//! Every finished trial is appended to `OUT/trials.jsonl` as it ends, so a
//! search stopped at any point and started again with the same plan and
//! space reruns nothing it has. `OUT/tune.json` holds the search and the
//! comparison; the command that runs the result is printed.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tessera_data::{FederatedData, Filesystem};
use tessera_engine::Plan;
use tessera_sim::tune::{self, Measured, Objective, Search, Space, Trial};

/// Arguments of `tessera tune`.
#[derive(Debug, clap::Args)]
pub struct TuneArgs {
    /// The plan to tune (its data is read as it says).
    #[arg(long)]
    plan: PathBuf,
    /// The search space: `[search]` and `[[param]]` (README, "Tuning").
    #[arg(long)]
    space: PathBuf,
    /// Where the trials and the result go (default
    /// `tessera-out/tune-PLAN`). A search found there for the same plan and
    /// space continues; one of another is refused.
    #[arg(long)]
    out: Option<PathBuf>,
    /// No line per configuration.
    #[arg(short, long)]
    quiet: bool,
}

/// The first line of `trials.jsonl`: what the trials are of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Header {
    plan_sha256: String,
    space_sha256: String,
    /// The data as read (every site's rows), so that changed files are
    /// not judged by old trials.
    data_sha256: String,
    /// The build that ran the trials.
    code_version: String,
}

/// A line of `trials.jsonl` after the first.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Done {
    trial: Trial,
    measured: Measured,
}

/// The trial a result answers: configuration, settings, rounds, seed.
type Key = (usize, Vec<String>, u32, u64);

fn key(t: &Trial) -> Key {
    (t.configuration, t.settings.clone(), t.rounds, t.seed)
}

/// One seed of the comparison on the test rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Compared {
    seed: u64,
    plan: f64,
    tuned: f64,
}

/// `OUT/tune.json`.
#[derive(Debug, Serialize)]
struct Written<'a> {
    plan: String,
    space: &'a Space,
    search: &'a Search,
    best_settings: &'a [String],
    command: String,
    comparison: &'a [Compared],
    plan_mean_site_accuracy: f64,
    tuned_mean_site_accuracy: f64,
}

/// A shell word: single-quoted unless plain.
fn quoted(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./=:+,".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

pub fn run(args: &TuneArgs) -> anyhow::Result<()> {
    let plan = Plan::from_file(&args.plan)?;
    tune::check_tunable(&plan)?;
    let base_dir = args
        .plan
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let space_text = read_space(&args.space)?;
    let space = Space::from_toml(&space_text, &args.space.display().to_string())?;
    space.check_rounds(plan.federation.rounds)?;
    // Every configuration must make a plan before anything runs.
    let brackets = space.brackets(plan.federation.rounds);
    for (c, settings) in brackets.iter().flat_map(|b| &b.configurations).enumerate() {
        plan.with_settings(settings).with_context(|| {
            format!(
                "search space: configuration {c} ({}) does not make a valid plan",
                settings.join(" ")
            )
        })?;
    }
    let out = args.out.clone().unwrap_or_else(|| {
        let name: String = plan
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        PathBuf::from("tessera-out").join(format!("tune-{name}"))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // The data read once before anything is written: a site that cannot
    // be read is refused here, and its hash keys the trials.
    let (data, _) = tessera_sim::load_data(&plan, &base_dir, &Filesystem)?;
    let header = Header {
        plan_sha256: crate::tracking::sha256_hex(toml::to_string(&plan)?.as_bytes()),
        space_sha256: crate::tracking::sha256_hex(toml::to_string(&space)?.as_bytes()),
        data_sha256: data_sha256(&data),
        code_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    drop(data);
    let trials_path = out.join("trials.jsonl");
    let (mut done, cut) = read_trials(&trials_path, &header)?;
    let reused_before = done.len();
    if reused_before == 0 || cut {
        // A new file, or the kept trials without the line cut short.
        let mut text = serde_json::to_string(&header)? + "\n";
        for (k, measured) in &done {
            let trial = Trial {
                bracket: 0,
                rung: 0,
                configuration: k.0,
                settings: k.1.clone(),
                rounds: k.2,
                seed: k.3,
            };
            text += &(serde_json::to_string(&Done {
                trial,
                measured: *measured,
            })? + "\n");
        }
        // Written aside and moved in: a crash here loses nothing kept.
        let aside = out.join("trials.jsonl.new");
        std::fs::write(&aside, text).with_context(|| format!("writing {}", aside.display()))?;
        std::fs::rename(&aside, &trials_path)
            .with_context(|| format!("replacing {}", trials_path.display()))?;
    }
    let mut trials = std::fs::OpenOptions::new()
        .append(true)
        .open(&trials_path)
        .with_context(|| format!("opening {}", trials_path.display()))?;

    let per_seed: u64 = brackets
        .iter()
        .map(|b| {
            let mut alive = b.configurations.len();
            b.rounds
                .iter()
                .map(|&r| {
                    let spent = alive as u64 * u64::from(r);
                    alive = (alive / space.search.eta).max(1);
                    spent
                })
                .sum::<u64>()
        })
        .sum();
    let layout: Vec<String> = brackets
        .iter()
        .map(|b| format!("{} at {:?} rounds", b.configurations.len(), b.rounds))
        .collect();
    println!(
        "tuning '{}': {:?}, eta {}, brackets {}; {} rounds a seed, {} seed(s) {:?}, \
         the objective each site's {}% validation rows; the finalists again on seeds {:?}; \
         trials in {}",
        plan.name,
        space.search.method,
        space.search.eta,
        layout.join(", "),
        per_seed,
        space.search.seeds.len(),
        space.search.seeds,
        (space.search.validation * 100.0).round(),
        space.search.final_seeds,
        trials_path.display()
    );
    if reused_before > 0 {
        println!("continuing: {reused_before} trial(s) already done are not run again");
    }
    let mut views: HashMap<u64, FederatedData> = HashMap::new();
    let mut ran = 0usize;
    let mut last: Option<(usize, usize, usize)> = None;
    let mut per_configuration: Vec<f64> = Vec::new();
    let quiet = args.quiet;
    let objective = match space.search.objective {
        Objective::Accuracy => "accuracy",
        Objective::Loss => "loss",
    };
    let search = tune::search(&space, plan.federation.rounds, &mut |trial| {
        if last != Some((trial.bracket, trial.rung, trial.configuration)) {
            per_configuration.clear();
            last = Some((trial.bracket, trial.rung, trial.configuration));
        }
        let measured = match done.get(&key(trial)) {
            Some(m) => *m,
            None => {
                if let std::collections::hash_map::Entry::Vacant(entry) = views.entry(trial.seed) {
                    let mut seeded = plan.clone();
                    seeded.seed = trial.seed;
                    let (data, _) = tessera_sim::load_data(&seeded, &base_dir, &Filesystem)?;
                    // Each seed its own held-out rows: repeated hold-out,
                    // so that the objective does not rest on one draw.
                    let view = tune::validation_view(
                        &plan,
                        &data,
                        space.search.validation,
                        tessera_core::derive_seed(space.search.sample_seed, &[trial.seed]),
                    );
                    entry.insert(view);
                }
                let view = views.get(&trial.seed).context("the validation rows")?;
                let measured = tune::measure(&tune::trial_plan(&plan, trial)?, view)?;
                let line = serde_json::to_string(&Done {
                    trial: trial.clone(),
                    measured,
                })?;
                // One write of the whole line: a crash leaves it whole or
                // cut, never whole without its end.
                trials.write_all(format!("{line}\n").as_bytes())?;
                trials.flush()?;
                done.insert(key(trial), measured);
                ran += 1;
                measured
            }
        };
        per_configuration.push(match space.search.objective {
            Objective::Accuracy => measured.mean_site_accuracy,
            Objective::Loss => measured.loss,
        });
        let last_stage = trial.bracket == brackets.len();
        let seeds = if last_stage {
            &space.search.final_seeds
        } else {
            &space.search.seeds
        };
        if !quiet && per_configuration.len() == seeds.len() {
            let mean = per_configuration.iter().sum::<f64>() / per_configuration.len() as f64;
            let settings = if trial.settings.is_empty() {
                "(the plan as given)".to_string()
            } else {
                trial.settings.join(" ")
            };
            let stage = if last_stage {
                "final".to_string()
            } else {
                format!("bracket {} rung {}", trial.bracket + 1, trial.rung + 1)
            };
            println!(
                "{stage:<16} ({:>3} rounds)  configuration {:>3}  validation {objective} {:.4}  {settings}",
                trial.rounds, trial.configuration, mean
            );
        }
        Ok::<_, anyhow::Error>(measured)
    })?;
    let best = &search.configurations[search.best];
    let best_standing = &search.best_standing;
    println!(
        "searched: {} trial(s) run now, {} reused, {} rounds in all; best configuration {} \
         (validation accuracy {:.4}, loss {:.4}): {}",
        ran,
        reused_before,
        search.rounds_spent,
        search.best,
        best_standing.accuracy,
        best_standing.loss,
        if best.is_empty() {
            "the plan as given".to_string()
        } else {
            best.join(" ")
        }
    );

    // The result against the plan as given, on the test rows, on other seeds.
    println!(
        "comparing on the test rows, seeds {:?} (none of them tuned on):",
        space.search.compare_seeds
    );
    println!("{:>6}  {:>9}  {:>9}", "seed", "plan", "tuned");
    let tuned_plan = plan.with_settings(best)?;
    let mut comparison = Vec::new();
    for &seed in &space.search.compare_seeds {
        let (mut given, mut tuned) = (plan.clone(), tuned_plan.clone());
        given.seed = seed;
        tuned.seed = seed;
        let (data, _) = tessera_sim::load_data(&given, &base_dir, &Filesystem)?;
        let row = Compared {
            seed,
            plan: tune::measure(&given, &data)?.mean_site_accuracy,
            tuned: tune::measure(&tuned, &data)?.mean_site_accuracy,
        };
        println!("{:>6}  {:>9.4}  {:>9.4}", seed, row.plan, row.tuned);
        comparison.push(row);
    }
    let n = comparison.len() as f64;
    let plan_mean = comparison.iter().map(|c| c.plan).sum::<f64>() / n;
    let tuned_mean = comparison.iter().map(|c| c.tuned).sum::<f64>() / n;
    println!("{:>6}  {:>9.4}  {:>9.4}", "mean", plan_mean, tuned_mean);
    let command = std::iter::once(format!(
        "tessera simulate --plan {}",
        quoted(&args.plan.display().to_string())
    ))
    .chain(best.iter().map(|s| format!("--set {}", quoted(s))))
    .collect::<Vec<_>>()
    .join(" ");
    let written = Written {
        plan: plan.name.clone(),
        space: &space,
        search: &search,
        best_settings: best,
        command: command.clone(),
        comparison: &comparison,
        plan_mean_site_accuracy: plan_mean,
        tuned_mean_site_accuracy: tuned_mean,
    };
    let result = out.join("tune.json");
    std::fs::write(&result, serde_json::to_string_pretty(&written)?)
        .with_context(|| format!("writing {}", result.display()))?;
    println!("result: {}\nrun it: {command}", result.display());
    Ok(())
}

/// The space file's text, refused past 1 MiB (a space is a few lines).
fn read_space(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    const MAX: u64 = 1 << 20;
    let file = std::fs::File::open(path)
        .with_context(|| format!("reading the search space {}", path.display()))?;
    let mut text = String::new();
    file.take(MAX + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the search space {}", path.display()))?;
    if text.len() as u64 > MAX {
        bail!("the search space {} is larger than 1 MiB", path.display());
    }
    Ok(text)
}

/// The trials already done for this plan and space; none when the file is
/// new. A file of another plan or space is refused; a last line cut short
/// (a search stopped while writing it) is dropped, and said (`true`).
fn read_trials(path: &Path, header: &Header) -> anyhow::Result<(BTreeMap<Key, Measured>, bool)> {
    const MAX: u64 = 64 << 20;
    let mut done = BTreeMap::new();
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((done, false)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(MAX + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > MAX {
        bail!(
            "{} is larger than 64 MiB: not a tune's trials file",
            path.display()
        );
    }
    let text = String::from_utf8_lossy(&bytes);
    // A file not ending in a newline was cut while its last line was
    // written, however whole that line looks.
    let whole = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let Some(first) = lines.first() else {
        return Ok((done, false));
    };
    let theirs: Header = serde_json::from_str(first)
        .with_context(|| format!("{} is not a tune's trials file", path.display()))?;
    if theirs != *header {
        bail!(
            "{} holds the trials of another plan, search space, data or Tessera version (their \
             sha256 or versions differ); give another --out, or remove it to start again",
            path.display()
        );
    }
    for (i, line) in lines.iter().enumerate().skip(1) {
        let last = i + 1 == lines.len();
        if last && !whole {
            eprintln!(
                "warning: the last line of {} was cut short; that trial runs again",
                path.display()
            );
            return Ok((done, true));
        }
        let d: Done = serde_json::from_str(line)
            .with_context(|| format!("{} line {}", path.display(), i + 1))?;
        let m = d.measured;
        if !((0.0..=1.0).contains(&m.mean_site_accuracy)
            && m.loss >= 0.0
            && m.loss <= tune::NO_LOSS)
        {
            bail!(
                "{} line {}: an accuracy outside [0, 1] or a negative loss: not a trial this \
                 search wrote",
                path.display(),
                i + 1
            );
        }
        done.insert(key(&d.trial), m);
    }
    Ok((done, !whole))
}

/// SHA-256 of every site's rows as read: names, features, labels.
fn data_sha256(data: &FederatedData) -> String {
    let mut hash = sha2::Sha256::new();
    for name in &data.feature_names {
        hash.update(name.as_bytes());
        hash.update([0]);
    }
    for site in &data.sites {
        hash.update(site.name.as_bytes());
        hash.update([0]);
        for part in [site.raw_train(), site.raw_test()] {
            hash.update((part.nrows() as u64).to_le_bytes());
            // Row by row (the dense matrix's order), never densified whole.
            part.for_each_row(|_, row| {
                for v in row {
                    hash.update(v.to_bits().to_le_bytes());
                }
            });
        }
        for y in site.train.y.iter().chain(&site.test.y) {
            hash.update(y.to_le_bytes());
        }
    }
    crate::tracking::hex(&hash.finalize())
}
