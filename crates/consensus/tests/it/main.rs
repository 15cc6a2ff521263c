//! A single member end to end: proposals, linearizable reads, restarts, and bounded waits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// The package is `metastore-consensus`; the code knows the library by its short name.
extern crate metastore_consensus as consensus;

use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use consensus::{Member, Node, NodeConfig, ProposeError};
use deadline::{Budgets, Deadline, Layer};
use engine_mem::MemBackend;
use engine_redb::{Durability, Options, RedbBackend};
use mvcc::{Backend, BackendError, Command, PutRequest, Table, Visitor, WriteBatch};

fn member() -> Member {
    Member {
        name: "solo".into(),
        peer_urls: vec!["http://127.0.0.1:2380".into()],
        client_urls: vec![],
    }
}

fn config(dir: &std::path::Path) -> NodeConfig {
    let mut c = NodeConfig::single(7, member(), dir.to_path_buf());
    c.election_timeout = Duration::from_millis(150);
    c.heartbeat = Duration::from_millis(30);
    c
}

fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    })
}

async fn started<B: Backend>(config: NodeConfig, backend: B) -> Node<B> {
    let node = Node::start(config, backend).await.unwrap();
    node.wait_for_leader(Deadline::after(Duration::from_secs(10)))
        .await
        .unwrap();
    node
}

fn value_of<B: Backend>(node: &Node<B>, key: &str) -> Option<Vec<u8>> {
    node.store().get(key.as_bytes()).unwrap().map(|kv| kv.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_apply_and_reads_are_linearizable() {
    let dir = tempfile::tempdir().unwrap();
    let node = started(config(dir.path()), MemBackend::new()).await;
    let d = || Deadline::after(Duration::from_secs(5));
    let (rev, _) = node.propose(put("a", "1"), d()).await.unwrap();
    assert_eq!(rev, 2);
    let (rev, _) = node.propose(put("a", "2"), d()).await.unwrap();
    assert_eq!(rev, 3);
    node.read_index(d()).await.unwrap();
    assert_eq!(value_of(&node, "a").unwrap(), b"2");
    let status = node.status();
    assert_eq!(status.leader, Some(7));
    assert!(status.applied_index >= 3);
    assert_eq!(status.members.len(), 1);
    let refused = node
        .propose(
            Command::Put(PutRequest {
                key: "nope".into(),
                ignore_value: true,
                ..Default::default()
            }),
            d(),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(ProposeError::Command(mvcc::Refusal::KeyNotFound { .. }))
        ),
        "{refused:?}"
    );
    // Many concurrent proposals: group commit, all answered, nothing left waiting.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let n = node.clone();
        tasks.push(tokio::spawn(async move {
            n.propose(put(&format!("k{i}"), "v"), d()).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(node.pending(), 0);
    assert_eq!(node.store().current_revision(), 3 + 200);
    node.shutdown().await.unwrap();
}

/// A proposer that has its answer finds its entry counted as applied in the member's status
/// (what etcd's `proposals_applied` metric and Status's applied index report): openraft's own
/// count follows the apply a moment after the answer, so status alone lagged behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_write_is_counted_as_applied_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = started(config(dir.path()), MemBackend::new()).await;
    let d = || Deadline::after(Duration::from_secs(5));
    let mut behind = Vec::new();
    for i in 0..200 {
        let before = node.status().applied_index;
        node.propose(put(&format!("k{i}"), "v"), d()).await.unwrap();
        let after = node.status().applied_index;
        // One proposal at a time: each is an entry of its own, after `before`.
        if after <= before {
            behind.push((i, before, after));
        }
    }
    assert!(
        behind.is_empty(),
        "applied index not past the answered write (put, before, after): {behind:?}"
    );
    node.shutdown().await.unwrap();
}

/// Concurrent linearizable reads share leadership confirmations, and each still sees every
/// write acknowledged before it began.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_reads_share_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let node = started(config(dir.path()), MemBackend::new()).await;
    let d = || Deadline::after(Duration::from_secs(5));
    let before = node.read_rounds();
    for burst in 0..4usize {
        node.propose(put("k", &burst.to_string()), d())
            .await
            .unwrap();
        // Spawned, so they queue together: a current-thread runtime runs them all once this
        // task waits, before the rounds task takes its queue.
        let reads: Vec<_> = (0..50)
            .map(|_| {
                let n = node.clone();
                tokio::spawn(async move { n.read_index(d()).await.map(|()| value_of(&n, "k")) })
            })
            .collect();
        for r in reads {
            let seen = r.await.unwrap().unwrap().unwrap();
            assert_eq!(
                seen,
                burst.to_string().as_bytes(),
                "a read missed an acknowledged write"
            );
        }
    }
    let rounds = node.read_rounds() - before;
    assert!(
        (4..=12).contains(&rounds),
        "200 reads in 4 bursts took {rounds} rounds"
    );
    node.shutdown().await.unwrap();
}

/// Proposes a put of each key and value, then stops the member; the store's hash at the end.
async fn put_then_stop<B: Backend>(
    node: Node<B>,
    puts: impl IntoIterator<Item = (String, String)>,
) -> mvcc::KvHash {
    for (key, value) in puts {
        node.propose(put(&key, &value), Deadline::after(Duration::from_secs(5)))
            .await
            .unwrap();
    }
    let hash = node.store().hash(0).unwrap();
    node.shutdown().await.unwrap();
    hash
}

async fn restart_keeps_writes<B: Backend>(open: impl Fn() -> B) {
    let dir = tempfile::tempdir().unwrap();
    let node = started(config(dir.path()), open()).await;
    let hash = put_then_stop(node, (0..50).map(|i| (format!("k{i}"), i.to_string()))).await;
    let node = started(config(dir.path()), open()).await;
    // A linearizable barrier: the leader's blank entry commits everything before it.
    node.read_index(Deadline::after(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(node.store().hash(0).unwrap(), hash);
    assert_eq!(value_of(&node, "k49").unwrap(), b"49");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_redb_keeps_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.redb");
    restart_keeps_writes(|| lazy_redb(&path)).await;
}

/// The redb engine as a member opens it: commits synced lazily.
fn lazy_redb(path: &std::path::Path) -> RedbBackend {
    RedbBackend::open(
        path,
        &Options {
            durability: Durability::Lazy,
            ..Options::default()
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_memory_rebuilds_from_the_log() {
    restart_keeps_writes(MemBackend::new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_is_rebuilt_from_snapshot_plus_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.snapshot_count = 20;
    let hash = {
        let node = started(cfg.clone(), MemBackend::new()).await;
        for i in 0..75 {
            node.propose(
                put(&format!("k{}", i % 10), &i.to_string()),
                Deadline::after(Duration::from_secs(5)),
            )
            .await
            .unwrap();
        }
        let hash = node.store().hash(0).unwrap();
        node.shutdown().await.unwrap();
        hash
    };
    let snaps: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        snaps
            .iter()
            .any(|e| e.file_name().to_string_lossy().starts_with("snap-")),
        "a snapshot was taken"
    );
    let node = started(cfg, MemBackend::new()).await;
    node.read_index(Deadline::after(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(node.store().hash(0).unwrap(), hash);
    node.shutdown().await.unwrap();
}

/// `--snapshot-count` counts applied requests, as etcd's does, not Raft entries: the batcher
/// puts every command queued behind a flush into one entry, so under concurrency a count of
/// entries would let the log grow many times past the count before a snapshot cut it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_count_counts_requests_not_batched_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.snapshot_count = 200;
    let node = Arc::new(started(cfg, lazy_redb(&dir.path().join("data.redb"))).await);
    // 400 puts at once: far fewer than 200 entries once batched.
    let puts: Vec<_> = (0..400)
        .map(|i| {
            let node = Arc::clone(&node);
            tokio::spawn(async move {
                node.propose(
                    put(&format!("k{i:03}"), "v"),
                    Deadline::after(Duration::from_secs(10)),
                )
                .await
            })
        })
        .collect();
    for p in puts {
        p.await.unwrap().unwrap();
    }
    let entries = node.status().last_log_index;
    assert!(
        entries < 200,
        "the puts were not batched: {entries} entries"
    );
    // A snapshot is built in the background after the apply that crossed the count.
    let give_up = Instant::now() + Duration::from_secs(10);
    while node.status().snapshot_index == 0 && Instant::now() < give_up {
        deadline::pause(Duration::from_millis(50)).await;
    }
    assert!(
        node.status().snapshot_index > 0,
        "no snapshot after 400 requests in {entries} entries with --snapshot-count 200"
    );
    Arc::try_unwrap(node)
        .ok()
        .unwrap()
        .shutdown()
        .await
        .unwrap();
}

/// Like etcd's db, a persistent engine is its own Raft snapshot: after snapshots were taken
/// and the log purged behind them, the data dir holds no second copy of the store, and a
/// restart still finds every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redb_member_keeps_no_copy_of_its_store_as_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.snapshot_count = 20;
    let path = dir.path().join("data.redb");
    let open = || lazy_redb(&path);
    let value = "v".repeat(4096);
    let node = started(cfg.clone(), open()).await;
    let hash = put_then_stop(node, (0..75).map(|i| (format!("k{i:03}"), value.clone()))).await;
    // 75 values of 4 KiB: 300 KiB of data, none of it copied under snapshots/.
    let snapshots = dir.path().join("snapshots");
    let copies: Vec<(String, u64)> = std::fs::read_dir(&snapshots)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .filter(|(_, len)| *len >= 64 << 10)
        .collect();
    assert!(
        copies.is_empty(),
        "snapshot copies of the store: {copies:?}"
    );
    let node = started(cfg, open()).await;
    node.read_index(Deadline::after(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(node.store().hash(0).unwrap(), hash);
    assert_eq!(value_of(&node, "k074").unwrap(), value.as_bytes());
    node.shutdown().await.unwrap();
}

/// An engine whose writes never return until released: a state machine that never applies.
#[derive(Clone, Default)]
struct Stuck {
    inner: Arc<MemBackend>,
    stuck: Arc<(Mutex<bool>, Condvar)>,
}

impl Stuck {
    fn jam(&self) {
        *self.stuck.0.lock().unwrap() = true;
    }
    fn release(&self) {
        *self.stuck.0.lock().unwrap() = false;
        self.stuck.1.notify_all();
    }
}

struct Unjam(Stuck);

impl Drop for Unjam {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Backend for Stuck {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.get(table, key)
    }
    fn scan(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<(), BackendError> {
        self.inner.scan(table, from, to, visit)
    }
    fn write(&self, batch: WriteBatch) -> Result<(), BackendError> {
        let (lock, cvar) = &*self.stuck;
        let _unjammed = cvar
            .wait_while(lock.lock().unwrap(), |jammed| *jammed)
            .unwrap();
        self.inner.write(batch)
    }
    fn applied(&self) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.applied()
    }
    fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }
    fn replace(&self) -> Result<Box<dyn mvcc::Replacement + '_>, BackendError> {
        self.inner.replace()
    }
}

/// A started node over a [`Stuck`] engine, its proposals waiting at most `budget` for their
/// commit, with one put applied; the guard unjams on the way out even if an assertion fails,
/// since a jammed write would hang the runtime.
async fn stuck_node(dir: &std::path::Path, budget: Duration) -> (Node<Stuck>, Stuck, Unjam) {
    let mut cfg = config(dir);
    cfg.budgets = Budgets::default().with(Layer::Commit, budget);
    let backend = Stuck::default();
    let unjam = Unjam(backend.clone());
    let node = started(cfg, backend.clone()).await;
    node.propose(put("warm", "up"), Deadline::after(Duration::from_secs(5)))
        .await
        .unwrap();
    (node, backend, unjam)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_machine_that_never_applies_times_out_at_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let budget = Duration::from_millis(400);
    let (node, backend, _unjam) = stuck_node(dir.path(), budget).await;
    let handle = tokio::runtime::Handle::current();
    let tasks_before = handle.metrics().num_alive_tasks();
    backend.jam();
    let started_at = Instant::now();
    let mut waits = Vec::new();
    for i in 0..20 {
        let n = node.clone();
        waits.push(tokio::spawn(async move {
            n.propose(put(&format!("x{i}"), "v"), Deadline::none())
                .await
        }));
    }
    for w in waits {
        let err = w.await.unwrap().unwrap_err();
        assert!(
            matches!(err, ProposeError::Timeout(ref e) if e.layer == Layer::Commit),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("etcdserver: request timed out"),
            "{err}"
        );
    }
    let waited = started_at.elapsed();
    assert!(waited >= budget, "answered before the budget: {waited:?}");
    assert!(
        waited < budget + Duration::from_secs(5),
        "answered long after the budget: {waited:?}"
    );
    assert_eq!(
        node.pending(),
        0,
        "timed-out proposals leave no waiter behind"
    );
    // Raft's own tasks come and go (heartbeats, the apply worker); ours must all be gone: the
    // count settles back to where it was, within a bounded wait.
    let mut settle = tokio::time::interval(Duration::from_millis(10));
    let mut alive = handle.metrics().num_alive_tasks();
    for _ in 0..500 {
        if alive <= tasks_before {
            break;
        }
        settle.tick().await;
        alive = handle.metrics().num_alive_tasks();
    }
    assert!(
        alive <= tasks_before,
        "tasks leaked: {alive} alive, {tasks_before} before"
    );
    // A caller that goes away also leaves nothing behind.
    let n = node.clone();
    let abandoned =
        tokio::spawn(async move { n.propose(put("gone", "v"), Deadline::none()).await });
    tokio::task::yield_now().await;
    abandoned.abort();
    let _ = abandoned.await;
    assert_eq!(node.pending(), 0);
    backend.release();
    node.read_index(Deadline::after(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(
        value_of(&node, "x19").unwrap(),
        b"v",
        "the timed-out entries still applied, as in etcd"
    );
    node.shutdown().await.unwrap();
}

/// The apply runs off the async workers, so a stuck apply must not hold the runtime: with one
/// worker, a proposal still times out at its budget and a new task still runs. Were the apply a
/// plain call on the state machine task, the only worker would wait on the jammed write and
/// nothing else would run until the watchdog below frees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_stuck_apply_leaves_the_runtimes_only_worker_free() {
    let dir = tempfile::tempdir().unwrap();
    let (node, backend, _unjam) = stuck_node(dir.path(), Duration::from_millis(300)).await;
    backend.jam();
    // Frees a worker the apply holds, so that the test fails instead of hanging; it stands
    // down once the test is done with the jam.
    let watchdog_fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (done, watching) = std::sync::mpsc::channel::<()>();
    {
        let fired = Arc::clone(&watchdog_fired);
        let backend = backend.clone();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                watching.recv_timeout(Duration::from_secs(20))
            {
                fired.store(true, std::sync::atomic::Ordering::SeqCst);
                backend.release();
            }
        });
    }
    let err = node
        .propose(put("jammed", "v"), Deadline::none())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProposeError::Timeout(ref e) if e.layer == Layer::Commit),
        "{err:?}"
    );
    // A task spawned now runs: the worker is free.
    tokio::spawn(async {}).await.unwrap();
    assert!(
        !watchdog_fired.load(std::sync::atomic::Ordering::SeqCst),
        "the runtime ran only once the watchdog freed the stuck apply"
    );
    drop(done);
    backend.release();
    node.read_index(Deadline::after(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(value_of(&node, "jammed").unwrap(), b"v");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_removing_compacted_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.redb");
    let open = || RedbBackend::open(&path, &Options::default()).unwrap();
    let d = || Deadline::after(Duration::from_secs(5));
    {
        let node = started(config(dir.path()), open()).await;
        for i in 0..400 {
            node.propose(put(&format!("k{}", i % 200), &i.to_string()), d())
                .await
                .unwrap();
        }
        node.shutdown().await.unwrap();
    }
    // The member applied a compaction and removed part of the history when it crashed: the
    // store as that crash leaves it, at the same applied position.
    let (versions, progress) = {
        let store = mvcc::Store::open(open()).unwrap();
        let applied = store.applied().unwrap();
        let compact = Command::Compact(mvcc::CompactRequest {
            revision: store.current_revision(),
            physical: false,
        });
        store.apply(&[compact], applied.as_deref()).unwrap();
        store.compact_physical(100).unwrap();
        (store.versions(), store.compaction_progress())
    };
    assert!(
        !progress.finished() && versions > 250,
        "the crash must come mid-removal: {progress:?}, {versions} versions"
    );
    let node = started(config(dir.path()), open()).await;
    let started_at = Instant::now();
    while node.store().versions() > 200 && started_at.elapsed() < Duration::from_secs(10) {
        let _ = deadline::within(
            Layer::Api,
            Deadline::after(Duration::from_millis(50)),
            std::future::pending::<()>(),
        )
        .await;
    }
    assert_eq!(
        (
            node.store().versions(),
            node.store().compaction_progress().finished()
        ),
        (200, true),
        "the restarted member did not finish removing the compacted history"
    );
    assert_eq!(value_of(&node, "k199").unwrap(), b"399");
    node.shutdown().await.unwrap();
}

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted on drop (needs root, as the
/// power-cut tests need FUSE: a full disk cannot be had otherwise).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("metastore-enospc-")
            .tempdir()
            .unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap_or_else(|e| panic!("running mount: {e}"));
        assert!(
            status.success(),
            "mounting a {mib} MiB tmpfs failed ({status}): this test needs root"
        );
        Self { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a file of zeros until the disk is full; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // Whatever a partial chunk left: below 64 KiB free.
        let _ = f.flush();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a failed test may still hold files open there.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// ENOSPC: once the log's disk is full, writes are refused with a clear error (no panic, no
/// hang, no stopped node); every write acknowledged before stays; once space returns, writes
/// are taken again, and everything acknowledged survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_they_resume_when_space_returns() {
    let disk = SmallDisk::mount(200);
    let data = disk.path().join("data");
    let node = started(config(&data), MemBackend::new()).await;
    let d = || Deadline::after(Duration::from_secs(5));
    let value = "v".repeat(512 << 10);
    let mut acked = Vec::new();
    for i in 0..4 {
        let key = format!("before{i}");
        node.propose(put(&key, &value), d()).await.unwrap();
        acked.push(key);
    }
    let filler = disk.fill();
    // The log's segment is preallocated, so it could still take some writes; but it must
    // refuse before it runs out, and with an error that says why.
    let mut refused = None;
    for i in 0..200 {
        let key = format!("full{i}");
        match node.propose(put(&key, &value), d()).await {
            Ok(_) => acked.push(key),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("200 writes of 512 KiB were all taken on a full disk");
    assert!(
        matches!(refused, ProposeError::DiskFull { .. }),
        "the refusal does not say the disk is full: {refused:?} ({refused})"
    );
    assert!(
        refused.to_string().contains("no space left on device"),
        "{refused}"
    );
    // Refused again while full, and the node keeps serving reads.
    let again = node.propose(put("again", "x"), d()).await;
    assert!(
        matches!(again, Err(ProposeError::DiskFull { .. })),
        "{again:?}"
    );
    node.read_index(d()).await.unwrap();
    for key in &acked {
        assert!(value_of(&node, key).is_some(), "{key} was acknowledged");
    }
    std::fs::remove_file(&filler).unwrap();
    // Space is back: writes are taken again.
    node.propose(put("after", "1"), d()).await.unwrap();
    acked.push("after".into());
    node.shutdown().await.unwrap();
    let node = started(config(&data), MemBackend::new()).await;
    node.read_index(d()).await.unwrap();
    for key in &acked {
        assert!(
            value_of(&node, key).is_some(),
            "{key} was acknowledged, lost at restart"
        );
    }
    node.shutdown().await.unwrap();
}
