//! What the replica hands its driver: the [`Ready`] work after each input,
//! completed proposals and the [`Event`]s.

use raft::eraftpb::Message;
use raft::StateRole;

use super::{Member, Mode, StateSnapshot};
use crate::proto::Notice;
use crate::storage::LogWrite;
use crate::Result;

/// A member's raft role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The leader: the only member that accepts writes and serves reads.
    Leader,
    /// Follows a leader.
    Follower,
    /// Stands for election.
    Candidate,
    /// Checks whether it could win before standing (PreVote).
    PreCandidate,
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Self {
        match r {
            StateRole::Leader => Role::Leader,
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
        }
    }
}

/// Something the embedding program may want to know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This member's role changed.
    RoleChanged {
        /// The new role.
        role: Role,
        /// The term it holds the role in.
        term: u64,
    },
    /// The leader this member knows of changed.
    LeaderChanged {
        /// The new leader, if any is known.
        leader: Option<u64>,
        /// The term.
        term: u64,
    },
    /// A snapshot was installed: the state now reflects `index`.
    SnapshotInstalled {
        /// The snapshot's index.
        index: u64,
        /// The snapshot's term.
        term: u64,
    },
    /// A snapshot was sent to a lagging member.
    SnapshotSent {
        /// The receiving member.
        to: u64,
        /// The snapshot's index.
        index: u64,
    },
    /// The replication mode changed (on the active).
    ModeChanged {
        /// The new mode.
        mode: Mode,
    },
    /// This member took or lost the active role (the fenced lease): the
    /// embedding program moves the management IP on it.
    ActiveChanged {
        /// Whether this member is now the active.
        active: bool,
    },
    /// Maintenance mode changed on this member (applied from the log, or
    /// turned off locally).
    MaintenanceChanged {
        /// Whether it is on.
        on: bool,
        /// The only member that may stand while it is on.
        allowed: u64,
    },
    /// The voter set changed.
    MembershipChanged {
        /// The voters now (in a joint configuration, those of both halves).
        voters: Vec<u64>,
        /// The learners now.
        learners: Vec<u64>,
        /// The member directory now: the members added by membership
        /// changes, with their roles and addresses.
        members: Vec<Member>,
    },
}

/// The outcome of a proposal: the state machine's response.
pub type ProposalResult = Result<Vec<u8>>;

/// A finished proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The token the proposal was made with.
    pub token: u64,
    /// The index of the entry that carried it (0 when refused before it
    /// reached the log).
    pub index: u64,
    /// The state machine's response, or why there is none.
    pub result: ProposalResult,
}

/// Work for the driver (see the module docs for the order).
#[derive(Debug, Default)]
pub struct Ready {
    /// Messages to send now.
    pub messages: Vec<Message>,
    /// A write to persist (synced), then report with
    /// [`Replica::on_persisted`](crate::Replica::on_persisted).
    pub write: Option<LogWrite>,
    /// Compact the log up to this index once `write` is persisted.
    pub compact_to: Option<u64>,
    /// Completed proposals.
    pub completions: Vec<Completion>,
    /// Completed linearizable reads: (token, outcome). On `Ok` the state
    /// machine may be read and the answer is linearizable.
    pub reads: Vec<(u64, Result<()>)>,
    /// Events, in order.
    pub events: Vec<Event>,
    /// Notices to send (see [`crate::transport::Transport::send_notice`]).
    pub notices: Vec<Notice>,
    /// Finished switchovers: (token, the write pause in ticks, or why it
    /// was refused or abandoned).
    pub switchovers: Vec<(u64, Result<u64>)>,
    /// Finished [`Replica::read_snapshot`](crate::Replica::read_snapshot) calls: (token, outcome).
    pub snapshots: Vec<(u64, Result<StateSnapshot>)>,
}

impl Ready {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.write.is_none()
            && self.compact_to.is_none()
            && self.completions.is_empty()
            && self.reads.is_empty()
            && self.events.is_empty()
            && self.notices.is_empty()
            && self.switchovers.is_empty()
            && self.snapshots.is_empty()
    }
}
