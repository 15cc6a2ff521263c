//! Plain HTTP on the client port, as etcd answers it: `/health`, `/version`, `/metrics`, and
//! `/livez` (etcd 3.5's liveness probe: the process serves, whatever the quorum), `/readyz`
//! (etcd 3.5's readiness probe: a quorum answers), and etcd's 404 for any other path.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use consensus::Node;
use deadline::Deadline;
use metrics_exporter_prometheus::PrometheusHandle;
use mvcc::Backend;

use crate::config::API_VERSION;

/// What the HTTP handlers read.
pub struct HttpState<B: mvcc::Backend> {
    /// The member.
    pub node: Node<B>,
    /// The Prometheus recorder, when one is installed.
    pub metrics: Option<PrometheusHandle>,
    /// The storage engine's size, for `etcd_mvcc_db_total_size_in_bytes`.
    pub db_size: kvapi::DbSize,
}

impl<B: mvcc::Backend> Clone for HttpState<B> {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            metrics: self.metrics.clone(),
            db_size: std::sync::Arc::clone(&self.db_size),
        }
    }
}

/// The HTTP routes of the client port.
pub fn router<B: Backend>(state: HttpState<B>) -> Router {
    Router::new()
        .route("/health", get(health::<B>))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz::<B>))
        .route("/version", get(version))
        .route("/metrics", get(metrics_text::<B>))
        .with_state(state)
}

/// The routes of `--listen-metrics-urls`, as etcd serves them there: `/metrics`, `/health`, `/livez`.
pub fn metrics_router<B: Backend>(state: HttpState<B>) -> Router {
    Router::new()
        .route("/health", get(health::<B>))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz::<B>))
        .route("/metrics", get(metrics_text::<B>))
        .with_state(state)
}

async fn livez() -> impl IntoResponse {
    // Liveness must not depend on the quorum: a member cut off from its peers is alive and
    // restarting it (what a failed liveness probe does) would not bring the quorum back.
    "ok"
}

/// Any path nobody serves: gRPC's "unimplemented" to a gRPC call (as before: gRPC clients
/// expect a status, not an HTTP error); as Go's mux in etcd: a redirect to the clean path for
/// one with `//`, `.` or `..` segments, else `404 page not found`.
pub async fn unknown_path(request: axum::extract::Request) -> axum::response::Response {
    let grpc = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented("").into_http();
    }
    let uri = request.uri();
    kvapi::redirect_unclean(request.method(), uri.path(), uri.query())
        .unwrap_or_else(kvapi::not_found)
}

async fn readyz<B: Backend>(State(state): State<HttpState<B>>) -> impl IntoResponse {
    // Ready means this member can serve a linearizable read now: a quorum answers a read
    // index within a second (a member without one would only fail clients' requests).
    let answer = state
        .node
        .read_index(Deadline::after(Duration::from_secs(1)))
        .await;
    match answer {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(e) => {
            tracing::warn!(cause = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "readyz check failed")
        }
    }
}

async fn health<B: Backend>(State(state): State<HttpState<B>>) -> impl IntoResponse {
    // Healthy means a quorum answers a read index within a second, as etcd's check does.
    let answer = state
        .node
        .read_index(Deadline::after(Duration::from_secs(1)))
        .await;
    let (code, body) = match answer {
        Ok(()) => (StatusCode::OK, r#"{"health":"true"}"#),
        Err(e) => {
            tracing::warn!(cause = %e, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, r#"{"health":"false"}"#)
        }
    };
    (code, [("content-type", "application/json")], body)
}

async fn version() -> impl IntoResponse {
    (
        [("content-type", "application/json")],
        format!(r#"{{"etcdserver":"{API_VERSION}","etcdcluster":"{API_VERSION}"}}"#),
    )
}

async fn metrics_text<B: Backend>(State(state): State<HttpState<B>>) -> impl IntoResponse {
    crate::telemetry::refresh(&state.node, (state.db_size)());
    match &state.metrics {
        Some(handle) => (
            StatusCode::OK,
            // Prometheus's text format, as etcd serves it.
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            handle.render() + &crate::telemetry::cpu_seconds(),
        ),
        None => (
            StatusCode::NOT_FOUND,
            [("content-type", "text/plain; charset=utf-8")],
            "no metrics recorder installed\n".to_string(),
        ),
    }
}
