//! The node's long-term identity: an ed25519 signing key kept in the data directory.
//!
//! On first start [`NodeIdentity::load_or_create`] draws 32 random bytes from the OS and
//! writes them to `<data dir>/node.key` (mode 0600, written to a temporary file and renamed,
//! so a crash never leaves a half-written key). Later starts read the same file. The
//! [`NodeId`] is the public key, so anything the node signs can be checked by anyone who saw
//! its id.
//!
//! File format: exactly 32 raw bytes (the ed25519 secret seed). Anything else is rejected
//! with [`IdentityError::BadKeyFile`] rather than silently replaced: a node that loses its key
//! loses its history with every peer, so we never overwrite one.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey};

use crate::NodeId;

/// File name of the node key inside the data directory.
pub const KEY_FILE: &str = "node.key";

/// Errors loading or creating the node key.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading, writing or creating the key file or the data directory failed.
    #[error("node key {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The key file exists but is not 32 bytes.
    #[error("node key {path} is {len} bytes, expected 32 (refusing to replace it)")]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its actual length.
        len: usize,
    },
    /// The operating system's random source failed.
    #[error("no randomness for a new node key: {0}")]
    Random(String),
}

/// The node's signing key and the id derived from it.
#[derive(Clone)]
pub struct NodeIdentity {
    key: SigningKey,
    id: NodeId,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("NodeIdentity")
            .field("id", &self.id)
            .finish()
    }
}

impl NodeIdentity {
    /// Builds an identity from a 32-byte secret seed (tests, simulators).
    pub fn from_secret(secret: [u8; 32]) -> NodeIdentity {
        let key = SigningKey::from_bytes(&secret);
        let id = NodeId(key.verifying_key().to_bytes());
        NodeIdentity { key, id }
    }

    /// A fresh random identity that is not stored anywhere.
    pub fn generate() -> Result<NodeIdentity, IdentityError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| IdentityError::Random(e.to_string()))?;
        Ok(Self::from_secret(secret))
    }

    /// Loads `<data_dir>/node.key`, creating the directory and a new key on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<NodeIdentity, IdentityError> {
        let path = data_dir.join(KEY_FILE);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { path, source }
        };
        match fs::read(&path) {
            Ok(bytes) => {
                let secret: [u8; 32] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| IdentityError::BadKeyFile {
                            path: path.clone(),
                            len: bytes.len(),
                        })?;
                if let Ok(meta) = fs::metadata(&path)
                    && meta.permissions().mode() & 0o077 != 0
                {
                    tracing::warn!(path = %path.display(), mode = format_args!("{:o}", meta.permissions().mode() & 0o777), "node key is readable by other users; chmod 600 it");
                }
                Ok(Self::from_secret(secret))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
                let me = Self::generate()?;
                let tmp = data_dir.join(format!("{KEY_FILE}.tmp.{}", std::process::id()));
                let write = || -> io::Result<()> {
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    f.write_all(&me.key.to_bytes())?;
                    f.sync_all()?;
                    // Never replace a key another process created meanwhile.
                    fs::hard_link(&tmp, &path)?;
                    fs::remove_file(&tmp)
                };
                match write() {
                    Ok(()) => {
                        tracing::info!(node = %me.id, path = %path.display(), "created node key");
                        Ok(me)
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let _ = fs::remove_file(&tmp);
                        Self::load_or_create(data_dir)
                    }
                    Err(e) => {
                        let _ = fs::remove_file(&tmp);
                        Err(io_err(&path)(e))
                    }
                }
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// This node's id (its public key).
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The signing key (for modules that sign on the node's behalf).
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Signs `msg` with the node key.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        self.key.sign(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_loads_same_key_with_mode_600() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("sub");
        let a = NodeIdentity::load_or_create(&data).unwrap();
        let b = NodeIdentity::load_or_create(&data).unwrap();
        assert_eq!(a.id(), b.id());
        let mode = fs::metadata(data.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read_dir(&data).unwrap().count(), 1, "no temp file left");
    }

    #[test]
    fn rejects_truncated_key_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEY_FILE), [1u8; 31]).unwrap();
        let err = NodeIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, IdentityError::BadKeyFile { len: 31, .. }),
            "{err}"
        );
    }

    #[test]
    fn id_is_public_key_and_signatures_verify() {
        let me = NodeIdentity::from_secret([7; 32]);
        let sig = me.sign(b"hello");
        let vk = ed25519_dalek::VerifyingKey::from_bytes(me.id().as_bytes()).unwrap();
        vk.verify_strict(b"hello", &sig).unwrap();
        assert!(vk.verify_strict(b"hellO", &sig).is_err());
    }
}
