//! Values that must not reach a log: their `Debug` and `Display` print `***`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret from a config file (a password, a secret key).
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Extra client properties (librdkafka's): `Debug` hides the values of the ones whose
/// names say they are secret (`sasl.password`, `ssl.key.password`, `*.secret`, ...).
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Options(pub BTreeMap<String, String>);

impl std::ops::Deref for Options {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'a> IntoIterator for &'a Options {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Whether a property or query parameter named `key` holds a secret.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token", "credential", "private"]
        .iter()
        .any(|w| k.contains(w))
        || k.contains("key.pem")
        || k.ends_with(".key")
        || k == "key"
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown: &dyn fmt::Debug = if is_secret_key(k) { &"***" } else { v };
                (k, shown)
            }))
            .finish()
    }
}

/// `uri` with its password (`scheme://user:PASSWORD@host`) and any secret query parameter
/// (`?password=...`) replaced by `***`.
pub fn redact_uri(uri: &str) -> String {
    let mut out = uri.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@') {
            let userinfo = &out[rest..rest + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest + colon + 1..rest + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if is_secret_key(k) => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&");
        out = format!("{head}{query}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
        let o = Options(
            [
                ("sasl.password".to_string(), "hunter2".to_string()),
                ("ssl.key.password".to_string(), "hunter3".to_string()),
                ("linger.ms".to_string(), "5".to_string()),
            ]
            .into(),
        );
        let shown = format!("{o:?}");
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("\"linger.ms\": \"5\""), "{shown}");
        for (uri, want) in [
            (
                "postgres://sluice:hunter2@db:5432/lake",
                "postgres://sluice:***@db:5432/lake",
            ),
            (
                "postgres://db/lake?user=sluice&password=hunter2",
                "postgres://db/lake?user=sluice&password=***",
            ),
            ("postgres://sluice@db/lake", "postgres://sluice@db/lake"),
            (
                "sqlite:data/catalog.db?mode=rwc",
                "sqlite:data/catalog.db?mode=rwc",
            ),
            ("postgres://u:p%40ss@db/x", "postgres://u:***@db/x"),
        ] {
            assert_eq!(redact_uri(uri), want);
        }
    }
}
