//! The Cluster service: membership as Raft holds it. Changes arrive with clustering.

use mvcc::Backend;
use tonic::{Request, Response as Reply, Status};

use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use crate::service::{handled, Shared};

const SERVICE: &str = "etcdserverpb.Cluster";
const NOT_YET: &str = "membership changes are not implemented yet";

/// etcd's Cluster service over a member.
pub struct ClusterService<B> {
    shared: Shared<B>,
}

impl<B: Backend> ClusterService<B> {
    pub(crate) fn new(shared: Shared<B>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl<B: Backend> Cluster for ClusterService<B> {
    async fn member_add(
        &self,
        _request: Request<MemberAddRequest>,
    ) -> Result<Reply<MemberAddResponse>, Status> {
        handled(SERVICE, "MemberAdd", Err(Status::unimplemented(NOT_YET)))
    }

    async fn member_remove(
        &self,
        _request: Request<MemberRemoveRequest>,
    ) -> Result<Reply<MemberRemoveResponse>, Status> {
        handled(SERVICE, "MemberRemove", Err(Status::unimplemented(NOT_YET)))
    }

    async fn member_update(
        &self,
        _request: Request<MemberUpdateRequest>,
    ) -> Result<Reply<MemberUpdateResponse>, Status> {
        handled(SERVICE, "MemberUpdate", Err(Status::unimplemented(NOT_YET)))
    }

    async fn member_list(
        &self,
        _request: Request<MemberListRequest>,
    ) -> Result<Reply<MemberListResponse>, Status> {
        let status = self.shared.node.status();
        let members = status
            .members
            .into_iter()
            .map(|(id, m, voter)| Member {
                id,
                name: m.name,
                peer_ur_ls: m.peer_urls,
                client_ur_ls: m.client_urls,
                is_learner: !voter,
            })
            .collect();
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
        _request: Request<MemberPromoteRequest>,
    ) -> Result<Reply<MemberPromoteResponse>, Status> {
        handled(
            SERVICE,
            "MemberPromote",
            Err(Status::unimplemented(NOT_YET)),
        )
    }
}
