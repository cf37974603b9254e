//! Networked source: MQTT topics on a persistent session (MQTT 5, QoS 1), each message
//! acknowledged only once the lake holds it.
//!
//! | file | job |
//! |---|---|
//! | `lib.rs` | config, the session, delivery and acknowledgement, checkpoints |
//! | `packet.rs` | MQTT 5 packets: built, framed and read |
//!
//! ```toml
//! [sources.plant]
//! type = "wasm"
//! plugin = "plugins/dist/mqtt.wasm"
//! allow_tcp = ["broker.internal:1883"]
//! [sources.plant.config]
//! host = "broker.internal"
//! client_id = "sluice-plant-01"
//! topics = ["plant/+/telemetry"]
//! ```
//!
//! Each row is one message: `topic`, `payload` (the payload when it is UTF-8) or
//! `payload_binary` (when it is not), `qos`, `retain`, `received_at`, and `seq` (the
//! message's place in this source's stream).
//!
//! The broker keeps every message it sent until it gets a PUBACK, and sends again what
//! was not acknowledged when the client reconnects to its session (with the original
//! packet ids, in the original order). The PUBACKs go out in `committed`, so a message
//! leaves the broker only once the lake holds it. The checkpoint names the last message
//! the agent holds (`SEQ ID HASH`: its place, packet id and a hash of its topic and
//! payload); after a restart the messages sent again up to that one are acknowledged, not
//! delivered twice.

mod packet;

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sluice_plugin::net::Stream;
use sluice_plugin::{Batch, Column, ColumnType, Level, Poll, Source, TypedColumn, log};

use packet::Frame;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    host: String,
    #[serde(default = "port")]
    port: u16,
    /// The session's name: the broker keeps one session per client id.
    client_id: String,
    /// Topic filters (`+` and `#` wildcards), subscribed at QoS 1.
    topics: Vec<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    /// Seconds between packets before a ping (the broker may set its own).
    #[serde(default = "keep_alive_s")]
    keep_alive_s: u16,
    /// How long the broker keeps the session while the agent is away, in seconds.
    #[serde(default = "session_expiry_s")]
    session_expiry_s: u32,
    /// Messages the broker may send before it waits for acknowledgements: with acks sent
    /// once the lake holds a batch, it bounds the rate to about this many per commit.
    #[serde(default = "receive_maximum")]
    receive_maximum: u16,
    /// The largest packet the broker may send (MQTT 5 Maximum Packet Size): a longer
    /// message is not sent to this client (the broker counts it).
    #[serde(default = "max_message_bytes")]
    max_message_bytes: u32,
    /// Longest a poll keeps reading, in milliseconds (keep it under `call_timeout`).
    #[serde(default = "max_poll_ms")]
    max_poll_ms: u64,
}

fn port() -> u16 {
    1883
}
fn keep_alive_s() -> u16 {
    30
}
fn session_expiry_s() -> u32 {
    7 * 86_400
}
fn receive_maximum() -> u16 {
    5_000
}
fn max_message_bytes() -> u32 {
    1 << 20
}
fn max_poll_ms() -> u64 {
    500
}

/// How long after connecting, with the socket quiet, messages sent again are taken as
/// not held by the agent when the last one it holds was not among them.
const RESEND_WAIT: Duration = Duration::from_secs(2);
/// Bytes of messages kept between polls (read ahead, or sent again and not settled): a
/// poll stops reading there, so the plugin's memory stays bounded whatever the broker
/// sends.
const KEEP_BYTES: usize = 16 << 20;
/// The largest `receive_maximum`: packet ids stay unique among the messages in flight and
/// those just acknowledged (a broker numbers them in turn, 1 to 65535).
const MAX_RECEIVE_MAXIMUM: u16 = 32_767;

/// One message, owned: it may wait for a later poll.
struct Message {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
    id: Option<u16>,
    received_at: i64,
}

impl Message {
    /// Bytes it keeps in memory.
    fn size(&self) -> usize {
        self.topic.len() + self.payload.len()
    }

    /// Who it is, to know it again when the broker sends it again (QoS 1 only). Hashed
    /// only where that is asked, not for every message that passes.
    fn held(&self) -> Option<Held> {
        self.id.map(|id| Held {
            id,
            hash: hash(self.topic.as_bytes(), &self.payload),
        })
    }
}

/// The last QoS 1 message the agent holds: where a restart resumes.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Held {
    id: u16,
    hash: u64,
}

/// A checkpoint: messages delivered (`seq`) and the last QoS 1 one among them.
#[derive(Debug, PartialEq)]
struct Mark {
    seq: u64,
    held: Option<Held>,
}

impl Mark {
    fn parse(s: &str) -> Result<Mark, String> {
        let bad = || format!("checkpoint {s:?} is not this connector's");
        let mut parts = s.split(' ');
        let seq = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let held = match (parts.next(), parts.next(), parts.next()) {
            (None, None, None) => None,
            (Some(id), Some(hash), None) => Some(Held {
                id: id.parse().map_err(|_| bad())?,
                hash: u64::from_str_radix(hash, 16).map_err(|_| bad())?,
            }),
            _ => return Err(bad()),
        };
        Ok(Mark { seq, held })
    }

    fn print(&self) -> String {
        match self.held {
            Some(h) => format!("{} {} {:016x}", self.seq, h.id, h.hash),
            None => self.seq.to_string(),
        }
    }
}

struct Mqtt {
    cfg: Config,
    stream: Stream,
    keep_alive: Duration,
    sent_at: Instant,
    ping_at: Option<Instant>,
    connected_at: Instant,
    /// Messages delivered so far, and the last QoS 1 one.
    seq: u64,
    held: Option<Held>,
    /// Resuming: messages sent again are kept here until it is known whether the agent
    /// holds them (up to `resend_of`, the last one it holds).
    resend_of: Option<Held>,
    resent: Vec<Message>,
    /// Messages read, not yet delivered.
    ready: VecDeque<Message>,
    /// Bytes of topic and payload in `ready` and `resent`.
    kept: usize,
    /// QoS 1 messages delivered and not acknowledged, by the seq that carries them.
    unacked: VecDeque<(u64, u16)>,
    /// The newest seq the lake holds.
    lake: u64,
}

impl Source for Mqtt {
    fn open(config: &str, checkpoint: Option<String>) -> Result<(Self, Vec<Column>), String> {
        let cfg: Config = serde_json::from_str(config).map_err(|e| format!("bad config: {e}"))?;
        check(&cfg)?;
        let mark = checkpoint.as_deref().map(Mark::parse).transpose()?;
        let stream = Stream::connect(&cfg.host, cfg.port, "the broker")?;
        let now = Instant::now();
        let mut m = Mqtt {
            keep_alive: Duration::from_secs(cfg.keep_alive_s.into()),
            stream,
            sent_at: now,
            ping_at: None,
            connected_at: now,
            seq: mark.as_ref().map_or(0, |m| m.seq),
            held: mark.as_ref().and_then(|m| m.held),
            resend_of: None,
            resent: Vec::new(),
            ready: VecDeque::new(),
            kept: 0,
            unacked: VecDeque::new(),
            lake: 0,
            cfg,
        };
        m.handshake(mark.is_some())?;
        Ok((m, schema()))
    }

    fn poll(&mut self, max_rows: u32) -> Result<Poll, String> {
        let max_rows = max_rows.max(1) as usize;
        let deadline = Instant::now() + Duration::from_millis(self.cfg.max_poll_ms);
        loop {
            while self.ready.len() < max_rows && self.kept < KEEP_BYTES {
                let Some(f) = self.next_buffered()? else {
                    break;
                };
                self.take(f)?;
            }
            if self.ready.len() >= max_rows || self.kept >= KEEP_BYTES || Instant::now() >= deadline
            {
                break;
            }
            if !self.read_available()? {
                break;
            }
        }
        if self.resend_of.is_some()
            && self.connected_at.elapsed() >= RESEND_WAIT
            && !self.has_packet()
        {
            // The last message the agent holds was acknowledged before the restart: what
            // was sent again came after it.
            self.settle_resent(None)?;
        }
        self.keep_alive()?;
        if self.ready.is_empty() {
            return Ok(Poll::idle());
        }
        let n = self.ready.len().min(max_rows);
        let batch = self.deliver(n);
        Ok(Poll::batch(batch).checkpoint(
            Mark {
                seq: self.seq,
                held: self.held,
            }
            .print(),
        ))
    }

    fn committed(&mut self, checkpoint: &str) -> Result<(), String> {
        self.lake = self.lake.max(Mark::parse(checkpoint)?.seq);
        self.ack()
    }
}

impl Mqtt {
    fn handshake(&mut self, resuming: bool) -> Result<(), String> {
        let c = &self.cfg;
        let connect = packet::connect(&packet::Connect {
            client_id: &c.client_id,
            username: c.username.as_deref(),
            password: c.password.as_deref(),
            keep_alive_s: c.keep_alive_s,
            session_expiry_s: c.session_expiry_s,
            receive_maximum: c.receive_maximum,
            maximum_packet_size: c.max_message_bytes,
        });
        self.send(&connect)?;
        let f = self.next_blocking()?;
        if f.kind() != packet::CONNACK {
            return Err(format!(
                "the broker answered CONNECT with packet type {}",
                f.kind()
            ));
        }
        let ack = packet::connack(&self.stream.buf()[f.body])?;
        if ack.reason >= 0x80 {
            return Err(format!(
                "the broker refused the connection: {} (reason 0x{:02x}){}",
                reason_name(ack.reason),
                ack.reason,
                ack.reason_string
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default()
            ));
        }
        if let Some(k) = ack.server_keep_alive {
            self.keep_alive = Duration::from_secs(k.into());
        }
        if resuming && !ack.session_present {
            // Nothing to recover from here: say it loudly, the operator may need to look
            // at the broker's session expiry or persistence.
            log(
                Level::Warn,
                &format!(
                    "the broker had no session for client {:?}: messages published while the agent was away and not retained were not kept (session_expiry_s, broker persistence)",
                    self.cfg.client_id
                ),
            );
        }
        if ack.session_present {
            self.resend_of = self.held;
        }
        self.send(&packet::subscribe(1, &self.cfg.topics))?;
        loop {
            let f = self.next_blocking()?;
            match f.kind() {
                packet::SUBACK => {
                    let (_, codes) = packet::suback(&self.stream.buf()[f.body])?;
                    if let Some((topic, code)) = self
                        .cfg
                        .topics
                        .iter()
                        .zip(&codes)
                        .find(|(_, code)| **code >= 0x80)
                    {
                        return Err(format!(
                            "the broker refused the subscription to {topic:?}: {} (reason 0x{code:02x})",
                            reason_name(*code)
                        ));
                    }
                    if codes.len() != self.cfg.topics.len() {
                        return Err("the broker answered a different number of topics".into());
                    }
                    // At QoS 0 the broker would keep nothing for the agent: refuse rather
                    // than lose messages at the next restart.
                    if let Some(topic) = self.cfg.topics.iter().zip(&codes).find(|(_, c)| **c == 0)
                    {
                        return Err(format!(
                            "the broker granted only QoS 0 for {:?}: it would keep nothing while the agent is away (its maximum QoS setting?)",
                            topic.0
                        ));
                    }
                    break;
                }
                // Messages of the kept session may come before the SUBACK.
                _ => {
                    self.take(f)?;
                    if self.kept >= KEEP_BYTES {
                        return Err(format!(
                            "the broker sent over {KEEP_BYTES} bytes of messages before it answered SUBSCRIBE"
                        ));
                    }
                }
            }
        }
        self.connected_at = Instant::now();
        log(
            Level::Info,
            &format!(
                "subscribed to {} as {:?} ({} session) from message {}",
                self.cfg.topics.join(", "),
                self.cfg.client_id,
                if ack.session_present { "kept" } else { "new" },
                self.seq
            ),
        );
        Ok(())
    }

    /// Take one packet from the broker.
    fn take(&mut self, f: Frame) -> Result<(), String> {
        match f.kind() {
            packet::PUBLISH => {
                let p = packet::publish(self.stream.buf(), &f)?;
                if p.qos == 2 {
                    return Err("the broker sent QoS 2 on a QoS 1 subscription".into());
                }
                if p.id == Some(0) {
                    return Err("the broker sent a QoS 1 message with packet id 0".into());
                }
                let m = Message {
                    topic: String::from_utf8_lossy(&self.stream.buf()[p.topic]).into_owned(),
                    payload: self.stream.buf()[p.payload].to_vec(),
                    qos: p.qos,
                    retain: p.retain,
                    id: p.id,
                    received_at: now_micros(),
                };
                self.kept += m.size();
                if let Some(of) = self.resend_of {
                    if p.dup && p.qos == 1 {
                        let last_held = m.held() == Some(of);
                        self.resent.push(m);
                        if last_held {
                            self.settle_resent(Some(self.resent.len()))?;
                        } else if self.kept >= KEEP_BYTES {
                            // More than memory allows (a broker may send more than
                            // receive_maximum): deliver them, some may come twice.
                            log(
                                Level::Warn,
                                &format!(
                                    "{} messages sent again without the last one the agent holds: delivered, some may land twice",
                                    self.resent.len()
                                ),
                            );
                            self.settle_resent(None)?;
                        }
                        return Ok(());
                    }
                    // The broker sends again first: a new message ends what it sends again.
                    self.settle_resent(None)?;
                }
                self.ready.push_back(m);
            }
            packet::PINGRESP => self.ping_at = None,
            packet::DISCONNECT => {
                let (code, text) = packet::disconnect(&self.stream.buf()[f.body]);
                return Err(format!(
                    "the broker disconnected: {} (reason 0x{code:02x}){}",
                    reason_name(code),
                    text.map(|s| format!(": {s}")).unwrap_or_default()
                ));
            }
            // SUBACK of a subscription already settled, or AUTH: nothing to do.
            _ => {}
        }
        Ok(())
    }

    /// Settle the messages sent again after a restart: the first `held` of them the agent
    /// already holds (they are acknowledged once the lake holds its checkpoint), the rest
    /// are new to it.
    fn settle_resent(&mut self, held: Option<usize>) -> Result<(), String> {
        let resent = std::mem::take(&mut self.resent);
        let held = held.unwrap_or(0);
        if held > 0 {
            log(
                Level::Info,
                &format!("{held} messages sent again are already held, not delivered twice"),
            );
        }
        for (i, m) in resent.into_iter().enumerate() {
            if i < held {
                self.kept -= m.size();
                if let Some(id) = m.id {
                    self.unacked.push_back((self.seq, id));
                }
            } else {
                self.ready.push_back(m);
            }
        }
        self.resend_of = None;
        // The lake may hold them already.
        self.ack()
    }

    /// The next `n` ready messages as a batch.
    fn deliver(&mut self, n: usize) -> Batch {
        // The checkpoint names the batch's last QoS 1 message.
        if let Some(last) = self.ready.range(..n).rev().find_map(Message::held) {
            self.held = Some(last);
        }
        let mut topic = Vec::with_capacity(n);
        let mut text: Vec<Option<String>> = Vec::with_capacity(n);
        let mut binary: Vec<Vec<u8>> = Vec::with_capacity(n);
        let mut is_binary = Vec::with_capacity(n);
        let mut qos = Vec::with_capacity(n);
        let mut retain = Vec::with_capacity(n);
        let mut received = Vec::with_capacity(n);
        let mut seq = Vec::with_capacity(n);
        for m in self.ready.drain(..n) {
            self.kept -= m.size();
            self.seq += 1;
            if let Some(id) = m.id {
                self.unacked.push_back((self.seq, id));
            }
            topic.push(m.topic);
            match String::from_utf8(m.payload) {
                Ok(s) => {
                    text.push(Some(s));
                    binary.push(Vec::new());
                    is_binary.push(false);
                }
                Err(e) => {
                    text.push(None);
                    binary.push(e.into_bytes());
                    is_binary.push(true);
                }
            }
            qos.push(i32::from(m.qos));
            retain.push(m.retain);
            received.push(m.received_at);
            seq.push(self.seq as i64);
        }
        Batch::columns(vec![
            TypedColumn::utf8(topic),
            TypedColumn::utf8_opt(text.iter().map(Option::as_deref)),
            TypedColumn::binary(binary).with_validity(is_binary),
            TypedColumn::int32(qos),
            TypedColumn::boolean(retain),
            TypedColumn::timestamp(received),
            TypedColumn::int64(seq),
        ])
    }

    /// Acknowledge every message the lake holds.
    fn ack(&mut self) -> Result<(), String> {
        let mut out = Vec::new();
        while let Some(&(seq, id)) = self.unacked.front() {
            if seq > self.lake {
                break;
            }
            packet::puback(id, &mut out);
            self.unacked.pop_front();
        }
        if out.is_empty() {
            return Ok(());
        }
        self.send(&out)
    }

    fn keep_alive(&mut self) -> Result<(), String> {
        if self.keep_alive.is_zero() {
            return Ok(());
        }
        if let Some(at) = self.ping_at
            && at.elapsed() > self.keep_alive
        {
            return Err(format!(
                "the broker did not answer a ping in {:?}",
                self.keep_alive
            ));
        }
        if self.ping_at.is_none() && self.sent_at.elapsed() >= self.keep_alive / 2 {
            self.send(&packet::PINGREQ)?;
            self.ping_at = Some(Instant::now());
        }
        Ok(())
    }

    fn next_buffered(&mut self) -> Result<Option<Frame>, String> {
        let max = self.cfg.max_message_bytes as usize;
        let Some((f, next)) = packet::frame(self.stream.buf(), self.stream.pos(), max)? else {
            return Ok(None);
        };
        self.stream.set_pos(next);
        Ok(Some(f))
    }

    fn has_packet(&self) -> bool {
        let max = self.cfg.max_message_bytes as usize;
        matches!(
            packet::frame(self.stream.buf(), self.stream.pos(), max),
            Ok(Some(_)) | Err(_)
        )
    }

    fn next_blocking(&mut self) -> Result<Frame, String> {
        loop {
            if let Some(f) = self.next_buffered()? {
                return Ok(f);
            }
            self.stream.read_more()?;
            // The broker is alive: a PINGRESP may wait behind unread messages.
            self.ping_at = None;
        }
    }

    /// Read what the socket has now, without waiting: `false` if it had nothing.
    fn read_available(&mut self) -> Result<bool, String> {
        let got = self.stream.read_available()?;
        if got {
            self.ping_at = None;
        }
        Ok(got)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream.send(bytes)?;
        self.sent_at = Instant::now();
        Ok(())
    }
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        // A clean goodbye keeps the session; a lost connection keeps it too.
        let _ = self.send(&packet::DISCONNECT_NORMAL);
    }
}

fn check(cfg: &Config) -> Result<(), String> {
    if cfg.client_id.is_empty() || cfg.client_id.len() > 256 {
        return Err(
            "client_id: 1 to 256 bytes, the same on every restart (it names the session)".into(),
        );
    }
    if cfg.topics.is_empty() || cfg.topics.len() > 1000 {
        return Err("topics: 1 to 1000 topic filters".into());
    }
    for t in &cfg.topics {
        let levels: Vec<&str> = t.split('/').collect();
        let bad = t.is_empty()
            || t.len() > 4096
            || levels.iter().enumerate().any(|(i, l)| {
                (l.contains('#') && (*l != "#" || i + 1 != levels.len()))
                    || (l.contains('+') && *l != "+")
            });
        if bad {
            return Err(format!(
                "topics: {t:?} is not a topic filter (`+` stands for a whole level, `#` for the last)"
            ));
        }
    }
    if !(1..=MAX_RECEIVE_MAXIMUM).contains(&cfg.receive_maximum) {
        return Err(format!("receive_maximum: 1 to {MAX_RECEIVE_MAXIMUM}"));
    }
    for (what, v) in [("username", &cfg.username), ("password", &cfg.password)] {
        if v.as_ref().is_some_and(|v| v.len() > usize::from(u16::MAX)) {
            return Err(format!("{what}: at most 65535 bytes"));
        }
    }
    if !(1..=60_000).contains(&cfg.max_poll_ms) {
        return Err("max_poll_ms: 1 to 60000".into());
    }
    if !(1024..=64 << 20).contains(&cfg.max_message_bytes) {
        return Err("max_message_bytes: 1 KiB to 64 MiB".into());
    }
    Ok(())
}

fn schema() -> Vec<Column> {
    vec![
        Column::required("topic", ColumnType::Utf8),
        Column::new("payload", ColumnType::Utf8),
        Column::new("payload_binary", ColumnType::Binary),
        Column::required("qos", ColumnType::Int32),
        Column::required("retain", ColumnType::Boolean),
        Column::required("received_at", ColumnType::TimestampTz),
        Column::required("seq", ColumnType::Int64),
    ]
}

/// FNV-1a over the topic and payload: tells a message sent again from another one that
/// reuses its packet id.
fn hash(topic: &[u8], payload: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in topic.iter().chain(&[0xff]).chain(payload) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The name of an MQTT 5 reason code, for errors.
fn reason_name(code: u8) -> &'static str {
    match code {
        0x04 => "disconnect with will",
        0x80 => "unspecified error",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x83 => "implementation specific error",
        0x84 => "unsupported protocol version",
        0x85 => "client identifier not valid",
        0x86 => "bad user name or password",
        0x87 => "not authorized",
        0x88 => "server unavailable",
        0x89 => "server busy",
        0x8A => "banned",
        0x8B => "server shutting down",
        0x8C => "bad authentication method",
        0x8D => "keep alive timeout",
        0x8E => "session taken over",
        0x8F => "topic filter invalid",
        0x91 => "packet identifier in use",
        0x93 => "receive maximum exceeded",
        0x95 => "packet too large",
        0x97 => "quota exceeded",
        0x99 => "payload format invalid",
        0x9C => "use another server",
        0x9D => "server moved",
        0x9F => "connection rate exceeded",
        _ => "error",
    }
}

sluice_plugin::export_source!(Mqtt);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_foreign_ones_are_refused() {
        for m in [
            Mark { seq: 0, held: None },
            Mark {
                seq: 123_456,
                held: Some(Held {
                    id: 65_535,
                    hash: 0x0123_4567_89ab_cdef,
                }),
            },
        ] {
            assert_eq!(Mark::parse(&m.print()).unwrap(), m);
        }
        for bad in ["", "x", "1 2", "1 2 zz", "1 2 3 4", "0/16B3#2"] {
            assert!(Mark::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn topic_filters_are_checked_before_the_broker_sees_them() {
        let cfg = |topics: &[&str]| Config {
            host: "b".into(),
            port: 1883,
            client_id: "c".into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            username: None,
            password: None,
            keep_alive_s: 30,
            session_expiry_s: 60,
            receive_maximum: 10,
            max_message_bytes: 1 << 20,
            max_poll_ms: 500,
        };
        for ok in [&["a/+/c"][..], &["#"], &["a/#", "b"]] {
            assert!(check(&cfg(ok)).is_ok(), "{ok:?}");
        }
        for bad in [&[][..], &[""], &["a/#/c"], &["a+/b"], &["a/b#"]] {
            assert!(check(&cfg(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_message_sent_again_differs_from_another_with_its_packet_id() {
        assert_ne!(hash(b"a", b"1"), hash(b"a", b"2"));
        assert_ne!(hash(b"a/", b"b"), hash(b"a", b"/b"));
    }
}
