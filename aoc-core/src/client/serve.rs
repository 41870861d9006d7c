//! The client server's loop, on one thread: accepts connections, reads
//! request frames, dispatches them ([`super::handle`]), writes the answers
//! as the node gives them back, and enforces the time limits.
//!
//! A connection is in one phase at a time: its TLS handshake, reading a
//! request, waiting for the answer to it, or writing a last answer before
//! closing. Requests on a connection are served one at a time, in order:
//! what a client sends meanwhile stays buffered (up to one frame) until the
//! answer is written.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Registry, Token};
use rustls::ServerConnection;
use tracing::{debug, warn};

use super::conn::{Conn, NextFrame, Received};
use super::convert::{busy, error_to_proto, invalid, too_large};
use super::frame::{self, HEADER_BYTES};
use super::handle::{self, Dispatch, Tell};
use super::server::{Answer, Completions, Ctx, Finished, HeldBackup};
use crate::proto::client as pb;
use crate::proto::client::Response_oneof_body as Resp;
use crate::state::KvStateMachine;
use crate::Error;

/// The listening socket's token.
const LISTENER: Token = Token(0);
/// The token of the waker that completions use.
pub(super) const WAKER: Token = Token(1);
/// Connections get tokens from here up, never reused: a late answer for
/// a closed connection finds nothing.
const FIRST_CONNECTION: usize = 2;

/// A client's TLS handshake must be complete within this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the loop sleeps at most while connections are open, so that
/// their time limits are checked.
const DEADLINE_CHECK: Duration = Duration::from_millis(25);

/// After a failed accept (out of file descriptors and the like), the
/// next try waits this long rather than spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The TLS handshake, until `deadline`.
    Handshake { deadline: Instant },
    /// Waiting for a request frame.
    Reading,
    /// Request `seq` (the client's `request_id`) is being answered; an
    /// answer not back by `deadline` is `TIMEOUT`. Long operations have
    /// no deadline here: they keep the node's own time limits.
    Waiting {
        seq: u64,
        request_id: u64,
        deadline: Option<Instant>,
    },
    /// A last answer is being written; then the connection closes.
    Closing,
}

/// A connection and its state.
struct Slot {
    conn: Conn,
    phase: Phase,
    /// When the connection last read a whole frame or wrote an answer
    /// (the idle clock).
    idle_since: Instant,
    /// When the first byte of the frame being read arrived.
    frame_started: Option<Instant>,
    /// Since when an answer has been waiting for the socket to take it.
    blocked_since: Option<Instant>,
    /// The number of the last request read.
    seq: u64,
    /// The backup this connection is reading, if any (with the thread of
    /// a backup request while one runs).
    held: Option<HeldBackup>,
}

struct Loop<S> {
    ctx: Arc<Ctx<S>>,
    completions: Arc<Completions>,
    conns: HashMap<usize, Slot>,
    next_token: usize,
    last_check: Instant,
    /// When to try accepting again after a failure.
    accept_retry: Option<Instant>,
}

/// Runs the loop until the server stops.
pub(super) fn run<S: KvStateMachine>(
    mut poll: Poll,
    mut listener: TcpListener,
    ctx: Arc<Ctx<S>>,
    completions: Arc<Completions>,
) {
    let member = ctx.node.id();
    if let Err(e) = poll
        .registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
    {
        warn!(member, error = %e, "cannot poll the client API listener; it stops");
        return;
    }
    let mut l = Loop {
        ctx,
        completions,
        conns: HashMap::new(),
        next_token: FIRST_CONNECTION,
        last_check: Instant::now(),
        accept_retry: None,
    };
    let mut events = Events::with_capacity(256);
    loop {
        let timeout = if l.conns.is_empty() && l.accept_retry.is_none() {
            None
        } else {
            Some(DEADLINE_CHECK)
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            warn!(member, error = %e, "polling client connections failed; the client API stops");
            break;
        }
        if l.ctx.shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        for event in events.iter() {
            match event.token() {
                LISTENER => l.accept(&listener, poll.registry()),
                WAKER => {}
                Token(token) => l.ready(token, poll.registry()),
            }
        }
        l.answer_finished(poll.registry());
        l.check_time(&listener, poll.registry());
    }
    let registry = poll.registry();
    for (_, mut slot) in l.conns.drain() {
        let _ = registry.deregister(&mut slot.conn.socket);
    }
    l.ctx.shared.open.store(0, Ordering::SeqCst);
}

/// Whether an I/O error means only that the client went away.
fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

fn error_response(request_id: u64, err: pb::ApiError) -> pb::Response {
    let mut r = pb::Response::new();
    r.set_request_id(request_id);
    r.set_error(err);
    r
}

/// A response as a frame: header and body.
fn framed(response: &pb::Response) -> Vec<u8> {
    let body = frame::encode(response);
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    // A body over max_response_bytes (which validate() keeps within a
    // u32) is replaced by a TOO_LARGE answer before it is sent, so a
    // length cut here never reaches a client.
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

impl<S: KvStateMachine> Loop<S> {
    fn member(&self) -> u64 {
        self.ctx.node.id()
    }

    fn accept(&mut self, listener: &TcpListener, registry: &Registry) {
        let member = self.member();
        loop {
            let (mut socket, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(member, error = %e, "accepting a client connection failed");
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            };
            let limit = self.ctx.limits.max_connections;
            if self.conns.len() >= limit {
                warn!(member, %peer, limit, "too many client connections (max_connections); refusing one");
                // Over TLS the refusal could only follow a handshake,
                // which is the work this limit saves: the connection just
                // closes. A plain one gets the reason if its socket takes
                // it at once.
                if self.ctx.tls.is_none() {
                    let err = busy(
                        "connections (max_connections)",
                        limit,
                        format!("too many connections: the limit (max_connections) is {limit}"),
                    );
                    let _ = io::Write::write(&mut socket, &framed(&error_response(0, err)));
                }
                continue;
            }
            let _ = socket.set_nodelay(true);
            let (tls, phase) = match &self.ctx.tls {
                None => (None, Phase::Reading),
                Some(identity) => match ServerConnection::new(identity.server_config()) {
                    Ok(session) => (
                        Some(session),
                        Phase::Handshake {
                            deadline: Instant::now() + TLS_HANDSHAKE_TIMEOUT,
                        },
                    ),
                    Err(e) => {
                        warn!(member, %peer, error = %e, "cannot start a TLS session; closing");
                        continue;
                    }
                },
            };
            let token = self.next_token;
            self.next_token += 1;
            if let Err(e) = registry.register(
                &mut socket,
                Token(token),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!(member, %peer, error = %e, "cannot poll a client connection; closing");
                continue;
            }
            let now = Instant::now();
            self.conns.insert(
                token,
                Slot {
                    conn: Conn::new(socket, peer, tls),
                    phase,
                    idle_since: now,
                    frame_started: None,
                    blocked_since: None,
                    seq: 0,
                    held: None,
                },
            );
            self.ctx
                .shared
                .open
                .store(self.conns.len(), Ordering::SeqCst);
            debug!(member, %peer, "client connected");
        }
    }

    fn close(&mut self, token: usize, registry: &Registry) {
        if let Some(mut slot) = self.conns.remove(&token) {
            let _ = registry.deregister(&mut slot.conn.socket);
            self.ctx
                .shared
                .open
                .store(self.conns.len(), Ordering::SeqCst);
        }
    }

    /// The socket of `token` is readable or writable.
    fn ready(&mut self, token: usize, registry: &Registry) {
        if self.flush(token, registry) {
            self.pump(token, registry);
        }
    }

    /// Writes what waits; false when the connection was closed.
    fn flush(&mut self, token: usize, registry: &Registry) -> bool {
        let member = self.member();
        let Some(slot) = self.conns.get_mut(&token) else {
            return false;
        };
        match slot.conn.flush() {
            Ok(true) => {
                slot.blocked_since = None;
                if slot.phase == Phase::Closing {
                    self.close(token, registry);
                    return false;
                }
                true
            }
            Ok(false) => {
                slot.blocked_since.get_or_insert_with(Instant::now);
                true
            }
            Err(e) => {
                let peer = slot.conn.peer;
                if gone(&e) {
                    // The client left before its answer (it retries if it
                    // cares: writes are exactly-once).
                    debug!(member, %peer, error = %e, "client gone before its answer");
                } else {
                    warn!(member, %peer, error = %e, "writing to a client failed; closing");
                }
                self.close(token, registry);
                false
            }
        }
    }

    /// Reads what arrived and serves the frames it completes, until the
    /// connection waits for an answer or for more bytes.
    fn pump(&mut self, token: usize, registry: &Registry) {
        let member = self.member();
        let max_frame = self.ctx.limits.max_frame_bytes;
        loop {
            let Some(slot) = self.conns.get_mut(&token) else {
                return;
            };
            if matches!(slot.phase, Phase::Waiting { .. } | Phase::Closing) {
                return;
            }
            let peer = slot.conn.peer;
            let received = match slot.conn.receive(max_frame + HEADER_BYTES) {
                Ok(received) => received,
                Err(e) => {
                    if matches!(slot.phase, Phase::Handshake { .. }) {
                        warn!(member, %peer, error = %e, "TLS handshake failed; closing");
                    } else if gone(&e) {
                        debug!(member, %peer, error = %e, "client gone");
                    } else {
                        warn!(member, %peer, error = %e, "reading a request failed; closing");
                    }
                    self.close(token, registry);
                    return;
                }
            };
            if let Phase::Handshake { .. } = slot.phase {
                if slot.conn.handshaking() {
                    if received == Received::Closed {
                        warn!(member, %peer, "client closed during the TLS handshake");
                        self.close(token, registry);
                    } else {
                        // The handshake's own answers.
                        self.flush(token, registry);
                    }
                    return;
                }
                slot.phase = Phase::Reading;
                slot.idle_since = Instant::now();
            }
            match slot.conn.next_frame(max_frame) {
                NextFrame::Incomplete { started } => {
                    if started {
                        slot.frame_started.get_or_insert_with(Instant::now);
                    }
                    if received == Received::Closed {
                        if started {
                            warn!(member, %peer, "client closed inside a request frame");
                        } else {
                            debug!(member, %peer, "client disconnected");
                        }
                        self.close(token, registry);
                    } else {
                        // Session tickets after a handshake, say.
                        self.flush(token, registry);
                    }
                    return;
                }
                NextFrame::TooLarge { size } => {
                    warn!(member, %peer, size, limit = max_frame,
                        "request frame over max_frame_bytes; answering and closing");
                    let err = too_large("request frame (max_frame_bytes)".into(), size, max_frame);
                    self.send(token, &framed(&error_response(0, err)), registry);
                    if let Some(slot) = self.conns.get_mut(&token) {
                        slot.phase = Phase::Closing;
                    }
                    self.flush(token, registry);
                    return;
                }
                NextFrame::Frame(body) => {
                    slot.frame_started = None;
                    slot.idle_since = Instant::now();
                    self.request(token, &body, registry);
                }
            }
        }
    }

    /// Serves one request frame of `token`.
    fn request(&mut self, token: usize, body: &[u8], registry: &Registry) {
        let member = self.member();
        let Some(slot) = self.conns.get_mut(&token) else {
            return;
        };
        slot.seq += 1;
        let seq = slot.seq;
        let peer = slot.conn.peer;
        let req = match frame::decode::<pb::Request>(body) {
            Ok(req) => req,
            Err(e) => {
                warn!(member, %peer, bytes = body.len(), error = %e,
                    "undecodable request frame; answering INVALID");
                self.respond(token, 0, Resp::error(invalid("request frame", e)), registry);
                return;
            }
        };
        let request_id = req.get_request_id();
        let Some(body) = req.body else {
            let err = invalid("request", "no operation is set");
            self.respond(token, request_id, Resp::error(err), registry);
            return;
        };
        let completions = self.completions.clone();
        let tell: Tell = Box::new(move |answer| {
            completions.push(Finished { token, seq, answer });
        });
        match handle::dispatch(&self.ctx, body, tell) {
            Dispatch::Now(resp) => self.respond(token, request_id, *resp, registry),
            Dispatch::Later => {
                let deadline = Instant::now() + self.ctx.node.request_timeout();
                slot.phase = Phase::Waiting {
                    seq,
                    request_id,
                    deadline: Some(deadline),
                };
            }
            Dispatch::Blocking(body) => {
                let mut held = slot.held.take();
                let ctx = self.ctx.clone();
                let completions = self.completions.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("aoc-client-op-{member}"))
                    .spawn(move || {
                        let resp = handle::answer_blocking(&ctx, body, &mut held);
                        completions.push(Finished {
                            token,
                            seq,
                            answer: Answer::Done(Box::new((resp, held))),
                        });
                    });
                match spawned {
                    Ok(worker) => {
                        let mut workers = self.ctx.shared.workers.lock();
                        workers.retain(|w| !w.is_finished());
                        workers.push(worker);
                        slot.phase = Phase::Waiting {
                            seq,
                            request_id,
                            deadline: None,
                        };
                    }
                    Err(e) => {
                        warn!(member, %peer, error = %e, "cannot start a thread for a long operation");
                        let err = error_to_proto(
                            &Error::Busy {
                                reason: format!("cannot start a thread: {e}"),
                            },
                            &self.ctx.peers_api,
                        );
                        self.respond(token, request_id, Resp::error(err), registry);
                    }
                }
            }
        }
    }

    /// Queues `frame` on `token` (closing it if that fails).
    fn send(&mut self, token: usize, frame: &[u8], registry: &Registry) {
        let member = self.member();
        let Some(slot) = self.conns.get_mut(&token) else {
            return;
        };
        if let Err(e) = slot.conn.queue(frame) {
            warn!(member, peer = %slot.conn.peer, error = %e, "cannot queue an answer; closing");
            self.close(token, registry);
        }
    }

    /// Answers the request being served on `token` and goes back to
    /// reading.
    fn respond(&mut self, token: usize, request_id: u64, resp: Resp, registry: &Registry) {
        let member = self.member();
        let limit = self.ctx.limits.max_response_bytes;
        let mut response = pb::Response::new();
        response.set_request_id(request_id);
        response.body = Some(resp);
        let mut bytes = framed(&response);
        if bytes.len() - HEADER_BYTES > limit {
            let size = (bytes.len() - HEADER_BYTES) as u64;
            warn!(
                member,
                size, limit, "response over max_response_bytes; answering TOO_LARGE"
            );
            let err = too_large("response (max_response_bytes)".into(), size, limit);
            bytes = framed(&error_response(request_id, err));
        }
        let Some(slot) = self.conns.get_mut(&token) else {
            return;
        };
        slot.phase = Phase::Reading;
        slot.idle_since = Instant::now();
        self.send(token, &bytes, registry);
        self.flush(token, registry);
    }

    /// Writes the answers the node (or a long operation) gave back.
    fn answer_finished(&mut self, registry: &Registry) {
        for done in self.completions.take() {
            let Some(slot) = self.conns.get_mut(&done.token) else {
                // Closed meanwhile (a backup it held is dropped here).
                continue;
            };
            let request_id = match slot.phase {
                Phase::Waiting {
                    seq, request_id, ..
                } if seq == done.seq => request_id,
                // Answered TIMEOUT already: the client has moved on.
                _ => continue,
            };
            let resp = match done.answer {
                Answer::Done(done) => {
                    let (resp, held) = *done;
                    slot.held = held;
                    resp
                }
                answer => handle::finish(&self.ctx, answer),
            };
            self.respond(done.token, request_id, resp, registry);
            self.pump(done.token, registry);
        }
    }

    /// Closes connections past their time limits, answers requests past
    /// theirs, and retries a failed accept; at most every
    /// [`DEADLINE_CHECK`].
    fn check_time(&mut self, listener: &TcpListener, registry: &Registry) {
        let now = Instant::now();
        if now.duration_since(self.last_check) < DEADLINE_CHECK {
            return;
        }
        self.last_check = now;
        if self.accept_retry.is_some_and(|at| now >= at) {
            self.accept_retry = None;
            self.accept(listener, registry);
        }
        let member = self.member();
        let limits = &self.ctx.limits;
        let idle = limits.idle_timeout;
        let mut close = Vec::new();
        let mut timed_out = Vec::new();
        for (&token, slot) in &self.conns {
            let peer = slot.conn.peer;
            let past = |since: Instant, limit: Duration| now.duration_since(since) >= limit;
            if let (Some(since), Some(limit)) = (slot.blocked_since, idle) {
                if past(since, limit) {
                    warn!(member, %peer, "client does not read its answers within idle_timeout; closing");
                    close.push(token);
                    continue;
                }
            }
            match slot.phase {
                Phase::Handshake { deadline } if now >= deadline => {
                    warn!(member, %peer, "TLS handshake not complete in time; closing");
                    close.push(token);
                }
                Phase::Reading => match (slot.frame_started, idle) {
                    (Some(started), _) if past(started, limits.frame_timeout) => {
                        warn!(member, %peer, limit = ?limits.frame_timeout,
                            "request frame not complete within frame_timeout; closing");
                        close.push(token);
                    }
                    (None, Some(limit)) if past(slot.idle_since, limit) => {
                        debug!(member, %peer, "idle connection closed (idle_timeout)");
                        close.push(token);
                    }
                    _ => {}
                },
                Phase::Waiting {
                    request_id,
                    deadline: Some(deadline),
                    ..
                } if now >= deadline => timed_out.push((token, request_id)),
                _ => {}
            }
        }
        for token in close {
            self.close(token, registry);
        }
        for (token, request_id) in timed_out {
            let err = error_to_proto(
                &Error::Timeout {
                    what: "request".into(),
                },
                &self.ctx.peers_api,
            );
            self.respond(token, request_id, Resp::error(err), registry);
            self.pump(token, registry);
        }
    }
}
