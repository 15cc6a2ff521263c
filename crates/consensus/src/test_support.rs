//! Test support: one real Raft member beside a scripted peer, so tests can move the member
//! between follower and leader at the moments they choose.
//!
//! The scripted peer (member 2) grants every vote, accepts every append (holding its answers
//! while the test says so), and holds each forwarded request until the test releases it, then
//! refuses it with "too many requests" (a refusal its proposer can see).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use openraft::type_config::async_runtime::WatchReceiver as _;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadline::{Budgets, Deadline, Layer, Registry};
use mvcc::Store;
use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::{Config, Vote};
use tokio::sync::{watch, Semaphore};

use crate::batcher::Answer;
use crate::lessor::Lessor;
use crate::log_store::{LogCloser, LogStore};
use crate::network::pb::{peer_server, Payload};
use crate::network::{ForwardReply, PeerNetwork, Peers, Refusal};
use crate::state_machine::StateMachine;
use crate::types::typ::Raft;
use crate::types::{Member, TypeConfig};

/// The scripted peer's id.
pub(crate) const PEER: u64 = 2;
/// The real member's id.
pub(crate) const ME: u64 = 1;
/// The real member's incarnation.
pub(crate) const INCARNATION: u64 = 11;

fn payload<T: serde::Serialize>(v: &T) -> Result<tonic::Response<Payload>, tonic::Status> {
    Ok(tonic::Response::new(Payload {
        data: bincode::serialize(v).unwrap(),
    }))
}

/// Member 2 as a script.
#[derive(Clone)]
pub(crate) struct ScriptedPeer {
    /// Forwarded requests received so far.
    pub(crate) forwards: Arc<AtomicUsize>,
    /// Tells the test a forward arrived.
    arrived: Arc<watch::Sender<usize>>,
    /// One permit answers one held forward.
    release: Arc<Semaphore>,
    /// Whether appends are answered; while `false` their answers wait.
    appends: Arc<watch::Sender<bool>>,
}

impl ScriptedPeer {
    /// Waits until appends may be answered.
    async fn appends_open(&self) {
        let mut open = self.appends.subscribe();
        let _ = open.wait_for(|open| *open).await;
    }
}

#[tonic::async_trait]
impl peer_server::Peer for ScriptedPeer {
    async fn append_entries(
        &self,
        _request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        self.appends_open().await;
        payload(&Ok::<_, RaftError<TypeConfig>>(
            AppendEntriesResponse::<TypeConfig>::Success,
        ))
    }

    type AppendStreamStream = futures::stream::BoxStream<'static, Result<Payload, tonic::Status>>;

    /// Takes every pipelined append: each is answered as matched up to its last entry.
    async fn append_stream(
        &self,
        request: tonic::Request<tonic::Streaming<Payload>>,
    ) -> Result<tonic::Response<Self::AppendStreamStream>, tonic::Status> {
        use futures::StreamExt;
        let peer = self.clone();
        let answers = request.into_inner().then(move |message| {
            let peer = peer.clone();
            async move {
                peer.appends_open().await;
                message
            }
        });
        let answers = answers.map(|message| {
            let message = message?;
            let req: AppendEntriesRequest<TypeConfig> =
                bincode::deserialize(&message.data).unwrap();
            let matched = req.entries.last().map(|e| e.log_id).or(req.prev_log_id);
            let answer: Result<openraft::raft::StreamAppendResult<TypeConfig>, String> =
                Ok(Ok(matched));
            Ok(Payload {
                data: bincode::serialize(&answer).unwrap(),
            })
        });
        Ok(tonic::Response::new(answers.boxed()))
    }

    async fn vote(
        &self,
        request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let req: VoteRequest<TypeConfig> = bincode::deserialize(&request.get_ref().data).unwrap();
        payload(&Ok::<_, RaftError<TypeConfig>>(
            VoteResponse::<TypeConfig>::new(req.vote, None, true),
        ))
    }

    async fn install_snapshot(
        &self,
        _request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        Err(tonic::Status::unimplemented("scripted peer"))
    }

    async fn forward(
        &self,
        _request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let n = self.forwards.fetch_add(1, Ordering::SeqCst) + 1;
        self.arrived.send_replace(n);
        // Held until the test releases it; the caller's own timeout bounds the wait.
        let permit = self.release.acquire().await.unwrap();
        permit.forget();
        payload(&ForwardReply::Refused(Refusal::TooManyRequests))
    }

    async fn transfer_leader(
        &self,
        _request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        Err(tonic::Status::unimplemented("scripted peer"))
    }

    async fn members(
        &self,
        _request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        Err(tonic::Status::unimplemented("scripted peer"))
    }

    async fn pre_vote(
        &self,
        _request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        Err(tonic::Status::unimplemented("scripted peer"))
    }
}

/// A real member (id 1) of a two-member cluster whose other member is [`ScriptedPeer`].
pub(crate) struct Harness {
    pub(crate) raft: Raft<engine_mem::MemBackend>,
    pub(crate) peers: Peers,
    pub(crate) waiters: Registry<Answer>,
    pub(crate) peer: ScriptedPeer,
    arrived: watch::Receiver<usize>,
    _closer: LogCloser,
    _dir: tempfile::TempDir,
}

/// Generous: only a broken member waits this long.
pub(crate) const LONG: Duration = Duration::from_secs(60);

impl Harness {
    /// Starts the scripted peer and the member; the member has no leader yet.
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (arrived_tx, arrived) = watch::channel(0);
        let peer = ScriptedPeer {
            forwards: Arc::default(),
            arrived: Arc::new(arrived_tx),
            release: Arc::new(Semaphore::new(0)),
            appends: Arc::new(watch::channel(true).0),
        };
        let server = tonic::transport::Server::builder()
            .add_service(peer_server::PeerServer::new(peer.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(server);

        let dir = tempfile::tempdir().unwrap();
        let (log, closer) = LogStore::open(&dir.path().join("raft-log"), ME, INCARNATION).unwrap();
        let store = Store::open(engine_mem::MemBackend::new()).unwrap();
        let waiters = Registry::new("test-proposals");
        let sm = StateMachine::open(
            store,
            crate::state_machine::Proposer {
                node_id: ME,
                incarnation: INCARNATION,
                waiters: waiters.clone(),
                alarms: Default::default(),
                auth: Default::default(),
            },
            dir.path().join("snapshots"),
            Arc::new(Lessor::default()),
            Duration::from_secs(1),
            crate::compaction::Removal::new(0),
        )
        .unwrap();
        let peers = Peers::new(Budgets::default().with(Layer::PeerRpc, LONG), None);
        let config = Config {
            heartbeat_interval: 50,
            election_timeout_min: 1_000,
            election_timeout_max: 2_000,
            // Leadership moves only when the test says so.
            enable_elect: false,
            ..Default::default()
        }
        .validate()
        .unwrap();
        let raft = Raft::new(
            crate::MemberId(ME),
            Arc::new(config),
            PeerNetwork::new(peers.clone()),
            log,
            sm,
        )
        .await
        .unwrap();
        let member = |name: &str, url: String| Member {
            name: name.into(),
            peer_urls: vec![url],
            client_urls: vec![],
        };
        raft.initialize(BTreeMap::from([
            (
                crate::MemberId(ME),
                member("me", "http://127.0.0.1:1".into()),
            ),
            (crate::MemberId(PEER), member("peer", url)),
        ]))
        .await
        .unwrap();
        Self {
            raft,
            peers,
            waiters,
            peer,
            arrived,
            _closer: closer,
            _dir: dir,
        }
    }

    /// Waits until the member sees `leader` lead.
    pub(crate) async fn wait_for_leader(&self, leader: u64) {
        let mut metrics = self.raft.metrics();
        deadline::within(Layer::Api, Deadline::after(LONG), async {
            while metrics.borrow_and_update().current_leader != Some(crate::MemberId(leader)) {
                metrics.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("member {leader} did not become the leader"));
    }

    /// The scripted peer takes over at the next term: the member follows it.
    pub(crate) async fn follow_peer(&self) {
        let term = self.raft.metrics().borrow_watched().current_term;
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(term + 1, crate::MemberId(PEER)),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        self.raft.append_entries(request).await.unwrap();
        self.wait_for_leader(PEER).await;
    }

    /// The member campaigns and wins (the peer grants every vote), and takes writes: openraft
    /// 0.10 refuses them until a quorum has acknowledged the new leader.
    pub(crate) async fn lead(&self) {
        self.raft.trigger().elect(false).await.unwrap();
        self.wait_for_leader(ME).await;
        let mut metrics = self.raft.metrics();
        deadline::within(Layer::Api, Deadline::after(LONG), async {
            loop {
                let writable = {
                    let m = metrics.borrow_and_update();
                    m.current_leader == Some(crate::MemberId(ME)) && m.last_quorum_acked.is_some()
                };
                if writable {
                    break;
                }
                metrics.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the new leader never heard from a quorum"));
    }

    /// Waits until the peer has received `n` forwarded requests in all.
    pub(crate) async fn forwards_arrived(&mut self, n: usize) {
        let arrived = &mut self.arrived;
        deadline::within(Layer::Api, Deadline::after(LONG), async {
            while *arrived.borrow_and_update() < n {
                arrived.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("forward {n} never reached the leader"));
    }

    /// Holds the peer's answers to appends (and heartbeats) until [`Harness::answer_appends`].
    pub(crate) fn hold_appends(&self) {
        self.peer.appends.send_replace(false);
    }

    /// Lets the peer answer appends again, the held ones first.
    pub(crate) fn answer_appends(&self) {
        self.peer.appends.send_replace(true);
    }

    /// Lets the peer answer one held forward.
    pub(crate) fn release_one_forward(&self) {
        self.peer.release.add_permits(1);
    }
}

/// Entry `index` of term 1: one put of `value_bytes` to `k<index>`, proposed by member 1.
pub(crate) fn put_entry(index: u64, value_bytes: usize) -> crate::types::typ::Entry {
    use crate::types::typ::EntryPayload;
    use crate::types::{Proposal, Tagged};
    crate::types::typ::Entry {
        log_id: crate::types::typ::log_id(1, 1, index),
        payload: EntryPayload::Normal(Proposal {
            origin: 1,
            incarnation: 1,
            seq: index,
            commands: vec![Tagged {
                id: index,
                command: mvcc::Command::Put(mvcc::PutRequest {
                    key: format!("k{index}").into_bytes(),
                    value: vec![b'v'; value_bytes],
                    ..Default::default()
                }),
            }],
        }),
    }
}
