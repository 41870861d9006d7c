//! Property: **liveness**. Once every fault is healed, a data member is
//! active and serving within a bound of simulated time: a write proposed
//! to the active is acknowledged. No leader forever is a failure, not a
//! pass.

use super::Property;
use crate::sim::{Cluster, Outcome};
use crate::state::KvCommand;

/// The key the liveness probe writes (not one the workload uses).
const PROBE_KEY: &str = "liveness-probe";

/// Runs until a data member is active and acknowledged a write, at most
/// `max_us`; returns the time it took, or the report.
pub(crate) fn await_service(c: &mut Cluster, max_us: u64) -> Result<u64, String> {
    let start = c.now_us();
    let end = start + max_us;
    let mut probe: Option<u64> = None;
    while c.now_us() < end {
        if let Some(t) = probe {
            match c.outcome(t) {
                Some(Outcome::Proposal { result: Ok(_), .. }) => return Ok(c.now_us() - start),
                Some(_) => probe = None,
                None => {}
            }
        }
        if probe.is_none() {
            if let Some(a) = c.active() {
                probe = Some(c.propose(a, KvCommand::put(PROBE_KEY, "up").encode(), None));
            }
        }
        c.run_for(10_000);
    }
    let why = match c.active() {
        Some(a) => format!("member {a} is active but acknowledged no write"),
        None => {
            let waiting: Vec<String> = c
                .configuration()
                .voters
                .iter()
                .filter_map(|v| {
                    c.status(*v)
                        .map(|s| format!("{v}: {}", s.waiting_for.unwrap_or_default()))
                })
                .collect();
            format!("no active; members say: {}", waiting.join("; "))
        }
    };
    Err(Property::Liveness.report(format!(
        "not serving {} ms after the heal: {why}",
        max_us / 1000
    )))
}

/// How long two connected members (one a data member) may go without an
/// active during the faulty phase: several election rounds, a witness
/// hand-over and a catch-up.
pub const AVAILABILITY_BOUND_TICKS: u64 = 100;

/// Availability under a single failure, during the faulty phase: whenever
/// two voters of the current configuration, one of them a data member, are
/// up (not blank), their disks running and the links between them up both
/// ways, on a calm network and outside a maintenance window (as the
/// operator knows it), some data member
/// must be active within
/// [`AVAILABILITY_BOUND_TICKS`]. This is what a stuck election (two members
/// refusing each other's votes forever) breaks, and a heal would hide.
#[derive(Debug, Default)]
pub(crate) struct Availability {
    since_us: Option<u64>,
    reported: bool,
}

impl Availability {
    /// Looks at the cluster now; `calm`: no lossy network or switchover
    /// episode is running and no maintenance window is open. Returns a
    /// report once per outage.
    pub(crate) fn observe(&mut self, c: &Cluster, calm: bool) -> Option<String> {
        if c.active().is_some() || !calm || !c.working_pair() {
            self.since_us = None;
            self.reported = false;
            return None;
        }
        let since = *self.since_us.get_or_insert(c.now_us());
        let bound_us = AVAILABILITY_BOUND_TICKS * c.opts.tick_us;
        if c.now_us() - since <= bound_us || self.reported {
            return None;
        }
        self.reported = true;
        let waiting: Vec<String> = c
            .configuration()
            .voters
            .iter()
            .filter_map(|v| {
                c.status(*v).map(|s| {
                    format!(
                        "{v}: {:?} term {} last {} {}",
                        s.role,
                        s.term,
                        s.last_index,
                        s.waiting_for.unwrap_or_default()
                    )
                })
            })
            .collect();
        Some(Property::Liveness.report(format!(
            "no active from {since} us to {} us although two connected members could serve; \
             members: {}",
            c.now_us(),
            waiting.join("; ")
        )))
    }
}

impl Cluster {
    /// Whether a member is up, holds a log and runs its disk. Whether
    /// maintenance mode is on is the operator's knowledge, not the
    /// members' (`Operator::window_open`): once `maintenance off` was
    /// answered, a member still holding "maintenance on" is a member that
    /// cannot stand, which is what this check is for.
    fn working(&self, id: u64) -> bool {
        self.members
            .get(&id)
            .is_some_and(|m| !m.disk_stalled && m.replica.is_some())
    }

    /// Two working voters (of the current configuration), one a data
    /// member, connected both ways.
    fn working_pair(&self) -> bool {
        let voters = &self.configuration().voters;
        voters.iter().any(|x| {
            !self.is_witness(*x)
                && self.working(*x)
                && voters.iter().any(|y| {
                    y != x
                        && self.working(*y)
                        && !self.cut.contains(&(*x, *y))
                        && !self.cut.contains(&(*y, *x))
                })
        })
    }
}
