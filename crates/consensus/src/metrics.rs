//! The metrics this crate records, under etcd's names and with etcd's meaning; the server
//! describes them (`# HELP`) and picks the histogram buckets.

/// Gauge: the highest log index known committed (etcd counts committed proposals so).
pub const PROPOSALS_COMMITTED: &str = "etcd_server_proposals_committed_total";
/// Counter: proposals that never applied: timed out, no leader, member stopped.
pub const PROPOSALS_FAILED: &str = "etcd_server_proposals_failed_total";
/// Counter: each leader seen (another, or one after none).
pub const LEADER_CHANGES: &str = "etcd_server_leader_changes_seen_total";
/// Histogram: the seconds each fdatasync of the Raft log (MetaStore's WAL) took.
pub const WAL_FSYNC: &str = "etcd_disk_wal_fsync_duration_seconds";
/// Histogram: the seconds of one message's round trip to a peer, labelled `To` (its hex id).
pub const PEER_ROUND_TRIP: &str = "etcd_network_peer_round_trip_time_seconds";

/// Counters of the operations applied, under etcd 3.4's two names for each (`etcd_mvcc_*` and
/// the older `etcd_debugging_mvcc_*`, both still read by dashboards): puts, deletes, txns,
/// ranges. Ranges served outside the log (plain reads) are counted by the API.
pub const PUTS: [&str; 2] = ["etcd_mvcc_put_total", "etcd_debugging_mvcc_put_total"];
/// Counter: delete-range operations applied.
pub const DELETES: [&str; 2] = ["etcd_mvcc_delete_total", "etcd_debugging_mvcc_delete_total"];
/// Counter: txns applied that did more than one thing (compares count, as etcd reads for them).
pub const TXNS: [&str; 2] = ["etcd_mvcc_txn_total", "etcd_debugging_mvcc_txn_total"];
/// Counter: range reads, including a txn's compares and the read of a put's or delete's
/// previous value, as etcd counts its reads.
pub const RANGES: [&str; 2] = ["etcd_mvcc_range_total", "etcd_debugging_mvcc_range_total"];
/// Gauge (etcd's type, though it only grows): bytes of keys and values put.
pub const PUT_BYTES: &str = "etcd_debugging_mvcc_total_put_size_in_bytes";

/// What one applied command did, counted as etcd's store counts one write transaction.
#[derive(Default)]
struct Tally {
    ranges: u64,
    puts: u64,
    deletes: u64,
    put_bytes: u64,
}

impl Tally {
    fn put(&mut self, req: &mvcc::PutRequest) {
        // etcd reads the previous version first when the answer or the put needs it.
        if req.prev_kv || req.ignore_value || req.ignore_lease {
            self.ranges += 1;
        }
        self.puts += 1;
        self.put_bytes += (req.key.len() + req.value.len()) as u64;
    }

    fn delete(&mut self, req: &mvcc::DeleteRangeRequest) {
        if req.prev_kv {
            self.ranges += 1;
        }
        self.deletes += 1;
    }

    /// The branch that ran (per `answer`), and every compare.
    fn txn(&mut self, req: &mvcc::TxnRequest, answer: &mvcc::TxnResponse) {
        self.ranges += req.compare.len() as u64;
        let branch = if answer.succeeded {
            &req.success
        } else {
            &req.failure
        };
        for (op, answered) in branch.iter().zip(&answer.responses) {
            match (op, answered) {
                (mvcc::RequestOp::Range(_), _) => self.ranges += 1,
                (mvcc::RequestOp::Put(p), _) => self.put(p),
                (mvcc::RequestOp::DeleteRange(d), _) => self.delete(d),
                (mvcc::RequestOp::Txn(t), mvcc::ResponseOp::Txn(a)) => self.txn(t, a),
                (mvcc::RequestOp::Txn(t), _) => self.ranges += t.compare.len() as u64,
            }
        }
    }
}

/// Counts the puts, deletes, txns and reads of `commands` that applied (per `outcomes`).
pub(crate) fn count_applied(commands: &[mvcc::Command], outcomes: &[mvcc::Outcome]) {
    let mut total = Tally::default();
    let mut txns = 0u64;
    for (command, outcome) in commands.iter().zip(outcomes) {
        let Ok(answer) = &outcome.result else {
            continue;
        };
        let mut command = command;
        while let mvcc::Command::Guarded { command: inner, .. } = command {
            command = inner;
        }
        let mut one = Tally::default();
        match (command, answer) {
            (mvcc::Command::Put(p), _) => one.put(p),
            (mvcc::Command::DeleteRange(d), _) => one.delete(d),
            (mvcc::Command::Txn(t), mvcc::Response::Txn(a)) => one.txn(t, a),
            _ => continue,
        }
        if one.ranges + one.puts + one.deletes > 1 {
            txns += 1;
        }
        total.ranges += one.ranges;
        total.puts += one.puts;
        total.deletes += one.deletes;
        total.put_bytes += one.put_bytes;
    }
    for (names, n) in [
        (PUTS, total.puts),
        (DELETES, total.deletes),
        (TXNS, txns),
        (RANGES, total.ranges),
    ] {
        if n > 0 {
            for name in names {
                metrics::counter!(name).increment(n);
            }
        }
    }
    if total.put_bytes > 0 {
        metrics::gauge!(PUT_BYTES).increment(total.put_bytes as f64);
    }
}
