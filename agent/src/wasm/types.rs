//! Column types as connectors write them (`int32`, `decimal(10,2)`, `list<utf8>`,
//! `map<utf8,float64>`, `struct<x: float64, tags: list<utf8>>`) and their Arrow types.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, TimeUnit};

/// How deep types may nest: a hostile declaration cannot recurse the parser away.
const MAX_DEPTH: usize = 16;

/// The Arrow type of a type written as text, or why it is not one.
pub fn parse(text: &str) -> Result<DataType, String> {
    let mut p = Parser {
        text,
        at: 0,
        depth: 0,
    };
    let t = p.ty()?;
    p.space();
    if p.at != text.len() {
        return Err(format!(
            "type {text:?}: unexpected {:?} at {}",
            &text[p.at..],
            p.at
        ));
    }
    Ok(t)
}

/// A type as connectors write it, or the type that has no such name.
pub fn format(t: &DataType) -> Result<String, String> {
    Ok(match t {
        DataType::Boolean => "boolean".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::Float32 => "float32".into(),
        DataType::Float64 => "float64".into(),
        DataType::Utf8 => "utf8".into(),
        DataType::Binary => "binary".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(TimeUnit::Microsecond, None) => "timestamp".into(),
        DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => "timestamp-tz".into(),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        DataType::List(item) => format!("list<{}>", format(item.data_type())?),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => format!(
                "map<{},{}>",
                format(kv[0].data_type())?,
                format(kv[1].data_type())?
            ),
            other => return Err(format!("map entries of type {other}")),
        },
        DataType::Struct(fields) => format!(
            "struct<{}>",
            fields
                .iter()
                .map(|f| Ok(format!("{}: {}", f.name(), format(f.data_type())?)))
                .collect::<Result<Vec<_>, String>>()?
                .join(", ")
        ),
        other => return Err(format!("{other}")),
    })
}

/// The element field of a list of `item`.
pub fn list_item(item: DataType) -> Arc<Field> {
    Arc::new(Field::new("item", item, true))
}

/// The entries field of a map of `key` to `value`.
pub fn map_entries(key: DataType, value: DataType) -> Arc<Field> {
    Arc::new(Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("keys", key, false),
            Field::new("values", value, true),
        ])),
        false,
    ))
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn space(&mut self) {
        while self.text[self.at..].starts_with(char::is_whitespace) {
            self.at += self.text[self.at..]
                .chars()
                .next()
                .map_or(1, char::len_utf8);
        }
    }

    fn eat(&mut self, token: &str) -> bool {
        self.space();
        if self.text[self.at..].starts_with(token) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), String> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error(&format!("expected {token:?}")))
        }
    }

    fn error(&self, what: &str) -> String {
        format!("type {:?}: {what} at {}", self.text, self.at)
    }

    /// A name: letters, digits, `_` and `-`.
    fn word(&mut self) -> &str {
        self.space();
        let start = self.at;
        let len = self.text[start..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(self.text.len() - start);
        self.at += len;
        &self.text[start..start + len]
    }

    fn number(&mut self) -> Result<u8, String> {
        let w = self.word().to_string();
        w.parse()
            .map_err(|_| self.error(&format!("{w:?} is not a number")))
    }

    fn ty(&mut self) -> Result<DataType, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(&format!("types nest deeper than {MAX_DEPTH}")));
        }
        let name = self.word().to_ascii_lowercase();
        let t = match name.as_str() {
            "boolean" | "bool" => DataType::Boolean,
            "int32" => DataType::Int32,
            "int64" => DataType::Int64,
            "float32" => DataType::Float32,
            "float64" => DataType::Float64,
            "utf8" | "string" => DataType::Utf8,
            "binary" => DataType::Binary,
            "date" => DataType::Date32,
            "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, None),
            // 0.1.0's name for it.
            "timestamp-tz" | "timestamp-micros" => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(sluice_protocol::UTC.into()))
            }
            "decimal" => {
                self.expect("(")?;
                let precision = self.number()?;
                self.expect(",")?;
                let scale = self.number()?;
                self.expect(")")?;
                if !(1..=38).contains(&precision) || scale > precision {
                    return Err(self.error(&format!(
                        "decimal({precision},{scale}) needs precision 1..=38 and scale 0..=precision"
                    )));
                }
                DataType::Decimal128(precision, scale as i8)
            }
            "list" => {
                self.expect("<")?;
                let item = self.ty()?;
                self.expect(">")?;
                DataType::List(list_item(item))
            }
            "map" => {
                self.expect("<")?;
                let key = self.ty()?;
                if key.is_nested() {
                    return Err(self.error("a map's keys must be of a primitive type"));
                }
                self.expect(",")?;
                let value = self.ty()?;
                self.expect(">")?;
                DataType::Map(map_entries(key, value), false)
            }
            "struct" => {
                self.expect("<")?;
                let mut fields: Vec<Field> = Vec::new();
                loop {
                    let field = self.word().to_string();
                    if field.is_empty() {
                        return Err(self.error("expected a field name"));
                    }
                    if fields.iter().any(|f| f.name() == &field) {
                        return Err(self.error(&format!("field {field:?} is given twice")));
                    }
                    self.expect(":")?;
                    fields.push(Field::new(field, self.ty()?, true));
                    if !self.eat(",") {
                        break;
                    }
                }
                self.expect(">")?;
                DataType::Struct(Fields::from(fields))
            }
            "" => return Err(self.error("expected a type")),
            other => {
                return Err(self.error(&format!(
                    "unknown type {other:?} (boolean, int32, int64, float32, float64, utf8, binary, \
                     date, timestamp, timestamp-tz, decimal(P,S), list<T>, map<K,V>, struct<name: T, ...>)"
                )));
            }
        };
        self.depth -= 1;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_reads_back_as_it_is_written() {
        for text in [
            "boolean",
            "int32",
            "int64",
            "float32",
            "float64",
            "utf8",
            "binary",
            "date",
            "timestamp",
            "timestamp-tz",
            "decimal(10,2)",
            "list<utf8>",
            "map<utf8,float64>",
            "struct<x: float64, tags: list<utf8>, labels: map<utf8,int32>>",
            "list<struct<a: int32, b: list<date>>>",
        ] {
            let t = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(format(&t).as_deref(), Ok(text), "{text}");
        }
        // Spacing and the old and short names are accepted.
        assert_eq!(
            parse(" map < string , bool > ").expect("spaced"),
            parse("map<utf8,boolean>").expect("plain")
        );
        assert_eq!(
            parse("timestamp-micros").expect("0.1 name"),
            parse("timestamp-tz").expect("0.2 name")
        );
    }

    #[test]
    fn malformed_and_hostile_types_are_refused_with_the_place() {
        for (text, why) in [
            ("", "expected a type"),
            ("int", "unknown type"),
            ("list<>", "expected a type"),
            ("list<utf8", "expected \">\""),
            ("map<list<utf8>,utf8>", "primitive"),
            ("decimal(39,2)", "precision"),
            ("decimal(5,6)", "scale"),
            ("decimal(x,1)", "not a number"),
            ("struct<a: int32, a: int64>", "twice"),
            ("struct<: int32>", "field name"),
            ("utf8 utf8", "unexpected"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
        let deep = format!("{}utf8{}", "list<".repeat(100), ">".repeat(100));
        assert!(parse(&deep).expect_err("deep").contains("deeper"));
    }
}
