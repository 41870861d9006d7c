//! Where a leader's state snapshots come from.
//!
//! Reading a large state takes a while (0.8 us per key with sled), and a
//! leader whose raft thread stops for longer than the election timeout is
//! failed over. So the replica lets the state machine read it alongside
//! ([`StateMachine::start_snapshot`]; `SledKv` reads on a thread of its
//! own): when raft asks for a snapshot and none would do, the view records
//! who wants it (`LogView::snapshot_wanted`), [`Replica::ready`] starts a
//! read, each tick (and the node's loop) polls it, and raft is asked to
//! send again once it is ready. Meanwhile the leader goes on heartbeating,
//! committing and applying.
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
//!
//! The same reads serve [`Replica::read_snapshot`] (backups): a caller
//! gets the state of a read at or past the index it needs.

use bytes::Bytes;
use raft::eraftpb::{Message, MessageType, Snapshot, SnapshotMetadata};
use raft::SnapshotStatus;
use tracing::{debug, info, warn};

use super::membership::{self, Member};
use super::Replica;
use super::{Event, Ready};
use crate::state::{SnapshotRead, StateMachine};
use crate::storage::LogStore;
use crate::{Error, Result};

/// A state machine snapshot read for a caller of
/// [`Replica::read_snapshot`] (a backup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSnapshot {
    /// The applied index the state was read at.
    pub index: u64,
    /// The term of the entry at that index.
    pub term: u64,
    /// The state, as [`StateMachine::snapshot`] gives it.
    pub state: Bytes,
}

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
    /// Callers of [`Replica::read_snapshot`] waiting: token -> the lowest
    /// index the state must be read at.
    local: std::collections::BTreeMap<u64, u64>,
    /// Snapshot streams in flight: peer -> tick sent.
    streams: std::collections::BTreeMap<u64, u64>,
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

    /// The ready snapshot as a [`StateSnapshot`], if it is read at or past
    /// `need`.
    fn state_at_least(&self, need: u64) -> Option<StateSnapshot> {
        let built = self.ready.as_ref().filter(|b| b.meta.index >= need)?;
        // The data was wrapped by `drive_snapshot_reads`: it unwraps.
        let (_, state) = membership::unwrap_snapshot(&built.data).ok()?;
        Some(StateSnapshot {
            index: built.meta.index,
            term: built.meta.term,
            state: built.data.slice_ref(state),
        })
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
        if !self.snapshot_source.streams.is_empty()
            || !self.raw.store().snapshot_wanted.borrow().is_empty()
            || !self.snapshot_source.local.is_empty()
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
        self.applied_point_known()
            && self
                .snapshot_need()
                .is_some_and(|need| need <= self.raw.store().applied)
    }

    /// Whether the view's applied point (index, term, configuration) is
    /// the state machine's. It is not only on a member whose state machine
    /// was found ahead of its log at start, until the next entry is
    /// applied (see [`Replica::applied_term`]); no read starts meanwhile.
    fn applied_point_known(&self) -> bool {
        self.sm.applied_index() == self.raw.store().applied
    }

    /// The highest index wanted by the members raft wants a snapshot for
    /// and by the callers of [`Replica::read_snapshot`].
    fn snapshot_need(&self) -> Option<u64> {
        let peers = self
            .raw
            .store()
            .snapshot_wanted
            .borrow()
            .values()
            .copied()
            .max();
        let local = self.snapshot_source.local.values().copied().max();
        peers.max(local)
    }

    /// Reads the state machine's snapshot at an applied index of at least
    /// `need`, off the raft thread (see the module documentation); the
    /// outcome comes in [`Ready::snapshots`](super::Ready::snapshots) with
    /// `token`. Only the leader of a data member serves it: elsewhere, or
    /// when this member steps down first, the outcome is
    /// [`Error::NotLeader`].
    pub fn read_snapshot(&mut self, token: u64, need: u64) {
        if !self.is_leader() || self.is_witness() {
            let hint = self.active_hint();
            self.out
                .snapshots
                .push((token, Err(Error::NotLeader { leader_hint: hint })));
            return;
        }
        if let Some(snapshot) = self.snapshot_source.state_at_least(need) {
            self.out.snapshots.push((token, Ok(snapshot)));
            return;
        }
        self.snapshot_source.local.insert(token, need);
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
        self.serve_local_snapshot_reads();
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
        let Some(need) = self.snapshot_need() else {
            return Ok(());
        };
        if applied < need || !self.applied_point_known() {
            return Ok(()); // started once the state reaches it
        }
        let view = self.raw.store();
        let mut meta = SnapshotMetadata {
            index: view.applied,
            term: view.applied_term,
            ..Default::default()
        };
        meta.set_conf_state(view.applied_conf.clone());
        let read = self.sm.start_snapshot()?;
        if read.index() != meta.index {
            // The contract of `start_snapshot`; a snapshot of another index
            // would describe a state raft does not expect.
            return Err(Error::storage(
                "state machine",
                format!(
                    "start_snapshot read at index {} but the applied index is {}",
                    read.index(),
                    meta.index
                ),
            ));
        }
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

    /// Gives the ready snapshot to the callers it is recent enough for.
    fn serve_local_snapshot_reads(&mut self) {
        let src = &mut self.snapshot_source;
        let Some(index) = src.ready.as_ref().map(|b| b.meta.index) else {
            return;
        };
        let served: Vec<u64> = src
            .local
            .iter()
            .filter(|(_, need)| **need <= index)
            .map(|(token, _)| *token)
            .collect();
        for token in served {
            src.local.remove(&token);
            let snapshot = src
                .state_at_least(0)
                .ok_or_else(|| Error::storage("snapshot", "the snapshot read does not unwrap"));
            self.out.snapshots.push((token, snapshot));
        }
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
        if src.reading.is_none()
            && src.ready.is_none()
            && src.finished.is_none()
            && src.local.is_empty()
        {
            return;
        }
        debug!(
            member = self.cfg.id,
            term = self.term(),
            why,
            "snapshot dropped"
        );
        let hint = self.active_hint();
        let waiting = std::mem::take(&mut self.snapshot_source.local);
        for token in waiting.into_keys() {
            self.out
                .snapshots
                .push((token, Err(Error::NotLeader { leader_hint: hint })));
        }
        self.snapshot_source = SnapshotSource::default();
        let view = self.raw.mut_store();
        view.ready_snapshot = None;
        view.snapshot_wanted.borrow_mut().clear();
    }
}

/// Outgoing snapshot streams.
impl<L: LogStore, S: StateMachine> Replica<L, S> {
    /// Reports the outcome of a snapshot stream to `to`.
    pub fn report_snapshot(&mut self, to: u64, delivered: bool) {
        self.snapshot_source.streams.remove(&to);
        let status = if delivered {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to, status);
    }
    /// A snapshot stream that is neither acknowledged nor reported in time
    /// is reported failed, or raft would keep the follower paused for good.
    pub(super) fn check_snapshot_streams(&mut self) {
        let mut done = Vec::new();
        for (&peer, &sent) in &self.snapshot_source.streams {
            let in_snapshot = self
                .raw
                .raft
                .prs()
                .get(peer)
                .is_some_and(|p| p.state == raft::ProgressState::Snapshot);
            if !in_snapshot || !self.is_leader() {
                done.push((peer, false));
            } else if self.ticks - sent >= self.cfg.snapshot_timeout_ticks as u64 {
                done.push((peer, true));
            }
        }
        for (peer, failed) in done {
            self.snapshot_source.streams.remove(&peer);
            if failed {
                warn!(
                    member = self.cfg.id,
                    peer, "snapshot stream timed out; retrying"
                );
                self.raw.report_snapshot(peer, SnapshotStatus::Failure);
            }
        }
    }
    /// Fills outgoing snapshots with the state machine's data. Returns the
    /// peers whose snapshot could not be built (reported failed).
    pub(super) fn fill_snapshots(
        &mut self,
        messages: &mut Vec<Message>,
        events: &mut Vec<Event>,
    ) -> Result<Vec<u64>> {
        let mut failed = Vec::new();
        let mut i = 0;
        while i < messages.len() {
            if messages[i].get_msg_type() != MessageType::MsgSnapshot {
                i += 1;
                continue;
            }
            let to = messages[i].to;
            let index = messages[i].get_snapshot().get_metadata().index;
            // The witness gets the header alone, at the applied index raft
            // asked at (nothing was applied since: application happens
            // only in `ready`, after messages are taken); a data member
            // gets the snapshot read for it (see `snapshot_source.rs`).
            let data = if Some(to) == self.ha.witness {
                (self.sm.applied_index() == index)
                    .then(|| membership::wrap_snapshot(&self.directory, Vec::new()).into())
            } else {
                self.snapshot_data(index)
            };
            let Some(data) = data else {
                warn!(
                    member = self.cfg.id,
                    to,
                    index,
                    applied = self.sm.applied_index(),
                    "snapshot no longer at hand; retrying"
                );
                messages.remove(i);
                failed.push(to);
                continue;
            };
            messages[i].mut_snapshot().set_data(data);
            // The snapshot serves a request set by `snapshot_for_new_learners`:
            // raft-rs would clear it only on a snapshot report, and send
            // snapshot after snapshot until then.
            if let Some(pr) = self.raw.raft.mut_prs().get_mut(to) {
                pr.pending_request_snapshot = raft::INVALID_INDEX;
            }
            self.snapshot_source.streams.insert(to, self.ticks);
            events.push(Event::SnapshotSent { to, index });
            i += 1;
        }
        Ok(failed)
    }

    /// Installs a snapshot raft-rs received: the state goes to the state
    /// machine (durable before the log records the snapshot and before
    /// anything acknowledges it: the acknowledgement is a persisted
    /// message, released after the write), the directory and the metadata
    /// follow it. Returns its metadata, for the log write.
    pub(super) fn install_snapshot(
        &mut self,
        snap: &Snapshot,
        out: &mut Ready,
    ) -> Result<SnapshotMetadata> {
        let meta = snap.get_metadata().clone();
        let (members, state) = membership::unwrap_snapshot(snap.get_data())?;
        self.drop_snapshots("installing a snapshot");
        self.sm.restore(meta.index, state)?;
        self.sessions.load(self.sm.sessions()?);
        // The snapshot's conf state is stored with it: it holds every
        // change up to its index.
        if let Some(members) = members {
            self.directory = members;
        }
        let record = self.meta.change();
        record.members = self.directory.iter().map(membership::to_record).collect();
        record.conf_index = meta.index;
        self.meta.tail.applied_up_to(meta.index);
        self.ha.witness = self.witness_id();
        self.raw.mut_store().header_only_to = self.ha.witness;
        let view = self.raw.mut_store();
        view.applied = meta.index;
        view.applied_term = meta.term;
        view.applied_conf = meta.get_conf_state().clone();
        info!(
            member = self.cfg.id,
            index = meta.index,
            term = meta.term,
            "snapshot installed"
        );
        out.events.push(Event::SnapshotInstalled {
            index: meta.index,
            term: meta.term,
        });
        Ok(meta)
    }
}
