//! `cargo xtask`: the project's automation, one binary with subcommands.
//!
//! It owns benchmarks, tidy checks and crash drivers; nothing in the workspace depends on it.
//!
//! # Layout
//! - `tidy`: checks every crate's `lib.rs` header and the layer rule between crates.
//! - `bench`: `cargo xtask bench engine|kv|watch|lease|failover`: the engines alone, and
//!   MetaStore against etcd 3.4 on the same machine (all but `failover` write to
//!   `docs/benchmarks.md`; `failover` prints its table for `docs/reliability.md`).
//! - `flags`: the flags several tasks share (clap, flattened into each), and shared value
//!   parsers.
//! - `chaos`: `cargo xtask chaos`, a cluster under faults with a linearizability checker:
//!   processes behind fault-injecting peer proxies, or (`--docker`) containers whose faults
//!   the Docker engine makes.

// A command-line tool: printing to stdout is its interface.
#![allow(clippy::print_stdout)]

mod bench;
mod chaos;
mod flags;
mod tidy;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// The project's automation.
#[derive(Parser, Debug)]
#[command(name = "xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Checks every crate's `lib.rs` header, its `# Layout` and the layer rule between crates.
    Tidy,
    /// Benchmarks; each writes its section of docs/benchmarks.md (failover prints its table).
    Bench {
        #[command(subcommand)]
        bench: bench::Bench,
    },
    /// Runs a cluster of real metastore members under faults with concurrent clients, then
    /// checks the history (linearizability, watch guarantees, lost writes, deadlines, leaks).
    ///
    /// Prints a one-line verdict and writes the history and a report to the results folder;
    /// exits non-zero on a FAIL. `cargo xtask chaos --recheck FILE` checks the history.txt of
    /// an earlier run again and prints the verdict on it.
    Chaos(chaos::Args),
}

fn main() -> Result<()> {
    // The flags as typed, which a benchmark's section reports with its figures.
    let raw: Vec<String> = std::env::args().skip(3).collect();
    match Cli::parse().task {
        Task::Tidy => tidy::check(&tidy::project_root()),
        Task::Bench { bench } => bench::run(bench, &raw),
        Task::Chaos(args) => chaos::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every xtask command line of the Makefile and `.ci/run` parses (`cargo xtask …` and
    /// `cargo run -p xtask -- …`; a trailing `\` continues a line).
    #[test]
    fn the_makefile_and_ci_command_lines_parse() {
        let root = tidy::project_root();
        let mut lines = 0;
        for file in ["Makefile", ".ci/run"] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            let joined = text.replace("\\\n", " ");
            for line in joined.lines() {
                let Some((_, rest)) = line
                    .split_once("cargo xtask ")
                    .or_else(|| line.split_once("-p xtask -- "))
                else {
                    continue;
                };
                let words = rest
                    .split_whitespace()
                    .take_while(|w| !w.starts_with(['|', '>', ';', '&']));
                let argv: Vec<&str> = std::iter::once("xtask").chain(words).collect();
                if let Err(e) = Cli::try_parse_from(&argv) {
                    panic!("{file}: {argv:?} does not parse: {e}");
                }
                lines += 1;
            }
        }
        assert!(lines >= 20, "only {lines} command lines found");
    }
}
