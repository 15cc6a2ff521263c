//! TLS on the client port: etcdctl 3.4 with certificates against `metastore` and etcd 3.4
//! started with the same certificates (made here with rcgen), and what each refuses.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::harness::{free_port, require_tool, Kind, READY_TIMEOUT};

/// Longest one etcdctl command may take (its own timeouts are shorter).
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// A CA, a certificate for servers (127.0.0.1, localhost) and one for clients, signed by it;
/// and a client certificate from another CA, in PEM files under `dir`.
pub struct Pki {
    /// Where the files are.
    pub dir: tempfile::TempDir,
}

impl Pki {
    /// Makes every file.
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("metastore-pki-")
            .tempdir()
            .expect("temp dir");
        let root = ca("test ca");
        let rogue = ca("rogue ca");
        let issue = |name: &str, issuer: &CertifiedIssuer<'_, KeyPair>, cn: &str| {
            let key = KeyPair::generate().expect("key");
            let mut params =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                    .expect("params");
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, issuer).expect("sign");
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).expect("write");
            std::fs::write(
                dir.path().join(format!("{name}-key.pem")),
                key.serialize_pem(),
            )
            .expect("write");
        };
        std::fs::write(dir.path().join("ca.pem"), root.pem()).expect("write");
        std::fs::write(dir.path().join("rogue-ca.pem"), rogue.pem()).expect("write");
        issue("server", &root, "server");
        issue("client", &root, "root");
        issue("rogue", &rogue, "root");
        issue("alice", &root, "alice");
        issue("nobody", &root, "nobody");
        Pki { dir }
    }

    /// The path of `name` (`ca.pem`, `server.pem`, `server-key.pem`, `client.pem`, ...).
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn ca(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
}

/// One server serving clients over `https://` only, killed when dropped.
pub(crate) struct TlsServer {
    kind: Kind,
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl TlsServer {
    /// Spawns `kind` with the server certificate and `extra` flags; does not wait.
    fn spawn(kind: Kind, pki: &Pki, extra: &[&str]) -> TlsServer {
        let port = free_port();
        let peer = format!("http://127.0.0.1:{}", free_port());
        let client = format!("https://127.0.0.1:{port}");
        let mut args: Vec<String> = [
            "--name",
            "t",
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("t={peer}"),
            "--cert-file",
            &pki.path("server.pem"),
        ]
        .map(String::from)
        .to_vec();
        if !extra.contains(&"--key-file") {
            args.extend(["--key-file".to_string(), pki.path("server-key.pem")]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        TlsServer::spawn_args(kind, port, &args)
    }

    /// Spawns `kind` with `args` (and a data dir of its own), serving clients on `port`.
    fn spawn_args(kind: Kind, port: u16, args: &[String]) -> TlsServer {
        let dir = tempfile::Builder::new()
            .prefix("metastore-tls-")
            .tempdir()
            .expect("temp dir");
        let program = match kind {
            Kind::Etcd => require_tool("etcd"),
            _ => PathBuf::from(env!("CARGO_BIN_EXE_metastore")),
        };
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
        let mut command = Command::new(program);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("ETCD") || name.starts_with("METASTORE") {
                command.env_remove(&*name);
            }
        }
        command.args([
            "--data-dir".to_string(),
            dir.path().join("data").display().to_string(),
        ]);
        if kind == Kind::Mem {
            command.args(["--engine", "mem"]);
        }
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning the server");
        TlsServer {
            kind,
            child: Some(child),
            port,
            dir,
        }
    }

    /// Spawns and waits until etcdctl with the right certificates finds it healthy.
    pub(crate) fn start(kind: Kind, pki: &Pki, extra: &[&str]) -> TlsServer {
        let mut server = TlsServer::spawn(kind, pki, extra);
        server.wait_healthy(pki);
        server
    }

    /// Waits until etcdctl with the right certificates finds it healthy.
    fn wait_healthy(&mut self, pki: &Pki) {
        let (kind, server) = (self.kind, self);
        let started = Instant::now();
        loop {
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok())
                .flatten()
            {
                panic!("{kind:?} exited at start with {status}: {}", server.log());
            }
            let health = etcdctl(
                &server.endpoint(),
                &certs(pki, "client"),
                &["endpoint", "health"],
            );
            if health.0 == Some(0) {
                return;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "{kind:?} not healthy over TLS within {READY_TIMEOUT:?}: {health:?}\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Waits for the process to exit on its own (a refused configuration): its log.
    fn refused(mut self) -> String {
        let started = Instant::now();
        let mut child = self.child.take().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                assert!(!status.success(), "a refusal must be an error exit");
                return self.log();
            }
            if started.elapsed() > READY_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{:?} did not refuse its configuration: {}",
                    self.kind,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// etcdctl's TLS flags for the client certificate `name` (`None`: CA only).
pub(crate) fn certs(pki: &Pki, name: &str) -> Vec<String> {
    let mut flags = vec![format!("--cacert={}", pki.path("ca.pem"))];
    if !name.is_empty() {
        flags.push(format!("--cert={}", pki.path(&format!("{name}.pem"))));
        flags.push(format!("--key={}", pki.path(&format!("{name}-key.pem"))));
    }
    flags
}

/// Runs etcdctl 3.4 against `endpoint`: (exit code, stdout, stderr).
pub(crate) fn etcdctl(
    endpoint: &str,
    tls: &[String],
    args: &[&str],
) -> (Option<i32>, String, String) {
    let mut command = Command::new(require_tool("etcdctl"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("ETCDCTL") {
            command.env_remove(&*name);
        }
    }
    let mut child = command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(["--dial-timeout=2s", "--command-timeout=4s"])
        .args(tls)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning etcdctl");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > COMMAND_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("etcdctl {args:?} did not finish within {COMMAND_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr: String = err_reader
        .join()
        .expect("stderr")
        .lines()
        .filter(|l| !l.starts_with(r#"{"level":"#))
        .map(|l| format!("{l}\n"))
        .collect();
    (status.code(), reader.join().expect("stdout"), stderr)
}

/// The servers compared: MetaStore, and etcd 3.4 as the oracle.
const KINDS: [Kind; 2] = [Kind::Mem, Kind::Etcd];

#[test]
fn etcdctl_with_certificates_puts_and_gets_over_tls() {
    let pki = Pki::new();
    for kind in KINDS {
        let ca = pki.path("ca.pem");
        let server = TlsServer::start(
            kind,
            &pki,
            &["--client-cert-auth", "--trusted-ca-file", &ca],
        );
        let tls = certs(&pki, "client");
        let put = etcdctl(&server.endpoint(), &tls, &["put", "k", "over tls"]);
        assert_eq!(put.0, Some(0), "{kind:?}: put {put:?}");
        assert_eq!(put.1, "OK\n", "{kind:?}");
        let get = etcdctl(&server.endpoint(), &tls, &["get", "k"]);
        assert_eq!(
            get,
            (Some(0), "k\nover tls\n".into(), String::new()),
            "{kind:?}"
        );
    }
}

#[test]
fn client_cert_auth_refuses_clients_without_a_trusted_certificate() {
    let pki = Pki::new();
    let mut seen = Vec::new();
    for kind in KINDS {
        let ca = pki.path("ca.pem");
        let server = TlsServer::start(
            kind,
            &pki,
            &["--client-cert-auth", "--trusted-ca-file", &ca],
        );
        let none = etcdctl(&server.endpoint(), &certs(&pki, ""), &["get", "k"]);
        let rogue = etcdctl(&server.endpoint(), &certs(&pki, "rogue"), &["get", "k"]);
        for (what, outcome) in [("no certificate", &none), ("another CA's", &rogue)] {
            assert_eq!(outcome.0, Some(1), "{kind:?}, {what}: {outcome:?}");
            assert_eq!(outcome.1, "", "{kind:?}, {what}: nothing read");
        }
        // The same server serves a client with a certificate from its CA.
        let served = etcdctl(&server.endpoint(), &certs(&pki, "client"), &["get", "k"]);
        assert_eq!(served.0, Some(0), "{kind:?}: {served:?}");
        seen.push((none.0, none.2.clone(), rogue.0, rogue.2.clone()));
    }
    // etcdctl reports the same error class for both servers.
    assert_eq!(seen[0], seen[1], "MetaStore vs etcd 3.4");
}

#[test]
fn a_plaintext_client_cannot_use_the_tls_port() {
    let pki = Pki::new();
    let mut seen = Vec::new();
    for kind in KINDS {
        let server = TlsServer::start(kind, &pki, &[]);
        let plain = format!("http://127.0.0.1:{}", server.port);
        let outcome = etcdctl(&plain, &[], &["get", "k"]);
        assert_eq!(outcome.0, Some(1), "{kind:?}: {outcome:?}");
        assert_eq!(outcome.1, "", "{kind:?}: nothing read");
        // Without --client-cert-auth any client with the CA is served.
        let served = etcdctl(&server.endpoint(), &certs(&pki, ""), &["put", "k", "v"]);
        assert_eq!(served.0, Some(0), "{kind:?}: {served:?}");
        seen.push(outcome);
    }
    assert_eq!(seen[0], seen[1], "MetaStore vs etcd 3.4");
}

#[test]
fn tls_misconfiguration_stops_the_server_at_start() {
    let pki = Pki::new();
    let missing = pki.path("missing.pem");
    let client_key = pki.path("client-key.pem");
    let not_pem = pki.path("not-pem.txt");
    std::fs::write(Path::new(&not_pem), "not a certificate").expect("write");
    let cases: [(&[&str], &str); 4] = [
        (&["--trusted-ca-file", &missing], "--trusted-ca-file"),
        (&["--key-file", &client_key], "does not fit"),
        (&["--trusted-ca-file", &not_pem], "--trusted-ca-file"),
        (&["--client-cert-auth"], "--trusted-ca-file"),
    ];
    for (flags, expected) in cases {
        let log = TlsServer::spawn(Kind::Mem, &pki, flags).refused();
        assert!(log.contains(expected), "{flags:?}: {log}");
    }
}

/// What the peer port answers a client that sends HTTP/2's preface: `Ok(first bytes)` or the
/// error that ended the connection. `tls`: `None` for plaintext, else the client certificate
/// (`""`: none) to present.
fn peer_port_answer(port: u16, pki: &Pki, tls: Option<&str>) -> Result<Vec<u8>, String> {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    // The preface and an empty SETTINGS frame: a gRPC server answers with its SETTINGS.
    let hello = [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        &[0, 0, 0, 4, 0, 0, 0, 0, 0],
    ]
    .concat();
    let exchange = |stream: &mut dyn ReadWrite| -> Result<Vec<u8>, String> {
        stream.write_all(&hello).map_err(|e| e.to_string())?;
        stream.flush().map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Ok(0) => Err("closed".into()),
            Ok(n) => Ok(buf[..n].to_vec()),
            Err(e) => Err(e.to_string()),
        }
    };
    let Some(client_cert) = tls else {
        return exchange(&mut { tcp });
    };
    #[allow(deprecated)] // ring, as the server uses
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(pki.path("ca.pem")).expect("ca") {
        roots.add(ca.expect("ca")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = if client_cert.is_empty() {
        builder.with_no_client_auth()
    } else {
        let certs = CertificateDer::pem_file_iter(pki.path(&format!("{client_cert}.pem")))
            .expect("cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("cert");
        let key =
            PrivateKeyDer::from_pem_file(pki.path(&format!("{client_cert}-key.pem"))).expect("key");
        builder
            .with_client_auth_cert(certs, key)
            .expect("client cert")
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    exchange(&mut rustls::StreamOwned::new(conn, tcp))
}

/// Reading and writing, for [`peer_port_answer`]'s plaintext and TLS streams alike.
trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// Whether `bytes` begin with an HTTP/2 SETTINGS frame: the peer port spoke HTTP/2.
fn spoke_http2(bytes: &[u8]) -> bool {
    bytes.len() >= 9 && bytes[3] == 4
}

/// Three members of `kind` on `https://` client and peer URLs, each also given `tls` (its
/// certificate flags), started and healthy; their peer ports.
fn https_cluster(pki: &Pki, kind: Kind, tls: &[String]) -> (Vec<TlsServer>, Vec<u16>) {
    let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let initial: Vec<String> = peer_ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("m{i}=https://127.0.0.1:{p}"))
        .collect();
    let initial = initial.join(",");
    let mut members: Vec<TlsServer> = (0..3)
        .map(|i| {
            let peer = format!("https://127.0.0.1:{}", peer_ports[i]);
            let client = format!("https://127.0.0.1:{}", client_ports[i]);
            let mut args: Vec<String> = [
                "--name",
                &format!("m{i}"),
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &initial,
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ]
            .map(String::from)
            .to_vec();
            args.extend_from_slice(tls);
            TlsServer::spawn_args(kind, client_ports[i], &args)
        })
        .collect();
    for member in &mut members {
        member.wait_healthy(pki);
    }
    (members, peer_ports)
}

/// Three members (mem engine) with peer mTLS and client TLS with `--client-cert-auth`, all
/// from `pki`, started and healthy; their peer ports.
fn mtls_cluster(pki: &Pki) -> (Vec<TlsServer>, Vec<u16>) {
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("server.pem"), pki.path("server-key.pem"));
    let tls = [
        "--cert-file",
        &cert,
        "--key-file",
        &key,
        "--trusted-ca-file",
        &ca,
        "--client-cert-auth",
        "--peer-cert-file",
        &cert,
        "--peer-key-file",
        &key,
        "--peer-trusted-ca-file",
        &ca,
        "--peer-client-cert-auth",
    ]
    .map(String::from);
    https_cluster(pki, Kind::Mem, &tls)
}

#[test]
fn a_cluster_with_peer_mtls_serves_and_refuses_peers_without_certificates() {
    let pki = Pki::new();
    let (members, peer_ports) = mtls_cluster(&pki);
    let tls = certs(&pki, "client");
    let put = etcdctl(&members[0].endpoint(), &tls, &["put", "k", "replicated"]);
    assert_eq!(put.0, Some(0), "{put:?}");
    let get = etcdctl(
        &members[2].endpoint(),
        &tls,
        &["get", "k", "--print-value-only"],
    );
    assert_eq!(get, (Some(0), "replicated\n".into(), String::new()));
    // Without a client certificate etcdctl is refused, as by etcd.
    let refused = etcdctl(&members[1].endpoint(), &certs(&pki, ""), &["get", "k"]);
    assert_eq!(refused.0, Some(1), "{refused:?}");

    // The peer port: only a certificate from the peer CA gets to HTTP/2.
    let port = peer_ports[1];
    let good = peer_port_answer(port, &pki, Some("client"));
    assert!(
        good.as_ref().is_ok_and(|b| spoke_http2(b)),
        "with a peer certificate: {good:?}"
    );
    for (what, tls) in [
        ("plaintext", None),
        ("TLS without a certificate", Some("")),
        ("another CA's certificate", Some("rogue")),
    ] {
        let answer = peer_port_answer(port, &pki, tls);
        assert!(
            !answer.as_ref().is_ok_and(|b| spoke_http2(b)),
            "{what}: the peer port spoke HTTP/2: {answer:?}"
        );
    }
    // The cluster still serves.
    let put = etcdctl(&members[2].endpoint(), &tls, &["put", "k", "again"]);
    assert_eq!(put.0, Some(0), "{put:?}");
}

#[test]
fn peer_cert_allowed_cn_admits_only_that_common_name() {
    let pki = Pki::new();
    let (client_port, peer_port) = (free_port(), free_port());
    let client = format!("https://127.0.0.1:{client_port}");
    let peer = format!("https://127.0.0.1:{peer_port}");
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("server.pem"),
        pki.path("server-key.pem"),
    );
    let args: Vec<String> = [
        "--name",
        "t",
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &format!("t={peer}"),
        "--cert-file",
        &cert,
        "--key-file",
        &key,
        "--peer-cert-file",
        &cert,
        "--peer-key-file",
        &key,
        "--peer-trusted-ca-file",
        &ca,
        "--peer-cert-allowed-cn",
        "server",
    ]
    .map(String::from)
    .to_vec();
    let mut server = TlsServer::spawn_args(Kind::Mem, client_port, &args);
    server.wait_healthy(&pki);
    // Both certificates come from the peer CA; only the one whose CN is "server" is admitted.
    let allowed = peer_port_answer(peer_port, &pki, Some("server"));
    assert!(
        allowed.as_ref().is_ok_and(|b| spoke_http2(b)),
        "CN server: {allowed:?}"
    );
    let other = peer_port_answer(peer_port, &pki, Some("client"));
    assert!(
        !other.as_ref().is_ok_and(|b| spoke_http2(b)),
        "CN root: {other:?}"
    );
}

#[test]
fn auto_tls_serves_https_with_a_self_signed_certificate() {
    let insecure = [
        "--insecure-transport=false".to_string(),
        "--insecure-skip-tls-verify".to_string(),
    ];
    for kind in KINDS {
        let (client_port, peer_port) = (free_port(), free_port());
        let client = format!("https://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let args: Vec<String> = [
            "--name",
            "t",
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("t={peer}"),
            "--auto-tls",
        ]
        .map(String::from)
        .to_vec();
        let mut server = TlsServer::spawn_args(kind, client_port, &args);
        let started = Instant::now();
        let put = loop {
            let put = etcdctl(&client, &insecure, &["put", "k", "auto"]);
            if put.0 == Some(0) || started.elapsed() > READY_TIMEOUT {
                break put;
            }
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok())
                .flatten()
            {
                panic!("{kind:?} exited at start with {status}: {}", server.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(put.0, Some(0), "{kind:?}: {put:?}\n{}", server.log());
        let get = etcdctl(&client, &insecure, &["get", "k", "--print-value-only"]);
        assert_eq!(get, (Some(0), "auto\n".into(), String::new()), "{kind:?}");
        // Verifying the certificate fails: it is self-signed, not from the test CA.
        let pki = Pki::new();
        let verified = etcdctl(&client, &certs(&pki, ""), &["get", "k"]);
        assert_eq!(verified.0, Some(1), "{kind:?}: {verified:?}");
        let fixtures = server
            .dir
            .path()
            .join("data")
            .join("fixtures")
            .join("client");
        for file in ["cert.pem", "key.pem"] {
            assert!(fixtures.join(file).is_file(), "{kind:?}: no {file}");
        }
    }
}

/// Accepts any server certificate, as a member with `--peer-auto-tls` does. The handshake's
/// signature is checked where ring can: etcd 3.4 makes its auto TLS keys on P-521, which ring
/// does not verify, so that scheme is offered and its signature taken on trust (this test
/// client looks only at what the port admits and presents).
#[derive(Debug)]
struct AnyCert(std::sync::Arc<tokio_rustls::rustls::crypto::CryptoProvider>);

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        _: &[tokio_rustls::rustls::pki_types::CertificateDer<'_>],
        _: &tokio_rustls::rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: tokio_rustls::rustls::pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error>
    {
        Ok(tokio_rustls::rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        if dss.scheme == tokio_rustls::rustls::SignatureScheme::ECDSA_NISTP521_SHA512 {
            return Ok(tokio_rustls::rustls::client::danger::HandshakeSignatureValid::assertion());
        }
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        let mut schemes = self.0.signature_verification_algorithms.supported_schemes();
        schemes.push(tokio_rustls::rustls::SignatureScheme::ECDSA_NISTP521_SHA512);
        schemes
    }
}

/// Speaks TLS to a peer port without verifying it or presenting a certificate, then HTTP/2's
/// preface: (the first bytes answered, the certificate the port presented).
fn peer_port_unverified(port: u16) -> Result<(Vec<u8>, Vec<u8>), String> {
    use std::io::Write;
    use std::sync::Arc;
    use tokio_rustls::rustls;

    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    #[allow(deprecated)] // ring, as the server uses
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let hello = [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        &[0, 0, 0, 4, 0, 0, 0, 0, 0],
    ]
    .concat();
    stream.write_all(&hello).map_err(|e| e.to_string())?;
    stream.flush().map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
    let cert = stream
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.to_vec())
        .ok_or("no certificate presented")?;
    Ok((buf[..n].to_vec(), cert))
}

#[test]
fn a_cluster_with_peer_auto_tls_forms_over_https_peers_that_do_not_verify_each_other() {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;

    let pki = Pki::new();
    let (cert, key) = (pki.path("server.pem"), pki.path("server-key.pem"));
    for kind in KINDS {
        let tls = ["--cert-file", &cert, "--key-file", &key, "--peer-auto-tls"].map(String::from);
        let (members, peer_ports) = https_cluster(&pki, kind, &tls);
        // Replication crosses the peer ports, which speak only TLS.
        let tls = certs(&pki, "");
        let put = etcdctl(&members[0].endpoint(), &tls, &["put", "k", "over auto tls"]);
        assert_eq!(put.0, Some(0), "{kind:?}: {put:?}");
        let get = etcdctl(
            &members[2].endpoint(),
            &tls,
            &["get", "k", "--print-value-only"],
        );
        assert_eq!(
            get,
            (Some(0), "over auto tls\n".into(), String::new()),
            "{kind:?}"
        );
        for (i, member) in members.iter().enumerate() {
            let port = peer_ports[i];
            let plain = peer_port_answer(port, &pki, None);
            assert!(
                !plain.as_ref().is_ok_and(|b| spoke_http2(b)),
                "{kind:?}: plaintext reached the peer port: {plain:?}"
            );
            // Each member's certificate is its own self-signed one, which a CA cannot verify.
            let verified = peer_port_answer(port, &pki, Some(""));
            assert!(
                !verified.as_ref().is_ok_and(|b| spoke_http2(b)),
                "{kind:?}: the test CA verified an auto TLS certificate: {verified:?}"
            );
            // Encryption without authentication: any TLS client gets in, with no certificate.
            let (answer, presented) = peer_port_unverified(port)
                .unwrap_or_else(|e| panic!("{kind:?} m{i}: {e}\n{}", member.log()));
            // etcd's peer port speaks HTTP/1.1 to Raft peers and closes on this preface; the
            // completed handshake is what is compared there.
            assert!(
                kind == Kind::Etcd || spoke_http2(&answer),
                "{kind:?}: {answer:?}"
            );
            let made = member
                .dir
                .path()
                .join("data")
                .join("fixtures")
                .join("peer")
                .join("cert.pem");
            let made = CertificateDer::from_pem_file(&made)
                .unwrap_or_else(|e| panic!("{kind:?}: {}: {e}", made.display()));
            assert_eq!(
                presented,
                made.to_vec(),
                "{kind:?} m{i}: the peer port does not present DATA_DIR/fixtures/peer/cert.pem"
            );
        }
        // The cluster still serves.
        let put = etcdctl(&members[1].endpoint(), &tls, &["put", "k", "again"]);
        assert_eq!(put.0, Some(0), "{kind:?}: {put:?}");
    }
}

/// The peer protocol's one message: a bincode payload (consensus's `metastore.peer.Payload`).
#[derive(Clone, PartialEq, prost::Message)]
struct PeerPayload {
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
}

/// openraft's `Vote { leader_id: LeaderId { term, node_id }, committed }` as bincode writes it.
fn vote_bytes(term: u64, node_id: u64, committed: bool) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&term.to_le_bytes());
    b.extend_from_slice(&node_id.to_le_bytes());
    b.push(u8::from(committed));
    b
}

/// A `VoteRequest` from candidate `node_id` in `term`, whose last log entry (of that term)
/// is newer than any member's: a member that reads it grants its vote and takes the term.
fn vote_request(term: u64, node_id: u64) -> Vec<u8> {
    let mut b = vote_bytes(term, node_id, false);
    b.push(1); // last_log_id: Some(LogId { leader_id: (term, node_id), index: 1 })
    b.extend_from_slice(&term.to_le_bytes());
    b.extend_from_slice(&node_id.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(0); // leadership_transfer: false
    b
}

/// An `AppendEntriesRequest` from leader `node_id` in `term` that would truncate nothing but
/// claim leadership: no previous entry, no entries, nothing committed.
fn append_entries_request(term: u64, node_id: u64) -> Vec<u8> {
    let mut b = vote_bytes(term, node_id, true);
    b.push(0); // prev_log_id: None
    b.extend_from_slice(&0u64.to_le_bytes()); // no entries
    b.push(0); // leader_commit: None
    b
}

/// Sends `data` to the peer port at `port` as RPC `method`, over plaintext (`tls`: `None`) or
/// TLS verifying the member with the test CA and presenting `tls`'s certificate (`""`: none).
fn peer_rpc(
    port: u16,
    pki: &Pki,
    tls: Option<&str>,
    method: &'static str,
    data: Vec<u8>,
) -> Result<Vec<u8>, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

    let read = |name: &str| std::fs::read(pki.path(name)).expect("pki file");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://127.0.0.1:{port}"))
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    if let Some(cert) = tls {
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("ca.pem")));
        if !cert.is_empty() {
            config = config.identity(Identity::from_pem(
                read(&format!("{cert}.pem")),
                read(&format!("{cert}-key.pem")),
            ));
        }
        endpoint = endpoint.tls_config(config).expect("tls config");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|e| e.to_string())?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
        grpc.unary(
            tonic::Request::new(PeerPayload { data }),
            path,
            tonic_prost::ProstCodec::<PeerPayload, PeerPayload>::default(),
        )
        .await
        .map(|r| r.into_inner().data)
        .map_err(|s| s.to_string())
    })
}

/// (member id, leader id, Raft term) as `etcdctl endpoint status` reports them for `endpoint`.
fn raft_status(endpoint: &str, pki: &Pki) -> (u64, u64, u64) {
    let (code, out, err) = etcdctl(
        endpoint,
        &certs(pki, "client"),
        &["endpoint", "status", "-w", "json"],
    );
    assert_eq!(code, Some(0), "endpoint status: {err}");
    let number = |name: &str| -> u64 {
        regex::Regex::new(&format!("\"{name}\":(\\d+)"))
            .expect("regex")
            .captures(&out)
            .and_then(|c| c[1].parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    (number("member_id"), number("leader"), number("raft_term"))
}

#[test]
fn a_process_without_a_peer_certificate_cannot_move_the_term_or_the_log() {
    let pki = Pki::new();
    let (members, peer_ports) = mtls_cluster(&pki);
    let tls = certs(&pki, "client");
    let put = etcdctl(&members[0].endpoint(), &tls, &["put", "k", "kept"]);
    assert_eq!(put.0, Some(0), "{put:?}");
    let read = || {
        members
            .iter()
            .map(|m| etcdctl(&m.endpoint(), &tls, &["get", "k", "-w", "json"]).1)
            .map(|json| {
                regex::Regex::new("\"mod_revision\":(\\d+)")
                    .expect("regex")
                    .captures(&json)
                    .map(|c| c[1].to_string())
                    .unwrap_or(json)
            })
            .collect::<Vec<_>>()
    };
    let statuses = |members: &[TlsServer]| -> Vec<(u64, u64, u64)> {
        members
            .iter()
            .map(|m| raft_status(&m.endpoint(), &pki))
            .collect()
    };
    let before = statuses(&members);
    let log_before = read();
    let (leader, term) = (before[0].1, before[0].2);
    assert!(
        before.iter().all(|s| s.1 == leader && s.2 == term),
        "{before:?}"
    );
    // A vote for, and entries from, the leader itself in a far higher term: a member that
    // read either would leave the current term.
    let attack_term = term + 1000;
    let messages = [
        (
            "/metastore.peer.Peer/Vote",
            vote_request(attack_term, leader),
        ),
        (
            "/metastore.peer.Peer/AppendEntries",
            append_entries_request(attack_term, leader),
        ),
    ];
    for port in &peer_ports {
        for (method, data) in &messages {
            for (how, tls) in [
                ("plaintext", None),
                ("TLS without a certificate", Some("")),
                ("another CA's certificate", Some("rogue")),
            ] {
                let answer = peer_rpc(*port, &pki, tls, method, data.clone());
                assert!(
                    answer.is_err(),
                    "{method} over {how} to {port} was answered: {answer:?}"
                );
            }
        }
    }
    // A member handles a vote or append before it answers: had one got through, its term
    // would already have moved.
    assert_eq!(statuses(&members), before, "leader or term moved");
    assert_eq!(read(), log_before, "the log moved");
    let put = etcdctl(&members[1].endpoint(), &tls, &["put", "k2", "v"]);
    assert_eq!(put.0, Some(0), "the cluster still writes: {put:?}");

    // The control: the same append-entries, sent with a certificate from the peer CA to a
    // follower, is read by Raft and moves the term, so the messages above were ones that
    // would have. (The vote is answered too, but refused while the follower's leader lease
    // lasts: openraft's guard against disruptive candidates.)
    let follower = before
        .iter()
        .position(|s| s.0 != leader)
        .expect("a follower");
    let voted = peer_rpc(
        peer_ports[follower],
        &pki,
        Some("client"),
        "/metastore.peer.Peer/Vote",
        vote_request(attack_term, leader),
    );
    assert!(voted.is_ok(), "a vote with a peer certificate: {voted:?}");
    let appended = peer_rpc(
        peer_ports[follower],
        &pki,
        Some("client"),
        "/metastore.peer.Peer/AppendEntries",
        append_entries_request(attack_term, leader),
    );
    assert!(
        appended.is_ok(),
        "append-entries with a peer certificate: {appended:?}"
    );
    let (_, _, moved) = raft_status(&members[follower].endpoint(), &pki);
    assert!(
        moved >= attack_term,
        "the follower's term {moved} did not reach {attack_term}"
    );
}
