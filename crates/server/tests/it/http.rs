//! Plain HTTP on the client port, next to etcd 3.4's: `/health`, `/version`, `/metrics`.

use regex::Regex;

use crate::harness::{http_get, Kind, Server};

#[test]
fn http_endpoints_match_etcd() {
    let etcd = Server::start(Kind::Etcd, &[]);
    let ours = Server::start(Kind::Redb, &[]);
    let get = |server: &Server, path: &str| {
        http_get(server.client_port, path)
            .unwrap_or_else(|| panic!("{:?} did not answer GET {path}", server.kind()))
    };

    let mut wrong = Vec::new();
    let (expected, got) = (get(&etcd, "/health"), get(&ours, "/health"));
    if expected != got {
        wrong.push(format!("GET /health: etcd {expected:?}, metastore {got:?}"));
    }

    // Only the server's own version may differ.
    let server_version = Regex::new(r#""etcdserver":"3\.4\.\d+""#).expect("regex");
    let version = |server: &Server| {
        let (code, body) = get(server, "/version");
        (
            code,
            server_version
                .replace(&body, r#""etcdserver":"3.4.x""#)
                .into_owned(),
        )
    };
    let (expected, got) = (version(&etcd), version(&ours));
    if expected != got {
        wrong.push(format!(
            "GET /version: etcd {expected:?}, metastore {got:?}"
        ));
    }

    // The metrics etcd dashboards and alerts read first, once a gRPC request was served
    // (etcd also lists gRPC methods never called; that is not checked).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for server in [&etcd, &ours] {
        runtime.block_on(async {
            server.client().await.get("k", None).await.expect("get");
        });
    }
    for server in [&etcd, &ours] {
        let (code, body) = get(server, "/metrics");
        if code != 200 {
            wrong.push(format!("{:?}: GET /metrics answered {code}", server.kind()));
        }
        for name in [
            "etcd_server_has_leader 1",
            "etcd_server_is_leader 1",
            "etcd_server_proposals_pending",
            "grpc_server_handled_total",
        ] {
            if !body.contains(name) {
                wrong.push(format!("{:?}: /metrics has no {name:?}", server.kind()));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `/livez` (etcd 3.5's liveness probe) and the image's `metastore-healthcheck` against a
/// real member: healthy passes, a port nobody serves fails.
#[test]
fn livez_and_the_image_healthcheck() {
    let ours = Server::start(Kind::Redb, &[]);
    assert_eq!(
        http_get(ours.client_port, "/livez"),
        Some((200, "ok".to_owned()))
    );
    let probe = env!("CARGO_BIN_EXE_metastore-healthcheck");
    let run = |url: String| {
        std::process::Command::new(probe)
            .arg(&url)
            .output()
            .unwrap_or_else(|e| panic!("running {probe}: {e}"))
    };
    for path in ["/health", "/livez"] {
        let out = run(format!("http://127.0.0.1:{}{path}", ours.client_port));
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let closed = testkit::free_port();
    let out = run(format!("http://127.0.0.1:{closed}/health"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "a closed port must fail the check"
    );
}

#[test]
fn readyz_answers_ok_with_a_quorum_and_503_without() {
    let mut cluster = testkit::Cluster::start(testkit::ClusterOptions {
        binary: std::path::PathBuf::from(env!("CARGO_BIN_EXE_metastore")),
        members: 3,
        engine: "mem".into(),
        extra_args: Vec::new(),
        proxy_peers: false,
    })
    .expect("cluster");
    let port = cluster.member(0).client_port;
    assert_eq!(http_get(port, "/readyz"), Some((200, "ok".to_owned())));
    cluster.kill(1);
    cluster.kill(2);
    // Without a quorum the member is alive but cannot serve reads: not ready.
    assert_eq!(
        http_get(port, "/readyz"),
        Some((503, "readyz check failed".to_owned()))
    );
    assert_eq!(http_get(port, "/livez"), Some((200, "ok".to_owned())));
}
