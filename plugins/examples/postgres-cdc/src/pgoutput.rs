//! pgoutput's logical replication messages (protocol version 1), decoded from the payload
//! of an XLogData message. Values stay ranges of the connection's buffer.

use std::ops::Range;

use crate::wire::{u16_at, u32_at, u64_at};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
pub const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// One column value of a tuple.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Null,
    /// A TOASTed value the update left as it was (not sent).
    Unchanged,
    Text(Range<usize>),
}

/// A column of a Relation message.
pub struct RelColumn {
    pub name: String,
    pub oid: u32,
    pub typmod: i32,
}

pub enum Message {
    Begin {
        /// The LSN of the commit record.
        lsn: u64,
        /// Commit time, microseconds since the Unix epoch.
        ts: i64,
        xid: u32,
    },
    Commit {
        /// Where the transaction's commit record ends: streaming from here skips it.
        end: u64,
    },
    Relation {
        id: u32,
        schema: String,
        name: String,
        columns: Vec<RelColumn>,
    },
    Insert {
        rel: u32,
        new: Vec<Val>,
    },
    Update {
        rel: u32,
        old: Option<Vec<Val>>,
        new: Vec<Val>,
    },
    Delete {
        rel: u32,
        old: Vec<Val>,
    },
    Truncate {
        rels: Vec<u32>,
    },
    /// Types, origins and anything else this connector has no use for.
    Other,
}

/// Decode the pgoutput message at `buf[at..end]`.
pub fn decode(buf: &[u8], at: usize, end: usize) -> Result<Message, String> {
    let mut r = Reader { buf, at, end };
    let tag = r.u8()?;
    Ok(match tag {
        b'B' => {
            let lsn = r.u64()?;
            let ts = r.u64()? as i64;
            let xid = r.u32()?;
            Message::Begin {
                lsn,
                ts: ts.saturating_add(PG_EPOCH_MICROS),
                xid,
            }
        }
        b'C' => {
            r.u8()?;
            r.u64()?;
            let end = r.u64()?;
            Message::Commit { end }
        }
        b'R' => {
            let id = r.u32()?;
            let schema = r.cstr()?;
            let name = r.cstr()?;
            r.u8()?;
            let n = r.u16()?;
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                r.u8()?;
                let name = r.cstr()?;
                let oid = r.u32()?;
                let typmod = r.u32()? as i32;
                columns.push(RelColumn { name, oid, typmod });
            }
            Message::Relation {
                id,
                schema,
                name,
                columns,
            }
        }
        b'I' => {
            let rel = r.u32()?;
            r.expect(b'N')?;
            Message::Insert {
                rel,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let rel = r.u32()?;
            let mut old = None;
            let mut kind = r.u8()?;
            if kind == b'K' || kind == b'O' {
                old = Some(r.tuple()?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(format!(
                    "an update without its new tuple ({:?})",
                    kind as char
                ));
            }
            Message::Update {
                rel,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let rel = r.u32()?;
            let kind = r.u8()?;
            if kind != b'K' && kind != b'O' {
                return Err(format!(
                    "a delete without its old tuple ({:?})",
                    kind as char
                ));
            }
            Message::Delete {
                rel,
                old: r.tuple()?,
            }
        }
        b'T' => {
            let n = r.u32()?;
            r.u8()?;
            let rels = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Message::Truncate { rels }
        }
        _ => Message::Other,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    end: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<Range<usize>, String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.end);
        let end = end.ok_or("a pgoutput message ends early")?;
        let r = self.at..end;
        self.at = end;
        Ok(r)
    }

    fn u8(&mut self) -> Result<u8, String> {
        let r = self.take(1)?;
        Ok(self.buf[r.start])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let r = self.take(2)?;
        u16_at(self.buf, r.start)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let r = self.take(4)?;
        u32_at(self.buf, r.start)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let r = self.take(8)?;
        u64_at(self.buf, r.start)
    }

    fn expect(&mut self, tag: u8) -> Result<(), String> {
        let got = self.u8()?;
        if got == tag {
            Ok(())
        } else {
            Err(format!(
                "expected {:?} in pgoutput, got {:?}",
                tag as char, got as char
            ))
        }
    }

    fn cstr(&mut self) -> Result<String, String> {
        let rest = &self.buf[self.at..self.end];
        let n = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or("a name without its terminator")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.at += n + 1;
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<Val>, String> {
        let n = self.u16()?;
        let mut vals = Vec::with_capacity(n as usize);
        for _ in 0..n {
            vals.push(match self.u8()? {
                b'n' => Val::Null,
                b'u' => Val::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    Val::Text(self.take(len)?)
                }
                other => {
                    return Err(format!("a tuple value of kind {:?}", other as char));
                }
            });
        }
        Ok(vals)
    }
}
