//! Accepts etcdctl 3.4's `:authority` of `http://host:port` on HTTP/2 connections.
//!
//! For some commands (`endpoint status`, `defrag`) etcd 3.4's client dials the endpoint as
//! written, scheme included, and sends it as the `:authority` pseudo-header. etcd accepts that;
//! the `h2` crate under tonic rejects it as malformed and resets the stream. This listener
//! wrapper sits between the socket and `h2`: it reads the client's HTTP/2 frames and walks each
//! header block's HPACK representations without decoding them, copying every byte except a
//! literal `:authority` value with a scheme, which it re-emits without it. Clients send that
//! literal once and then refer to it in the dynamic table, where `h2` now holds the fixed value.
//! The fixed entry is shorter than the client thinks, so `h2`'s table can only evict later than
//! the client's, never earlier: every index the client uses still names the same entry. Every
//! other frame, and every HTTP/1 connection, passes unchanged; frames that are not part of a
//! header block pass as their bytes arrive, so no more than one header frame is ever held.
//!
//! The listener also caps the connections open at once (`--max-client-connections`): each
//! holds a permit, and one accepted over the cap is closed at once.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use loona_hpack::huffman::HuffmanDecoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::coalesce::Coalesced;
use crate::tls::{MaybeTls, Security};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame `h2` accepts unless told otherwise (SETTINGS_MAX_FRAME_SIZE default).
const MAX_FRAME: usize = 16_384;
/// A header block longer than this is left alone (and `h2` will refuse it itself).
const MAX_BLOCK: usize = 1 << 20;

/// Connections closed at accept because `--max-client-connections` were open.
const REFUSED: &str = "metastore_client_connections_refused_total";

/// Where a client listener accepts: a TCP port, or a Unix domain socket (`unix://` URLs).
pub enum ClientListener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix domain socket.
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

impl From<TcpListener> for ClientListener {
    fn from(l: TcpListener) -> Self {
        ClientListener::Tcp(l)
    }
}

#[cfg(unix)]
impl From<tokio::net::UnixListener> for ClientListener {
    fn from(l: tokio::net::UnixListener) -> Self {
        ClientListener::Unix(l)
    }
}

/// A client's address: an IP address and port, or the Unix socket's (unnamed) peer.
#[derive(Debug)]
pub enum ClientAddr {
    /// Over TCP.
    Tcp(std::net::SocketAddr),
    /// Over a Unix domain socket.
    Unix,
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAddr::Tcp(a) => a.fmt(f),
            ClientAddr::Unix => f.write_str("unix socket"),
        }
    }
}

/// A TCP listener whose connections get their `:authority` fixed (and `TCP_NODELAY`), at most
/// as many open at once as `connections` has permits (shared by every client listener).
pub struct FixAuthority {
    listener: ClientListener,
    connections: Arc<Semaphore>,
    security: Security,
    /// `--grpc-keepalive-min-time`: clients pinging more often are sent away.
    min_ping_time: Option<std::time::Duration>,
}

impl FixAuthority {
    /// Serves `listener`, each connection holding one of `connections`' permits, secured by
    /// `security` (TLS is terminated below the rewriting).
    pub fn new(
        listener: impl Into<ClientListener>,
        connections: Arc<Semaphore>,
        security: Security,
    ) -> Self {
        Self {
            listener: listener.into(),
            connections,
            security,
            min_ping_time: None,
        }
    }

    /// The same, sending GOAWAY (ENHANCE_YOUR_CALM, "too_many_pings") to a client that pings
    /// more often than `min_time` allows, as grpc-go's keepalive enforcement in etcd does
    /// ([`crate::pings`]).
    pub fn with_min_ping_time(mut self, min_time: std::time::Duration) -> Self {
        self.min_ping_time = Some(min_time);
        self
    }
}

impl axum::serve::Listener for FixAuthority {
    type Io = Fixed<Coalesced<MaybeTls>>;
    type Addr = ClientAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr): (crate::tls::Socket, _) = match &mut self.listener {
                ClientListener::Tcp(l) => {
                    let (stream, addr) = axum::serve::Listener::accept(l).await;
                    // Small gRPC answers must not wait for Nagle's algorithm (40 ms with
                    // delayed ACKs).
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(cause = %e, "could not set TCP_NODELAY");
                    }
                    (stream.into(), ClientAddr::Tcp(addr))
                }
                #[cfg(unix)]
                ClientListener::Unix(l) => {
                    let (stream, _) = axum::serve::Listener::accept(l).await;
                    (stream.into(), ClientAddr::Unix)
                }
            };
            let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
                // Closed unread: the client sees its connection end at once.
                metrics::counter!(REFUSED).increment(1);
                tracing::debug!(%addr, "connection closed: --max-client-connections are open");
                continue;
            };
            let common_name = Arc::new(std::sync::OnceLock::new());
            let secured = self
                .security
                .wrap_noting(stream, Some(Arc::clone(&common_name)));
            let mut io = Fixed::new(Coalesced::new(secured));
            io.permit = Some(permit);
            io.common_name = Some(common_name);
            io.pings = self.min_ping_time.map(crate::pings::Pings::new);
            return (io, addr);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        match &self.listener {
            ClientListener::Tcp(l) => l.local_addr().map(ClientAddr::Tcp),
            #[cfg(unix)]
            ClientListener::Unix(_) => Ok(ClientAddr::Unix),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Not yet known whether the client speaks HTTP/2.
    Detect,
    /// HTTP/2: header blocks are rewritten.
    Http2,
    /// HTTP/1, or a block we could not decode: bytes pass as they come.
    Pass,
}

/// A header block being gathered from HEADERS and CONTINUATION frames.
struct Block {
    stream: [u8; 4],
    end_stream: bool,
    fragment: Vec<u8>,
}

/// A connection whose inbound HTTP/2 header blocks are rewritten.
pub struct Fixed<S> {
    inner: S,
    mode: Mode,
    /// Bytes read from the socket, not yet processed.
    raw: Vec<u8>,
    /// Processed bytes waiting to be handed to the reader.
    out: Vec<u8>,
    out_pos: usize,
    block: Option<Block>,
    /// Bytes of a frame outside any header block still to pass on as they come.
    passing: usize,
    /// The connection's place under the connection cap, given back when it closes.
    permit: Option<OwnedSemaphorePermit>,
    /// The verified client certificate's common name, once the TLS handshake is done.
    common_name: Option<Arc<std::sync::OnceLock<String>>>,
    /// Ping accounting, when `--grpc-keepalive-min-time` is enforced (HTTP/2 only).
    pings: Option<crate::pings::Pings>,
    /// Whether the connection is being sent away for its pings.
    calm: Calm,
}

/// A connection's way out after too many pings.
#[derive(Debug, PartialEq, Eq)]
enum Calm {
    /// Nothing to do.
    Fine,
    /// GOAWAY is due once the server's writes reach a frame boundary.
    Due,
    /// GOAWAY is being written (the bytes, and how many are written).
    Sending(Vec<u8>, usize),
    /// Sent: the reader sees the connection end, and writes are dropped.
    Closed,
}

impl<S> Fixed<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            mode: Mode::Detect,
            raw: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            block: None,
            passing: 0,
            permit: None,
            common_name: None,
            pings: None,
            calm: Calm::Fine,
        }
    }

    /// Notes a client frame header for the ping policy.
    fn client_frame(&mut self, kind: u8, flags: u8, stream: [u8; 4]) {
        let Some(pings) = &mut self.pings else {
            return;
        };
        let stream = u32::from_be_bytes(stream) & 0x7fff_ffff;
        if pings.client_frame(kind, flags, stream, std::time::Instant::now())
            && self.calm == Calm::Fine
        {
            self.calm = Calm::Due;
        }
    }

    /// Where the connection's verified client certificate's common name will be, if it is TLS.
    pub fn common_name(&self) -> Option<Arc<std::sync::OnceLock<String>>> {
        self.common_name.clone()
    }

    /// Moves what can be decided from `raw` to `out`.
    fn process(&mut self, eof: bool) {
        if self.mode == Mode::Detect {
            let n = self.raw.len().min(PREFACE.len());
            if self.raw[..n] != PREFACE[..n] {
                self.mode = Mode::Pass;
            } else if n == PREFACE.len() {
                self.mode = Mode::Http2;
                self.out.extend(self.raw.drain(..n));
            } else if eof {
                self.mode = Mode::Pass;
            }
        }
        if self.mode == Mode::Pass {
            self.out.append(&mut self.raw);
            return;
        }
        if self.mode != Mode::Http2 {
            return;
        }
        let mut at = 0;
        loop {
            if self.passing > 0 {
                let n = self.passing.min(self.raw.len() - at);
                self.out.extend_from_slice(&self.raw[at..at + n]);
                at += n;
                self.passing -= n;
                if self.passing > 0 {
                    break;
                }
            }
            if self.raw.len() - at < FRAME_HEADER {
                break;
            }
            let h = &self.raw[at..at + FRAME_HEADER];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let in_block = matches!(h[3], HEADERS | CONTINUATION) || self.block.is_some();
            if !in_block {
                self.client_frame(h[3], h[4], [h[5], h[6], h[7], h[8]]);
                // Nothing to rewrite: its bytes go on as they come, whatever length it claims.
                self.out.extend_from_slice(&self.raw[at..at + FRAME_HEADER]);
                at += FRAME_HEADER;
                self.passing = len;
                continue;
            }
            if len > MAX_FRAME {
                // Longer than `h2` accepts: it refuses the frame itself; nothing is gathered.
                self.give_up(at);
                return;
            }
            if self.raw.len() - at < FRAME_HEADER + len {
                break;
            }
            let (kind, flags) = (h[3], h[4]);
            let stream = [h[5], h[6], h[7], h[8]];
            let frame = at..at + FRAME_HEADER + len;
            let payload = at + FRAME_HEADER..at + FRAME_HEADER + len;
            at += FRAME_HEADER + len;
            match kind {
                HEADERS if self.block.is_none() => {
                    self.client_frame(kind, flags, stream);
                    let Some(fragment) = header_fragment(&self.raw[payload], flags) else {
                        self.give_up(frame.start);
                        return;
                    };
                    let block = Block {
                        stream,
                        end_stream: flags & END_STREAM != 0,
                        fragment: fragment.to_vec(),
                    };
                    self.block = Some(block);
                    if flags & END_HEADERS != 0 {
                        self.finish_block();
                    }
                }
                CONTINUATION if self.block.is_some() => {
                    let fragment = self.raw[payload].to_vec();
                    if let Some(block) = &mut self.block {
                        block.fragment.extend_from_slice(&fragment);
                        if block.fragment.len() > MAX_BLOCK {
                            self.give_up(frame.start);
                            return;
                        }
                    }
                    if flags & END_HEADERS != 0 {
                        self.finish_block();
                    }
                }
                _ if self.block.is_some() => {
                    // A frame inside a header block is a protocol error; let h2 say so.
                    self.give_up(frame.start);
                    return;
                }
                _ => self.out.extend_from_slice(&self.raw[frame]),
            }
        }
        self.raw.drain(..at);
    }

    /// Stops rewriting: passes everything from `from` on as it is. Used only where the
    /// connection is already broken, so `h2` reports the error itself.
    fn give_up(&mut self, from: usize) {
        self.mode = Mode::Pass;
        self.block = None;
        self.out.extend(self.raw.drain(..).skip(from));
    }

    fn finish_block(&mut self) {
        let Some(block) = self.block.take() else {
            return;
        };
        let Some(fixed) = fix_block(&block.fragment) else {
            // Not HPACK we can walk: `h2` will refuse it itself.
            self.mode = Mode::Pass;
            self.push_frames(&block, &block.fragment);
            self.out.append(&mut self.raw);
            return;
        };
        self.push_frames(&block, &fixed);
    }

    /// Emits `encoded` as a HEADERS frame and as many CONTINUATION frames as it needs.
    fn push_frames(&mut self, block: &Block, encoded: &[u8]) {
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut first = true;
        if chunks.peek().is_none() {
            self.push_frame(HEADERS, END_HEADERS | end_stream(block), block.stream, &[]);
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let kind = if first { HEADERS } else { CONTINUATION };
            let mut flags = if last { END_HEADERS } else { 0 };
            if first {
                flags |= end_stream(block);
            }
            self.push_frame(kind, flags, block.stream, chunk);
            first = false;
        }
    }

    fn push_frame(&mut self, kind: u8, flags: u8, stream: [u8; 4], payload: &[u8]) {
        let len = payload.len();
        self.out
            .extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
        self.out.extend_from_slice(&stream);
        self.out.extend_from_slice(payload);
    }
}

fn end_stream(block: &Block) -> u8 {
    if block.end_stream {
        END_STREAM
    } else {
        0
    }
}

/// The header block fragment of a HEADERS frame's payload, without padding and priority.
fn header_fragment(payload: &[u8], flags: u8) -> Option<&[u8]> {
    let mut start = 0;
    let mut end = payload.len();
    if flags & PADDED != 0 {
        let pad = usize::from(*payload.first()?);
        start += 1;
        end = end.checked_sub(pad)?;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    payload.get(start..end)
}

/// `http://host:port` → `host:port`; anything else unchanged.
fn strip_scheme(value: &[u8]) -> &[u8] {
    for scheme in [&b"http://"[..], b"https://"] {
        if let Some(rest) = value.strip_prefix(scheme) {
            return rest.strip_suffix(b"/").unwrap_or(rest);
        }
    }
    value
}

/// The static table index of `:authority` (RFC 7541, appendix A).
const AUTHORITY_INDEX: u64 = 1;

/// Reads an HPACK integer with a `prefix`-bit prefix at `*at`, moving past it.
fn read_int(block: &[u8], at: &mut usize, prefix: u32) -> Option<u64> {
    let max = (1u64 << prefix) - 1;
    let first = u64::from(*block.get(*at)?) & max;
    *at += 1;
    if first < max {
        return Some(first);
    }
    let mut value = max;
    let mut shift = 0u32;
    loop {
        let byte = *block.get(*at)?;
        *at += 1;
        value = value.checked_add(u64::from(byte & 0x7f).checked_shl(shift)?)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
        shift += 7;
        if shift > 56 {
            return None;
        }
    }
}

/// Appends an HPACK integer with a `prefix`-bit prefix whose first byte carries `flags`.
fn write_int(out: &mut Vec<u8>, flags: u8, prefix: u32, value: u64) {
    let max = (1u64 << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Reads an HPACK string at `*at`: whether it is Huffman-coded, and its raw bytes.
fn read_string<'a>(block: &'a [u8], at: &mut usize) -> Option<(bool, &'a [u8])> {
    let huffman = *block.get(*at)? & 0x80 != 0;
    let len = usize::try_from(read_int(block, at, 7)?).ok()?;
    let bytes = block.get(*at..at.checked_add(len)?)?;
    *at += len;
    Some((huffman, bytes))
}

fn string_value(huffman: bool, raw: &[u8]) -> Option<Vec<u8>> {
    if huffman {
        HuffmanDecoder::new().decode(raw).ok()
    } else {
        Some(raw.to_vec())
    }
}

/// The header block with every literal `:authority` value stripped of a scheme; the same
/// bytes otherwise. `None` when the block is not valid HPACK.
fn fix_block(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len());
    let mut at = 0;
    while at < block.len() {
        let start = at;
        let first = block[at];
        let (flags, prefix) = match first {
            b if b & 0x80 != 0 => {
                read_int(block, &mut at, 7)?;
                out.extend_from_slice(&block[start..at]);
                continue;
            }
            b if b & 0xe0 == 0x20 => {
                read_int(block, &mut at, 5)?;
                out.extend_from_slice(&block[start..at]);
                continue;
            }
            b if b & 0xc0 == 0x40 => (0x40, 6),
            b => (b & 0xf0, 4),
        };
        let name_index = read_int(block, &mut at, prefix)?;
        let is_authority = if name_index == 0 {
            let (huffman, raw) = read_string(block, &mut at)?;
            // Only a name that could be `:authority` is worth decoding.
            (huffman || raw.first() == Some(&b':'))
                && string_value(huffman, raw)?.as_slice() == b":authority"
        } else {
            name_index == AUTHORITY_INDEX
        };
        let (huffman, raw) = read_string(block, &mut at)?;
        if is_authority {
            let value = string_value(huffman, raw)?;
            let stripped = strip_scheme(&value);
            if stripped.len() != value.len() {
                write_int(&mut out, flags, prefix, AUTHORITY_INDEX);
                write_int(&mut out, 0, 7, stripped.len() as u64);
                out.extend_from_slice(stripped);
                continue;
            }
        }
        out.extend_from_slice(&block[start..at]);
    }
    Some(out)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Fixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if matches!(this.calm, Calm::Due | Calm::Sending(..)) {
                if let Poll::Ready(Err(e)) = this.send_away(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            match this.calm {
                Calm::Closed => return Poll::Ready(Ok(())),
                Calm::Sending(..) => return Poll::Pending,
                Calm::Fine | Calm::Due => {}
            }
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let filled = read.filled();
                    if filled.is_empty() {
                        // End of stream: hand over whatever is left as it is.
                        this.process(true);
                        this.out.append(&mut this.raw);
                        if this.out.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    this.raw.extend_from_slice(filled);
                    this.process(false);
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> Fixed<S> {
    /// Writes GOAWAY once the server's writes are at a frame boundary, then flushes; ready
    /// when that is done, or when it must wait for the boundary.
    fn send_away(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.calm == Calm::Due {
            match &self.pings {
                Some(p) if p.at_boundary() => self.calm = Calm::Sending(p.goaway(), 0),
                _ => return Poll::Ready(Ok(())),
            }
        }
        while let Calm::Sending(bytes, at) = &mut self.calm {
            if *at == bytes.len() {
                match Pin::new(&mut self.inner).poll_flush(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(result) => {
                        self.calm = Calm::Closed;
                        tracing::warn!(
                            "client connection sent away (GOAWAY too_many_pings): it pinged \
                             more often than --grpc-keepalive-min-time allows"
                        );
                        return Poll::Ready(result);
                    }
                }
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*at..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    self.calm = Calm::Closed;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(0)) => {
                    self.calm = Calm::Closed;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *at += n,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Fixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pings.is_none() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.mode != Mode::Http2 {
            // HTTP/1, or frames we stopped following: no policy.
            this.pings = None;
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if matches!(this.calm, Calm::Sending(..) | Calm::Closed) {
            if this.send_away(cx).is_pending() {
                return Poll::Pending;
            }
            // The connection is being closed: what the server still writes goes nowhere.
            return Poll::Ready(Ok(buf.len()));
        }
        let n = match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        if let Some(p) = &mut this.pings {
            p.server_bytes(&buf[..n]);
        }
        if this.calm == Calm::Due {
            // Sent now if it can be; else by the next read or write.
            let _ = this.send_away(cx);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.pings.is_some() {
            // The ping policy follows the bytes written: one slice at a time.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.pings.is_none() && self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use loona_hpack::{Decoder, Encoder};

    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    /// Runs client bytes through the rewriter and decodes the header blocks it produced.
    fn rewrite(input: &[u8]) -> (Vec<u8>, Vec<Headers>) {
        let mut fixed = Fixed::new(());
        for piece in input.chunks(7) {
            fixed.raw.extend_from_slice(piece);
            fixed.process(false);
        }
        let out = fixed.out.clone();
        let mut blocks = Vec::new();
        if out.starts_with(PREFACE) {
            let mut decoder = Decoder::new();
            let mut at = PREFACE.len();
            let mut block = Vec::new();
            while at < out.len() {
                let len = (usize::from(out[at]) << 16)
                    | (usize::from(out[at + 1]) << 8)
                    | usize::from(out[at + 2]);
                let (kind, flags) = (out[at + 3], out[at + 4]);
                let payload = &out[at + 9..at + 9 + len];
                if kind == HEADERS || kind == CONTINUATION {
                    block.extend_from_slice(payload);
                    if flags & END_HEADERS != 0 {
                        blocks.push(decoder.decode(&block).unwrap());
                        block.clear();
                    }
                }
                at += 9 + len;
            }
        }
        (out, blocks)
    }

    #[test]
    fn authority_with_a_scheme_loses_it() {
        let mut client = Encoder::new();
        let first = client.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"http://127.0.0.1:2379"),
            (b":path", b"/etcdserverpb.Maintenance/Status"),
        ]);
        let second = client.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"http://127.0.0.1:2379"),
            (b":path", b"/etcdserverpb.KV/Range"),
        ]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(HEADERS, END_HEADERS, 1, &first));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA
                                                                // The second block split over HEADERS and CONTINUATION, with padding.
        let (a, b) = second.split_at(second.len() / 2);
        let mut padded = vec![3u8];
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | END_STREAM, 3, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, b));
        let (out, blocks) = rewrite(&input);
        assert!(out.starts_with(PREFACE));
        assert_eq!(blocks.len(), 2);
        for block in &blocks {
            let authority = block.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(authority.1, b"127.0.0.1:2379");
        }
        assert_eq!(
            blocks[1][2].1, b"/etcdserverpb.KV/Range",
            "the dynamic tables stayed in step"
        );
        let data = frame(0x0, END_STREAM, 1, b"\0\0\0\0\0");
        assert!(
            out.windows(data.len()).any(|w| w == data.as_slice()),
            "other frames pass unchanged"
        );
    }

    #[test]
    fn evictions_keep_the_tables_in_step() {
        let mut client = Encoder::new();
        let mut input = PREFACE.to_vec();
        let values: Vec<Vec<u8>> = (0..60u8)
            .map(|i| vec![b'a' + i % 26; 100 + usize::from(i)])
            .collect();
        for (i, value) in values.iter().enumerate() {
            let block = client.encode([
                (&b":method"[..], &b"POST"[..]),
                (b":authority", b"http://127.0.0.1:2379"),
                (b"x-n", value.as_slice()),
            ]);
            input.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i as u32, &block));
        }
        let (_, blocks) = rewrite(&input);
        assert_eq!(blocks.len(), values.len());
        for (block, value) in blocks.iter().zip(&values) {
            assert_eq!(
                block[1],
                (b":authority".to_vec(), b"127.0.0.1:2379".to_vec())
            );
            assert_eq!(block[2], (b"x-n".to_vec(), value.clone()));
        }
    }

    #[test]
    fn every_literal_form_is_fixed() {
        // Literal without indexing (0000), never indexed (0001), and a literal name.
        let mut block = Vec::new();
        write_int(&mut block, 0x00, 4, AUTHORITY_INDEX);
        write_int(&mut block, 0, 7, 11);
        block.extend_from_slice(b"http://a:1/");
        write_int(&mut block, 0x10, 4, AUTHORITY_INDEX);
        write_int(&mut block, 0, 7, 11);
        block.extend_from_slice(b"https://b:2");
        write_int(&mut block, 0x40, 6, 0);
        write_int(&mut block, 0, 7, 10);
        block.extend_from_slice(b":authority");
        write_int(&mut block, 0, 7, 10);
        block.extend_from_slice(b"http://c:3");
        write_int(&mut block, 0x40, 6, 0);
        write_int(&mut block, 0, 7, 4);
        block.extend_from_slice(b"host");
        write_int(&mut block, 0, 7, 10);
        block.extend_from_slice(b"http://d:4");
        let fixed = fix_block(&block).unwrap();
        let headers = Decoder::new().decode(&fixed).unwrap();
        let values: Vec<&[u8]> = headers.iter().map(|(_, v)| v.as_slice()).collect();
        assert_eq!(values, [&b"a:1"[..], b"b:2", b"c:3", b"http://d:4"]);
        assert_eq!(
            fix_block(&[0x40, 0x05, b'a']),
            None,
            "truncated HPACK is refused"
        );
        assert_eq!(
            fix_block(&[0x82, 0x86]).unwrap(),
            [0x82, 0x86],
            "indexed fields pass"
        );
    }

    #[test]
    fn a_large_frame_passes_as_it_comes_and_nothing_waits_for_its_end() {
        let mut fixed = Fixed::new(());
        fixed.raw.extend_from_slice(PREFACE);
        fixed.process(false);
        // A DATA frame declaring the largest length a frame header can carry.
        let mut input = frame(0x0, 0, 1, &[]);
        input[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
        input.extend(std::iter::repeat_n(7u8, 200 * 1024));
        for piece in input.chunks(1000) {
            fixed.raw.extend_from_slice(piece);
            fixed.process(false);
            assert!(
                fixed.raw.len() <= FRAME_HEADER + MAX_FRAME,
                "{} bytes held back",
                fixed.raw.len()
            );
        }
        assert_eq!(
            fixed.out.len(),
            PREFACE.len() + input.len(),
            "everything passed on"
        );
        // A header frame longer than any h2 accepts is not gathered either: h2 refuses it.
        let mut fixed = Fixed::new(());
        fixed.raw.extend_from_slice(PREFACE);
        let mut headers = frame(HEADERS, END_HEADERS, 1, &[]);
        headers[..3].copy_from_slice(&[0x10, 0x00, 0x00]);
        headers.extend(std::iter::repeat_n(0x82u8, 64 * 1024));
        for piece in headers.chunks(1000) {
            fixed.raw.extend_from_slice(piece);
            fixed.process(false);
        }
        assert!(fixed.raw.len() <= FRAME_HEADER + MAX_FRAME);
        assert_eq!(fixed.out.len(), PREFACE.len() + headers.len());
    }

    #[test]
    fn http1_passes_unchanged() {
        let request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:2379\r\n\r\n";
        let (out, blocks) = rewrite(request);
        assert_eq!(out, request);
        assert!(blocks.is_empty());
    }

    #[test]
    fn schemes_are_stripped() {
        assert_eq!(strip_scheme(b"http://a:1"), b"a:1");
        assert_eq!(strip_scheme(b"https://a:1/"), b"a:1");
        assert_eq!(strip_scheme(b"a:1"), b"a:1");
    }
}
