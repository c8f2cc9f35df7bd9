//! The transport-neutral session byte stream, and the connection helpers every transport
//! shares.
//!
//! A session does not care whether its bytes go over TCP or a Bluetooth L2CAP channel:
//! both are a [`SessionStream`] (a boxed `AsyncRead + AsyncWrite`). Bluetooth needs two
//! guards that TCP does not, written generically so they are tested without a radio:
//! - [`wait_connected`]: `bluer`'s `connect()` can return before the socket is connected
//!   (a stale "writable" readiness plus `SO_ERROR == 0`), and the first write then fails with
//!   `ENOTCONN`. The guard polls a probe (for L2CAP: `conn_info()`, which fails with
//!   `ENOTCONN` until the channel is up) before the stream is handed out.
//! - [`connect_with_retry`]: L2CAP connects sometimes fail with "connection refused" for no
//!   lasting reason; they are retried with exponential backoff.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

/// Anything that reads and writes bytes asynchronously.
pub trait AsyncReadWrite: AsyncRead + AsyncWrite {}

impl<T: AsyncRead + AsyncWrite + ?Sized> AsyncReadWrite for T {}

/// A session's byte stream, whatever the transport.
pub type SessionStream = Box<dyn AsyncReadWrite + Send + Unpin>;

/// Boxes any stream as a [`SessionStream`] (e.g. a `tokio::net::TcpStream`).
pub fn session_stream<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(s: S) -> SessionStream {
    Box::new(s)
}

/// Polls `probe` every `every` until it reports the connection is up (`Ok(())`), an error
/// other than `ENOTCONN` occurs (returned), or `timeout` passes (`TimedOut`).
pub async fn wait_connected(
    mut probe: impl FnMut() -> io::Result<()>,
    every: Duration,
    timeout: Duration,
) -> io::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match probe() {
            Ok(()) => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::ENOTCONN)
                    || e.kind() == io::ErrorKind::NotConnected =>
            {
                if tokio::time::Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connect returned but the channel never came up",
                    ));
                }
                tokio::time::sleep(every).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Retry settings for [`connect_with_retry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total (at least one).
    pub attempts: u32,
    /// Wait before the second attempt; doubles each time.
    pub first_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// Calls `connect` until it succeeds, retrying only "connection refused" with exponential
/// backoff; other errors and the last refusal are returned as they are.
pub async fn connect_with_retry<S, F, Fut>(policy: RetryPolicy, mut connect: F) -> io::Result<S>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<S>>,
{
    let mut backoff = policy.first_backoff;
    let mut attempt = 1;
    loop {
        match connect().await {
            Ok(s) => return Ok(s),
            Err(e)
                if e.kind() == io::ErrorKind::ConnectionRefused
                    && attempt < policy.attempts.max(1) =>
            {
                tracing::debug!(attempt, error = %e, "connection refused, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(policy.max_backoff);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn socketpair_works_as_session_stream() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        // The connect guard over a real socket: a connected pair has a peer address.
        wait_connected(
            || a.peer_addr().map(drop),
            Duration::from_millis(1),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        let mut a = session_stream(a);
        let mut b = session_stream(b);
        let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let p2 = payload.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&p2).await.unwrap();
            a.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, payload);
    }

    #[tokio::test]
    async fn guard_waits_for_enotconn_to_clear_and_times_out() {
        let calls = AtomicU32::new(0);
        wait_connected(
            || {
                if calls.fetch_add(1, Ordering::Relaxed) < 3 {
                    Err(io::Error::from_raw_os_error(libc::ENOTCONN))
                } else {
                    Ok(())
                }
            },
            Duration::from_millis(1),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 4);
        let e = wait_connected(
            || Err(io::Error::from_raw_os_error(libc::ENOTCONN)),
            Duration::from_millis(1),
            Duration::from_millis(20),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let e = wait_connected(
            || Err(io::Error::from_raw_os_error(libc::EHOSTDOWN)),
            Duration::from_millis(1),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EHOSTDOWN));
    }

    #[tokio::test]
    async fn retries_only_refusals() {
        let policy = RetryPolicy {
            attempts: 4,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        };
        let n = AtomicU32::new(0);
        let r: io::Result<u32> = connect_with_retry(policy, || {
            let k = n.fetch_add(1, Ordering::Relaxed);
            async move {
                if k < 2 {
                    Err(io::Error::from(io::ErrorKind::ConnectionRefused))
                } else {
                    Ok(k)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 2);
        n.store(0, Ordering::Relaxed);
        let r: io::Result<u32> = connect_with_retry(policy, || {
            n.fetch_add(1, Ordering::Relaxed);
            async { Err(io::Error::from(io::ErrorKind::ConnectionRefused)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(n.load(Ordering::Relaxed), 4, "gives up after all attempts");
        n.store(0, Ordering::Relaxed);
        let r: io::Result<u32> = connect_with_retry(policy, || {
            n.fetch_add(1, Ordering::Relaxed);
            async { Err(io::Error::from(io::ErrorKind::PermissionDenied)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(n.load(Ordering::Relaxed), 1, "other errors are not retried");
    }
}
