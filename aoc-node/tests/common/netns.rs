//! Hosts in Linux network namespaces for the tests (needs root and
//! iproute2; `Net::new` says so and gives `None` where namespaces cannot be
//! made): members 1 to 3 and a client `c`, each with `eth0` on one bridge,
//! at 10.77.0.ID (the client at .100).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use super::{node_bin, witness_bin};

/// The management IP the data members move between them.
pub const MGMT: &str = "10.77.0.10";

pub fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("ip runs")
}

pub fn ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Net {
    pub prefix: String,
    pub procs: Vec<Option<Child>>,
}

impl Net {
    /// The namespaces and the bridge, or `None` (after saying why) where
    /// namespaces cannot be made.
    pub fn new(tag: &str) -> Option<Net> {
        let prefix = format!("aoc{tag}{}", std::process::id());
        let probe = format!("{prefix}probe");
        if !ip(&["netns", "add", &probe]).status.success() {
            eprintln!("SKIPPED: cannot create network namespaces here (needs root and iproute2)");
            return None;
        }
        let _ = ip(&["netns", "del", &probe]);
        let net = Net {
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
        Some(net)
    }

    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The namespace of member `id`.
    pub fn member_ns(&self, id: u64) -> String {
        self.ns(&format!("m{id}"))
    }

    /// Starts member `id` (`aoc-node run` or `aoc-witness run`) in its
    /// namespace, with its stderr in `log`.
    pub fn start(&mut self, id: u64, config: &Path, log: &Path) {
        let bin = if id == 3 { witness_bin() } else { node_bin() };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.member_ns(id)])
            .arg(bin)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("member starts");
        while self.procs.len() < id as usize {
            self.procs.push(None);
        }
        self.procs[id as usize - 1] = Some(child);
    }

    /// Whether member `id`'s host holds the management IP.
    pub fn has_mgmt_ip(&self, id: u64) -> bool {
        let out = ip(&["-n", &self.member_ns(id), "addr", "show", "dev", "eth0"]);
        String::from_utf8_lossy(&out.stdout).contains(&format!("{MGMT}/24"))
    }

    /// `aoc-node ARGS` in the client's namespace.
    pub fn client(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns("c")])
            .arg(node_bin())
            .args(args)
            .output()
            .expect("ip netns exec runs")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            let _ = p.kill();
            let _ = p.wait();
        }
        for n in ["br", "m1", "m2", "m3", "c"] {
            let _ = ip(&["netns", "del", &self.ns(n)]);
        }
    }
}

/// Member `id`'s configuration file in `dir` (tick 50 ms, or
/// `AOC_NETNS_TICK_MS`), with `extra`
/// appended for the data members.
pub fn config(id: u64, dir: &Path, extra: &str) -> PathBuf {
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
    // 50 ms ticks keep the tests short; AOC_NETNS_TICK_MS=100 gives the
    // default timeouts, for the figures in docs/benchmarks.md.
    let tick_ms: u64 = std::env::var("AOC_NETNS_TICK_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    text += &format!(
        "[timeouts]\ntick_ms = {tick_ms}\nsync_timeout_ms = {}\n",
        tick_ms * 10
    );
    if id != 3 {
        text += &format!("[management_ip]\naddress = \"{MGMT}/24\"\ninterface = \"eth0\"\n");
        text += extra;
    }
    let path = dir.join(format!("m{id}.toml"));
    std::fs::write(&path, text).expect("config written");
    path
}
