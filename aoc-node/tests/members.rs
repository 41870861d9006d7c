//! Membership changes end to end, with real processes on loopback and the
//! `aoc-node members` command line, under continuous writes: a standalone
//! member grows to HA; a dead passive and then a dead witness are replaced;
//! the replaced passive, restarted with its old data, is left out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoc_core::client::{self, Client, ClientOptions};
use aoc_core::Mode;

mod common;

use common::{free_port, node_bin, witness_bin};

struct Member {
    witness: bool,
    ha: String,
    api: Option<SocketAddr>,
    http: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Members by id; each has its own configuration file, written when it is
/// declared, listing the peers it is given.
struct Procs {
    dir: tempfile::TempDir,
    members: BTreeMap<u64, Member>,
}

impl Procs {
    fn new() -> Self {
        Procs {
            dir: tempfile::tempdir().expect("temp dir"),
            members: BTreeMap::new(),
        }
    }

    /// Declares member `id` (addresses picked now).
    fn declare(&mut self, id: u64, witness: bool) {
        let dir = self.dir.path();
        self.members.insert(
            id,
            Member {
                witness,
                ha: format!("127.0.0.1:{}", free_port()),
                api: (!witness).then(|| {
                    format!("127.0.0.1:{}", free_port())
                        .parse()
                        .expect("an address")
                }),
                http: SocketAddr::from(([127, 0, 0, 1], free_port())),
                config: dir.join(format!("m{id}.toml")),
                log: dir.join(format!("m{id}.log")),
                child: None,
            },
        );
    }

    /// Writes member `id`'s file listing `peers`.
    fn write_config(&self, id: u64, peers: &[u64]) {
        let m = &self.members[&id];
        let mut text = format!(
            "cluster_id = 7\nmember_id = {id}\nrole = \"{}\"\ndata_dir = \"data{id}\"\n\
             ha_addr = \"{}\"\nhttp_addr = \"{}\"\nallow_plain_tcp = true\n",
            if m.witness { "witness" } else { "data" },
            m.ha,
            m.http
        );
        if let Some(api) = m.api {
            text += &format!("api_addr = \"{api}\"\n");
        }
        for p in peers {
            let pm = &self.members[p];
            text += &format!(
                "[[peers]]\nid = {p}\nrole = \"{}\"\nha_addr = \"{}\"\n",
                if pm.witness { "witness" } else { "data" },
                pm.ha
            );
            if let Some(api) = pm.api {
                text += &format!("api_addr = \"{api}\"\n");
            }
        }
        text += "[timeouts]\ntick_ms = 50\nsync_timeout_ms = 500\nswitchover_timeout_ms = 1500\n";
        std::fs::write(&m.config, text).expect("config written");
    }

    fn start(&mut self, id: u64) {
        let m = self.members.get_mut(&id).expect("declared");
        let bin = if m.witness { witness_bin() } else { node_bin() };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("log file");
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&m.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the member starts");
        let http = m.http;
        let child = m.child.insert(child);
        // A member that could not start fails the test at once, with its
        // log, not at the end of a command's wait.
        if let Err(e) = common::wait_listening(child, http) {
            self.dump_logs();
            panic!("member {id}: {e}");
        }
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.members.get_mut(&id).and_then(|m| m.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn endpoints(&self) -> Vec<SocketAddr> {
        self.members.values().filter_map(|m| m.api).collect()
    }

    fn endpoints_arg(&self) -> String {
        self.endpoints()
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn active(&self) -> Option<aoc_core::Status> {
        let opts = ClientOptions::default();
        self.endpoints().into_iter().find_map(|e| {
            client::status_of(e, &opts)
                .ok()
                .filter(|s| s.status.active)
                .map(|s| s.status)
        })
    }

    fn wait_active(&self, what: &str, f: impl Fn(&aoc_core::Status) -> bool) -> aoc_core::Status {
        let start = Instant::now();
        loop {
            if let Some(st) = self.active().filter(|st| f(st)) {
                return st;
            }
            if start.elapsed() > Duration::from_secs(60) {
                self.dump_logs();
                panic!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn dump_logs(&self) {
        for (id, m) in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- member {id} log (last lines):");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }

    /// `aoc-node members ...`; panics with the output on failure.
    fn members(&self, args: &[&str]) -> String {
        self.cli("members", args)
    }

    /// `aoc-node status --json`, parsed.
    fn status_json(&self) -> serde_json::Value {
        let out = self.cli("status", &["--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
    }

    /// Runs `aoc-node COMMAND ARGS --endpoints ...`; its standard output.
    fn cli(&self, command: &str, args: &[&str]) -> String {
        let out = Command::new(node_bin())
            .arg(command)
            .args(args)
            .args(["--endpoints", &self.endpoints_arg()])
            .output()
            .expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            self.dump_logs();
            panic!(
                "{command} {args:?}: {:?}\nstdout: {stdout}\nstderr: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        stdout
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

/// Writes keys `k0, k1...` through the client until stopped; returns the
/// acknowledged ones.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Writer {
    fn start(endpoints: Vec<SocketAddr>, prefix: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let prefix = prefix.to_string();
        let thread = std::thread::spawn(move || {
            let opts = ClientOptions {
                deadline: Duration::from_secs(30),
                ..ClientOptions::default()
            };
            let mut client = Client::connect(endpoints, opts).expect("client");
            let mut acked = Vec::new();
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                let key = format!("{prefix}{i}");
                // The client retries with the same write id until its
                // deadline: an error here is a write not acknowledged.
                if client.put(key.clone(), "v").is_ok() {
                    acked.push(key);
                    i += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            acked
        });
        Writer { stop, thread }
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("writer")
    }
}

fn check_all(endpoints: Vec<SocketAddr>, keys: &[String]) {
    let mut client = Client::connect(endpoints, ClientOptions::default()).expect("client");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| client.get(k.to_string()).expect("read").as_deref() != Some(&b"v"[..]))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        missing.len(),
        keys.len(),
        &missing[..missing.len().min(5)]
    );
}

/// Standalone member 1 grows to active + passive + witness with `aoc-node
/// members add` while a client writes (the two new members are promoted
/// together); the new passive then takes over with every acknowledged
/// write, and member 1, restarted with its old standalone file, rejoins as
/// the passive (the data directory's membership applies; the file is only
/// reported stale). Last, `members shrink` leaves member 2 standalone.
#[test]
fn a_standalone_member_grows_to_ha_under_writes() {
    let mut p = Procs::new();
    p.declare(1, false);
    p.declare(2, false);
    p.declare(3, true);
    p.write_config(1, &[]);
    p.write_config(2, &[1, 3]);
    p.write_config(3, &[1, 2]);
    p.start(1);
    p.wait_active("standalone member 1", |st| st.mode == Mode::Standalone);
    let w = Writer::start(p.endpoints(), "k");
    std::thread::sleep(Duration::from_millis(500));

    p.start(2);
    let out = p.members(&[
        "add",
        "--id",
        "2",
        "--role",
        "data",
        "--ha-addr",
        &p.members[&2].ha.clone(),
        "--timeout-s",
        "120",
    ]);
    // Not promoted alone: it waits for the witness, to be promoted with it.
    assert!(out.contains("member 2 is a caught-up learner"), "{out}");
    assert_eq!(p.active().expect("active").voters, vec![1]);
    p.start(3);
    let out = p.members(&[
        "add",
        "--id",
        "3",
        "--role",
        "witness",
        "--ha-addr",
        &p.members[&3].ha.clone(),
        "--timeout-s",
        "120",
    ]);
    assert!(out.contains("member 3 is a voter"), "{out}");
    let st = p.wait_active("sync mode with members 2 and 3", |st| {
        st.mode == Mode::Sync && st.voters == vec![1, 2, 3]
    });
    assert_eq!(st.id, 1);
    let list = p.members(&["list"]);
    assert!(
        list.contains("member 1: voter, data (address in the configuration files)"),
        "{list}"
    );
    assert!(list.contains("member 2: voter, data"), "{list}");
    assert!(list.contains("member 3: voter, witness"), "{list}");

    std::thread::sleep(Duration::from_millis(500));
    p.kill(1);
    p.wait_active("member 2 active", |st| st.id == 2);
    std::thread::sleep(Duration::from_millis(500));
    let acked = w.stop();
    assert!(acked.len() > 100, "only {} writes", acked.len());
    check_all(p.endpoints(), &acked);

    // Member 1 returns with its standalone file: the stored membership
    // applies, and it catches up as the passive.
    p.start(1);
    p.wait_active("sync mode with member 1 back", |st| {
        st.id == 2 && st.mode == Mode::Sync
    });
    let log = std::fs::read_to_string(&p.members[&1].log).unwrap_or_default();
    assert!(
        log.contains("membership changed since this file was written"),
        "{log}"
    );

    // And back to standalone: member 2 alone, still serving.
    let out = p.members(&["shrink"]);
    assert!(out.contains("the active is standalone"), "{out}");
    p.wait_active("member 2 standalone", |st| {
        st.id == 2 && st.mode == Mode::Standalone && st.voters == vec![2]
    });
    let mut client = Client::connect(p.endpoints(), ClientOptions::default()).expect("client");
    client
        .put("after/shrink", "v")
        .expect("the standalone member serves");
}

/// HA members 1, 2 and witness 3. The passive dies and is replaced by
/// member 4 with `aoc-node members replace`; the old passive, restarted
/// with its data, is refused. Then the witness dies and is replaced by
/// witness 5, which does its job: with the passive down too, the active
/// goes on in degraded mode. No acknowledged write is lost.
#[test]
fn a_dead_passive_then_a_dead_witness_are_replaced() {
    let mut p = Procs::new();
    for id in 1..=5 {
        p.declare(id, id == 3 || id == 5);
    }
    p.write_config(1, &[2, 3]);
    p.write_config(2, &[1, 3]);
    p.write_config(3, &[1, 2]);
    for id in 1..=3 {
        p.start(id);
    }
    let active = p.wait_active("sync mode", |st| st.mode == Mode::Sync).id;
    let passive = if active == 1 { 2 } else { 1 };
    // The first members' roles come from the active's witness.
    let list = p.members(&["list"]);
    for (id, role) in [(1, "data"), (2, "data"), (3, "witness")] {
        let line = format!("member {id}: voter, {role} (address in the configuration files)");
        assert!(list.contains(&line), "{list}");
    }
    let w = Writer::start(p.endpoints(), "k");
    std::thread::sleep(Duration::from_millis(500));

    // The passive dies for good; member 4 takes its place.
    p.kill(passive);
    // With a data member down, `status` still names the witness (not the
    // voter that did not answer).
    let st = p.status_json();
    let witnesses: Vec<&serde_json::Value> = st["members"]
        .as_array()
        .map(|a| a.iter().filter(|m| m["role"] == "witness").collect())
        .unwrap_or_default();
    assert_eq!(witnesses.len(), 1, "{st}");
    assert_eq!(witnesses[0]["id"], 3, "{st}");
    p.write_config(4, &[active, 3]);
    p.start(4);
    let ha4 = p.members[&4].ha.clone();
    let out = p.members(&[
        "replace",
        "--old",
        &passive.to_string(),
        "--id",
        "4",
        "--role",
        "data",
        "--ha-addr",
        &ha4,
        "--timeout-s",
        "120",
    ]);
    assert!(out.contains(&format!("member {passive} removed")), "{out}");
    assert!(out.contains("member 4 is a voter"), "{out}");
    let mut voters = vec![active, 3, 4];
    voters.sort_unstable();
    p.wait_active("sync mode with member 4", |st| {
        st.id == active && st.mode == Mode::Sync && st.voters == voters
    });

    // The old passive returns with its old data and file: it is refused.
    p.start(passive);
    std::thread::sleep(Duration::from_secs(3));
    let st = p.active().expect("an active");
    assert_eq!(st.id, active, "the returning member disturbed the active");
    assert_eq!(st.voters, voters);
    let old = client::status_of(
        p.members[&passive].api.expect("data member"),
        &ClientOptions::default(),
    );
    if let Ok(old) = old {
        assert!(!old.status.active, "the removed member is active");
    }
    let log = std::fs::read_to_string(&p.members[&passive].log).unwrap_or_default();
    assert!(log.contains("refused"), "no refusal in its log:\n{log}");
    p.kill(passive);

    // The witness dies for good; witness 5 takes its place.
    p.kill(3);
    p.write_config(5, &[active, 4]);
    p.start(5);
    let ha5 = p.members[&5].ha.clone();
    let out = p.members(&[
        "replace",
        "--old",
        "3",
        "--id",
        "5",
        "--role",
        "witness",
        "--ha-addr",
        &ha5,
        "--timeout-s",
        "120",
    ]);
    assert!(out.contains("member 5 is a voter"), "{out}");
    // Run again (as after an interruption): nothing left to do, no error.
    let out = p.members(&["remove", "--id", "3"]);
    assert!(out.contains("member 3 is not a member (any more)"), "{out}");
    let mut voters = vec![active, 4, 5];
    voters.sort_unstable();
    p.wait_active("sync mode with witness 5", |st| {
        st.mode == Mode::Sync && st.voters == voters
    });

    // Witness 5 acknowledges in place of the passive.
    let st = p.active().expect("an active");
    let new_passive = if st.id == 4 { active } else { 4 };
    p.kill(new_passive);
    let st = p.wait_active("degraded mode on witness 5", |st| st.mode == Mode::Degraded);
    let before = st.commit;
    p.wait_active("commits with witness 5", |st| st.commit > before + 20);
    let acked = w.stop();
    assert!(acked.len() > 100, "only {} writes", acked.len());
    check_all(p.endpoints(), &acked);
}
