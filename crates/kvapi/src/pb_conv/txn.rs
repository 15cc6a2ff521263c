//! `TxnRequest`, its compares and ops, and `TxnResponse`.

use crate::error::ApiError;
use crate::pb::etcdserverpb::{
    compare, request_op, response_op, Compare, RequestOp, ResponseHeader, ResponseOp, TxnRequest,
    TxnResponse,
};
use crate::pb_conv::{
    delete_from_pb, delete_to_pb, header_at, put_from_pb, put_to_pb, range_from_pb, range_to_pb,
};

/// The model's compare. The target field decides what is compared; a union holding another
/// field compares against that target's zero value, as etcd's generated getters give.
fn compare_from_pb(c: Compare) -> Result<mvcc::Compare, ApiError> {
    use compare::TargetUnion as U;
    let result = match compare::CompareResult::try_from(c.result) {
        Ok(compare::CompareResult::Equal) => mvcc::CompareResult::Equal,
        Ok(compare::CompareResult::Greater) => mvcc::CompareResult::Greater,
        Ok(compare::CompareResult::Less) => mvcc::CompareResult::Less,
        Ok(compare::CompareResult::NotEqual) => mvcc::CompareResult::NotEqual,
        Err(_) => {
            return Err(ApiError::Internal(format!(
                "unknown compare result {}",
                c.result
            )))
        }
    };
    let union = c.target_union;
    let int = |pick: fn(&U) -> Option<i64>| union.as_ref().and_then(pick).unwrap_or(0);
    let target = match compare::CompareTarget::try_from(c.target) {
        Ok(compare::CompareTarget::Version) => mvcc::CompareTarget::Version(int(|u| match u {
            U::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(compare::CompareTarget::Create) => mvcc::CompareTarget::Create(int(|u| match u {
            U::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(compare::CompareTarget::Mod) => mvcc::CompareTarget::Mod(int(|u| match u {
            U::ModRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(compare::CompareTarget::Lease) => mvcc::CompareTarget::Lease(int(|u| match u {
            U::Lease(v) => Some(*v),
            _ => None,
        })),
        Ok(compare::CompareTarget::Value) => mvcc::CompareTarget::Value(match &union {
            Some(U::Value(v)) => v.clone(),
            _ => Vec::new(),
        }),
        Err(_) => {
            return Err(ApiError::Internal(format!(
                "unknown compare target {}",
                c.target
            )))
        }
    };
    Ok(mvcc::Compare {
        result,
        target,
        key: c.key,
        range_end: c.range_end,
    })
}

fn op_from_pb(op: RequestOp) -> Result<mvcc::RequestOp, ApiError> {
    match op.request {
        Some(request_op::Request::RequestRange(r)) => {
            Ok(mvcc::RequestOp::Range(range_from_pb(&r)?))
        }
        Some(request_op::Request::RequestPut(r)) => Ok(mvcc::RequestOp::Put(put_from_pb(r))),
        Some(request_op::Request::RequestDeleteRange(r)) => {
            Ok(mvcc::RequestOp::DeleteRange(delete_from_pb(r)))
        }
        Some(request_op::Request::RequestTxn(t)) => Ok(mvcc::RequestOp::Txn(txn_from_pb(t)?)),
        // etcd answers an empty op this way.
        None => Err(mvcc::Refusal::KeyNotFound { key: Vec::new() }.into()),
    }
}

/// The model's txn.
pub(crate) fn txn_from_pb(t: TxnRequest) -> Result<mvcc::TxnRequest, ApiError> {
    Ok(mvcc::TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(compare_from_pb)
            .collect::<Result<_, _>>()?,
        success: t
            .success
            .into_iter()
            .map(op_from_pb)
            .collect::<Result<_, _>>()?,
        failure: t
            .failure
            .into_iter()
            .map(op_from_pb)
            .collect::<Result<_, _>>()?,
    })
}

/// The wire form of a txn's answer at `revision`.
///
/// As etcd does, each nested answer's header carries the revision as of that op: the one the
/// txn started from until its first write, the txn's own after it; a nested txn's header is
/// empty.
pub(crate) fn txn_to_pb(t: mvcc::TxnResponse, revision: i64) -> TxnResponse {
    let start = if wrote(&t) { revision - 1 } else { revision };
    let mut at = start;
    let responses = ops_to_pb(t.responses, start, &mut at);
    TxnResponse {
        header: header_at(revision),
        succeeded: t.succeeded,
        responses,
    }
}

/// True when the txn changed the store.
fn wrote(t: &mvcc::TxnResponse) -> bool {
    t.responses.iter().any(|r| match r {
        mvcc::ResponseOp::Range(_) => false,
        mvcc::ResponseOp::Put(_) => true,
        mvcc::ResponseOp::DeleteRange(d) => d.deleted > 0,
        mvcc::ResponseOp::Txn(t) => wrote(t),
    })
}

fn ops_to_pb(responses: Vec<mvcc::ResponseOp>, start: i64, at: &mut i64) -> Vec<ResponseOp> {
    responses
        .into_iter()
        .map(|r| {
            let response = match r {
                mvcc::ResponseOp::Range(r) => {
                    response_op::Response::ResponseRange(range_to_pb(r, *at))
                }
                mvcc::ResponseOp::Put(r) => {
                    *at = start + 1;
                    response_op::Response::ResponsePut(put_to_pb(r, *at))
                }
                mvcc::ResponseOp::DeleteRange(r) => {
                    if r.deleted > 0 {
                        *at = start + 1;
                    }
                    response_op::Response::ResponseDeleteRange(delete_to_pb(r, *at))
                }
                mvcc::ResponseOp::Txn(t) => response_op::Response::ResponseTxn(TxnResponse {
                    header: Some(ResponseHeader::default()),
                    succeeded: t.succeeded,
                    responses: ops_to_pb(t.responses, start, at),
                }),
            };
            ResponseOp {
                response: Some(response),
            }
        })
        .collect()
}

/// True when no branch of the txn can write: etcd serves such a txn without Raft, unchecked for
/// size.
pub(crate) fn read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(nested)) => read_only(nested),
            Some(_) => false,
        })
}
