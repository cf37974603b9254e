//! The Sluice wire protocol: the only contract the agent and the processor share.
//!
//! A connection carries *frames*. Each frame is a fixed header (magic, version, kind, body
//! length) followed by a body whose layout depends on the kind:
//!
//! * [`Hello`] opens a lane for one agent stream and [`Welcome`] answers it with the
//!   highest sequence number already committed for that agent and stream;
//! * [`BatchFrame`] carries an [`Envelope`] plus one Arrow IPC encoded `RecordBatch`;
//! * [`Ack`] reports, in order, what became of each batch: committed, a duplicate of
//!   something already committed, or rejected with a reason.
//!
//! The crate has no async runtime of its own; [`read_frame`] and [`write_frame`] work on any
//! tokio `AsyncRead`/`AsyncWrite` (a QUIC stream, a TCP socket, a file).

mod codec;
mod envelope;
mod error;
mod frame;
#[cfg(any(test, feature = "hostile"))]
pub mod hostile;
mod ipc;
pub mod kafka;

pub use envelope::validate_name;
pub use envelope::{Envelope, MAX_CHECKPOINT_BYTES};
pub use error::ProtocolError;
pub use frame::{
    Ack, AckStatus, BatchFrame, Frame, FrameKind, HEADER_LEN, Hello, MAGIC, Refused, VERSION,
    Welcome, parse_header, read_frame, read_frame_within, write_frame,
};
pub use ipc::{
    MAX_FIELDS, check_stream, decode_batch, decoder_panics, encode_batch, schema_fingerprint,
};

/// The zone every Sluice timestamp carries, spelled as an offset: Iceberg's `timestamptz`
/// maps to it, and unlike `"UTC"` it needs no time-zone database, which a lean agent build
/// (arrow without `chrono-tz`) does not have.
pub const UTC: &str = "+00:00";

/// ALPN protocol id negotiated on QUIC connections between agent and processor.
pub const ALPN: &[u8] = b"sluice/1";

/// Default upper bound on a frame body; larger frames are refused before being read.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
