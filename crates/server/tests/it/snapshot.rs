//! Snapshots in etcd's format, both ways: MetaStore's snapshot restored by etcd 3.4's own
//! tools and served by etcd, etcd's snapshot and data dir restored by MetaStore, and a snapshot
//! taken under writes being one point in time.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, CompactionOptions, GetOptions, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp,
};

use deadline::{Deadline, Layer};

use crate::auth::{alice_sees, connect_as, set_up};
use crate::harness::{require_tool, Kind, Server};
use deadline::pause;
use testkit::{Cluster, ClusterOptions};

/// Longest one tool run may take.
const TOOL_LIMIT: Duration = Duration::from_secs(60);

/// Runs `program` with `args` within [`TOOL_LIMIT`]; (exit success, stdout, stderr).
fn run(program: &Path, args: &[&str]) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_path = dir.path().join("out");
    let err_path = dir.path().join("err");
    let mut child = Command::new(program)
        .args(args)
        .env_remove("ETCDCTL_API")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("out file"))
        .stderr(std::fs::File::create(&err_path).expect("err file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > TOOL_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} {args:?} took over {TOOL_LIMIT:?}", program.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.success(),
        std::fs::read_to_string(out_path).unwrap_or_default(),
        std::fs::read_to_string(err_path).unwrap_or_default(),
    )
}

fn etcdctl() -> std::path::PathBuf {
    require_tool("etcdctl")
}

fn metastore() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_metastore"))
}

/// `etcdctl snapshot save` from `server` into `file`.
fn save(server: &Server, file: &Path) {
    save_with(server, file, &[]);
}

/// `etcdctl snapshot save` from `server` into `file`, with more etcdctl flags (a user).
fn save_with(server: &Server, file: &Path, flags: &[&str]) {
    let endpoint = server.endpoint();
    let mut args = vec!["--endpoints", &endpoint];
    args.extend_from_slice(flags);
    args.extend(["snapshot", "save", file.to_str().expect("path")]);
    let (ok, out, err) = run(&etcdctl(), &args);
    assert!(ok, "snapshot save from {:?}: {out} {err}", server.kind());
}

/// `etcdctl snapshot status -w json`: (revision, totalKey).
fn status(file: &Path) -> (i64, i64) {
    let (ok, out, err) = run(
        &etcdctl(),
        &[
            "snapshot",
            "status",
            file.to_str().expect("path"),
            "-w",
            "json",
        ],
    );
    assert!(ok, "snapshot status: {out} {err}");
    let field = |name: &str| -> i64 {
        let at = out
            .find(&format!("\"{name}\":"))
            .unwrap_or_else(|| panic!("{name} in {out}"));
        out[at + name.len() + 3..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("{name} in {out}"))
    };
    (field("revision"), field("totalKey"))
}

/// The restore flags for the harness's member `t` at `peer`.
fn member_flags<'a>(dir: &'a str, peer: &'a str, cluster: &'a str) -> Vec<&'a str> {
    vec![
        "--data-dir",
        dir,
        "--name",
        "t",
        "--initial-cluster",
        cluster,
        "--initial-advertise-peer-urls",
        peer,
    ]
}

/// A history with every kind of version: overwrites, a delete, a two-put txn (sub revisions),
/// a lease with a key, enough keys for branch pages, and a compaction. Returns the compaction
/// point.
async fn write_history(c: &mut Client) -> i64 {
    c.put("a", "1", None).await.expect("put");
    c.put("b", "2", None).await.expect("put");
    c.put("a", "3", None).await.expect("put");
    let lease = c.lease_grant(600, None).await.expect("grant").id();
    c.put("c", "4", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put");
    c.delete("b", None).await.expect("delete");
    c.txn(Txn::new().and_then([TxnOp::put("x", "10", None), TxnOp::put("y", "11", None)]))
        .await
        .expect("txn");
    for i in 0..400 {
        c.put(format!("k/{:03}", i % 250), vec![b'v'; 100 + i], None)
            .await
            .expect("put");
    }
    let compacted = c
        .put("z", "12", None)
        .await
        .expect("put")
        .header()
        .expect("h")
        .revision();
    c.delete("k/1", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .expect("delete");
    c.put("a", "5", None).await.expect("put");
    c.compact(compacted, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    compacted
}

/// A key-value as compared: key, create and mod revision, version, value, lease.
type Kv = (Vec<u8>, i64, i64, i64, Vec<u8>, i64);

fn as_kv(kv: &etcd_client::KeyValue) -> Kv {
    (
        kv.key().to_vec(),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.value().to_vec(),
        kv.lease(),
    )
}

/// Everything a client sees of a store at `revision` (0: now): each key with its revisions,
/// version, value and lease; the leases with their granted TTL and keys.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    revision: i64,
    kvs: Vec<Kv>,
    leases: Vec<(i64, i64, Vec<Vec<u8>>)>,
}

async fn seen(c: &mut Client, revision: i64) -> Seen {
    let got = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_revision(revision)),
        )
        .await
        .expect("get all");
    let kvs = got.kvs().iter().map(as_kv).collect();
    let mut leases = Vec::new();
    for l in c.leases().await.expect("leases").leases() {
        let ttl = c
            .lease_time_to_live(l.id(), Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("ttl");
        leases.push((l.id(), ttl.granted_ttl(), ttl.keys().to_vec()));
    }
    leases.sort();
    Seen {
        revision: if revision == 0 {
            got.header().expect("header").revision()
        } else {
            revision
        },
        kvs,
        leases,
    }
}

/// Whether a read below `compacted` is refused as compacted.
async fn compacted_below(c: &mut Client, compacted: i64) -> bool {
    c.get("a", Some(GetOptions::new().with_revision(compacted - 1)))
        .await
        .is_err_and(|e| {
            e.to_string()
                .contains("required revision has been compacted")
        })
}

/// MetaStore's snapshot: `etcdctl snapshot status` reads it as it reads etcd's of the same
/// writes, and etcd 3.4 restored from it (`etcdctl snapshot restore`) serves every key,
/// revision, version and lease, and the compaction point.
#[tokio::test]
async fn etcd_restores_our_snapshot() {
    let files = tempfile::tempdir().expect("temp dir");
    let ours = files.path().join("metastore.db");
    let theirs = files.path().join("etcd.db");

    let ms = Server::start(Kind::Redb, &[]);
    let mut c = ms.client().await;
    let compacted = write_history(&mut c).await;
    let expected = seen(&mut c, 0).await;
    save(&ms, &ours);
    let etcd = Server::start(Kind::Etcd, &[]);
    let mut e = etcd.client().await;
    write_history(&mut e).await;
    save(&etcd, &theirs);
    assert_eq!(
        status(&ours),
        status(&theirs),
        "snapshot status: (revision, totalKey) of the same writes"
    );
    assert_eq!(status(&ours).0, expected.revision);

    let restored = restored_from(Kind::Etcd, &etcdctl(), &ours);
    let mut r = restored.client().await;
    assert_eq!(seen(&mut r, 0).await, expected);
    assert!(compacted_below(&mut r, compacted).await);
    assert_eq!(
        seen(&mut r, compacted).await.kvs,
        seen(&mut c, compacted).await.kvs,
        "history from the compaction point on"
    );
}

/// etcd's snapshot restored by `metastore snapshot restore` and served by MetaStore.
#[tokio::test]
async fn we_restore_etcds_snapshot() {
    let files = tempfile::tempdir().expect("temp dir");
    let file = files.path().join("etcd.db");
    let etcd = Server::start(Kind::Etcd, &[]);
    let mut e = etcd.client().await;
    let compacted = write_history(&mut e).await;
    let expected = seen(&mut e, 0).await;
    let at_compaction = seen(&mut e, compacted).await;
    save(&etcd, &file);

    let restored = Server::start_prepared(Kind::Redb, &[], |dir, peer| {
        let cluster = format!("t={peer}");
        let mut args = vec!["snapshot", "restore", file.to_str().expect("path")];
        args.extend(member_flags(dir.to_str().expect("path"), peer, &cluster));
        let (ok, out, err) = run(&metastore(), &args);
        assert!(ok, "metastore snapshot restore: {out} {err}");
        // The same again: the data dir exists now, refused as etcdctl refuses.
        let (ok, _, err) = run(&metastore(), &args);
        assert!(!ok && err.contains("exists"), "{err}");
    });
    let mut r = restored.client().await;
    assert_eq!(seen(&mut r, 0).await, expected);
    assert!(compacted_below(&mut r, compacted).await);
    assert_eq!(seen(&mut r, compacted).await, at_compaction);
    let next = r
        .put("new", "1", None)
        .await
        .expect("put")
        .header()
        .expect("h")
        .revision();
    assert_eq!(
        next,
        expected.revision + 1,
        "writes go on from etcd's revision"
    );

    // A damaged file is refused with etcdctl's text, and leaves no data dir behind.
    let mut bytes = std::fs::read(&file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    let bad = files.path().join("bad.db");
    std::fs::write(&bad, bytes).expect("write");
    let dir = files.path().join("never");
    let (ok, _, err) = run(
        &metastore(),
        &[
            "snapshot",
            "restore",
            bad.to_str().expect("path"),
            "--data-dir",
            dir.to_str().expect("path"),
        ],
    );
    assert!(!ok && err.contains("expected sha256"), "{err}");
    assert!(!dir.exists());
}

/// A `kind` member started on what `tool snapshot restore` (etcdctl's or ours) made of `file`.
fn restored_from(kind: Kind, tool: &Path, file: &Path) -> Server {
    Server::start_prepared(kind, &[], |dir, peer| {
        let cluster = format!("t={peer}");
        let mut args = vec!["snapshot", "restore", file.to_str().expect("path")];
        args.extend(member_flags(dir.to_str().expect("path"), peer, &cluster));
        let (ok, out, err) = run(tool, &args);
        assert!(ok, "{} snapshot restore: {out} {err}", tool.display());
    })
}

/// A member started on what `metastore migrate-etcd` made of etcd's data dir `source`, and
/// what the tool wrote to stderr.
fn migrate(source: &Path) -> (Server, String) {
    let mut stderr = String::new();
    let migrated = Server::start_prepared(Kind::Redb, &[], |dir, peer| {
        let cluster = format!("t={peer}");
        let mut args = vec![
            "migrate-etcd",
            "--etcd-data-dir",
            source.to_str().expect("path"),
        ];
        args.extend(member_flags(dir.to_str().expect("path"), peer, &cluster));
        let (ok, out, err) = run(&metastore(), &args);
        assert!(ok, "metastore migrate-etcd: {out} {err}");
        stderr = err;
    });
    (migrated, stderr)
}

/// A stopped etcd 3.4 member's data dir migrated with `metastore migrate-etcd`.
#[tokio::test]
async fn we_migrate_an_etcd_data_dir() {
    let mut etcd = Server::start(Kind::Etcd, &[]);
    let mut e = etcd.client().await;
    write_history(&mut e).await;
    let expected = seen(&mut e, 0).await;
    drop(e);
    assert!(
        etcd.terminate(Duration::from_secs(20)).is_some(),
        "etcd stops on SIGTERM"
    );
    let (migrated, _) = migrate(&etcd.data_dir());
    let mut m = migrated.client().await;
    assert_eq!(seen(&mut m, 0).await, expected);
}

/// An etcd killed before its backend commit: its database lacks the last writes, its WAL has
/// them. `metastore migrate-etcd` replays the WAL after the database's consistent index: every
/// acknowledged key, revision, lease and auth change is there, and the result equals what etcd
/// itself recovers when restarted on the same data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_migrate_a_killed_etcd_replaying_its_wal() {
    // etcd commits its database only every hour here (its default is 100 ms): killed, the
    // writes after its start are in the WAL alone.
    let mut crashed = Server::start(
        Kind::Etcd,
        &[
            "--backend-batch-interval",
            "1h",
            "--backend-batch-limit",
            "1000000",
        ],
    );
    let mut e = crashed.client().await;
    write_history(&mut e).await;
    let lease = e.lease_grant(900, None).await.expect("grant").id();
    e.put("late", "1", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put");
    e.txn(Txn::new().and_then([TxnOp::put("t1", "a", None), TxnOp::delete("x", None)]))
        .await
        .expect("txn");
    e.user_add("u", "upw", None).await.expect("user add");
    e.role_add("r").await.expect("role add");
    e.user_grant_role("u", "r").await.expect("grant");
    let acked = seen(&mut e, 0).await;
    drop(e);
    crashed.kill();
    let db = crashed.data_dir().join("member").join("snap").join("db");
    let (in_db, _) = status(&db);
    assert!(
        in_db < acked.revision,
        "etcd's database is at {in_db}, not behind the acknowledged {}: nothing is WAL-only",
        acked.revision
    );

    let (migrated, err) = migrate(&crashed.data_dir());
    assert!(err.contains("requests replayed"), "{err}");
    let mut m = migrated.client().await;
    let got = seen(&mut m, 0).await;
    assert_eq!(got, acked, "every acknowledged write, at etcd's revisions");
    let roles = m.user_get("u").await.expect("user get").roles().to_vec();
    assert_eq!(roles, vec!["r".to_string()]);

    // etcd's own recovery of the same data dir is the oracle.
    crashed.restart();
    let mut r = crashed.client().await;
    assert_eq!(seen(&mut r, 0).await, got, "etcd restarted on its data dir");
    assert_eq!(
        r.user_get("u").await.expect("user get").roles().to_vec(),
        roles
    );
}

/// A snapshot taken while writes go on is the store at one revision: etcd restored from it
/// serves exactly what MetaStore served at the revision the snapshot says.
#[tokio::test]
async fn a_snapshot_under_writes_is_one_point_in_time() {
    let ms = Server::start(Kind::Redb, &[]);
    let mut c = ms.client().await;
    // About 3 MiB (under the client's 4 MiB answer limit): about a hundred chunks, two passes.
    for i in 0..3000 {
        c.put(format!("k/{i:04}"), vec![b'0'; 1000], None)
            .await
            .expect("put");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let landing = Arc::new(tokio::sync::Notify::new());
    let writer = {
        let (stop, writes, landing) =
            (Arc::clone(&stop), Arc::clone(&writes), Arc::clone(&landing));
        let mut w = ms.client().await;
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k/{:04}", i % 3000);
                w.put(key, format!("{i}").repeat(50), None)
                    .await
                    .expect("put");
                w.put("counter", i.to_string(), None).await.expect("put");
                writes.fetch_add(1, Ordering::Relaxed);
                if i == 20 {
                    landing.notify_one();
                }
                i += 1;
            }
        })
    };
    // Writes are landing before the snapshot starts, and go on until it ends.
    deadline::within(
        Layer::Api,
        Deadline::after(Duration::from_secs(20)),
        landing.notified(),
    )
    .await
    .expect("the writer is stuck");
    let files = tempfile::tempdir().expect("temp dir");
    let file = files.path().join("load.db");
    let before = writes.load(Ordering::Relaxed);
    let saved = {
        let (ms_endpoint, file) = (ms.endpoint(), file.clone());
        tokio::task::spawn_blocking(move || {
            run(
                &etcdctl(),
                &[
                    "--endpoints",
                    &ms_endpoint,
                    "snapshot",
                    "save",
                    file.to_str().expect("path"),
                ],
            )
        })
        .await
        .expect("join")
    };
    let during = writes.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    assert!(
        saved.0,
        "snapshot save under writes: {} {}",
        saved.1, saved.2
    );
    assert!(during > 0, "no write landed while the snapshot streamed");
    let (revision, _) = status(&file);
    let expected = seen(&mut c, revision).await;
    assert!(
        c.get("counter", None)
            .await
            .expect("get")
            .header()
            .expect("h")
            .revision()
            > revision,
        "writes went on past the snapshot's revision"
    );

    let restored = restored_from(Kind::Etcd, &etcdctl(), &file);
    let mut r = restored.client().await;
    let got = seen(&mut r, 0).await;
    assert_eq!(got.revision, revision);
    assert_eq!(got.kvs.len(), expected.kvs.len());
    assert!(
        got.kvs == expected.kvs,
        "the restored store differs from MetaStore at {revision}"
    );
}

/// A client that stops reading a snapshot is cut off once a chunk waits longer than the api
/// budget (so its hold on compaction ends), and the member goes on serving.
#[tokio::test]
async fn a_stalled_snapshot_reader_is_cut_off() {
    let ms = Server::start(Kind::Redb, &["--request-timeout", "5s"]);
    let mut c = ms.client().await;
    // About 8 MiB: more than the connection's flow-control windows and the queued chunks.
    for t in 0..125 {
        let puts: Vec<TxnOp> = (0..64)
            .map(|i| TxnOp::put(format!("k/{t:03}/{i:02}"), vec![b'0'; 1000], None))
            .collect();
        c.txn(Txn::new().and_then(puts)).await.expect("txn");
    }
    let mut stalled = c.snapshot().await.expect("snapshot");
    let first = stalled
        .message()
        .await
        .expect("first chunk")
        .expect("a chunk");
    assert!(!first.blob().is_empty());
    let began = Instant::now();
    while !ms.log_tail().contains("took no chunk") {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "the stalled snapshot was not cut off; log:\n{}",
            ms.log_tail()
        );
        pause(Duration::from_millis(100)).await;
    }
    drop(stalled);
    let files = tempfile::tempdir().expect("temp dir");
    let file = files.path().join("after.db");
    save(&ms, &file);
    let now = c
        .get("k/000/00", None)
        .await
        .expect("get")
        .header()
        .expect("h")
        .revision();
    assert_eq!(status(&file).0, now, "a snapshot after it is whole");
}

/// The auth state as root sees it: each user with its roles, each role
/// with its permissions (type, key, range end).
async fn auth_view(endpoint: &str) -> Vec<String> {
    let mut c = connect_as(endpoint, "root", "rootpw", false).await;
    // Whether auth is on shows in alice_sees (a request without a token is refused).
    let mut view = Vec::new();
    for user in c.user_list().await.expect("user list").users() {
        let roles = c.user_get(user).await.expect("user get").roles().to_vec();
        view.push(format!("user {user}: {roles:?}"));
    }
    for role in c.role_list().await.expect("role list").roles() {
        let perms: Vec<String> = c
            .role_get(role)
            .await
            .expect("role get")
            .permissions()
            .iter()
            .map(|p| format!("{:?} {:?}..{:?}", p.get_type(), p.key(), p.range_end()))
            .collect();
        view.push(format!("role {role}: {perms:?}"));
    }
    view
}

/// Users, roles, permissions, password hashes and the enabled flag travel in the snapshot both
/// ways: etcd 3.4 restored from MetaStore's snapshot, and MetaStore restored from etcd's, each
/// let the same users in with the same passwords and allow and refuse what the source did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_travels_in_snapshots_both_ways() {
    const ROOT: &str = "--user=root:rootpw";
    let files = tempfile::tempdir().expect("temp dir");
    for (from, to) in [(Kind::Redb, Kind::Etcd), (Kind::Etcd, Kind::Redb)] {
        let file = files.path().join(format!("{from:?}.db"));
        let source = Server::start(from, &[]);
        set_up(&source.endpoint()).await;
        let expected = auth_view(&source.endpoint()).await;
        assert!(expected.len() >= 4, "{expected:?}");
        save_with(&source, &file, &[ROOT]);
        let tool = if to == Kind::Etcd {
            etcdctl()
        } else {
            metastore()
        };
        let restored = restored_from(to, &tool, &file);
        assert_eq!(
            auth_view(&restored.endpoint()).await,
            expected,
            "{to:?} restored from {from:?}'s snapshot"
        );
        // The restored member checks the source's password hashes and permissions.
        assert_eq!(
            alice_sees(&restored.endpoint()).await,
            alice_sees(&source.endpoint()).await,
            "{to:?} restored from {from:?}'s snapshot"
        );
    }
}

/// The key-values a member serves from its own store (a serializable read), and its revision.
async fn local_kvs(endpoint: &str) -> (i64, Vec<Kv>) {
    let mut c = Client::connect([endpoint], None).await.expect("connect");
    let got = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_serializable()),
        )
        .await
        .expect("serializable get");
    let kvs = got.kvs().iter().map(as_kv).collect();
    (got.header().expect("header").revision(), kvs)
}

/// One etcd snapshot restored into each of three members with `metastore snapshot restore`
/// (`--name`, `--initial-cluster`, `--initial-advertise-peer-urls` as for etcdctl), the three
/// started as one cluster: every member serves every key at etcd's revisions from its own
/// store, the cluster elects a leader, and writes go on from the snapshot's revision on all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_snapshot_restored_into_three_members_makes_a_cluster() {
    let files = tempfile::tempdir().expect("temp dir");
    let file = files.path().join("etcd.db");
    let etcd = Server::start(Kind::Etcd, &[]);
    let mut e = etcd.client().await;
    write_history(&mut e).await;
    let expected = seen(&mut e, 0).await;
    save(&etcd, &file);
    drop(e);
    drop(etcd);

    // A cluster's ports and names; its members' data is replaced by the restored one.
    let mut cluster = Cluster::start(ClusterOptions {
        binary: metastore(),
        members: 3,
        engine: "redb".into(),
        extra_args: Vec::new(),
        proxy_peers: false,
    })
    .unwrap_or_else(|e| panic!("starting a cluster: {e}"));
    let initial: Vec<String> = cluster
        .members()
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect();
    let initial = initial.join(",");
    for i in 0..3 {
        cluster.kill(i);
    }
    for i in 0..3 {
        let dir = cluster.data_dir(i);
        std::fs::remove_dir_all(&dir).expect("remove the old data dir");
        let (name, peer) = (cluster.member(i).name.clone(), cluster.member(i).peer_url());
        let (ok, out, err) = run(
            &metastore(),
            &[
                "snapshot",
                "restore",
                file.to_str().expect("path"),
                "--data-dir",
                dir.to_str().expect("path"),
                "--name",
                &name,
                "--initial-cluster",
                &initial,
                "--initial-advertise-peer-urls",
                &peer,
            ],
        );
        assert!(ok, "restore for {name}: {out} {err}");
    }
    tokio::task::block_in_place(|| {
        for i in 0..3 {
            cluster.respawn(i).expect("respawn");
        }
        for i in 0..3 {
            cluster
                .wait_healthy(i)
                .unwrap_or_else(|e| panic!("member {i}: {e}\n{}", cluster.log_tail(i)));
        }
        cluster
            .wait_leader(Duration::from_secs(20))
            .expect("a leader");
    });
    let endpoints = cluster.endpoints();
    for endpoint in &endpoints {
        assert_eq!(
            local_kvs(endpoint).await,
            (expected.revision, expected.kvs.clone()),
            "{endpoint} serves the snapshot from its own store"
        );
    }
    let mut c = Client::connect(endpoints.clone(), None)
        .await
        .expect("connect");
    assert_eq!(seen(&mut c, 0).await, expected, "through the cluster");
    let next = c
        .put("after", "1", None)
        .await
        .expect("put")
        .header()
        .expect("h")
        .revision();
    assert_eq!(next, expected.revision + 1);
    for endpoint in &endpoints {
        let began = Instant::now();
        while local_kvs(endpoint).await.0 < next {
            assert!(
                began.elapsed() < Duration::from_secs(20),
                "{endpoint} did not apply revision {next}"
            );
            pause(Duration::from_millis(50)).await;
        }
    }
}
