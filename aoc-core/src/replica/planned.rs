//! Planned operations: the switchover (moving the active role to the
//! passive with nothing lost) and maintenance mode (a replicated flag that
//! suspends automatic failover).
//!
//! **Switchover.** The active stops taking proposals, tells the target
//! (a `SwitchoverNotice`, so it starts in sync mode: the old active stays
//! up and caught up), waits until the target has persisted everything it
//! has, then calls `transfer_leader`. A target that does not catch up in
//! `switchover_timeout_ticks` makes the active abandon the switchover and
//! resume. Refused on a member that is not the active, in degraded mode, or
//! while the passive has not persisted the commit index. During
//! maintenance, the active first commits a maintenance entry naming the
//! target as the member allowed to stand.
//!
//! **Maintenance.** While on, only the allowed member may stand for
//! election. raft-rs has no switch for this, and holding a follower's timer
//! below `election_tick` keeps it in lease, refusing every vote; instead a
//! suppressed member's `election_elapsed` is held at exactly
//! `election_tick` after each tick: out of lease (it votes), below
//! `min_election_tick` (it never stands). A suppressed member that refuses
//! the allowed member's vote because its own log is longer (an active killed
//! before its own write) stands itself, serves nothing, brings the allowed
//! member up to date and hands it leadership. Turning maintenance off has a
//! local form on every member (persisted at once); the next leader commits
//! the replicated off.

use raft::eraftpb::{Entry, MessageType};
use raft::StateRole;
use tracing::{info, warn};

use super::Replica;
use crate::payload::{encode_context, Payload};
use crate::proto::{Notice, SwitchoverNotice};
use crate::state::StateMachine;
use crate::storage::LogStore;
use crate::{Error, Mode, Result};

/// Token of proposals the replica makes itself (never completed).
pub(crate) const INTERNAL_TOKEN: u64 = 0;

/// A switchover in progress on the active.
#[derive(Debug)]
pub(crate) struct Switch {
    token: u64,
    target: u64,
    started: u64,
}

/// The planned operations in progress on this member.
#[derive(Debug, Default)]
pub(crate) struct Planned {
    /// The switchover this member (the active) runs.
    switch: Option<Switch>,
    /// When a switchover notice named this member.
    switchover_hint: Option<u64>,
    /// The term in which this leader proposed the replicated maintenance
    /// off.
    off_proposed_term: u64,
    /// Stand at the next chance: the allowed member of a maintenance window
    /// was refused for a shorter log.
    stand_for_allowed: bool,
}

impl Planned {
    /// Whether a switchover is in progress.
    pub(crate) fn switching(&self) -> bool {
        self.switch.is_some()
    }
}

impl<L: LogStore, S: StateMachine> Replica<L, S> {
    /// Whether maintenance mode forbids this member to stand.
    pub(crate) fn suppressed(&self) -> bool {
        self.maintenance()
            .is_some_and(|(allowed, _)| allowed != self.cfg.id)
    }

    /// Why this member does not stand while no member leads: maintenance
    /// mode allows another member only.
    pub(crate) fn why_not_standing(&self) -> Option<String> {
        let (allowed, _) = self.maintenance()?;
        let leader = self.raw.raft.leader_id;
        let election = self.cfg.election_tick as u64;
        let leader_heard = leader != 0
            && (leader == self.cfg.id
                || self
                    .last_heard
                    .get(&leader)
                    .is_some_and(|t| self.ticks.saturating_sub(*t) <= election));
        if allowed == self.cfg.id || leader_heard {
            return None;
        }
        Some(format!(
            "maintenance mode is on here: only member {allowed} may stand; if it cannot \
             come back, turn maintenance off (`maintenance off`, or `maintenance off --local` \
             on each member when no member is active)"
        ))
    }

    /// Whether maintenance mode, as this member acts on it, forbids
    /// `member` to stand.
    fn suppressed_for(&self, member: u64) -> bool {
        self.maintenance()
            .is_some_and(|(allowed, _)| allowed != member)
    }

    /// Maintenance mode as this member acts on it: `Some((allowed member,
    /// since_ms))` while on. The newest setting in its log decides,
    /// applied or not (see `maintenance.rs`), unless maintenance was
    /// turned off locally after it was appended.
    pub fn maintenance(&self) -> Option<(u64, u64)> {
        let floor = self.meta.maintenance_index.max(self.meta.local_off_index);
        let appended = (!self.ha.breaks.maintenance_applied_only())
            .then(|| self.meta.tail.newest_above(floor))
            .flatten();
        match appended {
            Some(s) => s.on.then_some((s.allowed, s.stamp_ms)),
            None => self.meta.maintenance.then_some((
                self.meta.maintenance_allowed,
                self.meta.maintenance_since_ms,
            )),
        }
    }

    /// Reads the persisted metadata, replays maintenance entries the log
    /// holds beyond it up to the commit index (their metadata write may
    /// have been lost), and notes those above it (appended, not known
    /// committed).
    pub(crate) fn load_meta(&mut self) -> Result<()> {
        let store = self.raw.store().store();
        self.meta.loaded(store.member_meta()?);
        let from = (self.meta.maintenance_index + 1).max(store.first_index()?);
        let last = store.last_index()?;
        let committed = self.raw.raft.raft_log.committed.min(last);
        if from <= last {
            let entries = store.entries(from, last + 1, None).map_err(|e| {
                Error::storage("log", format!("cannot read entries {from}..={last}: {e}"))
            })?;
            let (applied, tail): (Vec<Entry>, Vec<Entry>) =
                entries.into_iter().partition(|e| e.index <= committed);
            for e in &applied {
                self.apply_if_setting(e);
            }
            self.meta.tail.appended(&tail);
        }
        Ok(())
    }

    /// Applies `e` if it carries a replicated setting (the witness
    /// decodes nothing else).
    pub(crate) fn apply_if_setting(&mut self, e: &Entry) {
        if let Ok(p) = Payload::decode(&e.data) {
            self.apply_setting(e.index, p);
        }
    }

    /// Applies a replicated setting (maintenance mode, a NOSPACE alarm)
    /// committed at `index`; other payloads are not settings.
    pub(crate) fn apply_setting(&mut self, index: u64, p: Payload) {
        match p {
            Payload::Maintenance {
                on,
                allowed,
                stamp_ms,
            } => self.apply_maintenance(index, on, allowed, stamp_ms),
            Payload::Alarm {
                member,
                on,
                free_bytes,
                reserve_bytes,
                stamp_ms,
            } => self.apply_alarm(
                crate::Alarm {
                    member,
                    free_bytes,
                    reserve_bytes,
                    since_ms: stamp_ms,
                },
                on,
            ),
            Payload::Command { .. } | Payload::RegisterClient { .. } | Payload::Noop => {}
        }
    }

    /// Applies a committed maintenance entry. One appended before a local
    /// off does not turn maintenance back on here (the operator turned it
    /// off after it); the replicated state still records it, so a leader
    /// commits the replicated off.
    pub(crate) fn apply_maintenance(&mut self, index: u64, on: bool, allowed: u64, stamp_ms: u64) {
        self.meta.tail.applied_up_to(index);
        if index <= self.meta.maintenance_index {
            return;
        }
        info!(member = self.cfg.id, on, allowed, index, "maintenance mode");
        let record = self.meta.change();
        record.maintenance = on && index > record.local_off_index;
        record.replicated_on = on;
        record.maintenance_allowed = if on { allowed } else { 0 };
        record.maintenance_since_ms = if on { stamp_ms } else { 0 };
        record.maintenance_index = index;
        self.out
            .events
            .push(crate::Event::MaintenanceChanged { on, allowed });
    }

    /// Turns maintenance on (only the current active may then stand) or
    /// off, through the log. The outcome arrives in [`super::Ready::completions`].
    pub fn set_maintenance(&mut self, token: u64, on: bool) {
        if !self.is_active() {
            let hint = self.active_hint();
            self.refuse(token, Error::NotLeader { leader_hint: hint });
            return;
        }
        let payload = Payload::Maintenance {
            on,
            allowed: if on { self.cfg.id } else { 0 },
            stamp_ms: self.now_ms,
        };
        self.propose_internal(token, payload);
    }

    /// Turns maintenance off on this member alone, at once and durably
    /// (works without a leader, on the witness too); the next leader
    /// commits the replicated off.
    pub fn maintenance_off_local(&mut self) {
        if self.maintenance().is_none() {
            return;
        }
        warn!(member = self.cfg.id, "maintenance turned off locally");
        let last = self.raw.raft.raft_log.last_index();
        let record = self.meta.change();
        record.maintenance = false;
        // Settings already in the log, applied later, stay off here.
        record.local_off_index = last;
        self.out.events.push(crate::Event::MaintenanceChanged {
            on: false,
            allowed: 0,
        });
    }

    /// Proposes an entry the replica needs (maintenance), bypassing the
    /// client rules (the witness may propose these).
    pub(crate) fn propose_internal(&mut self, token: u64, payload: Payload) {
        match self
            .raw
            .propose(encode_context(self.cfg.id, token), payload.encode())
        {
            Ok(()) => {
                if token != INTERNAL_TOKEN {
                    self.pending.proposed(token);
                }
            }
            Err(e) if token != INTERNAL_TOKEN => self.refuse(token, e.into()),
            Err(e) => warn!(member = self.cfg.id, error = %e, "internal proposal refused"),
        }
        self.after_input();
    }

    /// Before a tick: a suppressed member's election timer is held so that
    /// after the tick it reads exactly `election_tick`.
    pub(crate) fn hold_election_timer(&mut self) {
        if !self.suppressed() || self.raw.raft.state == StateRole::Leader {
            return;
        }
        let hold = self.cfg.election_tick.saturating_sub(1);
        if self.raw.raft.election_elapsed > hold {
            self.raw.raft.election_elapsed = hold;
        }
    }

    /// Remembers a vote request from the allowed member, to tell later
    /// whether this member refused it for a shorter log.
    pub(crate) fn note_vote_request(
        &mut self,
        from: u64,
        msg_type: MessageType,
        log_term: u64,
        index: u64,
    ) {
        if self.suppressed()
            && self
                .maintenance()
                .is_some_and(|(allowed, _)| from == allowed)
            && matches!(
                msg_type,
                MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
            )
        {
            let last = self.raw.raft.raft_log.last_index();
            let last_term = self.raw.raft.raft_log.last_term();
            if (last_term, last) > (log_term, index) {
                // raft refuses it; no leaderless state may last: stand,
                // then hand over (below).
                self.planned.stand_for_allowed = true;
            }
        }
    }

    /// The leader-side duties of the planned operations, after every input.
    pub(crate) fn drive_planned(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            self.finish_switchover(self.raw.raft.leader_id);
            if let Some(sw) = self.planned.switch.as_ref() {
                if self.ticks.saturating_sub(sw.started)
                    >= 2 * self.cfg.switchover_timeout_ticks as u64
                {
                    let token = sw.token;
                    self.planned.switch = None;
                    self.out.switchovers.push((
                        token,
                        Err(Error::Timeout {
                            what: "switchover: this member handed over but no new active appeared"
                                .into(),
                        }),
                    ));
                }
            }
            if self.planned.stand_for_allowed
                && self.raw.raft.state == StateRole::Follower
                && self.stand("to bring the allowed member up to date")
            {
                self.planned.stand_for_allowed = false;
            }
            return;
        }
        self.planned.stand_for_allowed = false;
        // A local off waits for a leader to commit the replicated off.
        if self.meta.replicated_on
            && !self.meta.maintenance
            && self.planned.off_proposed_term != self.raw.raft.term
        {
            self.planned.off_proposed_term = self.raw.raft.term;
            let payload = Payload::Maintenance {
                on: false,
                allowed: 0,
                stamp_ms: self.now_ms,
            };
            self.propose_internal(INTERNAL_TOKEN, payload);
        }
        // A leader that may not be the active hands the role to the
        // allowed member as soon as raft can bring it up to date. Its view
        // of maintenance counts once it has applied what was committed
        // before its term: a switchover target may be elected before it
        // applies the maintenance off that came just before.
        let allowed = self.maintenance().map_or(0, |(allowed, _)| allowed);
        if self.suppressed() && !self.is_witness() && self.applied_own_term() {
            let first = self.raw.raft.raft_log.first_index();
            let ready = !self.ha.is_lost(allowed)
                && self
                    .raw
                    .raft
                    .prs()
                    .get(allowed)
                    .is_some_and(|p| p.recent_active && p.next_idx >= first);
            if ready && self.raw.raft.lead_transferee != Some(allowed) {
                self.raw.transfer_leader(allowed);
            }
        }
        self.drive_switchover();
    }

    /// Starts a planned switchover to the passive. The outcome (the write
    /// pause it caused, in ticks) arrives in [`super::Ready::switchovers`].
    pub fn switchover(&mut self, token: u64) {
        let refusal = if !self.is_active() {
            Some(Error::NotLeader {
                leader_hint: self.active_hint(),
            })
        } else if self.planned.switch.is_some() {
            Some(Error::Busy {
                reason: "a switchover is already in progress".into(),
            })
        } else if self.ha.mode() != Mode::Sync {
            Some(Error::Busy {
                reason: format!(
                    "refused in {:?} mode: the passive is not in sync; wait for sync mode",
                    self.ha.mode()
                ),
            })
        } else {
            None
        };
        if let Some(e) = refusal {
            self.out.switchovers.push((token, Err(e)));
            return;
        }
        let Some(target) = self.ha.passive(&self.raw) else {
            self.out.switchovers.push((
                token,
                Err(Error::Busy {
                    reason: "no passive to switch over to".into(),
                }),
            ));
            return;
        };
        if self.ha.is_lost(target) {
            self.out.switchovers.push((
                token,
                Err(Error::Busy {
                    reason: format!(
                        "refused: the passive {target} lost its data; replace it (members replace)"
                    ),
                }),
            ));
            return;
        }
        let commit = self.raw.raft.raft_log.committed;
        let matched = self
            .raw
            .raft
            .prs()
            .get(target)
            .map(|p| p.matched)
            .unwrap_or(0);
        if matched < commit {
            self.out.switchovers.push((
                token,
                Err(Error::Busy {
                    reason: format!(
                        "refused: the passive {target} has persisted up to {matched}, behind the commit index {commit}"
                    ),
                }),
            ));
            return;
        }
        info!(member = self.cfg.id, target, "switchover started");
        let mut n = Notice::new();
        n.from = self.cfg.id;
        n.to = target;
        let mut body = SwitchoverNotice::new();
        body.term = self.raw.raft.term;
        n.set_switchover(body);
        self.out.notices.push(n);
        if self.suppressed_for(target) {
            // During maintenance the new active must be the allowed one.
            let payload = Payload::Maintenance {
                on: true,
                allowed: target,
                stamp_ms: self.now_ms,
            };
            self.propose_internal(INTERNAL_TOKEN, payload);
        }
        self.planned.switch = Some(Switch {
            token,
            target,
            started: self.ticks,
        });
    }

    /// Moves a switchover on: transfer once the target holds everything;
    /// abandon after the timeout.
    fn drive_switchover(&mut self) {
        let Some(sw) = self.planned.switch.as_ref() else {
            return;
        };
        let (token, target, started) = (sw.token, sw.target, sw.started);
        if self.ticks.saturating_sub(started) >= self.cfg.switchover_timeout_ticks as u64 {
            self.planned.switch = None;
            if self.raw.raft.lead_transferee.is_some() {
                self.raw.raft.abort_leader_transfer();
            }
            warn!(member = self.cfg.id, target, "switchover abandoned");
            self.out.switchovers.push((
                token,
                Err(Error::Timeout {
                    what: format!(
                        "switchover abandoned: member {target} did not catch up within {} ticks; \
                         this member stays active",
                        self.cfg.switchover_timeout_ticks
                    ),
                }),
            ));
            return;
        }
        let last = self.raw.raft.raft_log.last_index();
        let caught_up = self
            .raw
            .raft
            .prs()
            .get(target)
            .is_some_and(|p| p.matched >= last);
        let maintenance_ok = !self.suppressed_for(target);
        if caught_up && maintenance_ok && self.raw.raft.lead_transferee.is_none() {
            self.raw.transfer_leader(target);
        }
    }

    /// A former leader completes its switchover once it knows the new
    /// leader (a leader that hands over first steps down knowing none).
    pub(crate) fn finish_switchover(&mut self, new_leader: u64) {
        if new_leader == 0 || self.raw.raft.state == StateRole::Leader {
            return;
        }
        if let Some(sw) = self.planned.switch.take() {
            let result = if new_leader == sw.target {
                info!(member = self.cfg.id, to = sw.target, "switchover done");
                Ok(self.ticks.saturating_sub(sw.started))
            } else {
                Err(Error::NotLeader {
                    leader_hint: (new_leader != 0).then_some(new_leader),
                })
            };
            self.out.switchovers.push((sw.token, result));
        }
    }

    /// The target of a switchover remembers when it was told, to start in
    /// sync mode if it becomes leader soon after.
    pub(crate) fn on_switchover_notice(&mut self, term: u64) {
        if term >= self.raw.raft.term {
            self.planned.switchover_hint = Some(self.ticks);
        }
    }

    /// Whether a leader elected now comes from a planned switchover (the
    /// hint is used up).
    pub(crate) fn take_switchover_election(&mut self) -> bool {
        let window = 2 * self.cfg.election_tick as u64 + self.cfg.switchover_timeout_ticks as u64;
        self.planned
            .switchover_hint
            .take()
            .is_some_and(|t| self.ticks.saturating_sub(t) <= window)
    }
}
