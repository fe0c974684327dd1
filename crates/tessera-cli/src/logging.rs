//! Log lines on stderr, set up once for the commands that log (coordinator,
//! participant, aggregator, peer, simulate): text, coloured only when stderr
//! is a terminal and `NO_COLOR` is unset or empty, or one JSON object a line
//! (`--log-format json`). The filter is `TESSERA_LOG` (default `info`).
//! With `--otlp URL`, Tessera's spans (and the log lines within them, as
//! span events) are also exported over OTLP, whatever `TESSERA_LOG` says.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line: timestamp, level, fields (with message).
    Json,
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Installs the log subscriber (once; later calls change nothing) and,
/// with `otlp`, the export of this process's spans as `service`.
pub fn init(format: LogFormat, otlp: Option<crate::otlp::Export<'_>>) -> anyhow::Result<()> {
    if FORMAT.set(format).is_err() {
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let lines = match format {
        LogFormat::Text => lines.with_ansi(colours()).boxed(),
        LogFormat::Json => lines.json().with_ansi(false).boxed(),
    };
    let registry = tracing_subscriber::registry().with(lines.with_filter(filter));
    let _ = match otlp {
        None => registry.try_init(),
        Some(export) => {
            // Tessera's own spans only: not those of the libraries under it.
            let ours = tracing_subscriber::filter::Targets::new()
                .with_target("tessera", tracing::Level::INFO);
            let traces = tracing_opentelemetry::layer()
                .with_tracer(crate::otlp::start(export)?)
                .with_filter(ours);
            registry.with(traces).try_init()
        }
    };
    Ok(())
}

/// Whether text lines are coloured: stderr is a terminal and `NO_COLOR`
/// (<https://no-color.org>) is unset or empty.
fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether log lines are JSON.
pub fn is_json() -> bool {
    FORMAT.get() == Some(&LogFormat::Json)
}

/// A line for the operator on stderr: as it is, or under `--log-format
/// json` a log record of `level` (so that every line of stderr is JSON).
pub fn say(level: tracing::Level, line: &str) {
    if !is_json() {
        eprintln!("{line}");
    } else if level == tracing::Level::ERROR {
        tracing::error!("{line}");
    } else if level == tracing::Level::WARN {
        tracing::warn!("{line}");
    } else {
        tracing::info!("{line}");
    }
}
