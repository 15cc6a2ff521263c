//! `--client-cert-auth` with auth enabled: a request without a token is the user its client
//! certificate names (its CN), as in etcd 3.4. etcdctl with certificates and no `--user`
//! against `metastore` and etcd 3.4, step by step, compared.

use crate::harness::Kind;
use crate::tls::{certs, etcdctl, Pki, TlsServer};

/// What one step shows: exit code, and stdout and stderr unless the step's output holds ids
/// that differ between servers (then only the exit code).
type Seen = (Option<i32>, String, String);

/// The steps: (client certificate, etcdctl arguments, whether the output is compared).
fn steps() -> Vec<(&'static str, Vec<&'static str>, bool)> {
    let root = "--user=root:rootpw";
    vec![
        // Set-up, as the certificate with CN root, before auth is on.
        ("client", vec!["user", "add", "root:rootpw"], true),
        ("client", vec!["user", "add", "alice:alicepw"], true),
        ("client", vec!["role", "add", "r"], true),
        (
            "client",
            vec!["role", "grant-permission", "r", "readwrite", "a"],
            true,
        ),
        ("client", vec!["user", "grant-role", "alice", "r"], true),
        ("client", vec!["auth", "enable"], true),
        // The CN is the user.
        ("client", vec!["put", "x", "1"], true),
        ("client", vec!["user", "list"], true),
        ("alice", vec!["put", "a", "1"], true),
        ("alice", vec!["get", "a"], true),
        ("alice", vec!["put", "x", "2"], true),
        ("alice", vec!["user", "list"], true),
        // A CN that names no user: denied, and "user name not found" for admin requests.
        ("nobody", vec!["get", "a"], true),
        ("nobody", vec!["user", "list"], true),
        ("nobody", vec!["watch", "a"], true),
        // A token wins over the certificate, both ways; a bad password is refused.
        ("alice", vec![root, "put", "x", "3"], true),
        (
            "client",
            vec!["--user=alice:alicepw", "put", "x", "4"],
            true,
        ),
        ("client", vec!["--user=alice:bad", "get", "a"], true),
        ("client", vec!["get", "x"], true),
        // Requests that need no permission still work for any CN.
        ("nobody", vec!["lease", "grant", "10"], false),
        ("nobody", vec!["endpoint", "status"], false),
        // Once auth is off again the CN no longer matters.
        ("client", vec!["auth", "disable"], true),
        ("nobody", vec!["put", "x", "5"], true),
    ]
}

fn run(kind: Kind, pki: &Pki) -> Vec<Seen> {
    let ca = pki.path("ca.pem");
    let server = TlsServer::start(kind, pki, &["--client-cert-auth", "--trusted-ca-file", &ca]);
    steps()
        .into_iter()
        .map(|(cert, args, compared)| {
            let seen = etcdctl(&server.endpoint(), &certs(pki, cert), &args);
            if compared {
                seen
            } else {
                (seen.0, String::new(), String::new())
            }
        })
        .collect()
}

#[test]
fn client_certificate_common_name_is_the_user_as_in_etcd() {
    let pki = Pki::new();
    let ours = run(Kind::Mem, &pki);
    let etcd = run(Kind::Etcd, &pki);
    for ((step, ours), etcd) in steps().iter().zip(&ours).zip(&etcd) {
        assert_eq!(ours, etcd, "{} {:?}: MetaStore vs etcd 3.4", step.0, step.1);
    }
    // Robust facts, so the comparison cannot pass with both sides failing the same way.
    let at = |args: &[&str], cert: &str| {
        steps()
            .iter()
            .position(|(c, a, _)| *c == cert && a.as_slice() == args)
            .expect("a step")
    };
    assert_eq!(ours[at(&["put", "x", "1"], "client")].1, "OK\n");
    assert_eq!(ours[at(&["get", "a"], "alice")].1, "a\n1\n");
    assert!(ours[at(&["put", "x", "2"], "alice")]
        .2
        .contains("permission denied"));
    assert!(ours[at(&["user", "list"], "nobody")]
        .2
        .contains("user name not found"));
    assert!(
        ours[at(&["--user=alice:alicepw", "put", "x", "4"], "client")]
            .2
            .contains("permission denied")
    );
    assert_eq!(ours[at(&["get", "x"], "client")].1, "x\n3\n");
}

#[test]
fn without_client_cert_auth_the_certificate_names_no_user() {
    // A CA file makes clients present certificates, but only --client-cert-auth makes their CN
    // a user (etcd's ClientCertAuthEnabled).
    let pki = Pki::new();
    let mut seen = Vec::new();
    for kind in [Kind::Mem, Kind::Etcd] {
        let ca = pki.path("ca.pem");
        let server = TlsServer::start(kind, &pki, &["--trusted-ca-file", &ca]);
        let tls = certs(&pki, "client");
        for args in [&["user", "add", "root:rootpw"][..], &["auth", "enable"]] {
            let set_up = etcdctl(&server.endpoint(), &tls, args);
            assert_eq!(set_up.0, Some(0), "{kind:?} {args:?}: {set_up:?}");
        }
        seen.push(etcdctl(&server.endpoint(), &tls, &["put", "x", "1"]));
    }
    assert!(seen[0].2.contains("user name is empty"), "{:?}", seen[0]);
    assert_eq!(seen[0], seen[1], "MetaStore vs etcd 3.4");
}
