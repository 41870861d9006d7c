//! When this member withholds its vote, and when it stands on its own:
//! the hold after a restart (it restarts knowing no leader, hence with no
//! lease of its own), the stop after it lost synced data, and the witness
//! that stands for a data member whose vote it refused.

use raft::eraftpb::{Message, MessageType};
use raft::StateRole;
use tracing::error;

use super::Replica;
use crate::proto::{LostData, Notice};
use crate::state::StateMachine;
use crate::storage::LogStore;

/// Whether `msg` asks for a vote or a pre-vote.
pub(super) fn is_vote_request(msg: &Message) -> bool {
    matches!(
        msg.get_msg_type(),
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
    )
}

/// The vote restrictions of this member.
#[derive(Debug, Default)]
pub(super) struct Votes {
    /// A restarted member grants no vote before this tick.
    no_votes_before: u64,
    /// Set when a leader showed this member lost synced data: it votes no
    /// more (its status says why).
    lost_data: Option<String>,
    /// On the witness: the tick at which it refused (or, in lease, ignored)
    /// a data member's vote request (see `witness_stands_for_data`).
    refused_data_vote_at: Option<u64>,
}

impl Votes {
    /// A member restarted with data grants no vote for `ticks`.
    pub(super) fn hold_after_restart(&mut self, ticks: u64) {
        self.no_votes_before = ticks;
    }

    /// Whether the hold after a restart lasts at `tick`.
    pub(super) fn held_after_restart(&self, tick: u64) -> bool {
        tick < self.no_votes_before
    }

    /// Why this member votes no more, if it lost synced data.
    pub(super) fn lost_data(&self) -> Option<&String> {
        self.lost_data.as_ref()
    }

    fn refused_data_vote(&mut self, tick: u64) {
        self.refused_data_vote_at = Some(tick);
    }
}

impl<L: LogStore, S: StateMachine> Replica<L, S> {
    /// A heartbeat naming a commit index past this member's log: a leader
    /// only sends a commit index this member acknowledged holding, so this
    /// member lost synced data (a disk rolled back). raft-rs would panic on
    /// it; the member stops voting instead and tells the leader. True when
    /// `msg` was such a heartbeat (it is not stepped).
    pub(super) fn heartbeat_shows_lost_data(&mut self, msg: &Message) -> bool {
        if msg.get_msg_type() == MessageType::MsgHeartbeat
            && msg.commit > self.raw.raft.raft_log.last_index()
            && msg.term >= self.raw.raft.term
        {
            let reason = format!(
                "lost synced data: leader {} says index {} is held here, but the log ends at {}",
                msg.from,
                msg.commit,
                self.raw.raft.raft_log.last_index()
            );
            if self.votes.lost_data.is_none() {
                error!(member = self.cfg.id, "{reason}");
            }
            self.votes.lost_data = Some(reason);
            // The leader counts this member's old acknowledgements toward
            // commit until told (see `Ha::member_lost`).
            let mut lost = LostData::new();
            lost.last_index = self.raw.raft.raft_log.last_index();
            lost.commit = msg.commit;
            let mut n = Notice::new();
            n.from = self.cfg.id;
            n.to = msg.from;
            n.set_lost_data(lost);
            self.out.notices.push(n);
            return true;
        }
        false
    }

    /// Whether raft-rs ignores vote requests here now: a leader was heard
    /// within `election_tick` (CheckQuorum's lease), or the member
    /// restarted moments ago.
    pub(super) fn in_vote_lease(&self) -> bool {
        let r = &self.raw.raft;
        (r.leader_id != raft::INVALID_ID && r.election_elapsed < r.election_timeout())
            || self.votes.held_after_restart(self.ticks)
    }

    /// On the witness, after a message `(from, type, messages queued
    /// before it)` was stepped: notes a data member's vote request that
    /// raft-rs refused (this witness holds a longer log: the active died
    /// between its sends to the two members, so the witness has entries the
    /// passive never received) or ignored in lease (its last message from
    /// the active came a little after the passive's). Read from raft-rs's
    /// own answer, so a vote it grants (a hand-over's, say) is never noted.
    pub(super) fn note_data_vote_refused(
        &mut self,
        (from, msg_type, queued): (u64, MessageType, usize),
    ) {
        let answer_type = match msg_type {
            MessageType::MsgRequestVote => MessageType::MsgRequestVoteResponse,
            MessageType::MsgRequestPreVote => MessageType::MsgRequestPreVoteResponse,
            _ => return,
        };
        if !self.is_witness() || from == self.cfg.id || self.raw.raft.state != StateRole::Follower {
            return;
        }
        let answer = self.raw.raft.msgs.get(queued..).and_then(|new| {
            new.iter()
                .find(|m| m.to == from && m.get_msg_type() == answer_type)
        });
        let refused = match answer {
            Some(m) => m.reject,
            None => self.in_vote_lease(),
        };
        if refused {
            self.votes.refused_data_vote(self.ticks);
        }
    }

    /// A witness that refused a data member's vote stands itself as soon as
    /// it is out of lease, instead of at its own election timeout (up to
    /// `max_election_tick` later, while no member can serve): it wins with
    /// that member's vote, its log being the longer, and hands leadership
    /// to it once raft has brought it up to date (`Ha::witness_hand_over`).
    /// Not during maintenance (the maintenance rules decide who stands),
    /// after a restart or with lost data (this member grants no vote then),
    /// nor for a request older than an election timeout.
    pub(super) fn witness_stands_for_data(&mut self) {
        let Some(at) = self.votes.refused_data_vote_at else {
            return;
        };
        let r = &self.raw.raft;
        if r.state != StateRole::Follower
            || self.ticks.saturating_sub(at) > self.cfg.election_tick as u64
            || self.suppressed()
            || self.votes.lost_data.is_some()
        {
            self.votes.refused_data_vote_at = None;
            return;
        }
        if self.in_vote_lease() {
            return;
        }
        if self.stand(
            "a data member could not be elected (this witness's log is longer, or it was in \
             lease); to hand over to it",
        ) {
            self.votes.refused_data_vote_at = None;
        }
    }
}
