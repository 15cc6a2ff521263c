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
        "make-mirror",
    ] {
        assert!(refusal.contains(needle), "{needle:?} not in {refusal}");
    }
}
