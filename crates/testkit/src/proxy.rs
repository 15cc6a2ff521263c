//! A fault-injecting TCP proxy in front of every member's peer port.
//!
//! Member `i` connects to its peers from its own loopback address, `127.0.0.{10 + i}`
//! (`--experimental-peer-source-addr`), and every member advertises its proxy's port rather
//! than its own. So the proxy in front of member `j` knows, for each connection, which member
//! opened it: the link `i → j`. A link can be cut (its connections are closed and new ones
//! refused) or slowed (each chunk waits before it is passed on). A cut is one-directional:
//! cutting `i → j` stops `i`'s requests to `j`, while `j` still reaches `i`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// The loopback address member `i` makes its peer connections from.
pub fn source_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + i as u8))
}

fn member_of(addr: IpAddr) -> Option<usize> {
    match addr {
        IpAddr::V4(v4) if v4.octets()[..3] == [127, 0, 0] && v4.octets()[3] >= 10 => {
            Some(usize::from(v4.octets()[3] - 10))
        }
        _ => None,
    }
}

#[derive(Default)]
struct Faults {
    cut: BTreeSet<(usize, usize)>,
    delay: BTreeMap<(usize, usize), Duration>,
}

/// A proxied connection, for closing it when its link is cut.
struct Conn {
    link: (usize, usize),
    client: TcpStream,
    server: TcpStream,
}

struct Shared {
    faults: Mutex<Faults>,
    conns: Mutex<Vec<Conn>>,
    stop: AtomicBool,
}

/// The proxies of one cluster.
pub struct Net {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Net {
    /// Starts one proxy per `(listen port, member port)`: proxy `j` listens on its port and
    /// forwards to member `j`'s peer port.
    ///
    /// # Errors
    /// A port that cannot be bound.
    pub fn start(routes: &[(u16, u16)]) -> std::io::Result<Net> {
        let shared = Arc::new(Shared {
            faults: Mutex::default(),
            conns: Mutex::default(),
            stop: AtomicBool::new(false),
        });
        let mut threads = Vec::new();
        for (j, &(listen, target)) in routes.iter().enumerate() {
            let listener = TcpListener::bind(("127.0.0.1", listen))?;
            listener.set_nonblocking(true)?;
            let shared = Arc::clone(&shared);
            threads.push(std::thread::spawn(move || {
                accept_loop(&listener, j, target, &shared)
            }));
        }
        Ok(Net { shared, threads })
    }

    /// Cuts the link `from → to`: its open connections are closed, new ones refused.
    pub fn cut(&self, from: usize, to: usize) {
        lock(&self.shared.faults).cut.insert((from, to));
        let mut conns = lock(&self.shared.conns);
        conns.retain(|c| {
            if c.link == (from, to) {
                let _ = c.client.shutdown(Shutdown::Both);
                let _ = c.server.shutdown(Shutdown::Both);
                false
            } else {
                true
            }
        });
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&self, a: usize, b: usize) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Delays every chunk on `from → to` by `delay` (zero: none).
    pub fn slow(&self, from: usize, to: usize, delay: Duration) {
        let mut f = lock(&self.shared.faults);
        if delay.is_zero() {
            f.delay.remove(&(from, to));
        } else {
            f.delay.insert((from, to), delay);
        }
    }

    /// Closes every open connection (members reconnect): a dropped-connections fault.
    pub fn drop_connections(&self) {
        for c in lock(&self.shared.conns).drain(..) {
            let _ = c.client.shutdown(Shutdown::Both);
            let _ = c.server.shutdown(Shutdown::Both);
        }
    }

    /// Removes every cut and delay.
    pub fn heal(&self) {
        *lock(&self.shared.faults) = Faults::default();
    }

    /// The links cut now.
    pub fn cuts(&self) -> Vec<(usize, usize)> {
        lock(&self.shared.faults).cut.iter().copied().collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.drop_connections();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, to: usize, target: u16, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let (client, addr) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        let Some(from) = member_of(addr.ip()) else {
            // Not a member (a test poking the port): refuse.
            continue;
        };
        let link = (from, to);
        if lock(&shared.faults).cut.contains(&link) {
            continue;
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
            continue;
        };
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        lock(&shared.conns).push(Conn {
            link,
            client: c3,
            server: s3,
        });
        let up = Arc::clone(shared);
        std::thread::spawn(move || pump(client, server, link, &up));
        let down = Arc::clone(shared);
        std::thread::spawn(move || pump(s2, c2, link, &down));
    }
}

/// Copies `from` to `to` until either closes or the link is cut, waiting the link's delay
/// before each chunk.
fn pump(mut from: TcpStream, mut to: TcpStream, link: (usize, usize), shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (cut, delay) = {
            let f = lock(&shared.faults);
            (f.cut.contains(&link), f.delay.get(&link).copied())
        };
        if cut {
            break;
        }
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_pass_and_cut_by_source() {
        let backend = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = backend.local_addr().unwrap().port();
        let listen = crate::free_port();
        let net = Net::start(&[(listen, target)]).unwrap();
        std::thread::spawn(move || {
            for s in backend.incoming().flatten() {
                let mut s = s;
                let mut b = [0u8; 4];
                if s.read_exact(&mut b).is_ok() {
                    let _ = s.write_all(&b);
                }
            }
        });
        let connect_from =
            |i: usize| socket2_connect(std::net::SocketAddr::new(source_addr(i), 0), listen);
        let mut a = connect_from(1);
        a.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        net.cut(1, 0);
        let mut b = connect_from(1);
        let _ = b.write_all(b"ping");
        assert!(
            b.read_exact(&mut got).is_err(),
            "a cut link carries nothing"
        );
        let mut c = connect_from(2);
        c.write_all(b"pong").unwrap();
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong", "other links still pass");
        net.heal();
        let mut d = connect_from(1);
        d.write_all(b"back").unwrap();
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"back");
    }

    /// A TCP connection to 127.0.0.1:`port` from `local` (std cannot bind before connecting).
    fn socket2_connect(local: std::net::SocketAddr, port: u16) -> TcpStream {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&local.into()).unwrap();
        let remote = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        socket.connect(&remote.into()).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        socket.into()
    }
}
