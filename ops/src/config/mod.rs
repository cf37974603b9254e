//! Config files, the same way for both binaries: TOML parse errors carry line, column and
//! key; a semantic check names the key it refuses, and the load finds that key's line.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub mod tagged;

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the read said.
        source: std::io::Error,
    },
    /// The file is not TOML, or does not fit the config's shape (the message has the line).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// A semantic check refused a value.
    #[error("invalid config file {path}: {key}{}: {message}", line_suffix(*line))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The refused key, dotted (`sources.cpu.rate`).
        key: String,
        /// The key's line in the file, when it is written there (defaults are not).
        line: Option<usize>,
        /// What is wrong with it.
        message: String,
    },
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// A semantic error found after parsing: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The refused key, dotted (`sources.cpu.rate`).
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl Invalid {
    /// A refusal of `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for Invalid {}

/// Parse TOML text into `T`; the error carries line, column and key.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
}

/// Read and parse `path`, then hand the value and the file's directory (for relative paths)
/// to `check`, whose refusal is reported with the key's line.
pub fn load<T: DeserializeOwned>(
    path: &Path,
    check: impl FnOnce(&mut T, &Path) -> Result<(), Invalid>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut value: T = parse(&text).map_err(|message| ConfigError::Parse {
        path: path.to_owned(),
        message,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    check(&mut value, base).map_err(|e| ConfigError::Invalid {
        path: path.to_owned(),
        line: line_of(&text, &e.key),
        key: e.key,
        message: e.message,
    })?;
    Ok(value)
}

/// The 1-based line where a dotted key (`sources.cpu.rate`, `api.tokens.0.digest`) is
/// written, or of its nearest written parent; `None` when not even its first part is.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut at: Option<usize> = None;
    let parts = key_parts(key);
    let mut parts = parts.iter().map(String::as_str).peekable();
    while let Some(part) = parts.next() {
        let Some((k, v)) = table.get_key_value(part) else {
            break;
        };
        at = Some(k.span().start);
        let mut value = v.get_ref();
        // Array elements are addressed by index.
        while let (DeValue::Array(items), Some(i)) =
            (value, parts.peek().and_then(|p| p.parse::<usize>().ok()))
        {
            parts.next();
            let Some(item) = items.get(i) else {
                return at.map(|o| line_at(text, o));
            };
            at = Some(item.span().start);
            value = item.get_ref();
        }
        match value {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    at.map(|o| line_at(text, o))
}

/// A dotted key's parts; a quoted part may hold dots (`models."gold.cpu".sql`).
fn key_parts(key: &str) -> Vec<String> {
    let (mut parts, mut part, mut quoted) = (Vec::new(), String::new(), false);
    for c in key.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut part)),
            _ => part.push(c),
        }
    }
    parts.push(part);
    parts
}

fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[agent]\nid = \"a\"\n\n[sources.cpu]\ntype = \"simulator\"\nrate = 0\n\n[[api.tokens]]\ndigest = \"x\"\n\n[[api.tokens]]\ndigest = \"y\"\n";

    #[test]
    fn a_refused_key_is_found_on_its_line_or_its_nearest_parents() {
        assert_eq!(line_of(TEXT, "agent.id"), Some(2));
        assert_eq!(line_of(TEXT, "sources.cpu.rate"), Some(6));
        assert_eq!(line_of(TEXT, "sources.cpu.fields.load"), Some(4));
        assert_eq!(line_of(TEXT, "api.tokens.1.digest"), Some(12));
        assert_eq!(line_of(TEXT, "batch.max_rows"), None);
    }

    #[test]
    fn quoted_keys_may_hold_dots() {
        let text = "[models.\"gold.cpu\"]\nmode = \"recompute\"\nsql = \"SELECT 1\"\n\n[kafka.json.\"app.logs\"]\ntable = \"x\"\n";
        assert_eq!(line_of(text, "models.\"gold.cpu\".sql"), Some(3));
        assert_eq!(line_of(text, "kafka.json.\"app.logs\".table"), Some(6));
        assert_eq!(key_parts("a.\"b.c\".d"), ["a", "b.c", "d"]);
    }

    #[test]
    fn a_load_names_the_file_the_key_and_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, TEXT).unwrap();
        let err = load::<toml::Table>(&path, |_, base| {
            assert_eq!(base, dir.path());
            Err(Invalid::new(
                "sources.cpu.rate",
                "must be greater than zero",
            ))
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.ends_with("a.toml: sources.cpu.rate (line 6): must be greater than zero"),
            "{err}"
        );
        std::fs::write(&path, "[agent\n").unwrap();
        let err = load::<toml::Table>(&path, |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
