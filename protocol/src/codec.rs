//! Little helpers to write and read the primitive fields of frame bodies (big-endian).

use bytes::{Buf, BufMut};

use crate::ProtocolError;

pub(crate) fn put_str(buf: &mut Vec<u8>, s: &str) {
    // Every string in the protocol is an identifier or a short message; u16 is plenty and
    // longer input is truncated at a char boundary rather than corrupting the frame.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    buf.put_u16(end as u16);
    buf.put_slice(&s.as_bytes()[..end]);
}

/// An optional long string: flag byte, then u32 length and UTF-8 bytes.
pub(crate) fn put_opt_long_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => buf.put_u8(0),
        Some(s) => {
            buf.put_u8(1);
            buf.put_u32(s.len().min(u32::MAX as usize) as u32);
            buf.put_slice(&s.as_bytes()[..s.len().min(u32::MAX as usize)]);
        }
    }
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn need(&self, n: usize, what: &'static str) -> Result<(), ProtocolError> {
        if self.buf.remaining() < n {
            return Err(ProtocolError::Truncated {
                what,
                needed: n - self.buf.remaining(),
            });
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, ProtocolError> {
        self.need(8, what)?;
        Ok(self.buf.get_u64())
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, ProtocolError> {
        self.need(8, what)?;
        Ok(self.buf.get_i64())
    }

    pub(crate) fn str(&mut self, what: &'static str) -> Result<String, ProtocolError> {
        let len = self.u16(what)? as usize;
        let bytes = self.bytes(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ProtocolError::InvalidUtf8 { what })
    }

    pub(crate) fn opt_long_str(
        &mut self,
        what: &'static str,
    ) -> Result<Option<String>, ProtocolError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => {
                let len = self.u32(what)? as usize;
                let bytes = self.bytes(len, what)?;
                String::from_utf8(bytes.to_vec())
                    .map(Some)
                    .map_err(|_| ProtocolError::InvalidUtf8 { what })
            }
            other => Err(ProtocolError::InvalidField {
                field: what,
                reason: format!("presence flag {other}"),
            }),
        }
    }

    pub(crate) fn bytes(
        &mut self,
        len: usize,
        what: &'static str,
    ) -> Result<&'a [u8], ProtocolError> {
        self.need(len, what)?;
        let (head, tail) = self.buf.split_at(len);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn finish(self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes(self.buf.len()))
        }
    }
}
