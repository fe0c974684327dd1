//! `tessera shard`: a simulator shard, an aggregator of the plan's tree
//! whose member sites are simulated in this process
//! (`tessera_aggregator::shard`), so that one simulation spans several
//! machines under a deployed coordinator.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use tracing::Level;

use crate::deploy::{insecure_warning, seconds};
use crate::logging::say;

/// `tessera shard`.
#[derive(clap::Args, Debug)]
pub struct ShardArgs {
    /// The parent's URL (the coordinator, or an aggregator above), e.g. http://127.0.0.1:7000.
    #[arg(long)]
    upstream: String,
    /// This shard's name: an aggregator of the plan's `[[topology.groups]]`
    /// whose members are sites.
    #[arg(long)]
    name: String,
    /// A copy of the plan's one file of every site's rows (CSV or a rows
    /// file), holding at least this shard's sites' rows; default: the plan's
    /// own data (its file, from --plan-dir, or its `[data.synthetic]` rows).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where the plan's relative paths start.
    #[arg(long, default_value = ".")]
    plan_dir: PathBuf,
    /// Mutual TLS toward the parent: a site's files naming this shard
    /// (`tessera ca issue --site NAME`).
    #[arg(long, conflicts_with = "insecure")]
    upstream_tls: Option<PathBuf>,
    /// The parent's name in its certificate (default: the URL's host).
    #[arg(long, requires = "upstream_tls")]
    upstream_domain: Option<String>,
    /// Plain-text connection without authentication: for local experiments only.
    #[arg(long)]
    insecure: bool,
    /// Seconds to keep trying to reach the parent before giving up.
    #[arg(long, default_value_t = 300.0)]
    give_up_after: f64,
}

pub fn run(args: &ShardArgs) -> anyhow::Result<()> {
    if !args.insecure && args.upstream_tls.is_none() {
        bail!(
            "give --upstream-tls DIR (mutual TLS, see `tessera ca`) or --insecure (local experiments only)"
        );
    }
    if let Some(data) = &args.data
        && !data.is_file()
    {
        bail!("--data {}: no such file", data.display());
    }
    if args.insecure {
        insecure_warning("the shard");
    }
    let config = tessera_aggregator::shard::ShardConfig {
        upstream: args.upstream.clone(),
        name: args.name.clone(),
        data: args.data.clone(),
        plan_dir: args.plan_dir.clone(),
        upstream_tls: args
            .upstream_tls
            .as_deref()
            .map(tessera_tls::TlsFiles::in_dir),
        upstream_domain: args.upstream_domain.clone(),
        max_backoff: Duration::from_secs(2),
        give_up_after: seconds("--give-up-after", args.give_up_after)?,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let summary = runtime.block_on(tessera_aggregator::shard::run_shard(config))?;
    say(
        Level::INFO,
        &format!(
            "shard '{}' finished: {} sites simulated, {} rounds and {} evaluations sent up",
            args.name, summary.sites, summary.rounds, summary.evaluations
        ),
    );
    println!(
        "finished as shard '{}': {} sites, {} rounds, {} evaluations",
        args.name, summary.sites, summary.rounds, summary.evaluations
    );
    Ok(())
}
