//! Alarms and the space quota: replicated state that a restart keeps, and etcd's recovery steps.

use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client};

use crate::harness::{Kind, Server};

async fn member_id(c: &mut Client) -> u64 {
    c.status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .member_id()
}

async fn alarms(c: &mut Client) -> Vec<(u64, AlarmType)> {
    c.alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm get")
        .alarms()
        .iter()
        .map(|m| (m.member_id(), m.alarm()))
        .collect()
}

/// A raised alarm is part of the replicated state: after a restart (also of the in-memory
/// engine, rebuilt from its log and snapshots) it is still listed and still refuses writes.
#[tokio::test]
async fn raised_alarm_survives_restart() {
    for kind in [Kind::Redb, Kind::Mem] {
        let mut server = Server::start(kind, &[]);
        let mut c = server.client().await;
        let me = member_id(&mut c).await;
        let mut options = AlarmOptions::new();
        options.with_member(me);
        c.alarm(AlarmAction::Activate, AlarmType::Nospace, Some(options))
            .await
            .expect("activate");
        drop(c);
        server.kill();
        server.restart();
        let mut c = server.client().await;
        assert_eq!(
            alarms(&mut c).await,
            vec![(me, AlarmType::Nospace)],
            "{kind:?}: the alarm after a restart"
        );
        let refused = c
            .put("k", "v", None)
            .await
            .expect_err("a put under NOSPACE");
        assert!(
            refused
                .to_string()
                .contains("etcdserver: mvcc: database space exceeded"),
            "{kind:?}: {refused}"
        );
    }
}

/// MetaStore started on etcd 3.4's data dir refuses with the files it found and how to
/// migrate, instead of serving an empty store.
#[tokio::test]
async fn etcd_data_dir_is_refused() {
    let mut server = Server::start(Kind::Etcd, &[]);
    let mut c = server.client().await;
    c.put("kept", "by etcd", None).await.expect("put to etcd");
    drop(c);
    server.kill();
    server.switch_to(Kind::Redb);
    let refusal = server.restart_refused(std::time::Duration::from_secs(20));
    for needle in [
        "holds etcd's files",
        "member/snap/db",
        "member/wal",
        "migrate-etcd",
    ] {
        assert!(refusal.contains(needle), "{needle:?} not in {refusal}");
    }
}

/// The quota, filled and recovered with etcd's steps, against etcd 3.4 and MetaStore: what each
/// step answers must match.
#[tokio::test]
async fn quota_reached_as_etcd() {
    use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

    async fn script(kind: Kind) -> Vec<String> {
        let server = Server::start(kind, &["--quota-backend-bytes", "4194304"]);
        let mut c = server.client().await;
        let me = member_id(&mut c).await;
        let mut seen = Vec::new();
        let lease = c.lease_grant(60, None).await.expect("grant").id();
        let value = vec![b'x'; 64 << 10];
        let mut refused = None;
        for i in 0..400 {
            if let Err(e) = c.put(format!("fill/{i:04}"), value.clone(), None).await {
                refused = Some(e);
                break;
            }
        }
        let refused = refused.expect("the quota refuses a put within 400 puts of 64 KiB");
        seen.push(format!("refused: {refused}"));
        let listed = alarms(&mut c).await;
        seen.push(format!(
            "alarms: {:?}",
            listed
                .iter()
                .map(|(m, a)| (*m == me, *a))
                .collect::<Vec<_>>()
        ));
        let show = |r: Result<String, etcd_client::Error>| match r {
            Ok(s) => format!("ok {s}"),
            Err(e) => format!("error {e}"),
        };
        seen.push(show(c.put("more", "v", None).await.map(|_| String::new())));
        seen.push(show(
            c.txn(Txn::new().and_then([TxnOp::put("t", "v", None)]))
                .await
                .map(|t| t.succeeded().to_string()),
        ));
        seen.push(show(c.lease_grant(60, None).await.map(|_| String::new())));
        // Reads, deletes, read-only txns, lease revokes and compaction still work.
        seen.push(show(
            c.get(
                "fill/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map(|g| (g.count() > 0).to_string()),
        ));
        seen.push(show(
            c.txn(
                Txn::new()
                    .when([Compare::version("fill/0000", CompareOp::Greater, 0)])
                    .and_then([TxnOp::get("fill/0000", None)]),
            )
            .await
            .map(|t| t.succeeded().to_string()),
        ));
        seen.push(show(c.lease_revoke(lease).await.map(|_| String::new())));
        let deleted = c
            .delete(
                "fill/",
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await;
        seen.push(show(deleted.map(|d| (d.deleted() > 0).to_string())));
        let rev = c
            .get("any", None)
            .await
            .expect("get")
            .header()
            .expect("header")
            .revision();
        seen.push(show(
            c.compact(
                rev,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
            .map(|_| String::new()),
        ));
        // etcd's recovery: compacted, now defragment, disarm, and write again.
        let size = |s: etcd_client::StatusResponse| s.db_size();
        let before = size(c.status().await.expect("status"));
        seen.push(show(c.defragment().await.map(|_| String::new())));
        let after = size(c.status().await.expect("status"));
        eprintln!("{kind:?}: db size {before} bytes before defragment, {after} after");
        seen.push(format!("defragmented below the quota: {}", after < 4 << 20));
        if kind != Kind::Mem {
            // The in-memory engine gives memory back as compaction drops versions.
            seen.push(format!("defragment shrank the file: {}", after < before));
        }
        let mut options = AlarmOptions::new();
        options.with_member(me);
        let disarmed = c
            .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options))
            .await
            .map(|r| {
                format!(
                    "{:?}",
                    r.alarms().iter().map(|m| m.alarm()).collect::<Vec<_>>()
                )
            });
        seen.push(show(disarmed));
        seen.push(format!("alarms after disarm: {:?}", alarms(&mut c).await));
        seen.push(show(
            c.put("newkey", "123", None).await.map(|_| String::new()),
        ));
        seen.push(show(c.get("newkey", None).await.map(|g| {
            format!(
                "{:?}",
                g.kvs()
                    .iter()
                    .map(|kv| kv.value().to_vec())
                    .collect::<Vec<_>>()
            )
        })));
        seen
    }
    let expected = script(Kind::Etcd).await;
    for kind in [Kind::Redb, Kind::Mem] {
        let got = script(kind).await;
        // The in-memory engine has no file to shrink: that step is etcd's and redb's only.
        let expected: Vec<String> = expected
            .iter()
            .filter(|s| kind != Kind::Mem || !s.starts_with("defragment shrank"))
            .cloned()
            .collect();
        eprintln!("metastore on {kind:?}: {got:#?}");
        assert_eq!(
            expected, got,
            "etcd 3.4 (left) and MetaStore on {kind:?} (right) differ"
        );
    }
}
