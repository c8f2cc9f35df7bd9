//! Mule's typed configuration.
//!
//! One serde schema ([`Config`], one struct per TOML table) with a doc comment
//! on every field, a default for every key and unknown keys rejected, so that
//! a typo is an error instead of a silently applied default. The shipped,
//! fully commented `config/mule.toml` is embedded as [`DEFAULT_TOML`] and a
//! test proves it equals [`Config::default()`]; `mule run` therefore needs no
//! file at all.
//!
//! Loading has two steps, both reported as [`ConfigError`] with the origin
//! (file), line, column and dotted key:
//! 1. **parse**: TOML syntax, unknown keys, wrong types and malformed values
//!    (addresses, publisher keys) come from `toml`/serde with a byte span,
//!    which is turned into a line/column and, by walking the parsed document,
//!    into the key path;
//! 2. **validate**: values that parse but cannot work (a quota smaller than
//!    one piece, a beacon minimum above the maximum, a silence shorter than two
//!    beacon intervals, …); the key's position is found in the same document.
//!
//! Non-goals: merging several files, environment-variable overrides (only
//! `RUST_LOG` for logs), human-friendly size strings (sizes are exact integers
//! in bytes, durations integers in the unit their key names).
//!
//! [`KEYS`] lists every key with a one-line description; from it come the
//! Markdown reference ([`reference()`], checked in as `config/REFERENCE.md`)
//! and the effective configuration text of `mule config show`
//! ([`Config::to_toml_string`]).

mod error;
mod reference;
mod schema;
mod types;
mod validate;

use std::path::Path;

use toml::de::DeTable;

pub use error::{ConfigError, Diagnostic};
pub use reference::{KEYS, KeyDoc, reference};
pub use schema::{
    Carry, Config, Control, Discovery, Install, Log, Metrics, Prediction, Session, Store,
    Subscriptions, Summary, Trust,
};
pub use types::{InstallWindow, InstallWindowError, LogFormat, PublisherKey, PublisherKeyError};
pub use validate::{
    BEACON_INTERVAL_CEILING_MS, BEACON_INTERVAL_FLOOR_MS, CHANNEL_NAME_MAX, INTERFACE_NAME_MAX,
    KEEPALIVE_FLOOR_MS, LOCK_WAIT_MAX_MS, MAX_SESSIONS_LIMIT, ON_COMPLETE_TIMEOUT_MAX_S,
    PIECE_SIZE_MAX, PIECE_SIZE_MIN, SILENCE_CEILING_MS, SILENCE_FLOOR_MS, SOCKET_PATH_MAX,
};

use error::{Segment, line_column, offset_of, path_at, render_path};

/// The shipped default configuration file (`config/mule.toml`), embedded at
/// build time. Parsing it gives exactly [`Config::default()`].
pub const DEFAULT_TOML: &str = include_str!("../mule.toml");

/// Origin label used for configurations that do not come from a file.
pub const NO_FILE: &str = "<config>";

impl Config {
    /// Parses and validates a configuration text. `origin` names it in error
    /// messages (usually the file path).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| parse_error(text, origin, &e))?;
        config.check(text, origin)?;
        Ok(config)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text, &path.display().to_string())
    }

    /// Validates a configuration built in code (errors carry no position).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check("", NO_FILE)
    }

    /// The effective configuration as TOML, every key included (unset
    /// optional keys as comments), for `mule config show`. Parsing the result
    /// gives this configuration back.
    pub fn to_toml_string(&self) -> String {
        reference::render(self)
    }

    fn check(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let Err(problem) = validate::check(self) else {
            return Ok(());
        };
        let parsed = DeTable::parse_recoverable(text).0;
        let tree = parsed.get_ref();
        let mut message = problem.message;
        let mut offset = offset_of(tree, &problem.key);
        if offset.is_none() {
            // The value is a default: point at the related key the file sets.
            if let Some((path, at)) = problem
                .related
                .iter()
                .find_map(|p| offset_of(tree, p).map(|at| (p, at)))
            {
                offset = Some(at);
                message.push_str(&format!(
                    " ({} is not set here, so its default applies; set by {})",
                    render_path(&problem.key),
                    render_path(path)
                ));
            } else if matches!(problem.key.last(), Some(Segment::Index(_))) {
                offset = offset_of(tree, &problem.key[..problem.key.len() - 1]);
            }
        }
        Err(ConfigError::Invalid(Diagnostic {
            origin: origin.to_string(),
            position: offset.map(|o| line_column(text, o)),
            key: Some(render_path(&problem.key)),
            message,
        }))
    }
}

/// Turns a toml/serde error into a [`ConfigError::Parse`] with position and key.
fn parse_error(text: &str, origin: &str, error: &toml::de::Error) -> ConfigError {
    let span = error.span();
    let key = span.as_ref().and_then(|span| {
        let parsed = DeTable::parse_recoverable(text).0;
        path_at(parsed.get_ref(), span.start).map(|p| render_path(&p))
    });
    ConfigError::Parse(Diagnostic {
        origin: origin.to_string(),
        position: span.map(|s| line_column(text, s.start)),
        key,
        message: friendly(error.message()),
    })
}

/// Says serde's Rust-flavoured messages in the file's terms.
fn friendly(message: &str) -> String {
    let mut m = message
        .trim_end()
        .replacen("unknown field", "unknown key", 1);
    for (rust, words) in [
        ("expected u64", "expected a non-negative integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected u16", "expected an integer from 0 to 65535"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ] {
        if m.ends_with(rust) {
            m.truncate(m.len() - rust.len());
            m.push_str(words);
        }
    }
    if m == "invalid socket address syntax" {
        m.push_str(" (expected \"ADDR:PORT\", IPv6 as \"[ADDR]:PORT\")");
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_speak_toml() {
        assert_eq!(
            friendly("invalid type: string \"x\", expected u64"),
            "invalid type: string \"x\", expected a non-negative integer"
        );
        assert_eq!(
            friendly("unknown field `b`, expected `a`"),
            "unknown key `b`, expected `a`"
        );
    }
}
