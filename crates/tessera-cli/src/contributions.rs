//! `tessera contributions`: each site's contribution, reputation and
//! credits from a run's report.

use std::path::PathBuf;

use anyhow::{Context, bail};
use tessera_engine::report::RunReport;

/// Arguments of `tessera contributions`.
#[derive(Debug, clap::Args)]
pub struct ContributionsArgs {
    /// A run's report (`tessera simulate --report`), of a plan with
    /// `[contribution]`.
    #[arg(long)]
    report: PathBuf,
    /// Print the report's `contributions` section as JSON instead.
    #[arg(long)]
    json: bool,
}

/// Prints the table (or JSON).
pub fn run(args: &ContributionsArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.report)
        .with_context(|| format!("reading {}", args.report.display()))?;
    let report: RunReport = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a Tessera run report", args.report.display()))?;
    let Some(c) = &report.contributions else {
        bail!(
            "{} has no contributions: run the plan with [contribution] method = \"gtg\" \
             (or --set contribution.method=gtg)",
            args.report.display()
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
            "{:>4}  {:<24} {:>10.4} {:>6} {:>11.3} {:>8.3} {:>10.3}{}",
            s.rank,
            s.name,
            s.total,
            s.rounds,
            s.reliability,
            s.quality,
            s.reputation,
            s.credits.map_or(String::new(), |v| format!(" {v:>10.2}"))
        );
    }
    println!(
        "reputation = 0.6 x rank score + 0.25 x reliability + 0.15 x quality (quality released at \
         epsilon {})",
        c.quality_epsilon
    );
    Ok(())
}
