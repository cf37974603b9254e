//! The PostgreSQL wire protocol, as far as a logical replication client needs it: start-up
//! and authentication (trust, cleartext, MD5, SCRAM-SHA-256), simple queries, and the
//! copy-both stream of `START_REPLICATION`. Messages to the server are built with
//! `postgres-protocol`; messages from it are framed here, over one buffer, so a change's
//! values are read where they arrived.

use std::ops::Range;

use bytes::BytesMut;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use sluice_plugin::net::Stream;

/// Where and as whom to connect.
pub struct Params<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: Option<&'a str>,
    pub database: &'a str,
    pub application_name: &'a str,
}

/// The largest message accepted from the server: bounds the buffer whatever it sends.
const MAX_MESSAGE: usize = 256 << 20;

/// One connection in replication mode (`replication=database`: replication commands and
/// plain SQL both).
pub struct Conn {
    stream: Stream,
    out: BytesMut,
}

/// The text values of a result row (`None` for NULL), as ranges of the connection's buffer.
pub type Row = Vec<Option<Range<usize>>>;

impl Conn {
    /// Connect, authenticate and wait until the server is ready for queries.
    pub fn connect(p: &Params) -> Result<Conn, String> {
        let mut c = Conn {
            stream: Stream::connect(p.host, p.port, "the server")?,
            out: BytesMut::new(),
        };
        // A fixed session: UTC timestamps in ISO form, floats that read back exactly, and
        // literals without backslash escapes, whatever the server's defaults.
        let params = [
            ("user", p.user),
            ("database", p.database),
            ("replication", "database"),
            ("application_name", p.application_name),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "3"),
            ("standard_conforming_strings", "on"),
        ];
        frontend::startup_message(params.iter().copied(), &mut c.out).map_err(io)?;
        c.send()?;
        c.authenticate(p)?;
        loop {
            let (tag, body) = c.next_blocking()?;
            match tag {
                b'Z' => return Ok(c),
                b'E' => return Err(server_error(&c.stream.buf()[body])),
                _ => {}
            }
        }
    }

    fn authenticate(&mut self, p: &Params) -> Result<(), String> {
        let password = || {
            p.password
                .ok_or_else(|| format!("the server asks {} for a password; set password", p.user))
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let (tag, body) = self.next_blocking()?;
            let body = self.stream.buf()[body].to_vec();
            match tag {
                b'E' => return Err(server_error(&body)),
                b'R' => {}
                other => {
                    return Err(format!(
                        "unexpected message {:?} at start-up",
                        other as char
                    ));
                }
            }
            let kind = u32_at(&body, 0)?;
            match kind {
                0 => return Ok(()),
                3 => {
                    frontend::password_message(password()?.as_bytes(), &mut self.out).map_err(io)?
                }
                5 => {
                    let salt: [u8; 4] = body
                        .get(4..8)
                        .and_then(|s| s.try_into().ok())
                        .ok_or("short MD5 request")?;
                    let hash = md5_hash(p.user.as_bytes(), password()?.as_bytes(), salt);
                    frontend::password_message(hash.as_bytes(), &mut self.out).map_err(io)?;
                }
                10 => {
                    let offered: Vec<&[u8]> = body[4..].split(|b| *b == 0).collect();
                    if !offered.contains(&&b"SCRAM-SHA-256"[..]) {
                        return Err("the server offers no SASL mechanism this client has (SCRAM-SHA-256 without channel binding)".into());
                    }
                    let s = sasl::ScramSha256::new(
                        password()?.as_bytes(),
                        sasl::ChannelBinding::unsupported(),
                    );
                    frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut self.out)
                        .map_err(io)?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().ok_or("SASL continue before SASL start")?;
                    s.update(&body[4..]).map_err(io)?;
                    frontend::sasl_response(s.message(), &mut self.out).map_err(io)?;
                }
                12 => {
                    let s = scram.as_mut().ok_or("SASL final before SASL start")?;
                    s.finish(&body[4..]).map_err(io)?;
                    continue;
                }
                other => {
                    return Err(format!(
                        "the server asks for authentication method {other}, which this client lacks"
                    ));
                }
            }
            self.send()?;
        }
    }

    /// Run one statement (SQL or a replication command); call `each` with every result row.
    pub fn query_each(
        &mut self,
        sql: &str,
        mut each: impl FnMut(&[u8], &Row) -> Result<(), String>,
    ) -> Result<(), String> {
        frontend::query(sql, &mut self.out).map_err(io)?;
        self.send()?;
        let mut failed = None;
        let mut row = Row::new();
        loop {
            let (tag, body) = self.next_blocking()?;
            match tag {
                b'D' if failed.is_none() => {
                    let buf = self.stream.buf();
                    data_row(buf, body, &mut row)?;
                    if let Err(e) = each(buf, &row) {
                        failed = Some(e);
                    }
                }
                b'E' => failed = Some(server_error(&self.stream.buf()[body])),
                b'Z' => return failed.map_or(Ok(()), Err),
                _ => {}
            }
        }
    }

    /// Run one statement; its rows as strings.
    pub fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        let mut rows = Vec::new();
        self.query_each(sql, |buf, row| {
            rows.push(
                row.iter()
                    .map(|v| {
                        v.clone()
                            .map(|r| String::from_utf8_lossy(&buf[r]).into_owned())
                    })
                    .collect(),
            );
            Ok(())
        })?;
        Ok(rows)
    }

    /// Send a command that switches the connection to copy-both (`START_REPLICATION`).
    pub fn start_copy(&mut self, command: &str) -> Result<(), String> {
        frontend::query(command, &mut self.out).map_err(io)?;
        self.send()?;
        loop {
            let (tag, body) = self.next_blocking()?;
            match tag {
                b'W' => return Ok(()),
                b'E' => {
                    let e = server_error(&self.stream.buf()[body]);
                    // The server follows an error with ReadyForQuery.
                    while self.next_blocking()?.0 != b'Z' {}
                    return Err(e);
                }
                _ => {}
            }
        }
    }

    /// The next complete message already received: its tag and body's range in the buffer
    /// (valid until the next read).
    pub fn next_buffered(&mut self) -> Result<Option<(u8, Range<usize>)>, String> {
        let pos = self.stream.pos();
        let avail = &self.stream.buf()[pos..];
        if avail.len() < 5 {
            return Ok(None);
        }
        let len = u32_at(avail, 1)? as usize;
        if !(4..=MAX_MESSAGE).contains(&len) {
            return Err(format!("the server sent a message of {len} bytes"));
        }
        if avail.len() < 1 + len {
            return Ok(None);
        }
        let tag = avail[0];
        let start = pos + 5;
        let end = pos + 1 + len;
        self.stream.set_pos(end);
        Ok(Some((tag, start..end)))
    }

    /// Give back the message whose body starts at `body_start`, the last one taken: the
    /// next `next_buffered` returns it again.
    pub fn unread(&mut self, body_start: usize) {
        self.stream.set_pos(body_start - 5);
    }

    /// Whether a whole message waits in the buffer.
    pub fn has_message(&self) -> bool {
        let avail = &self.stream.buf()[self.stream.pos()..];
        avail.len() >= 5 && u32_at(avail, 1).is_ok_and(|len| avail.len() > len as usize)
    }

    /// The buffer that message ranges index.
    pub fn buf(&self) -> &[u8] {
        self.stream.buf()
    }

    /// Read what the socket has now, without waiting: `false` if it had nothing.
    pub fn read_available(&mut self) -> Result<bool, String> {
        self.stream.read_available()
    }

    fn next_blocking(&mut self) -> Result<(u8, Range<usize>), String> {
        loop {
            if let Some(m) = self.next_buffered()? {
                return Ok(m);
            }
            self.stream.read_more()?;
        }
    }

    /// Send a copy-data message (a standby status update).
    pub fn send_copy_data(&mut self, data: &[u8]) -> Result<(), String> {
        frontend::CopyData::new(data)
            .map_err(io)?
            .write(&mut self.out);
        self.send()
    }

    fn send(&mut self) -> Result<(), String> {
        let out = self.out.split();
        self.stream.send(&out)
    }
}

/// The values of a DataRow body, as ranges of `buf`.
fn data_row(buf: &[u8], body: Range<usize>, row: &mut Row) -> Result<(), String> {
    row.clear();
    let b = &buf[body.clone()];
    let n = u16_at(b, 0)? as usize;
    let mut at = 2;
    for _ in 0..n {
        let len = u32_at(b, at)? as i32;
        at += 4;
        if len < 0 {
            row.push(None);
        } else {
            let end = at + len as usize;
            if end > b.len() {
                return Err("a data row runs past its message".into());
            }
            row.push(Some(body.start + at..body.start + end));
            at = end;
        }
    }
    Ok(())
}

/// An ErrorResponse as `SEVERITY CODE: message (detail)`.
pub fn server_error(body: &[u8]) -> String {
    let (mut severity, mut code, mut message, mut detail) = ("", "", "", "");
    for field in body.split(|b| *b == 0) {
        let Some((&kind, value)) = field.split_first() else {
            continue;
        };
        let value = std::str::from_utf8(value).unwrap_or("?");
        match kind {
            b'V' => severity = value,
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = value,
            _ => {}
        }
    }
    let mut s = format!("PostgreSQL: {severity} {code}: {message}");
    if !detail.is_empty() {
        s.push_str(&format!(" ({detail})"));
    }
    s
}

pub fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or_else(|| "a message ends early".to_string())
}

pub fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| "a message ends early".to_string())
}

pub fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| "a message ends early".to_string())
}

fn io(e: std::io::Error) -> String {
    e.to_string()
}

/// Quote an identifier (`"a""b"`).
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote a string literal (standard_conforming_strings is on for this session).
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
