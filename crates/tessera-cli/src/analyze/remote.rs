//! `tessera analyze --coordinator URL`: a query to a deployed federation.
//! The coordinator checks it (the analyst, the query, the run's budgets)
//! before any site sees it, the sites answer it with their own noise
//! through secure aggregation, and the coordinator records the answer and
//! its ledger rows in its store before it replies; here the answer is
//! printed as the simulated one is, and written as JSON and drawn as asked.

use anyhow::{Context, bail};
use tessera_analytics::Report;
use tessera_proto::pb;
use tessera_proto::pb::analytics_client::AnalyticsClient;

use super::{AnalyzeArgs, check_outputs, plot_histograms, print_answer};

/// Runs the query of `args` against the coordinator at `url`.
pub(super) fn run(args: &AnalyzeArgs, url: &str) -> anyhow::Result<()> {
    if !args.insecure && args.tls.is_none() {
        bail!(
            "give --tls DIR (the analyst's certificate, `tessera ca issue --site NAME`) or \
             --insecure (local experiments only)"
        );
    }
    let Some(analyst) = &args.analyst else {
        bail!(
            "give --analyst NAME: the name of the analyst's certificate, as the plan's [analytics] analysts lists it"
        );
    };
    check_outputs(args)?;
    let files = args.tls.as_deref().map(tessera_tls::TlsFiles::in_dir);
    let remote =
        tessera_participant::client::endpoint(url, files.as_ref(), args.tls_domain.as_deref())?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let reply = runtime.block_on(async {
        let channel = remote.connect().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to {url}: {}",
                tessera_participant::client::chain(&e)
            )
        })?;
        let mut client = AnalyticsClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(1 << 20);
        client
            .query(pb::AnalyticsRequest {
                analyst: analyst.clone(),
                query: args.query.clone().unwrap_or_default(),
                close: args.close,
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| {
                anyhow::anyhow!(
                    "the coordinator refused the query ({:?}): {}",
                    status.code(),
                    status.message()
                )
            })
    })?;
    if reply.release == 0 {
        println!("{}", reply.note);
        return Ok(());
    }
    let report = Report::from_json(&reply.report_json)?;
    println!("query: {}", report.query);
    println!(
        "the sites' noised contributions were summed through secure aggregation (SecAgg+, \
         deployed): {}",
        reply.note
    );
    for answer in &report.answers {
        print_answer(answer, None);
    }
    println!(
        "recorded by the coordinator as analytics release {} of run {}: run epsilon now {:.4}{}",
        reply.release,
        reply.run_id,
        reply.run_epsilon,
        match report.answers.first() {
            Some(a) if !a.release.protected =>
                " (this answer is an UNPROTECTED release, recorded as such)",
            _ => "",
        }
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("answer written to {}", path.display());
    }
    if let Some(path) = &args.plot
        && let Some(answer) = report.answers.first()
    {
        plot_histograms(answer, path)?;
        println!("histograms drawn in {}", path.display());
    }
    Ok(())
}
