//! Property: **durability at acknowledgement**. When a write is
//! acknowledged, its entry is on the synced logs of both data members in
//! sync mode (RPO=0 without the witness's help), and of a majority in any
//! mode. A break here is invisible to the RPO check under a single failure
//! (the witness's copy would repair the passive), so it is checked at the
//! moment of every acknowledgement, against what each member's disk holds.
//!
//! A member whose directory was wiped after it synced the entry still
//! counts for an acknowledging member that has not yet heard it probe as
//! blank: raft counted its acknowledgement, and nothing could tell the
//! acknowledging member it was void (the wipe was the single failure; the
//! write survives it on the acknowledging member). Once the wipe is known,
//! it counts for nothing: the replica must then not commit on the wiped
//! member's old acknowledgements.

use super::Property;
use crate::sim::{Cluster, Member};
use crate::storage::{LogStore, MemLogStore};

/// Whether `log` holds entry `index` of `term` (or compacted past it).
fn holds(log: &MemLogStore, index: u64, term: u64) -> bool {
    log.term(index).ok() == Some(term) || log.first_index().is_ok_and(|f| f > index)
}

/// Whether `m` counts as holding the entry for an acknowledgement by
/// `acker` (see the module docs).
fn counts(m: &Member, index: u64, term: u64, acker: u64) -> bool {
    holds(&m.durable, index, term)
        || m.wiped
            .as_ref()
            .is_some_and(|(log, known_by)| !known_by.contains(&acker) && holds(log, index, term))
}

impl Cluster {
    /// Sync before acknowledgement: an acknowledged entry must be on a
    /// majority of the members' durable logs.
    pub(in crate::sim) fn check_durable(
        &mut self,
        member: u64,
        index: u64,
        token: u64,
        sync_mode: bool,
    ) {
        let Some(term) = self
            .members
            .get(&member)
            .and_then(|m| m.durable.term(index).ok())
        else {
            self.violations
                .lock()
                .push(Property::DurableAtAck.report(format!(
                    "member {member} acknowledged token {token} at index {index} not in its durable log"
                )));
            return;
        };
        let holders = self
            .members
            .values()
            .filter(|m| counts(m, index, term, member))
            .count();
        let majority = self.opts.voters.len() / 2 + 1;
        if sync_mode {
            // Sync mode: on both data members' synced logs (RPO=0).
            let missing: Vec<u64> = self
                .members
                .iter()
                .filter(|(id, _)| Some(**id) != self.opts.witness)
                .filter(|(_, m)| !counts(m, index, term, member))
                .map(|(id, _)| *id)
                .collect();
            if !missing.is_empty() {
                self.violations
                    .lock()
                    .push(Property::DurableAtAck.report(format!(
                        "member {member} acknowledged index {index} (token {token}) in sync mode \
                         while data members {missing:?} had not synced it"
                    )));
            }
        }
        if holders < majority {
            self.violations
                .lock()
                .push(Property::DurableAtAck.report(format!(
                    "member {member} acknowledged index {index} (token {token}) held durably by \
                     {holders} of {} members",
                    self.opts.voters.len()
                )));
        }
    }
}
