//! The `metastore` binary: parse flags, set up logs and metrics, run until a signal.

// The package is `metastore-server`; the code knows the library by its short name.
extern crate metastore_server as server;

use std::io::IsTerminal;

use anyhow::Result;
use server::{config_file, Config};
use tracing_subscriber::EnvFilter;

fn main() -> Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if server::is_tool(&args) {
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
        return server::run_tool(args);
    }
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    if let Some(why) = config_file::shadowed(&args, &env) {
        // etcd 3.4 stops with this (a fatal log line) and exit status 1.
        eprintln!("metastore: {why}");
        std::process::exit(1);
    }
    let prepared = match config_file::prepare(args, env) {
        Ok(p) => p,
        Err(why) => {
            eprintln!("metastore: {why}");
            std::process::exit(2);
        }
    };
    let flags = config_file::parse(&prepared);
    let logs = match server::logging::LogConfig::from_flags(
        &flags.logger,
        &flags.log_outputs,
        &flags.log_level,
        flags.debug,
    ) {
        Ok(logs) => logs,
        Err(why) => {
            eprintln!("metastore: error verifying flags, {why}");
            std::process::exit(2);
        }
    };
    // --log-level decides; RUST_LOG only adds single targets (docs/operations.md).
    let rust_log = std::env::var("RUST_LOG").ok();
    let notes = match server::logging::install(&logs, rust_log.as_deref()) {
        Ok(notes) => notes,
        Err(why) => {
            eprintln!("metastore: {why}");
            std::process::exit(2);
        }
    };
    for (level, note) in &notes {
        if *level == tracing::Level::WARN {
            tracing::warn!("{note}");
        } else {
            tracing::info!("{note}");
        }
    }
    for note in &prepared.notes {
        tracing::warn!("{note}");
    }
    match consensus::ablation::configured() {
        Ok(cuts) if cuts.is_empty() => {}
        Ok(cuts) => tracing::warn!(
            ?cuts,
            "a measurement build with stages of the write path cut: writes may be lost and \
             answers made up (docs/benchmarks.md)"
        ),
        Err(why) => {
            eprintln!("metastore: {why}");
            std::process::exit(2);
        }
    }
    let metrics = server::telemetry::prometheus()?.install_recorder()?;
    server::telemetry::describe();
    let config = Config::try_from(flags)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(server::run(config, Some(metrics), server::signals()))
}
