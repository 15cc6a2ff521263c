//! TLS on the client and peer ports (rustls with the `ring` provider; no OpenSSL).
//!
//! A listener whose URL is `https://` terminates TLS on each accepted connection and hands the
//! decrypted stream to the same path as plaintext (`:authority` rewriting, write coalescing,
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
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
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
    /// The only common name a client certificate may carry (`--peer-cert-allowed-cn`).
    pub allowed_cn: Option<String>,
    /// The only host name a client certificate must be valid for (its SAN), as etcd's
    /// `--client-cert-allowed-hostname` and `--peer-cert-allowed-hostname`.
    pub allowed_hostname: Option<String>,
    /// TLS 1.2 cipher suites allowed, by their IANA names (`--cipher-suites`, both sides).
    pub cipher_suites: Option<String>,
    /// Certificate revocation lists (PEM): a client certificate listed is refused
    /// (`--client-crl-file`, `--peer-crl-file`).
    pub crl_file: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether any TLS setting was given.
    pub fn is_set(&self) -> bool {
        self.cert_file.is_some()
            || self.key_file.is_some()
            || self.trusted_ca_file.is_some()
            || self.client_cert_auth
            || self.allowed_cn.is_some()
            || self.allowed_hostname.is_some()
            || self.crl_file.is_some()
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

/// `--auto-tls` and `--peer-auto-tls` (`flag`): a self-signed certificate for `hosts` in
/// `dir` (`cert.pem`, `key.pem`), made on first use and kept, as etcd does in
/// `DATA_DIR/fixtures/client` and `DATA_DIR/fixtures/peer`. The directory is private to this
/// user, so the key is too.
///
/// # Errors
/// The directory or files cannot be created, or the certificate cannot be made.
pub fn self_signed(dir: &Path, hosts: Vec<String>, flag: &str) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.is_file() && key.is_file() {
        return Ok((cert, key));
    }
    mvcc::durable::create_dir_all_synced(dir)
        .with_context(|| format!("{flag}: creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("{flag}: securing {}", dir.display()))?;
    }
    let pair = rcgen::KeyPair::generate().with_context(|| format!("{flag}: generating a key"))?;
    let mut params =
        rcgen::CertificateParams::new(hosts).with_context(|| format!("{flag}: host names"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "etcd");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let made = params
        .self_signed(&pair)
        .with_context(|| format!("{flag}: signing the certificate"))?;
    // The key first: a certificate without its key is never left behind to be reused.
    mvcc::durable::write_synced(&key, pair.serialize_pem().as_bytes())
        .with_context(|| format!("{flag}: writing {}", key.display()))?;
    mvcc::durable::write_synced(&cert, made.pem().as_bytes())
        .with_context(|| format!("{flag}: writing {}", cert.display()))?;
    tracing::info!(cert = %cert.display(), "{flag}: made a self-signed certificate");
    Ok((cert, key))
}

/// The TLS client settings of `--peer-auto-tls`: every member's certificate is self-signed,
/// so, as etcd (Go's `InsecureSkipVerify`), a peer's certificate is not verified and no
/// certificate is presented. The connection is encrypted, but a peer is not authenticated.
pub fn unverified_client_config() -> Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert { provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any server certificate (its chain, names and dates are not looked at); the
/// handshake's signature is still checked, so the peer holds the key of what it presented.
#[derive(Debug)]
struct AnyServerCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The suites of `available` that `names` (comma-separated IANA names, as etcd's
/// `--cipher-suites` takes them) allow. As in Go, the list governs TLS 1.2 only: TLS 1.3's
/// suites are always kept.
///
/// # Errors
/// A name rustls does not offer, in etcd's words.
pub fn cipher_suites(
    available: &[rustls::SupportedCipherSuite],
    names: &str,
) -> Result<Vec<rustls::SupportedCipherSuite>> {
    let wanted: Vec<&str> = names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let name = |s: &rustls::SupportedCipherSuite| format!("{:?}", s.suite());
    for n in &wanted {
        if !available.iter().any(|s| name(s) == *n) {
            bail!("--cipher-suites: unexpected TLS cipher suite {n:?}");
        }
    }
    Ok(available
        .iter()
        .filter(|s| s.tls13().is_some() || wanted.contains(&name(s).as_str()))
        .copied()
        .collect())
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
    let mut provider = (*provider()).clone();
    if let Some(names) = &files.cipher_suites {
        provider.cipher_suites = cipher_suites(&provider.cipher_suites, names)?;
    }
    let provider = Arc::new(provider);
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
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            if let Some(crl_file) = &files.crl_file {
                let crl_flag = if prefix.is_empty() {
                    "--client-crl-file".to_string()
                } else {
                    format!("--{prefix}crl-file")
                };
                // As etcd: the presented certificate is looked up in the list; a certificate
                // whose issuer published no list here is not refused for that.
                verifier = verifier
                    .with_crls(read_crls(crl_file, &crl_flag)?)
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status();
            }
            let verifier = verifier
                .build()
                .with_context(|| format!("{ca_flag} {}", ca_file.display()))?;
            let rule = match (&files.allowed_cn, &files.allowed_hostname) {
                (Some(cn), Some(host)) => bail!(
                    "--{prefix}cert-allowed-cn ({cn:?}) and --{prefix}cert-allowed-hostname \
                     ({host:?}) are mutually exclusive"
                ),
                (Some(cn), None) => Some(Allowed::Cn(cn.clone())),
                (None, Some(host)) => Some(Allowed::Hostname(
                    rustls_pki_types::ServerName::try_from(host.clone()).with_context(|| {
                        format!("--{prefix}cert-allowed-hostname {host:?}: not a host name")
                    })?,
                )),
                (None, None) => None,
            };
            match rule {
                Some(rule) => builder.with_client_cert_verifier(Arc::new(AllowedCn {
                    inner: verifier,
                    rule,
                })),
                None => builder.with_client_cert_verifier(verifier),
            }
        }
        None if files.crl_file.is_some() => {
            bail!("a certificate revocation list needs {ca_flag} to verify client certificates")
        }
        None if files.allowed_cn.is_some() => {
            bail!("--{prefix}cert-allowed-cn needs {ca_flag} to verify client certificates")
        }
        None if files.allowed_hostname.is_some() => {
            bail!("--{prefix}cert-allowed-hostname needs {ca_flag} to verify client certificates")
        }
        None if files.client_cert_auth => {
            bail!("--{prefix}client-cert-auth needs {ca_flag} to verify client certificates")
        }
        None => builder.with_no_client_auth(),
    };
    let resolver = ReloadingCert::new(cert_file, key_file, &cert_flag, &key_flag, provider)?;
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    // gRPC needs HTTP/2; /health and /metrics may come over HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads a PEM file of certificate revocation lists; `flag` names it in errors.
fn read_crls(path: &Path, flag: &str) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .with_context(|| format!("{flag} {}: cannot read", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{flag} {}: not a PEM CRL file", path.display()))?;
    if crls.is_empty() {
        bail!(
            "{flag} {}: holds no certificate revocation list",
            path.display()
        );
    }
    Ok(crls)
}

/// What identifies one version of a file: replacing or rewriting it changes this.
type FileStamp = Option<(std::time::SystemTime, u64, u64)>;

fn stamp(path: &Path) -> FileStamp {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some((meta.modified().ok()?, meta.len(), inode))
}

/// The server certificate, re-read from its files when they change (rotation without a
/// restart, as etcd 3.4 reads them at each handshake). A new pair that cannot be used (a
/// key that does not fit, a file half written) is logged and the previous one kept; the
/// next change is tried again.
#[derive(Debug)]
struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    cert_flag: String,
    key_flag: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: std::sync::Mutex<((FileStamp, FileStamp), Arc<rustls::sign::CertifiedKey>)>,
}

impl ReloadingCert {
    /// Loads the pair now: a pair that does not work stops the server at start.
    fn new(
        cert_file: &Path,
        key_file: &Path,
        cert_flag: &str,
        key_flag: &str,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self> {
        let stamps = (stamp(cert_file), stamp(key_file));
        let key = load_pair(cert_file, key_file, cert_flag, key_flag, &provider)?;
        Ok(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            cert_flag: cert_flag.to_string(),
            key_flag: key_flag.to_string(),
            provider,
            current: std::sync::Mutex::new((stamps, Arc::new(key))),
        })
    }
}

fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    cert_flag: &str,
    key_flag: &str,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<rustls::sign::CertifiedKey> {
    let certs = read_certs(cert_file, cert_flag)?;
    let key = read_key(key_file, key_flag)?;
    let mismatch = || {
        format!(
            "{key_flag} {} does not fit {cert_flag} {}",
            key_file.display(),
            cert_file.display()
        )
    };
    let pair = rustls::sign::CertifiedKey::from_der(certs, key, provider).with_context(mismatch)?;
    pair.keys_match().with_context(mismatch)?;
    Ok(pair)
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let stamps = (stamp(&self.cert_file), stamp(&self.key_file));
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.0 != stamps {
            current.0 = stamps;
            match load_pair(
                &self.cert_file,
                &self.key_file,
                &self.cert_flag,
                &self.key_flag,
                &self.provider,
            ) {
                Ok(pair) => {
                    current.1 = Arc::new(pair);
                    tracing::info!(cert = %self.cert_file.display(), "{} changed: serving the new certificate", self.cert_flag);
                }
                Err(e) => tracing::warn!(
                    cause = format!("{e:#}"),
                    "{} or {} changed but cannot be used; keeping the previous certificate",
                    self.cert_flag,
                    self.key_flag
                ),
            }
        }
        Some(Arc::clone(&current.1))
    }
}

/// Which client certificates [`AllowedCn`] admits past the CA check.
#[derive(Debug)]
enum Allowed {
    /// Those whose subject's common name is this (`--peer-cert-allowed-cn`).
    Cn(String),
    /// Those valid for this host name, by their SAN (`--*-cert-allowed-hostname`).
    Hostname(rustls_pki_types::ServerName<'static>),
}

/// A client verifier that, past the CA check, admits only certificates that `rule` allows
/// (etcd's `--peer-cert-allowed-cn`, `--client-cert-allowed-hostname`,
/// `--peer-cert-allowed-hostname`).
#[derive(Debug)]
struct AllowedCn {
    inner: Arc<dyn ClientCertVerifier>,
    rule: Allowed,
}

impl ClientCertVerifier for AllowedCn {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match &self.rule {
            Allowed::Cn(allowed) => {
                let cn = common_name(end_entity);
                if cn.as_deref() == Some(allowed.as_str()) {
                    return Ok(verified);
                }
                tracing::warn!(cn = ?cn, %allowed, "refused a certificate: its CN is not the allowed one");
            }
            Allowed::Hostname(host) => {
                let valid = rustls::server::ParsedCertificate::try_from(end_entity)
                    .and_then(|cert| rustls::client::verify_server_name(&cert, host));
                if valid.is_ok() {
                    return Ok(verified);
                }
                tracing::warn!(allowed = ?host, "refused a certificate: it is not valid for the allowed host name");
            }
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// One DER element at the start of `der`: (tag, contents, the rest).
fn der_element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The common name in a certificate's subject, if it has one (the first, if several).
pub fn common_name(cert: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
    let (SEQUENCE, certificate, _) = der_element(cert)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = der_element(certificate)? else {
        return None;
    };
    // [0] version (optional), serial, signature algorithm, issuer, validity, subject.
    let (tag, _, rest) = der_element(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    for _ in 0..4 {
        tbs = der_element(tbs)?.2;
    }
    let (SEQUENCE, mut subject, _) = der_element(tbs)? else {
        return None;
    };
    while !subject.is_empty() {
        let (set_tag, mut set, rest) = der_element(subject)?;
        subject = rest;
        if set_tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (_, attribute, rest) = der_element(set)?;
            set = rest;
            let (_, oid, value) = der_element(attribute)?;
            if oid == OID_CN {
                let (_, text, _) = der_element(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

/// A connection's socket: TCP, or a Unix domain socket (`unix://` client URLs, as etcd).
pub enum Socket {
    /// TCP.
    Tcp(TcpStream),
    /// A Unix domain socket.
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl From<TcpStream> for Socket {
    fn from(s: TcpStream) -> Self {
        Socket::Tcp(s)
    }
}

#[cfg(unix)]
impl From<tokio::net::UnixStream> for Socket {
    fn from(s: tokio::net::UnixStream) -> Self {
        Socket::Unix(s)
    }
}

/// Forwards one `AsyncRead`/`AsyncWrite` call to whichever socket this is.
macro_rules! on_socket {
    ($this:expr, $s:ident => $call:expr) => {
        match $this.get_mut() {
            Socket::Tcp($s) => $call,
            #[cfg(unix)]
            Socket::Unix($s) => $call,
        }
    };
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_socket!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_socket!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_socket!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Tcp(s) => s.is_write_vectored(),
            #[cfg(unix)]
            Socket::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_socket!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_socket!(self, s => Pin::new(s).poll_shutdown(cx))
    }
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
    pub fn wrap(&self, stream: impl Into<Socket>) -> MaybeTls {
        self.wrap_noting(stream, None)
    }

    /// [`Security::wrap`], and once the handshake has verified a client certificate, its
    /// common name goes into `common_name` (read by requests, which come after the handshake).
    pub fn wrap_noting(
        &self,
        stream: impl Into<Socket>,
        common_name: Option<Arc<std::sync::OnceLock<String>>>,
    ) -> MaybeTls {
        let stream = stream.into();
        match self {
            Security::Plain => MaybeTls::Plain(stream),
            Security::Tls(acceptor) => {
                MaybeTls::Handshake(Box::new(acceptor.accept(stream)), common_name)
            }
        }
    }
}

/// A client or peer connection, plaintext or TLS.
pub enum MaybeTls {
    /// Plaintext.
    Plain(Socket),
    /// TLS, still handshaking; where to note the client certificate's common name.
    Handshake(
        Box<tokio_rustls::Accept<Socket>>,
        Option<Arc<std::sync::OnceLock<String>>>,
    ),
    /// TLS, established.
    Tls(Box<tokio_rustls::server::TlsStream<Socket>>),
    /// The handshake failed: every use fails.
    Failed,
}

impl MaybeTls {
    /// Drives the handshake, if one is in progress, to its end.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let MaybeTls::Handshake(accept, noted) = self {
            match ready!(Pin::new(accept.as_mut()).poll(cx)) {
                Ok(stream) => {
                    // rustls hands out peer certificates only once they are verified.
                    let cn = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|cert| common_name(cert));
                    if let (Some(slot), Some(cn)) = (noted.as_ref(), cn) {
                        let _ = slot.set(cn);
                    }
                    *self = MaybeTls::Tls(Box::new(stream));
                }
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
            MaybeTls::Handshake(..) | MaybeTls::Failed => Poll::Ready(Ok(())),
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
            MaybeTls::Handshake(..) | MaybeTls::Failed => Poll::Ready(Ok(0)),
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
            MaybeTls::Handshake(..) | MaybeTls::Failed => Poll::Ready(Ok(0)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
            MaybeTls::Handshake(..) | MaybeTls::Failed => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        match this {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::Handshake(..) | MaybeTls::Failed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            // Nothing was ever sent over TLS: dropping the socket closes it.
            MaybeTls::Handshake(..) | MaybeTls::Failed => Poll::Ready(Ok(())),
        }
    }
}

/// A listener whose connections are secured by `security` (the peer port's; the client port
/// goes through `listener::ClientListener`, which wraps its connections the same way).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_are_read_from_the_subject() {
        let issuer_key = rcgen::KeyPair::generate().unwrap();
        let mut issuer_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        issuer_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "the issuer");
        let issuer = rcgen::Issuer::new(issuer_params, issuer_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "org");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "member-1");
        let cert = params.signed_by(&key, &issuer).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("member-1"));
        let mut nameless = rcgen::CertificateParams::new(vec!["a".to_string()]).unwrap();
        nameless.distinguished_name = rcgen::DistinguishedName::new();
        let cert = nameless.signed_by(&key, &issuer).unwrap();
        assert_eq!(common_name(cert.der()), None);
        assert_eq!(common_name(b"\x30\x05junk"), None);
    }

    #[test]
    fn cipher_suites_restrict_tls12_only() {
        let all = provider().cipher_suites.clone();
        let chosen = cipher_suites(&all, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256").unwrap();
        let tls12: Vec<String> = chosen
            .iter()
            .filter(|s| s.tls13().is_none())
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(tls12, ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]);
        assert!(chosen.iter().any(|s| s.tls13().is_some()));
        assert!(chosen.len() < all.len());
        let bad = cipher_suites(&all, "TLS_RSA_WITH_RC4_128_SHA").unwrap_err();
        assert!(
            bad.to_string().contains("unexpected TLS cipher suite"),
            "{bad}"
        );
    }
}
