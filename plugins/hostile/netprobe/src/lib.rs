//! Hostile source for tests: tries the network uses its config names and returns one row
//! per attempt with what it got, so a test sees both sides: the agent's refusal counters
//! and what the connector was told.
//!
//! ```json
//! {"tcp": ["db.test:5432"], "send": "ping\n", "udp": ["127.0.0.1:9"], "listen": true,
//!  "lookup": ["evil.test"], "http": ["http://127.0.0.1:8080/ok"], "rounds": 1}
//! ```
//!
//! A TCP target that connects is sent `send` (if any) and read back up to a newline; a
//! peer that never answers leaves the read waiting (for the host's `network_timeout`).

use std::io::{Read, Write};

use serde::Deserialize;
use sluice_plugin::{Batch, Column, ColumnType, Poll, Source};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    tcp: Vec<String>,
    #[serde(default)]
    send: Option<String>,
    #[serde(default)]
    udp: Vec<String>,
    #[serde(default)]
    listen: bool,
    #[serde(default)]
    lookup: Vec<String>,
    #[serde(default)]
    http: Vec<String>,
    #[serde(default = "one")]
    rounds: u32,
}

fn one() -> u32 {
    1
}

struct Probe {
    cfg: Config,
    round: u32,
}

impl Source for Probe {
    fn open(config: &str, _: Option<String>) -> Result<(Self, Vec<Column>), String> {
        let cfg: Config = serde_json::from_str(config).map_err(|e| format!("bad config: {e}"))?;
        let cols = vec![
            Column::new("round", ColumnType::Int64),
            Column::new("action", ColumnType::Utf8),
            Column::new("target", ColumnType::Utf8),
            Column::new("ok", ColumnType::Boolean),
            Column::new("detail", ColumnType::Utf8),
        ];
        Ok((Probe { cfg, round: 0 }, cols))
    }

    fn poll(&mut self, _: u32) -> Result<Poll, String> {
        if self.round >= self.cfg.rounds {
            return Ok(Poll::finished());
        }
        self.round += 1;
        let mut rows = Vec::new();
        let mut row = |action: &str, target: &str, got: Result<String, String>| {
            let (ok, detail) = match got {
                Ok(d) => (true, d),
                Err(d) => (false, d),
            };
            rows.push(serde_json::json!({
                "round": self.round, "action": action, "target": target, "ok": ok, "detail": detail,
            }).to_string());
        };
        for t in &self.cfg.tcp {
            row("tcp", t, tcp(t, self.cfg.send.as_deref()));
        }
        for t in &self.cfg.udp {
            let got = std::net::UdpSocket::bind("0.0.0.0:0")
                .and_then(|s| s.send_to(b"x", t.as_str()))
                .map(|n| format!("sent {n}"))
                .map_err(|e| e.to_string());
            row("udp", t, got);
        }
        if self.cfg.listen {
            // A bind to an address, and a bind to any address (as a connect makes) then
            // listen.
            for at in ["127.0.0.1:0", "0.0.0.0:0"] {
                let got = std::net::TcpListener::bind(at)
                    .map(|l| format!("listening on {:?}", l.local_addr()))
                    .map_err(|e| e.to_string());
                row("listen", at, got);
            }
        }
        for name in &self.cfg.lookup {
            let got = std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 80))
                .map(|a| a.map(|a| a.ip().to_string()).collect::<Vec<_>>().join(","))
                .map_err(|e| e.to_string());
            row("lookup", name, got);
        }
        for url in &self.cfg.http {
            row("http", url, http_get(url));
        }
        let poll = Poll::batch(Batch::json_lines(rows.join("\n")));
        Ok(if self.round >= self.cfg.rounds {
            poll.and_finish()
        } else {
            poll
        })
    }
}

/// Connect; send `send` and read the answer up to a newline.
fn tcp(target: &str, send: Option<&str>) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect(target).map_err(|e| e.to_string())?;
    let Some(send) = send else {
        return Ok("connected".into());
    };
    s.write_all(send.as_bytes()).map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while s.read(&mut byte).map_err(|e| e.to_string())? == 1 {
        if byte[0] == b'\n' {
            break;
        }
        got.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// GET `url` through wasi:http: the status and the body.
fn http_get(url: &str) -> Result<String, String> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
    let (scheme, rest) = url.split_once("://").ok_or("no scheme")?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    let req = OutgoingRequest::new(Fields::new());
    req.set_method(&Method::Get).map_err(|()| "method")?;
    req.set_scheme(Some(&if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    }))
    .map_err(|()| "scheme")?;
    req.set_authority(Some(authority))
        .map_err(|()| "authority")?;
    req.set_path_with_query(Some(path)).map_err(|()| "path")?;
    let body = req.body().map_err(|()| "body")?;
    let pending = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let resp = pending
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let incoming = resp.consume().map_err(|()| "consume")?;
    let mut stream = incoming.stream().map_err(|()| "stream")?;
    let mut text = Vec::new();
    stream.read_to_end(&mut text).map_err(|e| e.to_string())?;
    Ok(format!("{status} {}", String::from_utf8_lossy(&text)))
}

sluice_plugin::export_source!(Probe);
