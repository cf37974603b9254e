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

/// Decode an Arrow IPC stream that must hold exactly one batch.
///
/// Uses arrow's push decoder over the bytes at hand, which never allocates more than the
/// payload holds: a hostile length prefix cannot make it reserve gigabytes. Buffers are
/// sliced from `bytes` without copying where alignment allows.
pub fn decode_batch(bytes: Bytes) -> Result<RecordBatch, ArrowError> {
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
