//! The floating management IP: the address that follows the active.
//!
//! On **promote** (this member became the active) [`MgmtIp::promote`]
//! runs, in order:
//! 1. the promote hook (`sh -c HOOK`), if configured;
//! 2. `ip addr add ADDRESS dev INTERFACE`, if an address is configured
//!    (an address already present is not an error);
//! 3. with `arping = true`, a gratuitous ARP announcement
//!    (`arping -U -c 3 -I INTERFACE IP`) so switches and neighbours learn
//!    the new owner at once. It runs on a thread of its own (it takes
//!    about two seconds) and its outcome is only logged, so a demotion
//!    that follows is never delayed by it; a missing `arping` is a
//!    warning.
//!
//! On **demote** [`MgmtIp::demote`] removes the address FIRST
//! (`ip addr del`; an address already gone is not an error), then runs the
//! demote hook: clients stop reaching this member before its services are
//! told to stop.
//!
//! Every step runs even when an earlier one failed (the address must move
//! whatever a hook does); each failure is logged with the command's
//! stderr, and the failures are returned together. Nothing here panics.
//! Commands that do not finish within the command timeout (30 s by
//! default) are killed and reported.
//!
//! With `netns` configured every command runs inside that network
//! namespace (`ip netns exec NS ...`), hooks included.
//!
//! Hooks get the environment variables `AOC_MGMT_EVENT` (`promote` or
//! `demote`), `AOC_MGMT_ADDRESS` and `AOC_MGMT_INTERFACE` (empty when not
//! configured); under the guard (`crate::guard`) also `AOC_MEMBER_ID`,
//! `AOC_OLD_ROLE`, `AOC_NEW_ROLE` and, on promote, `AOC_FENCING_TOKEN`
//! (see [`HookEnv`]).
//!
//! [`follow`] runs the two on the node's `ActiveChanged` events. A member
//! that starts should call [`MgmtIp::demote`] once before following, to
//! drop an address a crashed predecessor left behind.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aoc_core::Event;
use crossbeam::channel::Receiver;
use tracing::{debug, error, info, warn};

use crate::config::ManagementIpConfig;

/// How long a hook or command may run before it is killed.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The management IP and hooks of this member.
#[derive(Debug, Clone)]
pub struct MgmtIp {
    cfg: ManagementIpConfig,
    ip_bin: String,
    arping_bin: String,
    timeout: Duration,
}

/// The output of a finished command.
struct Finished {
    success: bool,
    code: Option<i32>,
    stderr: String,
}

impl MgmtIp {
    /// Moves the address and runs the hooks as `cfg` says.
    pub fn new(cfg: ManagementIpConfig) -> Self {
        MgmtIp {
            cfg,
            ip_bin: "ip".into(),
            arping_bin: "arping".into(),
            timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ManagementIpConfig {
        &self.cfg
    }

    /// Uses `path` instead of `ip` from `PATH` for the address commands
    /// (the `ip netns exec` prefix still uses `ip`). For tests and unusual
    /// installs.
    pub fn with_ip_command(mut self, path: impl Into<String>) -> Self {
        self.ip_bin = path.into();
        self
    }

    /// Uses `path` instead of `arping` from `PATH`.
    pub fn with_arping_command(mut self, path: impl Into<String>) -> Self {
        self.arping_bin = path.into();
        self
    }

    /// Kills a hook or command that runs longer than `timeout`.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// This member became the active: promote hook, add the address,
    /// announce it. Returns every failure, `; `-separated.
    pub fn promote(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Err(e) = self.promote_hook(&HookEnv::default()) {
            errors.push(e);
        }
        if let Err(e) = self.add_address() {
            errors.push(e);
        }
        done(errors)
    }

    /// This member stopped being the active: remove the address first,
    /// then run the demote hook. Returns every failure, `; `-separated.
    pub fn demote(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Err(e) = self.remove_address() {
            errors.push(e);
        }
        if let Err(e) = self.demote_hook(&HookEnv::default()) {
            errors.push(e);
        }
        done(errors)
    }

    /// Runs the promote hook, if one is configured.
    pub fn promote_hook(&self, env: &HookEnv) -> Result<(), String> {
        match &self.cfg.promote_hook {
            Some(hook) => self.run_hook("promote", hook, env),
            None => Ok(()),
        }
    }

    /// Runs the demote hook, if one is configured.
    pub fn demote_hook(&self, env: &HookEnv) -> Result<(), String> {
        match &self.cfg.demote_hook {
            Some(hook) => self.run_hook("demote", hook, env),
            None => Ok(()),
        }
    }

    /// Adds the address (and announces it), if one is configured.
    pub fn add_address(&self) -> Result<(), String> {
        let (Some(addr), Some(iface)) = (&self.cfg.address, &self.cfg.interface) else {
            return Ok(());
        };
        info!(address = %addr, "management IP: add");
        let result = match self.run(&self.ip_bin, &["addr", "add", addr, "dev", iface]) {
            Ok(f) if f.success => {
                info!(address = %addr, interface = %iface, "management IP added");
                Ok(())
            }
            Ok(f) if already(&f.stderr, true) => {
                info!(address = %addr, interface = %iface, "management IP was already present");
                Ok(())
            }
            Ok(f) => Err(self.failed("ip addr add", &f)),
            Err(e) => Err(self.spawn_failed("ip addr add", &e)),
        };
        if self.cfg.arping {
            self.announce(addr, iface);
        }
        result
    }

    /// Removes the address, if one is configured (one already gone is
    /// not an error).
    pub fn remove_address(&self) -> Result<(), String> {
        let (Some(addr), Some(iface)) = (&self.cfg.address, &self.cfg.interface) else {
            return Ok(());
        };
        info!(address = %addr, "management IP: remove");
        match self.run(&self.ip_bin, &["addr", "del", addr, "dev", iface]) {
            Ok(f) if f.success => {
                info!(address = %addr, interface = %iface, "management IP removed");
                Ok(())
            }
            Ok(f) if already(&f.stderr, false) => {
                debug!(address = %addr, interface = %iface, "management IP was not present");
                Ok(())
            }
            Ok(f) => Err(self.failed("ip addr del", &f)),
            Err(e) => Err(self.spawn_failed("ip addr del", &e)),
        }
    }

    fn run_hook(&self, event: &str, hook: &str, env: &HookEnv) -> Result<(), String> {
        let what = format!("{event} hook");
        match self.run_with("sh", &["-c", hook], event, env) {
            Ok(f) if f.success => {
                info!(hook = %hook, "{what} succeeded");
                Ok(())
            }
            Ok(f) => Err(self.failed(&what, &f)),
            Err(e) => Err(self.spawn_failed(&what, &e)),
        }
    }

    /// Gratuitous ARP on a thread of its own; the outcome is logged.
    fn announce(&self, addr: &str, iface: &str) {
        let ip = addr.split('/').next().unwrap_or(addr).to_string();
        let this = self.clone();
        let iface = iface.to_string();
        let spawned = std::thread::Builder::new()
            .name("aoc-arping".into())
            .spawn(move || {
                let bin = this.arping_bin.clone();
                match this.run(&bin, &["-U", "-c", "3", "-I", &iface, &ip]) {
                    Ok(f) if f.success => info!(ip = %ip, interface = %iface, "gratuitous ARP sent"),
                    Ok(f) => warn!(
                        ip = %ip, interface = %iface, code = ?f.code, stderr = %f.stderr,
                        "gratuitous ARP failed; neighbours learn the address when their caches expire"
                    ),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => warn!(
                        command = %bin,
                        "arping is not installed: no gratuitous ARP; neighbours learn the address when their caches expire"
                    ),
                    Err(e) => warn!(command = %bin, error = %e, "cannot run arping"),
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the gratuitous ARP thread");
        }
    }

    fn failed(&self, what: &str, f: &Finished) -> String {
        let code = match f.code {
            Some(c) => format!("exit code {c}"),
            None => "killed by a signal".to_string(),
        };
        let stderr = one_line(&f.stderr);
        let msg = if stderr.is_empty() {
            format!("{what} failed ({code})")
        } else {
            format!("{what} failed ({code}): {stderr}")
        };
        error!("management IP: {msg}");
        msg
    }

    fn spawn_failed(&self, what: &str, e: &std::io::Error) -> String {
        let msg = format!("{what}: cannot run: {e}");
        error!("management IP: {msg}");
        msg
    }

    fn run(&self, program: &str, args: &[&str]) -> std::io::Result<Finished> {
        self.run_with(program, args, "", &HookEnv::default())
    }

    /// Runs `program args` (inside the namespace, if any) and waits for it,
    /// at most the command timeout.
    fn run_with(
        &self,
        program: &str,
        args: &[&str],
        event: &str,
        env: &HookEnv,
    ) -> std::io::Result<Finished> {
        let mut cmd = match &self.cfg.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .env("AOC_MGMT_EVENT", event)
            .env(
                "AOC_MGMT_ADDRESS",
                self.cfg.address.as_deref().unwrap_or(""),
            )
            .env(
                "AOC_MGMT_INTERFACE",
                self.cfg.interface.as_deref().unwrap_or(""),
            )
            .envs(env.vars())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        debug!(command = ?cmd, "management IP: running");
        let child = cmd.spawn()?;
        wait(child, self.timeout)
    }
}

/// What a hook is told beside the event and the address: the member, the
/// transition's roles, and the fencing token when there is one (empty
/// values are left out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookEnv {
    /// This member's id.
    pub member: Option<u64>,
    /// The role before and after the transition (`active`, `passive`).
    pub old_role: Option<String>,
    /// The role after it.
    pub new_role: Option<String>,
    /// The active's fencing token (on promote).
    pub fencing_token: Option<u64>,
}

impl HookEnv {
    fn vars(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if let Some(m) = self.member {
            v.push(("AOC_MEMBER_ID", m.to_string()));
        }
        if let Some(r) = &self.old_role {
            v.push(("AOC_OLD_ROLE", r.clone()));
        }
        if let Some(r) = &self.new_role {
            v.push(("AOC_NEW_ROLE", r.clone()));
        }
        if let Some(t) = self.fencing_token {
            v.push(("AOC_FENCING_TOKEN", t.to_string()));
        }
        v
    }
}

fn done(errors: Vec<String>) -> Result<(), String> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Whether `ip addr add` (`adding`) or `ip addr del` failed only because
/// the address already is (or is not) there.
fn already(stderr: &str, adding: bool) -> bool {
    if adding {
        stderr.contains("File exists") || stderr.contains("already assigned")
    } else {
        stderr.contains("Cannot assign requested address") || stderr.contains("Address not found")
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Waits for `child`, reading its output on helper threads so a chatty
/// command cannot block on a full pipe; kills it after `timeout`. Output
/// held open by a process the command left running in the background is
/// given up after a second.
fn wait(mut child: Child, timeout: Duration) -> std::io::Result<Finished> {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(mut p) = pipe {
            let spawned = std::thread::Builder::new()
                .name("aoc-cmd-output".into())
                .spawn(move || {
                    let mut buf = Vec::new();
                    let _ = p.read_to_end(&mut buf);
                    let _ = tx.send(buf);
                });
            if let Err(e) = spawned {
                warn!(error = %e, "cannot start a thread to read a command's output");
            }
        }
        rx
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let status = child.wait()?;
            return Ok(Finished {
                success: false,
                code: status.code(),
                stderr: format!("did not finish within {} ms, killed", timeout.as_millis()),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let collect = |rx: std::sync::mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(Duration::from_secs(1))
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default()
    };
    let stdout = collect(out);
    let stderr = collect(err);
    if !stdout.is_empty() {
        debug!(stdout = %stdout, "management IP: command output");
    }
    Ok(Finished {
        success: status.success(),
        code: status.code(),
        stderr,
    })
}

/// Follows a node's events on a thread of its own: promotes on
/// `ActiveChanged { active: true }`, demotes on `ActiveChanged { active:
/// false }`. Failures are logged (see [`MgmtIp`]); the thread goes on.
/// When the event stream ends (the node is gone) while this member was the
/// active, it demotes once more so the address does not outlive the node.
pub fn follow(events: Receiver<Event>, ip: MgmtIp) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("aoc-mgmt-ip".into())
        .spawn(move || {
            let mut active = false;
            for event in events.iter() {
                if let Event::ActiveChanged { active: now } = event {
                    active = now;
                    let result = if now { ip.promote() } else { ip.demote() };
                    if let Err(e) = result {
                        error!(active = now, error = %e, "management IP: not every step succeeded");
                    }
                }
            }
            if active {
                info!("management IP: the node's events ended while active; demoting");
                if let Err(e) = ip.demote() {
                    error!(error = %e, "management IP: not every step succeeded");
                }
            }
        })
}
