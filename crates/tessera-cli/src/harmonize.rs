//! `tessera profile` (at a site: its columns' DP profile, charged to its
//! ledger) and `tessera harmonize` (proposals of each site's mapping from
//! the profiles, or, in simulation, from the plan's files profiled here).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tessera_analytics::harmonize::{
    LevelRelease, Profile, ProfileSettings, Proposal, TargetSchema, Transform, profile, propose,
};
use tessera_engine::Plan;

/// Arguments of `tessera profile`.
#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    /// The plan the profile is for (its privacy budgets bound this site's
    /// releases under it).
    #[arg(long)]
    plan: PathBuf,
    /// The federation's target schema (TOML).
    #[arg(long)]
    schema: PathBuf,
    /// This site's name.
    #[arg(long)]
    site: String,
    /// This site's CSV file, with a header line.
    #[arg(long)]
    data: PathBuf,
    /// The file's field separator.
    #[arg(long, default_value_t = ',')]
    delimiter: char,
    /// Epsilon of the profile.
    #[arg(long, default_value_t = 1.0)]
    epsilon: f64,
    /// Delta of the profile (default: the plan's `[privacy] delta`, at
    /// which the ledger counts).
    #[arg(long)]
    delta: Option<f64>,
    /// Text outside the target's vocabulary: counted only (none), or also
    /// by level where common enough, as a hash (hashed) or by name (names);
    /// a level release adds a delta the ledger does not count.
    #[arg(long, value_enum, default_value_t = Levels::None)]
    levels: Levels,
    /// This site's privacy ledger, charged before the profile is written
    /// (the participant's: default tessera-ledger-SITE.json here).
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// The profile (JSON) to write, for the federation's harmonization.
    #[arg(long)]
    out: PathBuf,
}

/// `--levels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Levels {
    None,
    Hashed,
    Names,
}

/// Arguments of `tessera harmonize`.
#[derive(Debug, clap::Args)]
pub struct HarmonizeArgs {
    /// The federation's target schema (TOML).
    #[arg(long)]
    schema: PathBuf,
    /// Sites' profiles (`tessera profile --out`).
    #[arg(long, num_args = 1..)]
    profiles: Vec<PathBuf>,
    /// Simulation: profile the files of this plan's sites here (each with
    /// fresh noise, charged to this run's ledger, written beside the
    /// proposals), and write a copy of the plan that reads each site's file
    /// through its proposed mapping (OUT_DIR/plan.toml).
    #[arg(long, conflicts_with = "profiles")]
    plan: Option<PathBuf>,
    /// Epsilon of each simulated profile.
    #[arg(long, default_value_t = 1.0)]
    epsilon: f64,
    /// The lowest score proposed.
    #[arg(long, default_value_t = tessera_analytics::harmonize::DEFAULT_THRESHOLD)]
    threshold: f64,
    /// Where the proposals go: SITE.toml (a mapping with its evidence),
    /// proposals.json, and with --plan each SITE.profile.json, ledger.json
    /// and plan.toml.
    #[arg(long)]
    out_dir: PathBuf,
}

/// Arguments of `tessera schema`.
#[derive(Debug, clap::Args)]
pub struct SchemaArgs {
    #[command(subcommand)]
    command: SchemaCommand,
}

#[derive(Debug, clap::Subcommand)]
enum SchemaCommand {
    /// Write the mapping that reads a site's file of an older schema
    /// version as the schema's current version (from the schema's history):
    /// renamed columns from their old names, the site's own mapping to the
    /// old version carried through.
    Upgrade {
        /// The target schema (TOML), at its current version.
        #[arg(long)]
        schema: PathBuf,
        /// The version the site's file (or mapping) follows.
        #[arg(long)]
        from: u32,
        /// The site's mapping to version FROM, if it has one (without one,
        /// the file is taken to have a header and commas).
        #[arg(long)]
        mapping: Option<PathBuf>,
        /// The mapping to write.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs `tessera schema`.
pub fn run_schema(args: &SchemaArgs) -> anyhow::Result<()> {
    let SchemaCommand::Upgrade {
        schema,
        from,
        mapping,
        out,
    } = &args.command;
    let target = read_schema(schema)?;
    let own = match mapping {
        Some(path) => Some(tessera_data::mapping::Mapping::from_file(path)?),
        None => None,
    };
    let upgrade = target.upgrade(*from, own.as_ref())?;
    let mut text = format!(
        "# Made by `tessera schema upgrade`: a file of schema '{}' version {from}{} read as \
         version {}.\n",
        target.name,
        mapping
            .as_ref()
            .map_or_else(String::new, |m| format!(" (through {})", m.display())),
        target.version
    );
    for (then, now) in &upgrade.renamed {
        writeln!(text, "# {now} was {then}")?;
    }
    for added in &upgrade.added {
        writeln!(
            text,
            "# {added} is new since version {from}: absent here (never read by name; refused \
             where the plan uses it, unless the plan imputes absent columns)"
        )?;
    }
    text.push('\n');
    text.push_str(&toml::to_string(&upgrade.mapping)?);
    write(out, &text)?;
    println!(
        "{}: version {from} to {} ({} renamed, {} added)",
        out.display(),
        target.version,
        upgrade.renamed.len(),
        upgrade.added.len()
    );
    Ok(())
}

pub(crate) fn read_schema(path: &Path) -> anyhow::Result<TargetSchema> {
    let text = read_bounded(path, 4 << 20)?;
    TargetSchema::parse(&text).with_context(|| path.display().to_string())
}

pub(crate) fn read_bounded(path: &Path, max: u64) -> anyhow::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("{}", path.display()))?;
    if text.len() as u64 > max {
        bail!("{}: larger than {} MiB", path.display(), max >> 20);
    }
    Ok(text)
}

pub(crate) fn secret_key() -> anyhow::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("cannot draw secret randomness: {e}"))?;
    Ok(key)
}

/// A site's file profiled against `schema`.
fn profile_file(
    site: &str,
    schema: &TargetSchema,
    data: &Path,
    settings: ProfileSettings,
) -> anyhow::Result<Profile> {
    let table = tessera_data::read_table(&tessera_data::Filesystem, data, settings.delimiter)?;
    let rows: Vec<Vec<String>> = table.rows.into_iter().map(|(_, r)| r).collect();
    Ok(profile(
        site,
        schema,
        &table.header,
        &rows,
        settings,
        secret_key()?,
    )?)
}

/// Writes `text` to `path` whole (a temporary file renamed over it).
fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())
}

/// Runs `tessera profile`.
pub fn run_profile(args: &ProfileArgs) -> anyhow::Result<()> {
    let plan = Plan::from_file(&args.plan)?;
    let schema = read_schema(&args.schema)?;
    let settings = ProfileSettings {
        epsilon: args.epsilon,
        delta: args.delta.unwrap_or(plan.privacy.delta),
        level_release: match args.levels {
            Levels::None => LevelRelease::None,
            Levels::Hashed => LevelRelease::Hashed,
            Levels::Names => LevelRelease::Names,
        },
        delimiter: args.delimiter,
    };
    let p = profile_file(&args.site, &schema, &args.data, settings)?;
    let ledger = crate::deploy::site_ledger(args.ledger.as_deref(), &args.site);
    // Charged before it is written: a profile on disk is a release.
    let epsilon = tessera_participant::ledger::charge_profile(&ledger, &args.site, &plan, p.event)
        .map_err(|e| anyhow::anyhow!("the profile was not written: {e}"))?;
    write(&args.out, &serde_json::to_string_pretty(&p)?)?;
    println!(
        "{}: {} columns profiled at epsilon {} (delta {}), charged to {}: this site's epsilon \
         under plan '{}' is now {epsilon:.4}",
        args.out.display(),
        p.columns.len(),
        args.epsilon,
        settings.delta,
        ledger.display(),
        plan.name
    );
    if p.level_delta > 0.0 {
        println!(
            "levels released: the profile is (epsilon, delta + {}) DP; the ledger counts the \
             Gaussian part only",
            p.level_delta
        );
    }
    Ok(())
}

/// Runs `tessera harmonize`.
pub fn run_harmonize(args: &HarmonizeArgs) -> anyhow::Result<()> {
    let schema = read_schema(&args.schema)?;
    if !(0.0..=1.0).contains(&args.threshold) {
        bail!("--threshold {} is not in [0, 1]", args.threshold);
    }
    std::fs::create_dir_all(&args.out_dir).with_context(|| args.out_dir.display().to_string())?;
    let mut profiles = Vec::new();
    let mut plan_copy = None;
    if let Some(plan_path) = &args.plan {
        let plan = Plan::from_file(plan_path)?;
        if plan.data.sites.is_empty() {
            bail!(
                "{}: harmonize profiles a plan's [[data.sites]] files, and this plan has none",
                plan_path.display()
            );
        }
        let base = plan_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut ledger = plan.privacy.ledger();
        let settings = ProfileSettings {
            epsilon: args.epsilon,
            delta: plan.privacy.delta,
            delimiter: plan.data.schema.delimiter,
            ..ProfileSettings::default()
        };
        for site in &plan.data.sites {
            let p = profile_file(&site.name, &schema, &base.join(&site.path), settings)?;
            ledger.record_participant(0, "profile", "a column profile", &site.name, p.event)?;
            profiles.push(p);
        }
        files(&profiles)?;
        for p in &profiles {
            write(
                &args.out_dir.join(format!(
                    "{}.profile.json",
                    crate::deploy::safe_name(&p.site)
                )),
                &serde_json::to_string_pretty(p)?,
            )?;
        }
        write(
            &args.out_dir.join("ledger.json"),
            &serde_json::to_string_pretty(ledger.entries())?,
        )?;
        plan_copy = Some((plan, base));
    } else {
        if args.profiles.is_empty() {
            bail!("give --profiles (made at each site by `tessera profile`) or --plan");
        }
        for path in &args.profiles {
            let p = Profile::parse(&read_bounded(path, 64 << 20)?)
                .with_context(|| path.display().to_string())?;
            check_profile(path, &p, &schema)?;
            profiles.push(p);
        }
        files(&profiles)?;
    }
    let mut proposals = Vec::new();
    for p in &profiles {
        let mut proposal = propose(&schema, p, args.threshold);
        // The plan's own missing tokens stay missing too.
        if let (Some((plan, _)), Some(missing)) = (&plan_copy, &mut proposal.mapping.missing) {
            for token in &plan.data.schema.missing {
                if !missing.contains(token) {
                    missing.push(token.clone());
                }
            }
        }
        let file = args
            .out_dir
            .join(format!("{}.toml", crate::deploy::safe_name(&p.site)));
        write(&file, &mapping_text(&schema, &proposal)?)?;
        print_proposal(&proposal, &file);
        proposals.push(proposal);
    }
    write(
        &args.out_dir.join("proposals.json"),
        &serde_json::to_string_pretty(&proposals)?,
    )?;
    if let Some((mut plan, base)) = plan_copy {
        let absolute = |p: &Path| -> anyhow::Result<PathBuf> {
            std::fs::canonicalize(base.join(p)).with_context(|| base.join(p).display().to_string())
        };
        let out_dir = std::fs::canonicalize(&args.out_dir)
            .with_context(|| args.out_dir.display().to_string())?;
        for site in &mut plan.data.sites {
            site.path = absolute(&site.path)?;
            site.mapping =
                Some(out_dir.join(format!("{}.toml", crate::deploy::safe_name(&site.name))));
        }
        if let Some(m) = &mut plan.data.split.membership {
            m.path = absolute(&m.path)?;
        }
        let out = args.out_dir.join("plan.toml");
        write(&out, &toml::to_string(&plan)?)?;
        println!(
            "{}: the plan, each site read through its proposed mapping (tessera simulate --plan {})",
            out.display(),
            out.display()
        );
    }
    Ok(())
}

/// Refuses a profile made against another schema or version, or whose
/// exact values are not ones a profile against this schema counts.
pub(crate) fn check_profile(path: &Path, p: &Profile, schema: &TargetSchema) -> anyhow::Result<()> {
    if p.schema != schema.name || p.schema_version != schema.version {
        bail!(
            "{}: profiled against schema '{}' version {}, not '{}' version {}",
            path.display(),
            p.schema,
            p.schema_version,
            schema.name,
            schema.version
        );
    }
    let codes = tessera_analytics::harmonize::numeric_codes(schema);
    if p.columns
        .iter()
        .flat_map(|c| &c.points)
        .any(|x| !codes.contains(&x.value))
    {
        bail!(
            "{}: it counts exact values the schema's profiles do not (not one of its codes or \
             0 to 9)",
            path.display()
        );
    }
    Ok(())
}

/// Refuses two profiles of one site, or of sites whose file names would
/// be one (`a b` and `a_b`), and the names of the other outputs.
pub(crate) fn files(profiles: &[Profile]) -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for p in profiles {
        let name = crate::deploy::safe_name(&p.site);
        if ["plan", "proposals", "ledger"].contains(&name.as_str()) || !seen.insert(name.clone()) {
            bail!(
                "site '{}': its file name '{name}' is another site's or one of harmonize's own \
                 (plan, proposals, ledger); give each site a name of its own",
                tessera_core::shown(&p.site, 80)
            );
        }
    }
    Ok(())
}

/// The mapping file: the evidence as comments, then the mapping.
fn mapping_text(schema: &TargetSchema, p: &Proposal) -> anyhow::Result<String> {
    let mut text = String::new();
    writeln!(
        text,
        "# Proposed by `tessera harmonize`: site '{}' to schema '{}' version {}.\n# Review \
         each line, then commit it as this site's mapping.\n#",
        p.site, schema.name, schema.version
    )?;
    for m in &p.matches {
        let how = match &m.transform {
            Transform::AsIs => "as is".to_string(),
            Transform::Convert { from } => format!("from {from}"),
            Transform::YearsSince { year } => format!("{year} minus it"),
            Transform::Recode { table } => format!("recoded ({} spellings)", table.len()),
        };
        writeln!(
            text,
            "# {} <- '{}' ({how}): score {:.2}, name {:.2}, {}",
            m.target, m.column, m.score, m.names, m.evidence
        )?;
    }
    for u in &p.unmatched {
        let best: Vec<String> = u
            .candidates
            .iter()
            .map(|(c, s)| format!("'{c}' {s:.2}"))
            .collect();
        writeln!(
            text,
            "# UNMATCHED {}: best candidates {}",
            u.target,
            if best.is_empty() {
                "none".into()
            } else {
                best.join(", ")
            }
        )?;
    }
    if !p.unused.is_empty() {
        writeln!(text, "# not used: {}", p.unused.join(", "))?;
    }
    text.push('\n');
    text.push_str(&toml::to_string(&p.mapping)?);
    Ok(text)
}

fn print_proposal(p: &Proposal, file: &Path) {
    println!("{} ({}):", p.site, file.display());
    for m in &p.matches {
        println!(
            "  {:<12} <- {:<28} {:.2}  {}",
            m.target, m.column, m.score, m.evidence
        );
    }
    for u in &p.unmatched {
        let best: Vec<String> = u
            .candidates
            .iter()
            .map(|(c, s)| format!("{c} {s:.2}"))
            .collect();
        println!("  {:<12} UNMATCHED; best: {}", u.target, best.join(", "));
    }
}
