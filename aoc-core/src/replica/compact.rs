//! Log compaction: the state machine synced for real, then the log cut
//! below the durable applied index and commit (a data member), or below
//! what both data members persisted (the witness, which keeps only what a
//! lagging data member still needs).

use tracing::debug;

use super::{Ready, Replica};
use crate::state::StateMachine;
use crate::storage::LogStore;
use crate::Result;

/// The witness compacts in steps of at least this many entries (one
/// synced compaction write per step).
pub(crate) const WITNESS_COMPACT_BATCH: u64 = 64;

impl<L: LogStore, S: StateMachine> Replica<L, S> {
    /// Syncs the state machine for real and compacts the log below the
    /// durable applied index, once enough was applied or the log is large.
    pub(super) fn maybe_compact(&mut self, out: &mut Ready) -> Result<()> {
        if self.is_witness() {
            return self.witness_compact(out);
        }
        let store = self.raw.store().store();
        // Counted by the replica, not asked of the store: a store's size on
        // disk moves in whole files and need not shrink at each compaction.
        let due = self
            .writes
            .compaction_due(self.cfg.compact_every_entries, self.cfg.compact_log_bytes);
        if !due || self.raw.store().has_pending() {
            return Ok(());
        }
        // The durable commit trails the applied index by one write (commit
        // moves are written with the next write, or after a tick: see
        // `defer_commit_only`). Until it leaves something to compact, wait
        // (without the state machine's costly sync) rather than skip a
        // whole round.
        let bound = self
            .sm
            .applied_index()
            .min(self.writes.persisted_commit())
            .saturating_sub(self.cfg.compact_keep_entries)
            .min(self.snapshot_compact_bound());
        if bound < store.first_index()? {
            return Ok(());
        }
        self.writes.on_compaction();
        let durable = self.sm.sync()?;
        // Never past the durable commit: raft-rs restarts with commit at the
        // compaction point at least, which must be a committed index.
        let upto = durable
            .min(self.writes.persisted_commit())
            .saturating_sub(self.cfg.compact_keep_entries)
            .min(self.snapshot_compact_bound());
        if upto >= store.first_index()? {
            debug!(member = self.cfg.id, upto, durable, "compacting the log");
            out.compact_to = Some(upto);
        }
        Ok(())
    }

    /// The witness keeps only the entries above min(what both data members
    /// persisted, as the active reported it; its own durable commit; its
    /// applied index): in sync mode, just the in-flight tail; while a data
    /// member lags, everything that member lacks.
    pub(super) fn witness_compact(&mut self, out: &mut Ready) -> Result<()> {
        if self.raw.store().has_pending() {
            return Ok(());
        }
        let upto = self
            .ha
            .data_persisted
            .min(self.writes.persisted_commit())
            .min(self.sm.applied_index());
        let first = self.raw.store().store().first_index()?;
        if upto >= first + WITNESS_COMPACT_BATCH {
            out.compact_to = Some(upto);
        }
        Ok(())
    }
}
