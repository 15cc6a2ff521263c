//! Integration tests: the real `metastore` binary through real etcd clients, next to etcd 3.4.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The package is `metastore-server`; the code knows the library by its short name.
extern crate metastore_server as server;

mod alarms;
mod auth;
mod cert_auth;
mod cluster;
mod config_file;
mod discovery_srv;
mod durability;
mod errors;
mod etcd_metrics;
mod etcdctl;
mod flags;
mod force_new_cluster;
mod gateway;
mod harness;
mod http;
mod http_access;
mod jwt;
mod kv;
mod leader_wait;
mod lease;
mod limits;
mod lock_election;
mod logs;
mod maintenance;
mod peer_port;
mod pings;
mod powercut;
mod pre_vote;
mod restart;
mod shutdown;
mod snapshot;
mod tls;
mod tls_files;
mod unix_urls;
mod wal_dir;
mod watch;
mod watch_api;
