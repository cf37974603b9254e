use std::io::Cursor;

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{ArrowError, DataType, Schema};

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
pub fn decode_batch(bytes: &[u8]) -> Result<RecordBatch, ArrowError> {
    let mut reader = StreamReader::try_new(Cursor::new(bytes), None)?;
    let batch = reader
        .next()
        .ok_or_else(|| ArrowError::IpcError("IPC stream holds no record batch".into()))??;
    if reader.next().is_some() {
        return Err(ArrowError::IpcError(
            "IPC stream holds more than one record batch".into(),
        ));
    }
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
        let bytes = encode_batch(&b).expect("encode");
        assert_eq!(decode_batch(&bytes).expect("decode"), b);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode_batch(b"definitely not arrow").is_err());
        assert!(decode_batch(&[]).is_err());
        let bytes = encode_batch(&batch()).expect("encode");
        assert!(decode_batch(&bytes[..bytes.len() / 2]).is_err());
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
