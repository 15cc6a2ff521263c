//! TLS on the client and peer ports (rustls with the `ring` provider; no OpenSSL).
//!
//! A listener whose URL is `https://` terminates TLS on each accepted connection and hands the
//! decrypted stream to the same path as plaintext (the `:authority` fixer, write coalescing,
//! gRPC and HTTP). The handshake runs inside the connection's first reads and writes, never in
//! the accept loop, so a slow or silent client cannot hold up the others. Every file is read
//! and checked at start: a missing file, a key that does not match its certificate or a CA
//! without certificates stops the server with a message naming the flag, never a plaintext
//! fall-back.

use std::future::Future as _;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use anyhow::{bail, Context as _, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

/// One side's TLS files and whether it demands client certificates (etcd's flag names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain this side presents (PEM).
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PEM).
    pub key_file: Option<PathBuf>,
    /// CA certificates that client certificates must chain to (PEM).
    pub trusted_ca_file: Option<PathBuf>,
    /// Demand a certificate from every client, verified against `trusted_ca_file`.
    pub client_cert_auth: bool,
}

impl TlsFiles {
    /// Whether any TLS setting was given.
    pub fn is_set(&self) -> bool {
        self.cert_file.is_some()
            || self.key_file.is_some()
            || self.trusted_ca_file.is_some()
            || self.client_cert_auth
    }
}

/// The crypto this server uses: ring's, whatever else is linked in.
#[allow(deprecated)] // ring's provider without post-quantum key exchange: aws-lc-rs needs cmake.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain; `flag` names it in errors.
pub fn read_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{flag} {}: cannot read", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{flag} {}: not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        bail!("{flag} {}: holds no certificate", path.display());
    }
    Ok(certs)
}

/// Reads a PEM private key; `flag` names it in errors.
pub fn read_key(path: &Path, flag: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("{flag} {}: no readable PEM private key", path.display()))
}

/// Builds the TLS server configuration for one side; `prefix` is `""` for the client port and
/// `"peer-"` for the peer port (it names the flags in errors).
///
/// # Errors
/// A certificate without a key (or the reverse), unreadable files, a key that does not match
/// the certificate, `--client-cert-auth` without a CA.
pub fn server_config(files: &TlsFiles, prefix: &str) -> Result<Arc<rustls::ServerConfig>> {
    let cert_flag = format!("--{prefix}cert-file");
    let key_flag = format!("--{prefix}key-file");
    let ca_flag = format!("--{prefix}trusted-ca-file");
    let (Some(cert_file), Some(key_file)) = (&files.cert_file, &files.key_file) else {
        bail!("{prefix}TLS needs both {cert_flag} and {key_flag}");
    };
    let certs = read_certs(cert_file, &cert_flag)?;
    let key = read_key(key_file, &key_flag)?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    // etcd 3.4 demands a verified client certificate once a CA file is given, with or without
    // --client-cert-auth.
    let builder = match &files.trusted_ca_file {
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in read_certs(ca_file, &ca_flag)? {
                roots
                    .add(ca)
                    .with_context(|| format!("{ca_flag} {}: bad CA", ca_file.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("{ca_flag} {}", ca_file.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None if files.client_cert_auth => {
            bail!("--{prefix}client-cert-auth needs {ca_flag} to verify client certificates")
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "{key_flag} {} does not fit {cert_flag} {}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    // gRPC needs HTTP/2; /health and /metrics may come over HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How a listener's connections are secured.
#[derive(Clone)]
pub enum Security {
    /// Plaintext (`http://`).
    Plain,
    /// TLS (`https://`).
    Tls(TlsAcceptor),
}

impl Security {
    /// Wraps a freshly accepted connection; TLS handshakes when it is first read or written.
    pub fn wrap(&self, stream: TcpStream) -> MaybeTls {
        match self {
            Security::Plain => MaybeTls::Plain(stream),
            Security::Tls(acceptor) => MaybeTls::Handshake(Box::new(acceptor.accept(stream))),
        }
    }
}

/// A client or peer connection, plaintext or TLS.
pub enum MaybeTls {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS, still handshaking.
    Handshake(Box<tokio_rustls::Accept<TcpStream>>),
    /// TLS, established.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// The handshake failed: every use fails.
    Failed,
}

impl MaybeTls {
    /// Drives the handshake, if one is in progress, to its end.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let MaybeTls::Handshake(accept) = self {
            match ready!(Pin::new(accept.as_mut()).poll(cx)) {
                Ok(stream) => *self = MaybeTls::Tls(Box::new(stream)),
                Err(e) => {
                    tracing::debug!(cause = %e, "TLS handshake failed");
                    *self = MaybeTls::Failed;
                    return Poll::Ready(Err(e));
                }
            }
        }
        if let MaybeTls::Failed = self {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "TLS handshake failed",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        match this {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::Handshake(_) | MaybeTls::Failed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        match this {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::Handshake(_) | MaybeTls::Failed => Poll::Ready(Ok(0)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        match this {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            MaybeTls::Handshake(_) | MaybeTls::Failed => Poll::Ready(Ok(0)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
            MaybeTls::Handshake(_) | MaybeTls::Failed => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        match this {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::Handshake(_) | MaybeTls::Failed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            // Nothing was ever sent over TLS: dropping the socket closes it.
            MaybeTls::Handshake(_) | MaybeTls::Failed => Poll::Ready(Ok(())),
        }
    }
}

/// A listener whose connections are secured by `security` (the peer port's; the client port
/// goes through the `:authority` fixer, which wraps its connections the same way).
pub struct SecureListener {
    listener: tokio::net::TcpListener,
    security: Security,
}

impl SecureListener {
    /// Serves `listener` with `security`.
    pub fn new(listener: tokio::net::TcpListener, security: Security) -> Self {
        Self { listener, security }
    }
}

impl axum::serve::Listener for SecureListener {
    type Io = MaybeTls;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(cause = %e, "could not set TCP_NODELAY");
        }
        (self.security.wrap(stream), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}
