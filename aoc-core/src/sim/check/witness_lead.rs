//! Property: **the witness leads only as long as it must**. The witness
//! runs no state machine (by type: `Replica::new_witness` holds no state
//! machine, `Replica::state_machine` is `None` on it), so it serves
//! nothing; it may lead only to bring a data member up to date and hand it
//! leadership. Once a data member it can complete (up, connected both
//! ways, disk running, log reaching the witness's first index) exists, the
//! witness must stop leading within [`WITNESS_LEAD_BOUND_TICKS`] ticks, on
//! a network that loses less than [`WITNESS_LEAD_MAX_LOSS_PER_MILLE`].

use super::Property;
use crate::sim::Cluster;
use crate::storage::LogStore;

/// How long the witness may keep leading once a data member it can
/// complete is reachable: a catch-up of a few round trips plus a
/// `MsgTimeoutNow` election, with room for lost messages.
pub const WITNESS_LEAD_BOUND_TICKS: u64 = 30;

/// The bound holds on a network that loses fewer messages than this (per
/// mille), as the availability bound holds outside heavy-loss episodes
/// (`liveness.rs`): a catch-up probes once per heartbeat answer, and at a
/// quarter of messages lost, several answers and appends in a row can go
/// (seen: 3 s with swarm knobs at 27% loss).
pub const WITNESS_LEAD_MAX_LOSS_PER_MILLE: u32 = 50;

/// Since when the witness has led with a data member it could hand over to.
#[derive(Debug, Default)]
pub(crate) struct WitnessLead {
    since_us: Option<u64>,
    reported: bool,
}

impl Cluster {
    /// Whether data member `d` could take over from the witness `w` now.
    fn can_take_over(&self, w: u64, d: u64, witness_first: u64) -> bool {
        let Some(m) = self.members.get(&d) else {
            return false;
        };
        m.replica.is_some()
            && !m.disk_stalled
            && !self.cut.contains(&(w, d))
            && !self.cut.contains(&(d, w))
            && m.log.last_index().is_ok_and(|l| l + 1 >= witness_first)
    }

    pub(in crate::sim) fn check_witness_lead(&mut self) {
        // A witness that leads (any witness: one that replaced another is
        // one too), with the data voters of its configuration.
        let leading = self.members.iter().find_map(|(id, m)| {
            let r = m.replica.as_ref().filter(|r| m.witness && r.is_leader())?;
            Some((*id, r.log_store().first_index().unwrap_or(1), r.voters()))
        });
        let could_hand_over = leading.is_some_and(|(w, first, voters)| {
            voters
                .iter()
                .any(|d| *d != w && !self.is_witness(*d) && self.can_take_over(w, *d, first))
        });
        if !could_hand_over || self.opts.net.drop_per_mille >= WITNESS_LEAD_MAX_LOSS_PER_MILLE {
            self.witness_lead = WitnessLead::default();
            return;
        }
        let since = *self.witness_lead.since_us.get_or_insert(self.now_us);
        let bound_us = WITNESS_LEAD_BOUND_TICKS * self.opts.tick_us;
        if self.now_us - since > bound_us && !self.witness_lead.reported {
            self.witness_lead.reported = true;
            self.violations
                .lock()
                .push(Property::WitnessLead.report(format!(
                    "the witness has led since {since} us with a data member it could hand \
                     over to (still at {} us)",
                    self.now_us
                )));
        }
    }
}
