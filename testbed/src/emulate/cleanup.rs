//! Removing what killed emulations left behind (`mule-testbed cleanup`).

use std::path::Path;

use super::PREFIX;

/// directories `$TMPDIR/mule-emulate-<pid>-…`, but only those whose creating process is gone,
/// so it is safe while other emulations run. Returns how many objects were removed.
pub fn cleanup() -> usize {
    cleanup_where(|pids| !pids.iter().any(|&p| process_alive(p)))
}

/// Like [`cleanup`] but also removes the namespaces and work directories of emulations that
/// are still running (theirs or this process's own).
pub fn cleanup_all() -> usize {
    cleanup_where(|_| true)
}

fn cleanup_where(stale: impl Fn(&[u32]) -> bool) -> usize {
    let mut removed = 0;
    let full = format!("{}{PREFIX}", mule_netns::NAME_PREFIX);
    if let Ok(out) = mule_netns::run(&["ip", "netns", "list"]) {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix(&full) else {
                continue;
            };
            if !stale(&creator_pids(rest)) {
                continue;
            }
            if let Ok(out) = mule_netns::run(&["ip", "netns", "pids", name]) {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<libc::pid_t>() {
                        // SAFETY: a plain syscall on a process inside a namespace that an
                        // emulation created and whose creator is gone: a leftover daemon.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            if mule_netns::run(&["ip", "netns", "delete", name]).is_ok() {
                removed += 1;
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(WORKDIR_PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse().ok()) else {
                continue;
            };
            if stale(&[pid]) && std::fs::remove_dir_all(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Work directories (data dirs, keys, the published file) are `$TMPDIR/<this><pid>-<n>`.
pub(super) const WORKDIR_PREFIX: &str = "mule-emulate-";

/// The pids that may have created a namespace named `mnmtb` + `rest`: `rest` is the pid in
/// base 36, an `x`, and a counter in base 36; base 36 digits include `x`, so every split at an
/// `x` is a candidate (a namespace counts as live if any candidate is alive: conservative).
fn creator_pids(rest: &str) -> Vec<u32> {
    rest.match_indices('x')
        .filter_map(|(i, _)| u32::from_str_radix(&rest[..i], 36).ok())
        .collect()
}

/// Whether a process with this pid exists.
fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creator_pids_try_every_split() {
        let name = mule_netns::unique_name(PREFIX);
        let rest = name.strip_prefix("mnmtb").unwrap();
        assert!(creator_pids(rest).contains(&std::process::id()), "{name}");
        // pid 1221 is "xx" in base 36: candidates "x" (33) and "xx" (1221).
        assert_eq!(creator_pids("xxx0"), vec![33, 1221]);
        assert!(creator_pids("").is_empty());
    }
}
