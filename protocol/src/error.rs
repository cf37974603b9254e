use std::io;

/// Why a frame could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A header does not start with [`crate::MAGIC`]; carries the three bytes found.
    #[error("bad magic {0:02x?}: the peer does not speak the sluice protocol")]
    BadMagic([u8; 3]),
    /// A header names a version other than [`crate::VERSION`]: (the peer's, ours).
    #[error("unsupported protocol version {0} (this build speaks version {1})")]
    UnsupportedVersion(u8, u8),
    /// A header's kind byte is none of [`crate::FrameKind`]'s.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A header declares a body over the reader's limit; refused before any of it is read.
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Body length the header declares, in bytes.
        len: usize,
        /// The reader's limit, in bytes.
        max: usize,
    },
    /// The input ended inside a header, a body or one of its fields.
    #[error("truncated {what}: needed {needed} more bytes")]
    Truncated {
        /// The part being read (`"frame header"`, `"ack seq"`, ...).
        what: &'static str,
        /// Bytes missing to complete it.
        needed: usize,
    },
    /// A string field or text header holds bytes that are not UTF-8.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field or header being read.
        what: &'static str,
    },
    /// A body holds this many bytes after its last field.
    #[error("{0} trailing bytes after the frame body")]
    TrailingBytes(usize),
    /// A field decoded but its value is not allowed (a name outside the safe alphabet, a
    /// zero `seq`, an unknown ack status, a missing Kafka header, ...).
    #[error("invalid field {field}: {reason}")]
    InvalidField {
        /// The field or header refused.
        field: &'static str,
        /// Why, for the operator.
        reason: String,
    },
    /// A batch's Arrow IPC payload does not decode, or breaks the limits put on it.
    #[error("invalid Arrow IPC payload: {0}")]
    Ipc(#[from] arrow_schema::ArrowError),
    /// A well-formed frame arrived where the conversation allows another kind (a `Batch`
    /// before `Welcome`, say).
    #[error("expected a {expected} frame, got {got:?}")]
    UnexpectedFrame {
        /// The kind or kinds the reader was waiting for.
        expected: &'static str,
        /// The kind that came.
        got: crate::FrameKind,
    },
    /// Reading or writing the underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// A frame's body did not arrive whole within this time after its header (see
    /// [`crate::read_frame_within`]).
    #[error("a frame took longer than {0:?} to arrive")]
    FrameTimeout(std::time::Duration),
}

impl ProtocolError {
    /// A short, stable label for metrics (`reason="bad_magic"`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadMagic(_) => "bad_magic",
            Self::UnsupportedVersion(..) => "unsupported_version",
            Self::UnknownKind(_) => "unknown_kind",
            Self::FrameTooLarge { .. } => "frame_too_large",
            Self::Truncated { .. } => "truncated",
            Self::InvalidUtf8 { .. } => "invalid_utf8",
            Self::TrailingBytes(_) => "trailing_bytes",
            Self::InvalidField { .. } => "invalid_field",
            Self::Ipc(_) => "invalid_ipc",
            Self::FrameTimeout(_) => "frame_timeout",
            Self::UnexpectedFrame { .. } => "unexpected_frame",
            Self::Io(_) => "io",
        }
    }
}
