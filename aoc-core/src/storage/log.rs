//! The log store contract.

use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use raft::RaftState;

use crate::proto::MemberMeta;

use crate::Result;

/// One atomic, durable change to the log store, produced by the replica
/// (see [`crate::Replica`]) and carried out by the driver.
///
/// Applied in this order: `snapshot` (the log is emptied and restarts after
/// the snapshot's index), `entries` (the first entry's index truncates every
/// stored entry at or above it), `hard_state`, `conf_state`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogWrite {
    /// The replica's ready number this write completes (see
    /// [`crate::Replica::on_persisted`]); 0 for writes made outside a replica.
    pub number: u64,
    /// Metadata of a snapshot installed by this write. The state machine must
    /// already hold the snapshot's state durably.
    pub snapshot: Option<SnapshotMetadata>,
    /// Entries to append, contiguous and ascending.
    pub entries: Vec<Entry>,
    /// The new hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// The new configuration, if it changed.
    pub conf_state: Option<ConfState>,
    /// The member's own metadata (maintenance mode), if it changed.
    pub member_meta: Option<MemberMeta>,
}

impl LogWrite {
    /// True when the write changes nothing.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.conf_state.is_none()
            && self.member_meta.is_none()
    }

    /// Folds `later` into `self`, so that one synced write carries both
    /// (group commit across readies). The result equals applying `self`
    /// then `later`.
    pub fn merge(&mut self, later: LogWrite) {
        self.number = self.number.max(later.number);
        if later.snapshot.is_some() {
            // A snapshot discards every entry before it, including ours, and
            // replaces the configuration with its own.
            self.snapshot = later.snapshot;
            self.entries = later.entries;
            self.conf_state = None;
        } else if let Some(first) = later.entries.first() {
            let first_index = first.index;
            self.entries.retain(|e| e.index < first_index);
            self.entries.extend(later.entries);
        }
        if later.hard_state.is_some() {
            self.hard_state = later.hard_state;
        }
        if later.conf_state.is_some() {
            self.conf_state = later.conf_state;
        }
        if later.member_meta.is_some() {
            self.member_meta = later.member_meta;
        }
    }

    /// Approximate size in bytes of the entries this write carries.
    pub fn entry_bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.data.len() + e.context.len() + 24)
            .sum()
    }
}

/// Durable storage of the raft log.
///
/// Contract (checked by [`crate::storage::conformance::log_store`]):
/// - a fresh store has `first_index() == 1`, `last_index() == 0`, default
///   hard state and conf state, and `term(0) == 0`;
/// - `term(first_index() - 1)` always answers (the snapshot or compaction
///   point), while lower indexes answer `Compacted` and higher than
///   `last_index()` answer `Unavailable`;
/// - [`LogStore::write`] is atomic and durable on return: after a crash the
///   store holds every returned write, or (for a write in progress at the
///   crash) either all of it or none of it;
/// - [`LogStore::compact`] never discards an entry above its argument and
///   keeps the term of the compaction point.
///
/// Implementations are shared between the thread that reads for raft and
/// the thread that writes, hence `Send + Sync` and `&self` methods.
pub trait LogStore: Send + Sync + 'static {
    /// The stored hard state and conf state.
    fn initial_state(&self) -> Result<RaftState>;
    /// The first index of a stored entry (the compaction point + 1).
    fn first_index(&self) -> Result<u64>;
    /// The last stored index (the compaction point when no entry is stored).
    fn last_index(&self) -> Result<u64>;
    /// The term of `index`, for `first_index() - 1 <= index <= last_index()`.
    fn term(&self, index: u64) -> raft::Result<u64>;
    /// Entries in `[low, high)`, at most `max_size` bytes but at least one.
    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<Entry>>;
    /// Metadata of the compaction point: index, term and the conf state
    /// recorded with it (the last installed snapshot, or the latest compaction).
    fn snapshot_metadata(&self) -> Result<SnapshotMetadata>;
    /// The member's metadata as last written (default when never written).
    /// A snapshot install keeps it.
    fn member_meta(&self) -> Result<MemberMeta>;
    /// Applies `write` atomically and durably (synced before returning).
    fn write(&self, write: &LogWrite) -> Result<()>;
    /// Discards entries up to and including `index` (which must be at most
    /// `last_index()`), keeping its term as the compaction point. Durable
    /// when it returns. A no-op when `index < first_index()`.
    fn compact(&self, index: u64) -> Result<()>;
    /// Bytes used on disk (or in memory) by the log.
    fn size_bytes(&self) -> u64;
}
