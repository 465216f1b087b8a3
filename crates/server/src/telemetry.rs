//! Logging and metrics setup.

use ganglion_core::config::{LogFormat, LoggingConfig};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global tracing subscriber. `RUST_LOG`, when set, overrides the config.
pub fn init_logging(cfg: &LoggingConfig) {
    let filter = EnvFilter::try_from_default_env()
        // ruma-state-res logs every auth decision at info; that is debug detail for us.
        .or_else(|_| EnvFilter::try_new(format!("{},ruma_state_res=warn", cfg.level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match cfg.format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_current_span(false))
            .try_init(),
        // Colours only on a terminal: a log file or a collector gets plain text.
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())))
            .try_init(),
    };
    // A second init (tests, embedded use) keeps the first subscriber.
    let _ = result;
}

/// Installs the Prometheus recorder and returns the handle that renders it.
pub fn init_metrics() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ])
        .ok()?;
    builder.install_recorder().ok()
}
