//! Integration tests: the real `metastore` binary through real etcd clients, next to etcd 3.4.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod alarms;
mod cluster;
mod durability;
mod errors;
mod etcdctl;
mod flags;
mod harness;
mod http;
mod kv;
mod leader_wait;
mod lease;
mod limits;
mod lock_election;
mod maintenance;
mod peer_port;
mod powercut;
mod restart;
mod tls;
mod watch;
mod watch_api;
