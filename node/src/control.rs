//! The local control socket (`DATA_DIR/mule.sock`): how the `mule` CLI talks to
//! a running daemon.
//!
//! Wire format: each message is a 4-byte big-endian length followed by that
//! many bytes of CBOR (a [`Request`] from the client, a [`Response`] from the
//! daemon). One connection may carry many request/response pairs, answered in
//! order. The socket is created with mode 0660 (owner and group only), so
//! access is governed by the data directory's owner and group.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest control message accepted in either direction (pieces of up to
/// 256 KiB are batched well below this).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// A request from the CLI to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Node id, listen addresses, neighbours, bundles, store use.
    Status,
    /// Contact history and predictions per peer.
    Contacts,
    /// Stores a signed manifest (verified by the daemon). `published` marks
    /// bundles this node publishes: they are never evicted.
    ImportManifest {
        /// The signed manifest bytes.
        #[serde(with = "serde_bytes")]
        manifest: Vec<u8>,
        /// True when this node is the publisher.
        published: bool,
    },
    /// Stores consecutive pieces of a bundle (each verified by the daemon).
    PutPieces {
        /// Bundle id (hex).
        bundle: String,
        /// Index of the first piece in `pieces`.
        first: u32,
        /// The piece bytes.
        pieces: Vec<serde_bytes::ByteBuf>,
    },
    /// The signed manifest of a bundle.
    Manifest {
        /// Bundle id (hex, or a unique prefix).
        id: String,
    },
    /// One piece of a bundle.
    ReadPiece {
        /// Bundle id (hex).
        bundle: String,
        /// Piece index.
        index: u32,
    },
    /// Adds a channel to the node's subscriptions.
    Subscribe {
        /// Channel name.
        channel: String,
    },
    /// Removes a channel from the node's subscriptions.
    Unsubscribe {
        /// Channel name.
        channel: String,
    },
    /// Imports a removable medium (see `mule media sync`).
    MediaSync {
        /// The medium's directory.
        dir: String,
    },
    /// Writes bundles to a removable medium (see `mule media write`).
    MediaWrite {
        /// The medium's directory.
        dir: String,
        /// Only these bundles (full hex ids); empty: all.
        bundles: Vec<String>,
        /// Only bundles for these channels; empty: all.
        channels: Vec<String>,
    },
    /// Reads back and verifies the pieces of one bundle (`mule verify`); with `repair` the
    /// bad ones are dropped so they are fetched again. Without a bundle: the store's
    /// whole consistency check. Answered with [`Response::BadPieces`].
    Verify {
        /// Bundle id (hex), or none for the consistency check.
        bundle: Option<String>,
        /// Drop the bad pieces.
        repair: bool,
    },
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// The request failed; the text says why.
    Error(String),
    /// Done, nothing to report.
    Done,
    /// Answer to [`Request::Status`].
    Status(Box<crate::view::Status>),
    /// Answer to [`Request::Contacts`].
    Contacts(Vec<crate::view::PeerContacts>),
    /// A bundle id (hex), e.g. of an imported manifest.
    Id(String),
    /// Raw bytes (a manifest or a piece).
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Answer to [`Request::MediaSync`] and [`Request::MediaWrite`].
    Media(crate::view::MediaReport),
    /// Answer to [`Request::Verify`]: the bad pieces found (empty: all good).
    BadPieces(Vec<crate::view::BadPiece>),
}

/// Errors of the control channel itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No daemon is listening on the socket.
    #[error(
        "no mule daemon is running for data directory {dir} (no socket at {socket}); {hint}",
        hint = start_hint(dir)
    )]
    NotRunning {
        /// Data directory.
        dir: String,
        /// Socket path.
        socket: String,
    },
    /// The socket (or its directory) is not ours to use: the daemon runs as another user.
    #[error(
        "permission denied on the control socket {socket}: the daemon runs as another user; \
         use it as root or as a member of the group owning the socket (for the packaged \
         service: `sudo adduser $USER mule`, then log in again)"
    )]
    Denied {
        /// Socket path.
        socket: String,
    },
    /// The daemon closed the connection without answering: it is stopping (it finishes
    /// the requests it is handling, then closes its idle connections), or it gave this
    /// idle connection's slot to another client.
    #[error("the daemon closed the control connection without answering (is it stopping?)")]
    Closed,
    /// I/O on the socket failed.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// A message was larger than [`MAX_MESSAGE`].
    #[error("control message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    /// A message did not decode.
    #[error("malformed control message: {0}")]
    Malformed(String),
    /// The daemon answered with an error.
    #[error("{0}")]
    Remote(String),
}

/// The data directory of the packaged service (`StateDirectory=mule`).
pub const PACKAGED_DATA_DIR: &str = "/var/lib/mule";

/// How to start the daemon that owns `dir`: the packaged service for its
/// directory, `mule run` for any other.
fn start_hint(dir: &str) -> String {
    if Path::new(dir) == Path::new(PACKAGED_DATA_DIR) {
        "start the service with `sudo systemctl start mule` (see `systemctl status mule`)".into()
    } else {
        format!("start one with `mule run --data-dir {dir}`")
    }
}

/// Writes one length-prefixed CBOR message.
pub async fn write_message<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), Error> {
    let body =
        cbor4ii::serde::to_vec(Vec::new(), msg).map_err(|e| Error::Malformed(e.to_string()))?;
    if body.len() > MAX_MESSAGE {
        return Err(Error::TooLarge(body.len()));
    }
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one length-prefixed CBOR message; `Ok(None)` on a clean end of stream.
pub async fn read_message<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> Result<Option<T>, Error> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(Error::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    cbor4ii::serde::from_slice(&body)
        .map(Some)
        .map_err(|e| Error::Malformed(e.to_string()))
}

/// A connection to a running daemon.
pub struct Client {
    stream: tokio::net::UnixStream,
}

impl Client {
    /// Connects to the daemon of `data_dir`, or says plainly that none runs.
    pub async fn connect(data_dir: &Path) -> Result<Client, Error> {
        Client::connect_at(data_dir, &socket_path(data_dir)).await
    }

    /// Connects to the daemon listening on `socket` (the configured
    /// `control.socket`, else `DATA_DIR/mule.sock`); `data_dir` is only named
    /// in the "not running" message.
    pub async fn connect_at(data_dir: &Path, socket: &Path) -> Result<Client, Error> {
        let socket = socket.to_path_buf();
        match tokio::net::UnixStream::connect(&socket).await {
            Ok(stream) => Ok(Client { stream }),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::ConnectionRefused
                        // A daemon closing its listener while we connect.
                        | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Err(Error::NotRunning {
                    dir: data_dir.display().to_string(),
                    socket: socket.display().to_string(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(Error::Denied {
                socket: socket.display().to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends a request and waits for its answer; a daemon-side error becomes
    /// [`Error::Remote`].
    pub async fn call(&mut self, req: &Request) -> Result<Response, Error> {
        let closed = |e: Error| match e {
            Error::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                Error::Closed
            }
            e => e,
        };
        write_message(&mut self.stream, req).await.map_err(closed)?;
        match read_message(&mut self.stream).await.map_err(closed)? {
            Some(Response::Error(e)) => Err(Error::Remote(e)),
            Some(r) => Ok(r),
            None => Err(Error::Closed),
        }
    }
}

/// The control socket path of a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(crate::paths::SOCKET_FILE)
}

/// Binds the control socket at `path`, replacing a stale one left by a killed
/// daemon (but refusing when another daemon still answers on it).
pub async fn bind_path(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = path.to_path_buf();
    if path.exists() {
        if tokio::net::UnixStream::connect(&path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "another mule daemon is already running on {}",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn message_round_trip_and_limits() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_message(
            &mut a,
            &Request::Subscribe {
                channel: "fw".into(),
            },
        )
        .await
        .unwrap();
        let got: Request = read_message(&mut b).await.unwrap().unwrap();
        assert!(matches!(got, Request::Subscribe { channel } if channel == "fw"));

        // An announced length over the limit is refused before allocating.
        a.write_all(&(MAX_MESSAGE as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        let err = read_message::<_, Request>(&mut b).await.unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)));
    }

    #[tokio::test]
    async fn garbage_is_a_malformed_error() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(&[0xff, 0x00, 0x13]).await.unwrap();
        let err = read_message::<_, Request>(&mut b).await.unwrap_err();
        assert!(matches!(err, Error::Malformed(_)), "{err}");
    }

    #[tokio::test]
    async fn connect_without_daemon_says_how_to_start_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = match Client::connect(dir.path()).await {
            Err(e) => e,
            Ok(_) => panic!("connected to nothing"),
        };
        let text = err.to_string();
        assert!(text.contains("no mule daemon is running"), "{text}");
        assert!(text.contains("mule run --data-dir"), "{text}");
    }

    /// Issue 11: for the packaged service's directory the hint said `mule run`.
    #[test]
    fn the_packaged_data_directory_points_at_systemctl() {
        let err = Error::NotRunning {
            dir: PACKAGED_DATA_DIR.into(),
            socket: format!("{PACKAGED_DATA_DIR}/mule.sock"),
        };
        let text = err.to_string();
        assert!(text.contains("systemctl start mule"), "{text}");
        assert!(!text.contains("mule run"), "{text}");
    }
}
