//! Frames over QUIC streams: [`FrameReader`] turns a `RecvStream` into frames through the
//! bounded [`FrameDecoder`]; [`FrameWriter`] encodes frames into one reusable buffer and
//! writes it out. Neither ever holds more than one frame (reader) or one batch (writer).

use kvroute_core::wire::{self, DecoderConfig, Frame, FrameDecoder, Goodbye, GoodbyeCode, WireError};

/// Largest chunk taken from quinn at once.
const MAX_CHUNK: usize = 256 << 10;

/// Why no frame could be read.
#[derive(Debug)]
pub(crate) enum ReadFault {
    /// The bytes do not decode (or the stream ended inside a frame).
    Wire(WireError),
    /// The stream or the connection failed.
    Stream(quinn::ReadError),
}

/// Reads frames from one stream. Cancel-safe between frames: the only await is quinn's
/// cancel-safe `read_chunk`, and undecoded bytes stay in `pending`.
pub(crate) struct FrameReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    pending: Option<quinn::Chunk>,
    pos: usize,
}

impl FrameReader {
    pub(crate) fn new(recv: quinn::RecvStream, max_frame_len: u32) -> Self {
        let decoder = FrameDecoder::with_config(DecoderConfig { max_frame_len, require_checksum: false });
        FrameReader { recv, decoder, pending: None, pos: 0 }
    }

    /// The next frame, or `None` when the peer finished the stream on a frame boundary.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, ReadFault> {
        loop {
            if let Some(chunk) = &self.pending {
                let bytes: &[u8] = &chunk.bytes;
                let mut input = bytes.get(self.pos..).unwrap_or_default();
                let before = input.len();
                let decoded = self.decoder.decode(&mut input).map_err(ReadFault::Wire)?;
                self.pos += before - input.len();
                if input.is_empty() {
                    self.pending = None;
                    self.pos = 0;
                }
                if let Some(frame) = decoded {
                    return Ok(Some(frame));
                }
                continue;
            }
            match self.recv.read_chunk(MAX_CHUNK, true).await.map_err(ReadFault::Stream)? {
                Some(chunk) => {
                    self.pending = Some(chunk);
                    self.pos = 0;
                }
                None => {
                    self.decoder.finish().map_err(ReadFault::Wire)?;
                    return Ok(None);
                }
            }
        }
    }

    /// Tells the peer to stop sending (`STOP_SENDING` with `code`).
    pub(crate) fn stop(&mut self, code: GoodbyeCode) {
        // Already closed: nothing left to stop.
        let _ = self.recv.stop(quinn::VarInt::from_u32(u32::from(code.0)));
    }
}

/// Encodes frames into a buffer and writes them to one stream.
pub(crate) struct FrameWriter {
    pub(crate) send: quinn::SendStream,
    buf: Vec<u8>,
}

impl FrameWriter {
    pub(crate) fn new(send: quinn::SendStream) -> Self {
        FrameWriter { send, buf: Vec::with_capacity(16 << 10) }
    }

    /// Appends a frame to the buffer. A frame that cannot be encoded (a bug on this side,
    /// never peer data) is an error.
    pub(crate) fn push(&mut self, frame: &Frame) -> Result<(), wire::EncodeError> {
        wire::encode(frame, &mut self.buf).map(|_| ())
    }

    /// Bytes buffered and not written yet.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Writes out the buffer.
    pub(crate) async fn flush(&mut self) -> Result<(), quinn::WriteError> {
        if !self.buf.is_empty() {
            let result = self.send.write_all(&self.buf).await;
            self.buf.clear();
            if self.buf.capacity() > (4 << 20) {
                self.buf = Vec::with_capacity(16 << 10);
            }
            result?;
        }
        Ok(())
    }

    /// Buffers `frame` and writes out the buffer.
    pub(crate) async fn send(&mut self, frame: &Frame) -> Result<(), WriterFault> {
        self.push(frame).map_err(WriterFault::Encode)?;
        self.flush().await.map_err(WriterFault::Write)
    }

    /// Best effort: a `Goodbye` with `code`, then finishes the stream.
    pub(crate) async fn goodbye(&mut self, code: GoodbyeCode, message: &str) {
        let frame = Frame::Goodbye(Goodbye { code, message: message.chars().take(200).collect() });
        if self.send(&frame).await.is_ok() {
            let _ = self.send.finish();
        }
    }

    /// Abandons the stream (`RESET_STREAM` with `code`).
    pub(crate) fn reset(&mut self, code: GoodbyeCode) {
        let _ = self.send.reset(quinn::VarInt::from_u32(u32::from(code.0)));
    }
}

/// Why a frame could not be written.
#[derive(Debug)]
pub(crate) enum WriterFault {
    Encode(wire::EncodeError),
    Write(quinn::WriteError),
}

impl std::fmt::Display for WriterFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriterFault::Encode(error) => write!(f, "cannot encode frame: {error}"),
            WriterFault::Write(error) => write!(f, "write failed: {error}"),
        }
    }
}
