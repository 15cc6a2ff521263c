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
