//! Free loopback ports for servers.

use std::net::TcpListener;
use std::sync::Mutex;

/// Ports handed out in this process, so two servers of one run never get the same one.
static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Where server ports are taken from: below the kernel's ephemeral range, so that no client's
/// outgoing connection can take a server's port while that server restarts.
fn port_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    (10_000, ephemeral_low.max(12_000))
}

/// A port that is free now and that no other server of this process got. Processes start at
/// different offsets (by pid), so concurrent runs rarely even try the same port.
///
/// # Panics
/// When no port of the range is free.
pub fn free_port() -> u16 {
    let (low, high) = port_range();
    let span = u32::from(high - low);
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let start = (std::process::id().wrapping_mul(7919) + handed_out.len() as u32 * 13) % span;
    for i in 0..span {
        let port = low + ((start + i) % span) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}
