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
            Err(ArrowError::IpcError(
                "the IPC payload made the decoder fail".into(),
            ))
        },
    )
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
            let fields = schema.fields().map_or(0, |f| count_fields(f.iter()));
            if fields > MAX_FIELDS {
                return Err(bad(format!(
                    "the schema has {fields} fields; at most {MAX_FIELDS} are accepted"
                )));
            }
        }
        let batches = [
            message.header_as_record_batch(),
            message.header_as_dictionary_batch().and_then(|d| d.data()),
        ];
        for batch in batches.into_iter().flatten() {
            if batch.compression().is_some() {
                return Err(bad(
                    "compressed IPC buffers are refused: send them uncompressed".into(),
                ));
            }
            for b in batch.buffers().iter().flat_map(|v| v.iter()) {
                let inside = u64::try_from(b.offset())
                    .ok()
                    .zip(u64::try_from(b.length()).ok())
                    .and_then(|(o, l)| o.checked_add(l))
                    .is_some_and(|end| end <= body as u64);
                if !inside {
                    return Err(bad(format!(
                        "an IPC buffer at {} of {} bytes lies outside its body of {body} bytes",
                        b.offset(),
                        b.length()
                    )));
                }
            }
            if batch.length() < 0
                || batch
                    .nodes()
                    .iter()
                    .flat_map(|n| n.iter())
                    .any(|n| n.length() < 0 || n.null_count() < 0)
            {
                return Err(bad("an IPC batch declares a negative length".into()));
            }
        }
        at += body;
    }
    Ok(())
}

fn count_fields<'a>(fields: impl Iterator<Item = arrow_ipc::Field<'a>>) -> usize {
    fields
        .map(|f| 1 + f.children().map_or(0, |c| count_fields(c.iter())))
        .sum()
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
