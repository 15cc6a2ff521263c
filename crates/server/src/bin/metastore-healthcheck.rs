//! `metastore-healthcheck [URL]`: exits 0 when `URL` (default `http://127.0.0.1:2379/health`)
//! answers 200 with a healthy body, 1 otherwise. The container image's `HEALTHCHECK` runs it:
//! the image has no shell and no curl, so the probe is a program of its own, std only, every
//! step bounded by a timeout so a hung member fails the check instead of hanging it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

/// How long one step (connect, write, read) may take; Docker's own timeout is the backstop.
const STEP: Duration = Duration::from_secs(3);
/// The most of the answer read: a health answer is a few dozen bytes.
const MAX_ANSWER: u64 = 64 * 1024;

fn main() -> ExitCode {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:2379/health".to_owned());
    match probe(&url) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("metastore-healthcheck: {url}: {why}");
            ExitCode::FAILURE
        }
    }
}

/// Splits `http://host:port/path` into the address text and the path.
fn split(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "only http:// URLs are supported".to_owned())?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/health"),
    })
}

fn probe(url: &str) -> Result<(), String> {
    let (authority, path) = split(url)?;
    let addrs: Vec<SocketAddr> = authority
        .to_socket_addrs()
        .map_err(|e| format!("resolving {authority}: {e}"))?
        .collect();
    let addr = addrs
        .first()
        .ok_or_else(|| format!("{authority} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(addr, STEP).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(STEP))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(STEP))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(|e| e.to_string())?;
    judge(&String::from_utf8_lossy(&answer))
}

/// Healthy: status 200 and, for `/health`, etcd's `"health":"true"` body.
fn judge(answer: &str) -> Result<(), String> {
    let status_line = answer.lines().next().unwrap_or_default();
    let status = status_line.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!("answered {status_line:?}"));
    }
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    if body.contains("\"health\"") && !body.contains("\"health\":\"true\"") {
        return Err(format!("unhealthy: {body}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_and_path() {
        assert_eq!(
            split("http://127.0.0.1:2379/livez"),
            Ok(("127.0.0.1:2379", "/livez"))
        );
        assert_eq!(split("http://m:2379"), Ok(("m:2379", "/health")));
        assert!(split("https://m:2379/health").is_err());
    }

    #[test]
    fn only_a_healthy_200_passes() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"health\":\"true\"}";
        assert_eq!(judge(ok), Ok(()));
        let no_quorum = "HTTP/1.1 503 Service Unavailable\r\n\r\n{\"health\":\"false\"}".to_owned();
        assert!(judge(&no_quorum).is_err());
        assert!(judge("HTTP/1.1 200 OK\r\n\r\n{\"health\":\"false\"}").is_err());
        assert_eq!(judge("HTTP/1.1 200 OK\r\n\r\nok"), Ok(()));
        assert!(judge("").is_err());
    }
}
