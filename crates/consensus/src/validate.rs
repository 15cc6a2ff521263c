//! The checks every command passes before it may enter the log, whoever proposed it: kvapi
//! checks a client's request first, but a forwarded proposal reaches the leader without it,
//! and whatever reaches the log is applied by every member on every restart.
//!
//! The rules are etcd's (and kvapi's): every key given, `ignore_value`/`ignore_lease` without a
//! value/lease, txns within `--max-txn-ops` (nested ones within what the outer leaves), keys
//! and values within `--max-request-bytes`, lease TTLs within `MaxLeaseTTL`. A request kvapi
//! accepted always passes: its raw key and value bytes are fewer than its encoded ones.

use mvcc::{Command, RequestOp, TxnRequest};

use mvcc::Refusal;

/// etcd's largest lease TTL (`MaxLeaseTTL`), in seconds.
pub(crate) const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// What one command may carry: the limits kvapi checks client requests against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `--max-request-bytes`: key and value bytes of one command at most.
    pub(crate) max_request_bytes: usize,
    /// `--max-txn-ops`.
    pub(crate) max_txn_ops: usize,
}

/// Refuses a command no client request checked by kvapi could have produced.
pub(crate) fn check(command: &Command, limits: Limits) -> Result<(), Refusal> {
    match command {
        Command::Guarded { command, .. } => return check(command, limits),
        Command::Put(p) => check_op(&RequestOp::Put(p.clone()), 0)?,
        Command::DeleteRange(d) => key_given(&d.key)?,
        // First: it bounds the nesting that `payload_bytes` walks.
        Command::Txn(t) => check_txn(t, limits.max_txn_ops)?,
        Command::LeaseGrant(g) if g.ttl > MAX_LEASE_TTL => return Err(Refusal::LeaseTtlTooLarge),
        Command::LeaseCheckpoint(c)
            if c.checkpoints.iter().any(|(_, left)| *left > MAX_LEASE_TTL) =>
        {
            return Err(Refusal::LeaseTtlTooLarge)
        }
        _ => {}
    }
    if payload_bytes(command) > limits.max_request_bytes {
        return Err(Refusal::RequestTooLarge);
    }
    Ok(())
}

fn key_given(key: &[u8]) -> Result<(), Refusal> {
    if key.is_empty() {
        return Err(Refusal::KeyNotProvided);
    }
    Ok(())
}

/// etcd's txn check: the widest of compares, success and failure within `max_ops`, every key
/// given, nested txns within what the outer one leaves.
fn check_txn(t: &TxnRequest, max_ops: usize) -> Result<(), Refusal> {
    let width = t.compare.len().max(t.success.len()).max(t.failure.len());
    if width > max_ops {
        return Err(Refusal::TooManyOps);
    }
    for c in &t.compare {
        key_given(&c.key)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        check_op(op, max_ops - width)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: usize) -> Result<(), Refusal> {
    match op {
        RequestOp::Range(r) => key_given(&r.key),
        RequestOp::Put(p) => {
            key_given(&p.key)?;
            if p.ignore_value && !p.value.is_empty() {
                return Err(Refusal::ValueProvided);
            }
            if p.ignore_lease && p.lease != 0 {
                return Err(Refusal::LeaseProvided);
            }
            Ok(())
        }
        RequestOp::DeleteRange(d) => key_given(&d.key),
        RequestOp::Txn(t) => check_txn(t, max_ops),
    }
}

/// The key, range-end and value bytes a command carries.
fn payload_bytes(command: &Command) -> usize {
    match command {
        Command::Guarded { command, .. } => payload_bytes(command),
        Command::Put(p) => p.key.len().saturating_add(p.value.len()),
        Command::DeleteRange(d) => d.key.len().saturating_add(d.range_end.len()),
        // etcd (and kvapi) put no size limit on a read-only txn: it is not a proposal there.
        Command::Txn(t) if !writes(t) => 0,
        Command::Txn(t) => txn_bytes(t),
        // The leader's own record of every lease (no client's request): as large as the lease
        // count, bounded by the peer message size when forwarded.
        _ => 0,
    }
}

/// Whether any branch of `t` (nested ones too) writes.
fn writes(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match op {
        RequestOp::Range(_) => false,
        RequestOp::Put(_) | RequestOp::DeleteRange(_) => true,
        RequestOp::Txn(t) => writes(t),
    })
}

fn txn_bytes(t: &TxnRequest) -> usize {
    let compares = t.compare.iter().fold(0usize, |n, c| {
        let value = match &c.target {
            mvcc::CompareTarget::Value(v) => v.len(),
            _ => 0,
        };
        n.saturating_add(c.key.len())
            .saturating_add(c.range_end.len())
            .saturating_add(value)
    });
    t.success.iter().chain(&t.failure).fold(compares, |n, op| {
        n.saturating_add(match op {
            RequestOp::Range(r) => r.key.len().saturating_add(r.range_end.len()),
            RequestOp::Put(p) => p.key.len().saturating_add(p.value.len()),
            RequestOp::DeleteRange(d) => d.key.len().saturating_add(d.range_end.len()),
            RequestOp::Txn(t) => txn_bytes(t),
        })
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::types::typ::EntryPayload;
    use deadline::{Deadline, Layer, Registry};

    use crate::batcher::Answer;
    use crate::lessor::Lessor;
    use crate::network::{ForwardReply, Forwarded, Refusal};
    use crate::state_machine::StateMachine;
    use crate::types::typ::Entry;
    use crate::types::{Member, Proposal, Tagged};
    use crate::{Node, NodeConfig};

    use super::{check, Limits};

    /// Each of etcd's refusals, for a command as it reaches the log.
    #[test]
    fn the_rules_are_etcds() {
        let limits = Limits {
            max_request_bytes: 100,
            max_txn_ops: 2,
        };
        let put = |key: &str, value: usize| mvcc::PutRequest {
            key: key.into(),
            value: vec![b'v'; value],
            ..Default::default()
        };
        let refused = |c: mvcc::Command| check(&c, limits).err();
        assert_eq!(refused(mvcc::Command::Put(put("k", 99))), None);
        assert_eq!(
            refused(mvcc::Command::Put(put("k", 100))),
            Some(mvcc::Refusal::RequestTooLarge)
        );
        assert_eq!(
            refused(mvcc::Command::Put(put("", 1))),
            Some(mvcc::Refusal::KeyNotProvided)
        );
        let mut p = put("k", 1);
        p.ignore_value = true;
        assert_eq!(
            refused(mvcc::Command::Put(p)),
            Some(mvcc::Refusal::ValueProvided)
        );
        let mut p = put("k", 0);
        p.ignore_lease = true;
        p.lease = 3;
        assert_eq!(
            refused(mvcc::Command::Put(p)),
            Some(mvcc::Refusal::LeaseProvided)
        );
        assert_eq!(
            refused(mvcc::Command::DeleteRange(
                mvcc::DeleteRangeRequest::default()
            )),
            Some(mvcc::Refusal::KeyNotProvided)
        );
        let op = |k: &str| mvcc::RequestOp::Put(put(k, 1));
        let txn = |success: Vec<mvcc::RequestOp>| mvcc::TxnRequest {
            success,
            ..Default::default()
        };
        assert_eq!(
            refused(mvcc::Command::Txn(txn(vec![op("a"), op("b")]))),
            None
        );
        assert_eq!(
            refused(mvcc::Command::Txn(txn(vec![op("a"), op("b"), op("c")]))),
            Some(mvcc::Refusal::TooManyOps)
        );
        // A nested txn gets what the outer one leaves.
        let nested = mvcc::RequestOp::Txn(txn(vec![op("a"), op("b")]));
        assert_eq!(
            refused(mvcc::Command::Txn(txn(vec![nested]))),
            Some(mvcc::Refusal::TooManyOps)
        );
        assert_eq!(
            refused(mvcc::Command::Txn(txn(vec![
                op("a"),
                mvcc::RequestOp::Put(put("big", 120))
            ]))),
            Some(mvcc::Refusal::RequestTooLarge)
        );
        // A read-only txn has no size limit, as in etcd.
        let read = mvcc::RequestOp::Range(mvcc::RangeRequest {
            key: vec![b'k'; 200],
            ..Default::default()
        });
        assert_eq!(refused(mvcc::Command::Txn(txn(vec![read]))), None);
        assert_eq!(refused(grant(1, super::MAX_LEASE_TTL)), None);
        assert_eq!(
            refused(grant(1, super::MAX_LEASE_TTL + 1)),
            Some(mvcc::Refusal::LeaseTtlTooLarge)
        );
        assert_eq!(
            refused(mvcc::Command::LeaseCheckpoint(
                mvcc::LeaseCheckpointRequest {
                    checkpoints: vec![(1, i64::MAX)],
                }
            )),
            Some(mvcc::Refusal::LeaseTtlTooLarge)
        );
    }

    fn grant(id: i64, ttl: i64) -> mvcc::Command {
        mvcc::Command::LeaseGrant(mvcc::LeaseGrantRequest { id, ttl })
    }

    fn put(key: &str) -> mvcc::Command {
        mvcc::Command::Put(mvcc::PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    }

    pub(crate) async fn single() -> (Node<engine_mem::MemBackend>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let member = Member {
            name: "solo".into(),
            peer_urls: vec!["http://127.0.0.1:1".into()],
            client_urls: vec![],
        };
        let mut config = NodeConfig::single(7, member, dir.path().to_path_buf());
        config.election_timeout = Duration::from_millis(150);
        config.heartbeat = Duration::from_millis(30);
        let node = Node::start(config, engine_mem::MemBackend::new())
            .await
            .unwrap();
        node.wait_for_leader(Deadline::after(Duration::from_secs(10)))
            .await
            .unwrap();
        (node, dir)
    }

    fn d() -> Deadline {
        Deadline::after(Duration::from_secs(5))
    }

    /// A follower's batch holding a grant whose TTL overflows any clock is refused by the
    /// leader, which keeps applying.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_leader_refuses_a_forwarded_grant_with_an_overflowing_ttl() {
        let (node, _dir) = single().await;
        let proposal = Proposal {
            origin: 99,
            incarnation: 1,
            seq: 1,
            commands: vec![
                Tagged {
                    id: 1,
                    command: put("innocent"),
                },
                Tagged {
                    id: 2,
                    command: grant(5, i64::MAX),
                },
            ],
        };
        let reply = node.serve_forwarded(Forwarded::Propose(proposal)).await;
        assert!(
            matches!(&reply, ForwardReply::Refused(Refusal::Invalid(bad))
                if bad.len() == 1 && bad[0] == (2, mvcc::Refusal::LeaseTtlTooLarge)),
            "the leader took it: {reply:?}"
        );
        let after = node.propose(put("after"), d()).await;
        assert!(after.is_ok(), "the member stopped applying: {after:?}");
        node.shutdown().await.unwrap();
    }

    /// A member's own client gets etcd's answer, and the member keeps applying.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_grant_with_an_overflowing_ttl_gets_etcds_error() {
        let (node, _dir) = single().await;
        let refused = node.propose(grant(5, i64::MAX), d()).await;
        assert!(
            matches!(&refused, Err(e) if e.to_string() == "etcdserver: too large lease TTL"),
            "{refused:?}"
        );
        let after = node.propose(put("after"), d()).await;
        assert!(after.is_ok(), "the member stopped applying: {after:?}");
        node.shutdown().await.unwrap();
    }

    /// An entry already in the log (written before these checks existed) still applies, and
    /// keeping its lease alive does not overflow either.
    #[tokio::test]
    async fn apply_is_total_for_a_logged_grant_with_an_overflowing_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let store = mvcc::Store::open(engine_mem::MemBackend::new()).unwrap();
        let lessor = Arc::new(Lessor::default());
        let waiters: Registry<Answer> = Registry::new("test-proposals");
        let mut sm = StateMachine::open(
            store.clone(),
            crate::state_machine::Proposer {
                node_id: 7,
                incarnation: 3,
                waiters: waiters.clone(),
                alarms: Default::default(),
                auth: Default::default(),
            },
            dir.path().join("snapshots"),
            Arc::clone(&lessor),
            Duration::from_secs(1),
            crate::compaction::Removal::new(0),
        )
        .unwrap();
        let pending = waiters.register();
        let proposal = Proposal {
            origin: 7,
            incarnation: 3,
            seq: 1,
            commands: vec![
                Tagged {
                    id: pending.id(),
                    command: grant(5, i64::MAX),
                },
                Tagged {
                    id: 0,
                    command: mvcc::Command::LeaseCheckpoint(mvcc::LeaseCheckpointRequest {
                        checkpoints: vec![(5, i64::MAX)],
                    }),
                },
            ],
        };
        let entry: Entry = Entry {
            log_id: crate::types::typ::log_id(1, 7, 1),
            payload: EntryPayload::Normal(proposal),
        };
        sm.apply_entries([entry]).await.unwrap();
        let answer = pending
            .wait(Layer::Commit, Deadline::after(Duration::ZERO))
            .await;
        assert!(answer.is_ok(), "{answer:?}");
        assert!(lessor.renew(5).is_some());
        lessor.reset(&store.leases(), Duration::from_secs(1), None);
        assert!(lessor.remaining(5).is_some_and(|left| !left.is_zero()));
    }
}
