//! Property: **one active**. No two members hold the active role (leader
//! inside its fenced lease, the role that owns the management IP) at the
//! same simulated instant. A member's role changes only when it handles an
//! event, so checking after every event covers every instant. (A per-term
//! check would prove nothing: raft never has two leaders in one term; two
//! actives would be leaders of different terms whose leases overlap.)

use super::Property;
use crate::sim::Cluster;

impl Cluster {
    pub(in crate::sim) fn check_one_active(&mut self) {
        let active: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| m.replica.as_ref().is_some_and(|r| r.is_active()))
            .map(|(id, _)| *id)
            .collect();
        if active.len() < 2 {
            self.overlap = None;
            return;
        }
        // One report per overlap, at its start.
        if self.overlap.as_ref() != Some(&active) {
            self.violations.lock().push(
                Property::OneActive
                    .report(format!("two actives from {} us: {active:?}", self.now_us)),
            );
            self.overlap = Some(active);
        }
    }
}
