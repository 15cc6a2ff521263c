//! How to run a member ([`NodeConfig`]), and the openraft configuration that follows from it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use deadline::Budgets;
use openraft::{Config, SnapshotPolicy};

use crate::error::StartError;
use crate::types::Member;

/// How to run a member.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This member's id (etcd's member ID).
    pub id: u64,
    /// This member's name and URLs.
    pub member: Member,
    /// Where the Raft log and snapshots live.
    pub data_dir: PathBuf,
    /// The members to bootstrap a new cluster with (this one alone for a single member).
    pub initial_members: BTreeMap<u64, Member>,
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// Election timeout (E): a follower refuses votes for E after hearing from its leader, and
    /// campaigns at a random time between E and 2 E after it last did (`crate::elections`).
    pub election_timeout: Duration,
    /// Entries between snapshots.
    pub snapshot_count: u64,
    /// Per-layer wait budgets.
    pub budgets: Budgets,
    /// Proposals allowed in flight at once; more wait (within the propose budget) for room.
    pub max_in_flight: usize,
    /// Expired leases the leader revokes per second at most.
    pub lease_revoke_rate: u32,
    /// How often the leader records leases' remaining TTLs, so a restart does not renew them.
    pub lease_checkpoint_interval: Duration,
    /// The cluster token (`--initial-cluster-token`): member ids are derived with it.
    pub cluster_token: String,
    /// Join a running cluster (`--initial-cluster-state existing`): wait to be contacted
    /// instead of bootstrapping `initial_members`.
    pub join_existing: bool,
    /// TLS for `https://` peer URLs: this member's certificate and the peer CA, or
    /// `--peer-auto-tls`'s unverified encryption.
    pub peer_tls: Option<crate::PeerTls>,
    /// The local address peer connections are made from (the system's choice if none).
    pub peer_source_addr: Option<std::net::IpAddr>,
    /// `--max-request-bytes`: key and value bytes one command may carry, checked again on the
    /// leader for forwarded commands.
    pub max_request_bytes: usize,
    /// `--max-txn-ops`, checked again on the leader for forwarded commands.
    pub max_txn_ops: usize,
    /// `--strict-reconfig-check`: refuse membership changes that leave too few started
    /// voters for a quorum, as etcd does.
    pub strict_reconfig_check: bool,
    /// Where the Raft log lives (etcd's `--wal-dir`); `None`: in `data_dir`.
    pub log_dir: Option<PathBuf>,
    /// etcd's `--force-new-cluster`: an initialised member restarts as the only member of its
    /// cluster, keeping its data (the other members are removed through its log).
    pub force_new_cluster: bool,
    /// etcd's `--pre-vote`: campaign only after a majority of voters answer that they would
    /// vote (they heard from no leader for an election timeout), so a member cut off from the
    /// others does not depose the leader when it returns (`prevote`).
    pub pre_vote: bool,
}

impl NodeConfig {
    /// A single-member configuration with etcd's defaults.
    pub fn single(id: u64, member: Member, data_dir: PathBuf) -> Self {
        Self {
            id,
            initial_members: BTreeMap::from([(id, member.clone())]),
            member,
            data_dir,
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 100_000,
            budgets: Budgets::default(),
            max_in_flight: 10_000,
            lease_revoke_rate: 5_000,
            lease_checkpoint_interval: Duration::from_secs(300),
            cluster_token: "etcd-cluster".to_string(),
            join_existing: false,
            peer_tls: None,
            peer_source_addr: None,
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            strict_reconfig_check: true,
            log_dir: None,
            force_new_cluster: false,
            pre_vote: false,
        }
    }

    pub(super) fn raft_config(&self) -> Result<Config, StartError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = Config {
            cluster_name: "metastore".to_string(),
            heartbeat_interval: millis(self.heartbeat),
            // `election_timeout_max` is openraft's leader lease: a voter refuses candidates for
            // that long after hearing its leader, as etcd's check-quorum lease does for one
            // election timeout. When to campaign is `crate::elections`' (etcd's [E, 2E)); only
            // openraft's validation reads `min` now (it must exceed the heartbeat: E >= 5
            // heartbeats).
            election_timeout_min: millis(self.election_timeout) / 2,
            election_timeout_max: millis(self.election_timeout),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_count.max(1)),
            max_in_snapshot_log_to_keep: 5_000.min(self.snapshot_count),
            // Entries are batches of up to a few MiB: keep one append message bounded.
            max_payload_entries: 32,
            // `crate::elections` decides when to campaign (openraft's timer waits its lease plus
            // a random timeout: 1.5E at least).
            enable_elect: false,
            // A leader that restarts does not lead again without an election: its read index
            // would be its old first entry or the lazily written committed hint, which may lag
            // the last acknowledged write (issue 23: a linearizable read that missed an
            // acknowledged write after a whole-cluster restart). A new leader appends a blank
            // entry of its own term, whose commit every read index waits for.
            enable_leader_restore: Some(false),
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| StartError::Config(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(election_ms: u64, heartbeat_ms: u64) -> Config {
        let member = Member {
            name: "m".to_string(),
            peer_urls: vec!["http://127.0.0.1:1".to_string()],
            client_urls: vec!["http://127.0.0.1:2".to_string()],
        };
        let mut c = NodeConfig::single(1, member, PathBuf::from("unused"));
        c.election_timeout = Duration::from_millis(election_ms);
        c.heartbeat = Duration::from_millis(heartbeat_ms);
        c.raft_config().expect("a valid configuration")
    }

    /// A voter refuses candidates for one election timeout after hearing its leader (etcd's
    /// check-quorum lease; openraft's lease is `election_timeout_max`), and openraft's own
    /// timer, which could campaign no sooner than 1.5 E, is off: `crate::elections` campaigns
    /// in etcd's [E, 2E).
    #[test]
    fn voters_keep_etcds_lease_and_openrafts_own_timer_is_off() {
        for (election, heartbeat) in [(1000, 100), (500, 50), (5000, 1000)] {
            let c = config(election, heartbeat);
            assert_eq!(c.election_timeout_max, election, "the vote lease");
            assert!(
                !c.enable_elect,
                "openraft's timer campaigns 1.5E-2E after a heartbeat"
            );
            assert!(c.election_timeout_min > c.heartbeat_interval);
            assert_eq!(
                c.enable_leader_restore,
                Some(false),
                "a restarted leader must not lead without an election"
            );
        }
    }
}
