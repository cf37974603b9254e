//! The on-disk format: the magic every segment opens with, and records (laid out as the
//! module doc says) encoded and decoded.

use bytes::Bytes;

use super::WalRecord;
use crate::pipeline::ReadyBatch;

pub(super) const SEGMENT_MAGIC: &[u8; 8] = b"SLUWAL01";
pub(super) const RECORD_HEADER: usize = 8;
pub(super) const BODY_FIXED: usize = 8 + 8 + 4 + 8 + 4;
/// A record larger than this is taken for corruption (batches are far smaller).
pub(super) const MAX_RECORD: usize = 1 << 30;
const NO_CHECKPOINT: u32 = u32::MAX;

/// Decode one record from the front of `buf`: the record and the bytes it took, or `None`
/// if it is incomplete or damaged.
pub(super) fn decode_record(buf: &[u8]) -> Option<(WalRecord, usize)> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    if !(BODY_FIXED..=MAX_RECORD).contains(&len) {
        return None;
    }
    let body = buf.get(RECORD_HEADER..RECORD_HEADER + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let u64_at = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().unwrap_or_default());
    let lsn = u64_at(0);
    let created_at_us = u64_at(8) as i64;
    let rows = u32::from_le_bytes(body[16..20].try_into().ok()?);
    let schema_fingerprint = u64_at(20);
    let cp_len = u32::from_le_bytes(body[28..32].try_into().ok()?);
    let (checkpoint, ipc_start) = if cp_len == NO_CHECKPOINT {
        (None, BODY_FIXED)
    } else {
        let end = BODY_FIXED.checked_add(cp_len as usize)?;
        let text = std::str::from_utf8(body.get(BODY_FIXED..end)?).ok()?;
        (Some(text.to_string()), end)
    };
    let ipc = Bytes::copy_from_slice(body.get(ipc_start..)?);
    Some((
        WalRecord {
            lsn,
            batch: ReadyBatch {
                ipc,
                rows,
                schema_fingerprint,
                created_at_us,
                checkpoint,
            },
        },
        RECORD_HEADER + len,
    ))
}

pub(super) fn encode_record(lsn: u64, b: &ReadyBatch, out: &mut Vec<u8>) {
    let cp = b.checkpoint.as_deref().map(str::as_bytes);
    let len = BODY_FIXED + cp.map_or(0, <[u8]>::len) + b.ipc.len();
    let start = out.len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&b.created_at_us.to_le_bytes());
    out.extend_from_slice(&b.rows.to_le_bytes());
    out.extend_from_slice(&b.schema_fingerprint.to_le_bytes());
    match cp {
        Some(c) => {
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(c);
        }
        None => out.extend_from_slice(&NO_CHECKPOINT.to_le_bytes()),
    }
    out.extend_from_slice(&b.ipc);
    let crc = crc32fast::hash(&out[start + RECORD_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}
