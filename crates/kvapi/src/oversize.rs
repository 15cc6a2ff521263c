//! gRPC messages over the receive limit, answered as etcd's gRPC library answers them.
//!
//! tonic refuses such a message with `OUT_OF_RANGE` and its own text; grpc-go, and so etcd,
//! with `RESOURCE_EXHAUSTED` "grpc: received message larger than max (N vs. M)", which is what
//! etcd clients expect. The rewrite happens on the way out, where tonic's answer is visible.

use axum::http::{HeaderValue, Response};

const TONIC_TEXT: &str = "decoded message length too large";
const OUT_OF_RANGE: &[u8] = b"11";
const RESOURCE_EXHAUSTED: &str = "8";

/// Rewrites tonic's "message too large" answer into grpc-go's; leaves every other answer alone.
pub(crate) fn as_grpc_go<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers();
    if headers.get("grpc-status").map(HeaderValue::as_bytes) != Some(OUT_OF_RANGE) {
        return response;
    }
    let Some(message) = headers
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
    else {
        return response;
    };
    if !message.contains(TONIC_TEXT) {
        return response;
    }
    let numbers: Vec<&str> = message
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect();
    let (found, limit) = match numbers.as_slice() {
        [found, limit, ..] => (*found, *limit),
        _ => ("?", "?"),
    };
    let text = format!("grpc: received message larger than max ({found} vs. {limit})");
    let headers = response.headers_mut();
    headers.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
    if let Ok(v) = HeaderValue::from_str(&text.replace(' ', "%20")) {
        headers.insert("grpc-message", v);
    }
    response
}

/// Undoes gRPC's percent-encoding of `grpc-message`.
fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            let hex = std::str::from_utf8(&raw[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn answer(status: &'static str, message: &'static str) -> Response<Body> {
        let mut r = Response::new(Body::empty());
        r.headers_mut()
            .insert("grpc-status", HeaderValue::from_static(status));
        r.headers_mut()
            .insert("grpc-message", HeaderValue::from_static(message));
        r
    }

    #[test]
    fn tonics_limit_becomes_grpc_gos() {
        let tonic = answer(
            "11",
            "Error,%20decoded%20message%20length%20too%20large:%20found%20614409%20bytes,%20the%20limit%20is:%20525312%20bytes",
        );
        let r = as_grpc_go(tonic);
        assert_eq!(r.headers()["grpc-status"], "8");
        assert_eq!(
            percent_decode(r.headers()["grpc-message"].as_bytes()),
            "grpc: received message larger than max (614409 vs. 525312)"
        );
    }

    #[test]
    fn other_answers_pass_untouched() {
        let compacted = answer(
            "11",
            "etcdserver:%20mvcc:%20required%20revision%20has%20been%20compacted",
        );
        let r = as_grpc_go(compacted);
        assert_eq!(r.headers()["grpc-status"], "11");
        let ok = answer("0", "");
        assert_eq!(as_grpc_go(ok).headers()["grpc-status"], "0");
        assert_eq!(percent_decode(b"a%20b%2"), "a b%2");
    }
}
