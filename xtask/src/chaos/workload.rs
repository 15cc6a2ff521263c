//! The clients of a chaos run: KV clients whose every operation goes into the history, lease
//! clients, and watchers that record every event they receive.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};

use super::checker::{Action, Op, Outcome, Revs};
use crate::bench::XorShift;

/// Keys the checked clients work on live under this prefix.
pub const PREFIX: &str = "c/";
/// The deadline every request carries (the client gives up then).
pub const DEADLINE: Duration = Duration::from_secs(3);

/// One request that took longer than the deadline, or the longest so far.
#[derive(Clone, Debug, Default)]
pub struct Timing {
    /// The longest any request took.
    pub longest: Duration,
    /// What it was.
    pub what: String,
    /// Requests that ended in an error, and that ended with no answer at all.
    pub errors: u64,
    pub requests: u64,
    /// Errors by their text's start.
    pub by_error: std::collections::BTreeMap<String, u64>,
    /// Requests and how they failed, per kind of request (put, get, txn, …).
    pub by_kind: std::collections::BTreeMap<&'static str, Failures>,
}

/// How the requests of one kind ended.
#[derive(Clone, Copy, Debug, Default)]
pub struct Failures {
    /// Requests sent.
    pub requests: u64,
    /// Failed with an error that says the request did not take effect.
    pub definite: u64,
    /// Failed leaving it open whether it took effect (a timeout, a lost connection).
    pub indeterminate: u64,
}

/// Whether an error says the request did not take effect: refused before it was sent,
/// proposed or served (no leader, a limit, bad input), rather than left open (a timeout, a
/// broken connection, `request timed out` after the proposal).
pub fn definite(e: &str) -> bool {
    const DEFINITE: [&str; 9] = [
        "etcdserver: no leader",
        "etcdserver: too many requests",
        "not found",
        "Client specified an invalid argument",
        "The system is not in a state required",
        "Operation was attempted past the valid range",
        "Some resource has been exhausted",
        "tcp connect error",
        "Connection refused",
    ];
    DEFINITE.iter().any(|d| e.contains(d))
}

/// What the clients share: the clock, the history, the stop flag, the timings.
#[derive(Clone)]
pub struct Shared {
    pub start: Instant,
    pub history: Arc<Mutex<Vec<Op>>>,
    pub stop: Arc<AtomicBool>,
    pub timing: Arc<Mutex<Timing>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            history: Arc::default(),
            stop: Arc::default(),
            timing: Arc::default(),
        }
    }

    /// Microseconds since the run started.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn timed(
        &self,
        kind: &'static str,
        what: impl FnOnce() -> String,
        took: Duration,
        error: Option<&str>,
    ) {
        let mut t = lock(&self.timing);
        t.requests += 1;
        let failures = t.by_kind.entry(kind).or_default();
        failures.requests += 1;
        match error {
            Some(e) if definite(e) => failures.definite += 1,
            Some(_) => failures.indeterminate += 1,
            None => {}
        }
        if let Some(e) = error {
            t.errors += 1;
            let kind: String = e.chars().take(90).collect();
            *t.by_error.entry(kind).or_default() += 1;
        }
        if took > t.longest {
            t.longest = took;
            t.what = what();
        }
    }

    fn record(&self, op: Op) {
        lock(&self.history).push(op);
    }
}

/// What a compare-and-swap records when its answer's responses are not those of its branch
/// (another request's answer): a value nobody wrote, so the checker reports it.
const WRONG_RESPONSES: &str = "!responses-of-another-request";

/// How long a client waits after an error before its next request, so that a member that
/// refuses everything at once does not flood the history with operations of unknown outcome.
const ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// An error that means the request never reached a server: nothing can have happened.
fn never_sent(e: &str) -> bool {
    e.contains("tcp connect error") || e.contains("Connection refused")
}

/// The revisions of an answer: its header's, and the key it found.
fn revs(header: Option<&etcd_client::ResponseHeader>, kv: Option<(i64, i64, i64)>) -> Revs {
    Revs {
        header: header.map_or(0, etcd_client::ResponseHeader::revision),
        kv,
    }
}

/// The value a get of one key found and its (create, mod, version) revisions, or none.
fn found(kvs: &[etcd_client::KeyValue]) -> (Option<String>, Option<(i64, i64, i64)>) {
    match kvs.first() {
        Some(kv) => (
            Some(String::from_utf8_lossy(kv.value()).into_owned()),
            Some((kv.create_revision(), kv.mod_revision(), kv.version())),
        ),
        None => (None, None),
    }
}

/// Connects to `endpoint` with the run's deadline.
pub async fn connect(endpoint: &str) -> Option<Client> {
    let options = ConnectOptions::new()
        .with_timeout(DEADLINE)
        .with_connect_timeout(Duration::from_secs(1));
    match deadline::within(
        deadline::Layer::Api,
        deadline::Deadline::after(Duration::from_secs(2)),
        Client::connect([endpoint], Some(options)),
    )
    .await
    {
        Ok(Ok(c)) => Some(c),
        _ => None,
    }
}

/// Bounds `fut` by the deadline plus a margin on the client side too, so that a server that
/// never answers shows up as an overrun rather than a stuck client.
async fn bounded<T>(
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match deadline::within(
        deadline::Layer::Api,
        deadline::Deadline::after(DEADLINE + Duration::from_secs(5)),
        fut,
    )
    .await
    {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("client-side limit".to_string()),
    }
}

/// A checked KV client: puts, linearizable gets, compare-and-swaps and deletes on `keys`
/// keys, through `endpoint`, until told to stop.
pub async fn kv_client(shared: Shared, id: usize, endpoint: String, keys: usize, seed: u64) {
    let mut rng = XorShift::new(seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut client: Option<Client> = None;
    let mut n = 0u64;
    // The last value this client saw per key: what its next CAS expects.
    let mut seen: Vec<Option<String>> = vec![None; keys];
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(c) = client.as_mut() else {
            client = connect(&endpoint).await;
            if client.is_none() {
                pause(Duration::from_millis(200)).await;
            }
            continue;
        };
        let k = rng.below(keys);
        let key = format!("{PREFIX}{k}");
        n += 1;
        let value = format!("{id}-{n}");
        let roll = rng.below(100);
        let call = shared.now();
        let started = Instant::now();
        let (action, result): (Action, Result<(Outcome, Revs), String>) = if roll < 35 {
            let r = bounded(c.put(key.clone(), value.clone(), None)).await;
            (
                Action::Put(value.clone()),
                r.map(|p| (Outcome::Done(0), revs(p.header(), None))),
            )
        } else if roll < 70 {
            let r = bounded(c.get(key.clone(), None)).await;
            let r = r.map(|g| {
                let (value, kv) = found(g.kvs());
                (Outcome::Read(value), revs(g.header(), kv))
            });
            if let Ok((Outcome::Read(v), _)) = &r {
                seen[k].clone_from(v);
            }
            (Action::Get, r)
        } else if roll < 88 {
            let expect = seen[k].clone().unwrap_or_default();
            let txn = Txn::new()
                .when([Compare::value(
                    key.clone(),
                    CompareOp::Equal,
                    expect.clone(),
                )])
                .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                .or_else([TxnOp::get(key.clone(), None)]);
            let r = bounded(c.txn(txn)).await;
            let r = r.map(|t| {
                let wrong = || Outcome::Refused(Some(WRONG_RESPONSES.to_string()));
                match (t.succeeded(), t.op_responses().as_slice()) {
                    // The then-branch is one put: its answer must be a put's.
                    (true, [TxnOpResponse::Put(_)]) => {
                        (Outcome::Swapped(true), revs(t.header(), None))
                    }
                    // The else-branch get: what the key is, which the next try expects.
                    (false, [TxnOpResponse::Get(g)]) => {
                        let (value, kv) = found(g.kvs());
                        seen[k].clone_from(&value);
                        (Outcome::Refused(value), revs(t.header(), kv))
                    }
                    _ => (wrong(), revs(t.header(), None)),
                }
            });
            (
                Action::Cas {
                    expect,
                    new: value.clone(),
                },
                r,
            )
        } else {
            let r = bounded(c.delete(key.clone(), None)).await;
            (
                Action::Delete,
                r.map(|d| (Outcome::Done(d.deleted()), revs(d.header(), None))),
            )
        };
        let took = started.elapsed();
        let ret = shared.now();
        let kind = match action {
            Action::Put(_) => "put",
            Action::Get => "get",
            Action::Cas { .. } => "txn (compare-and-swap)",
            Action::Delete => "delete",
        };
        shared.timed(
            kind,
            || format!("client {id} {action:?} on {key} via {endpoint}"),
            took,
            result.as_ref().err().map(String::as_str),
        );
        match result {
            Ok((outcome, revs)) => shared.record(Op {
                client: id,
                key,
                action,
                call,
                ret,
                outcome,
                revs,
            }),
            // A failed read changed nothing; a write refused before it was sent neither.
            Err(e) if action == Action::Get || never_sent(&e) => {
                pause(ERROR_BACKOFF).await;
                if e.contains("transport") || e.contains("connect") {
                    client = None;
                }
            }
            // Any other failed write may have happened.
            Err(e) => {
                pause(ERROR_BACKOFF).await;
                shared.record(Op {
                    client: id,
                    key,
                    action,
                    call,
                    ret: u64::MAX,
                    outcome: Outcome::Unknown,
                    revs: Revs::default(),
                });
                if e.contains("transport") || e.contains("connect") || e.contains("client-side") {
                    client = None;
                }
            }
        }
    }
}

/// A lease client: grants short leases with a key attached, some kept alive, some revoked;
/// only its deadlines are checked (expiry makes its keys come and go at the leader's pace).
pub async fn lease_client(shared: Shared, id: usize, endpoint: String, seed: u64) {
    let mut rng = XorShift::new(seed ^ 0x1ea5e ^ id as u64);
    let mut client: Option<Client> = None;
    let mut n = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(c) = client.as_mut() else {
            client = connect(&endpoint).await;
            if client.is_none() {
                pause(Duration::from_millis(200)).await;
            }
            continue;
        };
        n += 1;
        let started = Instant::now();
        let granted = bounded(c.lease_grant(2, None)).await;
        shared.timed(
            "lease grant",
            || format!("lease client {id} grant"),
            started.elapsed(),
            granted.as_ref().err().map(String::as_str),
        );
        let Ok(lease) = granted else {
            client = None;
            pause(ERROR_BACKOFF).await;
            continue;
        };
        let started = Instant::now();
        let put = bounded(c.put(
            format!("lease/{id}-{n}"),
            "v",
            Some(PutOptions::new().with_lease(lease.id())),
        ))
        .await;
        shared.timed(
            "put with a lease",
            || format!("lease client {id} put"),
            started.elapsed(),
            put.as_ref().err().map(String::as_str),
        );
        if rng.below(3) == 0 {
            let started = Instant::now();
            let r = bounded(c.lease_revoke(lease.id())).await;
            shared.timed(
                "lease revoke",
                || format!("lease client {id} revoke"),
                started.elapsed(),
                r.as_ref().err().map(String::as_str),
            );
        }
        pause(Duration::from_millis(100)).await;
    }
}

/// One event as a watcher saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub rev: i64,
    pub key: String,
    pub put: bool,
    pub value: String,
    pub prev: Option<String>,
}

impl Seen {
    /// What a watch event says, if it carries a key-value.
    fn of(e: &etcd_client::Event) -> Option<Self> {
        let kv = e.kv()?;
        Some(Self {
            rev: kv.mod_revision(),
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            put: e.event_type() == EventType::Put,
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            prev: e
                .prev_kv()
                .map(|p| String::from_utf8_lossy(p.value()).into_owned()),
        })
    }
}

/// A watcher: watches [`PREFIX`] from revision 1 through `endpoints` in turn, resuming from the
/// last revision it saw plus one whenever its stream breaks; returns what it saw, in order.
pub async fn watcher(shared: Shared, endpoints: Vec<String>, first: usize) -> Vec<Seen> {
    let mut seen: Vec<Seen> = Vec::new();
    let mut at = first;
    while !shared.stop.load(Ordering::Relaxed) {
        let endpoint = &endpoints[at % endpoints.len()];
        at += 1;
        let Some(mut c) = connect(endpoint).await else {
            pause(Duration::from_millis(200)).await;
            continue;
        };
        let from = seen.last().map_or(1, |s| s.rev + 1);
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(from);
        let Ok(Ok(mut stream)) = deadline::within(
            deadline::Layer::Api,
            deadline::Deadline::after(DEADLINE),
            c.watch(PREFIX, Some(options)),
        )
        .await
        else {
            continue;
        };
        loop {
            let step = deadline::within(
                deadline::Layer::Api,
                deadline::Deadline::after(Duration::from_millis(500)),
                stream.message(),
            )
            .await;
            match step {
                Err(_) if shared.stop.load(Ordering::Relaxed) => return seen,
                Err(_) => continue,
                Ok(Ok(Some(r))) => {
                    if r.canceled() {
                        break;
                    }
                    seen.extend(r.events().iter().filter_map(Seen::of));
                }
                Ok(_) => break,
            }
        }
    }
    seen
}

/// Every event under [`PREFIX`] from revision 1 to now, read from `endpoint` once the run is
/// over: the reference the watchers are compared with.
pub async fn reference_events(endpoint: &str, until: i64) -> Result<Vec<Seen>, String> {
    let mut c = connect(endpoint).await.ok_or("cannot connect")?;
    let mut stream = c
        .watch(
            PREFIX,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_start_revision(1),
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    loop {
        if out.last().is_some_and(|s: &Seen| s.rev >= until) {
            return Ok(out);
        }
        let r = deadline::within(
            deadline::Layer::Api,
            deadline::Deadline::after(Duration::from_secs(5)),
            stream.message(),
        )
        .await;
        match r {
            Ok(Ok(Some(r))) => {
                out.extend(r.events().iter().filter_map(Seen::of));
            }
            // No event past the last one: it is all there is.
            Err(_) => return Ok(out),
            Ok(Ok(None)) => return Ok(out),
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
}

/// The final value of every checked key, read linearizably through `endpoint`, as history
/// operations after everything else.
pub async fn final_reads(shared: &Shared, endpoint: &str, keys: usize) -> Result<(), String> {
    let mut c = connect(endpoint).await.ok_or("cannot connect")?;
    for k in 0..keys {
        let key = format!("{PREFIX}{k}");
        let call = shared.now();
        let g = bounded(c.get(key.clone(), None)).await?;
        let ret = shared.now();
        let (value, kv) = found(g.kvs());
        shared.record(Op {
            client: usize::MAX,
            key,
            action: Action::Get,
            call,
            ret,
            outcome: Outcome::Read(value),
            revs: revs(g.header(), kv),
        });
    }
    Ok(())
}

/// The current revision and the keys under [`PREFIX`] with their values, read serializably
/// from `endpoint`.
pub async fn local_state(endpoint: &str) -> Result<(i64, Vec<(String, String)>), String> {
    let mut c = connect(endpoint).await.ok_or("cannot connect")?;
    let g = bounded(c.get(
        PREFIX,
        Some(GetOptions::new().with_prefix().with_serializable()),
    ))
    .await?;
    let rev = g.header().map_or(0, |h| h.revision());
    Ok((
        rev,
        g.kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect(),
    ))
}

/// HashKV of `endpoint` at `rev`.
pub async fn hash_kv(endpoint: &str, rev: i64) -> Result<u32, String> {
    let mut c = connect(endpoint).await.ok_or("cannot connect")?;
    bounded(c.hash_kv(rev)).await.map(|h| h.hash())
}

pub use deadline::pause;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_told_apart_by_whether_the_request_can_have_happened() {
        let unavailable = "grpc request error: code: 'The service is currently unavailable'";
        assert!(definite(&format!(
            "{unavailable}, message: \"etcdserver: no leader\""
        )));
        assert!(definite(&format!(
            "{unavailable}, message: \"tcp connect error\""
        )));
        assert!(!definite(&format!(
            "{unavailable}, message: \"etcdserver: request timed out\""
        )));
        assert!(!definite(
            "grpc request error: code: 'Unknown error', message: \"transport error\""
        ));
        assert!(!definite(
            "grpc request error: code: 'The operation was cancelled', message: \"Timeout expired\""
        ));
        assert!(!definite("client-side limit"));
    }
}
