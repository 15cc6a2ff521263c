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
