//! A client connection as the server reads it. Until the first bytes show HTTP/2 it waits;
//! HTTP/1 then passes unchanged. On HTTP/2 it gathers each header block from its HEADERS and
//! CONTINUATION frames and hands on the block with its `:authority` rewritten
//! ([`super::authority`]); frames that are not part of a header block pass as their bytes
//! arrive, so no more than one header frame is ever held. It also counts the client's pings
//! and sends GOAWAY to one pinging too often ([`crate::pings`]), and holds the connection's
//! place under the connection cap until it closes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

use super::authority::rewrite_authority;

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

/// A client connection whose inbound HTTP/2 header blocks are rewritten and pings policed.
pub struct ClientConnection<S> {
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
    pub(super) permit: Option<OwnedSemaphorePermit>,
    /// The verified client certificate's common name, once the TLS handshake is done.
    pub(super) common_name: Option<Arc<std::sync::OnceLock<String>>>,
    /// Ping accounting, when `--grpc-keepalive-min-time` is enforced (HTTP/2 only).
    pub(super) pings: Option<crate::pings::Pings>,
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

impl<S> ClientConnection<S> {
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
        let Some(fixed) = rewrite_authority(&block.fragment) else {
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

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientConnection<S> {
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

impl<S: AsyncWrite + Unpin> ClientConnection<S> {
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

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientConnection<S> {
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
        let mut fixed = ClientConnection::new(());
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
    fn a_large_frame_passes_as_it_comes_and_nothing_waits_for_its_end() {
        let mut fixed = ClientConnection::new(());
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
        let mut fixed = ClientConnection::new(());
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
}
