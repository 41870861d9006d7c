//! When this member stands for election on its own initiative, and when
//! it holds back: the single check for campaigning (`may_campaign`), the
//! hold while a snapshot install is persisted, and the leader whose own
//! disk stalls (it hands over to a caught-up passive, or goes silent so
//! that the others elect).

use raft::StateRole;
use tracing::{debug, info, warn};

use super::Replica;
use crate::state::StateMachine;
use crate::storage::LogStore;
use crate::{Error, Result};

impl<L: LogStore, S: StateMachine> Replica<L, S> {
    /// Starts an election now (standalone start-up and tests). Refused
    /// with [`Error::Busy`] while a snapshot install is being persisted, or
    /// when this member already leads.
    pub fn campaign(&mut self) -> Result<()> {
        if let Some(why) = self.may_campaign().err() {
            return Err(Error::Busy {
                reason: format!("cannot stand now: {why}; try again"),
            });
        }
        self.raw.campaign()?;
        self.after_input();
        Ok(())
    }

    /// The one place that decides whether this member may start an
    /// election now (every campaign the replica makes goes through it;
    /// raft-rs's own, at the election timeout, is held off by
    /// `hold_during_snapshot_install`). Not while a snapshot install is
    /// being persisted: raft-rs would read the entries between its applied
    /// index (not moved to the snapshot yet) and its commit index from a
    /// log that now starts past them, and panic ("unexpected error getting
    /// unapplied entries ... Compacted", the `core_messages` fuzz
    /// target). Not as a leader, which has nothing to stand for.
    pub(super) fn may_campaign(&self) -> std::result::Result<(), &'static str> {
        if self.raw.store().snapshot_pending() {
            return Err("a snapshot install is being persisted");
        }
        if self.raw.raft.state == StateRole::Leader {
            return Err("this member leads");
        }
        Ok(())
    }

    /// Campaigns if it may (see `may_campaign`); false when it did not.
    pub(super) fn stand(&mut self, why: &str) -> bool {
        if let Err(not_now) = self.may_campaign() {
            debug!(member = self.cfg.id, why, not_now, "not standing now");
            return false;
        }
        info!(member = self.cfg.id, "{why}: standing");
        if let Err(e) = self.raw.campaign() {
            debug!(member = self.cfg.id, error = %e, "campaign refused");
        }
        true
    }

    /// No election while a snapshot install is being persisted: raft-rs
    /// would campaign and read the entries between its applied index (not
    /// yet moved to the snapshot) and its commit index from a log that now
    /// starts past them, and panic (found by the `core_messages` fuzz
    /// target with a slow disk). The member stands once the write is done.
    pub(super) fn hold_during_snapshot_install(&mut self) {
        if !self.raw.store().snapshot_pending() || self.raw.raft.state == StateRole::Leader {
            return;
        }
        // raft-rs campaigns when the tick brings `election_elapsed` to the
        // randomized timeout: keep it two below.
        let limit = self
            .raw
            .raft
            .randomized_election_timeout()
            .saturating_sub(2);
        if self.raw.raft.election_elapsed > limit {
            self.raw.raft.election_elapsed = limit;
        }
    }

    /// The low-priority-witness break: the witness gets raft priority 1,
    /// the data members 2 (see `Breaks::low_priority_witness`).
    pub(super) fn break_priority(&mut self) {
        if self.ha.breaks.low_priority_witness()
            && self.ha.witness.is_some()
            && self.raw.raft.term > 0
            && self.raw.raft.priority == 0
        {
            let priority = if self.is_witness() { 1 } else { 2 };
            self.raw.raft.set_priority(priority);
        }
    }

    /// A data leader whose hand-over was abandoned (raft-rs gives up a
    /// transfer after an election timeout) steps down: it may not hold the
    /// lease again in the term it handed over in (`Ha::end_lease`), and a
    /// leader that is never active would leave the cluster without one.
    /// The next election, in a higher term, brings an active back; the
    /// transferee's late vote requests can no longer overlap a lease.
    pub(super) fn step_down_after_abandoned_hand_over(&mut self) {
        let r = &self.raw.raft;
        if r.state != StateRole::Leader
            || self.is_witness()
            || r.lead_transferee.is_some()
            || !self.ha.handed_over_in(r.term)
        {
            return;
        }
        let term = r.term;
        warn!(
            member = self.cfg.id,
            term, "hand-over abandoned; stepping down so that a new term elects an active"
        );
        self.raw.raft.become_follower(term, raft::INVALID_ID);
    }

    /// An active whose own log write has been pending for `sync_timeout`
    /// (its disk stalled) must not hold the role while writing nothing: it
    /// hands leadership to a caught-up passive, or else stops ticking raft
    /// (no heartbeats, no lease renewal) so the others elect.
    pub(super) fn check_own_disk(&mut self) {
        if self.raw.raft.state != StateRole::Leader || self.is_witness() {
            self.ha.silenced = false;
            return;
        }
        let Some(since) = self.writes.pending_since_tick() else {
            self.ha.silenced = false;
            return;
        };
        if self.ticks.saturating_sub(since) < self.cfg.sync_timeout_ticks as u64 {
            return;
        }
        let last = self.raw.raft.raft_log.last_index();
        let caught_up = self.ha.passive(&self.raw).filter(|p| {
            self.raw
                .raft
                .prs()
                .get(*p)
                .is_some_and(|pr| pr.matched >= last)
        });
        match caught_up {
            Some(p) if self.raw.raft.lead_transferee.is_none() => {
                warn!(
                    member = self.cfg.id,
                    to = p,
                    "own disk stalled; handing over"
                );
                self.raw.transfer_leader(p);
            }
            Some(_) => {}
            None => {
                if !self.ha.silenced {
                    warn!(
                        member = self.cfg.id,
                        "own disk stalled and no passive caught up; going silent"
                    );
                }
                self.ha.silenced = true;
            }
        }
    }
}
