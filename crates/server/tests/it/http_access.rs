//! `--cors` and `--host-whitelist` on the HTTP endpoints, compared with etcd 3.4 started with
//! the same flags; and `--grpc-keepalive-interval`/`--grpc-keepalive-timeout` seen on the wire.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::{Kind, Server};

/// One HTTP/1.1 request with `headers`: (status, the CORS headers sorted, body).
fn request(port: u16, method: &str, path: &str, headers: &[&str]) -> (u16, Vec<String>, String) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut text = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|h| h.starts_with("Host:")) {
        text.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for h in headers {
        text.push_str(&format!("{h}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes()).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let mut cors: Vec<String> = head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("access-control-"))
        .map(|l| l.to_ascii_lowercase())
        .collect();
    cors.sort();
    (status, cors, body.to_string())
}

#[test]
fn cors_and_host_whitelist_answer_as_etcd_does() {
    let flags = [
        "--cors=http://good.example:8080",
        "--host-whitelist=good.host,127.0.0.1",
    ];
    let mut seen = Vec::new();
    for kind in [Kind::Etcd, Kind::Mem] {
        let server = Server::start(kind, &flags);
        let port = server.client_port;
        let answers = vec![
            // An allowed origin gets the CORS headers, another does not.
            request(
                port,
                "GET",
                "/health",
                &["Origin: http://good.example:8080"],
            ),
            request(port, "GET", "/health", &["Origin: http://bad.example:80"]),
            // A preflight is answered at once.
            request(
                port,
                "OPTIONS",
                "/v3/kv/range",
                &[
                    "Origin: http://good.example:8080",
                    "Access-Control-Request-Method: POST",
                ],
            ),
            // A host not on the whitelist is refused with etcd's explanation; a port does not
            // matter, nor IPv6 brackets.
            request(port, "GET", "/health", &["Host: evil.host"]),
            request(port, "GET", "/health", &["Host: [::1]:99"]),
            request(port, "GET", "/health", &["Host: good.host:2379"]),
        ];
        assert_eq!(answers[0].0, 200, "{kind:?}: {answers:?}");
        assert!(!answers[0].1.is_empty(), "{kind:?}: {answers:?}");
        assert!(answers[1].1.is_empty(), "{kind:?}: {answers:?}");
        assert_eq!(answers[3].0, 421, "{kind:?}: {answers:?}");
        seen.push(answers);
        drop(server);
    }
    assert_eq!(seen[0], seen[1], "etcd 3.4 vs MetaStore");
    // etcd's defaults (`*`): every origin, every host; gRPC goes on regardless.
    let mut seen = Vec::new();
    for kind in [Kind::Etcd, Kind::Mem] {
        let server = Server::start(kind, &[]);
        let port = server.client_port;
        seen.push(vec![
            request(port, "OPTIONS", "/health", &[]),
            request(
                port,
                "GET",
                "/health",
                &["Host: any.host", "Origin: http://x.y"],
            ),
        ]);
        drop(server);
    }
    assert_eq!(seen[0][0].0, 200);
    assert!(
        seen[0][1].1.iter().any(|h| h.contains("allow-origin: *")),
        "{seen:?}"
    );
    assert_eq!(seen[0], seen[1], "etcd 3.4 vs MetaStore");
}

/// Reads HTTP/2 frames until one of `kind` arrives: (when, its flags), or `None` when the
/// server closed the connection first.
fn next_frame(stream: &mut TcpStream, kind: u8, limit: Duration) -> Option<(Instant, u8)> {
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < limit,
            "no frame of type {kind} within {limit:?}"
        );
        let mut header = [0u8; 9];
        if stream.read_exact(&mut header).is_err() {
            return None;
        }
        let len =
            (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).is_err() {
            return None;
        }
        if header[3] == kind {
            return Some((Instant::now(), header[4]));
        }
    }
}

#[test]
fn grpc_keepalive_pings_an_idle_client_and_closes_when_it_does_not_answer() {
    const PING: u8 = 0x6;
    let server = Server::start(
        Kind::Mem,
        &[
            "--grpc-keepalive-interval=1s",
            "--grpc-keepalive-timeout=1s",
        ],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], server.client_port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The client preface and an empty SETTINGS frame; then nothing, not even PING answers.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .expect("preface");
    let opened = Instant::now();
    let (pinged, flags) =
        next_frame(&mut stream, PING, Duration::from_secs(10)).expect("a PING before closing");
    assert_eq!(flags & 0x1, 0, "a PING, not an ACK");
    let idle = pinged - opened;
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
        "pinged after {idle:?} of idleness, with --grpc-keepalive-interval=1s"
    );
    // Unanswered, the connection is closed about --grpc-keepalive-timeout later.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let waited = pinged.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
        "closed {waited:?} after an unanswered PING, with --grpc-keepalive-timeout=1s"
    );
    drop(server);
}

/// The `grpc_server_handling_seconds` series of Put in `/metrics`, without their counts.
fn put_latency_series(port: u16) -> Vec<String> {
    let (code, body) = crate::harness::http_get(port, "/metrics").expect("metrics answered");
    assert_eq!(code, 200);
    body.lines()
        .filter(|l| {
            l.starts_with("grpc_server_handling_seconds") && l.contains(r#"grpc_method="Put""#)
        })
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series.to_string()))
        .collect()
}

#[test]
fn metrics_extensive_adds_grpc_handling_time_as_etcd() {
    let mut seen = Vec::new();
    for kind in [Kind::Etcd, Kind::Mem] {
        let server = Server::start(kind, &["--metrics=extensive"]);
        let put = crate::tls::etcdctl(&server.endpoint(), &[], &["put", "k", "v"]);
        assert_eq!(put.0, Some(0), "{kind:?}: {put:?}");
        let series = put_latency_series(server.client_port);
        assert!(
            series.iter().any(|s| s.ends_with(r#"le="0.005"}"#)),
            "{kind:?}: {series:?}"
        );
        seen.push(series);
        drop(server);
    }
    assert_eq!(seen[0], seen[1], "etcd 3.4 vs MetaStore");
    // With the basic set (the default) there is no such series.
    let server = Server::start(Kind::Mem, &[]);
    let put = crate::tls::etcdctl(&server.endpoint(), &[], &["put", "k", "v"]);
    assert_eq!(put.0, Some(0), "{put:?}");
    assert_eq!(put_latency_series(server.client_port), Vec::<String>::new());
}
