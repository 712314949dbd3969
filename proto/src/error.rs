use thiserror::Error;

/// Why bytes on the wire could not be turned into a frame.
///
/// Every variant but [`DecodeError::Malformed`] leaves the stream unframed, so a peer that
/// sees one closes the session; a malformed body with a valid length could be skipped, but
/// Tether treats it as a protocol violation too.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The length prefix announces a body larger than the configured maximum. Checked before
    /// any allocation.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Announced body length.
        len: u32,
        /// Configured maximum.
        max: u32,
    },
    /// A zero-length frame: there is no MessagePack value to read.
    #[error("empty frame")]
    EmptyFrame,
    /// The body is not a MessagePack map with a string `type` field.
    #[error("frame has no `type` field: {0}")]
    MissingType(String),
    /// The body names a known frame type but its fields do not fit it.
    #[error("malformed `{frame_type}` frame: {reason}")]
    Malformed {
        /// The frame type named in the body.
        frame_type: String,
        /// What the MessagePack decoder reported.
        reason: String,
    },
}

/// Why a frame could not be encoded.
#[derive(Debug, Error)]
pub enum EncodeError {
    /// The encoded body would exceed what a `u32` length prefix or the peer's limit allows.
    #[error("encoded frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Encoded body length.
        len: usize,
        /// Limit it was checked against.
        max: usize,
    },
    /// MessagePack serialization failed.
    #[error("msgpack encode: {0}")]
    Msgpack(#[from] rmp_serde::encode::Error),
}
