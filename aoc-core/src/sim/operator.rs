//! The operator of a run: what docs/operations.md tells an operator to do
//! about maintenance windows, and nothing more. The simulation must help
//! the cluster no more than that: a heal that quietly turned maintenance
//! off on every member hid a cluster that could not elect after a
//! `maintenance off` that had been answered.
//!
//! The runbook ("Maintenance windows"): turn it on through the active; end
//! it through the cluster (`maintenance off`) if an active exists,
//! otherwise with `--local` on the survivors. Once `maintenance off` has
//! been answered, the operator does nothing more, and the cluster must
//! fail over on its own again.

use super::{Cluster, Outcome};

/// A request with no answer after this long is taken as lost.
const ANSWER_TIMEOUT_US: u64 = 2_000_000;
/// With no active for this long while ending a window, the operator turns
/// maintenance off locally on every running member (the runbook's
/// "otherwise"), and on any member that comes back still saying it is on,
/// until a member is active.
const NO_ACTIVE_US: u64 = 3_000_000;

/// Where the maintenance window is, as the operator knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    /// No window.
    Closed,
    /// `maintenance on` asked (token), answer not known yet.
    Opening(u64),
    /// On (answered, or unknown: the operator assumes it is on).
    Open,
    /// Ending: the `maintenance off` in flight (token, sent), and since
    /// when no member has been active.
    Closing {
        pending: Option<(u64, u64)>,
        no_active_since: Option<u64>,
    },
    /// Ended locally (no active): until a member is active, the operator
    /// turns maintenance off locally on any member whose status still says
    /// it is on (one that was down when the others were done, say), as the
    /// runbook says for each member.
    LocalOff,
}

/// What the operator does next to a run's maintenance window (see the
/// module docs).
#[derive(Debug)]
pub(crate) struct Operator {
    window: Window,
    /// Crash the active this long after `maintenance off` is answered,
    /// for this long: (after, down).
    crash_plan: Option<(u64, u64)>,
    /// (when to crash the active, how long it stays down).
    crash_at: Option<(u64, u64)>,
    /// A member the operator's schedule crashed, and when it restarts.
    restart_at: Option<(u64, u64)>,
}

impl Default for Operator {
    fn default() -> Self {
        Operator {
            window: Window::Closed,
            crash_plan: None,
            crash_at: None,
            restart_at: None,
        }
    }
}

impl Operator {
    /// Whether maintenance may be on, as far as the operator knows:
    /// automatic failover is not expected meanwhile.
    pub(crate) fn window_open(&self) -> bool {
        self.window != Window::Closed
    }

    /// `maintenance on`, through the active (nothing without one).
    pub(crate) fn turn_on(&mut self, c: &mut Cluster) {
        if self.window_open() {
            return;
        }
        if let Some(a) = c.active() {
            c.note("operator: maintenance on");
            self.window = Window::Opening(c.set_maintenance(a, true));
        }
    }

    /// Ends the window; with `crash_after_us`, the active is crashed that
    /// long after `maintenance off` is answered (for `down_us`).
    pub(crate) fn turn_off(&mut self, c: &mut Cluster, crash_after_us: Option<(u64, u64)>) {
        if !self.window_open() {
            return;
        }
        c.note("operator: maintenance off");
        self.window = Window::Closing {
            pending: None,
            no_active_since: None,
        };
        self.crash_plan = crash_after_us;
        self.poll(c);
    }

    /// Acts on what happened since the last call.
    pub(crate) fn poll(&mut self, c: &mut Cluster) {
        self.poll_crash(c);
        match self.window {
            // An error does not say the entry was not committed (a leader
            // that stepped down answers NotLeader, and the next one may
            // commit it): the operator takes the window as open, and ends
            // it as the runbook says.
            Window::Opening(t) => {
                if c.outcome(t).is_some() {
                    self.window = Window::Open;
                }
            }
            Window::Closing {
                pending,
                no_active_since,
            } => self.poll_closing(c, pending, no_active_since),
            Window::LocalOff => self.poll_local_off(c),
            Window::Closed | Window::Open => {}
        }
    }

    fn poll_local_off(&mut self, c: &mut Cluster) {
        if c.active().is_some() {
            self.window = Window::Closed;
            return;
        }
        for id in c.member_ids() {
            if c.status(id).is_some_and(|s| s.maintenance.is_some()) {
                c.note(format!(
                    "operator: member {id} still says maintenance is on; maintenance off --local"
                ));
                c.maintenance_off_local(id);
            }
        }
    }

    fn poll_closing(
        &mut self,
        c: &mut Cluster,
        pending: Option<(u64, u64)>,
        no_active_since: Option<u64>,
    ) {
        let now = c.now_us();
        if let Some((t, sent)) = pending {
            match c.outcome(t) {
                Some(Outcome::Proposal { result: Ok(_), .. }) => {
                    c.note("operator: maintenance off answered");
                    self.window = Window::Closed;
                    if let Some((after, down)) = self.crash_plan.take() {
                        self.crash_at = Some((now + after, down));
                    }
                    return;
                }
                None if now < sent + ANSWER_TIMEOUT_US => return,
                // Refused (not the active any more) or no answer: ask again.
                _ => {}
            }
        }
        match c.active() {
            Some(a) => {
                let t = c.set_maintenance(a, false);
                self.window = Window::Closing {
                    pending: Some((t, now)),
                    no_active_since: None,
                };
                if self.crash_plan.is_some_and(|(after, _)| after == 0) {
                    // Killed as soon as the command returns: run until the
                    // answer (the clients wait meanwhile) and act on it.
                    c.run_until(ANSWER_TIMEOUT_US, |c| c.outcome(t).is_some());
                    self.poll_closing(c, Some((t, now)), None);
                    self.poll_crash(c);
                }
            }
            None => {
                let since = no_active_since.unwrap_or(now);
                if now >= since + NO_ACTIVE_US {
                    c.note("operator: no active; maintenance off --local on every member");
                    for id in c.member_ids() {
                        c.maintenance_off_local(id);
                    }
                    self.window = Window::LocalOff;
                    self.crash_plan = None;
                    return;
                }
                self.window = Window::Closing {
                    pending: None,
                    no_active_since: Some(since),
                };
            }
        }
    }

    /// Crashes the active when it is time, and restarts it later.
    fn poll_crash(&mut self, c: &mut Cluster) {
        let now = c.now_us();
        if let Some((at, down)) = self.crash_at {
            if now >= at {
                self.crash_at = None;
                if let Some(a) = c.active() {
                    c.note(format!(
                        "fault: the active {a} is killed after maintenance off"
                    ));
                    c.crash(a);
                    self.restart_at = Some((a, now + down));
                }
            }
        }
        if let Some((id, at)) = self.restart_at {
            if now >= at {
                self.restart_at = None;
                c.restart(id);
            }
        }
    }
}
