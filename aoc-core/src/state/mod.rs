//! The state machine contract and the ready-made key-value state machine.
//!
//! The replication layer hands committed entries to a [`StateMachine`] in
//! batches ([`ApplyBatch`]). A batch is applied atomically together with the
//! applied index and the client-table changes it carries, so that after a
//! crash the state, the applied index and the client table always agree.
//! The store need not sync each batch: the raft log replays whatever the
//! store lost. [`StateMachine::sync`] makes the state durable for real; the
//! log is compacted only up to the index it returns.

pub mod conformance;
mod kv;
mod mem_kv;
mod sled_kv;
mod sled_read;

pub(crate) use kv::SnapshotData;
pub use kv::{KvCommand, KvResponse, KvStateMachine};
pub use mem_kv::MemKv;
pub use sled_kv::SledKv;

use crate::Result;

/// One entry of a client's session, kept by the state machine with the state
/// it describes (the client table).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Session {
    /// The client id: the index of the entry that registered the session.
    pub client_id: u64,
    /// The last applied sequence number of this client.
    pub last_sequence: u64,
    /// The response of that last write, returned again to a retry.
    pub last_response: Vec<u8>,
    /// The leader's stamp (ms) of the client's last entry; drives expiry.
    pub last_active_ms: u64,
}

/// The client-session part of a command being applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStamp {
    /// The session's client id.
    pub client_id: u64,
    /// The write's sequence number.
    pub sequence: u64,
    /// The leader's stamp (ms) of the entry.
    pub stamp_ms: u64,
}

/// One command to apply.
#[derive(Debug, Clone, Copy)]
pub struct ApplyCommand<'a> {
    /// The raft index of the entry.
    pub index: u64,
    /// The command bytes, as proposed.
    pub command: &'a [u8],
    /// When set, the state machine records `Session { client_id, sequence,
    /// response, stamp_ms }` in the same atomic batch.
    pub session: Option<SessionStamp>,
}

/// A batch of committed entries, applied atomically.
#[derive(Debug, Clone, Default)]
pub struct ApplyBatch<'a> {
    /// The applied index after this batch (the last entry's index, even when
    /// that entry carries no command).
    pub applied_index: u64,
    /// The commands, in log order.
    pub commands: Vec<ApplyCommand<'a>>,
    /// Sessions opened by this batch (no response yet).
    pub new_sessions: Vec<Session>,
    /// Sessions removed by this batch (expired).
    pub expired_sessions: Vec<u64>,
}

/// A replicated state machine, implemented by the embedding program.
///
/// Every member applies the same batches in the same order, so an
/// implementation must be deterministic: the response and the new state may
/// depend only on the state and the command, never on the clock, the member
/// or randomness.
pub trait StateMachine: Send + 'static {
    /// The index of the last entry whose effects this state holds.
    fn applied_index(&self) -> u64;

    /// Applies `batch` atomically: every command in order, the session of
    /// every command that carries one (with its response), the new and the
    /// expired sessions, and the applied index. Returns one response per
    /// command. An error means the store failed (the member stops); a bad
    /// command must be answered with a response, not an error.
    fn apply(&mut self, batch: &ApplyBatch<'_>) -> Result<Vec<Vec<u8>>>;

    /// Every stored session (read on start and after a restore).
    fn sessions(&self) -> Result<Vec<Session>>;

    /// A snapshot of the whole state (sessions included) at
    /// [`StateMachine::applied_index`].
    fn snapshot(&self) -> Result<Vec<u8>>;

    /// Starts reading a snapshot at [`StateMachine::applied_index`] that
    /// [`StateMachine::apply`] and [`StateMachine::sync`] may run alongside.
    ///
    /// A leader reads the snapshot a lagging member needs with this, so a
    /// large state does not hold up its raft thread (heartbeats, commits)
    /// while it is read: that pause, past the election timeout, would
    /// fail the leader over. The replica polls the returned read on its
    /// own thread; the store may read on another thread. The bytes must be
    /// those [`StateMachine::snapshot`] gives at that index.
    ///
    /// At most one read is in progress: starting another, or dropping the
    /// read, ends the one before. [`StateMachine::restore`] ends it too.
    ///
    /// The default reads the whole snapshot at once, with
    /// [`StateMachine::snapshot`], on the calling thread.
    fn start_snapshot(&mut self) -> Result<Box<dyn SnapshotRead>> {
        Ok(Box::new(ReadAtOnce {
            index: self.applied_index(),
            data: Some(self.snapshot()),
        }))
    }

    /// Replaces the whole state with `data`, a snapshot taken at `index`.
    /// The new state must be durable (synced) when this returns.
    fn restore(&mut self, index: u64, data: &[u8]) -> Result<()>;

    /// Checks, changing nothing, that `data` is a snapshot taken at `index`
    /// that [`StateMachine::restore`] would accept. A member checks every
    /// snapshot a peer sends before raft takes it: a damaged or foreign
    /// snapshot is refused with a warning instead of failing the member at
    /// restore. The default accepts everything (restore then decides).
    fn check_snapshot(&self, index: u64, data: &[u8]) -> Result<()> {
        let _ = (index, data);
        Ok(())
    }

    /// Makes every applied batch durable (a real sync) and returns the
    /// applied index that is now durable.
    fn sync(&mut self) -> Result<u64>;

    /// Whether `command` only frees space (a delete): such commands are
    /// still taken while a data member's disk is below its reserve (the
    /// NOSPACE alarm, [`crate::Error::NoSpace`]), so an operator can make
    /// room without an outage. The default: any command may take space.
    fn frees_space(&self, command: &[u8]) -> bool {
        let _ = command;
        false
    }
}

/// A snapshot being read (see [`StateMachine::start_snapshot`]).
///
/// ```
/// use aoc_core::state::{MemKv, StateMachine};
///
/// let mut kv = MemKv::new();
/// let expected = kv.snapshot()?;
/// let mut read = kv.start_snapshot()?;
/// assert_eq!(read.index(), 0);
/// // MemKv reads at once; another store may answer `None` a while.
/// let data = loop {
///     if let Some(data) = read.poll() {
///         break data?;
///     }
/// };
/// assert_eq!(data, expected);
/// # Ok::<(), aoc_core::Error>(())
/// ```
pub trait SnapshotRead: Send {
    /// The applied index the snapshot is taken at.
    fn index(&self) -> u64;

    /// The snapshot's bytes once they are read, `None` while they are
    /// not. It gives them, or the error that ended the read, once; later
    /// calls give `None`.
    fn poll(&mut self) -> Option<Result<Vec<u8>>>;
}

/// The default [`SnapshotRead`]: read before it is returned.
struct ReadAtOnce {
    index: u64,
    data: Option<Result<Vec<u8>>>,
}

impl SnapshotRead for ReadAtOnce {
    fn index(&self) -> u64 {
        self.index
    }

    fn poll(&mut self) -> Option<Result<Vec<u8>>> {
        self.data.take()
    }
}

/// The state machine type of a witness: it has no values, so a witness
/// replica (`Replica<L, NoStateMachine>`) cannot hold or run a state
/// machine. See [`crate::Replica::new_witness`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoStateMachine {}

impl StateMachine for NoStateMachine {
    fn applied_index(&self) -> u64 {
        match *self {}
    }
    fn apply(&mut self, _batch: &ApplyBatch<'_>) -> Result<Vec<Vec<u8>>> {
        match *self {}
    }
    fn sessions(&self) -> Result<Vec<Session>> {
        match *self {}
    }
    fn snapshot(&self) -> Result<Vec<u8>> {
        match *self {}
    }
    fn restore(&mut self, _index: u64, _data: &[u8]) -> Result<()> {
        match *self {}
    }
    fn sync(&mut self) -> Result<u64> {
        match *self {}
    }
}
