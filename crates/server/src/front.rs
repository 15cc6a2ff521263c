//! The client port's front door: a gRPC call to one of the etcd services goes straight to it,
//! counted (and timed with `--metrics extensive`); every other request goes to the HTTP router
//! (health, metrics, version, the JSON gateway), behind `--cors` and `--host-whitelist`.
//!
//! The gRPC path has no router and no middleware of its own: one boxed future per call. Under
//! puts, axum's layers and routing were a fifth of a member's CPU, allocation most of it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{Request, Response};
use mvcc::Backend;

use crate::telemetry;

/// The future of one answer.
type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// The gRPC services, each call counted and, with `--metrics extensive`, timed.
pub(crate) struct Grpc<B: Backend> {
    services: kvapi::Services<B>,
    timed: bool,
}

impl<B: Backend> Clone for Grpc<B> {
    fn clone(&self) -> Self {
        Self {
            services: self.services.clone(),
            timed: self.timed,
        }
    }
}

impl<B: Backend> Grpc<B> {
    /// `services`, counted; `timed`: `--metrics extensive`.
    pub(crate) fn new(services: kvapi::Services<B>, timed: bool) -> Self {
        Self { services, timed }
    }

    /// Answers one gRPC call.
    pub(crate) fn call<Q>(&self, request: Request<Q>) -> Answer
    where
        Q: http_body::Body<Data = Bytes> + Send + 'static,
        Q::Error: Into<tonic::codegen::StdError> + Send + 'static,
    {
        let path = request.uri().path();
        let call = telemetry::start(path);
        let timer = if self.timed {
            telemetry::handling(path)
        } else {
            None
        };
        let services = self.services.clone();
        Box::pin(async move {
            let started = timer.map(|_| std::time::Instant::now());
            let response = services.call(request).await;
            if let (Some(histogram), Some(started)) = (timer, started) {
                histogram.record(started.elapsed().as_secs_f64());
            }
            Ok(telemetry::answered(call, response))
        })
    }

    /// Every request answered as a gRPC call, as a router (for the JSON gateway, which calls
    /// the services in-process as a client would).
    pub(crate) fn router(&self) -> axum::Router {
        let grpc = self.clone();
        axum::Router::new().fallback_service(tower::service_fn(move |request: Request<Body>| {
            grpc.call(request)
        }))
    }
}

/// The service one client connection's requests go to.
pub(crate) struct Front<B: Backend> {
    grpc: Grpc<B>,
    http: axum::Router,
    /// The common name of the connection's client certificate, once its handshake has set it
    /// (with `--client-cert-auth`), handed to each request as [`kvapi::CertUser`].
    common_name: Option<Arc<OnceLock<String>>>,
}

impl<B: Backend> Clone for Front<B> {
    fn clone(&self) -> Self {
        Self {
            grpc: self.grpc.clone(),
            http: self.http.clone(),
            common_name: self.common_name.clone(),
        }
    }
}

impl<B: Backend> Front<B> {
    /// Serves `grpc` and, for every other request, `http`.
    pub(crate) fn new(grpc: Grpc<B>, http: axum::Router) -> Self {
        Self {
            grpc,
            http,
            common_name: None,
        }
    }

    /// This front for a connection whose client certificate's common name `common_name` holds.
    pub(crate) fn for_connection(&self, common_name: Option<Arc<OnceLock<String>>>) -> Self {
        Self {
            common_name,
            ..self.clone()
        }
    }
}

/// Whether `request` is a gRPC call to one of the services: what skips the HTTP router. (Its
/// access checks let gRPC through untouched, so skipping them changes no answer.)
fn is_grpc_call<Q>(request: &Request<Q>) -> bool {
    let grpc = request
        .headers()
        .get("content-type")
        .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"));
    grpc && kvapi::serves(request.uri().path())
}

impl<B, Q> tower::Service<Request<Q>> for Front<B>
where
    B: Backend,
    Q: http_body::Body<Data = Bytes> + Send + 'static,
    Q::Error: Into<axum::BoxError> + Send + Sync + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Q>) -> Answer {
        if let Some(cn) = self.common_name.as_ref().and_then(|c| c.get()) {
            request.extensions_mut().insert(kvapi::CertUser(cn.clone()));
        }
        if is_grpc_call(&request) {
            return self.grpc.call(request);
        }
        let http = self.http.clone();
        Box::pin(tower::ServiceExt::oneshot(http, request.map(Body::new)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, content_type: &'static str) -> Request<Body> {
        Request::post(path)
            .header("content-type", content_type)
            .body(Body::empty())
            .unwrap()
    }

    #[test]
    fn only_grpc_calls_to_our_services_skip_the_http_router() {
        assert!(is_grpc_call(&request(
            "/etcdserverpb.KV/Put",
            "application/grpc"
        )));
        assert!(is_grpc_call(&request(
            "/v3lockpb.Lock/Lock",
            "application/grpc+proto"
        )));
        assert!(is_grpc_call(&request(
            "/etcdserverpb.KV/Bogus",
            "application/grpc"
        )));
        assert!(!is_grpc_call(&request(
            "/etcdserverpb.KV/Put",
            "application/json"
        )));
        assert!(!is_grpc_call(&request("/other.KV/Put", "application/grpc")));
        assert!(!is_grpc_call(&request("/v3/kv/put", "application/grpc")));
        assert!(!is_grpc_call(&request(
            "/etcdserverpb.KV",
            "application/grpc"
        )));
    }
}
