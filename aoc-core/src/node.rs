//! The threaded node: a [`Replica`] driven by real time, a real log store,
//! a state machine and a [`Transport`].
//!
//! Two threads per node:
//! - the raft thread owns the replica. It takes ticks, peer messages and
//!   requests (many at a time: proposals that arrive together become one
//!   raft ready and one synced write), sends messages, applies entries and
//!   completes requests;
//! - the log thread persists the replica's writes: every write queued
//!   while it was syncing is merged into the next one (group commit), and
//!   each completion is reported back to the raft thread, which only then
//!   releases the messages and acknowledgements that depend on it.
//!
//! ```
//! use aoc_core::{Node, ReplicaConfig};
//! use aoc_core::state::{KvCommand, KvStateMachine, MemKv};
//! use aoc_core::storage::MemLogStore;
//!
//! # fn main() -> aoc_core::Result<()> {
//! // A standalone member: one voter, committing on its own synced write.
//! let node = Node::builder(ReplicaConfig::new(1))
//!     .voters(vec![1])
//!     .start(MemLogStore::new(), MemKv::new())?;
//! node.propose(KvCommand::put("greeting", "hello").encode())?;
//! let value = node.read(|kv| kv.get(b"greeting"))??;
//! assert_eq!(value.as_deref(), Some(&b"hello"[..]));
//! node.shutdown();
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use raft::eraftpb::Message;
use tracing::{debug, error, info, info_span, warn};

use crate::bootstrap::{Bootstrap, Decision};
use crate::proto::Notice;
use crate::state::StateMachine;
use crate::storage::{LogStore, LogWrite};
use crate::transport::Transport;
use crate::{
    Error, Event, Member, MembershipChange, Ready, Replica, ReplicaConfig, Result, StateSnapshot,
    Status,
};

/// How often the raft thread polls a snapshot read in progress when no
/// input wakes it.
const SNAPSHOT_POLL: Duration = Duration::from_millis(2);

/// How long [`Node::read_snapshot`] waits for its snapshot: reading a
/// large state takes seconds (sled: about 1 us per key), and the member
/// serves on meanwhile.
pub const SNAPSHOT_READ_TIMEOUT: Duration = Duration::from_secs(600);

/// The response of an applied proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The index of the entry.
    pub index: u64,
    /// The state machine's response.
    pub response: Vec<u8>,
}

/// A read waiting for its barrier: run with the state machine and the term
/// of its applied entry (see [`Node::read_applied`]), or with the error.
type ReadFn<S> = Box<dyn FnOnce(Result<(&S, Option<u64>)>) + Send>;

/// A completion run on the raft thread with a request's outcome: keep it
/// short (the client server's only queues the outcome and wakes its loop).
pub(crate) type Done<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// Where the outcome of a proposal goes: a caller blocked on a channel,
/// or a completion.
enum Reply<T> {
    Channel(Sender<Result<T>>),
    Call(Done<T>),
}

impl<T> Reply<T> {
    fn send(self, outcome: Result<T>) {
        match self {
            // The caller may have stopped waiting (a time-out).
            Reply::Channel(tx) => {
                let _ = tx.send(outcome);
            }
            Reply::Call(done) => done(outcome),
        }
    }
}

enum Request<S> {
    Propose {
        command: Vec<u8>,
        session: Option<(u64, u64)>,
        reply: Reply<Applied>,
    },
    Register {
        reply: Reply<Applied>,
    },
    Read(ReadFn<S>),
    Campaign,
    Switchover(Sender<Result<u64>>),
    Maintenance {
        on: bool,
        reply: Reply<Applied>,
    },
    Membership {
        change: MembershipChange,
        reply: Reply<Applied>,
    },
    MaintenanceOffLocal,
    Disk(crate::DiskReport),
    DisarmAlarms {
        reply: Reply<Applied>,
    },
    Unreachable(u64),
    Reachable(u64),
    SnapshotOutcome(u64, bool),
    Snapshot {
        need: u64,
        reply: Sender<Result<StateSnapshot>>,
    },
    Stop,
}

enum LogJob {
    Write(Box<LogWrite>),
    Compact(u64),
}

/// Options of a [`Node`], set through [`NodeBuilder`].
#[derive(Debug, Clone)]
struct NodeOptions {
    tick: Duration,
    request_timeout: Duration,
    voters: Vec<u64>,
    peer_queue: usize,
    request_queue: usize,
    seed: Option<u64>,
}

/// Builds a [`Node`].
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    cfg: ReplicaConfig,
    opts: NodeOptions,
}

impl NodeBuilder {
    /// The voters written into a blank log store at start (ignored when the
    /// store already holds a configuration: a restart uses what is stored).
    pub fn voters(mut self, voters: Vec<u64>) -> Self {
        self.opts.voters = voters;
        self
    }

    /// The length of a tick (default 100 ms).
    pub fn tick(mut self, tick: Duration) -> Self {
        self.opts.tick = tick;
        self
    }

    /// How long a request may wait before [`Error::Timeout`] (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.opts.request_timeout = timeout;
        self
    }

    /// Seeds the election timeouts (default: from the clock).
    pub fn seed(mut self, seed: u64) -> Self {
        self.opts.seed = Some(seed);
        self
    }

    /// Starts a node with no transport (a standalone member).
    pub fn start<L: LogStore, S: StateMachine>(self, log: L, sm: S) -> Result<Node<S>> {
        self.start_with_transport(log, sm, Arc::new(NoTransport))
    }

    /// Starts a node that reaches its peers through `transport`.
    pub fn start_with_transport<L: LogStore, S: StateMachine>(
        self,
        log: L,
        sm: S,
        transport: Arc<dyn Transport>,
    ) -> Result<Node<S>> {
        self.launch(log, Some(sm), transport)
    }

    /// Starts the witness (`cfg.witness` names this member): a voter that
    /// stores no service data and serves no client.
    pub fn start_witness<L: LogStore>(
        self,
        log: L,
        transport: Arc<dyn Transport>,
    ) -> Result<Node<crate::state::NoStateMachine>> {
        self.launch(log, None, transport)
    }

    fn launch<L: LogStore, S: StateMachine>(
        self,
        log: L,
        sm: Option<S>,
        transport: Arc<dyn Transport>,
    ) -> Result<Node<S>> {
        let id = self.cfg.id;
        let seed = self.opts.seed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
                ^ id
        });
        let log = Arc::new(log);
        let cfg = self.cfg.clone();
        // A blank store starts through the bootstrap handshake (see
        // `crate::bootstrap`); a standalone member decides at once.
        let mut start = if log.initial_state()?.initialized() {
            Start::Open(Box::new(open_replica(&cfg, &log, sm, seed)?))
        } else {
            if self.opts.voters.is_empty() {
                return Err(Error::config(
                    "voters",
                    "the log store is blank: give the voters to bootstrap it",
                ));
            }
            let b = Bootstrap::new(id, &self.opts.voters, 1);
            if b.decision() == Decision::Bootstrap {
                Replica::<ArcLog<L>, S>::bootstrap(&ArcLog(log.clone()), b.voters())?;
                Start::Open(Box::new(open_replica(&cfg, &log, sm, seed)?))
            } else {
                Start::Blank(b, sm)
            }
        };
        let initial_status = match &mut start {
            Start::Open(r) => r.status(),
            Start::Blank(b, _) => Status::blank(id, format!("{:?}", b.decision())),
        };
        let (req_tx, req_rx) = channel::bounded(self.opts.request_queue);
        let (msg_tx, msg_rx) = channel::bounded(self.opts.peer_queue);
        let (notice_tx, notice_rx) = channel::bounded(self.opts.peer_queue);
        let (done_tx, done_rx) = channel::unbounded();
        let (log_tx, log_rx) = channel::unbounded();
        let shared = Arc::new(Shared {
            status: RwLock::new(initial_status),
            lease_end: Mutex::new(None),
            published_at: Mutex::new(Instant::now()),
            subscribers: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
        });
        let log_thread = {
            let shared = shared.clone();
            let log = log.clone();
            std::thread::Builder::new()
                .name(format!("aoc-log-{id}"))
                .spawn(move || log_loop(id, log, log_rx, done_tx, shared))
                .map_err(|e| {
                    Error::storage("thread", format!("cannot start the log thread: {e}"))
                })?
        };
        let tick = self.opts.tick;
        let inputs = Inputs {
            ticker: channel::tick(tick),
            requests: req_rx,
            messages: msg_rx,
            notices: notice_rx,
            persisted: done_rx,
        };
        let raft_shared = shared.clone();
        let raft_thread = std::thread::Builder::new()
            .name(format!("aoc-raft-{id}"))
            .spawn(move || {
                let replica = match start {
                    Start::Open(r) => *r,
                    Start::Blank(b, sm) => {
                        match run_blank(b, sm, &cfg, &log, seed, &inputs, &*transport, &raft_shared)
                        {
                            Some(r) => r,
                            None => return,
                        }
                    }
                };
                let driver = Driver {
                    replica,
                    transport,
                    log_tx,
                    proposals: HashMap::new(),
                    switchovers: HashMap::new(),
                    snapshot_reads: HashMap::new(),
                    reads: HashMap::new(),
                    next_token: 1,
                    shared: raft_shared,
                    started: Instant::now(),
                    tick,
                    ticks_done: 0,
                };
                let failure = driver.shared.clone();
                // A panic (an assertion of the replica's or raft-rs's) stops
                // the node like a failed store: the embedding program sees
                // it in `Node::failure` (aoc-node then exits) instead of a
                // node that answers nothing.
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    driver.run(inputs)
                }));
                if let Err(panic) = ran {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "a panic".into());
                    error!(member = id, panic = %what, "the raft thread panicked; the node stopped");
                    *failure.failure.lock() =
                        Some(Error::Raft(format!("the raft thread panicked: {what}")));
                }
            })
            .map_err(|e| Error::storage("thread", format!("cannot start the raft thread: {e}")))?;
        Ok(Node {
            id,
            req_tx,
            msg_tx,
            notice_tx,
            shared,
            timeout: self.opts.request_timeout,
            threads: Arc::new(Mutex::new(vec![raft_thread, log_thread])),
        })
    }
}

enum Start<L: LogStore, S: StateMachine> {
    Open(Box<Replica<ArcLog<L>, S>>),
    Blank(Bootstrap, Option<S>),
}

fn open_replica<L: LogStore, S: StateMachine>(
    cfg: &ReplicaConfig,
    log: &Arc<L>,
    sm: Option<S>,
    seed: u64,
) -> Result<Replica<ArcLog<L>, S>> {
    let mut replica = match sm {
        Some(sm) => Replica::new(cfg.clone(), ArcLog(log.clone()), sm, seed)?,
        None => Replica::new_witness(cfg.clone(), ArcLog(log.clone()), seed)?,
    };
    if replica.status().voters == vec![cfg.id] {
        // A standalone member need not wait for an election timeout.
        replica.campaign()?;
    }
    Ok(replica)
}

/// The raft thread's inputs.
struct Inputs<S> {
    ticker: Receiver<Instant>,
    requests: Receiver<Request<S>>,
    messages: Receiver<Message>,
    notices: Receiver<Notice>,
    persisted: Receiver<Result<u64>>,
}

/// A blank member: runs the bootstrap handshake until it may start (or is
/// stopped). It has no replica, so it never votes; raft messages to it are
/// dropped and requests refused.
#[allow(clippy::too_many_arguments)]
fn run_blank<L: LogStore, S: StateMachine>(
    mut b: Bootstrap,
    sm: Option<S>,
    cfg: &ReplicaConfig,
    log: &Arc<L>,
    seed: u64,
    inputs: &Inputs<S>,
    transport: &dyn Transport,
    shared: &Shared,
) -> Option<Replica<ArcLog<L>, S>> {
    let id = cfg.id;
    let _span = info_span!("blank", member = id).entered();
    let mut last = None;
    loop {
        let decision = b.decision();
        if last.as_ref() != Some(&decision) {
            info!(member = id, decision = ?decision, "blank member");
            *shared.status.write() = Status::blank(id, format!("{decision:?}"));
            last = Some(decision.clone());
        }
        if let Decision::Join { .. } = decision {
            let opened = match sm {
                Some(sm) => Replica::join(cfg.clone(), ArcLog(log.clone()), sm, seed),
                None => Replica::join_witness(cfg.clone(), ArcLog(log.clone()), seed),
            };
            return match opened {
                Ok(r) => {
                    info!(member = id, "joining: waiting to be added as a learner");
                    Some(r)
                }
                Err(e) => {
                    error!(member = id, error = %e, "cannot open as a joining member; stopping");
                    *shared.failure.lock() = Some(e);
                    None
                }
            };
        }
        if decision == Decision::Bootstrap {
            let opened = Replica::<ArcLog<L>, S>::bootstrap(&ArcLog(log.clone()), b.voters())
                .and_then(|()| open_replica(cfg, log, sm, seed));
            return match opened {
                Ok(r) => {
                    info!(member = id, voters = ?b.voters(), "bootstrapped");
                    Some(r)
                }
                Err(e) => {
                    error!(member = id, error = %e, "bootstrap failed; stopping");
                    *shared.failure.lock() = Some(e);
                    None
                }
            };
        }
        channel::select! {
            recv(inputs.ticker) -> _ => {
                for n in b.tick() {
                    transport.send_notice(n);
                }
            }
            recv(inputs.notices) -> n => match n {
                Ok(n) => {
                    if let Some(answer) = b.on_notice(n) {
                        transport.send_notice(answer);
                    }
                }
                Err(_) => return None,
            },
            recv(inputs.messages) -> m => if m.is_err() { return None },
            recv(inputs.requests) -> r => match r {
                Ok(Request::Stop) | Err(_) => return None,
                Ok(other) => refuse_blank(other, &decision),
            },
        }
    }
}

fn refuse_blank<S>(r: Request<S>, decision: &Decision) {
    let e = Error::NotLeader { leader_hint: None };
    match r {
        Request::Propose { reply, .. } | Request::Register { reply } => reply.send(Err(e)),
        Request::Read(f) => f(Err(e)),
        Request::Switchover(reply) => {
            let _ = reply.send(Err(e));
        }
        Request::Maintenance { reply, .. }
        | Request::Membership { reply, .. }
        | Request::DisarmAlarms { reply } => reply.send(Err(e)),
        Request::Snapshot { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        _ => debug!(decision = ?decision, "request ignored while blank"),
    }
}

struct NoTransport;

impl Transport for NoTransport {
    fn send(&self, _msg: Message) {}
    fn send_notice(&self, _notice: Notice) {}
}

/// A shared log store: the raft thread reads while the log thread writes.
struct ArcLog<L>(Arc<L>);

impl<L: LogStore> LogStore for ArcLog<L> {
    fn initial_state(&self) -> Result<raft::RaftState> {
        self.0.initial_state()
    }
    fn first_index(&self) -> Result<u64> {
        self.0.first_index()
    }
    fn last_index(&self) -> Result<u64> {
        self.0.last_index()
    }
    fn term(&self, index: u64) -> raft::Result<u64> {
        self.0.term(index)
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> raft::Result<Vec<raft::eraftpb::Entry>> {
        self.0.entries(low, high, max_size)
    }
    fn snapshot_metadata(&self) -> Result<raft::eraftpb::SnapshotMetadata> {
        self.0.snapshot_metadata()
    }
    fn member_meta(&self) -> Result<crate::proto::MemberMeta> {
        self.0.member_meta()
    }
    fn write(&self, write: &LogWrite) -> Result<()> {
        self.0.write(write)
    }
    fn compact(&self, index: u64) -> Result<()> {
        self.0.compact(index)
    }
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
}

struct Shared {
    status: RwLock<Status>,
    /// When the lease of the published status ends (its `active` holds
    /// until then at most): a raft thread that stops publishing (hung, or
    /// stopped) is not reported active past it.
    lease_end: Mutex<Option<Instant>>,
    /// When the raft thread last published a status (it does after every
    /// input, ticks included).
    published_at: Mutex<Instant>,
    subscribers: Mutex<Vec<Sender<Event>>>,
    failure: Mutex<Option<Error>>,
}

/// A handle on a running node; cheap to clone.
pub struct Node<S> {
    id: u64,
    req_tx: Sender<Request<S>>,
    msg_tx: Sender<Message>,
    notice_tx: Sender<Notice>,
    shared: Arc<Shared>,
    timeout: Duration,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl<S> Clone for Node<S> {
    fn clone(&self) -> Self {
        Node {
            id: self.id,
            req_tx: self.req_tx.clone(),
            msg_tx: self.msg_tx.clone(),
            notice_tx: self.notice_tx.clone(),
            shared: self.shared.clone(),
            timeout: self.timeout,
            threads: self.threads.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Node<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish()
    }
}

impl Node<()> {
    /// Starts building a node with `cfg`.
    pub fn builder(cfg: ReplicaConfig) -> NodeBuilder {
        NodeBuilder {
            cfg,
            opts: NodeOptions {
                tick: Duration::from_millis(100),
                request_timeout: Duration::from_secs(5),
                voters: Vec::new(),
                peer_queue: 4096,
                request_queue: 65_536,
                seed: None,
            },
        }
    }
}

impl<S: StateMachine> Node<S> {
    /// This member's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Hands a message from a peer to this node. Never blocks: when the
    /// node is overwhelmed the message is dropped (raft retransmits).
    pub fn step(&self, msg: Message) {
        if let Err(TrySendError::Full(_)) = self.msg_tx.try_send(msg) {
            warn!(
                member = self.id,
                "peer message queue full; dropped a message"
            );
        }
    }

    /// Hands a notice from a peer to this node. Never blocks.
    pub fn notice(&self, notice: Notice) {
        if let Err(TrySendError::Full(_)) = self.notice_tx.try_send(notice) {
            warn!(member = self.id, "notice queue full; dropped a notice");
        }
    }

    fn request<T>(&self, req: Request<S>, rx: &Receiver<Result<T>>, what: &str) -> Result<T> {
        self.request_waiting(req, rx, what, self.timeout)
    }

    /// [`Node::request`], waiting up to `wait` for the answer.
    fn request_waiting<T>(
        &self,
        req: Request<S>,
        rx: &Receiver<Result<T>>,
        what: &str,
        wait: Duration,
    ) -> Result<T> {
        self.req_tx
            .send_timeout(req, self.timeout)
            .map_err(|e| match e {
                channel::SendTimeoutError::Timeout(_) => Error::Busy {
                    reason: "the node's request queue is full".into(),
                },
                channel::SendTimeoutError::Disconnected(_) => Error::Stopped,
            })?;
        match rx.recv_timeout(wait) {
            Ok(r) => r,
            Err(channel::RecvTimeoutError::Timeout) => Err(Error::Timeout { what: what.into() }),
            Err(channel::RecvTimeoutError::Disconnected) => Err(Error::Stopped),
        }
    }

    /// Proposes `command` and waits until it is committed and applied;
    /// returns the entry's index and the state machine's response. Without
    /// a session a retry may apply the command twice: use
    /// [`Node::propose_session`] for exactly-once writes.
    pub fn propose(&self, command: Vec<u8>) -> Result<Applied> {
        self.propose_with(command, None)
    }

    /// Proposes `command` as write `sequence` of client session `client`
    /// (see [`Node::register_client`]): however often it is retried, on
    /// this member or another, it is applied once, and every retry gets the
    /// original response.
    pub fn propose_session(&self, client: u64, sequence: u64, command: Vec<u8>) -> Result<Applied> {
        self.propose_with(command, Some((client, sequence)))
    }

    fn propose_with(&self, command: Vec<u8>, session: Option<(u64, u64)>) -> Result<Applied> {
        let (tx, rx) = channel::bounded(1);
        self.request(
            Request::Propose {
                command,
                session,
                reply: Reply::Channel(tx),
            },
            &rx,
            "proposal",
        )
    }

    /// The request timeout: how long the blocking calls wait for their
    /// answer ([`NodeBuilder::request_timeout`]).
    pub(crate) fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// Queues `req` without waiting: a full queue is [`Error::Busy`] at
    /// once. Gives a refused request back, so its reply can be told.
    fn try_request(&self, req: Request<S>) -> Option<(Request<S>, Error)> {
        match self.req_tx.try_send(req) {
            Ok(()) => None,
            Err(TrySendError::Full(req)) => Some((
                req,
                Error::Busy {
                    reason: "the node's request queue is full".into(),
                },
            )),
            Err(TrySendError::Disconnected(req)) => Some((req, Error::Stopped)),
        }
    }

    /// [`Node::propose_session`] (or [`Node::propose`] without a session)
    /// without waiting: `done` runs on the raft thread with the outcome,
    /// or at once on this thread when the request cannot be queued. The
    /// caller enforces its own time-out.
    pub(crate) fn propose_then(
        &self,
        command: Vec<u8>,
        session: Option<(u64, u64)>,
        done: Done<Applied>,
    ) {
        let req = Request::Propose {
            command,
            session,
            reply: Reply::Call(done),
        };
        if let Some((Request::Propose { reply, .. }, e)) = self.try_request(req) {
            reply.send(Err(e));
        }
    }

    /// [`Node::register_client`] without waiting (see
    /// [`Node::propose_then`]); `done` gets the new client id.
    pub(crate) fn register_then(&self, done: Done<u64>) {
        let reply = Reply::Call(Box::new(move |applied: Result<Applied>| {
            done(applied.and_then(|a| client_id_of(&a)))
        }));
        if let Some((Request::Register { reply }, e)) =
            self.try_request(Request::Register { reply })
        {
            reply.send(Err(e));
        }
    }

    /// [`Node::read`] without waiting (see [`Node::propose_then`]): `f`
    /// runs on the raft thread once the read is linearizable, and `done`
    /// gets its result.
    pub(crate) fn read_then<R: Send + 'static>(
        &self,
        f: impl FnOnce(&S) -> R + Send + 'static,
        done: Done<R>,
    ) {
        let job: ReadFn<S> = Box::new(move |read| done(read.map(|(sm, _term)| f(sm))));
        if let Some((Request::Read(job), e)) = self.try_request(Request::Read(job)) {
            job(Err(e));
        }
    }

    /// Opens a client session and returns its client id.
    pub fn register_client(&self) -> Result<u64> {
        let (tx, rx) = channel::bounded(1);
        let reply = Reply::Channel(tx);
        let applied = self.request(Request::Register { reply }, &rx, "client registration")?;
        client_id_of(&applied)
    }

    /// Runs `f` on the state machine once a linearizable read is possible
    /// (ReadIndex confirmed by a quorum, and applied up to it). Only the
    /// leader serves reads: elsewhere the answer is [`Error::NotLeader`].
    pub fn read<R: Send + 'static>(&self, f: impl FnOnce(&S) -> R + Send + 'static) -> Result<R> {
        self.read_applied(move |sm, _term| f(sm))
    }

    /// [`Node::read`], also telling `f` the term of the entry at the state
    /// machine's applied index (`None` in the rare case the replica does not
    /// know it: see [`Replica::applied_term`]). A backup records the pair
    /// (applied index, term) with the state it copies.
    ///
    /// `f` runs on the raft thread, which handles nothing else meanwhile:
    /// keep it short, or the member misses heartbeats.
    pub fn read_applied<R: Send + 'static>(
        &self,
        f: impl FnOnce(&S, Option<u64>) -> R + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = channel::bounded(1);
        let job: ReadFn<S> = Box::new(move |read| {
            let _ = tx.send(read.map(|(sm, term)| f(sm, term)));
        });
        self.request(Request::Read(job), &rx, "read")
    }

    /// The state machine's snapshot at an applied index that covers every
    /// write acknowledged before the call (a linearizable read confirms
    /// the index first), read off the raft thread
    /// ([`StateMachine::start_snapshot`]): the member goes on heartbeating
    /// and committing while a large state is read. A backup takes this.
    /// Only the active serves it ([`Error::NotLeader`] elsewhere); the
    /// read may take up to [`SNAPSHOT_READ_TIMEOUT`].
    ///
    /// ```
    /// use aoc_core::state::{KvCommand, MemKv, StateMachine};
    /// use aoc_core::storage::MemLogStore;
    /// use aoc_core::{Node, ReplicaConfig};
    ///
    /// let node = Node::builder(ReplicaConfig::new(1))
    ///     .voters(vec![1])
    ///     .start(MemLogStore::new(), MemKv::new())?;
    /// let written = node.propose(KvCommand::put("cluster/7", "healthy").encode())?;
    /// let snapshot = node.read_snapshot()?;
    /// assert!(snapshot.index >= written.index);
    /// // The state, as `StateMachine::snapshot` gives it: it restores.
    /// let mut copy = MemKv::new();
    /// copy.restore(snapshot.index, &snapshot.state)?;
    /// node.shutdown();
    /// # Ok::<(), aoc_core::Error>(())
    /// ```
    pub fn read_snapshot(&self) -> Result<StateSnapshot> {
        let need = self.read(|sm| sm.applied_index())?;
        let (tx, rx) = channel::bounded(1);
        self.request_waiting(
            Request::Snapshot { need, reply: tx },
            &rx,
            "snapshot read",
            SNAPSHOT_READ_TIMEOUT.max(self.timeout),
        )
    }

    /// Moves the active role to the passive with nothing lost (see
    /// [`Replica::switchover`]); returns the write pause it caused: from
    /// when this member stopped taking writes until it learned of the new
    /// active (measured here; the replica itself counts whole ticks).
    /// Refused on a member that is not the active, in degraded mode, or
    /// while the passive lags; abandoned (this member stays active) when
    /// the passive does not catch up in time.
    pub fn switchover(&self) -> Result<Duration> {
        let (tx, rx) = channel::bounded(1);
        let start = Instant::now();
        self.request(Request::Switchover(tx), &rx, "switchover")?;
        Ok(start.elapsed())
    }

    /// Turns maintenance mode on (automatic failover suspended: only the
    /// current active may stand) or off, through the log. Asked of the
    /// active.
    pub fn set_maintenance(&self, on: bool) -> Result<()> {
        let (tx, rx) = channel::bounded(1);
        let reply = Reply::Channel(tx);
        self.request(Request::Maintenance { on, reply }, &rx, "maintenance")
            .map(|_| ())
    }

    /// Proposes a membership change (see [`MembershipChange`]); returns
    /// once it is applied on this member (the leader). Errors say why a
    /// change is refused: [`Error::Membership`] for a rule (a learner not
    /// caught up yet, removing the leader), [`Error::Busy`] while another
    /// change is in flight, [`Error::NotLeader`] on another member.
    pub fn change_membership(&self, change: MembershipChange) -> Result<()> {
        let (tx, rx) = channel::bounded(1);
        self.request(
            Request::Membership {
                change,
                reply: Reply::Channel(tx),
            },
            &rx,
            "membership change",
        )
        .map(|_| ())
    }

    /// The latest measurement of this member's disk (the driver of the
    /// data directory measures it, every second or so): below its reserve,
    /// this member's NOSPACE alarm is raised through the leader (see
    /// [`crate::Error::NoSpace`]).
    pub fn report_disk(&self, report: crate::DiskReport) {
        let _ = self.req_tx.try_send(Request::Disk(report));
    }

    /// Clears every NOSPACE alarm (asked of the leader); a disk still low
    /// raises its alarm again at its next report.
    pub fn disarm_alarms(&self) -> Result<()> {
        let (tx, rx) = channel::bounded(1);
        self.request(
            Request::DisarmAlarms {
                reply: Reply::Channel(tx),
            },
            &rx,
            "alarm disarm",
        )
        .map(|_| ())
    }

    /// Turns maintenance mode off on this member alone, at once and
    /// durably; works with no leader (the next leader commits the
    /// replicated off). An operator can always end a maintenance window in
    /// which the active died.
    pub fn maintenance_off_local(&self) -> Result<()> {
        self.req_tx
            .send(Request::MaintenanceOffLocal)
            .map_err(|_| Error::Stopped)
    }

    /// Starts an election on this member now.
    pub fn campaign(&self) -> Result<()> {
        self.req_tx
            .send(Request::Campaign)
            .map_err(|_| Error::Stopped)
    }

    /// Reports that messages to `to` could not be delivered (a transport
    /// calls this when a connection fails), so raft probes it again.
    pub fn report_unreachable(&self, to: u64) {
        let _ = self.req_tx.try_send(Request::Unreachable(to));
    }

    /// Reports that `to` can be reached again (a transport calls this when
    /// it reconnects after failures): a leader sends its heartbeats at once
    /// rather than at its next heartbeat tick, so a restarted member's
    /// catch-up starts sooner.
    pub fn report_reachable(&self, to: u64) {
        let _ = self.req_tx.try_send(Request::Reachable(to));
    }

    /// Reports the outcome of a snapshot stream to `to`. Without a report,
    /// a stream is taken as failed after `snapshot_timeout_ticks`.
    pub fn report_snapshot(&self, to: u64, delivered: bool) {
        let _ = self
            .req_tx
            .try_send(Request::SnapshotOutcome(to, delivered));
    }

    /// The latest status (updated by the raft thread after every step).
    /// Never active once the node has failed (it then says why), nor past
    /// the end of the lease it last published: a raft thread that stalls
    /// stops holding the role in the status when its lease ends.
    pub fn status(&self) -> Status {
        let mut st = self.shared.status.read().clone();
        if let Some(e) = self.failure() {
            // The last status a failed node published is not its state.
            st.active = false;
            st.fencing_token = None;
            st.lease_ticks_left = None;
            st.leader = None;
            st.role = crate::Role::Follower;
            st.waiting_for = Some(format!("the node stopped: {e}"));
        } else if st.active
            && self
                .shared
                .lease_end
                .lock()
                .is_none_or(|end| Instant::now() >= end)
        {
            // Its raft thread published nothing since the lease ended.
            st.active = false;
            st.fencing_token = None;
            st.lease_ticks_left = None;
            st.waiting_for = Some(
                "the raft thread has not renewed the lease in time (a stalled thread or \
                 process)"
                    .into(),
            );
        }
        st
    }

    /// While this member is the active: its fencing token, to stamp the
    /// commands the platform sends outside the cluster with (see
    /// [`crate::fencing`]). `None` when not active, as [`Node::status`]
    /// says.
    pub fn fencing_token(&self) -> Option<u64> {
        self.status().fencing_token
    }

    /// While this member is the active: the instant its lease ends unless
    /// it is renewed first (every heartbeat interval while all is well).
    /// A supervisor that must fence the member's host when the member
    /// hangs acts before it (`aoc-node`'s guard).
    pub fn active_until(&self) -> Option<Instant> {
        if !self.status().active {
            return None;
        }
        *self.shared.lease_end.lock()
    }

    /// Whether the node runs and its raft thread published a status within
    /// `within` (it does after every tick): a liveness check for a service
    /// manager's watchdog.
    pub fn healthy(&self, within: Duration) -> bool {
        self.failure().is_none() && self.shared.published_at.lock().elapsed() <= within
    }

    /// Why the node stopped, if it failed.
    pub fn failure(&self) -> Option<Error> {
        self.shared.failure.lock().clone()
    }

    /// A stream of the node's events from now on.
    pub fn events(&self) -> Receiver<Event> {
        let (tx, rx) = channel::unbounded();
        self.shared.subscribers.lock().push(tx);
        rx
    }

    /// Stops the node and waits for its threads, five seconds at most (a
    /// thread that does not stop by then is left running). Requests in
    /// flight fail with [`Error::Stopped`].
    pub fn shutdown(&self) {
        // Not `send`: with the raft thread gone and the queue full it
        // would wait for good.
        let _ = self.req_tx.send_timeout(Request::Stop, SHUTDOWN_WAIT);
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        let until = Instant::now() + SHUTDOWN_WAIT;
        for t in threads {
            while !t.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                warn!(
                    member = self.id,
                    thread = t.thread().name().unwrap_or("?"),
                    "a node thread did not stop in time; leaving it"
                );
            }
        }
    }
}

fn log_loop(
    id: u64,
    log: Arc<impl LogStore>,
    jobs: Receiver<LogJob>,
    done: Sender<Result<u64>>,
    shared: Arc<Shared>,
) {
    let _span = info_span!("log", member = id).entered();
    while let Ok(first) = jobs.recv() {
        // Group commit: merge every write queued behind the first.
        let mut write: Option<LogWrite> = None;
        let mut compact = None;
        for job in std::iter::once(first).chain(jobs.try_iter()) {
            match job {
                LogJob::Write(w) => match &mut write {
                    Some(acc) => acc.merge(*w),
                    None => write = Some(*w),
                },
                // Compaction targets only indexes below the durable commit,
                // which no later write rewrites.
                LogJob::Compact(to) => compact = Some(compact.unwrap_or(0).max(to)),
            }
        }
        if let Some(w) = write {
            let number = w.number;
            if let Err(e) = log.write(&w) {
                error!(member = id, error = %e, "log write failed; stopping");
                *shared.failure.lock() = Some(e.clone());
                let _ = done.send(Err(e));
                return;
            }
            if done.send(Ok(number)).is_err() {
                return;
            }
        }
        if let Some(to) = compact {
            if let Err(e) = log.compact(to) {
                warn!(member = id, error = %e, "log compaction failed");
            }
        }
    }
}

struct Driver<L: LogStore, S: StateMachine> {
    replica: Replica<ArcLog<L>, S>,
    transport: Arc<dyn Transport>,
    log_tx: Sender<LogJob>,
    proposals: HashMap<u64, Reply<Applied>>,
    switchovers: HashMap<u64, Sender<Result<u64>>>,
    reads: HashMap<u64, ReadFn<S>>,
    snapshot_reads: HashMap<u64, Sender<Result<StateSnapshot>>>,
    next_token: u64,
    shared: Arc<Shared>,
    started: Instant,
    /// The tick's length, and how many ticks the replica was given.
    tick: Duration,
    ticks_done: u64,
}

/// How long [`Node::shutdown`] waits for the node's threads.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// At most this many ticks are given at once after a stall: far more than
/// any lease or election timeout, after which more change nothing.
const MAX_CATCH_UP_TICKS: u64 = 1_000;

impl<L: LogStore, S: StateMachine> Driver<L, S> {
    /// Ticks the replica up to one tick per tick of wall-clock time since
    /// the start, so ticks missed in a stall (a paused process, a slow thread) count:
    /// the lease is measured in the member's ticks, and the ticker drops
    /// the ticks nobody received (it sends the next one a tick after it is
    /// taken). Without them a leader that was stopped would count its lease
    /// from where it stopped.
    ///
    /// Called before every input, not only when the ticker fires: after a
    /// stall the first input may be a message, and the status published
    /// after it must already count the missed ticks.
    fn tick_to_now(&mut self, epoch_ms: u64) {
        let due = (self.started.elapsed().as_nanos() / self.tick.as_nanos().max(1)) as u64;
        let behind = due.saturating_sub(self.ticks_done);
        for _ in 0..behind.min(MAX_CATCH_UP_TICKS) {
            let now_ms = epoch_ms + self.started.elapsed().as_millis() as u64;
            self.replica.tick(now_ms);
        }
        self.ticks_done = self.ticks_done.max(due);
    }

    /// Publishes the replica's status, and until when its lease holds.
    /// The lease end is taken at the wall-clock time of the tick it ends
    /// at (the replica's ticks are the ticks given so far), so a status
    /// published after a stall, before the missed ticks were given, does
    /// not report a lease that already ended.
    fn publish_status(&self) {
        let st = self.replica.status();
        let end_tick = self.ticks_done + st.lease_ticks_left.unwrap_or(0);
        let lease_end = st.active.then(|| {
            self.started
                + self
                    .tick
                    .saturating_mul(end_tick.min(u32::MAX as u64) as u32)
        });
        *self.shared.lease_end.lock() = lease_end;
        *self.shared.published_at.lock() = Instant::now();
        *self.shared.status.write() = st;
    }

    fn run(mut self, inputs: Inputs<S>) {
        let st = self.replica.status();
        self.tell_transport(&st.voters, &st.learners, &st.members);
        let Inputs {
            ticker,
            requests,
            messages,
            notices,
            persisted,
        } = inputs;
        let id = self.replica.id();
        let epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        loop {
            let span = info_span!("raft", member = id, term = self.replica.term());
            let _e = span.enter();
            // A snapshot read in progress is polled after every input and
            // every few milliseconds, so the snapshot leaves when it is
            // read, not at the next tick.
            let idle_poll = if self.replica.snapshot_read_pending() {
                SNAPSHOT_POLL
            } else {
                Duration::from_secs(3600)
            };
            self.tick_to_now(epoch_ms);
            channel::select! {
                recv(ticker) -> _ => self.tick_to_now(epoch_ms),
                recv(messages) -> m => match m {
                    Ok(m) => {
                        self.replica.step(m);
                        for m in messages.try_iter().take(1024) {
                            self.replica.step(m);
                        }
                    }
                    Err(_) => break,
                },
                recv(notices) -> n => match n {
                    Ok(n) => self.replica.on_notice(n),
                    Err(_) => break,
                },
                recv(persisted) -> p => match p {
                    Ok(Ok(n)) => self.replica.on_persisted(n),
                    Ok(Err(e)) => { self.fail(e); break; }
                    Err(_) => break,
                },
                recv(requests) -> r => {
                    let Ok(r) = r else { break };
                    if !self.request(r) {
                        break;
                    }
                    // Batch: everything queued now goes into one ready.
                    let mut stop = false;
                    for r in requests.try_iter().take(4096) {
                        if !self.request(r) {
                            stop = true;
                            break;
                        }
                    }
                    if stop {
                        break;
                    }
                }
                default(idle_poll) => {}
            }
            if self.replica.snapshot_read_pending() {
                self.replica.poll_snapshot_read();
            }
            if let Err(e) = self.drain() {
                self.fail(e);
                break;
            }
            self.publish_status();
        }
        self.stop_all();
        info!(member = id, "raft thread stopped");
        if self.shared.failure.lock().is_some() {
            // A store that failed may never close: sled 0.34 flushes when
            // its last handle drops and, after an I/O error, waits for a
            // buffer that never becomes stable (seen with a full disk:
            // the thread, and every join on it, hung for good). Everything
            // acknowledged is in the synced log; the state machine is
            // rebuilt from it at the next start.
            let Driver { replica, .. } = self;
            std::mem::forget(replica);
        }
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// Handles one request; false on `Stop`.
    fn request(&mut self, r: Request<S>) -> bool {
        match r {
            Request::Propose {
                command,
                session,
                reply,
            } => {
                let t = self.token();
                self.proposals.insert(t, reply);
                self.replica.propose(t, command, session);
            }
            Request::Register { reply } => {
                let t = self.token();
                self.proposals.insert(t, reply);
                self.replica.register_client(t);
            }
            Request::Read(f) => {
                let t = self.token();
                self.reads.insert(t, f);
                self.replica.read(t);
            }
            Request::Switchover(reply) => {
                let t = self.token();
                self.switchovers.insert(t, reply);
                self.replica.switchover(t);
            }
            Request::Maintenance { on, reply } => {
                let t = self.token();
                self.proposals.insert(t, reply);
                self.replica.set_maintenance(t, on);
            }
            Request::Membership { change, reply } => {
                let t = self.token();
                self.proposals.insert(t, reply);
                self.replica.change_membership(t, change);
            }
            Request::MaintenanceOffLocal => self.replica.maintenance_off_local(),
            Request::Disk(report) => self.replica.report_disk(report),
            Request::DisarmAlarms { reply } => {
                let t = self.token();
                self.proposals.insert(t, reply);
                self.replica.disarm_alarms(t);
            }
            Request::Unreachable(to) => self.replica.report_unreachable(to),
            Request::Reachable(to) => self.replica.report_reachable(to),
            Request::SnapshotOutcome(to, delivered) => self.replica.report_snapshot(to, delivered),
            Request::Snapshot { need, reply } => {
                let t = self.token();
                self.snapshot_reads.insert(t, reply);
                self.replica.read_snapshot(t, need);
            }
            Request::Campaign => {
                if let Err(e) = self.replica.campaign() {
                    warn!(error = %e, "campaign refused");
                }
            }
            Request::Stop => return false,
        }
        true
    }

    fn drain(&mut self) -> Result<()> {
        while self.replica.has_ready() {
            let rd = self.replica.ready()?;
            if !rd.completions.is_empty() || !rd.switchovers.is_empty() {
                // A caller told its write (or switchover) is done must find
                // it in the status: publish it before the answers go out.
                self.publish_status();
            }
            self.carry_out(rd);
        }
        Ok(())
    }

    fn carry_out(&mut self, rd: Ready) {
        let Ready {
            messages,
            write,
            compact_to,
            completions,
            reads,
            events,
            notices,
            switchovers,
            snapshots,
        } = rd;
        for (token, outcome) in switchovers {
            if let Some(reply) = self.switchovers.remove(&token) {
                let _ = reply.send(outcome);
            }
        }
        for (token, outcome) in snapshots {
            if let Some(reply) = self.snapshot_reads.remove(&token) {
                let _ = reply.send(outcome);
            }
        }
        for m in messages {
            self.transport.send(m);
        }
        for n in notices {
            self.transport.send_notice(n);
        }
        if let Some(w) = write {
            let _ = self.log_tx.send(LogJob::Write(Box::new(w)));
        }
        if let Some(to) = compact_to {
            let _ = self.log_tx.send(LogJob::Compact(to));
        }
        for c in completions {
            if let Some(reply) = self.proposals.remove(&c.token) {
                reply.send(c.result.map(|response| Applied {
                    index: c.index,
                    response,
                }));
            }
        }
        for (token, outcome) in reads {
            if let Some(f) = self.reads.remove(&token) {
                match outcome {
                    Ok(()) => match self.replica.state_machine() {
                        Some(sm) => f(Ok((sm, self.replica.applied_term()))),
                        None => f(Err(Error::NotLeader { leader_hint: None })),
                    },
                    Err(e) => f(Err(e)),
                }
            }
        }
        for e in &events {
            if let Event::MembershipChanged {
                voters,
                learners,
                members,
            } = e
            {
                self.tell_transport(voters, learners, members);
            }
        }
        if !events.is_empty() {
            let mut subs = self.shared.subscribers.lock();
            for e in events {
                subs.retain(|s| s.send(e.clone()).is_ok());
            }
        }
    }

    /// Gives the transport the members to reach. A member with no
    /// configuration (joining) or out of it (removed) keeps the peers it
    /// has: it must still hear from the leader.
    fn tell_transport(&self, voters: &[u64], learners: &[u64], members: &[Member]) {
        let id = self.replica.id();
        if !voters.contains(&id) && !learners.contains(&id) {
            return;
        }
        let ids: Vec<u64> = voters.iter().chain(learners).copied().collect();
        self.transport.members_changed(&ids, members);
    }

    fn fail(&mut self, e: Error) {
        error!(member = self.replica.id(), error = %e, "node failed; stopping");
        *self.shared.failure.lock() = Some(e);
    }

    fn stop_all(&mut self) {
        for (_, reply) in self.proposals.drain() {
            reply.send(Err(Error::Stopped));
        }
        for (_, f) in self.reads.drain() {
            f(Err(Error::Stopped));
        }
        for (_, reply) in self.switchovers.drain() {
            let _ = reply.send(Err(Error::Stopped));
        }
        for (_, reply) in self.snapshot_reads.drain() {
            let _ = reply.send(Err(Error::Stopped));
        }
    }
}

/// The client id in the response of a registration (8 bytes, little
/// endian).
fn client_id_of(applied: &Applied) -> Result<u64> {
    let bytes: [u8; 8] = applied
        .response
        .as_slice()
        .try_into()
        .map_err(|_| Error::decode("client id", "expected 8 bytes"))?;
    Ok(u64::from_le_bytes(bytes))
}
