//! `PutRequest`, `DeleteRangeRequest` and their responses.

use crate::pb::etcdserverpb::{DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse};
use crate::pb_conv::{header_at, kv_to_pb};

/// The model's put.
pub(crate) fn put_from_pb(r: PutRequest) -> mvcc::PutRequest {
    mvcc::PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

/// The wire form of a put's answer at `revision`.
pub(crate) fn put_to_pb(r: mvcc::PutResponse, revision: i64) -> PutResponse {
    PutResponse {
        header: header_at(revision),
        prev_kv: r.prev_kv.map(kv_to_pb),
    }
}

/// The model's delete.
pub(crate) fn delete_from_pb(r: DeleteRangeRequest) -> mvcc::DeleteRangeRequest {
    mvcc::DeleteRangeRequest {
        key: r.key,
        range_end: r.range_end,
        prev_kv: r.prev_kv,
    }
}

/// The wire form of a delete's answer at `revision`.
pub(crate) fn delete_to_pb(r: mvcc::DeleteRangeResponse, revision: i64) -> DeleteRangeResponse {
    DeleteRangeResponse {
        header: header_at(revision),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv_to_pb).collect(),
    }
}
