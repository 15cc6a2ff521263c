//! `cargo xtask`: the project's automation, one binary with subcommands.
//!
//! It owns benchmarks, tidy checks and crash drivers; nothing in the workspace depends on it.
//!
//! # Layout
//! - `tidy`: checks every crate's `lib.rs` header and the layer rule between crates.
//! - `bench`: `cargo xtask bench engine|kv|watch|lease|failover`: the engines alone, and
//!   MetaStore against etcd 3.4 on the same machine (all but `failover` write to
//!   `docs/benchmarks.md`; `failover` prints its table for `docs/reliability.md`).
//! - `chaos`: `cargo xtask chaos`, a cluster under faults with a linearizability checker:
//!   processes behind fault-injecting peer proxies, or (`--docker`) containers whose faults
//!   the Docker engine makes.

// A command-line tool: printing to stdout is its interface.
#![allow(clippy::print_stdout)]

mod bench;
mod chaos;
mod tidy;

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("tidy") => tidy::check(&tidy::project_root()),
        Some("bench") => bench::run(&args[1..]),
        Some("chaos") => chaos::run(&args[1..]),
        Some(other) => bail!("unknown task `{other}`; try: tidy, bench, chaos"),
        None => bail!("usage: cargo xtask <tidy|bench|chaos>"),
    }
}
