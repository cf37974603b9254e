//! Entity sets: ids from an `{index}` pattern, attributes drawn once per entity.

use std::sync::Arc;

use arrow_array::{ArrayRef, StringArray, UInt32Array};
use indexmap::IndexMap;

use crate::generator::{ChunkContext, EntityValues, FieldGenerator};
use sluice_ops::config::Invalid;

impl std::fmt::Debug for EntityValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EntityValues({})", self.count)
    }
}

pub(super) fn entity_values(
    name: &str,
    e: &crate::scenario::EntitySpec,
    seed: u64,
    key: &str,
) -> Result<EntityValues, Invalid> {
    if e.count == 0 {
        return Err(Invalid::new(format!("{key}.count"), "must be at least 1"));
    }
    let pattern =
        e.id.clone()
            .unwrap_or_else(|| format!("{name}-{{index:04}}"));
    let ids = id_pattern(&pattern).map_err(|m| Invalid::new(format!("{key}.id"), m))?;
    let ids: ArrayRef = Arc::new(StringArray::from_iter_values((0..e.count).map(ids)));
    let mut values = EntityValues {
        count: e.count,
        ids,
        attributes: IndexMap::new(),
    };
    let times = vec![0i64; e.count as usize];
    let indices = UInt32Array::from_iter_values(0..e.count);
    for (attr, spec) in &e.attributes {
        let akey = format!("{key}.attributes.{attr}");
        spec.validate().map_err(|m| Invalid::new(&akey, m))?;
        if !spec.is_attribute_kind() {
            return Err(Invalid::new(
                akey,
                "attributes are drawn once per entity: use constant, uniform, normal, lognormal, poisson, choice or fake",
            ));
        }
        let mut g = FieldGenerator::new(attr, spec, seed, &values, 0);
        let ctx = ChunkContext {
            first: 0,
            times: &times,
            entities: &indices,
            parent: None,
        };
        let array = g
            .generate(&ctx)
            .map_err(|x| Invalid::new(&akey, x.to_string()))?
            .ok_or_else(|| Invalid::new(&akey, "cannot be drawn per entity"))?;
        values.attributes.insert(attr.clone(), array);
    }
    Ok(values)
}

/// `host-{index:03}` → a function of the index.
fn id_pattern(pattern: &str) -> Result<impl Fn(u32) -> String + '_, String> {
    let start = pattern
        .find("{index")
        .ok_or_else(|| format!("{pattern:?} has no {{index}} (e.g. \"host-{{index:03}}\")"))?;
    let end = start
        + pattern[start..]
            .find('}')
            .ok_or_else(|| format!("{pattern:?}: unclosed {{index"))?;
    let spec = &pattern[start + 6..end];
    let width = match spec.strip_prefix(':') {
        None if spec.is_empty() => 0,
        Some(w) => w
            .trim_start_matches('0')
            .parse::<usize>()
            .ok()
            .filter(|w| *w <= 20)
            .ok_or_else(|| format!("{pattern:?}: width {w:?} is not a number up to 20"))?,
        None => return Err(format!("{pattern:?}: write {{index}} or {{index:04}}")),
    };
    let (before, after) = (&pattern[..start], &pattern[end + 1..]);
    Ok(move |i: u32| format!("{before}{i:0width$}{after}"))
}
