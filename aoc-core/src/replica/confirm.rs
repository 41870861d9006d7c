//! Membership changes confirmed by every voter.
//!
//! raft-rs applies a configuration when its entry is applied, not when it
//! is appended. A change is committed by the voters of the configuration
//! before it, so the leader can apply it while the other voters still run
//! the old one: a promotion from {1, 2} + learner 4 to {1, 2, 4} commits
//! on 1 and 2 while 4 lacks the entry, and if 1 is lost before 2 learns of
//! the commit, 2 (in {1, 2}) needs 1's vote and nobody is ever elected,
//! although 2 and 4 are a majority of the committed configuration.
//!
//! So a leader answers a change as done only once every voter of the new
//! configuration (both halves of a joint one, which must also have been
//! left) has the configuration durable in its log store, as each reports
//! (`FollowerReport`); until then it refuses the next change as busy.
//! After that, losing any one member leaves voters that all run the new
//! configuration.

use std::collections::BTreeMap;

use super::Completion;

/// The leader's record of who holds which configuration, and the changes
/// it has not answered yet (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Confirmations {
    /// The index of the configuration durable in this member's own store.
    persisted: u64,
    /// On the leader: each member's durable configuration index, as it
    /// last reported.
    reported: BTreeMap<u64, u64>,
    /// This leader's applied changes, answered once confirmed.
    held: Vec<Completion>,
}

impl Confirmations {
    /// Starts from the configuration index found in the store.
    pub(crate) fn new(persisted: u64) -> Self {
        Confirmations {
            persisted,
            ..Default::default()
        }
    }

    /// The configuration of `index` is durable here.
    pub(crate) fn on_persisted(&mut self, index: u64) {
        self.persisted = self.persisted.max(index);
    }

    /// A member reported its durable configuration index.
    pub(crate) fn on_report(&mut self, from: u64, index: u64) {
        let r = self.reported.entry(from).or_default();
        *r = (*r).max(index);
    }

    /// The members of `voters` that do not hold configuration `index` yet
    /// (`me` is this member).
    pub(crate) fn missing(&self, me: u64, voters: &[u64], index: u64) -> Vec<u64> {
        voters
            .iter()
            .copied()
            .filter(|v| {
                let held = if *v == me {
                    self.persisted
                } else {
                    self.reported.get(v).copied().unwrap_or(0)
                };
                held < index
            })
            .collect()
    }

    /// Holds the answer to an applied change until it is confirmed.
    pub(crate) fn hold(&mut self, c: Completion) {
        self.held.push(c);
    }

    /// The held answers, once confirmed.
    pub(crate) fn release(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.held)
    }

    /// Whether answers are held.
    pub(crate) fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// A leader that steps down forgets what it was told: the next leader
    /// hears every member again.
    pub(crate) fn on_step_down(&mut self) -> Vec<Completion> {
        self.reported.clear();
        std::mem::take(&mut self.held)
    }

    /// The index of the configuration durable in this member's store.
    pub(crate) fn persisted(&self) -> u64 {
        self.persisted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_is_confirmed_once_every_voter_holds_it() {
        let mut c = Confirmations::new(4);
        assert_eq!(c.missing(1, &[1, 2, 4], 7), vec![1, 2, 4]);
        c.on_persisted(7);
        c.on_report(2, 7);
        assert_eq!(c.missing(1, &[1, 2, 4], 7), vec![4]);
        // A late report of an older index changes nothing.
        c.on_report(4, 9);
        c.on_report(4, 3);
        assert!(c.missing(1, &[1, 2, 4], 7).is_empty());
        c.on_step_down();
        assert_eq!(c.missing(1, &[1, 2, 4], 7), vec![2, 4]);
    }
}
