//! The installer's view of the node's configuration: the hooks, and the operator's
//! deferrals (`install.hold`, `install.window`) evaluated against the local clock.
//!
//! The install decision itself is [`mule_bundle::release::decide`] (pure); this module only
//! reads the clock and the time zone, which the pure code must not.

use std::path::{Path, PathBuf};

use mule_bundle::complete::{Hook, Installer};
use mule_bundle::release::Gate;
use mule_config::{Config, InstallWindow};

/// The installer of a node with this configuration, data directory and node id.
pub fn installer(cfg: &Config, data_dir: &Path, node: [u8; 32]) -> Installer {
    let hook = |cmd: &Option<Vec<String>>, timeout| {
        let (program, args) = cmd.as_ref()?.split_first()?;
        Some(Hook {
            program: PathBuf::from(program),
            args: args.to_vec(),
            timeout,
        })
    };
    Installer {
        export_dir: cfg.store.export_dir_in(data_dir),
        on_complete: hook(&cfg.store.on_complete, cfg.store.on_complete_timeout()),
        health_check: hook(&cfg.store.health_check, cfg.store.health_check_timeout()),
        on_rollback: hook(&cfg.store.on_rollback, cfg.store.on_complete_timeout()),
        node,
    }
}

/// The operator's deferrals at unix time `now`, in the local time zone.
pub fn gate(install: &mule_config::Install, now: u64) -> Gate {
    Gate {
        hold: install.hold,
        outside_window: install
            .window
            .filter(|w| !in_window(w, now))
            .map(|w| w.to_string()),
    }
}

/// Whether unix time `now` is inside `w` in local time (the TZ environment, else
/// /etc/localtime, as libc resolves it). If the conversion fails, the window counts as
/// open: a broken time zone must not stop updates for good.
fn in_window(w: &InstallWindow, now: u64) -> bool {
    let t = libc::time_t::try_from(now).unwrap_or(libc::time_t::MAX);
    // SAFETY: localtime_r writes only into the `tm` we own; `t` is a valid time_t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return true;
    }
    // tm_wday: 0 = Sunday; the window counts from Monday.
    let weekday = ((tm.tm_wday + 6) % 7) as u8;
    let minute = (tm.tm_hour * 60 + tm.tm_min) as u16;
    w.contains(weekday, minute)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_follows_hold_and_window() {
        let mut install = mule_config::Install::default();
        assert_eq!(gate(&install, 0), Gate::default());
        install.hold = true;
        assert!(gate(&install, 0).hold);
        // A window that is always open, and one that never is (zero-length is refused, so
        // one minute a week) checked at a time outside it.
        install.window = Some("00:00-24:00".parse().unwrap());
        assert_eq!(gate(&install, 1_700_000_000).outside_window, None);
        let w: InstallWindow = "Mon 00:00-00:01".parse().unwrap();
        install.window = Some(w);
        // Unix 1_700_000_000 is a Tuesday or Wednesday in every time zone (UTC-12..UTC+14).
        assert_eq!(
            gate(&install, 1_700_000_000).outside_window,
            Some(w.to_string())
        );
    }
}
