//! `cargo xtask bench …`: benchmarks whose figures go to `docs/benchmarks.md`.
//!
//! Each benchmark owns one `## …` section of that file and regenerates only it, so later
//! benchmarks (KV, watch) add their own sections beside it.

mod compare;
mod doc;
mod engine;
mod failover;
mod footprint;
mod kv;
mod lease;
mod servers;
mod snapshot;
mod stages;
mod watch;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// `cargo xtask bench …`: which benchmark, with its flags.
#[derive(clap::Subcommand, Debug)]
pub enum Bench {
    /// Measures each engine under mvcc::Store on one thread and writes the `## Engines`
    /// section of docs/benchmarks.md.
    Engine(engine::Args),
    /// Starts MetaStore (target/release/metastore, built first) and etcd 3.4 (`etcd` on PATH)
    /// side by side, drives both with the same client and workloads, alternating, and writes
    /// the `## KV` section of docs/benchmarks.md.
    Kv(kv::Args),
    /// Runs the fan-out and idle-watcher workloads against MetaStore (target/release/metastore,
    /// built first) and etcd 3.4 (`etcd` on PATH), one server at a time, and writes the
    /// `## Watch` section of docs/benchmarks.md.
    Watch(watch::Args),
    /// Runs the grant, keep-alive and expiry workloads against MetaStore
    /// (target/release/metastore, built first) and etcd 3.4 (`etcd` on PATH), and writes the
    /// `## Lease` section of docs/benchmarks.md.
    Lease(lease::Args),
    /// Kills the leader of a 3-member cluster in a loop under load, MetaStore and etcd 3.4
    /// under the same schedule.
    Failover(failover::Args),
    /// Loads N unique keys into MetaStore (target/release/metastore, built first) and etcd 3.4
    /// (`etcd` on PATH), one single-member server at a time, and measures the data dir by
    /// file, RSS, the quota's size, restart time, and the engine file after a churn (every key
    /// overwritten R times, compact, defragment). Writes the `## Footprint` section of
    /// docs/benchmarks.md.
    Footprint(footprint::Args),
    /// Loads the same keys into MetaStore (--engine redb) and into etcd 3.4, one server at a
    /// time, and times `etcdctl snapshot save` against each (--runs times, the median
    /// reported).
    Snapshot(snapshot::Args),
    /// Hidden: the memory benchmark re-executes this binary so each engine is measured in a
    /// process of its own, with nothing else on the heap.
    #[command(name = engine::CHILD, hide = true)]
    EngineChild(engine::ChildArgs),
}

/// Runs `bench`; `raw` are its flags as typed, which its section reports.
pub fn run(bench: Bench, raw: &[String]) -> Result<()> {
    match bench {
        Bench::Engine(args) => engine::run(args, raw),
        Bench::Kv(args) => kv::run(args, raw),
        Bench::Watch(args) => watch::run(args, raw),
        Bench::Lease(args) => lease::run(args, raw),
        Bench::Failover(args) => failover::run(args),
        Bench::Footprint(args) => footprint::run(args, raw),
        Bench::Snapshot(args) => snapshot::run(args, raw),
        Bench::EngineChild(args) => engine::child(&args),
    }
}

/// The file every benchmark writes its section of.
/// Builds the server in release mode and returns its binary (for `chaos` too).
pub fn build_release_server(root: &std::path::Path) -> Result<PathBuf> {
    servers::build_server(root)
}

fn benchmarks_md() -> PathBuf {
    crate::tidy::project_root().join("docs/benchmarks.md")
}

/// A seeded xorshift64 generator: reproducible workloads without a `rand` dependency.
pub struct XorShift(u64);

impl XorShift {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        // Zero is xorshift's one fixed point; any other state cycles through all 2^64 - 1.
        Self(seed.max(1))
    }

    /// The next pseudo-random 64-bit number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (`n > 0`); the modulo bias is negligible for `n` far below 2^64.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// The command line a section reports: `cargo xtask bench <name>` and its flags.
pub fn command_line(name: &str, raw: &[String]) -> String {
    std::iter::once(format!("cargo xtask bench {name}"))
        .chain(raw.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The 1-minute load average before a run (`before`) and now, as a section reports it.
pub fn load_span(before: Option<&str>) -> String {
    format!(
        "load average (1 min) {} before the run, {} after",
        before.unwrap_or("?"),
        load_average().as_deref().unwrap_or("?")
    )
}

/// The process's resident set size in bytes.
///
/// Read from `VmRSS` in `/proc/self/status`, which is in kB, rather than from `statm`, which
/// counts pages of a size only `sysconf` (unsafe FFI, forbidden here) would tell.
pub fn resident_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self")?;
    parse_vm_rss(&status).context("no VmRSS line in /proc/self/status")
}

/// Nanoseconds the calling thread has spent on a CPU, or `None` without scheduler statistics.
///
/// Set against wall time it shows whether a figure had its core to itself: on a shared
/// machine another process's build can halve a rate without anything else revealing it.
pub fn on_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// The 1-minute load average, as `/proc/loadavg` gives it.
pub fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next().map(str::to_string)
}

/// Bytes from the `VmRSS` line of a `/proc/PID/status` text.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What the figures were measured on, for the reader who compares them with their own.
pub struct Machine {
    /// Logical cores available to the process.
    pub cores: usize,
    /// CPU model name from `/proc/cpuinfo`.
    pub cpu: String,
    /// Total memory from `/proc/meminfo`.
    pub memory: String,
    /// Today's date (UTC), `YYYY-MM-DD`.
    pub date: String,
    /// `rustc --version`.
    pub rustc: String,
    /// `git describe` of the workspace, so figures can be tied to the code that made them.
    pub commit: String,
    /// Filesystem and device holding `target/`, where the redb files go: fsync cost is its.
    pub target_fs: String,
}

impl Machine {
    /// Probes the current machine; an unknown field reads "unknown" rather than failing.
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = field(&meminfo, "MemTotal")
            .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or_else(
                || "unknown".into(),
                |kb| format!("{:.1} GiB", kb as f64 / (1 << 20) as f64),
            );
        let days = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 86_400);
        let (y, m, d) = civil_from_days(days as i64);
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            memory,
            date: format!("{y:04}-{m:02}-{d:02}"),
            rustc: output_of("rustc", &["--version"]),
            commit: output_of("git", &["describe", "--always", "--dirty"]),
            target_fs: std::fs::read_to_string("/proc/mounts")
                .ok()
                .and_then(|mounts| {
                    filesystem_of(&mounts, &crate::tidy::project_root().join("target"))
                })
                .unwrap_or_else(|| "unknown".into()),
        }
    }
}

/// "type (device)" of the mount in `/proc/mounts` text that holds `path`: the longest match.
fn filesystem_of(mounts: &str, path: &std::path::Path) -> Option<String> {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?, f.next()?))
        })
        .filter(|(_, point, _)| path.starts_with(point))
        .max_by_key(|(_, point, _)| point.len())
        .map(|(device, _, fs)| format!("{fs} ({device})"))
}

/// The value of the first `name: value` line of a `/proc` file.
fn field(text: &str, name: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().to_string())
}

/// The first line a command prints, or "unknown".
fn output_of(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .current_dir(crate::tidy::project_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01.
///
/// Howard Hinnant's `civil_from_days`; a date library would be the only use of one.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `n` with thousands separators: `1234567` → `1,234,567`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    // Groups of three counted from the right; the first group may be shorter.
    let first = match digits.len() % 3 {
        0 => 3,
        r => r,
    };
    let mut out = digits[..first].to_string();
    for group in digits.as_bytes()[first..].chunks(3) {
        out.push(',');
        out.push_str(&String::from_utf8_lossy(group));
    }
    out
}

/// A byte count in the largest binary unit that keeps it at or above 1.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_reproducible_permutation() {
        let mut a: Vec<u32> = (0..1000).collect();
        let mut b = a.clone();
        XorShift::new(7).shuffle(&mut a);
        XorShift::new(7).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..1000).collect::<Vec<_>>());
        a.sort_unstable();
        assert_eq!(a, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn zero_seed_does_not_stick() {
        let mut r = XorShift::new(0);
        assert_ne!(r.next_u64(), 0);
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn formatting() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3 MiB");
        assert_eq!(bytes(3 << 19), "1.5 MiB");
    }

    #[test]
    fn the_deepest_mount_holds_a_path() {
        let mounts = "/dev/vda / ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n";
        let fs = |p: &str| filesystem_of(mounts, std::path::Path::new(p));
        assert_eq!(fs("/tmp/x/y").as_deref(), Some("tmpfs (tmpfs)"));
        assert_eq!(fs("/tmpfoo").as_deref(), Some("ext4 (/dev/vda)"));
    }

    #[test]
    fn vm_rss_is_parsed() {
        let status = "Name:\txtask\nVmHWM:\t  9000 kB\nVmRSS:\t  1234 kB\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert!(resident_bytes().unwrap() > 0);
    }
}
