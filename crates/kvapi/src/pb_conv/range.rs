//! `RangeRequest` and `RangeResponse`.

use crate::error::ApiError;
use crate::pb::etcdserverpb::{range_request, RangeRequest, RangeResponse};
use crate::pb_conv::{header_at, kv_to_pb};

/// The model's range request; unknown sort options are refused as etcd does.
pub(crate) fn range_from_pb(r: &RangeRequest) -> Result<mvcc::RangeRequest, ApiError> {
    let sort_order = match range_request::SortOrder::try_from(r.sort_order) {
        Ok(range_request::SortOrder::None) => mvcc::SortOrder::None,
        Ok(range_request::SortOrder::Ascend) => mvcc::SortOrder::Ascend,
        Ok(range_request::SortOrder::Descend) => mvcc::SortOrder::Descend,
        Err(_) => return Err(ApiError::InvalidSortOption),
    };
    let sort_target = match range_request::SortTarget::try_from(r.sort_target) {
        Ok(range_request::SortTarget::Key) => mvcc::SortTarget::Key,
        Ok(range_request::SortTarget::Version) => mvcc::SortTarget::Version,
        Ok(range_request::SortTarget::Create) => mvcc::SortTarget::Create,
        Ok(range_request::SortTarget::Mod) => mvcc::SortTarget::Mod,
        Ok(range_request::SortTarget::Value) => mvcc::SortTarget::Value,
        Err(_) => return Err(ApiError::InvalidSortOption),
    };
    Ok(mvcc::RangeRequest {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

/// The wire form of a range answer read with the store at `revision`.
pub(crate) fn range_to_pb(r: mvcc::RangeResponse, revision: i64) -> RangeResponse {
    RangeResponse {
        header: header_at(revision),
        kvs: r.kvs.into_iter().map(kv_to_pb).collect(),
        more: r.more,
        count: r.count,
    }
}
