//! etcd's HTTP/JSON gateway: the v3 API as JSON over HTTP/1.1 on the client port, as etcd 3.4's
//! grpc-gateway serves it under `/v3/` (and `/v3beta/`, which etcd rewrites to `/v3/`).
//!
//! Like etcd's gateway, which dials the member's own gRPC server, each request goes through the
//! gRPC services in-process (the router [`crate::router`] builds), so auth, validation, limits
//! and error texts are the ones gRPC clients see. The JSON is the proto3 mapping grpc-gateway 1.x
//! writes with etcd's settings: the protos' original field names, 64-bit integers as strings,
//! bytes as base64, enums by name, default values left out. Errors are grpc-gateway's
//! `{"error","message","code"}` with its HTTP status for each gRPC code; streams (watch, lease
//! keep-alive, snapshot, election observe) answer one `{"result": …}` object per line.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body::Body as _;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};

use crate::pb::etcdserverpb as pb;
use crate::pb::{v3electionpb, v3lockpb};

/// How many decoded messages of a client stream wait for the service before reading stops.
const STREAM_QUEUE: usize = 16;

/// What every gateway request needs: the gRPC services and the body size limit.
#[derive(Clone)]
struct Gateway {
    grpc: Router,
    max_body_bytes: usize,
}

/// The gateway's routes: every etcd 3.4 gateway path under `/v3/` and `/v3beta/`.
///
/// `grpc` is the router of the v3 gRPC services; `max_body_bytes` caps one JSON request (or
/// one message of a stream).
pub fn gateway(grpc: Router, max_body_bytes: usize) -> Router {
    let state = Gateway {
        grpc,
        max_body_bytes,
    };
    Router::new()
        // Go's mux sends the subtree's name without its slash to the subtree.
        .route("/v3", axum::routing::any(to_subtree))
        .route("/v3/", axum::routing::any(handle))
        .route("/v3/{*path}", axum::routing::any(handle))
        .route("/v3beta/", axum::routing::any(handle))
        .route("/v3beta/{*path}", axum::routing::any(handle))
        .with_state(state)
}

/// The answer to a path nobody serves, as Go's `http.ServeMux` writes it.
pub fn not_found() -> Response {
    text_error(StatusCode::NOT_FOUND, "404 page not found")
}

/// Go's `http.ServeMux` answer to a path that is not clean (`//`, `.` or `..` segments): a
/// permanent redirect to the clean path, or `None` for a clean one.
pub fn redirect_unclean(method: &Method, path: &str, query: Option<&str>) -> Option<Response> {
    let clean = clean_path(path);
    (clean != path).then(|| moved(method, &clean, query))
}

/// `path` as Go's `path.Clean` makes it, keeping a trailing slash as `http.ServeMux` does.
fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    let mut clean = format!("/{}", parts.join("/"));
    if path.ends_with('/') && clean != "/" {
        clean.push('/');
    }
    clean
}

/// Go's `http.Redirect` with 301: a short HTML note for GET and HEAD, nothing otherwise.
fn moved(method: &Method, path: &str, query: Option<&str>) -> Response {
    let location = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let Ok(header) = HeaderValue::from_str(&location) else {
        return not_found();
    };
    if method == Method::GET || method == Method::HEAD {
        let escaped = location
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&#34;")
            .replace('\'', "&#39;");
        let body = format!("<a href=\"{escaped}\">Moved Permanently</a>.\n\n");
        let content_type = HeaderValue::from_static("text/html; charset=utf-8");
        let headers = [("location", header), ("content-type", content_type)];
        (StatusCode::MOVED_PERMANENTLY, headers, body).into_response()
    } else {
        (StatusCode::MOVED_PERMANENTLY, [("location", header)]).into_response()
    }
}

async fn to_subtree(request: Request) -> Response {
    moved(request.method(), "/v3/", request.uri().query())
}

/// A plain-text error as Go's `http.Error` writes it.
fn text_error(status: StatusCode, text: &str) -> Response {
    (
        status,
        [
            ("content-type", "text/plain; charset=utf-8"),
            ("x-content-type-options", "nosniff"),
        ],
        format!("{text}\n"),
    )
        .into_response()
}

async fn handle(State(gw): State<Gateway>, request: Request) -> Response {
    let path = request.uri().path();
    // etcd rewrites `/v3beta/` to `/v3/` before its gateway sees the path.
    let rest = path
        .strip_prefix("/v3/")
        .or_else(|| path.strip_prefix("/v3beta/"))
        .unwrap_or_default()
        .to_string();
    let method = request.method().clone();
    if let Some(moved) = redirect_unclean(&method, &format!("/v3/{rest}"), request.uri().query()) {
        return moved;
    }
    let headers = request.headers().clone();
    let body = request.into_body();
    macro_rules! routes {
        ($($path:pat => $call:ident $grpc:literal : $req:ty => $resp:ty;)*) => {
            match rest.as_str() {
                $($path => {
                    if method != Method::POST {
                        return text_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
                    }
                    $call::<$req, $resp>(&gw, $grpc, &headers, body).await
                })*
                _ => text_error(StatusCode::NOT_FOUND, "Not Found"),
            }
        };
    }
    routes! {
        "kv/range" => unary "/etcdserverpb.KV/Range": pb::RangeRequest => pb::RangeResponse;
        "kv/put" => unary "/etcdserverpb.KV/Put": pb::PutRequest => pb::PutResponse;
        "kv/deleterange" => unary "/etcdserverpb.KV/DeleteRange":
            pb::DeleteRangeRequest => pb::DeleteRangeResponse;
        "kv/txn" => unary "/etcdserverpb.KV/Txn": pb::TxnRequest => pb::TxnResponse;
        "kv/compaction" => unary "/etcdserverpb.KV/Compact":
            pb::CompactionRequest => pb::CompactionResponse;
        "watch" => bidi "/etcdserverpb.Watch/Watch": pb::WatchRequest => pb::WatchResponse;
        "lease/grant" => unary "/etcdserverpb.Lease/LeaseGrant":
            pb::LeaseGrantRequest => pb::LeaseGrantResponse;
        "lease/revoke" | "kv/lease/revoke" => unary "/etcdserverpb.Lease/LeaseRevoke":
            pb::LeaseRevokeRequest => pb::LeaseRevokeResponse;
        "lease/keepalive" => bidi "/etcdserverpb.Lease/LeaseKeepAlive":
            pb::LeaseKeepAliveRequest => pb::LeaseKeepAliveResponse;
        "lease/timetolive" | "kv/lease/timetolive" => unary "/etcdserverpb.Lease/LeaseTimeToLive":
            pb::LeaseTimeToLiveRequest => pb::LeaseTimeToLiveResponse;
        "lease/leases" | "kv/lease/leases" => unary "/etcdserverpb.Lease/LeaseLeases":
            pb::LeaseLeasesRequest => pb::LeaseLeasesResponse;
        "cluster/member/add" => unary "/etcdserverpb.Cluster/MemberAdd":
            pb::MemberAddRequest => pb::MemberAddResponse;
        "cluster/member/remove" => unary "/etcdserverpb.Cluster/MemberRemove":
            pb::MemberRemoveRequest => pb::MemberRemoveResponse;
        "cluster/member/update" => unary "/etcdserverpb.Cluster/MemberUpdate":
            pb::MemberUpdateRequest => pb::MemberUpdateResponse;
        "cluster/member/list" => unary "/etcdserverpb.Cluster/MemberList":
            pb::MemberListRequest => pb::MemberListResponse;
        "cluster/member/promote" => unary "/etcdserverpb.Cluster/MemberPromote":
            pb::MemberPromoteRequest => pb::MemberPromoteResponse;
        "maintenance/alarm" => unary "/etcdserverpb.Maintenance/Alarm":
            pb::AlarmRequest => pb::AlarmResponse;
        "maintenance/status" => unary "/etcdserverpb.Maintenance/Status":
            pb::StatusRequest => pb::StatusResponse;
        "maintenance/defragment" => unary "/etcdserverpb.Maintenance/Defragment":
            pb::DefragmentRequest => pb::DefragmentResponse;
        // etcd 3.4 maps Hash and HashKV to this one path, and Hash answers it: HashKV has no
        // gateway path.
        "maintenance/hash" => unary "/etcdserverpb.Maintenance/Hash":
            pb::HashRequest => pb::HashResponse;
        "maintenance/snapshot" => server_stream "/etcdserverpb.Maintenance/Snapshot":
            pb::SnapshotRequest => pb::SnapshotResponse;
        "maintenance/transfer-leadership" => unary "/etcdserverpb.Maintenance/MoveLeader":
            pb::MoveLeaderRequest => pb::MoveLeaderResponse;
        "auth/enable" => unary "/etcdserverpb.Auth/AuthEnable":
            pb::AuthEnableRequest => pb::AuthEnableResponse;
        "auth/disable" => unary "/etcdserverpb.Auth/AuthDisable":
            pb::AuthDisableRequest => pb::AuthDisableResponse;
        "auth/authenticate" => unary "/etcdserverpb.Auth/Authenticate":
            pb::AuthenticateRequest => pb::AuthenticateResponse;
        "auth/user/add" => unary "/etcdserverpb.Auth/UserAdd":
            pb::AuthUserAddRequest => pb::AuthUserAddResponse;
        "auth/user/get" => unary "/etcdserverpb.Auth/UserGet":
            pb::AuthUserGetRequest => pb::AuthUserGetResponse;
        "auth/user/list" => unary "/etcdserverpb.Auth/UserList":
            pb::AuthUserListRequest => pb::AuthUserListResponse;
        "auth/user/delete" => unary "/etcdserverpb.Auth/UserDelete":
            pb::AuthUserDeleteRequest => pb::AuthUserDeleteResponse;
        "auth/user/changepw" => unary "/etcdserverpb.Auth/UserChangePassword":
            pb::AuthUserChangePasswordRequest => pb::AuthUserChangePasswordResponse;
        "auth/user/grant" => unary "/etcdserverpb.Auth/UserGrantRole":
            pb::AuthUserGrantRoleRequest => pb::AuthUserGrantRoleResponse;
        "auth/user/revoke" => unary "/etcdserverpb.Auth/UserRevokeRole":
            pb::AuthUserRevokeRoleRequest => pb::AuthUserRevokeRoleResponse;
        "auth/role/add" => unary "/etcdserverpb.Auth/RoleAdd":
            pb::AuthRoleAddRequest => pb::AuthRoleAddResponse;
        "auth/role/get" => unary "/etcdserverpb.Auth/RoleGet":
            pb::AuthRoleGetRequest => pb::AuthRoleGetResponse;
        "auth/role/list" => unary "/etcdserverpb.Auth/RoleList":
            pb::AuthRoleListRequest => pb::AuthRoleListResponse;
        "auth/role/delete" => unary "/etcdserverpb.Auth/RoleDelete":
            pb::AuthRoleDeleteRequest => pb::AuthRoleDeleteResponse;
        "auth/role/grant" => unary "/etcdserverpb.Auth/RoleGrantPermission":
            pb::AuthRoleGrantPermissionRequest => pb::AuthRoleGrantPermissionResponse;
        "auth/role/revoke" => unary "/etcdserverpb.Auth/RoleRevokePermission":
            pb::AuthRoleRevokePermissionRequest => pb::AuthRoleRevokePermissionResponse;
        "lock/lock" => unary "/v3lockpb.Lock/Lock":
            v3lockpb::LockRequest => v3lockpb::LockResponse;
        "lock/unlock" => unary "/v3lockpb.Lock/Unlock":
            v3lockpb::UnlockRequest => v3lockpb::UnlockResponse;
        "election/campaign" => unary "/v3electionpb.Election/Campaign":
            v3electionpb::CampaignRequest => v3electionpb::CampaignResponse;
        "election/proclaim" => unary "/v3electionpb.Election/Proclaim":
            v3electionpb::ProclaimRequest => v3electionpb::ProclaimResponse;
        "election/leader" => unary "/v3electionpb.Election/Leader":
            v3electionpb::LeaderRequest => v3electionpb::LeaderResponse;
        "election/observe" => server_stream "/v3electionpb.Election/Observe":
            v3electionpb::LeaderRequest => v3electionpb::LeaderResponse;
        "election/resign" => unary "/v3electionpb.Election/Resign":
            v3electionpb::ResignRequest => v3electionpb::ResignResponse;
    }
}

/// The request's gRPC metadata, as grpc-gateway forwards it: `Authorization` (etcd reads the
/// token from it) and every `Grpc-Metadata-*` header without its prefix.
fn metadata<T>(message: T, headers: &HeaderMap) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let md = request.metadata_mut();
    for (name, value) in headers {
        let key = if name == "authorization" {
            "authorization"
        } else if let Some(key) = name.as_str().strip_prefix("grpc-metadata-") {
            key
        } else {
            continue;
        };
        let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.to_str().map(tonic::metadata::MetadataValue::try_from),
        ) else {
            continue;
        };
        if let Ok(value) = value {
            md.append(key, value);
        }
    }
    request
}

/// Decodes the first JSON value of `bytes`: none at all is the empty message, as for
/// grpc-gateway, and what follows the first value is not read.
fn decode<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<Option<T>, Status> {
    let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<T>();
    match values.next() {
        None => Ok(None),
        Some(Ok(value)) => Ok(Some(value)),
        Some(Err(e)) => Err(Status::invalid_argument(e.to_string())),
    }
}

/// grpc-gateway's HTTP status for a gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// grpc-gateway's error body for a failed call.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

/// grpc-gateway's error object inside a stream.
#[derive(Serialize)]
struct StreamError<'a> {
    grpc_code: i32,
    http_code: u16,
    message: &'a str,
    http_status: &'a str,
}

fn json_headers() -> [(&'static str, HeaderValue); 2] {
    [
        ("content-type", HeaderValue::from_static("application/json")),
        (
            "grpc-metadata-content-type",
            HeaderValue::from_static("application/grpc"),
        ),
    ]
}

fn error_response(status: &Status) -> Response {
    let body = ErrorBody {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    (http_status(status.code()), json_headers(), json).into_response()
}

fn stream_error_line(status: &Status) -> Bytes {
    let http = http_status(status.code());
    let error = StreamError {
        grpc_code: status.code() as i32,
        http_code: http.as_u16(),
        message: status.message(),
        http_status: http.canonical_reason().unwrap_or_default(),
    };
    let mut line = b"{\"error\":".to_vec();
    if serde_json::to_writer(&mut line, &error).is_err() {
        line.extend_from_slice(b"{}");
    }
    line.push(b'}');
    Bytes::from(line)
}

fn result_line<T: Serialize>(message: &T) -> Bytes {
    // Written by hand around the message so its fields keep grpc-gateway's (the proto's) order.
    let mut line = b"{\"result\":".to_vec();
    // pbjson's serializers do not fail on generated types.
    if serde_json::to_writer(&mut line, message).is_err() {
        line.extend_from_slice(b"{}");
    }
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

fn client(gw: &Gateway) -> tonic::client::Grpc<Router> {
    // As etcd's gateway (grpc-go's MaxCallRecvMsgSize at its largest): the services bound
    // what they answer themselves.
    tonic::client::Grpc::new(gw.grpc.clone()).max_decoding_message_size(usize::MAX)
}

async fn read_body(gw: &Gateway, body: Body) -> Result<Bytes, Status> {
    axum::body::to_bytes(body, gw.max_body_bytes)
        .await
        .map_err(|e| Status::invalid_argument(format!("reading the request body: {e}")))
}

/// What a call with one request message needs: a client, the request (the body's JSON, an
/// empty body being the default message, with the headers as metadata), the method, the codec.
type Call<Q, R> = (
    tonic::client::Grpc<Router>,
    tonic::Request<Q>,
    PathAndQuery,
    tonic_prost::ProstCodec<Q, R>,
);

async fn call<Q, R>(
    gw: &Gateway,
    method: &'static str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Call<Q, R>, Status>
where
    Q: prost::Message + DeserializeOwned + Default + Send + Sync + 'static,
    R: prost::Message + Serialize + Default + Send + Sync + 'static,
{
    let message = decode::<Q>(&read_body(gw, body).await?)?.unwrap_or_default();
    Ok((
        client(gw),
        metadata(message, headers),
        PathAndQuery::from_static(method),
        tonic_prost::ProstCodec::default(),
    ))
}

async fn unary<Q, R>(
    gw: &Gateway,
    method: &'static str,
    headers: &HeaderMap,
    body: Body,
) -> Response
where
    Q: prost::Message + DeserializeOwned + Default + Send + Sync + 'static,
    R: prost::Message + Serialize + Default + Send + Sync + 'static,
{
    let (mut grpc, request, path, codec) = match call::<Q, R>(gw, method, headers, body).await {
        Ok(call) => call,
        Err(status) => return error_response(&status),
    };
    let answer = grpc.unary(request, path, codec).await;
    match answer {
        Ok(response) => match serde_json::to_vec(response.get_ref()) {
            Ok(json) => (StatusCode::OK, json_headers(), json).into_response(),
            Err(e) => error_response(&Status::internal(e.to_string())),
        },
        Err(status) => error_response(&status),
    }
}

async fn server_stream<Q, R>(
    gw: &Gateway,
    method: &'static str,
    headers: &HeaderMap,
    body: Body,
) -> Response
where
    Q: prost::Message + DeserializeOwned + Default + Send + Sync + 'static,
    R: prost::Message + Serialize + Default + Send + Sync + 'static,
{
    let (mut grpc, request, path, codec) = match call::<Q, R>(gw, method, headers, body).await {
        Ok(call) => call,
        Err(status) => return error_response(&status),
    };
    let answer = grpc.server_streaming(request, path, codec).await;
    match answer {
        Ok(response) => lines(response.into_inner()).await,
        Err(status) => error_response(&status),
    }
}

async fn bidi<Q, R>(gw: &Gateway, method: &'static str, headers: &HeaderMap, body: Body) -> Response
where
    Q: prost::Message + DeserializeOwned + Default + Send + Sync + 'static,
    R: prost::Message + Serialize + Default + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::channel::<Q>(STREAM_QUEUE);
    let mut reader = JsonStream {
        body,
        buffer: Vec::new(),
        limit: gw.max_body_bytes,
        ended: false,
    };
    // As grpc-gateway: a first message that does not decode fails the request; one that
    // never comes leaves a stream with nothing to send.
    match reader.next::<Q>().await {
        Ok(Some(first)) => {
            if tx.try_send(first).is_err() {
                return error_response(&Status::internal("gateway stream queue"));
            }
            tokio::spawn(reader.forward(tx));
        }
        Ok(None) => drop(tx),
        Err(status) => return error_response(&status),
    }
    let mut grpc = client(gw);
    let codec = tonic_prost::ProstCodec::<Q, R>::default();
    let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
    let answer = grpc
        .streaming(
            metadata(outbound, headers),
            PathAndQuery::from_static(method),
            codec,
        )
        .await;
    match answer {
        Ok(response) => lines(response.into_inner()).await,
        Err(status) => error_response(&status),
    }
}

/// Reads JSON values one after another from a request body, as grpc-gateway's decoder does.
struct JsonStream {
    body: Body,
    buffer: Vec<u8>,
    limit: usize,
    ended: bool,
}

impl JsonStream {
    /// The next value, or `None` at the end of the body.
    async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Status> {
        loop {
            let mut values = serde_json::Deserializer::from_slice(&self.buffer).into_iter::<T>();
            match values.next() {
                Some(Ok(value)) => {
                    let used = values.byte_offset();
                    self.buffer.drain(..used);
                    return Ok(Some(value));
                }
                Some(Err(e)) if !e.is_eof() => {
                    return Err(Status::invalid_argument(e.to_string()));
                }
                Some(Err(e)) if self.ended => {
                    return Err(Status::invalid_argument(e.to_string()));
                }
                None if self.ended => return Ok(None),
                _ => {}
            }
            if self.buffer.len() > self.limit {
                return Err(Status::invalid_argument(format!(
                    "a stream message over {} bytes",
                    self.limit
                )));
            }
            match std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.body).poll_frame(cx)).await
            {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(Status::cancelled(e.to_string())),
                None => self.ended = true,
            }
        }
    }

    /// Sends each following value to the service until the body ends, fails, or the call is
    /// over; ending closes the client's side of the call, as grpc-gateway's `CloseSend`.
    async fn forward<T: DeserializeOwned + Send>(mut self, tx: mpsc::Sender<T>) {
        loop {
            let next = tokio::select! {
                () = tx.closed() => return,
                next = self.next::<T>() => next,
            };
            match next {
                Ok(Some(value)) => {
                    if tx.send(value).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!(cause = %status.message(), "gateway stream request ended");
                    return;
                }
            }
        }
    }
}

/// Answers a response stream as grpc-gateway does: one `{"result": …}` line per message; an
/// error before any message is the response's status, a later one is the last line.
async fn lines<R>(mut stream: tonic::Streaming<R>) -> Response
where
    R: Serialize + Send + 'static,
{
    let first = stream.message().await;
    let first = match first {
        Ok(Some(message)) => result_line(&message),
        Ok(None) => return (StatusCode::OK, json_headers(), Body::empty()).into_response(),
        Err(status) => {
            let line = stream_error_line(&status);
            return (http_status(status.code()), json_headers(), line).into_response();
        }
    };
    let rest = rest_lines(stream);
    let body = Body::from_stream(tokio_stream::StreamExt::chain(
        tokio_stream::once(Ok::<_, Infallible>(first)),
        rest,
    ));
    (StatusCode::OK, json_headers(), body).into_response()
}

/// The remaining messages of `stream` as lines, ending after an error line.
fn rest_lines<R>(
    stream: tonic::Streaming<R>,
) -> impl tokio_stream::Stream<Item = Result<Bytes, Infallible>> + Send
where
    R: Serialize + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(1);
    tokio::spawn(async move {
        let mut stream = stream;
        loop {
            let next = tokio::select! {
                () = tx.closed() => return,
                next = stream.message() => next,
            };
            let (line, last) = match next {
                Ok(Some(message)) => (result_line(&message), false),
                Ok(None) => return,
                Err(status) => (stream_error_line(&status), true),
            };
            if tx.send(Ok(line)).await.is_err() || last {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::mvccpb::KeyValue;

    #[test]
    fn responses_are_written_as_etcd_34s_gateway_writes_them() {
        let response = pb::RangeResponse {
            header: Some(pb::ResponseHeader {
                revision: 3,
                ..Default::default()
            }),
            kvs: vec![KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 3,
                version: 2,
                value: b"bar".to_vec(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        // Captured from etcd 3.4.23's `/v3/kv/range` (ids left out of the header).
        let etcd = r#"{"header":{"revision":"3"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmFy"}],"count":"1"}"#;
        assert_eq!(serde_json::to_string(&response).ok().as_deref(), Some(etcd));
        let event = crate::pb::mvccpb::Event {
            r#type: crate::pb::mvccpb::event::EventType::Delete as i32,
            kv: None,
            prev_kv: None,
        };
        assert_eq!(
            serde_json::to_string(&event).ok().as_deref(),
            Some(r#"{"type":"DELETE"}"#)
        );
    }

    #[test]
    fn requests_are_read_as_grpc_gateway_reads_them() {
        // No body is the empty request; unknown fields are skipped; camelCase names and
        // numbers for 64-bit integers are accepted too.
        assert_eq!(decode::<pb::RangeRequest>(b" \n").ok(), Some(None));
        let read = decode::<pb::RangeRequest>(
            br#"{"key":"Zm9v","keysOnly":true,"limit":5,"sort_order":"DESCEND","x":1}"#,
        );
        let request = read.ok().flatten().unwrap_or_default();
        assert_eq!(request.key, b"foo");
        assert!(request.keys_only);
        assert_eq!(request.limit, 5);
        assert_eq!(
            request.sort_order,
            pb::range_request::SortOrder::Descend as i32
        );
        let bad = decode::<pb::RangeRequest>(b"{bad").err().map(|s| s.code());
        assert_eq!(bad, Some(Code::InvalidArgument));
    }

    #[test]
    fn paths_are_cleaned_as_gos_mux_cleans_them() {
        for (path, clean) in [
            ("/v3/kv/range", "/v3/kv/range"),
            ("/v3//kv/range", "/v3/kv/range"),
            ("/v3/./kv/../kv/range", "/v3/kv/range"),
            ("/x//y/", "/x/y/"),
            ("//", "/"),
            ("/..", "/"),
        ] {
            assert_eq!(clean_path(path), clean, "{path}");
        }
    }

    #[test]
    fn grpc_codes_map_to_grpc_gateways_http_statuses() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 408),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::Unauthenticated, 401),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 412),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
        ];
        for (code, status) in table {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn stream_lines_are_grpc_gateways() {
        let line = result_line(&pb::LeaseKeepAliveResponse {
            header: None,
            id: 7,
            ttl: 60,
        });
        assert_eq!(&line[..], b"{\"result\":{\"ID\":\"7\",\"TTL\":\"60\"}}\n");
        let error = stream_error_line(&Status::not_found("etcdserver: requested lease not found"));
        assert_eq!(
            &error[..],
            br#"{"error":{"grpc_code":5,"http_code":404,"message":"etcdserver: requested lease not found","http_status":"Not Found"}}"#
        );
    }
}
