//! Property: **one active**. No two members hold the active role (leader
//! inside its fenced lease, the role that owns the management IP) at the
//! same simulated instant. A member's role changes only when it handles an
//! event, so checking after every event covers every instant. (A per-term
//! check would prove nothing: raft never has two leaders in one term; two
//! actives would be leaders of different terms whose leases overlap.)

use super::Property;
use crate::sim::Cluster;

/// The fencing tokens seen so far: the last active and its token.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    last: Option<(u64, u64)>,
    reported: bool,
}

impl Cluster {
    pub(in crate::sim) fn check_one_active(&mut self) {
        let active: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| m.replica.as_ref().is_some_and(|r| r.is_active()))
            .map(|(id, _)| *id)
            .collect();
        self.check_tokens(&active);
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

impl Cluster {
    /// **Fencing tokens**: every change of active comes with a strictly
    /// greater token, and an active's token never goes back (see
    /// `crate::fencing`), whatever happened between (a failover, a
    /// switchover, restarts, membership changes).
    fn check_tokens(&mut self, active: &[u64]) {
        let [a] = active else { return };
        let Some(token) = self
            .members
            .get(a)
            .and_then(|m| m.replica.as_ref())
            .and_then(|r| r.fencing_token())
        else {
            return;
        };
        if let Some((last, last_token)) = self.tokens.last {
            let fine = if last == *a {
                token >= last_token
            } else {
                token > last_token
            };
            if !fine && !self.tokens.reported {
                self.tokens.reported = true;
                self.violations
                    .lock()
                    .push(Property::OneActive.report(format!(
                        "member {a} is active with fencing token {token} at {} us, after member \
                         {last} with token {last_token}",
                        self.now_us
                    )));
            }
        }
        self.tokens.last = Some((*a, token));
    }
}
