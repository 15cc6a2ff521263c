//! `--wal-dir`: the Raft log (MetaStore's WAL) lives in a directory of its own, and a restart
//! reads it from there.

use std::time::Duration;

use crate::harness::{Kind, Server};
use crate::tls::etcdctl;

#[test]
fn the_raft_log_lives_in_wal_dir_and_survives_a_restart() {
    let wal = tempfile::tempdir().expect("temp dir");
    let wal_dir = wal.path().join("wal");
    let flag = format!("--wal-dir={}", wal_dir.display());
    let mut server = Server::start(Kind::Redb, &[&flag]);
    let put = etcdctl(&server.endpoint(), &[], &["put", "k", "in the wal dir"]);
    assert_eq!(put.0, Some(0), "{put:?}");
    assert!(
        wal_dir.join("raft-log").is_dir(),
        "no Raft log in --wal-dir {}",
        wal_dir.display()
    );
    assert!(
        !server.data_dir().join("member/raft-log").exists(),
        "the Raft log is in the data dir too"
    );
    server.kill();
    server.restart();
    let get = etcdctl(&server.endpoint(), &[], &["get", "k", "--print-value-only"]);
    assert_eq!(get.1, "in the wal dir\n", "{get:?}");
    // Without its log the member refuses to start rather than bootstrap an empty one.
    server.kill();
    std::fs::remove_dir_all(&wal_dir).expect("remove the wal dir");
    let log = server.restart_refused(Duration::from_secs(20));
    assert!(log.contains("raft-log is missing"), "{log}");
}
