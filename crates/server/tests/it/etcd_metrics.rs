//! `/metrics` next to etcd 3.4's after the same operations: every metric etcd's dashboards and
//! alerts read is there under etcd's name, with etcd's type and labels, and moves as etcd's
//! does; every metric has its `# HELP` and `# TYPE`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{Kind, Server};

/// etcd's metrics that MetaStore serves too, as one member shows them.
const SHARED: [&str; 41] = [
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending",
    "etcd_server_proposals_failed_total",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_has_leader",
    "etcd_server_is_leader",
    "etcd_server_version",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_disk_wal_fsync_duration_seconds",
    "etcd_disk_backend_commit_duration_seconds",
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "etcd_debugging_mvcc_current_revision",
    "etcd_debugging_mvcc_compact_revision",
    "etcd_debugging_mvcc_db_total_size_in_bytes",
    "etcd_debugging_mvcc_watcher_total",
    "etcd_debugging_mvcc_slow_watcher_total",
    "etcd_debugging_mvcc_events_total",
    "etcd_debugging_mvcc_watch_stream_total",
    "etcd_debugging_mvcc_put_total",
    "etcd_debugging_mvcc_delete_total",
    "etcd_debugging_mvcc_txn_total",
    "etcd_debugging_mvcc_range_total",
    "etcd_debugging_mvcc_total_put_size_in_bytes",
    "etcd_debugging_mvcc_db_compaction_keys_total",
    "etcd_mvcc_put_total",
    "etcd_mvcc_delete_total",
    "etcd_mvcc_txn_total",
    "etcd_mvcc_range_total",
    // Families whose samples carry suffixes: checked through their family.
    "etcd_disk_wal_fsync_duration_seconds_count",
    "etcd_disk_backend_commit_duration_seconds_count",
    "etcd_disk_wal_fsync_duration_seconds_bucket",
    "etcd_disk_backend_commit_duration_seconds_bucket",
];

/// How many puts the test makes between two scrapes.
const PUTS: usize = 5;

/// One scrape, parsed: each family's type and help, and each sample's labels and value.
#[derive(Debug, Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    helps: BTreeSet<String>,
    /// (sample name, labels sorted) -> value.
    samples: BTreeMap<(String, Vec<(String, String)>), f64>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line");
                s.types.insert(name.to_string(), kind.to_string());
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().expect("HELP line");
                s.helps.insert(name.to_string());
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let (series, value) = line.rsplit_once(' ').expect("sample line");
                let value: f64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("value in {line:?}"));
                let (name, labels) = match series.split_once('{') {
                    Some((n, l)) => (n, l.trim_end_matches('}')),
                    None => (series, ""),
                };
                let mut labels: Vec<(String, String)> = labels
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (k, v) = l.split_once('=').expect("label");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                labels.sort();
                s.samples.insert((name.to_string(), labels), value);
            }
        }
        s
    }

    /// The family a sample belongs to (a histogram's `_bucket`, `_sum`, `_count`).
    fn family<'a>(&self, sample: &'a str) -> &'a str {
        if self.types.contains_key(sample) {
            return sample;
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(f) = sample.strip_suffix(suffix) {
                if self.types.contains_key(f) {
                    return f;
                }
            }
        }
        sample
    }

    /// The label names of each series of `name` (the `le` of buckets included).
    fn label_names(&self, name: &str) -> BTreeSet<Vec<String>> {
        self.samples
            .keys()
            .filter(|(n, _)| n == name)
            .map(|(_, l)| l.iter().map(|(k, _)| k.clone()).collect())
            .collect()
    }

    /// The sum of every series of `name`; 0 if there is none.
    fn total(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    }

    /// The value of the series of `name` with all of `labels` (and maybe more).
    fn with(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|((n, l), _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| *v)
    }
}

/// GET /metrics over HTTP/1.0 (no chunked encoding to undo).
fn scrape(server: &Server) -> Scrape {
    scrape_port(server.client_port, &format!("{:?}", server.kind()))
}

/// GET /metrics on `port` over HTTP/1.0; `who` names the server in failures.
fn scrape_port(port: u16, who: &str) -> Scrape {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect for /metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{who}: {head}"
    );
    Scrape::parse(body)
}

/// The same operations on `server`: a watch that sees an event and is cancelled, a lease
/// kept alive once, puts; scrapes before and after the puts.
async fn exercise(server: &Server) -> (Scrape, Scrape) {
    let mut c = server.client().await;
    let mut watch = c.watch("w", None).await.expect("watch");
    watch.message().await.expect("created").expect("created");
    c.put("w", "1", None).await.expect("put w");
    let got = watch.message().await.expect("event").expect("event");
    assert_eq!(got.events().len(), 1, "{:?}", server.kind());
    drop(watch);
    let lease = c.lease_grant(60, None).await.expect("grant");
    let (mut keeper, mut alive) = c.lease_keep_alive(lease.id()).await.expect("keep-alive");
    keeper.keep_alive().await.expect("keep-alive");
    alive.message().await.expect("answer").expect("answer");
    drop((keeper, alive));
    c.get("w", None).await.expect("get");
    let before = scrape(server);
    for i in 0..PUTS {
        c.put(format!("k{i}"), "v", None).await.expect("put");
    }
    drop(c);
    // The cancelled streams are counted once the server has seen them end.
    let limit = Instant::now() + Duration::from_secs(10);
    loop {
        let after = scrape(server);
        let ended = ["Watch", "LeaseKeepAlive"].iter().all(|m| {
            after
                .with("grpc_server_handled_total", &[("grpc_method", m)])
                .is_some()
        });
        if ended || Instant::now() > limit {
            return (before, after);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_etcds_names_types_labels_and_moves() {
    let etcd = Server::start(Kind::Etcd, &[]);
    let ours = Server::start(Kind::Redb, &[]);
    let (etcd_before, etcd_after) = exercise(&etcd).await;
    let (ours_before, ours_after) = exercise(&ours).await;
    let mut wrong = Vec::new();

    for name in SHARED {
        let family = etcd_after.family(name);
        let Some(kind) = etcd_after.types.get(family) else {
            panic!("etcd 3.4 has no {name}: the list is wrong");
        };
        match ours_after.types.get(ours_after.family(name)) {
            None => wrong.push(format!("no {name} ({kind})")),
            Some(k) if k != kind => wrong.push(format!("{name}: type {k}, etcd's {kind}")),
            Some(_) => {}
        }
        if !ours_after.helps.contains(family) {
            wrong.push(format!("{family}: no # HELP"));
        }
        let (theirs, mine) = (etcd_after.label_names(name), ours_after.label_names(name));
        if !theirs.is_empty() && !mine.is_empty() && theirs != mine {
            wrong.push(format!("{name}: labels {mine:?}, etcd's {theirs:?}"));
        }
        if mine.is_empty() && !theirs.is_empty() {
            wrong.push(format!("{name}: no series"));
        }
    }
    // Every family has its help and type.
    for family in ours_after.types.keys() {
        if !ours_after.helps.contains(family) {
            wrong.push(format!("{family}: # TYPE without # HELP"));
        }
    }
    for (sample, _) in ours_after.samples.keys() {
        if !ours_after.types.contains_key(ours_after.family(sample)) {
            wrong.push(format!("{sample}: no # TYPE"));
        }
    }

    for (who, before, after) in [
        ("etcd", &etcd_before, &etcd_after),
        ("metastore", &ours_before, &ours_after),
    ] {
        // Calls, streams with their type, as etcd counts them.
        for (service, method, kind) in [
            ("etcdserverpb.KV", "Put", "unary"),
            ("etcdserverpb.KV", "Range", "unary"),
            ("etcdserverpb.Lease", "LeaseGrant", "unary"),
            ("etcdserverpb.Watch", "Watch", "bidi_stream"),
            ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
        ] {
            let labels = [
                ("grpc_service", service),
                ("grpc_method", method),
                ("grpc_type", kind),
            ];
            if after.with("grpc_server_started_total", &labels).is_none() {
                wrong.push(format!(
                    "{who}: no grpc_server_started_total for {method} {kind}"
                ));
            }
            if after.with("grpc_server_handled_total", &labels).is_none() {
                wrong.push(format!(
                    "{who}: no grpc_server_handled_total for {method} {kind}"
                ));
            }
        }
        let puts = |s: &Scrape| {
            s.with(
                "grpc_server_handled_total",
                &[("grpc_method", "Put"), ("grpc_code", "OK")],
            )
            .unwrap_or(0.0)
        };
        let grew = puts(after) - puts(before);
        if grew != PUTS as f64 {
            wrong.push(format!("{who}: {grew} Puts handled OK, {PUTS} made"));
        }
        // The store's operation counters, under both of etcd's names: each put is one put of
        // three bytes (`k0`, `v`), and the gets before were ranges.
        for name in ["etcd_debugging_mvcc_put_total", "etcd_mvcc_put_total"] {
            let grew = after.total(name) - before.total(name);
            if grew != PUTS as f64 {
                wrong.push(format!("{who}: {name} grew by {grew} over {PUTS} puts"));
            }
        }
        let bytes = "etcd_debugging_mvcc_total_put_size_in_bytes";
        let grew = after.total(bytes) - before.total(bytes);
        if grew != (PUTS * 3) as f64 {
            wrong.push(format!(
                "{who}: {bytes} grew by {grew} over {PUTS} puts of 3 bytes"
            ));
        }
        for name in ["etcd_debugging_mvcc_range_total", "etcd_mvcc_range_total"] {
            if before.total(name) < 1.0 {
                wrong.push(format!("{who}: {name} {} after a get", before.total(name)));
            }
        }
        // Each put is one proposal committed and applied (nothing else was proposed between
        // the scrapes but maybe a lease checkpoint or two).
        for name in [
            "etcd_server_proposals_committed_total",
            "etcd_server_proposals_applied_total",
        ] {
            let grew = after.total(name) - before.total(name);
            if !(PUTS as f64..=PUTS as f64 + 2.0).contains(&grew) {
                wrong.push(format!("{who}: {name} grew by {grew} over {PUTS} puts"));
            }
        }
        // Every write is made durable in the WAL before it is acknowledged.
        let syncs = after.total("etcd_disk_wal_fsync_duration_seconds_count")
            - before.total("etcd_disk_wal_fsync_duration_seconds_count");
        if syncs < PUTS as f64 {
            wrong.push(format!("{who}: {syncs} WAL fsyncs over {PUTS} puts"));
        }
        if after.total("etcd_disk_backend_commit_duration_seconds_count") < 1.0 {
            wrong.push(format!("{who}: no backend commit counted"));
        }
        for (name, value) in [
            ("etcd_server_has_leader", 1.0),
            ("etcd_server_is_leader", 1.0),
            ("etcd_server_leader_changes_seen_total", 1.0),
            ("etcd_server_proposals_pending", 0.0),
        ] {
            if after.total(name) != value {
                wrong.push(format!(
                    "{who}: {name} {}, expected {value}",
                    after.total(name)
                ));
            }
        }
        let version = after
            .samples
            .keys()
            .find(|(n, _)| n == "etcd_server_version")
            .and_then(|(_, l)| l.iter().find(|(k, _)| k == "server_version"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        if !version.starts_with("3.4.") {
            wrong.push(format!("{who}: etcd_server_version {version:?}"));
        }
        let revision = after.total("etcd_debugging_mvcc_current_revision");
        if revision < (PUTS + 2) as f64 {
            wrong.push(format!("{who}: current revision {revision}"));
        }
        for name in [
            "etcd_mvcc_db_total_size_in_bytes",
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
        ] {
            if after.total(name) <= 0.0 {
                wrong.push(format!("{who}: {name} {}", after.total(name)));
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let started = after.total("process_start_time_seconds");
        if !(now - 600.0..=now).contains(&started) {
            wrong.push(format!(
                "{who}: process_start_time_seconds {started}, now {now}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The peer round trip, which needs peers: three members of each; every series names its peer
/// in `To` (hex), as etcd's do.
#[test]
fn peer_round_trip_per_peer_as_etcd() {
    const RTT: &str = "etcd_network_peer_round_trip_time_seconds";
    let etcd = testkit::Cluster::start_etcd(crate::harness::require_tool("etcd"), 3, Vec::new())
        .unwrap_or_else(|e| panic!("starting etcd: {e}"));
    let ours = testkit::Cluster::start(testkit::ClusterOptions {
        binary: env!("CARGO_BIN_EXE_metastore").into(),
        members: 3,
        engine: "redb".into(),
        extra_args: Vec::new(),
        proxy_peers: false,
    })
    .unwrap_or_else(|e| panic!("starting metastore: {e}"));
    let bucket = format!("{RTT}_bucket");
    // Heartbeats (MetaStore) and probes (etcd) go on in the background: wait for a few.
    let peers_seen = |cluster: &testkit::Cluster, who: &str| {
        let limit = Instant::now() + Duration::from_secs(15);
        loop {
            let scrapes: Vec<Scrape> = cluster
                .members()
                .iter()
                .map(|m| scrape_port(m.client_port, who))
                .collect();
            let peers: BTreeSet<String> = scrapes
                .iter()
                .flat_map(|s| s.samples.keys())
                .filter(|(n, _)| *n == bucket)
                .filter_map(|(_, l)| l.iter().find(|(k, _)| k == "To").map(|(_, v)| v.clone()))
                .collect();
            if peers.len() >= 2 || Instant::now() > limit {
                return (scrapes, peers);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (etcd_scrapes, etcd_peers) = peers_seen(&etcd, "etcd");
    let (our_scrapes, our_peers) = peers_seen(&ours, "metastore");
    assert!(etcd_peers.len() >= 2, "etcd measured {etcd_peers:?}");
    let kind = |scrapes: &[Scrape]| scrapes.iter().find_map(|s| s.types.get(RTT).cloned());
    assert_eq!(kind(&our_scrapes), kind(&etcd_scrapes));
    let labels = |scrapes: &[Scrape]| {
        scrapes
            .iter()
            .flat_map(|s| s.label_names(&bucket))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(labels(&our_scrapes), labels(&etcd_scrapes));
    // MetaStore's leader measures each follower (its heartbeats); each `To` is a member id in
    // hex.
    assert!(our_peers.len() >= 2, "metastore measured {our_peers:?}");
    for peer in &our_peers {
        assert!(
            u64::from_str_radix(peer, 16).is_ok() && peer.len() > 8,
            "To={peer:?} is not a member id in hex"
        );
    }
}

/// POST `body` to `path` on `port` over HTTP/1.0; answers the status line.
fn post(port: u16, path: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect for the gateway");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response.lines().next().unwrap_or_default().to_string()
}

/// Calls through the HTTP/JSON gateway are gRPC calls to the server, counted in
/// `grpc_server_*` with their method and type as etcd's gateway (a gRPC client of its own
/// server) has them counted, and in the store's counters.
#[test]
fn gateway_calls_are_counted_as_etcd_counts_them() {
    let etcd = Server::start(Kind::Etcd, &[]);
    let ours = Server::start(Kind::Redb, &[]);
    let mut grown = Vec::new();
    for server in [&etcd, &ours] {
        let before = scrape(server);
        let put = post(
            server.client_port,
            "/v3/kv/put",
            r#"{"key":"Zw==","value":"dg=="}"#,
        );
        assert!(put.contains(" 200"), "{:?}: {put}", server.kind());
        let range = post(server.client_port, "/v3/kv/range", r#"{"key":"Zw=="}"#);
        assert!(range.contains(" 200"), "{:?}: {range}", server.kind());
        let after = scrape(server);
        // etcd has a handled series per code: the calls are the OK ones.
        let grew = |name: &str, method: &str| {
            let mut labels = vec![
                ("grpc_method", method),
                ("grpc_type", "unary"),
                ("grpc_service", "etcdserverpb.KV"),
            ];
            if name == "grpc_server_handled_total" {
                labels.push(("grpc_code", "OK"));
            }
            after.with(name, &labels).unwrap_or(0.0) - before.with(name, &labels).unwrap_or(0.0)
        };
        grown.push([
            grew("grpc_server_started_total", "Put"),
            grew("grpc_server_handled_total", "Put"),
            grew("grpc_server_started_total", "Range"),
            grew("grpc_server_handled_total", "Range"),
            after.total("etcd_debugging_mvcc_put_total")
                - before.total("etcd_debugging_mvcc_put_total"),
        ]);
    }
    assert_eq!(
        grown[1], grown[0],
        "started/handled Put, started/handled Range, puts: metastore vs etcd"
    );
    assert_eq!(grown[0], [1.0; 5], "etcd 3.4 counts each gateway call once");
}
