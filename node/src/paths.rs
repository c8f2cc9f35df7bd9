//! Where a node keeps its state.

use std::path::{Path, PathBuf};

/// File name of the redb database inside the data directory.
pub const STORE_FILE: &str = "store.redb";
/// File name of the node key inside the data directory.
pub const NODE_KEY_FILE: &str = "node.key";
/// File name of the control socket inside the data directory.
pub const SOCKET_FILE: &str = "mule.sock";
/// File name of the data directory's lock (see [`crate::lock`]).
pub const LOCK_FILE: &str = "mule.lock";

/// Resolves the data directory: the explicit flag, else the config's `data_dir`,
/// else `$STATE_DIRECTORY` (set by systemd's `StateDirectory=`), else
/// `$XDG_DATA_HOME/mule`, else `~/.local/share/mule`, else `./mule-data`.
pub fn data_dir(flag: Option<&Path>, configured: Option<&Path>) -> PathBuf {
    if let Some(p) = flag.or(configured) {
        return p.to_path_buf();
    }
    if let Some(s) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several colon-separated directories; the first is ours.
        let s = s.to_string_lossy();
        if let Some(first) = s.split(':').find(|p| !p.is_empty()) {
            return PathBuf::from(first);
        }
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("mule");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/share/mule");
    }
    PathBuf::from("mule-data")
}

/// Creates the data directory (mode 0700 for a new one) if it does not exist.
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_over_config() {
        let d = data_dir(Some(Path::new("/a")), Some(Path::new("/b")));
        assert_eq!(d, PathBuf::from("/a"));
        let d = data_dir(None, Some(Path::new("/b")));
        assert_eq!(d, PathBuf::from("/b"));
    }
}
