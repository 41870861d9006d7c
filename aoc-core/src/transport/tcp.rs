//! The TCP transport: member-to-member traffic (the HA channel).
//!
//! # Connections
//!
//! Every member listens on [`TcpConfig::listen`] and opens one outbound
//! connection to each configured peer. Traffic on a connection flows one
//! way, from the connecting member to the accepting one: a member sends on
//! its own outbound connections and receives on the connections it
//! accepted. Between two members there are thus two connections, one each
//! way.
//!
//! The peers are [`TcpConfig::peers`] at the start; [`TcpTransport::set_peers`]
//! changes the set while the transport runs (a member added to or removed
//! from the cluster): connections to and from a removed member are closed
//! and its handshakes refused, a new member is connected to, and the
//! connections of the others are left alone.
//!
//! # Framing
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of an
//! encoded `wire.Frame` (`proto/wire.proto`), whose body is one of:
//!
//! * `hello`: a [`Handshake`] (cluster id, member id, protocol version
//!   [`PROTOCOL_VERSION`] and the oldest version its frames suit,
//!   [`MIN_WRITE_PROTOCOL_VERSION`]). The connecting side sends it first,
//!   once; see [`MIN_READ_PROTOCOL_VERSION`] for which versions meet.
//! * `refused`: a [`HandshakeRefused`] with a reason: the accepting side's
//!   answer to a handshake from another cluster, from a member that is not a
//!   current peer or with another protocol version. The accepting side
//!   then closes the connection; nothing else ever flows back.
//! * `raft`: an encoded raft message (`eraftpb.Message`).
//! * `notice`: a [`Notice`].
//! * `chunk`: a [`SnapshotChunk`](super::SnapshotChunk). A `MsgSnapshot` is never sent whole: the
//!   writer cuts it with [`split_snapshot`] into chunks of
//!   [`TcpConfig::snapshot_chunk_bytes`] and the reader puts them back
//!   together with a [`Reassembler`] (one per connection). Other frames to
//!   the same peer are interleaved between the chunks, so heartbeats are not
//!   held up by a large snapshot.
//!
//! # Failure behaviour
//!
//! * [`Transport::send`] never blocks. Each peer has a bounded queue
//!   ([`TcpConfig::queue_len`] messages, a snapshot counting as one); when
//!   it is full the message is dropped (raft retransmits) and, for a
//!   snapshot, [`Inbound::snapshot_sent`]`(peer, false)` is reported.
//! * A peer's writer thread connects (with [`TcpConfig::connect_timeout`])
//!   and reconnects after a failure with exponential back-off from 50 ms,
//!   capped at [`TcpConfig::max_backoff`]; when the peer's own connection
//!   to this member is accepted (it is back), the back-off ends at once.
//!   While the peer cannot be reached its messages are dropped as they
//!   arrive. Each failed attempt, write
//!   error, lost connection or refused handshake reports
//!   [`Inbound::unreachable`], and a snapshot being streamed at that moment
//!   (or dropped) is reported with `snapshot_sent(peer, false)`. Once every
//!   chunk of a snapshot has been written to the socket,
//!   `snapshot_sent(peer, true)` is reported.
//! * A write that makes no progress for [`TcpConfig::write_timeout`] counts
//!   as a lost connection.
//! * On the accepting side, a frame that is malformed, truncated (the
//!   connection ends inside it) or oversized (its length is above
//!   [`TcpConfig::max_frame_bytes`]) closes that connection, with a
//!   `tracing` warning naming the peer's address and the reason; the
//!   transport keeps serving every other connection. A connection whose
//!   handshake is not complete within 5 seconds is closed (however slowly
//!   its bytes trickle in), and at most
//!   four accepted connections per peer (plus 16) are open at once: more
//!   are closed as they arrive. Raft messages,
//!   notices and chunks whose `from` is not the member named by the
//!   handshake are dropped. A new connection from a member replaces the
//!   previous one from the same member (which is closed), so a peer that
//!   vanished without closing its socket does not keep a thread.
//! * A broken snapshot stream (a chunk missing or damaged, or a snapshot
//!   above [`TcpConfig::max_snapshot_bytes`]) is discarded with a warning;
//!   the sender's raft reports the snapshot failed after its timeout.
//! * Nothing received from the network can panic the transport or stop the
//!   node.
//!
//! Messages received before [`TcpTransport::set_inbound`] are dropped.
//!
//! # Threads
//!
//! One listener thread, one reader thread per accepted connection and one
//! writer thread per peer, all on blocking `std::net` sockets (with
//! `TCP_NODELAY`). [`TcpTransport::shutdown`] stops them and closes every
//! socket.
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//! use aoc_core::transport::tcp::{TcpConfig, TcpTransport};
//! use aoc_core::{Node, ReplicaConfig};
//! use aoc_core::state::MemKv;
//! use aoc_core::storage::MemLogStore;
//!
//! # fn main() -> aoc_core::Result<()> {
//! let peers = BTreeMap::from([
//!     (2, "10.0.0.2:7400".parse().unwrap()),
//!     (3, "10.0.0.3:7400".parse().unwrap()),
//! ]);
//! let cfg = TcpConfig::new(42, 1, "0.0.0.0:7400".parse().unwrap(), peers);
//! let transport = TcpTransport::start(cfg)?;
//! let node = Node::builder(ReplicaConfig::new(1))
//!     .voters(vec![1, 2, 3])
//!     .start_with_transport(MemLogStore::new(), MemKv::new(), Arc::new(transport.clone()))?;
//! transport.set_inbound(Arc::new(node.clone()));
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tracing::{debug, info, warn};

use super::tls::{member_name, Stream, TlsIdentity};
use super::{split_snapshot, Notice, Reassembler, Transport};
use crate::proto::wire::{Frame, Frame_oneof_body, Handshake, HandshakeRefused};
use crate::{Error, Result};

/// The version of the frame protocol, sent in every [`Handshake`].
pub const PROTOCOL_VERSION: u32 = 1;

/// The oldest protocol version whose frames this member still reads.
///
/// Connections carry frames one way (from the connecting side), so a
/// handshake is accepted when each side can live with the other: the
/// sender's version is at least this (else the sender is too old), and
/// this member's [`PROTOCOL_VERSION`] is at least the oldest version the
/// sender's frames are written for (`min_protocol_version` in the
/// handshake; else the sender is too new). Each release keeps both one
/// version back, so members of adjacent versions interoperate during a
/// rolling upgrade.
pub const MIN_READ_PROTOCOL_VERSION: u32 = 1;

/// The oldest protocol version whose readers understand the frames this
/// member writes (sent as `min_protocol_version`).
pub const MIN_WRITE_PROTOCOL_VERSION: u32 = 1;

/// The first back-off after a failed connection attempt.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// How often an idle writer checks whether its peer closed the connection
/// (or refused the handshake).
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long the accepting side waits for the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest frame accepted before the handshake.
const MAX_HANDSHAKE_BYTES: usize = 4096;
/// How long a refusing side keeps reading (and discarding) after its
/// refusal, so that closing does not reset the connection before the
/// refusal is read.
const LINGER: Duration = Duration::from_millis(500);
/// How often the listener checks for shutdown when no connection arrives.
const ACCEPT_POLL: Duration = Duration::from_millis(20);
/// Room for a snapshot chunk's fields besides its data (the first chunk
/// carries the raft message without its data).
const CHUNK_SLACK: usize = 64 * 1024;
/// At most this many queued messages are written between two chunks.
const INTERLEAVE: usize = 64;
/// The socket buffers of the writer and the reader.
const IO_BUFFER: usize = 64 * 1024;
/// A connection that lived this long is reconnected at once when lost.
const STABLE: Duration = Duration::from_secs(1);
/// Accepted connections open at once, beyond four per peer.
const SPARE_CONNECTIONS: usize = 16;

/// The configuration of a [`TcpTransport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// The cluster's id: connections from members of another cluster are
    /// refused.
    pub cluster_id: u64,
    /// This member's id.
    pub member_id: u64,
    /// The address to listen on (port 0 picks a free port; see
    /// [`TcpTransport::local_addr`]).
    pub listen: SocketAddr,
    /// Every other member: its id and the address it listens on. Only
    /// these members may connect. This is the initial set: the running
    /// transport's set is changed with [`TcpTransport::set_peers`].
    pub peers: BTreeMap<u64, SocketAddr>,
    /// The largest frame accepted, in bytes (default 16 MiB). A longer
    /// frame closes the connection; a message that would need one is
    /// dropped by the sender.
    pub max_frame_bytes: usize,
    /// The number of messages queued per peer (default 1024); a snapshot
    /// counts as one.
    pub queue_len: usize,
    /// The data carried by one snapshot chunk (default 1 MiB). Must leave
    /// 64 KiB of `max_frame_bytes` for the rest of the chunk.
    pub snapshot_chunk_bytes: usize,
    /// The largest snapshot accepted from a peer (default 4 GiB).
    pub max_snapshot_bytes: u64,
    /// How long a connection attempt may take (default 1 s).
    pub connect_timeout: Duration,
    /// How long a write may make no progress before the connection is
    /// taken as lost (default 5 s).
    pub write_timeout: Duration,
    /// The longest back-off between connection attempts (default 1 s).
    pub max_backoff: Duration,
    /// Mutual TLS (see [`super::tls`]); `None`: plain TCP (default). With
    /// TLS, a peer without a certificate of the cluster's CA is refused at
    /// the TLS handshake, and one whose certificate does not name the
    /// member it says it is, at the `hello`.
    pub tls: Option<TlsIdentity>,
}

impl TcpConfig {
    /// The configuration of member `member_id` of cluster `cluster_id`,
    /// listening on `listen`, with `peers` and the default limits.
    pub fn new(
        cluster_id: u64,
        member_id: u64,
        listen: SocketAddr,
        peers: BTreeMap<u64, SocketAddr>,
    ) -> Self {
        TcpConfig {
            cluster_id,
            member_id,
            listen,
            peers,
            max_frame_bytes: 16 << 20,
            queue_len: 1024,
            snapshot_chunk_bytes: 1 << 20,
            max_snapshot_bytes: 4 << 30,
            connect_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(1),
            tls: None,
        }
    }

    /// Checks the values; the error names the first bad field.
    pub fn validate(&self) -> Result<()> {
        if self.member_id == 0 {
            return Err(Error::config("member_id", "must be non-zero"));
        }
        check_peers(self.member_id, &self.peers)?;
        if self.max_frame_bytes < MAX_HANDSHAKE_BYTES || self.max_frame_bytes > u32::MAX as usize {
            return Err(Error::config(
                "max_frame_bytes",
                format!("must be between {MAX_HANDSHAKE_BYTES} and {}", u32::MAX),
            ));
        }
        if self.queue_len == 0 {
            return Err(Error::config("queue_len", "must be at least 1"));
        }
        if self.snapshot_chunk_bytes == 0
            || self.snapshot_chunk_bytes.saturating_add(CHUNK_SLACK) > self.max_frame_bytes
        {
            return Err(Error::config(
                "snapshot_chunk_bytes",
                "must be at least 1 and leave 64 KiB of max_frame_bytes",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::config("connect_timeout", "must be positive"));
        }
        if self.write_timeout.is_zero() {
            return Err(Error::config("write_timeout", "must be positive"));
        }
        if self.max_backoff.is_zero() {
            return Err(Error::config("max_backoff", "must be positive"));
        }
        if let Some(tls) = &self.tls {
            tls.check_own_name(&member_name(self.cluster_id, self.member_id))?;
        }
        Ok(())
    }
}

/// Checks a set of peers of member `member_id` (the field `peers`).
fn check_peers(member_id: u64, peers: &BTreeMap<u64, SocketAddr>) -> Result<()> {
    if peers.contains_key(&member_id) {
        return Err(Error::config("peers", "must not contain this member"));
    }
    if peers.contains_key(&0) {
        return Err(Error::config("peers", "member ids must be non-zero"));
    }
    Ok(())
}

/// Where a [`TcpTransport`] delivers what it receives and reports how its
/// sending went. [`crate::Node`] implements it. Every method must return
/// quickly: it is called from the transport's threads.
pub trait Inbound: Send + Sync + 'static {
    /// A raft message from a peer (a snapshot once whole).
    fn raft(&self, msg: Message);
    /// A notice from a peer.
    fn notice(&self, n: Notice);
    /// Messages to `peer` could not be delivered (connection failed, lost
    /// or refused).
    fn unreachable(&self, peer: u64);
    /// `peer` can be reached again: a connection to it succeeded after
    /// failures. Ignored unless implemented.
    fn reachable(&self, peer: u64) {
        let _ = peer;
    }
    /// The outcome of a snapshot sent to `peer`: `true` once all its chunks
    /// were written to the socket, `false` when it was dropped.
    fn snapshot_sent(&self, peer: u64, delivered: bool);
}

impl<S: crate::state::StateMachine> Inbound for crate::Node<S> {
    fn raft(&self, msg: Message) {
        self.step(msg);
    }
    fn notice(&self, n: Notice) {
        crate::Node::notice(self, n);
    }
    fn unreachable(&self, peer: u64) {
        self.report_unreachable(peer);
    }
    fn reachable(&self, peer: u64) {
        self.report_reachable(peer);
    }
    fn snapshot_sent(&self, peer: u64, delivered: bool) {
        self.report_snapshot(peer, delivered);
    }
}

/// Counters of a [`TcpTransport`] since it started (see
/// [`TcpTransport::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Connections accepted by the listener.
    pub accepted: u64,
    /// Handshakes this member refused.
    pub refused: u64,
    /// Accepted connections closed for a malformed, truncated or oversized
    /// frame, or another breach of the protocol.
    pub bad_frames: u64,
    /// Outbound connections established.
    pub connected: u64,
    /// Outbound connections whose handshake the peer refused.
    pub refused_by_peer: u64,
    /// Outbound connections that failed or were lost.
    pub lost: u64,
    /// Messages and notices dropped on the sending side (queue full, peer
    /// down, too large).
    pub dropped: u64,
    /// Raft messages (a snapshot once whole) and notices delivered to the
    /// inbound.
    pub delivered: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    bad_frames: AtomicU64,
    connected: AtomicU64,
    refused_by_peer: AtomicU64,
    lost: AtomicU64,
    dropped: AtomicU64,
    delivered: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Who opened a socket.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The listener (an accepted connection).
    Accepted,
    /// The writer with this token (its outbound connection).
    Writer(u64),
}

/// The open sockets, so that shutdown can close them (which also wakes
/// the threads blocked on them).
#[derive(Default)]
struct Sockets {
    stopped: bool,
    next_id: u64,
    /// Each open socket, and who opened it.
    open: HashMap<u64, (TcpStream, Owner)>,
    /// The accepted connection currently serving each member.
    by_member: HashMap<u64, u64>,
}

/// The current peers and their writers.
#[derive(Default)]
struct Members {
    /// Every other member: its id and the address it listens on. Only
    /// these members may connect.
    peers: BTreeMap<u64, SocketAddr>,
    /// The writer of each peer (of every peer in `peers` but one whose
    /// thread could not be started).
    writers: HashMap<u64, WriterHandle>,
}

/// A peer's writer thread, seen from the rest of the transport. Dropping
/// the handle stops the writer.
struct WriterHandle {
    /// The writer's token, the [`Owner`] of its outbound connection.
    token: u64,
    queue: Sender<Out>,
    /// Wakes the writer when the peer's own connection to this member is
    /// accepted (the peer is back: retry now, not after the back-off).
    back: Sender<()>,
    /// Never sent on: dropping it disconnects the writer's `stop`.
    _stop: Sender<()>,
}

/// What the transport's threads share.
///
/// Lock order: `members` before `sockets` (before `threads`); `sockets`
/// is never held while taking `members`.
struct Shared {
    /// The configuration; its `peers` is emptied at the start (the current
    /// set is in `members`).
    cfg: TcpConfig,
    members: RwLock<Members>,
    /// The token of the next writer started.
    next_writer: AtomicU64,
    /// The latest change of the peer set asked for: a change whose names
    /// were still being looked up when a later one was asked for is
    /// dropped ([`TcpTransport::members_changed`]).
    peers_generation: AtomicU64,
    inbound: RwLock<Option<Arc<dyn Inbound>>>,
    sockets: Mutex<Sockets>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stopped: AtomicBool,
    stats: Counters,
}

impl Shared {
    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    fn inbound(&self) -> Option<Arc<dyn Inbound>> {
        self.inbound.read().clone()
    }

    fn deliver_raft(&self, msg: Message) {
        if let Some(i) = self.inbound() {
            bump(&self.stats.delivered);
            i.raft(msg);
        }
    }

    fn deliver_notice(&self, n: Notice) {
        if let Some(i) = self.inbound() {
            bump(&self.stats.delivered);
            i.notice(n);
        }
    }

    fn report_unreachable(&self, peer: u64) {
        if let Some(i) = self.inbound() {
            i.unreachable(peer);
        }
    }

    fn report_reachable(&self, peer: u64) {
        if let Some(i) = self.inbound() {
            i.reachable(peer);
        }
    }

    fn report_snapshot(&self, peer: u64, delivered: bool) {
        if let Some(i) = self.inbound() {
            i.snapshot_sent(peer, delivered);
        }
    }

    /// Records `stream` as open; `None` once the transport is stopped, or
    /// when an accepted stream would exceed the limit of accepted
    /// connections (four per current peer, plus some spare).
    fn register(&self, stream: &TcpStream, owner: Owner) -> Option<u64> {
        let clone = stream.try_clone().ok()?;
        // Read before taking `sockets` (see the lock order).
        let limit = 4 * self.members.read().peers.len() + SPARE_CONNECTIONS;
        let mut s = self.sockets.lock();
        if s.stopped {
            return None;
        }
        if owner == Owner::Accepted
            && s.open
                .values()
                .filter(|(_, o)| *o == Owner::Accepted)
                .count()
                >= limit
        {
            return None;
        }
        s.next_id += 1;
        let id = s.next_id;
        s.open.insert(id, (clone, owner));
        Some(id)
    }

    fn unregister(&self, id: u64) {
        let mut s = self.sockets.lock();
        if let Some((stream, _)) = s.open.remove(&id) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        s.by_member.retain(|_, c| *c != id);
    }

    /// Whether `member` is a current peer.
    fn is_peer(&self, member: u64) -> bool {
        self.members.read().peers.contains_key(&member)
    }

    /// Makes accepted connection `id` the one serving `member` (closing the
    /// previous one) and wakes the member's writer, if `member` is still a
    /// peer; `false` if it is not.
    fn admit(&self, member: u64, id: u64) -> bool {
        // Checked and claimed under `members`, so that `set_peers` cannot
        // remove the member in between and miss this connection.
        let m = self.members.read();
        if !m.peers.contains_key(&member) {
            return false;
        }
        {
            let mut s = self.sockets.lock();
            if let Some(old) = s.by_member.insert(member, id) {
                if let Some((stream, _)) = s.open.remove(&old) {
                    debug!(member, "a new connection replaces the previous one");
                    let _ = stream.shutdown(Shutdown::Both);
                }
            }
        }
        if let Some(w) = m.writers.get(&member) {
            // Never blocks: one pending signal is enough.
            let _ = w.back.try_send(());
        }
        true
    }

    /// Closes the outbound connections of the writers with `tokens` and the
    /// accepted connections serving `members`. The caller holds `members`
    /// (for writing).
    fn close_connections(&self, tokens: &[u64], members: &[u64]) {
        let mut s = self.sockets.lock();
        s.open.retain(|_, (stream, owner)| {
            let close = matches!(owner, Owner::Writer(t) if tokens.contains(t));
            if close {
                let _ = stream.shutdown(Shutdown::Both);
            }
            !close
        });
        for member in members {
            if let Some(id) = s.by_member.remove(member) {
                if let Some((stream, _)) = s.open.remove(&id) {
                    debug!(member, "no longer a peer; its connection is closed");
                    let _ = stream.shutdown(Shutdown::Both);
                }
            }
        }
    }

    /// Starts the writer of `peer` at `addr` and records it in `m` (the
    /// `members` the caller holds for writing).
    fn start_writer(
        self: &Arc<Self>,
        m: &mut Members,
        peer: u64,
        addr: SocketAddr,
    ) -> io::Result<()> {
        let (queue, rx) = channel::bounded(self.cfg.queue_len);
        let (back, back_rx) = channel::bounded(1);
        let (stop, stop_rx) = channel::bounded(0);
        let token = self.next_writer.fetch_add(1, Ordering::Relaxed);
        let writer = Writer {
            shared: self.clone(),
            peer,
            addr,
            token,
            rx,
            back: back_rx,
            stop: stop_rx,
            deferred: VecDeque::new(),
            backoff: MIN_BACKOFF.min(self.cfg.max_backoff),
            failures: 0,
            refused: None,
        };
        let member = self.cfg.member_id;
        self.spawn(format!("aoc-tcp-w{member}-{peer}"), move || writer.run())?;
        m.writers.insert(
            peer,
            WriterHandle {
                token,
                queue,
                back,
                _stop: stop,
            },
        );
        Ok(())
    }

    fn spawn(&self, name: String, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let handle = std::thread::Builder::new().name(name).spawn(f)?;
        let mut threads = self.threads.lock();
        threads.retain(|h| !h.is_finished());
        threads.push(handle);
        Ok(())
    }
}

/// What a writer thread sends.
enum Out {
    Raft(Message),
    Notice(Notice),
}

fn is_snapshot(msg: &Message) -> bool {
    msg.get_msg_type() == MessageType::MsgSnapshot
}

struct Inner {
    shared: Arc<Shared>,
    /// Dropped at shutdown, which wakes the listener.
    stop_tx: Mutex<Option<Sender<()>>>,
    local_addr: SocketAddr,
}

impl Inner {
    fn shutdown(&self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.stop_tx.lock().take();
        // Dropping the writers' handles wakes the writers. (Taken, then
        // dropped once `members` is released.)
        let writers = std::mem::take(&mut self.shared.members.write().writers);
        drop(writers);
        {
            let mut s = self.shared.sockets.lock();
            s.stopped = true;
            for (_, (stream, _)) in s.open.drain() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            s.by_member.clear();
        }
        *self.shared.inbound.write() = None;
        let me = std::thread::current().id();
        // A thread may be added while the first ones are joined (a reader
        // accepted just before the stop): go round until none is left.
        loop {
            let handles = std::mem::take(&mut *self.shared.threads.lock());
            if handles.is_empty() {
                break;
            }
            for h in handles {
                if h.thread().id() != me {
                    let _ = h.join();
                }
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn spawn_error(e: io::Error) -> Error {
    Error::config("threads", format!("cannot start: {e}"))
}

/// The TCP transport (see the module docs). Cloning gives another handle
/// on the same transport; it stops on [`TcpTransport::shutdown`] or when
/// the last handle is dropped.
#[derive(Clone)]
pub struct TcpTransport {
    inner: Arc<Inner>,
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("member_id", &self.inner.shared.cfg.member_id)
            .field("local_addr", &self.inner.local_addr)
            .finish()
    }
}

impl TcpTransport {
    /// Checks `cfg`, binds the listener and starts the threads.
    pub fn start(cfg: TcpConfig) -> Result<TcpTransport> {
        cfg.validate()?;
        let listen = cfg.listen;
        let listener = TcpListener::bind(listen)
            .map_err(|e| Error::config("listen", format!("cannot listen on {listen}: {e}")))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::config("listen", format!("{listen}: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::config("listen", format!("{listen}: {e}")))?;
        let (stop_tx, stop_rx) = channel::bounded::<()>(0);
        let mut cfg = cfg;
        let peers = std::mem::take(&mut cfg.peers);
        let member = cfg.member_id;
        let shared = Arc::new(Shared {
            cfg,
            members: RwLock::new(Members::default()),
            next_writer: AtomicU64::new(1),
            peers_generation: AtomicU64::new(0),
            inbound: RwLock::new(None),
            sockets: Mutex::new(Sockets::default()),
            threads: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            stats: Counters::default(),
        });
        // From here on, dropping `inner` stops whatever was started.
        let inner = Arc::new(Inner {
            shared: shared.clone(),
            stop_tx: Mutex::new(Some(stop_tx)),
            local_addr,
        });
        {
            let mut m = shared.members.write();
            for (&peer, &addr) in &peers {
                shared
                    .start_writer(&mut m, peer, addr)
                    .map_err(spawn_error)?;
            }
            m.peers = peers;
        }
        let s = shared.clone();
        shared
            .spawn(format!("aoc-tcp-listen-{member}"), move || {
                listen_loop(s, listener, stop_rx)
            })
            .map_err(spawn_error)?;
        info!(member, %local_addr, "TCP transport listening");
        Ok(TcpTransport { inner })
    }

    /// Sets where received messages go. Messages received before this are
    /// dropped, and so are the reports (unreachable, snapshot outcomes).
    pub fn set_inbound(&self, inbound: Arc<dyn Inbound>) {
        if !self.inner.shared.is_stopped() {
            *self.inner.shared.inbound.write() = Some(inbound);
        }
    }

    /// Replaces the set of peers: `peers` is the new complete set of the
    /// other members (ids and listening addresses), as
    /// [`TcpConfig::peers`] was at the start.
    ///
    /// * A new id gets a writer, which connects at once.
    /// * A removed id's writer stops: what is queued for it is dropped
    ///   (counted in [`TcpStats::dropped`], a snapshot reported with
    ///   [`Inbound::snapshot_sent`]`(peer, false)`) and its outbound
    ///   connection is closed. Its inbound connection is closed too, and its
    ///   handshakes are refused from now on, as those of any member that is
    ///   not a peer.
    /// * An id whose address changed gets a new writer connecting to the new
    ///   address; what was queued for the old one is dropped, as for a
    ///   removed id. Its inbound connection is kept (until the member
    ///   connects again).
    /// * A peer whose address is unchanged keeps its connections and its
    ///   queue.
    ///
    /// Once this returns, messages to an id not in `peers` are dropped (and
    /// counted in [`TcpStats::dropped`]), as messages to an unknown member
    /// always are. The limit of accepted connections follows the new set.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] (field `peers`) when `peers` contains this
    /// member's own id or id 0: nothing is changed.
    /// [`Error::Stopped`] after [`TcpTransport::shutdown`]. An
    /// [`Error::InvalidConfig`] (field `threads`) when a writer thread
    /// cannot be started: the new set is in place, but the peers whose
    /// writer did not start are not sent to until a later call starts it.
    pub fn set_peers(&self, peers: BTreeMap<u64, SocketAddr>) -> Result<()> {
        self.set_peers_for(self.next_peers_generation(), peers)
    }

    fn next_peers_generation(&self) -> u64 {
        self.inner
            .shared
            .peers_generation
            .fetch_add(1, Ordering::AcqRel)
            + 1
    }

    /// [`TcpTransport::set_peers`] for the change numbered `generation`;
    /// nothing is done when a later change was asked for meanwhile.
    fn set_peers_for(&self, generation: u64, peers: BTreeMap<u64, SocketAddr>) -> Result<()> {
        let shared = &self.inner.shared;
        check_peers(shared.cfg.member_id, &peers)?;
        let mut m = shared.members.write();
        // Checked under `members`: `shutdown` sets the flag before it takes
        // the writers, so no writer started here outlives it.
        if shared.is_stopped() {
            return Err(Error::Stopped);
        }
        // Under `members` too: a later change cannot be applied between
        // this check and this change, so the last change asked for is the
        // last applied.
        if shared.peers_generation.load(Ordering::Acquire) != generation {
            debug!(
                generation,
                "a later change of the peers supersedes this one"
            );
            return Ok(());
        }
        let removed: Vec<u64> = m
            .peers
            .keys()
            .filter(|id| !peers.contains_key(id))
            .copied()
            .collect();
        let moved: Vec<u64> = m
            .peers
            .iter()
            .filter(|&(id, addr)| peers.get(id).is_some_and(|a| a != addr))
            .map(|(&id, _)| id)
            .collect();
        // A writer's address is fixed: a peer that moved gets a new writer
        // (with a fresh back-off and connection) rather than a redirected
        // one, which could be in the middle of a write to the old address.
        let mut stopped = Vec::new();
        for id in removed.iter().chain(&moved) {
            // Dropping the handle stops the writer; the writer drops what
            // is queued when it sees the stop.
            if let Some(w) = m.writers.remove(id) {
                stopped.push(w.token);
            }
        }
        m.peers = peers;
        // Closing the sockets wakes a stopped writer blocked in a write, and
        // ends the readers of removed members. (A stopped writer that
        // registers a connection after this sees the stop and closes it.)
        shared.close_connections(&stopped, &removed);
        for id in &removed {
            info!(peer = id, "no longer a peer");
        }
        let mut result = Ok(());
        let wanted: Vec<(u64, SocketAddr)> = m
            .peers
            .iter()
            .filter(|(id, _)| !m.writers.contains_key(id))
            .map(|(&id, &addr)| (id, addr))
            .collect();
        for (id, addr) in wanted {
            match shared.start_writer(&mut m, id, addr) {
                Ok(()) if moved.contains(&id) => info!(peer = id, %addr, "peer moved"),
                Ok(()) => info!(peer = id, %addr, "peer added"),
                Err(e) => {
                    warn!(peer = id, %addr, error = %e, "cannot start the peer's writer");
                    result = Err(spawn_error(e));
                }
            }
        }
        result
    }

    /// The current set of peers (see [`TcpTransport::set_peers`]).
    pub fn peers(&self) -> BTreeMap<u64, SocketAddr> {
        self.inner.shared.members.read().peers.clone()
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The counters since the start.
    pub fn stats(&self) -> TcpStats {
        let c = &self.inner.shared.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TcpStats {
            accepted: get(&c.accepted),
            refused: get(&c.refused),
            bad_frames: get(&c.bad_frames),
            connected: get(&c.connected),
            refused_by_peer: get(&c.refused_by_peer),
            lost: get(&c.lost),
            dropped: get(&c.dropped),
            delivered: get(&c.delivered),
        }
    }

    /// Stops the threads and closes every socket (the listener included,
    /// so the port can be bound again). Messages still queued are dropped.
    /// Waits for the threads, at most about `connect_timeout`.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    fn enqueue(&self, to: u64, out: Out, snapshot: bool) {
        let shared = &self.inner.shared;
        // `Some(queued)` for a peer, `None` for an unknown member. (A full
        // queue's rejected message is dropped under the lock: freeing it is
        // all that takes.)
        let queued = shared
            .members
            .read()
            .writers
            .get(&to)
            .map(|w| w.queue.try_send(out).is_ok());
        // The lock is released: the inbound may call back into the transport.
        match queued {
            Some(true) => return,
            Some(false) => tracing::trace!(to, "peer queue full; message dropped"),
            None => debug!(to, "message to an unknown member dropped"),
        }
        bump(&shared.stats.dropped);
        if snapshot {
            shared.report_snapshot(to, false);
        }
    }
}

impl Transport for TcpTransport {
    fn send(&self, msg: Message) {
        let snapshot = is_snapshot(&msg);
        self.enqueue(msg.to, Out::Raft(msg), snapshot);
    }

    fn send_notice(&self, notice: Notice) {
        self.enqueue(notice.to, Out::Notice(notice), false);
    }

    /// Reaches every member in `ids`: at the directory's address when it
    /// has one, else at the address already known (the configuration's).
    /// A member with neither, or whose address does not resolve, is left
    /// out with a warning; a member no longer in `ids` is cut off.
    /// Addresses given as IP and port apply at once. When one is a host
    /// name, its lookup (DNS, which can take seconds) runs in a thread of
    /// its own, not in the caller's (the raft thread): the new peers apply
    /// when it returns, unless a later change was asked for meanwhile.
    fn members_changed(&self, ids: &[u64], directory: &[crate::Member]) {
        let generation = self.next_peers_generation();
        let lookups = directory
            .iter()
            .any(|m| ids.contains(&m.id) && m.ha_addr.parse::<SocketAddr>().is_err());
        if !lookups {
            self.apply_members(generation, ids, directory);
            return;
        }
        // A weak handle: a lookup does not keep a stopped transport alive.
        let weak = Arc::downgrade(&self.inner);
        let (ids_owned, directory_owned) = (ids.to_vec(), directory.to_vec());
        let spawned = std::thread::Builder::new()
            .name(format!("aoc-resolve-{}", self.inner.shared.cfg.member_id))
            .spawn(move || {
                if let Some(inner) = weak.upgrade() {
                    TcpTransport { inner }.apply_members(generation, &ids_owned, &directory_owned);
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a thread to look up member addresses; looking up here");
            self.apply_members(generation, ids, directory);
        }
    }
}

impl TcpTransport {
    /// The peers for `ids` (this member left out): each at its address in
    /// `directory` if it has one there, else at the address known so far.
    fn apply_members(&self, generation: u64, ids: &[u64], directory: &[crate::Member]) {
        let me = self.inner.shared.cfg.member_id;
        let known = self.peers();
        let mut next = BTreeMap::new();
        for &id in ids.iter().filter(|id| **id != me) {
            let from_directory = directory.iter().find(|m| m.id == id).and_then(|m| {
                match m.ha_addr.to_socket_addrs().map(|mut a| a.next()) {
                    Ok(Some(addr)) => Some(addr),
                    Ok(None) | Err(_) => {
                        warn!(member = me, peer = id, addr = %m.ha_addr, "cannot resolve a member's ha_addr");
                        None
                    }
                }
            });
            match from_directory.or_else(|| known.get(&id).copied()) {
                Some(addr) => {
                    next.insert(id, addr);
                }
                None => warn!(
                    member = me,
                    peer = id,
                    "no address for a member: add it to this member's configuration"
                ),
            }
        }
        if next != known {
            info!(member = me, peers = ?next, "members changed");
            if let Err(e) = self.set_peers_for(generation, next) {
                warn!(member = me, error = %e, "cannot update the peers");
            }
        }
    }
}

/// Why an outbound connection ended.
enum Lost {
    /// The peer refused the handshake, with its reason.
    Refused(String),
    /// Anything else.
    Failed(String),
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::Refused(r) => write!(f, "handshake refused: {r}"),
            Lost::Failed(r) => f.write_str(r),
        }
    }
}

impl From<io::Error> for Lost {
    fn from(e: io::Error) -> Self {
        Lost::Failed(format!("write failed: {e}"))
    }
}

/// An outbound connection.
struct Conn {
    /// For polling the peer and for closing.
    stream: TcpStream,
    out: BufWriter<Stream>,
    /// The registration in [`Sockets`].
    id: u64,
    since: Instant,
    /// Bytes received from the accepting side (only a refusal is expected).
    incoming: Vec<u8>,
}

/// The writer thread of one peer.
struct Writer {
    shared: Arc<Shared>,
    peer: u64,
    addr: SocketAddr,
    /// This writer's token (see [`Owner::Writer`]).
    token: u64,
    rx: Receiver<Out>,
    /// Signalled when the peer connected to this member (see
    /// [`WriterHandle::back`]).
    back: Receiver<()>,
    /// Disconnected when the writer must stop: at shutdown, or when the
    /// peer is removed or moves (see [`TcpTransport::set_peers`]).
    stop: Receiver<()>,
    /// Snapshots taken off the queue while another one was being streamed.
    deferred: VecDeque<Message>,
    backoff: Duration,
    /// Failed connection attempts since the last success.
    failures: u32,
    /// The reason of the last refusal, until a connection is accepted (so
    /// that a refusal repeated on every attempt is logged once).
    refused: Option<String>,
}

/// What a wait brought.
enum Wake {
    Stop,
    Item(Out),
    Idle,
    /// The peer connected to this member: it is up again.
    PeerBack,
}

impl Writer {
    fn run(mut self) {
        let mut conn: Option<Conn> = None;
        let mut next_attempt = Instant::now();
        while !self.stopping() {
            let Some(c) = conn.as_mut() else {
                let now = Instant::now();
                if now < next_attempt {
                    // The peer is down: what arrives meanwhile is dropped.
                    match self.wait(next_attempt - now) {
                        Wake::Stop => break,
                        Wake::Item(item) => self.drop_item(item),
                        Wake::Idle => {}
                        Wake::PeerBack => {
                            // A restarted peer gets its messages (a lagging
                            // member its catch-up) now, not up to
                            // `max_backoff` later.
                            debug!(peer = self.peer, "the peer connected to us; retrying now");
                            next_attempt = Instant::now();
                            self.backoff = MIN_BACKOFF.min(self.shared.cfg.max_backoff);
                        }
                    }
                    continue;
                }
                match self.connect() {
                    Ok(c) => conn = Some(c),
                    Err(_) if self.stopping() => break,
                    Err(reason) => {
                        self.connect_failed(&reason);
                        next_attempt = Instant::now() + self.backoff;
                        self.backoff = (self.backoff * 2).min(self.shared.cfg.max_backoff);
                    }
                }
                continue;
            };
            let result = match self.deferred.pop_front() {
                Some(snapshot) => self.write_batch(c, Out::Raft(snapshot)),
                None => match self.wait(IDLE_POLL) {
                    Wake::Stop => break,
                    Wake::Idle | Wake::PeerBack => poll_peer(c),
                    Wake::Item(item) => match poll_peer(c) {
                        Ok(()) => self.write_batch(c, item),
                        Err(lost) => {
                            self.drop_item(item);
                            Err(lost)
                        }
                    },
                },
            };
            if result.is_ok() && self.refused.is_some() && c.since.elapsed() >= STABLE {
                self.refused = None;
                info!(peer = self.peer, addr = %self.addr, "the peer accepts the connection again");
            }
            if let Err(lost) = result {
                if let Some(c) = conn.take() {
                    next_attempt = self.lose(c, lost);
                }
            }
        }
        if let Some(c) = conn.take() {
            self.shared.unregister(c.id);
        }
        if !self.shared.is_stopped() {
            // The peer was removed or moved: what is queued for this writer
            // is dropped (and reported) rather than left unaccounted for.
            self.drop_queued();
        }
    }

    /// Whether the writer must stop (see [`Writer::stop`]).
    fn stopping(&self) -> bool {
        self.shared.is_stopped()
            || matches!(
                self.stop.try_recv(),
                Err(channel::TryRecvError::Disconnected)
            )
    }

    /// Waits up to `timeout` for a message or the stop.
    fn wait(&self, timeout: Duration) -> Wake {
        let wake = channel::select! {
            recv(self.stop) -> _ => Wake::Stop,
            recv(self.rx) -> item => match item {
                Ok(item) => Wake::Item(item),
                Err(_) => Wake::Stop,
            },
            recv(self.back) -> signal => match signal {
                Ok(()) => Wake::PeerBack,
                Err(_) => Wake::Stop,
            },
            default(timeout) => Wake::Idle,
        };
        match wake {
            // Several channels may be ready at once: the stop wins.
            Wake::Item(item) if self.stopping() => {
                self.drop_item(item);
                Wake::Stop
            }
            wake => wake,
        }
    }

    fn drop_item(&self, item: Out) {
        bump(&self.shared.stats.dropped);
        if let Out::Raft(m) = item {
            if is_snapshot(&m) {
                self.shared.report_snapshot(self.peer, false);
            }
        }
    }

    /// Drops everything queued for the peer.
    fn drop_queued(&mut self) {
        while let Ok(item) = self.rx.try_recv() {
            self.drop_item(item);
        }
        for m in std::mem::take(&mut self.deferred) {
            self.drop_item(Out::Raft(m));
        }
    }

    fn connect(&mut self) -> std::result::Result<Conn, String> {
        let cfg = &self.shared.cfg;
        let started = Instant::now();
        let stream = TcpStream::connect_timeout(&self.addr, cfg.connect_timeout)
            .map_err(|e| format!("cannot connect: {e}"))?;
        let setup = |s: &TcpStream| -> io::Result<TcpStream> {
            s.set_nodelay(true)?;
            s.set_write_timeout(Some(cfg.write_timeout))?;
            s.try_clone()
        };
        let clone = setup(&stream).map_err(|e| format!("cannot set the socket up: {e}"))?;
        let id = self
            .shared
            .register(&stream, Owner::Writer(self.token))
            .ok_or_else(|| "the transport is stopping".to_string())?;
        // After the registration: `set_peers` closes this writer's sockets
        // after it signals the stop, so a socket registered later is seen
        // here.
        if self.stopping() {
            self.shared.unregister(id);
            return Err("the writer is stopping".into());
        }
        // TLS: the peer's certificate must name the member dialled.
        let io = Stream::connect(
            clone,
            cfg.tls.as_ref(),
            &member_name(cfg.cluster_id, self.peer),
            started + cfg.connect_timeout,
        )
        .and_then(|io| {
            io.tcp().set_read_timeout(None)?;
            io.tcp().set_write_timeout(Some(cfg.write_timeout))?;
            Ok(io)
        });
        let io = match io {
            Ok(io) => io,
            Err(e) => {
                self.shared.unregister(id);
                return Err(format!("TLS handshake failed: {e}"));
            }
        };
        let mut conn = Conn {
            stream,
            out: BufWriter::with_capacity(IO_BUFFER, io),
            id,
            since: Instant::now(),
            incoming: Vec::new(),
        };
        let mut hello = Handshake::new();
        hello.cluster_id = cfg.cluster_id;
        hello.member_id = cfg.member_id;
        hello.protocol_version = PROTOCOL_VERSION;
        hello.min_protocol_version = MIN_WRITE_PROTOCOL_VERSION;
        let mut frame = Frame::new();
        frame.set_hello(hello);
        let sent = encode_frame(&frame, cfg.max_frame_bytes)
            .and_then(|bytes| conn.out.write_all(&bytes).map_err(|e| e.to_string()))
            .and_then(|()| conn.out.flush().map_err(|e| e.to_string()));
        if let Err(e) = sent {
            self.shared.unregister(id);
            return Err(format!("cannot send the handshake: {e}"));
        }
        bump(&self.shared.stats.connected);
        if self.failures > 0 && self.refused.is_none() {
            info!(peer = self.peer, addr = %self.addr, "connected to the peer again");
            self.shared.report_reachable(self.peer);
        } else {
            debug!(peer = self.peer, addr = %self.addr, "connected to the peer");
        }
        self.failures = 0;
        Ok(conn)
    }

    fn connect_failed(&mut self, reason: &str) {
        self.failures += 1;
        bump(&self.shared.stats.lost);
        if self.failures == 1 {
            warn!(peer = self.peer, addr = %self.addr, reason, "peer unreachable; retrying with back-off");
        } else {
            debug!(peer = self.peer, addr = %self.addr, reason, attempt = self.failures, "peer still unreachable");
        }
        self.shared.report_unreachable(self.peer);
        self.drop_queued();
    }

    /// Closes a connection that failed; returns when to reconnect.
    fn lose(&mut self, c: Conn, lost: Lost) -> Instant {
        self.shared.unregister(c.id);
        let now = Instant::now();
        if self.stopping() {
            return now;
        }
        match &lost {
            Lost::Refused(reason) => {
                bump(&self.shared.stats.refused_by_peer);
                if self.refused.as_ref() == Some(reason) {
                    debug!(peer = self.peer, addr = %self.addr, reason = %reason, "the peer refused the connection again");
                } else {
                    warn!(peer = self.peer, addr = %self.addr, reason = %reason, "the peer refused the connection");
                    self.refused = Some(reason.clone());
                }
            }
            Lost::Failed(reason) => {
                bump(&self.shared.stats.lost);
                warn!(peer = self.peer, addr = %self.addr, reason = %reason, "connection to the peer lost");
            }
        }
        self.shared.report_unreachable(self.peer);
        // A connection that worked for a while is re-established at once; a
        // refusal or a connection that keeps failing backs off.
        let stable = matches!(lost, Lost::Failed(_)) && now.duration_since(c.since) >= STABLE;
        if stable {
            self.backoff = MIN_BACKOFF.min(self.shared.cfg.max_backoff);
            now
        } else {
            self.failures += 1;
            let at = now + self.backoff;
            self.backoff = (self.backoff * 2).min(self.shared.cfg.max_backoff);
            at
        }
    }

    /// Writes `first` and whatever else is queued (up to a bound), then
    /// flushes.
    fn write_batch(&mut self, c: &mut Conn, first: Out) -> std::result::Result<(), Lost> {
        self.write_item(c, first)?;
        for _ in 0..self.shared.cfg.queue_len {
            if !self.deferred.is_empty() {
                break;
            }
            match self.rx.try_recv() {
                Ok(item) => self.write_item(c, item)?,
                Err(_) => break,
            }
        }
        c.out.flush()?;
        Ok(())
    }

    fn write_item(&mut self, c: &mut Conn, item: Out) -> std::result::Result<(), Lost> {
        let mut frame = Frame::new();
        match item {
            Out::Notice(n) => frame.set_notice(n),
            Out::Raft(m) if is_snapshot(&m) => return self.write_snapshot(c, m),
            Out::Raft(m) => match m.write_to_bytes() {
                Ok(bytes) => frame.set_raft(bytes),
                Err(e) => {
                    warn!(peer = self.peer, error = %e, "cannot encode a raft message; dropped");
                    bump(&self.shared.stats.dropped);
                    return Ok(());
                }
            },
        }
        self.write_frame(c, &frame)?;
        Ok(())
    }

    /// Writes one frame; `Ok(false)` when it cannot be encoded within the
    /// frame limit (it is dropped).
    fn write_frame(&self, c: &mut Conn, frame: &Frame) -> std::result::Result<bool, Lost> {
        match encode_frame(frame, self.shared.cfg.max_frame_bytes) {
            Ok(bytes) => {
                c.out.write_all(&bytes)?;
                Ok(true)
            }
            Err(e) => {
                warn!(peer = self.peer, reason = %e, "frame dropped");
                bump(&self.shared.stats.dropped);
                Ok(false)
            }
        }
    }

    /// Streams a snapshot in chunks, with queued messages in between.
    fn write_snapshot(&mut self, c: &mut Conn, msg: Message) -> std::result::Result<(), Lost> {
        let peer = self.peer;
        let Some(chunks) = split_snapshot(&msg, self.shared.cfg.snapshot_chunk_bytes) else {
            return Ok(());
        };
        // The chunks hold the data (shared, not copied); the message is
        // not needed any more.
        drop(msg);
        let count = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            if self.stopping() {
                self.shared.report_snapshot(peer, false);
                return Err(Lost::Failed("the writer is stopping".into()));
            }
            if i > 0 {
                if let Err(e) = self.interleave(c) {
                    self.shared.report_snapshot(peer, false);
                    return Err(e);
                }
            }
            let mut frame = Frame::new();
            frame.set_chunk(chunk);
            match self.write_frame(c, &frame) {
                Ok(true) => {}
                Ok(false) => {
                    self.shared.report_snapshot(peer, false);
                    return Ok(());
                }
                Err(e) => {
                    self.shared.report_snapshot(peer, false);
                    return Err(e);
                }
            }
        }
        if let Err(e) = c.out.flush() {
            self.shared.report_snapshot(peer, false);
            return Err(e.into());
        }
        debug!(peer, chunks = count, "snapshot sent");
        self.shared.report_snapshot(peer, true);
        Ok(())
    }

    /// Between two chunks: writes a few queued messages; snapshots wait.
    fn interleave(&mut self, c: &mut Conn) -> std::result::Result<(), Lost> {
        for _ in 0..INTERLEAVE {
            match self.rx.try_recv() {
                Ok(Out::Raft(m)) if is_snapshot(&m) => {
                    if self.deferred.len() >= self.shared.cfg.queue_len {
                        self.drop_item(Out::Raft(m));
                    } else {
                        self.deferred.push_back(m);
                    }
                }
                Ok(item) => self.write_item(c, item)?,
                Err(_) => break,
            }
        }
        Ok(())
    }
}

/// Encodes a frame with its length prefix.
fn encode_frame(frame: &Frame, max: usize) -> std::result::Result<Vec<u8>, String> {
    let len = frame.compute_size() as usize;
    if len > max {
        return Err(format!("frame of {len} bytes exceeds the limit of {max}"));
    }
    let mut bytes = Vec::with_capacity(4 + len);
    bytes.extend_from_slice(&(len as u32).to_be_bytes());
    frame
        .write_to_vec(&mut bytes)
        .map_err(|e| format!("cannot encode a frame: {e}"))?;
    Ok(bytes)
}

/// Reads, without blocking, what the accepting side sent: nothing is
/// expected but a refusal, or the end of the connection.
fn poll_peer(c: &mut Conn) -> std::result::Result<(), Lost> {
    c.stream
        .set_nonblocking(true)
        .map_err(|e| Lost::Failed(format!("socket: {e}")))?;
    let mut buf = [0u8; 4096];
    let mut ended = None;
    loop {
        match c.out.get_mut().read(&mut buf) {
            Ok(0) => {
                ended = Some("closed by the peer".to_string());
                break;
            }
            Ok(n) => {
                c.incoming.extend_from_slice(&buf[..n]);
                if c.incoming.len() > MAX_HANDSHAKE_BYTES + 4 {
                    ended = Some("unexpected data from the peer".to_string());
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                ended = Some(format!("connection error: {e}"));
                break;
            }
        }
    }
    let restored = c.stream.set_nonblocking(false);
    if c.incoming.len() >= 4 {
        let mut len = [0u8; 4];
        len.copy_from_slice(&c.incoming[..4]);
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_HANDSHAKE_BYTES {
            return Err(Lost::Failed("unexpected data from the peer".into()));
        }
        if c.incoming.len() >= 4 + len {
            return Err(match Frame::parse_from_bytes(&c.incoming[4..4 + len]) {
                Ok(Frame {
                    body: Some(Frame_oneof_body::refused(r)),
                    ..
                }) => Lost::Refused(r.reason),
                _ => Lost::Failed("unexpected frame from the peer".into()),
            });
        }
    }
    if let Some(reason) = ended {
        return Err(Lost::Failed(reason));
    }
    restored.map_err(|e| Lost::Failed(format!("socket: {e}")))
}

fn listen_loop(shared: Arc<Shared>, listener: TcpListener, stop: Receiver<()>) {
    let member = shared.cfg.member_id;
    while !shared.is_stopped() {
        match listener.accept() {
            Ok((stream, addr)) => {
                bump(&shared.stats.accepted);
                if let Err(e) = stream.set_nonblocking(false) {
                    warn!(peer = %addr, error = %e, "cannot set up an accepted connection");
                    continue;
                }
                let Some(id) = shared.register(&stream, Owner::Accepted) else {
                    if !shared.is_stopped() {
                        warn!(peer = %addr, "too many connections; this one is closed");
                    }
                    continue;
                };
                let s = shared.clone();
                let spawned = shared.spawn(format!("aoc-tcp-r{member}"), move || {
                    serve(&s, stream, addr, id);
                    s.unregister(id);
                });
                if let Err(e) = spawned {
                    warn!(peer = %addr, error = %e, "cannot start a reader thread; connection closed");
                    shared.unregister(id);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(channel::RecvTimeoutError::Disconnected) = stop.recv_timeout(ACCEPT_POLL)
                {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of descriptors, for example: wait and try again.
                warn!(error = %e, "accept failed");
                if let Err(channel::RecvTimeoutError::Disconnected) = stop.recv_timeout(ACCEPT_POLL)
                {
                    break;
                }
            }
        }
    }
}

/// Why a frame could not be read.
enum FrameError {
    /// The connection ended between frames.
    Closed,
    Truncated {
        expected: usize,
        got: usize,
    },
    Oversized {
        len: usize,
        limit: usize,
    },
    Malformed(String),
    Io(io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Closed => f.write_str("connection closed"),
            FrameError::Truncated { expected, got } => write!(
                f,
                "truncated frame: the connection ended after {got} of {expected} bytes"
            ),
            FrameError::Oversized { len, limit } => {
                write!(f, "oversized frame: {len} bytes, limit {limit}")
            }
            FrameError::Malformed(r) => write!(f, "malformed frame: {r}"),
            FrameError::Io(e) => write!(f, "read failed: {e}"),
        }
    }
}

/// Reads into `buf` until it is full or the stream ends; returns how many
/// bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn read_frame(r: &mut impl Read, max: usize) -> std::result::Result<Frame, FrameError> {
    let mut len = [0u8; 4];
    match read_full(r, &mut len).map_err(FrameError::Io)? {
        0 => return Err(FrameError::Closed),
        4 => {}
        got => return Err(FrameError::Truncated { expected: 4, got }),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::Oversized { len, limit: max });
    }
    let mut buf = vec![0u8; len];
    let got = read_full(r, &mut buf).map_err(FrameError::Io)?;
    if got < len {
        return Err(FrameError::Truncated {
            expected: 4 + len,
            got: 4 + got,
        });
    }
    let frame = Frame::parse_from_bytes(&buf).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if frame.body.is_none() {
        return Err(FrameError::Malformed("a frame without a body".into()));
    }
    Ok(frame)
}

/// Checks a handshake (`is_peer`: whether its member is a current peer);
/// the error is the reason for the refusal.
fn check_hello(cfg: &TcpConfig, is_peer: bool, h: &Handshake) -> std::result::Result<(), String> {
    check_version(h.member_id, h.protocol_version, h.min_protocol_version)?;
    if h.cluster_id != cfg.cluster_id {
        return Err(format!(
            "cluster id {} does not match this member's cluster id {}",
            h.cluster_id, cfg.cluster_id
        ));
    }
    if h.member_id == cfg.member_id {
        return Err(format!("member id {} is this member's own id", h.member_id));
    }
    if !is_peer {
        return Err(not_a_peer(h.member_id));
    }
    Ok(())
}

/// The reason for refusing a member that is not a current peer.
fn not_a_peer(member: u64) -> String {
    format!("member id {member} is not a configured peer")
}

/// Checks the versions of a handshake from `member` (see
/// [`MIN_READ_PROTOCOL_VERSION`]); the error says which side is too old.
fn check_version(member: u64, speaks: u32, min_reader: u32) -> std::result::Result<(), String> {
    // The first version sent no minimum: its frames were its own.
    let min_reader = if min_reader == 0 { speaks } else { min_reader };
    if speaks < MIN_READ_PROTOCOL_VERSION {
        return Err(format!(
            "member {member} is too old: it speaks protocol version {speaks}, and this member \
             (version {PROTOCOL_VERSION}) reads versions {MIN_READ_PROTOCOL_VERSION} and later; \
             upgrade member {member}"
        ));
    }
    if min_reader > speaks {
        return Err(format!(
            "member {member} sent a malformed handshake: the oldest version its frames suit \
             ({min_reader}) is above the version it speaks ({speaks})"
        ));
    }
    if min_reader > PROTOCOL_VERSION {
        return Err(format!(
            "member {member} is too new: its frames (protocol version {speaks}) need readers of \
             version {min_reader} or later, and this member speaks version {PROTOCOL_VERSION}; \
             upgrade this member first"
        ));
    }
    Ok(())
}

/// Sends a refusal and closes the connection gracefully: after the
/// refusal, what the peer still sends is read and discarded for a moment,
/// so that the close does not reset the connection before the refusal is
/// read.
fn refuse(io: &mut Stream, reason: String) {
    let mut refused = HandshakeRefused::new();
    refused.reason = reason;
    let mut frame = Frame::new();
    frame.set_refused(refused);
    if let Ok(bytes) = encode_frame(&frame, MAX_HANDSHAKE_BYTES) {
        let _ = io.tcp().set_write_timeout(Some(LINGER));
        let _ = io.write_all(&bytes).and_then(|()| io.flush());
    }
    let _ = io.tcp().shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    let mut discarded = 0usize;
    while discarded < (1 << 20) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || io.tcp().set_read_timeout(Some(left)).is_err() {
            break;
        }
        match io.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => discarded += n,
        }
    }
}

/// Reads from a socket until a deadline: each read waits at most for the
/// time left, and none starts after it.
struct DeadlineRead<'a> {
    stream: &'a mut Stream,
    deadline: Instant,
}

impl Read for DeadlineRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("not complete within {HANDSHAKE_TIMEOUT:?}"),
            ));
        }
        self.stream.tcp().set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

/// Serves one accepted connection until it ends.
fn serve(shared: &Shared, stream: TcpStream, addr: SocketAddr, id: u64) {
    let cfg = &shared.cfg;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let setup = stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)));
    if let Err(e) = setup {
        warn!(peer = %addr, error = %e, "cannot set up an accepted connection");
        return;
    }
    let bad = |reason: &dyn fmt::Display| {
        if !shared.is_stopped() {
            bump(&shared.stats.bad_frames);
            warn!(peer = %addr, reason = %reason, "closing the connection");
        }
    };
    // The whole handshake must arrive within HANDSHAKE_TIMEOUT (a sender
    // trickling a byte at a time does not hold the connection), read
    // unbuffered so that nothing after it is consumed here.
    // TLS first (within the same deadline): a peer without a certificate
    // of the cluster's CA goes no further.
    let mut io = match Stream::accept(stream, cfg.tls.as_ref(), deadline) {
        Ok(io) => io,
        Err(e) => return bad(&format_args!("TLS handshake failed: {e}")),
    };
    let mut handshake = DeadlineRead {
        stream: &mut io,
        deadline,
    };
    let hello = match read_frame(&mut handshake, MAX_HANDSHAKE_BYTES) {
        Ok(Frame {
            body: Some(Frame_oneof_body::hello(h)),
            ..
        }) => h,
        Ok(_) => return bad(&"the first frame is not a handshake"),
        Err(FrameError::Closed) => {
            debug!(peer = %addr, "connection closed before its handshake");
            return;
        }
        Err(e) => return bad(&format_args!("no valid handshake: {e}")),
    };
    // With TLS, the member the peer says it is must be the one its
    // certificate names.
    let checked = check_hello(cfg, shared.is_peer(hello.member_id), &hello).and_then(|()| {
        io.peer_is(&member_name(cfg.cluster_id, hello.member_id))
            .map_err(|e| format!("member {}: {e}", hello.member_id))
    });
    // Admitted only if still a peer: `set_peers` may have removed the
    // member since the check.
    let checked = checked.and_then(|()| {
        if shared.admit(hello.member_id, id) {
            Ok(())
        } else {
            Err(not_a_peer(hello.member_id))
        }
    });
    if let Err(reason) = checked {
        bump(&shared.stats.refused);
        warn!(peer = %addr, member = hello.member_id, cluster = hello.cluster_id, reason = %reason, "handshake refused");
        refuse(&mut io, reason);
        return;
    }
    let member = hello.member_id;
    if let Err(e) = io.tcp().set_read_timeout(None) {
        warn!(peer = %addr, error = %e, "cannot set up an accepted connection");
        return;
    }
    debug!(peer = %addr, member, "connection accepted");
    let mut reader = BufReader::with_capacity(IO_BUFFER, io);
    let mut reassembler = Reassembler::new(cfg.max_snapshot_bytes);
    loop {
        let frame = match read_frame(&mut reader, cfg.max_frame_bytes) {
            Ok(f) => f,
            Err(FrameError::Closed) => {
                debug!(peer = %addr, member, "connection closed");
                return;
            }
            Err(FrameError::Io(e)) if shared.is_stopped() => {
                debug!(peer = %addr, member, error = %e, "connection closed at shutdown");
                return;
            }
            Err(e) => return bad(&e),
        };
        let Some(body) = frame.body else {
            return bad(&"a frame without a body");
        };
        match body {
            Frame_oneof_body::raft(bytes) => {
                let msg = match Message::parse_from_bytes(&bytes) {
                    Ok(m) => m,
                    Err(e) => return bad(&format_args!("malformed raft message: {e}")),
                };
                if msg.from != member {
                    warn!(peer = %addr, member, from = msg.from, "raft message from another member than the handshake's; dropped");
                } else if msg.to != cfg.member_id {
                    debug!(peer = %addr, member, to = msg.to, "raft message for another member; dropped");
                } else {
                    shared.deliver_raft(msg);
                }
            }
            Frame_oneof_body::notice(n) => {
                if n.from != member {
                    warn!(peer = %addr, member, from = n.from, "notice from another member than the handshake's; dropped");
                } else if n.to != cfg.member_id {
                    debug!(peer = %addr, member, to = n.to, "notice for another member; dropped");
                } else {
                    shared.deliver_notice(n);
                }
            }
            Frame_oneof_body::chunk(c) => {
                if c.from != member {
                    warn!(peer = %addr, member, from = c.from, "snapshot chunk from another member than the handshake's; dropped");
                    continue;
                }
                match reassembler.push(c) {
                    Ok(Some(msg)) if msg.to == cfg.member_id => shared.deliver_raft(msg),
                    Ok(Some(msg)) => {
                        debug!(peer = %addr, member, to = msg.to, "snapshot for another member; dropped");
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(peer = %addr, member, error = %e, "snapshot stream broken; discarded");
                    }
                }
            }
            Frame_oneof_body::hello(_) => return bad(&"a second handshake"),
            Frame_oneof_body::refused(_) => return bad(&"a refusal sent to the accepting side"),
        }
    }
}
