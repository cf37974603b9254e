//! Schema and partition evolution: a table's next schema with new optional columns and
//! widened types, and the metadata-only commits of a schema or a partition spec. Field ids are never reused or renumbered, so data files written
//! under any earlier schema stay readable: a column they lack reads as null, a widened one
//! is promoted on read.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema as ArrowSchema};
use iceberg::spec::{
    ListType, MapType, NestedField, NestedFieldRef, PrimitiveType, Schema, StructType, Type,
    UnboundPartitionSpec,
};
use iceberg::{Error, ErrorKind};

use super::snapshot::commit_metadata;
use super::{CatalogSwap, CommitError, Head, LAKE_COLUMNS, normalize_type};

/// What a batch needs of its table's schema before it fits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evolution {
    /// Columns to add, as optional columns (their Arrow fields as the batch has them).
    pub add: Vec<Field>,
    /// Columns whose type widens, and the Arrow type they widen to.
    pub widen: Vec<(String, DataType)>,
}

impl Evolution {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.widen.is_empty()
    }
}

impl std::fmt::Display for Evolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self
            .add
            .iter()
            .map(|c| format!("new column {:?} ({})", c.name(), c.data_type()))
            .collect();
        parts.extend(
            self.widen
                .iter()
                .map(|(c, t)| format!("column {c:?} widened to {t}")),
        );
        f.write_str(&parts.join(", "))
    }
}

/// `current` with `evolution` applied: new columns (optional, fresh ids from `last_column_id`
/// up) go before the lake's own columns, widened columns keep their ids.
pub fn evolved_schema(
    current: &Schema,
    last_column_id: i32,
    evolution: &Evolution,
) -> Result<Schema, Error> {
    let mut fields: Vec<NestedFieldRef> = current.as_struct().fields().to_vec();
    for (name, to) in &evolution.widen {
        let Some(slot) = fields.iter_mut().find(|f| f.name == *name) else {
            return Err(Error::new(
                ErrorKind::DataInvalid,
                format!("cannot widen column {name:?}: the table has no such column"),
            ));
        };
        let mut widened = (**slot).clone();
        widened.field_type = Box::new(iceberg_field(&Field::new(name, to.clone(), true), 0)?.1);
        *slot = Arc::new(widened);
    }
    let at = fields
        .iter()
        .position(|f| LAKE_COLUMNS.contains(&f.name.as_str()))
        .unwrap_or(fields.len());
    let mut next = last_column_id.max(current.highest_field_id());
    let mut added = Vec::with_capacity(evolution.add.len());
    for field in &evolution.add {
        if fields.iter().any(|f| f.name == *field.name()) {
            return Err(Error::new(
                ErrorKind::DataInvalid,
                format!("cannot add column {:?}: the table has it", field.name()),
            ));
        }
        let (used, ty) = iceberg_field(field, next)?;
        added.push(Arc::new(NestedField::optional(next + 1, field.name(), ty)));
        next += used;
    }
    fields.splice(at..at, added);
    Schema::builder()
        .with_fields(fields)
        .with_identifier_field_ids(current.identifier_field_ids())
        .build()
}

/// The Iceberg type of an Arrow field, its ids numbered from `base + 1` (the field's own id
/// first, then its children's), and how many ids it takes.
fn iceberg_field(field: &Field, base: i32) -> Result<(i32, Type), Error> {
    let one = ArrowSchema::new(vec![Field::new(
        field.name(),
        normalize_type(field.data_type()),
        true,
    )]);
    let schema = iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&one)?;
    let used = schema.highest_field_id();
    let top = schema
        .as_struct()
        .fields()
        .first()
        .cloned()
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Unexpected,
                format!("column {:?} converted to no field", field.name()),
            )
        })?;
    Ok((used, shift_type(&top.field_type, base)))
}

/// `t` with every field id inside it moved up by `by`.
fn shift_type(t: &Type, by: i32) -> Type {
    let shift = |f: &NestedFieldRef| {
        let mut moved = (**f).clone();
        moved.id += by;
        moved.field_type = Box::new(shift_type(&f.field_type, by));
        Arc::new(moved)
    };
    match t {
        Type::Primitive(_) => t.clone(),
        Type::Struct(s) => Type::Struct(StructType::new(s.fields().iter().map(shift).collect())),
        Type::List(l) => Type::List(ListType {
            element_field: shift(&l.element_field),
        }),
        Type::Map(m) => Type::Map(MapType {
            key_field: shift(&m.key_field),
            value_field: shift(&m.value_field),
        }),
    }
}

/// Whether Iceberg lets a column of type `from` become `to` (format v2: int → long,
/// float → double, a decimal's precision raised at the same scale).
pub fn promotable(from: &PrimitiveType, to: &PrimitiveType) -> bool {
    use PrimitiveType::{Decimal, Double, Float, Int, Long};
    match (from, to) {
        (Int, Long) | (Float, Double) => true,
        (
            Decimal {
                precision: p1,
                scale: s1,
            },
            Decimal {
                precision: p2,
                scale: s2,
            },
        ) => s1 == s2 && p2 >= p1,
        _ => false,
    }
}

/// Make `schema` the table's current schema, in a metadata-only commit that adds no
/// snapshot. A conflict means another writer moved the table first: plan again on it.
pub async fn commit_schema(
    swap: &CatalogSwap,
    head: &Head,
    schema: Schema,
) -> Result<Head, CommitError> {
    commit_metadata(swap, head, |b| b.add_current_schema(schema)).await
}

/// Make `spec` the table's default partition spec, in a metadata-only commit. Files keep
/// the spec they were written under; new ones are written under this one.
pub async fn commit_spec(
    swap: &CatalogSwap,
    head: &Head,
    spec: UnboundPartitionSpec,
) -> Result<Head, CommitError> {
    commit_metadata(swap, head, |b| b.add_default_partition_spec(spec)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Schema {
        Schema::builder()
            .with_fields(vec![
                Arc::new(NestedField::optional(
                    1,
                    "v",
                    Type::Primitive(PrimitiveType::Int),
                )),
                Arc::new(NestedField::required(
                    2,
                    "_agent",
                    Type::Primitive(PrimitiveType::String),
                )),
            ])
            .build()
            .expect("schema")
    }

    #[test]
    fn new_columns_take_fresh_ids_before_the_lake_columns_and_widened_ones_keep_theirs() {
        let labels = Field::new_map(
            "labels",
            "entries",
            Arc::new(Field::new("keys", DataType::Utf8, false)),
            Arc::new(Field::new("values", DataType::Utf8, true)),
            false,
            true,
        );
        let evolution = Evolution {
            add: vec![labels, Field::new("host", DataType::Utf8, true)],
            widen: vec![("v".into(), DataType::Int64)],
        };
        let next = evolved_schema(&table(), 2, &evolution).expect("evolves");
        let names: Vec<(i32, &str)> = next
            .as_struct()
            .fields()
            .iter()
            .map(|f| (f.id, f.name.as_str()))
            .collect();
        // The map takes three ids (itself, key, value); the next column follows them.
        assert_eq!(
            names,
            [(1, "v"), (3, "labels"), (6, "host"), (2, "_agent")],
            "{next:?}"
        );
        let Type::Map(m) = next
            .field_by_name("labels")
            .expect("labels")
            .field_type
            .as_ref()
        else {
            panic!("labels is a map");
        };
        assert_eq!((m.key_field.id, m.value_field.id), (4, 5));
        assert_eq!(
            *next.field_by_id(1).expect("v").field_type,
            Type::Primitive(PrimitiveType::Long)
        );
        assert_eq!(next.highest_field_id(), 6);
        assert!(!next.field_by_name("host").expect("host").required);
    }

    #[test]
    fn ids_never_go_back_below_the_last_one_the_table_assigned() {
        // A column once added and dropped keeps its id taken.
        let evolution = Evolution {
            add: vec![Field::new("x", DataType::Boolean, true)],
            widen: vec![],
        };
        let next = evolved_schema(&table(), 9, &evolution).expect("evolves");
        assert_eq!(next.field_id_by_name("x"), Some(10));
    }

    #[test]
    fn a_column_the_table_has_is_not_added_twice_nor_a_missing_one_widened() {
        let twice = Evolution {
            add: vec![Field::new("v", DataType::Int64, true)],
            widen: vec![],
        };
        assert!(evolved_schema(&table(), 2, &twice).is_err());
        let missing = Evolution {
            add: vec![],
            widen: vec![("nope".into(), DataType::Int64)],
        };
        assert!(evolved_schema(&table(), 2, &missing).is_err());
    }

    #[test]
    fn only_the_promotions_iceberg_allows_are_promotable() {
        use PrimitiveType::*;
        let dec = |precision, scale| Decimal { precision, scale };
        assert!(promotable(&Int, &Long));
        assert!(promotable(&Float, &Double));
        assert!(promotable(&dec(9, 2), &dec(18, 2)));
        assert!(!promotable(&dec(9, 2), &dec(18, 3)));
        assert!(!promotable(&dec(18, 2), &dec(9, 2)));
        assert!(!promotable(&Long, &Double));
        assert!(!promotable(&Long, &Int));
        assert!(!promotable(&Int, &String));
    }
}
