//! [`MemKv`]: the key-value state machine in memory, with crash semantics,
//! for tests and the deterministic simulation.

use std::collections::BTreeMap;

use super::kv::{plan_batch, SnapshotData, SnapshotEncoder, SnapshotView};
use super::{ApplyBatch, KvStateMachine, Session, StateMachine};
use crate::Result;

/// One change made since the last sync, with what it replaced.
#[derive(Debug, Clone)]
enum Undo {
    /// A key had this value (`None`: was absent).
    Data(Vec<u8>, Option<Vec<u8>>),
    /// A session had this row (`None`: was absent).
    Session(u64, Option<Session>),
    /// The applied index was this.
    Applied(u64),
}

/// The key-value state machine in memory.
///
/// It behaves like a store on a disk that loses unsynced writes on a crash:
/// an applied batch is visible at once but volatile; [`StateMachine::sync`]
/// makes everything applied so far durable; [`MemKv::crash`] reverts to the
/// last durable state (batch by batch atomically: never a partial batch);
/// [`StateMachine::restore`] is durable at once.
///
/// Iteration is in key order (`BTreeMap`), so every run is deterministic.
/// Cloning copies the whole state (durable and volatile parts), which lets a
/// simulation fork a member.
#[derive(Debug, Clone, Default)]
pub struct MemKv {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    sessions: BTreeMap<u64, Session>,
    applied_index: u64,
    /// The changes since the last sync, oldest first; a crash undoes them
    /// newest first. Sync is O(1) and a crash costs what it undoes.
    undo: Vec<Undo>,
}

impl MemKv {
    /// An empty store (applied index 0, no pairs, no sessions), durable.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a crash and restart: every batch applied since the last
    /// [`StateMachine::sync`] (or restore) is lost, and the store holds the
    /// last durable state again.
    pub fn crash(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Data(key, Some(value)) => {
                    self.data.insert(key, value);
                }
                Undo::Data(key, None) => {
                    self.data.remove(&key);
                }
                Undo::Session(id, Some(session)) => {
                    self.sessions.insert(id, session);
                }
                Undo::Session(id, None) => {
                    self.sessions.remove(&id);
                }
                Undo::Applied(index) => self.applied_index = index,
            }
        }
    }

    /// The applied index that survives a crash now.
    pub fn durable_index(&self) -> u64 {
        self.undo
            .iter()
            .find_map(|u| match u {
                Undo::Applied(index) => Some(*index),
                _ => None,
            })
            .unwrap_or(self.applied_index)
    }

    /// Whether batches were applied since the last sync.
    pub fn has_unsynced(&self) -> bool {
        !self.undo.is_empty()
    }
}

impl StateMachine for MemKv {
    fn applied_index(&self) -> u64 {
        self.applied_index
    }

    fn apply(&mut self, batch: &ApplyBatch<'_>) -> Result<Vec<Vec<u8>>> {
        let data = &self.data;
        let effect = plan_batch(batch, |key| Ok(data.get(key).cloned()))?;
        for (key, value) in effect.writes {
            let old = match value {
                Some(value) => self.data.insert(key.clone(), value),
                None => self.data.remove(&key),
            };
            self.undo.push(Undo::Data(key, old));
        }
        for (id, row) in effect.sessions {
            let old = match row {
                Some(session) => self.sessions.insert(id, session),
                None => self.sessions.remove(&id),
            };
            self.undo.push(Undo::Session(id, old));
        }
        self.undo.push(Undo::Applied(self.applied_index));
        self.applied_index = effect.applied_index;
        Ok(effect.responses)
    }

    fn sessions(&self) -> Result<Vec<Session>> {
        Ok(self.sessions.values().cloned().collect())
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        let mut out = SnapshotEncoder::new(self.applied_index);
        for (key, value) in &self.data {
            out.pair(key, value);
        }
        let sessions: Vec<Session> = self.sessions.values().cloned().collect();
        Ok(out.finish(&sessions))
    }

    fn check_snapshot(&self, index: u64, data: &[u8]) -> Result<()> {
        SnapshotView::decode(index, data).map(|_| ())
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<()> {
        let snapshot = SnapshotData::decode(index, data)?;
        self.data = snapshot.pairs.into_iter().collect();
        self.sessions = snapshot
            .sessions
            .into_iter()
            .map(|s| (s.client_id, s))
            .collect();
        self.applied_index = snapshot.applied_index;
        self.undo.clear();
        Ok(())
    }

    fn frees_space(&self, command: &[u8]) -> bool {
        super::KvCommand::frees_space(command)
    }

    fn sync(&mut self) -> Result<u64> {
        self.undo.clear();
        Ok(self.applied_index)
    }
}

impl KvStateMachine for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.data.get(key).cloned())
    }

    fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .data
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}
