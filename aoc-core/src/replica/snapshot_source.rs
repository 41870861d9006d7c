//! Where a leader's state snapshots come from.
//!
//! Reading a large state takes a while (0.8 us per key with sled), and a
//! leader whose raft thread stops for longer than the election timeout is
//! failed over. So the replica never reads a state snapshot on its own
//! thread: when raft asks for one and none would do, the view records who
//! wants it (`LogView::snapshot_wanted`), [`Replica::ready`] starts a read
//! with [`StateMachine::start_snapshot`], each tick polls it, and raft is
//! asked to send again once it is ready. Meanwhile the leader goes on
//! heartbeating, committing and applying.
//!
//! Invariants:
//! - a snapshot describes the state at its index: the read starts at the
//!   applied index, and its metadata (term, configuration) and member
//!   directory are taken at that same moment;
//! - the log is not compacted past a snapshot being read or kept for
//!   sending (`Replica::snapshot_compact_bound`), so a member that
//!   installs it can go on from the log;
//! - only a leader reads or keeps one: it is dropped on stepping down and
//!   on installing a snapshot from another member.

use bytes::Bytes;
use raft::eraftpb::SnapshotMetadata;
use tracing::{debug, info};

use super::membership::{self, Member};
use super::Replica;
use crate::state::{SnapshotRead, StateMachine};
use crate::storage::LogStore;
use crate::Result;

/// The snapshot read in progress and the one ready to send.
#[derive(Default)]
pub(crate) struct SnapshotSource {
    reading: Option<Reading>,
    /// A read's result, polled by a tick, handled by the next ready.
    finished: Option<Result<Vec<u8>>>,
    ready: Option<Built>,
    /// The last tick a stream was in flight, the snapshot asked for, or
    /// made ready: a ready snapshot unused for a snapshot timeout is
    /// dropped (it holds the whole state in memory, and compaction back).
    last_used_tick: u64,
}

struct Reading {
    meta: SnapshotMetadata,
    directory: Vec<Member>,
    read: Box<dyn SnapshotRead>,
    started_tick: u64,
}

struct Built {
    meta: SnapshotMetadata,
    /// The member directory and the state, as sent.
    data: Bytes,
}

impl SnapshotSource {
    /// The data of the ready snapshot at `index`, if it is that one.
    pub(crate) fn data_at(&self, index: u64) -> Option<Bytes> {
        self.ready
            .as_ref()
            .filter(|b| b.meta.index == index)
            .map(|b| b.data.clone())
    }

    /// The lowest index a snapshot being read or kept stands at.
    fn index(&self) -> Option<u64> {
        let reading = self.reading.as_ref().map(|r| r.meta.index);
        let ready = self.ready.as_ref().map(|b| b.meta.index);
        reading.into_iter().chain(ready).min()
    }
}

impl<L: LogStore, S: StateMachine> Replica<L, S> {
    /// Whether a snapshot read is in progress: a driver may then call
    /// [`Replica::poll_snapshot_read`] between ticks, so the snapshot
    /// leaves as soon as it is read rather than at the next tick.
    pub fn snapshot_read_pending(&self) -> bool {
        self.snapshot_source.reading.is_some() && self.snapshot_source.finished.is_none()
    }

    /// Polls the snapshot read in progress (each tick does too); once it is
    /// read, [`Replica::has_ready`] says so. Also drops what a member that
    /// is not the leader, or an unused snapshot, holds.
    pub fn poll_snapshot_read(&mut self) {
        if !self.is_leader() {
            self.drop_snapshots("no longer the leader");
            return;
        }
        if !self.snapshots_in_flight.is_empty()
            || !self.raw.store().snapshot_wanted.borrow().is_empty()
        {
            self.snapshot_source.last_used_tick = self.ticks;
        }
        let src = &mut self.snapshot_source;
        if let Some(reading) = src.reading.as_mut() {
            if src.finished.is_none() {
                src.finished = reading.read.poll();
            }
        } else if src.ready.is_some()
            && self.ticks - src.last_used_tick >= self.cfg.snapshot_timeout_ticks as u64
        {
            self.drop_snapshots("unused for a snapshot timeout");
        }
    }

    /// Whether [`Replica::ready`] has snapshot work: a finished read to
    /// take, or a read to start (wanted, and the state has reached what
    /// the members need; false otherwise, or the driver would spin).
    pub(super) fn snapshot_work(&self) -> bool {
        let src = &self.snapshot_source;
        if src.finished.is_some() {
            return true;
        }
        if src.reading.is_some() || !self.is_leader() {
            return false;
        }
        let view = self.raw.store();
        let need = view.snapshot_wanted.borrow().values().copied().max();
        need.is_some_and(|need| need <= view.applied)
    }

    /// Called by [`Replica::ready`]: starts a read for the members raft
    /// wants a snapshot for, and takes a finished one.
    pub(super) fn drive_snapshot_reads(&mut self) -> Result<()> {
        self.start_snapshot_read()?;
        // A state machine that reads at once is done already.
        let src = &mut self.snapshot_source;
        if let (Some(reading), None) = (src.reading.as_mut(), &src.finished) {
            src.finished = reading.read.poll();
        }
        let Some(result) = self.snapshot_source.finished.take() else {
            return Ok(());
        };
        let data = result?;
        let reading = self
            .snapshot_source
            .reading
            .take()
            .expect("snapshot_source: a finished read has its reading");
        let wrapped = membership::wrap_snapshot(&reading.directory, data);
        info!(
            member = self.cfg.id,
            term = self.term(),
            index = reading.meta.index,
            bytes = wrapped.len(),
            ticks = self.ticks - reading.started_tick,
            "snapshot read"
        );
        self.raw.mut_store().ready_snapshot = Some(reading.meta.clone());
        self.snapshot_source.ready = Some(Built {
            meta: reading.meta,
            data: Bytes::from(wrapped),
        });
        self.snapshot_source.last_used_tick = self.ticks;
        // Ask raft to send again: those that wanted one get it now rather
        // than at their next heartbeat answer.
        let wanted: Vec<u64> = std::mem::take(&mut *self.raw.store().snapshot_wanted.borrow_mut())
            .into_keys()
            .collect();
        for to in wanted {
            if self.raw.raft.prs().get(to).is_some() {
                self.raw.raft.send_append(to);
            }
        }
        Ok(())
    }

    /// Starts a read for the members raft wants a snapshot for, once the
    /// state has reached what they need.
    fn start_snapshot_read(&mut self) -> Result<()> {
        if self.snapshot_source.reading.is_some() || !self.is_leader() {
            return Ok(());
        }
        let applied = self.raw.store().applied;
        let need = self
            .raw
            .store()
            .snapshot_wanted
            .borrow()
            .values()
            .copied()
            .max();
        let Some(need) = need else {
            return Ok(());
        };
        if applied < need {
            return Ok(()); // asked again once the state reaches it
        }
        assert_eq!(
            self.sm.applied_index(),
            applied,
            "snapshot_source: the view's applied point is the state machine's"
        );
        let view = self.raw.store();
        let mut meta = SnapshotMetadata {
            index: view.applied,
            term: view.applied_term,
            ..Default::default()
        };
        meta.set_conf_state(view.applied_conf.clone());
        let read = self.sm.start_snapshot()?;
        assert_eq!(
            read.index(),
            meta.index,
            "snapshot_source: a read starts at the applied index"
        );
        debug!(
            member = self.cfg.id,
            term = self.term(),
            index = meta.index,
            "snapshot read started"
        );
        self.snapshot_source.reading = Some(Reading {
            meta,
            directory: self.directory.clone(),
            read,
            started_tick: self.ticks,
        });
        self.snapshot_source.last_used_tick = self.ticks;
        Ok(())
    }

    /// The data to send in a snapshot message at `index`.
    pub(super) fn snapshot_data(&self, index: u64) -> Option<Bytes> {
        self.snapshot_source.data_at(index)
    }

    /// Compaction stays at or below this: a member installing the snapshot
    /// being read or kept goes on from the entries after it.
    pub(super) fn snapshot_compact_bound(&self) -> u64 {
        self.snapshot_source.index().unwrap_or(u64::MAX)
    }

    /// Drops the read in progress (which ends it) and the ready snapshot.
    pub(super) fn drop_snapshots(&mut self, why: &str) {
        let src = &self.snapshot_source;
        if src.reading.is_none() && src.ready.is_none() && src.finished.is_none() {
            return;
        }
        debug!(
            member = self.cfg.id,
            term = self.term(),
            why,
            "snapshot dropped"
        );
        self.snapshot_source = SnapshotSource::default();
        let view = self.raw.mut_store();
        view.ready_snapshot = None;
        view.snapshot_wanted.borrow_mut().clear();
    }
}
