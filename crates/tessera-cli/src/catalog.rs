//! `tessera catalog`: the federation's features, from the sites' DP
//! profiles (or, in simulation, the plan's sites profiled here and charged
//! to this run's ledger), with usage from a run store.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tessera_analytics::harmonize::{
    Feature, Match, Profile, ProfileSettings, Proposal, TargetColumn, TargetSchema, Transform,
    catalog, profile, propose,
};
use tessera_coordinator::store::RunStore;
use tessera_data::RecordColumn;
use tessera_data::config::ColumnKind;
use tessera_engine::Plan;

/// Arguments of `tessera catalog`.
#[derive(Debug, clap::Args)]
pub struct CatalogArgs {
    /// The federation's target schema (TOML); with --plan, optional (the
    /// plan's columns, with no units or ranges, where not given).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Sites' profiles (`tessera profile --out`): nothing new is released.
    #[arg(long, num_args = 1..)]
    profiles: Vec<PathBuf>,
    /// Simulation: profile the rows each of this plan's sites keeps (after
    /// its mapping and the plan's missing policy; the target as the index
    /// of its class), each profile charged to this catalog's ledger (in
    /// --json).
    #[arg(long, conflicts_with = "profiles")]
    plan: Option<PathBuf>,
    /// Epsilon of each simulated profile.
    #[arg(long, default_value_t = 1.0)]
    epsilon: f64,
    /// Run stores whose runs' plans say which features were used.
    #[arg(long)]
    db: Vec<PathBuf>,
    /// Writes the catalog (and, with --plan, the ledger) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The plan's columns as a target schema without units or ranges.
fn schema_of(plan: &Plan, names: &[String], levels: &[Option<Vec<String>>]) -> TargetSchema {
    TargetSchema {
        name: plan.name.clone(),
        version: plan.data.schema.version.unwrap_or(1),
        columns: names
            .iter()
            .zip(levels)
            .map(|(name, levels)| TargetColumn {
                name: name.clone(),
                description: None,
                synonyms: Vec::new(),
                unit: None,
                substance: None,
                decimals: None,
                typical: None,
                as_of: None,
                levels: levels
                    .iter()
                    .flatten()
                    .filter(|l| l.parse::<f64>().is_err())
                    .map(|l| (l.clone(), l.clone()))
                    .collect(),
            })
            .collect(),
        history: Vec::new(),
    }
}

/// Runs `tessera catalog`.
pub fn run(args: &CatalogArgs) -> anyhow::Result<()> {
    let given = match &args.schema {
        Some(path) => Some(crate::harmonize::read_schema(path)?),
        None => None,
    };
    let mut ledger_entries = Vec::new();
    // A plan's own columns, without a schema: each feature is its column.
    let identity = args.plan.is_some() && given.is_none();
    let (schema, profiles) = if let Some(plan_path) = &args.plan {
        let plan = Plan::from_file(plan_path)?;
        let base = plan_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let records = tessera_data::load_records(&plan.data, &base, &tessera_data::Filesystem)?;
        if let (Some(given), Some(version)) = (&given, plan.data.schema.version)
            && given.version != version
        {
            bail!(
                "the plan's columns are schema version {version}, the schema given is version {}",
                given.version
            );
        }
        let schema = given.unwrap_or_else(|| schema_of(&plan, &records.names, &records.levels));
        let mut ledger = plan.privacy.ledger();
        let settings = ProfileSettings {
            epsilon: args.epsilon,
            delta: plan.privacy.delta,
            ..ProfileSettings::default()
        };
        let mut profiles = Vec::new();
        for site in &records.sites {
            let target = site.columns.len().saturating_sub(1);
            let rows: Vec<Vec<String>> = (0..site.rows)
                .map(|i| {
                    site.columns
                        .iter()
                        .zip(&records.levels)
                        .enumerate()
                        .map(|(j, (c, levels))| match c {
                            // The target as its class's index (the plan's
                            // classes, such as "0" and "not 0").
                            RecordColumn::Categorical(v) if j == target => {
                                if v[i] == tessera_data::MISSING_LEVEL {
                                    String::new()
                                } else {
                                    v[i].to_string()
                                }
                            }
                            RecordColumn::Numeric(v) if v[i].is_nan() => String::new(),
                            RecordColumn::Numeric(v) => format!("{}", v[i]),
                            RecordColumn::Categorical(v) => levels
                                .as_ref()
                                .and_then(|l: &Vec<String>| l.get(v[i] as usize))
                                .map_or_else(String::new, String::clone),
                        })
                        .collect()
                })
                .collect();
            let p = profile(
                &site.site,
                &schema,
                &records.names,
                &rows,
                settings,
                crate::harmonize::secret_key()?,
            )?;
            ledger.record_participant(0, "profile", "a column profile", &site.site, p.event)?;
            profiles.push(p);
        }
        ledger_entries = ledger.entries().to_vec();
        (schema, profiles)
    } else {
        let Some(schema) = given else {
            bail!("give --schema with --profiles (or --plan to profile a plan's sites here)");
        };
        if args.profiles.is_empty() {
            bail!("give --profiles (made at each site by `tessera profile`) or --plan");
        }
        let mut profiles = Vec::new();
        for path in &args.profiles {
            let p = Profile::parse(&crate::harmonize::read_bounded(path, 64 << 20)?)
                .with_context(|| path.display().to_string())?;
            crate::harmonize::check_profile(path, &p, &schema)?;
            profiles.push(p);
        }
        crate::harmonize::files(&profiles)?;
        (schema, profiles)
    };
    let proposals: Vec<_> = profiles
        .iter()
        .map(|p| {
            if identity {
                same_names(&schema, p)
            } else {
                propose(&schema, p, tessera_analytics::harmonize::DEFAULT_THRESHOLD)
            }
        })
        .collect();
    let mut features = catalog(&schema, &profiles, &proposals);

    for db in &args.db {
        usage(db, &mut features)?;
    }
    print(&features, profiles.len());
    for e in &ledger_entries {
        println!(
            "charged: {} profile, epsilon {:.4} (this catalog's ledger)",
            e.participant.as_deref().unwrap_or("?"),
            e.run_epsilon
        );
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "schema": schema.name,
            "schema_version": schema.version,
            "sites": profiles.iter().map(|p| &p.site).collect::<Vec<_>>(),
            "features": features,
            "ledger": ledger_entries,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| path.display().to_string())?;
    }
    Ok(())
}

/// Each feature read from the column of its own name, as it is (the
/// plan's records are already in its layout).
fn same_names(schema: &TargetSchema, p: &Profile) -> Proposal {
    let matches = schema
        .columns
        .iter()
        .filter(|t| p.columns.iter().any(|c| c.name == t.name))
        .map(|t| Match {
            target: t.name.clone(),
            column: t.name.clone(),
            score: 1.0,
            names: 1.0,
            values: None,
            transform: Transform::AsIs,
            evidence: "the plan's own column".into(),
            proposable: true,
        })
        .collect();
    Proposal {
        site: p.site.clone(),
        mapping: tessera_data::mapping::Mapping {
            version: 1,
            schema_version: None,
            header: true,
            delimiter: p.delimiter,
            missing: None,
            columns: Default::default(),
            recode: Default::default(),
            convert: Default::default(),
            derive: Default::default(),
            absent: Vec::new(),
        },
        matches,
        unmatched: Vec::new(),
        unused: Vec::new(),
    }
}

/// Whether `plan` used `feature`: its target; a column it lists and does
/// not ignore; or, where its files have a header or it lists no columns,
/// any column it does not list (inferred as a feature). By name only.
fn uses(plan: &Plan, feature: &str) -> bool {
    let schema = &plan.data.schema;
    match schema.columns.iter().find(|c| c.name == feature) {
        _ if feature == schema.target => true,
        Some(c) => c.kind != ColumnKind::Ignore,
        None => schema.header || schema.columns.is_empty(),
    }
}

/// A catalog document (`--json`) with each feature's `used_by` taken from
/// `runs` (the dashboard's, from its coordinator's database).
pub(crate) fn with_usage(
    doc: &serde_json::Value,
    runs: &[tessera_coordinator::store::RunRow],
) -> serde_json::Value {
    let plans: Vec<(&str, &str, Plan)> = runs
        .iter()
        .filter_map(|r| {
            Some((
                r.id.as_str(),
                r.name.as_str(),
                toml::from_str(&r.plan).ok()?,
            ))
        })
        .collect();
    let mut doc = doc.clone();
    if let Some(features) = doc["features"].as_array_mut() {
        for f in features {
            let name = f["name"].as_str().unwrap_or_default().to_string();
            f["used_by"] = plans
                .iter()
                .filter(|(_, _, plan)| uses(plan, &name))
                .map(|(id, name, _)| serde_json::json!([id, name]))
                .collect();
        }
    }
    doc
}

/// Reads a catalog document (`tessera catalog --json`) for the dashboard.
pub(crate) fn read_document(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text = crate::harmonize::read_bounded(path, 16 << 20)?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| path.display().to_string())?;
    if !doc["features"].is_array() {
        bail!(
            "{}: not a catalog (write one with `tessera catalog --json FILE`)",
            path.display()
        );
    }
    Ok(doc)
}

/// Adds each run of the store at `db` to the features its plan used.
fn usage(db: &Path, features: &mut [Feature]) -> anyhow::Result<()> {
    let store = tessera_coordinator::store::SqliteStore::open_existing(db)
        .with_context(|| db.display().to_string())?;
    for run in store.runs()? {
        let Ok(plan) = toml::from_str::<Plan>(&run.plan) else {
            continue;
        };
        for f in features.iter_mut() {
            if uses(&plan, &f.name) {
                f.used_by.push((run.id.clone(), run.name.clone()));
            }
        }
    }
    Ok(())
}

fn shown(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn print(features: &[Feature], sites: usize) {
    println!(
        "{:<16} {:<11} {:>5} {:>7} {:>21} {:>7}  similar; used by",
        "feature", "kind", "sites", "missing", "median in", "quality"
    );
    for f in features {
        let median = f.quartiles.map_or_else(
            || "below the noise".to_string(),
            |[_, (lo, hi), _]| format!("[{lo:.3}, {hi:.3}]"),
        );
        let similar: Vec<&str> = f.similar.iter().map(|(n, _)| n.as_str()).collect();
        println!(
            "{:<16} {:<11} {:>5} {:>7} {:>21} {:>7}  {}; {}",
            tessera_core::shown(&f.name, 16),
            f.kind,
            format!("{}/{sites}", f.sites.len()),
            shown(f.missing),
            median,
            shown(f.quality.score),
            if similar.is_empty() {
                "-".into()
            } else {
                similar.join(", ")
            },
            f.used_by.len()
        );
    }
}
