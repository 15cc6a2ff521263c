//! The peer transport: openraft's messages and forwarded requests over tonic, between members.
//!
//! Every call is bounded by the `peer-rpc` budget (and by openraft's own TTL for the call, if
//! shorter): a dead or frozen peer costs one budget per call, never a stuck task, and openraft
//! backs off from a peer reported unreachable. Connections are made lazily, kept per peer, and
//! rebuilt when a peer's URL changes.

use openraft::type_config::async_runtime::WatchReceiver as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadline::{Budgets, Deadline, Layer};
use openraft::error::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_rustls::rustls;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::types::{Member, MemberId, Proposal, TypeConfig};

/// The generated protocol.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("metastore.peer");
}

use pb::peer_client::PeerClient;
use pb::Payload;

/// The metadata key naming the member a peer request comes from (its id in decimal).
const SENDER: &str = "metastore-sender";

/// Largest message a member accepts from a peer: Raft batches of entries and snapshot chunks.
pub(crate) const MAX_PEER_MESSAGE: usize = 128 << 20;
/// What gRPC framing adds around an encoded payload, at most.
const FRAME_SLACK: usize = 64;

/// A request only the leader can serve, sent to it by a follower.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Forwarded {
    /// Propose this batch (its origin is the follower, whose own apply answers its clients).
    Propose(Proposal),
    /// Confirm leadership and answer the index a linearizable read must wait for.
    ReadIndex,
    /// A lease keep-alive.
    LeaseRenew(i64),
    /// How long a lease has left, in milliseconds.
    LeaseRemaining(i64),
    /// A membership change.
    Membership(crate::membership::Change),
    /// This member's key-space hash at a revision, for the corruption checks
    /// ([`crate::corrupt`]); any member answers.
    HashKv(i64),
}

/// The leader's answer to a [`Forwarded`] request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ForwardReply {
    /// Done; nothing to report.
    Done,
    /// A read index.
    Index(u64),
    /// A lease TTL in seconds (0: unknown or expired).
    Ttl(i64),
    /// A lease's remaining time in milliseconds, if the leader tracks it.
    Remaining(Option<u64>),
    /// The membership after a change.
    Members(Vec<(u64, Member, bool)>),
    /// A key-space hash, with the answering member's current revision.
    Hash(crate::corrupt::PeerHash),
    /// Refused: not the leader, no leader, stopping, a timeout, or the change's own error.
    Refused(Refusal),
}

/// A member's answer to [`Rpc::Members`]: its cluster id and the members it knows (learners
/// included), for a member joining the cluster ([`crate::join`]).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MembersReply {
    /// The cluster id.
    pub cluster_id: u64,
    /// Every member by id.
    pub members: Vec<(u64, Member)>,
}

/// Why a forwarded request was refused.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotLeader(Option<u64>),
    Stopped,
    Timeout,
    TooManyRequests,
    /// A forwarded batch held commands no checked request could produce: (waiter id, why).
    Invalid(Vec<(u64, mvcc::Refusal)>),
    Membership(crate::membership::MembershipError),
    Other(String),
}

/// bincode's classic encoding (what `bincode::serialize` writes), read within the peer
/// message limit and refusing bytes after the value: whatever a peer sends is untrusted. The
/// one recursive type on the wire, a txn, bounds its own nesting (`mvcc::MAX_TXN_NESTING`).
fn wire() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(MAX_PEER_MESSAGE as u64)
}

/// The same encoding, with no limit: a message too large is refused by its size, so the
/// sender can split it.
fn encode<T: Serialize>(v: &T) -> Result<Payload, String> {
    bincode::serialize(v)
        .map(|data| Payload { data })
        .map_err(|e| e.to_string())
}

fn decode<T: DeserializeOwned>(p: &Payload) -> Result<T, String> {
    use bincode::Options;
    wire().deserialize(&p.data).map_err(|e| e.to_string())
}

/// One chunk of a snapshot the leader sends, with the leader's vote and the snapshot's meta;
/// the chunk written and read as one block of bytes rather than one `u8` at a time (a 3 MiB
/// chunk took seconds that way in a debug build).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct SnapshotChunk {
    vote: crate::types::typ::Vote,
    meta: crate::types::typ::SnapshotMeta,
    offset: u64,
    #[serde(
        serialize_with = "mvcc::ser_bytes",
        deserialize_with = "mvcc::de_bytes"
    )]
    data: Vec<u8>,
    done: bool,
}

/// Per peer: the URL connected to, and the client.
type Conns = HashMap<u64, (String, PeerClient<Channel>)>;

/// Connections to the other members, one per peer, shared by Raft and forwarding.
#[derive(Clone)]
pub struct Peers {
    conns: Arc<Mutex<Conns>>,
    budgets: Budgets,
    source: Option<std::net::IpAddr>,
    /// This member's id, sent with every request so the receiver can refuse non-members.
    sender: Option<u64>,
    /// TLS for `https://` peer URLs.
    tls: Option<PeerTls>,
    /// The largest message sent or accepted: [`MAX_PEER_MESSAGE`] but in tests.
    max_message: usize,
}

/// A failed peer call.
#[derive(Debug)]
pub(crate) enum CallError {
    /// No connection, or the connection failed: back off. The request may have been sent.
    Unreachable(String),
    /// The request was never sent (no URL, connection refused): back off, or try again.
    NotSent(String),
    /// The budget ran out.
    Timeout,
    /// The peer answered with something that is not a reply.
    Protocol(String),
    /// The request encodes to more bytes than a peer accepts: send less.
    TooLarge {
        /// Its encoded size.
        bytes: usize,
        /// The most a peer accepts.
        limit: usize,
    },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => write!(f, "peer unreachable: {e}"),
            CallError::NotSent(e) => write!(f, "peer unreachable, nothing sent: {e}"),
            CallError::Timeout => write!(f, "peer did not answer within the peer-rpc budget"),
            CallError::Protocol(e) => write!(f, "peer protocol error: {e}"),
            CallError::TooLarge { bytes, limit } => {
                write!(
                    f,
                    "peer message of {bytes} bytes exceeds the {limit}-byte limit"
                )
            }
        }
    }
}

impl std::error::Error for CallError {}

/// Which RPC of the protocol a call is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Forward,
    Members,
    PreVote,
    TransferLeader,
}

impl Peers {
    /// No connections yet; every call is bounded by `budgets`' `peer-rpc` budget, and made
    /// from `source` if given.
    pub fn new(budgets: Budgets, source: Option<std::net::IpAddr>) -> Self {
        Self {
            conns: Arc::default(),
            budgets,
            source,
            sender: None,
            tls: None,
            max_message: MAX_PEER_MESSAGE,
        }
    }

    /// The same, naming this member as the sender of every request and using `tls` for
    /// `https://` peers.
    pub fn with_identity(mut self, sender: u64, tls: Option<PeerTls>) -> Self {
        self.sender = Some(sender);
        self.tls = tls;
        self
    }

    /// The same with another message limit, for tests that cannot afford 128 MiB messages.
    #[cfg(test)]
    fn with_max_message(mut self, max_message: usize) -> Self {
        self.max_message = max_message;
        self
    }

    fn client(&self, target: u64, member: &Member) -> Result<PeerClient<Channel>, CallError> {
        let url = member
            .peer_urls
            .first()
            .cloned()
            .ok_or_else(|| CallError::NotSent(format!("member {target:x} has no peer URL")))?;
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((known, client)) = conns.get(&target) {
            if *known == url {
                return Ok(client.clone());
            }
        }
        // tonic refuses an https:// URI unless its own TLS settings, which always verify the
        // peer, are given: for unverified TLS it is told http:// and the connector does TLS.
        let unverified = match &self.tls {
            Some(PeerTls::Unverified(config)) => url
                .strip_prefix("https://")
                .map(|rest| (format!("http://{rest}"), Arc::clone(config))),
            _ => None,
        };
        let dial = unverified.as_ref().map_or(url.as_str(), |(plain, _)| plain);
        let endpoint = Endpoint::from_shared(dial.to_string())
            .map_err(|e| CallError::NotSent(format!("{url}: {e}")))?
            .connect_timeout(self.budgets.get(Layer::PeerRpc).min(Duration::from_secs(1)))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true)
            .local_address(self.source);
        let channel = match (&self.tls, unverified) {
            (_, Some((_, config))) => endpoint.connect_with_connector_lazy(UnverifiedTls {
                config,
                source: self.source,
            }),
            (Some(PeerTls::Verified(tls)), None) => endpoint
                .tls_config(tls.clone())
                .map_err(|e| CallError::NotSent(format!("{url}: TLS: {e}")))?
                .connect_lazy(),
            (_, None) => endpoint.connect_lazy(),
        };
        let client = PeerClient::new(channel)
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message);
        conns.insert(target, (url, client.clone()));
        Ok(client)
    }

    /// Calls `rpc` on `target` with `request`, within `limit` and the peer-rpc budget.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: u64,
        member: &Member,
        rpc: Rpc,
        request: &Req,
        limit: Option<Duration>,
    ) -> Result<Resp, CallError> {
        let payload = encode(request).map_err(CallError::Protocol)?;
        // Refused here, before the peer's limit refuses it, with what the caller needs to
        // shrink it; openraft otherwise sees an unreachable peer and retries the same batch.
        let bytes = payload.data.len();
        let too_large = CallError::TooLarge {
            bytes,
            limit: self.max_message,
        };
        if bytes + FRAME_SLACK > self.max_message {
            return Err(too_large);
        }
        let mut client = self.client(target, member)?;
        let budget = self.budgets.get(Layer::PeerRpc);
        let timeout = limit.map_or(budget, |l| l.min(budget));
        let mut req = tonic::Request::new(payload);
        req.set_timeout(timeout);
        if let Some(sender) = self.sender {
            req.metadata_mut().insert(SENDER, sender.into());
        }
        let call = async move {
            match rpc {
                Rpc::AppendEntries => client.append_entries(req).await,
                Rpc::Vote => client.vote(req).await,
                Rpc::InstallSnapshot => client.install_snapshot(req).await,
                Rpc::Forward => client.forward(req).await,
                Rpc::Members => client.members(req).await,
                Rpc::PreVote => client.pre_vote(req).await,
                Rpc::TransferLeader => client.transfer_leader(req).await,
            }
        };
        let answer = deadline::within(Layer::PeerRpc, Deadline::after(timeout), call)
            .await
            .map_err(|_| CallError::Timeout)?;
        match answer {
            Ok(reply) => decode(reply.get_ref()).map_err(CallError::Protocol),
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                Err(CallError::Timeout)
            }
            // A peer with a lower limit refused the message's size.
            Err(status) if status.code() == tonic::Code::OutOfRange => Err(too_large),
            Err(status) if never_sent(&status) => Err(CallError::NotSent(status.to_string())),
            Err(status) => Err(CallError::Unreachable(status.to_string())),
        }
    }
}

/// How this member secures its connections to `https://` peers.
#[derive(Clone, Debug)]
pub enum PeerTls {
    /// Verify each peer's certificate against the peer CA and present this member's own
    /// (`--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`).
    Verified(ClientTlsConfig),
    /// Encrypt, accepting whatever certificate `config`'s verifier accepts: etcd's
    /// `--peer-auto-tls`, whose members' certificates are self-signed and cannot be verified.
    Unverified(Arc<rustls::ClientConfig>),
}

/// Dials a peer over TCP (from `source`, if given) and runs TLS with `config`, for
/// [`PeerTls::Unverified`]; tonic bounds the whole by its connect timeout.
#[derive(Clone)]
struct UnverifiedTls {
    config: Arc<rustls::ClientConfig>,
    source: Option<std::net::IpAddr>,
}

impl tonic::codegen::Service<tonic::codegen::http::Uri> for UnverifiedTls {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let (config, source) = (Arc::clone(&self.config), self.source);
        Box::pin(async move {
            let invalid =
                |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("{uri}: no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let addr = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .next()
                .ok_or_else(|| invalid(format!("{uri}: no address")))?;
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            if let Some(ip) = source {
                socket.bind(std::net::SocketAddr::new(ip, 0))?;
            }
            let tcp = socket.connect(addr).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|e| invalid(format!("{uri}: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// Whether a failed call provably never reached the peer: its connection was refused.
fn never_sent(status: &tonic::Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// openraft's view of the transport: a client per target member.
#[derive(Clone)]
pub struct PeerNetwork {
    peers: Peers,
}

impl PeerNetwork {
    /// A transport over `peers`.
    pub fn new(peers: Peers) -> Self {
        Self { peers }
    }
}

/// Whether appends to a follower go pipelined over `AppendStream` ([`PeerConn::stream_append`]);
/// a switch kept so that a member can be built to send one append at a time (as on openraft
/// 0.9) when a transport problem needs to be told apart from a pipelining one.
const PIPELINED_APPENDS: bool = true;

/// One member as openraft's replication and elections talk to it.
pub struct PeerConn {
    peers: Peers,
    target: u64,
    member: Member,
    /// The bytes of entries the next AppendEntries carries at most ([`AppendBudget`]).
    budget: AppendBudget,
    /// Whether the peer takes pipelined appends ([`PeerConn::stream_append`]); a member of an
    /// older build answers `Unimplemented`, and is sent one append at a time from then on.
    streams: bool,
}

/// How many bytes of entries one unary AppendEntries to a peer carries (heartbeats, and peers
/// that take no pipelined appends): openraft drops an append not answered within one heartbeat
/// interval and sends the same entries again, so a batch
/// that cannot cross (encode, send, decode, write and fsync on the follower) in that time never
/// does. The budget halves after each append of several entries that did not finish, down to
/// [`MIN_APPEND_BUDGET`] (one entry always goes), and doubles after each answered in under a
/// quarter of the time, up to the log's own cap ([`crate::log_store::MAX_APPEND_BYTES`]). The
/// entries past it are left for the next append: the follower's answer for the prefix is
/// passed on as `PartialSuccess` of the prefix's last entry.
#[derive(Debug)]
struct AppendBudget {
    bytes: usize,
    /// An append was sent and neither answered nor failed: openraft dropped it at its timeout.
    unfinished: bool,
}

/// The least an [`AppendBudget`] shrinks to.
const MIN_APPEND_BUDGET: usize = 64 << 10;

impl AppendBudget {
    fn new() -> Self {
        Self {
            bytes: crate::log_store::MAX_APPEND_BYTES,
            unfinished: false,
        }
    }

    /// How many of `entries` (at least one) fit the budget, noting first whether the last
    /// append was dropped unfinished.
    fn take(&mut self, entries: &[crate::types::typ::Entry]) -> usize {
        if std::mem::take(&mut self.unfinished) {
            self.bytes = (self.bytes / 2).max(MIN_APPEND_BUDGET);
            tracing::debug!(budget = self.bytes, "an append timed out: smaller appends");
        }
        let mut total = 0usize;
        let mut fit = 0;
        for e in entries {
            total = total.saturating_add(crate::log_store::approx_entry_size(e));
            if total > self.bytes && fit > 0 {
                break;
            }
            fit += 1;
        }
        fit
    }

    /// An append of `entries` was answered after `took`, of a TTL of `ttl`.
    fn answered(&mut self, entries: usize, took: std::time::Duration, ttl: std::time::Duration) {
        self.unfinished = false;
        if entries > 0 && took < ttl / 4 {
            self.bytes = (self.bytes * 2).min(crate::log_store::MAX_APPEND_BYTES);
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConn;

    async fn new_client(&mut self, target: MemberId, node: &Member) -> PeerConn {
        PeerConn {
            peers: self.peers.clone(),
            target: target.0,
            member: node.clone(),
            budget: AppendBudget::new(),
            streams: PIPELINED_APPENDS,
        }
    }

    /// Heartbeats go one unary call each (openraft sends each as a stream of one append): no
    /// stream to open per heartbeat, and each answered one is the link's round trip.
    async fn new_heartbeat_client(&mut self, target: MemberId, node: &Member) -> PeerConn {
        PeerConn {
            streams: false,
            ..self.new_client(target, node).await
        }
    }
}

impl PeerConn {
    /// One Raft RPC, answered by the peer's Raft as `Result<Resp, RaftError>`.
    async fn raft_call<Req, Resp>(
        &self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<TypeConfig>> = self
            .peers
            .call(
                self.target,
                &self.member,
                rpc,
                request,
                Some(option.hard_ttl()),
            )
            .await?;
        // The only error a peer's Raft answers with is that it stopped.
        answer.map_err(|e| CallError::Unreachable(format!("peer {:x}: {e}", self.target)))
    }
}

/// A failed call as openraft's replication and elections take it.
fn rpc_error(e: CallError) -> RPCError<TypeConfig> {
    match e {
        CallError::Unreachable(_) | CallError::NotSent(_) | CallError::Timeout => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        e => RPCError::Network(NetworkError::new(&e)),
    }
}

/// Bytes of a snapshot one chunk carries, unless openraft says otherwise.
const SNAPSHOT_CHUNK: usize = 3 << 20;

impl RaftNetworkV2<TypeConfig> for PeerConn {
    type SnapshotData = crate::SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut entries = self.budget.take(&rpc.entries);
        loop {
            let cut = entries < rpc.entries.len();
            let mut sent = rpc.clone();
            sent.entries.truncate(entries);
            let last = sent.entries.last().map(|e| e.log_id);
            let started = std::time::Instant::now();
            self.budget.unfinished = entries > 1;
            let answer: Result<AppendEntriesResponse<TypeConfig>, CallError> =
                self.raft_call(Rpc::AppendEntries, &sent, &option).await;
            let took = started.elapsed();
            self.budget.answered(entries, took, option.hard_ttl());
            // A heartbeat carries no entries: its answered round trip is the link's latency,
            // what etcd's prober measures.
            if entries == 0 && answer.is_ok() {
                metrics::histogram!(crate::metrics::PEER_ROUND_TRIP, "To" => format!("{:x}", self.target))
                    .record(took.as_secs_f64());
            }
            return match answer {
                // The follower holds (durably: openraft answers an append once it is flushed)
                // the prefix sent, exactly what it would have answered had openraft sent only
                // that.
                Ok(AppendEntriesResponse::Success) if cut => {
                    Ok(AppendEntriesResponse::PartialSuccess(last))
                }
                Ok(other) => Ok(other),
                Err(CallError::TooLarge { bytes, limit }) if entries > 1 => {
                    // Entries in proportion to what fits, at least one and fewer than now.
                    let fits = (entries as u128 * limit as u128 / bytes.max(1) as u128) as usize;
                    let hint = fits.clamp(1, entries - 1);
                    tracing::debug!(
                        entries,
                        bytes,
                        hint,
                        "append too large for one message; splitting"
                    );
                    entries = hint;
                    continue;
                }
                Err(e) => Err(rpc_error(e)),
            };
        }
    }

    /// Appends pipelined over one gRPC stream: each request goes as soon as openraft makes
    /// it, without waiting for the answer to the one before (etcd's leader, too, keeps many
    /// appends to a follower in flight), and the follower answers in order. An answer not
    /// back within the peer-rpc budget while requests are outstanding ends the stream (a dead
    /// or frozen peer); an idle stream waits for openraft's next request.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> futures::future::BoxFuture<
        's,
        Result<
            futures::stream::BoxStream<
                's,
                Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>,
            >,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        if !self.streams {
            return openraft::network::stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            use futures::StreamExt;
            use std::sync::atomic::{AtomicUsize, Ordering};
            // openraft waits out its backoff (after a failed session) before it hands over the
            // first request, not before it calls this: opened at once, a peer that is down or
            // frozen would be asked to open a stream again the moment the last attempt failed.
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(futures::stream::empty().boxed());
            };
            let input = futures::stream::iter([first]).chain(input);
            let mut client = self
                .peers
                .client(self.target, &self.member)
                .map_err(rpc_error)?;
            let budget = self.peers.budgets.get(Layer::PeerRpc);
            let outstanding = Arc::new(AtomicUsize::new(0));
            let sent = Arc::clone(&outstanding);
            // openraft's request stream waits for new entries and never ends by itself: the
            // outgoing half ends when this session does (its answers dropped, or the stream
            // never opened), else the task sending it would outlive the session, one per
            // attempt to reach a frozen peer.
            let session = tokio_util::sync::CancellationToken::new();
            let session_over = session.clone().cancelled_owned();
            let session = session.drop_guard();
            let outbound = input.take_until(session_over).map(move |req| {
                sent.fetch_add(1, Ordering::SeqCst);
                // bincode writes any of openraft's messages; an empty payload would end the
                // stream at the peer, which the leader sees as a failed session.
                encode(&req).unwrap_or(Payload { data: Vec::new() })
            });
            let mut request = tonic::Request::new(outbound);
            if let Some(sender) = self.peers.sender {
                request.metadata_mut().insert(SENDER, sender.into());
            }
            // Opening is one round trip, bounded by openraft's TTL as a unary append is: an
            // attempt on a frozen peer ends when a heartbeat to it would, and the next waits out
            // openraft's backoff instead of holding a pending stream (two tasks in the HTTP/2
            // client) for the whole peer-rpc budget.
            let opened = deadline::within(
                Layer::PeerRpc,
                Deadline::after(option.hard_ttl().min(budget)),
                client.append_stream(request),
            )
            .await
            .map_err(|_| rpc_error(CallError::Timeout))?;
            let inbound = match opened {
                Ok(response) => response.into_inner(),
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    tracing::info!(
                        peer = format_args!("{:x}", self.target),
                        "peer takes no pipelined appends; sending one at a time"
                    );
                    self.streams = false;
                    return Err(rpc_error(CallError::Unreachable(status.to_string())));
                }
                Err(status) if never_sent(&status) => {
                    return Err(rpc_error(CallError::NotSent(status.to_string())))
                }
                Err(status) => return Err(rpc_error(CallError::Unreachable(status.to_string()))),
            };
            // Each answer is bounded by the peer-rpc budget, not by openraft's TTL (one heartbeat
            // interval), which a large batch written and fsynced on the follower can exceed.
            let answers = futures::stream::unfold(Some((inbound, session)), move |state| {
                let outstanding = Arc::clone(&outstanding);
                async move {
                    let (mut inbound, session) = state?;
                    let next = async {
                        if outstanding.load(Ordering::SeqCst) == 0 {
                            // Nothing to answer: only the end of the stream or an error comes.
                            Ok(inbound.message().await)
                        } else {
                            deadline::within(
                                Layer::PeerRpc,
                                Deadline::after(budget),
                                inbound.message(),
                            )
                            .await
                        }
                    };
                    let answer = match next.await {
                        Err(_) => Err(rpc_error(CallError::Timeout)),
                        Ok(Err(status)) => {
                            Err(rpc_error(CallError::Unreachable(status.to_string())))
                        }
                        Ok(Ok(None)) => return None,
                        Ok(Ok(Some(payload))) => {
                            outstanding.fetch_sub(1, Ordering::SeqCst);
                            match decode::<Result<StreamAppendResult<TypeConfig>, String>>(&payload)
                            {
                                Ok(Ok(result)) => Ok(result),
                                Ok(Err(stopped)) => Err(rpc_error(CallError::Unreachable(stopped))),
                                Err(e) => Err(rpc_error(CallError::Protocol(e))),
                            }
                        }
                    };
                    // A refusal (conflict, higher vote) or an error ends the stream.
                    let more = matches!(answer, Ok(Ok(_)));
                    Some((answer, more.then_some((inbound, session))))
                }
            });
            Ok(answers.boxed())
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(Rpc::Vote, &rpc, &option)
            .await
            .map_err(rpc_error)
    }

    /// Sends the snapshot in chunks, each its own call within openraft's TTL; the follower
    /// installs it when the last arrives. A follower that knows a higher vote answers with it
    /// at any chunk, which ends the send.
    async fn full_snapshot(
        &mut self,
        vote: crate::types::typ::Vote,
        snapshot: crate::types::typ::Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        use tokio::io::AsyncReadExt;
        let chunk_size = option
            .snapshot_chunk_size()
            .unwrap_or(SNAPSHOT_CHUNK)
            .max(1);
        let meta = snapshot.meta;
        let mut data = snapshot.snapshot;
        let mut offset = 0u64;
        let network = |e: &dyn std::fmt::Display| {
            StreamingError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
        };
        tokio::pin!(cancel);
        loop {
            let mut buf = vec![0u8; chunk_size];
            let mut filled = 0;
            while filled < chunk_size {
                let n = data
                    .read(&mut buf[filled..])
                    .await
                    .map_err(|e| network(&format!("reading the snapshot: {e}")))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            buf.truncate(filled);
            let done = filled < chunk_size;
            let chunk = SnapshotChunk {
                vote,
                meta: meta.clone(),
                offset,
                data: buf,
                done,
            };
            let call = self
                .peers
                .call::<_, Result<SnapshotResponse<TypeConfig>, String>>(
                    self.target,
                    &self.member,
                    Rpc::InstallSnapshot,
                    &chunk,
                    Some(option.hard_ttl()),
                );
            let answer = tokio::select! {
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
                answer = call => answer,
            };
            match answer {
                Ok(Ok(resp)) if done || resp.vote > vote => return Ok(resp),
                Ok(Ok(_)) => offset += filled as u64,
                Ok(Err(refused)) => return Err(network(&refused)),
                Err(
                    e @ (CallError::Unreachable(_) | CallError::NotSent(_) | CallError::Timeout),
                ) => return Err(StreamingError::Unreachable(Unreachable::new(&e))),
                Err(e) => return Err(network(&e)),
            }
        }
    }
}

/// The server side of the protocol, over a running member.
pub struct PeerService<B: mvcc::Backend> {
    node: crate::Node<B>,
    /// The snapshot being received, between its chunks.
    receiving: Arc<Mutex<Option<Incoming>>>,
}

/// A snapshot whose first chunks arrived: the file they are written to and where the next
/// one starts.
struct Incoming {
    vote: crate::types::typ::Vote,
    meta: crate::types::typ::SnapshotMeta,
    file: tokio::fs::File,
    next: u64,
}

impl<B: mvcc::Backend> PeerService<B> {
    /// Serves `node`'s peers.
    pub fn new(node: crate::Node<B>) -> pb::peer_server::PeerServer<Self> {
        pb::peer_server::PeerServer::new(Self {
            node,
            receiving: Arc::default(),
        })
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE)
    }
}

/// Refuses a message from `sender` unless it is in the membership `node` knows (joint
/// configurations and learners included). A member that has no membership yet (one waiting to
/// join) accepts its first messages from whoever leads.
fn admit<B: mvcc::Backend>(
    node: &crate::Node<B>,
    rpc: &str,
    sender: Option<u64>,
) -> Result<(), tonic::Status> {
    // Looked up in place, nothing collected: this runs for every append a follower takes.
    let admitted = {
        let metrics = node.raft().metrics();
        let m = metrics.borrow_watched();
        let mut nodes = m.membership_config.membership().nodes().map(|(id, _)| id.0);
        match nodes.next() {
            None => true,
            Some(first) => sender.is_some_and(|s| first == s || nodes.any(|id| id == s)),
        }
    };
    if admitted {
        return Ok(());
    }
    let from = sender.map_or_else(|| "an unnamed sender".to_string(), |id| format!("{id:x}"));
    tracing::warn!(rpc, from = %from, "refused a peer message from a member not in the membership");
    metrics::counter!(REFUSED_PEER_MESSAGES).increment(1);
    Err(tonic::Status::permission_denied(format!(
        "{rpc} from {from}: not a member of this cluster"
    )))
}

impl<B: mvcc::Backend> PeerService<B> {
    /// Writes one chunk of a snapshot; the last one hands the whole to Raft to install. A
    /// chunk from a leader below this member's vote is answered with the vote and not
    /// written; one out of order is refused, and the leader starts the snapshot again.
    async fn take_chunk(
        &self,
        chunk: SnapshotChunk,
    ) -> Result<SnapshotResponse<crate::TypeConfig>, String> {
        use tokio::io::AsyncWriteExt;
        let own = self.node.raft().metrics().borrow_watched().vote;
        if chunk.vote < own {
            return Ok(SnapshotResponse::new(own));
        }
        let taken = self
            .receiving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let mut incoming = if chunk.offset == 0 {
            let path = self.node.incoming_snapshot_path();
            let file = crate::state_machine::open_incoming_snapshot(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Incoming {
                vote: chunk.vote,
                meta: chunk.meta.clone(),
                file,
                next: 0,
            }
        } else {
            match taken {
                Some(i)
                    if i.next == chunk.offset && i.vote == chunk.vote && i.meta == chunk.meta =>
                {
                    i
                }
                _ => {
                    return Err(format!(
                        "snapshot chunk at offset {} out of order; send the snapshot again",
                        chunk.offset
                    ))
                }
            }
        };
        incoming
            .file
            .write_all(&chunk.data)
            .await
            .map_err(|e| format!("writing a received snapshot: {e}"))?;
        incoming.next += chunk.data.len() as u64;
        if !chunk.done {
            *self
                .receiving
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(incoming);
            return Ok(SnapshotResponse::new(own));
        }
        let snapshot = crate::types::typ::Snapshot {
            meta: incoming.meta,
            snapshot: crate::SnapshotData::received(incoming.file),
        };
        let installed = self
            .node
            .raft()
            .install_full_snapshot(incoming.vote, snapshot)
            .await
            .map_err(|e| e.to_string());
        // Raft answers once the install is done, or at once when it did not need the snapshot
        // (its vote or its log moved past it): then the received bytes are left; they go.
        let path = self.node.incoming_snapshot_path().to_path_buf();
        let removed = tokio::task::spawn_blocking(move || mvcc::durable::remove_synced(&path))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = removed {
            tracing::warn!(cause = %e, "removing a received snapshot Raft did not install");
        }
        installed
    }
}

/// Peer messages refused because their sender is not a member.
const REFUSED_PEER_MESSAGES: &str = "metastore_peer_messages_refused_total";

/// The sender a request's metadata names, if any.
fn named_sender<T>(request: &tonic::Request<T>) -> Option<u64> {
    request.metadata().get(SENDER)?.to_str().ok()?.parse().ok()
}

fn bad_request(e: String) -> tonic::Status {
    tonic::Status::invalid_argument(format!("undecodable peer message: {e}"))
}

/// `request` decoded, once the member whose vote it carries (`sender`) is admitted.
fn from_member<B: mvcc::Backend, T: DeserializeOwned>(
    node: &crate::Node<B>,
    rpc: &str,
    request: &tonic::Request<Payload>,
    sender: impl FnOnce(&T) -> u64,
) -> Result<T, tonic::Status> {
    let decoded: T = decode(request.get_ref()).map_err(bad_request)?;
    admit(node, rpc, Some(sender(&decoded)))?;
    Ok(decoded)
}

fn reply<T: Serialize>(v: &T) -> Result<tonic::Response<Payload>, tonic::Status> {
    encode(v)
        .map(tonic::Response::new)
        .map_err(tonic::Status::internal)
}

#[tonic::async_trait]
impl<B: mvcc::Backend> pb::peer_server::Peer for PeerService<B> {
    async fn append_entries(
        &self,
        request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let req: AppendEntriesRequest<TypeConfig> = from_member(
            &self.node,
            "append-entries",
            &request,
            |r: &AppendEntriesRequest<TypeConfig>| r.vote.leader_id().node_id.0,
        )?;
        // A leader whose vote is not below this member's reached it (what any answer but a
        // higher vote meant): counted as it arrives, as etcd counts any message from its
        // leader, not once a large append is written (a catching-up follower's appends may
        // take longer to write than its election timer waits; pre-vote reads it too).
        let own = self.node.raft().metrics().borrow_watched().vote;
        if req.vote >= own {
            self.node.note_leader_contact();
        }
        reply(&self.node.raft().append_entries(req).await)
    }

    type AppendStreamStream = futures::stream::BoxStream<'static, Result<Payload, tonic::Status>>;

    /// Pipelined appends: each request goes to Raft as it arrives (Raft keeps several in
    /// flight, each answered once durable), the answers go back in order. A request that does
    /// not decode, or comes from a non-member, ends the stream.
    async fn append_stream(
        &self,
        request: tonic::Request<tonic::Streaming<Payload>>,
    ) -> Result<tonic::Response<Self::AppendStreamStream>, tonic::Status> {
        use futures::StreamExt;
        let node = self.node.clone();
        let inbound = request.into_inner();
        let requests = inbound
            .take_while(|message| std::future::ready(message.is_ok()))
            .filter_map(|message| std::future::ready(message.ok()))
            .map(|payload| decode::<AppendEntriesRequest<TypeConfig>>(&payload))
            .take_while(|decoded| {
                if let Err(e) = decoded {
                    tracing::warn!(cause = %e, "undecodable pipelined append; stream ended");
                }
                std::future::ready(decoded.is_ok())
            })
            .filter_map(|decoded| std::future::ready(decoded.ok()));
        let admitted = {
            let node = node.clone();
            requests.take_while(move |req| {
                let admitted =
                    admit(&node, "append-stream", Some(req.vote.leader_id().node_id.0)).is_ok();
                // As for a single append: a leader whose vote is not below this member's
                // reached it.
                if admitted && req.vote >= node.raft().metrics().borrow_watched().vote {
                    node.note_leader_contact();
                }
                std::future::ready(admitted)
            })
        };
        let answers = node.raft().stream_append(admitted).map(|answer| {
            let answer: Result<StreamAppendResult<TypeConfig>, String> =
                answer.map_err(|fatal| fatal.to_string());
            encode(&answer).map_err(tonic::Status::internal)
        });
        Ok(tonic::Response::new(answers.boxed()))
    }

    async fn vote(
        &self,
        request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let req: VoteRequest<TypeConfig> = from_member(
            &self.node,
            "vote",
            &request,
            |r: &VoteRequest<TypeConfig>| r.vote.leader_id().node_id.0,
        )?;
        reply(&crate::elections::answer(&self.node, req).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let chunk: SnapshotChunk = from_member(
            &self.node,
            "install-snapshot",
            &request,
            |c: &SnapshotChunk| c.vote.leader_id().node_id.0,
        )?;
        let vote = chunk.vote;
        let answer = self.take_chunk(chunk).await;
        // A snapshot's chunks hold the replication stream, heartbeats included: each one the
        // member took is its leader's contact (the election timer must not run out meanwhile).
        if matches!(&answer, Ok(r) if r.vote == vote) {
            self.node.note_leader_contact();
        }
        reply(&answer)
    }

    async fn transfer_leader(
        &self,
        request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let req: TransferLeaderRequest<TypeConfig> = from_member(
            &self.node,
            "transfer-leader",
            &request,
            |r: &TransferLeaderRequest<TypeConfig>| r.from_leader().leader_id().node_id.0,
        )?;
        let answer: Result<TransferLeaderResponse<TypeConfig>, RaftError<TypeConfig>> = self
            .node
            .raft()
            .handle_transfer_leader(req)
            .await
            .map_err(RaftError::Fatal);
        reply(&answer)
    }

    async fn forward(
        &self,
        request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let req: Forwarded = decode(request.get_ref()).map_err(bad_request)?;
        // Every forward names its sender; a proposal must also come from its own origin.
        let sender = match (&req, named_sender(&request)) {
            (Forwarded::Propose(p), Some(id)) if p.origin != id => None,
            (_, named) => named,
        };
        admit(&self.node, "forward", sender)?;
        reply(&self.node.serve_forwarded(req).await)
    }

    async fn members(
        &self,
        _request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let members = {
            let metrics = self.node.raft().metrics();
            let m = metrics.borrow_watched();
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, member)| (id.0, member.clone()))
                .collect()
        };
        reply(&MembersReply {
            cluster_id: self.node.cluster_id(),
            members,
        })
    }
    async fn pre_vote(
        &self,
        request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let req: crate::prevote::PreVoteRequest = decode(request.get_ref()).map_err(bad_request)?;
        admit(&self.node, "pre-vote", named_sender(&request))?;
        let leads =
            self.node.raft().metrics().borrow_watched().state == openraft::ServerState::Leader;
        let own = self.node.raft().data_metrics().borrow_watched().last_log;
        reply(&crate::prevote::grants(
            leads,
            self.node.quiet_for(),
            self.node.election_timeout(),
            req.last_log_id,
            own,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::typ::{EntryPayload, Vote};
    use crate::types::{Proposal, Tagged};

    /// `n` entries of one put of `value_bytes` each, from index 1.
    fn big_append(n: u64, value_bytes: usize) -> AppendEntriesRequest<TypeConfig> {
        let entries = (1..=n)
            .map(|index| crate::test_support::put_entry(index, value_bytes))
            .collect();
        AppendEntriesRequest {
            vote: Vote::new_committed(1, crate::MemberId(1)),
            prev_log_id: None,
            leader_commit: None,
            entries,
        }
    }

    /// A peer that accepts every append: only the transport is under test.
    struct Accepting;

    #[tonic::async_trait]
    impl pb::peer_server::Peer for Accepting {
        async fn append_entries(
            &self,
            _: tonic::Request<Payload>,
        ) -> Result<tonic::Response<Payload>, tonic::Status> {
            reply(&Ok::<_, RaftError<TypeConfig>>(
                AppendEntriesResponse::<TypeConfig>::Success,
            ))
        }

        type AppendStreamStream =
            futures::stream::BoxStream<'static, Result<Payload, tonic::Status>>;

        async fn append_stream(
            &self,
            _: tonic::Request<tonic::Streaming<Payload>>,
        ) -> Result<tonic::Response<Self::AppendStreamStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("unary appends only"))
        }

        async fn vote(
            &self,
            _: tonic::Request<Payload>,
        ) -> Result<tonic::Response<Payload>, tonic::Status> {
            Err(tonic::Status::unimplemented("vote"))
        }

        async fn install_snapshot(
            &self,
            _: tonic::Request<Payload>,
        ) -> Result<tonic::Response<Payload>, tonic::Status> {
            Err(tonic::Status::unimplemented("install_snapshot"))
        }

        async fn forward(
            &self,
            _: tonic::Request<Payload>,
        ) -> Result<tonic::Response<Payload>, tonic::Status> {
            Err(tonic::Status::unimplemented("forward"))
        }

        async fn transfer_leader(
            &self,
            _: tonic::Request<Payload>,
        ) -> Result<tonic::Response<Payload>, tonic::Status> {
            Err(tonic::Status::unimplemented("accepting"))
        }

        async fn members(
            &self,
            _: tonic::Request<Payload>,
        ) -> Result<tonic::Response<Payload>, tonic::Status> {
            Err(tonic::Status::unimplemented("members"))
        }

        async fn pre_vote(
            &self,
            _: tonic::Request<Payload>,
        ) -> Result<tonic::Response<Payload>, tonic::Status> {
            Err(tonic::Status::unimplemented("pre-vote"))
        }
    }

    /// A txn whose one success op is a txn, `depth` levels down, as bincode encodes it; built
    /// as bytes because the value itself could not even be dropped without overflowing.
    fn nested_txn_bytes(depth: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(depth * 28 + 24);
        for _ in 0..depth {
            bytes.extend_from_slice(&0u64.to_le_bytes()); // no compares
            bytes.extend_from_slice(&1u64.to_le_bytes()); // one success op...
            bytes.extend_from_slice(&3u32.to_le_bytes()); // ...RequestOp::Txn
        }
        bytes.extend_from_slice(&[0; 24]); // the innermost txn: empty
        for _ in 0..depth {
            bytes.extend_from_slice(&0u64.to_le_bytes()); // no failure ops
        }
        bytes
    }

    /// A marker txn, findable in an encoded message and replaced there by a nested one.
    fn marker_txn() -> mvcc::TxnRequest {
        mvcc::TxnRequest {
            success: vec![mvcc::RequestOp::Range(mvcc::RangeRequest {
                key: b"nested-txn-goes-here".to_vec(),
                ..Default::default()
            })],
            ..Default::default()
        }
    }

    fn marker_proposal() -> Proposal {
        Proposal {
            origin: 2,
            incarnation: 7,
            seq: 1,
            commands: vec![Tagged {
                id: 1,
                command: mvcc::Command::Txn(marker_txn()),
            }],
        }
    }

    /// `message` encoded, its marker txn replaced by one nested `depth` deep.
    fn with_nested_txn<T: Serialize>(message: &T, depth: usize) -> Payload {
        let mut data = encode(message).unwrap().data;
        let marker = bincode::serialize(&marker_txn()).unwrap();
        let at = data
            .windows(marker.len())
            .position(|w| w == marker.as_slice())
            .expect("the message carries the marker txn");
        data.splice(at..at + marker.len(), nested_txn_bytes(depth));
        Payload { data }
    }

    fn append_with_marker() -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, crate::MemberId(1)),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![crate::types::typ::Entry {
                log_id: crate::types::typ::log_id(1, 1, 1),
                payload: EntryPayload::Normal(marker_proposal()),
            }],
        }
    }

    #[test]
    fn a_txn_nested_deeper_than_any_client_can_send_is_refused_not_a_stack_overflow() {
        // 100,000 levels: decoding recursed once per level and overflowed the stack, killing
        // the member before any check ran.
        let forwarded = with_nested_txn(&Forwarded::Propose(marker_proposal()), 100_000);
        let err = decode::<Forwarded>(&forwarded).expect_err("a forwarded 100,000-deep txn");
        assert!(err.contains("nested"), "{err}");
        let append = with_nested_txn(&append_with_marker(), 100_000);
        let err = decode::<AppendEntriesRequest<TypeConfig>>(&append)
            .expect_err("an append carrying a 100,000-deep txn");
        assert!(err.contains("nested"), "{err}");
        // As deep as a client's txn can be (prost's recursion limit of 100 allows about 50
        // levels) still decodes, in both.
        let ok = with_nested_txn(&Forwarded::Propose(marker_proposal()), 60);
        assert!(decode::<Forwarded>(&ok).is_ok());
        let ok = with_nested_txn(&append_with_marker(), 60);
        assert!(decode::<AppendEntriesRequest<TypeConfig>>(&ok).is_ok());
        // The bound is exact: 64 levels decode, 65 do not.
        let deepest = with_nested_txn(&Forwarded::Propose(marker_proposal()), 63);
        assert!(decode::<Forwarded>(&deepest).is_ok());
        let over = with_nested_txn(&Forwarded::Propose(marker_proposal()), 64);
        assert!(decode::<Forwarded>(&over).is_err());
    }

    /// A small deterministic generator (xorshift64*): failures replay from the seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Feeds `T`'s decode every prefix of every valid sample, each sample with bytes
    /// changed at random, and random bytes: each may fail, none may panic or overflow.
    fn garbage_never_panics<T: DeserializeOwned>(samples: &[Vec<u8>], rng: &mut Rng) -> usize {
        let mut refused = 0;
        let mut try_decode = |data: Vec<u8>| {
            if decode::<T>(&Payload { data }).is_err() {
                refused += 1;
            }
        };
        for sample in samples {
            for cut in 0..sample.len() {
                try_decode(sample[..cut].to_vec());
            }
            for _ in 0..300 {
                let mut data = sample.clone();
                for _ in 0..=rng.below(4) {
                    let at = rng.below(data.len());
                    if let Some(b) = data.get_mut(at) {
                        *b = rng.next() as u8;
                    }
                }
                try_decode(data);
            }
        }
        for _ in 0..300 {
            let len = rng.below(256);
            try_decode((0..len).map(|_| rng.next() as u8).collect());
        }
        refused
    }

    #[test]
    fn garbage_on_any_peer_rpc_is_refused_never_a_panic() {
        let mut rng = Rng(0x005e_ed0f_9a4b_a6e5);
        let enc = |data: Payload| data.data;
        let nested = |v: &dyn Fn() -> Payload| enc(v());
        let vote = VoteRequest::<TypeConfig>::new(
            Vote::new(3, crate::MemberId(2)),
            Some(crate::types::typ::log_id(2, 1, 9)),
        );
        let snapshot = SnapshotChunk {
            vote: Vote::new_committed(1, crate::MemberId(1)),
            meta: Default::default(),
            offset: 4096,
            data: b"snapshot chunk".to_vec(),
            done: false,
        };
        let forwards = [
            nested(&|| with_nested_txn(&Forwarded::Propose(marker_proposal()), 5)),
            enc(encode(&Forwarded::ReadIndex).unwrap()),
            enc(encode(&Forwarded::LeaseRenew(77)).unwrap()),
            enc(encode(&Forwarded::LeaseRemaining(77)).unwrap()),
            enc(
                encode(&Forwarded::Membership(crate::membership::Change::Add {
                    peer_urls: vec!["http://127.0.0.1:2380".into()],
                    learner: true,
                }))
                .unwrap(),
            ),
        ];
        let forward_replies = [
            enc(encode(&ForwardReply::Index(12)).unwrap()),
            enc(encode(&ForwardReply::Remaining(Some(1500))).unwrap()),
            enc(encode(&ForwardReply::Members(vec![(
                2,
                Member {
                    name: "m2".into(),
                    peer_urls: vec!["http://127.0.0.1:2380".into()],
                    client_urls: vec!["http://127.0.0.1:2379".into()],
                },
                false,
            )]))
            .unwrap()),
            enc(encode(&ForwardReply::Refused(Refusal::NotLeader(Some(3)))).unwrap()),
        ];
        let mut refused = 0;
        refused += garbage_never_panics::<AppendEntriesRequest<TypeConfig>>(
            &[nested(&|| with_nested_txn(&append_with_marker(), 5))],
            &mut rng,
        );
        refused += garbage_never_panics::<
            Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>>,
        >(
            &[enc(reply(&Ok::<_, RaftError<TypeConfig>>(
                AppendEntriesResponse::<TypeConfig>::Success,
            ))
            .unwrap()
            .into_inner())],
            &mut rng,
        );
        refused += garbage_never_panics::<VoteRequest<TypeConfig>>(
            &[enc(encode(&vote).unwrap())],
            &mut rng,
        );
        refused += garbage_never_panics::<Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>>>(
            &[enc(encode(&Ok::<_, RaftError<TypeConfig>>(
                VoteResponse::<TypeConfig>::new(Vote::new(3, crate::MemberId(2)), None, true),
            ))
            .unwrap())],
            &mut rng,
        );
        refused +=
            garbage_never_panics::<SnapshotChunk>(&[enc(encode(&snapshot).unwrap())], &mut rng);
        refused += garbage_never_panics::<Result<SnapshotResponse<TypeConfig>, String>>(
            &[enc(encode(&Ok::<_, String>(
                SnapshotResponse::<TypeConfig>::new(Vote::new_committed(1, crate::MemberId(1))),
            ))
            .unwrap())],
            &mut rng,
        );
        refused += garbage_never_panics::<Forwarded>(&forwards, &mut rng);
        refused += garbage_never_panics::<ForwardReply>(&forward_replies, &mut rng);
        // Truncations must be refused (trailing garbage too), or the check above tests little.
        assert!(refused > 1000, "only {refused} inputs refused");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pipelined_session_reaches_the_peer_only_with_a_request_to_send() {
        // A frozen peer: the kernel completes the connection, nothing ever answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::channel(16);
        let frozen = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
                let _ = accepted_tx.send(()).await;
            }
        });
        let mut conn = PeerConn {
            budget: AppendBudget::new(),
            streams: true,
            peers: Peers::new(Budgets::default(), None),
            target: 2,
            member: Member {
                name: "m2".into(),
                peer_urls: vec![format!("http://{addr}")],
                client_urls: Vec::new(),
            },
        };
        let option = || RPCOption::new(Duration::from_millis(100));
        // openraft holds the first request back while it backs off from a failed session:
        // meanwhile the peer is not contacted at all.
        let waited = deadline::within(
            Layer::PeerRpc,
            Deadline::after(Duration::from_millis(500)),
            conn.stream_append(
                futures::stream::pending::<AppendEntriesRequest<TypeConfig>>(),
                option(),
            ),
        )
        .await
        .is_err();
        assert!(
            waited,
            "a session with nothing to send ended instead of waiting for its first request"
        );
        assert!(
            accepted.try_recv().is_err(),
            "the peer was contacted before there was anything to send"
        );
        // With a request to send, the stream is opened, and bounded by openraft's TTL.
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(1, crate::MemberId(1)),
            prev_log_id: None,
            leader_commit: None,
            entries: Vec::new(),
        };
        let opened = deadline::within(
            Layer::PeerRpc,
            Deadline::after(Duration::from_secs(5)),
            conn.stream_append(Box::pin(futures::stream::iter([request])), option()),
        )
        .await;
        assert!(
            matches!(opened, Ok(Err(RPCError::Unreachable(_)))),
            "opening a stream to a frozen peer: {:?}",
            opened.map(|r| r.map(|_| "a stream"))
        );
        assert!(
            accepted.recv().await.is_some(),
            "the peer was never contacted"
        );
        frozen.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_over_the_message_limit_asks_openraft_for_fewer_entries() {
        // The 128 MiB limit scaled down to 1 MiB (encoding 128 MiB takes half a minute in a
        // debug build): 32 entries of 48 KiB do not fit in one message.
        const LIMIT: usize = 1 << 20;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = futures::stream::unfold(listener, |l| async move {
            let accepted = l.accept().await.map(|(s, _)| s);
            Some((accepted, l))
        });
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    pb::peer_server::PeerServer::new(Accepting)
                        .max_decoding_message_size(LIMIT)
                        .max_encoding_message_size(LIMIT),
                )
                .serve_with_incoming(incoming),
        );
        let mut conn = PeerConn {
            budget: AppendBudget::new(),
            streams: false,
            peers: Peers::new(Budgets::default(), None).with_max_message(LIMIT),
            target: 2,
            member: Member {
                name: "m2".into(),
                peer_urls: vec![format!("http://{addr}")],
                client_urls: Vec::new(),
            },
        };
        let option = || RPCOption::new(Duration::from_secs(5));
        let small = conn.append_entries(big_append(4, 48 << 10), option()).await;
        assert!(
            matches!(small, Ok(AppendEntriesResponse::Success)),
            "an append within the limit: {small:?}"
        );
        // An oversized append goes as the prefix that fits, answered as its partial success.
        let sent = match conn
            .append_entries(big_append(32, 48 << 10), option())
            .await
        {
            Ok(AppendEntriesResponse::PartialSuccess(Some(last))) => last.index,
            other => panic!("an oversized append answered {other:?}"),
        };
        assert!(
            (1..32).contains(&sent),
            "{sent} entries sent: the message did not shrink"
        );
        // After appends dropped at openraft's timeout, a smaller prefix goes, answered as the
        // partial success of its last entry.
        for _ in 0..8 {
            conn.budget.unfinished = true;
            conn.budget.take(&[]);
        }
        let prefix = conn.append_entries(big_append(4, 48 << 10), option()).await;
        match prefix {
            Ok(AppendEntriesResponse::PartialSuccess(Some(last))) => {
                assert_eq!(last.index, 1, "64 KiB holds one 48 KiB entry")
            }
            other => panic!("4 entries of 48 KiB on a 64 KiB budget answered {other:?}"),
        }
        server.abort();
    }

    #[test]
    fn an_append_budget_halves_when_dropped_and_doubles_when_quick() {
        let entries: Vec<_> = (1..=80)
            .map(|i| crate::test_support::put_entry(i, 64 << 10))
            .collect();
        let mut budget = AppendBudget::new();
        let full = budget.take(&entries);
        assert!((60..=64).contains(&full), "4 MiB of 64 KiB entries: {full}");
        budget.unfinished = true;
        let half = budget.take(&entries);
        assert!(
            half * 2 <= full && half * 2 >= full - 2,
            "{full} then {half}"
        );
        for _ in 0..10 {
            budget.unfinished = true;
            budget.take(&entries);
        }
        assert_eq!(budget.take(&entries), 1, "one entry always goes");
        let ttl = Duration::from_millis(100);
        budget.answered(1, Duration::from_millis(50), ttl);
        assert_eq!(budget.take(&entries), 1, "a slow answer does not grow it");
        for _ in 0..10 {
            budget.answered(1, Duration::from_millis(5), ttl);
        }
        assert_eq!(
            budget.take(&entries),
            full,
            "quick answers grow it back to the cap"
        );
        assert_eq!(budget.take(&[]), 0, "a heartbeat carries nothing");
    }

    /// Byte strings written as one block encode to the very bytes a sequence of `u8`s did, so
    /// logs, snapshots and peers of either kind read each other.
    #[test]
    fn byte_strings_encode_as_before() {
        #[derive(Serialize, Deserialize)]
        struct Plain {
            key: Vec<u8>,
            value: Vec<u8>,
            lease: i64,
            prev_kv: bool,
            ignore_value: bool,
            ignore_lease: bool,
        }
        let put = mvcc::PutRequest {
            key: b"key".to_vec(),
            value: (0..5000u32).map(|i| i as u8).collect(),
            lease: 7,
            prev_kv: true,
            ..Default::default()
        };
        let plain = Plain {
            key: put.key.clone(),
            value: put.value.clone(),
            lease: 7,
            prev_kv: true,
            ignore_value: false,
            ignore_lease: false,
        };
        let old = bincode::serialize(&plain).unwrap();
        assert_eq!(bincode::serialize(&put).unwrap(), old);
        assert_eq!(bincode::deserialize::<mvcc::PutRequest>(&old).unwrap(), put);
        let chunk = SnapshotChunk {
            vote: Vote::new_committed(3, crate::MemberId(1)),
            meta: Default::default(),
            offset: 4096,
            data: (0..3000u32).map(|i| (i * 7) as u8).collect(),
            done: true,
        };
        let sent = encode(&chunk).unwrap();
        // The chunk's bytes are one block on the wire, after its length.
        assert!(sent.data.windows(chunk.data.len()).any(|w| w == chunk.data));
        let back: SnapshotChunk = decode(&sent).unwrap();
        assert_eq!(back, chunk);
    }

    /// A member alone, leading: the receiver of the messages under test.
    async fn lone_leader() -> (crate::Node<engine_mem::MemBackend>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let member = Member {
            name: "solo".into(),
            peer_urls: vec!["http://127.0.0.1:1".into()],
            client_urls: vec![],
        };
        let mut config = crate::NodeConfig::single(7, member, dir.path().to_path_buf());
        config.election_timeout = Duration::from_millis(150);
        config.heartbeat = Duration::from_millis(30);
        let node = crate::Node::start(config, engine_mem::MemBackend::new())
            .await
            .unwrap();
        node.wait_for_leader(Deadline::after(Duration::from_secs(10)))
            .await
            .unwrap();
        (node, dir)
    }

    /// Raft messages and forwards from an id outside the membership are refused before Raft
    /// sees them: a vote with a far higher term does not depose the leader.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_from_non_members_are_refused() {
        use pb::peer_server::Peer;
        let (node, _dir) = lone_leader().await;
        let service = PeerService {
            node: node.clone(),
            receiving: Arc::default(),
        };
        let term = || node.raft().metrics().borrow_watched().current_term;
        let before = term();
        let stranger: u64 = 0xdead;
        let vote = VoteRequest::<TypeConfig> {
            vote: Vote::new(before + 1000, crate::MemberId(stranger)),
            last_log_id: Some(crate::types::typ::log_id(before + 999, stranger, 1 << 40)),
            leadership_transfer: false,
        };
        let refused = service
            .vote(tonic::Request::new(encode(&vote).unwrap()))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        let append: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
            vote: Vote::new_committed(before + 1000, crate::MemberId(stranger)),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        };
        let refused = service
            .append_entries(tonic::Request::new(encode(&append).unwrap()))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        let proposal = Proposal {
            origin: stranger,
            incarnation: 1,
            seq: 1,
            commands: vec![],
        };
        let forward = encode(&Forwarded::Propose(proposal.clone())).unwrap();
        // Unnamed, named as a stranger, and named as a member while proposing as a stranger.
        for sender in [None, Some(stranger), Some(7)] {
            let mut request = tonic::Request::new(forward.clone());
            if let Some(id) = sender {
                request.metadata_mut().insert(SENDER, id.into());
            }
            let refused = service.forward(request).await.unwrap_err();
            assert_eq!(
                refused.code(),
                tonic::Code::PermissionDenied,
                "{sender:?}: {refused:?}"
            );
        }
        assert_eq!(term(), before, "a refused message moved the term");
        let leader = node
            .wait_for_leader(Deadline::after(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(leader, 7, "the leader was deposed");
        node.shutdown().await.unwrap();
    }
}
