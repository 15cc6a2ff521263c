//! The metrics `/metrics` serves: etcd's names with etcd's meaning where MetaStore has the
//! quantity (dashboards and alerts written for etcd read them unchanged), MetaStore's own
//! `metastore_*` beside them; a `# HELP` line for each; the gRPC call counters as etcd's
//! go-grpc-prometheus keeps them, for unary calls and streams alike; `process_*` read from
//! `/proc` at each scrape.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{LazyLock, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::Response;
use consensus::Node;
use http_body::{Body as HttpBody, Frame};
use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Histogram, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
use mvcc::Backend;

use crate::config::API_VERSION;

/// Histograms and their buckets, etcd's for each: (name, first bucket, factor, count).
const HISTOGRAMS: [(&str, f64, f64, usize); 3] = [
    (consensus::metrics::WAL_FSYNC, 0.001, 2.0, 14),
    (engine_redb::BACKEND_COMMIT, 0.001, 2.0, 14),
    (consensus::metrics::PEER_ROUND_TRIP, 0.0001, 2.0, 14),
];

/// `count` buckets from `start`, each `factor` times the one before (Prometheus's
/// exponential buckets).
fn exponential(start: f64, factor: f64, count: usize) -> Vec<f64> {
    std::iter::successors(Some(start), |b| Some(b * factor))
        .take(count)
        .collect()
}

/// The Prometheus recorder with every histogram's buckets set as etcd sets them.
///
/// # Errors
/// An empty bucket list (not possible with the constants here).
pub fn prometheus() -> Result<PrometheusBuilder, BuildError> {
    let mut builder = PrometheusBuilder::new().set_buckets_for_metric(
        Matcher::Full("grpc_server_handling_seconds".into()),
        &crate::HANDLING_BUCKETS,
    )?;
    for (name, start, factor, count) in HISTOGRAMS {
        builder = builder.set_buckets_for_metric(
            Matcher::Full(name.into()),
            &exponential(start, factor, count),
        )?;
    }
    Ok(builder)
}

/// When this process started, as `process_start_time_seconds` reports it (set at the
/// recorder's installation, a few milliseconds after exec).
static STARTED: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// Registers the help text of every metric MetaStore serves (call once the recorder is
/// installed) and notes the process's start.
pub fn describe() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let _ = STARTED.set(now.as_secs_f64());
    // Served from the start at zero, as etcd serves them.
    metrics::counter!(consensus::metrics::PROPOSALS_FAILED).absolute(0);
    // etcd's names, with etcd's meaning.
    describe_gauge!(
        "etcd_server_has_leader",
        "Whether a leader exists: 1 if one does, 0 if not."
    );
    describe_gauge!(
        "etcd_server_is_leader",
        "Whether this member leads: 1 if it does, 0 if not."
    );
    describe_gauge!(
        "etcd_server_proposals_pending",
        "Proposals waiting to be committed and applied."
    );
    describe_gauge!(
        consensus::metrics::PROPOSALS_COMMITTED,
        "Consensus proposals committed (the Raft commit index)."
    );
    describe_gauge!(
        "etcd_server_proposals_applied_total",
        "Consensus proposals applied (the applied index)."
    );
    describe_counter!(
        consensus::metrics::PROPOSALS_FAILED,
        "Proposals that failed: timed out, no leader, or the member stopped."
    );
    describe_counter!(
        consensus::metrics::LEADER_CHANGES,
        "Leader changes this member has seen."
    );
    describe_gauge!(
        "etcd_server_version",
        "The version running: 1 for the server_version label's value."
    );
    describe_gauge!(
        "etcd_mvcc_db_total_size_in_bytes",
        Unit::Bytes,
        "Size of the storage engine's file (the memory held, for the mem engine)."
    );
    describe_gauge!(
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        Unit::Bytes,
        "Bytes of the storage engine in use (MetaStore: the same as the total size)."
    );
    describe_gauge!(
        "etcd_debugging_mvcc_db_total_size_in_bytes",
        Unit::Bytes,
        "Size of the storage engine's file (the memory held, for the mem engine)."
    );
    describe_gauge!(
        "etcd_debugging_mvcc_current_revision",
        "The store's current revision."
    );
    describe_gauge!(
        "etcd_debugging_mvcc_compact_revision",
        "The revision of the last compaction."
    );
    describe_gauge!(
        "etcd_debugging_mvcc_watcher_total",
        "Watchers registered, synced or not."
    );
    describe_gauge!(
        "etcd_debugging_mvcc_slow_watcher_total",
        "Watchers not synced, catching up from history."
    );
    describe_counter!(
        "etcd_debugging_mvcc_events_total",
        "Events sent to watchers."
    );
    describe_gauge!(
        "etcd_debugging_mvcc_watch_stream_total",
        "Watch streams open."
    );
    describe_counter!(
        "etcd_debugging_mvcc_db_compaction_keys_total",
        "Versions (etcd: db keys) removed by compaction since the member started."
    );
    for (names, what) in [
        (consensus::metrics::PUTS, "puts"),
        (consensus::metrics::DELETES, "deletes"),
        (consensus::metrics::TXNS, "txns"),
        (consensus::metrics::RANGES, "ranges"),
    ] {
        for name in names {
            // Served from the start at zero, as etcd serves them.
            metrics::counter!(name).absolute(0);
            describe_counter!(name, format!("Total number of {what} seen by this member."));
        }
    }
    metrics::gauge!(consensus::metrics::PUT_BYTES).increment(0.0);
    metrics::gauge!("etcd_debugging_mvcc_watch_stream_total").increment(0.0);
    describe_gauge!(
        consensus::metrics::PUT_BYTES,
        Unit::Bytes,
        "The total size of put keys and values seen by this member."
    );
    describe_histogram!(
        consensus::metrics::WAL_FSYNC,
        Unit::Seconds,
        "Time each fdatasync of the Raft log (the WAL) took."
    );
    describe_histogram!(
        engine_redb::BACKEND_COMMIT,
        Unit::Seconds,
        "Time each commit of the storage engine took."
    );
    describe_histogram!(
        consensus::metrics::PEER_ROUND_TRIP,
        Unit::Seconds,
        "Round-trip time of a heartbeat to each peer (label To: its member id in hex)."
    );
    describe_counter!(
        "grpc_server_started_total",
        "gRPC calls started on the server."
    );
    describe_counter!(
        "grpc_server_handled_total",
        "gRPC calls completed on the server, whatever their code."
    );
    describe_histogram!(
        "grpc_server_handling_seconds",
        Unit::Seconds,
        "Time to answer a unary gRPC call (--metrics extensive)."
    );
    describe_gauge!(
        "process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory size in bytes."
    );
    describe_gauge!(
        "process_virtual_memory_bytes",
        Unit::Bytes,
        "Virtual memory size in bytes."
    );
    describe_gauge!("process_open_fds", "Open file descriptors.");
    describe_gauge!("process_max_fds", "The limit on open file descriptors.");
    describe_gauge!(
        "process_start_time_seconds",
        Unit::Seconds,
        "When the process started, in seconds since the Unix epoch."
    );
    // MetaStore's own.
    describe_gauge!("metastore_live_tasks", "Tasks alive in the async runtime.");
    describe_gauge!("metastore_store_revision", "The store's current revision.");
    describe_gauge!(
        "metastore_mvcc_versions_stored",
        "Key versions stored, history included."
    );
    describe_gauge!(
        "metastore_mvcc_compaction_pending_revisions",
        "Revisions compacted but not yet removed on this member."
    );
    describe_counter!(
        "metastore_watch_victims_total",
        "Live watch deliveries that found their queue full (the watcher then catches up)."
    );
    describe_counter!(
        "metastore_client_connections_refused_total",
        "Client connections closed because --max-client-connections were open."
    );
    describe_counter!(
        "metastore_peer_messages_refused_total",
        "Peer messages refused (from a member not in the cluster, or another cluster)."
    );
    describe_histogram!(
        consensus::STAGE_SECONDS,
        Unit::Seconds,
        "Time a put spends in each stage of the write path (label stage), once per put."
    );
    describe_histogram!(
        "metastore_leader_wait_seconds",
        Unit::Seconds,
        "Time requests waited for a leader."
    );
    describe_counter!(
        "metastore_leader_wait_gave_up_total",
        "Requests that found no leader within their budget."
    );
    describe_counter!(
        "metastore_snapshots_installed_total",
        "Raft snapshots installed from the leader."
    );
    describe_counter!(
        "metastore_raft_log_held_purges_failed_total",
        "Raft log purges that waited for a snapshot install in vain and stopped the log \
         (label reason: expired, closed)."
    );
    describe_counter!(
        "metastore_read_index_rounds_total",
        "Leadership confirmations for linearizable reads."
    );
    describe_counter!(
        "metastore_read_index_reads_total",
        "Linearizable reads served by those confirmations."
    );
    describe_counter!(
        "metastore_leases_expired_total",
        "Leases revoked because they expired."
    );
    describe_counter!(
        "metastore_no_leader_streams_cancelled_total",
        "Streams with require-leader cancelled because the leader was lost."
    );
    describe_counter!(
        "metastore_reads_stopped_total",
        "Long reads stopped before they finished, by reason."
    );
    describe_gauge!(
        "metastore_reads_running",
        "Long reads running on the blocking pool."
    );
    describe_counter!(
        "metastore_deadline_expired_total",
        "Waits that reached their deadline, by layer."
    );
    describe_gauge!(
        "metastore_pending_operations",
        "Operations waiting in each registry."
    );
}

/// Sets the gauges read at each scrape: the member's state, the store's size, the process.
pub fn refresh<B: Backend>(node: &Node<B>, db_size: u64) {
    let runtime = tokio::runtime::Handle::current().metrics();
    metrics::gauge!("metastore_live_tasks").set(runtime.num_alive_tasks() as f64);
    let store = node.store();
    let revision = store.current_revision() as f64;
    metrics::gauge!("metastore_store_revision").set(revision);
    metrics::gauge!("etcd_debugging_mvcc_current_revision").set(revision);
    // etcd reports -1 until the first compaction.
    let compacted = match store.compact_revision() {
        0 => -1,
        r => r,
    };
    metrics::gauge!("etcd_debugging_mvcc_compact_revision").set(compacted as f64);
    // Storage held by history: every stored version, and the revisions compacted but not yet
    // physically removed on this member.
    metrics::gauge!("metastore_mvcc_versions_stored").set(store.versions() as f64);
    metrics::counter!("etcd_debugging_mvcc_db_compaction_keys_total")
        .absolute(store.versions_removed());
    let progress = store.compaction_progress();
    metrics::gauge!("metastore_mvcc_compaction_pending_revisions")
        .set((progress.target - progress.done).max(0) as f64);
    let status = node.status();
    metrics::gauge!("etcd_server_has_leader").set(if status.leader.is_some() { 1.0 } else { 0.0 });
    metrics::gauge!("etcd_server_is_leader").set(if status.leader == Some(status.id) {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("etcd_server_proposals_pending").set(node.pending() as f64);
    metrics::gauge!("etcd_server_proposals_applied_total").set(status.applied_index as f64);
    let size = db_size as f64;
    metrics::gauge!("etcd_mvcc_db_total_size_in_bytes").set(size);
    metrics::gauge!("etcd_mvcc_db_total_size_in_use_in_bytes").set(size);
    metrics::gauge!("etcd_debugging_mvcc_db_total_size_in_bytes").set(size);
    metrics::gauge!("etcd_server_version", "server_version" => API_VERSION).set(1.0);
    process();
}

/// Clock ticks per second of `/proc/self/stat`'s times: 100 on every Linux build that matters
/// (USER_HZ is fixed for user space).
const TICKS_PER_SECOND: f64 = 100.0;

/// The exposition lines of `process_cpu_seconds_total`: a counter of fractional seconds, which
/// the recorder's integer counters cannot hold, so it is written here; empty off Linux.
pub fn cpu_seconds() -> String {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return String::new();
    };
    // The fields after the command name (which may hold spaces and parentheses), from the
    // state on: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (ticks(11) + ticks(12)) / TICKS_PER_SECOND;
    format!(
        "# HELP process_cpu_seconds_total User and system CPU time spent, in seconds.\n\
         # TYPE process_cpu_seconds_total counter\n\
         process_cpu_seconds_total {cpu}\n"
    )
}

/// Sets `process_*` gauges from `/proc/self` (Linux); elsewhere only the start time.
fn process() {
    if let Some(started) = STARTED.get() {
        metrics::gauge!("process_start_time_seconds").set(*started);
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for (field, name) in [
            ("VmRSS:", "process_resident_memory_bytes"),
            ("VmSize:", "process_virtual_memory_bytes"),
        ] {
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok());
            if let Some(kib) = kib {
                metrics::gauge!(name).set(kib * 1024.0);
            }
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(fds.count() as f64);
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        let max = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok());
        if let Some(max) = max {
            metrics::gauge!("process_max_fds").set(max);
        }
    }
}

/// How a gRPC method answers, as the `grpc_type` label names it.
fn grpc_type(method: &str) -> &'static str {
    match method {
        "Watch" | "LeaseKeepAlive" => "bidi_stream",
        "Snapshot" | "Observe" => "server_stream",
        _ => "unary",
    }
}

/// Every call counted, as `(service, method)`: the methods our services serve. A path that
/// names none of them is not counted (gRPC answers it `Unimplemented` before etcd's
/// interceptors see it), so clients cannot add label values, and with them series, at will.
const METHODS: [(&str, &str); 48] = [
    ("etcdserverpb.KV", "Range"),
    ("etcdserverpb.KV", "Put"),
    ("etcdserverpb.KV", "DeleteRange"),
    ("etcdserverpb.KV", "Txn"),
    ("etcdserverpb.KV", "Compact"),
    ("etcdserverpb.Watch", "Watch"),
    ("etcdserverpb.Lease", "LeaseGrant"),
    ("etcdserverpb.Lease", "LeaseRevoke"),
    ("etcdserverpb.Lease", "LeaseKeepAlive"),
    ("etcdserverpb.Lease", "LeaseTimeToLive"),
    ("etcdserverpb.Lease", "LeaseLeases"),
    ("etcdserverpb.Cluster", "MemberAdd"),
    ("etcdserverpb.Cluster", "MemberRemove"),
    ("etcdserverpb.Cluster", "MemberUpdate"),
    ("etcdserverpb.Cluster", "MemberList"),
    ("etcdserverpb.Cluster", "MemberPromote"),
    ("etcdserverpb.Maintenance", "Alarm"),
    ("etcdserverpb.Maintenance", "Status"),
    ("etcdserverpb.Maintenance", "Defragment"),
    ("etcdserverpb.Maintenance", "Hash"),
    ("etcdserverpb.Maintenance", "HashKV"),
    ("etcdserverpb.Maintenance", "Snapshot"),
    ("etcdserverpb.Maintenance", "MoveLeader"),
    ("etcdserverpb.Maintenance", "Downgrade"),
    ("etcdserverpb.Auth", "AuthEnable"),
    ("etcdserverpb.Auth", "AuthDisable"),
    ("etcdserverpb.Auth", "AuthStatus"),
    ("etcdserverpb.Auth", "Authenticate"),
    ("etcdserverpb.Auth", "UserAdd"),
    ("etcdserverpb.Auth", "UserGet"),
    ("etcdserverpb.Auth", "UserList"),
    ("etcdserverpb.Auth", "UserDelete"),
    ("etcdserverpb.Auth", "UserChangePassword"),
    ("etcdserverpb.Auth", "UserGrantRole"),
    ("etcdserverpb.Auth", "UserRevokeRole"),
    ("etcdserverpb.Auth", "RoleAdd"),
    ("etcdserverpb.Auth", "RoleGet"),
    ("etcdserverpb.Auth", "RoleList"),
    ("etcdserverpb.Auth", "RoleDelete"),
    ("etcdserverpb.Auth", "RoleGrantPermission"),
    ("etcdserverpb.Auth", "RoleRevokePermission"),
    ("v3electionpb.Election", "Campaign"),
    ("v3electionpb.Election", "Proclaim"),
    ("v3electionpb.Election", "Leader"),
    ("v3electionpb.Election", "Observe"),
    ("v3electionpb.Election", "Resign"),
    ("v3lockpb.Lock", "Lock"),
    ("v3lockpb.Lock", "Unlock"),
];

/// gRPC's code names as the labels carry them, indexed by the `grpc-status` number.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;
const INTERNAL: usize = 13;

/// The counters of one method, looked up in the registry once: a lookup hashes every label
/// and the label values were copied per call, a few per cent of a member's CPU under puts.
pub(crate) struct Call {
    service: &'static str,
    method: &'static str,
    started: OnceLock<Counter>,
    handled: [OnceLock<Counter>; CODES.len()],
    handling: OnceLock<Histogram>,
}

/// Each counted method's [`Call`], by request path.
static CALLS: LazyLock<HashMap<String, Call>> = LazyLock::new(|| {
    METHODS
        .iter()
        .map(|&(service, method)| {
            let call = Call {
                service,
                method,
                started: OnceLock::new(),
                handled: std::array::from_fn(|_| OnceLock::new()),
                handling: OnceLock::new(),
            };
            (format!("/{service}/{method}"), call)
        })
        .collect()
});

impl Call {
    /// The call a request path names, if it is one of the methods counted.
    fn of(path: &str) -> Option<&'static Self> {
        CALLS.get(path)
    }

    fn started(&self) {
        self.started
            .get_or_init(|| {
                metrics::counter!(
                    "grpc_server_started_total",
                    "grpc_method" => self.method,
                    "grpc_service" => self.service,
                    "grpc_type" => grpc_type(self.method),
                )
            })
            .increment(1);
    }

    /// Counts the call handled with the code [`CODES`] has at `code`.
    fn handled(&self, code: usize) {
        let code = code.min(CODES.len() - 1);
        self.handled[code]
            .get_or_init(|| {
                metrics::counter!(
                    "grpc_server_handled_total",
                    "grpc_code" => CODES[code],
                    "grpc_method" => self.method,
                    "grpc_service" => self.service,
                    "grpc_type" => grpc_type(self.method),
                )
            })
            .increment(1);
    }
}

/// The `grpc_server_handling_seconds` histogram of the unary call `path` names, if it is one
/// of the methods counted (`--metrics extensive`).
pub(crate) fn handling(path: &str) -> Option<&'static Histogram> {
    let call = Call::of(path)?;
    if grpc_type(call.method) != "unary" {
        return None;
    }
    Some(call.handling.get_or_init(|| {
        metrics::histogram!(
            "grpc_server_handling_seconds",
            "grpc_method" => call.method,
            "grpc_service" => call.service,
            "grpc_type" => "unary",
        )
    }))
}

/// The index in [`CODES`] of a `grpc-status` value (`Unknown` for one that is not a code).
fn code_of(status: Option<&axum::http::HeaderValue>) -> usize {
    status
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n < CODES.len())
        .unwrap_or(UNKNOWN)
}

/// A response body that counts its call handled when its trailers pass (or, for a body
/// dropped before its end, as cancelled: the client went away).
struct Counted<B> {
    inner: B,
    call: Option<&'static Call>,
}

impl<B: HttpBody + Unpin> HttpBody for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(call) = self.call.take() {
                        call.handled(code_of(trailers.get("grpc-status")));
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = self.call.take() {
                    call.handled(UNKNOWN);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = self.call.take() {
                    call.handled(INTERNAL);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.handled(CANCELED);
        }
    }
}

/// Counts the call `path` names as started (`grpc_server_started_total`); `None` for a path
/// that is not one of the methods counted.
pub(crate) fn start(path: &str) -> Option<&'static Call> {
    let call = Call::of(path)?;
    call.started();
    Some(call)
}

/// `response` with `call` counted handled (`grpc_server_handled_total`, by code) when the
/// answer ends: at once for a trailers-only answer (most errors carry their status in the
/// headers), when the body's trailers pass otherwise, streams included, as etcd counts them.
pub(crate) fn answered<B>(call: Option<&'static Call>, response: Response<B>) -> Response<Body>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    let Some(call) = call else {
        return response.map(Body::new);
    };
    if let Some(status) = response.headers().get("grpc-status") {
        call.handled(code_of(Some(status)));
        return response.map(Body::new);
    }
    response.map(|inner| {
        Body::new(Counted {
            inner,
            call: Some(call),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `(service, method)` pairs the proto files declare.
    fn declared() -> Vec<(String, String)> {
        let files = [
            include_str!("../../kvapi/proto/etcd/rpc.proto"),
            include_str!("../../kvapi/proto/etcd/v3election.proto"),
            include_str!("../../kvapi/proto/etcd/v3lock.proto"),
        ];
        let mut found = Vec::new();
        for text in files {
            let mut package = "";
            let mut service = "";
            for line in text.lines().map(str::trim) {
                let mut words = line.split(|c: char| c.is_whitespace() || c == '(' || c == ';');
                match (words.next(), words.next()) {
                    (Some("package"), Some(name)) => package = name,
                    (Some("service"), Some(name)) => service = name,
                    (Some("rpc"), Some(name)) => {
                        found.push((format!("{package}.{service}"), name.to_string()));
                    }
                    _ => {}
                }
            }
        }
        found
    }

    #[test]
    fn every_method_the_protos_declare_is_counted_and_no_other() {
        let mut declared = declared();
        let mut counted: Vec<(String, String)> = METHODS
            .iter()
            .map(|(s, m)| (s.to_string(), m.to_string()))
            .collect();
        declared.sort();
        counted.sort();
        assert!(declared.len() > 40, "{declared:?}");
        assert_eq!(counted, declared);
    }

    #[test]
    fn paths_are_counted_by_method_and_unknown_ones_not_at_all() {
        let put = Call::of("/etcdserverpb.KV/Put").expect("Put is counted");
        assert_eq!((put.service, put.method), ("etcdserverpb.KV", "Put"));
        assert!(std::ptr::eq(put, Call::of("/etcdserverpb.KV/Put").unwrap()));
        for path in [
            "/etcdserverpb.KV/Bogus",
            "/etcdserverpb.KV/Put/x",
            "/other.KV/Put",
            "",
        ] {
            assert!(Call::of(path).is_none(), "{path}");
        }
        let status = |s: &'static str| axum::http::HeaderValue::from_static(s);
        assert_eq!(CODES[code_of(Some(&status("0")))], "OK");
        assert_eq!(CODES[code_of(Some(&status("14")))], "Unavailable");
        assert_eq!(CODES[code_of(Some(&status("99")))], "Unknown");
        assert_eq!(CODES[code_of(None)], "Unknown");
    }
}
