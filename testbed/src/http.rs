//! A minimal HTTP/1.0 client for loopback control endpoints: the AWS
//! proxy's `/_proxy/*`, rotor's `/readyz` and `/metrics`, moto's
//! `/rotor-test/*`. No curl process per request, and no HTTP stack to build.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// `host:port` of an `http://host:port[/...]` URL.
pub fn authority(url: &str) -> &str {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

/// One request to `authority` (`host:port`), JSON body if any:
/// (status, body). Blocking; see [`request_async`].
pub fn request(
    method: &str,
    authority: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let what = format!("{method} http://{authority}{path}");
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{what}: {e}"))?
        .next()
        .ok_or_else(|| format!("{what}: no address"))?;
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("{what}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| format!("{what}: {e}"))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("{what}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("{what}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{what}: malformed response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{what}: no status"))?;
    Ok((status, body.to_owned()))
}

/// [`request`] off the async runtime's worker threads.
pub async fn request_async(
    method: &'static str,
    authority: String,
    path: String,
    body: Option<String>,
) -> Result<(u16, String), String> {
    tokio::task::spawn_blocking(move || request(method, &authority, &path, body.as_deref()))
        .await
        .map_err(|e| e.to_string())?
}

/// A GET expecting 200: the body.
pub async fn get_ok(authority: String, path: String) -> Result<String, String> {
    let what = format!("GET http://{authority}{path}");
    match request_async("GET", authority, path, None).await? {
        (200, body) => Ok(body),
        (status, body) => Err(format!("{what}: HTTP {status}: {body}")),
    }
}
