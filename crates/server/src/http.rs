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
pub struct HttpState<B> {
    /// The member.
    pub node: Node<B>,
    /// The Prometheus recorder, when one is installed.
    pub metrics: Option<PrometheusHandle>,
}

impl<B> Clone for HttpState<B> {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            metrics: self.metrics.clone(),
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
    let runtime = tokio::runtime::Handle::current().metrics();
    metrics::gauge!("metastore_live_tasks").set(runtime.num_alive_tasks() as f64);
    let store = state.node.store();
    metrics::gauge!("metastore_store_revision").set(store.current_revision() as f64);
    // Storage held by history: every stored version, and the revisions compacted but not yet
    // physically removed on this member.
    metrics::gauge!("metastore_mvcc_versions_stored").set(store.versions() as f64);
    let progress = store.compaction_progress();
    metrics::gauge!("metastore_mvcc_compaction_pending_revisions")
        .set((progress.target - progress.done).max(0) as f64);
    let status = state.node.status();
    metrics::gauge!("etcd_server_has_leader").set(if status.leader.is_some() { 1.0 } else { 0.0 });
    metrics::gauge!("etcd_server_is_leader").set(if status.leader == Some(status.id) {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("etcd_server_proposals_pending").set(state.node.pending() as f64);
    match &state.metrics {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (
            StatusCode::NOT_FOUND,
            "no metrics recorder installed\n".to_string(),
        ),
    }
}
