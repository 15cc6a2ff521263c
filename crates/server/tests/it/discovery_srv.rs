//! `--discovery-srv`, side by side with etcd 3.4: three members find each other through DNS SRV
//! records served by a tiny DNS server in the test. Each member runs in its own mount
//! namespace (`unshare --mount`, as root) whose `/etc/resolv.conf` names that server, so both
//! stores use the system's resolver configuration as they would in production.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testkit::{free_port, Cluster, ClusterOptions};

use crate::harness::require_tool;

const DOMAIN: &str = "example.test";

/// SRV records by name (without the trailing dot): (target, port).
type Records = Arc<Mutex<Vec<(String, Vec<(String, u16)>)>>>;

/// A DNS server on 127.x.y.z:53 answering SRV queries from `records` and NXDOMAIN otherwise.
struct Dns {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The question's name (lower case, no trailing dot), type, and where the question ends.
fn question(msg: &[u8]) -> Option<(String, u16, usize)> {
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(pos)?);
        if len == 0 {
            pos += 1;
            break;
        }
        if len >= 64 {
            return None;
        }
        labels.push(String::from_utf8_lossy(msg.get(pos + 1..pos + 1 + len)?).to_lowercase());
        pos += 1 + len;
    }
    let kind = u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]);
    Some((labels.join("."), kind, pos + 4))
}

fn respond(query: &[u8], records: &Records) -> Option<Vec<u8>> {
    let (name, kind, end) = question(query)?;
    let found = records
        .lock()
        .unwrap()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, r)| r.clone());
    let mut msg = query.get(..end)?.to_vec();
    // QR, AA, RD, RA; one question, no authority or additional records.
    msg[2] = 0x85;
    msg[3] = if found.is_some() { 0x80 } else { 0x83 };
    msg[8..12].fill(0);
    let found = found.unwrap_or_default();
    // A host's record is ("", 0): its address is 127.0.0.1.
    let host = found.first().is_some_and(|(t, _)| t.is_empty());
    let count = match (kind, host) {
        (1, true) => 1,
        (33, false) => found.len(),
        _ => 0,
    };
    msg[6..8].copy_from_slice(&u16::try_from(count).ok()?.to_be_bytes());
    if kind == 1 && host {
        msg.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 1]);
    }
    if kind == 33 && !host {
        for (target, port) in found {
            msg.extend_from_slice(&[0xC0, 12, 0, 33, 0, 1, 0, 0, 0, 30]);
            let mut data = vec![0, 10, 0, 10];
            data.extend_from_slice(&port.to_be_bytes());
            for label in target.split('.') {
                data.push(u8::try_from(label.len()).ok()?);
                data.extend_from_slice(label.as_bytes());
            }
            data.push(0);
            msg.extend_from_slice(&u16::try_from(data.len()).ok()?.to_be_bytes());
            msg.extend_from_slice(&data);
        }
    }
    Some(msg)
}

impl Dns {
    fn start(records: Records) -> Dns {
        // A loopback address of its own: port 53 is fixed (resolv.conf has no port), and other
        // tests may run a server at the same time.
        let seed = std::process::id() ^ u32::from(free_port());
        let socket = (0..64u32)
            .find_map(|i| {
                let n = seed.wrapping_add(i.wrapping_mul(7919));
                let ip = Ipv4Addr::new(127, 53, ((n >> 8) & 0xFF) as u8, (n & 0xFF) as u8 | 1);
                UdpSocket::bind((ip, 53)).ok()
            })
            .expect("binding a DNS server on a 127.53.x.y:53 address (the test runs as root)");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (records, stop) = (records.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(answer) = respond(&buf[..n], &records) {
                        let _ = socket.send_to(&answer, from);
                    }
                }
            })
        };
        Dns {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A script that runs `binary` in a mount namespace whose /etc/resolv.conf names `dns`.
fn wrapper(dir: &Path, binary: &Path, dns: SocketAddr) -> PathBuf {
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("nameserver {}\noptions timeout:2 attempts:2\n", dns.ip()),
    )
    .unwrap();
    let script = dir.join(format!(
        "in-ns-{}",
        binary.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec unshare --mount sh -c 'mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"' '{}' '{}' \"$@\"\n",
            resolv.display(),
            binary.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The namespace must work here, or the test would say nothing about DNS.
    let probe = Command::new(&script)
        .arg("--version")
        .output()
        .expect("running the namespace wrapper");
    assert!(
        probe.status.success(),
        "unshare --mount with a bind-mounted /etc/resolv.conf failed (needs root): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    script
}

fn etcdctl(endpoint: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(require_tool("etcdctl"))
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "--dial-timeout=2s",
            "--command-timeout=5s",
        ])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The records of a cluster of `members`: each host's address, and `_etcd-server._tcp`.
fn publish(cluster: &Cluster) -> Vec<(String, Vec<(String, u16)>)> {
    let mut published = Vec::new();
    let mut srv = Vec::new();
    for m in cluster.members() {
        let host = format!("{}.{DOMAIN}", m.name);
        srv.push((host.clone(), m.peer_port));
        published.push((host, vec![(String::new(), 0)]));
    }
    published.push((format!("_etcd-server._tcp.{DOMAIN}"), srv));
    published
}

/// Starts three MetaStore members that know each other only from DNS.
fn bootstrap_by_dns(binary: PathBuf, records: &Records) -> Cluster {
    let mut cluster = Cluster::unstarted(
        ClusterOptions {
            binary,
            members: 3,
            engine: "redb".into(),
            extra_args: vec!["--discovery-srv".into(), DOMAIN.into()],
            proxy_peers: false,
        },
        false,
    )
    .unwrap();
    *records.lock().unwrap() = publish(&cluster);
    for i in 0..3 {
        // No --initial-cluster: DNS gives it.
        cluster.set_initial_members(i, Vec::new());
    }
    cluster
        .start_all()
        .unwrap_or_else(|e| panic!("starting by --discovery-srv: {e}"));
    let endpoints = cluster.endpoints().join(",");
    etcdctl(&endpoints, &["put", "dns", "found"]).unwrap();
    let got = etcdctl(&cluster.member(2).endpoint(), &["get", "dns"]).unwrap();
    assert_eq!(got.lines().collect::<Vec<_>>(), ["dns", "found"]);
    let listed = etcdctl(&endpoints, &["member", "list"]).unwrap();
    let mut peers: Vec<String> = listed
        .lines()
        .filter_map(|l| l.split(", ").nth(3).map(str::to_string))
        .collect();
    peers.sort();
    // The members' peer URLs are the SRV targets, as etcd makes them.
    let mut expected: Vec<String> = cluster
        .members()
        .iter()
        .map(|m| format!("http://{}.{DOMAIN}:{}", m.name, m.peer_port))
        .collect();
    expected.sort();
    assert_eq!(peers, expected, "{listed}");
    cluster
}

/// Runs one member `name` of `binary` with `--discovery-srv` on `peer_port`, and returns what
/// it printed when it stopped (it must stop: the test expects a refusal).
fn refused(binary: &Path, name: &str, peer_port: u16) -> String {
    let dir = tempfile::tempdir().unwrap();
    let peer = format!("http://127.0.0.1:{peer_port}");
    let client = format!("http://127.0.0.1:{}", free_port());
    let mut command = Command::new(binary);
    command
        .args(["--name", name, "--discovery-srv", DOMAIN])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--listen-peer-urls", &peer])
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ETCD") {
            command.env_remove(name);
        }
    }
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{} started: {stderr}",
        binary.display()
    );
    stderr
}

#[test]
fn discovery_srv_bootstraps_a_cluster_from_dns_as_etcd() {
    let records: Records = Arc::default();
    let dns = Dns::start(records.clone());
    let dir = tempfile::tempdir().unwrap();
    let etcd = wrapper(dir.path(), &require_tool("etcd"), dns.addr);
    let ours = wrapper(
        dir.path(),
        Path::new(env!("CARGO_BIN_EXE_metastore")),
        dns.addr,
    );
    let cluster = bootstrap_by_dns(ours.clone(), &records);
    // etcd 3.4.23 cannot bootstrap from `_etcd-server._tcp` records alone: it fails when the
    // `-ssl` lookup fails (and, when both succeed, uses only the `-ssl` records), so plain
    // http discovery does not work there. MetaStore takes both, as later etcd releases do.
    let stopped = refused(&etcd, "m0", free_port());
    assert!(
        stopped.contains("error querying DNS SRV records for _etcd-server-ssl"),
        "{stopped}"
    );
    // A member no record names is refused in etcd's words, by both.
    let mut with_ssl = publish(&cluster);
    with_ssl.push((format!("m9.{DOMAIN}"), vec![(String::new(), 0)]));
    with_ssl.push((
        format!("_etcd-server-ssl._tcp.{DOMAIN}"),
        vec![(format!("m9.{DOMAIN}"), 9)],
    ));
    *records.lock().unwrap() = with_ssl;
    let words = "cannot find local etcd member \"stranger\" in SRV records";
    let theirs = refused(&etcd, "stranger", free_port());
    assert!(theirs.contains(words), "{theirs}");
    let mine = refused(&ours, "stranger", free_port());
    assert!(mine.contains(words), "{mine}");
    drop(cluster);
}
