//! Hand-made hostile payloads: what a peer holding a valid certificate could put in a
//! batch frame or a Kafka message to crash an unguarded decoder.

use arrow_array::RecordBatch;
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_schema::ArrowError;

use crate::encode_batch;

/// Where the record batch message of a one-batch stream is: its metadata, and where its
/// body starts.
fn batch_message(bytes: &[u8]) -> Result<(std::ops::Range<usize>, usize), ArrowError> {
    let bad = || ArrowError::IpcError("no record batch message".into());
    let mut at = 0usize;
    loop {
        let word = |i: usize| {
            bytes
                .get(i..i + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or_else(bad)
        };
        if word(at)? != 0xFFFF_FFFF {
            return Err(bad());
        }
        let len = word(at + 4)? as usize;
        let meta = at + 8..at + 8 + len;
        let m = arrow_ipc::root_as_message(bytes.get(meta.clone()).ok_or_else(bad)?)
            .map_err(|e| ArrowError::IpcError(e.to_string()))?;
        if m.header_as_record_batch().is_some() {
            let body = meta.end;
            return Ok((meta, body));
        }
        at = meta.end + usize::try_from(m.bodyLength()).map_err(|_| bad())?;
    }
}

/// `batch` as an LZ4-compressed IPC stream whose first compressed buffer claims to expand
/// to 2^62 bytes: arrow reserves the claimed size before decompressing anything.
pub fn compression_bomb(batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
    let mut bytes = Vec::new();
    {
        let options = IpcWriteOptions::default()
            .try_with_compression(Some(arrow_ipc::CompressionType::LZ4_FRAME))?;
        let mut w = StreamWriter::try_new_with_options(&mut bytes, &batch.schema(), options)?;
        w.write(batch)?;
        w.finish()?;
    }
    let (meta, body) = batch_message(&bytes)?;
    let m = arrow_ipc::root_as_message(&bytes[meta])
        .map_err(|e| ArrowError::IpcError(e.to_string()))?;
    let first = m
        .header_as_record_batch()
        .and_then(|b| b.buffers())
        .and_then(|b| b.iter().find(|b| b.length() >= 8))
        .ok_or_else(|| ArrowError::IpcError("no compressed buffer".into()))?;
    // Each compressed buffer opens with its uncompressed length.
    let at = body + first.offset() as usize;
    bytes[at..at + 8].copy_from_slice(&(1i64 << 62).to_le_bytes());
    Ok(bytes)
}

/// `batch` as an IPC stream whose last buffer lies 2^40 bytes past its message's body:
/// arrow slices it without a check, and panics.
pub fn buffer_outside_body(batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
    let mut bytes = encode_batch(batch)?;
    let (meta, _) = batch_message(&bytes)?;
    let m = arrow_ipc::root_as_message(&bytes[meta.clone()])
        .map_err(|e| ArrowError::IpcError(e.to_string()))?;
    let last = m
        .header_as_record_batch()
        .and_then(|b| b.buffers())
        .and_then(|b| b.iter().next_back())
        .ok_or_else(|| ArrowError::IpcError("no buffer".into()))?;
    // The flatbuffer stores a buffer as two little-endian i64s, offset then length: find
    // them in the metadata and move the offset.
    let needle: Vec<u8> = [last.offset().to_le_bytes(), last.length().to_le_bytes()].concat();
    let found = bytes[meta.clone()]
        .windows(16)
        .rposition(|w| w == needle)
        .ok_or_else(|| ArrowError::IpcError("buffer not found in the metadata".into()))?;
    let at = meta.start + found;
    bytes[at..at + 8].copy_from_slice(&(1i64 << 40).to_le_bytes());
    Ok(bytes)
}
