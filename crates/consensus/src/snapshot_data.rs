//! The bytes of a Raft snapshot as openraft reads and writes them: a file, or a point in the
//! store that is written out only when someone reads it.
//!
//! A persistent engine is its own snapshot: building one records only where it stands, and
//! the bytes are made when the leader sends them to a follower the log no longer reaches, into
//! a file without a name (removed as soon as it is created), so they take disk space only
//! while they are sent and a crash leaves nothing behind.

use std::future::Future;
use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// What writes the bytes out, on a blocking thread, into a file positioned at its start.
type Make = Box<dyn FnOnce() -> io::Result<std::fs::File> + Send>;

/// A snapshot's bytes: a file, or one made on the first read, seek or write.
pub struct SnapshotData {
    state: State,
    /// A seek asked for before the file existed, made once it does.
    seek: Option<SeekFrom>,
    /// The bytes were received from the leader into this member's incoming snapshot file.
    received: bool,
}

enum State {
    File(tokio::fs::File),
    Deferred(Make),
    Making(tokio::task::JoinHandle<io::Result<std::fs::File>>),
    /// Making the file failed; every later call answers this.
    Failed(io::ErrorKind, String),
}

impl SnapshotData {
    /// The bytes in `file`.
    pub(crate) fn file(file: tokio::fs::File) -> Self {
        Self {
            state: State::File(file),
            seek: None,
            received: false,
        }
    }

    /// The bytes received from the leader in `file`, this member's incoming snapshot file.
    pub(crate) fn received(file: tokio::fs::File) -> Self {
        Self {
            received: true,
            ..Self::file(file)
        }
    }

    /// Bytes that `make` writes out when they are first used; never, if they are not.
    pub(crate) fn deferred(
        make: impl FnOnce() -> io::Result<std::fs::File> + Send + 'static,
    ) -> Self {
        Self {
            state: State::Deferred(Box::new(make)),
            seek: None,
            received: false,
        }
    }

    /// The incoming snapshot file, if these bytes were received into it; else the bytes back.
    pub(crate) fn into_received(self) -> Result<tokio::fs::File, Box<Self>> {
        match self.state {
            State::File(f) if self.received => Ok(f),
            state => Err(Box::new(Self { state, ..self })),
        }
    }

    /// Makes the file if it is not made yet.
    fn poll_file(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut tokio::fs::File>> {
        loop {
            match &mut self.state {
                State::File(_) => break,
                State::Deferred(_) => {
                    let taken = std::mem::replace(
                        &mut self.state,
                        State::Failed(io::ErrorKind::Other, "snapshot not made".into()),
                    );
                    if let State::Deferred(make) = taken {
                        self.state = State::Making(tokio::task::spawn_blocking(make));
                    }
                }
                State::Making(handle) => {
                    let made = ready!(Pin::new(handle).poll(cx));
                    self.state = match made {
                        Ok(Ok(file)) => State::File(tokio::fs::File::from_std(file)),
                        Ok(Err(e)) => State::Failed(e.kind(), e.to_string()),
                        Err(e) => State::Failed(io::ErrorKind::Other, e.to_string()),
                    };
                }
                State::Failed(kind, cause) => {
                    return Poll::Ready(Err(io::Error::new(*kind, cause.clone())))
                }
            }
        }
        match &mut self.state {
            State::File(file) => Poll::Ready(Ok(file)),
            _ => Poll::Ready(Err(io::Error::other("snapshot not made"))),
        }
    }

    /// Makes the file and any seek asked for before it existed.
    fn poll_settled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut tokio::fs::File>> {
        if self.seek.is_some() {
            ready!(Pin::new(&mut *self).poll_complete(cx))?;
        }
        self.poll_file(cx)
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let file = ready!(self.get_mut().poll_settled(cx))?;
        Pin::new(file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let file = ready!(self.get_mut().poll_settled(cx))?;
        Pin::new(file).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let file = ready!(self.get_mut().poll_settled(cx))?;
        Pin::new(file).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let file = ready!(self.get_mut().poll_settled(cx))?;
        Pin::new(file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        match &mut this.state {
            State::File(file) if this.seek.is_none() => Pin::new(file).start_seek(position),
            _ => {
                this.seek = Some(position);
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let this = self.get_mut();
        let seek = this.seek.take();
        let file = match this.poll_file(cx) {
            Poll::Ready(Ok(file)) => file,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                this.seek = seek;
                return Poll::Pending;
            }
        };
        if let Some(position) = seek {
            Pin::new(&mut *file).start_seek(position)?;
        }
        Pin::new(file).poll_complete(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};

    #[tokio::test]
    async fn deferred_bytes_are_made_once_on_first_use_and_seek_like_a_file() {
        use std::io::Write;
        let made = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = std::sync::Arc::clone(&made);
        let mut data = SnapshotData::deferred(move || {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut f = tempfile::tempfile()?;
            f.write_all(b"0123456789")?;
            std::io::Seek::rewind(&mut f)?;
            Ok(f)
        });
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(data.seek(SeekFrom::End(0)).await.unwrap(), 10);
        assert_eq!(data.seek(SeekFrom::Start(4)).await.unwrap(), 4);
        let mut rest = String::new();
        data.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "456789");
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failure_to_make_the_bytes_is_an_error_not_a_panic() {
        let mut data = SnapshotData::deferred(|| Err(io::Error::other("disk gone")));
        let mut buf = Vec::new();
        let e = data.read_to_end(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("disk gone"), "{e}");
        assert!(data.seek(SeekFrom::Start(0)).await.is_err());
    }
}
