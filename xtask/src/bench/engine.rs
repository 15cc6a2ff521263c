//! `cargo xtask bench engine`: puts, point reads, range scans and memory of each engine.
//!
//! Every figure goes through [`mvcc::Store`] over the engine, the path the server runs, on one
//! thread. Throughput rows run in this process; each memory row runs in a child process of its
//! own (this binary, re-executed with the hidden [`CHILD`] subcommand) so that its resident
//! set holds one store and nothing else.

use super::command_line;
use super::load_span;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use engine_mem::MemBackend;
use engine_redb::{Durability, Options, RedbBackend};
use mvcc::{Backend, Command, PutRequest, RangeRequest, Store};

use super::doc;
use super::servers::Scratch;
use super::{bytes, compare, grouped, load_average, on_cpu_ns, resident_bytes, Machine, XorShift};
use crate::flags::{Checked, Docs};

/// The hidden subcommand that loads one engine and reports its resident set.
pub const CHILD: &str = "engine-child";

/// The flags of the hidden [`CHILD`] subcommand.
#[derive(clap::Args, Debug)]
pub struct ChildArgs {
    #[arg(long, value_parser = |s: &str| Engine::parse(s).map(|e| e[0]))]
    engine: Engine,
    #[arg(long, value_parser = count)]
    keys: usize,
    /// `random`, or `key` order.
    #[arg(long)]
    order: String,
    #[arg(long)]
    dir: PathBuf,
}

const HEADING: &str = "## Engines";
const VALUE_LEN: usize = 256;
/// Keys per range scan, as the issue asks.
const SCAN_LEN: usize = 1_000;
/// Commands per apply call in the batched rows: about what Raft hands over under load.
const PUT_BATCH: usize = 64;
/// Commands per apply call while loading for the memory rows.
const LOAD_BATCH: usize = 1_000;
const SEED: u64 = 0x6d65_7461_7374_6f72;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Mem,
    Redb,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Mem => "engine-mem",
            Engine::Redb => "engine-redb",
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Engine::Mem => "mem",
            Engine::Redb => "redb",
        }
    }

    fn parse(s: &str) -> Result<Vec<Self>, String> {
        Ok(match s {
            "mem" => vec![Engine::Mem],
            "redb" => vec![Engine::Redb],
            "all" => vec![Engine::Mem, Engine::Redb],
            other => return Err(format!("unknown engine `{other}`; try: mem, redb, all")),
        })
    }
}

/// The flags of `cargo xtask bench engine`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Keys for the put, read and scan rows.
    #[arg(long, value_name = "N", default_value = "200000", value_parser = keys)]
    keys: usize,
    /// Keys loaded for the memory rows.
    #[arg(long, value_name = "N", default_value = "1000000", value_parser = mem_keys)]
    mem_keys: usize,
    /// Seconds per read or scan row.
    #[arg(long, value_name = "S", default_value = "2", value_parser = positive)]
    secs: f64,
    /// mem, redb or all.
    #[arg(long = "engine", value_name = "E", default_value = "all", value_parser = Engine::parse)]
    engines: Engines,
    #[command(flatten)]
    out: Docs,
}

impl Checked for Args {}

/// Engines, as one value of `--engine` (a `Vec` field would be taken for a repeated flag).
type Engines = Vec<Engine>;

/// `--keys`: a scan needs SCAN_LEN keys after its start.
fn keys(s: &str) -> Result<usize, String> {
    let n = count(s)?;
    if n < 2 * SCAN_LEN {
        return Err(format!("--keys must be at least {}", 2 * SCAN_LEN));
    }
    Ok(n)
}

fn mem_keys(s: &str) -> Result<usize, String> {
    let n = count(s)?;
    if n < LOAD_BATCH {
        return Err(format!("--mem-keys must be at least {LOAD_BATCH}"));
    }
    Ok(n)
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(n) if n > 0.0 => Ok(n),
        _ => Err("--secs must be positive".into()),
    }
}

/// A key count; `_` separators are allowed (`1_000_000`).
fn count(s: &str) -> Result<usize, String> {
    s.replace('_', "")
        .parse()
        .map_err(|_| format!("`{s}` is not a count"))
}

/// Digits after the `k` of every key, so that all keys have one length and sort numerically.
fn key_width(keys: usize) -> usize {
    keys.saturating_sub(1).to_string().len().max(7)
}

fn key(i: usize, width: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + width);
    write_key(&mut out, i, width);
    out
}

/// Writes key `i` into `out`, reusing its buffer: picking a key from a table of 200,000
/// would cost a cache miss or two per read, a sizeable part of what the read rows measure.
fn write_key(out: &mut Vec<u8>, mut i: usize, width: usize) {
    out.clear();
    out.push(b'k');
    out.resize(1 + width, b'0');
    for digit in out[1..].iter_mut().rev() {
        *digit = b'0' + (i % 10) as u8;
        i /= 10;
    }
}

fn put(i: usize, width: usize) -> Command {
    Command::Put(PutRequest {
        key: key(i, width),
        // Varied per key so that no layer could share values between keys.
        value: (0..VALUE_LEN).map(|j| (i + j) as u8).collect(),
        ..PutRequest::default()
    })
}

/// One throughput figure.
struct Row {
    engine: Engine,
    /// Stable name used to find the row when judging the targets.
    id: &'static str,
    workload: String,
    m: Measured,
    unit: &'static str,
    note: String,
}

impl Row {
    fn rate(&self) -> f64 {
        self.m.ops as f64 / self.m.secs
    }
}

/// Operations done in a timed loop, its wall time, and the share of it spent on a CPU.
#[derive(Clone, Copy)]
struct Measured {
    ops: u64,
    secs: f64,
    /// On-CPU time over wall time; well below 1 means waiting (fsync) or sharing the core.
    cpu: Option<f64>,
}

/// Wall and on-CPU time since a start.
struct Clock {
    wall: Instant,
    cpu: Option<u64>,
}

impl Clock {
    fn start() -> Self {
        Self {
            cpu: on_cpu_ns(),
            wall: Instant::now(),
        }
    }

    fn stop(&self, ops: u64) -> Measured {
        let secs = self.wall.elapsed().as_secs_f64();
        let cpu = match (self.cpu, on_cpu_ns()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e9 / secs),
            _ => None,
        };
        Measured { ops, secs, cpu }
    }
}

/// One memory figure, as reported by a child process.
struct Memory {
    engine: Engine,
    order: &'static str,
    keys: usize,
    raw_per_key: usize,
    before: u64,
    after: u64,
    file: Option<u64>,
    secs: f64,
}

impl Memory {
    fn per_key(&self) -> f64 {
        self.after.saturating_sub(self.before) as f64 / self.keys as f64
    }

    fn ratio(&self) -> f64 {
        self.per_key() / self.raw_per_key as f64
    }
}

/// Runs `cargo xtask bench engine`.
pub fn run(args: Args, raw: &[String]) -> Result<()> {
    let load_before = load_average();
    let scratch = Scratch::new("engine")?;
    let mut rows = Vec::new();
    let mut memory = Vec::new();
    let width = key_width(args.keys);
    let mut order: Vec<usize> = (0..args.keys).collect();
    XorShift::new(SEED).shuffle(&mut order);
    // Built once, outside every timed loop: the server decodes commands before applying them.
    let puts: Vec<Command> = order.iter().map(|&i| put(i, width)).collect();
    let budget = Duration::from_secs_f64(args.secs);
    for &engine in &args.engines {
        println!(
            "{}: throughput over {} keys …",
            engine.name(),
            grouped(args.keys as u64)
        );
        match engine {
            Engine::Mem => throughput(engine, &puts, width, budget, &mut rows, |_| {
                Ok(MemBackend::new())
            })?,
            Engine::Redb => {
                let redb = |tag: &str, durability: Durability| -> Result<RedbBackend> {
                    let path = scratch.0.join(format!("{tag}.redb"));
                    let options = Options {
                        durability,
                        ..Options::default()
                    };
                    Ok(RedbBackend::open(path, &options)?)
                };
                throughput(engine, &puts, width, budget, &mut rows, |tag| {
                    redb(tag, Durability::Lazy)
                })?;
                // fsync per apply call: what Lazy saves, and what a store without a Raft log
                // to replay from would pay.
                let store = Store::open(redb("sync", Durability::EveryBatch)?)?;
                let m = apply_all(&store, &puts, PUT_BATCH, Some(budget * 2))?;
                rows.push(Row {
                    engine,
                    id: "put-sync",
                    workload: format!("put, {PUT_BATCH} per apply, EveryBatch (fsync)"),
                    m,
                    unit: "puts",
                    note: format!(
                        "{} fsyncs/s",
                        grouped((m.ops as f64 / PUT_BATCH as f64 / m.secs) as u64)
                    ),
                });
            }
        }
        print_rows(&rows, engine);
        for order in memory_orders(engine) {
            println!(
                "{}: memory after loading {} keys ({order} order), in a child process …",
                engine.name(),
                grouped(args.mem_keys as u64)
            );
            let m = measure_memory(engine, args.mem_keys, order, &scratch.0)?;
            println!(
                "  {:.1} resident bytes per key, {:.2}× raw",
                m.per_key(),
                m.ratio()
            );
            memory.push(m);
        }
    }
    let load = load_span(load_before.as_deref());
    let section = render(&args, raw, &rows, &memory, &Machine::probe(), &load);
    println!("\n{section}");
    if args.out.docs {
        let path = super::benchmarks_md();
        let old = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => doc::PREAMBLE.to_string(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, doc::replace_section(&old, HEADING, &section))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote the `{HEADING}` section of {}", path.display());
    }
    Ok(())
}

/// Load orders measured for memory: engine-mem's B-trees fill differently in key order.
fn memory_orders(engine: Engine) -> &'static [&'static str] {
    match engine {
        Engine::Mem => &["random", "key"],
        Engine::Redb => &["random"],
    }
}

fn print_rows(rows: &[Row], engine: Engine) {
    for r in rows.iter().filter(|r| r.engine == engine) {
        println!(
            "  {:<44} {:>12} {}/s  on-CPU {:>4}  {}",
            r.workload,
            grouped(r.rate() as u64),
            r.unit,
            r.m.cpu
                .map_or_else(|| "?".into(), |c| format!("{:.0}%", c * 100.0)),
            r.note
        );
    }
}

/// The put, read and scan rows of one engine; `fresh(tag)` makes an empty backend.
fn throughput<B: Backend>(
    engine: Engine,
    puts: &[Command],
    width: usize,
    budget: Duration,
    rows: &mut Vec<Row>,
    mut fresh: impl FnMut(&str) -> Result<B>,
) -> Result<()> {
    let keys = puts.len();
    // One put per apply: a lightly loaded server, where Raft hands over entries one by one.
    // Bounded in time because a redb commit per put is slow; the keys done still count.
    let store = Store::open(fresh("put1")?)?;
    let m = apply_all(&store, puts, 1, Some(budget * 5))?;
    rows.push(Row {
        engine,
        id: "put1",
        workload: "put, 1 per apply".into(),
        m,
        unit: "puts",
        note: String::new(),
    });
    drop(store);

    let store = Store::open(fresh("put64")?)?;
    let m = apply_all(&store, puts, PUT_BATCH, None)?;
    rows.push(Row {
        engine,
        id: "put64",
        workload: format!("put, {PUT_BATCH} per apply"),
        m,
        unit: "puts",
        note: format!(
            "{} applies/s",
            grouped((m.ops as f64 / PUT_BATCH as f64 / m.secs) as u64)
        ),
    });

    // The reads run on the store the batched puts filled: every key, one version each.
    let mut rng = XorShift::new(SEED ^ 1);
    let mut buf = Vec::new();
    let m = timed(budget, || {
        write_key(&mut buf, rng.below(keys), width);
        let kv = store.get(&buf)?;
        ensure!(kv.is_some(), "a loaded key is missing");
        black_box(kv);
        Ok(())
    })?;
    rows.push(Row {
        engine,
        id: "get",
        workload: "point read, Store::get".into(),
        m,
        unit: "reads",
        note: "random existing keys".into(),
    });

    let mut req = RangeRequest::default();
    let m = timed(budget, || {
        // Reusing the request's buffer keeps the allocator out of what is measured.
        write_key(&mut req.key, rng.below(keys), width);
        let (resp, _) = store.range(&req)?;
        ensure!(resp.kvs.len() == 1, "a loaded key is missing");
        black_box(resp);
        Ok(())
    })?;
    rows.push(Row {
        engine,
        id: "range1",
        workload: "point read, Store::range (one key)".into(),
        m,
        unit: "reads",
        note: "random existing keys".into(),
    });

    let mut req = RangeRequest {
        limit: SCAN_LEN as i64,
        ..RangeRequest::default()
    };
    let m = timed(budget, || {
        let start = rng.below(keys - SCAN_LEN);
        write_key(&mut req.key, start, width);
        // The range holds exactly SCAN_LEN keys: an open end would make the store count every
        // key after `start` for the response's `count`, as etcd does.
        write_key(&mut req.range_end, start + SCAN_LEN, width);
        let (resp, _) = store.range(&req)?;
        ensure!(
            resp.kvs.len() == SCAN_LEN,
            "scan returned {} keys",
            resp.kvs.len()
        );
        black_box(resp);
        Ok(())
    })?;
    rows.push(Row {
        engine,
        id: "scan",
        workload: format!("range scan, {} consecutive keys", grouped(SCAN_LEN as u64)),
        m,
        unit: "scans",
        note: format!(
            "{} keys/s",
            grouped((m.ops as f64 * SCAN_LEN as f64 / m.secs) as u64)
        ),
    });
    Ok(())
}

/// Applies `puts` `batch` at a time until done or past `budget`; returns (puts applied, secs).
fn apply_all<B: Backend>(
    store: &Store<B>,
    puts: &[Command],
    batch: usize,
    budget: Option<Duration>,
) -> Result<Measured> {
    let clock = Clock::start();
    let mut done = 0;
    for (n, chunk) in puts.chunks(batch).enumerate() {
        // The applied position Raft would record: the index of the last entry in the batch.
        let position = (n as u64).to_be_bytes();
        for outcome in store.apply(chunk, Some(&position))? {
            outcome.result?;
        }
        done += chunk.len();
        if budget.is_some_and(|b| clock.wall.elapsed() >= b) {
            break;
        }
    }
    Ok(clock.stop(done as u64))
}

/// Runs `op` until `budget` has passed; returns (ops done, secs).
fn timed(budget: Duration, mut op: impl FnMut() -> Result<()>) -> Result<Measured> {
    // Checking the clock every op would be a sizeable part of a sub-microsecond read.
    const STRIDE: u64 = 256;
    let clock = Clock::start();
    let mut ops = 0;
    loop {
        for _ in 0..STRIDE {
            op()?;
        }
        ops += STRIDE;
        if clock.wall.elapsed() >= budget {
            return Ok(clock.stop(ops));
        }
    }
}

/// Runs the memory child for `engine` and reads its report.
fn measure_memory(engine: Engine, keys: usize, order: &'static str, dir: &Path) -> Result<Memory> {
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let out = std::process::Command::new(exe)
        .args(["bench", CHILD, "--engine", engine.arg(), "--order", order])
        .args(["--keys", &keys.to_string()])
        .arg("--dir")
        .arg(dir)
        .output()
        .context("running the memory child")?;
    ensure!(
        out.status.success(),
        "memory child for {} failed: {}",
        engine.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = ChildReport::parse(stdout.lines().last().unwrap_or_default())?;
    Ok(Memory {
        engine,
        order,
        keys,
        raw_per_key: key_width(keys) + 1 + VALUE_LEN,
        before: report.before,
        after: report.after,
        file: report.file,
        secs: report.secs,
    })
}

/// What a memory child prints as its last line: `before=… after=… file=… secs=…`.
#[derive(Debug, PartialEq)]
struct ChildReport {
    before: u64,
    after: u64,
    file: Option<u64>,
    secs: f64,
}

impl ChildReport {
    fn line(&self) -> String {
        format!(
            "before={} after={} file={} secs={}",
            self.before,
            self.after,
            self.file.map_or_else(|| "-".into(), |f| f.to_string()),
            self.secs
        )
    }

    fn parse(line: &str) -> Result<Self> {
        let mut report = Self {
            before: 0,
            after: 0,
            file: None,
            secs: 0.0,
        };
        let mut seen = 0;
        for pair in line.split_whitespace() {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("bad child report `{line}`"))?;
            match k {
                "before" => report.before = v.parse()?,
                "after" => report.after = v.parse()?,
                "file" => report.file = (v != "-").then(|| v.parse()).transpose()?,
                "secs" => report.secs = v.parse()?,
                _ => bail!("bad child report `{line}`"),
            }
            seen += 1;
        }
        ensure!(seen == 4, "incomplete child report `{line}`");
        Ok(report)
    }
}

/// The hidden subcommand: loads one engine through `Store` and prints its resident set.
pub fn child(args: &ChildArgs) -> Result<()> {
    let (engine, keys, dir) = (args.engine, args.keys, &args.dir);
    let random = args.order == "random";
    let width = key_width(keys);
    let mut order: Vec<u32> = (0..u32::try_from(keys)?).collect();
    if random {
        XorShift::new(SEED).shuffle(&mut order);
    }
    // Everything the load needs beyond the store is allocated by now, so the difference
    // between the two readings is the store.
    let before = resident_bytes()?;
    let report = match engine {
        Engine::Mem => {
            let store = Store::open(MemBackend::new())?;
            let (after, secs) = load(&store, &order, width)?;
            ChildReport {
                before,
                after,
                file: None,
                secs,
            }
        }
        Engine::Redb => {
            let path = dir.join(format!("memory-{}.redb", std::process::id()));
            let options = Options {
                durability: Durability::Lazy,
                ..Options::default()
            };
            let store = Store::open(RedbBackend::open(&path, &options)?)?;
            let (after, secs) = load(&store, &order, width)?;
            store.backend().flush()?;
            let file = std::fs::metadata(&path)?.len();
            drop(store);
            std::fs::remove_file(&path)?;
            ChildReport {
                before,
                after,
                file: Some(file),
                secs,
            }
        }
    };
    println!("{}", report.line());
    Ok(())
}

/// Loads every key of `order` in apply calls of [`LOAD_BATCH`]; returns (RSS after, secs).
fn load<B: Backend>(store: &Store<B>, order: &[u32], width: usize) -> Result<(u64, f64)> {
    let start = Instant::now();
    for (n, chunk) in order.chunks(LOAD_BATCH).enumerate() {
        // Built per batch and dropped after it, so the commands do not count as the store's.
        let batch: Vec<Command> = chunk.iter().map(|&i| put(i as usize, width)).collect();
        for outcome in store.apply(&batch, Some(&(n as u64).to_be_bytes()))? {
            outcome.result?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((resident_bytes()?, secs))
}

/// The `## Engines` section: command, machine, figures, and the targets judged.
fn render(
    args: &Args,
    raw: &[String],
    rows: &[Row],
    memory: &[Memory],
    m: &Machine,
    load: &str,
) -> String {
    let command = command_line("engine", raw);
    let mut s = compare::preamble(HEADING, &command, m, load);
    let _ = writeln!(
        s,
        "Every figure goes through `mvcc::Store` (`apply`, `get`, `range`) over the engine, on \
         one thread. Keys are `k` and {} digits ({} bytes), values {VALUE_LEN} bytes, put in a \
         seeded random order; reads pick random existing keys. engine-redb runs with \
         `Durability::Lazy` (commits without fsync; the Raft log is the durable copy) unless a \
         row says `EveryBatch`, with its default {} page cache, its file under `target/` \
         on {}.\n",
        key_width(args.keys),
        key_width(args.keys) + 1,
        bytes(Options::default().cache_bytes as u64),
        m.target_fs,
    );

    let _ = writeln!(
        s,
        "### Throughput ({} keys, {} s per read row)\n",
        grouped(args.keys as u64),
        args.secs
    );
    let _ = writeln!(
        s,
        "On-CPU is the thread's CPU time over wall time: below 100% it waited for the disk \
         (fsync) or shared its core with another process, and the rate is lower for it.\n"
    );
    let _ = writeln!(s, "| engine | workload | ops | rate | on-CPU | notes |");
    let _ = writeln!(s, "|---|---|--:|--:|--:|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} {}/s | {} | {} |",
            r.engine.name(),
            r.workload,
            grouped(r.m.ops),
            grouped(r.rate() as u64),
            r.unit,
            r.m.cpu
                .map_or_else(|| "?".into(), |c| format!("{:.0}%", c * 100.0)),
            r.note
        );
    }

    if !memory.is_empty() {
        let _ = writeln!(
            s,
            "\n### Memory ({} keys × {VALUE_LEN}-byte values, applied {} per call)\n",
            grouped(args.mem_keys as u64),
            grouped(LOAD_BATCH as u64)
        );
        let _ = writeln!(
            s,
            "Resident set (`VmRSS`) of a child process before and after loading; per key is \
             the difference over the keys, raw is key + value bytes. engine-redb's resident \
             set is mostly its page cache, bounded by the cache size rather than by the data; \
             its data lives in the file.\n"
        );
        let _ = writeln!(
            s,
            "| engine | load order | RSS before | RSS after | resident B/key | × raw | file | load time |"
        );
        let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|--:|");
        for x in memory {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.0} | {:.2}× of {} B | {} | {:.1} s |",
                x.engine.name(),
                x.order,
                bytes(x.before),
                bytes(x.after),
                x.per_key(),
                x.ratio(),
                x.raw_per_key,
                x.file.map_or_else(|| "–".into(), bytes),
                x.secs
            );
        }
    }

    let targets = judge(rows, memory);
    if !targets.is_empty() {
        let _ = writeln!(s, "\n### Targets (from the issue, same machine)\n");
        let _ = writeln!(s, "| target | measured | met |");
        let _ = writeln!(s, "|---|---|---|");
        for (target, measured, met) in targets {
            let _ = writeln!(
                s,
                "| {target} | {measured} | {} |",
                if met { "yes" } else { "**no**" }
            );
        }
    }
    s
}

/// Each of the targets that the run measured: (target, measured, met).
fn judge(rows: &[Row], memory: &[Memory]) -> Vec<(String, String, bool)> {
    let find = |engine, id| rows.iter().find(|r| r.engine == engine && r.id == id);
    let mut out = Vec::new();
    if let Some(get) = find(Engine::Mem, "get") {
        let rate = get.rate();
        out.push((
            "engine-mem ≥ 1,000,000 point reads/s, one core".into(),
            format!("{} reads/s (`Store::get`)", grouped(rate as u64)),
            rate >= 1_000_000.0,
        ));
    }
    for id in ["put1", "put64"] {
        if let Some(put) = find(Engine::Mem, id) {
            let rate = put.rate();
            out.push((
                format!("engine-mem ≥ 500,000 puts/s, one core ({})", put.workload),
                format!("{} puts/s", grouped(rate as u64)),
                rate >= 500_000.0,
            ));
        }
    }
    for id in ["get", "range1", "scan"] {
        if let (Some(mem), Some(redb)) = (find(Engine::Mem, id), find(Engine::Redb, id)) {
            let slower = mem.rate() / redb.rate();
            let measured = if slower >= 1.0 {
                format!("engine-redb {slower:.2}× slower")
            } else {
                format!("engine-redb {:.2}× faster", 1.0 / slower)
            };
            out.push((
                format!("engine-redb within 3× of engine-mem ({})", mem.workload),
                measured,
                slower <= 3.0,
            ));
        }
    }
    if let Some(m) = memory
        .iter()
        .find(|m| m.engine == Engine::Mem && m.order == "random")
    {
        out.push((
            "engine-mem memory ≤ 1.5× raw key+value bytes".into(),
            format!(
                "{:.2}× ({:.0} B/key for {} raw; random order)",
                m.ratio(),
                m.per_key(),
                m.raw_per_key
            ),
            m.ratio() <= 1.5,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::parse;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn keys_sort_numerically() {
        let w = key_width(10_000_001);
        assert_eq!(w, 8);
        assert!(key(9_999_999, w) < key(10_000_000, w));
        assert_eq!(key(123, key_width(200_000)), b"k0000123");
        for i in [0, 7, 99_999, 1_234_567] {
            assert_eq!(key(i, 7), format!("k{i:07}").into_bytes());
        }
    }

    #[test]
    fn args_parse() {
        let a = parse::<Args>(&strings(&[
            "--keys",
            "20_000",
            "--engine",
            "mem",
            "--no-docs",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (a.keys, a.engines.as_slice(), a.out.docs),
            (20_000, &[Engine::Mem][..], false)
        );
        assert!(parse::<Args>(&strings(&["--help"])).unwrap().is_none());
        assert!(parse::<Args>(&strings(&["--keys"])).is_err());
        assert!(parse::<Args>(&strings(&["--keys", "10"])).is_err());
        assert!(parse::<Args>(&strings(&["--bogus"])).is_err());
    }

    #[test]
    fn child_report_round_trips() {
        for file in [None, Some(4096)] {
            let r = ChildReport {
                before: 1,
                after: 2,
                file,
                secs: 0.5,
            };
            assert_eq!(ChildReport::parse(&r.line()).unwrap(), r);
        }
        assert!(ChildReport::parse("before=1").is_err());
    }

    #[test]
    fn workloads_run_through_the_store() {
        let width = key_width(3_000);
        let puts: Vec<Command> = (0..3_000).map(|i| put(i, width)).collect();
        let mut rows = Vec::new();
        let budget = Duration::from_millis(5);
        throughput(Engine::Mem, &puts, width, budget, &mut rows, |_| {
            Ok(MemBackend::new())
        })
        .unwrap();
        assert_eq!(rows.len(), 5);
        assert!(rows.iter().all(|r| r.m.ops > 0 && r.m.secs > 0.0));
        let args = parse::<Args>(&[]).unwrap().unwrap();
        let machine = Machine::probe();
        let section = render(&args, &[], &rows, &[], &machine, "load");
        assert!(section.starts_with("## Engines\n"), "{section}");
        assert!(
            section.contains("| engine-mem | put, 64 per apply |"),
            "{section}"
        );
        assert!(section.contains("point reads/s"), "{section}");
    }
}
