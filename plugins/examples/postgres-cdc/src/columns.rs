//! PostgreSQL column types mapped to the contract's, and column builders that parse the
//! server's text output (the same for a snapshot's rows and for pgoutput's tuples) into
//! typed values.

use sluice_plugin::{ColumnType, TypedColumn};

/// How a PostgreSQL type is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int32,
    Int64,
    Float32,
    Float64,
    Decimal(u8, u8),
    Date,
    Timestamp,
    TimestampTz,
    Binary,
    /// Everything else, as PostgreSQL prints it (text, varchar, uuid, json, arrays, ...).
    Text,
}

impl Kind {
    /// The kind of type `oid` with modifier `typmod`.
    pub fn of(oid: u32, typmod: i32) -> Kind {
        match oid {
            16 => Kind::Bool,
            21 | 23 => Kind::Int32,
            20 | 26 => Kind::Int64,
            700 => Kind::Float32,
            701 => Kind::Float64,
            // numeric(p,s): typmod is ((p << 16) | s) + 4; unconstrained numerics are text.
            1700 if typmod >= 4 => {
                let p = ((typmod - 4) >> 16) & 0xffff;
                let s = (typmod - 4) & 0xffff;
                if (1..=38).contains(&p) && s <= p {
                    Kind::Decimal(p as u8, s as u8)
                } else {
                    Kind::Text
                }
            }
            1082 => Kind::Date,
            1114 => Kind::Timestamp,
            1184 => Kind::TimestampTz,
            17 => Kind::Binary,
            _ => Kind::Text,
        }
    }

    pub fn column_type(self) -> ColumnType {
        match self {
            Kind::Bool => ColumnType::Boolean,
            Kind::Int32 => ColumnType::Int32,
            Kind::Int64 => ColumnType::Int64,
            Kind::Float32 => ColumnType::Float32,
            Kind::Float64 => ColumnType::Float64,
            Kind::Decimal(p, s) => ColumnType::Decimal(p, s),
            Kind::Date => ColumnType::Date,
            Kind::Timestamp => ColumnType::Timestamp,
            Kind::TimestampTz => ColumnType::TimestampTz,
            Kind::Binary => ColumnType::Binary,
            Kind::Text => ColumnType::Utf8,
        }
    }
}

enum Values {
    Bool(Vec<bool>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Float32(Vec<f32>),
    Float64(Vec<f64>),
    Decimal(Vec<i128>),
    Date(Vec<i32>),
    Micros(Vec<i64>),
    /// Values back to back, and where each ends.
    Binary(Vec<u8>, Vec<usize>),
    Text(String, Vec<usize>),
}

/// One output column being filled, row by row.
pub struct Builder {
    kind: Kind,
    values: Values,
    valid: Vec<bool>,
}

impl Builder {
    pub fn new(kind: Kind) -> Builder {
        let values = match kind {
            Kind::Bool => Values::Bool(Vec::new()),
            Kind::Int32 => Values::Int32(Vec::new()),
            Kind::Int64 => Values::Int64(Vec::new()),
            Kind::Float32 => Values::Float32(Vec::new()),
            Kind::Float64 => Values::Float64(Vec::new()),
            Kind::Decimal(..) => Values::Decimal(Vec::new()),
            Kind::Date => Values::Date(Vec::new()),
            Kind::Timestamp | Kind::TimestampTz => Values::Micros(Vec::new()),
            Kind::Binary => Values::Binary(Vec::new(), Vec::new()),
            Kind::Text => Values::Text(String::new(), Vec::new()),
        };
        Builder {
            kind,
            values,
            valid: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.valid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.valid.is_empty()
    }

    pub fn push_null(&mut self) {
        match &mut self.values {
            Values::Bool(v) => v.push(false),
            Values::Int32(v) | Values::Date(v) => v.push(0),
            Values::Int64(v) | Values::Micros(v) => v.push(0),
            Values::Float32(v) => v.push(0.0),
            Values::Float64(v) => v.push(0.0),
            Values::Decimal(v) => v.push(0),
            Values::Binary(d, ends) => ends.push(d.len()),
            Values::Text(d, ends) => ends.push(d.len()),
        }
        self.valid.push(false);
    }

    pub fn push_i64(&mut self, value: i64) {
        if let Values::Int64(v) | Values::Micros(v) = &mut self.values {
            v.push(value);
            self.valid.push(true);
        } else {
            self.push_null();
        }
    }

    pub fn push_str(&mut self, value: &str) {
        if let Values::Text(d, ends) = &mut self.values {
            d.push_str(value);
            ends.push(d.len());
            self.valid.push(true);
        } else {
            self.push_null();
        }
    }

    /// Parse one value as PostgreSQL prints it.
    pub fn push_text(&mut self, text: &[u8]) -> Result<(), String> {
        let s = std::str::from_utf8(text).map_err(|_| "a value is not UTF-8".to_string())?;
        let bad = || format!("{s:.60?} is no {:?} value", self.kind);
        match &mut self.values {
            Values::Bool(v) => v.push(match s {
                "t" => true,
                "f" => false,
                _ => return Err(bad()),
            }),
            Values::Int32(v) => v.push(s.parse().map_err(|_| bad())?),
            Values::Int64(v) => v.push(s.parse().map_err(|_| bad())?),
            Values::Float32(v) => v.push(s.parse().map_err(|_| bad())?),
            Values::Float64(v) => v.push(s.parse().map_err(|_| bad())?),
            Values::Decimal(v) => {
                let Kind::Decimal(_, scale) = self.kind else {
                    return Err(bad());
                };
                v.push(decimal(s, scale).ok_or_else(bad)?);
            }
            Values::Date(v) => v.push(date(s).ok_or_else(bad)?),
            Values::Micros(v) => {
                v.push(timestamp(s, self.kind == Kind::TimestampTz).ok_or_else(bad)?)
            }
            Values::Binary(d, ends) => {
                let hex = s.strip_prefix("\\x").ok_or_else(bad)?;
                if hex.len() % 2 != 0 {
                    return Err(bad());
                }
                for pair in hex.as_bytes().chunks(2) {
                    let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
                    d.push(u8::from_str_radix(pair, 16).map_err(|_| bad())?);
                }
                ends.push(d.len());
            }
            Values::Text(d, ends) => {
                d.push_str(s);
                ends.push(d.len());
            }
        }
        self.valid.push(true);
        Ok(())
    }

    /// The values so far as a column; the builder starts over.
    pub fn finish(&mut self) -> TypedColumn {
        let fresh = Builder::new(self.kind);
        let Builder { values, valid, .. } = std::mem::replace(self, fresh);
        let col = match values {
            Values::Bool(v) => TypedColumn::boolean(v),
            Values::Int32(v) => TypedColumn::int32(v),
            Values::Int64(v) => TypedColumn::int64(v),
            Values::Float32(v) => TypedColumn::float32(v),
            Values::Float64(v) => TypedColumn::float64(v),
            Values::Decimal(v) => TypedColumn::decimal(v),
            Values::Date(v) => TypedColumn::date(v),
            Values::Micros(v) => TypedColumn::timestamp(v),
            Values::Binary(d, ends) => TypedColumn::binary(slices(&ends).map(|r| &d[r])),
            Values::Text(d, ends) => TypedColumn::utf8(slices(&ends).map(|r| &d[r])),
        };
        if valid.iter().all(|v| *v) {
            col
        } else {
            col.with_validity(valid)
        }
    }
}

fn slices(ends: &[usize]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    ends.iter().scan(0, |start, &end| {
        let r = *start..end;
        *start = end;
        Some(r)
    })
}

/// `-12.5` at scale 2 is 1250; more fractional digits than the scale, NaN or infinities
/// are refused.
fn decimal(s: &str, scale: u8) -> Option<i128> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() || frac.len() > scale as usize {
        return None;
    }
    let mut v: i128 = 0;
    for c in int.bytes().chain(frac.bytes()) {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as i128)?;
    }
    for _ in frac.len()..scale as usize {
        v = v.checked_mul(10)?;
    }
    Some(if neg { -v } else { v })
}

/// `YYYY-MM-DD` (ISO) as days since 1970-01-01; BC dates and infinities are refused.
fn date(s: &str) -> Option<i32> {
    let mut parts = s.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    i32::try_from(sluice_plugin::days_from_civil(y, m, d)).ok()
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]`, with `+HH[:MM[:SS]]` when `zoned`, as microseconds
/// since the epoch (UTC).
fn timestamp(s: &str, zoned: bool) -> Option<i64> {
    let (day, rest) = s.split_once(' ')?;
    let days = date(day)? as i64;
    let (clock, offset_s) = if zoned {
        let at = rest.rfind(['+', '-'])?;
        let (clock, off) = rest.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let mut secs = 0i64;
        for (i, part) in off[1..].split(':').enumerate() {
            let v: i64 = part.parse().ok()?;
            secs += v * [3600, 60, 1].get(i)?;
        }
        (clock, sign * secs)
    } else {
        (rest, 0)
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut it = hms.splitn(3, ':');
    let h: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let sec: i64 = it.next()?.parse().ok()?;
    if frac.len() > 6 || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let micros: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i64>().ok()? * 10i64.pow(6 - frac.len() as u32)
    };
    let secs = days * 86_400 + h * 3600 + m * 60 + sec - offset_s;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_postgres_prints_them() {
        assert_eq!(decimal("-12.5", 2), Some(-1250));
        assert_eq!(decimal("0.07", 2), Some(7));
        assert_eq!(decimal("3", 0), Some(3));
        assert_eq!(decimal("1.234", 2), None);
        assert_eq!(decimal("NaN", 2), None);
        assert_eq!(date("1970-01-01"), Some(0));
        assert_eq!(date("2000-03-01"), Some(11_017));
        assert_eq!(date("1969-12-31"), Some(-1));
        assert_eq!(date("infinity"), None);
        assert_eq!(timestamp("1970-01-01 00:00:01.5", false), Some(1_500_000));
        assert_eq!(timestamp("1970-01-01 01:00:00+01", true), Some(0));
        assert_eq!(
            timestamp("1970-01-01 00:00:00-05:30", true),
            Some(19_800_000_000)
        );
        assert_eq!(
            timestamp("2026-12-06 17:10:17.000123+00", true),
            Some(1_796_577_017_000_123)
        );
        assert_eq!(Kind::of(1700, (10 << 16 | 2) + 4), Kind::Decimal(10, 2));
        assert_eq!(Kind::of(1700, -1), Kind::Text);
    }
}
