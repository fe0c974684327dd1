//! Experiment tracking: one record of a run, from a coordinator's store or
//! a simulation's report, with its plan, code version, each site's data
//! fingerprint (a hash of its layout and its declared row counts, never
//! rows), metrics per round, privacy spent and artifacts; `tessera runs
//! show` prints it, `tessera runs compare` sets two side by side, and
//! `mlflow.rs` logs it to an MLflow tracking server.

use std::collections::BTreeMap;

use anyhow::Context;
use prost::Message;
use serde::Serialize;
use sha2::Digest;
use tessera_coordinator::RunStore;
use tessera_coordinator::store::{AgreementStep, RunRow};
use tessera_engine::report::{RoundRecord, RunReport};
use tessera_proto::pb;

/// A site's data, as far as a record shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fingerprint {
    /// SHA-256 of the layout the site offered: its columns and which of
    /// them hold text (not its levels or classes, which a hash of a few
    /// values would let anyone guess); in simulation the agreed layout,
    /// the same for every site. Never rows, nor their counts.
    pub schema_sha256: String,
    /// Columns offered (features in simulation).
    pub columns: usize,
    /// Training rows as declared (a power of two where the plan hides
    /// counts from the coordinator).
    pub train_rows: u64,
    /// Test rows, likewise.
    pub test_rows: u64,
}

/// One round's metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundMetrics {
    /// The round.
    pub round: u32,
    /// Over all test rows.
    pub accuracy: f64,
    /// The mean of the sites'.
    pub mean_site_accuracy: f64,
    /// Mean log loss.
    pub loss: f64,
    /// Pooled AUC (binary tasks).
    pub auc: Option<f64>,
    /// Updates counted.
    pub accepted: usize,
    /// The run's epsilon after the round (DP).
    pub epsilon: Option<f64>,
    /// Test rows behind the figures (0: not evaluated, and the figures
    /// mean nothing).
    pub n_test: u64,
    /// The run clock at the round's close, seconds.
    pub at_seconds: f64,
}

/// A stored artifact.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Artifact {
    /// Its name.
    pub name: String,
    /// Its size.
    pub bytes: u64,
    /// SHA-256 of its bytes, where the record has them.
    pub sha256: Option<String>,
}

/// A run as tracking sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tracked {
    /// Run id (simulation: `PLAN-STRATEGY-seedN-` and the plan's hash).
    pub id: String,
    /// Plan name.
    pub name: String,
    /// Where it ran: `deployment` or `simulation`.
    pub runtime: &'static str,
    /// How it stands.
    pub status: String,
    /// The Tessera build that ran it.
    pub code_version: String,
    /// Start, microseconds since the Unix epoch.
    pub created_unix_micros: u64,
    /// The plan's text.
    pub plan: String,
    /// SHA-256 of the plan's text.
    pub plan_sha256: String,
    /// Strategy, seed, planned rounds.
    pub strategy: String,
    /// The run seed.
    pub seed: u64,
    /// Rounds planned.
    pub rounds_planned: u32,
    /// Each site's data.
    pub sites: BTreeMap<String, Fingerprint>,
    /// Metrics per round.
    pub rounds: Vec<RoundMetrics>,
    /// The run's epsilon and delta spent (DP on the model, or every
    /// release of a deployed run's ledger), none without.
    pub privacy: Option<(f64, f64)>,
    /// In simulation, epsilon and delta spent on the sites' metrics (DP
    /// site metrics), apart from the model's.
    pub metrics_privacy: Option<(f64, f64)>,
    /// Models and files kept.
    pub artifacts: Vec<Artifact>,
}

/// SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

/// `bytes` in lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn metrics(r: &RoundRecord) -> RoundMetrics {
    RoundMetrics {
        round: r.round,
        accuracy: r.accuracy,
        mean_site_accuracy: r.mean_site_accuracy,
        loss: r.loss,
        auc: r.auc,
        accepted: r.accepted,
        epsilon: r.epsilon,
        n_test: r.n_test,
        at_seconds: r.virtual_time,
    }
}

/// The record of stored run `run`.
pub fn from_store(store: &dyn RunStore, run: &RunRow) -> anyhow::Result<Tracked> {
    let id = run.id.as_str();
    let mut sites: BTreeMap<String, Fingerprint> = BTreeMap::new();
    let kinds = store.offers(id, AgreementStep::Kinds)?;
    let levels: BTreeMap<String, Vec<u8>> = store
        .offers(id, AgreementStep::Levels)?
        .into_iter()
        .collect();
    for (site, bytes) in kinds {
        let offer = pb::KindsOffer::decode(bytes.as_slice())
            .with_context(|| format!("site '{site}': a damaged column offer in the store"))?;
        let level = levels
            .get(&site)
            .map(|b| pb::LevelsOffer::decode(b.as_slice()))
            .transpose()
            .with_context(|| format!("site '{site}': a damaged levels offer in the store"))?;
        // The layout's hash: the column offer's own encoding (names and
        // text flags).
        sites.insert(
            site,
            Fingerprint {
                schema_sha256: sha256_hex(&bytes),
                columns: offer.columns.len(),
                train_rows: level.as_ref().map_or(0, |l| l.train_rows),
                test_rows: level.as_ref().map_or(0, |l| l.test_rows),
            },
        );
    }
    let mut rounds = Vec::new();
    for row in store.rounds(id)? {
        let record: RoundRecord = serde_json::from_str(&row.record)
            .with_context(|| format!("round {}: a damaged report line", row.round))?;
        rounds.push(metrics(&record));
    }
    let ledger = store.privacy_ledger(id)?;
    let privacy = ledger.last().map(|_| {
        let epsilon = ledger
            .iter()
            .map(|r| r.entry.run_epsilon)
            .fold(0.0, f64::max);
        let delta = ledger.iter().map(|r| r.delta).fold(0.0, f64::max);
        (epsilon, delta)
    });
    let models = store.models(id)?;
    let latest = models.last().map(|m| m.version);
    let mut artifacts = Vec::with_capacity(models.len());
    for m in models {
        // The last model's parameters hashed as model files hash them.
        let sha256 = match Some(m.version) == latest {
            true => store
                .model(id, m.version)?
                .map(|p| tessera_engine::model_file::parameters_sha256(&p)),
            false => None,
        };
        artifacts.push(Artifact {
            name: format!("model version {}", m.version),
            bytes: m.bytes,
            sha256,
        });
    }
    Ok(Tracked {
        id: run.id.clone(),
        name: run.name.clone(),
        runtime: "deployment",
        status: run.status.to_string(),
        code_version: store.code_version(id)?.unwrap_or_else(|| "unknown".into()),
        created_unix_micros: run.created_unix_micros,
        plan_sha256: sha256_hex(run.plan.as_bytes()),
        plan: run.plan.clone(),
        strategy: run.strategy.clone(),
        seed: run.seed,
        rounds_planned: run.rounds,
        sites,
        rounds,
        privacy,
        metrics_privacy: None,
        artifacts,
    })
}

/// The record of a simulation: its plan's text and its report; `files`
/// the artifacts it wrote (name, bytes).
pub fn from_report(plan: &str, report: &RunReport, files: &[(String, Vec<u8>)]) -> Tracked {
    let layout = sha256_hex(format!("{:?}|{:?}", report.features, report.classes).as_bytes());
    let sites = report
        .data
        .iter()
        .map(|s| {
            (
                s.site.clone(),
                Fingerprint {
                    schema_sha256: layout.clone(),
                    columns: report.features.len(),
                    train_rows: s.n_train as u64,
                    test_rows: s.n_test as u64,
                },
            )
        })
        .collect();
    // Started when it ended, less its length.
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
        .saturating_sub((report.timing.total_seconds.max(0.0) * 1e6) as u64);
    let plan_sha256 = sha256_hex(plan.as_bytes());
    // A run is its plan, build, data and what it gave: the same again is
    // the same run (simulation is deterministic), anything else another.
    let identity = sha256_hex(
        format!(
            "{plan}\u{0}{}\u{0}{}\u{0}{}",
            env!("CARGO_PKG_VERSION"),
            serde_json::to_string(&report.data).unwrap_or_default(),
            serde_json::to_string(&report.rounds).unwrap_or_default()
        )
        .as_bytes(),
    );
    Tracked {
        id: format!(
            "{}-{}-seed{}-{}",
            report.plan,
            report.strategy,
            report.seed,
            &identity[..12]
        ),
        name: report.plan.clone(),
        runtime: "simulation",
        status: "finished".into(),
        code_version: env!("CARGO_PKG_VERSION").to_string(),
        created_unix_micros: created,
        plan_sha256,
        plan: plan.to_string(),
        strategy: report.strategy.clone(),
        seed: report.seed,
        rounds_planned: report.rounds.len() as u32,
        sites,
        rounds: report.rounds.iter().map(metrics).collect(),
        privacy: report.privacy.as_ref().map(|p| (p.epsilon, p.delta)),
        metrics_privacy: report
            .metrics_privacy
            .as_ref()
            .map(|p| (p.epsilon, p.delta)),
        artifacts: files
            .iter()
            .map(|(name, bytes)| Artifact {
                name: name.clone(),
                bytes: bytes.len() as u64,
                sha256: Some(sha256_hex(bytes)),
            })
            .collect(),
    }
}

/// The plan's settings as `section.key = value` lines, sorted: tables
/// flattened with dots, arrays of tables by index (`data.sites.0.name`).
pub fn flatten(plan: &str) -> BTreeMap<String, String> {
    fn walk(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
        let key = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            }
        };
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    walk(&key(k), v, out);
                }
            }
            toml::Value::Array(a) if a.iter().any(|v| v.is_table()) => {
                for (i, v) in a.iter().enumerate() {
                    walk(&key(&i.to_string()), v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    match toml::from_str::<toml::Value>(plan) {
        Ok(value) => walk("", &value, &mut out),
        Err(e) => {
            out.insert("(plan)".into(), format!("does not read: {}", e.message()));
        }
    }
    out
}

/// `tessera runs show`.
pub fn print(t: &Tracked) {
    println!(
        "run {} ({}, {}): {} of plan '{}', {} seed {}, {} of {} rounds",
        t.id,
        t.runtime,
        t.status,
        tessera_core::utc(t.created_unix_micros),
        t.name,
        t.strategy,
        t.seed,
        t.rounds.len(),
        t.rounds_planned
    );
    println!("code version: {}", t.code_version);
    println!("plan sha256:  {}", t.plan_sha256);
    match t.privacy {
        Some((epsilon, delta)) => {
            println!("privacy spent: epsilon {epsilon:.4} at delta {delta:e}")
        }
        None => println!("privacy spent: none (no DP release)"),
    }
    if let Some((epsilon, delta)) = t.metrics_privacy {
        println!("privacy spent on site metrics: epsilon {epsilon:.4} at delta {delta:e}");
    }
    println!(
        "sites ({}), data fingerprints (never rows; rows as {}):",
        t.sites.len(),
        if t.runtime == "deployment" {
            "each site declared them, to the next power of two where the plan hides counts"
        } else {
            "read"
        }
    );
    for (site, f) in &t.sites {
        println!(
            "  {site:<20} layout {}  {} columns  {} train / {} test rows",
            &f.schema_sha256[..16.min(f.schema_sha256.len())],
            f.columns,
            f.train_rows,
            f.test_rows
        );
    }
    println!(
        "{:>5}  {:>8}  {:>9}  {:>7}  {:>6}  {:>8}  {:>8}",
        "round", "accuracy", "mean-site", "loss", "auc", "accepted", "epsilon"
    );
    for r in &t.rounds {
        // A round not evaluated has no figures to show.
        let figure = |v: f64| {
            if r.n_test > 0 {
                format!("{v:.4}")
            } else {
                "-".into()
            }
        };
        println!(
            "{:>5}  {:>8}  {:>9}  {:>7}  {:>6}  {:>8}  {:>8}",
            r.round,
            figure(r.accuracy),
            figure(r.mean_site_accuracy),
            figure(r.loss),
            r.auc
                .filter(|_| r.n_test > 0)
                .map_or("-".into(), |a| format!("{a:.4}")),
            r.accepted,
            r.epsilon.map_or("-".into(), |e| format!("{e:.4}"))
        );
    }
    println!("artifacts:");
    for a in &t.artifacts {
        println!("  {} ({} bytes)", a.name, a.bytes);
    }
}

/// `tessera runs compare`: plan differences, then the metric curves side
/// by side, then what else differs.
pub fn print_comparison(a: &Tracked, b: &Tracked) {
    println!("A: run {} ({}, {})", a.id, a.runtime, a.status);
    println!("B: run {} ({}, {})", b.id, b.runtime, b.status);
    let (pa, pb) = (flatten(&a.plan), flatten(&b.plan));
    let mut keys: Vec<&String> = pa.keys().chain(pb.keys()).collect();
    keys.sort();
    keys.dedup();
    let differing: Vec<&String> = keys
        .into_iter()
        .filter(|k| pa.get(*k) != pb.get(*k))
        .collect();
    if differing.is_empty() {
        println!("plans: the same settings");
    } else {
        println!("plans differ in {} setting(s):", differing.len());
        let shown = |v: Option<&String>| {
            v.map_or("(unset)".to_string(), |s| {
                tessera_core::shown(s, 60).to_string()
            })
        };
        for k in differing {
            println!("  {k:<40} A {}  B {}", shown(pa.get(k)), shown(pb.get(k)));
        }
    }
    println!(
        "{:>5}  {:>10}  {:>10}  {:>10}  {:>10}  {:>8}  {:>8}",
        "round", "A accuracy", "B accuracy", "A mean-site", "B mean-site", "A loss", "B loss"
    );
    // Rounds matched by number; one not evaluated (or absent) shows "-".
    let by_round = |t: &Tracked| -> BTreeMap<u32, RoundMetrics> {
        t.rounds.iter().map(|r| (r.round, r.clone())).collect()
    };
    let (rounds_a, rounds_b) = (by_round(a), by_round(b));
    let mut numbers: Vec<u32> = rounds_a.keys().chain(rounds_b.keys()).copied().collect();
    numbers.sort_unstable();
    numbers.dedup();
    let cell = |r: Option<&RoundMetrics>, f: fn(&RoundMetrics) -> f64| {
        r.filter(|r| r.n_test > 0)
            .map_or("-".to_string(), |r| format!("{:.4}", f(r)))
    };
    for round in numbers {
        let (ra, rb) = (rounds_a.get(&round), rounds_b.get(&round));
        println!(
            "{:>5}  {:>10}  {:>10}  {:>10}  {:>10}  {:>8}  {:>8}",
            round,
            cell(ra, |r| r.accuracy),
            cell(rb, |r| r.accuracy),
            cell(ra, |r| r.mean_site_accuracy),
            cell(rb, |r| r.mean_site_accuracy),
            cell(ra, |r| r.loss),
            cell(rb, |r| r.loss)
        );
    }
    if a.code_version != b.code_version {
        println!(
            "code versions differ: A {}  B {}",
            a.code_version, b.code_version
        );
    }
    let privacy = |t: &Tracked| {
        t.privacy.map_or("none".to_string(), |(e, d)| {
            format!("epsilon {e:.4} at delta {d:e}")
        })
    };
    println!("privacy spent: A {}  B {}", privacy(a), privacy(b));
    let mut sites: Vec<&String> = a.sites.keys().chain(b.sites.keys()).collect();
    sites.sort();
    sites.dedup();
    for site in sites {
        match (a.sites.get(site), b.sites.get(site)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => println!(
                "site {site}: data differs (A layout {} {}/{} rows, B layout {} {}/{} rows)",
                &x.schema_sha256[..12.min(x.schema_sha256.len())],
                x.train_rows,
                x.test_rows,
                &y.schema_sha256[..12.min(y.schema_sha256.len())],
                y.train_rows,
                y.test_rows
            ),
            (Some(_), None) => println!("site {site}: in A only"),
            (None, _) => println!("site {site}: in B only"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables flatten with dots, arrays of tables by index, other arrays
    /// and values as TOML; a plan that does not read says so.
    #[test]
    fn plans_flatten_to_settings() {
        let flat = flatten(
            "name = \"p\"\n[federation]\nstrategy = \"fedavg\"\nrounds = 3\n\
             [model]\nhidden = [32, 16]\n[[data.sites]]\nname = \"a\"\n[[data.sites]]\nname = \"b\"\n",
        );
        let expected: BTreeMap<String, String> = [
            ("data.sites.0.name", "\"a\""),
            ("data.sites.1.name", "\"b\""),
            ("federation.rounds", "3"),
            ("federation.strategy", "\"fedavg\""),
            ("model.hidden", "[32, 16]"),
            ("name", "\"p\""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(flat, expected);
        let bad = flatten("name = ");
        assert!(bad["(plan)"].starts_with("does not read"), "{bad:?}");
    }
}
