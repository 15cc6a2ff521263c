//! The Watch service: one task per stream, between the client and the watch hub.
//!
//! The hub never waits for a stream: it `try_send`s into the stream's bounded delivery queue
//! and lets a watcher whose queue is full catch up from history. The stream task forwards
//! deliveries to the client through a bounded response queue; when the client accepts nothing
//! for the `watch-send` budget, the stream is ended with an error naming the reason, its
//! watchers are removed and everything it held is freed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use deadline::{Deadline, Layer, SendError};
use mvcc::{Backend, KeyRange};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response as Reply, Status, Streaming};
use watch::{Charge, Delivery, Hub, WatchGuard, WatchSpec};

use crate::pb::etcdserverpb::watch_create_request::FilterType;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::watch_server::Watch;
use crate::pb::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use crate::pb_conv::event_to_pb;
use crate::service::Shared;

/// Responses waiting for a slow client, per stream.
const RESPONSES: usize = 128;
/// Deliveries waiting for the stream task, per stream; beyond, watchers catch up from history.
const DELIVERIES: usize = 64;
/// etcd's watch id for answers that concern the whole stream (progress), and for the refusal
/// of a create request that names an id already in use.
const WHOLE_STREAM: i64 = -1;
/// etcd lets a watch response exceed `--max-request-bytes` by this much before it fragments
/// (its allowance for gRPC overhead).
const FRAGMENT_SLACK: usize = 512 * 1024;
/// How often a progress request that found a watch still catching up is tried again. etcd
/// (3.5 on) defers such a request until every watch is synced rather than answer a revision
/// some watch has not reached; the hub does not announce a rejoin, so the stream looks again.
const PROGRESS_RETRY: Duration = Duration::from_millis(20);

/// etcd's Watch service over a member and its watch hub.
pub struct WatchService<B: mvcc::Backend> {
    shared: Shared<B>,
    hub: Hub,
    stop: CancellationToken,
    progress_interval: Duration,
}

impl<B: Backend> WatchService<B> {
    pub(crate) fn new(
        shared: Shared<B>,
        hub: Hub,
        stop: CancellationToken,
        progress_interval: Duration,
    ) -> Self {
        Self {
            shared,
            hub,
            stop,
            progress_interval,
        }
    }
}

/// The response stream handed to tonic: the queue, unless the stream was ended for a reason,
/// which then comes first.
pub struct Responses {
    /// Each response with the bytes it holds against its watcher's queue budget, given back
    /// when tonic takes it.
    rx: mpsc::Receiver<(WatchResponse, Charge)>,
    ended: Arc<OnceLock<Status>>,
    done: bool,
}

impl Stream for Responses {
    type Item = Result<WatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(status) = self.ended.get().cloned() {
            self.done = true;
            self.rx.close();
            return Poll::Ready(Some(Err(status)));
        }
        self.rx
            .poll_recv(cx)
            .map(|r| r.map(|(response, _charge)| Ok(response)))
    }
}

#[tonic::async_trait]
impl<B: Backend> Watch for WatchService<B> {
    type WatchStream = Responses;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Reply<Responses>, Status> {
        let (tx, rx) = mpsc::channel(RESPONSES);
        let ended = Arc::new(OnceLock::new());
        let stream = StreamTask {
            metadata: request.metadata().clone(),
            cert: request
                .extensions()
                .get::<crate::authz::CertUser>()
                .cloned(),
            shared: self.shared.clone(),
            hub: self.hub.clone(),
            tx,
            ended: Arc::clone(&ended),
            watchers: HashMap::new(),
            routes: HashMap::new(),
            next_id: 0,
            next_route: 0,
            progress_deferred: false,
            budget: self.shared.config.budgets.get(Layer::WatchSend),
        };
        tokio::spawn(stream.run(
            request.into_inner(),
            self.stop.clone(),
            self.progress_interval,
        ));
        Ok(Reply::new(Responses {
            rx,
            ended,
            done: false,
        }))
    }
}

/// What a stream remembers of one of its watches.
struct Watcher {
    guard: WatchGuard,
    /// The tag its deliveries carry: never reused on the stream, unlike a client's watch id, so
    /// a delivery still queued for a cancelled watch never reaches a later one with its id.
    route: u64,
    progress_notify: bool,
    fragment: bool,
}

/// Why a stream stops.
enum End {
    /// The client went away or the server is stopping.
    Quietly,
    /// The client accepted nothing for the budget.
    Stuck,
}

struct StreamTask<B: mvcc::Backend> {
    /// The stream's metadata: its token names the user each create is checked for.
    metadata: tonic::metadata::MetadataMap,
    /// The stream's client certificate's user, under `--client-cert-auth`.
    cert: Option<crate::authz::CertUser>,
    shared: Shared<B>,
    hub: Hub,
    tx: mpsc::Sender<(WatchResponse, Charge)>,
    ended: Arc<OnceLock<Status>>,
    watchers: HashMap<i64, Watcher>,
    /// The client's watch id of each live route.
    routes: HashMap<u64, i64>,
    /// The next automatic watch id; like etcd, never handed out twice on a stream.
    next_id: i64,
    next_route: u64,
    /// A progress request waits for every watch to be synced.
    progress_deferred: bool,
    budget: Duration,
}

/// etcd's gauge of open watch streams.
const WATCH_STREAMS: &str = "etcd_debugging_mvcc_watch_stream_total";

/// One open watch stream in [`WATCH_STREAMS`], for as long as it lives (however its task ends).
struct StreamCount;

impl StreamCount {
    fn open() -> Self {
        metrics::gauge!(WATCH_STREAMS).increment(1.0);
        Self
    }
}

impl Drop for StreamCount {
    fn drop(&mut self) {
        metrics::gauge!(WATCH_STREAMS).decrement(1.0);
    }
}

impl<B: Backend> StreamTask<B> {
    async fn run(
        mut self,
        mut inbound: Streaming<WatchRequest>,
        stop: CancellationToken,
        every: Duration,
    ) {
        let _open = StreamCount::open();
        let (deliveries, mut delivered) = mpsc::channel(DELIVERIES);
        let mut progress = tokio::time::interval(every);
        progress.tick().await;
        let mut retry = tokio::time::interval(PROGRESS_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A client may close its side of the stream and keep reading, as etcd allows.
        let mut inbound_open = true;
        let end = loop {
            let tx = self.tx.clone();
            let step = tokio::select! {
                () = stop.cancelled() => Err(End::Quietly),
                () = tx.closed() => Err(End::Quietly),
                request = inbound.message(), if inbound_open => match request {
                    Ok(Some(r)) => self.on_request(r, &deliveries, &mut delivered).await,
                    Ok(None) => {
                        tracing::debug!("the client closed its side of a watch stream");
                        inbound_open = false;
                        Ok(())
                    }
                    Err(e) => {
                        tracing::debug!(cause = %e, "watch stream failed");
                        Err(End::Quietly)
                    }
                },
                Some(d) = delivered.recv() => self.on_delivery(d).await,
                _ = progress.tick() => self.on_progress_tick(&mut delivered).await,
                _ = retry.tick(), if self.progress_deferred => {
                    self.answer_progress(&mut delivered).await
                }
            };
            if let Err(end) = step {
                break end;
            }
        };
        if let End::Stuck = end {
            let reason = format!(
                "etcdserver: watch stream canceled: the client accepted no response for {:?} (watch-send budget)",
                self.budget
            );
            tracing::warn!(watchers = self.watchers.len(), "{reason}");
            let _ = self.ended.set(Status::resource_exhausted(reason));
        }
        // Dropping the guards removes the watchers from the hub.
        self.watchers.clear();
        self.routes.clear();
    }

    fn header(&self) -> Option<crate::pb::etcdserverpb::ResponseHeader> {
        self.shared
            .header(self.shared.node.store().current_revision())
    }

    /// Sends within the watch-send budget.
    async fn send(&self, response: WatchResponse) -> Result<(), End> {
        self.send_charged(response, Charge::default()).await
    }

    /// Sends within the watch-send budget, keeping `charge` until the response has left.
    async fn send_charged(&self, response: WatchResponse, charge: Charge) -> Result<(), End> {
        match deadline::send(
            Layer::WatchSend,
            Deadline::after(self.budget),
            &self.tx,
            (response, charge),
        )
        .await
        {
            Ok(()) => Ok(()),
            Err(SendError::Closed { .. }) => Err(End::Quietly),
            Err(_) => Err(End::Stuck),
        }
    }

    async fn on_request(
        &mut self,
        request: WatchRequest,
        deliveries: &mpsc::Sender<Delivery>,
        delivered: &mut mpsc::Receiver<Delivery>,
    ) -> Result<(), End> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create, deliveries).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                // etcd answers only the cancellation of a watch it has.
                if self.remove(cancel.watch_id) {
                    let header = self.header();
                    self.send(WatchResponse {
                        header,
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => self.answer_progress(delivered).await,
            None => Ok(()),
        }
    }

    /// Answers a progress request for the whole stream now if every watch is synced, or
    /// defers it until they are (several deferred requests get one answer, as in etcd).
    async fn answer_progress(
        &mut self,
        delivered: &mut mpsc::Receiver<Delivery>,
    ) -> Result<(), End> {
        match self.progress(delivered).await? {
            Some(revision) => {
                self.progress_deferred = false;
                let header = self.shared.header(revision);
                self.send(WatchResponse {
                    header,
                    watch_id: WHOLE_STREAM,
                    ..Default::default()
                })
                .await
            }
            None => {
                self.progress_deferred = true;
                Ok(())
            }
        }
    }

    async fn create(
        &mut self,
        c: WatchCreateRequest,
        deliveries: &mpsc::Sender<Delivery>,
    ) -> Result<(), End> {
        let header = self.header();
        // etcd checks read permission on the watched range at create; any failure, a bad token
        // included, cancels this watch with grpc-go's text of PermissionDenied.
        let permitted = crate::authz::Caller::identify(
            self.shared.node.auth(),
            self.shared.config.jwt.as_deref(),
            &self.metadata,
            self.cert.as_ref(),
        )
        .is_ok_and(|caller| caller.read(&c.key, &c.range_end).is_ok());
        if !permitted {
            return self
                .send(WatchResponse {
                    header,
                    watch_id: WHOLE_STREAM,
                    created: true,
                    canceled: true,
                    cancel_reason:
                        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
                            .to_string(),
                    ..Default::default()
                })
                .await;
        }
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        };
        let cap = self.shared.config.limits.max_watchers_per_stream;
        if self.watchers.len() >= cap {
            // Refused like any failed create: this watch is cancelled, the others go on.
            return self
                .send(WatchResponse {
                    header,
                    watch_id: id,
                    created: true,
                    canceled: true,
                    cancel_reason: format!(
                        "etcdserver: too many watchers on this stream (limit {cap}, set by \
                         --max-watchers-per-stream)"
                    ),
                    ..Default::default()
                })
                .await;
        }
        if self.watchers.contains_key(&id) {
            let reason = "mvcc: duplicate watch ID provided on the WatchStream".to_string();
            return self
                .send(WatchResponse {
                    header,
                    watch_id: WHOLE_STREAM,
                    created: true,
                    canceled: true,
                    cancel_reason: reason,
                    ..Default::default()
                })
                .await;
        }
        // etcd's conventions: no key is the smallest key, range_end [0] is "from key on".
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        let spec = WatchSpec {
            range: KeyRange::new(&key, &c.range_end),
            start_revision: c.start_revision,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: c.prev_kv,
            tag: self.next_route,
        };
        match self.hub.watch(spec, deliveries.clone()) {
            Ok(guard) => {
                let route = self.next_route;
                self.next_route += 1;
                self.routes.insert(route, id);
                // A watch "from now" reports the revision it starts after, which the hub may
                // not have published yet while an apply is in flight.
                let header = if c.start_revision <= 0 {
                    self.shared.header(guard.start_revision() - 1)
                } else {
                    header
                };
                self.watchers.insert(
                    id,
                    Watcher {
                        guard,
                        route,
                        progress_notify: c.progress_notify,
                        fragment: c.fragment,
                    },
                );
                self.send(WatchResponse {
                    header,
                    watch_id: id,
                    created: true,
                    ..Default::default()
                })
                .await
            }
            Err(e) => {
                self.send(WatchResponse {
                    header,
                    watch_id: id,
                    created: true,
                    canceled: true,
                    cancel_reason: e.to_string(),
                    ..Default::default()
                })
                .await
            }
        }
    }

    /// Forgets the watch `id` (its guard removes it from the hub); false if there was none.
    fn remove(&mut self, id: i64) -> bool {
        match self.watchers.remove(&id) {
            Some(w) => {
                self.routes.remove(&w.route);
                true
            }
            None => false,
        }
    }

    async fn on_delivery(&mut self, d: Delivery) -> Result<(), End> {
        // No route: the watch was cancelled meanwhile.
        let Some(&id) = self.routes.get(&d.tag) else {
            return Ok(());
        };
        let Some(watcher) = self.watchers.get(&id) else {
            return Ok(());
        };
        if let Some(compacted) = d.compacted {
            self.remove(id);
            // etcd 3.4 sends this cancellation with a header at revision 0.
            return self
                .send(WatchResponse {
                    header: self.shared.header(0),
                    watch_id: id,
                    canceled: true,
                    compact_revision: compacted,
                    ..Default::default()
                })
                .await;
        }
        let header = self.header();
        let response = WatchResponse {
            header,
            watch_id: id,
            events: d.events.into_iter().map(event_to_pb).collect(),
            ..Default::default()
        };
        let limit = self.shared.config.limits.max_request_bytes + FRAGMENT_SLACK;
        if watcher.fragment && response.events.len() > 1 && response.encoded_len() >= limit {
            let mut parts = fragments(response, limit);
            let last = parts.pop();
            for part in parts {
                self.send(part).await?;
            }
            if let Some(part) = last {
                self.send_charged(part, d.charge).await?;
            }
            return Ok(());
        }
        self.send_charged(response, d.charge).await
    }

    /// The revision every watch of this stream has been sent all events up to, if all are live:
    /// asked of the hub first, then the deliveries already queued are forwarded, so nothing
    /// sent after the answer can be at or below it.
    async fn progress(
        &mut self,
        delivered: &mut mpsc::Receiver<Delivery>,
    ) -> Result<Option<i64>, End> {
        let ids: Vec<_> = self.watchers.values().map(|w| w.guard.id()).collect();
        let Some(revision) = self.hub.progress(&ids) else {
            return Ok(None);
        };
        while let Ok(d) = delivered.try_recv() {
            self.on_delivery(d).await?;
        }
        // A publish between the hub's answer and the drain may have queued events above it,
        // and the drain has just sent them: a bookmark at `revision` would then follow an
        // event past it. The hub publishes under the lock it answers under, so an unchanged
        // answer means nothing newer was queued; otherwise the next try answers.
        if self.hub.progress(&ids) != Some(revision) {
            return Ok(None);
        }
        Ok(Some(revision))
    }

    async fn on_progress_tick(
        &mut self,
        delivered: &mut mpsc::Receiver<Delivery>,
    ) -> Result<(), End> {
        let wanted: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify)
            .map(|(id, _)| *id)
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        if let Some(revision) = self.progress(delivered).await? {
            for id in wanted {
                let header = self.shared.header(revision);
                self.send(WatchResponse {
                    header,
                    watch_id: id,
                    ..Default::default()
                })
                .await?;
            }
        }
        Ok(())
    }
}

/// Splits an answer whose events reach `limit` bytes into answers under it, as etcd does: each
/// part takes events while it stays under the limit (a single event larger than it goes
/// alone), and every part but the last is marked as a fragment.
fn fragments(response: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    let template = WatchResponse {
        events: Vec::new(),
        ..response.clone()
    };
    let mut parts = Vec::new();
    let mut current = template.clone();
    for event in response.events {
        current.events.push(event);
        if current.events.len() > 1 && current.encoded_len() >= limit {
            let overflow = current.events.pop();
            parts.push(std::mem::replace(&mut current, template.clone()));
            current.events.extend(overflow);
        }
    }
    parts.push(current);
    let last = parts.len() - 1;
    for (i, part) in parts.iter_mut().enumerate() {
        part.fragment = i != last;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::mvccpb;

    #[test]
    fn fragments_split_under_the_limit_and_mark_all_but_the_last() {
        let event = |i: u8| mvccpb::Event {
            kv: Some(mvccpb::KeyValue {
                key: vec![i],
                value: vec![i; 100],
                ..Default::default()
            }),
            ..Default::default()
        };
        let response = WatchResponse {
            watch_id: 3,
            events: (0..10).map(event).collect(),
            ..Default::default()
        };
        let parts = fragments(response, 300);
        assert!(parts.len() > 1);
        assert!(parts
            .iter()
            .all(|p| p.encoded_len() <= 300 && p.watch_id == 3));
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment));
        assert!(!parts[parts.len() - 1].fragment);
        let keys: Vec<u8> = parts
            .iter()
            .flat_map(|p| {
                p.events
                    .iter()
                    .map(|e| e.kv.as_ref().map_or(0, |kv| kv.key[0]))
            })
            .collect();
        assert_eq!(keys, (0..10).collect::<Vec<u8>>());
    }
}
