//! Log lines on stderr, set up once for the commands that log (coordinator,
//! participant, aggregator, peer, simulate): text, coloured only when stderr
//! is a terminal and `NO_COLOR` is unset or empty, or one JSON object a line
//! (`--log-format json`). The filter is `TESSERA_LOG` (default `info`).

use std::io::IsTerminal;
use std::sync::OnceLock;

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

/// Installs the log subscriber (once; later calls change nothing).
pub fn init(format: LogFormat) {
    if FORMAT.set(format).is_err() {
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(colours()).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
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
