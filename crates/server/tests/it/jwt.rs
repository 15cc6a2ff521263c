//! `--auth-token jwt,…`: signed tokens, against a 3-member etcd 3.4 with the same keys. A
//! token from one member works on every member (nothing is stored), an auth change makes
//! earlier tokens old, and a token past its `ttl=` is invalid.

use std::time::Duration;

use kvapi::pb::etcdserverpb::auth_client::AuthClient;
use kvapi::pb::etcdserverpb::kv_client::KvClient;
use kvapi::pb::etcdserverpb::{AuthenticateRequest, RangeRequest};
use testkit::{Cluster, ClusterOptions};

use crate::auth::{connect_as, set_up};
use crate::harness::require_tool;
use deadline::pause;

/// An answer as compared: the number of keys read, or the gRPC code and message.
type Answer = Result<usize, String>;

async fn authenticate(endpoint: &str, user: &str, password: &str) -> Result<String, String> {
    let mut auth = AuthClient::connect(endpoint.to_string())
        .await
        .map_err(|e| e.to_string())?;
    auth.authenticate(AuthenticateRequest {
        name: user.into(),
        password: password.into(),
    })
    .await
    .map(|r| r.into_inner().token)
    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

async fn range(endpoint: &str, token: &str) -> Answer {
    let mut kv = KvClient::connect(endpoint.to_string())
        .await
        .map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(RangeRequest {
        key: b"a/1".to_vec(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("token", token.parse().map_err(|_| "bad token".to_string())?);
    kv.range(request)
        .await
        .map(|r| r.into_inner().kvs.len())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// What one cluster shows, step by step.
async fn observe(cluster: &Cluster) -> Vec<(&'static str, Answer)> {
    let endpoints = cluster.endpoints();
    set_up(&endpoints[0]).await;
    let mut seen = Vec::new();
    let token = authenticate(&endpoints[0], "alice", "apw")
        .await
        .expect("authenticate");
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    // Issued by member 0, good on every member.
    for (i, endpoint) in endpoints.iter().enumerate() {
        let what = ["member 0", "member 1", "member 2"][i];
        seen.push((what, range(endpoint, &token).await));
    }
    // A token whose signature was changed is refused.
    let mut forged: Vec<char> = token.chars().collect();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    seen.push(("forged", range(&endpoints[1], &forged).await));
    seen.push((
        "wrong password",
        authenticate(&endpoints[1], "alice", "bad").await.map(|_| 0),
    ));
    // etcd-client works unchanged with JWT tokens.
    let mut client = connect_as(&endpoints[2], "alice", "apw", false).await;
    seen.push((
        "etcd-client",
        client
            .get("a/1", None)
            .await
            .map(|r| r.kvs().len())
            .map_err(|e| e.to_string()),
    ));
    // An auth change (a new user) makes tokens issued before it old, on the member that made it.
    let mut root = connect_as(&endpoints[0], "root", "rootpw", false).await;
    root.user_add("carol", "cpw", None).await.expect("user add");
    seen.push(("after an auth change", range(&endpoints[0], &token).await));
    let fresh = authenticate(&endpoints[0], "alice", "apw")
        .await
        .expect("authenticate");
    seen.push(("a new token", range(&endpoints[0], &fresh).await));
    // Past its ttl (3 s; JWT expiry has a resolution of a second) the token is invalid.
    pause(Duration::from_secs(5)).await;
    seen.push(("expired", range(&endpoints[0], &fresh).await));
    seen
}

/// ES256 keys as PEM files in `dir`: (public, private).
fn es256_keys(dir: &std::path::Path) -> (String, String) {
    let pair = rcgen::KeyPair::generate().expect("key");
    let (public, private) = (dir.join("jwt.pub"), dir.join("jwt.key"));
    std::fs::write(&public, pair.public_key_pem()).expect("write");
    std::fs::write(&private, pair.serialize_pem()).expect("write");
    (public.display().to_string(), private.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_work_on_every_member_and_expire_as_etcd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (public, private) = es256_keys(dir.path());
    let flag = format!("jwt,pub-key={public},priv-key={private},sign-method=ES256,ttl=3s");
    let args = vec!["--auth-token".to_string(), flag];
    let mut answers = Vec::new();
    for etcd in [true, false] {
        let cluster = if etcd {
            Cluster::start_etcd(require_tool("etcd"), 3, args.clone())
        } else {
            Cluster::start(ClusterOptions {
                binary: env!("CARGO_BIN_EXE_metastore").into(),
                members: 3,
                engine: "mem".into(),
                extra_args: args.clone(),
                proxy_peers: false,
            })
        }
        .unwrap_or_else(|e| panic!("starting a cluster (etcd: {etcd}): {e}"));
        tokio::task::block_in_place(|| cluster.wait_leader(Duration::from_secs(15)))
            .expect("a leader");
        answers.push(observe(&cluster).await);
    }
    let (etcd, ours) = (&answers[0], &answers[1]);
    assert_eq!(ours, etcd, "MetaStore vs etcd 3.4");
    // Robust facts, so both failing alike cannot pass.
    assert!(ours[..3].iter().all(|(_, a)| a == &Ok(1)), "{ours:?}");
    let answer = |what: &str| {
        ours.iter()
            .find(|(w, _)| *w == what)
            .map(|(_, a)| a.clone())
            .expect("a step")
    };
    assert!(answer("forged").is_err_and(|e| e.contains("invalid auth token")));
    assert!(
        answer("after an auth change").is_err_and(|e| e.contains("revision of auth store is old"))
    );
    assert_eq!(answer("a new token"), Ok(1));
    assert!(answer("expired").is_err_and(|e| e.contains("invalid auth token")));
}
