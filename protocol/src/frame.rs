use bytes::{BufMut, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{Reader, put_opt_long_str, put_str};
use crate::envelope::validate_name;
use crate::{Envelope, ProtocolError};

/// The first three bytes of every frame.
pub const MAGIC: [u8; 3] = *b"SLC";
/// Protocol version carried in every frame header.
pub const VERSION: u8 = 1;
/// Header size: magic (3) + version (1) + kind (1) + body length (4).
pub const HEADER_LEN: usize = 9;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// [`Hello`], agent to processor.
    Hello = 1,
    /// [`Welcome`], processor to agent.
    Welcome = 2,
    /// [`BatchFrame`], agent to processor.
    Batch = 3,
    /// [`Ack`], processor to agent.
    Ack = 4,
    /// [`Refused`], processor to agent.
    Refused = 5,
}

impl FrameKind {
    fn from_u8(b: u8) -> Result<Self, ProtocolError> {
        Ok(match b {
            1 => Self::Hello,
            2 => Self::Welcome,
            3 => Self::Batch,
            4 => Self::Ack,
            5 => Self::Refused,
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }
}

/// First frame on a lane: which agent and which stream the lane carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Agent identity, as in [`Envelope::agent`].
    pub agent: String,
    /// The one stream this lane carries, as in [`Envelope::stream`].
    pub stream: String,
}

/// The processor's answer to [`Hello`]: the highest sequence already committed to the lake
/// for this agent and stream (0 when none), so a restarted agent knows where to resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The stream of the [`Hello`] answered.
    pub stream: String,
    /// Highest `seq` the lake holds for this agent and stream; 0 when none.
    pub committed_seq: u64,
    /// The checkpoint committed with that batch, if the stream's source checkpoints.
    pub checkpoint: Option<String>,
}

/// The processor's answer to a [`Hello`] it will not serve (the agent may not write the
/// stream); the lane ends after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The stream of the [`Hello`] refused.
    pub stream: String,
    /// Why, for the agent's operator.
    pub reason: String,
}

/// One batch: envelope plus Arrow IPC bytes (decoded by the receiver, see [`crate::decode_batch`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchFrame {
    /// Who sent the batch and where it goes; validated on decode.
    pub envelope: Envelope,
    /// One Arrow IPC stream holding one `RecordBatch`, undecoded.
    pub ipc: Bytes,
}

/// What became of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AckStatus {
    /// Landed in a committed snapshot.
    Committed = 0,
    /// Already committed earlier (a redelivery); nothing was written.
    Duplicate = 1,
    /// Refused for the reason in the message; resending it will not help.
    Rejected = 2,
    /// It did not fit its table and is kept in the stream's quarantine table, for the
    /// reason in the message. Acknowledged: the processor holds it, nothing is lost.
    Quarantined = 3,
}

/// The processor's verdict on one batch, sent only once the verdict is final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The stream of the batch.
    pub stream: String,
    /// The batch's [`Envelope::seq`].
    pub seq: u64,
    /// What became of it.
    pub status: AckStatus,
    /// The reason of a rejection or quarantine; empty otherwise.
    pub message: String,
}

/// Any frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Opens a lane.
    Hello(Hello),
    /// Accepts a lane.
    Welcome(Welcome),
    /// Carries a batch.
    Batch(BatchFrame),
    /// Settles a batch.
    Ack(Ack),
    /// Declines a lane.
    Refused(Refused),
}

impl Frame {
    /// The kind its header carries.
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Hello(_) => FrameKind::Hello,
            Frame::Welcome(_) => FrameKind::Welcome,
            Frame::Batch(_) => FrameKind::Batch,
            Frame::Ack(_) => FrameKind::Ack,
            Frame::Refused(_) => FrameKind::Refused,
        }
    }

    /// Encode the body, except for a batch's IPC payload, which is written separately to
    /// avoid copying it.
    fn encode_head(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64);
        match self {
            Frame::Hello(h) => {
                put_str(&mut buf, &h.agent);
                put_str(&mut buf, &h.stream);
            }
            Frame::Welcome(w) => {
                put_str(&mut buf, &w.stream);
                buf.put_u64(w.committed_seq);
                put_opt_long_str(&mut buf, w.checkpoint.as_deref());
            }
            Frame::Batch(b) => b.envelope.encode(&mut buf),
            Frame::Ack(a) => {
                put_str(&mut buf, &a.stream);
                buf.put_u64(a.seq);
                buf.put_u8(a.status as u8);
                put_str(&mut buf, &a.message);
            }
            Frame::Refused(f) => {
                put_str(&mut buf, &f.stream);
                put_str(&mut buf, &f.reason);
            }
        }
        buf
    }

    /// Encode the whole frame (header and body) into one buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let head = self.encode_head();
        let payload: &[u8] = match self {
            Frame::Batch(b) => &b.ipc,
            _ => &[],
        };
        let mut out = Vec::with_capacity(HEADER_LEN + head.len() + payload.len());
        out.extend_from_slice(&header(self.kind(), head.len() + payload.len()));
        out.extend_from_slice(&head);
        out.extend_from_slice(payload);
        out
    }

    /// Decode a frame body of the given kind.
    pub fn decode(kind: FrameKind, body: Bytes) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(&body);
        let frame = match kind {
            FrameKind::Hello => {
                let h = Hello {
                    agent: r.str("hello agent")?,
                    stream: r.str("hello stream")?,
                };
                validate_name("agent", &h.agent)?;
                validate_name("stream", &h.stream)?;
                r.finish()?;
                Frame::Hello(h)
            }
            FrameKind::Welcome => {
                let w = Welcome {
                    stream: r.str("welcome stream")?,
                    committed_seq: r.u64("welcome committed_seq")?,
                    checkpoint: r.opt_long_str("welcome checkpoint")?,
                };
                r.finish()?;
                Frame::Welcome(w)
            }
            FrameKind::Batch => {
                let envelope = Envelope::decode(&mut r)?;
                let consumed = body.len() - r.remaining();
                Frame::Batch(BatchFrame {
                    envelope,
                    ipc: body.slice(consumed..),
                })
            }
            FrameKind::Ack => {
                let stream = r.str("ack stream")?;
                let seq = r.u64("ack seq")?;
                let status = match r.u8("ack status")? {
                    0 => AckStatus::Committed,
                    1 => AckStatus::Duplicate,
                    2 => AckStatus::Rejected,
                    3 => AckStatus::Quarantined,
                    other => {
                        return Err(ProtocolError::InvalidField {
                            field: "ack status",
                            reason: format!("unknown status {other}"),
                        });
                    }
                };
                let message = r.str("ack message")?;
                r.finish()?;
                Frame::Ack(Ack {
                    stream,
                    seq,
                    status,
                    message,
                })
            }
            FrameKind::Refused => {
                let f = Refused {
                    stream: r.str("refused stream")?,
                    reason: r.str("refused reason")?,
                };
                r.finish()?;
                Frame::Refused(f)
            }
        };
        Ok(frame)
    }
}

fn header(kind: FrameKind, body_len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..3].copy_from_slice(&MAGIC);
    h[3] = VERSION;
    h[4] = kind as u8;
    // Bodies are bounded by the receiver's max frame size, far below 4 GiB.
    h[5..9].copy_from_slice(&(body_len.min(u32::MAX as usize) as u32).to_be_bytes());
    h
}

/// Parse a frame header into its kind and body length, refusing bodies over `max_body`.
pub fn parse_header(
    h: &[u8; HEADER_LEN],
    max_body: usize,
) -> Result<(FrameKind, usize), ProtocolError> {
    if h[..3] != MAGIC {
        return Err(ProtocolError::BadMagic([h[0], h[1], h[2]]));
    }
    if h[3] != VERSION {
        return Err(ProtocolError::UnsupportedVersion(h[3], VERSION));
    }
    let kind = FrameKind::from_u8(h[4])?;
    let len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) as usize;
    if len > max_body {
        return Err(ProtocolError::FrameTooLarge { len, max: max_body });
    }
    Ok((kind, len))
}

/// Read one frame. Returns `Ok(None)` on a clean end of stream at a frame boundary.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_body: usize,
) -> Result<Option<Frame>, ProtocolError> {
    read_frame_within(reader, max_body, None).await
}

/// Bytes of a frame body reserved before any of it arrived: a header may declare up to
/// the limit, but memory is only given to bytes a peer actually sends.
const FIRST_BODY_CHUNK: usize = 1 << 20;

/// [`read_frame`], where a frame whose header has arrived must be whole within
/// `body_timeout`: a peer cannot hold a lane and its buffer by trickling a frame.
pub async fn read_frame_within<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_body: usize,
    body_timeout: Option<std::time::Duration>,
) -> Result<Option<Frame>, ProtocolError> {
    let mut h = [0u8; HEADER_LEN];
    // Distinguish a clean close (zero bytes) from a header cut in the middle.
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = reader.read(&mut h[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(ProtocolError::Truncated {
                what: "frame header",
                needed: HEADER_LEN - filled,
            });
        }
        filled += n;
    }
    let (kind, len) = parse_header(&h, max_body)?;
    let body = read_body(reader, len);
    let body = match body_timeout {
        None => body.await?,
        Some(t) => tokio::time::timeout(t, body)
            .await
            .map_err(|_| ProtocolError::FrameTimeout(t))??,
    };
    Frame::decode(kind, Bytes::from(body)).map(Some)
}

async fn read_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
) -> Result<Vec<u8>, ProtocolError> {
    let mut body = Vec::with_capacity(len.min(FIRST_BODY_CHUNK));
    let mut rest = reader.take(len as u64);
    loop {
        if body.len() == body.capacity() && body.len() < len {
            // The peer sent the first chunk: now reserve the rest at once.
            body.reserve_exact(len - body.len());
        }
        if rest.read_buf(&mut body).await? == 0 {
            break;
        }
    }
    if body.len() < len {
        return Err(ProtocolError::Truncated {
            what: "frame body",
            needed: len - body.len(),
        });
    }
    Ok(body)
}

/// Write one frame. Does not flush.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame,
) -> Result<(), ProtocolError> {
    match frame {
        // A batch's IPC payload is written as is, not copied behind its header.
        Frame::Batch(b) => {
            let head = frame.encode_head();
            let mut first = Vec::with_capacity(HEADER_LEN + head.len());
            first.extend_from_slice(&header(frame.kind(), head.len() + b.ipc.len()));
            first.extend_from_slice(&head);
            writer.write_all(&first).await?;
            writer.write_all(&b.ipc).await?;
        }
        _ => writer.write_all(&frame.to_bytes()).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                agent: "edge-01".into(),
                stream: "cpu".into(),
            }),
            Frame::Welcome(Welcome {
                stream: "cpu".into(),
                committed_seq: 42,
                checkpoint: Some("offset=1024".into()),
            }),
            Frame::Batch(BatchFrame {
                envelope: Envelope {
                    agent: "edge-01".into(),
                    stream: "cpu".into(),
                    seq: 7,
                    schema_fingerprint: 0xdead_beef,
                    created_at_us: 1_700_000_000_000_000,
                    rows: 3,
                    checkpoint: None,
                },
                ipc: Bytes::from_static(b"ipc-bytes"),
            }),
            Frame::Ack(Ack {
                stream: "cpu".into(),
                seq: 7,
                status: AckStatus::Rejected,
                message: "schema mismatch: ünïcode".into(),
            }),
            Frame::Refused(Refused {
                stream: "cpu".into(),
                reason: "agent edge-01 may not write stream cpu".into(),
            }),
        ]
    }

    #[tokio::test(flavor = "current_thread")]
    async fn round_trip_through_a_stream() {
        let mut wire = Vec::new();
        for f in frames() {
            write_frame(&mut wire, &f).await.expect("write");
        }
        // `to_bytes` and `write_frame` agree byte for byte.
        let concat: Vec<u8> = frames().iter().flat_map(|f| f.to_bytes()).collect();
        assert_eq!(wire, concat);

        let mut r = wire.as_slice();
        for want in frames() {
            let got = read_frame(&mut r, 1024)
                .await
                .expect("read")
                .expect("frame");
            assert_eq!(got, want);
        }
        assert!(read_frame(&mut r, 1024).await.expect("eof").is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn rejects_bad_input() {
        let good = frames()[0].to_bytes();

        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        let err = read_frame(&mut bad_magic.as_slice(), 1024)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "bad_magic");

        let mut bad_version = good.clone();
        bad_version[3] = 99;
        let err = read_frame(&mut bad_version.as_slice(), 1024)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "unsupported_version");

        let mut bad_kind = good.clone();
        bad_kind[4] = 200;
        let err = read_frame(&mut bad_kind.as_slice(), 1024)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "unknown_kind");

        let err = read_frame(&mut good.as_slice(), 4).await.unwrap_err();
        assert_eq!(err.reason(), "frame_too_large");

        let err = read_frame(&mut &good[..good.len() - 1], 1024)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "truncated");

        let err = read_frame(&mut &good[..5], 1024).await.unwrap_err();
        assert_eq!(err.reason(), "truncated");

        // A Hello with a table-unsafe stream name.
        let evil = Frame::Hello(Hello {
            agent: "a".into(),
            stream: "../../etc".into(),
        })
        .to_bytes();
        let err = read_frame(&mut evil.as_slice(), 1024).await.unwrap_err();
        assert_eq!(err.reason(), "invalid_field");
    }

    #[test]
    fn sequence_zero_is_invalid() {
        let mut env = Envelope {
            agent: "a".into(),
            stream: "s".into(),
            seq: 0,
            schema_fingerprint: 1,
            created_at_us: 0,
            rows: 0,
            checkpoint: Some("c".into()),
        };
        let f = Frame::Batch(BatchFrame {
            envelope: env.clone(),
            ipc: Bytes::new(),
        });
        let bytes = f.to_bytes();
        let err = Frame::decode(
            FrameKind::Batch,
            Bytes::copy_from_slice(&bytes[HEADER_LEN..]),
        )
        .unwrap_err();
        assert_eq!(err.reason(), "invalid_field");
        env.seq = 1;
        assert!(
            Frame::decode(
                FrameKind::Batch,
                Bytes::from(
                    Frame::Batch(BatchFrame {
                        envelope: env,
                        ipc: Bytes::new()
                    })
                    .to_bytes()[HEADER_LEN..]
                        .to_vec()
                )
            )
            .is_ok()
        );
    }
}
