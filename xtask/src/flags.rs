//! Flags more than one task takes, flattened into each (`#[command(flatten)]`), and the value
//! parsers the tasks share.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Result;

/// `--no-build` and `--metastore`: which MetaStore binary a benchmark runs.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Build {
    /// Use target/release/metastore as it is.
    #[arg(long = "no-build", action = clap::ArgAction::SetFalse)]
    pub build: bool,
    /// Use this metastore binary and build nothing.
    #[arg(long, value_name = "PATH")]
    pub metastore: Option<PathBuf>,
}

/// `--no-docs`: print the figures but leave docs/benchmarks.md alone.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Docs {
    /// Print the figures but leave docs/benchmarks.md alone.
    #[arg(long = "no-docs", action = clap::ArgAction::SetFalse)]
    pub docs: bool,
}

/// `--binary` and `--engine`: the MetaStore a cluster of members runs.
#[derive(clap::Args, Clone, Debug)]
pub struct Member {
    /// The metastore binary (default: build target/release/metastore).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// MetaStore's engine: redb or mem.
    #[arg(long, value_name = "E", default_value = "redb", value_parser = ["redb", "mem"])]
    pub engine: String,
}

/// A number of `T` in `lo..=hi`, said as `what` when it is not.
pub fn number_in<T: FromStr + PartialOrd>(s: &str, lo: T, hi: T, what: &str) -> Result<T, String> {
    match s.trim().parse::<T>() {
        Ok(n) if n >= lo && n <= hi => Ok(n),
        _ => Err(format!("must be {what}")),
    }
}

/// Seconds in (0, 600].
pub fn secs_upto_600(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(n) if n > 0.0 && n <= 600.0 => Ok(n),
        _ => Err("must be in (0, 600]".into()),
    }
}

/// A comma-separated list of numbers, each as [`number_in`] takes it.
pub fn list_in<T: FromStr + PartialOrd + Copy>(
    s: &str,
    lo: T,
    hi: T,
    what: &str,
) -> Result<Vec<T>, String> {
    s.split(',').map(|n| number_in(n, lo, hi, what)).collect()
}

/// Flags parsed by clap, and what clap cannot say: the checks between flags, and values
/// worked out from several of them.
pub trait Checked: Sized {
    /// The flags, checked.
    ///
    /// # Errors
    /// Flags that contradict each other.
    fn checked(self) -> Result<Self> {
        Ok(self)
    }
}

/// Parses `raw` as a task's flags alone, as the tests do; `None` when help was asked for.
#[cfg(test)]
pub fn parse<A>(raw: &[String]) -> Result<Option<A>>
where
    A: clap::Args + clap::FromArgMatches + Checked,
{
    let command = A::augment_args(clap::Command::new("task"));
    let words = std::iter::once("task").chain(raw.iter().map(String::as_str));
    match command.try_get_matches_from(words) {
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => Ok(None),
        Err(e) => Err(e.into()),
        Ok(matches) => Ok(Some(A::from_arg_matches(&matches)?.checked()?)),
    }
}
