//! Watch, through the `etcd-client` crate, through etcdctl and through a raw gRPC client:
//! etcd's guarantees (ordered, unique, atomic, reliable, resumable — also across a restart —,
//! bookmarkable), prev_kv, filters, several watches on one stream, cancel, compaction. The
//! scenarios whose exact answers matter also run against etcd 3.4 and must answer the same.
//! Last, a client that reads nothing must cost the server neither its write speed nor its
//! memory, and is cut off at its watch-send budget.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use deadline::{Deadline, Layer};
use etcd_client::{
    Client, DeleteOptions, EventType, GetOptions, KeyValue, Txn, TxnOp, WatchOptions,
    WatchResponse, WatchStream,
};

use crate::harness::{Kind, Server};

/// Longest a test waits for one watch response it expects.
const RECV_LIMIT: Duration = Duration::from_secs(10);

/// A key-value as a watch or a range shows it: (value, create_revision, mod_revision, version).
type Kv = (String, i64, i64, i64);

/// One event, comparable: ordered by revision, then key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Ev {
    rev: i64,
    key: String,
    put: bool,
    /// The event's kv: value, create_revision, version (a delete has none of them).
    value: String,
    create: i64,
    version: i64,
    prev: Option<Kv>,
}

impl fmt::Display for Ev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.put { "PUT" } else { "DELETE" };
        write!(
            f,
            "{kind}@{} {}={:?} c{} v{}",
            self.rev, self.key, self.value, self.create, self.version
        )?;
        if let Some((value, create, modified, version)) = &self.prev {
            write!(f, " prev {value:?} c{create} m{modified} v{version}")?;
        }
        Ok(())
    }
}

fn kv_of(kv: &KeyValue) -> Kv {
    (
        String::from_utf8_lossy(kv.value()).into_owned(),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
    )
}

/// One watch response, comparable.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Resp {
    id: i64,
    created: bool,
    canceled: bool,
    compact: i64,
    reason: String,
    /// The header's revision.
    rev: i64,
    events: Vec<Ev>,
}

impl Resp {
    fn is_progress(&self) -> bool {
        !self.created && !self.canceled && self.events.is_empty()
    }
}

impl fmt::Display for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "id={} rev={}", self.id, self.rev)?;
        if self.created {
            write!(f, " created")?;
        }
        if self.canceled {
            write!(f, " canceled")?;
        }
        if self.compact != 0 {
            write!(f, " compact_revision={}", self.compact)?;
        }
        if !self.reason.is_empty() {
            write!(f, " reason={:?}", self.reason)?;
        }
        if !self.events.is_empty() {
            let events: Vec<String> = self.events.iter().map(Ev::to_string).collect();
            write!(f, " [{}]", events.join("; "))?;
        }
        Ok(())
    }
}

fn resp(r: &WatchResponse) -> Resp {
    Resp {
        id: r.watch_id(),
        created: r.created(),
        canceled: r.canceled(),
        compact: r.compact_revision(),
        reason: r.cancel_reason().to_string(),
        rev: r.header().map_or(0, |h| h.revision()),
        events: r
            .events()
            .iter()
            .map(|e| {
                let kv = e.kv().expect("every event has a kv");
                Ev {
                    rev: kv.mod_revision(),
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    put: e.event_type() == EventType::Put,
                    value: String::from_utf8_lossy(kv.value()).into_owned(),
                    create: kv.create_revision(),
                    version: kv.version(),
                    prev: e.prev_kv().map(kv_of),
                }
            })
            .collect(),
    }
}

/// The next response; panics when none comes within [`RECV_LIMIT`] or the stream ends.
async fn recv(s: &mut WatchStream, what: &str) -> Resp {
    match deadline::within(Layer::Api, Deadline::after(RECV_LIMIT), s.message()).await {
        Ok(Ok(Some(r))) => resp(&r),
        Ok(Ok(None)) => panic!("{what}: the watch stream ended"),
        Ok(Err(e)) => panic!("{what}: the watch stream failed: {e}"),
        Err(_) => panic!("{what}: no watch response within {RECV_LIMIT:?}"),
    }
}

/// Reads until every `(watch id, revision)` in `until` has seen an event at or past that
/// revision; returns every response read, in order.
async fn collect_until(s: &mut WatchStream, until: &[(i64, i64)], what: &str) -> Vec<Resp> {
    let mut got = Vec::new();
    let mut reached: BTreeMap<i64, i64> = BTreeMap::new();
    while until
        .iter()
        .any(|(id, rev)| reached.get(id).copied().unwrap_or(0) < *rev)
    {
        let r = recv(s, &format!("{what} (read so far: {})", shown(&got))).await;
        if let Some(last) = r.events.last() {
            let at = reached.entry(r.id).or_default();
            *at = (*at).max(last.rev);
        }
        got.push(r);
    }
    got
}

fn shown(resps: &[Resp]) -> String {
    let lines: Vec<String> = resps.iter().map(|r| format!("\n    {r}")).collect();
    lines.concat()
}

fn events_of(resps: &[Resp], id: i64) -> Vec<Ev> {
    resps
        .iter()
        .filter(|r| r.id == id)
        .flat_map(|r| r.events.iter().cloned())
        .collect()
}

fn sorted(mut events: Vec<Ev>) -> Vec<Ev> {
    events.sort();
    events
}

fn without_prev(events: Vec<Ev>) -> Vec<Ev> {
    events.into_iter().map(|e| Ev { prev: None, ..e }).collect()
}

/// Ordered, unique, atomic: within one watch, revisions never go back, no (revision, key)
/// comes twice, and a revision never spans two responses. Returns what is wrong.
fn check_delivery(resps: &[Resp], id: i64) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut last = 0;
    let mut seen = BTreeSet::new();
    for r in resps.iter().filter(|r| r.id == id && !r.events.is_empty()) {
        if r.events[0].rev <= last {
            wrong.push(format!(
                "a response starts at revision {} after one that reached {last} (ordered, atomic): {r}",
                r.events[0].rev
            ));
        }
        for pair in r.events.windows(2) {
            if pair[1].rev < pair[0].rev {
                wrong.push(format!("revisions go back inside a response: {r}"));
            }
        }
        for e in &r.events {
            if !seen.insert((e.rev, e.key.clone())) {
                wrong.push(format!("event sent twice: {e}"));
            }
        }
        last = r.events[r.events.len() - 1].rev;
    }
    wrong
}

/// The keys under `prefix` at `rev` (nothing at revision 0).
async fn state_at(c: &mut Client, prefix: &str, rev: i64) -> BTreeMap<String, Kv> {
    if rev < 1 {
        return BTreeMap::new();
    }
    let r = c
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_revision(rev)),
        )
        .await
        .unwrap_or_else(|e| panic!("range {prefix:?} at {rev}: {e}"));
    r.kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv_of(kv)))
        .collect()
}

/// The events under `prefix` in `from..=to`, with prev_kv, computed from ranges at each
/// revision: what a watch from `from` must deliver (sorted by revision, then key).
async fn history(c: &mut Client, prefix: &str, from: i64, to: i64) -> Vec<Ev> {
    let mut before = state_at(c, prefix, from - 1).await;
    let mut out = Vec::new();
    for rev in from..=to {
        let now = state_at(c, prefix, rev).await;
        for (key, kv) in &now {
            if kv.2 == rev {
                out.push(Ev {
                    rev,
                    key: key.clone(),
                    put: true,
                    value: kv.0.clone(),
                    create: kv.1,
                    version: kv.3,
                    prev: before.get(key).cloned(),
                });
            }
        }
        for (key, kv) in &before {
            if !now.contains_key(key) {
                out.push(Ev {
                    rev,
                    key: key.clone(),
                    put: false,
                    value: String::new(),
                    create: 0,
                    version: 0,
                    prev: Some(kv.clone()),
                });
            }
        }
        before = now;
    }
    sorted(out)
}

fn prefix() -> WatchOptions {
    WatchOptions::new().with_prefix()
}

async fn put(c: &mut Client, key: &str, value: &str) -> i64 {
    let r = c
        .put(key, value, None)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
    r.header().expect("header").revision()
}

async fn del(c: &mut Client, key: &str, options: Option<DeleteOptions>) -> i64 {
    let r = c
        .delete(key, options)
        .await
        .unwrap_or_else(|e| panic!("delete {key}: {e}"));
    r.header().expect("header").revision()
}

async fn txn(c: &mut Client, ops: Vec<TxnOp>) -> i64 {
    let r = c
        .txn(Txn::new().and_then(ops))
        .await
        .unwrap_or_else(|e| panic!("txn: {e}"));
    r.header().expect("header").revision()
}

async fn created(s: &mut WatchStream, what: &str) -> Resp {
    let r = recv(s, what).await;
    assert!(
        r.created && !r.canceled && r.events.is_empty(),
        "{what}: expected a created response, got {r}"
    );
    r
}

// ---------------------------------------------------------------------------------------------
// Guarantees.

/// Writes revisions 2..=12 under `g/` (and two writes elsewhere), with a txn of three puts, a
/// delete-range of two keys, and a key deleted and recreated; returns the last revision.
async fn guarantee_writes(c: &mut Client) -> i64 {
    let revs = [
        put(c, "g/a", "1").await,
        put(c, "g/b", "1").await,
        put(c, "other", "x").await,
        put(c, "g/a", "2").await,
        // One revision, three keys, in this order.
        txn(
            c,
            vec![
                TxnOp::put("g/c", "1", None),
                TxnOp::put("g/a", "3", None),
                TxnOp::put("g/b", "2", None),
            ],
        )
        .await,
        put(c, "g/d", "1").await,
        // One revision deleting g/a and g/b.
        del(c, "g/a", Some(DeleteOptions::new().with_range("g/c"))).await,
        // g/a again: a new key.
        put(c, "g/a", "4").await,
        del(c, "g/c", None).await,
        txn(
            c,
            vec![
                TxnOp::delete("g/d", None),
                TxnOp::put("g/e", "1", None),
                TxnOp::put("other", "y", None),
            ],
        )
        .await,
        put(c, "g/c", "2").await,
    ];
    assert_eq!(
        revs,
        [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        "the writes' revisions"
    );
    12
}

async fn guarantees(kind: Kind) {
    let server = Server::start(kind, &[]);
    let mut c = server.client().await;
    let mut wc = server.client().await;
    let mut live = wc
        .watch("g/", Some(prefix().with_prev_key()))
        .await
        .expect("watch");
    let first = created(&mut live, "live watch").await;
    assert_eq!(
        first.rev, 1,
        "a watch from now reports the current revision"
    );
    let id = first.id;
    let last = guarantee_writes(&mut c).await;
    let got = collect_until(&mut live, &[(id, last)], "live watch").await;
    let expected = history(&mut c, "g/", 2, last).await;
    let ctx = |what: &str, resps: &[Resp]| {
        format!(
            "{kind:?}, {what}; responses:{}\n  log:\n{}",
            shown(resps),
            server.log_tail()
        )
    };

    // Ordered, unique, atomic.
    let wrong = check_delivery(&got, id);
    assert!(wrong.is_empty(), "{wrong:#?}\n{}", ctx("live", &got));
    // Reliable, with correct prev_kv: exactly the history the ranges show.
    assert_eq!(
        sorted(events_of(&got, id)),
        expected,
        "{}",
        ctx("live", &got)
    );
    // The txn's three events come in one response, in the txn's order; the delete-range's two
    // in one response.
    let at = |rev: i64| -> Vec<(String, bool)> {
        let r: Vec<&Resp> = got
            .iter()
            .filter(|r| r.events.iter().any(|e| e.rev == rev))
            .collect();
        assert_eq!(
            r.len(),
            1,
            "revision {rev} in one response; {}",
            ctx("", &got)
        );
        r[0].events
            .iter()
            .filter(|e| e.rev == rev)
            .map(|e| (e.key.clone(), e.put))
            .collect()
    };
    let s = |k: &str| k.to_string();
    assert_eq!(
        at(6),
        [(s("g/c"), true), (s("g/a"), true), (s("g/b"), true)]
    );
    assert_eq!(at(8), [(s("g/a"), false), (s("g/b"), false)]);
    // A key deleted and recreated: both events, the new key starts over.
    let a: Vec<String> = events_of(&got, id)
        .into_iter()
        .filter(|e| e.key == "g/a")
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        a,
        [
            r#"PUT@2 g/a="1" c2 v1"#,
            r#"PUT@5 g/a="2" c2 v2 prev "1" c2 m2 v1"#,
            r#"PUT@6 g/a="3" c2 v3 prev "2" c2 m5 v2"#,
            r#"DELETE@8 g/a="" c0 v0 prev "3" c2 m6 v3"#,
            r#"PUT@9 g/a="4" c9 v1"#,
        ]
    );

    // Replays: from the first revision with prev_kv, from the middle without.
    let mut replay = wc
        .watch("g/", Some(prefix().with_start_revision(2).with_prev_key()))
        .await
        .expect("watch");
    let rid = created(&mut replay, "replay from 2").await.id;
    let got = collect_until(&mut replay, &[(rid, last)], "replay from 2").await;
    let wrong = check_delivery(&got, rid);
    assert!(
        wrong.is_empty(),
        "{wrong:#?}\n{}",
        ctx("replay from 2", &got)
    );
    assert_eq!(
        sorted(events_of(&got, rid)),
        expected,
        "{}",
        ctx("replay from 2", &got)
    );
    let mut replay = wc
        .watch("g/", Some(prefix().with_start_revision(6)))
        .await
        .expect("watch");
    let rid = created(&mut replay, "replay from 6").await.id;
    let got = collect_until(&mut replay, &[(rid, last)], "replay from 6").await;
    let from6: Vec<Ev> = expected.iter().filter(|e| e.rev >= 6).cloned().collect();
    assert_eq!(
        sorted(events_of(&got, rid)),
        without_prev(from6),
        "{}",
        ctx("replay from 6", &got)
    );

    // Resumable: a client that read some and went away re-watches from its last revision + 1
    // and gets exactly what followed, what was written while it was away included.
    let mut rc = server.client().await;
    let mut first_half = rc
        .watch("g/", Some(prefix().with_start_revision(2)))
        .await
        .expect("watch");
    let fid = created(&mut first_half, "first half").await.id;
    let before = recv(&mut first_half, "first half").await;
    assert_eq!(before.id, fid);
    let resumed_at = before.events.last().expect("events").rev + 1;
    drop(first_half);
    drop(rc);
    assert_eq!(put(&mut c, "g/f", "1").await, 13);
    assert_eq!(del(&mut c, "g/f", None).await, 14);
    let mut rc = server.client().await;
    let mut second_half = rc
        .watch("g/", Some(prefix().with_start_revision(resumed_at)))
        .await
        .expect("watch");
    let sid = created(&mut second_half, "second half").await.id;
    let after = collect_until(&mut second_half, &[(sid, 14)], "second half").await;
    let mut both = before.events.clone();
    both.extend(events_of(&after, sid));
    assert_eq!(
        sorted(both),
        without_prev(history(&mut c, "g/", 2, 14).await),
        "{kind:?}: resumed at {resumed_at}; first half {before}; second half:{}",
        shown(&after)
    );

    // A start revision in the future: nothing before it.
    let mut future = wc
        .watch("g/", Some(prefix().with_start_revision(16)))
        .await
        .expect("watch");
    let fid = created(&mut future, "future").await.id;
    assert_eq!(put(&mut c, "g/h", "1").await, 15);
    assert_eq!(put(&mut c, "g/h", "2").await, 16);
    let r = recv(&mut future, "future").await;
    assert_eq!(
        (r.id, r.events.iter().map(|e| e.rev).collect::<Vec<_>>()),
        (fid, vec![16]),
        "{kind:?}: a watch from 16 got {r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_guarantees_redb() {
    guarantees(Kind::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_guarantees_mem() {
    guarantees(Kind::Mem).await;
}

/// The same expectations hold for etcd 3.4 itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_guarantees_etcd() {
    guarantees(Kind::Etcd).await;
}

/// A watch of a server that dies ends (it does not hang); after the restart, re-watching from
/// the last revision received + 1 continues with exactly the next events, and the whole
/// history is still there.
async fn resume_across_restart(kind: Kind) {
    let mut server = Server::start(kind, &[]);
    let mut c = server.client().await;
    let mut wc = server.client().await;
    let mut w = wc
        .watch("r/", Some(prefix().with_prev_key()))
        .await
        .expect("watch");
    let id = created(&mut w, "before the restart").await.id;
    put(&mut c, "r/a", "1").await;
    put(&mut c, "r/b", "1").await;
    txn(
        &mut c,
        vec![TxnOp::put("r/a", "2", None), TxnOp::put("r/c", "1", None)],
    )
    .await;
    assert_eq!(del(&mut c, "r/b", None).await, 5);
    let got = collect_until(&mut w, &[(id, 5)], "before the restart").await;
    let received = events_of(&got, id);
    let last = received.last().expect("events").rev;

    tokio::task::block_in_place(|| server.kill());
    match deadline::within(Layer::Api, Deadline::after(RECV_LIMIT), w.message()).await {
        Ok(Ok(None) | Err(_)) => {}
        Ok(Ok(Some(r))) => panic!("{kind:?}: a response from a killed server: {}", resp(&r)),
        Err(_) => panic!("{kind:?}: the watch of a killed server did not end"),
    }
    drop((w, wc, c));
    tokio::task::block_in_place(|| server.restart());

    let mut c = server.client().await;
    assert_eq!(put(&mut c, "r/d", "1").await, 6);
    assert_eq!(
        del(&mut c, "r/a", Some(DeleteOptions::new().with_range("r/c"))).await,
        7
    );
    let mut wc = server.client().await;
    let mut w = wc
        .watch(
            "r/",
            Some(prefix().with_prev_key().with_start_revision(last + 1)),
        )
        .await
        .expect("watch");
    let id = created(&mut w, "after the restart").await.id;
    let got = collect_until(&mut w, &[(id, 7)], "after the restart").await;
    assert_eq!(
        sorted(events_of(&got, id)),
        history(&mut c, "r/", last + 1, 7).await,
        "{kind:?}: resumed at {} after a restart; log:\n{}",
        last + 1,
        server.log_tail()
    );
    let mut all = wc
        .watch("r/", Some(prefix().with_prev_key().with_start_revision(2)))
        .await
        .expect("watch");
    let aid = created(&mut all, "everything after the restart").await.id;
    let got_all = collect_until(&mut all, &[(aid, 7)], "everything after the restart").await;
    let mut everything = received;
    everything.extend(events_of(&got, id));
    assert_eq!(sorted(events_of(&got_all, aid)), sorted(everything.clone()));
    assert_eq!(sorted(everything), history(&mut c, "r/", 2, 7).await);
    // Both continue live.
    assert_eq!(put(&mut c, "r/e", "1").await, 8);
    let r = recv(&mut w, "live after the restart").await;
    assert_eq!(r.events.iter().map(|e| e.rev).collect::<Vec<_>>(), [8]);
    let r = recv(&mut all, "live after the restart").await;
    assert_eq!(r.events.iter().map(|e| e.rev).collect::<Vec<_>>(), [8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_a_restart_redb() {
    resume_across_restart(Kind::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_a_restart_mem() {
    resume_across_restart(Kind::Mem).await;
}

// ---------------------------------------------------------------------------------------------
// Bookmarks.

/// Reads until the answer to a progress request; checks every event against the bookmarks so
/// far. Returns the progress revision.
async fn until_progress(
    s: &mut WatchStream,
    max_event: &mut i64,
    last_progress: i64,
    what: &str,
) -> i64 {
    loop {
        let r = recv(s, what).await;
        if r.is_progress() {
            assert_eq!(
                r.id, -1,
                "{what}: a requested progress is for the whole stream: {r}"
            );
            assert!(
                r.rev >= *max_event,
                "{what}: progress at {} after an event at {max_event}",
                r.rev
            );
            return r.rev;
        }
        for e in &r.events {
            assert!(
                e.rev > last_progress,
                "{what}: event {e} after a progress notification at {last_progress}"
            );
            *max_event = (*max_event).max(e.rev);
        }
    }
}

async fn bookmarks(kind: Kind) {
    const WRITES: usize = 150;
    let server = Server::start(kind, &[]);
    let c = server.client().await;
    let mut wc = server.client().await;
    let mut w = wc.watch("b/", Some(prefix())).await.expect("watch");
    created(&mut w, "bookmarks").await;
    let mut writer_client = c.clone();
    let writer = tokio::spawn(async move {
        let mut last = 0;
        for i in 0..WRITES {
            last = put(&mut writer_client, &format!("b/{}", i % 7), &i.to_string()).await;
        }
        last
    });
    let (mut max_event, mut progress, mut answers) = (0, 0, 0);
    let last = loop {
        let done = writer.is_finished();
        w.request_progress().await.expect("request progress");
        progress = until_progress(&mut w, &mut max_event, progress, "live bookmarks").await;
        answers += 1;
        if done {
            break writer.await.expect("writer");
        }
    };
    // Everything is in, and a progress request now answers the last revision.
    w.request_progress().await.expect("request progress");
    progress = until_progress(&mut w, &mut max_event, progress, "final bookmark").await;
    assert_eq!(
        (max_event, progress),
        (last, last),
        "{kind:?}: after {answers} progress answers"
    );
    assert!(answers >= 2, "{kind:?}: only {answers} progress answers");

    // A progress request sent right after a watch from the past, while it replays, is
    // answered too, and never ahead of an event it has not delivered yet.
    for round in 0..5 {
        let mut wc = server.client().await;
        let mut w = wc
            .watch("b/", Some(prefix().with_start_revision(2)))
            .await
            .expect("watch");
        w.request_progress().await.expect("request progress");
        created(&mut w, "catch-up bookmark").await;
        let (mut max_event, mut progress) = (0, 0);
        progress = until_progress(
            &mut w,
            &mut max_event,
            progress,
            &format!("{kind:?}: round {round}: a progress requested during a replay"),
        )
        .await;
        w.request_progress().await.expect("request progress");
        progress = until_progress(&mut w, &mut max_event, progress, "after the replay").await;
        assert_eq!((max_event, progress), (last, last));
    }
}

// Not compared with etcd 3.4: it answers a progress request on a control channel that races
// the events channel, so its answer can arrive after an event above it (seen here: a progress
// at 1 after an event at 2); 3.5 routes it through the watchers and defers it during replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_progress_is_a_bookmark() {
    bookmarks(Kind::Redb).await;
}
