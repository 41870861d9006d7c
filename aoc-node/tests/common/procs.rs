//! Three real processes (data members 1 and 2, witness 3) on loopback,
//! with data directories the test chooses (a small file system, say) and
//! extra configuration per member.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aoc_core::client::{self, ClientOptions};
use aoc_core::Mode;

use super::{free_port, node_bin, wait_listening, witness_bin};

pub struct Proc {
    pub id: u64,
    pub config: PathBuf,
    pub api: Option<SocketAddr>,
    pub http: SocketAddr,
    pub child: Option<Child>,
    pub log: PathBuf,
}

pub struct Procs {
    pub dir: tempfile::TempDir,
    pub members: Vec<Proc>,
}

impl Procs {
    /// Writes the three configuration files: member `id`'s data directory
    /// is `data_dirs[id - 1]`, and `extra(id)` is appended to its file.
    pub fn new(data_dirs: [&Path; 3], extra: impl Fn(u64) -> String) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ha: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let api: Vec<u16> = (0..2).map(|_| free_port()).collect();
        let http: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let role = |id: u64| if id == 3 { "witness" } else { "data" };
        let mut members = Vec::new();
        for id in 1..=3u64 {
            let i = id as usize - 1;
            let mut text = format!(
                "cluster_id = 9\nmember_id = {id}\nrole = \"{}\"\ndata_dir = \"{}\"\n\
                 ha_addr = \"127.0.0.1:{}\"\nhttp_addr = \"127.0.0.1:{}\"\nallow_plain_tcp = true\n",
                role(id),
                data_dirs[i].display(),
                ha[i],
                http[i],
            );
            if id != 3 {
                text += &format!("api_addr = \"127.0.0.1:{}\"\n", api[i]);
            }
            text += &extra(id);
            for p in (1..=3u64).filter(|p| *p != id) {
                let j = p as usize - 1;
                text += &format!(
                    "[[peers]]\nid = {p}\nrole = \"{}\"\nha_addr = \"127.0.0.1:{}\"\n",
                    role(p),
                    ha[j]
                );
                if p != 3 {
                    text += &format!("api_addr = \"127.0.0.1:{}\"\n", api[j]);
                }
            }
            text +=
                "[timeouts]\ntick_ms = 50\nsync_timeout_ms = 500\nswitchover_timeout_ms = 1500\n";
            let config = dir.path().join(format!("m{id}.toml"));
            std::fs::write(&config, text).expect("config written");
            members.push(Proc {
                id,
                config,
                api: (id != 3).then(|| format!("127.0.0.1:{}", api[i]).parse().expect("addr")),
                http: format!("127.0.0.1:{}", http[i]).parse().expect("addr"),
                child: None,
                log: dir.path().join(format!("m{id}.log")),
            });
        }
        Procs { dir, members }
    }

    pub fn start(&mut self, id: u64) {
        let m = &mut self.members[id as usize - 1];
        let bin = if id == 3 { witness_bin() } else { node_bin() };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("log file");
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
        if let Err(e) = wait_listening(child, http) {
            self.dump_logs();
            panic!("member {id}: {e}");
        }
    }

    pub fn start_all(&mut self) {
        for id in 1..=3 {
            self.start(id);
        }
    }

    pub fn dump_logs(&self) {
        for m in &self.members {
            eprintln!(
                "--- member {} log:\n{}",
                m.id,
                std::fs::read_to_string(&m.log).unwrap_or_default()
            );
        }
    }

    pub fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(&self.members[id as usize - 1].log).unwrap_or_default()
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.members[id as usize - 1].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (a `kill` option: "TERM", "STOP", "CONT").
    pub fn signal(&self, id: u64, signal: &str) {
        if let Some(c) = &self.members[id as usize - 1].child {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// The member's exit status, once it has exited (it is then reaped).
    pub fn exited(&mut self, id: u64) -> Option<ExitStatus> {
        let m = &mut self.members[id as usize - 1];
        let status = m.child.as_mut()?.try_wait().ok().flatten()?;
        m.child = None;
        Some(status)
    }

    /// Waits up to `timeout` for the member to exit.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(s) = self.exited(id) {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.members.iter().filter_map(|m| m.api).collect()
    }

    pub fn active(&self) -> Option<(u64, Mode)> {
        self.endpoints().into_iter().find_map(|e| {
            client::status_of(e, &ClientOptions::default())
                .ok()
                .filter(|s| s.status.active)
                .map(|s| (s.status.id, s.status.mode))
        })
    }

    pub fn wait_active(&self, what: &str, f: impl Fn(u64, Mode) -> bool) -> u64 {
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
}

impl Drop for Procs {
    fn drop(&mut self) {
        for id in 1..=3 {
            self.kill(id);
        }
    }
}

/// A tmpfs of `mb` MiB mounted on a fresh directory, unmounted when
/// dropped; `None` (the caller skips, saying so) where mounting is not
/// allowed (not root, or no mount namespace rights).
pub struct SmallDisk {
    pub path: PathBuf,
}

impl SmallDisk {
    pub fn mount(root: &Path, name: &str, mb: u64) -> Option<Self> {
        let path = root.join(name);
        std::fs::create_dir_all(&path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(&path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { path })
    }

    /// Grows (or shrinks) the file system to `mb` MiB.
    pub fn resize(&self, mb: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={mb}m")])
            .arg(&self.path)
            .status()
            .expect("mount runs");
        assert!(status.success(), "remount {}", self.path.display());
    }

    /// Bytes free.
    pub fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.path)
            .output()
            .expect("df runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}
