//! An in-memory [`LogStore`] for the simulation and tests.
//!
//! Every write is "synced" when it returns, so a simulated crash loses only
//! writes that the driver had not yet handed to the store (the simulation
//! holds those in its disk queue). Clones share the same contents, so a
//! simulated member can restart on the same "disk".

use std::sync::Arc;

use parking_lot::Mutex;
use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use raft::{RaftState, StorageError};

use super::{LogStore, LogWrite};
use crate::proto::MemberMeta;
use crate::Result;

#[derive(Debug, Default)]
struct Inner {
    /// Compaction point: index, term and conf state.
    meta: SnapshotMetadata,
    entries: Vec<Entry>,
    hard_state: HardState,
    conf_state: ConfState,
    writes: u64,
    member_meta: MemberMeta,
    /// Bytes of the stored entries (kept as entries come and go).
    bytes: u64,
}

fn entry_bytes(e: &Entry) -> u64 {
    (e.data.len() + e.context.len() + 24) as u64
}

impl Inner {
    fn first_index(&self) -> u64 {
        self.meta.index + 1
    }

    fn last_index(&self) -> u64 {
        self.meta.index + self.entries.len() as u64
    }
}

/// An in-memory log store (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct MemLogStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemLogStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many writes were applied (for tests that count syncs).
    pub fn write_count(&self) -> u64 {
        self.inner.lock().writes
    }

    /// A deep copy that no longer shares contents with `self`.
    pub fn deep_clone(&self) -> Self {
        let g = self.inner.lock();
        MemLogStore {
            inner: Arc::new(Mutex::new(Inner {
                meta: g.meta.clone(),
                entries: g.entries.clone(),
                hard_state: g.hard_state.clone(),
                conf_state: g.conf_state.clone(),
                writes: g.writes,
                member_meta: g.member_meta.clone(),
                bytes: g.bytes,
            })),
        }
    }
}

impl LogStore for MemLogStore {
    fn initial_state(&self) -> Result<RaftState> {
        let g = self.inner.lock();
        Ok(RaftState::new(g.hard_state.clone(), g.conf_state.clone()))
    }

    fn first_index(&self) -> Result<u64> {
        Ok(self.inner.lock().first_index())
    }

    fn last_index(&self) -> Result<u64> {
        Ok(self.inner.lock().last_index())
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let g = self.inner.lock();
        if index == g.meta.index {
            return Ok(g.meta.term);
        }
        if index < g.meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > g.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(g.entries[(index - g.first_index()) as usize].term)
    }

    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<Entry>> {
        let g = self.inner.lock();
        if low < g.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > g.last_index() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = g.first_index();
        let mut out: Vec<Entry> =
            g.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }

    fn snapshot_metadata(&self) -> Result<SnapshotMetadata> {
        let g = self.inner.lock();
        let mut meta = g.meta.clone();
        meta.set_conf_state(g.conf_state.clone());
        Ok(meta)
    }

    fn member_meta(&self) -> Result<MemberMeta> {
        Ok(self.inner.lock().member_meta.clone())
    }

    fn write(&self, write: &LogWrite) -> Result<()> {
        let mut g = self.inner.lock();
        g.writes += 1;
        if let Some(meta) = &write.snapshot {
            g.meta = meta.clone();
            g.entries.clear();
            g.bytes = 0;
            g.conf_state = meta.get_conf_state().clone();
        }
        if let Some(first) = write.entries.first() {
            let first_index = first.index;
            // Invariant: raft never appends with a gap or below the snapshot.
            assert!(
                first_index > g.meta.index && first_index <= g.last_index() + 1,
                "log append at {first_index} leaves a gap or rewrites the snapshot (log {}..={})",
                g.first_index(),
                g.last_index()
            );
            let keep = (first_index - g.first_index()) as usize;
            let dropped: u64 = g.entries[keep..].iter().map(entry_bytes).sum();
            let added: u64 = write.entries.iter().map(entry_bytes).sum();
            g.entries.truncate(keep);
            g.entries.extend(write.entries.iter().cloned());
            g.bytes = g.bytes - dropped + added;
        }
        if let Some(hs) = &write.hard_state {
            g.hard_state = hs.clone();
        }
        if let Some(cs) = &write.conf_state {
            g.conf_state = cs.clone();
        }
        if let Some(m) = &write.member_meta {
            g.member_meta = m.clone();
        }
        Ok(())
    }

    fn compact(&self, index: u64) -> Result<()> {
        let mut g = self.inner.lock();
        if index < g.first_index() {
            return Ok(());
        }
        assert!(
            index <= g.last_index(),
            "compact to {index} beyond the last index {}",
            g.last_index()
        );
        let term = g.entries[(index - g.first_index()) as usize].term;
        let drop = (index + 1 - g.first_index()) as usize;
        let dropped: u64 = g.entries[..drop].iter().map(entry_bytes).sum();
        g.entries.drain(..drop);
        g.bytes -= dropped;
        g.meta.index = index;
        g.meta.term = term;
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.inner.lock().bytes
    }
}
