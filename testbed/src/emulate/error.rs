//! Why an emulation failed.

use std::io;
use std::path::Path;

use crate::report::ReportError;
use crate::trace::TraceError;

/// Why an emulation failed.
#[derive(Debug, thiserror::Error)]
pub enum EmulateError {
    /// The trace was rejected.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// An option makes no sense for this trace.
    #[error("{0}")]
    Invalid(String),
    /// Not running as root: network namespaces cannot be created.
    #[error("emulation needs root (it creates network namespaces); run with sudo")]
    NotRoot,
    /// Building the topology (namespaces, veths, bridges, shaping) failed.
    #[error("topology: {0}")]
    Topology(io::Error),
    /// A daemon or a `mule` command failed.
    #[error("{what}: {why}")]
    Daemon {
        /// What we were doing.
        what: String,
        /// The error (command line, exit status, stderr).
        why: String,
    },
    /// A file in the output or work directory could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The report could not be written.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// Ctrl-C or SIGTERM arrived; everything was torn down and a partial report written.
    #[error("interrupted; partial report written to {0}")]
    Interrupted(String),
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> EmulateError + '_ {
    move |source| EmulateError::Io {
        path: path.display().to_string(),
        source,
    }
}
