//! The floating management IP across a failover, in Linux network
//! namespaces: three members and a client on one bridge. The address is on
//! the active's interface; when the active's host fails (its link goes down
//! and the process is killed with SIGKILL) the passive takes over and adds
//! the address, and the client, in its own namespace, reaches the new
//! active through the same address. Needs root and iproute2; where
//! namespaces cannot be made the test says so and is skipped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{node_bin, witness_bin};

const MGMT: &str = "10.77.0.10";

fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("ip runs")
}

fn ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Net {
    prefix: String,
    procs: Vec<Child>,
}

impl Net {
    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        for n in ["br", "m1", "m2", "m3", "c"] {
            let _ = ip(&["netns", "del", &self.ns(n)]);
        }
    }
}

fn in_ns(ns: &str, bin: &Path, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin)
        .args(args)
        .output()
        .expect("ip netns exec runs")
}

fn has_mgmt_ip(ns: &str) -> bool {
    let out = ip(&["-n", ns, "addr", "show", "dev", "eth0"]);
    String::from_utf8_lossy(&out.stdout).contains(&format!("{MGMT}/24"))
}

fn config(id: u64, dir: &Path) -> PathBuf {
    let role = |i: u64| if i == 3 { "witness" } else { "data" };
    let mut text = format!(
        "cluster_id = 9\nmember_id = {id}\nrole = \"{}\"\ndata_dir = \"data{id}\"\n\
         ha_addr = \"10.77.0.{id}:7101\"\nhttp_addr = \"10.77.0.{id}:7301\"\nallow_plain_tcp = true\n",
        role(id)
    );
    if id != 3 {
        // All addresses: the management IP comes and goes on this host.
        text += "api_addr = \"0.0.0.0:7201\"\n";
    }
    for p in (1..=3).filter(|p| *p != id) {
        text += &format!(
            "[[peers]]\nid = {p}\nrole = \"{}\"\nha_addr = \"10.77.0.{p}:7101\"\n",
            role(p)
        );
        if p != 3 {
            text += &format!("api_addr = \"10.77.0.{p}:7201\"\n");
        }
    }
    text += "[timeouts]\ntick_ms = 50\nsync_timeout_ms = 500\n";
    if id != 3 {
        text += &format!("[management_ip]\naddress = \"{MGMT}/24\"\ninterface = \"eth0\"\n");
    }
    let path = dir.join(format!("m{id}.toml"));
    std::fs::write(&path, text).expect("config written");
    path
}

#[test]
fn the_management_ip_follows_the_active_across_a_failover() {
    let prefix = format!("aoc{}", std::process::id());
    let probe = format!("{prefix}probe");
    let can = ip(&["netns", "add", &probe]).status.success();
    if !can {
        eprintln!("SKIPPED: cannot create network namespaces here (needs root and iproute2)");
        return;
    }
    let _ = ip(&["netns", "del", &probe]);
    let mut net = Net {
        prefix,
        procs: Vec::new(),
    };
    for n in ["br", "m1", "m2", "m3", "c"] {
        ok(&["netns", "add", &net.ns(n)]);
    }
    let br = net.ns("br");
    ok(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
    ok(&["-n", &br, "link", "set", "br0", "up"]);
    for (n, addr) in [
        ("m1", "10.77.0.1"),
        ("m2", "10.77.0.2"),
        ("m3", "10.77.0.3"),
        ("c", "10.77.0.100"),
    ] {
        let ns = net.ns(n);
        let v = format!("v{n}");
        ok(&[
            "-n", &br, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ok(&["-n", &br, "link", "set", &v, "master", "br0", "up"]);
        ok(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ok(&["-n", &ns, "link", "set", "eth0", "up"]);
        ok(&["-n", &ns, "link", "set", "lo", "up"]);
    }
    let dir = tempfile::tempdir().unwrap();
    for id in 1..=3u64 {
        let cfg = config(id, dir.path());
        let bin = if id == 3 { witness_bin() } else { node_bin() };
        let log = std::fs::File::create(dir.path().join(format!("m{id}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &net.ns(&format!("m{id}"))])
            .arg(bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("member starts");
        net.procs.push(child);
    }
    let client_ns = net.ns("c");
    let node = node_bin();
    let eps = "10.77.0.1:7201,10.77.0.2:7201";
    // The active holds the management IP.
    let start = Instant::now();
    let active = loop {
        if let Some(id) = [1u64, 2]
            .into_iter()
            .find(|id| has_mgmt_ip(&net.ns(&format!("m{id}"))))
        {
            break id;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no member took the management IP"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let passive = if active == 1 { 2 } else { 1 };
    let out = in_ns(&client_ns, &node, &["status", "--json", "--endpoints", eps]);
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains(&format!("\"id\":{active}")) && status.contains("\"role\":\"active\""),
        "{status}"
    );
    let mgmt_ep = format!("{MGMT}:7201");
    let out = in_ns(
        &client_ns,
        &node,
        &["kv", "put", "k", "v", "--endpoints", &mgmt_ep],
    );
    assert!(
        out.status.success(),
        "write through the management IP: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The active's host fails: link down, process killed.
    ok(&[
        "-n",
        &net.ns(&format!("m{active}")),
        "link",
        "set",
        "eth0",
        "down",
    ]);
    let victim = &mut net.procs[active as usize - 1];
    let _ = victim.kill();
    let _ = victim.wait();
    let start = Instant::now();
    while !has_mgmt_ip(&net.ns(&format!("m{passive}"))) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the management IP did not move to the new active"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "management IP moved to member {passive} in {:?}",
        start.elapsed()
    );
    // Stands in for the gratuitous ARP (arping is not installed here): the
    // client forgets the failed host's link-layer address.
    ok(&["-n", &client_ns, "neigh", "flush", "all"]);
    let out = in_ns(
        &client_ns,
        &node,
        &["kv", "get", "k", "--endpoints", &mgmt_ep],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "v\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = in_ns(
        &client_ns,
        &node,
        &["kv", "put", "k2", "v2", "--endpoints", &mgmt_ep],
    );
    assert!(
        out.status.success(),
        "a write on the new active through the management IP"
    );
}
