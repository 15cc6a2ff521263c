//! `cargo xtask`: the project's automation, one binary with subcommands.
//!
//! It owns benchmarks, tidy checks and crash drivers; nothing in the workspace depends on it.
//!
//! # Layout
//! - `tidy`: checks every crate's `lib.rs` header and the layer rule between crates.

mod tidy;

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("tidy") => tidy::check(&tidy::project_root()),
        Some(other) => bail!("unknown task `{other}`; try: tidy"),
        None => bail!("usage: cargo xtask <tidy>"),
    }
}
