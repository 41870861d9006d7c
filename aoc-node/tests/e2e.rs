//! End to end with the three real processes on loopback: writes through the
//! client, kill -9 of the active and of the passive, restarts, the health
//! endpoints, and bad configuration files.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aoc_core::client::{self, Client, ClientOptions};
use aoc_core::Mode;

mod common;

use common::{free_port, node_bin, witness_bin};

struct Member {
    id: u64,
    config: PathBuf,
    api: Option<SocketAddr>,
    http: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
}

struct Cluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    /// How clients reach the members (TLS or not).
    opts: ClientOptions,
}

impl Cluster {
    fn new() -> Self {
        Self::build(false)
    }

    /// The cluster over mutual TLS, with certificates from `aoc-node
    /// certs`' library (the client's is `client-admin`).
    fn with_tls() -> Self {
        Self::build(true)
    }

    fn build(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let mut opts = ClientOptions::default();
        if tls {
            aoc_node::certs::generate(&certs, 7, &[1, 2, 3], &["admin".into()]).unwrap();
            let identity = aoc_core::transport::tls::TlsIdentity::from_files(
                &certs.join("ca.pem"),
                &certs.join("client-admin.pem"),
                &certs.join("client-admin.key"),
            )
            .unwrap();
            opts.tls = Some(client::ClientTls {
                identity,
                cluster_id: 7,
            });
        }
        let ha: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let api: Vec<u16> = (0..2).map(|_| free_port()).collect();
        let http: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut members = Vec::new();
        for id in 1..=3u64 {
            let i = id as usize - 1;
            let mut text = format!(
                "cluster_id = 7\nmember_id = {id}\nrole = \"{}\"\ndata_dir = \"data{id}\"\n\
                 ha_addr = \"127.0.0.1:{}\"\nhttp_addr = \"127.0.0.1:{}\"\n{}",
                if id == 3 { "witness" } else { "data" },
                ha[i],
                http[i],
                if tls { "" } else { "allow_plain_tcp = true\n" }
            );
            if id != 3 {
                text += &format!("api_addr = \"127.0.0.1:{}\"\n", api[i]);
            }
            for p in 1..=3u64 {
                if p == id {
                    continue;
                }
                let j = p as usize - 1;
                text += &format!(
                    "[[peers]]\nid = {p}\nrole = \"{}\"\nha_addr = \"127.0.0.1:{}\"\n",
                    if p == 3 { "witness" } else { "data" },
                    ha[j]
                );
                if p != 3 {
                    text += &format!("api_addr = \"127.0.0.1:{}\"\n", api[j]);
                }
            }
            text +=
                "[timeouts]\ntick_ms = 50\nsync_timeout_ms = 500\nswitchover_timeout_ms = 1500\n";
            if tls {
                text += &format!(
                    "[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/member-{id}.pem\"\nkey = \"certs/member-{id}.key\"\n"
                );
            }
            let config = dir.path().join(format!("m{id}.toml"));
            std::fs::write(&config, text).unwrap();
            members.push(Member {
                id,
                config,
                api: (id != 3).then(|| format!("127.0.0.1:{}", api[i]).parse().unwrap()),
                http: format!("127.0.0.1:{}", http[i]).parse().unwrap(),
                child: None,
                log: dir.path().join(format!("m{id}.log")),
            });
        }
        let mut c = Cluster { dir, members, opts };
        for id in 1..=3 {
            c.start(id);
        }
        c
    }

    fn start(&mut self, id: u64) {
        let m = &mut self.members[id as usize - 1];
        let bin = if id == 3 { witness_bin() } else { node_bin() };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&m.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the member starts");
        let http = m.http;
        let child = m.child.insert(child);
        if let Err(e) = common::wait_listening(child, http) {
            self.dump_logs();
            panic!("member {id}: {e}");
        }
    }

    fn dump_logs(&self) {
        for m in &self.members {
            eprintln!(
                "--- member {} log:\n{}",
                m.id,
                std::fs::read_to_string(&m.log).unwrap_or_default()
            );
        }
    }

    /// kill -9.
    fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.members[id as usize - 1].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait.
    fn stop(&mut self, id: u64) {
        if let Some(mut c) = self.members[id as usize - 1].child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn endpoints(&self) -> Vec<SocketAddr> {
        self.members.iter().filter_map(|m| m.api).collect()
    }

    fn active(&self) -> Option<(u64, Mode)> {
        self.endpoints().into_iter().find_map(|e| {
            client::status_of(e, &self.opts)
                .ok()
                .filter(|s| s.status.active)
                .map(|s| (s.status.id, s.status.mode))
        })
    }

    fn wait_active(&self, what: &str, f: impl Fn(u64, Mode) -> bool) -> u64 {
        let start = Instant::now();
        loop {
            if let Some((id, mode)) = self.active() {
                if f(id, mode) {
                    return id;
                }
            }
            if start.elapsed() > Duration::from_secs(30) {
                self.dump_logs();
                panic!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn http_status(&self, id: u64, path: &str) -> u16 {
        let addr = self.members[id as usize - 1].http;
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            return 0;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 1..=3 {
            self.kill(id);
        }
    }
}

fn write_all(client: &mut Client, prefix: &str, n: usize) -> (Vec<String>, Duration) {
    let mut keys = Vec::new();
    let mut worst = Duration::ZERO;
    for i in 0..n {
        let key = format!("{prefix}{i}");
        let t = Instant::now();
        client
            .put(key.clone(), "v")
            .unwrap_or_else(|e| panic!("write {key}: {e}"));
        worst = worst.max(t.elapsed());
        keys.push(key);
    }
    (keys, worst)
}

fn check_all(client: &mut Client, keys: &[String]) {
    for k in keys {
        assert_eq!(
            client.get(k.clone()).expect("read").as_deref(),
            Some(&b"v"[..]),
            "acknowledged {k} lost"
        );
    }
}

#[test]
fn three_processes_fail_over_restart_and_serve_health() {
    let mut c = Cluster::new();
    let active = c.wait_active("an active in sync mode", |_, m| m == Mode::Sync);
    let passive = if active == 1 { 2 } else { 1 };
    assert_eq!(c.http_status(active, "/health"), 200);
    assert_eq!(c.http_status(passive, "/health"), 503);
    assert_eq!(c.http_status(3, "/health"), 503);
    assert_eq!(c.http_status(passive, "/ready"), 200);

    let mut client = Client::connect(c.endpoints(), ClientOptions::default()).expect("client");
    let (mut keys, _) = write_all(&mut client, "a", 50);

    // kill -9 of the active: writes resume on the new active.
    c.kill(active);
    let (more, gap) = write_all(&mut client, "b", 50);
    keys.extend(more);
    eprintln!("kill -9 of the active: longest write {gap:?}");
    assert!(
        gap < Duration::from_secs(10),
        "writes resumed within a few seconds ({gap:?})"
    );
    assert_eq!(
        c.wait_active("the passive took over", |id, _| id == passive),
        passive
    );
    check_all(&mut client, &keys);

    // The old active returns as passive; sync mode again.
    c.start(active);
    c.wait_active("sync mode after the restart", |id, m| {
        id == passive && m == Mode::Sync
    });

    // kill -9 of the passive (the old active): degraded, then sync after restart.
    c.kill(active);
    let (more, gap) = write_all(&mut client, "c", 30);
    keys.extend(more);
    eprintln!("kill -9 of the passive: longest write {gap:?}");
    c.wait_active("degraded mode", |_, m| m == Mode::Degraded);
    c.start(active);
    c.wait_active("sync mode again", |_, m| m == Mode::Sync);
    check_all(&mut client, &keys);

    // A restart of every process (SIGTERM: the active hands over first).
    for id in 1..=3 {
        c.stop(id);
    }
    for id in 1..=3 {
        c.start(id);
    }
    c.wait_active("an active after restarting everything", |_, m| {
        m == Mode::Sync
    });
    let mut client = Client::connect(c.endpoints(), ClientOptions::default()).expect("client");
    check_all(&mut client, &keys);
}

fn run_with(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(node_bin())
        .args(["run", "--config"])
        .arg(config)
        .output()
        .expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_files_exit_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let base = "cluster_id = 1\nmember_id = 1\nrole = \"data\"\ndata_dir = \"d\"\nha_addr = \"127.0.0.1:1\"\n\
                api_addr = \"127.0.0.1:2\"\nhttp_addr = \"127.0.0.1:3\"\nallow_plain_tcp = true\n";
    let cases = [
        (base.replace("member_id = 1", "member_id = 0"), "member_id"),
        (base.replace("role = \"data\"", "role = \"dta\""), "role"),
        (
            base.replace("ha_addr = \"127.0.0.1:1\"", "ha_addr = \"x:y\""),
            "ha_addr",
        ),
        (format!("{base}colour = \"blue\"\n"), "colour"),
        ("this is not toml".to_string(), "line"),
    ];
    for (i, (text, field)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (code, stderr) = run_with(&path);
        assert_eq!(code, Some(2), "case {i}: exit code 2 ({stderr})");
        assert!(
            stderr.contains(field),
            "case {i}: the error names {field}: {stderr}"
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "case {i}: one line: {stderr}"
        );
    }
    let (code, stderr) = run_with(&dir.path().join("missing.toml"));
    assert_eq!(code, Some(2), "{stderr}");
}

/// A data directory stamped by another cluster (or as another member) is
/// refused at start, with both identities named; nothing in it changes.
#[test]
fn a_data_directory_of_another_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    std::fs::create_dir(&data).unwrap();
    let stamp = "cluster_id = 2\nmember_id = 1\n";
    std::fs::write(data.join("IDENTITY"), stamp).unwrap();
    let config = dir.path().join("n.toml");
    std::fs::write(
        &config,
        format!(
            "cluster_id = 1\nmember_id = 1\nrole = \"data\"\ndata_dir = \"d\"\n\
             ha_addr = \"127.0.0.1:{}\"\napi_addr = \"127.0.0.1:{}\"\nhttp_addr = \"127.0.0.1:{}\"\n\
             allow_plain_tcp = true\n",
            free_port(),
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let (code, stderr) = run_with(&config);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("belongs to cluster 2 member 1") && stderr.contains("cluster 1 member 1"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("IDENTITY")).unwrap(),
        stamp
    );
    assert!(!data.join("log").exists(), "no store was opened");
}

fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(node_bin()).args(args).output().expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The command line against the three processes: kv, status --json,
/// maintenance on, the active killed (no failover), then maintenance off
/// locally on the survivors through their admin sockets: the passive takes
/// over with every write.
#[test]
fn command_line_status_and_maintenance_off_locally() {
    let mut c = Cluster::new();
    let active = c.wait_active("an active in sync mode", |_, m| m == Mode::Sync);
    let passive = if active == 1 { 2 } else { 1 };
    let eps: Vec<String> = c.endpoints().iter().map(|e| e.to_string()).collect();
    let eps = eps.join(",");
    let (code, _, err) = cli(&["kv", "put", "k1", "v1", "--endpoints", &eps]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, _) = cli(&["kv", "get", "k1", "--endpoints", &eps]);
    assert_eq!((code, out.as_str()), (Some(0), "v1\n"));
    let (code, _, _) = cli(&["kv", "get", "missing", "--endpoints", &eps]);
    assert_eq!(code, Some(1), "a missing key exits 1");
    let (code, out, err) = cli(&["status", "--json", "--endpoints", &eps]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["mode"], "sync");
    let members = v["members"].as_array().expect("a members array");
    assert!(members
        .iter()
        .any(|m| m["role"] == "active" && m["id"] == active));
    assert!(members
        .iter()
        .any(|m| m["role"] == "witness" && m["id"] == 3));
    // The witness's retained log, as it reports it to the active (sent once
    // per election timeout at the latest).
    std::thread::sleep(Duration::from_millis(1200));
    let (_, out, _) = cli(&["status", "--json", "--endpoints", &eps]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    let witness = v["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "witness").cloned())
        .expect("the witness is listed");
    assert!(
        witness["log_bytes"].as_u64().is_some_and(|b| b > 0),
        "{witness}"
    );

    let (code, _, err) = cli(&["maintenance", "on", "--endpoints", &eps]);
    assert_eq!(code, Some(0), "{err}");
    c.kill(active);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.active(), None, "no failover during maintenance");
    for id in [passive, 3] {
        let dir = c.dir.path().join(format!("data{id}"));
        let (code, out, err) = cli(&["maintenance", "off", "--local", dir.to_str().unwrap()]);
        assert_eq!(code, Some(0), "member {id}: {out}{err}");
    }
    c.wait_active("the passive after maintenance off", |id, _| id == passive);
    let mut client = Client::connect(c.endpoints(), ClientOptions::default()).expect("client");
    assert_eq!(client.get("k1").unwrap().as_deref(), Some(&b"v1"[..]));
    let (code, out, _) = cli(&["status", "--endpoints", &eps]);
    assert_eq!(code, Some(0));
    assert!(out.contains("last failover"), "{out}");
}

/// `maintenance on`, kill -9 of the active, its restart (it takes its
/// role back), `maintenance off` answered, and kill -9 of the active at
/// once, before the others can have learned that the off committed:
/// twenty times in a row, another member is active within 3 s, and every
/// acknowledged write is there. Deciding whether to stand from the applied
/// maintenance setting alone left no active for good, 5 times out of 5.
#[test]
fn the_active_killed_right_after_maintenance_off_is_replaced_every_time() {
    let mut c = Cluster::new();
    c.wait_active("an active in sync mode", |_, m| m == Mode::Sync);
    let mut client = Client::connect(c.endpoints(), ClientOptions::default()).expect("client");
    let mut keys = Vec::new();
    let mut worst = Duration::ZERO;
    for round in 0..20 {
        let active = c.wait_active("an active in sync mode", |_, m| m == Mode::Sync);
        client.maintenance(true).expect("maintenance on");
        c.kill(active);
        c.start(active);
        c.wait_active("the allowed member back", |id, _| id == active);
        let (more, _) = write_all(&mut client, &format!("r{round}-"), 3);
        keys.extend(more);
        client.maintenance(false).expect("maintenance off");
        c.kill(active);
        let killed = Instant::now();
        while c.active().is_none() {
            if killed.elapsed() > Duration::from_secs(3) {
                c.dump_logs();
                panic!("round {round}: no active 3 s after the kill");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        worst = worst.max(killed.elapsed());
        c.start(active);
    }
    eprintln!("an active again after at most {worst:?}");
    check_all(&mut client, &keys);
}

/// The three processes over mutual TLS: a failover, the command line with
/// a client certificate, and clients without one (plain TCP, or another
/// CA's certificate) get nothing.
#[test]
fn three_processes_over_mutual_tls() {
    let mut c = Cluster::with_tls();
    let active = c.wait_active("an active in sync mode over TLS", |_, m| m == Mode::Sync);
    let mut client = Client::connect(c.endpoints(), c.opts.clone()).expect("client");
    let (mut keys, _) = write_all(&mut client, "t", 30);
    c.kill(active);
    let (more, gap) = write_all(&mut client, "u", 30);
    keys.extend(more);
    eprintln!("kill -9 of the active over TLS: longest write {gap:?}");
    check_all(&mut client, &keys);

    let certs = c.dir.path().join("certs");
    let eps: Vec<String> = c.endpoints().iter().map(|e| e.to_string()).collect();
    let with_tls = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        for (flag, file) in [
            ("--tls-ca", "ca.pem"),
            ("--tls-cert", "client-admin.pem"),
            ("--tls-key", "client-admin.key"),
        ] {
            all.push(flag.into());
            all.push(certs.join(file).display().to_string());
        }
        all.push("--cluster-id".into());
        all.push("7".into());
        let out = Command::new(node_bin()).args(&all).output().expect("runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = with_tls(&["kv", "get", "t0", "--endpoints", &eps.join(",")]);
    assert_eq!((code, out.trim()), (Some(0), "v"));

    // Plain TCP: no answer, and an error that says why (asked of the data
    // member still running: the killed active may be either).
    let live = c.members[if active == 1 { 1 } else { 0 }]
        .api
        .expect("a data member");
    let plain = client::status_of(live, &ClientOptions::default());
    match plain {
        Err(e) => assert!(e.to_string().contains("speaks TLS"), "{e}"),
        Ok(s) => panic!("a plain client was answered: {s:?}"),
    }
    // The status table says why a member is shown down: the running one
    // speaks TLS, the killed one refuses connections.
    let (code, out, _) = cli(&["status", "--endpoints", &eps.join(",")]);
    assert_eq!(code, Some(1), "{out}");
    let down: Vec<&str> = out.lines().filter(|l| l.contains(" down ")).collect();
    assert_eq!(down.len(), 2, "{out}");
    assert!(down.iter().any(|l| l.contains("speaks TLS")), "{out}");
    assert!(
        down.iter().any(|l| l.contains("Connection refused")),
        "{out}"
    );
    // Another CA's client certificate: refused at the handshake.
    let other = c.dir.path().join("other");
    aoc_node::certs::generate(&other, 7, &[], &["admin".into()]).unwrap();
    let opts = ClientOptions {
        tls: Some(client::ClientTls {
            identity: aoc_core::transport::tls::TlsIdentity::from_files(
                &other.join("ca.pem"),
                &other.join("client-admin.pem"),
                &other.join("client-admin.key"),
            )
            .unwrap(),
            cluster_id: 7,
        }),
        deadline: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let refused = client::status_of(live, &opts);
    assert!(
        refused.is_err(),
        "another CA's client was answered: {refused:?}"
    );
}

/// Forced recovery after a double failure: the passive is stopped, the
/// active goes on in degraded mode with the witness, then the active and
/// the witness die. `recover` on the passive reports the loss (not
/// countable without the witness's disk; exactly the degraded-mode writes
/// with it) and changes nothing until told to; promoted, the passive runs
/// standalone with every write it held and none of the lost ones, and
/// refuses to start with its old peers.
#[test]
fn forced_recovery_reports_the_exact_loss_and_promotes_on_request() {
    let mut c = Cluster::new();
    let active = c.wait_active("an active in sync mode", |_, m| m == Mode::Sync);
    let passive = if active == 1 { 2 } else { 1 };
    let mut client = Client::connect(c.endpoints(), ClientOptions::default()).expect("client");
    let (kept, _) = write_all(&mut client, "synced/", 20);
    c.stop(passive);
    // The first write waits sync_timeout for the passive, then commits on
    // the active and the witness.
    let (lost, _) = write_all(&mut client, "degraded/", 15);
    c.wait_active("degraded mode", |id, m| id == active && m == Mode::Degraded);
    // Let the witness write down the commit index it learned (two ticks
    // of 50 ms after its last write; ten times that, for loaded machines).
    std::thread::sleep(Duration::from_secs(2));
    c.kill(active);
    c.kill(3);
    drop(client);

    let config = c.members[passive as usize - 1].config.clone();
    let config_s = config.to_str().expect("a UTF-8 path");
    let id = passive.to_string();
    let witness_dir = c.dir.path().join("data3");
    let witness_s = witness_dir.to_str().expect("a UTF-8 path");

    let (code, out, err) = cli(&["recover", "--config", config_s, "--promote", &id]);
    assert_eq!(code, Some(3), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("cannot be counted"), "{out}");
    assert!(err.contains("nothing changed"), "{err}");

    let with_witness = [
        "recover",
        "--config",
        config_s,
        "--promote",
        &id,
        "--witness-data-dir",
        witness_s,
    ];
    let (code, out, err) = cli(&with_witness);
    eprintln!("recover with the witness's log:\n{out}{err}");
    assert_eq!(code, Some(3), "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains(&format!(
            "{} client writes, {} of them known committed",
            lost.len(),
            lost.len()
        )),
        "{out}"
    );
    // Still an HA member: nothing changed.
    let (code, _, err) = cli(&["recover", "--config", config_s, "--promote", "9"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("give its own id"), "{err}");

    let mut accept = with_witness.to_vec();
    accept.push("--accept-data-loss");
    let (code, out, err) = cli(&accept);
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("is now standalone"), "{out}");

    // With its old peers it refuses to start, saying what to change.
    let (code, _, err) = cli(&["run", "--config", config_s]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("remove the [[peers]] entries"), "{err}");

    // A standalone configuration: the same file without its peers.
    let text = std::fs::read_to_string(&config).expect("the config");
    let (head, rest) = text.split_once("[[peers]]").expect("peers");
    let timeouts = &rest[rest.find("[timeouts]").expect("timeouts")..];
    std::fs::write(&config, format!("{head}{timeouts}")).expect("rewritten");
    c.start(passive);
    let api = c.members[passive as usize - 1].api.expect("a data member");
    let mut client = Client::connect(vec![api], ClientOptions::default()).expect("client");
    check_all(&mut client, &kept);
    for k in &lost {
        assert_eq!(
            client.get(k.clone()).expect("read"),
            None,
            "{k} was reported lost"
        );
    }
    client
        .put("after/recovery", "v")
        .expect("the standalone member serves");
}
