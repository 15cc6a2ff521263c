//! `--grpc-keepalive-min-time`: a client pinging more often than it allows is sent GOAWAY
//! (ENHANCE_YOUR_CALM, "too_many_pings") and disconnected, by etcd 3.4 (grpc-go's keepalive
//! enforcement) and by MetaStore alike; one pinging at the allowed rate is not.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::{Kind, Server};

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A literal header field without indexing, with a new name (HPACK, no Huffman).
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0, u8::try_from(name.len()).unwrap()];
    b.extend_from_slice(name.as_bytes());
    b.push(u8::try_from(value.len()).unwrap());
    b.extend_from_slice(value.as_bytes());
    b
}

/// Opens a Watch stream over a raw HTTP/2 connection to `port`, then sends `pings` PINGs
/// `every` apart; answers the GOAWAY the server sent, if any: (error code, debug data).
fn ping_on_a_watch_stream(port: u16, pings: usize, every: Duration) -> Option<(u32, Vec<u8>)> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut reader = conn.try_clone().expect("clone");
    // Reads the server's frames as they come (a reset after GOAWAY must not lose it).
    let frames = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = reader.set_read_timeout(Some(Duration::from_secs(10)));
        let mut chunk = [0u8; 4096];
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&chunk[..n]);
        }
        bytes
    });
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.extend([0x04, 25]); // :path, indexed name
    block.extend_from_slice(b"/etcdserverpb.Watch/Watch");
    block.extend(literal(":authority", "localhost"));
    block.extend(literal("content-type", "application/grpc"));
    block.extend(literal("te", "trailers"));
    out.extend(frame(0x1, 0x4, 1, &block));
    conn.write_all(&out).expect("preface");
    for i in 0..pings {
        std::thread::sleep(every);
        let payload = u64::try_from(i).unwrap().to_be_bytes();
        if conn.write_all(&frame(0x6, 0, 0, &payload)).is_err() {
            break;
        }
    }
    // Long enough for a GOAWAY to arrive; then the reader ends.
    std::thread::sleep(Duration::from_millis(500));
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let bytes = frames.join().expect("reader");
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = (usize::from(bytes[at]) << 16)
            | (usize::from(bytes[at + 1]) << 8)
            | usize::from(bytes[at + 2]);
        if bytes[at + 3] == 0x7 && at + 9 + len <= bytes.len() && len >= 8 {
            let p = &bytes[at + 9..at + 9 + len];
            let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
            return Some((code, p[8..].to_vec()));
        }
        at += 9 + len;
    }
    None
}

#[test]
fn a_client_pinging_too_often_is_sent_away_as_by_etcd() {
    for kind in [Kind::Etcd, Kind::Mem] {
        let server = Server::start(kind, &["--grpc-keepalive-min-time=500ms"]);
        // Ten pings 50 ms apart: the third strike ends it.
        let away = ping_on_a_watch_stream(server.client_port, 10, Duration::from_millis(50));
        assert_eq!(
            away,
            Some((0xb, b"too_many_pings".to_vec())),
            "{kind:?} did not send GOAWAY ENHANCE_YOUR_CALM too_many_pings"
        );
        // Pings at the allowed rate are answered, and the connection stays.
        let fine = ping_on_a_watch_stream(server.client_port, 4, Duration::from_millis(650));
        assert_eq!(
            fine, None,
            "{kind:?} sent a client pinging at the allowed rate away"
        );
    }
}
