//! `tessera synth`: FedProx's Synthetic(alpha, beta), or with `--like` a
//! DP synthetic sample of a site's file (`synth_like.rs`).

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use tessera_data::synth::{SynthConfig, write_synthetic};

/// Arguments of `tessera synth`.
#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Number of sites.
    #[arg(long, default_value_t = 47)]
    sites: usize,
    /// Rows per site (2000); with --like, rows written (default: the
    /// site's row count, as released with noise).
    #[arg(long)]
    pub(crate) rows: Option<usize>,
    /// Features per row.
    #[arg(long, default_value_t = 30)]
    features: usize,
    /// Classes (2: binary variant; 10 with 60 features: Li et al. 2020).
    #[arg(long, default_value_t = 2)]
    classes: usize,
    /// Variance of the per-site model mean (how different site models are).
    #[arg(long, default_value_t = 1.0)]
    alpha: f64,
    /// Variance of the per-site input mean (how different site inputs are).
    #[arg(long, default_value_t = 1.0)]
    beta: f64,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Departments within each site (0: none), named in a `department`
    /// column; each shifts its site's model.
    #[arg(long, default_value_t = 0)]
    departments: usize,
    /// Variance of a department's shift of its site's model (1).
    #[arg(long)]
    department_variance: Option<f64>,
    /// Wide data instead: this many coded columns (c0, c1, ...) of
    /// --levels long-tailed levels each, used differently at each site,
    /// beside --features measurements, and a binary label with
    /// --positive-rate positives (--alpha: the sites' base rates differ,
    /// --beta: their inputs).
    #[arg(long, default_value_t = 0)]
    coded: usize,
    /// With --coded: levels of each coded column (800).
    #[arg(long)]
    levels: Option<usize>,
    /// With --coded: the share of positive rows, 0.001 to 0.999 (0.11).
    #[arg(long)]
    positive_rate: Option<f64>,
    /// Output CSV file, replaced if it exists.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// A site's file to imitate: write a DP synthetic sample with its
    /// columns, marginals and (where the budget allows) its numeric
    /// columns' pairwise correlations, charged to the site's ledger; needs
    /// --plan, --site and --epsilon.
    #[arg(long)]
    pub(crate) like: Option<PathBuf>,
    /// With --like: the plan the file is read by (its schema) and charged
    /// under.
    #[arg(long)]
    pub(crate) plan: Option<PathBuf>,
    /// With --like: this site's name.
    #[arg(long)]
    pub(crate) site: Option<String>,
    /// With --like: the release's epsilon (half for the marginals, half for
    /// the correlations where they are released).
    #[arg(long)]
    pub(crate) epsilon: Option<f64>,
    /// With --like: the release's delta (default: the plan's).
    #[arg(long)]
    pub(crate) delta: Option<f64>,
    /// With --like: this site's privacy ledger (default: the participant's,
    /// tessera-ledger-SITE.json here).
    #[arg(long)]
    pub(crate) ledger: Option<PathBuf>,
    /// With --like: marginals only, the whole epsilon on them.
    #[arg(long)]
    pub(crate) no_correlations: bool,
}

pub fn run(args: &SynthArgs) -> anyhow::Result<()> {
    if args.like.is_some() {
        return crate::synth_like::run(args);
    }
    if let Some(flag) = [
        ("--plan", args.plan.is_some()),
        ("--site", args.site.is_some()),
        ("--epsilon", args.epsilon.is_some()),
        ("--delta", args.delta.is_some()),
        ("--ledger", args.ledger.is_some()),
        ("--no-correlations", args.no_correlations),
    ]
    .iter()
    .find_map(|(flag, given)| given.then_some(flag))
    {
        bail!("{flag} is for --like (a synthetic sample of a site's file)");
    }
    let rows = args.rows.unwrap_or(2000);
    if args.coded > 0 {
        return wide(args, rows);
    }
    if let Some(flag) = [
        ("--levels", args.levels.is_some()),
        ("--positive-rate", args.positive_rate.is_some()),
    ]
    .iter()
    .find_map(|(flag, given)| given.then_some(flag))
    {
        bail!("{flag} is for --coded (wide coded data)");
    }
    let department_variance = args.department_variance.unwrap_or(1.0);
    if args.sites == 0 || rows == 0 || args.features == 0 {
        bail!("--sites, --rows and --features must be at least 1");
    }
    if args.classes < 2 {
        bail!("--classes must be at least 2");
    }
    if args.classes > 1000 || args.features > 100_000 {
        bail!("--classes must be at most 1000 and --features at most 100000");
    }
    let shifts = args
        .departments
        .saturating_mul(args.classes.saturating_mul(args.features) + args.classes);
    if shifts as u64 > tessera_data::config::MAX_SYNTHETIC_VALUES {
        bail!(
            "--departments x --classes x (--features + 1) must be at most {}",
            tessera_data::config::MAX_SYNTHETIC_VALUES
        );
    }
    if args.departments > tessera_data::config::MAX_SYNTHETIC_DEPARTMENTS {
        bail!(
            "--departments must be at most {}",
            tessera_data::config::MAX_SYNTHETIC_DEPARTMENTS
        );
    }
    for (name, v) in [
        ("--alpha", args.alpha),
        ("--beta", args.beta),
        ("--department-variance", department_variance),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            bail!("{name} must be a variance >= 0, got {v}");
        }
    }
    let config = SynthConfig {
        sites: args.sites,
        rows_per_site: rows,
        features: args.features,
        classes: args.classes,
        alpha: args.alpha,
        beta: args.beta,
        seed: args.seed,
        departments: args.departments,
        department_variance,
    };
    write_out(&args.out, |out| write_synthetic(&config, out))?;
    eprintln!(
        "wrote {} rows ({} sites x {}), {} features, {} classes to {}",
        args.sites * rows,
        args.sites,
        rows,
        args.features,
        args.classes,
        args.out.display()
    );
    Ok(())
}

/// Writes `path` (replacing it) with `write`, buffered.
fn write_out(
    path: &std::path::Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    let mut out = BufWriter::new(file);
    write(&mut out)
        .and_then(|()| out.flush())
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// `--coded`: wide data with a rare positive class.
fn wide(args: &SynthArgs, rows: usize) -> anyhow::Result<()> {
    use tessera_data::synth::{MAX_WIDE_ROWS, WideConfig, write_wide};
    if args.classes != 2 || args.departments > 0 || args.department_variance.is_some() {
        bail!(
            "--coded writes a binary label without departments: leave --classes, --departments \
             and --department-variance out"
        );
    }
    let (levels, positive_rate) = (
        args.levels.unwrap_or(800),
        args.positive_rate.unwrap_or(0.11),
    );
    if args.sites == 0 || rows == 0 || levels == 0 {
        bail!("--sites, --rows and --levels must be at least 1");
    }
    if args.coded > 100 || levels > 100_000 || args.features > 1000 {
        bail!(
            "--coded must be at most 100, --levels at most 100000 and --features at most 1000 \
             with --coded"
        );
    }
    let total = args.sites.saturating_mul(rows);
    let held = tessera_data::synth::wide_bytes(total, args.features, args.coded);
    if total > MAX_WIDE_ROWS || held > tessera_data::synth::MAX_WIDE_BYTES {
        bail!(
            "--sites x --rows must be at most {MAX_WIDE_ROWS} with --coded, and the rows held to \
             set the rate at most {} MB (these would take {} MB)",
            tessera_data::synth::MAX_WIDE_BYTES >> 20,
            held >> 20
        );
    }
    if !(0.001..=0.999).contains(&positive_rate) {
        bail!("--positive-rate must be from 0.001 to 0.999, got {positive_rate}");
    }
    for (name, v) in [("--alpha", args.alpha), ("--beta", args.beta)] {
        if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
            bail!("{name} must be a variance from 0 to 100, got {v}");
        }
    }
    let config = WideConfig {
        sites: args.sites,
        rows_per_site: rows,
        numeric: args.features,
        coded: args.coded,
        levels,
        positive_rate,
        alpha: args.alpha,
        beta: args.beta,
        seed: args.seed,
    };
    write_out(&args.out, |out| write_wide(&config, out))?;
    eprintln!(
        "wrote {} rows ({} sites x {rows}), {} measurements and {} coded columns of {} levels, \
         {:.0}% positives expected, to {}",
        args.sites * rows,
        args.sites,
        args.features,
        args.coded,
        levels,
        100.0 * positive_rate,
        args.out.display()
    );
    Ok(())
}
