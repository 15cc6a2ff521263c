//! The Cluster service: membership as Raft holds it, changed on the leader (a follower
//! forwards the change) with etcd's checks and errors.

use consensus::Change;
use mvcc::Backend;
use tonic::{Request, Response as Reply, Status};

use crate::error::ApiError;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use crate::service::{handled, Shared};

const SERVICE: &str = "etcdserverpb.Cluster";

/// etcd's Cluster service over a member.
pub struct ClusterService<B: mvcc::Backend> {
    shared: Shared<B>,
}

impl<B: Backend> ClusterService<B> {
    pub(crate) fn new(shared: Shared<B>) -> Self {
        Self { shared }
    }

    fn members(list: Vec<(u64, consensus::Member, bool)>) -> Vec<Member> {
        list.into_iter()
            .map(|(id, m, voter)| Member {
                id,
                name: m.name,
                peer_ur_ls: m.peer_urls,
                client_ur_ls: m.client_urls,
                is_learner: !voter,
            })
            .collect()
    }

    async fn change<T>(
        &self,
        request: &Request<T>,
        change: Change,
    ) -> Result<Vec<Member>, ApiError> {
        let deadline = self.shared.deadline(request);
        // etcd 3.4: membership changes are root's (MemberList is anyone's).
        self.shared.caller(request).await?.admin()?;
        let list = self.shared.node.change_membership(change, deadline).await?;
        Ok(Self::members(list))
    }

    async fn serve_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<MemberAddResponse, ApiError> {
        let r = request.get_ref().clone();
        let change = Change::Add {
            peer_urls: r.peer_ur_ls.clone(),
            learner: r.is_learner,
        };
        let members = self.change(&request, change).await?;
        let id = consensus::member_id(&r.peer_ur_ls, self.shared.node.cluster_token());
        let member = members.iter().find(|m| m.id == id).cloned();
        Ok(MemberAddResponse {
            header: self.shared.header(0),
            member,
            members,
        })
    }
}

#[tonic::async_trait]
impl<B: Backend> Cluster for ClusterService<B> {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Reply<MemberAddResponse>, Status> {
        handled(
            SERVICE,
            "MemberAdd",
            self.serve_add(request)
                .await
                .map(Reply::new)
                .map_err(Status::from),
        )
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Reply<MemberRemoveResponse>, Status> {
        let id = request.get_ref().id;
        let result = self.change(&request, Change::Remove { id }).await;
        handled(
            SERVICE,
            "MemberRemove",
            result
                .map(|members| {
                    Reply::new(MemberRemoveResponse {
                        header: self.shared.header(0),
                        members,
                    })
                })
                .map_err(Status::from),
        )
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Reply<MemberUpdateResponse>, Status> {
        let r = request.get_ref().clone();
        let change = Change::Update {
            id: r.id,
            peer_urls: r.peer_ur_ls,
        };
        let result = self.change(&request, change).await;
        handled(
            SERVICE,
            "MemberUpdate",
            result
                .map(|members| {
                    Reply::new(MemberUpdateResponse {
                        header: self.shared.header(0),
                        members,
                    })
                })
                .map_err(Status::from),
        )
    }

    async fn member_list(
        &self,
        _request: Request<MemberListRequest>,
    ) -> Result<Reply<MemberListResponse>, Status> {
        let members = Self::members(self.shared.node.status().members);
        // etcd's MemberList header carries no revision.
        let header = self.shared.header(0);
        handled(
            SERVICE,
            "MemberList",
            Ok(Reply::new(MemberListResponse { header, members })),
        )
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Reply<MemberPromoteResponse>, Status> {
        let id = request.get_ref().id;
        let result = self.change(&request, Change::Promote { id }).await;
        handled(
            SERVICE,
            "MemberPromote",
            result
                .map(|members| {
                    Reply::new(MemberPromoteResponse {
                        header: self.shared.header(0),
                        members,
                    })
                })
                .map_err(Status::from),
        )
    }
}
