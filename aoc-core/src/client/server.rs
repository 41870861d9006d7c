//! The client API server of a data member: one thread per connection,
//! blocking `std::net` I/O, requests handed to the [`Node`].

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use tracing::{debug, info, warn};

use super::convert::{error_to_proto, invalid, status_to_proto, too_large, write_to_proto};
use super::frame::{self, FrameError};
use crate::proto::client as pb;
use crate::proto::client::Request_oneof_body as Req;
use crate::proto::client::Response_oneof_body as Resp;
use crate::state::{KvCommand, KvResponse, KvStateMachine};
use crate::transport::tls::{Stream, TlsIdentity};
use crate::{Error, Node, Result};

/// The limits a [`ClientServer`] enforces. A request over a limit gets a
/// `TOO_LARGE` error naming the limit (its field name here) and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest request frame body in bytes (default 1 MiB). A longer frame
    /// is answered with `TOO_LARGE` and the connection is closed (its body
    /// is not read).
    pub max_frame_bytes: usize,
    /// Largest response frame body in bytes (default 16 MiB); a scan whose
    /// answer would be larger is refused with `TOO_LARGE`. A backup is
    /// sent in chunks that each fit under it.
    pub max_response_bytes: usize,
    /// Largest key (or scan prefix) in bytes (default 4 KiB).
    pub max_key_bytes: usize,
    /// Largest value in bytes, for put and both sides of a compare-and-swap
    /// (default 512 KiB; keep it below the replica's `max_proposal_bytes`).
    pub max_value_bytes: usize,
    /// Most connections open at once (default 1024). One more is answered
    /// with `BUSY` and closed.
    pub max_connections: usize,
    /// A connection that sends no complete frame for this long is closed
    /// (default 5 minutes; `None`: never). Also bounds how long writing an
    /// answer may block.
    pub idle_timeout: Option<Duration>,
    /// Once a request frame's first byte has arrived, the whole frame must
    /// arrive within this (default 10 s): a sender trickling bytes does not
    /// hold a connection for `idle_timeout` per byte.
    pub frame_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_frame_bytes: 1024 * 1024,
            max_response_bytes: 16 * 1024 * 1024,
            max_key_bytes: 4 * 1024,
            max_value_bytes: 512 * 1024,
            max_connections: 1024,
            idle_timeout: Some(Duration::from_secs(300)),
            frame_timeout: Duration::from_secs(10),
        }
    }
}

impl ServerLimits {
    /// Checks the values; the error names the first bad field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_response_bytes", self.max_response_bytes),
            ("max_key_bytes", self.max_key_bytes),
            ("max_value_bytes", self.max_value_bytes),
            ("max_connections", self.max_connections),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        if self.max_frame_bytes > u32::MAX as usize {
            return Err(Error::config(
                "max_frame_bytes",
                "must fit the frame's 32-bit length",
            ));
        }
        if self.frame_timeout.is_zero() {
            return Err(Error::config("frame_timeout", "must be positive"));
        }
        if self.idle_timeout == Some(Duration::ZERO) {
            return Err(Error::config(
                "idle_timeout",
                "must be positive (None: no idle timeout)",
            ));
        }
        Ok(())
    }
}

/// One open connection, as the server keeps track of it.
struct Conn {
    /// A handle on the socket, to close it at shutdown.
    stream: TcpStream,
    /// The connection's thread (set once it is spawned).
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    stopping: AtomicBool,
    conns: Mutex<(u64, HashMap<u64, Conn>)>,
    /// Snapshots held for backups now (at most [`MAX_BACKUPS_HELD`]).
    backups_held: AtomicUsize,
}

/// The most snapshots a server holds for backups at once. Each is a whole
/// copy of the state in memory, kept for as long as its connection reads
/// it; one more backup is answered `BUSY`.
pub const MAX_BACKUPS_HELD: usize = 2;

/// The largest chunk of a backup in one answer (1 MiB), unless
/// `max_response_bytes` or the client asks for less.
pub const BACKUP_CHUNK_BYTES: usize = 1024 * 1024;

/// Room kept in a backup answer for everything but the chunk's bytes (the
/// response's and the chunk's other fields take well under this).
const BACKUP_CHUNK_OVERHEAD: usize = 256;

/// A place among the [`MAX_BACKUPS_HELD`]; given back when dropped.
struct BackupSlot(Arc<Shared>);

impl Drop for BackupSlot {
    fn drop(&mut self) {
        self.0.backups_held.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A snapshot a connection is reading in chunks.
struct HeldBackup {
    /// Every field of the answer but `offset` and `data`.
    description: pb::BackupChunk,
    data: bytes::Bytes,
    _slot: BackupSlot,
}

/// Reads one request frame: waits up to `idle` for its first byte, then
/// up to `frame_timeout` in all for the rest.
struct FrameDeadline<'a> {
    stream: &'a mut Stream,
    idle: Option<Duration>,
    frame_timeout: Duration,
    started: Option<std::time::Instant>,
}

impl io::Read for FrameDeadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = match self.started {
            None => self.idle,
            Some(t) => {
                let left = self.frame_timeout.saturating_sub(t.elapsed());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request frame not complete within frame_timeout",
                    ));
                }
                Some(left)
            }
        };
        self.stream.tcp().set_read_timeout(timeout)?;
        let n = self.stream.read(buf)?;
        if n > 0 && self.started.is_none() {
            self.started = Some(std::time::Instant::now());
        }
        Ok(n)
    }
}

/// A client's TLS handshake must be complete within this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Told the latency of every acknowledged write (for metrics).
pub type WriteObserver = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

struct Ctx<S> {
    /// The cluster this server's member belongs to (0: unknown), reported
    /// with backups.
    cluster_id: u64,
    tls: Option<TlsIdentity>,
    node: Node<S>,
    peers_api: BTreeMap<u64, SocketAddr>,
    limits: ServerLimits,
    shared: Arc<Shared>,
    observer: Option<WriteObserver>,
}

/// The client API of a data member, listening on TCP.
///
/// Each connection gets a thread; requests on a connection are served one
/// at a time, in order. Reads are linearizable ([`Node::read`]); writes go
/// through [`Node::propose_session`] (exactly-once per `(client id,
/// sequence)`), or [`Node::propose`] when the client id is 0. A member
/// that is not the active answers `NOT_LEADER` with the active's member id
/// and, when `peers_api` knows it, its client address. The protocol is
/// described in [`crate::client`].
///
/// Nothing a client sends makes the server panic: a malformed or
/// over-limit request gets an error answer, or (when the stream can no
/// longer be followed) the connection is closed with a `warn` log saying
/// why.
pub struct ClientServer {
    local_addr: SocketAddr,
    member: u64,
    shared: Arc<Shared>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ClientServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientServer")
            .field("member", &self.member)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl ClientServer {
    /// Listens on `listen` (port 0: any free port, see
    /// [`ClientServer::local_addr`]) and serves `node`'s clients.
    /// `peers_api` maps member ids to their client API addresses, so a
    /// `NOT_LEADER` answer can say where the active is.
    pub fn start<S: KvStateMachine>(
        listen: SocketAddr,
        node: Node<S>,
        peers_api: BTreeMap<u64, SocketAddr>,
        limits: ServerLimits,
    ) -> Result<ClientServer> {
        Self::start_observed(listen, node, peers_api, limits, None, None)
    }

    /// [`ClientServer::start`], telling `observer` the latency of every
    /// acknowledged write (the binaries feed their proposal histogram), and
    /// with mutual TLS when `tls` is set: a client without a certificate of
    /// the cluster's CA is refused at the TLS handshake (see
    /// [`crate::transport::tls`]). Backups report cluster id 0 (unknown):
    /// see [`ClientServer::start_in_cluster`].
    pub fn start_observed<S: KvStateMachine>(
        listen: SocketAddr,
        node: Node<S>,
        peers_api: BTreeMap<u64, SocketAddr>,
        limits: ServerLimits,
        observer: Option<WriteObserver>,
        tls: Option<TlsIdentity>,
    ) -> Result<ClientServer> {
        Self::start_in_cluster(0, listen, node, peers_api, limits, observer, tls)
    }

    /// [`ClientServer::start_observed`] for a member of cluster
    /// `cluster_id`, which the server reports with every backup (so that a
    /// backup file records where its state comes from).
    pub fn start_in_cluster<S: KvStateMachine>(
        cluster_id: u64,
        listen: SocketAddr,
        node: Node<S>,
        peers_api: BTreeMap<u64, SocketAddr>,
        limits: ServerLimits,
        observer: Option<WriteObserver>,
        tls: Option<TlsIdentity>,
    ) -> Result<ClientServer> {
        limits.validate()?;
        let listener = TcpListener::bind(listen)
            .map_err(|e| Error::config("listen", format!("cannot listen on {listen}: {e}")))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::config("listen", format!("no local address for {listen}: {e}")))?;
        let member = node.id();
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            conns: Mutex::new((0, HashMap::new())),
            backups_held: AtomicUsize::new(0),
        });
        let ctx = Arc::new(Ctx {
            cluster_id,
            node,
            peers_api,
            limits,
            shared: shared.clone(),
            observer,
            tls,
        });
        let acceptor = std::thread::Builder::new()
            .name(format!("aoc-client-api-{member}"))
            .spawn(move || accept_loop(listener, ctx))
            .map_err(|e| {
                Error::config("listen", format!("cannot start the acceptor thread: {e}"))
            })?;
        info!(member, addr = %local_addr, "client API listening");
        Ok(ClientServer {
            local_addr,
            member,
            shared,
            acceptor: Mutex::new(Some(acceptor)),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many connections are open now.
    pub fn connections(&self) -> usize {
        self.shared.conns.lock().1.len()
    }

    /// Stops accepting, closes every connection and waits for their
    /// threads (a request being served finishes first: at most the node's
    /// request timeout). Idempotent; the node itself is left running.
    pub fn shutdown(&self) {
        let Some(acceptor) = self.acceptor.lock().take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let wake = wake_addr(self.local_addr);
        if let Err(e) = TcpStream::connect_timeout(&wake, Duration::from_secs(1)) {
            debug!(member = self.member, error = %e, "could not wake the acceptor");
        }
        let _ = acceptor.join();
        let conns: Vec<Conn> = self.shared.conns.lock().1.drain().map(|(_, c)| c).collect();
        for c in &conns {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        for c in conns {
            if let Some(t) = c.thread {
                let _ = t.join();
            }
        }
        info!(member = self.member, "client API stopped");
    }
}

impl Drop for ClientServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where to connect to reach a listener bound to `addr` (an unspecified
/// address is reached through the loopback).
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

fn accept_loop<S: KvStateMachine>(listener: TcpListener, ctx: Arc<Ctx<S>>) {
    let member = ctx.node.id();
    loop {
        let accepted = listener.accept();
        if ctx.shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        match accepted {
            Ok((stream, peer)) => admit(&ctx, stream, peer),
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                warn!(member, error = %e, "accepting a client connection failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn admit<S: KvStateMachine>(ctx: &Arc<Ctx<S>>, mut stream: TcpStream, peer: SocketAddr) {
    let member = ctx.node.id();
    let _ = stream.set_nodelay(true);
    if let Err(e) = stream
        .set_read_timeout(ctx.limits.idle_timeout)
        .and_then(|()| stream.set_write_timeout(ctx.limits.idle_timeout))
    {
        warn!(member, %peer, error = %e, "cannot set socket timeouts; closing");
        return;
    }
    let handle = match stream.try_clone() {
        Ok(h) => h,
        Err(e) => {
            warn!(member, %peer, error = %e, "cannot track the connection; closing");
            return;
        }
    };
    let id = {
        let mut conns = ctx.shared.conns.lock();
        if conns.1.len() >= ctx.limits.max_connections {
            drop(conns);
            let limit = ctx.limits.max_connections;
            warn!(member, %peer, limit, "too many client connections (max_connections); refusing one");
            let mut err = pb::ApiError::new();
            err.set_kind(pb::ErrorKind::BUSY);
            err.set_what("connections (max_connections)".into());
            err.set_limit(limit as u64);
            err.set_message(format!(
                "too many connections: the limit (max_connections) is {limit}"
            ));
            // Over TLS the refusal could only follow a handshake, which
            // is the work this limit saves: the connection just closes.
            if ctx.tls.is_none() {
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = frame::write_message(&mut stream, &error_response(0, err));
            }
            return;
        }
        conns.0 += 1;
        let id = conns.0;
        conns.1.insert(
            id,
            Conn {
                stream: handle,
                thread: None,
            },
        );
        id
    };
    let conn_ctx = ctx.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("aoc-client-{member}-{id}"))
        .spawn(move || {
            serve(&conn_ctx, stream, peer);
            conn_ctx.shared.conns.lock().1.remove(&id);
        });
    let mut conns = ctx.shared.conns.lock();
    match spawned {
        Ok(t) => {
            // The thread may already have finished and left.
            if let Some(c) = conns.1.get_mut(&id) {
                c.thread = Some(t);
            }
        }
        Err(e) => {
            warn!(member, %peer, error = %e, "cannot start a connection thread; closing");
            if let Some(c) = conns.1.remove(&id) {
                let _ = c.stream.shutdown(Shutdown::Both);
            }
        }
    }
}

fn error_response(request_id: u64, err: pb::ApiError) -> pb::Response {
    let mut r = pb::Response::new();
    r.set_request_id(request_id);
    r.set_error(err);
    r
}

/// Serves one connection until it closes or breaks.
fn serve<S: KvStateMachine>(ctx: &Ctx<S>, stream: TcpStream, peer: SocketAddr) {
    let member = ctx.node.id();
    let deadline = std::time::Instant::now() + TLS_HANDSHAKE_TIMEOUT;
    let mut stream = match Stream::accept(stream, ctx.tls.as_ref(), deadline) {
        Ok(s) => s,
        Err(e) => {
            warn!(member, %peer, error = %e, "TLS handshake failed; closing");
            return;
        }
    };
    if let Err(e) = stream
        .tcp()
        .set_read_timeout(ctx.limits.idle_timeout)
        .and_then(|()| stream.tcp().set_write_timeout(ctx.limits.idle_timeout))
    {
        warn!(member, %peer, error = %e, "cannot set socket timeouts; closing");
        return;
    }
    debug!(member, %peer, "client connected");
    // The snapshot of a backup in progress on this connection (dropped
    // with the connection).
    let mut held: Option<HeldBackup> = None;
    loop {
        let mut timed = FrameDeadline {
            stream: &mut stream,
            idle: ctx.limits.idle_timeout,
            frame_timeout: ctx.limits.frame_timeout,
            started: None,
        };
        let body = match frame::read_frame(&mut timed, ctx.limits.max_frame_bytes) {
            Ok(body) => body,
            Err(FrameError::Closed) => {
                debug!(member, %peer, "client disconnected");
                return;
            }
            Err(FrameError::TooLarge { size, limit }) => {
                warn!(member, %peer, size, limit,
                    "request frame over max_frame_bytes; answering and closing");
                let err = too_large("request frame (max_frame_bytes)".into(), size, limit);
                let _ = frame::write_message(&mut stream, &error_response(0, err));
                return;
            }
            Err(e) if ctx.shared.stopping.load(Ordering::SeqCst) => {
                debug!(member, %peer, error = %e, "connection closed at shutdown");
                return;
            }
            Err(e) if e.is_timeout() && timed.started.is_some() => {
                warn!(member, %peer, limit = ?ctx.limits.frame_timeout,
                    "request frame not complete within frame_timeout; closing");
                return;
            }
            Err(e) if e.is_timeout() => {
                debug!(member, %peer, "idle connection closed (idle_timeout)");
                return;
            }
            Err(e) => {
                warn!(member, %peer, error = %e, "reading a request failed; closing");
                return;
            }
        };
        let response = match frame::decode::<pb::Request>(&body) {
            Ok(req) => {
                let id = req.get_request_id();
                let mut r = pb::Response::new();
                r.set_request_id(id);
                r.body = Some(handle(ctx, req, &mut held));
                r
            }
            Err(e) => {
                warn!(member, %peer, bytes = body.len(), error = %e,
                    "undecodable request frame; answering INVALID");
                error_response(0, invalid("request frame", e))
            }
        };
        let mut bytes = frame::encode(&response);
        if bytes.len() > ctx.limits.max_response_bytes {
            warn!(member, %peer, size = bytes.len(), limit = ctx.limits.max_response_bytes,
                "response over max_response_bytes; answering TOO_LARGE");
            let err = too_large(
                "response (max_response_bytes)".into(),
                bytes.len() as u64,
                ctx.limits.max_response_bytes,
            );
            bytes = frame::encode(&error_response(response.get_request_id(), err));
        }
        if let Err(e) = frame::write_frame(&mut stream, &bytes) {
            let gone = matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
            );
            if gone || ctx.shared.stopping.load(Ordering::SeqCst) {
                // The client left before its answer (it retries if it
                // cares: writes are exactly-once).
                debug!(member, %peer, error = %e, "client gone before its answer");
            } else {
                warn!(member, %peer, error = %e, "writing a response failed; closing");
            }
            return;
        }
    }
}

/// A result whose error is the API error to answer with (boxed: it is
/// large).
type Refusable<T> = std::result::Result<T, Box<pb::ApiError>>;

/// Checks a key (or prefix) against `max_key_bytes`.
fn check_key(limits: &ServerLimits, what: &str, key: &[u8]) -> Refusable<()> {
    if key.len() > limits.max_key_bytes {
        return Err(Box::new(too_large(
            format!("{what} (max_key_bytes)"),
            key.len() as u64,
            limits.max_key_bytes,
        )));
    }
    Ok(())
}

/// Checks a value against `max_value_bytes`.
fn check_value(limits: &ServerLimits, what: &str, value: &[u8]) -> Refusable<()> {
    if value.len() > limits.max_value_bytes {
        return Err(Box::new(too_large(
            format!("{what} (max_value_bytes)"),
            value.len() as u64,
            limits.max_value_bytes,
        )));
    }
    Ok(())
}

/// Answers one request.
fn handle<S: KvStateMachine>(
    ctx: &Ctx<S>,
    req: pb::Request,
    held: &mut Option<HeldBackup>,
) -> Resp {
    match answer(ctx, req, held) {
        Ok(body) => body,
        Err(err) => Resp::error(*err),
    }
}

fn answer<S: KvStateMachine>(
    ctx: &Ctx<S>,
    req: pb::Request,
    held: &mut Option<HeldBackup>,
) -> Refusable<Resp> {
    let node = &ctx.node;
    let limits = &ctx.limits;
    let api = |e: Error| error_to_proto(&e, &ctx.peers_api);
    let Some(body) = req.body else {
        return Err(Box::new(invalid("request", "no operation is set")));
    };
    match body {
        Req::register(_) => {
            let client_id = node.register_client().map_err(api)?;
            let mut r = pb::Registered::new();
            r.set_client_id(client_id);
            Ok(Resp::registered(r))
        }
        Req::put(mut p) => {
            check_key(limits, "key", p.get_key())?;
            check_value(limits, "value", p.get_value())?;
            let cmd = KvCommand::put(p.take_key(), p.take_value());
            write(ctx, p.get_id(), cmd)
        }
        Req::delete(mut d) => {
            check_key(limits, "key", d.get_key())?;
            let cmd = KvCommand::delete(d.take_key());
            write(ctx, d.get_id(), cmd)
        }
        Req::cas(mut c) => {
            check_key(limits, "key", c.get_key())?;
            check_value(limits, "expected value", c.get_expected())?;
            check_value(limits, "new value", c.get_new_value())?;
            if c.get_expected_absent() && !c.get_expected().is_empty() {
                return Err(Box::new(invalid(
                    "cas",
                    "both an expected value and expected_absent are set",
                )));
            }
            if c.get_delete() && !c.get_new_value().is_empty() {
                return Err(Box::new(invalid(
                    "cas",
                    "both a new value and delete are set",
                )));
            }
            let expected = (!c.get_expected_absent()).then(|| c.take_expected());
            let new = (!c.get_delete()).then(|| c.take_new_value());
            let cmd = KvCommand::cas(c.take_key(), expected, new);
            write(ctx, c.get_id(), cmd)
        }
        Req::get(mut g) => {
            check_key(limits, "key", g.get_key())?;
            let key = g.take_key();
            let value = node
                .read(move |kv| kv.get(&key))
                .and_then(|r| r)
                .map_err(api)?;
            let mut v = pb::Value::new();
            if let Some(value) = value {
                v.set_found(true);
                v.set_value(value);
            }
            Ok(Resp::value(v))
        }
        Req::scan(mut s) => {
            check_key(limits, "prefix", s.get_prefix())?;
            let prefix = s.take_prefix();
            let pairs = node
                .read(move |kv| kv.scan(&prefix))
                .and_then(|r| r)
                .map_err(api)?;
            // Refuse early, before building an answer that cannot be sent
            // (each pair costs its bytes plus a few bytes of framing).
            let size: u64 = pairs
                .iter()
                .map(|(k, v)| k.len() as u64 + v.len() as u64 + 16)
                .sum();
            if size > limits.max_response_bytes as u64 {
                return Err(Box::new(too_large(
                    "scan result (max_response_bytes)".into(),
                    size,
                    limits.max_response_bytes,
                )));
            }
            let mut out = pb::Pairs::new();
            for (key, value) in pairs {
                let mut p = pb::Pair::new();
                p.set_key(key);
                p.set_value(value);
                out.mut_pairs().push(p);
            }
            Ok(Resp::pairs(out))
        }
        Req::status(_) => Ok(Resp::status(status_to_proto(
            &node.status(),
            &ctx.peers_api,
        ))),
        Req::switchover(_) => {
            let pause = node.switchover().map_err(api)?;
            let mut r = pb::SwitchoverDone::new();
            r.set_pause_ms(u64::try_from(pause.as_millis()).unwrap_or(u64::MAX));
            Ok(Resp::switchover(r))
        }
        Req::maintenance(m) => {
            node.set_maintenance(m.get_on()).map_err(api)?;
            Ok(Resp::done(pb::Done::new()))
        }
        Req::membership(m) => {
            node.change_membership(super::convert::membership_from_proto(&m))
                .map_err(api)?;
            Ok(Resp::done(pb::Done::new()))
        }
        Req::backup(b) => backup_chunk(ctx, &b, held),
    }
}

/// Answers a backup request: takes the snapshot (on `start`), then the
/// chunk at the requested offset.
fn backup_chunk<S: KvStateMachine>(
    ctx: &Ctx<S>,
    req: &pb::BackupRequest,
    held: &mut Option<HeldBackup>,
) -> Refusable<Resp> {
    if req.get_start() {
        // A new start replaces the connection's snapshot (and its slot).
        *held = None;
        *held = Some(take_backup(ctx)?);
    }
    let Some(backup) = held.as_ref() else {
        return Err(Box::new(invalid(
            "backup",
            "no backup is in progress on this connection (the connection that \
             started it was closed, or its last chunk was sent): start a new one",
        )));
    };
    let len = backup.data.len();
    let offset = if req.get_start() { 0 } else { req.get_offset() };
    let from = match usize::try_from(offset) {
        Ok(from) if from <= len => from,
        _ => {
            return Err(Box::new(invalid(
                "backup offset",
                format!("offset {offset} is beyond the snapshot's {len} bytes"),
            )))
        }
    };
    // Every answer stays under max_response_bytes and under what the
    // client takes; at least one byte, so a transfer always advances.
    let mut chunk = BACKUP_CHUNK_BYTES.min(
        ctx.limits
            .max_response_bytes
            .saturating_sub(BACKUP_CHUNK_OVERHEAD),
    );
    if req.get_max_chunk_bytes() > 0 {
        chunk = chunk.min(usize::try_from(req.get_max_chunk_bytes()).unwrap_or(usize::MAX));
    }
    let to = from + chunk.max(1).min(len - from);
    let mut out = backup.description.clone();
    out.set_offset(offset);
    out.set_data(backup.data[from..to].to_vec());
    if to == len {
        // The last chunk: free the copy now rather than at disconnect.
        *held = None;
    }
    Ok(Resp::backup(out))
}

/// Takes a snapshot for a backup: a linearizable read on the active, so
/// the state covers every write acknowledged before the request, read off
/// the raft thread (`Node::read_snapshot`).
fn take_backup<S: KvStateMachine>(ctx: &Ctx<S>) -> Refusable<HeldBackup> {
    let member = ctx.node.id();
    let held_now = ctx.shared.backups_held.fetch_add(1, Ordering::SeqCst);
    // From here the slot is given back on every path (its drop).
    let slot = BackupSlot(ctx.shared.clone());
    if held_now >= MAX_BACKUPS_HELD {
        let mut err = pb::ApiError::new();
        err.set_kind(pb::ErrorKind::BUSY);
        err.set_what("backups in progress (MAX_BACKUPS_HELD)".into());
        err.set_limit(MAX_BACKUPS_HELD as u64);
        err.set_message(format!(
            "{MAX_BACKUPS_HELD} backups are in progress on member {member} (the limit); retry later"
        ));
        return Err(Box::new(err));
    }
    let started = std::time::Instant::now();
    let snapshot = ctx
        .node
        .read_snapshot()
        .map_err(|e| error_to_proto(&e, &ctx.peers_api))?;
    let (index, term, data) = (snapshot.index, snapshot.term, snapshot.state);
    info!(
        member,
        index,
        bytes = data.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "snapshot taken for a backup"
    );
    let mut description = pb::BackupChunk::new();
    description.set_cluster_id(ctx.cluster_id);
    description.set_member_id(member);
    description.set_index(index);
    description.set_term(term);
    description.set_total_bytes(data.len() as u64);
    description.set_data_crc32(crc32fast::hash(&data));
    Ok(HeldBackup {
        description,
        data,
        _slot: slot,
    })
}

/// Proposes a write (exactly-once when it carries a session).
fn write<S: KvStateMachine>(ctx: &Ctx<S>, id: &pb::WriteId, cmd: KvCommand) -> Refusable<Resp> {
    let api = |e: Error| error_to_proto(&e, &ctx.peers_api);
    let started = std::time::Instant::now();
    let applied = if id.get_client_id() == 0 {
        ctx.node.propose(cmd.encode())
    } else {
        if id.get_sequence() == 0 {
            return Err(Box::new(invalid("sequence", "sequences start at 1")));
        }
        ctx.node
            .propose_session(id.get_client_id(), id.get_sequence(), cmd.encode())
    }
    .map_err(api)?;
    if let Some(observe) = &ctx.observer {
        observe(started.elapsed());
    }
    let response = KvResponse::decode(&applied.response).map_err(api)?;
    Ok(Resp::write(write_to_proto(applied.index, response)))
}
