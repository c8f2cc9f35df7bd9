//! Publisher and node keys: generation and key files.
//!
//! A key file holds the 32-byte ed25519 secret as 64 hex digits and a newline. It is created
//! with mode 0600 and never overwritten, so a typo cannot destroy a publisher's identity.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

pub use ed25519_dalek::{SigningKey, VerifyingKey};

/// Why a key could not be made, written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The operating system's random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
    /// The key file already exists; keys are never overwritten.
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists {
        /// The file.
        path: String,
    },
    /// Reading or writing the file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file does not hold 64 hex digits.
    #[error("key file {path} does not hold a key (expected 64 hex digits)")]
    Malformed {
        /// The file.
        path: String,
    },
}

/// A fresh key from the operating system's random source.
pub fn generate() -> Result<SigningKey, KeyError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// The public key in hex (what `mule key show` prints and trust lists hold).
pub fn public_hex(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().to_bytes())
}

/// Writes `key` to a new file at `path` with mode 0600; fails if the file exists.
pub fn write_key_file(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let shown = path.display().to_string();
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists {
                path: shown.clone(),
            }
        } else {
            KeyError::Io {
                path: shown.clone(),
                source,
            }
        }
    })?;
    let text = format!("{}\n", hex::encode(key.to_bytes()));
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| KeyError::Io {
            path: shown,
            source,
        })
}

/// Reads a key written by [`write_key_file`].
pub fn read_key_file(path: &Path) -> Result<SigningKey, KeyError> {
    let shown = path.display().to_string();
    // A key file is 65 bytes; refuse to read anything big.
    let text = std::fs::read(path).map_err(|source| KeyError::Io {
        path: shown.clone(),
        source,
    })?;
    let mut secret = [0u8; 32];
    let trimmed = text.trim_ascii();
    if trimmed.len() != 64 || hex::decode_to_slice(trimmed, &mut secret).is_err() {
        return Err(KeyError::Malformed { path: shown });
    }
    Ok(SigningKey::from_bytes(&secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip_mode_and_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("publisher.key");
        let key = generate().unwrap();
        write_key_file(&path, &key).unwrap();
        assert_eq!(read_key_file(&path).unwrap().to_bytes(), key.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = generate().unwrap();
        assert_ne!(other.to_bytes(), key.to_bytes());
        assert!(matches!(
            write_key_file(&path, &other),
            Err(KeyError::Exists { .. })
        ));
        assert_eq!(read_key_file(&path).unwrap().to_bytes(), key.to_bytes());

        std::fs::write(dir.path().join("bad"), "xyz").unwrap();
        assert!(matches!(
            read_key_file(&dir.path().join("bad")),
            Err(KeyError::Malformed { .. })
        ));
        assert!(matches!(
            read_key_file(&dir.path().join("missing")),
            Err(KeyError::Io { .. })
        ));
    }
}
