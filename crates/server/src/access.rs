//! `--cors` and `--host-whitelist` on the client port's HTTP endpoints, as etcd 3.4's access
//! controller applies them: a request over plaintext whose `Host` is not whitelisted gets
//! `421 Misdirected Request` with etcd's explanation (TLS requests are always allowed: the
//! whitelist guards against DNS rebinding, which TLS already prevents); every answer carries
//! etcd's CORS headers for an allowed origin (for all origins with `*`, etcd's default); an
//! `OPTIONS` request is answered `200` with no body. gRPC is not HTTP/1 browser traffic and is
//! not subject to either, as in etcd (whose gRPC server sits apart from this handler).

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{bail, Result};
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

/// Which origins and hosts the HTTP endpoints accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessControl {
    /// Allowed CORS origins; `*` allows every one.
    cors: BTreeSet<String>,
    /// Allowed `Host` names (without port); `*` allows every one.
    hosts: BTreeSet<String>,
}

impl Default for AccessControl {
    /// etcd's defaults: every origin, every host.
    fn default() -> Self {
        Self {
            cors: BTreeSet::from(["*".to_string()]),
            hosts: BTreeSet::from(["*".to_string()]),
        }
    }
}

fn split(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

impl AccessControl {
    /// Reads `--cors` (comma-separated `*` or origin URLs with a port, as etcd demands) and
    /// `--host-whitelist` (comma-separated host names or `*`).
    ///
    /// # Errors
    /// A CORS origin that is not a URL with scheme, host and port, in etcd's words.
    pub fn new(cors: &str, host_whitelist: &str) -> Result<Self> {
        let mut origins = BTreeSet::new();
        for origin in split(cors) {
            if origin != "*" {
                let rest = ["http://", "https://", "unix://", "unixs://"]
                    .iter()
                    .find_map(|scheme| origin.strip_prefix(scheme));
                let Some(rest) = rest else {
                    bail!("invalid value {origin:?} for flag -cors: URL scheme must be http, https, unix, or unixs: {origin}");
                };
                let has_port = rest
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && !p.is_empty() && !p.contains('/'));
                if !has_port {
                    bail!("invalid value {origin:?} for flag -cors: URL address does not have the form \"host:port\": {origin}");
                }
            }
            origins.insert(origin.to_string());
        }
        Ok(Self {
            cors: origins,
            hosts: split(host_whitelist).map(str::to_string).collect(),
        })
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.contains("*") || self.hosts.contains(host)
    }

    /// The origin to name in `Access-Control-Allow-Origin`, if any.
    fn allowed_origin(&self, origin: Option<&str>) -> Option<String> {
        if self.cors.contains("*") {
            return Some("*".to_string());
        }
        origin
            .filter(|o| self.cors.contains(*o))
            .map(str::to_string)
    }
}

/// A `Host` header's host, without port or IPv6 brackets (Go's `net.SplitHostPort`, falling
/// back to the whole value).
fn host_only(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(host, |(h, _)| h);
    }
    match host.split_once(':') {
        Some((h, port)) if !port.contains(':') => h,
        _ => host,
    }
}

/// etcd's answer to a request for a host not on the whitelist.
fn misdirected(host: &str) -> Response {
    let body = format!(
        "\netcd received your request, but the Host header was unrecognized.\n\n\
         To fix this, choose one of the following options:\n\
         - Enable TLS, then any HTTPS request will be allowed.\n\
         - Add the hostname you want to use to the whitelist in settings.\n  \
         - e.g. etcd --host-whitelist {host:?}\n\n\
         This requirement has been added to help prevent \"DNS Rebinding\" attacks (CVE-2018-5702).\n\n"
    );
    (
        StatusCode::MISDIRECTED_REQUEST,
        [
            ("content-type", "text/plain; charset=utf-8"),
            ("x-content-type-options", "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn check(access: Arc<AccessControl>, secure: bool, req: Request, next: Next) -> Response {
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let host = host_only(&host);
    if !secure && !access.host_allowed(host) {
        tracing::warn!(
            host,
            "refused an HTTP request: its Host is not in --host-whitelist"
        );
        return misdirected(host);
    }
    let origin = req
        .headers()
        .get("origin")
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let allow = access.allowed_origin(origin.as_deref());
    let mut response = if req.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(req).await
    };
    if let Some(origin) = allow.and_then(|o| HeaderValue::from_str(&o).ok()) {
        let headers = response.headers_mut();
        headers.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
        );
        headers.insert("access-control-allow-origin", origin);
        headers.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("accept, content-type, authorization"),
        );
    }
    response
}

/// The buckets of `grpc_server_handling_seconds`, Prometheus's defaults as etcd uses them.
pub const HANDLING_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `router` behind the access controller; `secure`: its listener is TLS.
pub fn guard(router: Router, access: &Arc<AccessControl>, secure: bool) -> Router {
    let access = Arc::clone(access);
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| check(Arc::clone(&access), secure, req, next),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_as_etcd_reads_them() {
        assert_eq!(
            AccessControl::new("*", "*").unwrap(),
            AccessControl::default()
        );
        let a = AccessControl::new("http://a.example:8080", "good.host,127.0.0.1").unwrap();
        assert!(a.host_allowed("good.host") && a.host_allowed("127.0.0.1"));
        assert!(!a.host_allowed("evil.host"));
        assert_eq!(
            a.allowed_origin(Some("http://a.example:8080")).as_deref(),
            Some("http://a.example:8080")
        );
        assert_eq!(a.allowed_origin(Some("http://b.example")), None);
        let e = AccessControl::new("http://a.example", "*").unwrap_err();
        assert!(
            e.to_string()
                .contains(r#"does not have the form "host:port""#),
            "{e}"
        );
        assert!(AccessControl::new("a.example:1", "*").is_err());
    }

    #[test]
    fn hosts_lose_their_ports() {
        assert_eq!(host_only("good.host:2379"), "good.host");
        assert_eq!(host_only("[::1]:99"), "::1");
        assert_eq!(host_only("evil.host"), "evil.host");
        assert_eq!(host_only("::1"), "::1");
    }
}
