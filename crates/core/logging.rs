//! Logging: `tracing` to stderr, as text or JSON lines, filtered by `RUST_LOG`
//! (default `info`). Secrets never reach a log line: they are wrapped in
//! `dbproxy_credentials::Secret`, whose `Debug` and `Display` are redacted.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Output format of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Installs the global subscriber.
pub fn init(format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    // Client-controlled values are escaped for text lines; JSON encodes them itself.
    dbproxy_runtime::escape::set_json(format == LogFormat::Json);
    let result = match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(
                        std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
                    )
                    .with_target(false),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot initialise logging: {e}"))
}
