//! The `metastore` binary: parse flags, set up logs and metrics, run until a signal.

use anyhow::Result;
use clap::{CommandFactory, Parser};
use server::{etcd_flags, Config, Flags};
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
    // The variables clap reads; any other ETCD_* one is warned about, as etcd does.
    let known: Vec<String> = Flags::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let screened = match etcd_flags::screen(std::env::args_os().collect(), env, &known) {
        Ok(s) => s,
        Err(why) => {
            eprintln!("metastore: {why}");
            std::process::exit(2);
        }
    };
    let flags = Flags::parse_from(screened.args);
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
    for note in &screened.notes {
        tracing::warn!("{note}");
    }
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let config = Config::try_from(flags)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(server::run(config, Some(metrics), server::signals()))
}
