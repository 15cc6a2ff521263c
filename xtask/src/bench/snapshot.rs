//! `cargo xtask bench snapshot`: `etcdctl snapshot save` against MetaStore and etcd 3.4 holding
//! the same keys, side by side: the time to the file on disk, its size, and the ratio.

use super::command_line;
use super::load_span;
use super::servers::metastore_to_run;
use crate::flags::{self, Build, Checked, Docs};
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use kvapi::pb::etcdserverpb::kv_client::KvClient;
use kvapi::pb::etcdserverpb::request_op::Request as Op;
use kvapi::pb::etcdserverpb::{PutRequest, RequestOp, TxnRequest};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use super::doc;
use super::servers::{
    connect, join_within, request, settle, wait_ready, Kind, Scratch, Server, REQUEST_TIMEOUT,
};
use super::{bytes, compare, grouped, load_average, output_of, Machine};

const HEADING: &str = "## Snapshot save";

/// Puts per txn while loading (etcd's --max-txn-ops).
const BATCH: usize = 128;
/// Connections loading at once.
const LOADERS: usize = 8;

/// The flags of `cargo xtask bench snapshot`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Key counts to measure, comma-separated.
    #[arg(long, value_name = "N,N,...", default_value = "100000,1000000",
          value_parser = |s: &str| flags::list_in::<usize>(s, 1, 5_000_000, "1 to 5,000,000 each"))]
    keys: Counts,
    /// Bytes per value.
    #[arg(long, value_name = "B", default_value = "256",
          value_parser = |s: &str| flags::number_in::<usize>(s, 1, 65_536, "1 to 65536"))]
    value_size: usize,
    /// Saves per server and key count.
    #[arg(long, value_name = "N", default_value = "3",
          value_parser = |s: &str| flags::number_in::<usize>(s, 1, 20, "1 to 20"))]
    runs: usize,
    #[command(flatten)]
    server: Build,
    #[command(flatten)]
    out: Docs,
}

impl Checked for Args {}

/// Key counts, as one value of `--keys` (a `Vec` field would be taken for a repeated flag).
type Counts = Vec<usize>;

/// One server holding one key count.
struct Row {
    keys: usize,
    load_secs: f64,
    /// The saved file's size (database and hash).
    file_bytes: u64,
    /// Each save's wall time, sorted.
    secs: Vec<f64>,
}

impl Row {
    fn median(&self) -> f64 {
        self.secs.get(self.secs.len() / 2).copied().unwrap_or(0.0)
    }
}

/// Runs the benchmark.
pub fn run(args: Args, raw: &[String]) -> Result<()> {
    let root = crate::tidy::project_root();
    let machine = Machine::probe();
    let metastore = metastore_to_run(&root, args.server.metastore.as_ref(), args.server.build)?;
    let etcdctl_version = output_of("etcdctl", &["version"]);
    ensure!(
        etcdctl_version != "unknown",
        "`etcdctl version` failed: install etcd 3.4 (apt-get install -y etcd-client)"
    );
    let load_before = load_average();
    let scratch = Scratch::new("snapshot")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for &keys in &args.keys {
        let ours = measure(&rt, Kind::Ours, &metastore, &scratch, keys, &args)?;
        let etcd = measure(&rt, Kind::Etcd, Path::new("etcd"), &scratch, keys, &args)?;
        rows.push((ours, etcd));
    }
    let load = load_span(load_before.as_deref());
    let command = command_line("snapshot", raw);
    let versions = (
        output_of(&metastore.to_string_lossy(), &["--version"]),
        output_of("etcd", &["--version"]),
    );
    let section = render(&args, &command, &load, &machine, &versions, &rows);
    println!("\n{section}");
    if args.out.docs {
        doc::write_section(HEADING, &section)?;
    }
    Ok(())
}

fn measure(
    rt: &Runtime,
    kind: Kind,
    program: &Path,
    scratch: &Scratch,
    keys: usize,
    args: &Args,
) -> Result<Row> {
    settle();
    let dir = scratch.0.join(format!("{}-{keys}", kind.name()));
    let mut server = Server::start(kind, program, &dir, &[])?;
    wait_ready(rt, &mut server)?;
    let began = Instant::now();
    rt.block_on(load(&server.url, keys, args.value_size))
        .context("loading")?;
    let load_secs = began.elapsed().as_secs_f64();
    println!(
        "  {:<9} {} keys loaded in {load_secs:.1} s",
        kind.name(),
        grouped(keys as u64)
    );
    let mut secs = Vec::new();
    let mut file_bytes = 0;
    for run in 0..args.runs {
        settle();
        let file = dir.join(format!("save-{run}.db"));
        let began = Instant::now();
        let out = Command::new("etcdctl")
            .args(["--endpoints", &server.url, "--command-timeout", "600s"])
            .args(["snapshot", "save"])
            .arg(&file)
            .env_remove("ETCDCTL_API")
            .stdin(Stdio::null())
            .output()
            .context("running etcdctl snapshot save")?;
        let took = began.elapsed().as_secs_f64();
        ensure!(
            out.status.success(),
            "etcdctl snapshot save from {} failed: {}{}",
            kind.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        server.ensure_running()?;
        file_bytes = std::fs::metadata(&file)?.len();
        std::fs::remove_file(&file)?;
        println!(
            "  {:<9} {} keys: save {run} took {took:.2} s ({})",
            kind.name(),
            grouped(keys as u64),
            bytes(file_bytes)
        );
        secs.push(took);
    }
    secs.sort_by(f64::total_cmp);
    drop(server);
    Ok(Row {
        keys,
        load_secs,
        file_bytes,
        secs,
    })
}

/// Puts `keys` keys (`k` and 8 digits) with `value_size`-byte values, 128 per txn, over
/// [`LOADERS`] connections.
async fn load(url: &str, keys: usize, value_size: usize) -> Result<()> {
    let channels = connect(url, LOADERS).await?;
    let mut set = JoinSet::new();
    let per = keys.div_ceil(LOADERS);
    for (i, channel) in channels.into_iter().enumerate() {
        let range = (i * per)..((i + 1) * per).min(keys);
        set.spawn(async move {
            let mut kv = KvClient::new(channel);
            let value = vec![b'v'; value_size];
            let mut at = range.start;
            while at < range.end {
                let end = (at + BATCH).min(range.end);
                let success = (at..end)
                    .map(|k| RequestOp {
                        request: Some(Op::RequestPut(PutRequest {
                            key: format!("k{k:08}").into_bytes(),
                            value: value.clone(),
                            ..Default::default()
                        })),
                    })
                    .collect();
                let txn = TxnRequest {
                    success,
                    ..Default::default()
                };
                kv.txn(request(txn, REQUEST_TIMEOUT))
                    .await
                    .with_context(|| format!("txn of keys {at}..{end}"))?;
                at = end;
            }
            anyhow::Ok(())
        });
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(1800);
    for done in join_within(set, deadline).await? {
        done?;
    }
    Ok(())
}

fn render(
    args: &Args,
    command: &str,
    load: &str,
    m: &Machine,
    versions: &(String, String),
    rows: &[(Row, Row)],
) -> String {
    let mut s = compare::preamble(HEADING, command, m, load);
    let _ = writeln!(
        s,
        "Servers: MetaStore (`{}`, `--engine redb`, release build) and etcd (`{}`), default \
         settings, one at a time, each freshly started and loaded with the same keys (`k` and \
         8 digits, {}-byte values, {BATCH} puts per txn). Then `etcdctl snapshot save` (3.4) \
         runs {} times against it, after a `sync`; the time is etcdctl's wall time from start \
         to the file written and its hash checked (median of the runs). Both files are etcd's \
         format (a bbolt database and its SHA-256); MetaStore writes its file in two passes \
         over one point of its store, etcd copies its database file.\n",
        versions.0, versions.1, args.value_size, args.runs
    );
    let _ = writeln!(
        s,
        "| keys | server | load | file | save (median) | runs | MB/s | MetaStore / etcd time |"
    );
    let _ = writeln!(s, "|--:|---|--:|--:|--:|---|--:|--:|");
    for (ours, etcd) in rows {
        for (name, row) in [("MetaStore", ours), ("etcd", etcd)] {
            let runs: Vec<String> = row.secs.iter().map(|t| format!("{t:.2}")).collect();
            let ratio = if name == "MetaStore" && etcd.median() > 0.0 {
                format!("{:.2}×", ours.median() / etcd.median())
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "| {} | {name} | {:.1} s | {} | {:.2} s | {} | {:.0} | {ratio} |",
                grouped(row.keys as u64),
                row.load_secs,
                bytes(row.file_bytes),
                row.median(),
                runs.join(", "),
                row.file_bytes as f64 / 1e6 / row.median().max(1e-9),
            );
        }
    }
    s
}
