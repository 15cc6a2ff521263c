//! etcd's request checks, done before anything is proposed.

use crate::error::ApiError;
use crate::pb::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use mvcc::Refusal;

/// The request limits of `--max-request-bytes` and `--max-txn-ops`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request accepted, in encoded bytes (etcd's default 1.5 MiB).
    pub max_request_bytes: usize,
    /// Most compares, or ops per branch, in one txn (etcd's default 128).
    pub max_txn_ops: usize,
    /// Largest answer sent, in encoded bytes (etcd's is grpc-go's send limit, 2 GiB - 1).
    pub max_response_bytes: usize,
    /// Most watches on one watch stream.
    pub max_watchers_per_stream: usize,
}

/// etcd's largest answer: grpc-go's send limit, which etcd sets to `math.MaxInt32`.
pub const MAX_RESPONSE_BYTES: usize = 2_147_483_647;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            max_response_bytes: MAX_RESPONSE_BYTES,
            max_watchers_per_stream: 10_000,
        }
    }
}

impl Limits {
    /// Refuses a request of `encoded_len` bytes over the limit.
    pub(crate) fn check_size(&self, encoded_len: usize) -> Result<(), ApiError> {
        if encoded_len > self.max_request_bytes {
            return Err(ApiError::Refused(Refusal::RequestTooLarge));
        }
        Ok(())
    }
}

pub(crate) fn check_range(r: &RangeRequest) -> Result<(), ApiError> {
    if r.key.is_empty() {
        return Err(ApiError::Refused(Refusal::KeyNotProvided));
    }
    Ok(())
}

pub(crate) fn check_put(r: &PutRequest) -> Result<(), ApiError> {
    if r.key.is_empty() {
        return Err(ApiError::Refused(Refusal::KeyNotProvided));
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(ApiError::Refused(Refusal::ValueProvided));
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(ApiError::Refused(Refusal::LeaseProvided));
    }
    Ok(())
}

pub(crate) fn check_delete(r: &DeleteRangeRequest) -> Result<(), ApiError> {
    if r.key.is_empty() {
        return Err(ApiError::Refused(Refusal::KeyNotProvided));
    }
    Ok(())
}

/// etcd's txn check: the widest of compares, success and failure within `max_ops`, every key
/// given, nested txns within what the outer one leaves.
pub(crate) fn check_txn(t: &TxnRequest, max_ops: usize) -> Result<(), ApiError> {
    let width = t.compare.len().max(t.success.len()).max(t.failure.len());
    if width > max_ops {
        return Err(ApiError::Refused(Refusal::TooManyOps));
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(ApiError::Refused(Refusal::KeyNotProvided));
    }
    for op in t.success.iter().chain(&t.failure) {
        check_op(op, max_ops - width)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: usize) -> Result<(), ApiError> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => check_range(r),
        Some(request_op::Request::RequestPut(r)) => check_put(r),
        Some(request_op::Request::RequestDeleteRange(r)) => check_delete(r),
        Some(request_op::Request::RequestTxn(t)) => check_txn(t, max_ops),
        None => Err(ApiError::Refused(Refusal::KeyNotFound { key: Vec::new() })),
    }
}

#[cfg(test)]
mod tests {

    /// The deepest txn nesting prost lets through the client port (its recursion limit):
    /// below `mvcc::MAX_TXN_NESTING`, so whatever a client's txn holds, peers can decode.
    #[test]
    fn prost_bounds_txn_nesting_below_what_peers_decode() {
        use crate::pb::etcdserverpb::{request_op, RequestOp, TxnRequest};
        use prost::Message;
        let nested = |depth: usize| {
            let mut t = TxnRequest::default();
            for _ in 1..depth {
                t = TxnRequest {
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestTxn(t)),
                    }],
                    ..Default::default()
                };
            }
            t.encode_to_vec()
        };
        let deepest = (1..200)
            .take_while(|d| TxnRequest::decode(nested(*d).as_slice()).is_ok())
            .last()
            .unwrap_or(0);
        assert!(deepest > 8, "prost refused a {}-deep txn", deepest + 1);
        assert!(
            deepest <= mvcc::MAX_TXN_NESTING,
            "prost decodes txns {deepest} deep; peers only {}",
            mvcc::MAX_TXN_NESTING
        );
    }
    use super::*;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn puts_are_checked_as_etcd_does() {
        assert_eq!(
            check_put(&PutRequest::default()),
            Err(ApiError::Refused(Refusal::KeyNotProvided))
        );
        let p = PutRequest {
            key: "k".into(),
            value: "v".into(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(
            check_put(&p),
            Err(ApiError::Refused(Refusal::ValueProvided))
        );
        let p = PutRequest {
            key: "k".into(),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(
            check_put(&p),
            Err(ApiError::Refused(Refusal::LeaseProvided))
        );
        assert_eq!(
            check_range(&RangeRequest::default()),
            Err(ApiError::Refused(Refusal::KeyNotProvided))
        );
        assert_eq!(
            check_delete(&DeleteRangeRequest::default()),
            Err(ApiError::Refused(Refusal::KeyNotProvided))
        );
    }

    #[test]
    fn txn_width_and_nesting() {
        let wide = TxnRequest {
            success: (0..129).map(|i| put(&i.to_string())).collect(),
            ..Default::default()
        };
        assert_eq!(
            check_txn(&wide, 128),
            Err(ApiError::Refused(Refusal::TooManyOps))
        );
        let ok = TxnRequest {
            success: (0..128).map(|i| put(&i.to_string())).collect(),
            ..Default::default()
        };
        assert_eq!(check_txn(&ok, 128), Ok(()));
        let nested = |n: usize| RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                success: (0..n).map(|i| put(&format!("n{i}"))).collect(),
                ..Default::default()
            })),
        };
        let outer = TxnRequest {
            success: vec![nested(127)],
            ..Default::default()
        };
        assert_eq!(
            check_txn(&outer, 128),
            Ok(()),
            "the nested txn gets what the outer leaves"
        );
        let outer = TxnRequest {
            success: vec![nested(128)],
            ..Default::default()
        };
        assert_eq!(
            check_txn(&outer, 128),
            Err(ApiError::Refused(Refusal::TooManyOps))
        );
        let empty_op = TxnRequest {
            success: vec![RequestOp { request: None }],
            ..Default::default()
        };
        assert_eq!(
            check_txn(&empty_op, 128),
            Err(ApiError::Refused(Refusal::KeyNotFound { key: Vec::new() }))
        );
        let no_key = TxnRequest {
            success: vec![put("")],
            ..Default::default()
        };
        assert_eq!(
            check_txn(&no_key, 128),
            Err(ApiError::Refused(Refusal::KeyNotProvided))
        );
    }

    #[test]
    fn size_limit() {
        let limits = Limits::default();
        assert_eq!(limits.check_size(1536 * 1024), Ok(()));
        assert_eq!(
            limits.check_size(1536 * 1024 + 1),
            Err(ApiError::Refused(Refusal::RequestTooLarge))
        );
    }
}
