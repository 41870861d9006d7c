//! A local three-process HA cluster for the measurements of `aoc-bench`:
//! two `aoc-node` data members (ids 1 and 2) and one `aoc-witness` (id 3)
//! on loopback, with their configuration files, data directories and logs
//! in a temporary directory, fsync on (the product always syncs) and the
//! default `[timeouts]` (none are written).
//!
//! Every process started here is killed (SIGKILL) when the [`LocalCluster`]
//! is dropped, on every path out of a measurement, errors included; the
//! temporary directory is removed after that.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aoc_core::client::{self, ClientOptions, MemberStatus};
use aoc_core::Mode;

/// The witness's member id; the data members are 1 and 2.
pub const WITNESS: u64 = 3;

/// Lines of a member's log quoted in an error about it.
const LOG_TAIL_LINES: usize = 15;

/// How many times a cluster start is tried again when a member could not
/// bind a port picked for it (another program took it meanwhile).
const START_ATTEMPTS: usize = 3;

/// The two binaries a cluster runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `aoc-node` (the data members).
    pub node: PathBuf,
    /// `aoc-witness`.
    pub witness: PathBuf,
}

impl Binaries {
    /// Finds `aoc-node` and `aoc-witness` in `bin_dir`, or, without it,
    /// next to the running executable (`target/release` or `target/debug`).
    /// A missing binary is an error that says how to build it.
    pub fn locate(bin_dir: Option<&Path>) -> Result<Binaries, String> {
        let (dir, given) = match bin_dir {
            Some(d) => (d.to_path_buf(), true),
            None => {
                let exe = std::env::current_exe()
                    .map_err(|e| format!("cannot find the running executable: {e}"))?;
                let dir = exe
                    .parent()
                    .map(Path::to_path_buf)
                    .ok_or_else(|| format!("{}: the executable has no directory", exe.display()))?;
                (dir, false)
            }
        };
        let mut missing = Vec::new();
        for name in ["aoc-node", "aoc-witness"] {
            if !dir.join(name).is_file() {
                missing.push(name);
            }
        }
        if !missing.is_empty() {
            let release = if dir.ends_with("debug") {
                ""
            } else {
                " --release"
            };
            let whence = if given {
                "--bin-dir"
            } else {
                "the directory of aoc-bench"
            };
            return Err(format!(
                "{} not found in {} ({whence}); build with `cargo build{release} -p aoc-node -p aoc-witness -p benches`, \
                 or point --bin-dir at the directory that holds them",
                missing.join(" and "),
                dir.display()
            ));
        }
        Ok(Binaries {
            node: dir.join("aoc-node"),
            witness: dir.join("aoc-witness"),
        })
    }
}

/// One member of the local cluster.
#[derive(Debug)]
struct Member {
    id: u64,
    config: PathBuf,
    data_dir: PathBuf,
    /// Its client API (data members only).
    api: Option<SocketAddr>,
    log: PathBuf,
    child: Option<Child>,
}

/// The three processes of a local HA cluster. Dropping it kills them and
/// removes the temporary directory.
pub struct LocalCluster {
    bins: Binaries,
    members: Vec<Member>,
    /// Removed on drop, after the processes are gone (fields drop after
    /// [`Drop::drop`] ran).
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("dir", &self.dir.path())
            .field("members", &self.members)
            .finish()
    }
}

/// Why waiting on the cluster failed.
enum WaitError {
    /// A member's process exited: (member id, what it said).
    Exited(u64, String),
    /// Anything else, said in full.
    Other(String),
}

impl LocalCluster {
    /// Starts the three processes in a new temporary directory under
    /// `parent` (the system's temporary directory when `None`) and waits
    /// up to `timeout` for an active in sync mode. Ports are picked free on
    /// 127.0.0.1; a start that loses one of them to another program is
    /// tried again with new ones.
    pub fn start(
        bins: &Binaries,
        parent: Option<&Path>,
        timeout: Duration,
    ) -> Result<LocalCluster, String> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut cluster = LocalCluster::create(bins, parent)?;
            for id in 1..=WITNESS {
                cluster.spawn(id)?;
            }
            match cluster.wait_inner("an active in sync mode", timeout, |c| {
                c.active().filter(|(_, m)| m.status.mode == Mode::Sync)
            }) {
                Ok(_) => return Ok(cluster),
                Err(WaitError::Exited(id, text))
                    if attempt < START_ATTEMPTS && text.contains("in use") =>
                {
                    eprintln!("aoc-bench: member {id} lost its port to another program; starting again with new ports");
                }
                Err(WaitError::Exited(id, text)) => {
                    return Err(format!(
                        "while waiting for an active in sync mode, member {id} exited: {text}"
                    ))
                }
                Err(WaitError::Other(text)) => return Err(text),
            }
        }
    }

    /// Writes the three configuration files with fresh ports.
    fn create(bins: &Binaries, parent: Option<&Path>) -> Result<LocalCluster, String> {
        let dir = match parent {
            Some(p) => tempfile::Builder::new().prefix("aoc-bench-").tempdir_in(p),
            None => tempfile::Builder::new().prefix("aoc-bench-").tempdir(),
        }
        .map_err(|e| {
            format!(
                "cannot create a temporary directory in {}: {e}",
                parent
                    .map_or_else(std::env::temp_dir, Path::to_path_buf)
                    .display()
            )
        })?;
        // Hold every listener until all ports are picked, so that no two
        // are the same.
        let listeners = (0..8)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot pick a free port on 127.0.0.1: {e}"))?;
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot pick a free port on 127.0.0.1: {e}"))?;
        drop(listeners);
        let ha = |id: u64| format!("127.0.0.1:{}", ports[id as usize - 1]);
        let api = |id: u64| format!("127.0.0.1:{}", ports[id as usize + 2]);
        let http = |id: u64| format!("127.0.0.1:{}", ports[id as usize + 4]);
        let role = |id: u64| if id == WITNESS { "witness" } else { "data" };
        let mut members = Vec::new();
        for id in 1..=WITNESS {
            let data_dir = dir.path().join(format!("{}{id}", role(id)));
            let mut text = String::new();
            let _ = writeln!(
                text,
                "cluster_id = 1\nmember_id = {id}\nrole = \"{}\"\ndata_dir = \"{}\"\n\
                 ha_addr = \"{}\"\nhttp_addr = \"{}\"\nallow_plain_tcp = true",
                role(id),
                data_dir.display(),
                ha(id),
                http(id)
            );
            if id != WITNESS {
                let _ = writeln!(text, "api_addr = \"{}\"", api(id));
            }
            for p in (1..=WITNESS).filter(|&p| p != id) {
                let _ = writeln!(
                    text,
                    "\n[[peers]]\nid = {p}\nrole = \"{}\"\nha_addr = \"{}\"",
                    role(p),
                    ha(p)
                );
                if p != WITNESS {
                    let _ = writeln!(text, "api_addr = \"{}\"", api(p));
                }
            }
            // No [timeouts]: the defaults.
            let config = dir.path().join(format!("{}{id}.toml", role(id)));
            fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
            let api_addr = if id == WITNESS {
                None
            } else {
                Some(
                    api(id)
                        .parse()
                        .map_err(|e| format!("client address {}: {e}", api(id)))?,
                )
            };
            members.push(Member {
                id,
                config,
                data_dir,
                api: api_addr,
                log: dir.path().join(format!("{}{id}.log", role(id))),
                child: None,
            });
        }
        Ok(LocalCluster {
            bins: bins.clone(),
            members,
            dir,
        })
    }

    /// Keeps the temporary directory (configuration files, data
    /// directories, logs) after the cluster is dropped; returns its path.
    pub fn keep_dir(&mut self) -> &Path {
        self.dir.disable_cleanup(true);
        self.dir.path()
    }

    fn member(&self, id: u64) -> Result<&Member, String> {
        self.members
            .iter()
            .find(|m| m.id == id)
            .ok_or_else(|| format!("no member {id} in the local cluster"))
    }

    fn member_mut(&mut self, id: u64) -> Result<&mut Member, String> {
        self.members
            .iter_mut()
            .find(|m| m.id == id)
            .ok_or_else(|| format!("no member {id} in the local cluster"))
    }

    /// Starts member `id`'s process (again), its stderr appended to its
    /// log in the temporary directory. `RUST_LOG` is passed on when set,
    /// `warn` otherwise.
    pub fn spawn(&mut self, id: u64) -> Result<(), String> {
        let bin = if id == WITNESS {
            self.bins.witness.clone()
        } else {
            self.bins.node.clone()
        };
        let m = self.member_mut(id)?;
        if m.child.is_some() {
            return Err(format!("member {id} is already running"));
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| format!("{}: {e}", m.log.display()))?;
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        let child = Command::new(&bin)
            .args(["run", "--config"])
            .arg(&m.config)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start member {id} ({}): {e}", bin.display()))?;
        m.child = Some(child);
        Ok(())
    }

    /// kill -9 of member `id`, then waits for its exit. Nothing happens if
    /// it is not running.
    pub fn kill(&mut self, id: u64) {
        if let Ok(m) = self.member_mut(id) {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Stops member `id` with SIGTERM (an active in sync mode hands over
    /// first) and waits up to 10 s for it to exit; kill -9 after that.
    pub fn stop(&mut self, id: u64) {
        let Ok(m) = self.member_mut(id) else { return };
        let Some(mut c) = m.child.take() else { return };
        let sent = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if sent {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// The process id of member `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.member(id).ok()?.child.as_ref().map(Child::id)
    }

    /// Member `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> Result<&Path, String> {
        Ok(&self.member(id)?.data_dir)
    }

    /// The client API addresses of the data members.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.members.iter().filter_map(|m| m.api).collect()
    }

    /// Data member `id`'s status through its client API.
    pub fn status(&self, id: u64) -> Result<MemberStatus, String> {
        let m = self.member(id)?;
        let api = m
            .api
            .ok_or_else(|| format!("member {id} is the witness: it has no client API"))?;
        let opts = ClientOptions {
            attempt_timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        };
        client::status_of(api, &opts).map_err(|e| format!("status of member {id}: {e}"))
    }

    /// The data member that reports itself active, with its status.
    pub fn active(&self) -> Option<(u64, MemberStatus)> {
        [1, 2].into_iter().find_map(|id| {
            self.status(id)
                .ok()
                .filter(|s| s.status.active)
                .map(|s| (id, s))
        })
    }

    /// Calls `check` every 20 ms until it gives a value or `timeout`
    /// passes. Fails early when a member that should run has exited; the
    /// error quotes the end of every member's log.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        check: impl FnMut(&LocalCluster) -> Option<T>,
    ) -> Result<T, String> {
        self.wait_inner(what, timeout, check).map_err(|e| match e {
            WaitError::Exited(id, text) => {
                format!("while waiting for {what}, member {id} exited: {text}")
            }
            WaitError::Other(text) => text,
        })
    }

    fn wait_inner<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&LocalCluster) -> Option<T>,
    ) -> Result<T, WaitError> {
        let start = Instant::now();
        loop {
            if let Some(v) = check(self) {
                return Ok(v);
            }
            for i in 0..self.members.len() {
                let id = self.members[i].id;
                let exited = match self.members[i].child.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => Some(status.to_string()),
                    Some(Err(e)) => Some(format!("cannot wait for it: {e}")),
                    Some(Ok(None)) | None => None,
                };
                if let Some(status) = exited {
                    self.members[i].child = None;
                    return Err(WaitError::Exited(
                        id,
                        format!("{status}; its log ends:\n{}", self.log_tail(id)),
                    ));
                }
            }
            if start.elapsed() > timeout {
                let mut text = format!("timed out after {timeout:?} waiting for {what}");
                for m in &self.members {
                    let _ = write!(text, "\nmember {} log:\n{}", m.id, self.log_tail(m.id));
                }
                return Err(WaitError::Other(text));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of member `id`'s log.
    pub fn log_tail(&self, id: u64) -> String {
        let Ok(m) = self.member(id) else {
            return String::new();
        };
        match fs::read_to_string(&m.log) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(LOG_TAIL_LINES);
                if lines.is_empty() {
                    "  (empty)".into()
                } else {
                    lines[from..]
                        .iter()
                        .map(|l| format!("  {l}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            }
            Err(e) => format!("  ({}: {e})", m.log.display()),
        }
    }

    /// The CPU time member `id` has used since it started (see
    /// [`process_cpu_ms`]).
    pub fn cpu_ms(&self, id: u64) -> Result<u64, String> {
        let pid = self
            .pid(id)
            .ok_or_else(|| format!("member {id} is not running"))?;
        process_cpu_ms(pid)
    }

    /// Member `id`'s memory from `/proc/<pid>/status`: (VmRSS, VmHWM) in
    /// KiB: resident now, and the peak.
    pub fn memory_kb(&self, id: u64) -> Result<(u64, u64), String> {
        let pid = self
            .pid(id)
            .ok_or_else(|| format!("member {id} is not running"))?;
        let path = format!("/proc/{pid}/status");
        let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        let field = |name: &str| -> Result<u64, String> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("{path}: no {name} line"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

/// The CPU time (user plus system, all threads) process `pid` has used
/// since it started, in milliseconds, from `/proc/<pid>/stat`. Its times
/// are in clock ticks of `USER_HZ`, which Linux fixes at 100 per second
/// for user space on every architecture it reports to (x86, arm64), so a
/// figure has a 10 ms grain.
pub fn process_cpu_ms(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // the fields after its closing parenthesis start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |n: usize| -> Result<u64, String> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| format!("{path}: field {n} is not a tick count"))
    };
    Ok((ticks(14)? + ticks(15)?) * 10)
}

/// The size of a directory tree: (bytes of its regular files, as their
/// lengths add up; bytes allocated to them on disk). Sockets and other
/// special files are skipped; symbolic links are not followed.
pub fn dir_size(dir: &Path) -> Result<(u64, u64), String> {
    let mut len = 0;
    let mut alloc = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", d.display()))?;
            let path = entry.path();
            let meta =
                fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let kind = meta.file_type();
            if kind.is_dir() {
                todo.push(path);
            } else if kind.is_file() {
                len += meta.len();
                alloc += meta.blocks() * 512;
            } else if kind.is_socket() || kind.is_symlink() || kind.is_fifo() {
                continue;
            }
        }
    }
    Ok((len, alloc))
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_are_named_with_the_build_command() {
        let dir = tempfile::tempdir().unwrap();
        let err = Binaries::locate(Some(dir.path())).unwrap_err();
        assert!(err.contains("aoc-node and aoc-witness not found"), "{err}");
        assert!(err.contains("cargo build --release -p aoc-node"), "{err}");
        fs::write(dir.path().join("aoc-node"), "").unwrap();
        let err = Binaries::locate(Some(dir.path())).unwrap_err();
        assert!(err.starts_with("aoc-witness not found"), "{err}");
    }

    #[test]
    fn directory_sizes_count_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        fs::write(dir.path().join("sub/b"), [0u8; 23]).unwrap();
        assert_eq!(dir_size(dir.path()).unwrap().0, 123);
        assert!(dir_size(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn process_cpu_time_grows_with_work() {
        let me = std::process::id();
        let before = process_cpu_ms(me).unwrap();
        // Spin until the process has used 50 ms more (10 s at most: the
        // assertion is on the count, not on the time it takes).
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while process_cpu_ms(me).unwrap() < before + 50
            && start.elapsed() < std::time::Duration::from_secs(10)
        {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(process_cpu_ms(me).unwrap() >= before + 50);
        let err = process_cpu_ms(u32::MAX).unwrap_err();
        assert!(err.contains(&format!("/proc/{}/stat", u32::MAX)), "{err}");
    }
}
