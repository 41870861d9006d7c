//! The measurements `aoc-bench` makes on a local three-process HA cluster
//! it starts itself ([`crate::cluster`]): failover, catch-up and
//! footprint. Each returns the one JSON line the tool prints.
//!
//! Keys and values: every write puts a key of its own
//! (`PREFIX/CLIENT/NUMBER`, the number zero-padded to 10 digits) and a
//! value that starts with `CLIENT/NUMBER/`, padded with `x` to the
//! requested size (never shorter than that tag), so a value read back
//! tells which write it came from.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use aoc_core::client::{Client, ClientOptions};
use aoc_core::Mode;

use crate::cluster::{dir_size, Binaries, LocalCluster, WITNESS};

/// How long a fresh cluster may take to elect an active in sync mode.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest answer a read-back scan is sized for (the server refuses
/// answers over 16 MiB by default).
const SCAN_BUDGET_BYTES: usize = 8 << 20;

/// Where the cluster runs: the binaries and the parent of its temporary
/// directory.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// The directory holding `aoc-node` and `aoc-witness` (default: next
    /// to `aoc-bench`).
    pub bin_dir: Option<PathBuf>,
    /// The parent of the temporary directory (default: the system's
    /// temporary directory). Put it on the file system to measure: on
    /// tmpfs an fsync costs nothing.
    pub dir: Option<PathBuf>,
    /// Keep the temporary directory (configuration files, data
    /// directories, member logs) instead of removing it.
    pub keep_dir: bool,
}

impl Setup {
    /// Finds the binaries and starts a cluster whose active is in sync mode.
    fn start(&self) -> Result<LocalCluster, String> {
        let bins = Binaries::locate(self.bin_dir.as_deref())?;
        let t = Instant::now();
        let mut cluster = LocalCluster::start(&bins, self.dir.as_deref(), START_TIMEOUT)?;
        if self.keep_dir {
            eprintln!("aoc-bench: keeping {}", cluster.keep_dir().display());
        }
        eprintln!(
            "aoc-bench: cluster up in sync mode after {:.1} s",
            t.elapsed().as_secs_f64()
        );
        Ok(cluster)
    }
}

/// Which member `aoc-bench failover` kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Victim {
    /// The active (the passive must take over).
    Active,
    /// The passive (the active must degrade after `sync_timeout`).
    Passive,
}

impl Victim {
    fn name(self) -> &'static str {
        match self {
            Victim::Active => "active",
            Victim::Passive => "passive",
        }
    }
}

/// Options of [`failover`].
#[derive(Debug, Clone)]
pub struct FailoverArgs {
    /// The member to kill -9.
    pub kill: Victim,
    /// How long the clients write; the kill comes after a third of it.
    pub seconds: u64,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Concurrent clients, each with its own session.
    pub clients: usize,
    /// The clients' longest pause between retries
    /// ([`ClientOptions::max_backoff`]).
    pub max_backoff: Duration,
}

/// The key of write `i` of client `c` under `prefix`.
pub fn key_of(prefix: &str, c: usize, i: u64) -> String {
    format!("{prefix}/{c}/{i:010}")
}

/// The value of write `i` of client `c`: its tag `c/i/` padded with `x`
/// to `bytes`.
pub fn value_of(c: usize, i: u64, bytes: usize) -> Vec<u8> {
    let mut v = format!("{c}/{i}/").into_bytes();
    if v.len() < bytes {
        v.resize(bytes, b'x');
    }
    v
}

/// The client options of the measurements.
fn client_options(max_backoff: Duration) -> ClientOptions {
    ClientOptions {
        max_backoff,
        ..ClientOptions::default()
    }
}

/// What one failover client did: (write number, acknowledged at, from the
/// run's start) for every acknowledged write, the failed writes and the
/// last failure.
type ClientRun = (Vec<(u64, Duration)>, u64, Option<String>);

/// The longest gap between successive acknowledgements (sorted times
/// since the start) that ends after `kill_at`, and the time from `kill_at`
/// to the first acknowledgement after it (`None` when there is none; the
/// gap then runs to `end`).
pub fn write_gap(
    acks: &[Duration],
    kill_at: Duration,
    end: Duration,
) -> (Duration, Option<Duration>) {
    let first_after = acks.partition_point(|&t| t <= kill_at);
    let before = if first_after == 0 {
        kill_at
    } else {
        acks[first_after - 1]
    };
    if first_after == acks.len() {
        return (end.saturating_sub(before), None);
    }
    let mut gap = acks[first_after].saturating_sub(before);
    for w in acks[first_after..].windows(2) {
        gap = gap.max(w[1].saturating_sub(w[0]));
    }
    (gap, Some(acks[first_after].saturating_sub(kill_at)))
}

/// `aoc-bench failover`: closed-loop writes while the active (or the
/// passive) is killed with SIGKILL; then the killed member is restarted,
/// the cluster settles (sync mode, the restarted member applied the
/// commit index) and every acknowledged write is read back through the
/// client.
pub fn failover(setup: &Setup, args: &FailoverArgs) -> Result<String, String> {
    let seconds = args.seconds.max(3);
    let clients = args.clients.max(1);
    let mut cluster = setup.start()?;
    let (active, _) = cluster
        .active()
        .ok_or("the active vanished right after the start")?;
    let passive = 3 - active;
    let victim = match args.kill {
        Victim::Active => active,
        Victim::Passive => passive,
    };
    let eps = cluster.endpoints();
    let opts = client_options(args.max_backoff);
    let value_bytes = args.value_bytes;
    let barrier = Barrier::new(clients + 1);
    let started = std::sync::OnceLock::<Instant>::new();
    let run = Duration::from_secs(seconds);
    let kill_at = run / 3;

    let results: Vec<Result<ClientRun, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (eps, opts, barrier, started) = (eps.clone(), opts.clone(), &barrier, &started);
                s.spawn(move || -> Result<ClientRun, String> {
                    let client = Client::connect(eps, opts);
                    barrier.wait();
                    let mut client = client.map_err(|e| format!("client {c}: connect: {e}"))?;
                    let start = *started.get().ok_or("no start time")?;
                    let (mut acks, mut failed, mut last_err) = (Vec::new(), 0, None);
                    let mut i = 0u64;
                    while start.elapsed() < run {
                        let key = key_of("failover", c, i);
                        match client.put(key, value_of(c, i, value_bytes)) {
                            Ok(_) => acks.push((i, start.elapsed())),
                            Err(e) => {
                                failed += 1;
                                last_err = Some(e.to_string());
                            }
                        }
                        i += 1;
                    }
                    Ok((acks, failed, last_err))
                })
            })
            .collect();
        let _ = started.set(Instant::now());
        barrier.wait();
        if let Some(start) = started.get() {
            std::thread::sleep(kill_at.saturating_sub(start.elapsed()));
        }
        eprintln!(
            "aoc-bench: kill -9 of member {victim} (the {})",
            args.kill.name()
        );
        cluster.kill(victim);
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".into()))
            })
            .collect()
    });
    let end = started.get().map(Instant::elapsed).unwrap_or_default();

    let mut runs = Vec::new();
    for r in results {
        runs.push(r?);
    }
    let mut times: Vec<Duration> = runs.iter().flat_map(|r| r.0.iter().map(|a| a.1)).collect();
    times.sort_unstable();
    let (gap, resume) = write_gap(&times, kill_at, end);
    let failed: u64 = runs.iter().map(|r| r.1).sum();
    if let Some(e) = runs.iter().find_map(|r| r.2.clone()) {
        eprintln!("aoc-bench: {failed} writes failed; one failure: {e}");
    }

    // Restart the killed member and let the cluster settle.
    cluster.spawn(victim)?;
    let settled = cluster.wait_for(
        "sync mode with the restarted member caught up",
        Duration::from_secs(120),
        |c| {
            let (a, s) = c.active()?;
            let other = c.status(3 - a).ok()?;
            (s.status.mode == Mode::Sync && other.status.applied >= s.status.commit).then_some(s)
        },
    )?;
    // How long after its last contact with the killed active the new
    // active took the role, as it reports it.
    let took_over = match args.kill {
        Victim::Active => settled
            .status
            .last_failover_ms
            .map_or_else(|| "null".to_string(), |(_, after)| after.to_string()),
        Victim::Passive => "null".to_string(),
    };

    // Read every acknowledged write back.
    let mut reader = Client::connect(eps, opts).map_err(|e| format!("read-back client: {e}"))?;
    let mut lost = 0u64;
    let mut acked = 0u64;
    for (c, r) in runs.iter().enumerate() {
        let numbers: Vec<u64> = r.0.iter().map(|a| a.0).collect();
        acked += numbers.len() as u64;
        lost += count_lost(&mut reader, "failover", c, &numbers, value_bytes)?;
    }
    if acked == 0 {
        return Err("no write was acknowledged".into());
    }
    Ok(format!(
        "{{\"kill\":\"{}\",\"write_gap_ms\":{},\"lost_acked_writes\":{lost},\"acked_writes\":{acked},\
         \"resumed_after_ms\":{},\"failed_writes\":{failed},\"clients\":{clients},\"value_bytes\":{value_bytes},\
         \"max_backoff_ms\":{},\"took_over_after_contact_ms\":{took_over}}}",
        args.kill.name(),
        gap.as_millis(),
        resume.map_or_else(|| "null".to_string(), |d| d.as_millis().to_string()),
        args.max_backoff.as_millis(),
    ))
}

/// How many of the writes `numbers` (sorted) of client `c` under `prefix`
/// are missing or hold another value, read back with linearizable scans
/// of as many keys as fit [`SCAN_BUDGET_BYTES`].
fn count_lost(
    reader: &mut Client,
    prefix: &str,
    c: usize,
    numbers: &[u64],
    value_bytes: usize,
) -> Result<u64, String> {
    // Scan by key prefix: dropping the last `digits` digits of the number
    // gathers 10^digits consecutive writes.
    let per_key = value_bytes + 64;
    let mut digits = 0u32;
    while digits < 6 && 10usize.pow(digits + 1) * per_key <= SCAN_BUDGET_BYTES {
        digits += 1;
    }
    let span = 10u64.pow(digits);
    let mut lost = 0;
    let mut i = 0;
    while i < numbers.len() {
        let group = numbers[i] / span;
        let j = i + numbers[i..].partition_point(|&n| n / span == group);
        let first_key = key_of(prefix, c, numbers[i]);
        let scan_prefix = &first_key[..first_key.len() - digits as usize];
        let found: HashMap<Vec<u8>, Vec<u8>> = reader
            .scan(scan_prefix)
            .map_err(|e| format!("read back {scan_prefix}*: {e}"))?
            .into_iter()
            .collect();
        for &n in &numbers[i..j] {
            let key = key_of(prefix, c, n).into_bytes();
            if found.get(&key) != Some(&value_of(c, n, value_bytes)) {
                lost += 1;
            }
        }
        i = j;
    }
    Ok(lost)
}

/// Writes `total` puts from `clients` closed-loop clients (keys
/// `prefix/0/NUMBER`, one counter shared by all), calling `tick` about once
/// a second from the calling thread meanwhile. Returns the failed writes;
/// a write is tried up to 3 times before it counts as failed.
fn write_n(
    eps: &[SocketAddr],
    prefix: &str,
    total: u64,
    clients: usize,
    value_bytes: usize,
    mut tick: impl FnMut(u64),
) -> Result<u64, String> {
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients.max(1))
            .map(|c| {
                let (next, done, failed) = (&next, &done, &failed);
                let eps = eps.to_vec();
                s.spawn(move || -> Result<(), String> {
                    let mut client = Client::connect(eps, ClientOptions::default())
                        .map_err(|e| format!("client {c}: connect: {e}"))?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return Ok(());
                        }
                        let ok = (0..3).any(|_| {
                            client
                                .put(key_of(prefix, 0, i), value_of(0, i, value_bytes))
                                .is_ok()
                        });
                        if !ok {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(200));
            tick(done.load(Ordering::Relaxed));
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".into()))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(failed.load(Ordering::Relaxed))
}

/// Options of [`catchup`].
#[derive(Debug, Clone)]
pub struct CatchupArgs {
    /// MiB of values written while the passive is stopped.
    pub mb: u64,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Concurrent clients writing them.
    pub clients: usize,
}

/// `aoc-bench catchup`: stops the passive (SIGTERM), writes `mb` MiB of
/// values on the active (degraded mode), restarts the passive and measures
/// from the restart (the process spawn) until the passive's applied index
/// reaches the active's commit index. A wiped passive cannot be measured:
/// it refuses to rejoin as a voter (docs/design.md, "Blank members").
pub fn catchup(setup: &Setup, args: &CatchupArgs) -> Result<String, String> {
    let value_bytes = args.value_bytes.max(1);
    let total_bytes = args.mb.max(1) * (1 << 20);
    let writes = total_bytes.div_ceil(value_bytes as u64);
    let mut cluster = setup.start()?;
    let (active, _) = cluster
        .active()
        .ok_or("the active vanished right after the start")?;
    let passive = 3 - active;
    let before = cluster.status(passive)?.status;
    eprintln!(
        "aoc-bench: stopping the passive (member {passive}); writing {} MiB",
        args.mb
    );
    cluster.stop(passive);
    let eps = cluster.endpoints();
    let t = Instant::now();
    let failed = write_n(&eps, "catchup", writes, args.clients, value_bytes, |_| {})?;
    if failed > 0 {
        return Err(format!(
            "{failed} of {writes} writes failed while the passive was stopped"
        ));
    }
    let write_secs = t.elapsed().as_secs_f64();
    let target = cluster.status(active)?.status;
    // The write phase leaves the active's and the witness's last writes in
    // the page cache; their writeback would otherwise share the disk with
    // the catch-up measured next.
    let t_sync = Instant::now();
    match std::process::Command::new("sync").status() {
        Ok(s) if s.success() => {}
        other => eprintln!("aoc-bench: `sync` failed ({other:?}); measuring anyway"),
    }
    eprintln!(
        "aoc-bench: dirty pages written back in {:.2} s",
        t_sync.elapsed().as_secs_f64()
    );
    eprintln!(
        "aoc-bench: wrote {writes} values in {write_secs:.1} s; restarting the passive \
         (applied {} -> target commit {}, active's log starts at {})",
        before.applied, target.commit, target.first_index
    );
    let t0 = Instant::now();
    cluster.spawn(passive)?;
    let mut answered: Option<Duration> = None;
    let timeout = Duration::from_secs(60 + args.mb);
    cluster.wait_for(
        "the restarted passive to apply the commit index",
        timeout,
        |c| {
            let s = c.status(passive).ok()?;
            answered.get_or_insert_with(|| t0.elapsed());
            (s.status.applied >= target.commit).then_some(())
        },
    )?;
    let secs = t0.elapsed().as_secs_f64();
    // The active may compact its log while the passive restarts, so the
    // path is read from the passive: a log starting past what it held
    // began with a snapshot.
    let after = cluster.status(passive)?.status;
    let via = if after.first_index > before.applied + 1 {
        "snapshot"
    } else {
        "log"
    };
    Ok(format!(
        "{{\"mb\":{},\"seconds\":{secs:.3},\"mb_per_sec\":{:.1},\"via\":\"{via}\",\"entries\":{},\
         \"first_status_ms\":{},\"value_bytes\":{value_bytes},\"write_mb_per_sec\":{:.1}}}",
        args.mb,
        args.mb as f64 / secs,
        target.commit.saturating_sub(before.applied),
        answered.map_or(0, |d| d.as_millis()),
        args.mb as f64 / write_secs,
    ))
}

/// Options of [`footprint`].
#[derive(Debug, Clone)]
pub struct FootprintArgs {
    /// Writes to make.
    pub writes: u64,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Concurrent clients making them.
    pub clients: usize,
    /// Then time a restart of the active after kill -9 (see [`footprint`]).
    pub restart: bool,
}

/// `aoc-bench footprint`: `writes` puts (distinct keys) in sync mode, then,
/// once the passive has applied everything and the witness has had two
/// election timeouts to compact, each member's resident memory and data
/// directory size. With `restart`, then kill -9 of the active, whose log
/// recovery and state opening are timed from the process spawn: until it
/// answers a status request (`first_status_ms`) and until its applied
/// index is back at the commit index it had reached (`ready_ms`: it could
/// serve as the active again).
pub fn footprint(setup: &Setup, args: &FootprintArgs) -> Result<String, String> {
    let mut cluster = setup.start()?;
    let eps = cluster.endpoints();
    let t = Instant::now();
    let mut last_report = Instant::now();
    let mut modes_seen: Vec<Mode> = Vec::new();
    let mut last_check = Instant::now();
    let failed = {
        let c = &cluster;
        write_n(
            &eps,
            "footprint",
            args.writes,
            args.clients,
            args.value_bytes,
            |done| {
                if last_check.elapsed() >= Duration::from_secs(1) {
                    last_check = Instant::now();
                    if let Some((_, s)) = c.active() {
                        if !modes_seen.contains(&s.status.mode) {
                            modes_seen.push(s.status.mode);
                        }
                    }
                }
                if last_report.elapsed() >= Duration::from_secs(15) {
                    last_report = Instant::now();
                    eprintln!(
                        "aoc-bench: {done} of {} writes, {:.0} writes/s",
                        args.writes,
                        done as f64 / t.elapsed().as_secs_f64()
                    );
                }
            },
        )?
    };
    let secs = t.elapsed().as_secs_f64();
    let (active, _) = cluster.wait_for(
        "an active in sync mode after the writes",
        Duration::from_secs(60),
        |c| {
            let (a, s) = c.active()?;
            let other = c.status(3 - a).ok()?;
            (s.status.mode == Mode::Sync && other.status.applied >= s.status.commit)
                .then_some((a, s))
        },
    )?;
    // The active tells the witness what both data members hold at least
    // once per election timeout (1 s by default); the witness compacts then.
    std::thread::sleep(Duration::from_secs(3));
    let mut parts = Vec::new();
    for (name, id) in [
        ("active", active),
        ("passive", 3 - active),
        ("witness", WITNESS),
    ] {
        let (rss, peak) = cluster.memory_kb(id)?;
        let (len, alloc) = dir_size(cluster.data_dir(id)?)?;
        let cpu = cluster.cpu_ms(id)?;
        parts.push(format!(
            "\"{name}\":{{\"rss_kb\":{rss},\"dir_bytes\":{len},\"peak_rss_kb\":{peak},\"dir_alloc_bytes\":{alloc},\"cpu_ms\":{cpu}}}"
        ));
    }
    if args.restart {
        let target = cluster.status(active)?.status;
        eprintln!(
            "aoc-bench: kill -9 of the active (member {active}, applied {}, {} entries in its log); restarting it",
            target.applied,
            target.last_index.saturating_sub(target.first_index) + 1
        );
        cluster.kill(active);
        let t0 = Instant::now();
        cluster.spawn(active)?;
        let mut answered: Option<Duration> = None;
        cluster.wait_for(
            "the restarted member to hold its applied index again",
            Duration::from_secs(120),
            |c| {
                let s = c.status(active).ok()?;
                answered.get_or_insert_with(|| t0.elapsed());
                (s.status.applied >= target.applied).then_some(())
            },
        )?;
        parts.push(format!(
            "\"restart\":{{\"first_status_ms\":{},\"ready_ms\":{},\"applied\":{},\"log_entries\":{}}}",
            answered.map_or(0, |d| d.as_millis()),
            t0.elapsed().as_millis(),
            target.applied,
            target.last_index.saturating_sub(target.first_index) + 1
        ));
    }
    let modes: Vec<String> = modes_seen
        .iter()
        .map(|m| format!("\"{}\"", format!("{m:?}").to_lowercase()))
        .collect();
    Ok(format!(
        "{{\"writes\":{},{},\"failed_writes\":{failed},\"seconds\":{secs:.1},\"writes_per_sec\":{:.0},\
         \"value_bytes\":{},\"clients\":{},\"modes_seen\":[{}]}}",
        args.writes,
        parts.join(","),
        args.writes as f64 / secs,
        args.value_bytes,
        args.clients,
        modes.join(",")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn the_gap_is_the_longest_after_the_kill() {
        let acks = ms(&[0, 10, 20, 30, 1200, 1210, 1900, 1905]);
        let (gap, resume) = write_gap(&acks, Duration::from_millis(25), Duration::from_secs(3));
        assert_eq!(gap, Duration::from_millis(1170));
        // The first acknowledgement after the kill: a write both members
        // already held.
        assert_eq!(resume, Some(Duration::from_millis(5)));
        // A longer gap before the kill does not count.
        let acks = ms(&[0, 2000, 2010, 2500]);
        let (gap, _) = write_gap(&acks, Duration::from_millis(2005), Duration::from_secs(3));
        assert_eq!(gap, Duration::from_millis(490));
    }

    #[test]
    fn no_acknowledgement_after_the_kill_runs_to_the_end() {
        let acks = ms(&[0, 10]);
        let (gap, resume) = write_gap(&acks, Duration::from_millis(20), Duration::from_secs(5));
        assert_eq!((gap, resume), (Duration::from_millis(4990), None));
        let (gap, resume) = write_gap(&[], Duration::from_millis(20), Duration::from_secs(5));
        assert_eq!((gap, resume), (Duration::from_millis(4980), None));
    }

    #[test]
    fn values_tell_their_write_and_keys_sort_by_number() {
        assert_eq!(value_of(3, 17, 10), b"3/17/xxxxx".to_vec());
        assert_eq!(value_of(3, 17, 2), b"3/17/".to_vec());
        assert!(key_of("p", 1, 9) < key_of("p", 1, 10));
        assert_eq!(key_of("p", 1, 9), "p/1/0000000009");
    }
}
