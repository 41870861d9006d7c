//! One connection of the client server: its non-blocking socket, its TLS
//! session when there is one, and the bytes going each way.
//!
//! The server's poll loop is edge-triggered: [`Conn::receive`] reads until
//! the socket would block, and [`Conn::flush`] writes until it would block
//! or nothing is left.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use rustls::ServerConnection;

use super::frame::HEADER_BYTES;

/// What [`Conn::receive`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Received {
    /// The socket is drained for now; the connection stays open.
    Open,
    /// The peer closed its side.
    Closed,
}

/// A complete request frame, or why there is none yet.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NextFrame {
    /// Not a whole frame yet; `started` is true once any of it arrived.
    Incomplete { started: bool },
    /// A frame's body.
    Frame(Vec<u8>),
    /// The header announces `size` bytes, over the limit: the stream can
    /// no longer be followed.
    TooLarge { size: u64 },
}

/// A connection's socket and its buffers.
pub(super) struct Conn {
    pub(super) socket: TcpStream,
    pub(super) peer: SocketAddr,
    tls: Option<Box<ServerConnection>>,
    /// Plaintext received and not yet taken as frames.
    input: Vec<u8>,
    /// Plaintext not yet written (plain TCP; with TLS the session holds
    /// it).
    output: Vec<u8>,
    /// How much of `output` is written.
    written: usize,
}

/// The most plaintext read from a socket in one go.
const READ_CHUNK_BYTES: usize = 64 * 1024;

impl Conn {
    /// A connection over `socket`, with TLS when `tls` is set (the
    /// handshake runs as bytes arrive).
    pub(super) fn new(socket: TcpStream, peer: SocketAddr, tls: Option<ServerConnection>) -> Conn {
        let tls = tls.map(|mut t| {
            // Answers are bounded by max_response_bytes already; the
            // session holds a whole one rather than refusing part of it.
            t.set_buffer_limit(None);
            Box::new(t)
        });
        Conn {
            socket,
            peer,
            tls,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
        }
    }

    /// Whether a TLS handshake is still under way.
    pub(super) fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Reads what the socket holds (decrypting it) into the input, up to
    /// about `max_input` bytes buffered; a TLS error (a bad certificate,
    /// a broken record) is an `InvalidData` error.
    pub(super) fn receive(&mut self, max_input: usize) -> io::Result<Received> {
        let mut buf = [0u8; READ_CHUNK_BYTES];
        loop {
            if self.input.len() >= max_input {
                // The rest waits until the input is taken: the caller
                // calls again after taking a frame.
                return Ok(Received::Open);
            }
            match &mut self.tls {
                None => match self.socket.read(&mut buf) {
                    Ok(0) => return Ok(Received::Closed),
                    Ok(n) => self.input.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Received::Open),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                },
                Some(tls) => {
                    let n = match tls.read_tls(&mut self.socket) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(Received::Open)
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    let state = match tls.process_new_packets() {
                        Ok(state) => state,
                        Err(e) => {
                            // Tell the peer why (an alert), if it listens.
                            let _ = tls.write_tls(&mut self.socket);
                            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                        }
                    };
                    let mut plain = state.plaintext_bytes_to_read();
                    while plain > 0 {
                        let take = plain.min(buf.len());
                        tls.reader().read_exact(&mut buf[..take])?;
                        self.input.extend_from_slice(&buf[..take]);
                        plain -= take;
                    }
                    if n == 0 || state.peer_has_closed() {
                        return Ok(Received::Closed);
                    }
                }
            }
        }
    }

    /// Takes the next request frame from the input.
    pub(super) fn next_frame(&mut self, max_frame_bytes: usize) -> NextFrame {
        if self.input.len() < HEADER_BYTES {
            return NextFrame::Incomplete {
                started: !self.input.is_empty(),
            };
        }
        let mut header = [0u8; HEADER_BYTES];
        header.copy_from_slice(&self.input[..HEADER_BYTES]);
        let size = u32::from_be_bytes(header) as usize;
        if size > max_frame_bytes {
            return NextFrame::TooLarge { size: size as u64 };
        }
        if self.input.len() < HEADER_BYTES + size {
            return NextFrame::Incomplete { started: true };
        }
        let body = self.input[HEADER_BYTES..HEADER_BYTES + size].to_vec();
        self.input.drain(..HEADER_BYTES + size);
        NextFrame::Frame(body)
    }

    /// Queues an encoded frame (header included) to send; [`Conn::flush`]
    /// sends it.
    pub(super) fn queue(&mut self, frame: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            None => {
                if self.written == self.output.len() {
                    self.output.clear();
                    self.written = 0;
                }
                self.output.extend_from_slice(frame);
                Ok(())
            }
            Some(tls) => tls.writer().write_all(frame),
        }
    }

    /// Writes until everything queued (and any TLS handshake message) is
    /// sent or the socket would block; true when nothing is left.
    pub(super) fn flush(&mut self) -> io::Result<bool> {
        match &mut self.tls {
            None => {
                while self.written < self.output.len() {
                    match self.socket.write(&self.output[self.written..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => self.written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                self.output.clear();
                self.written = 0;
                Ok(true)
            }
            Some(tls) => {
                while tls.wants_write() {
                    match tls.write_tls(&mut self.socket) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(true)
            }
        }
    }
}
