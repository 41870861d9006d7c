//! The client API server of a data member: one thread polls every
//! connection (mio, edge-triggered), hands writes and reads to the
//! [`Node`] with a completion, and writes each answer when the node gives
//! it back. Operations that wait long (a switchover, maintenance, a
//! membership change, a backup) run on a thread of their own.
//!
//! A thread per connection cost two thread hand-offs and their context
//! switches per request; with 64 clients on two cores those were a quarter
//! of the machine's time (docs/benchmarks.md).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::info;

use super::serve::{self, WAKER};
use crate::proto::client as pb;
use crate::proto::client::Response_oneof_body as Resp;
use crate::state::KvStateMachine;
use crate::transport::tls::TlsIdentity;
use crate::{Applied, Error, Node, Result};

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
    /// (default 5 minutes; `None`: never). Also bounds how long an answer
    /// may wait for the client to read all of it: a 16 MiB answer must be
    /// read at 56 KB/s or faster with the default.
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
        for (field, value) in [
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_response_bytes", self.max_response_bytes),
        ] {
            if value > u32::MAX as usize {
                return Err(Error::config(field, "must fit the frame's 32-bit length"));
            }
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

/// What the server shares between its loop, the threads of long
/// operations and [`ClientServer`].
pub(super) struct Shared {
    pub(super) stopping: AtomicBool,
    /// Connections open now.
    pub(super) open: AtomicUsize,
    /// Snapshots held for backups now (at most [`MAX_BACKUPS_HELD`]).
    pub(super) backups_held: AtomicUsize,
    /// Threads running long operations, joined at shutdown.
    pub(super) workers: Mutex<Vec<JoinHandle<()>>>,
}

/// The most snapshots a server holds for backups at once. Each is a whole
/// copy of the state in memory, kept for as long as its connection reads
/// it; one more backup is answered `BUSY`.
pub const MAX_BACKUPS_HELD: usize = 2;

/// The largest chunk of a backup in one answer (1 MiB), unless
/// `max_response_bytes` or the client asks for less.
pub const BACKUP_CHUNK_BYTES: usize = 1024 * 1024;

/// A place among the [`MAX_BACKUPS_HELD`]; given back when dropped.
pub(super) struct BackupSlot(pub(super) Arc<Shared>);

impl Drop for BackupSlot {
    fn drop(&mut self) {
        self.0.backups_held.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A snapshot a connection is reading in chunks.
pub(super) struct HeldBackup {
    /// Every field of the answer but `offset` and `data`.
    pub(super) description: pb::BackupChunk,
    pub(super) data: bytes::Bytes,
    pub(super) _slot: BackupSlot,
}

/// Told the latency of every acknowledged write (for metrics).
pub type WriteObserver = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// What the loop serves with.
pub(super) struct Ctx<S> {
    /// The cluster this server's member belongs to (0: unknown), reported
    /// with backups.
    pub(super) cluster_id: u64,
    pub(super) tls: Option<TlsIdentity>,
    pub(super) node: Node<S>,
    pub(super) peers_api: BTreeMap<u64, SocketAddr>,
    pub(super) limits: ServerLimits,
    pub(super) shared: Arc<Shared>,
    pub(super) observer: Option<WriteObserver>,
}

/// The outcome of a request answered later.
pub(super) enum Answer {
    /// A proposal's, and when it was made.
    Write {
        applied: Result<Applied>,
        started: Instant,
    },
    /// A registration's: the new client id.
    Registered(Result<u64>),
    /// A get's.
    Value(Result<Option<Vec<u8>>>),
    /// A scan's.
    Pairs(Result<Vec<(Vec<u8>, Vec<u8>)>>),
    /// A long operation's answer, and the connection's backup in progress
    /// given back.
    Done(Box<(Resp, Option<HeldBackup>)>),
}

/// An answer for the request `seq` of connection `token`.
pub(super) struct Finished {
    pub(super) token: usize,
    pub(super) seq: u64,
    pub(super) answer: Answer,
}

/// Answers waiting for the loop, and the waker that calls it.
pub(super) struct Completions {
    queue: Mutex<Vec<Finished>>,
    waker: mio::Waker,
}

impl Completions {
    pub(super) fn new(waker: mio::Waker) -> Completions {
        Completions {
            queue: Mutex::new(Vec::new()),
            waker,
        }
    }

    /// Queues an answer; wakes the loop only if the queue was empty (a
    /// loop woken once takes every answer queued until it looks).
    pub(super) fn push(&self, done: Finished) {
        let was_empty = {
            let mut q = self.queue.lock();
            q.push(done);
            q.len() == 1
        };
        if was_empty {
            self.wake();
        }
    }

    /// Takes every queued answer.
    pub(super) fn take(&self) -> Vec<Finished> {
        std::mem::take(&mut *self.queue.lock())
    }

    pub(super) fn wake(&self) {
        // Fails only when the poll is gone (the loop stopped).
        let _ = self.waker.wake();
    }
}

/// The client API of a data member, listening on TCP.
///
/// One thread serves every connection; requests on a connection are
/// served one at a time, in order. Reads are linearizable
/// ([`Node::read`]); writes go through [`Node::propose_session`]
/// (exactly-once per `(client id, sequence)`), or [`Node::propose`] when
/// the client id is 0. A member that is not the active answers
/// `NOT_LEADER` with the active's member id and, when `peers_api` knows
/// it, its client address. A request the node has not answered within its
/// request timeout is answered `TIMEOUT`. The protocol is described in
/// [`crate::client`].
///
/// Nothing a client sends makes the server panic: a malformed or
/// over-limit request gets an error answer, or (when the stream can no
/// longer be followed) the connection is closed with a `warn` log saying
/// why.
pub struct ClientServer {
    local_addr: SocketAddr,
    member: u64,
    shared: Arc<Shared>,
    completions: Arc<Completions>,
    looper: Mutex<Option<JoinHandle<()>>>,
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
        let std_listener = std::net::TcpListener::bind(listen)
            .map_err(|e| Error::config("listen", format!("cannot listen on {listen}: {e}")))?;
        let local_addr = std_listener
            .local_addr()
            .map_err(|e| Error::config("listen", format!("no local address for {listen}: {e}")))?;
        let poll_error =
            |e: std::io::Error| Error::config("listen", format!("cannot poll {listen}: {e}"));
        std_listener.set_nonblocking(true).map_err(poll_error)?;
        let listener = mio::net::TcpListener::from_std(std_listener);
        let poll = mio::Poll::new().map_err(poll_error)?;
        let waker = mio::Waker::new(poll.registry(), WAKER).map_err(poll_error)?;
        let completions = Arc::new(Completions::new(waker));
        let member = node.id();
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            backups_held: AtomicUsize::new(0),
            workers: Mutex::new(Vec::new()),
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
        let loop_completions = completions.clone();
        let looper = std::thread::Builder::new()
            .name(format!("aoc-client-api-{member}"))
            .spawn(move || serve::run(poll, listener, ctx, loop_completions))
            .map_err(|e| {
                Error::config("listen", format!("cannot start the client API thread: {e}"))
            })?;
        info!(member, addr = %local_addr, "client API listening");
        Ok(ClientServer {
            local_addr,
            member,
            shared,
            completions,
            looper: Mutex::new(Some(looper)),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many connections are open now.
    pub fn connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes every connection; waits for the
    /// threads of long operations under way (at most the node's request
    /// timeout, or a backup's snapshot read). Answers not yet written are
    /// lost: a client retries, and writes are exactly-once. Idempotent;
    /// the node itself is left running.
    pub fn shutdown(&self) {
        let Some(looper) = self.looper.lock().take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.completions.wake();
        let _ = looper.join();
        let workers: Vec<JoinHandle<()>> = std::mem::take(&mut *self.shared.workers.lock());
        for w in workers {
            let _ = w.join();
        }
        info!(member = self.member, "client API stopped");
    }
}

impl Drop for ClientServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_past_a_frame_length_are_refused_by_name() {
        for field in ["max_frame_bytes", "max_response_bytes"] {
            let mut limits = ServerLimits::default();
            match field {
                "max_frame_bytes" => limits.max_frame_bytes = u32::MAX as usize + 1,
                _ => limits.max_response_bytes = u32::MAX as usize + 1,
            }
            let err = limits.validate().expect_err("a limit past u32 is refused");
            assert!(err.to_string().contains(field), "{err}");
        }
        assert!(ServerLimits::default().validate().is_ok());
    }
}
