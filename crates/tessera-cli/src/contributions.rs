//! `tessera contributions`: each site's contribution, reputation and
//! credits from a run's report, or (`--db`) each site's participation from
//! a coordinator's run store (`participation.rs`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use tessera_engine::report::RunReport;

/// Arguments of `tessera contributions`.
#[derive(Debug, clap::Args)]
pub struct ContributionsArgs {
    /// A run's report (`tessera simulate --report`), of a plan with
    /// `[contribution]`.
    #[arg(long, conflicts_with = "db", required_unless_present = "db")]
    report: Option<PathBuf>,
    /// A coordinator's run store: each site's participation (rounds asked
    /// and counted, refusals, withdrawals, examples, streak) across its runs.
    #[arg(long)]
    db: Option<PathBuf>,
    /// With --db: one run only.
    #[arg(long, requires = "db")]
    run: Option<String>,
    /// Print the report's `contributions` section as JSON instead.
    #[arg(long)]
    json: bool,
}

/// Prints the table (or JSON).
pub fn run(args: &ContributionsArgs) -> anyhow::Result<()> {
    let path = match (&args.report, &args.db) {
        (_, Some(db)) => return crate::participation::print(db, args.run.as_deref(), args.json),
        (Some(path), None) => path,
        (None, None) => bail!("give --report FILE or --db FILE"),
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let report: RunReport = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a Tessera run report", path.display()))?;
    let Some(c) = &report.contributions else {
        bail!(
            "{} has no contributions: run the plan with [contribution] method = \"gtg\" \
             (or --set contribution.method=gtg)",
            path.display()
        );
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(c)?);
        return Ok(());
    }
    println!(
        "{}: {} rounds attributed by {} ({} utility), {:.1}% of the rounds' time",
        report.plan,
        c.rounds.len(),
        c.method,
        c.utility,
        100.0 * c.cost
    );
    print_table(c);
    Ok(())
}

/// Each site's rank, total, rounds, reliability, quality, reputation and
/// credits, and how reputation weighs them.
pub fn print_table(c: &tessera_engine::report::ContributionsReport) {
    let credits = c.sites.iter().any(|s| s.credits.is_some());
    println!(
        "{:>4}  {:<24} {:>10} {:>6} {:>11} {:>8} {:>10}{}",
        "rank",
        "site",
        "total",
        "rounds",
        "reliability",
        "quality",
        "reputation",
        if credits { "    credits" } else { "" }
    );
    for s in &c.sites {
        println!(
            "{:>4}  {:<24} {:>10.4} {:>6} {:>11.3} {:>8} {:>10.3}{}",
            s.rank,
            s.name,
            s.total,
            s.rounds,
            s.reliability,
            s.quality.map_or("-".to_string(), |q| format!("{q:.3}")),
            s.reputation,
            s.credits.map_or(String::new(), |v| format!(" {v:>10.2}"))
        );
    }
    if c.sites.iter().any(|s| s.quality.is_some()) {
        println!(
            "reputation = 0.6 x attribution score + 0.25 x reliability + 0.15 x quality (quality \
             released at epsilon {})",
            c.quality_epsilon
        );
    }
    if c.sites.iter().any(|s| s.quality.is_none()) {
        println!(
            "reputation = (0.6 x attribution score + 0.25 x reliability) / 0.85 where no \
             quality was released (-)"
        );
    }
    println!(
        "attribution score = 1 / (1 + exp(-z)), z = (total - median) / (1.4826 x median \
         absolute deviation; 1.2533 x the mean absolute deviation where that is 0)"
    );
}
