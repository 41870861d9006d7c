//! The role this member was last seen in (so that each change is told
//! once), the history the status shows (the last failover, since when no
//! leader is known), and the election timeout this member draws itself.

use raft::{Raft, StateRole, Storage};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How the role moved since it was last recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RoleMove {
    /// The term or the role changed.
    pub(super) moved: bool,
    /// The role changed.
    pub(super) role_changed: bool,
    /// This member led and leads no more.
    pub(super) stepped_down: bool,
    /// This member leads in a term (or role) it was not seen leading in.
    pub(super) became_leader: bool,
}

/// The role as last recorded, and the history drawn from its changes.
#[derive(Debug)]
pub(super) struct Roles {
    term: u64,
    role: StateRole,
    leader: u64,
    active: bool,
    /// The driver's clock (ms) when this member last heard from a leader
    /// other than itself.
    leader_contact_ms: Option<u64>,
    /// When this member last took the active role from another one, and
    /// how long after its last contact with the previous leader (ms).
    last_failover_ms: Option<(u64, u64)>,
    /// Since when (tick) this member knows no leader.
    leaderless_since: Option<u64>,
    /// The election timeout draws (seeded: a simulation replays them).
    rng: SmallRng,
    /// The last timeout drawn.
    last_timeout: usize,
}

impl Roles {
    /// A member starting in `role` at `term`, knowing `leader` (0: none),
    /// whose timeouts are drawn from `seed`.
    pub(super) fn new(term: u64, role: StateRole, leader: u64, seed: u64) -> Roles {
        Roles {
            term,
            role,
            leader,
            active: false,
            leader_contact_ms: None,
            last_failover_ms: None,
            leaderless_since: Some(0),
            rng: SmallRng::seed_from_u64(seed),
            last_timeout: 0,
        }
    }

    /// Draws raft's randomized election timeout from `lo..hi` whenever
    /// raft reset its timer (a new term or role, an elapsed count back to
    /// 0) or drew one of its own: raft-rs asserts that a timeout lies in
    /// its configured range, and this member's range moves (a member whose
    /// disk is low stands later).
    pub(super) fn draw_timeout<T: Storage>(&mut self, r: &mut Raft<T>, lo: usize, hi: usize) {
        if r.term != self.term
            || r.state != self.role
            || r.election_elapsed == 0
            || r.randomized_election_timeout() != self.last_timeout
        {
            let t = self.rng.gen_range(lo..hi);
            r.set_randomized_election_timeout(t);
            self.last_timeout = t;
        }
    }

    /// How `(term, role)` differs from what was last recorded.
    pub(super) fn compare(&self, term: u64, role: StateRole) -> RoleMove {
        let moved = role != self.role || term != self.term;
        RoleMove {
            moved,
            role_changed: role != self.role,
            stepped_down: moved && self.role == StateRole::Leader && role != StateRole::Leader,
            became_leader: moved && role == StateRole::Leader,
        }
    }

    /// A message from the leader this member knows arrived at `now_ms`.
    pub(super) fn heard_from_leader(&mut self, now_ms: u64) {
        self.leader_contact_ms = Some(now_ms);
    }

    /// Records whether this member is active at `now_ms`. On a change,
    /// returns it, with how long the take-over took since the last contact
    /// with the previous leader (when there was one).
    pub(super) fn record_active(
        &mut self,
        active: bool,
        now_ms: u64,
    ) -> Option<(bool, Option<u64>)> {
        if active == self.active {
            return None;
        }
        self.active = active;
        let took = if active {
            self.leader_contact_ms.take().map(|contact| {
                let took = now_ms.saturating_sub(contact);
                self.last_failover_ms = Some((now_ms, took));
                took
            })
        } else {
            None
        };
        Some((active, took))
    }

    /// Records the role at `tick`; true when the known leader changed.
    pub(super) fn record(&mut self, term: u64, role: StateRole, leader: u64, tick: u64) -> bool {
        if leader == 0 {
            self.leaderless_since.get_or_insert(tick);
        } else {
            self.leaderless_since = None;
        }
        let leader_changed = leader != self.leader;
        self.term = term;
        self.role = role;
        self.leader = leader;
        leader_changed
    }

    /// The last failover this member made: (when, ms after its last
    /// contact with the previous leader).
    pub(super) fn last_failover_ms(&self) -> Option<(u64, u64)> {
        self.last_failover_ms
    }

    /// Since when (tick) no leader is known.
    pub(super) fn leaderless_since(&self) -> Option<u64> {
        self.leaderless_since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_change_is_seen_once() {
        let mut r = Roles::new(1, StateRole::Follower, 2, 7);
        assert!(!r.compare(1, StateRole::Follower).moved);
        let m = r.compare(2, StateRole::Leader);
        assert!(m.moved && m.role_changed && m.became_leader && !m.stepped_down);
        assert!(r.record(2, StateRole::Leader, 1, 5), "the leader changed");
        assert!(!r.compare(2, StateRole::Leader).moved);
        let m = r.compare(3, StateRole::Follower);
        assert!(m.stepped_down && !m.became_leader);
        assert!(!r.record(3, StateRole::Follower, 1, 6), "same leader id");
    }

    #[test]
    fn a_take_over_is_timed_from_the_last_contact_with_the_previous_leader() {
        let mut r = Roles::new(1, StateRole::Follower, 2, 7);
        r.heard_from_leader(1_000);
        assert_eq!(r.record_active(true, 2_100), Some((true, Some(1_100))));
        assert_eq!(r.last_failover_ms(), Some((2_100, 1_100)));
        assert_eq!(r.record_active(true, 2_200), None, "told once");
        assert_eq!(r.record_active(false, 2_300), Some((false, None)));
        assert_eq!(
            r.record_active(true, 2_400),
            Some((true, None)),
            "no contact since"
        );
        assert_eq!(r.last_failover_ms(), Some((2_100, 1_100)));
    }

    #[test]
    fn leaderless_time_counts_from_the_first_tick_without_a_leader() {
        let mut r = Roles::new(1, StateRole::Follower, 0, 7);
        r.record(1, StateRole::Follower, 2, 3);
        assert_eq!(r.leaderless_since(), None);
        r.record(2, StateRole::Candidate, 0, 10);
        r.record(2, StateRole::Candidate, 0, 12);
        assert_eq!(r.leaderless_since(), Some(10));
    }
}
