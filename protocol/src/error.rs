use std::io;

/// Why a frame could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("bad magic {0:02x?}: the peer does not speak the sluice protocol")]
    BadMagic([u8; 3]),
    #[error("unsupported protocol version {0} (this build speaks version {1})")]
    UnsupportedVersion(u8, u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("truncated {what}: needed {needed} more bytes")]
    Truncated { what: &'static str, needed: usize },
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: &'static str },
    #[error("{0} trailing bytes after the frame body")]
    TrailingBytes(usize),
    #[error("invalid field {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("invalid Arrow IPC payload: {0}")]
    Ipc(#[from] arrow_schema::ArrowError),
    #[error("expected a {expected} frame, got {got:?}")]
    UnexpectedFrame {
        expected: &'static str,
        got: crate::FrameKind,
    },
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
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
