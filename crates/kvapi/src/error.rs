//! Every error a client can get, with etcd's gRPC code and text: clients match on the texts.

use consensus::{AuthError, MembershipError, MembershipFailure, NotServed, ProposeError};
use mvcc::Refusal;
use tonic::{Code, Status};

/// An error answered to a client. Each maps to exactly one etcd status in [`ApiError::status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A refusal of the request, by kvapi's own checks or a lower layer's; its code and text
    /// are `refusal_status`'s.
    #[error("{}", refusal_status(.0).1)]
    Refused(Refusal),
    /// A sort order or target etcd does not define.
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
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
    /// The member a request was forwarded to no longer leads (leadership moved meanwhile).
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
    /// The disk of the member's Raft log is full; the text names it and the bytes free.
    #[error("{0}")]
    DiskFull(String),
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
            ApiError::Refused(refused) => {
                return Status::new(refusal_status(refused).0, self.to_string())
            }
            ApiError::InvalidSortOption => Code::InvalidArgument,
            ApiError::Timeout | ApiError::NoLeader | ApiError::Stopped => Code::Unavailable,
            ApiError::NotLeader => Code::Unavailable,
            ApiError::BadLeaderTransferee | ApiError::TransferNotLeader => Code::FailedPrecondition,
            ApiError::LeaderTransferTimeout => Code::Unavailable,
            ApiError::Membership(m) => match m {
                MembershipError::MemberNotFound => Code::NotFound,
                MembershipError::BadUrls => Code::InvalidArgument,
                MembershipError::InProgress => Code::Unavailable,
                MembershipError::PeerUrlExists
                | MembershipError::MemberExists
                | MembershipError::NotLearner
                | MembershipError::LearnerNotReady
                | MembershipError::TooManyLearners
                | MembershipError::NotEnoughStarted => Code::FailedPrecondition,
            },
            ApiError::TooManyRequests
            | ApiError::ResponseTooLarge { .. }
            | ApiError::DiskFull(_) => Code::ResourceExhausted,
            ApiError::DeadlineExceeded => Code::DeadlineExceeded,
            ApiError::Canceled => Code::Cancelled,
            ApiError::Internal(_) => Code::Internal,
            ApiError::AuthUnknown(_) => Code::Unknown,
        };
        Status::new(code, self.to_string())
    }
}

/// etcd's gRPC code and text for each refusal: the one table clients see them through.
/// mvcc's own texts lack the `etcdserver: ` that etcd's gRPC layer puts before them.
fn refusal_status(refused: &Refusal) -> (Code, String) {
    let code = match refused {
        Refusal::Compacted { .. } | Refusal::FutureRevision { .. } => {
            return (Code::OutOfRange, format!("etcdserver: {refused}"));
        }
        Refusal::Other(why) => return (Code::Internal, format!("etcdserver: {why}")),
        Refusal::KeyNotFound { .. }
        | Refusal::DuplicateKey { .. }
        | Refusal::KeyNotProvided
        | Refusal::ValueProvided
        | Refusal::LeaseProvided
        | Refusal::TooManyOps
        | Refusal::RequestTooLarge => Code::InvalidArgument,
        Refusal::LeaseNotFound { .. } => Code::NotFound,
        Refusal::LeaseExists { .. } => Code::FailedPrecondition,
        Refusal::LeaseTtlTooLarge => Code::OutOfRange,
        Refusal::NoSpace => Code::ResourceExhausted,
        Refusal::Corrupt => Code::DataLoss,
        Refusal::Auth(a) => auth_code(a),
    };
    (code, refused.to_string())
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
        AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::UserAlreadyExist
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExist
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::AuthNotEnabled
        | AuthError::InvalidAuthMgmt => Code::FailedPrecondition,
    }
}

impl From<Refusal> for ApiError {
    fn from(e: Refusal) -> Self {
        ApiError::Refused(e)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::Refused(Refusal::Auth(e))
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
            mvcc::Error::Refused(refused) => ApiError::Refused(refused),
            mvcc::Error::TooLarge { size, limit } => ApiError::ResponseTooLarge { size, limit },
            other @ (mvcc::Error::Backend(_)
            | mvcc::Error::Corrupt { .. }
            | mvcc::Error::BadSnapshot { .. }
            | mvcc::Error::IncompleteRestore
            | mvcc::Error::Stopped
            | mvcc::Error::SnapshotIo(_)) => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Command(refused) => ApiError::Refused(refused),
            ProposeError::Timeout(_) => ApiError::Timeout,
            ProposeError::NoLeader => ApiError::NoLeader,
            ProposeError::NotLeader { .. } => ApiError::NotLeader,
            ProposeError::TooManyRequests => ApiError::TooManyRequests,
            full @ ProposeError::DiskFull { .. } => ApiError::DiskFull(full.to_string()),
            ProposeError::Stopped => ApiError::Stopped,
        }
    }
}

impl From<MembershipFailure> for ApiError {
    fn from(e: MembershipFailure) -> Self {
        match e {
            MembershipFailure::Refused(m) => ApiError::Membership(m),
            MembershipFailure::NotServed(r) => r.into(),
            other @ MembershipFailure::Other(_) => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<NotServed> for ApiError {
    fn from(e: NotServed) -> Self {
        match e {
            NotServed::Timeout(_) => ApiError::Timeout,
            NotServed::NoLeader => ApiError::NoLeader,
            NotServed::NotLeader { .. } => ApiError::NotLeader,
            NotServed::Stopped => ApiError::Stopped,
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
                ApiError::Refused(Refusal::Corrupt),
                Code::DataLoss,
                "etcdserver: corrupt cluster",
            ),
            (
                ApiError::Refused(Refusal::NoSpace),
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
                ApiError::Refused(Refusal::KeyNotProvided),
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                ApiError::Refused(Refusal::KeyNotFound { key: b"k".to_vec() }),
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                ApiError::Refused(Refusal::ValueProvided),
                Code::InvalidArgument,
                "etcdserver: value is provided",
            ),
            (
                ApiError::Refused(Refusal::LeaseProvided),
                Code::InvalidArgument,
                "etcdserver: lease is provided",
            ),
            (
                ApiError::Refused(Refusal::TooManyOps),
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                ApiError::Refused(Refusal::DuplicateKey { key: b"k".to_vec() }),
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                ApiError::InvalidSortOption,
                Code::InvalidArgument,
                "etcdserver: invalid sort option",
            ),
            (
                ApiError::Refused(Refusal::RequestTooLarge),
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                ApiError::Refused(Refusal::Compacted {
                    requested: 1,
                    compacted: 5,
                }),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                ApiError::Refused(Refusal::FutureRevision {
                    requested: 9,
                    current: 5,
                }),
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
                ApiError::Refused(Refusal::LeaseExists { id: 7 }),
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                ApiError::Refused(Refusal::LeaseTtlTooLarge),
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

    /// Every refusal, and every auth refusal inside it, with etcd 3.4's code and text
    /// (`api/v3rpc/rpctypes/error.go`); the walk fails when a variant is missing here.
    #[test]
    fn every_refusal_has_etcds_code_and_text() {
        use AuthError as A;
        let auth = [
            (
                A::RootUserNotExist,
                Code::FailedPrecondition,
                "etcdserver: root user does not exist",
            ),
            (
                A::RootRoleNotExist,
                Code::FailedPrecondition,
                "etcdserver: root user does not have root role",
            ),
            (
                A::UserEmpty,
                Code::InvalidArgument,
                "etcdserver: user name is empty",
            ),
            (
                A::UserAlreadyExist,
                Code::FailedPrecondition,
                "etcdserver: user name already exists",
            ),
            (
                A::UserNotFound,
                Code::FailedPrecondition,
                "etcdserver: user name not found",
            ),
            (
                A::RoleAlreadyExist,
                Code::FailedPrecondition,
                "etcdserver: role name already exists",
            ),
            (
                A::RoleNotFound,
                Code::FailedPrecondition,
                "etcdserver: role name not found",
            ),
            (
                A::RoleEmpty,
                Code::InvalidArgument,
                "etcdserver: role name is empty",
            ),
            (
                A::AuthFailed,
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (
                A::PermissionDenied,
                Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                A::RoleNotGranted,
                Code::FailedPrecondition,
                "etcdserver: role is not granted to the user",
            ),
            (
                A::PermissionNotGranted,
                Code::FailedPrecondition,
                "etcdserver: permission is not granted to the role",
            ),
            (
                A::AuthNotEnabled,
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
            (
                A::InvalidAuthToken,
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                A::InvalidAuthMgmt,
                Code::FailedPrecondition,
                "etcdserver: invalid auth management",
            ),
            (
                A::AuthOldRevision,
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
            ),
        ];
        let refusals = [
            (
                Refusal::Compacted {
                    requested: 1,
                    compacted: 5,
                },
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                Refusal::FutureRevision {
                    requested: 9,
                    current: 5,
                },
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                Refusal::KeyNotFound { key: b"k".to_vec() },
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                Refusal::DuplicateKey { key: b"k".to_vec() },
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                Refusal::LeaseNotFound { id: 7 },
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                Refusal::LeaseExists { id: 7 },
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                Refusal::KeyNotProvided,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                Refusal::ValueProvided,
                Code::InvalidArgument,
                "etcdserver: value is provided",
            ),
            (
                Refusal::LeaseProvided,
                Code::InvalidArgument,
                "etcdserver: lease is provided",
            ),
            (
                Refusal::TooManyOps,
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                Refusal::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                Refusal::LeaseTtlTooLarge,
                Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (
                Refusal::NoSpace,
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                Refusal::Corrupt,
                Code::DataLoss,
                "etcdserver: corrupt cluster",
            ),
            // Not an etcd answer: a refusal no etcd request meets, answered as a store failure.
            (
                Refusal::Other("boom".into()),
                Code::Internal,
                "etcdserver: boom",
            ),
        ];
        let refusals = refusals.into_iter().chain(
            auth.iter()
                .map(|(a, code, text)| (Refusal::Auth(a.clone()), *code, *text)),
        );
        let mut seen = std::collections::BTreeSet::new();
        for (refused, code, text) in refusals {
            seen.insert(variant_name(&refused));
            let status = ApiError::from(refused.clone()).status();
            assert_eq!(
                (status.code(), status.message()),
                (code, text),
                "{refused:?}"
            );
        }
        let auth_seen: std::collections::BTreeSet<_> =
            auth.iter().map(|(a, _, _)| variant_name(a)).collect();
        assert_eq!(
            seen,
            variants::<Refusal>(),
            "a refusal is missing from the table"
        );
        assert_eq!(
            auth_seen,
            variants::<AuthError>(),
            "an auth error is missing from the table"
        );
    }

    /// The name serde gives `value`'s variant.
    fn variant_name<T: serde::Serialize>(value: &T) -> String {
        match serde_json::to_value(value).expect("a refusal serializes") {
            serde_json::Value::String(name) => name,
            serde_json::Value::Object(map) => map.keys().next().cloned().unwrap_or_default(),
            other => panic!("not an enum: {other}"),
        }
    }

    /// Every variant name of enum `T`, as its derived `Deserialize` lists them.
    fn variants<'de, T: serde::Deserialize<'de>>() -> std::collections::BTreeSet<String> {
        struct Names(Option<&'static [&'static str]>);
        #[derive(Debug)]
        struct Stop;
        impl std::fmt::Display for Stop {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("stop")
            }
        }
        impl std::error::Error for Stop {}
        impl serde::de::Error for Stop {
            fn custom<M: std::fmt::Display>(_: M) -> Self {
                Stop
            }
        }
        impl<'de> serde::Deserializer<'de> for &mut Names {
            type Error = Stop;
            fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
                Err(Stop)
            }
            fn deserialize_enum<V: serde::de::Visitor<'de>>(
                self,
                _: &'static str,
                variants: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Stop> {
                self.0 = Some(variants);
                Err(Stop)
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
                struct identifier ignored_any
            }
        }
        let mut names = Names(None);
        let _ = T::deserialize(&mut names);
        names
            .0
            .expect("an enum")
            .iter()
            .map(|n| (*n).to_string())
            .collect()
    }

    #[test]
    fn lower_layer_errors_map_to_etcds() {
        let compacted = mvcc::Error::Refused(Refusal::Compacted {
            requested: 1,
            compacted: 5,
        });
        assert_eq!(
            ApiError::from(compacted),
            ApiError::Refused(Refusal::Compacted {
                requested: 1,
                compacted: 5
            })
        );
        let future = Refusal::FutureRevision {
            requested: 9,
            current: 5,
        };
        assert_eq!(
            ApiError::from(ProposeError::Command(future.clone())),
            ApiError::Refused(future)
        );
        assert_eq!(ApiError::from(ProposeError::NoLeader), ApiError::NoLeader);
        assert_eq!(ApiError::from(NotServed::NoLeader), ApiError::NoLeader);
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
