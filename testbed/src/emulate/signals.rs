//! Ctrl-C and SIGTERM: a handler that only sets a flag, which the setup steps and the
//! replay loop check.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the SIGINT/SIGTERM handler, read by the main loop. A process-wide flag is the only
/// thing a signal handler may safely touch.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the flag-setting handler for SIGINT and SIGTERM; restores the previous handlers
/// on drop.
pub(super) struct SignalGuard {
    old: [(libc::c_int, libc::sighandler_t); 2],
}

impl SignalGuard {
    pub(super) fn install() -> SignalGuard {
        STOP.store(false, Ordering::SeqCst);
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        let mut old = [
            (libc::SIGINT, libc::SIG_DFL),
            (libc::SIGTERM, libc::SIG_DFL),
        ];
        for (sig, prev) in &mut old {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            *prev = unsafe { libc::signal(*sig, handler) };
        }
        SignalGuard { old }
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (sig, prev) in self.old {
            if prev != libc::SIG_ERR {
                // SAFETY: restores what `signal` returned before.
                unsafe { libc::signal(sig, prev) };
            }
        }
    }
}

/// Whether Ctrl-C or SIGTERM arrived since the last [`SignalGuard::install`].
pub(super) fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}
