//! The `metastore` binary: parse flags, set up logs and metrics, run until a signal.

use anyhow::Result;
use server::{config_file, Config};
use tracing_subscriber::EnvFilter;

fn main() -> Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if server::is_tool(&args) {
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_writer(std::io::stderr)
            .init();
        return server::run_tool(args);
    }
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let prepared = match config_file::prepare(args, env) {
        Ok(p) => p,
        Err(why) => {
            eprintln!("metastore: {why}");
            std::process::exit(2);
        }
    };
    let flags = config_file::parse(&prepared);
    let level = if flags.debug {
        "debug"
    } else {
        flags.log_level.as_str()
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{level},openraft=warn")))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    for note in &prepared.notes {
        tracing::warn!("{note}");
    }
    let metrics = server::telemetry::prometheus()?.install_recorder()?;
    server::telemetry::describe();
    let config = Config::try_from(flags)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(server::run(config, Some(metrics), server::signals()))
}
