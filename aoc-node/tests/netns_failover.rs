//! The management IP and the platform's services across failures, in Linux
//! network namespaces: three members and a client on one bridge (needs
//! root and iproute2; where namespaces cannot be made the tests say so and
//! are skipped).
//!
//! - The address follows the active: when the active's host fails (its
//!   link goes down and the member is killed) the passive takes over and
//!   the client reaches it through the same address.
//! - The guard fences the host: the promote hook starts a stand-in service
//!   and the demote hook stops it; the active member is killed with
//!   SIGKILL, and later stopped with SIGSTOP for several election
//!   timeouts. Sampled every 10 ms, never do both hosts hold the address,
//!   nor both run the service; the new active holds the address within
//!   2 s; every acknowledged write is read back.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::netns::{config, ok, Net, MGMT};

#[test]
fn the_management_ip_follows_the_active_across_a_failover() {
    let Some(mut net) = Net::new("f") else { return };
    let dir = tempfile::tempdir().unwrap();
    for id in 1..=3u64 {
        let cfg = config(id, dir.path(), "");
        net.start(id, &cfg, &dir.path().join(format!("m{id}.log")));
    }
    let active =
        wait_for_ip(&net, &[1, 2], Duration::from_secs(30)).expect("an active holds the IP");
    let passive = if active == 1 { 2 } else { 1 };
    let eps = "10.77.0.1:7201,10.77.0.2:7201";
    let out = net.client(&["status", "--json", "--endpoints", eps]);
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains(&format!("\"id\":{active}")) && status.contains("\"role\":\"active\""),
        "{status}"
    );
    let mgmt_ep = format!("{MGMT}:7201");
    let out = net.client(&["kv", "put", "k", "v", "--endpoints", &mgmt_ep]);
    assert!(
        out.status.success(),
        "write through the management IP: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The active's host fails: link down, process killed.
    ok(&["-n", &net.member_ns(active), "link", "set", "eth0", "down"]);
    if let Some(mut victim) = net.procs[active as usize - 1].take() {
        let _ = victim.kill();
        let _ = victim.wait();
    }
    let start = Instant::now();
    assert_eq!(
        wait_for_ip(&net, &[passive], Duration::from_secs(30)),
        Some(passive),
        "the management IP did not move to the new active"
    );
    eprintln!(
        "management IP moved to member {passive} in {:?}",
        start.elapsed()
    );
    // Stands in for the gratuitous ARP (arping is not installed here): the
    // client forgets the failed host's link-layer address.
    ok(&["-n", &net.ns("c"), "neigh", "flush", "all"]);
    let out = net.client(&["kv", "get", "k", "--endpoints", &mgmt_ep]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "v\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = net.client(&["kv", "put", "k2", "v2", "--endpoints", &mgmt_ep]);
    assert!(
        out.status.success(),
        "a write on the new active through the management IP"
    );
}

/// The first of `ids` whose host holds the management IP, waiting up to
/// `timeout`.
fn wait_for_ip(net: &Net, ids: &[u64], timeout: Duration) -> Option<u64> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(id) = ids.iter().copied().find(|id| net.has_mgmt_ip(*id)) {
            return Some(id);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The stand-in platform service: the promote hook starts a process
/// (detached, so the hook returns at once) and records its pid in a file
/// of the host's; the demote hook stops it.
fn service_hooks(dir: &Path, id: u64) -> String {
    let pidfile = dir.join(format!("service{id}.pid"));
    let p = pidfile.display();
    format!(
        "promote_hook = \"setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > {p}\"\n\
         demote_hook = \"kill $(cat {p}) 2>/dev/null; rm -f {p}\"\n"
    )
}

/// Whether member `id`'s stand-in service runs.
fn service_runs(dir: &Path, id: u64) -> bool {
    std::fs::read_to_string(dir.join(format!("service{id}.pid")))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// One sample of both data members' hosts: (when, address on 1, on 2,
/// service on 1, on 2).
type Sample = (Instant, bool, bool, bool, bool);

/// Samples both data members' hosts every 10 ms until `stop`.
fn sample(
    net: Arc<Net>,
    dir: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Sample>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let s = (
                Instant::now(),
                net.has_mgmt_ip(1),
                net.has_mgmt_ip(2),
                service_runs(&dir, 1),
                service_runs(&dir, 2),
            );
            if let Ok(mut v) = seen.lock() {
                v.push(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// Writes through the data members' addresses until `stop`, one at a
/// time; the keys acknowledged and when.
fn writer(net: Arc<Net>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<(String, Instant)>> {
    std::thread::spawn(move || {
        let eps = "10.77.0.1:7201,10.77.0.2:7201";
        let mut acked = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            let key = format!("w{i}");
            i += 1;
            if net
                .client(&["kv", "put", &key, "v", "--endpoints", eps])
                .status
                .success()
            {
                acked.push((key, Instant::now()));
            }
        }
        acked
    })
}

/// The timeline of a fault at `at` on member `old` (`new` takes over):
/// when the old host let go of the address and the service, when the new
/// one held them, and the longest pause between acknowledged writes
/// around it; one line.
fn timeline(
    samples: &[Sample],
    writes: &[(String, Instant)],
    at: Instant,
    until: Instant,
    old: u64,
    new: u64,
) -> String {
    let ip = |s: &Sample, id: u64| if id == 1 { s.1 } else { s.2 };
    let svc = |s: &Sample, id: u64| if id == 1 { s.3 } else { s.4 };
    let after: Vec<&Sample> = samples.iter().filter(|s| s.0 >= at).collect();
    let first = |f: &dyn Fn(&Sample) -> bool| {
        after
            .iter()
            .find(|s| f(s))
            .map(|s| s.0.duration_since(at).as_millis())
    };
    let ip_gone = first(&|s| !ip(s, old));
    let svc_gone = first(&|s| !svc(s, old));
    let ip_new = first(&|s| ip(s, new));
    let svc_new = first(&|s| svc(s, new));
    // The longest pause between consecutive acknowledgements from a
    // second before the fault to `until` (the next fault), and where it ends: the first
    // write the new active acknowledged (a write answered just before the
    // fault can return just after it).
    let window: Vec<Instant> = writes
        .iter()
        .map(|(_, t)| *t)
        .filter(|t| *t + Duration::from_secs(1) >= at && *t <= until)
        .collect();
    let longest = window
        .windows(2)
        .max_by_key(|w| w[1].duration_since(w[0]))
        .map(|w| {
            (
                w[1].duration_since(w[0]).as_millis(),
                w[1].saturating_duration_since(at).as_millis(),
            )
        });
    let (gap, first_write) = (longest.map(|l| l.0), longest.map(|l| l.1));
    format!(
        "address off the old host {ip_gone:?} ms, service {svc_gone:?} ms; address on the new \
         host {ip_new:?} ms, service {svc_new:?} ms; first write acknowledged {first_write:?} ms; \
         write gap {gap:?} ms"
    )
}

/// The member process the guard of member `id` runs (the guard's child).
fn member_pid(net: &Net, id: u64) -> Option<u32> {
    let guard = net.procs[id as usize - 1].as_ref()?.id();
    let children = std::fs::read_to_string(format!("/proc/{guard}/task/{guard}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{sig} {pid}");
}

/// Waits (20 s at most) for an active in sync mode.
fn wait_sync(net: &Net) {
    let eps = "10.77.0.1:7201,10.77.0.2:7201";
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let out = net.client(&["status", "--json", "--endpoints", eps]);
        if String::from_utf8_lossy(&out.stdout).contains("\"mode\":\"sync\"") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no active in sync mode");
}

#[test]
fn the_guard_fences_a_killed_or_stopped_active() {
    let Some(mut net) = Net::new("g") else { return };
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().to_path_buf();
    for id in 1..=3u64 {
        let extra = service_hooks(&shared, id);
        let cfg = config(id, dir.path(), &extra);
        net.start(id, &cfg, &dir.path().join(format!("m{id}.log")));
    }
    let first =
        wait_for_ip(&net, &[1, 2], Duration::from_secs(30)).expect("an active holds the IP");
    let net = Arc::new(net);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sampler = sample(net.clone(), shared.clone(), stop.clone(), seen.clone());
    let writes = writer(net.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(500));

    // (a) kill -9 of the active member's process.
    let other = if first == 1 { 2 } else { 1 };
    let pid = member_pid(&net, first).expect("the guard's member process");
    let killed = Instant::now();
    signal(pid, "KILL");
    let took = wait_for_ip(&net, &[other], Duration::from_secs(5));
    assert_eq!(
        took,
        Some(other),
        "member {other} holds the address after the kill"
    );
    let gap_a = killed.elapsed();
    // The killed member is back (the guard restarted it) and caught up.
    wait_sync(&net);

    // (b) SIGSTOP of the new active for several election timeouts.
    let pid = member_pid(&net, other).expect("the guard's member process");
    let stopped = Instant::now();
    signal(pid, "STOP");
    let took = wait_for_ip(&net, &[first], Duration::from_secs(5));
    let gap_b = stopped.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    // The guard has killed it by now (its lease ended): nothing to resume.
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status();
    assert_eq!(
        took,
        Some(first),
        "member {first} holds the address while {other} is stopped"
    );
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    let acked = writes.join().expect("the writer");
    let seen = seen.lock().expect("samples").clone();
    let end = Instant::now();
    eprintln!(
        "kill -9: {}",
        timeline(&seen, &acked, killed, stopped, first, other)
    );
    eprintln!(
        "SIGSTOP: {}",
        timeline(&seen, &acked, stopped, end, other, first)
    );
    eprintln!(
        "{} samples, {} writes acknowledged",
        seen.len(),
        acked.len()
    );
    let both_ip = seen.iter().find(|s| s.1 && s.2).map(|s| s.0);
    let both_svc = seen.iter().find(|s| s.3 && s.4).map(|s| s.0);
    let logs = || {
        (1..=3)
            .map(|i| {
                std::fs::read_to_string(dir.path().join(format!("m{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert_eq!(both_ip, None, "both hosts held the address: {}", logs());
    assert_eq!(both_svc, None, "both hosts ran the service: {}", logs());
    assert!(gap_a < Duration::from_secs(2), "kill -9: {gap_a:?}");
    assert!(gap_b < Duration::from_secs(2), "SIGSTOP: {gap_b:?}");
    assert!(!acked.is_empty(), "writes were acknowledged");
    let eps = "10.77.0.1:7201,10.77.0.2:7201";
    for (k, _) in &acked {
        let out = net.client(&["kv", "get", k, "--endpoints", eps]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "v\n",
            "acknowledged {k}"
        );
    }
}
