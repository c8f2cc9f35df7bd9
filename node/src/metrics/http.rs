//! The scrape endpoint: `GET /metrics` over HTTP/1.1 with bounded resources (see the
//! module docs of [`super`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::registry::Metrics;

/// Connections served at once; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest accepted request head (request line and headers), in bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the whole answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// After answering, unread client input is discarded for at most this long...
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// ...or up to this many bytes, whichever comes first; then the connection closes.
const DRAIN_LIMIT: usize = 64 * 1024;

/// `Content-Type` of a scrape answer (text exposition format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` on `listener` until `shutdown` completes; then stops accepting,
/// drops the connections still open and returns. Never returns early: accept errors (such
/// as running out of file descriptors) are logged and retried after a short pause.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        // Wait for a free slot first, so at most MAX_CONNECTIONS are open; reap finished
        // connections meanwhile so the JoinSet stays bounded too.
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(res) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = res
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "metrics connection task panicked");
                }
                continue;
            }
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // The semaphore is never closed.
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        conns.spawn(async move {
            let _permit = permit;
            handle(stream, peer, &metrics).await;
        });
    }
    conns.shutdown().await;
}

/// One connection: read the head, answer, close.
async fn handle(mut stream: TcpStream, peer: SocketAddr, metrics: &Metrics) {
    let answer = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => Some(Response::error(408, "Request Timeout")),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "metrics endpoint: read failed");
            None
        }
        Ok(Ok(Head::Closed)) => None,
        Ok(Ok(Head::TooLarge)) => Some(Response::error(431, "Request Header Fields Too Large")),
        Ok(Ok(Head::Complete(head))) => Some(respond(&head, metrics)),
    };
    let Some(answer) = answer else { return };
    tracing::debug!(%peer, status = answer.status, "metrics endpoint: answered");
    let bytes = answer.to_bytes();
    let write = async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "metrics endpoint: write failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "metrics endpoint: client too slow to take the answer");
            return;
        }
    }
    // Closing a socket with unread input makes the kernel send a reset, which can destroy
    // the answer before the client reads it (a 431 leaves the rest of the head unread).
    // So read and discard what the client still sends, briefly and boundedly.
    let drain = async {
        let mut sink = [0u8; 1024];
        let mut left = DRAIN_LIMIT;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
}

/// What reading a request head produced.
enum Head {
    /// The head, up to and including its blank line (or all bytes before EOF).
    Complete(Vec<u8>),
    /// Over [`MAX_HEAD`] bytes without a blank line.
    TooLarge,
    /// The client closed without sending anything.
    Closed,
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            // EOF: answer whatever arrived (it will not parse as a full head: 400).
            return Ok(if buf.is_empty() {
                Head::Closed
            } else {
                Head::Complete(buf)
            });
        }
        // Only the new bytes (plus 3 before them) can complete the terminator.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[from..]) {
            buf.truncate(from + end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// Length of the head in `buf` including its terminating blank line (CRLF CRLF, or
/// LF LF as RFC 9112 allows recipients to accept), if complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A request line that parsed.
#[derive(Debug, PartialEq, Eq)]
struct Request<'a> {
    method: &'a str,
    /// The path, without any query string.
    path: &'a str,
}

/// Why a request head was refused with 400.
#[derive(Debug, PartialEq, Eq)]
enum BadRequest {
    /// No complete request line (no line end).
    Incomplete,
    /// The request line is not UTF-8.
    NotText,
    /// The request line is not `METHOD SP TARGET SP HTTP/1.x`.
    Malformed,
}

/// Parses the request line of a head. Headers are not needed and are ignored.
fn parse_request(head: &[u8]) -> Result<Request<'_>, BadRequest> {
    let end = head
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(BadRequest::Incomplete)?;
    let line = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
    let line = std::str::from_utf8(line).map_err(|_| BadRequest::NotText)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed);
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    let version_ok = matches!(version, "HTTP/1.0" | "HTTP/1.1");
    if !method_ok || !version_ok || !target.starts_with('/') {
        return Err(BadRequest::Malformed);
    }
    if target.bytes().any(|b| b.is_ascii_control()) {
        return Err(BadRequest::Malformed);
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Ok(Request { method, path })
}

/// An answer to write.
#[derive(Debug)]
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    /// Sent as `Allow` (405 only).
    allow: Option<&'static str>,
    body: String,
    /// `HEAD`: headers as for the body, but no body.
    head_only: bool,
}

impl Response {
    fn error(status: u16, reason: &'static str) -> Self {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            allow: None,
            body: format!("{status} {reason}\n"),
            head_only: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if let Some(allow) = self.allow {
            out.push_str("Allow: ");
            out.push_str(allow);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        if !self.head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

/// The answer to a request head (pure: no I/O).
fn respond(head: &[u8], metrics: &Metrics) -> Response {
    let req = match parse_request(head) {
        Ok(r) => r,
        Err(_) => return Response::error(400, "Bad Request"),
    };
    if req.path != "/metrics" {
        return Response::error(404, "Not Found");
    }
    match req.method {
        "GET" | "HEAD" => Response {
            status: 200,
            reason: "OK",
            content_type: CONTENT_TYPE,
            allow: None,
            body: metrics.render(),
            head_only: req.method == "HEAD",
        },
        _ => Response {
            allow: Some("GET, HEAD"),
            ..Response::error(405, "Method Not Allowed")
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse_or_are_refused() {
        let ok = |h: &[u8]| parse_request(h).map(|r| (r.method.to_string(), r.path.to_string()));
        assert_eq!(
            ok(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(("GET".into(), "/metrics".into()))
        );
        assert_eq!(
            ok(b"HEAD /metrics?x=1 HTTP/1.0\n\n"),
            Ok(("HEAD".into(), "/metrics".into()))
        );
        assert_eq!(ok(b"GET /metrics HTTP/1.1"), Err(BadRequest::Incomplete));
        assert_eq!(
            ok(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"),
            Err(BadRequest::NotText)
        );
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2\r\n\r\n",
            b"GET /met\trics HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert_eq!(
                ok(bad),
                Err(BadRequest::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    #[test]
    fn responses_by_method_and_path() {
        let m = Metrics::new();
        m.inc_contacts();
        let text = |r: &Response| String::from_utf8(r.to_bytes()).unwrap();

        let r = respond(b"GET /metrics HTTP/1.1\r\n\r\n", &m);
        assert_eq!(r.status, 200);
        let t = text(&r);
        let (head, body) = t.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\nContent-Type: {CONTENT_TYPE}")),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nContent-Length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("\r\nConnection: close"), "{head}");
        assert!(body.contains("\nmule_contacts_total 1\n"));

        let r = respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", &m);
        let t = text(&r);
        let (head, body) = t.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n") && body.is_empty(),
            "{t}"
        );
        assert!(
            head.contains(&format!("\r\nContent-Length: {}", r.body.len())),
            "{head}"
        );

        let r = respond(b"POST /metrics HTTP/1.1\r\n\r\n", &m);
        assert_eq!(r.status, 405);
        assert!(text(&r).contains("\r\nAllow: GET, HEAD\r\n"));
        assert_eq!(respond(b"GET / HTTP/1.1\r\n\r\n", &m).status, 404);
        assert_eq!(respond(b"DELETE /other HTTP/1.1\r\n\r\n", &m).status, 404);
        assert_eq!(
            respond(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", &m).status,
            400
        );
        let t = text(&respond(b"nonsense\r\n\r\n", &m));
        assert!(
            t.starts_with("HTTP/1.1 400 Bad Request\r\n")
                && t.ends_with("\r\n\r\n400 Bad Request\n"),
            "{t}"
        );
    }
}
