//! The command line: etcd's flags and `ETCD_*` variables where the meaning is the same.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Parser, ValueEnum};

/// `--engine-cache-bytes`' default: redb's page cache and unsynced writes.
pub const DEFAULT_ENGINE_CACHE_BYTES: u64 = 256 << 20;

/// Which storage engine keeps the key space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// Persistent, on redb (the default).
    Redb,
    /// In memory; rebuilt from the Raft snapshot and log on restart.
    Mem,
}

/// `metastore`: an etcd v3 compatible key-value store.
#[derive(Clone, Debug, Parser)]
#[command(name = "metastore", version, about, long_about = None)]
pub struct Flags {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory [default: NAME.metastore].
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Path to a dedicated directory for the Raft log (etcd's WAL) [default: in DATA_DIR/member].
    #[arg(long, env = "ETCD_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,

    /// Comma-separated URLs to listen on for client traffic (gRPC and HTTP on one port).
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: String,

    /// Comma-separated client URLs advertised to the cluster.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub advertise_client_urls: String,

    /// Comma-separated URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub listen_peer_urls: String,

    /// Comma-separated peer URLs advertised to the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub initial_advertise_peer_urls: String,

    /// Initial cluster configuration for bootstrapping: name=peer-url,... [default: NAME=INITIAL-ADVERTISE-PEER-URLS].
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// DNS domain whose SRV records give the initial cluster (`_etcd-server-ssl._tcp.DOMAIN`,
    /// `_etcd-server._tcp.DOMAIN`), instead of --initial-cluster.
    #[arg(long, env = "ETCD_DISCOVERY_SRV", default_value = "")]
    pub discovery_srv: String,

    /// Suffix of the SRV service names queried with --discovery-srv
    /// (`_etcd-server-NAME._tcp.DOMAIN`).
    #[arg(long, env = "ETCD_DISCOVERY_SRV_NAME", default_value = "")]
    pub discovery_srv_name: String,

    /// Initial cluster state: `new` to bootstrap, `existing` to join.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,

    /// Initial cluster token; members of one cluster share it, and it feeds the cluster id.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,

    /// Largest client request accepted, in bytes.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: usize,

    /// Largest answer sent, in bytes; a larger one is refused with grpc-go's "trying to send
    /// message larger than max" (etcd's limit is grpc-go's send limit, 2 GiB - 1).
    #[arg(long, env = "METASTORE_MAX_RESPONSE_BYTES", default_value_t = kvapi::MAX_RESPONSE_BYTES)]
    pub max_response_bytes: usize,

    /// Most client connections open at once (gRPC and HTTP); a connection over it is closed
    /// as soon as it is accepted, and counted in `metastore_client_connections_refused_total`.
    #[arg(
        long,
        env = "METASTORE_MAX_CLIENT_CONNECTIONS",
        default_value_t = 10_000
    )]
    pub max_client_connections: usize,

    /// Most concurrent HTTP/2 streams (calls, watch and keep-alive streams) one client
    /// connection may have open; announced in SETTINGS, so clients wait for a free one.
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = 1_000)]
    pub max_concurrent_streams: u32,

    /// How long a client connection may be idle before the server pings it; 0 turns server
    /// pings off (etcd's `--grpc-keepalive-interval`).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_INTERVAL", value_parser = parse_duration, default_value = "2h")]
    pub grpc_keepalive_interval: Duration,

    /// The least time a client must wait between pings: one pinging more often is sent
    /// GOAWAY (ENHANCE_YOUR_CALM, "too_many_pings") and disconnected (etcd's
    /// `--grpc-keepalive-min-time`).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_MIN_TIME", value_parser = parse_duration, default_value = "5s")]
    pub grpc_keepalive_min_time: Duration,

    /// How long the server waits for a ping's answer before closing the connection (etcd's
    /// `--grpc-keepalive-timeout`).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_TIMEOUT", value_parser = parse_duration, default_value = "20s")]
    pub grpc_keepalive_timeout: Duration,

    /// Comma-separated origins allowed for CORS on the HTTP endpoints (`*`: every origin).
    #[arg(long, env = "ETCD_CORS", default_value = "*")]
    pub cors: String,

    /// Comma-separated hosts a plaintext HTTP request may name in `Host` (`*`: every host).
    #[arg(long, env = "ETCD_HOST_WHITELIST", default_value = "*")]
    pub host_whitelist: String,

    /// Most watches on one watch stream; a create over it is answered cancelled, with a
    /// reason naming this flag.
    #[arg(
        long,
        env = "METASTORE_MAX_WATCHERS_PER_STREAM",
        default_value_t = 10_000
    )]
    pub max_watchers_per_stream: usize,

    /// Bytes of events (keys and values) that may wait for one watcher's reader; past that its
    /// events wait in history and it catches up from there when its reader makes room.
    #[arg(long, env = "METASTORE_MAX_WATCHER_QUEUE_BYTES", default_value_t = 16 << 20)]
    pub max_watcher_queue_bytes: usize,

    /// Most operations in one txn (per compare list and per branch).
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,

    /// Backend size quota in bytes; 0 means the default of 2 GiB.
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: u64,

    /// Committed entries between Raft snapshots.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,

    /// Automatic compaction: `periodic` (keep a time window) or `revision` (keep N revisions).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,

    /// Automatic compaction retention: a duration (`1h`, or hours as a number) for periodic,
    /// a revision count for revision; 0 turns it off.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,

    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,

    /// Refuse membership changes that would leave fewer started voters than a quorum (as
    /// etcd; a lone member may still take a second voter). `--strict-reconfig-check=false`
    /// turns the check off.
    #[arg(long, env = "ETCD_STRICT_RECONFIG_CHECK", default_value_t = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub strict_reconfig_check: bool,

    /// Campaign only after a majority of the voters answer that they would vote (they heard
    /// from no leader for an election timeout), so a member cut off from the others does not
    /// depose the leader when it returns (etcd's `--pre-vote`).
    #[arg(long, env = "ETCD_PRE_VOTE", default_value_t = false, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub pre_vote: bool,

    /// Restart this (initialised) member as the only member of its cluster, keeping its data:
    /// every other member is removed through its log (etcd's `--force-new-cluster`).
    #[arg(long, env = "ETCD_FORCE_NEW_CLUSTER", default_value_t = false, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub force_new_cluster: bool,

    /// How often watches that asked for progress notifications get one (etcd's
    /// `--experimental-watch-progress-notify-interval`).
    #[arg(long, env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", value_parser = parse_duration, default_value = "10m")]
    pub experimental_watch_progress_notify_interval: Duration,

    /// Before serving, compare this member's key-space hash with its peers' and refuse to start
    /// when one differs (etcd's start-up corruption check).
    #[arg(long, env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", default_value_t = false, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub experimental_initial_corrupt_check: bool,

    /// How often the leader compares every member's key-space hash and raises CORRUPT for one
    /// that differs (etcd's periodic corruption check); 0 turns it off.
    #[arg(long, env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME", value_parser = parse_duration, default_value = "0s")]
    pub experimental_corrupt_check_time: Duration,

    /// Serve etcd's HTTP/JSON gateway (`/v3/…`, `/v3beta/…`) on the client URLs.
    #[arg(long, env = "ETCD_ENABLE_GRPC_GATEWAY", default_value_t = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_grpc_gateway: bool,

    /// Log at debug level (as `--log-level debug`).
    #[arg(long, env = "ETCD_DEBUG", default_value_t = false, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub debug: bool,

    /// `basic`, or `extensive` to add the `grpc_server_handling_seconds` histogram of unary
    /// calls' latency (as etcd).
    #[arg(long, env = "ETCD_METRICS", default_value = "basic")]
    pub metrics: String,

    /// Comma-separated URLs to serve `/metrics` and `/health` on, besides the client URLs.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,

    /// Log level: debug, info, warn, error (dpanic, panic, fatal log as error); anything else
    /// is refused at start. `RUST_LOG` may add levels for single targets, never replace this.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// `capnslog` (text lines, etcd 3.4's default) or `zap` (JSON lines: level, ts, caller,
    /// msg and the fields).
    #[arg(long, env = "ETCD_LOGGER", default_value = "capnslog")]
    pub logger: String,

    /// Where logs go, comma-separated: `default` or `stderr`, `stdout`; with `--logger zap`
    /// also file paths (appended to).
    #[arg(long, env = "ETCD_LOG_OUTPUTS", default_value = "default")]
    pub log_outputs: String,

    /// Storage engine.
    #[arg(long, env = "METASTORE_ENGINE", value_enum, default_value_t = Engine::Redb)]
    pub engine: Engine,

    /// Bytes of memory the redb engine may keep for its page cache and the writes it has not
    /// synced yet; the member's RSS grows with the store up to about this bound. The batches
    /// buffered before their commit (100 ms of writes, 4 MiB; 20 MiB at most while a commit
    /// is slower than the writes) come on top. `--engine mem` holds everything in memory and
    /// ignores it.
    #[arg(long, env = "METASTORE_ENGINE_CACHE_BYTES", default_value_t = DEFAULT_ENGINE_CACHE_BYTES)]
    pub engine_cache_bytes: u64,

    /// Longest the redb engine buffers applied writes before committing them to its file
    /// (etcd's bbolt batch interval); empty or `0` means 100 ms. The Raft log holds them
    /// durably meanwhile, so a longer interval means fewer page copies and more to replay.
    #[arg(long, env = "ETCD_BACKEND_BATCH_INTERVAL", value_parser = parse_duration_or_zero, default_value = "")]
    pub backend_batch_interval: Duration,

    /// Most changes the redb engine buffers before committing them (etcd's bbolt batch
    /// limit); 0 means 10,000.
    #[arg(long, env = "ETCD_BACKEND_BATCH_LIMIT", default_value_t = 0)]
    pub backend_batch_limit: usize,

    /// Longest a client request may wait before "etcdserver: request timed out" (e.g. `7s`).
    #[arg(long, env = "METASTORE_REQUEST_TIMEOUT", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,

    /// Per-layer wait budgets, e.g. `commit=2s,read-index=500ms` (layers: api, leader-wait,
    /// propose, commit, read-index, apply, watch-send, peer-rpc).
    #[arg(long, env = "METASTORE_BUDGETS", default_value = "")]
    pub budgets: String,

    /// How often the leader records every lease's remaining TTL, so that a restart or a new
    /// leader does not give long leases their whole TTL again (e.g. `5m`).
    #[arg(long, env = "METASTORE_LEASE_CHECKPOINT_INTERVAL", value_parser = parse_duration, default_value = "5m")]
    pub lease_checkpoint_interval: Duration,

    /// Expired leases the leader revokes per second at most (a burst is drained at this rate).
    #[arg(long, env = "METASTORE_LEASE_REVOKE_RATE", default_value_t = 5_000)]
    pub lease_revoke_rate: u32,

    /// (Testing) the local IP address this member's connections to its peers come from, so
    /// that a fault-injecting proxy can tell members apart (`cargo xtask chaos`).
    #[arg(long, env = "METASTORE_EXPERIMENTAL_PEER_SOURCE_ADDR", hide = true)]
    pub experimental_peer_source_addr: Option<std::net::IpAddr>,

    // TLS, as etcd 3.4 names it (crate::tls).
    /// Path to the client server TLS cert file.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,

    /// Path to the client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Path to the client server TLS trusted CA cert file (client certificates must chain to it).
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Enable client cert authentication.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub client_cert_auth: bool,

    /// Path to the peer server TLS cert file.
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,

    /// Path to the peer server TLS key file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,

    /// Path to the peer server TLS trusted CA file.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Enable peer client cert authentication.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub peer_client_cert_auth: bool,

    /// Client TLS with a self-signed certificate made in DATA_DIR/fixtures/client (when no
    /// --cert-file/--key-file are given); clients must skip verification.
    #[arg(long, env = "ETCD_AUTO_TLS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub auto_tls: bool,

    /// Peer TLS with a self-signed certificate made in DATA_DIR/fixtures/peer (when no
    /// --peer-cert-file/--peer-key-file are given); peers encrypt but do not verify each other.
    #[arg(long, env = "ETCD_PEER_AUTO_TLS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub peer_auto_tls: bool,

    /// Path to the client certificate revocation list file (PEM): listed client certificates
    /// are refused.
    #[arg(long, env = "ETCD_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<PathBuf>,

    /// Path to the peer certificate revocation list file (PEM): listed member certificates
    /// are refused.
    #[arg(long, env = "ETCD_PEER_CRL_FILE")]
    pub peer_crl_file: Option<PathBuf>,

    /// The only host name a client certificate must be valid for (by its SAN).
    #[arg(long, env = "ETCD_CLIENT_CERT_ALLOWED_HOSTNAME")]
    pub client_cert_allowed_hostname: Option<String>,

    /// The only host name a connecting member's certificate must be valid for (by its SAN).
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_HOSTNAME")]
    pub peer_cert_allowed_hostname: Option<String>,

    /// The only common name a connecting member's certificate may carry.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,

    /// Comma-separated TLS 1.2 cipher suites (IANA names) for the client and peer servers;
    /// TLS 1.3's are always on. Default: rustls's.
    #[arg(long, env = "ETCD_CIPHER_SUITES")]
    pub cipher_suites: Option<String>,

    /// Not supported yet (refused at start): lowest TLS version (rustls: TLS 1.2).
    #[arg(long, env = "ETCD_TLS_MIN_VERSION")]
    pub tls_min_version: Option<String>,

    /// etcd's YAML configuration file; when given, every other flag and `ETCD_*` variable is
    /// ignored, as in etcd 3.4 (read before the other flags, see `config_file`).
    #[arg(long, env = "ETCD_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,

    /// Not supported yet (refused at start): highest TLS version (rustls: TLS 1.3).
    #[arg(long, env = "ETCD_TLS_MAX_VERSION")]
    pub tls_max_version: Option<String>,

    // Auth, as etcd 3.4 names it (docs/security.md).
    /// Auth token type: `simple` (JWT is not supported yet and refused).
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,

    /// Seconds a simple token lives unused (each use renews it).
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,

    /// bcrypt cost of the password hashes this member makes (4 to 31).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = 10)]
    pub bcrypt_cost: u32,
}

impl Flags {
    /// Parses `args` (the program name first, as on a command line) without reading any
    /// `ETCD_*` or `METASTORE_*` variable: an embedding program's configuration is its own,
    /// whatever the process's environment holds.
    ///
    /// # Errors
    /// clap's error for an unknown flag or a bad value.
    pub fn try_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let command = Self::command().mut_args(|a| a.env(None));
        let matches = command.try_get_matches_from(args)?;
        Self::from_arg_matches(&matches)
    }

    /// The client port's TLS flags.
    pub fn client_tls_files(&self) -> crate::tls::TlsFiles {
        crate::tls::TlsFiles {
            cert_file: given(&self.cert_file),
            key_file: given(&self.key_file),
            trusted_ca_file: given(&self.trusted_ca_file),
            client_cert_auth: self.client_cert_auth,
            allowed_cn: None,
            allowed_hostname: given(&self.client_cert_allowed_hostname),
            cipher_suites: given(&self.cipher_suites),
            crl_file: given(&self.client_crl_file),
        }
    }

    /// The TLS flags given that this server does not implement yet: refused rather than
    /// ignored, since ignoring them would serve with weaker security than asked for.
    pub fn unsupported_tls_flags(&self) -> Vec<&'static str> {
        [
            (self.tls_min_version.is_some(), "--tls-min-version"),
            (self.tls_max_version.is_some(), "--tls-max-version"),
        ]
        .into_iter()
        .filter_map(|(set, flag)| set.then_some(flag))
        .collect()
    }

    /// The peer port's TLS flags.
    pub fn peer_tls_files(&self) -> crate::tls::TlsFiles {
        crate::tls::TlsFiles {
            cert_file: given(&self.peer_cert_file),
            key_file: given(&self.peer_key_file),
            trusted_ca_file: given(&self.peer_trusted_ca_file),
            client_cert_auth: self.peer_client_cert_auth,
            allowed_cn: given(&self.peer_cert_allowed_cn),
            allowed_hostname: given(&self.peer_cert_allowed_hostname),
            cipher_suites: given(&self.cipher_suites),
            crl_file: given(&self.peer_crl_file),
        }
    }
}

/// A flag's value unless empty: etcd's defaults are empty strings, which ask for nothing.
fn given<T: Clone + AsRef<std::ffi::OsStr>>(value: &Option<T>) -> Option<T> {
    value.clone().filter(|v| !v.as_ref().is_empty())
}

/// As [`parse_duration`], with an empty value (etcd's default for some flags) read as zero.
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim().is_empty() {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

/// Parses a duration as etcd's flags read one (Go's `1m30s`, `1.5h`, `300ms`, `10us`), or a
/// bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let invalid = |why: &str| format!("invalid duration {s:?}: {why}");
    let unsigned = s.strip_prefix('+').unwrap_or(s);
    if unsigned.starts_with('-') {
        return Err(invalid("a duration here cannot be negative"));
    }
    if unsigned.is_empty() {
        return Err(invalid("empty"));
    }
    // A bare number, which Go refuses (apart from 0), has always meant seconds here.
    if let Ok(secs) = unsigned.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| invalid(&e.to_string()));
    }
    let mut total = Duration::ZERO;
    let mut rest = unsigned;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let n: f64 = number
            .parse()
            .map_err(|_| invalid("expected a number before each unit"))?;
        let unit_secs = match unit {
            "ns" => 1e-9,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(invalid("missing unit (use ns, us, ms, s, m or h)")),
            _ => {
                return Err(invalid(&format!(
                    "unknown unit {unit:?} (use ns, us, ms, s, m or h)"
                )))
            }
        };
        let part =
            Duration::try_from_secs_f64(n * unit_secs).map_err(|e| invalid(&e.to_string()))?;
        total = total.checked_add(part).ok_or_else(|| invalid("too long"))?;
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7s"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn durations_read_as_go_reads_them() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("2h45m0.5s"),
            Ok(Duration::from_millis(9_900_500))
        );
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250\u{b5}s"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("10ns"), Ok(Duration::from_nanos(10)));
        assert_eq!(parse_duration("+3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "-1s", "1m30", "s", "1.2.3s", "1d", "1m 30s"] {
            let refused = parse_duration(bad).unwrap_err();
            assert!(refused.contains(&format!("{bad:?}")), "{bad}: {refused}");
        }
    }

    #[test]
    fn defaults_match_etcd() {
        let f = Flags::parse_from(["metastore"]);
        assert_eq!(f.name, "default");
        assert_eq!(f.max_request_bytes, 1_572_864);
        assert_eq!(f.max_txn_ops, 128);
        assert_eq!(f.max_response_bytes, 2_147_483_647);
        assert_eq!(f.max_client_connections, 10_000);
        assert_eq!(f.max_watchers_per_stream, 10_000);
        assert_eq!(f.max_watcher_queue_bytes, 16 << 20);
        assert_eq!(f.max_concurrent_streams, 1_000);
        assert_eq!((f.heartbeat_interval, f.election_timeout), (100, 1000));
        assert_eq!(f.engine, Engine::Redb);
        assert_eq!(f.engine_cache_bytes, DEFAULT_ENGINE_CACHE_BYTES);
        assert_eq!(f.listen_client_urls, "http://127.0.0.1:2379");
        assert!(f.strict_reconfig_check);
        assert!(!f.debug);
        assert_eq!(
            f.experimental_watch_progress_notify_interval,
            Duration::from_secs(600)
        );
    }

    #[test]
    fn booleans_parse_as_go_flags_do() {
        let strict = |args: &[&str]| {
            Flags::try_parse_from(std::iter::once("metastore").chain(args.iter().copied()))
                .map(|f| f.strict_reconfig_check)
        };
        assert_eq!(strict(&["--strict-reconfig-check=false"]).ok(), Some(false));
        assert_eq!(strict(&["--strict-reconfig-check"]).ok(), Some(true));
        assert_eq!(strict(&["--strict-reconfig-check=true"]).ok(), Some(true));
        assert!(strict(&["--strict-reconfig-check=maybe"]).is_err());
    }
}
