//! The `metastore` binary: parse flags, set up logs and metrics, run until a signal.

use anyhow::Result;
use clap::Parser;
use server::{Config, Flags};
use tracing_subscriber::EnvFilter;

fn main() -> Result<()> {
    let flags = Flags::parse();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{},openraft=warn", flags.log_level)))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let config = Config::try_from(flags)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(server::run(config, Some(metrics), server::signals()))
}
