//! etcd's Lock service (`v3lockpb.Lock`): a lock is held by the first key under `name/`, by
//! create revision; each owner key is attached to the caller's lease, so the lock goes with it.

use mvcc::{Backend, Command, DeleteRangeRequest};
use tonic::{Request, Response as Reply, Status};

use crate::error::ApiError;
use crate::pb::v3lockpb::lock_server::Lock;
use crate::pb::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use crate::service::recipes::{as_etcd_status, prefix_of, Recipes};
use crate::service::{client_deadline, handled};

const SERVICE: &str = "v3lockpb.Lock";

/// etcd's Lock service over a member.
pub struct LockService<B: mvcc::Backend> {
    recipes: Recipes<B>,
}

impl<B: Backend> LockService<B> {
    pub(crate) fn new(recipes: Recipes<B>) -> Self {
        Self { recipes }
    }

    async fn serve_lock(&self, req: Request<LockRequest>) -> Result<LockResponse, ApiError> {
        let client = client_deadline(&req);
        self.recipes
            .permit(&req, &prefix_of(&req.get_ref().name), false)
            .await?;
        let r = req.into_inner();
        let prefix = prefix_of(&r.name);
        let lease = self.recipes.lease_or_new(r.lease, client).await?;
        let claim = self.recipes.claim(&prefix, lease, b"", client).await?;
        let revision = if claim.first == claim.rev {
            claim.revision
        } else {
            match self
                .recipes
                .wait_deletes(&prefix, claim.rev - 1, client)
                .await
            {
                Ok(revision) => revision,
                Err(e) => {
                    // Never acquired: the key must not hold up the owners after it.
                    if let Err(release) = claim.release(deadline::Deadline::none()).await {
                        tracing::warn!(error = %release, "a lock waiter's key was not removed; its lease will");
                    }
                    return Err(e);
                }
            }
        };
        let key = claim.key.clone();
        claim.keep();
        Ok(LockResponse {
            header: self.recipes.shared.header(revision),
            key,
        })
    }

    async fn serve_unlock(&self, req: Request<UnlockRequest>) -> Result<UnlockResponse, ApiError> {
        let step = self.recipes.shared.deadline(&req);
        self.recipes.permit(&req, &req.get_ref().key, true).await?;
        let r = req.into_inner();
        let command = Command::DeleteRange(DeleteRangeRequest {
            key: r.key,
            ..Default::default()
        });
        let (revision, _) = self.recipes.shared.node.propose(command, step).await?;
        Ok(UnlockResponse {
            header: self.recipes.shared.header(revision),
        })
    }
}

#[tonic::async_trait]
impl<B: Backend> Lock for LockService<B> {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Reply<LockResponse>, Status> {
        handled(
            SERVICE,
            "Lock",
            self.serve_lock(request)
                .await
                .map(Reply::new)
                .map_err(as_etcd_status),
        )
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Reply<UnlockResponse>, Status> {
        handled(
            SERVICE,
            "Unlock",
            self.serve_unlock(request)
                .await
                .map(Reply::new)
                .map_err(as_etcd_status),
        )
    }
}
