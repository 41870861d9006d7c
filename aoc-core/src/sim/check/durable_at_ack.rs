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
//!
//! Membership changes move the quorum: the majority is counted among the
//! voters of a configuration the entry can have been committed under
//! (`Cluster::commit_configurations`), and the data members of sync mode
//! are those the acknowledging member runs with.

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
        let holders_of = |voters: &[u64]| {
            voters
                .iter()
                .filter(|v| {
                    self.members
                        .get(v)
                        .is_some_and(|m| counts(m, index, term, member))
                })
                .count()
        };
        // (holders, voters) under each configuration the entry can have
        // committed in; one majority suffices.
        let quorums: Vec<(usize, usize)> = self
            .commit_configurations(index)
            .iter()
            .map(|c| (holders_of(&c.voters), c.voters.len()))
            .collect();
        if sync_mode {
            // Sync mode: on both data members' synced logs (RPO=0): the
            // data voters of the configuration the acknowledging member
            // runs (sync mode restarts from degraded after every change
            // that forms the HA group, and ends with any other).
            let voters = self
                .members
                .get(&member)
                .and_then(|m| m.replica.as_ref())
                .map(|r| r.voters())
                .unwrap_or_default();
            let missing: Vec<u64> = voters
                .into_iter()
                .filter(|v| !self.is_witness(*v))
                .filter(|v| {
                    !self
                        .members
                        .get(v)
                        .is_some_and(|m| counts(m, index, term, member))
                })
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
        if !quorums.iter().any(|(holders, n)| *holders > n / 2) {
            let held: Vec<String> = quorums
                .iter()
                .map(|(holders, n)| format!("{holders} of {n}"))
                .collect();
            self.violations
                .lock()
                .push(Property::DurableAtAck.report(format!(
                    "member {member} acknowledged index {index} (token {token}) held durably by \
                     {} voters",
                    held.join(" or ")
                )));
        }
    }
}
