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
use crate::tls::{self, TlsFiles};
use std::sync::Arc;
use tokio_rustls::rustls;

/// The etcd API version this server speaks.
pub const API_VERSION: &str = "3.4.0";

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
    /// `--engine-cache-bytes`: the redb engine's memory for pages.
    pub engine_cache_bytes: usize,
    /// `--backend-batch-interval` and `--backend-batch-limit`: when the redb engine commits
    /// the writes it buffers.
    pub engine_batching: engine_redb::Batching,
    /// Addresses to serve clients on.
    pub client_addrs: Vec<String>,
    /// Addresses to serve peers on.
    pub peer_addrs: Vec<String>,
    /// Addresses to serve clients on over TLS (`https://` in `--listen-client-urls`).
    pub client_tls_addrs: Vec<String>,
    /// Addresses to serve peers on over TLS (`https://` in `--listen-peer-urls`).
    pub peer_tls_addrs: Vec<String>,
    /// Unix domain sockets to serve clients on (`unix://host:port` in `--listen-client-urls`:
    /// the socket file `host:port`, relative to the working directory, as etcd), and whether
    /// each is TLS (`unixs://`).
    pub client_unix_sockets: Vec<(PathBuf, bool)>,
    /// The client port's TLS, checked at start (`--cert-file`, ...).
    pub client_tls: Option<Arc<rustls::ServerConfig>>,
    /// `--client-cert-auth`: with auth enabled, a request without a token is the user its
    /// client certificate names (its common name), as in etcd.
    pub client_cert_auth: bool,
    /// The peer port's TLS, checked at start (`--peer-cert-file`, ...).
    pub peer_tls: Option<Arc<rustls::ServerConfig>>,
    /// The member's Raft configuration.
    pub node: NodeConfig,
    /// The API's configuration.
    pub api: ApiConfig,
    /// Automatic compaction.
    pub auto_compaction: AutoCompaction,
    /// Most client connections open at once.
    pub max_client_connections: usize,
    /// Addresses to serve `/metrics` and `/health` on (`--listen-metrics-urls`).
    pub metrics_addrs: Vec<String>,
    /// Most concurrent HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// Client connections' HTTP/2 keepalive (`--grpc-keepalive-*`).
    pub keepalive: crate::serve::Keepalive,
    /// `--metrics extensive`: time unary gRPC calls in `grpc_server_handling_seconds`.
    pub extensive_metrics: bool,
    /// `--cors` and `--host-whitelist` on the HTTP endpoints.
    pub access: Arc<crate::access::AccessControl>,
    /// The watch hub's settings.
    pub hub: watch::HubConfig,
    /// `--experimental-initial-corrupt-check`: compare hashes with the peers before serving.
    pub initial_corrupt_check: bool,
    /// `--experimental-corrupt-check-time`: how often the leader compares hashes (0: never).
    pub corrupt_check_time: Duration,
    /// `--enable-grpc-gateway`: serve the HTTP/JSON gateway on the client URLs.
    pub grpc_gateway: bool,
}

pub use consensus::{cluster_id, member_id};

fn split_urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// `http://host:port` or `https://host:port` → (`host:port`, whether TLS).
pub fn host_port(url: &str) -> Result<(String, bool)> {
    let (rest, tls) = match url.strip_prefix("https://") {
        Some(rest) => (rest, true),
        None => (
            url.strip_prefix("http://").with_context(|| {
                format!("{url:?}: only http:// and https:// URLs are supported")
            })?,
            false,
        ),
    };
    let host_port = rest.trim_end_matches('/');
    if host_port.parse::<SocketAddr>().is_err() && !host_port.contains(':') {
        bail!("{url:?}: a port is required");
    }
    Ok((host_port.to_string(), tls))
}

/// `host:port` → `host` (brackets of an IPv6 address dropped).
fn host_of(host_port: &str) -> String {
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// One side's listen URLs split into plaintext and TLS addresses, and its TLS configuration,
/// checked: `https://` needs a certificate, and TLS files without an `https://` URL are refused
/// rather than ignored (a plaintext server where TLS was asked for).
type Listeners = (
    Vec<String>,
    Vec<String>,
    Vec<(PathBuf, bool)>,
    Option<Arc<rustls::ServerConfig>>,
);

/// `unix://host:port` or `unixs://host:port` → (the socket file `host:port`, whether TLS);
/// `None` for other schemes. etcd 3.4 takes the URL's `host:port` as the file name and
/// refuses any other form.
fn unix_socket(url: &str) -> Result<Option<(PathBuf, bool)>> {
    let (rest, tls) = match (url.strip_prefix("unixs://"), url.strip_prefix("unix://")) {
        (Some(rest), _) => (rest, true),
        (None, Some(rest)) => (rest, false),
        (None, None) => return Ok(None),
    };
    let name = rest.trim_end_matches('/');
    let well_formed = name
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && !port.is_empty() && !host.contains('/'));
    if !well_formed {
        bail!("{url:?}: URL address does not have the form \"host:port\" (etcd names the socket file host:port)");
    }
    Ok(Some((PathBuf::from(name), tls)))
}

fn listeners(urls: &str, files: &TlsFiles, prefix: &str, urls_flag: &str) -> Result<Listeners> {
    let (mut plain, mut secure, mut unix) = (Vec::new(), Vec::new(), Vec::new());
    for url in split_urls(urls) {
        if let Some(socket) = unix_socket(&url)? {
            if !prefix.is_empty() {
                bail!("{urls_flag} {url:?}: unix:// peer URLs are not supported (client URLs may be unix://)");
            }
            unix.push(socket);
            continue;
        }
        let (addr, tls) = host_port(&url)?;
        if tls {
            secure.push(addr);
        } else {
            plain.push(addr);
        }
    }
    let any_tls = !secure.is_empty() || unix.iter().any(|(_, tls)| *tls);
    if any_tls && files.cert_file.is_none() {
        bail!("{urls_flag} has https:// URLs: --{prefix}cert-file and --{prefix}key-file are required");
    }
    if files.is_set() && !any_tls {
        bail!(
            "--{prefix}cert-file/--{prefix}key-file/--{prefix}trusted-ca-file/--{prefix}client-cert-auth \
             are set but {urls_flag} has no https:// URL; refusing to serve in plaintext"
        );
    }
    let config = if any_tls {
        Some(tls::server_config(files, prefix)?)
    } else {
        None
    };
    Ok((plain, secure, unix, config))
}

/// The peer port's TLS settings, and whether they are `--peer-auto-tls`'s: then, as etcd,
/// a self-signed certificate for the `https://` listen hosts (made once in
/// `DATA_DIR/fixtures/peer`) replaces every other peer TLS setting, so members encrypt but
/// neither verify nor demand each other's certificates. Given certificate files win.
fn peer_auto_tls(f: &Flags, data_dir: &std::path::Path) -> Result<(TlsFiles, bool)> {
    let files = f.peer_tls_files();
    if !f.peer_auto_tls {
        return Ok((files, false));
    }
    if files.cert_file.is_some() || files.key_file.is_some() {
        tracing::warn!("ignoring --peer-auto-tls since --peer-cert-file/--peer-key-file are given");
        return Ok((files, false));
    }
    let hosts = split_urls(&f.listen_peer_urls)
        .iter()
        .filter(|u| u.starts_with("https://"))
        .map(|u| host_port(u).map(|(hp, _)| host_of(&hp)))
        .collect::<Result<Vec<_>>>()?;
    if hosts.is_empty() {
        bail!("--peer-auto-tls is set but --listen-peer-urls has no https:// URL; refusing to serve in plaintext");
    }
    let ignored: Vec<&str> = [
        (files.trusted_ca_file.is_some(), "--peer-trusted-ca-file"),
        (files.client_cert_auth, "--peer-client-cert-auth"),
        (files.allowed_cn.is_some(), "--peer-cert-allowed-cn"),
        (
            files.allowed_hostname.is_some(),
            "--peer-cert-allowed-hostname",
        ),
        (files.crl_file.is_some(), "--peer-crl-file"),
    ]
    .into_iter()
    .filter_map(|(set, flag)| set.then_some(flag))
    .collect();
    if !ignored.is_empty() {
        tracing::warn!(
            ignored = %ignored.join(", "),
            "--peer-auto-tls replaces the other peer TLS settings, as in etcd: peers are not authenticated"
        );
    }
    let (cert, key) = tls::self_signed(
        &data_dir.join("fixtures").join("peer"),
        hosts,
        "--peer-auto-tls",
    )?;
    let auto = TlsFiles {
        cert_file: Some(cert),
        key_file: Some(key),
        cipher_suites: files.cipher_suites,
        ..TlsFiles::default()
    };
    Ok((auto, true))
}

/// TLS for connecting to `https://` peers: this member's certificate as its client
/// certificate, and the peer CA to verify the others with; with `auto` (`--peer-auto-tls`),
/// encryption that verifies nothing.
fn peer_client_tls(
    files: &TlsFiles,
    auto: bool,
    initial: &BTreeMap<String, Vec<String>>,
) -> Result<Option<consensus::PeerTls>> {
    if auto {
        return Ok(Some(consensus::PeerTls::Unverified(
            tls::unverified_client_config()?,
        )));
    }
    let https = initial
        .values()
        .flatten()
        .any(|u| u.starts_with("https://"));
    if !files.is_set() {
        if https {
            bail!("--initial-cluster has https:// peer URLs: --peer-cert-file, --peer-key-file and --peer-trusted-ca-file (or --peer-auto-tls) are required");
        }
        return Ok(None);
    }
    let (Some(cert), Some(key), Some(ca)) =
        (&files.cert_file, &files.key_file, &files.trusted_ca_file)
    else {
        bail!("peer TLS needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file (the CA other members' certificates are checked against)");
    };
    let read = |path: &std::path::Path, flag: &str| {
        std::fs::read(path).with_context(|| format!("{flag} {}: cannot read", path.display()))
    };
    let identity = tonic::transport::Identity::from_pem(
        read(cert, "--peer-cert-file")?,
        read(key, "--peer-key-file")?,
    );
    Ok(Some(consensus::PeerTls::Verified(
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(
                ca,
                "--peer-trusted-ca-file",
            )?))
            .identity(identity),
    )))
}

pub(crate) fn parse_initial_cluster(spec: &str) -> Result<BTreeMap<String, Vec<String>>> {
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
        let join_existing = match f.initial_cluster_state.as_str() {
            "new" => false,
            "existing" => true,
            other => bail!("--initial-cluster-state {other:?}: use new or existing"),
        };
        // etcd: an empty --initial-cluster is none given.
        let given = f.initial_cluster.as_deref().filter(|s| !s.is_empty());
        let by_dns = !f.discovery_srv.is_empty();
        if by_dns && given.is_some() {
            bail!(
                "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\""
            );
        }
        let initial = match given {
            _ if by_dns => {
                let service = match f.discovery_srv_name.as_str() {
                    "" => "etcd-server".to_string(),
                    suffix => format!("etcd-server-{suffix}"),
                };
                let spec = crate::srv::cluster(&service, &f.name, &f.discovery_srv, &peer_urls)
                    .map_err(anyhow::Error::msg)?;
                tracing::info!(domain = %f.discovery_srv, cluster = %spec, "initial cluster from DNS SRV records");
                let map = if spec.is_empty() {
                    BTreeMap::new()
                } else {
                    parse_initial_cluster(&spec)?
                };
                if !map.contains_key(&f.name) {
                    bail!("cannot find local etcd member {:?} in SRV records", f.name);
                }
                map
            }
            Some(spec) => parse_initial_cluster(spec)?,
            None => BTreeMap::from([(f.name.clone(), peer_urls.clone())]),
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
        node.force_new_cluster = f.force_new_cluster;
        node.pre_vote = f.pre_vote;
        // etcd's default is an empty --wal-dir: the log stays in the data dir.
        node.log_dir = f.wal_dir.clone().filter(|d| !d.as_os_str().is_empty());
        if f.election_timeout < 5 * f.heartbeat_interval {
            bail!(
                "--election-timeout ({}ms) should be at least 5 times --heartbeat-interval ({}ms)",
                f.election_timeout,
                f.heartbeat_interval
            );
        }
        if f.experimental_watch_progress_notify_interval.is_zero() {
            bail!("--experimental-watch-progress-notify-interval must be more than 0");
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
            watch_progress_interval: f.experimental_watch_progress_notify_interval,
            quota_backend_bytes: quota_backend_bytes(f.quota_backend_bytes),
            auth_token_ttl: std::time::Duration::from_secs(f.auth_token_ttl),
            bcrypt_cost: check_auth_flags(&f)?,
            jwt: jwt_tokens(&f.auth_token)?,
        };
        let unsupported = f.unsupported_tls_flags();
        if !unsupported.is_empty() {
            bail!(
                "{} not supported yet: give certificates with --cert-file/--key-file/--trusted-ca-file \
                 (and --peer-* for peers); see docs/security.md",
                unsupported.join(", ")
            );
        }
        let mut client_files = f.client_tls_files();
        // etcd: given certificate files win over --auto-tls.
        if f.auto_tls && client_files.cert_file.is_none() && client_files.key_file.is_none() {
            let hosts = split_urls(&f.listen_client_urls)
                .iter()
                .filter(|u| u.starts_with("https://"))
                .map(|u| host_port(u).map(|(hp, _)| host_of(&hp)))
                .collect::<Result<Vec<_>>>()?;
            if hosts.is_empty() {
                bail!("--auto-tls is set but --listen-client-urls has no https:// URL; refusing to serve in plaintext");
            }
            let (cert, key) = tls::self_signed(
                &data_dir.join("fixtures").join("client"),
                hosts,
                "--auto-tls",
            )?;
            client_files.cert_file = Some(cert);
            client_files.key_file = Some(key);
        }
        let (client_addrs, client_tls_addrs, client_unix_sockets, client_tls) = listeners(
            &f.listen_client_urls,
            &client_files,
            "",
            "--listen-client-urls",
        )?;
        let (peer_files, peer_auto_tls) = peer_auto_tls(&f, &data_dir)?;
        let (peer_addrs, peer_tls_addrs, _, peer_tls) = listeners(
            &f.listen_peer_urls,
            &peer_files,
            "peer-",
            "--listen-peer-urls",
        )?;
        node.peer_tls = peer_client_tls(&peer_files, peer_auto_tls, &initial)?;
        Ok(Config {
            data_dir,
            engine: f.engine,
            engine_cache_bytes: usize::try_from(f.engine_cache_bytes).unwrap_or(usize::MAX),
            engine_batching: engine_batching(f.backend_batch_interval, f.backend_batch_limit),
            client_addrs,
            peer_addrs,
            client_tls_addrs,
            client_unix_sockets,
            peer_tls_addrs,
            client_tls,
            client_cert_auth: f.client_cert_auth,
            peer_tls,
            node,
            api,
            auto_compaction: parse_auto_compaction(
                &f.auto_compaction_mode,
                &f.auto_compaction_retention,
            )?,
            max_client_connections: f.max_client_connections,
            metrics_addrs: split_urls(&f.listen_metrics_urls)
                .iter()
                .map(|u| match host_port(u)? {
                    (_, true) => bail!(
                        "--listen-metrics-urls {u:?}: https:// is not supported for the metrics \
                         listener yet (use http://, or the client port's /metrics)"
                    ),
                    (addr, false) => Ok(addr),
                })
                .collect::<Result<_>>()?,
            max_concurrent_streams: f.max_concurrent_streams,
            keepalive: crate::serve::Keepalive {
                interval: f.grpc_keepalive_interval,
                timeout: f.grpc_keepalive_timeout,
                // etcd sets no policy for 0, leaving grpc-go's default of 5 minutes.
                min_time: if f.grpc_keepalive_min_time.is_zero() {
                    Duration::from_secs(300)
                } else {
                    f.grpc_keepalive_min_time
                },
            },
            extensive_metrics: match f.metrics.as_str() {
                "basic" => false,
                "extensive" => true,
                other => bail!("--metrics {other:?}: use basic or extensive"),
            },
            access: Arc::new(crate::access::AccessControl::new(
                &f.cors,
                &f.host_whitelist,
            )?),
            hub: watch::HubConfig {
                max_queued_bytes: f.max_watcher_queue_bytes,
                ..watch::HubConfig::default()
            },
            initial_corrupt_check: f.experimental_initial_corrupt_check,
            corrupt_check_time: f.experimental_corrupt_check_time,
            grpc_gateway: f.enable_grpc_gateway,
        })
    }
}

/// Checks `--auth-token` and `--bcrypt-cost`, answering the cost.
fn check_auth_flags(f: &Flags) -> Result<u32> {
    let kind = f.auth_token.split(',').next().unwrap_or_default();
    match kind {
        "simple" | "jwt" => {}
        other => bail!("--auth-token: unknown token type {other:?} (etcd's are simple and jwt)"),
    }
    if f.auth_token_ttl == 0 {
        bail!("--auth-token-ttl must be more than 0");
    }
    if !(4..=31).contains(&f.bcrypt_cost) {
        bail!(
            "--bcrypt-cost must be between 4 and 31 (bcrypt's limits), not {}",
            f.bcrypt_cost
        );
    }
    Ok(f.bcrypt_cost)
}

/// `--auth-token jwt,OPTIONS`: the signing keys, read and checked now; `None` for simple tokens.
fn jwt_tokens(flag: &str) -> Result<Option<Arc<kvapi::JwtTokens>>> {
    match flag.split_once(',') {
        Some(("jwt", options)) => Ok(Some(Arc::new(kvapi::JwtTokens::from_options(options)?))),
        None if flag == "jwt" => bail!(
            "--auth-token jwt needs its options: jwt,pub-key=PATH,priv-key=PATH,sign-method=ALG"
        ),
        _ => Ok(None),
    }
}

/// etcd's default backend quota, 2 GiB.
const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;
/// Past this quota etcd warns that the backend may perform poorly (8 GiB).
const MAX_QUOTA_BYTES: u64 = 8 << 30;

/// `--backend-batch-interval` and `--backend-batch-limit` as etcd reads them: zero means the
/// default of each.
fn engine_batching(interval: Duration, limit: usize) -> engine_redb::Batching {
    let default = engine_redb::Batching::default();
    engine_redb::Batching {
        max_age: if interval.is_zero() {
            default.max_age
        } else {
            interval
        },
        max_ops: if limit == 0 { default.max_ops } else { limit },
        max_bytes: default.max_bytes,
    }
}

/// `--quota-backend-bytes` as etcd reads it: 0 means the default; above 8 GiB it warns.
fn quota_backend_bytes(flag: u64) -> u64 {
    if flag == 0 {
        return DEFAULT_QUOTA_BYTES;
    }
    if flag > MAX_QUOTA_BYTES {
        tracing::warn!(
            quota_size_bytes = flag,
            maximum_value_bytes = MAX_QUOTA_BYTES,
            "quota exceeds the maximum value"
        );
    }
    flag
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The config `metastore <args>` makes.
    fn config_of(args: &[&str]) -> Result<Config> {
        let mut all = vec!["metastore"];
        all.extend_from_slice(args);
        Config::try_from(Flags::parse_from(all))
    }

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
    fn backend_batch_flags_set_the_engines_commits_and_zero_is_the_default() {
        let batching = |args: &[&str]| config_of(args).unwrap().engine_batching;
        assert_eq!(batching(&[]), engine_redb::Batching::default());
        assert_eq!(
            batching(&[
                "--backend-batch-interval",
                "0",
                "--backend-batch-limit",
                "0"
            ]),
            engine_redb::Batching::default()
        );
        let set = batching(&["--backend-batch-interval=1s", "--backend-batch-limit=500"]);
        assert_eq!(set.max_age, Duration::from_secs(1));
        assert_eq!(set.max_ops, 500);
        assert_eq!(set.max_bytes, engine_redb::Batching::default().max_bytes);
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        let bad = |args: &[&str]| config_of(args).unwrap_err().to_string();
        assert!(bad(&["--listen-client-urls", "https://x:1"]).contains("--cert-file"));
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

    #[test]
    fn tls_without_https_or_https_without_tls_is_refused() {
        let bad = |args: &[&str]| config_of(args).unwrap_err().to_string();
        assert!(bad(&["--cert-file", "c.pem", "--key-file", "k.pem"]).contains("plaintext"));
        assert!(bad(&["--peer-client-cert-auth"]).contains("plaintext"));
        assert!(bad(&["--auto-tls"]).contains("no https:// URL"));
        let both = bad(&["--tls-max-version", "TLS1.2", "--tls-min-version", "TLS1.2"]);
        assert!(
            both.contains("--tls-min-version, --tls-max-version not supported"),
            "{both}"
        );
        // etcd's configuration files often spell out the defaults: false is not refused.
        Config::try_from(Flags::parse_from([
            "metastore",
            "--auto-tls=false",
            "--client-cert-auth=false",
        ]))
        .unwrap();
        let https_peers = [
            "--initial-advertise-peer-urls",
            "https://127.0.0.1:2380",
            "--initial-cluster",
            "default=https://127.0.0.1:2380",
        ];
        assert!(bad(&https_peers).contains("--peer-cert-file"));
        assert!(bad(&["--listen-peer-urls", "https://127.0.0.1:2380"]).contains("--peer-cert-file"));
        let missing = bad(&[
            "--listen-client-urls",
            "https://127.0.0.1:2379",
            "--cert-file",
            "/nonexistent/c.pem",
            "--key-file",
            "/nonexistent/k.pem",
        ]);
        assert!(
            missing.contains("--cert-file /nonexistent/c.pem"),
            "{missing}"
        );
    }

    #[test]
    fn discovery_srv_excludes_initial_cluster_as_etcd() {
        let f = Flags::try_parse_from([
            "metastore",
            "--name",
            "a",
            "--discovery-srv",
            "example.test",
            "--initial-cluster",
            "a=http://127.0.0.1:2380",
        ])
        .unwrap();
        let e = Config::try_from(f).unwrap_err().to_string();
        assert!(
            e.contains("multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\""),
            "{e}"
        );
    }
}
