//! Removable media (USB sticks, SD cards) as a transport.
//!
//! # Layout
//!
//! Everything Mule puts on a medium lives under one directory, `mule/`, at the
//! medium's root (or under any directory handed to `mule media write/sync`):
//!
//! ```text
//! mule/FORMAT                          "mule-media 1\n": marks the medium
//! mule/<bundle id>/manifest            the signed manifest, as `mule manifest` writes it
//! mule/<bundle id>/<index>.piece       one piece, index in decimal (8 digits, zero-padded)
//! ```
//!
//! A bundle may be partial on a medium (any subset of its pieces). Files are
//! written to a temporary name and renamed, and the medium's filesystem is
//! synced before `mule media write` returns, so a stick pulled out while it
//! is written holds whole files only. Works on FAT32, exFAT and ext4: names
//! are short, there are no links or permissions to keep.
//!
//! # Trust
//!
//! Nothing on a medium is trusted: a manifest must verify and pass the node's
//! trust and carry policy like one received from a neighbour, and every piece
//! is verified against its manifest before it is stored. Sizes are bounded
//! before anything is read ([`MAX_MANIFEST_BYTES`], the manifest's piece
//! length), and so is the number of entries looked at ([`MAX_BUNDLES`]).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use mule_bundle::manifest::MAX_MANIFEST_BYTES;
use mule_bundle::{BundleId, VerifiedManifest};

/// The directory Mule uses on a medium.
pub const MEDIA_DIR: &str = "mule";
/// The marker file inside [`MEDIA_DIR`].
pub const FORMAT_FILE: &str = "FORMAT";
/// Its content.
pub const FORMAT_LINE: &str = "mule-media 1\n";
/// Most bundle directories read from one medium.
pub const MAX_BUNDLES: usize = 10_000;

/// Why a medium could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory holds no Mule medium.
    #[error(
        "{0}: not a Mule medium (no {MEDIA_DIR}/{FORMAT_FILE}; write one with `mule media write`)"
    )]
    NotMedia(PathBuf),
    /// The medium's marker names another format.
    #[error("{0}: medium format {1:?} is not {FORMAT_LINE:?}")]
    Format(PathBuf, String),
    /// Reading or writing a file failed (a stick pulled out, a full medium, ...).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `ROOT/mule`.
pub fn media_dir(root: &Path) -> PathBuf {
    root.join(MEDIA_DIR)
}

/// The directory of one bundle on a medium.
pub fn bundle_dir(root: &Path, id: &BundleId) -> PathBuf {
    media_dir(root).join(id.to_string())
}

/// The file of one piece.
pub fn piece_path(dir: &Path, index: u32) -> PathBuf {
    dir.join(format!("{index:08}.piece"))
}

/// Whether `root` holds a Mule medium of the known format.
pub fn check(root: &Path) -> Result<(), Error> {
    let marker = media_dir(root).join(FORMAT_FILE);
    match fs::read_to_string(&marker) {
        Ok(s) if s == FORMAT_LINE => Ok(()),
        Ok(s) => Err(Error::Format(
            root.to_path_buf(),
            s.chars().take(40).collect(),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NotMedia(root.to_path_buf())),
        Err(e) => Err(io_at(&marker)(e)),
    }
}

/// Creates `ROOT/mule/FORMAT` if the medium has none yet.
pub fn init(root: &Path) -> Result<(), Error> {
    let dir = media_dir(root);
    fs::create_dir_all(&dir).map_err(io_at(&dir))?;
    match check(root) {
        Ok(()) => Ok(()),
        Err(Error::NotMedia(_)) => write_atomic(&dir.join(FORMAT_FILE), FORMAT_LINE.as_bytes()),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let r = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.flush()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.map_err(io_at(path))
}

/// Writes a bundle's manifest (when the medium lacks it) into its directory.
pub fn write_manifest(root: &Path, vm: &VerifiedManifest) -> Result<PathBuf, Error> {
    let dir = bundle_dir(root, &vm.id());
    fs::create_dir_all(&dir).map_err(io_at(&dir))?;
    let path = dir.join("manifest");
    if fs::read(&path).ok().as_deref() != Some(vm.as_bytes()) {
        write_atomic(&path, vm.as_bytes())?;
    }
    Ok(dir)
}

/// Whether the medium already holds piece `index` of `vm`, intact.
pub fn has_piece(dir: &Path, vm: &VerifiedManifest, index: u32) -> bool {
    read_piece(dir, vm, index)
        .ok()
        .flatten()
        .is_some_and(|d| mule_bundle::verify_piece(vm, index, &d).is_ok())
}

/// Reads piece `index` of `vm` from `dir`: `None` when the medium does not
/// have it. Never reads more than the piece's length (plus one byte, to see a
/// file that is too long); the caller verifies the content.
pub fn read_piece(dir: &Path, vm: &VerifiedManifest, index: u32) -> Result<Option<Vec<u8>>, Error> {
    let Some(len) = vm.piece_len(index) else {
        return Ok(None);
    };
    let path = piece_path(dir, index);
    let f = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_at(&path)(e)),
    };
    let mut data = Vec::with_capacity(len as usize);
    f.take(u64::from(len) + 1)
        .read_to_end(&mut data)
        .map_err(io_at(&path))?;
    Ok(Some(data))
}

/// The bundles on a medium: `(directory name as an id, directory)`, at most
/// [`MAX_BUNDLES`], in id order. Entries that are not bundle ids are skipped.
pub fn bundles(root: &Path) -> Result<Vec<(BundleId, PathBuf)>, Error> {
    check(root)?;
    let dir = media_dir(root);
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
        let entry = entry.map_err(io_at(&dir))?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<BundleId>().ok())
        {
            out.push((id, entry.path()));
            if out.len() >= MAX_BUNDLES {
                break;
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads and verifies a bundle's manifest from its directory; the id must
/// match the directory's name.
pub fn read_manifest(id: &BundleId, dir: &Path) -> Result<Result<VerifiedManifest, String>, Error> {
    let path = dir.join("manifest");
    let f = fs::File::open(&path).map_err(io_at(&path))?;
    let mut bytes = Vec::new();
    f.take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_at(&path))?;
    Ok(match VerifiedManifest::decode(&bytes) {
        Ok(vm) if vm.id() == *id => Ok(vm),
        Ok(vm) => Err(format!(
            "{}: manifest of {} under the name {id}",
            path.display(),
            vm.id()
        )),
        Err(e) => Err(format!("{}: {e}", path.display())),
    })
}

/// Flushes the filesystem holding `root` (`syncfs(2)`), so that what was
/// written survives the medium being pulled out.
pub fn sync(root: &Path) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    let dir = media_dir(root);
    let f = fs::File::open(&dir).map_err(io_at(&dir))?;
    // SAFETY: syncfs(2) on a file descriptor this function owns for the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io_at(&dir)(io::Error::last_os_error()));
    }
    Ok(())
}

/// The directories matching `patterns` that hold a Mule medium. A pattern is a
/// path whose components may contain `*` (any characters) and `?` (one), as in
/// `/media/*` or `/media/*/*` (udisks mounts under `/media/USER/LABEL`).
pub fn find(patterns: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in patterns {
        for dir in expand(Path::new(p)) {
            if check(&dir).is_ok() && !out.contains(&dir) {
                out.push(dir);
            }
        }
    }
    out
}

fn expand(pattern: &Path) -> Vec<PathBuf> {
    let mut current = vec![PathBuf::new()];
    for comp in pattern.components() {
        let part = comp.as_os_str().to_string_lossy();
        let mut next = Vec::new();
        for base in &current {
            if part.contains(['*', '?']) {
                let Ok(rd) = fs::read_dir(if base.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    base
                }) else {
                    continue;
                };
                let mut names: Vec<PathBuf> = rd
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter(|e| wildcard(&part, &e.file_name().to_string_lossy()))
                    .map(|e| base.join(e.file_name()))
                    .collect();
                names.sort();
                next.extend(names);
            } else {
                next.push(base.join(comp.as_os_str()));
            }
        }
        current = next;
        if current.len() > 4096 {
            current.truncate(4096);
        }
    }
    current
}

/// `*` and `?` wildcard match of a whole name (hidden names need a leading `.`).
fn wildcard(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0usize, 0usize, None, 0usize);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    while i < p.len() && p[i] == '*' {
        i += 1;
    }
    i == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard("*", "usb"));
        assert!(!wildcard("*", ".hidden"));
        assert!(wildcard("sd?1", "sdb1"));
        assert!(wildcard("*stick*", "my-stick-2"));
        assert!(!wildcard("*stick", "stick-2"));
        assert!(wildcard("a*b*c", "aXXbYYc"));
    }

    #[test]
    fn find_expands_patterns_to_media_only() {
        let t = tempfile::tempdir().unwrap();
        for d in ["media/alice/STICK", "media/alice/OTHER", "media/bob"] {
            fs::create_dir_all(t.path().join(d)).unwrap();
        }
        init(&t.path().join("media/alice/STICK")).unwrap();
        init(&t.path().join("media/bob")).unwrap();
        let p = |s: &str| t.path().join(s).display().to_string();
        assert_eq!(
            find(&[p("media/*/*")]),
            vec![t.path().join("media/alice/STICK")]
        );
        assert_eq!(
            find(&[p("media/*"), p("media/*/*")]),
            vec![
                t.path().join("media/bob"),
                t.path().join("media/alice/STICK")
            ]
        );
        assert!(find(&[p("nothing/*")]).is_empty());
    }

    #[test]
    fn a_medium_of_another_format_is_refused() {
        let t = tempfile::tempdir().unwrap();
        assert!(matches!(check(t.path()), Err(Error::NotMedia(_))));
        fs::create_dir_all(media_dir(t.path())).unwrap();
        fs::write(media_dir(t.path()).join(FORMAT_FILE), "mule-media 9\n").unwrap();
        assert!(matches!(check(t.path()), Err(Error::Format(..))));
        assert!(
            init(t.path()).is_err(),
            "init must not overwrite a foreign format"
        );
    }
}
