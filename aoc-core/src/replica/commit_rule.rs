//! The HA rule as pure functions: the replication mode, the commit groups
//! raft-rs gets in each mode, and whether a leader holds the active role.
//!
//! Nothing here touches raft-rs, a clock or a store: `ha.rs` reads raft's
//! state into a [`Conf`] and a [`Progress`], asks these functions, and
//! turns the knobs the answer names (`assign_commit_groups`,
//! `enable_group_commit`). The table in `aoc-core/testdata/commit_rule.txt`
//! runs them case by case, with raft-rs's own commit computation on the
//! policy they give, and reads like the commit-rule table of
//! docs/design.md:
//!
//! | mode | commit groups | an entry commits when |
//! |---|---|---|
//! | sync | data members in groups 1 and 2, witness in none, group commit on | both data members persisted it |
//! | degraded | group commit off | a majority persisted it (active + witness) |
//! | standalone | one voter | the member persisted it |
//! | majority | group commit off (no witness, or a membership change under way) | a majority persisted it |

use std::collections::VecDeque;

/// The replication mode, as the leader runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// One voter: commits on its own synced write.
    Standalone,
    /// No witness configured: plain raft majority among data members.
    Majority,
    /// Commit waits for both data members (RPO=0).
    Sync,
    /// Commit on the active and the witness; the passive is behind.
    Degraded,
}

/// The configuration the rule reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conf {
    /// The voters (of the incoming configuration), sorted.
    pub(crate) voters: Vec<u64>,
    /// A joint configuration is in force (a membership change under way).
    pub(crate) joint: bool,
    /// The configured witness.
    pub(crate) witness: Option<u64>,
}

impl Conf {
    /// Whether the HA rules apply: two data members and the witness, and
    /// no joint configuration (a membership change in progress: plain raft
    /// until it is left, a moment later).
    pub(crate) fn ha_group(&self) -> bool {
        self.witness.is_some_and(|w| self.voters.contains(&w))
            && self.voters.len() == 3
            && !self.joint
    }

    /// The data members among the voters, in order.
    pub(crate) fn data_members(&self) -> Vec<u64> {
        data_members(&self.voters, self.witness)
    }
}

/// The data members among `voters`: every voter but the witness.
pub(crate) fn data_members(voters: &[u64], witness: Option<u64>) -> Vec<u64> {
    voters
        .iter()
        .copied()
        .filter(|v| Some(*v) != witness)
        .collect()
}

/// What raft-rs is to be told: the commit groups and the group-commit
/// switch, for the mode the leader runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    /// The mode after this decision.
    pub(crate) mode: Mode,
    /// (member, commit group) for each data member; empty outside the HA
    /// group (the groups raft-rs holds are then left as they are, and
    /// unused with group commit off).
    pub(crate) groups: Vec<(u64, u64)>,
    /// Whether group commit is on.
    pub(crate) group_commit: bool,
    /// Whether the indexes waiting for the passive are forgotten.
    pub(crate) clear_waiting: bool,
}

/// The policy for `conf` when the leader ran `mode` so far.
/// `witness_lost`: the witness is known to have lost its log.
/// `ack_before_sync`: the simulation's break that keeps group commit off.
pub(crate) fn policy(conf: &Conf, mode: Mode, witness_lost: bool, ack_before_sync: bool) -> Policy {
    if !conf.ha_group() {
        let mode = if conf.voters.len() == 1 {
            Mode::Standalone
        } else {
            Mode::Majority
        };
        return Policy {
            mode,
            groups: Vec::new(),
            group_commit: false,
            clear_waiting: false,
        };
    }
    // The HA group just formed (a membership change): start as a new
    // leader does, degraded until the passive has caught up.
    let mut mode = match mode {
        Mode::Standalone | Mode::Majority => Mode::Degraded,
        m => m,
    };
    // A lost witness holds no second copy: commits need the passive, which
    // is what sync mode is.
    let clear_waiting = witness_lost;
    if witness_lost {
        mode = Mode::Sync;
    }
    let groups = conf
        .data_members()
        .into_iter()
        .zip(1u64..)
        .collect::<Vec<_>>();
    Policy {
        mode,
        groups,
        group_commit: mode == Mode::Sync && !ack_before_sync,
        clear_waiting,
    }
}

/// Whether the mode rule runs at all: on a data member leading the HA
/// group (the witness leads only to hand over; outside the HA group the
/// mode follows the configuration alone).
pub(crate) fn runs_modes(conf: &Conf, leader: bool, me: u64) -> bool {
    leader && conf.ha_group() && Some(me) != conf.witness
}

/// The leader's replication progress at one tick, as the mode rule reads
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// The highest index a plain majority of voters has persisted.
    pub(crate) majority: u64,
    /// The commit index.
    pub(crate) commit: u64,
    /// The index the passive has persisted.
    pub(crate) passive: u64,
    /// The leader has committed an entry of its own term.
    pub(crate) commit_in_term: bool,
}

impl Progress {
    /// The progress of `conf`'s voters from the index each has persisted
    /// (`persisted(id)`; the leader's own persisted index for itself).
    pub(crate) fn of(
        conf: &Conf,
        me: u64,
        persisted: impl Fn(u64) -> Option<u64>,
        commit: u64,
        commit_in_term: bool,
    ) -> Progress {
        let mut matched: Vec<u64> = conf.voters.iter().filter_map(|v| persisted(*v)).collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let quorum = matched.len() / 2 + 1;
        let passive = conf
            .data_members()
            .into_iter()
            .find(|d| *d != me)
            .and_then(&persisted)
            .unwrap_or(0);
        Progress {
            majority: matched.get(quorum - 1).copied().unwrap_or(0),
            commit,
            passive,
            commit_in_term,
        }
    }
}

/// The mode and the indexes waiting for the passive, carried from one
/// decision to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModeClock {
    /// The mode the leader runs.
    pub(crate) mode: Mode,
    /// Majority-durable indexes still waiting for the passive, with the
    /// tick each became majority-durable, oldest first.
    pub(crate) waiting: VecDeque<(u64, u64)>,
}

impl ModeClock {
    /// A clock in `mode` with nothing waiting.
    pub(crate) fn new(mode: Mode) -> ModeClock {
        ModeClock {
            mode,
            waiting: VecDeque::new(),
        }
    }

    /// One step of the mode rule at `tick`; returns the new mode if it
    /// changed (the caller then applies [`policy`]).
    ///
    /// - Sync to degraded: the oldest index a majority persisted that the
    ///   rule still holds back has waited `sync_timeout_ticks`.
    ///   Persistence is the test, not liveness: a passive that answers
    ///   with a stalled disk degrades the active too.
    /// - Degraded to sync: the passive holds everything committed (not
    ///   the last index: under load it always trails the tail by what is
    ///   in flight), and the leader has committed in its term.
    pub(crate) fn step(&mut self, p: Progress, tick: u64, sync_timeout_ticks: u64) -> Option<Mode> {
        match self.mode {
            Mode::Sync => {
                let newest = self.waiting.back().map(|w| w.0).unwrap_or(p.commit);
                if p.majority > newest && p.majority > p.commit {
                    self.waiting.push_back((p.majority, tick));
                }
                while self.waiting.front().is_some_and(|(i, _)| *i <= p.commit) {
                    self.waiting.pop_front();
                }
                // A lost witness counts for nothing: the majority index is
                // then the passive's, and nothing waits.
                let expired = self
                    .waiting
                    .front()
                    .is_some_and(|(_, since)| tick.saturating_sub(*since) >= sync_timeout_ticks);
                if !expired {
                    return None;
                }
                self.mode = Mode::Degraded;
            }
            Mode::Degraded => {
                if p.passive < p.commit || !p.commit_in_term {
                    return None;
                }
                self.mode = Mode::Sync;
            }
            Mode::Standalone | Mode::Majority => return None,
        }
        self.waiting.clear();
        Some(self.mode)
    }
}

/// Whether a leader holds the active role at `tick`: a data member, not
/// handing over, inside the lease that ends at `lease_until` (exclusive).
/// `skip_fence`: the simulation's break that ignores the lease.
pub(crate) fn holds_active(
    leader: bool,
    is_witness: bool,
    transferring: bool,
    tick: u64,
    lease_until: u64,
    skip_fence: bool,
) -> bool {
    leader && !is_witness && !transferring && (tick < lease_until || skip_fence)
}

#[cfg(test)]
mod table;
