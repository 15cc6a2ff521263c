//! Accepts etcdctl 3.4's `:authority` of `http://host:port` on HTTP/2 connections.
//!
//! For some commands (`endpoint status`, `defrag`) etcd 3.4's client dials the endpoint as
//! written, scheme included, and sends it as the `:authority` pseudo-header. etcd accepts that;
//! the `h2` crate under tonic rejects it as malformed and resets the stream. This listener
//! wrapper sits between the socket and `h2`: it reads the client's HTTP/2 frames, decodes each
//! header block with its own HPACK decoder (kept in step with the client's encoder), strips a
//! scheme from `:authority`, and re-encodes the block with its own HPACK encoder (which `h2`'s
//! decoder then follows). Every other frame, and every HTTP/1 connection, passes unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

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

/// A TCP listener whose connections get their `:authority` fixed (and `TCP_NODELAY`).
pub struct FixAuthority(pub TcpListener);

impl axum::serve::Listener for FixAuthority {
    type Io = Fixed<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
        // Small gRPC answers must not wait for Nagle's algorithm (40 ms with delayed ACKs).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(cause = %e, "could not set TCP_NODELAY");
        }
        (Fixed::new(stream), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
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
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
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
            decoder: Decoder::new(),
            encoder: Encoder::new(),
        }
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
        while self.raw.len() - at >= FRAME_HEADER {
            let h = &self.raw[at..at + FRAME_HEADER];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
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
        let Ok(headers) = self.decoder.decode(&block.fragment) else {
            self.mode = Mode::Pass;
            self.out.append(&mut self.raw);
            return;
        };
        let headers: Vec<(Vec<u8>, Vec<u8>)> = headers
            .into_iter()
            .map(|(name, value)| {
                if name == b":authority" {
                    (name, strip_scheme(&value).to_vec())
                } else {
                    (name, value)
                }
            })
            .collect();
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut first = true;
        if chunks.peek().is_none() {
            self.push_frame(HEADERS, END_HEADERS | end_stream(&block), block.stream, &[]);
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let kind = if first { HEADERS } else { CONTINUATION };
            let mut flags = if last { END_HEADERS } else { 0 };
            if first {
                flags |= end_stream(&block);
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

impl<S: AsyncRead + Unpin> AsyncRead for Fixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
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

impl<S: AsyncWrite + Unpin> AsyncWrite for Fixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
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
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
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
