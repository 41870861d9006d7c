//! The client API of a data member and its client library.
//!
//! A data member serves its clients with a [`ClientServer`]; programs use
//! a [`Client`], which finds the active member, opens a session and
//! retries across failovers so that each write is applied exactly once.
//!
//! ```
//! use std::collections::BTreeMap;
//! use aoc_core::client::{Client, ClientOptions, ClientServer, ServerLimits};
//! use aoc_core::state::MemKv;
//! use aoc_core::storage::MemLogStore;
//! use aoc_core::{Node, ReplicaConfig};
//!
//! # fn main() -> aoc_core::Result<()> {
//! // A standalone member and its client API on a free local port.
//! let node = Node::builder(ReplicaConfig::new(1))
//!     .voters(vec![1])
//!     .start(MemLogStore::new(), MemKv::new())?;
//! let listen = "127.0.0.1:0".parse().unwrap();
//! let server = ClientServer::start(listen, node.clone(), BTreeMap::new(), ServerLimits::default())?;
//!
//! let mut client = Client::connect(vec![server.local_addr()], ClientOptions::default())?;
//! client.put("cluster/7", "healthy")?;
//! assert_eq!(client.get("cluster/7")?.as_deref(), Some(&b"healthy"[..]));
//! assert!(client.cas("leader", None, Some(b"a".to_vec()))?);
//! assert!(!client.cas("leader", None, Some(b"b".to_vec()))?);
//! assert_eq!(client.scan("cluster/")?.len(), 1);
//! assert_eq!(client.get("missing")?, None);
//!
//! server.shutdown();
//! node.shutdown();
//! # Ok(())
//! # }
//! ```
//!
//! # The protocol
//!
//! TCP; every message is a frame: a 4-byte big-endian length, then that
//! many bytes of protobuf ([`frame`]). The client sends a
//! [`Request`](crate::proto::client::Request), the server answers with a
//! [`Response`](crate::proto::client::Response) carrying the same
//! `request_id`; one request at a time per connection. The messages are
//! defined in `proto/client.proto` (generated as [`crate::proto::client`]):
//!
//! | request | answered by | answer |
//! |---|---|---|
//! | `register` | the active | `registered { client_id }` |
//! | `put`, `delete`, `cas` (with a `WriteId`) | the active | `write { index, ok, previous, had_previous, error }` |
//! | `get` | the active (linearizable) | `value { found, value }` |
//! | `scan` (a prefix) | the active (linearizable) | `pairs` |
//! | `status` | any member | `status` (a member's status) |
//! | `switchover` | the active | `switchover { pause_ms }` |
//! | `maintenance { on }` | the active | `done` |
//! | `backup { start, offset, max_chunk_bytes }` | the active (linearizable) | `backup` (one chunk of the state) |
//! | `membership { kind, id, witness, ha_addr }` | the active | `done` (applied) |
//!
//! A backup ([`Client::backup`]) is a snapshot of the state machine taken
//! on the active after a linearizable read barrier, then read in chunks
//! over the same connection: `start` takes the snapshot and answers its
//! first chunk, each later request asks for the next offset. A chunk is at
//! most [`BACKUP_CHUNK_BYTES`] (1 MiB), and less when the server's
//! `max_response_bytes` or the client's `max_chunk_bytes` is smaller, so a
//! state of any size crosses in frames of bounded size. The server keeps
//! the snapshot in memory while the connection reads it (at most
//! [`MAX_BACKUPS_HELD`] at once; one more is answered `BUSY`).
//!
//! Any request may instead get `error { kind, message, ... }`. The kinds:
//! `NOT_LEADER` (with the active's member id and, when the server knows
//! it, its client address), `BUSY`, `TIMEOUT`, `SESSION_EXPIRED`,
//! `TOO_LARGE` (what, its size and the limit, named after the
//! [`ServerLimits`] field), `INVALID`, `STOPPED`, `STALE_SEQUENCE`,
//! `STORAGE` and `OTHER`. An error with `request_id` 0 is about the
//! connection (an undecodable frame, a frame over `max_frame_bytes`, too
//! many connections); after the last two the server closes the connection.
//!
//! # Exactly-once writes
//!
//! A write carries a `WriteId`: the client id of a session (opened by
//! `register`) and a sequence number, one more for each new write. The
//! replicated client table applies a given (client id, sequence) once and
//! answers every retry with the first answer, on whichever member is then
//! active. [`Client`] therefore retries a write with the same `WriteId`
//! after `NOT_LEADER`, `TIMEOUT`, `BUSY`, `STOPPED` and connection errors
//! until [`ClientOptions::deadline`]. A session that expired (idle longer
//! than the replicas' `session_ttl_ms`, or evicted when the table is full)
//! answers `SESSION_EXPIRED` and the write was not applied: the client
//! opens a new session and sends the write again under it. (So a write
//! whose first attempt WAS applied, and whose session then expired before
//! the retry reached a member, would be applied twice: exactly-once holds
//! while the session lives.)

pub mod frame;

mod conn;
mod convert;
mod handle;
mod serve;
mod server;

pub use server::{ClientServer, ServerLimits, WriteObserver, BACKUP_CHUNK_BYTES, MAX_BACKUPS_HELD};

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tracing::debug;

use crate::transport::tls::{Stream, TlsIdentity};

use crate::backup::{Backup, BackupMeta, BackupProblem};
use crate::proto::client as pb;
use crate::proto::client::Request_oneof_body as Req;
use crate::proto::client::Response_oneof_body as Resp;
use crate::state::{KvCommand, KvResponse};
use crate::{Error, Member, MembershipChange, Result, Status};
use convert::{error_from_proto, status_from_proto, write_from_proto};

use crate::replica::membership_reasons::{ALREADY_VOTER, AWAITS_PAIR, NOT_A_MEMBER, NOT_CAUGHT_UP};

/// What [`Client::remove_member`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// The member was removed by this call.
    Now,
    /// The member was not a member (any more): an earlier call, whose
    /// answer was lost, removed it, or it never was one.
    Already,
}

/// Where [`Client::add_member`] left the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A voter: it counts for elections and commits.
    Voter,
    /// A caught-up learner of a standalone cluster, waiting for a second
    /// new member to be promoted with it.
    LearnerAwaitingPair,
}
use frame::FrameError;

/// Options of a [`Client`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// How long one operation (including every retry) may take before it
    /// fails with [`Error::Timeout`] (default 10 s). A write that fails
    /// this way may or may not have been applied.
    pub deadline: Duration,
    /// How long to wait for a TCP connection (default 1 s).
    pub connect_timeout: Duration,
    /// How long to wait for the answer to one attempt before giving up on
    /// that connection and retrying (default 6 s: longer than the node's
    /// default request timeout, so the server answers first).
    pub attempt_timeout: Duration,
    /// The first pause between retries (default 20 ms); it doubles after
    /// each retry up to `max_backoff`.
    pub backoff: Duration,
    /// The longest pause between retries (default 100 ms: a failover
    /// takes about a second, and a client pausing longer finds the new
    /// active late; an attempt on a member that is not the active costs it
    /// one short answer).
    pub max_backoff: Duration,
    /// Largest answer frame accepted, in bytes (default 64 MiB).
    pub max_frame_bytes: usize,
    /// Mutual TLS: this client's credentials and the cluster it expects
    /// (members must hold certificates naming it); `None`: plain TCP
    /// (default).
    pub tls: Option<ClientTls>,
}

/// A client's TLS settings (see [`crate::transport::tls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The client's certificate and key, and the cluster's CA.
    pub identity: TlsIdentity,
    /// The cluster whose members it talks to.
    pub cluster_id: u64,
}

impl ClientTls {
    fn connect(
        tls: Option<&ClientTls>,
        tcp: TcpStream,
        deadline: Instant,
    ) -> std::io::Result<Stream> {
        match tls {
            None => Stream::connect(tcp, None, "", deadline),
            Some(t) => Stream::connect(
                tcp,
                Some(&t.identity),
                &crate::transport::tls::cluster_name(t.cluster_id),
                deadline,
            ),
        }
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            deadline: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(6),
            backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            max_frame_bytes: 64 * 1024 * 1024,
            tls: None,
        }
    }
}

/// One member's status, as its client API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member's status ([`Status::sessions`] and the rest as the member
    /// sees them).
    pub status: Status,
    /// The client API address of the leader it knows of, when it knows it.
    pub leader_api: Option<SocketAddr>,
}

/// What a [`Client`] may retry for an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Everything retryable: the operation is idempotent (a read) or
    /// carries a `WriteId`.
    Always,
    /// Only when the request was certainly not carried out (not the active,
    /// stopped, no connection): a switchover.
    Unexecuted,
}

/// Why an attempt failed.
enum AttemptError {
    /// The request was not sent (no connection).
    Unsent(String),
    /// The request was sent but no (usable) answer came back.
    Lost(String),
    /// Retrying cannot help (the answer is larger than this client takes).
    Fatal(Error),
}

struct Conn {
    addr: SocketAddr,
    stream: Stream,
}

/// A client of an AOC HA cluster: finds the active member, holds a session
/// and retries so that every write is applied exactly once (see the
/// [module documentation](self)).
///
/// Operations take `&mut self`: a client has one request in flight at a
/// time (which exactly-once sequencing requires). Use one client per
/// thread.
pub struct Client {
    endpoints: Vec<SocketAddr>,
    opts: ClientOptions,
    conn: Option<Conn>,
    /// The next endpoint to try when there is no hint.
    cursor: usize,
    client_id: u64,
    /// The last sequence number used.
    sequence: u64,
    next_request_id: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .field("connected", &self.conn.as_ref().map(|c| c.addr))
            .field("client_id", &self.client_id)
            .field("sequence", &self.sequence)
            .finish()
    }
}

impl Client {
    /// Connects to the cluster through `endpoints` (the client API
    /// addresses of the data members, tried in order; `NOT_LEADER` hints
    /// are followed) and opens a session on the active. Fails with
    /// [`Error::Timeout`] when no active answers within
    /// [`ClientOptions::deadline`].
    pub fn connect(endpoints: Vec<SocketAddr>, opts: ClientOptions) -> Result<Client> {
        if endpoints.is_empty() {
            return Err(Error::config(
                "endpoints",
                "at least one endpoint is needed",
            ));
        }
        if opts.attempt_timeout.is_zero() || opts.connect_timeout.is_zero() {
            return Err(Error::config(
                "attempt_timeout",
                "the attempt and connect timeouts must be positive",
            ));
        }
        let mut client = Client {
            endpoints,
            opts,
            conn: None,
            cursor: 0,
            client_id: 0,
            sequence: 0,
            next_request_id: 1,
        };
        let deadline = Instant::now() + client.opts.deadline;
        client.register(deadline)?;
        Ok(client)
    }

    /// The session's client id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The sequence number of the last write sent in this session (0 before
    /// the first).
    pub fn last_sequence(&self) -> u64 {
        self.sequence
    }

    /// The endpoints given to [`Client::connect`].
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// The member the client is connected to (the active, as far as it
    /// knows), if any.
    pub fn connected_to(&self) -> Option<SocketAddr> {
        self.conn.as_ref().map(|c| c.addr)
    }

    /// Sets `key` to `value`; the answer's `previous` is the value it
    /// replaced.
    pub fn put(
        &mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<KvResponse> {
        self.write(KvCommand::put(key, value))
    }

    /// Removes `key`; the answer's `ok` says whether it existed and
    /// `previous` is the value removed.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> Result<KvResponse> {
        self.write(KvCommand::delete(key))
    }

    /// Compare-and-swap: when the value of `key` is `expected` (`None`: the
    /// key is absent), sets it to `new` (`None`: removes it). Returns
    /// whether it swapped. Exactly-once: a retried compare-and-swap gets
    /// the first attempt's answer.
    pub fn cas(
        &mut self,
        key: impl Into<Vec<u8>>,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> Result<bool> {
        Ok(self.write(KvCommand::cas(key, expected, new))?.ok)
    }

    /// Sends any key-value command as the session's next write, retried
    /// with the same (client id, sequence) until it is answered or the
    /// deadline passes. An answer with `error` set (the state machine
    /// refused the command) is returned as [`Error::Decode`].
    pub fn write(&mut self, command: KvCommand) -> Result<KvResponse> {
        let deadline = Instant::now() + self.opts.deadline;
        self.sequence += 1;
        loop {
            let mut id = pb::WriteId::new();
            id.set_client_id(self.client_id);
            id.set_sequence(self.sequence);
            let body = write_request(&command, id);
            match self.call(deadline, "write", body, Retry::Always) {
                Ok(Resp::write(w)) => {
                    let response = write_from_proto(w);
                    return match response.error {
                        Some(reason) => Err(Error::Decode {
                            what: "kv command".into(),
                            reason,
                        }),
                        None => Ok(response),
                    };
                }
                Ok(other) => return Err(unexpected("write", &other)),
                Err(Error::SessionExpired { client_id }) => {
                    debug!(client_id, "session expired; opening a new one");
                    // The write was not applied: send it again in a new
                    // session.
                    self.register(deadline)?;
                    self.sequence = 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The value of `key` (`None`: not set), read linearizably on the
    /// active.
    pub fn get(&mut self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        let mut g = pb::GetRequest::new();
        g.set_key(key.into());
        let deadline = Instant::now() + self.opts.deadline;
        match self.call(deadline, "get", Req::get(g), Retry::Always)? {
            Resp::value(mut v) => Ok(v.get_found().then(|| v.take_value())),
            other => Err(unexpected("get", &other)),
        }
    }

    /// Every pair whose key starts with `prefix`, in key order, read
    /// linearizably on the active.
    pub fn scan(&mut self, prefix: impl Into<Vec<u8>>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut s = pb::ScanRequest::new();
        s.set_prefix(prefix.into());
        let deadline = Instant::now() + self.opts.deadline;
        match self.call(deadline, "scan", Req::scan(s), Retry::Always)? {
            Resp::pairs(mut p) => Ok(p
                .take_pairs()
                .into_iter()
                .map(|mut p| (p.take_key(), p.take_value()))
                .collect()),
            other => Err(unexpected("scan", &other)),
        }
    }

    /// The status of the member at `endpoint` (any member, active or not),
    /// over a connection of its own, in one attempt. A member that cannot
    /// be reached gives [`Error::Timeout`] naming it and the I/O error.
    pub fn status(&self, endpoint: SocketAddr) -> Result<MemberStatus> {
        status_of(endpoint, &self.opts)
    }

    /// The status of every endpoint, in order (see [`Client::status`]).
    pub fn status_all(&self) -> Vec<(SocketAddr, Result<MemberStatus>)> {
        self.endpoints
            .iter()
            .map(|&e| (e, self.status(e)))
            .collect()
    }

    /// Moves the active role to the passive with nothing lost (see
    /// [`crate::Node::switchover`]); returns the write pause it caused, as
    /// the old active measured it. Not retried once sent (a retry could
    /// switch back): an answer lost to a broken connection or a time-out
    /// is an error, and [`Client::status_all`] tells whether it happened.
    pub fn switchover(&mut self) -> Result<Duration> {
        let deadline = Instant::now() + self.opts.deadline;
        // A fresh connection: a stale one might fail after the request was
        // taken, and this request is not retried then.
        self.conn = None;
        match self.call(
            deadline,
            "switchover",
            Req::switchover(pb::SwitchoverRequest::new()),
            Retry::Unexecuted,
        )? {
            Resp::switchover(s) => Ok(Duration::from_millis(s.get_pause_ms())),
            other => Err(unexpected("switchover", &other)),
        }
    }

    /// Turns maintenance mode on (automatic failover suspended: only the
    /// current active may stand) or off, on the active.
    pub fn maintenance(&mut self, on: bool) -> Result<()> {
        let mut m = pb::MaintenanceRequest::new();
        m.set_on(on);
        let deadline = Instant::now() + self.opts.deadline;
        match self.call(deadline, "maintenance", Req::maintenance(m), Retry::Always)? {
            Resp::done(_) => Ok(()),
            other => Err(unexpected("maintenance", &other)),
        }
    }

    /// Clears every NOSPACE alarm (etcd's `alarm disarm`); a data member
    /// whose disk is still below its reserve raises its alarm again at its
    /// next measurement.
    pub fn disarm_alarms(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.opts.deadline;
        let body = Req::alarm_disarm(pb::AlarmDisarmRequest::new());
        match self.call(deadline, "alarm disarm", body, Retry::Always)? {
            Resp::done(_) => Ok(()),
            other => Err(unexpected("alarm disarm", &other)),
        }
    }

    /// Applies one membership change on the active (see
    /// [`MembershipChange`]): returns once the active applied it. Not
    /// retried once sent; [`Client::status_all`] shows the members.
    pub fn change_membership(&mut self, change: &MembershipChange) -> Result<()> {
        let deadline = Instant::now() + self.opts.deadline;
        let body = Req::membership(convert::membership_to_proto(change));
        match self.call(deadline, "membership change", body, Retry::Unexecuted)? {
            Resp::done(_) => Ok(()),
            other => Err(unexpected("membership change", &other)),
        }
    }

    /// Removes member `id` (not the active: switch over first). Running it
    /// again after an interruption is safe: a member that is gone already
    /// gives [`Removed::Already`].
    ///
    /// # Errors
    ///
    /// [`Error::Membership`] when the active refuses the change (the
    /// member is the active, or another change is in flight), and the
    /// errors of [`Client::change_membership`].
    pub fn remove_member(&mut self, id: u64) -> Result<Removed> {
        match self.change_membership(&MembershipChange::Remove(id)) {
            Ok(()) => Ok(Removed::Now),
            Err(Error::Membership { reason }) if reason.contains(NOT_A_MEMBER) => {
                Ok(Removed::Already)
            }
            Err(e) => Err(e),
        }
    }

    /// Adds `member` to the cluster: as a learner (it receives a snapshot,
    /// then the log), then as a voter once it has caught up. `progress` is
    /// told what the change waits for, about every `poll`; gives up after
    /// `timeout`. The member must be running (blank, listing the cluster's
    /// members in its configuration) or start meanwhile. Running it again
    /// after an interruption resumes where it stopped.
    ///
    /// A standalone cluster grows by two members promoted together (see
    /// [`MembershipChange::Promote`]): adding the first returns
    /// [`Added::LearnerAwaitingPair`] once it has caught up; adding the
    /// second promotes both and returns [`Added::Voter`].
    ///
    /// ```no_run
    /// # fn main() -> aoc_core::Result<()> {
    /// use std::time::Duration;
    /// use aoc_core::client::{Client, ClientOptions};
    /// use aoc_core::{Member, MemberRole};
    ///
    /// let mut client = Client::connect(vec!["10.0.0.1:7500".parse().unwrap()], ClientOptions::default())?;
    /// let passive = Member { id: 2, role: MemberRole::Data, ha_addr: "10.0.0.2:7400".into() };
    /// client.add_member(&passive, Duration::from_secs(600), Duration::from_secs(1), |what| {
    ///     eprintln!("{what}")
    /// })?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn add_member(
        &mut self,
        member: &Member,
        timeout: Duration,
        poll: Duration,
        mut progress: impl FnMut(&str),
    ) -> Result<Added> {
        let until = Instant::now() + timeout;
        match self.change_membership(&MembershipChange::AddLearner(member.clone())) {
            Ok(()) => progress(&format!("member {} added as a learner", member.id)),
            // Resumed after the promotion.
            Err(Error::Membership { reason }) if reason.contains(ALREADY_VOTER) => {
                progress(&format!("member {} is already a voter", member.id));
                return Ok(Added::Voter);
            }
            Err(e) => return Err(e),
        }
        loop {
            match self.change_membership(&MembershipChange::Promote(member.id)) {
                Ok(()) => {
                    progress(&format!("member {} promoted to voter", member.id));
                    return Ok(Added::Voter);
                }
                Err(Error::Membership { reason }) if reason.contains(ALREADY_VOTER) => {
                    return Ok(Added::Voter)
                }
                Err(Error::Membership { reason }) if reason.contains(AWAITS_PAIR) => {
                    progress(&reason);
                    return Ok(Added::LearnerAwaitingPair);
                }
                Err(Error::Membership { reason }) if reason.contains(NOT_CAUGHT_UP) => {
                    progress(&reason)
                }
                Err(Error::Busy { reason }) => progress(&reason),
                Err(e) => return Err(e),
            }
            if Instant::now() + poll > until {
                return Err(Error::Timeout {
                    what: format!(
                        "member {} did not catch up within {timeout:?}: is it running, and \
                         can the active reach it at {}?",
                        member.id, member.ha_addr
                    ),
                });
            }
            std::thread::sleep(poll);
        }
    }

    /// A consistent copy of the state machine: its snapshot at one applied
    /// index, taken on the active after a linearizable read barrier, so it
    /// holds every write acknowledged before this call. The cluster goes on
    /// serving meanwhile: the active reads the state off its raft thread
    /// ([`crate::Node::read_snapshot`]).
    ///
    /// The snapshot crosses in chunks (see the [module
    /// documentation](self)); `progress` is told the bytes received so far
    /// and the total after each. Each chunk has [`ClientOptions::deadline`]
    /// of its own. A transfer that breaks (a lost connection, a failover)
    /// starts again with a new snapshot, up to three times in all. The
    /// whole copy is checked against the CRC-32 the server sent with it.
    ///
    /// The result's `created_unix_ms` is this machine's clock; its
    /// `cluster_id` is the server's (0 when the server was not told it).
    pub fn backup(&mut self, mut progress: impl FnMut(u64, u64)) -> Result<Backup> {
        const ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        loop {
            match self.backup_once(&mut progress) {
                Ok(b) => return Ok(b),
                Err(e) if attempt < ATTEMPTS && backup_restartable(&e) => {
                    debug!(attempt, error = %e, "backup transfer broke; starting again");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn backup_once(&mut self, progress: &mut impl FnMut(u64, u64)) -> Result<Backup> {
        // The answer frame holds the chunk and a few hundred bytes more.
        let max_chunk = self.opts.max_frame_bytes.saturating_sub(1024).max(1) as u64;
        let request = |start: bool, offset: u64| {
            let mut b = pb::BackupRequest::new();
            b.set_start(start);
            b.set_offset(offset);
            b.set_max_chunk_bytes(max_chunk);
            Req::backup(b)
        };
        let deadline = Instant::now() + self.opts.deadline;
        let first = match self.call(deadline, "backup", request(true, 0), Retry::Always)? {
            Resp::backup(c) => c,
            other => return Err(unexpected("backup", &other)),
        };
        let total = first.get_total_bytes();
        let total_len = usize::try_from(total).map_err(|_| {
            Error::decode(
                "backup",
                format!("a snapshot of {total} bytes does not fit in memory here"),
            )
        })?;
        // The announced length is the server's word: reserve a bounded part
        // of it up front and let the vector grow with what really arrives.
        let mut data: Vec<u8> = Vec::with_capacity(total_len.min(64 * 1024 * 1024));
        let mut chunk = first;
        loop {
            if chunk.get_offset() != data.len() as u64 {
                return Err(Error::decode(
                    "backup",
                    format!(
                        "a chunk at offset {} while {} bytes were received",
                        chunk.get_offset(),
                        data.len()
                    ),
                ));
            }
            if data.len() + chunk.get_data().len() > total_len
                || (chunk.get_data().is_empty() && data.len() < total_len)
            {
                return Err(Error::decode(
                    "backup",
                    format!(
                        "a chunk of {} bytes at offset {} of a {total}-byte snapshot",
                        chunk.get_data().len(),
                        data.len()
                    ),
                ));
            }
            data.extend_from_slice(chunk.get_data());
            progress(data.len() as u64, total);
            if data.len() == total_len {
                break;
            }
            let deadline = Instant::now() + self.opts.deadline;
            let next = match self.call(
                deadline,
                "backup",
                request(false, data.len() as u64),
                Retry::Always,
            )? {
                Resp::backup(c) => c,
                other => return Err(unexpected("backup", &other)),
            };
            let same = |a: &pb::BackupChunk, b: &pb::BackupChunk| {
                (a.get_cluster_id(), a.get_member_id(), a.get_index())
                    == (b.get_cluster_id(), b.get_member_id(), b.get_index())
                    && (a.get_term(), a.get_total_bytes(), a.get_data_crc32())
                        == (b.get_term(), b.get_total_bytes(), b.get_data_crc32())
            };
            if !same(&next, &chunk) {
                return Err(Error::decode(
                    "backup",
                    "a chunk of another snapshot arrived (the transfer moved to another \
                     connection)",
                ));
            }
            chunk = next;
        }
        let found = crc32fast::hash(&data);
        if found != chunk.get_data_crc32() {
            return Err(Error::Backup {
                what: "transfer".into(),
                problem: BackupProblem::ChecksumMismatch {
                    expected: chunk.get_data_crc32(),
                    found,
                },
            });
        }
        let created_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Ok(Backup {
            meta: BackupMeta {
                cluster_id: chunk.get_cluster_id(),
                member_id: chunk.get_member_id(),
                index: chunk.get_index(),
                term: chunk.get_term(),
                created_unix_ms,
            },
            data,
        })
    }

    /// Opens a new session on the active (a retried registration may open
    /// a spare session, which expires unused).
    fn register(&mut self, deadline: Instant) -> Result<()> {
        let body = Req::register(pb::RegisterRequest::new());
        match self.call(deadline, "register", body, Retry::Always)? {
            Resp::registered(r) => {
                self.client_id = r.get_client_id();
                self.sequence = 0;
                debug!(client_id = self.client_id, "session opened");
                Ok(())
            }
            other => Err(unexpected("register", &other)),
        }
    }

    /// Sends `body` to the active until it is answered (retrying as
    /// `retry` allows) or `deadline` passes.
    fn call(&mut self, deadline: Instant, op: &str, body: Req, retry: Retry) -> Result<Resp> {
        let n = self.endpoints.len();
        let mut backoff = self.opts.backoff;
        let mut hint: Option<SocketAddr> = self.conn.as_ref().map(|c| c.addr);
        let mut hops = 0;
        let mut last = String::from("no attempt was made");
        loop {
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "{op}: no active member answered within {:?} (last: {last})",
                        self.opts.deadline
                    ),
                });
            }
            let addr = match hint.take() {
                Some(a) => a,
                None => {
                    let a = self.endpoints[self.cursor % n];
                    self.cursor = (self.cursor + 1) % n;
                    a
                }
            };
            let mut pause = true;
            match self.attempt(addr, &body, deadline) {
                Ok(Resp::error(e)) => {
                    let err = error_from_proto(&e);
                    last = format!("{addr}: {err}");
                    match e.get_kind() {
                        pb::ErrorKind::NOT_LEADER => {
                            let to: Option<SocketAddr> = e.get_leader_addr().parse().ok();
                            match to {
                                Some(to) if to != addr && hops <= n => {
                                    // A fresh hint: follow it at once.
                                    hops += 1;
                                    hint = Some(to);
                                    pause = false;
                                }
                                _ => hops = 0,
                            }
                        }
                        pb::ErrorKind::BUSY | pb::ErrorKind::TIMEOUT | pb::ErrorKind::OTHER
                            if retry == Retry::Always =>
                        {
                            // The member may still be the active: ask it
                            // again.
                            hint = Some(addr);
                        }
                        pb::ErrorKind::STOPPED => self.conn = None,
                        _ => return Err(err),
                    }
                }
                Ok(answer) => return Ok(answer),
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::Unsent(m)) => last = format!("{addr}: {m}"),
                Err(AttemptError::Lost(m)) => {
                    last = format!("{addr}: {m}");
                    if retry != Retry::Always {
                        return Err(Error::Timeout {
                            what: format!(
                                "{op}: the answer from {addr} was lost ({m}); \
                                 the outcome is unknown"
                            ),
                        });
                    }
                }
            }
            debug!(op, %addr, last = %last, "retrying");
            if pause {
                let left = deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(backoff.min(left));
                backoff = (backoff * 2).min(self.opts.max_backoff);
            }
        }
    }

    /// One attempt of `body` on `addr` (reusing the connection when it is
    /// to `addr`).
    fn attempt(
        &mut self,
        addr: SocketAddr,
        body: &Req,
        deadline: Instant,
    ) -> std::result::Result<Resp, AttemptError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(AttemptError::Unsent("the deadline passed".into()));
        }
        let reusable = self
            .conn
            .as_ref()
            .is_some_and(|c| c.addr == addr && still_open(&c.stream));
        if !reusable {
            self.conn = None;
            let connect = self.opts.connect_timeout.min(left);
            let stream = TcpStream::connect_timeout(&addr, connect)
                .map_err(|e| AttemptError::Unsent(format!("connect: {e}")))?;
            let _ = stream.set_nodelay(true);
            let stream =
                ClientTls::connect(self.opts.tls.as_ref(), stream, Instant::now() + connect)
                    .map_err(|e| AttemptError::Unsent(format!("TLS handshake: {e}")))?;
            self.conn = Some(Conn { addr, stream });
        }
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let mut req = pb::Request::new();
        req.set_request_id(request_id);
        req.body = Some(body.clone());
        let wait = self.opts.attempt_timeout.min(left);
        let Some(conn) = self.conn.as_mut() else {
            return Err(AttemptError::Unsent("no connection".into()));
        };
        let result = exchange(&mut conn.stream, &req, wait, self.opts.max_frame_bytes);
        match result {
            Ok(answer) if answer.get_request_id() == request_id => match answer.body {
                Some(body) => Ok(body),
                None => {
                    self.conn = None;
                    Err(AttemptError::Lost("an answer with no body".into()))
                }
            },
            Ok(answer) => {
                // request_id 0: about the connection, which the server may
                // close; anything else: the stream is out of step.
                self.conn = None;
                match answer.body {
                    Some(Resp::error(e)) if answer.get_request_id() == 0 => Ok(Resp::error(e)),
                    _ => Err(AttemptError::Lost(format!(
                        "an answer to request {} while waiting for {request_id}",
                        answer.get_request_id()
                    ))),
                }
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

/// Sends `req` on `stream` and reads the answer within `wait`.
fn exchange(
    stream: &mut Stream,
    req: &pb::Request,
    wait: Duration,
    max_frame_bytes: usize,
) -> std::result::Result<pb::Response, AttemptError> {
    let wait = wait.max(Duration::from_millis(1));
    stream
        .tcp()
        .set_write_timeout(Some(wait))
        .and_then(|()| stream.tcp().set_read_timeout(Some(wait)))
        .map_err(|e| AttemptError::Unsent(format!("socket: {e}")))?;
    // A failed write may still have delivered the request.
    frame::write_message(stream, req).map_err(|e| AttemptError::Lost(format!("send: {e}")))?;
    let body = frame::read_frame(stream, max_frame_bytes).map_err(|e| match e {
        FrameError::Closed => AttemptError::Lost("the connection was closed".into()),
        e if e.is_timeout() => AttemptError::Lost(format!("no answer within {wait:?}")),
        // A TLS record (alert 0x15 or handshake 0x16, version 3.x) read as
        // a frame length: the member speaks TLS and this client does not.
        FrameError::TooLarge { size, .. } if matches!(size >> 16, 0x1503 | 0x1603) => {
            AttemptError::Fatal(Error::config(
                "tls",
                "the member speaks TLS and this client has no TLS settings (ClientOptions::tls; \
                 on the command line --tls-ca, --tls-cert, --tls-key and --cluster-id)",
            ))
        }
        FrameError::TooLarge { size, limit } => AttemptError::Fatal(Error::TooLarge {
            what: "answer (ClientOptions::max_frame_bytes)".into(),
            size: usize::try_from(size).unwrap_or(usize::MAX),
            limit,
        }),
        e => AttemptError::Lost(format!("receive: {e}")),
    })?;
    frame::decode::<pb::Response>(&body).map_err(|e| AttemptError::Lost(e.to_string()))
}

/// Whether a kept connection still looks usable: the server has not
/// closed it (idle timeout, restart) and it holds no unread bytes. Checked
/// before reuse, so that a request is not sent into a connection the
/// server already gave up (whose failure would look like a lost answer).
fn still_open(stream: &Stream) -> bool {
    let stream = stream.tcp();
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let open = matches!(stream.peek(&mut byte),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_ok() && open
}

fn write_request(command: &KvCommand, id: pb::WriteId) -> Req {
    match command {
        KvCommand::Put { key, value } => {
            let mut p = pb::PutRequest::new();
            p.set_id(id);
            p.set_key(key.clone());
            p.set_value(value.clone());
            Req::put(p)
        }
        KvCommand::Delete { key } => {
            let mut d = pb::DeleteRequest::new();
            d.set_id(id);
            d.set_key(key.clone());
            Req::delete(d)
        }
        KvCommand::Cas { key, expected, new } => {
            let mut c = pb::CasRequest::new();
            c.set_id(id);
            c.set_key(key.clone());
            match expected {
                Some(v) => c.set_expected(v.clone()),
                None => c.set_expected_absent(true),
            }
            match new {
                Some(v) => c.set_new_value(v.clone()),
                None => c.set_delete(true),
            }
            Req::cas(c)
        }
    }
}

fn unreachable_member(endpoint: SocketAddr, why: &str) -> Error {
    Error::Timeout {
        what: format!("an answer from {endpoint} ({why})"),
    }
}

fn unexpected(op: &str, answer: &Resp) -> Error {
    unexpected_opt(op, Some(answer))
}

fn unexpected_opt(op: &str, answer: Option<&Resp>) -> Error {
    match answer {
        Some(Resp::error(e)) => error_from_proto(e),
        Some(other) => Error::decode(
            "client API answer",
            format!("{op} was answered with {}", answer_name(other)),
        ),
        None => Error::decode(
            "client API answer",
            format!("{op} was answered with nothing"),
        ),
    }
}

fn answer_name(answer: &Resp) -> &'static str {
    match answer {
        Resp::error(_) => "an error",
        Resp::registered(_) => "registered",
        Resp::write(_) => "write",
        Resp::value(_) => "value",
        Resp::pairs(_) => "pairs",
        Resp::status(_) => "status",
        Resp::switchover(_) => "switchover",
        Resp::done(_) => "done",
        Resp::backup(_) => "backup",
    }
}

/// One member's status, asked of `endpoint` without opening a session
/// (works with no active, for `aoc-node status`).
pub fn status_of(endpoint: SocketAddr, opts: &ClientOptions) -> Result<MemberStatus> {
    let stream = TcpStream::connect_timeout(&endpoint, opts.connect_timeout)
        .map_err(|e| unreachable_member(endpoint, &format!("connect: {e}")))?;
    let mut stream = ClientTls::connect(
        opts.tls.as_ref(),
        stream,
        Instant::now() + opts.connect_timeout,
    )
    .map_err(|e| unreachable_member(endpoint, &format!("TLS handshake: {e}")))?;
    let mut req = pb::Request::new();
    req.set_request_id(1);
    req.set_status(pb::StatusRequest::new());
    let answer = exchange(
        &mut stream,
        &req,
        opts.attempt_timeout,
        opts.max_frame_bytes,
    )
    .map_err(|e| match e {
        AttemptError::Unsent(m) | AttemptError::Lost(m) => unreachable_member(endpoint, &m),
        AttemptError::Fatal(e) => e,
    })?;
    match answer.body {
        Some(Resp::status(s)) => Ok(MemberStatus {
            status: status_from_proto(&s),
            leader_api: s.get_leader_addr().parse().ok(),
        }),
        Some(Resp::error(e)) => Err(error_from_proto(&e)),
        other => Err(unexpected_opt("status", other.as_ref())),
    }
}

/// Whether a broken backup transfer is worth starting again: the
/// connection holding its snapshot was lost or answered out of step, an
/// attempt timed out, or the copy did not match its checksum.
fn backup_restartable(e: &Error) -> bool {
    match e {
        Error::Decode { what, .. } => what == "backup",
        Error::Timeout { .. } | Error::Backup { .. } => true,
        _ => false,
    }
}
