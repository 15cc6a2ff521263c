//! `mvccpb.Event`.

use crate::pb::mvccpb;
use crate::pb_conv::kv_to_pb;

/// The wire form of an event; `prev_kv` goes only where the watcher asked for it (the hub
/// already left it out otherwise).
pub(crate) fn event_to_pb(e: mvcc::Event) -> mvccpb::Event {
    let kind = match e.kind {
        mvcc::EventKind::Put => mvccpb::event::EventType::Put,
        mvcc::EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(kv_to_pb(e.kv)),
        prev_kv: e.prev_kv.map(kv_to_pb),
    }
}
