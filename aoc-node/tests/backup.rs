//! Backup and restore with the real processes on loopback: an HA cluster
//! (two data members and the witness) keeps taking writes from a client
//! thread while `aoc-node backup` copies its state; `aoc-node restore`
//! builds a standalone member from the file, which `aoc-node run` serves;
//! damaged files and occupied data directories are refused, changing
//! nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoc_core::client::{self, Client, ClientOptions};
use aoc_core::Mode;

mod common;

use common::{free_port, node_bin, witness_bin};

/// Member processes, killed when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a member and waits until it listens on the `http_addr` of its
/// configuration; if it exits first, fails with its log.
fn spawn(bin: &Path, config: &Path, log: &Path) -> Child {
    let text = std::fs::read_to_string(config).expect("config readable");
    let http: SocketAddr = text
        .lines()
        .find_map(|l| l.strip_prefix("http_addr = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("the test configurations name http_addr")
        .parse()
        .expect("an address");
    let log_file = std::fs::File::create(log).expect("a log file");
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("the member starts");
    if let Err(e) = common::wait_listening(&mut child, http) {
        let _ = child.kill();
        let _ = child.wait();
        eprintln!(
            "--- {}:\n{}",
            log.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        panic!("{}: {e}", config.display());
    }
    child
}

/// Cluster 7: members 1 and 2 (data) and 3 (witness); returns the
/// processes and the data members' client API addresses.
fn start_ha(dir: &Path) -> (Procs, Vec<SocketAddr>) {
    let ha: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let api: Vec<u16> = (0..2).map(|_| free_port()).collect();
    // Held as Procs from the first start, so a member that fails to start
    // does not leave the others running.
    let mut procs = Procs(Vec::new());
    for id in 1..=3usize {
        let role = |m: usize| if m == 3 { "witness" } else { "data" };
        let mut text = format!(
            "cluster_id = 7\nmember_id = {id}\nrole = \"{}\"\ndata_dir = \"data{id}\"\n\
             ha_addr = \"127.0.0.1:{}\"\nhttp_addr = \"127.0.0.1:{}\"\nallow_plain_tcp = true\n",
            role(id),
            ha[id - 1],
            free_port()
        );
        if id != 3 {
            text += &format!("api_addr = \"127.0.0.1:{}\"\n", api[id - 1]);
        }
        for p in (1..=3usize).filter(|p| *p != id) {
            text += &format!(
                "[[peers]]\nid = {p}\nrole = \"{}\"\nha_addr = \"127.0.0.1:{}\"\n",
                role(p),
                ha[p - 1]
            );
            if p != 3 {
                text += &format!("api_addr = \"127.0.0.1:{}\"\n", api[p - 1]);
            }
        }
        text += "[timeouts]\ntick_ms = 50\nsync_timeout_ms = 500\nswitchover_timeout_ms = 1500\n";
        let config = dir.join(format!("m{id}.toml"));
        std::fs::write(&config, text).expect("config written");
        let bin = if id == 3 { witness_bin() } else { node_bin() };
        procs
            .0
            .push(spawn(&bin, &config, &dir.join(format!("m{id}.log"))));
    }
    let eps = api
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().expect("an address"))
        .collect();
    (procs, eps)
}

/// A standalone member of cluster 8 whose data directory is `data_dir`
/// (relative to `dir`); returns its configuration and client address.
fn standalone_config(dir: &Path, name: &str, data_dir: &str) -> (PathBuf, SocketAddr) {
    let api = free_port();
    let text = format!(
        "cluster_id = 8\nmember_id = 1\nrole = \"data\"\ndata_dir = \"{data_dir}\"\n\
         ha_addr = \"127.0.0.1:{}\"\napi_addr = \"127.0.0.1:{api}\"\n\
         http_addr = \"127.0.0.1:{}\"\nallow_plain_tcp = true\n\
         [timeouts]\ntick_ms = 50\n",
        free_port(),
        free_port()
    );
    let config = dir.join(name);
    std::fs::write(&config, text).expect("config written");
    (
        config,
        format!("127.0.0.1:{api}").parse().expect("an address"),
    )
}

/// Waits (30 s at most: wide, a start takes about a second) until an
/// endpoint reports an active member in a mode `ok` accepts.
fn wait_active(eps: &[SocketAddr], what: &str, ok: impl Fn(Mode) -> bool, logs: &Path) {
    let start = Instant::now();
    loop {
        let found = eps.iter().any(|e| {
            client::status_of(*e, &ClientOptions::default())
                .is_ok_and(|s| s.status.active && ok(s.status.mode))
        });
        if found {
            return;
        }
        if start.elapsed() > Duration::from_secs(30) {
            for entry in std::fs::read_dir(logs).expect("listed").flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|x| x == "log") {
                    eprintln!(
                        "--- {}:\n{}",
                        path.display(),
                        std::fs::read_to_string(&path).unwrap_or_default()
                    );
                }
            }
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cli(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(node_bin()).args(args).output().expect("runs")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn key(i: u64) -> String {
    format!("w/{i:06}")
}

fn value(i: u64) -> String {
    format!("value-{i}")
}

/// Lists a directory's entries (none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_backup_taken_under_writes_restores_into_a_standalone_member() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path();
    let (procs, eps) = start_ha(dir);
    wait_active(&eps, "an active in sync mode", |m| m == Mode::Sync, dir);

    // One writer, sequential: the keys acknowledged are always a prefix
    // 0..acked, and a key is attempted only after the previous one was
    // acknowledged.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, eps) = (acked.clone(), stop.clone(), eps.clone());
        std::thread::spawn(move || {
            let mut c = Client::connect(eps, ClientOptions::default()).expect("client");
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                c.put(key(i), value(i))
                    .unwrap_or_else(|e| panic!("write {}: {e}", key(i)));
                i += 1;
                acked.store(i, Ordering::SeqCst);
            }
            i
        })
    };
    let start = Instant::now();
    while acked.load(Ordering::SeqCst) < 300 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the writer is stuck at {}",
            acked.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let eps_arg = eps
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let file = dir.join("state.aocbackup");
    // Every write acknowledged before the command starts must be in it.
    let before = acked.load(Ordering::SeqCst);
    let out = cli(&[
        "backup".as_ref(),
        "--out".as_ref(),
        file.as_os_str(),
        "--endpoints".as_ref(),
        eps_arg.as_ref(),
    ]);
    let after = acked.load(Ordering::SeqCst);
    assert!(
        out.status.success(),
        "backup: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let summary = text(&out.stdout);
    assert!(
        summary.starts_with("backup of cluster 7 member ")
            && summary.contains(" at index ")
            && summary.contains(" keys")
            && summary.trim().lines().count() == 1,
        "{summary}"
    );
    // The cluster kept serving: writes were acknowledged while the backup
    // command ran (it takes tens of ms at least: a process start, a
    // connection, a session, the transfer).
    assert!(
        after > before,
        "no write acknowledged during the backup ({before})"
    );

    // Never over an existing file.
    let again = cli(&[
        "backup".as_ref(),
        "--out".as_ref(),
        file.as_os_str(),
        "--endpoints".as_ref(),
        eps_arg.as_ref(),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );

    stop.store(true, Ordering::SeqCst);
    let attempted = writer.join().expect("the writer finished");
    drop(procs);

    // An HA configuration is no restore target.
    let ha = cli(&[
        "restore".as_ref(),
        "--from".as_ref(),
        file.as_os_str(),
        "--config".as_ref(),
        dir.join("m1.toml").as_os_str(),
    ]);
    assert_eq!(ha.status.code(), Some(2), "{}", text(&ha.stderr));
    assert!(
        text(&ha.stderr).contains("standalone"),
        "{}",
        text(&ha.stderr)
    );

    // A damaged copy (one byte flipped in the state) and a truncated one
    // are refused, and their target directory is never created.
    let bytes = std::fs::read(&file).expect("the backup");
    let mut damaged = bytes.clone();
    damaged[bytes.len() / 2] ^= 0x20;
    let damaged_file = dir.join("damaged.aocbackup");
    std::fs::write(&damaged_file, &damaged).expect("written");
    let truncated_file = dir.join("truncated.aocbackup");
    std::fs::write(&truncated_file, &bytes[..bytes.len() - 100]).expect("written");
    let (config2, _) = standalone_config(dir, "s2.toml", "restored2");
    for (bad, says) in [
        (&damaged_file, "checksum mismatch"),
        (&truncated_file, "truncated"),
    ] {
        let out = cli(&[
            "restore".as_ref(),
            "--from".as_ref(),
            bad.as_os_str(),
            "--config".as_ref(),
            config2.as_os_str(),
        ]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{says}: {err}");
        assert!(
            err.contains(says) && err.contains(&bad.display().to_string()),
            "{says}: {err}"
        );
        assert!(!dir.join("restored2").exists(), "{says}: target created");
        assert!(
            !entries(dir).iter().any(|e| e.contains("restoring")),
            "{says}: staging left"
        );
    }

    // The intact file restores.
    let (config, api) = standalone_config(dir, "s1.toml", "restored");
    let restore = || {
        cli(&[
            "restore".as_ref(),
            "--from".as_ref(),
            file.as_os_str(),
            "--config".as_ref(),
            config.as_os_str(),
        ])
    };
    let out = restore();
    assert!(
        out.status.success(),
        "restore: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let said = text(&out.stdout);
    assert!(
        said.starts_with("restored ") && said.trim().lines().count() == 1,
        "{said}"
    );
    let noted = text(&out.stderr);
    assert!(noted.contains("backup comes from cluster 7"), "{noted}");
    // Not twice into the same directory: refused, naming it, unchanged.
    let listed = entries(&dir.join("restored"));
    let out = restore();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("already holds data")
            && err.contains(&dir.join("restored").display().to_string()),
        "{err}"
    );
    assert_eq!(entries(&dir.join("restored")), listed);

    // The restored member serves: every write acknowledged before the
    // backup started, with its value, and nothing that was never written.
    let _member = Procs(vec![spawn(&node_bin(), &config, &dir.join("s1.log"))]);
    wait_active(
        &[api],
        "the restored member",
        |m| m == Mode::Standalone,
        dir,
    );
    let mut c = Client::connect(vec![api], ClientOptions::default()).expect("client");
    let pairs: BTreeMap<String, String> = c
        .scan("")
        .expect("scan")
        .into_iter()
        .map(|(k, v)| (text(&k), text(&v)))
        .collect();
    for i in 0..before {
        assert_eq!(
            pairs.get(&key(i)).map(String::as_str),
            Some(value(i).as_str()),
            "acknowledged before the backup, missing from the restore"
        );
    }
    for (k, v) in &pairs {
        let i: u64 = k
            .strip_prefix("w/")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{k}: never written"));
        assert!(i < attempted, "{k}: never written");
        assert_eq!(v, &value(i), "{k}");
    }
    // Later writes were (some of them) in the copy too: it was taken while
    // the writer ran, after `before`. Only reported: how many is timing.
    eprintln!(
        "restored {} keys; {before} acknowledged before the backup, {attempted} attempted",
        pairs.len()
    );
    // And it takes writes of its own.
    c.put("after/restore", "yes")
        .expect("a write on the restored member");
    assert_eq!(
        c.get("after/restore").expect("read").as_deref(),
        Some(&b"yes"[..])
    );
}
