//! What a member applies committed entries to: a data member's state
//! machine, or, on the witness, nothing but an applied index.
//!
//! The witness holds no state machine value at all, so it cannot run one:
//! committed commands reach it only as an index to advance to.

use crate::state::{ApplyBatch, Session, SnapshotRead, StateMachine};
use crate::{Error, Result};

pub(crate) enum Machine<S> {
    Data(S),
    Witness { applied: u64 },
}

impl<S: StateMachine> Machine<S> {
    pub(crate) fn is_witness(&self) -> bool {
        matches!(self, Machine::Witness { .. })
    }

    pub(crate) fn applied_index(&self) -> u64 {
        match self {
            Machine::Data(s) => s.applied_index(),
            Machine::Witness { applied } => *applied,
        }
    }

    /// Applies a batch; the witness only advances its applied index (its
    /// batches carry no command: see `Replica::apply_entries`).
    pub(crate) fn apply(&mut self, batch: &ApplyBatch<'_>) -> Result<Vec<Vec<u8>>> {
        match self {
            Machine::Data(s) => s.apply(batch),
            Machine::Witness { applied } => {
                assert!(
                    batch.commands.is_empty() && batch.new_sessions.is_empty(),
                    "witness: a command reached the witness's apply path"
                );
                *applied = (*applied).max(batch.applied_index);
                Ok(Vec::new())
            }
        }
    }

    pub(crate) fn sessions(&self) -> Result<Vec<Session>> {
        match self {
            Machine::Data(s) => s.sessions(),
            Machine::Witness { .. } => Ok(Vec::new()),
        }
    }

    /// Starts a snapshot read (see [`StateMachine::start_snapshot`]).
    pub(crate) fn start_snapshot(&mut self) -> Result<Box<dyn SnapshotRead>> {
        match self {
            Machine::Data(s) => s.start_snapshot(),
            Machine::Witness { .. } => Err(Error::storage(
                "witness",
                "the witness holds no state and reads no snapshot",
            )),
        }
    }

    pub(crate) fn restore(&mut self, index: u64, data: &[u8]) -> Result<()> {
        match self {
            Machine::Data(s) => s.restore(index, data),
            // The witness installs snapshot metadata alone (from a data
            // leader compacted past what it lacks): it only moves on.
            Machine::Witness { applied } if data.is_empty() => {
                *applied = (*applied).max(index);
                Ok(())
            }
            Machine::Witness { .. } => Err(Error::storage(
                "witness",
                "the witness installs no state snapshot",
            )),
        }
    }

    /// Whether a peer's snapshot could be restored (see
    /// [`StateMachine::check_snapshot`]); the witness takes metadata only.
    /// Whether `command` only frees space (the witness runs no command).
    pub(crate) fn frees_space(&self, command: &[u8]) -> bool {
        match self {
            Machine::Data(s) => s.frees_space(command),
            Machine::Witness { .. } => false,
        }
    }

    pub(crate) fn check_snapshot(&self, index: u64, data: &[u8]) -> Result<()> {
        match self {
            Machine::Data(s) => s.check_snapshot(index, data),
            Machine::Witness { .. } if data.is_empty() => Ok(()),
            Machine::Witness { .. } => Err(Error::storage(
                "witness",
                "the witness installs no state snapshot",
            )),
        }
    }

    pub(crate) fn sync(&mut self) -> Result<u64> {
        match self {
            Machine::Data(s) => s.sync(),
            Machine::Witness { applied } => Ok(*applied),
        }
    }
}
