//! MQTT 5 packets, as far as a subscriber needs them: CONNECT, SUBSCRIBE, PUBACK, PINGREQ
//! and DISCONNECT out; CONNACK, SUBACK, PUBLISH, PINGRESP and DISCONNECT in. Incoming
//! packets are framed over one buffer and read where they arrived.

use std::ops::Range;

/// Packet types (the high nibble of the first byte).
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const SUBACK: u8 = 9;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// What CONNECT asks for.
pub struct Connect<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub keep_alive_s: u16,
    pub session_expiry_s: u32,
    pub receive_maximum: u16,
    pub maximum_packet_size: u32,
}

/// CONNECT, without Clean Start: the broker keeps the session (subscriptions and the
/// messages not acknowledged yet) while the agent is away, for `session_expiry_s`.
pub fn connect(c: &Connect) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, "MQTT");
    body.push(5);
    let mut flags = 0u8;
    if c.username.is_some() {
        flags |= 0x80;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&c.keep_alive_s.to_be_bytes());
    let mut props = vec![0x11];
    props.extend_from_slice(&c.session_expiry_s.to_be_bytes());
    props.push(0x21);
    props.extend_from_slice(&c.receive_maximum.to_be_bytes());
    props.push(0x27);
    props.extend_from_slice(&c.maximum_packet_size.to_be_bytes());
    put_varint(&mut body, props.len());
    body.extend_from_slice(&props);
    put_str(&mut body, c.client_id);
    if let Some(u) = c.username {
        put_str(&mut body, u);
    }
    if let Some(p) = c.password {
        put_str(&mut body, p);
    }
    packet(0x10, &body)
}

/// SUBSCRIBE at QoS 1 to each filter. Retained messages come only with a new subscription
/// (Retain Handling 1), so a reconnect does not deliver them again.
pub fn subscribe(id: u16, filters: &[String]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.push(0);
    for f in filters {
        put_str(&mut body, f);
        body.push(0x01 | (1 << 4));
    }
    packet(0x82, &body)
}

/// PUBACK (success) for one message.
pub fn puback(id: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x40, 2]);
    out.extend_from_slice(&id.to_be_bytes());
}

pub const PINGREQ: [u8; 2] = [0xC0, 0];
/// DISCONNECT, normal: the session stays (no will, expiry as connected).
pub const DISCONNECT_NORMAL: [u8; 2] = [0xE0, 0];

/// One framed packet: its first byte and its body's range in the buffer.
pub struct Frame {
    pub first: u8,
    pub body: Range<usize>,
}

impl Frame {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }
}

/// The packet at `buf[at..]` if it is whole: the frame and where the next starts. A
/// packet longer than `max` is an error, whatever the broker sends.
pub fn frame(buf: &[u8], at: usize, max: usize) -> Result<Option<(Frame, usize)>, String> {
    let Some(&first) = buf.get(at) else {
        return Ok(None);
    };
    let Some((len, used)) = varint(&buf[at + 1..])? else {
        return Ok(None);
    };
    if len > max {
        return Err(format!(
            "the broker sent a packet of {len} bytes, over the {max} it was told (max_message_bytes)"
        ));
    }
    let start = at + 1 + used;
    if buf.len() < start + len {
        return Ok(None);
    }
    Ok(Some((
        Frame {
            first,
            body: start..start + len,
        },
        start + len,
    )))
}

/// What CONNACK said.
#[derive(Debug, PartialEq)]
pub struct ConnAck {
    pub session_present: bool,
    pub reason: u8,
    /// The broker's keep-alive, which replaces the one asked for.
    pub server_keep_alive: Option<u16>,
    pub reason_string: Option<String>,
}

pub fn connack(b: &[u8]) -> Result<ConnAck, String> {
    let flags = *b.first().ok_or("a short CONNACK")?;
    let reason = *b.get(1).ok_or("a short CONNACK")?;
    let mut ack = ConnAck {
        session_present: flags & 1 == 1,
        reason,
        server_keep_alive: None,
        reason_string: None,
    };
    if b.len() > 2 {
        let (props, _) = properties(b, 2)?;
        for_each_property(props, |id, value| {
            match (id, value) {
                (0x13, Value::U16(v)) => ack.server_keep_alive = Some(v),
                (0x1F, Value::Str(s)) => ack.reason_string = Some(s.into()),
                _ => {}
            }
            Ok(())
        })?;
    }
    Ok(ack)
}

/// SUBACK: the packet id and one reason code per filter (0 to 2: granted QoS).
pub fn suback(b: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let id = u16_at(b, 0)?;
    let (_, rest) = properties(b, 2)?;
    Ok((id, b[rest..].to_vec()))
}

/// The reason code (and reason string) of a DISCONNECT from the broker.
pub fn disconnect(b: &[u8]) -> (u8, Option<String>) {
    let reason = b.first().copied().unwrap_or(0);
    let mut text = None;
    if let Ok((props, _)) = properties(b, 1) {
        let _ = for_each_property(props, |id, value| {
            if let (0x1F, Value::Str(s)) = (id, value) {
                text = Some(s.to_string());
            }
            Ok(())
        });
    }
    (reason, text)
}

/// A PUBLISH, as ranges of the buffer it arrived in.
#[derive(Debug, PartialEq)]
pub struct Publish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: Range<usize>,
    pub id: Option<u16>,
    pub payload: Range<usize>,
}

pub fn publish(buf: &[u8], f: &Frame) -> Result<Publish, String> {
    let qos = (f.first >> 1) & 3;
    if qos == 3 {
        return Err("a PUBLISH with QoS 3".into());
    }
    let b = &buf[f.body.clone()];
    let tlen = u16_at(b, 0)? as usize;
    let mut at = 2 + tlen;
    if b.len() < at {
        return Err("a PUBLISH's topic runs past it".into());
    }
    if std::str::from_utf8(&b[2..at]).is_err() {
        return Err("a PUBLISH's topic is not UTF-8".into());
    }
    let topic = f.body.start + 2..f.body.start + at;
    let id = if qos > 0 {
        let id = u16_at(b, at)?;
        at += 2;
        Some(id)
    } else {
        None
    };
    let (props, rest) = properties(b, at)?;
    // A topic alias would need state the client never agreed to (Topic Alias Maximum 0).
    for_each_property(props, |pid, _| {
        if pid == 0x23 {
            Err("the broker sent a topic alias, which this client does not allow".into())
        } else {
            Ok(())
        }
    })?;
    if topic.is_empty() {
        return Err("a PUBLISH with an empty topic".into());
    }
    Ok(Publish {
        dup: f.first & 0x08 != 0,
        qos,
        retain: f.first & 1 != 0,
        topic,
        id,
        payload: f.body.start + rest..f.body.end,
    })
}

/// A property's value.
enum Value<'a> {
    Byte,
    U16(u16),
    U32,
    Varint,
    Str(&'a str),
    Bytes,
    Pair,
}

/// The property block at `b[at..]`: its bytes and where what follows starts.
fn properties(b: &[u8], at: usize) -> Result<(&[u8], usize), String> {
    let (len, used) = varint(b.get(at..).ok_or("properties past the packet")?)?
        .ok_or("a property length runs past the packet")?;
    let start = at + used;
    let end = start + len;
    let props = b.get(start..end).ok_or("properties run past the packet")?;
    Ok((props, end))
}

fn for_each_property<'a>(
    mut p: &'a [u8],
    mut each: impl FnMut(u8, Value<'a>) -> Result<(), String>,
) -> Result<(), String> {
    while let Some((&id, rest)) = p.split_first() {
        p = rest;
        let (value, used) = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => (Value::Byte, 1),
            0x13 | 0x21 | 0x22 | 0x23 => (Value::U16(u16_at(p, 0)?), 2),
            0x02 | 0x11 | 0x18 | 0x27 => (Value::U32, 4),
            0x0B => {
                let (_, used) = varint(p)?.ok_or("a short property")?;
                (Value::Varint, used)
            }
            0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => {
                let n = 2 + u16_at(p, 0)? as usize;
                let s = p.get(2..n).ok_or("a short property")?;
                (
                    Value::Str(std::str::from_utf8(s).map_err(|_| "a property is not UTF-8")?),
                    n,
                )
            }
            0x09 | 0x16 => (Value::Bytes, 2 + u16_at(p, 0)? as usize),
            0x26 => {
                let k = 2 + u16_at(p, 0)? as usize;
                (Value::Pair, k + 2 + u16_at(p, k)? as usize)
            }
            other => return Err(format!("unknown MQTT property 0x{other:02x}")),
        };
        if p.len() < used {
            return Err("a short property".into());
        }
        each(id, value)?;
        p = &p[used..];
    }
    Ok(())
}

/// A variable byte integer: its value and length, `None` if it is not all here yet.
fn varint(b: &[u8]) -> Result<Option<(usize, usize)>, String> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = b.get(i) else {
            return Ok(None);
        };
        value |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Err("a malformed length (over four bytes)".into())
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or_else(|| "a packet ends early".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_at_every_width_and_a_fifth_byte_is_refused() {
        for n in [
            0,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, n);
            assert_eq!(varint(&b).unwrap(), Some((n, b.len())));
            assert_eq!(varint(&b[..b.len() - 1]).unwrap(), None);
        }
        assert!(varint(&[0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }

    #[test]
    fn a_publish_is_read_with_its_flags_id_and_payload_past_its_properties() {
        // DUP, QoS 1, retain; topic "a/b", id 7, a content-type and a user property.
        let mut body = Vec::new();
        put_str(&mut body, "a/b");
        body.extend_from_slice(&7u16.to_be_bytes());
        let mut props = vec![0x03];
        put_str(&mut props, "json");
        props.push(0x26);
        put_str(&mut props, "k");
        put_str(&mut props, "v");
        put_varint(&mut body, props.len());
        body.extend_from_slice(&props);
        body.extend_from_slice(b"{\"n\":1}");
        let buf = packet(0x3B, &body);
        let (f, next) = frame(&buf, 0, 1 << 20).unwrap().unwrap();
        assert_eq!(next, buf.len());
        assert_eq!(f.kind(), PUBLISH);
        let p = publish(&buf, &f).unwrap();
        assert!(p.dup && p.retain);
        assert_eq!((p.qos, p.id), (1, Some(7)));
        assert_eq!(&buf[p.topic], b"a/b");
        assert_eq!(&buf[p.payload], b"{\"n\":1}");
        // Half a packet is not a packet yet; one over the limit is refused.
        assert!(frame(&buf[..buf.len() - 1], 0, 1 << 20).unwrap().is_none());
        assert!(frame(&buf, 0, 8).is_err());
    }

    #[test]
    fn hostile_publishes_are_errors_not_panics() {
        let bad: [&[u8]; 5] = [
            &[0x32, 1, 0],                         // topic length cut
            &[0x32, 4, 0, 9, b'a', b'b'],          // topic runs past
            &[0x32, 5, 0, 1, b'a', 0, 1],          // id, then no properties
            &[0x30, 5, 0, 1, b'a', 2, 0x23],       // alias, cut
            &[0x30, 7, 0, 1, b'a', 3, 0x23, 0, 1], // a topic alias
        ];
        for buf in bad {
            if let Ok(Some((f, _))) = frame(buf, 0, 1 << 20) {
                assert!(publish(buf, &f).is_err(), "{buf:?}");
            }
        }
        assert!(
            publish(
                &[0x36, 0],
                &Frame {
                    first: 0x36,
                    body: 2..2
                }
            )
            .is_err()
        );
    }

    #[test]
    fn connect_asks_for_a_kept_session_and_connack_reads_the_brokers_keep_alive() {
        let c = connect(&Connect {
            client_id: "edge",
            username: Some("u"),
            password: Some("p"),
            keep_alive_s: 30,
            session_expiry_s: 3600,
            receive_maximum: 100,
            maximum_packet_size: 1 << 20,
        });
        assert_eq!(c[0], 0x10);
        let (f, _) = frame(&c, 0, 1 << 20).unwrap().unwrap();
        let b = &c[f.body];
        assert_eq!(&b[..7], b"\0\x04MQTT\x05");
        assert_eq!(b[7], 0xC0, "username and password, no Clean Start");
        let ack = connack(&[1, 0, 3, 0x13, 0, 10]).unwrap();
        assert!(ack.session_present);
        assert_eq!(ack.server_keep_alive, Some(10));
        assert_eq!(suback(&[0, 5, 0, 1, 0x87]).unwrap(), (5, vec![1, 0x87]));
    }
}
