//! The guard: a small process that runs the member and fences its host.
//!
//! The fenced lease keeps the replicated data to one active, but the
//! management IP and the platform services a promote hook starts live on
//! the host, outside the member. A member killed (a panic, an OOM kill,
//! kill -9) or hung (a stuck disk, a paused process) cannot let go of them,
//! and a thread of its own dies or hangs with it. So `aoc-node run` runs
//! the member as a child process under this guard, which owns the
//! management IP and the hooks and holds no raft state:
//!
//! - the member tells the guard, on its standard output, one line each
//!   time its lease is renewed or its role changes: `active TOKEN UNTIL`
//!   (its fencing token, and the `CLOCK_MONOTONIC` instant in nanoseconds
//!   at which its lease ends: one clock for every process of the host) or
//!   `passive`;
//! - on `active` the guard runs the promote hook (with `AOC_FENCING_TOKEN`)
//!   and adds the address; on `passive` it removes the address at once,
//!   then runs the demote hook;
//! - when the member exits for any reason while active, the guard removes
//!   the address and runs the demote hook at once;
//! - when the lease it was told of ends without a renewal (the member
//!   hangs), it kills the member `reaction_ms` before the end, then removes
//!   the address and runs the demote hook. The fenced lease ends
//!   `heartbeat_tick` ticks before any other member can be elected
//!   (docs/design.md); the configuration check keeps `reaction_ms` within
//!   half of that;
//! - then it restarts the member after a pause that doubles from one
//!   second up to `max_backoff_ms` (back to one second after a member that
//!   ran a minute), or exits with the member's status (`restart = false`);
//!   only a member that failed while running (status 4, a panic, a signal)
//!   or was fenced is restarted: one that refused to start would fail
//!   again, and one that stopped was asked to. Each event is logged and
//!   counted (the member shows the counts in `/metrics`).
//!
//! A slow hook never delays the removal of the address: the address is
//! added and removed under one lock by the guard's own thread, the hooks
//! run on threads of their own (one at a time, in order), and a promotion
//! whose hook finishes after a demotion does not add the address.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, RecvTimeoutError};
use parking_lot::Mutex;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::mgmt_ip::{HookEnv, MgmtIp};
use crate::run::RunError;

/// Set in the member's environment when it runs under the guard.
pub const CHILD_ENV: &str = "AOC_GUARD_CHILD";
/// How many times the guard restarted the member, in its environment.
pub const RESTARTS_ENV: &str = "AOC_GUARD_RESTARTS";
/// How many times the guard killed the member at its lease's end.
pub const FENCED_ENV: &str = "AOC_GUARD_FENCED";

/// How often the guard looks at the clock and the member.
const POLL: Duration = Duration::from_millis(5);
/// How often the member reports a lease that did not move.
const REPORT_EVERY: Duration = Duration::from_millis(10);
/// A member that ran this long restarts after the shortest pause again.
const RAN_LONG: Duration = Duration::from_secs(60);

/// What the member tells the guard (one line on its standard output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The member is the active, with this fencing token, until this
    /// `CLOCK_MONOTONIC` instant (ns) unless it renews its lease.
    Active {
        /// The fencing token.
        token: u64,
        /// The lease's end.
        until_ns: u64,
    },
    /// The member is not the active.
    Passive,
}

impl Report {
    /// The line the member writes (without its newline).
    pub fn line(&self) -> String {
        match self {
            Report::Active { token, until_ns } => format!("active {token} {until_ns}"),
            Report::Passive => "passive".into(),
        }
    }

    /// The report a line gives; `None` for anything else.
    pub fn parse(line: &str) -> Option<Report> {
        let mut words = line.split_whitespace();
        match (words.next()?, words.next(), words.next(), words.next()) {
            ("passive", None, None, None) => Some(Report::Passive),
            ("active", Some(t), Some(u), None) => Some(Report::Active {
                token: t.parse().ok()?,
                until_ns: u.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the same clock in every process
/// of the host.
pub fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// In the member: the kernel kills this process when the guard dies (a
/// member nobody fences must not run on); if the guard is already gone,
/// an error.
pub fn die_with_guard() -> Result<(), String> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| format!("cannot tie the member to its guard: {e}"))?;
    if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        return Err("the guard that started this member is gone".into());
    }
    Ok(())
}

/// In the member: starts the thread that reports the node's lease to the
/// guard on standard output (see the module docs). A report that cannot
/// be written (the guard is gone) ends the thread.
pub fn report_to_guard<S: aoc_core::state::StateMachine>(
    node: aoc_core::Node<S>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("aoc-guard-report".into())
        .spawn(move || {
            let mut out = std::io::stdout();
            let mut last: Option<Report> = None;
            loop {
                let report = match (node.fencing_token(), node.active_until()) {
                    (Some(token), Some(until)) => {
                        let left = until.saturating_duration_since(Instant::now());
                        Report::Active {
                            token,
                            until_ns: mono_ns().saturating_add(left.as_nanos() as u64),
                        }
                    }
                    _ => Report::Passive,
                };
                if last != Some(report) {
                    if writeln!(out, "{}", report.line())
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        warn!("the guard is gone: lease reports stop");
                        return;
                    }
                    last = Some(report);
                }
                if node.failure().is_some() {
                    return;
                }
                std::thread::sleep(REPORT_EVERY);
            }
        })
        .map(|_| ())
}

/// The management IP and the hooks, as the guard drives them (see the
/// module docs for the order).
struct Fence {
    ip: Option<MgmtIp>,
    member: u64,
    /// Bumped by every promotion and demotion: a promotion adds the
    /// address only if none came after it.
    generation: AtomicU64,
    /// Held while the address is added or removed.
    address: Mutex<()>,
    /// Held while a hook runs: hooks run one at a time, in order.
    hooks: Arc<Mutex<()>>,
}

impl Fence {
    fn new(ip: Option<MgmtIp>, member: u64) -> Arc<Self> {
        Arc::new(Fence {
            ip,
            member,
            generation: AtomicU64::new(0),
            address: Mutex::new(()),
            hooks: Arc::new(Mutex::new(())),
        })
    }

    fn env(&self, old: &str, new: &str, token: Option<u64>) -> HookEnv {
        HookEnv {
            member: Some(self.member),
            old_role: Some(old.into()),
            new_role: Some(new.into()),
            fencing_token: token,
        }
    }

    /// The member became the active: the promote hook, then the address,
    /// on a thread (a slow hook never holds up the guard).
    fn promote(self: &Arc<Self>, token: u64) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        info!(member = self.member, token, "guard: promote");
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("aoc-guard-promote".into())
            .spawn(move || {
                let Some(ip) = &this.ip else { return };
                {
                    let _hooks = this.hooks.lock();
                    if this.generation.load(Ordering::SeqCst) != generation {
                        return;
                    }
                    if let Err(e) = ip.promote_hook(&this.env("passive", "active", Some(token))) {
                        error!(error = %e, "guard: the promote hook failed");
                    }
                }
                let _address = this.address.lock();
                if this.generation.load(Ordering::SeqCst) == generation {
                    if let Err(e) = ip.add_address() {
                        error!(error = %e, "guard: adding the management IP failed");
                    }
                }
            });
        if let Err(e) = spawned {
            error!(error = %e, "guard: cannot start the promote thread");
        }
    }

    /// The member is no longer the active: the address goes at once (on
    /// this thread), then the demote hook on a thread of its own.
    fn demote(self: &Arc<Self>, why: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        info!(member = self.member, why, "guard: demote");
        let Some(ip) = &self.ip else { return };
        {
            let _address = self.address.lock();
            if let Err(e) = ip.remove_address() {
                error!(error = %e, "guard: removing the management IP failed");
            }
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("aoc-guard-demote".into())
            .spawn(move || {
                let _hooks = this.hooks.lock();
                if let Some(ip) = &this.ip {
                    if let Err(e) = ip.demote_hook(&this.env("active", "passive", None)) {
                        error!(error = %e, "guard: the demote hook failed");
                    }
                }
            });
        if let Err(e) = spawned {
            error!(error = %e, "guard: cannot start the demote thread");
        }
    }

    /// Waits (at most `bound`) for the hooks started so far to finish.
    fn settle(&self, bound: Duration) {
        let until = Instant::now() + bound;
        while Instant::now() < until {
            if self.hooks.try_lock().is_some() {
                return;
            }
            std::thread::sleep(POLL);
        }
    }
}

/// How one run of the member ended.
enum Ended {
    /// It exited by itself (status), or was killed by the guard when its
    /// lease ended (`fenced`).
    Exited { status: ExitStatus, fenced: bool },
    /// A signal asked the guard to stop; the member has exited.
    Stopped(ExitStatus),
}

/// Counts of what the guard did, passed to each new member.
#[derive(Debug, Default)]
struct Counts {
    restarts: u64,
    fenced: u64,
}

/// Runs the member of `config` (the file at `config_path`) under the
/// guard until SIGTERM or SIGINT (see the module docs).
pub fn run(config_path: &Path, cfg: &Config) -> Result<(), RunError> {
    let ip = cfg.management_ip.as_ref().map(|m| MgmtIp::new(m.clone()));
    if let Some(ip) = &ip {
        // An address a crash may have left behind goes first.
        if let Err(e) = ip.remove_address() {
            warn!(error = %e, "guard: clearing the management IP at start");
        }
    }
    let fence = Fence::new(ip, cfg.member_id);
    let mut watchdog = crate::watchdog::check(cfg).map_err(|(field, problem)| RunError {
        code: 2,
        message: format!("{}: {field}: {problem}", config_path.display()),
    })?;
    if let Some(w) = &watchdog {
        info!(
            device = %w.path().display(),
            timeout_ms = w.timing().timeout_ms,
            "guard: the watchdog is armed whenever the member is the active"
        );
    }
    let mut signals = Signals::new([SIGTERM, SIGINT])
        .map_err(|e| RunError::from(format!("guard: cannot handle signals: {e}")))?;
    let reaction_ns = cfg.guard.reaction_ms.saturating_mul(1_000_000);
    let mut counts = Counts::default();
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        let child = spawn_member(config_path, &counts)?;
        match watch(child, &fence, &mut watchdog, &mut signals, reaction_ns)? {
            Ended::Stopped(status) => {
                fence.settle(Duration::from_secs(10));
                info!(?status, "guard: the member stopped; exiting");
                return Ok(());
            }
            Ended::Exited { status, fenced } => {
                if fenced {
                    counts.fenced += 1;
                }
                let code = status.code();
                if !restartable(code, fenced) || !cfg.guard.restart {
                    fence.settle(Duration::from_secs(10));
                    return match code {
                        Some(0) => Ok(()),
                        Some(c) => Err(RunError {
                            code: u8::try_from(c).unwrap_or(1),
                            message: format!("the member exited with status {c}"),
                        }),
                        None => Err(RunError::from(format!("the member ended: {status}"))),
                    };
                }
                if started.elapsed() >= RAN_LONG {
                    backoff = Duration::from_secs(1);
                }
                counts.restarts += 1;
                warn!(
                    ?status,
                    fenced,
                    restarts = counts.restarts,
                    pause_ms = backoff.as_millis() as u64,
                    "guard: restarting the member"
                );
                if sleep_or_signal(backoff, &mut signals) {
                    fence.settle(Duration::from_secs(10));
                    return Ok(());
                }
                let cap = Duration::from_millis(cfg.guard.max_backoff_ms);
                backoff = (backoff * 2).min(cap);
            }
        }
    }
}

/// Whether a member that ended with `code` is restarted: one that failed
/// while running (its node failed: 4; a panic: 101), was killed (no code)
/// or fenced. One that refused to start (1: a port taken, a data
/// directory of another cluster) or whose configuration is wrong (2)
/// would only fail again; one that stopped (0) was asked to.
fn restartable(code: Option<i32>, fenced: bool) -> bool {
    fenced || matches!(code, None | Some(4) | Some(101))
}

/// Starts the member as a child, its reports on a pipe.
fn spawn_member(config_path: &Path, counts: &Counts) -> Result<Child, RunError> {
    let exe = std::env::current_exe()
        .map_err(|e| RunError::from(format!("guard: cannot find its own binary: {e}")))?;
    Command::new(exe)
        .args(["run", "--config"])
        .arg(config_path)
        .env(CHILD_ENV, "1")
        .env(RESTARTS_ENV, counts.restarts.to_string())
        .env(FENCED_ENV, counts.fenced.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| RunError::from(format!("guard: cannot start the member: {e}")))
}

/// The member's reports, read on a thread of their own.
fn reports(child: &mut Child) -> Receiver<Report> {
    let (tx, rx) = channel::unbounded();
    if let Some(out) = child.stdout.take() {
        let spawned = std::thread::Builder::new()
            .name("aoc-guard-read".into())
            .spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { return };
                    match Report::parse(&line) {
                        Some(r) => {
                            if tx.send(r).is_err() {
                                return;
                            }
                        }
                        None => warn!(line = %line, "guard: a line that is not a report"),
                    }
                }
            });
        if let Err(e) = spawned {
            error!(error = %e, "guard: cannot start the reader thread");
        }
    }
    rx
}

/// Follows one run of the member until it ends (see the module docs).
fn watch(
    mut child: Child,
    fence: &Arc<Fence>,
    watchdog: &mut Option<crate::watchdog::Watchdog>,
    signals: &mut Signals,
    reaction_ns: u64,
) -> Result<Ended, RunError> {
    let rx = reports(&mut child);
    let pid = child.id();
    let mut lease: Option<u64> = None;
    let mut stopping = false;
    let demote = |why: &str, watchdog: &mut Option<crate::watchdog::Watchdog>| {
        fence.demote(why);
        // Only once the address is gone.
        if let Some(w) = watchdog.as_mut() {
            w.disarm();
        }
    };
    loop {
        match rx.recv_timeout(POLL) {
            Ok(Report::Active { token, until_ns }) => {
                if lease.is_none() {
                    if let Some(w) = watchdog.as_mut() {
                        if let Err(e) = w.arm() {
                            error!(error = %e, "guard: cannot arm the watchdog: fencing the member");
                            let _ = child.kill();
                            let status = child.wait().map_err(|e| {
                                RunError::from(format!("guard: waiting for the member: {e}"))
                            })?;
                            return Ok(Ended::Exited {
                                status,
                                fenced: true,
                            });
                        }
                    }
                    fence.promote(token);
                }
                lease = Some(until_ns);
            }
            Ok(Report::Passive) => {
                if lease.take().is_some() {
                    demote("the member is no longer the active", watchdog);
                }
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        }
        if let (Some(until), Some(w)) = (lease, watchdog.as_mut()) {
            w.feed(mono_ns(), until);
        }
        if let Some(until) = lease {
            if mono_ns().saturating_add(reaction_ns) >= until {
                error!(
                    pid,
                    "guard: the member's lease is ending without a renewal (it hangs): killing it"
                );
                let _ = child.kill();
                demote("the member's lease ended without a renewal", watchdog);
                let status = child
                    .wait()
                    .map_err(|e| RunError::from(format!("guard: waiting for the member: {e}")))?;
                return Ok(Ended::Exited {
                    status,
                    fenced: true,
                });
            }
        }
        if !stopping && signals.pending().next().is_some() {
            info!(pid, "guard: stopping; asking the member to stop");
            stopping = true;
            forward_term(pid);
        }
        if let Some(status) = child
            .try_wait()
            .map_err(|e| RunError::from(format!("guard: waiting for the member: {e}")))?
        {
            if lease.take().is_some() {
                demote("the member exited while active", watchdog);
            }
            return Ok(if stopping {
                Ended::Stopped(status)
            } else {
                warn!(?status, "guard: the member exited");
                Ended::Exited {
                    status,
                    fenced: false,
                }
            });
        }
    }
}

/// SIGTERM to the member (it hands over, then stops).
fn forward_term(pid: u32) {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    if let Err(e) = rustix::process::kill_process(pid, rustix::process::Signal::TERM) {
        warn!(error = %e, "guard: cannot signal the member");
    }
}

/// Sleeps `d`, or less if a stop signal comes (true then).
fn sleep_or_signal(d: Duration, signals: &mut Signals) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if signals.pending().next().is_some() {
            return true;
        }
        std::thread::sleep(POLL * 4);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_anything_else_is_refused() {
        for r in [
            Report::Passive,
            Report::Active {
                token: 7,
                until_ns: u64::MAX,
            },
        ] {
            assert_eq!(Report::parse(&r.line()), Some(r));
        }
        for bad in [
            "",
            "active",
            "active 1",
            "active x 2",
            "passive 1",
            "active 1 2 3",
        ] {
            assert_eq!(Report::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_a_member_that_failed_while_running_is_restarted() {
        assert!(restartable(Some(4), false));
        assert!(restartable(Some(101), false));
        assert!(restartable(None, false), "killed by a signal");
        assert!(restartable(Some(1), true), "fenced");
        for refused in [0, 1, 2, 3] {
            assert!(!restartable(Some(refused), false), "{refused}");
        }
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = mono_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(mono_ns() > a);
    }
}
