//! Frame I/O over any ordered, reliable byte stream: a QUIC stream in production, an
//! in-process pipe in tests (and TCP or WebTransport later).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tether_proto::{DecodeError, Decoded, Decoder, EncodeError, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::warn;

/// How long a closing session waits for its last frames to be acknowledged.
pub const LINGER: Duration = Duration::from_secs(2);

/// The receiving half of a session's byte stream.
pub trait ByteSource: Send + 'static {
    /// Appends the next bytes to `buf`; false at the end of the stream or on an error.
    /// Must be cancel-safe: a cancelled read loses no bytes.
    fn read_into(&mut self, buf: &mut BytesMut) -> impl Future<Output = bool> + Send;
}

/// The sending half of a session's byte stream.
pub trait ByteSink: Send + 'static {
    /// Writes `data` whole; false if the stream is gone.
    fn write(&mut self, data: Bytes) -> impl Future<Output = bool> + Send;
    /// Ends the stream and resolves once the peer has everything (or it is gone). Callers
    /// bound the wait.
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
}

impl ByteSource for quinn::RecvStream {
    async fn read_into(&mut self, buf: &mut BytesMut) -> bool {
        match self.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => {
                buf.extend_from_slice(&chunk.bytes);
                true
            }
            Ok(None) | Err(_) => false,
        }
    }
}

impl ByteSink for quinn::SendStream {
    async fn write(&mut self, data: Bytes) -> bool {
        self.write_chunk(data).await.is_ok()
    }

    async fn finish(&mut self) {
        if quinn::SendStream::finish(self).is_ok() {
            let _ = self.stopped().await;
        }
    }
}

/// Any tokio byte stream half (an in-process pipe, a TCP stream) as a session stream.
#[derive(Debug)]
pub struct Stream<T>(pub T);

impl<T: AsyncRead + Unpin + Send + 'static> ByteSource for Stream<T> {
    async fn read_into(&mut self, buf: &mut BytesMut) -> bool {
        buf.reserve(8 * 1024);
        matches!(self.0.read_buf(buf).await, Ok(n) if n > 0)
    }
}

impl<T: AsyncWrite + Unpin + Send + 'static> ByteSink for Stream<T> {
    async fn write(&mut self, data: Bytes) -> bool {
        self.0.write_all(&data).await.is_ok()
    }

    async fn finish(&mut self) {
        let _ = self.0.shutdown().await;
    }
}

/// Why no frame could be read.
pub enum ReadError {
    /// The bytes are not a valid frame.
    Decode(DecodeError),
    /// The stream ended.
    Closed,
}

/// Reads frames off a byte stream.
pub struct FrameReader<R> {
    recv: R,
    buf: BytesMut,
    decoder: Decoder,
}

impl<R: ByteSource> FrameReader<R> {
    /// Frames of at most `max_frame` bytes from `recv`.
    pub fn new(recv: R, max_frame: u32) -> Self {
        FrameReader { recv, buf: BytesMut::new(), decoder: Decoder::new(max_frame) }
    }

    /// Drops the buffer's allocation when nothing is buffered (after login: an idle session
    /// should hold no read buffer).
    pub fn shrink(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Next frame. Cancel-safe: the only await point is the source's read.
    pub async fn next(&mut self) -> Result<Decoded, ReadError> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(d)) => return Ok(d),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Decode(e)),
            }
            if !self.recv.read_into(&mut self.buf).await {
                return Err(ReadError::Closed);
            }
        }
    }
}

/// What a write buffer starts with (glibc serves up to 1,032 bytes from its per-thread cache).
const FIRST_RESERVE: usize = 512;

/// Buffers frames and writes them in one go.
pub struct FrameWriter<W> {
    send: W,
    buf: BytesMut,
}

impl<W: ByteSink> FrameWriter<W> {
    /// Frames written to `send`.
    pub fn new(send: W) -> Self {
        FrameWriter { send, buf: BytesMut::new() }
    }

    /// Appends a frame.
    pub fn push(&mut self, frame: &Frame) {
        self.push_with(|buf| tether_proto::encode(frame, buf));
    }

    /// Appends a `deliver` frame from borrowed fields.
    pub fn push_deliver(&mut self, deliver: &tether_proto::DeliverRef<'_>) {
        self.push_with(|buf| tether_proto::encode_deliver(deliver, buf));
    }

    fn push_with(&mut self, encode: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>) {
        if self.buf.capacity() == 0 {
            // Room for a frame or two: an allocation this small comes from the allocator's
            // per-thread cache; a burst grows the buffer as it goes.
            self.buf.reserve(FIRST_RESERVE);
        }
        if let Err(e) = encode(&mut self.buf) {
            warn!(error = %e, "failed to encode a frame");
        }
    }

    /// Appends an already encoded frame.
    pub fn push_encoded(&mut self, frame: &[u8]) {
        if self.buf.capacity() == 0 {
            self.buf.reserve(FIRST_RESERVE.max(frame.len()));
        }
        self.buf.extend_from_slice(frame);
    }

    /// Writes what is buffered; false if the stream is gone.
    pub async fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        // Take the buffer whole (not `split`, which would keep its spare capacity alive in
        // an idle session until the next write).
        let data = std::mem::take(&mut self.buf).freeze();
        self.send.write(data).await
    }

    /// Writes what is buffered, finishes the stream and waits (bounded) until the peer has it.
    /// Boxed: it runs once per session, so its state should not enlarge every idle session.
    pub fn linger(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if self.flush().await {
                let _ = tokio::time::timeout(LINGER, self.send.finish()).await;
            }
        })
    }
}
