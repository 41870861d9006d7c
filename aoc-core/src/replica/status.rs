//! The replica's status: a read-only view of every owner's state, for the
//! operator, the drivers and the tests.

use raft::{StateRole, Storage as _};

use super::{Alarm, DiskReport, Member, Mode, Replica, Role};
use crate::state::StateMachine;
use crate::storage::LogStore;

/// A follower's replication progress, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    /// The member.
    pub id: u64,
    /// The highest index known to be persisted on it.
    pub matched: u64,
    /// The next index to send.
    pub next: u64,
    /// raft-rs's progress state: `Probe`, `Replicate` or `Snapshot`.
    pub state: String,
}

/// A snapshot of a replica's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This member.
    pub id: u64,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// The commit index it knows of.
    pub commit: u64,
    /// The state machine's applied index.
    pub applied: u64,
    /// The first index in the log.
    pub first_index: u64,
    /// The last index in the log.
    pub last_index: u64,
    /// The voters.
    pub voters: Vec<u64>,
    /// The learners (members being added: they receive the log but neither
    /// vote nor count for commits).
    pub learners: Vec<u64>,
    /// The member directory: the members added by membership changes, with
    /// their roles and addresses.
    pub members: Vec<Member>,
    /// Open client sessions.
    pub sessions: usize,
    /// Followers' progress (on the leader only).
    pub progress: Vec<PeerProgress>,
    /// Whether this member holds the active role (leader inside its lease).
    pub active: bool,
    /// While active: the ticks left before the lease ends unless renewed
    /// (a driver that stops publishing must not report the role past it).
    pub lease_ticks_left: Option<u64>,
    /// While active: the fencing token to stamp the platform's commands
    /// with (see [`crate::fencing`]): the term this member leads in.
    pub fencing_token: Option<u64>,
    /// The replication mode (meaningful on the active).
    pub mode: Mode,
    /// Whether this member is the witness.
    pub witness: bool,
    /// The witness of this member's configuration (`None`: a standalone
    /// member, or no witness known).
    pub witness_id: Option<u64>,
    /// The passive's lag behind the last index, in entries (on the active).
    pub passive_lag_entries: Option<u64>,
    /// The same lag in bytes of entry data (on the active; counted over
    /// the entries this member wrote, so an estimate right after an
    /// election).
    pub passive_lag_bytes: Option<u64>,
    /// Bytes the log store uses (on the witness: its retained log).
    pub log_bytes: u64,
    /// While maintenance mode is on (automatic failover suspended): the
    /// only member that may stand, and since when (the leader's stamp, ms).
    pub maintenance: Option<(u64, u64)>,
    /// What the witness retains, as it last reported to this member (the
    /// active): (bytes, entries).
    pub witness_log: Option<(u64, u64)>,
    /// When this member last took the active role from another one (the
    /// driver's clock, ms), and how long after its last contact with the
    /// previous leader (ms): the last failover as this member saw it.
    pub last_failover_ms: Option<(u64, u64)>,
    /// Why this member waits, when it does (a witness leader that cannot
    /// hand over).
    pub waiting_for: Option<String>,
    /// The NOSPACE alarms in effect (writes that take space are refused).
    pub alarms: Vec<Alarm>,
    /// This member's disk as its driver last measured it, and whether it
    /// is below its reserve.
    pub disk: Option<(DiskReport, bool)>,
}

impl Status {
    /// The status of a member that has not started its replica (a blank
    /// member in the bootstrap handshake): `waiting_for` says why.
    pub fn blank(id: u64, waiting_for: String) -> Self {
        Status {
            id,
            role: Role::Follower,
            term: 0,
            leader: None,
            commit: 0,
            applied: 0,
            first_index: 0,
            last_index: 0,
            voters: Vec::new(),
            learners: Vec::new(),
            members: Vec::new(),
            sessions: 0,
            progress: Vec::new(),
            active: false,
            lease_ticks_left: None,
            fencing_token: None,
            mode: Mode::Majority,
            witness: false,
            witness_id: None,
            passive_lag_entries: None,
            passive_lag_bytes: None,
            log_bytes: 0,
            maintenance: None,
            last_failover_ms: None,
            witness_log: None,
            waiting_for: Some(waiting_for),
            alarms: Vec::new(),
            disk: None,
        }
    }
}

impl<L: LogStore, S: StateMachine> Replica<L, S> {
    /// The current status.
    pub fn status(&self) -> Status {
        let r = &self.raw.raft;
        let store = self.raw.store();
        let mut progress = Vec::new();
        if r.state == StateRole::Leader {
            for (id, p) in r.prs().iter() {
                if *id != self.cfg.id {
                    progress.push(PeerProgress {
                        id: *id,
                        matched: p.matched,
                        next: p.next_idx,
                        state: format!("{:?}", p.state),
                    });
                }
            }
            progress.sort_by_key(|p| p.id);
        }
        let mut voters: Vec<u64> = r.prs().conf().voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<u64> = r.prs().conf().learners().iter().copied().collect();
        learners.sort_unstable();
        Status {
            id: self.cfg.id,
            role: r.state.into(),
            term: r.term,
            leader: self.leader(),
            commit: r.raft_log.committed,
            applied: self.sm.applied_index(),
            first_index: store.first_index().unwrap_or(0),
            last_index: r.raft_log.last_index(),
            voters,
            learners,
            members: self.directory.clone(),
            sessions: self.sessions.len(),
            progress,
            active: self.active_now(),
            lease_ticks_left: self.active_now().then(|| self.ha.lease_left(self.ticks)),
            fencing_token: self.fencing_token(),
            mode: self.ha.mode(),
            witness: self.sm.is_witness(),
            witness_id: self.ha.witness,
            passive_lag_entries: if r.state == StateRole::Leader {
                self.ha
                    .passive(&self.raw)
                    .and_then(|p| r.prs().get(p))
                    .map(|p| r.raft_log.last_index().saturating_sub(p.matched))
            } else {
                None
            },
            waiting_for: self.waiting_for(),
            passive_lag_bytes: if r.state == StateRole::Leader {
                self.ha
                    .passive(&self.raw)
                    .and_then(|p| r.prs().get(p))
                    .map(|p| self.written.after(p.matched))
            } else {
                None
            },
            log_bytes: self.written.log_bytes(),
            maintenance: self.maintenance(),
            last_failover_ms: self.roles.last_failover_ms(),
            witness_log: if r.state == StateRole::Leader {
                self.ha.witness_log
            } else {
                None
            },
            alarms: self.alarms(),
            disk: self.disks.own.last().map(|d| (d, self.disks.own.low())),
        }
    }

    /// Why this member waits, every reason it knows, most basic first.
    fn waiting_for(&self) -> Option<String> {
        let reasons: Vec<String> = [
            self.votes.lost_data().cloned(),
            self.ha.waiting_for.clone(),
            self.ha.lost.note_for_status(self.ha.witness),
            self.why_no_leader(),
            self.why_not_standing(),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Why there is no active, once a member has known no leader for an
    /// election timeout: which members it cannot hear from (a new active
    /// needs the votes of a majority whose logs hold every committed entry).
    fn why_no_leader(&self) -> Option<String> {
        let since = self.roles.leaderless_since()?;
        let election = self.cfg.election_tick as u64;
        if self.ticks.saturating_sub(since) < election {
            return None;
        }
        let silent: Vec<u64> = self
            .voters()
            .into_iter()
            .filter(|v| *v != self.cfg.id)
            .filter(|v| {
                self.last_heard
                    .get(v)
                    .is_none_or(|t| self.ticks.saturating_sub(*t) > election)
            })
            .collect();
        Some(if silent.is_empty() {
            format!(
                "no active for {} ticks: every member answers, but none can win an election \
                 (a candidate needs a majority whose logs are no more up to date than its own)",
                self.ticks - since
            )
        } else {
            format!(
                "no active for {} ticks: not heard from members {silent:?}; a new active needs \
                 the votes of a majority",
                self.ticks - since
            )
        })
    }
}
