//! The NOSPACE alarm: a data member whose disk is below its reserve stops
//! the writes that take space, cluster-wide, before its disk is full, so
//! the operator can free space (deletes, compaction, backups still run)
//! without an outage, as etcd's space quota does.
//!
//! The driver measures (the replica does no I/O): each member reports its
//! free bytes and reserve ([`DiskReport`], `Replica::report_disk`). A disk
//! is low below the reserve and stays low until it is back above the
//! reserve plus a margin (no flapping at the edge). Followers tell the
//! leader with their `FollowerReport`; the leader raises or clears each
//! data member's alarm by a replicated entry (`Payload::Alarm`), so every
//! member and every status agree on the alarms in effect. The operator can
//! clear them all (`alarm disarm`); a disk still low raises its alarm
//! again at the next report.

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::Replica;
use crate::payload::Payload;
use crate::proto::NoSpaceAlarm;
use crate::state::StateMachine;
use crate::storage::LogStore;
use crate::Error;

/// A member's disk as its driver measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskReport {
    /// Bytes free for the member's data directory.
    pub free_bytes: u64,
    /// Below this many free bytes the member raises its NOSPACE alarm.
    pub reserve_bytes: u64,
}

impl DiskReport {
    /// The free bytes above which a low disk counts as recovered: the
    /// reserve, plus an eighth of it and 1 MiB (no flapping at the edge).
    pub fn clear_above(&self) -> u64 {
        self.reserve_bytes
            .saturating_add(self.reserve_bytes / 8)
            .saturating_add(1 << 20)
    }
}

/// A NOSPACE alarm in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alarm {
    /// The data member whose disk is low.
    pub member: u64,
    /// Its free bytes when it raised the alarm.
    pub free_bytes: u64,
    /// Its reserve.
    pub reserve_bytes: u64,
    /// When it was raised (the leader's stamp, ms).
    pub since_ms: u64,
}

impl Alarm {
    pub(crate) fn from_record(r: &NoSpaceAlarm) -> Self {
        Alarm {
            member: r.member,
            free_bytes: r.free_bytes,
            reserve_bytes: r.reserve_bytes,
            since_ms: r.since_ms,
        }
    }

    pub(crate) fn to_record(self) -> NoSpaceAlarm {
        let mut r = NoSpaceAlarm::new();
        r.member = self.member;
        r.free_bytes = self.free_bytes;
        r.reserve_bytes = self.reserve_bytes;
        r.since_ms = self.since_ms;
        r
    }
}

/// The disks: this member's own, and on the leader every member's report.
#[derive(Debug, Default)]
pub(crate) struct Disks {
    /// This member's disk.
    pub(crate) own: DiskWatch,
    /// On the leader: the members' disks as they reported them.
    pub(crate) reports: DiskReports,
}

/// This member's own disk, with the hysteresis (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct DiskWatch {
    last: Option<DiskReport>,
    low: bool,
}

impl DiskWatch {
    /// Takes a measurement; returns true when the disk turned low or
    /// recovered.
    pub(crate) fn report(&mut self, r: DiskReport) -> bool {
        self.last = Some(r);
        let low = if self.low {
            r.free_bytes < r.clear_above()
        } else {
            r.free_bytes < r.reserve_bytes
        };
        let changed = low != self.low;
        self.low = low;
        changed
    }

    /// Whether the disk is below its reserve (and not yet recovered).
    pub(crate) fn low(&self) -> bool {
        self.low
    }

    /// The last measurement.
    pub(crate) fn last(&self) -> Option<DiskReport> {
        self.last
    }
}

/// On the leader: each member's disk as it last reported it, and the
/// alarm entries proposed, so that each is proposed once per election
/// timeout at most.
#[derive(Debug, Default)]
pub(crate) struct DiskReports {
    reported: BTreeMap<u64, (bool, DiskReport)>,
    proposed: BTreeMap<u64, (bool, u64)>,
}

impl DiskReports {
    /// Member `id` reported its disk.
    pub(crate) fn on_report(&mut self, id: u64, low: bool, r: DiskReport) {
        self.reported.insert(id, (low, r));
    }

    /// What member `id` last reported: (low, measurement).
    pub(crate) fn of(&self, id: u64) -> Option<(bool, DiskReport)> {
        self.reported.get(&id).copied()
    }

    /// Whether an entry setting `id`'s alarm to `on` may be proposed at
    /// `tick` (none proposed for the last `every` ticks); records it.
    pub(crate) fn may_propose(&mut self, id: u64, on: bool, tick: u64, every: u64) -> bool {
        if let Some((was, at)) = self.proposed.get(&id) {
            if *was == on && tick < at + every {
                return false;
            }
        }
        self.proposed.insert(id, (on, tick));
        true
    }

    /// A leader that steps down forgets the reports.
    pub(crate) fn clear(&mut self) {
        self.reported.clear();
        self.proposed.clear();
    }
}

impl<L: LogStore, S: StateMachine> Replica<L, S> {
    /// The driver's latest measurement of this member's disk (call it
    /// every second or so). A disk below its reserve raises this member's
    /// NOSPACE alarm through the leader; one back above the reserve and
    /// its margin clears it.
    pub fn report_disk(&mut self, r: DiskReport) {
        if self.disks.own.report(r) {
            if self.disks.own.low() {
                warn!(
                    member = self.cfg.id,
                    free_bytes = r.free_bytes,
                    reserve_bytes = r.reserve_bytes,
                    "disk below its reserve: NOSPACE alarm (writes that take space are refused)"
                );
            } else {
                info!(
                    member = self.cfg.id,
                    free_bytes = r.free_bytes,
                    "disk above its reserve again: the NOSPACE alarm clears"
                );
            }
            self.report_to_leader(false);
            self.drive_alarms();
        }
        self.after_input();
    }

    /// The NOSPACE alarms in effect, as this member applied them.
    pub fn alarms(&self) -> Vec<Alarm> {
        self.meta.alarms.iter().map(Alarm::from_record).collect()
    }

    /// Clears every NOSPACE alarm, through the log (the operator's `alarm
    /// disarm`); a disk still low raises its alarm again at its next
    /// report. Asked of the leader; the outcome arrives in
    /// [`super::Ready::completions`].
    pub fn disarm_alarms(&mut self, token: u64) {
        if !self.is_leader() || self.is_witness() {
            let hint = self.leader().filter(|l| *l != self.cfg.id);
            self.refuse(token, Error::NotLeader { leader_hint: hint });
            return;
        }
        let payload = Payload::Alarm {
            member: 0,
            on: false,
            free_bytes: 0,
            reserve_bytes: 0,
            stamp_ms: self.now_ms,
        };
        self.propose_internal(token, payload);
    }

    /// Applies an alarm entry (`member` 0 and off: every alarm clears). An
    /// alarm raised for a member that is not in the configuration any more
    /// is ignored: the entry was proposed before its removal was applied,
    /// and nobody would ever clear it (the verification runner with
    /// `--replace`).
    pub(crate) fn apply_alarm(&mut self, alarm: Alarm, on: bool) {
        let conf = self.raw.raft.prs().conf();
        let member =
            conf.voters().contains(alarm.member) || conf.learners().contains(&alarm.member);
        if on && !member {
            info!(
                member = self.cfg.id,
                alarmed = alarm.member,
                "an alarm for a member no longer in the configuration: ignored"
            );
            return;
        }
        let before = self.meta.alarms.len();
        let alarms = &mut self.meta.change().alarms;
        alarms.retain(|a| alarm.member != 0 && a.member != alarm.member);
        if on && alarm.member != 0 {
            alarms.push(alarm.to_record());
            warn!(
                member = self.cfg.id,
                alarmed = alarm.member,
                free_bytes = alarm.free_bytes,
                reserve_bytes = alarm.reserve_bytes,
                "NOSPACE alarm raised: writes that take space are refused"
            );
        } else if self.meta.alarms.len() != before {
            info!(
                member = self.cfg.id,
                cleared = alarm.member,
                "NOSPACE alarm cleared"
            );
        }
    }

    /// The refusal of a command while an alarm is in effect, unless it only
    /// frees space.
    pub(crate) fn no_space_refusal(&self, command: &[u8]) -> Option<Error> {
        let a = self.meta.alarms.first()?;
        if self.sm.frees_space(command) {
            return None;
        }
        Some(Error::NoSpace {
            member: a.member,
            free_bytes: a.free_bytes,
            reserve_bytes: a.reserve_bytes,
        })
    }

    /// The leader raises or clears each data member's alarm to match its
    /// disk as last reported (once per election timeout at most for the
    /// same setting), and hands the active role to a caught-up passive
    /// while its own disk is low and the passive's is not.
    pub(crate) fn drive_alarms(&mut self) {
        if !self.is_leader() || self.is_witness() {
            return;
        }
        let every = self.cfg.election_tick as u64;
        for m in self.ha.data_members(&self.raw) {
            let known = if m == self.cfg.id {
                self.disks.own.last().map(|d| (self.disks.own.low(), d))
            } else {
                self.disks.reports.of(m)
            };
            let Some((low, d)) = known else { continue };
            let alarmed = self.meta.alarms.iter().any(|a| a.member == m);
            if low != alarmed && self.disks.reports.may_propose(m, low, self.ticks, every) {
                let payload = Payload::Alarm {
                    member: m,
                    on: low,
                    free_bytes: d.free_bytes,
                    reserve_bytes: d.reserve_bytes,
                    stamp_ms: self.now_ms,
                };
                self.propose_internal(super::planned::INTERNAL_TOKEN, payload);
            }
        }
        self.hand_over_for_disk();
    }

    /// Whether this data member should give way because of its disk: its
    /// own is below the reserve and another data member's is not (as the
    /// alarms in effect say). It then stands later than the others
    /// (`election_ticks`) and, as the leader, hands over.
    pub(crate) fn defers_for_disk(&self) -> bool {
        if self.is_witness() || !self.disks.own.low() {
            return false;
        }
        self.ha
            .data_members(&self.raw)
            .into_iter()
            .any(|m| m != self.cfg.id && !self.meta.alarms.iter().any(|a| a.member == m))
    }

    fn hand_over_for_disk(&mut self) {
        if !self.defers_for_disk() || self.raw.raft.lead_transferee.is_some() {
            return;
        }
        let last = self.raw.raft.raft_log.last_index();
        let Some(p) = self.ha.passive(&self.raw).filter(|p| {
            !self.ha.is_lost(*p)
                && self
                    .raw
                    .raft
                    .prs()
                    .get(*p)
                    .is_some_and(|pr| pr.matched >= last)
        }) else {
            return;
        };
        warn!(
            member = self.cfg.id,
            to = p,
            "own disk below its reserve; handing the active role to the passive"
        );
        self.raw.transfer_leader(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_disk_is_low_below_the_reserve_and_recovers_above_the_margin() {
        let mut w = DiskWatch::default();
        let r = |free| DiskReport {
            free_bytes: free * MIB,
            reserve_bytes: 64 * MIB,
        };
        assert!(!w.report(r(100)));
        assert!(w.report(r(63)), "below the reserve: low");
        assert!(w.low());
        assert!(!w.report(r(70)), "just above the reserve: still low");
        assert!(w.report(r(73)), "above reserve + 1/8 + 1 MiB: recovered");
        assert!(!w.low());
    }

    #[test]
    fn an_alarm_entry_is_proposed_once_per_period() {
        let mut d = DiskReports::default();
        assert!(d.may_propose(2, true, 10, 10));
        assert!(!d.may_propose(2, true, 15, 10));
        assert!(
            d.may_propose(2, false, 16, 10),
            "another setting goes at once"
        );
        assert!(d.may_propose(2, false, 26, 10));
    }
}
