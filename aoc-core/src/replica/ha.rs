//! The HA layer on top of raft: the commit rule in each mode, the fenced
//! lease that defines the active role, and the witness's hand-over.
//!
//! Everything here is built from raft-rs's own knobs (commit groups and
//! the group-commit switch, ReadIndex, `transfer_leader`); raft decides
//! safety, this module decides when to turn which knob.
//!
//! - **Sync mode**: the two data members are in commit groups 1 and 2, the
//!   witness in none, group commit on: an entry commits only once both data
//!   members persisted it (RPO=0).
//! - **Degraded mode**: group commit off: an entry commits on a plain
//!   majority (the active and the witness), still two disks. Entered when
//!   the oldest entry waiting only for the passive has waited
//!   `sync_timeout_ticks`; left when the passive has persisted everything
//!   committed.
//! - **Fence**: the active role is held only inside a lease that starts when
//!   the leader SENT a heartbeat round (a ReadIndex probe) that a quorum
//!   answered and lasts `election_tick - heartbeat_tick` ticks. A follower
//!   that answered will not vote for anyone else for `election_tick` ticks
//!   after it processed that round, so no other member can become leader
//!   inside the lease (the margin covers tick-rate differences).

use raft::{RawNode, StateRole, Storage};

use super::breaks::Breaks;
pub use super::commit_rule::Mode;
use super::commit_rule::{self, Conf, ModeClock, Policy, Progress};
use super::lost::LostMembers;
use crate::config::ReplicaConfig;

/// The first byte of a lease probe's ReadIndex context (client read
/// tokens are 8 bytes long, probes 9).
const PROBE_TAG: u8 = 0xA5;

pub(crate) struct Ha {
    pub(crate) witness: Option<u64>,
    election_tick: u64,
    heartbeat_tick: u64,
    sync_timeout_ticks: u64,
    /// The mode, and the indexes waiting for the passive (see
    /// `commit_rule`).
    clock: ModeClock,
    /// The lease ends at this tick (exclusive).
    lease_until: u64,
    /// The term in which this leader sent `MsgTimeoutNow` (handed over).
    /// It holds no lease again in that term: the transferee's vote
    /// requests bypass every follower's lease and may arrive late (held
    /// behind the transferee's stalled disk, say), after raft-rs abandoned
    /// the transfer.
    handed_over_term: Option<u64>,
    /// The tick of the last lease probe this term (none yet: one goes at
    /// once).
    last_probe: Option<u64>,
    /// The leader stopped ticking raft (its disk stalled and no passive was
    /// caught up): followers will elect someone else.
    pub(crate) silenced: bool,
    /// Why a witness leader cannot hand over.
    pub(crate) waiting_for: Option<String>,
    /// On the witness: both data members persisted up to here.
    pub(crate) data_persisted: u64,
    /// On the active: what it last told the witness.
    pub(crate) told_witness: u64,
    /// On the active: what the witness retains, as it last reported:
    /// (bytes, entries).
    pub(crate) witness_log: Option<(u64, u64)>,
    /// Members known to have lost synced state they had acknowledged
    /// (see [`Ha::member_lost`]).
    pub(crate) lost: LostMembers,
    /// Deliberate breaks (the simulation's checker proofs; all off
    /// elsewhere).
    pub(crate) breaks: Breaks,
}

impl Ha {
    pub(crate) fn new(cfg: &ReplicaConfig) -> Self {
        Ha {
            witness: cfg.witness,
            election_tick: cfg.election_tick as u64,
            heartbeat_tick: cfg.heartbeat_tick as u64,
            sync_timeout_ticks: cfg.sync_timeout_ticks as u64,
            clock: ModeClock::new(Mode::Majority),
            lease_until: 0,
            handed_over_term: None,
            last_probe: None,
            silenced: false,
            waiting_for: None,
            data_persisted: 0,
            told_witness: 0,
            witness_log: None,
            lost: LostMembers::default(),
            breaks: Breaks::default(),
        }
    }

    /// The voters, sorted.
    fn voters<T: Storage>(raw: &RawNode<T>) -> Vec<u64> {
        let mut v: Vec<u64> = raw.raft.prs().conf().voters().ids().iter().collect();
        v.sort_unstable();
        v
    }

    /// The configuration as the commit rule reads it.
    fn conf<T: Storage>(&self, raw: &RawNode<T>) -> Conf {
        let outgoing = raw.raft.prs().conf().to_conf_state().voters_outgoing;
        Conf {
            voters: Self::voters(raw),
            joint: !outgoing.is_empty(),
            witness: self.witness,
        }
    }

    /// The mode the leader runs.
    pub(crate) fn mode(&self) -> Mode {
        self.clock.mode
    }

    /// The data members among the voters (without building the whole
    /// [`Conf`]: this runs on every write, for the passive's lag).
    pub(crate) fn data_members<T: Storage>(&self, raw: &RawNode<T>) -> Vec<u64> {
        commit_rule::data_members(&Self::voters(raw), self.witness)
    }

    /// The other data member, seen from a data leader.
    pub(crate) fn passive<T: Storage>(&self, raw: &RawNode<T>) -> Option<u64> {
        let id = raw.raft.id;
        if Some(id) == self.witness {
            return None;
        }
        self.data_members(raw).into_iter().find(|d| *d != id)
    }

    /// Sets the commit groups and the group-commit switch for the current
    /// mode, and checks them. raft-rs keeps both in each member's own
    /// tracker, in memory: they survive role changes, vanish on a snapshot
    /// restore and are 0 for new members, so this runs on every
    /// become-leader, after every membership change and snapshot restore.
    pub(crate) fn apply_policy<T: Storage>(&mut self, raw: &mut RawNode<T>) {
        let conf = self.conf(raw);
        let policy = commit_rule::policy(
            &conf,
            self.clock.mode,
            self.witness_lost(),
            self.breaks.ack_before_sync(),
        );
        self.clock.mode = policy.mode;
        if policy.clear_waiting {
            self.clock.waiting.clear();
        }
        raw.raft.assign_commit_groups(&policy.groups);
        raw.raft.enable_group_commit(policy.group_commit);
        Self::check_policy(raw, &policy, self.witness);
    }

    /// Asserts that raft-rs holds `policy`: a half-assigned set makes every
    /// commit wait for all members; a witness in a group lets a commit skip
    /// a data member.
    fn check_policy<T: Storage>(raw: &RawNode<T>, policy: &Policy, witness: Option<u64>) {
        for (d, g) in &policy.groups {
            assert_eq!(
                raw.raft.prs().get(*d).map(|p| p.commit_group_id),
                Some(*g),
                "commit policy: data member {d} must be in commit group {g}"
            );
        }
        if let (Some(w), false) = (witness, policy.groups.is_empty()) {
            assert_eq!(
                raw.raft.prs().get(w).map(|p| p.commit_group_id),
                Some(0),
                "commit policy: the witness must be in no commit group"
            );
        }
        assert_eq!(
            raw.raft.group_commit(),
            policy.group_commit,
            "commit policy: group commit follows the mode"
        );
    }

    /// A new leader: every election but a switchover (`sync`) starts
    /// degraded, so a failover never waits `sync_timeout` for the member
    /// that is gone; it enters sync mode as soon as the passive has caught
    /// up.
    pub(crate) fn on_become_leader<T: Storage>(&mut self, raw: &mut RawNode<T>, sync: bool) {
        self.clock = ModeClock::new(if sync { Mode::Sync } else { Mode::Degraded });
        self.lease_until = 0;
        self.last_probe = None;
        self.silenced = false;
        self.apply_policy(raw);
    }

    pub(crate) fn on_step_down(&mut self) {
        self.told_witness = 0;
        self.lease_until = 0;
        self.clock.waiting.clear();
        self.silenced = false;
        self.waiting_for = None;
    }

    /// Evidence at `tick` that member `id` lost synced state it had
    /// acknowledged (`why` says how this member knows): voids what raft
    /// holds of it. Its matched index goes to 0, so no commit counts it,
    /// in any mode: raft-rs never lowers a matched index by itself (a
    /// rejection below it reads as stale), so an entry this leader has not
    /// persisted yet would otherwise commit on its own disk and the lost
    /// member's old acknowledgement. The replica drops the member's raft
    /// messages while it is marked (see `lost.rs` for how long). A lost
    /// witness sends degraded mode back to sync (`apply_policy`): commits
    /// need the passive. Returns true when the member was not marked
    /// before.
    pub(crate) fn member_lost<T: Storage>(
        &mut self,
        raw: &mut RawNode<T>,
        id: u64,
        why: String,
        tick: u64,
    ) -> bool {
        let new = self.lost.note(id, why, tick);
        self.void_acknowledgements(raw);
        if new && raw.raft.state == StateRole::Leader {
            self.apply_policy(raw);
        }
        new
    }

    /// Whether the witness is known to have lost its log.
    fn witness_lost(&self) -> bool {
        self.witness.is_some_and(|w| self.lost.contains(w))
    }

    /// Sets the matched index of every marked member to 0 (on a leader; a
    /// new leader's progress starts at 0 anyway).
    pub(crate) fn void_acknowledgements<T: Storage>(&self, raw: &mut RawNode<T>) {
        if raw.raft.state != StateRole::Leader {
            return;
        }
        for id in self.lost.ids() {
            if let Some(pr) = raw.raft.mut_prs().get_mut(id) {
                pr.matched = 0;
            }
        }
    }

    /// Whether member `id` is marked as having lost synced state.
    pub(crate) fn is_lost(&self, id: u64) -> bool {
        self.lost.contains(id)
    }

    /// Mode transitions on the leader; returns the new mode if it changed.
    pub(crate) fn update_mode<T: Storage>(
        &mut self,
        raw: &mut RawNode<T>,
        tick: u64,
    ) -> Option<Mode> {
        let conf = self.conf(raw);
        let me = raw.raft.id;
        if !commit_rule::runs_modes(&conf, raw.raft.state == StateRole::Leader, me) {
            return None;
        }
        let progress = Progress::of(
            &conf,
            me,
            |id| raw.raft.prs().get(id).map(|p| p.matched),
            raw.raft.raft_log.committed,
            raw.raft.commit_to_current_term(),
        );
        let changed = self.clock.step(progress, tick, self.sync_timeout_ticks)?;
        self.apply_policy(raw);
        Some(changed)
    }

    /// Sends a lease probe every heartbeat interval (a ReadIndex whose
    /// context is the tick it was sent). Called on every input, so a new
    /// leader's first probe leaves with the input that commits its first
    /// entry, not at the next tick.
    pub(crate) fn maybe_probe<T: Storage>(&mut self, raw: &mut RawNode<T>, tick: u64) {
        // raft-rs drops a ReadIndex until the leader has committed an entry
        // of its term: a probe sent before would be lost, and the next one
        // would wait a heartbeat interval.
        if raw.raft.state != StateRole::Leader
            || self.silenced
            || !raw.raft.commit_to_current_term()
        {
            return;
        }
        if self
            .last_probe
            .is_some_and(|at| tick < at + self.heartbeat_tick)
        {
            return;
        }
        self.last_probe = Some(tick);
        let mut ctx = Vec::with_capacity(9);
        ctx.push(PROBE_TAG);
        ctx.extend_from_slice(&tick.to_le_bytes());
        raw.read_index(ctx);
    }

    /// A ReadIndex answer: renews the lease if it is a probe's. Returns
    /// false when the context is not a probe's.
    pub(crate) fn on_read_state(&mut self, ctx: &[u8]) -> bool {
        if ctx.len() != 9 || ctx[0] != PROBE_TAG {
            return false;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&ctx[1..]);
        let sent = u64::from_le_bytes(b);
        let until = sent + self.election_tick - self.heartbeat_tick;
        self.lease_until = self.lease_until.max(until);
        true
    }

    /// Ends the lease at once, for the rest of `term` (the leader sent
    /// `MsgTimeoutNow` in it).
    pub(crate) fn end_lease(&mut self, term: u64) {
        self.lease_until = 0;
        self.handed_over_term = Some(term);
    }

    /// Whether this leader handed over in `term` (and may not hold the
    /// lease again in it).
    pub(crate) fn handed_over_in(&self, term: u64) -> bool {
        self.handed_over_term == Some(term)
    }

    /// Ticks left in the lease at `tick` (0 when it has ended).
    pub(crate) fn lease_left(&self, tick: u64) -> u64 {
        self.lease_until.saturating_sub(tick)
    }

    /// Whether this member holds the active role at `tick`.
    pub(crate) fn is_active<T: Storage>(&self, raw: &RawNode<T>, tick: u64) -> bool {
        commit_rule::holds_active(
            raw.raft.state == StateRole::Leader,
            Some(raw.raft.id) == self.witness,
            raw.raft.lead_transferee.is_some() || self.handed_over_in(raw.raft.term),
            tick,
            self.lease_until,
            self.breaks.skip_fence(),
        )
    }

    /// A witness that leads hands leadership to the most up-to-date data
    /// member as soon as raft can bring it up to date; raft-rs sends it
    /// the missing entries and then `MsgTimeoutNow`.
    pub(crate) fn witness_hand_over<T: Storage>(&mut self, raw: &mut RawNode<T>) {
        if raw.raft.state != StateRole::Leader
            || Some(raw.raft.id) != self.witness
            || self.breaks.witness_stays_leader()
        {
            self.waiting_for = None;
            return;
        }
        let first = raw.raft.raft_log.first_index();
        let mut best: Option<(u64, u64)> = None;
        for d in self.data_members(raw) {
            if let Some(p) = raw.raft.prs().get(d) {
                // A member whose next needed entry is compacted here cannot
                // be completed from the witness's log (it has no snapshot).
                // `next_idx` starts optimistic and falls to what the member
                // really needs once it answers.
                // Only a member that answers (recently active) can take over.
                if p.next_idx < first || !p.recent_active || self.lost.contains(d) {
                    continue;
                }
                if best.is_none_or(|(_, m)| p.matched > m) {
                    best = Some((d, p.matched));
                }
            }
        }
        match best {
            Some((d, _)) => {
                self.waiting_for = None;
                if raw.raft.lead_transferee != Some(d) {
                    raw.transfer_leader(d);
                }
            }
            None => {
                self.waiting_for = Some(format!(
                    "waiting for a data member holding index >= {}",
                    first.saturating_sub(1)
                ));
            }
        }
    }
}
