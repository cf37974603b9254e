use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{ArrowError, DataType, Schema};
use bytes::Bytes;

/// Encode one batch as a self-contained Arrow IPC stream (schema message + one batch).
pub fn encode_batch(batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() + 1024);
    {
        let mut writer = StreamWriter::try_new(&mut out, &batch.schema())?;
        writer.write(batch)?;
        writer.finish()?;
    }
    Ok(out)
}

/// The most fields (columns, nested ones included) a batch's schema may have.
pub const MAX_FIELDS: usize = 4096;

/// Decode an Arrow IPC stream that must hold exactly one batch.
///
/// Uses arrow's push decoder over the bytes at hand, which never allocates more than the
/// payload holds: a hostile length prefix cannot make it reserve gigabytes. Buffers are
/// sliced from `bytes` without copying where alignment allows.
///
/// The stream is checked first ([`check_stream`]): compressed buffers are refused (their
/// declared uncompressed length is allocated before anything else is read, so a few bytes
/// could claim 2^62), as are buffers outside their message's body and schemas of more than
/// [`MAX_FIELDS`] fields. A panic in the decoder, on a shape these checks did not foresee,
/// is an error too: bytes from a peer never take the process down.
pub fn decode_batch(bytes: Bytes) -> Result<RecordBatch, ArrowError> {
    check_stream(&bytes)?;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_checked(bytes))).unwrap_or_else(
        |_| {
            DECODER_PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(ArrowError::IpcError(
                "the IPC payload made the decoder fail".into(),
            ))
        },
    )
}

static DECODER_PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Panics of arrow's decoder that [`decode_batch`] caught since the process started: each
/// is a shape [`check_stream`] should refuse first (the fuzz harness asserts none).
pub fn decoder_panics() -> u64 {
    DECODER_PANICS.load(std::sync::atomic::Ordering::Relaxed)
}

fn decode_checked(bytes: Bytes) -> Result<RecordBatch, ArrowError> {
    let mut buf = Buffer::from(bytes);
    let mut decoder = StreamDecoder::new();
    let batch = decoder.decode(&mut buf)?.ok_or_else(|| {
        ArrowError::IpcError("IPC stream is truncated or holds no record batch".into())
    })?;
    // What may follow is the end-of-stream marker, nothing else.
    if decoder.decode(&mut buf)?.is_some() {
        return Err(ArrowError::IpcError(
            "IPC stream holds more than one record batch".into(),
        ));
    }
    decoder.finish()?;
    Ok(batch)
}

/// Walk the messages of an IPC stream and refuse what arrow's decoder would trust: a
/// compressed body, a buffer beyond its message's body, a body beyond the bytes, a schema of
/// more than [`MAX_FIELDS`] fields. Each message's flatbuffer is verified on the way.
pub fn check_stream(bytes: &[u8]) -> Result<(), ArrowError> {
    let bad = |what: String| ArrowError::IpcError(what);
    let mut at = 0usize;
    // Per field of the schema, in the pre-order of its fields (nodes follow it), the element
    // width of each of its buffers.
    let mut layout: Option<Vec<Vec<usize>>> = None;
    while at < bytes.len() {
        let word = |i: usize| -> Result<u32, ArrowError> {
            bytes
                .get(i..i + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| bad("IPC stream is truncated".into()))
        };
        // A message opens with the continuation marker, or (the legacy format) not.
        let mut len = word(at)?;
        at += 4;
        if len == 0xFFFF_FFFF {
            len = word(at)?;
            at += 4;
        }
        if len == 0 {
            // The end-of-stream marker.
            break;
        }
        let meta = bytes
            .get(at..at.saturating_add(len as usize))
            .ok_or_else(|| bad("IPC message metadata is truncated".into()))?;
        at += len as usize;
        let message = arrow_ipc::root_as_message(meta)
            .map_err(|e| bad(format!("IPC message metadata is not valid: {e}")))?;
        let body = usize::try_from(message.bodyLength())
            .ok()
            .filter(|b| at.checked_add(*b).is_some_and(|end| end <= bytes.len()))
            .ok_or_else(|| {
                bad(format!(
                    "IPC message declares a body of {} bytes; {} are left",
                    message.bodyLength(),
                    bytes.len() - at
                ))
            })?;
        if let Some(schema) = message.header_as_schema() {
            // arrow unwraps the field list, and cannot read big-endian decimals.
            if schema.fields().is_none() || schema.endianness() != arrow_ipc::Endianness::Little {
                return Err(bad("an IPC schema without fields, or big-endian".into()));
            }
            let mut fields = Vec::new();
            for f in schema.fields().iter().flat_map(|f| f.iter()) {
                field_layout(&f, &mut fields).map_err(bad)?;
            }
            if fields.len() > MAX_FIELDS {
                return Err(bad(format!(
                    "the schema has {} fields; at most {MAX_FIELDS} are accepted",
                    fields.len()
                )));
            }
            layout = Some(fields);
        }
        if message.header_as_dictionary_batch().is_some() {
            return Err(bad("dictionary batches are not accepted".into()));
        }
        if let Some(batch) = message.header_as_record_batch() {
            let layout = layout
                .as_deref()
                .ok_or_else(|| bad("a record batch before its schema".into()))?;
            check_batch(&batch, body, layout).map_err(bad)?;
        }
        at += body;
    }
    Ok(())
}

/// The most values one column (or nested child) of a batch may declare.
const MAX_NODE_LENGTH: i64 = i32::MAX as i64;

/// Check a record batch against its schema's layout: what arrow's decoder would otherwise
/// trust, and panic on (a validity bitmap shorter than its column, a buffer past the body).
fn check_batch(
    batch: &arrow_ipc::RecordBatch<'_>,
    body: usize,
    layout: &[Vec<usize>],
) -> Result<(), String> {
    if batch.compression().is_some() {
        return Err("compressed IPC buffers are refused: send them uncompressed".into());
    }
    if batch.variadicBufferCounts().is_some_and(|v| !v.is_empty()) {
        return Err("variadic buffers are not accepted".into());
    }
    if !(0..=i64::from(u32::MAX)).contains(&batch.length()) {
        return Err(format!("an IPC batch declares {} rows", batch.length()));
    }
    let nodes: Vec<_> = batch.nodes().iter().flat_map(|n| n.iter()).collect();
    let buffers: Vec<_> = batch.buffers().iter().flat_map(|b| b.iter()).collect();
    let wanted: usize = layout.iter().map(Vec::len).sum();
    if nodes.len() != layout.len() || buffers.len() != wanted {
        return Err(format!(
            "an IPC batch has {} columns and {} buffers where its schema has {} and {wanted}",
            nodes.len(),
            buffers.len(),
            layout.len(),
        ));
    }
    for b in &buffers {
        let inside = u64::try_from(b.offset())
            .ok()
            .zip(u64::try_from(b.length()).ok())
            .and_then(|(o, l)| o.checked_add(l))
            .is_some_and(|end| end <= body as u64);
        if !inside {
            return Err(format!(
                "an IPC buffer at {} of {} bytes lies outside its body of {body} bytes",
                b.offset(),
                b.length()
            ));
        }
    }
    let mut next = 0;
    for (node, widths) in nodes.iter().zip(layout) {
        let count = widths.len();
        if !(0..=MAX_NODE_LENGTH).contains(&node.length())
            || !(0..=node.length()).contains(&node.null_count())
        {
            return Err(format!(
                "an IPC column declares {} values with {} nulls",
                node.length(),
                node.null_count()
            ));
        }
        // The first buffer of every type with buffers is its validity bitmap, read only
        // when there are nulls.
        if count > 0 && node.null_count() > 0 {
            let bits = buffers[next].length().saturating_mul(8);
            if bits < node.length() {
                return Err(format!(
                    "an IPC validity bitmap of {} bytes for {} values",
                    buffers[next].length(),
                    node.length()
                ));
            }
        }
        // arrow views a buffer as a slice of its elements, and panics on a partial one.
        for (b, width) in buffers[next..next + count].iter().zip(widths) {
            if b.length() % *width as i64 != 0 {
                return Err(format!(
                    "an IPC buffer of {} bytes for elements of {width}",
                    b.length()
                ));
            }
        }
        next += count;
    }
    Ok(())
}

/// Bytes per value of a fixed-width type whose parameters [`type_parameters`] accepted.
fn value_width(field: &arrow_ipc::Field<'_>) -> usize {
    use arrow_ipc::{DateUnit, Precision, Type as T};
    match field.type_type() {
        T::Int => field.type_as_int().map_or(8, |i| i.bitWidth() as usize / 8),
        T::FloatingPoint => match field.type_as_floating_point().map(|f| f.precision()) {
            Some(Precision::HALF) => 2,
            Some(Precision::SINGLE) => 4,
            _ => 8,
        },
        T::Decimal => field
            .type_as_decimal()
            .map_or(16, |d| d.bitWidth() as usize / 8),
        T::Date => match field.type_as_date().map(|d| d.unit()) {
            Some(DateUnit::DAY) => 4,
            _ => 8,
        },
        T::FixedSizeBinary => field
            .type_as_fixed_size_binary()
            .map_or(1, |b| (b.byteWidth() as usize).max(1)),
        _ => 8,
    }
}

/// Refuse type parameters arrow's schema converter panics on (it `unwrap`s and `panic!`s
/// on values it does not know).
fn type_parameters(field: &arrow_ipc::Field<'_>) -> Result<(), String> {
    use arrow_ipc::{DateUnit, Precision, TimeUnit, Type as T};
    let missing = || "an IPC column without its type parameters".to_string();
    let ok = match field.type_type() {
        T::Int => {
            let i = field.type_as_int().ok_or_else(missing)?;
            matches!(i.bitWidth(), 8 | 16 | 32 | 64)
        }
        T::FloatingPoint => {
            let f = field.type_as_floating_point().ok_or_else(missing)?;
            matches!(
                f.precision(),
                Precision::HALF | Precision::SINGLE | Precision::DOUBLE
            )
        }
        T::Timestamp => {
            let t = field.type_as_timestamp().ok_or_else(missing)?;
            matches!(
                t.unit(),
                TimeUnit::SECOND
                    | TimeUnit::MILLISECOND
                    | TimeUnit::MICROSECOND
                    | TimeUnit::NANOSECOND
            )
        }
        T::Date => {
            let d = field.type_as_date().ok_or_else(missing)?;
            matches!(d.unit(), DateUnit::DAY | DateUnit::MILLISECOND)
        }
        T::Decimal => {
            let d = field.type_as_decimal().ok_or_else(missing)?;
            matches!(d.bitWidth(), 32 | 64 | 128 | 256)
                && (1..=76).contains(&d.precision())
                && (-128..=127).contains(&d.scale())
        }
        T::FixedSizeBinary => {
            let b = field.type_as_fixed_size_binary().ok_or_else(missing)?;
            b.byteWidth() >= 0
        }
        T::Map => field.type_as_map().is_some(),
        // Time, Duration and Interval carry units arrow panics on; no table column needs
        // them from a peer.
        T::Time | T::Duration | T::Interval => false,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "an IPC column of type {} with parameters that are not accepted",
            field.type_type().variant_name().unwrap_or("unknown")
        ))
    }
}

/// Add a field's buffer count (and its children's, in pre-order) to `out`, or say why the
/// field is not accepted: only the types a table can hold, in the shapes arrow expects.
fn field_layout(field: &arrow_ipc::Field<'_>, out: &mut Vec<Vec<usize>>) -> Result<(), String> {
    use arrow_ipc::Type as T;
    if out.len() > MAX_FIELDS {
        return Ok(());
    }
    if field.dictionary().is_some() {
        return Err("dictionary-encoded columns are not accepted".into());
    }
    let children: Vec<_> = field.children().iter().flat_map(|c| c.iter()).collect();
    type_parameters(field)?;
    // Element widths of the type's buffers (1 for bitmaps and bytes), and its children.
    let (widths, wanted_children): (Vec<usize>, Option<usize>) = match field.type_type() {
        T::Null => (vec![], Some(0)),
        T::Bool => (vec![1, 1], Some(0)),
        T::Int | T::FloatingPoint | T::Decimal | T::Date | T::Timestamp | T::FixedSizeBinary => {
            (vec![1, value_width(field)], Some(0))
        }
        T::Binary | T::Utf8 => (vec![1, 4, 1], Some(0)),
        T::LargeBinary | T::LargeUtf8 => (vec![1, 8, 1], Some(0)),
        T::List | T::Map => (vec![1, 4], Some(1)),
        T::LargeList => (vec![1, 8], Some(1)),
        T::Struct_ => (vec![1], None),
        other => {
            return Err(format!(
                "columns of IPC type {} are not accepted",
                other.variant_name().unwrap_or("unknown")
            ));
        }
    };
    if let Some(n) = wanted_children
        && children.len() != n
    {
        return Err(format!(
            "an IPC column of type {} has {} children",
            field.type_type().variant_name().unwrap_or("unknown"),
            children.len()
        ));
    }
    if field.type_type() == T::Map
        && !children.first().is_some_and(|c| {
            c.type_type() == T::Struct_ && c.children().is_some_and(|g| g.len() == 2)
        })
    {
        return Err("an IPC map whose entries are not a struct of key and value".into());
    }
    out.push(widths);
    for c in &children {
        field_layout(c, out)?;
    }
    Ok(())
}

/// A stable 64-bit fingerprint (FNV-1a) of a schema's field names, types and nullability.
///
/// Metadata is ignored on purpose: two agents producing the same columns share a fingerprint.
pub fn schema_fingerprint(schema: &Schema) -> u64 {
    let mut h = Fnv1a::new();
    for field in schema.fields() {
        h.write(field.name().as_bytes());
        h.write(b":");
        write_type(&mut h, field.data_type());
        h.write(if field.is_nullable() { b"?" } else { b"!" });
        h.write(b";");
    }
    h.0
}

fn write_type(h: &mut Fnv1a, ty: &DataType) {
    // `Display` of a DataType is a readable, stable rendering, including nested types.
    h.write(ty.to_string().as_bytes());
}

struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Float64Array, Int64Array, StringArray};
    use arrow_schema::Field;

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(Float64Array::from(vec![Some(1.5), None, Some(-2.0)])),
                Arc::new(StringArray::from(vec![Some("a"), Some("b"), None])),
            ],
        )
        .expect("valid batch")
    }

    #[test]
    fn round_trip() {
        let b = batch();
        let bytes = Bytes::from(encode_batch(&b).expect("encode"));
        assert_eq!(decode_batch(bytes).expect("decode"), b);
    }

    #[test]
    fn garbage_is_an_error_and_cheap() {
        // The first four bytes read as a 1.7 GB message length: refused without reserving it.
        let started = std::time::Instant::now();
        assert!(decode_batch(Bytes::from_static(b"definitely not arrow")).is_err());
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        assert!(decode_batch(Bytes::new()).is_err());
        let bytes = Bytes::from(encode_batch(&batch()).expect("encode"));
        assert!(decode_batch(bytes.slice(..bytes.len() / 2)).is_err());
        assert!(
            decode_batch(bytes.slice(..bytes.len() - 8)).is_ok(),
            "end marker is optional"
        );
        let mut w = Vec::new();
        {
            let mut sw = StreamWriter::try_new(&mut w, &batch().schema()).expect("writer");
            sw.write(&batch()).expect("write");
            sw.write(&batch()).expect("write");
            sw.finish().expect("finish");
        }
        assert!(decode_batch(Bytes::from(w)).is_err(), "two batches");
    }

    #[test]
    fn a_compression_bomb_is_refused_before_anything_is_allocated() {
        let bomb = crate::hostile::compression_bomb(&batch()).expect("bomb");
        let e = decode_batch(Bytes::from(bomb)).expect_err("a bomb");
        assert!(
            e.to_string().contains("compressed IPC buffers are refused"),
            "{e}"
        );
    }

    #[test]
    fn a_buffer_outside_its_body_and_a_schema_too_wide_are_refused() {
        let outside = crate::hostile::buffer_outside_body(&batch()).expect("payload");
        let e = decode_batch(Bytes::from(outside)).expect_err("out of the body");
        assert!(e.to_string().contains("outside its body"), "{e}");

        let wide = Arc::new(Schema::new(
            (0..MAX_FIELDS + 1)
                .map(|i| Field::new(format!("c{i}"), DataType::Int64, true))
                .collect::<Vec<_>>(),
        ));
        let columns = (0..MAX_FIELDS + 1)
            .map(|_| Arc::new(Int64Array::from(vec![1])) as arrow_array::ArrayRef)
            .collect();
        let b = RecordBatch::try_new(wide, columns).expect("wide batch");
        let e = decode_batch(Bytes::from(encode_batch(&b).expect("encode"))).expect_err("too wide");
        assert!(e.to_string().contains("at most 4096"), "{e}");
    }

    #[test]
    fn fingerprint_tracks_names_types_nullability() {
        let a = Schema::new(vec![Field::new("x", DataType::Int64, false)]);
        let b = Schema::new(vec![Field::new("x", DataType::Int64, true)]);
        let c = Schema::new(vec![Field::new("y", DataType::Int64, false)]);
        let d = Schema::new(vec![Field::new("x", DataType::Int32, false)]);
        let fa = schema_fingerprint(&a);
        assert_eq!(fa, schema_fingerprint(&a.clone()));
        assert_ne!(fa, schema_fingerprint(&b));
        assert_ne!(fa, schema_fingerprint(&c));
        assert_ne!(fa, schema_fingerprint(&d));
    }
}
