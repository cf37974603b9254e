//! A minimal client of a Sluice HTTP endpoint: plain HTTP/1.0 GETs, the body delimited by
//! the end of the connection (which lets `tap` stream). `sluice-agent top` and `tap` read an
//! agent's endpoint with it, and an agent behind a Kafka sink asks the processor's
//! `/api/committed`. The `Host` sent is the address itself, which every endpoint admits.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Where an endpoint answers, and the token to show it.
pub struct Endpoint {
    addr: SocketAddr,
    token: Option<String>,
    timeout: Duration,
    io_timeout: Option<Duration>,
}

/// The most bytes of status line and headers read.
const MAX_HEAD: u64 = 64 * 1024;

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.addr)
    }
}

/// An error that says which endpoint and what failed.
fn failed(at: &Endpoint, what: &str, e: impl fmt::Display) -> io::Error {
    io::Error::other(format!("{what} {at}: {e}"))
}

impl Endpoint {
    /// The endpoint at `addr`, shown `token` as bearer if any; connects give up after 5 s.
    pub fn new(addr: SocketAddr, token: Option<String>) -> Self {
        Endpoint {
            addr,
            token,
            timeout: Duration::from_secs(5),
            io_timeout: None,
        }
    }

    /// Give up a connect after `timeout`, and also a read or a write (without it, reads
    /// wait as long as the body streams).
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Endpoint {
            timeout,
            io_timeout: Some(timeout),
            ..self
        }
    }

    /// GET `path`: the status and the body, which must be UTF-8 and at most `max` bytes.
    pub fn get(&self, path: &str, max: u64) -> io::Result<(u16, String)> {
        let (status, body) = self.open(path)?;
        let mut bytes = Vec::new();
        body.take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| failed(self, "reading", e))?;
        if bytes.len() as u64 > max {
            return Err(failed(self, "an answer over", format!("{max} bytes")));
        }
        let text = String::from_utf8(bytes).map_err(|e| failed(self, "reading", e))?;
        Ok((status, text))
    }

    /// GET `path`: the status, and the body to read as it comes.
    pub fn open(&self, path: &str) -> io::Result<(u16, BufReader<TcpStream>)> {
        let mut s = TcpStream::connect_timeout(&self.addr, self.timeout)
            .map_err(|e| failed(self, "cannot reach", e))?;
        s.set_read_timeout(self.io_timeout)?;
        s.set_write_timeout(self.io_timeout)?;
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {}\r\n{auth}\r\n",
            self.addr
        )
        .map_err(|e| failed(self, "cannot ask", e))?;
        let mut r = BufReader::new(s);
        let mut head = MAX_HEAD;
        let mut read_line = |r: &mut BufReader<TcpStream>, line: &mut String| {
            let n = r.by_ref().take(head).read_line(line)?;
            head -= n as u64;
            if head == 0 {
                return Err(failed(
                    self,
                    "too long a head from",
                    format!("over {MAX_HEAD} bytes"),
                ));
            }
            Ok(n)
        };
        let mut status_line = String::new();
        read_line(&mut r, &mut status_line).map_err(|e| failed(self, "no answer from", e))?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| failed(self, "not HTTP from", format!("{status_line:?}")))?;
        // Skip the headers.
        let mut line = String::new();
        loop {
            line.clear();
            if read_line(&mut r, &mut line)? == 0 || line == "\r\n" || line == "\n" {
                break;
            }
        }
        Ok((status, r))
    }
}
