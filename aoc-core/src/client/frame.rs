//! The framing of the client API: every message is a 4-byte big-endian
//! length followed by that many bytes of protobuf (a
//! [`Request`](crate::proto::client::Request) or a
//! [`Response`](crate::proto::client::Response)).
//!
//! These helpers are public so that tools (and tests) can speak the
//! protocol directly:
//!
//! ```
//! use aoc_core::client::frame;
//! use aoc_core::proto::client::{Request, StatusRequest};
//!
//! let mut req = Request::new();
//! req.set_request_id(1);
//! req.set_status(StatusRequest::new());
//! let mut wire = Vec::new();
//! frame::write_message(&mut wire, &req).unwrap();
//! let body = frame::read_frame(&mut wire.as_slice(), 1024).unwrap();
//! let back: Request = frame::decode(&body).unwrap();
//! assert_eq!(back, req);
//! ```

use std::fmt;
use std::io::{self, Read, Write};

use protobuf::Message;

use crate::{Error, Result};

/// The length of a frame's header (a big-endian `u32`).
pub const HEADER_BYTES: usize = 4;

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection between two frames (a clean end).
    Closed,
    /// The header announces a frame larger than the limit; its body was
    /// not read, so the stream can no longer be followed.
    TooLarge {
        /// The announced length in bytes.
        size: u64,
        /// The limit in bytes.
        limit: usize,
    },
    /// The stream failed: an I/O error, a time-out (`WouldBlock` or
    /// `TimedOut`), or the end of the stream inside a frame
    /// (`UnexpectedEof`).
    Io(io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Closed => write!(f, "the connection was closed"),
            FrameError::TooLarge { size, limit } => {
                write!(
                    f,
                    "a frame of {size} bytes exceeds the limit of {limit} bytes"
                )
            }
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl FrameError {
    /// Whether this is a read time-out (no complete frame arrived in time).
    pub fn is_timeout(&self) -> bool {
        matches!(self, FrameError::Io(e)
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

/// Reads one frame's body; refuses (without reading it) a body longer than
/// `max_bytes`.
pub fn read_frame(r: &mut impl Read, max_bytes: usize) -> std::result::Result<Vec<u8>, FrameError> {
    let mut header = [0u8; HEADER_BYTES];
    let mut filled = 0;
    while filled < HEADER_BYTES {
        match r.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Err(FrameError::Closed),
            Ok(0) => {
                return Err(FrameError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection was closed inside a frame header",
                )))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let size = u32::from_be_bytes(header) as u64;
    if size > max_bytes as u64 {
        return Err(FrameError::TooLarge {
            size,
            limit: max_bytes,
        });
    }
    let mut body = vec![0u8; size as usize];
    r.read_exact(&mut body).map_err(FrameError::Io)?;
    Ok(body)
}

/// Writes one frame (header and body in one write).
pub fn write_frame(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    let size = u32::try_from(body.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a frame of {} bytes does not fit a u32 length", body.len()),
        )
    })?;
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(body);
    w.write_all(&out)?;
    w.flush()
}

/// Encodes `msg` and writes it as one frame.
pub fn write_message(w: &mut impl Write, msg: &impl Message) -> io::Result<()> {
    write_frame(w, &encode(msg))
}

/// The protobuf encoding of `msg`.
pub fn encode(msg: &impl Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.compute_size() as usize);
    // Writing a proto3 message (no required fields) to a vector cannot
    // fail; should it ever, the truncated bytes are refused by the reader.
    let _ = msg.write_to_vec(&mut out);
    out
}

/// Decodes a frame's body as `M` ([`Error::Decode`] when it is not one).
pub fn decode<M: Message>(body: &[u8]) -> Result<M> {
    M::parse_from_bytes(body).map_err(|e| Error::decode(M::descriptor_static().name(), e))
}
