//! etcd's Election service (`v3electionpb.Election`): the candidate whose key under `name/`
//! has the lowest create revision leads, announcing its key's value; the key is attached to
//! the candidate's lease, so leadership goes with it.

use deadline::Deadline;
use mvcc::{Backend, EventKind, KeyValue, PutRequest, RequestOp, TxnRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response as Reply, Status};

use crate::error::ApiError;
use crate::pb::v3electionpb::election_server::Election;
use crate::pb::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use crate::pb_conv::kv_to_pb;
use crate::service::recipes::{as_etcd_status, created_at, prefix_of, Recipes};
use crate::service::{client_deadline, handled};

const SERVICE: &str = "v3electionpb.Election";
/// Leader changes an Observe stream may have queued for a slow client before it waits.
const OBSERVE_QUEUE: usize = 16;

fn not_leader() -> Status {
    Status::unknown("election: not leader")
}

fn no_leader() -> Status {
    Status::unknown("election: no leader")
}

fn missing_leader() -> Status {
    Status::unknown("\"leader\" field must be provided")
}

/// etcd's Election service over a member.
pub struct ElectionService<B: mvcc::Backend> {
    recipes: Recipes<B>,
}

impl<B: Backend> ElectionService<B> {
    pub(crate) fn new(recipes: Recipes<B>) -> Self {
        Self { recipes }
    }

    /// Puts `value` on the leader key if it is still the one created at `rev`.
    async fn proclaim(
        &self,
        key: &[u8],
        rev: i64,
        lease: i64,
        value: Vec<u8>,
        client: Deadline,
    ) -> Result<i64, Status> {
        let txn = TxnRequest {
            compare: vec![created_at(key, rev)],
            success: vec![RequestOp::Put(PutRequest {
                key: key.to_vec(),
                value,
                lease,
                ..Default::default()
            })],
            failure: Vec::new(),
        };
        let (revision, resp) = self
            .recipes
            .txn(txn, client)
            .await
            .map_err(as_etcd_status)?;
        if !resp.succeeded {
            return Err(not_leader());
        }
        Ok(revision)
    }

    async fn serve_campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<CampaignResponse, Status> {
        let client = client_deadline(&req);
        self.recipes
            .permit(&req, &prefix_of(&req.get_ref().name), false)
            .await
            .map_err(as_etcd_status)?;
        let r = req.into_inner();
        let prefix = prefix_of(&r.name);
        let lease = self
            .recipes
            .lease_or_new(r.lease, client)
            .await
            .map_err(as_etcd_status)?;
        let claim = self
            .recipes
            .claim(&prefix, lease, &r.value, client)
            .await
            .map_err(as_etcd_status)?;
        let mut revision = claim.revision;
        let mut failed = None;
        // A candidate campaigning again with another value announces it at once.
        if claim.existing.as_ref().is_some_and(|v| *v != r.value) {
            match self
                .proclaim(&claim.key, claim.rev, lease, r.value.clone(), client)
                .await
            {
                Ok(rev) => revision = rev,
                Err(e) => failed = Some(e),
            }
        }
        if failed.is_none() && claim.first != claim.rev {
            match self
                .recipes
                .wait_deletes(&prefix, claim.rev - 1, client)
                .await
            {
                Ok(rev) => revision = rev,
                Err(e) => failed = Some(as_etcd_status(e)),
            }
        }
        if let Some(e) = failed {
            // Never elected: its key must not hold up the candidates after it.
            if let Err(release) = claim.release(Deadline::none()).await {
                tracing::warn!(error = %release, "a candidate's key was not removed; its lease will");
            }
            return Err(e);
        }
        let leader = LeaderKey {
            name: r.name,
            key: claim.key.clone(),
            rev: claim.rev,
            lease,
        };
        claim.keep();
        Ok(CampaignResponse {
            header: self.recipes.shared.header(revision),
            leader: Some(leader),
        })
    }

    async fn serve_proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<ProclaimResponse, Status> {
        let client = client_deadline(&req);
        if let Some(leader) = &req.get_ref().leader {
            self.recipes
                .permit(&req, &leader.key, true)
                .await
                .map_err(as_etcd_status)?;
        }
        let r = req.into_inner();
        let leader = r.leader.ok_or_else(missing_leader)?;
        let revision = self
            .proclaim(&leader.key, leader.rev, leader.lease, r.value, client)
            .await?;
        Ok(ProclaimResponse {
            header: self.recipes.shared.header(revision),
        })
    }

    async fn serve_leader(&self, req: Request<LeaderRequest>) -> Result<LeaderResponse, Status> {
        let client = client_deadline(&req);
        self.recipes
            .permit(&req, &prefix_of(&req.get_ref().name), false)
            .await
            .map_err(as_etcd_status)?;
        let r = req.into_inner();
        let (first, revision) = self
            .recipes
            .first(&prefix_of(&r.name), client)
            .await
            .map_err(as_etcd_status)?;
        let kv = first.ok_or_else(no_leader)?;
        Ok(LeaderResponse {
            header: self.recipes.shared.header(revision),
            kv: Some(kv_to_pb(kv)),
        })
    }

    async fn serve_resign(&self, req: Request<ResignRequest>) -> Result<ResignResponse, Status> {
        let client = client_deadline(&req);
        if let Some(leader) = &req.get_ref().leader {
            self.recipes
                .permit(&req, &leader.key, true)
                .await
                .map_err(as_etcd_status)?;
        }
        let r = req.into_inner();
        let leader = r.leader.ok_or_else(missing_leader)?;
        let revision = self
            .recipes
            .delete_if(&leader.key, leader.rev, client)
            .await
            .map_err(as_etcd_status)?;
        Ok(ResignResponse {
            header: self.recipes.shared.header(revision),
        })
    }
}

/// Sends every leader of the election under `prefix` and each value it proclaims, as etcd's
/// observer does, until the client goes (a send fails) or a read fails.
async fn observe<B: Backend>(
    recipes: Recipes<B>,
    prefix: Vec<u8>,
    tx: mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Result<(), ApiError> {
    let send = |kv: KeyValue, revision: i64| {
        let answer = LeaderResponse {
            header: recipes.shared.header(revision),
            kv: Some(kv_to_pb(kv)),
        };
        let tx = tx.clone();
        async move { tx.send(Ok(answer)).await.is_ok() }
    };
    loop {
        let (first, revision) = recipes.first(&prefix, Deadline::none()).await?;
        let (leader, revision) = match first {
            Some(kv) => (kv, revision),
            None => {
                // No leader yet: the first candidate to put its key is the next one.
                let end = mvcc::prefix_end(&prefix);
                let (_guard, mut events) = recipes.watch(&prefix, &end, revision + 1, false)?;
                let mut elected = None;
                while elected.is_none() {
                    let Some(delivery) = events.recv().await else {
                        break;
                    };
                    elected = delivery
                        .events
                        .into_iter()
                        .find(|e| e.kind == EventKind::Put)
                        .map(|e| e.kv);
                    if delivery.compacted.is_some() {
                        break;
                    }
                }
                match elected {
                    Some(kv) => {
                        let at = kv.mod_revision;
                        (kv, at)
                    }
                    // The watch ended: look again.
                    None => continue,
                }
            }
        };
        let key = leader.key.clone();
        if !send(leader, revision).await {
            return Ok(());
        }
        // The leader's proclamations, until its key goes.
        let (_guard, mut events) = recipes.watch(&key, &[], revision + 1, false)?;
        'leading: while let Some(delivery) = events.recv().await {
            if delivery.compacted.is_some() {
                break;
            }
            for event in delivery.events {
                if event.kind == EventKind::Delete {
                    break 'leading;
                }
                let at = event.kv.mod_revision;
                if !send(event.kv, at).await {
                    return Ok(());
                }
            }
        }
    }
}

#[tonic::async_trait]
impl<B: Backend> Election for ElectionService<B> {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Reply<CampaignResponse>, Status> {
        handled(
            SERVICE,
            "Campaign",
            self.serve_campaign(request).await.map(Reply::new),
        )
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Reply<ProclaimResponse>, Status> {
        handled(
            SERVICE,
            "Proclaim",
            self.serve_proclaim(request).await.map(Reply::new),
        )
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Reply<LeaderResponse>, Status> {
        handled(
            SERVICE,
            "Leader",
            self.serve_leader(request).await.map(Reply::new),
        )
    }

    type ObserveStream = ReceiverStream<Result<LeaderResponse, Status>>;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Reply<Self::ObserveStream>, Status> {
        let prefix = prefix_of(&request.get_ref().name);
        if let Err(e) = self.recipes.permit(&request, &prefix, false).await {
            return Err(as_etcd_status(e));
        }
        let (tx, rx) = mpsc::channel(OBSERVE_QUEUE);
        let recipes = self.recipes.clone();
        let stop = self.recipes.shared.stop.clone();
        tokio::spawn(async move {
            // Ends with the client (its stream dropped closes the channel) or the server.
            tokio::select! {
                () = tx.closed() => {}
                () = stop.cancelled() => {}
                result = observe(recipes, prefix, tx.clone()) => {
                    if let Err(e) = result {
                        let _ = tx.send(Err(as_etcd_status(e))).await;
                    }
                }
            }
        });
        Ok(Reply::new(ReceiverStream::new(rx)))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Reply<ResignResponse>, Status> {
        handled(
            SERVICE,
            "Resign",
            self.serve_resign(request).await.map(Reply::new),
        )
    }
}
