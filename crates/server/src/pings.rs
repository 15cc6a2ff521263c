//! grpc-go's keepalive enforcement, as etcd's `--grpc-keepalive-min-time` configures it: a
//! client that pings more often than the policy allows gets GOAWAY (ENHANCE_YOUR_CALM,
//! "too_many_pings") and its connection is closed. hyper/h2 answer every PING themselves and
//! have no such policy, so [`crate::listener::ClientConnection`] feeds this the frames it sees.
//!
//! The rule is grpc-go's: a client PING (not an ACK) is a strike when it comes sooner than the
//! minimum time after the previous one (two hours when the connection has no open stream,
//! etcd not permitting pings without streams); a DATA or HEADERS frame sent by the server
//! forgives the strikes (a client's flow-control pings follow the server's data); more than
//! two strikes end the connection.

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// grpc-go's `defaultPingTimeout`: the least time between pings on a connection without
/// streams.
const WITHOUT_STREAMS: Duration = Duration::from_secs(2 * 60 * 60);
/// grpc-go's `maxPingStrikes`.
const MAX_STRIKES: u32 = 2;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
/// HTTP/2's ENHANCE_YOUR_CALM error code.
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One connection's ping accounting.
#[derive(Debug)]
pub(crate) struct Pings {
    min_time: Duration,
    last_ping: Option<Instant>,
    strikes: u32,
    forgiven: bool,
    /// Streams the client opened that the server has not ended.
    open: HashSet<u32>,
    /// The highest stream the client opened (GOAWAY's last stream id).
    last_stream: u32,
    /// The server's frame header being read, and the payload bytes still to skip.
    header: [u8; 9],
    have: usize,
    skip: usize,
}

impl Pings {
    /// Enforces `min_time` between pings on streams.
    pub(crate) fn new(min_time: Duration) -> Self {
        Self {
            min_time,
            last_ping: None,
            strikes: 0,
            forgiven: false,
            open: HashSet::new(),
            last_stream: 0,
            header: [0; 9],
            have: 0,
            skip: 0,
        }
    }

    /// A frame header the client sent; `true` when the connection must end.
    pub(crate) fn client_frame(&mut self, kind: u8, flags: u8, stream: u32, now: Instant) -> bool {
        match kind {
            HEADERS if stream % 2 == 1 && stream > self.last_stream => {
                self.last_stream = stream;
                self.open.insert(stream);
            }
            RST_STREAM => {
                self.open.remove(&stream);
            }
            0x6 if flags & 0x1 == 0 => return self.ping(now),
            _ => {}
        }
        false
    }

    fn ping(&mut self, now: Instant) -> bool {
        let last = self.last_ping.replace(now);
        if std::mem::take(&mut self.forgiven) {
            self.strikes = 0;
            return false;
        }
        let least = if self.open.is_empty() {
            WITHOUT_STREAMS
        } else {
            self.min_time
        };
        if last.is_some_and(|l| now.duration_since(l) < least) {
            self.strikes += 1;
        }
        self.strikes > MAX_STRIKES
    }

    /// Bytes the server wrote, in order.
    pub(crate) fn server_bytes(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 9 {
                break;
            }
            self.have = 0;
            let h = self.header;
            self.skip = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            match h[3] {
                DATA | HEADERS => {
                    self.forgiven = true;
                    if h[4] & END_STREAM != 0 {
                        self.open.remove(&stream);
                    }
                }
                RST_STREAM => {
                    self.open.remove(&stream);
                }
                _ => {}
            }
        }
    }

    /// Whether the server's bytes so far end at a frame boundary (a frame may be inserted).
    pub(crate) fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0
    }

    /// grpc-go's GOAWAY for too many pings.
    pub(crate) fn goaway(&self) -> Vec<u8> {
        let debug = b"too_many_pings";
        let len = 8 + debug.len();
        let mut f = Vec::with_capacity(9 + len);
        f.extend_from_slice(&u32::try_from(len).unwrap_or(0).to_be_bytes()[1..]);
        f.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&self.last_stream.to_be_bytes());
        f.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        f.extend_from_slice(debug);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_too_often_on_a_stream_end_the_connection_at_the_third_strike() {
        let mut p = Pings::new(Duration::from_secs(5));
        let t = Instant::now();
        assert!(!p.client_frame(HEADERS, 0x4, 1, t));
        let s = Duration::from_secs(1);
        assert!(!p.client_frame(0x6, 0, 0, t));
        assert!(!p.client_frame(0x6, 0, 0, t + s));
        assert!(!p.client_frame(0x6, 0, 0, t + 2 * s));
        assert!(!p.client_frame(0x6, 0x1, 0, t + 2 * s), "an ACK is no ping");
        assert!(p.client_frame(0x6, 0, 0, t + 3 * s));
        let f = p.goaway();
        assert_eq!(&f[..9], &[0, 0, 22, GOAWAY, 0, 0, 0, 0, 0]);
        assert_eq!(&f[9..17], &[0, 0, 0, 1, 0, 0, 0, 0xb]);
        assert_eq!(&f[17..], b"too_many_pings");
    }

    #[test]
    fn pings_at_the_minimum_time_or_after_server_data_are_fine() {
        let mut p = Pings::new(Duration::from_secs(5));
        let t = Instant::now();
        p.client_frame(HEADERS, 0x4, 1, t);
        for i in 0..10 {
            assert!(!p.client_frame(0x6, 0, 0, t + Duration::from_secs(5 * i)));
        }
        let mut q = Pings::new(Duration::from_secs(5));
        q.client_frame(HEADERS, 0x4, 1, t);
        for i in 0..10 {
            // A DATA frame of 3 bytes, split across writes.
            q.server_bytes(&[0, 0, 3, DATA, 0]);
            q.server_bytes(&[0, 0, 0, 1, 7]);
            assert!(!q.at_boundary());
            q.server_bytes(&[8, 9]);
            assert!(q.at_boundary());
            assert!(!q.client_frame(0x6, 0, 0, t + Duration::from_millis(i)));
        }
    }

    #[test]
    fn without_streams_the_least_time_is_two_hours() {
        let mut p = Pings::new(Duration::from_secs(5));
        let t = Instant::now();
        p.client_frame(HEADERS, 0x5, 1, t);
        // The server ends the stream (trailers with END_STREAM).
        p.server_bytes(&[0, 0, 0, HEADERS, 0x5, 0, 0, 0, 1]);
        let m = Duration::from_secs(60);
        assert!(!p.client_frame(0x6, 0, 0, t)); // forgiven by the server's HEADERS
        assert!(!p.client_frame(0x6, 0, 0, t + m));
        assert!(!p.client_frame(0x6, 0, 0, t + 2 * m));
        assert!(p.client_frame(0x6, 0, 0, t + 3 * m));
    }
}
