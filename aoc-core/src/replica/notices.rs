//! The notices of the HA channel: what members tell each other besides
//! raft's messages. A blank member's probe and its answer, the active's
//! word to the witness of how far both data members persisted and the
//! witness's report of its log, each follower's report to the leader (the
//! configuration it holds, its disk), a switchover's notice to its target,
//! and a member's notice that it lost synced data; and the marks the
//! leader keeps of members known to have lost data (see `lost.rs`).

use tracing::{info, warn};

use super::{DiskReport, Event, Replica};
use crate::proto::{
    BlankAnswer, DataPersisted, FollowerReport, Notice, Notice_oneof_body, WitnessReport,
};
use crate::state::StateMachine;
use crate::storage::LogStore;

impl<L: LogStore, S: StateMachine> Replica<L, S> {
    /// Takes a notice from a peer: answers a blank member's probe, and (on
    /// the witness) learns up to where both data members persisted.
    pub fn on_notice(&mut self, notice: Notice) {
        if notice.to != self.cfg.id {
            return;
        }
        match notice.body {
            Some(Notice_oneof_body::blank_probe(_)) => self.on_blank_probe(notice.from),
            Some(Notice_oneof_body::switchover(sw)) => self.on_switchover_notice(sw.term),
            Some(Notice_oneof_body::data_persisted(d))
                if self.is_witness() && d.term >= self.raw.raft.term.saturating_sub(1) =>
            {
                self.answer_data_persisted(notice.from, d.index);
            }
            Some(Notice_oneof_body::follower_report(r)) if self.is_leader() => {
                self.on_follower_report(notice.from, &r);
            }
            Some(Notice_oneof_body::lost_data(lost))
                if self.is_leader() && self.raw.raft.prs().get(notice.from).is_some() =>
            {
                let why = format!(
                    "its log ends at {}, below the commit index {} it had acknowledged",
                    lost.last_index, lost.commit
                );
                self.member_lost(notice.from, why);
            }
            Some(Notice_oneof_body::witness_report(r)) if Some(notice.from) == self.ha.witness => {
                let entries = r.last_index.saturating_sub(r.first_index) + 1;
                self.ha.witness_log = Some((r.log_bytes, entries));
            }
            _ => {}
        }
    }

    /// A blank member probed: marks it lost if it had acknowledged entries
    /// to this leader, and answers it.
    pub(super) fn on_blank_probe(&mut self, from: u64) {
        // A blank probe from a member that had acknowledged entries
        // to this leader: it lost its log. (At cluster creation
        // every member probes, holding nothing yet, and a member
        // that starts late probes while the others already run:
        // neither has acknowledged anything to this leader.)
        let acked_before =
            self.is_leader() && self.raw.raft.prs().get(from).is_some_and(|p| p.matched > 0);
        // Later probes keep the mark (its matched index is 0 by then).
        if acked_before || self.ha.is_lost(from) {
            self.member_lost(from, "it probes as a blank member".into());
        }
        let r = &self.raw.raft;
        let mut answer = BlankAnswer::new();
        answer.fresh = r.term == 0 && r.raft_log.last_index() == 0;
        answer.voters = self.status().voters;
        let mut n = Notice::new();
        n.from = self.cfg.id;
        n.to = from;
        n.set_blank_answer(answer);
        self.out.notices.push(n);
    }

    /// On the witness: the active says how far both data members
    /// persisted (the witness's compaction bound); the witness answers
    /// with what it retains.
    pub(super) fn answer_data_persisted(&mut self, from: u64, index: u64) {
        self.ha.data_persisted = self.ha.data_persisted.max(index);
        let mut report = WitnessReport::new();
        report.log_bytes = self.written.log_bytes();
        report.first_index = self.raw.raft.raft_log.first_index();
        report.last_index = self.raw.raft.raft_log.last_index();
        let mut n = Notice::new();
        n.from = self.cfg.id;
        n.to = from;
        n.set_witness_report(report);
        self.out.notices.push(n);
    }

    /// On the leader: a follower's report (the configuration it holds, its
    /// disk).
    pub(super) fn on_follower_report(&mut self, from: u64, r: &FollowerReport) {
        self.confirm.on_report(from, r.conf_index);
        if r.disk_known {
            let d = DiskReport {
                free_bytes: r.free_bytes,
                reserve_bytes: r.reserve_bytes,
            };
            self.disks.reports.on_report(from, r.disk_low, d);
            self.drive_alarms();
        }
        self.after_input();
    }

    /// Member `id` lost synced state it had acknowledged to this leader:
    /// it counts for no commit from now on (`Ha::member_lost`).
    pub(super) fn member_lost(&mut self, id: u64, why: String) {
        let mode = self.ha.mode();
        if !self
            .ha
            .member_lost(&mut self.raw, id, why.clone(), self.ticks)
        {
            return;
        }
        warn!(
            member = self.cfg.id,
            lost = id,
            why = %why,
            "a member lost its data: it counts for no commit until replaced"
        );
        if self.ha.mode() != mode {
            info!(member = self.cfg.id, mode = ?self.ha.mode(), "replication mode changed");
            self.out.events.push(Event::ModeChanged {
                mode: self.ha.mode(),
            });
        }
        self.after_input();
    }

    /// Lifts the marks of members that sent no evidence of a loss for two
    /// election timeouts (see `lost.rs`).
    pub(super) fn expire_lost_marks(&mut self) {
        let quiet = 2 * self.cfg.election_tick as u64;
        for id in self.ha.lost.expire(self.ticks, quiet) {
            info!(
                member = self.cfg.id,
                id, "no more evidence that member {id} lost its data: its messages count again"
            );
        }
    }

    /// A follower tells its leader what the leader needs of it beside
    /// raft's answers (`FollowerReport`): when it changed, when the leader
    /// changed, and when `periodic`.
    pub(super) fn report_to_leader(&mut self, periodic: bool) {
        let leader = self.raw.raft.leader_id;
        if leader == 0 || leader == self.cfg.id {
            return;
        }
        let mut report = FollowerReport::new();
        report.conf_index = self.confirm.persisted();
        if let Some(d) = self.disks.own.last() {
            report.disk_known = true;
            report.free_bytes = d.free_bytes;
            report.reserve_bytes = d.reserve_bytes;
            report.disk_low = self.disks.own.low();
        }
        let same = self
            .last_report
            .as_ref()
            .is_some_and(|(to, last)| *to == leader && *last == report);
        if same && !periodic {
            return;
        }
        self.last_report = Some((leader, report.clone()));
        let mut n = Notice::new();
        n.from = self.cfg.id;
        n.to = leader;
        n.set_follower_report(report);
        self.out.notices.push(n);
    }

    /// The active tells the witness up to where both data members have
    /// persisted, whenever that moved (and once per election timeout).
    pub(super) fn tell_witness(&mut self) {
        let Some(w) = self.ha.witness else { return };
        if !self.is_leader() || self.is_witness() {
            return;
        }
        let data = self.ha.data_members(&self.raw);
        let both = data
            .iter()
            .map(|d| self.raw.raft.prs().get(*d).map(|p| p.matched).unwrap_or(0))
            .min()
            .unwrap_or(0);
        let periodic = self.ticks.is_multiple_of(self.cfg.election_tick as u64);
        if both > self.ha.told_witness || (periodic && both > 0) {
            self.ha.told_witness = both;
            let mut d = DataPersisted::new();
            d.term = self.raw.raft.term;
            d.index = both;
            let mut n = Notice::new();
            n.from = self.cfg.id;
            n.to = w;
            n.set_data_persisted(d);
            self.out.notices.push(n);
        }
    }
}
