//! Every error a client can get, with etcd's gRPC code and text: clients match on the texts.

use consensus::{
    AuthError, CommandError, MembershipError, MembershipFailure, ProposeError, ReadError,
};
use tonic::{Code, Status};

/// An error answered to a client. Each maps to exactly one etcd status in [`ApiError::status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// A request without a key.
    #[error("etcdserver: key is not provided")]
    KeyNotProvided,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A txn branch or compare list over `--max-txn-ops`.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A txn writing one key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A sort order or target etcd does not define.
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// A put naming a lease that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant naming a lease id that is taken.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A grant with a TTL over etcd's maximum.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A request over `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// A revision below the compaction point.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// A revision beyond the current one.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A budget ran out.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// The client's own deadline (`grpc-timeout`) passed, as grpc-go reports it.
    #[error("context deadline exceeded")]
    DeadlineExceeded,
    /// The client went away before the answer was ready.
    #[error("context canceled")]
    Canceled,
    /// An answer over `--max-response-bytes`, refused as grpc-go refuses a message over its
    /// send limit (etcd's limit is grpc-go's, 2 GiB - 1).
    #[error("grpc: trying to send message larger than max ({size} vs. {limit})")]
    ResponseTooLarge {
        /// The answer's size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// No leader is known.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// This member is not the leader and cannot forward.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// Too many proposals wait for their apply.
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// The server is stopping.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// A membership change etcd refuses.
    #[error("{0}")]
    Membership(MembershipError),
    /// A write that can grow the store while a NOSPACE alarm is raised.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The disk of the member's Raft log is full; the text names it and the bytes free.
    #[error("{0}")]
    DiskFull(String),
    /// A write or compaction while a CORRUPT alarm is raised.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// An auth refusal, with etcd's text.
    #[error("{0}")]
    Auth(AuthError),
    /// An auth refusal as etcd's maintenance service answers it: the auth store's own text
    /// (`auth: ...`) with code Unknown.
    #[error("auth: {}", .0.to_string().trim_start_matches("etcdserver: "))]
    AuthUnknown(AuthError),
    /// MoveLeader sent to a member that does not lead (etcd answers it FailedPrecondition).
    #[error("etcdserver: not leader")]
    TransferNotLeader,
    /// MoveLeader to a member that is not a voter.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// MoveLeader whose target did not take over in time.
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    /// The store failed; the member is unhealthy.
    #[error("etcdserver: {0}")]
    Internal(String),
}

impl ApiError {
    /// etcd's gRPC status for this error.
    pub fn status(&self) -> Status {
        let code = match self {
            ApiError::KeyNotProvided
            | ApiError::KeyNotFound
            | ApiError::ValueProvided
            | ApiError::LeaseProvided
            | ApiError::TooManyOps
            | ApiError::DuplicateKey
            | ApiError::InvalidSortOption
            | ApiError::RequestTooLarge => Code::InvalidArgument,
            ApiError::Compacted | ApiError::FutureRevision => Code::OutOfRange,
            ApiError::LeaseNotFound => Code::NotFound,
            ApiError::LeaseExists => Code::FailedPrecondition,
            ApiError::LeaseTtlTooLarge => Code::OutOfRange,
            ApiError::Timeout | ApiError::NoLeader | ApiError::Stopped => Code::Unavailable,
            ApiError::NotLeader => Code::Unavailable,
            ApiError::BadLeaderTransferee | ApiError::TransferNotLeader => Code::FailedPrecondition,
            ApiError::LeaderTransferTimeout => Code::Unavailable,
            ApiError::Membership(m) => match m {
                MembershipError::MemberNotFound => Code::NotFound,
                MembershipError::BadUrls => Code::InvalidArgument,
                MembershipError::InProgress => Code::Unavailable,
                _ => Code::FailedPrecondition,
            },
            ApiError::TooManyRequests
            | ApiError::ResponseTooLarge { .. }
            | ApiError::NoSpace
            | ApiError::DiskFull(_) => Code::ResourceExhausted,
            ApiError::DeadlineExceeded => Code::DeadlineExceeded,
            ApiError::Canceled => Code::Cancelled,
            ApiError::Internal(_) => Code::Internal,
            ApiError::Corrupt => Code::DataLoss,
            ApiError::Auth(a) => auth_code(a),
            ApiError::AuthUnknown(_) => Code::Unknown,
        };
        Status::new(code, self.to_string())
    }
}

/// etcd's gRPC code for each auth error.
fn auth_code(e: &AuthError) -> Code {
    match e {
        AuthError::UserEmpty
        | AuthError::RoleEmpty
        | AuthError::AuthFailed
        | AuthError::AuthOldRevision => Code::InvalidArgument,
        AuthError::PermissionDenied => Code::PermissionDenied,
        AuthError::InvalidAuthToken => Code::Unauthenticated,
        _ => Code::FailedPrecondition,
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::Auth(e)
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        e.status()
    }
}

impl From<mvcc::Error> for ApiError {
    fn from(e: mvcc::Error) -> Self {
        match e {
            mvcc::Error::Compacted { .. } => ApiError::Compacted,
            mvcc::Error::FutureRevision { .. } => ApiError::FutureRevision,
            mvcc::Error::KeyNotFound { .. } => ApiError::KeyNotFound,
            mvcc::Error::DuplicateKey { .. } => ApiError::DuplicateKey,
            mvcc::Error::LeaseNotFound { .. } => ApiError::LeaseNotFound,
            mvcc::Error::LeaseExists { .. } => ApiError::LeaseExists,
            mvcc::Error::TooLarge { size, limit } => ApiError::ResponseTooLarge { size, limit },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Compacted { .. } => ApiError::Compacted,
            CommandError::FutureRevision { .. } => ApiError::FutureRevision,
            CommandError::KeyNotFound => ApiError::KeyNotFound,
            CommandError::DuplicateKey => ApiError::DuplicateKey,
            CommandError::LeaseNotFound => ApiError::LeaseNotFound,
            CommandError::LeaseExists => ApiError::LeaseExists,
            CommandError::KeyNotProvided => ApiError::KeyNotProvided,
            CommandError::ValueProvided => ApiError::ValueProvided,
            CommandError::LeaseProvided => ApiError::LeaseProvided,
            CommandError::TooManyOps => ApiError::TooManyOps,
            CommandError::RequestTooLarge => ApiError::RequestTooLarge,
            CommandError::LeaseTtlTooLarge => ApiError::LeaseTtlTooLarge,
            CommandError::NoSpace => ApiError::NoSpace,
            CommandError::Corrupt => ApiError::Corrupt,
            CommandError::Auth(a) => ApiError::Auth(a),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Command(c) => c.into(),
            ProposeError::Timeout(_) => ApiError::Timeout,
            ProposeError::NoLeader => ApiError::NoLeader,
            ProposeError::NotLeader { .. } => ApiError::NotLeader,
            ProposeError::TooManyRequests => ApiError::TooManyRequests,
            full @ ProposeError::DiskFull { .. } => ApiError::DiskFull(full.to_string()),
            _ => ApiError::Stopped,
        }
    }
}

impl From<MembershipFailure> for ApiError {
    fn from(e: MembershipFailure) -> Self {
        match e {
            MembershipFailure::Refused(m) => ApiError::Membership(m),
            MembershipFailure::Read(r) => r.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Timeout(_) => ApiError::Timeout,
            ReadError::NoLeader => ApiError::NoLeader,
            ReadError::NotLeader { .. } => ApiError::NotLeader,
            _ => ApiError::Stopped,
        }
    }
}

impl From<consensus::TransferError> for ApiError {
    fn from(e: consensus::TransferError) -> Self {
        match e {
            consensus::TransferError::NotLeader => ApiError::TransferNotLeader,
            consensus::TransferError::BadTransferee => ApiError::BadLeaderTransferee,
            consensus::TransferError::Timeout => ApiError::LeaderTransferTimeout,
            consensus::TransferError::Stopped => ApiError::Stopped,
        }
    }
}

impl From<deadline::Expired> for ApiError {
    fn from(_: deadline::Expired) -> Self {
        ApiError::Timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole table, as etcd 3.4 answers (code, text); a new variant must be added here.
    #[test]
    fn every_error_has_etcds_code_and_text() {
        let table = [
            (
                ApiError::Corrupt,
                Code::DataLoss,
                "etcdserver: corrupt cluster",
            ),
            (
                ApiError::NoSpace,
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            // Not an etcd answer (etcd stops on a full disk); named like its NOSPACE refusal.
            (
                ApiError::DiskFull(
                    "etcdserver: no space left on device: /d has 1 bytes free, writes need 2"
                        .into(),
                ),
                Code::ResourceExhausted,
                "etcdserver: no space left on device: /d has 1 bytes free, writes need 2",
            ),
            (
                ApiError::KeyNotProvided,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                ApiError::KeyNotFound,
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                ApiError::ValueProvided,
                Code::InvalidArgument,
                "etcdserver: value is provided",
            ),
            (
                ApiError::LeaseProvided,
                Code::InvalidArgument,
                "etcdserver: lease is provided",
            ),
            (
                ApiError::TooManyOps,
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                ApiError::DuplicateKey,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                ApiError::InvalidSortOption,
                Code::InvalidArgument,
                "etcdserver: invalid sort option",
            ),
            (
                ApiError::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                ApiError::Compacted,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                ApiError::FutureRevision,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                ApiError::Timeout,
                Code::Unavailable,
                "etcdserver: request timed out",
            ),
            (
                ApiError::NoLeader,
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                ApiError::NotLeader,
                Code::Unavailable,
                "etcdserver: not leader",
            ),
            (
                ApiError::TransferNotLeader,
                Code::FailedPrecondition,
                "etcdserver: not leader",
            ),
            (
                ApiError::BadLeaderTransferee,
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ),
            (
                ApiError::LeaderTransferTimeout,
                Code::Unavailable,
                "etcdserver: request timed out, leader transfer took too long",
            ),
            (
                ApiError::Membership(MembershipError::MemberNotFound),
                Code::NotFound,
                "etcdserver: member not found",
            ),
            (
                ApiError::Membership(MembershipError::PeerUrlExists),
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            (
                ApiError::Membership(MembershipError::LearnerNotReady),
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            (
                ApiError::Membership(MembershipError::BadUrls),
                Code::InvalidArgument,
                "etcdserver: given member URLs are invalid",
            ),
            (
                ApiError::Stopped,
                Code::Unavailable,
                "etcdserver: server stopped",
            ),
            (
                ApiError::LeaseExists,
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                ApiError::LeaseTtlTooLarge,
                Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (
                ApiError::TooManyRequests,
                Code::ResourceExhausted,
                "etcdserver: too many requests",
            ),
            (
                ApiError::DeadlineExceeded,
                Code::DeadlineExceeded,
                "context deadline exceeded",
            ),
            (ApiError::Canceled, Code::Cancelled, "context canceled"),
            (
                ApiError::ResponseTooLarge {
                    size: 2_000_000,
                    limit: 1_048_576,
                },
                Code::ResourceExhausted,
                "grpc: trying to send message larger than max (2000000 vs. 1048576)",
            ),
            (
                ApiError::Internal("boom".into()),
                Code::Internal,
                "etcdserver: boom",
            ),
        ];
        for (err, code, text) in table {
            let status = err.status();
            assert_eq!((status.code(), status.message()), (code, text), "{err:?}");
        }
    }

    #[test]
    fn lower_layer_errors_map_to_etcds() {
        let compacted = mvcc::Error::Compacted {
            requested: 1,
            compacted: 5,
        };
        assert_eq!(ApiError::from(compacted), ApiError::Compacted);
        let future = CommandError::FutureRevision {
            requested: 9,
            current: 5,
        };
        assert_eq!(
            ApiError::from(ProposeError::Command(future)),
            ApiError::FutureRevision
        );
        assert_eq!(ApiError::from(ProposeError::NoLeader), ApiError::NoLeader);
        assert_eq!(ApiError::from(ReadError::NoLeader), ApiError::NoLeader);
        let full = ProposeError::DiskFull {
            path: "/d".into(),
            free: 1,
            needed: 2,
        };
        assert_eq!(
            ApiError::from(full),
            ApiError::DiskFull(
                "etcdserver: no space left on device: /d has 1 bytes free, writes need 2".into()
            )
        );
    }
}
