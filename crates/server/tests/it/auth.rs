//! Auth (users, roles, permissions, tokens) against etcd 3.4: every `etcdctl auth/user/role`
//! subcommand and every permission-denied path side by side; auth across a restart and to a new
//! member by snapshot; etcd-client's `with_user` and its token refresh after the TTL.

use std::time::{Duration, Instant};

use deadline::pause;
use etcd_client::{
    Client, ConnectOptions, GetOptions, MemberAddOptions, Permission, PermissionType, PutOptions,
};
use kvapi::pb::etcdserverpb::auth_client::AuthClient;
use kvapi::pb::etcdserverpb::kv_client::KvClient;
use kvapi::pb::etcdserverpb::{AuthenticateRequest, RangeRequest};
use testkit::{Cluster, ClusterOptions};
use tonic::Code;

use crate::etcdctl::{require_etcdctl_34, shown, step, with_stdin, Normalizer, Step, Target};
use crate::harness::{Kind, Server};

const ROOT: &str = "--user=root:rootpw";

const ALICE: &str = "--user=alice:apw";
const BOB: &str = "--user=bob:bpw";

/// The commands, in order: set-up and management, then what alice and bob may and may not do,
/// then revocations and deletions.
fn steps() -> Vec<Step> {
    let txn_denied_branch = "value(\"foo\") = \"bar\"\n\nput foo 2\n\nput bar 2\n\n";
    let txn_denied_compare = "value(\"bar\") = \"1\"\n\nget foo\n\nget foo\n\n";
    let txn_nested_ok = "value(\"foo\") = \"bar\"\n\nget foo\n\nget a\n\n";
    vec![
        step(&["auth", "enable"]),
        with_stdin(&["user", "add", "root", "--interactive=false"], "rootpw\n"),
        // etcdctl grants root the root role when the server says it lacks it.
        step(&["auth", "enable"]),
        step(&["user", "list"]),
        step(&["get", "foo"]),
        step(&[ROOT, "get", "foo"]),
        step(&["--user=root:bad", "get", "foo"]),
        step(&["--user=nobody:bad", "get", "foo"]),
        step(&[ROOT, "put", "foo", "bar"]),
        step(&[ROOT, "user", "add", "alice:apw"]),
        step(&[ROOT, "user", "add", "alice:apw"]),
        step(&[ROOT, "user", "add", "bob:bpw"]),
        step(&[ROOT, "user", "add", "nopw", "--no-password"]),
        step(&["--user=nopw:", "get", "foo"]),
        step(&[ROOT, "role", "add", "r1"]),
        step(&[ROOT, "role", "add", "r1"]),
        step(&[ROOT, "role", "add", ""]),
        step(&[ROOT, "role", "add", "rb"]),
        step(&[ROOT, "role", "grant-permission", "r1", "readwrite", "foo"]),
        step(&[
            ROOT,
            "role",
            "grant-permission",
            "r1",
            "read",
            "--prefix",
            "pre",
        ]),
        step(&[
            ROOT,
            "role",
            "grant-permission",
            "r1",
            "write",
            "--from-key",
            "zz",
        ]),
        step(&[ROOT, "role", "grant-permission", "r1", "read", "a", "c"]),
        // The same range again replaces the type.
        step(&[ROOT, "role", "grant-permission", "r1", "read", "foo"]),
        step(&[ROOT, "role", "grant-permission", "rb", "readwrite", "k1"]),
        step(&[
            ROOT,
            "role",
            "grant-permission",
            "rb",
            "read",
            "w",
            "--prefix",
        ]),
        step(&[ROOT, "role", "grant-permission", "nope", "read", "x"]),
        step(&[ROOT, "role", "get", "r1"]),
        step(&[ROOT, "role", "get", "r1", "-w", "json"]),
        step(&[ROOT, "role", "get", "root"]),
        step(&[ROOT, "role", "get", "nope"]),
        step(&[ROOT, "user", "grant-role", "alice", "r1"]),
        step(&[ROOT, "user", "grant-role", "alice", "r1"]),
        step(&[ROOT, "user", "grant-role", "alice", "nope"]),
        step(&[ROOT, "user", "grant-role", "nope", "r1"]),
        step(&[ROOT, "user", "grant-role", "bob", "rb"]),
        step(&[ROOT, "user", "get", "alice"]),
        step(&[ROOT, "user", "get", "alice", "-w", "json"]),
        step(&[ROOT, "user", "get", "alice", "--detail"]),
        step(&[ROOT, "user", "get", "nope"]),
        step(&[ROOT, "user", "list"]),
        step(&[ROOT, "role", "list"]),
        step(&[ROOT, "role", "list", "-w", "json"]),
        // What alice may and may not do.
        step(&[ALICE, "get", "foo"]),
        step(&[ALICE, "put", "foo", "1"]),
        step(&[ALICE, "put", "bar", "1"]),
        step(&[ALICE, "get", "bar"]),
        step(&[ALICE, "get", "pre", "--prefix"]),
        step(&[ALICE, "get", "a", "b"]),
        step(&[ALICE, "get", "a", "d"]),
        step(&[ALICE, "get", "", "--prefix"]),
        step(&[ALICE, "put", "pre1", "x"]),
        step(&[ALICE, "put", "zzz", "x"]),
        step(&[ALICE, "del", "foo"]),
        step(&[ALICE, "del", "zzz"]),
        step(&[ALICE, "del", "zz", "--from-key"]),
        with_stdin(&[ALICE, "txn"], txn_denied_branch),
        with_stdin(&[ALICE, "txn"], txn_denied_compare),
        with_stdin(&[ALICE, "txn"], txn_nested_ok),
        step(&[ALICE, "user", "list"]),
        step(&[ALICE, "role", "list"]),
        step(&[ALICE, "user", "get", "alice"]),
        step(&[ALICE, "user", "get", "bob"]),
        step(&[ALICE, "role", "get", "r1"]),
        step(&[ALICE, "role", "get", "rb"]),
        with_stdin(
            &[ALICE, "user", "passwd", "alice", "--interactive=false"],
            "x\n",
        ),
        step(&[ALICE, "user", "add", "eve:e"]),
        step(&[ALICE, "role", "add", "re"]),
        step(&[ALICE, "auth", "disable"]),
        step(&[ALICE, "member", "list"]),
        step(&[
            ALICE,
            "member",
            "add",
            "x",
            "--peer-urls=http://127.0.0.1:1",
        ]),
        step(&[ALICE, "member", "remove", "1234"]),
        step(&[ALICE, "endpoint", "hashkv"]),
        step(&[ALICE, "defrag"]),
        step(&[ALICE, "alarm", "list"]),
        step(&[ALICE, "compaction", "1"]),
        step(&["endpoint", "hashkv"]),
        step(&["defrag"]),
        step(&["member", "list"]),
        step(&["alarm", "list"]),
        step(&[ROOT, "defrag"]),
        // bob: watch, lock and election on keys he may not touch.
        step(&[BOB, "watch", "k2"]),
        step(&[BOB, "lock", "lk"]),
        step(&[BOB, "elect", "el", "p"]),
        step(&[BOB, "put", "k1", "v"]),
        step(&[BOB, "get", "w", "--prefix"]),
        // Revocations and deletions.
        step(&[ROOT, "role", "revoke-permission", "r1", "foo"]),
        step(&[ROOT, "role", "revoke-permission", "r1", "foo"]),
        step(&[ROOT, "role", "revoke-permission", "r1", "pre", "--prefix"]),
        step(&[ROOT, "role", "revoke-permission", "r1", "zz", "--from-key"]),
        step(&[ROOT, "role", "revoke-permission", "nope", "x"]),
        step(&[ALICE, "get", "foo"]),
        step(&[ROOT, "role", "get", "r1"]),
        step(&[ROOT, "user", "revoke-role", "alice", "r1"]),
        step(&[ROOT, "user", "revoke-role", "alice", "r1"]),
        step(&[ROOT, "user", "revoke-role", "nope", "r1"]),
        with_stdin(
            &[ROOT, "user", "passwd", "alice", "--interactive=false"],
            "newpw\n",
        ),
        with_stdin(
            &[ROOT, "user", "passwd", "nope", "--interactive=false"],
            "newpw\n",
        ),
        step(&[ALICE, "get", "foo"]),
        step(&["--user=alice:newpw", "get", "a"]),
        step(&[ROOT, "role", "delete", "r1"]),
        step(&[ROOT, "role", "delete", "r1"]),
        step(&[ROOT, "user", "get", "bob", "--detail"]),
        step(&[ROOT, "user", "delete", "alice"]),
        step(&[ROOT, "user", "delete", "alice"]),
        step(&[ROOT, "user", "revoke-role", "root", "root"]),
        step(&[ROOT, "role", "delete", "root"]),
        step(&[ROOT, "user", "delete", "root"]),
        step(&[ROOT, "auth", "enable"]),
        step(&[ROOT, "auth", "disable"]),
        step(&["auth", "disable"]),
        step(&["--user=root:rootpw", "get", "foo"]),
        step(&["user", "get", "root"]),
        step(&["user", "delete", "root"]),
        step(&["user", "list"]),
        step(&["role", "list"]),
        step(&["role", "get", "root"]),
        step(&["auth", "enable"]),
    ]
}

/// Every auth command prints the same and exits the same against etcd 3.4 and MetaStore.
#[test]
fn auth_etcdctl_matches_etcd() {
    let etcdctl = require_etcdctl_34();
    let etcd = Target::with_args(Kind::Etcd, etcdctl.clone(), &[]);
    let ours = Target::with_args(Kind::Redb, etcdctl, &[]);
    let norm = Normalizer::new();
    let steps = steps();
    let mut differences = Vec::new();
    for st in &steps {
        let expected = etcd.run(&st.args, &st.stdin, &norm);
        let got = ours.run(&st.args, &st.stdin, &norm);
        if expected != got {
            differences.push(format!(
                "etcdctl {}\n    etcd 3.4:  {}\n    metastore: {}",
                st.args.join(" "),
                shown(&expected),
                shown(&got)
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} etcdctl commands differ from etcd 3.4:\n\n{}",
        differences.len(),
        steps.len(),
        differences.join("\n\n")
    );
}

/// Root, alice (read on `a/`, write on `b`) and auth enabled, through etcd-client.
pub(crate) async fn set_up(endpoint: &str) {
    let mut c = Client::connect([endpoint], None).await.expect("connect");
    c.user_add("root", "rootpw", None).await.expect("add root");
    c.role_add("root").await.expect("add role root");
    c.user_grant_role("root", "root").await.expect("grant root");
    c.user_add("alice", "apw", None).await.expect("add alice");
    c.role_add("ra").await.expect("add role");
    c.role_grant_permission("ra", Permission::read("a/").with_prefix())
        .await
        .expect("grant read");
    c.role_grant_permission("ra", Permission::new(PermissionType::Write, "b"))
        .await
        .expect("grant write");
    c.user_grant_role("alice", "ra").await.expect("grant ra");
    c.put("a/1", "v", None).await.expect("put");
    c.auth_enable().await.expect("auth enable");
}

/// Connects as `user`.
pub(crate) async fn connect_as(
    endpoint: &str,
    user: &str,
    password: &str,
    refresh: bool,
) -> Client {
    let options = ConnectOptions::new()
        .with_user(user, password)
        .with_auto_token_refresh(refresh)
        .with_timeout(Duration::from_secs(10))
        .with_connect_timeout(Duration::from_secs(5));
    Client::connect([endpoint], Some(options))
        .await
        .unwrap_or_else(|e| panic!("connecting as {user} to {endpoint}: {e}"))
}

/// What alice may do, as one comparable line per check.
pub(crate) async fn alice_sees(endpoint: &str) -> Vec<String> {
    let mut c = connect_as(endpoint, "alice", "apw", false).await;
    let mut seen = Vec::new();
    let got = c.get("a/", Some(GetOptions::new().with_prefix())).await;
    seen.push(format!(
        "get a/ prefix: {:?}",
        got.map(|r| r.kvs().len()).map_err(|e| e.to_string())
    ));
    let put = c.put("b", "v", None).await;
    seen.push(format!(
        "put b: {:?}",
        put.map(|_| ()).map_err(|e| e.to_string())
    ));
    let denied = c.put("a/1", "v", None).await;
    seen.push(format!(
        "put a/1: {:?}",
        denied.map(|_| ()).map_err(|e| e.to_string())
    ));
    // Revoking a lease deletes its keys: write permission on each is needed.
    let mut root = connect_as(endpoint, "root", "rootpw", false).await;
    for key in ["b", "a/2"] {
        let lease = root.lease_grant(100, None).await.expect("lease grant").id();
        root.put(key, "v", Some(PutOptions::new().with_lease(lease)))
            .await
            .expect("put with lease");
        let revoked = c.lease_revoke(lease).await;
        seen.push(format!(
            "revoke lease on {key}: {:?}",
            revoked.map(|_| ()).map_err(|e| e.to_string())
        ));
    }
    let mut anonymous = Client::connect([endpoint], None).await.expect("connect");
    let none = anonymous.get("a/1", None).await;
    seen.push(format!(
        "no token: {:?}",
        none.map(|_| ()).map_err(|e| e.to_string())
    ));
    let bad = Client::connect(
        [endpoint],
        Some(ConnectOptions::new().with_user("alice", "wrong")),
    )
    .await;
    seen.push(format!(
        "wrong password: {:?}",
        bad.map(|_| ()).map_err(|e| e.to_string())
    ));
    seen
}

/// Users, roles, permissions and the enabled flag survive a kill and restart on both engines,
/// and answer as etcd 3.4 answers the same calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_survives_a_restart_as_etcd() {
    let etcd = Server::start(Kind::Etcd, &[]);
    set_up(&etcd.endpoint()).await;
    let expected = alice_sees(&etcd.endpoint()).await;
    for kind in [Kind::Redb, Kind::Mem] {
        let mut ours = Server::start(kind, &[]);
        set_up(&ours.endpoint()).await;
        // Killed, not stopped: what was acknowledged must come back from disk.
        tokio::task::block_in_place(|| {
            ours.kill();
            ours.restart();
        });
        let got = alice_sees(&ours.endpoint()).await;
        assert_eq!(
            got, expected,
            "{kind:?} after a restart; etcd answers {expected:#?}"
        );
    }
    let got = expected;
    // Guard against both being wrong the same way.
    let checks: [(&str, &str); 7] = [
        ("get a/ prefix: ", "Ok(1)"),
        ("put b: ", "Ok(())"),
        ("put a/1: ", "etcdserver: permission denied"),
        ("revoke lease on b: ", "Ok(())"),
        ("revoke lease on a/2: ", "etcdserver: permission denied"),
        ("no token: ", "etcdserver: user name is empty"),
        (
            "wrong password: ",
            "etcdserver: authentication failed, invalid user ID or password",
        ),
    ];
    assert_eq!(got.len(), checks.len(), "{got:#?}");
    for (line, (head, has)) in got.iter().zip(checks) {
        assert!(
            line.starts_with(head) && line.contains(has),
            "{line}: want {has}"
        );
    }
}

/// A simple token lives `--auth-token-ttl` unused: afterwards a call with it fails with
/// `invalid auth token` (as in etcd), and etcd-client's automatic refresh gets a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_refused_and_refreshed_as_etcd() {
    let mut answers = Vec::new();
    for kind in [Kind::Etcd, Kind::Redb] {
        let server = Server::start(kind, &["--auth-token-ttl", "2"]);
        set_up(&server.endpoint()).await;
        let mut plain = connect_as(&server.endpoint(), "alice", "apw", false).await;
        let mut refreshing = connect_as(&server.endpoint(), "alice", "apw", true).await;
        let mut seen = Vec::new();
        seen.push(
            plain
                .get("a/1", None)
                .await
                .map(|r| r.kvs().len())
                .map_err(|e| e.to_string()),
        );
        // Used within the TTL, a token lives on: 3 uses one second apart span past 2 s.
        for _ in 0..3 {
            pause(Duration::from_secs(1)).await;
            seen.push(
                plain
                    .get("a/1", None)
                    .await
                    .map(|r| r.kvs().len())
                    .map_err(|e| e.to_string()),
            );
        }
        // Unused past the TTL (etcd sweeps once a second): gone.
        let idle = Instant::now();
        pause(Duration::from_secs(4)).await;
        assert!(idle.elapsed() >= Duration::from_secs(4));
        seen.push(
            plain
                .get("a/1", None)
                .await
                .map(|r| r.kvs().len())
                .map_err(|e| e.to_string()),
        );
        seen.push(
            refreshing
                .get("a/1", None)
                .await
                .map(|r| r.kvs().len())
                .map_err(|e| e.to_string()),
        );
        answers.push(seen);
    }
    assert_eq!(answers[1], answers[0], "MetaStore vs etcd 3.4");
    let ours = &answers[1];
    assert!(ours[..4].iter().all(|a| a == &Ok(1)), "{ours:?}");
    assert!(
        ours[4]
            .as_ref()
            .is_err_and(|e| e.contains("etcdserver: invalid auth token")),
        "{ours:?}"
    );
    assert_eq!(ours[5], Ok(1), "the refreshing client re-authenticated");
}

/// A member added after auth was set up gets it by snapshot (the log before it is purged), and
/// a token from one member works on another, as etcd 3.4's simple tokens do (checked by hand
/// against a 3-member etcd 3.4: tokens are assigned in the apply, on every member).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_reaches_a_new_member_by_snapshot() {
    let mut cluster = Cluster::start(ClusterOptions {
        binary: env!("CARGO_BIN_EXE_metastore").into(),
        members: 3,
        engine: "redb".into(),
        extra_args: vec!["--snapshot-count".into(), "100".into()],
        proxy_peers: false,
    })
    .unwrap_or_else(|e| panic!("starting a cluster: {e}"));
    let leader = tokio::task::block_in_place(|| cluster.wait_leader(Duration::from_secs(15)))
        .expect("leader");
    let first = cluster.member(leader).endpoint();
    set_up(&first).await;
    let mut root = connect_as(&first, "root", "rootpw", true).await;
    for i in 0..400 {
        let mut tries = 0;
        while let Err(e) = root.put(format!("a/{i}"), "v", None).await {
            tries += 1;
            assert!(tries < 50, "put: {e}");
            pause(Duration::from_millis(100)).await;
        }
    }
    let new = cluster.prepare_member();
    root.member_add(
        [cluster.member(new).peer_url()],
        Some(MemberAddOptions::new().with_is_learner()),
    )
    .await
    .expect("member add as root");
    tokio::task::block_in_place(|| cluster.start_prepared(new)).expect("start the new member");
    let endpoint = cluster.member(new).endpoint();
    let started = Instant::now();
    loop {
        if cluster.metric(new, "metastore_snapshots_installed_total") >= Some(1.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no snapshot installed: {}",
            cluster.log_tail(new)
        );
        pause(Duration::from_millis(200)).await;
    }
    // alice authenticates against the new member: her user, password hash and role came in the
    // snapshot.
    let mut alice = connect_as(&endpoint, "alice", "apw", false).await;
    let got = alice
        .get("a/1", Some(GetOptions::new().with_serializable()))
        .await
        .map(|r| r.kvs().len());
    assert_eq!(got.map_err(|e| e.to_string()), Ok(1));
    let denied = alice.put("a/1", "x", None).await.map(|_| ());
    assert!(
        denied
            .as_ref()
            .is_err_and(|e| e.to_string().contains("permission denied")),
        "{denied:?}"
    );
    // A token from the first member works on the new one; an unknown one does not.
    let token = {
        let mut auth = AuthClient::connect(first.clone()).await.expect("connect");
        auth.authenticate(AuthenticateRequest {
            name: "alice".into(),
            password: "apw".into(),
        })
        .await
        .expect("authenticate")
        .into_inner()
        .token
    };
    let mut kv = KvClient::connect(endpoint.clone()).await.expect("connect");
    for (token, want) in [
        (token.as_str(), Ok(1)),
        ("unknownTokenXyzw.1", Err(Code::Unauthenticated)),
    ] {
        let mut request = tonic::Request::new(RangeRequest {
            key: b"a/1".to_vec(),
            serializable: true,
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("token", token.parse().expect("metadata value"));
        let got = kv.range(request).await;
        assert_eq!(
            got.as_ref()
                .map(|r| r.get_ref().kvs.len())
                .map_err(|e| e.code()),
            want,
            "{got:?}"
        );
        if let Err(e) = got {
            assert_eq!(e.message(), "etcdserver: invalid auth token");
        }
    }
    let mut anonymous = Client::connect([endpoint.as_str()], None)
        .await
        .expect("connect");
    let none = anonymous
        .get("a/1", Some(GetOptions::new().with_serializable()))
        .await
        .map(|_| ());
    assert!(
        none.as_ref()
            .is_err_and(|e| e.to_string().contains("user name is empty")),
        "auth is enabled on the new member: {none:?}"
    );
}

/// `--auth-token jwt,...` with key files that cannot be read is refused at start, naming the
/// flag, rather than run with simple tokens; a bad `--bcrypt-cost` too.
#[test]
fn unsupported_auth_flags_are_refused_naming_them() {
    for (args, named) in [
        (
            vec![
                "--auth-token",
                "jwt,pub-key=a.pub,priv-key=a,sign-method=RS256",
            ],
            "--auth-token jwt",
        ),
        (vec!["--bcrypt-cost", "3"], "--bcrypt-cost"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_metastore"))
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--listen-client-urls=http://127.0.0.1:0")
            .arg("--listen-peer-urls=http://127.0.0.1:0")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running metastore");
        // Refused at start: it must exit by itself, promptly.
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{args:?}: metastore kept running");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        assert!(!status.success(), "{args:?} started");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}
