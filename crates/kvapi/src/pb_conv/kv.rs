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

/// The bytes `kv` takes in a response's repeated `kvs` field (field 2 of `RangeResponse`),
/// without converting it: what the response limit measures.
pub(crate) fn kv_wire_len(kv: &mvcc::KeyValue) -> usize {
    use prost::encoding::{bytes, encoded_len_varint, int64, key_len};
    let field = |tag, v: &i64| {
        if *v == 0 {
            0
        } else {
            int64::encoded_len(tag, v)
        }
    };
    let body = if kv.key.is_empty() {
        0
    } else {
        bytes::encoded_len(1, &kv.key)
    } + field(2, &kv.create_revision)
        + field(3, &kv.mod_revision)
        + field(4, &kv.version)
        + if kv.value.is_empty() {
            0
        } else {
            bytes::encoded_len(5, &kv.value)
        }
        + field(6, &kv.lease);
    key_len(2) + encoded_len_varint(body as u64) + body
}

/// A header carrying only a revision, as etcd fills the responses nested in a txn.
pub(crate) fn header_at(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn wire_len_is_what_prost_encodes() {
        let kvs = [
            mvcc::KeyValue::default(),
            mvcc::KeyValue {
                key: b"k".to_vec(),
                value: vec![7; 300],
                create_revision: 1,
                mod_revision: 1 << 40,
                version: 3,
                lease: -1,
            },
            mvcc::KeyValue {
                key: vec![1; 20_000],
                ..Default::default()
            },
        ];
        for kv in kvs {
            let one = crate::pb::etcdserverpb::RangeResponse {
                kvs: vec![kv_to_pb(kv.clone())],
                ..Default::default()
            };
            assert_eq!(kv_wire_len(&kv), one.encoded_len(), "{kv:?}");
        }
    }
}
