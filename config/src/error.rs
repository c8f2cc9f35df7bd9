//! Errors of loading a configuration, and how they point into the file.
//!
//! Every error that comes from the text names the origin (usually the file
//! path), the 1-based line and column, and the dotted key (`discovery.foo`,
//! `trust.publishers[1]`), so `mule config check FILE` can say exactly what to
//! fix. Line and column count characters, not bytes.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use toml::de::{DeTable, DeValue};

/// What went wrong while loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("{}: cannot read the configuration file: {source}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML, names an unknown key, or holds a value of
    /// the wrong type or form (including a malformed address or public key).
    #[error("{0}")]
    Parse(Diagnostic),
    /// Every value is well-formed, but one is impossible, alone or together
    /// with another key (e.g. a store quota smaller than one piece).
    #[error("{0}")]
    Invalid(Diagnostic),
}

impl ConfigError {
    /// Where in the text the error is, when it came from the text.
    pub fn diagnostic(&self) -> Option<&Diagnostic> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse(d) | ConfigError::Invalid(d) => Some(d),
        }
    }
}

/// A message pinned to a place in a configuration text.
///
/// Displays as `ORIGIN:LINE:COLUMN: KEY: MESSAGE`; the position is left out
/// when the offending value is not written in the text (it is a default), and
/// the key when the text is not even TOML there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where the text came from: a file path, or a label such as `<embedded default>`.
    pub origin: String,
    /// 1-based line and column of the offending key or value, when it is in the text.
    pub position: Option<(usize, usize)>,
    /// Dotted key of the offending entry, e.g. `discovery.beacon_interval_ms`
    /// or `trust.publishers[0]`, when known.
    pub key: Option<String>,
    /// What is wrong and, where it helps, what would be accepted.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// 1-based (line, column) of a byte offset; the column counts characters.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// A key inside a table.
    Key(String),
    /// An element of an array.
    Index(usize),
}

/// Renders a path as `a.b[2].c`.
pub(crate) fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => {
                out.push_str(&format!("[{i}]"));
            }
        }
    }
    out
}

/// The deepest key path whose key or value covers byte `offset`.
pub(crate) fn path_at(table: &DeTable<'_>, offset: usize) -> Option<Vec<Segment>> {
    for (key, value) in table.iter() {
        let here = Segment::Key(key.get_ref().to_string());
        let inner = match value.get_ref() {
            DeValue::Table(t) => path_at(t, offset),
            DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                if let DeValue::Table(t) = item.get_ref()
                    && let Some(mut p) = path_at(t, offset)
                {
                    p.insert(0, Segment::Index(i));
                    return Some(p);
                }
                covers(&item.span(), offset).then(|| vec![Segment::Index(i)])
            }),
            _ => None,
        };
        if let Some(mut p) = inner {
            p.insert(0, here);
            return Some(p);
        }
        if covers(&key.span(), offset) || covers(&value.span(), offset) {
            return Some(vec![here]);
        }
    }
    None
}

/// Byte offset where the entry at `path` is written: the key for a table
/// entry, the element itself for an array index. `None` when not in the text.
pub(crate) fn offset_of(table: &DeTable<'_>, path: &[Segment]) -> Option<usize> {
    let (first, rest) = path.split_first()?;
    let Segment::Key(name) = first else {
        return None;
    };
    let (key, value) = table.iter().find(|(k, _)| k.get_ref() == name.as_str())?;
    let mut current = value;
    let mut start = key.span().start;
    let mut remaining = rest;
    loop {
        let Some((step, tail)) = remaining.split_first() else {
            return Some(start);
        };
        match (step, current.get_ref()) {
            (Segment::Key(_), DeValue::Table(t)) => return offset_of(t, remaining),
            (Segment::Index(i), DeValue::Array(items)) => {
                let item = items.get(*i)?;
                start = item.span().start;
                current = item;
                remaining = tail;
            }
            _ => return None,
        }
    }
}

fn covers(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && (offset < span.end || (span.is_empty() && offset == span.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        // 'é' is two bytes; the '=' after "bé " is column 4.
        assert_eq!(line_column(text, text.find('=').unwrap()), (1, 3));
        let eq2 = text.rfind('=').unwrap();
        assert_eq!(line_column(text, eq2), (2, 4));
        assert_eq!(line_column(text, 10_000), (3, 1));
    }

    #[test]
    fn paths_are_found_in_both_directions() {
        let text = "top = 1\n[sec]\nlist = [\"a\", \"b\"]\nval = 3\n";
        let table = DeTable::parse(text).unwrap();
        let table = table.get_ref();
        let b = text.find("\"b\"").unwrap();
        let path = path_at(table, b + 1).unwrap();
        assert_eq!(render_path(&path), "sec.list[1]");
        assert_eq!(offset_of(table, &path), Some(b));
        let val = [Segment::Key("sec".into()), Segment::Key("val".into())];
        assert_eq!(offset_of(table, &val), text.find("val"));
        assert_eq!(render_path(&path_at(table, 2).unwrap()), "top");
        let missing = [Segment::Key("sec".into()), Segment::Key("nope".into())];
        assert_eq!(offset_of(table, &missing), None);
    }
}
