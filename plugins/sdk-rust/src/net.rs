//! A TCP connection for networked connectors (through the agent's `allow_tcp` grants):
//! what arrives lands in one buffer, where the connector parses its messages in place,
//! and a poll can take what is there without waiting.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 256 << 10;

/// One connection and the bytes read from it and not consumed yet.
pub struct Stream {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    blocking: bool,
    /// Who is at the other end, for errors ("the server", "the broker").
    peer: &'static str,
}

impl Stream {
    /// Connect to `host:port`; the agent resolves the name and refuses what no grant allows.
    pub fn connect(host: &str, port: u16, peer: &'static str) -> Result<Stream, String> {
        let stream = TcpStream::connect((host, port)).map_err(|e| {
            format!("connecting to {host}:{port}: {e} (is the address granted with allow_tcp?)")
        })?;
        let _ = stream.set_nodelay(true);
        Ok(Stream {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            pos: 0,
            blocking: true,
            peer,
        })
    }

    /// The bytes read: ranges into it stay valid until the next read.
    pub fn buf(&self) -> &[u8] {
        &self.buf
    }

    /// Where the bytes not consumed yet start in [`Stream::buf`].
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Everything before `pos` is consumed (a later read drops it).
    pub fn set_pos(&mut self, pos: usize) {
        self.pos = pos.min(self.buf.len());
    }

    /// Read what the socket has now, without waiting: `false` if it had nothing.
    pub fn read_available(&mut self) -> Result<bool, String> {
        self.set_blocking(false)?;
        self.fill()
    }

    /// Wait until bytes come (bounded by the agent's `network_timeout`) and read them.
    pub fn read_more(&mut self) -> Result<(), String> {
        self.set_blocking(true)?;
        self.fill().map(|_| ())
    }

    /// Write all of `bytes`, waiting as needed.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.set_blocking(true)?;
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .map_err(|e| format!("writing to {}: {e}", self.peer))
    }

    /// Read once into the buffer, first dropping what was consumed: `false` on would-block.
    fn fill(&mut self) -> Result<bool, String> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let have = self.buf.len();
        self.buf.resize(have + READ_CHUNK, 0);
        let n = match self.stream.read(&mut self.buf[have..]) {
            Ok(0) => {
                self.buf.truncate(have);
                return Err(format!("{} closed the connection", self.peer));
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => 0,
            Err(e) => {
                self.buf.truncate(have);
                return Err(format!("reading from {}: {e}", self.peer));
            }
        };
        self.buf.truncate(have + n);
        Ok(n > 0)
    }

    fn set_blocking(&mut self, blocking: bool) -> Result<(), String> {
        if self.blocking != blocking {
            self.stream
                .set_nonblocking(!blocking)
                .map_err(|e| format!("switching the socket's blocking mode: {e}"))?;
            self.blocking = blocking;
        }
        Ok(())
    }
}
