//! Deserializing `{ type = "kind", ... }` tables with errors that name the inner key.
//!
//! serde's internally tagged enums buffer their input, so an error inside them loses the
//! key it happened at (`invalid type: string "fast", expected f64`, but which key?). These
//! helpers read the table, move it under its `type` (the externally tagged shape serde
//! derives by default) and deserialize it while tracking the path, so the error reads
//! `rate: invalid type: string "fast", expected f64`.

use indexmap::IndexMap;
use serde::de::{DeserializeOwned, Error};
use serde::{Deserialize, Deserializer};

fn from_table<T: DeserializeOwned, E: Error>(mut table: toml::Table) -> Result<T, E> {
    let kind = match table.remove("type") {
        Some(toml::Value::String(s)) => s,
        Some(other) => {
            return Err(E::custom(format!(
                "type: expected a string, found {}",
                other.type_str()
            )));
        }
        None => return Err(E::custom("missing key `type`")),
    };
    let mut wrapped = toml::Table::new();
    wrapped.insert(kind, toml::Value::Table(table));
    serde_path_to_error::deserialize(toml::Value::Table(wrapped)).map_err(|e| {
        let path = e.path().to_string();
        // The first segment is the `type` we moved the table under.
        match path.split_once('.') {
            Some((_, key)) => E::custom(format!("{key}: {}", e.inner())),
            None => E::custom(e.inner()),
        }
    })
}

/// `#[serde(deserialize_with = "tagged::one")]` for a single tagged table.
pub fn one<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<T, D::Error> {
    from_table(toml::Table::deserialize(d)?)
}

/// `#[serde(deserialize_with = "tagged::map")]` for a table of tagged tables, in order.
pub fn map<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    d: D,
) -> Result<IndexMap<String, T>, D::Error> {
    let tables = IndexMap::<String, toml::Table>::deserialize(d)?;
    tables
        .into_iter()
        .map(|(name, table)| {
            from_table(table)
                .map(|v| (name.clone(), v))
                .map_err(|e: D::Error| D::Error::custom(format!("{name}: {e}")))
        })
        .collect()
}
