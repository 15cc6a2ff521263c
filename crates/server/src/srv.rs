//! etcd's `--discovery-srv`: the initial cluster from DNS SRV records.
//!
//! As etcd 3.4 does, the records of `_etcd-server-ssl._tcp.DOMAIN` give `https://` peers and
//! those of `_etcd-server._tcp.DOMAIN` give `http://` ones (`--discovery-srv-name N` looks up
//! `_etcd-server-ssl-N` and `_etcd-server-N`). A record whose target and port resolve to the
//! address of one of this member's `--initial-advertise-peer-urls` is this member (its
//! `--name`); the others are named `0`, `1`, ... in the order found. The SRV query goes to the
//! name servers of the system's `/etc/resolv.conf` over UDP (as Go's resolver does); the
//! targets are resolved by the system (`getaddrinfo`, so `/etc/hosts` counts).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::Duration;

/// How long one name server has to answer one query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// DNS's record type of SRV records.
const TYPE_SRV: u16 = 33;
/// Where the system names its name servers.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// One SRV record's target (without the trailing dot) and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Srv {
    /// The host serving.
    pub target: String,
    /// Its port.
    pub port: u16,
}

/// The name servers a `resolv.conf` names (port 53), or the local one when it names none, as
/// Go and glibc default.
pub(crate) fn nameservers(conf: &str) -> Vec<SocketAddr> {
    let found: Vec<SocketAddr> = conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let ip: std::net::IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect();
    if found.is_empty() {
        vec![SocketAddr::from(([127, 0, 0, 1], 53))]
    } else {
        found
    }
}

/// A standard query (recursion desired) for the SRV records of `name`.
pub(crate) fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut msg = Vec::with_capacity(64);
    msg.extend_from_slice(&id.to_be_bytes());
    // Flags: RD; one question.
    msg.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..64).contains(l))
            .ok_or_else(|| format!("invalid domain name {name:?}"))?;
        msg.push(len);
        msg.extend_from_slice(label.as_bytes());
    }
    msg.push(0);
    msg.extend_from_slice(&TYPE_SRV.to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes());
    Ok(msg)
}

/// Why a lookup found no records.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LookupError {
    /// The name does not exist (NXDOMAIN).
    NoSuchHost,
    /// The server failed, or its answer was not one we can read.
    Other(String),
}

fn u16_at(msg: &[u8], pos: usize) -> Result<u16, LookupError> {
    msg.get(pos..pos + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| LookupError::Other("truncated answer".into()))
}

/// The (possibly compressed) name at `pos`, and where the bytes after it start.
fn read_name(msg: &[u8], mut pos: usize) -> Result<(String, usize), LookupError> {
    let bad = || LookupError::Other("malformed name in answer".into());
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    // Pointers only go backwards in a well-formed message; bound the jumps anyway.
    for _ in 0..128 {
        let len = *msg.get(pos).ok_or_else(bad)?;
        match len {
            0 => {
                return Ok((labels.join("."), end.unwrap_or(pos + 1)));
            }
            l if l & 0xC0 == 0xC0 => {
                let low = *msg.get(pos + 1).ok_or_else(bad)?;
                end.get_or_insert(pos + 2);
                pos = (usize::from(l & 0x3F) << 8) | usize::from(low);
            }
            l if l < 64 => {
                let label = msg.get(pos + 1..pos + 1 + usize::from(l)).ok_or_else(bad)?;
                labels.push(String::from_utf8_lossy(label).into_owned());
                pos += 1 + usize::from(l);
            }
            _ => return Err(bad()),
        }
    }
    Err(bad())
}

/// The SRV records in the answer to query `id`, ordered by priority.
pub(crate) fn parse_answer(id: u16, msg: &[u8]) -> Result<Vec<Srv>, LookupError> {
    if u16_at(msg, 0)? != id {
        return Err(LookupError::Other("answer to another query".into()));
    }
    let flags = u16_at(msg, 2)?;
    match flags & 0x000F {
        0 => {}
        3 => return Err(LookupError::NoSuchHost),
        rcode => {
            return Err(LookupError::Other(format!(
                "server failure (rcode {rcode})"
            )))
        }
    }
    if flags & 0x0200 != 0 {
        return Err(LookupError::Other(
            "answer truncated (DNS over TCP is not supported)".into(),
        ));
    }
    let questions = u16_at(msg, 4)?;
    let answers = u16_at(msg, 6)?;
    let mut pos = 12;
    for _ in 0..questions {
        pos = read_name(msg, pos)?.1 + 4;
    }
    let mut records = Vec::new();
    for _ in 0..answers {
        pos = read_name(msg, pos)?.1;
        let kind = u16_at(msg, pos)?;
        let len = usize::from(u16_at(msg, pos + 8)?);
        let data = pos + 10;
        if data + len > msg.len() {
            return Err(LookupError::Other("truncated answer".into()));
        }
        if kind == TYPE_SRV {
            let priority = u16_at(msg, data)?;
            let port = u16_at(msg, data + 4)?;
            let (target, _) = read_name(msg, data + 6)?;
            records.push((priority, Srv { target, port }));
        }
        pos = data + len;
    }
    records.sort_by_key(|(priority, _)| *priority);
    Ok(records.into_iter().map(|(_, r)| r).collect())
}

/// The SRV records of `name`, asked of each name server in `servers` in turn.
pub(crate) fn lookup(name: &str, servers: &[SocketAddr]) -> Result<Vec<Srv>, String> {
    let mut last = String::from("no name server");
    for server in servers {
        let id = u16::try_from(std::process::id() & 0xFFFF).unwrap_or(0x5a5a) ^ 0x2379;
        let asked = (|| -> Result<Vec<Srv>, LookupError> {
            let other = |e: std::io::Error| LookupError::Other(e.to_string());
            let local = if server.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let socket = UdpSocket::bind(local).map_err(other)?;
            socket
                .set_read_timeout(Some(QUERY_TIMEOUT))
                .map_err(other)?;
            socket.connect(server).map_err(other)?;
            socket
                .send(&encode_query(id, name).map_err(LookupError::Other)?)
                .map_err(other)?;
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.recv(&mut buf).map_err(other)?;
                match parse_answer(id, &buf[..n]) {
                    // A stray datagram: keep waiting for ours (within the read timeout).
                    Err(LookupError::Other(e)) if e == "answer to another query" => continue,
                    done => return done,
                }
            }
        })();
        match asked {
            Ok(records) => return Ok(records),
            Err(LookupError::NoSuchHost) => {
                return Err(format!("lookup {name} on {server}: no such host"));
            }
            Err(LookupError::Other(e)) => last = format!("lookup {name} on {server}: {e}"),
        }
    }
    Err(last)
}

/// The first address `host_port` resolves to, IPv4 first (as Go's `ResolveTCPAddr`).
fn resolve(host_port: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = host_port
        .to_socket_addrs()
        .map_err(|e| format!("lookup {host_port}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("lookup {host_port}: no address"))
}

/// `scheme://host:port/...` → (scheme, host:port).
fn split_url(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    Some((scheme, rest.split('/').next()?))
}

/// The initial cluster (`name=url,...`) from the SRV records of `domain` for `service`
/// (`etcd-server`, or `etcd-server-NAME`), naming `name` the record of this member's
/// `peer_urls`, with the name servers of the system.
///
/// # Errors
/// etcd's: both lookups failed, or a record of this member has the other scheme.
pub(crate) fn cluster(
    service: &str,
    name: &str,
    domain: &str,
    peer_urls: &[String],
) -> Result<String, String> {
    let conf = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
    let servers = nameservers(&conf);
    cluster_with(service, name, domain, peer_urls, |n| lookup(n, &servers))
}

fn cluster_with(
    service: &str,
    name: &str,
    domain: &str,
    peer_urls: &[String],
    lookup: impl Fn(&str) -> Result<Vec<Srv>, String>,
) -> Result<String, String> {
    let mut local: BTreeMap<SocketAddr, &str> = BTreeMap::new();
    for url in peer_urls {
        let (_, host) = split_url(url).ok_or_else(|| format!("invalid peer URL {url:?}"))?;
        local.insert(resolve(host)?, url);
    }
    let mut parts: Vec<String> = Vec::new();
    let mut unnamed = 0;
    let mut failures = Vec::new();
    for (svc, scheme) in [
        (format!("{service}-ssl"), "https"),
        (service.to_string(), "http"),
    ] {
        let failed = match lookup(&format!("_{svc}._tcp.{domain}")) {
            Err(e) => Some(e),
            Ok(records) => {
                let mut err = None;
                for r in records {
                    let host = format!("{}:{}", r.target, r.port);
                    let addr = match resolve(&host) {
                        Ok(a) => a,
                        Err(e) => {
                            err = Some(e);
                            continue;
                        }
                    };
                    let ours = local.get(&addr);
                    let n = if ours.is_some() {
                        name.to_string()
                    } else {
                        unnamed += 1;
                        (unnamed - 1).to_string()
                    };
                    match ours {
                        Some(url) if split_url(url).map(|(s, _)| s) != Some(scheme) => {
                            err = Some(format!(
                                "bootstrap at {scheme}://{host} from DNS for {svc} has scheme mismatch with expected peer {url}"
                            ));
                        }
                        _ => parts.push(format!("{n}={scheme}://{host}")),
                    }
                }
                err.filter(|_| parts.is_empty())
            }
        };
        if let Some(e) = failed {
            failures.push(format!("error querying DNS SRV records for _{svc} {e}"));
        }
    }
    if failures.len() == 2 {
        return Err(format!(
            "srv: too many errors querying DNS SRV records ({:?}, {:?})",
            failures[0], failures[1]
        ));
    }
    Ok(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `query` with SRV records `(target, port)`, owners compressed.
    fn answer(query: &[u8], records: &[(&str, u16)]) -> Vec<u8> {
        let mut msg = query.to_vec();
        msg[2] = 0x81;
        msg[3] = 0x80;
        msg[6..8].copy_from_slice(&u16::try_from(records.len()).unwrap().to_be_bytes());
        for (target, port) in records {
            // The owner name: a pointer to the question's name at offset 12.
            msg.extend_from_slice(&[0xC0, 12]);
            msg.extend_from_slice(&TYPE_SRV.to_be_bytes());
            msg.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
            let mut data = vec![0, 10, 0, 5];
            data.extend_from_slice(&port.to_be_bytes());
            for label in target.split('.') {
                data.push(u8::try_from(label.len()).unwrap());
                data.extend_from_slice(label.as_bytes());
            }
            data.push(0);
            msg.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
            msg.extend_from_slice(&data);
        }
        msg
    }

    #[test]
    fn an_answer_gives_its_srv_records() {
        let q = encode_query(7, "_etcd-server._tcp.example.com").unwrap();
        let a = answer(&q, &[("m0.example.com", 2380), ("m1.example.com", 2381)]);
        assert_eq!(
            parse_answer(7, &a).unwrap(),
            [
                Srv {
                    target: "m0.example.com".into(),
                    port: 2380
                },
                Srv {
                    target: "m1.example.com".into(),
                    port: 2381
                }
            ]
        );
        assert!(parse_answer(8, &a).is_err());
        let mut nx = q.clone();
        nx[3] = 0x83;
        assert_eq!(parse_answer(7, &nx), Err(LookupError::NoSuchHost));
        // A pointer loop is refused, not followed forever.
        let mut looped = q;
        looped[12] = 0xC0;
        looped[13] = 12;
        assert!(parse_answer(7, &looped).is_err());
    }

    #[test]
    fn resolv_conf_names_its_servers() {
        assert_eq!(
            nameservers("# x\nsearch a\nnameserver 10.0.0.2\nnameserver ::1\n"),
            [
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(nameservers(""), ["127.0.0.1:53".parse().unwrap()]);
    }

    #[test]
    fn this_member_is_named_the_others_numbered() {
        let lookup = |n: &str| match n {
            "_etcd-server._tcp.example.com" => Ok(vec![
                Srv {
                    target: "127.0.0.1".into(),
                    port: 1,
                },
                Srv {
                    target: "127.0.0.1".into(),
                    port: 2,
                },
            ]),
            other => Err(format!("lookup {other}: no such host")),
        };
        let c = cluster_with(
            "etcd-server",
            "b",
            "example.com",
            &["http://127.0.0.1:2".into()],
            lookup,
        );
        assert_eq!(c.unwrap(), "0=http://127.0.0.1:1,b=http://127.0.0.1:2");
        let e = cluster_with(
            "etcd-server",
            "b",
            "example.com",
            &["https://127.0.0.1:2".into()],
            lookup,
        );
        // The mismatch is dropped (as etcd) and the other record kept.
        assert_eq!(e.unwrap(), "0=http://127.0.0.1:1");
        let e = cluster_with("etcd-server", "b", "nowhere", &[], lookup).unwrap_err();
        assert!(
            e.starts_with("srv: too many errors querying DNS SRV records"),
            "{e}"
        );
    }
}
