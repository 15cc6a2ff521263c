//! TLS files as etcd 3.4 uses them after start: a revoked client certificate is refused
//! (`--client-crl-file`), and a replaced server certificate is served to new connections
//! without a restart. Each runs against etcd 3.4 and `metastore` alike.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};
use tokio_rustls::rustls;

use crate::harness::Kind;
use crate::tls::{certs, etcdctl, Pki, TlsServer};

/// A CA whose key is kept, to sign certificates and revocation lists after the start.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pki: Pki,
}

impl Ca {
    /// Replaces the files of a fresh [`Pki`] (ca, server, client) with ones from this CA.
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "rotation ca");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        let ca = Ca {
            issuer,
            pki: Pki::new(),
        };
        std::fs::write(ca.pki.path("ca.pem"), ca.issuer.pem()).expect("write");
        ca.issue("server", "server-a", 1);
        ca.issue("client", "root", 2);
        ca
    }

    /// Writes `name.pem` and `name-key.pem` for common name `cn` with serial `serial`; the
    /// key first, then the certificate, each replaced whole (renamed into place); the DER.
    fn issue(&self, name: &str, cn: &str, serial: u64) -> Vec<u8> {
        self.issue_for(name, cn, serial, &["localhost", "127.0.0.1"])
    }

    /// As [`Ca::issue`], valid for the host names `sans`.
    fn issue_for(&self, name: &str, cn: &str, serial: u64, sans: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        self.replace(&format!("{name}-key.pem"), key.serialize_pem().as_bytes());
        self.replace(&format!("{name}.pem"), cert.pem().as_bytes());
        cert.der().to_vec()
    }

    fn replace(&self, name: &str, bytes: &[u8]) {
        let tmp = self.pki.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).expect("write");
        std::fs::rename(&tmp, self.pki.path(name)).expect("rename");
    }

    /// Writes `crl.pem` revoking `serials`.
    fn revoke(&self, serials: &[u64]) {
        let now = rcgen::date_time_ymd(2024, 1, 1);
        let crl = CertificateRevocationListParams {
            this_update: now,
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .expect("crl");
        self.replace("crl.pem", crl.pem().expect("pem").as_bytes());
    }
}

const KINDS: [Kind; 2] = [Kind::Etcd, Kind::Mem];

#[test]
fn a_revoked_client_certificate_is_refused_as_by_etcd() {
    let mut seen = Vec::new();
    for kind in KINDS {
        let ca = Ca::new();
        ca.issue("revoked", "root", 3);
        ca.revoke(&[3]);
        let (ca_file, crl_file) = (ca.pki.path("ca.pem"), ca.pki.path("crl.pem"));
        let server = TlsServer::start(
            kind,
            &ca.pki,
            &[
                "--client-cert-auth",
                "--trusted-ca-file",
                &ca_file,
                "--client-crl-file",
                &crl_file,
            ],
        );
        let good = etcdctl(
            &server.endpoint(),
            &certs(&ca.pki, "client"),
            &["put", "k", "v"],
        );
        assert_eq!(good.0, Some(0), "{kind:?}: {good:?}");
        let revoked = etcdctl(
            &server.endpoint(),
            &certs(&ca.pki, "revoked"),
            &["get", "k"],
        );
        assert_ne!(
            revoked.0,
            Some(0),
            "{kind:?} served a revoked certificate: {revoked:?}"
        );
        seen.push((
            good.1,
            revoked.0,
            revoked.2.lines().last().map(str::to_string),
        ));
        drop(server);
    }
    assert_eq!(seen[0], seen[1], "etcd 3.4 vs MetaStore");
}

/// The certificate a new TLS connection to `port` is served (verified against `ca.pem`).
#[allow(deprecated)] // ring's provider, as the server uses it (aws-lc-rs needs cmake).
fn served_certificate(ca: &Ca, port: u16) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            ca.issuer.der().to_vec(),
        ))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).expect("handshake");
    }
    let _ = sock.flush();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .expect("a server certificate")
        .to_vec()
}

#[test]
fn a_replaced_server_certificate_is_served_to_new_connections_without_restart() {
    for kind in KINDS {
        let ca = Ca::new();
        let first = ca.issue("server", "server-a", 10);
        let server = TlsServer::start(kind, &ca.pki, &[]);
        let port: u16 = server
            .endpoint()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        assert_eq!(served_certificate(&ca, port), first, "{kind:?}");
        // Rotation: new files in place of the old ones; the process is not told.
        let second = ca.issue("server", "server-b", 11);
        assert_ne!(first, second);
        assert_eq!(
            served_certificate(&ca, port),
            second,
            "{kind:?} still serves the old certificate"
        );
        // Clients go on working through the new certificate.
        let put = etcdctl(
            &server.endpoint(),
            &certs(&ca.pki, "client"),
            &["put", "k", "v"],
        );
        assert_eq!(put.0, Some(0), "{kind:?}: {put:?}");
        drop(server);
    }
}

#[test]
fn client_cert_allowed_hostname_admits_only_certificates_for_that_host_as_etcd() {
    let mut seen = Vec::new();
    for kind in KINDS {
        let ca = Ca::new();
        // The certificate the health wait uses is for other.example; another for localhost.
        ca.issue_for("client", "root", 20, &["other.example"]);
        ca.issue_for("stranger", "root", 21, &["localhost", "127.0.0.1"]);
        let ca_file = ca.pki.path("ca.pem");
        let server = TlsServer::start(
            kind,
            &ca.pki,
            &[
                "--client-cert-auth",
                "--trusted-ca-file",
                &ca_file,
                "--client-cert-allowed-hostname=other.example",
            ],
        );
        let put = etcdctl(
            &server.endpoint(),
            &certs(&ca.pki, "client"),
            &["put", "k", "v"],
        );
        assert_eq!(put.0, Some(0), "{kind:?}: {put:?}");
        let refused = etcdctl(
            &server.endpoint(),
            &certs(&ca.pki, "stranger"),
            &["get", "k"],
        );
        assert_ne!(
            refused.0,
            Some(0),
            "{kind:?} admitted a certificate not for other.example: {refused:?}"
        );
        seen.push((
            put.0,
            refused.0,
            refused.2.lines().last().map(str::to_string),
        ));
        drop(server);
    }
    assert_eq!(seen[0], seen[1], "etcd 3.4 vs MetaStore");
}
