//! `tessera synth --like FILE`: a DP synthetic sample of a site's file, to
//! reproduce a failure without its rows. The file is read as the plan says
//! (header or not, delimiter, missing tokens, each column's kind and
//! declared levels); the release is `tessera_analytics::synthetic`'s,
//! its noise from this machine's own randomness; each release is charged
//! to the site's privacy ledger before the sample is written.

use std::path::PathBuf;

use anyhow::{Context, bail};
use tessera_analytics::synthetic::{SynthColumn, SynthModel, SynthSettings};
use tessera_data::ColumnKind;
use tessera_engine::Plan;

use crate::synth::SynthArgs;

/// The most rows a sample may have, and a file read.
const MAX_ROWS: usize = 10_000_000;
/// The largest file read, and the most columns.
const MAX_BYTES: u64 = 4 << 30;
const MAX_COLUMNS: usize = 10_000;

/// How the plan reads each of the file's columns.
fn columns(plan: &Plan, names: &[String]) -> Vec<SynthColumn> {
    let schema = &plan.data.schema;
    names
        .iter()
        .map(
            |name| match schema.columns.iter().find(|c| &c.name == name) {
                Some(c) => match c.kind {
                    ColumnKind::Numeric => SynthColumn::Numeric,
                    ColumnKind::Categorical => SynthColumn::Categorical(c.levels.clone()),
                    ColumnKind::Ignore => SynthColumn::Withheld,
                },
                // The target, unlisted: its classes.
                None if *name == schema.target => SynthColumn::Categorical(None),
                // Unlisted with a header: read as numbers unless they hold text.
                None => SynthColumn::Numeric,
            },
        )
        .collect()
}

pub fn run(args: &SynthArgs) -> anyhow::Result<()> {
    let (Some(like), Some(plan_path), Some(site), Some(epsilon)) =
        (&args.like, &args.plan, &args.site, args.epsilon)
    else {
        bail!("--like needs --plan, --site and --epsilon");
    };
    let plan = Plan::from_file(plan_path)
        .with_context(|| format!("{}: the plan does not read", plan_path.display()))?;
    let schema = &plan.data.schema;
    if !schema.delimiter.is_ascii() {
        bail!("the plan's delimiter '{}' is not ASCII", schema.delimiter);
    }
    if like.extension().is_some_and(|e| e == "gz") {
        bail!("--like {}: give the file uncompressed", like.display());
    }
    let reader = std::fs::File::open(like).with_context(|| format!("--like {}", like.display()))?;
    let meta = reader.metadata()?;
    if !meta.is_file() || meta.len() > MAX_BYTES {
        bail!(
            "--like {}: not a regular file of at most {} GiB",
            like.display(),
            MAX_BYTES >> 30
        );
    }
    let delta = args.delta.unwrap_or(plan.privacy.delta);
    if !(delta > 0.0 && delta <= plan.privacy.delta) {
        bail!(
            "--delta {delta} must be positive and at most the plan's {} (the ledger counts at \
             the plan's)",
            plan.privacy.delta
        );
    }
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .delimiter(schema.delimiter as u8)
        .from_reader(reader);
    let mut names: Option<Vec<String>> =
        (!schema.header).then(|| schema.columns.iter().map(|c| c.name.clone()).collect());
    let mut rows = Vec::new();
    for record in csv.records() {
        let record = record.with_context(|| format!("--like {}: malformed CSV", like.display()))?;
        let fields: Vec<String> = record.iter().map(str::to_string).collect();
        if fields.len() == 1 && fields[0].is_empty() {
            continue;
        }
        match &names {
            None => {
                // A header names the plan's columns: a file without one
                // would give its first row as names, written out as they are.
                let lacking: Vec<&str> = schema
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .chain([schema.target.as_str()])
                    .filter(|name| !fields.iter().any(|f| f == name))
                    .collect();
                if !lacking.is_empty() || fields.len() > MAX_COLUMNS {
                    bail!(
                        "--like {}: its first line is not a header naming the plan's columns \
                         (it lacks {}); the plan says the file has one (header = true)",
                        like.display(),
                        tessera_core::shown(&lacking.join(", "), 200)
                    );
                }
                names = Some(fields);
            }
            Some(names) => {
                if fields.len() != names.len() {
                    bail!(
                        "--like {}, line {}: {} fields, the {} has {}",
                        like.display(),
                        record.position().map_or(0, |p| p.line()),
                        fields.len(),
                        if schema.header {
                            "header"
                        } else {
                            "plan's schema"
                        },
                        names.len()
                    );
                }
                if rows.len() == MAX_ROWS {
                    bail!("--like {}: more than {MAX_ROWS} rows", like.display());
                }
                rows.push(fields);
            }
        }
    }
    let Some(names) = names else {
        bail!("--like {}: no header line", like.display());
    };
    let columns = columns(&plan, &names);
    let mut missing = schema.missing.clone();
    missing.push(String::new());
    let settings = SynthSettings {
        epsilon,
        delta,
        correlations: !args.no_correlations,
        missing,
    };
    let key = crate::harmonize::secret_key()?;
    let model = SynthModel::release(&columns, &rows, &settings, key)?;
    let ledger = crate::deploy::site_ledger(args.ledger.as_deref(), site);
    // Charged before it is written: a sample on disk is a release.
    let releases: Vec<(&str, String, tessera_privacy::DpEvent)> = model
        .events
        .iter()
        .map(|(kind, event)| {
            (
                *kind,
                format!("a synthetic sample's {kind} release of this site's file"),
                *event,
            )
        })
        .collect();
    let spent = tessera_participant::ledger::charge_local_all(&ledger, site, &plan, &releases)
        .map_err(|e| anyhow::anyhow!("the sample was not written (nothing charged): {e}"))?;
    let n = args
        .rows
        .unwrap_or(model.rows.round() as usize)
        .clamp(1, MAX_ROWS);
    let mut rng = tessera_core::SeededRng::from_key(crate::harmonize::secret_key()?);
    let sample = model.sample(n, &mut rng);
    let mut tmp = args.out.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    {
        let file = std::fs::File::create_new(&tmp)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        let mut out = csv::WriterBuilder::new()
            .delimiter(schema.delimiter as u8)
            .from_writer(file);
        if schema.header {
            out.write_record(&names)?;
        }
        for row in &sample {
            out.write_record(row)?;
        }
        out.flush()?;
    }
    std::fs::rename(&tmp, &args.out).with_context(|| format!("{}", args.out.display()))?;
    let withheld = columns
        .iter()
        .filter(|c| **c == SynthColumn::Withheld)
        .count();
    println!(
        "{}: {n} synthetic rows like {} ({} columns{}), {} at epsilon {epsilon} (delta {}), \
         charged to {}: this site's epsilon under plan '{}' is now {spent:.4}",
        args.out.display(),
        like.display(),
        columns.len(),
        if withheld > 0 {
            format!(", {withheld} the plan ignores written missing")
        } else {
            String::new()
        },
        if model.correlations.is_some() {
            "marginals and numeric correlations"
        } else if args.no_correlations {
            "marginals only"
        } else {
            "marginals only (too few rows for correlations at this epsilon)"
        },
        settings.delta,
        ledger.display(),
        plan.name
    );
    if columns.contains(&SynthColumn::Categorical(None)) {
        println!(
            "levels the plan does not declare are named only past a threshold a level one row \
             holds passes with probability at most {}: the sample is (epsilon, delta + {}) DP; \
             the ledger counts the Gaussian part",
            settings.delta, settings.delta
        );
    }
    Ok(())
}
