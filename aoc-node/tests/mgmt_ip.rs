//! The floating management IP: hook and command order, failures, the
//! event follower, and (as root, where network namespaces can be made) the
//! real address moving on an interface inside a namespace.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use aoc_core::{Event, Role};
use aoc_node::config::ManagementIpConfig;
use aoc_node::mgmt_ip::{follow, MgmtIp};

/// A temp dir with a log file and fake `ip` / `arping` that append their
/// arguments to it.
struct Bench {
    dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Self {
        let b = Bench {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        b.script("ip", "echo \"ip $*\" >> \"$LOG\"");
        b.script("arping", "echo \"arping $*\" >> \"$LOG\"");
        b
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// A shell script `name` in the temp dir; `$LOG` is the log file.
    fn script(&self, name: &str, body: &str) -> String {
        let path = self.dir.path().join(name);
        let text = format!("#!/bin/sh\nLOG='{}'\n{body}\n", self.log().display());
        std::fs::write(&path, text).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path.display().to_string()
    }

    /// A hook that appends `word` to the log.
    fn hook(&self, word: &str) -> Option<String> {
        Some(format!("echo {word} >> '{}'", self.log().display()))
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits (at most 5 s) until the log has `n` lines.
    fn wait_lines(&self, n: usize) -> Vec<String> {
        let start = Instant::now();
        loop {
            let l = self.lines();
            if l.len() >= n || start.elapsed() > Duration::from_secs(5) {
                return l;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn mgmt(&self, cfg: ManagementIpConfig) -> MgmtIp {
        MgmtIp::new(cfg)
            .with_ip_command(self.dir.path().join("ip").display().to_string())
            .with_arping_command(self.dir.path().join("arping").display().to_string())
    }
}

fn with_address(b: &Bench) -> ManagementIpConfig {
    ManagementIpConfig {
        address: Some("10.0.0.10/24".into()),
        interface: Some("eth0".into()),
        promote_hook: b.hook("promote-hook"),
        demote_hook: b.hook("demote-hook"),
        arping: false,
        netns: None,
    }
}

#[test]
fn hooks_run_without_an_address() {
    let b = Bench::new();
    let ip = b.mgmt(ManagementIpConfig {
        promote_hook: b.hook("promote-hook"),
        demote_hook: b.hook("demote-hook"),
        ..Default::default()
    });
    ip.promote().expect("promote");
    assert_eq!(b.lines(), ["promote-hook"]);
    ip.demote().expect("demote");
    assert_eq!(b.lines(), ["promote-hook", "demote-hook"]);
}

#[test]
fn hooks_see_the_event_and_address() {
    let b = Bench::new();
    let log = b.log().display().to_string();
    let ip = b.mgmt(ManagementIpConfig {
        promote_hook: Some(format!(
            "echo \"$AOC_MGMT_EVENT $AOC_MGMT_ADDRESS $AOC_MGMT_INTERFACE\" >> '{log}'"
        )),
        demote_hook: Some(format!("echo \"$AOC_MGMT_EVENT\" >> '{log}'")),
        ..with_address(&b)
    });
    ip.promote().expect("promote");
    ip.demote().expect("demote");
    assert_eq!(
        b.lines(),
        [
            "promote 10.0.0.10/24 eth0",
            "ip addr add 10.0.0.10/24 dev eth0",
            "ip addr del 10.0.0.10/24 dev eth0",
            "demote",
        ]
    );
}

#[test]
fn promote_hook_then_address_and_demote_address_then_hook() {
    let b = Bench::new();
    let ip = b.mgmt(with_address(&b));
    ip.promote().expect("promote");
    assert_eq!(
        b.lines(),
        ["promote-hook", "ip addr add 10.0.0.10/24 dev eth0"]
    );
    ip.demote().expect("demote");
    assert_eq!(
        b.lines(),
        [
            "promote-hook",
            "ip addr add 10.0.0.10/24 dev eth0",
            "ip addr del 10.0.0.10/24 dev eth0",
            "demote-hook",
        ]
    );
}

#[test]
fn arping_announces_the_address() {
    let b = Bench::new();
    let ip = b.mgmt(ManagementIpConfig {
        arping: true,
        ..with_address(&b)
    });
    ip.promote().expect("promote");
    // arping runs on its own thread, after the address is added.
    let lines = b.wait_lines(3);
    assert_eq!(
        lines,
        [
            "promote-hook",
            "ip addr add 10.0.0.10/24 dev eth0",
            "arping -U -c 3 -I eth0 10.0.0.10",
        ]
    );
}

#[test]
fn missing_arping_is_only_a_warning() {
    let b = Bench::new();
    let ip = b
        .mgmt(ManagementIpConfig {
            arping: true,
            ..with_address(&b)
        })
        .with_arping_command("/nonexistent/arping");
    ip.promote().expect("promote succeeds without arping");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        b.lines(),
        ["promote-hook", "ip addr add 10.0.0.10/24 dev eth0"]
    );
}

#[test]
fn a_failing_hook_is_reported_and_the_address_still_moves() {
    let b = Bench::new();
    let ip = b.mgmt(ManagementIpConfig {
        promote_hook: Some("echo 'service would not start' >&2; exit 3".into()),
        demote_hook: Some("echo 'cannot stop' >&2; exit 4".into()),
        ..with_address(&b)
    });
    let err = ip.promote().expect_err("the hook failed");
    assert!(err.contains("promote hook failed (exit code 3)"), "{err}");
    assert!(err.contains("service would not start"), "{err}");
    let err = ip.demote().expect_err("the hook failed");
    assert!(
        err.contains("demote hook failed (exit code 4): cannot stop"),
        "{err}"
    );
    assert_eq!(
        b.lines(),
        [
            "ip addr add 10.0.0.10/24 dev eth0",
            "ip addr del 10.0.0.10/24 dev eth0",
        ]
    );
}

#[test]
fn ip_errors_are_reported_with_stderr() {
    let b = Bench::new();
    let ip = b.mgmt(with_address(&b)).with_ip_command(b.script(
        "ip-broken",
        "echo \"ip $*\" >> \"$LOG\"; echo 'Cannot find device \"eth0\"' >&2; exit 1",
    ));
    let err = ip.promote().expect_err("ip failed");
    assert!(err.contains("ip addr add failed (exit code 1)"), "{err}");
    assert!(err.contains("Cannot find device"), "{err}");
    let err = ip.demote().expect_err("ip failed");
    assert!(err.contains("ip addr del failed"), "{err}");
    // Both hooks ran all the same, the demote hook after the removal.
    assert_eq!(
        b.lines(),
        [
            "promote-hook",
            "ip addr add 10.0.0.10/24 dev eth0",
            "ip addr del 10.0.0.10/24 dev eth0",
            "demote-hook",
        ]
    );
}

#[test]
fn an_address_already_present_or_gone_is_not_an_error() {
    let b = Bench::new();
    let ip = b.mgmt(with_address(&b)).with_ip_command(b.script(
        "ip-present",
        "case \"$2\" in add) echo 'RTNETLINK answers: File exists' >&2;; \
         del) echo 'Error: ipv4: Address not found.' >&2;; esac; exit 2",
    ));
    ip.promote().expect("already present");
    ip.demote().expect("already gone");
    let ip = b.mgmt(with_address(&b)).with_ip_command(b.script(
        "ip-present-new",
        "case \"$2\" in add) echo 'Error: ipv4: Address already assigned.' >&2;; \
         del) echo 'RTNETLINK answers: Cannot assign requested address' >&2;; esac; exit 2",
    ));
    ip.promote().expect("already present");
    ip.demote().expect("already gone");
}

#[test]
fn a_missing_command_is_reported() {
    let b = Bench::new();
    let ip = b.mgmt(with_address(&b)).with_ip_command("/nonexistent/ip");
    let err = ip.promote().expect_err("no ip");
    assert!(err.contains("ip addr add: cannot run"), "{err}");
}

#[test]
fn a_hanging_hook_is_killed() {
    let b = Bench::new();
    let ip = b
        .mgmt(ManagementIpConfig {
            promote_hook: Some("sleep 30".into()),
            ..Default::default()
        })
        .with_command_timeout(Duration::from_millis(200));
    let start = Instant::now();
    let err = ip.promote().expect_err("killed");
    assert!(err.contains("did not finish within 200 ms"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_hook_leaving_a_background_process_does_not_hang() {
    let b = Bench::new();
    let ip = b.mgmt(ManagementIpConfig {
        promote_hook: Some("sleep 30 & echo started".into()),
        ..Default::default()
    });
    let start = Instant::now();
    ip.promote().expect("the hook itself succeeded");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn follow_moves_the_address_with_the_active_role() {
    let b = Bench::new();
    let ip = b.mgmt(ManagementIpConfig {
        promote_hook: b.hook("promote-hook"),
        demote_hook: b.hook("demote-hook"),
        ..Default::default()
    });
    let (tx, rx) = crossbeam::channel::unbounded();
    let handle = follow(rx, ip).expect("follow");
    let send = |e: Event| tx.send(e).expect("send");
    send(Event::RoleChanged {
        role: Role::Leader,
        term: 2,
    });
    send(Event::ActiveChanged { active: true });
    send(Event::LeaderChanged {
        leader: Some(1),
        term: 2,
    });
    send(Event::ActiveChanged { active: false });
    send(Event::ActiveChanged { active: true });
    assert_eq!(
        b.wait_lines(3),
        ["promote-hook", "demote-hook", "promote-hook"]
    );
    // The node goes away while this member is the active: demote once more.
    drop(tx);
    handle.join().expect("the follower thread");
    assert_eq!(
        b.lines(),
        ["promote-hook", "demote-hook", "promote-hook", "demote-hook"]
    );
}

#[test]
fn follow_does_not_demote_at_the_end_when_passive() {
    let b = Bench::new();
    let ip = b.mgmt(ManagementIpConfig {
        demote_hook: b.hook("demote-hook"),
        ..Default::default()
    });
    let (tx, rx) = crossbeam::channel::unbounded::<Event>();
    let handle = follow(rx, ip).expect("follow");
    drop(tx);
    handle.join().expect("the follower thread");
    assert!(b.lines().is_empty(), "{:?}", b.lines());
}

// --- a real interface in a network namespace ----------------------------

/// Deletes the namespace (and the interfaces in it) when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn is_root() -> bool {
    sh(&["id", "-u"]).map(|s| s.trim() == "0").unwrap_or(false)
}

/// Creates an interface in `ns`: a dummy where the kernel has the module,
/// else one end of a veth pair. Returns its name.
fn make_interface(ns: &str) -> String {
    if sh(&["ip", "-n", ns, "link", "add", "mgmt0", "type", "dummy"]).is_ok() {
        return "mgmt0".into();
    }
    sh(&[
        "ip", "-n", ns, "link", "add", "mgmt0", "type", "veth", "peer", "name", "mgmt1",
    ])
    .unwrap_or_else(|e| {
        panic!("the namespace works but neither a dummy nor a veth could be made: {e}")
    });
    "mgmt0".into()
}

fn addresses(ns: &str, iface: &str) -> String {
    sh(&["ip", "-n", ns, "-o", "addr", "show", "dev", iface]).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_address_moves_on_a_real_interface_in_a_namespace() {
    if !is_root() {
        eprintln!("SKIPPED the_address_moves_on_a_real_interface_in_a_namespace: not root");
        return;
    }
    let name = format!("aoc-mgmt-test-{}", std::process::id());
    if let Err(e) = sh(&["ip", "netns", "add", &name]) {
        eprintln!(
            "SKIPPED the_address_moves_on_a_real_interface_in_a_namespace: \
             cannot create a network namespace: {e}"
        );
        return;
    }
    // From here on namespaces work: every failure is a test failure.
    let ns = Netns(name);
    let iface = make_interface(&ns.0);
    sh(&["ip", "-n", &ns.0, "link", "set", &iface, "up"]).unwrap_or_else(|e| panic!("{e}"));

    let b = Bench::new();
    let log = b.log().display().to_string();
    // The hooks run inside the namespace too: each records the interface's
    // addresses at the moment it runs.
    let snapshot = |word: &str| {
        Some(format!(
            "echo {word} >> '{log}'; ip -o addr show dev {iface} >> '{log}'"
        ))
    };
    let address = "10.213.7.10/24";
    let ip = MgmtIp::new(ManagementIpConfig {
        address: Some(address.into()),
        interface: Some(iface.clone()),
        promote_hook: snapshot("promote-hook"),
        demote_hook: snapshot("demote-hook"),
        arping: false,
        netns: Some(ns.0.clone()),
    });

    assert!(!addresses(&ns.0, &iface).contains("10.213.7.10"));
    ip.promote().unwrap_or_else(|e| panic!("promote: {e}"));
    let shown = addresses(&ns.0, &iface);
    assert!(shown.contains("inet 10.213.7.10/24"), "{shown}");
    // The address is in the namespace, not on the host.
    let host = sh(&["ip", "-o", "addr", "show"]).unwrap_or_default();
    assert!(!host.contains("10.213.7.10"), "{host}");
    // The promote hook ran before the address was added: it did not see it.
    let after_promote = std::fs::read_to_string(b.log()).expect("hook log");
    assert!(
        after_promote.starts_with("promote-hook\n"),
        "{after_promote}"
    );
    assert!(!after_promote.contains("10.213.7.10"), "{after_promote}");

    // Promoting again (a repeated event) is not an error; this time the
    // hook sees the address (so the hooks' snapshots do show it).
    ip.promote()
        .unwrap_or_else(|e| panic!("second promote: {e}"));
    let again = std::fs::read_to_string(b.log()).expect("hook log");
    assert!(
        again[after_promote.len()..].contains("10.213.7.10"),
        "{again}"
    );

    ip.demote().unwrap_or_else(|e| panic!("demote: {e}"));
    let shown = addresses(&ns.0, &iface);
    assert!(!shown.contains("10.213.7.10"), "{shown}");
    // The demote hook ran after the address was removed.
    let after_demote = std::fs::read_to_string(b.log()).expect("hook log");
    let demote_part = &after_demote[again.len()..];
    assert!(demote_part.starts_with("demote-hook\n"), "{after_demote}");
    assert!(!demote_part.contains("10.213.7.10"), "{after_demote}");

    // Demoting again is not an error either.
    ip.demote().unwrap_or_else(|e| panic!("second demote: {e}"));
    eprintln!(
        "the management address moved on {iface} in namespace {}",
        ns.0
    );
}
