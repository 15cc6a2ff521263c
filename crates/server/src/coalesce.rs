//! Write coalescing for client connections: many small HTTP/2 frames, one `writev`.
//!
//! `h2` flushes its connection whenever it has written what is queued, so a watch fan-out that
//! hands a thousand streams one small response each costs about a thousand system calls: the
//! connection task wakes after the first stream's frame and flushes it alone. [`Coalesced`]
//! buffers writes and, the first time a flush finds data waiting, yields once (waking itself)
//! instead: every task already runnable — the other streams — gets to queue its frames first,
//! and the next flush writes them together. The wait is one turn of the scheduler, never a
//! timer; the buffer is bounded, and a full buffer is written out before it takes more.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes buffered at most before a write must first send them.
const LIMIT: usize = 256 * 1024;

/// A connection whose writes are gathered until a flush (deferred once per flush).
pub struct Coalesced<S> {
    inner: S,
    buf: Vec<u8>,
    /// How much of `buf` the socket already took.
    sent: usize,
    /// The current flush has already yielded once.
    deferred: bool,
}

impl<S> Coalesced<S> {
    /// Wraps a connection.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            sent: 0,
            deferred: false,
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesced<S> {
    /// Writes out everything buffered.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() >= LIMIT {
            ready!(this.drain(cx))?;
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() >= LIMIT {
            ready!(this.drain(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            this.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.len() > this.sent && !this.deferred {
            // Let every task that is already runnable queue its frames first.
            this.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.drain(cx))?;
        this.deferred = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn writes_arrive_whole_and_in_order_after_a_flush() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut c = Coalesced::new(a);
        let mut expected = Vec::new();
        for i in 0..1_000u32 {
            let chunk = i.to_le_bytes().repeat(100);
            c.write_all(&chunk).await.unwrap();
            expected.extend_from_slice(&chunk);
        }
        c.flush().await.unwrap();
        let mut got = vec![0u8; expected.len()];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        assert!(c.buf.is_empty(), "a flush leaves nothing buffered");
    }

    #[tokio::test]
    async fn a_full_buffer_is_written_before_it_takes_more() {
        // The peer reads slowly through a small pipe: writes must wait, not grow the buffer.
        let (a, mut b) = tokio::io::duplex(4096);
        let mut c = Coalesced::new(a);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            b.read_to_end(&mut all).await.unwrap();
            all.len()
        });
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..20 {
            c.write_all(&chunk).await.unwrap();
            assert!(c.buf.len() <= LIMIT + chunk.len());
        }
        c.shutdown().await.unwrap();
        drop(c);
        assert_eq!(reader.await.unwrap(), 20 * chunk.len());
    }
}
