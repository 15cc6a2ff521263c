//! `mvccpb.KeyValue` and the response header.

use crate::pb::etcdserverpb::ResponseHeader;
use crate::pb::mvccpb;

/// The wire form of a key-value.
pub(crate) fn kv_to_pb(kv: mvcc::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// A header carrying only a revision, as etcd fills the responses nested in a txn.
pub(crate) fn header_at(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}
