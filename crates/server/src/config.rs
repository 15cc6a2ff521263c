//! Turns flags into the typed configurations of the layers below, and derives member ids.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use consensus::{Member, NodeConfig};
use deadline::{Budgets, Layer};
use kvapi::{ApiConfig, Limits};

use crate::flags::{Engine, Flags};

/// The etcd API version this server speaks.
pub const API_VERSION: &str = "3.4.0";

/// How often watches that asked for progress notifications get one, as in etcd.
pub const WATCH_PROGRESS_INTERVAL: Duration = Duration::from_secs(600);

/// Automatic compaction, as `--auto-compaction-*` ask for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Off.
    Off,
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions of history.
    Revision(i64),
}

/// Everything the server needs, checked.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the log, snapshots and engine files live.
    pub data_dir: PathBuf,
    /// Which engine to run.
    pub engine: Engine,
    /// Addresses to serve clients on.
    pub client_addrs: Vec<String>,
    /// Addresses to serve peers on.
    pub peer_addrs: Vec<String>,
    /// The member's Raft configuration.
    pub node: NodeConfig,
    /// The API's configuration.
    pub api: ApiConfig,
    /// Automatic compaction.
    pub auto_compaction: AutoCompaction,
    /// Most client connections open at once.
    pub max_client_connections: usize,
    /// Most concurrent HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// The watch hub's settings.
    pub hub: watch::HubConfig,
}

pub use consensus::{cluster_id, member_id};

fn split_urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// `http://host:port` → `host:port`; other schemes are refused (no TLS yet).
pub fn host_port(url: &str) -> Result<String> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?}: only http:// URLs are supported"))?;
    let host_port = rest.trim_end_matches('/');
    if host_port.parse::<SocketAddr>().is_err() && !host_port.contains(':') {
        bail!("{url:?}: a port is required");
    }
    Ok(host_port.to_string())
}

fn parse_initial_cluster(spec: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, url) = entry
            .split_once('=')
            .with_context(|| format!("--initial-cluster entry {entry:?} is not name=url"))?;
        members
            .entry(name.trim().to_string())
            .or_default()
            .push(url.trim().to_string());
    }
    Ok(members)
}

fn parse_auto_compaction(mode: &str, retention: &str) -> Result<AutoCompaction> {
    let retention = retention.trim();
    if retention.is_empty() || retention == "0" {
        return Ok(AutoCompaction::Off);
    }
    match mode {
        "periodic" => {
            // etcd reads a bare number as hours.
            let period = match retention.parse::<f64>() {
                Ok(hours) => Duration::try_from_secs_f64(hours * 3600.0)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
                Err(_) => crate::flags::parse_duration(retention).map_err(anyhow::Error::msg)?,
            };
            Ok(AutoCompaction::Periodic(period))
        }
        "revision" => {
            Ok(AutoCompaction::Revision(retention.parse().with_context(
                || format!("--auto-compaction-retention {retention:?}"),
            )?))
        }
        other => bail!("--auto-compaction-mode {other:?}: use periodic or revision"),
    }
}

impl TryFrom<Flags> for Config {
    type Error = anyhow::Error;

    fn try_from(f: Flags) -> Result<Self> {
        let peer_urls = split_urls(&f.initial_advertise_peer_urls);
        let client_urls = split_urls(&f.advertise_client_urls);
        let initial = match &f.initial_cluster {
            Some(spec) => parse_initial_cluster(spec)?,
            None => BTreeMap::from([(f.name.clone(), peer_urls.clone())]),
        };
        let join_existing = match f.initial_cluster_state.as_str() {
            "new" => false,
            "existing" => true,
            other => bail!("--initial-cluster-state {other:?}: use new or existing"),
        };
        let Some(own) = initial.get(&f.name) else {
            bail!(
                "--initial-cluster has no entry for this member's --name {:?}",
                f.name
            );
        };
        let id = member_id(own, &f.initial_cluster_token);
        let member = Member {
            name: f.name.clone(),
            peer_urls: own.clone(),
            client_urls,
        };
        let mut budgets = Budgets::parse_overrides(&f.budgets).context("--budgets")?;
        if let Some(timeout) = f.request_timeout {
            budgets.set(Layer::Api, timeout);
        }
        budgets.validate().context("--request-timeout")?;
        let data_dir = f
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.metastore", f.name)));
        let mut node = NodeConfig::single(id, member.clone(), data_dir.join("member"));
        // Every member must bootstrap with exactly the same membership (Raft takes entries with
        // the same id to be the same): names and peer URLs only. Each member then publishes
        // its client URLs through Raft once a leader is known.
        node.initial_members = initial
            .iter()
            .map(|(name, urls)| {
                let other = member_id(urls, &f.initial_cluster_token);
                // A member alone knows all of its own attributes up front.
                let m = if initial.len() == 1 && other == id {
                    member.clone()
                } else {
                    Member {
                        name: name.clone(),
                        peer_urls: urls.clone(),
                        client_urls: Vec::new(),
                    }
                };
                (other, m)
            })
            .collect();
        node.cluster_token = f.initial_cluster_token.clone();
        node.peer_source_addr = f.experimental_peer_source_addr;
        node.join_existing = join_existing;
        node.heartbeat = Duration::from_millis(f.heartbeat_interval);
        node.election_timeout = Duration::from_millis(f.election_timeout);
        node.snapshot_count = f.snapshot_count;
        node.lease_checkpoint_interval = f.lease_checkpoint_interval;
        node.lease_revoke_rate = f.lease_revoke_rate.max(1);
        node.budgets = budgets;
        node.max_request_bytes = f.max_request_bytes;
        node.max_txn_ops = f.max_txn_ops;
        node.strict_reconfig_check = f.strict_reconfig_check;
        if f.election_timeout < 5 * f.heartbeat_interval {
            bail!(
                "--election-timeout ({}ms) should be at least 5 times --heartbeat-interval ({}ms)",
                f.election_timeout,
                f.heartbeat_interval
            );
        }
        for (flag, value) in [
            ("--max-response-bytes", f.max_response_bytes),
            ("--max-client-connections", f.max_client_connections),
            ("--max-watchers-per-stream", f.max_watchers_per_stream),
            ("--max-watcher-queue-bytes", f.max_watcher_queue_bytes),
            (
                "--max-concurrent-streams",
                usize::try_from(f.max_concurrent_streams).unwrap_or(usize::MAX),
            ),
        ] {
            if value == 0 {
                bail!("{flag} must be more than 0");
            }
        }
        let api = ApiConfig {
            cluster_id: cluster_id(&f.initial_cluster_token),
            limits: Limits {
                max_request_bytes: f.max_request_bytes,
                max_txn_ops: f.max_txn_ops,
                max_response_bytes: f.max_response_bytes,
                max_watchers_per_stream: f.max_watchers_per_stream,
            },
            budgets,
            version: API_VERSION.to_string(),
            watch_progress_interval: WATCH_PROGRESS_INTERVAL,
        };
        Ok(Config {
            data_dir,
            engine: f.engine,
            client_addrs: split_urls(&f.listen_client_urls)
                .iter()
                .map(|u| host_port(u))
                .collect::<Result<_>>()?,
            peer_addrs: split_urls(&f.listen_peer_urls)
                .iter()
                .map(|u| host_port(u))
                .collect::<Result<_>>()?,
            node,
            api,
            auto_compaction: parse_auto_compaction(
                &f.auto_compaction_mode,
                &f.auto_compaction_retention,
            )?,
            max_client_connections: f.max_client_connections,
            max_concurrent_streams: f.max_concurrent_streams,
            hub: watch::HubConfig {
                max_queued_bytes: f.max_watcher_queue_bytes,
                ..watch::HubConfig::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = member_id(&["http://127.0.0.1:2380".into()], "etcd-cluster");
        assert_eq!(
            a,
            member_id(&["http://127.0.0.1:2380".into()], "etcd-cluster")
        );
        assert_ne!(
            a,
            member_id(&["http://127.0.0.1:2381".into()], "etcd-cluster")
        );
        assert_ne!(
            a,
            member_id(&["http://127.0.0.1:2380".into()], "other-token")
        );
        assert_ne!(cluster_id("etcd-cluster"), a);
    }

    #[test]
    fn default_flags_make_a_single_member() {
        let c = Config::try_from(Flags::parse_from(["metastore"])).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("default.metastore"));
        assert_eq!(c.client_addrs, ["127.0.0.1:2379"]);
        assert_eq!(c.peer_addrs, ["127.0.0.1:2380"]);
        assert_eq!(c.node.initial_members.len(), 1);
        assert_eq!(c.auto_compaction, AutoCompaction::Off);
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        let bad = |args: &[&str]| {
            let mut all = vec!["metastore"];
            all.extend_from_slice(args);
            Config::try_from(Flags::parse_from(all))
                .unwrap_err()
                .to_string()
        };
        assert!(bad(&["--listen-client-urls", "https://x:1"]).contains("only http://"));
        assert!(bad(&["--initial-cluster", "other=http://127.0.0.1:2380"]).contains("no entry"));
        assert!(bad(&["--budgets", "commit=0s"]).contains("budgets"));
        assert!(bad(&[
            "--auto-compaction-mode",
            "weekly",
            "--auto-compaction-retention",
            "1"
        ])
        .contains("weekly"));
    }

    #[test]
    fn auto_compaction_flags() {
        assert_eq!(
            parse_auto_compaction("periodic", "1").unwrap(),
            AutoCompaction::Periodic(Duration::from_secs(3600))
        );
        assert_eq!(
            parse_auto_compaction("periodic", "30m").unwrap(),
            AutoCompaction::Periodic(Duration::from_secs(1800))
        );
        assert_eq!(
            parse_auto_compaction("revision", "1000").unwrap(),
            AutoCompaction::Revision(1000)
        );
    }
}
