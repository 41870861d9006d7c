//! The raft-rs `Storage` a replica reads through: the durable log store plus
//! an overlay of the writes handed to the driver but not yet persisted.
//!
//! raft-rs requires entries to be readable from `Storage` as soon as a ready
//! is advanced (`advance_append_async`), while our writes complete later (the
//! driver syncs them on its own schedule). The overlay answers for them in
//! the meantime. It is trimmed as writes complete: once no pending write
//! starts at or below an index, the store answers for that index.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};

use raft::eraftpb::{ConfState, Entry, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::storage::{LogStore, LogWrite};

#[derive(Debug)]
struct PendingRecord {
    number: u64,
    /// First index this write rewrites (its snapshot index + 1, or its first
    /// entry's index); `u64::MAX` when it carries no entry and no snapshot.
    first_rewritten: u64,
    has_snapshot: bool,
}

/// See the module docs.
pub(crate) struct LogView<L> {
    store: L,
    pending: VecDeque<PendingRecord>,
    /// Entries of pending writes, contiguous from `overlay_start`.
    overlay: Vec<Entry>,
    overlay_start: u64,
    /// The snapshot of a pending write: (index, term).
    pending_snapshot: Option<(u64, u64)>,
    /// What `Storage::snapshot` describes: the state machine's applied point.
    pub(crate) applied: u64,
    pub(crate) applied_term: u64,
    pub(crate) applied_conf: ConfState,
    /// Refuse to build snapshots (set by members without state).
    pub(crate) snapshots_unavailable: bool,
    /// The member that takes snapshot metadata alone (the witness): its
    /// snapshot is described at the applied point, with no state read.
    pub(crate) header_only_to: Option<u64>,
    /// The metadata of the state snapshot read and ready to send.
    pub(crate) ready_snapshot: Option<SnapshotMetadata>,
    /// Members raft asked a state snapshot for while none would do, with
    /// the lowest index each needs: the replica starts a read for them
    /// (`snapshot_source.rs`). A cell: raft asks through `&self`.
    pub(crate) snapshot_wanted: RefCell<BTreeMap<u64, u64>>,
    /// The commit index reported at start is at least this (the state
    /// machine's applied index: an applied entry was committed).
    pub(crate) min_commit: u64,
}

impl<L: LogStore> LogView<L> {
    pub(crate) fn new(store: L) -> Self {
        LogView {
            store,
            pending: VecDeque::new(),
            overlay: Vec::new(),
            overlay_start: 0,
            pending_snapshot: None,
            applied: 0,
            applied_term: 0,
            applied_conf: ConfState::default(),
            snapshots_unavailable: false,
            header_only_to: None,
            ready_snapshot: None,
            snapshot_wanted: RefCell::new(BTreeMap::new()),
            min_commit: 0,
        }
    }

    pub(crate) fn store(&self) -> &L {
        &self.store
    }

    /// Records a write handed to the driver. Must be called before raft-rs
    /// is told the ready was advanced.
    pub(crate) fn push(&mut self, write: &LogWrite) {
        let mut first_rewritten = u64::MAX;
        if let Some(meta) = &write.snapshot {
            self.pending_snapshot = Some((meta.index, meta.term));
            self.overlay.clear();
            self.overlay_start = meta.index + 1;
            first_rewritten = meta.index + 1;
        }
        if let Some(first) = write.entries.first() {
            let f = first.index;
            first_rewritten = first_rewritten.min(f);
            if self.overlay.is_empty() || f <= self.overlay_start {
                self.overlay.clear();
                self.overlay_start = f;
            } else {
                let keep = (f - self.overlay_start) as usize;
                assert!(
                    keep <= self.overlay.len(),
                    "raft appended at {f} past the end of the pending log ({} entries from {})",
                    self.overlay.len(),
                    self.overlay_start
                );
                self.overlay.truncate(keep);
            }
            self.overlay.extend(write.entries.iter().cloned());
        }
        self.pending.push_back(PendingRecord {
            number: write.number,
            first_rewritten,
            has_snapshot: write.snapshot.is_some(),
        });
    }

    /// Every write numbered up to `number` is durable in the store.
    pub(crate) fn persisted(&mut self, number: u64) {
        while self.pending.front().is_some_and(|r| r.number <= number) {
            self.pending.pop_front();
        }
        if !self.pending.iter().any(|r| r.has_snapshot) {
            self.pending_snapshot = None;
        }
        let min_first = self
            .pending
            .iter()
            .map(|r| r.first_rewritten)
            .min()
            .unwrap_or(u64::MAX);
        if min_first == u64::MAX {
            self.overlay.clear();
        } else if min_first > self.overlay_start {
            // Entries below `min_first` are in the store as the overlay has
            // them: no pending write rewrites them.
            let drop = ((min_first - self.overlay_start) as usize).min(self.overlay.len());
            self.overlay.drain(..drop);
            self.overlay_start = min_first;
        }
    }

    /// Whether a write numbered after `number` is pending.
    pub(crate) fn has_pending_after(&self, number: u64) -> bool {
        self.pending.iter().any(|r| r.number > number)
    }

    /// Whether a write is still pending.
    /// Whether a snapshot install is written but not yet persisted.
    pub(crate) fn snapshot_pending(&self) -> bool {
        self.pending_snapshot.is_some()
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn overlay_last(&self) -> Option<u64> {
        if self.overlay.is_empty() {
            None
        } else {
            Some(self.overlay_start + self.overlay.len() as u64 - 1)
        }
    }

    fn store_err(e: crate::Error) -> raft::Error {
        raft::Error::Store(StorageError::Other(Box::new(e)))
    }
}

impl<L: LogStore> Storage for LogView<L> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let mut state = self.store.initial_state().map_err(Self::store_err)?;
        // raft-rs restarts with `committed = first_index - 1` and panics if
        // the stored commit is lower; a commit at or above the compaction
        // point is always true (only committed entries are compacted).
        let first = self.store.first_index().map_err(Self::store_err)?;
        if state.hard_state.commit + 1 < first {
            state.hard_state.commit = first - 1;
        }
        state.hard_state.commit = state.hard_state.commit.max(self.min_commit);
        Ok(state)
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        if let Some((snap_index, _)) = self.pending_snapshot {
            if low <= snap_index {
                return Err(raft::Error::Store(StorageError::Compacted));
            }
        }
        let mut out = Vec::new();
        let split = if self.overlay.is_empty() {
            high
        } else {
            self.overlay_start.min(high)
        };
        if low < split {
            out = self.store.entries(low, split, max_size)?;
            if (out.len() as u64) < split - low {
                // The size limit cut the store part short.
                return Ok(out);
            }
        }
        if high > split {
            let last = self
                .overlay_last()
                .ok_or(raft::Error::Store(StorageError::Unavailable))?;
            if high > last + 1 {
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
            let from = (low.max(self.overlay_start) - self.overlay_start) as usize;
            let to = (high - self.overlay_start) as usize;
            out.extend(self.overlay[from..to].iter().cloned());
            raft::util::limit_size(&mut out, max_size);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if let Some((snap_index, snap_term)) = self.pending_snapshot {
            if idx == snap_index {
                return Ok(snap_term);
            }
            if idx < snap_index {
                return Err(raft::Error::Store(StorageError::Compacted));
            }
        }
        if !self.overlay.is_empty() && idx >= self.overlay_start {
            return match self.overlay.get((idx - self.overlay_start) as usize) {
                Some(e) => Ok(e.term),
                None => Err(raft::Error::Store(StorageError::Unavailable)),
            };
        }
        self.store.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        if let Some((snap_index, _)) = self.pending_snapshot {
            return Ok(snap_index + 1);
        }
        self.store.first_index().map_err(Self::store_err)
    }

    fn last_index(&self) -> raft::Result<u64> {
        if let Some(last) = self.overlay_last() {
            return Ok(last);
        }
        if let Some((snap_index, _)) = self.pending_snapshot {
            return Ok(snap_index);
        }
        self.store.last_index().map_err(Self::store_err)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // Only metadata here; the replica fills in the data when the
        // message leaves (see `Replica::fill_snapshots`). raft-rs panics on
        // an index-0 snapshot and on every error but this one, and asks
        // again at the follower's next answer.
        let unavailable = Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ));
        if self.snapshots_unavailable || self.applied == 0 {
            return unavailable;
        }
        let mut snap = Snapshot::default();
        if Some(to) == self.header_only_to {
            // The applied point: the witness takes no state.
            if self.applied < request_index {
                return unavailable;
            }
            let mut meta = SnapshotMetadata {
                index: self.applied,
                term: self.applied_term,
                ..Default::default()
            };
            meta.set_conf_state(self.applied_conf.clone());
            snap.set_metadata(meta);
            return Ok(snap);
        }
        if let Some(meta) = &self.ready_snapshot {
            // It must reach the request, and the log must still hold the
            // entries that follow it, or `to` would need another snapshot
            // right after this one.
            let first = self.first_index()?;
            if meta.index >= request_index && meta.index + 1 >= first {
                snap.set_metadata(meta.clone());
                return Ok(snap);
            }
        }
        let mut wanted = self.snapshot_wanted.borrow_mut();
        let need = wanted.entry(to).or_insert(request_index);
        *need = (*need).max(request_index);
        unavailable
    }
}
