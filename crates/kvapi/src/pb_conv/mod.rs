//! Conversions between the wire types and the `mvcc` model, one file per message family.

mod event;
mod kv;
mod range;
mod txn;
mod write;

pub(crate) use event::event_to_pb;
pub(crate) use kv::{header_at, kv_to_pb, kv_wire_len};
pub(crate) use range::{range_from_pb, range_to_pb};
pub(crate) use txn::{read_only, txn_from_pb, txn_to_pb};
pub(crate) use write::{delete_from_pb, delete_to_pb, put_from_pb, put_to_pb};
