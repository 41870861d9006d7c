//! `aoc-bench`: load, floor and HA measurements that print one JSON line
//! each (progress goes to stderr).
//!
//! - `aoc-bench floor [--dir DIR] [--samples N] [--writers W]`: the physical
//!   floor on this machine: a synced 4 KiB write's latency in DIR (write +
//!   fdatasync), the loopback TCP round trip, and a round of W synced
//!   writes made at once from W threads, as W members sharing this disk
//!   make them for each entry (`shared_sync_*`: the slowest of the round);
//! - `aoc-bench write --endpoints A,B --clients N --seconds S --value-bytes B`:
//!   drives a running cluster through the client, closed loop (each client
//!   waits for its write's acknowledgement before the next), and prints
//!   `{"clients":..,"value_bytes":..,"ops_per_sec":..,"p50_us":..,"p99_us":..,"max_us":..,"load_generator_cpu_us_per_write":..}`;
//! - `aoc-bench failover [--kill active|passive] [--seconds S] [--value-bytes B] [--clients N]`:
//!   starts a local three-process cluster, writes closed loop with
//!   sessions, kill -9's the active (or the passive) a third of the way
//!   in, keeps writing, restarts the killed member, lets the cluster
//!   settle and reads every acknowledged write back:
//!   `{"kill":"active","write_gap_ms":..,"lost_acked_writes":..,"acked_writes":..,...}`;
//! - `aoc-bench catchup [--mb N]`: starts a local cluster, stops the
//!   passive, writes N MiB of 64 KiB values, restarts the passive and
//!   times it from the restart until its applied index reaches the
//!   active's commit index: `{"mb":..,"seconds":..,"mb_per_sec":..,...}`;
//! - `aoc-bench footprint [--writes N]`: starts a local cluster, makes N
//!   writes in sync mode, then reports each member's resident memory and
//!   data directory size:
//!   `{"writes":..,"active":{"rss_kb":..,"dir_bytes":..,"cpu_ms":..},"passive":{..},"witness":{..},...}`.
//!
//! The last three run `aoc-node` and `aoc-witness` from the directory of
//! `aoc-bench` (or `--bin-dir`) in a temporary directory (or one under
//! `--dir`), on loopback, with the default timeouts; every process they
//! start is killed and the directory removed at the end, errors included.
//! `benches/plot.py` draws the JSON lines of `write` runs as SVG charts;
//! docs/benchmarks.md says how.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aoc_core::client::{Client, ClientOptions};
use benches::ha::{self, CatchupArgs, FailoverArgs, FootprintArgs, Setup, Victim};
use clap::{Args, Parser, Subcommand};

/// The command line.
#[derive(Parser)]
#[command(name = "aoc-bench", about = "AOC HA load and floor measurements")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// The measurements.
#[derive(Subcommand)]
enum Cmd {
    /// The physical floor: a synced 4 KiB write and a loopback round trip.
    Floor {
        /// Where to write (the data directory's file system).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Samples of each.
        #[arg(long, default_value_t = 2000)]
        samples: usize,
        /// Synced writes made at once in the shared-disk round: the
        /// members whose data directories share this disk (3 in a local
        /// cluster: the active, the passive and the witness each sync
        /// every entry).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
        writers: u16,
    },
    /// Closed-loop writes against a running cluster.
    Write {
        /// Client API addresses of the data members (host:port,...).
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        /// Concurrent clients (each with its own session).
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// How long to write.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Bytes per value.
        #[arg(long, default_value_t = 256)]
        value_bytes: usize,
        /// Over TLS: the cluster's CA, a client certificate and key (from
        /// `aoc-node certs`) and the cluster id.
        #[arg(long, requires_all = ["tls_cert", "tls_key", "cluster_id"])]
        tls_ca: Option<std::path::PathBuf>,
        /// See `--tls-ca`.
        #[arg(long, requires = "tls_ca")]
        tls_cert: Option<std::path::PathBuf>,
        /// See `--tls-ca`.
        #[arg(long, requires = "tls_ca")]
        tls_key: Option<std::path::PathBuf>,
        /// See `--tls-ca`.
        #[arg(long, requires = "tls_ca")]
        cluster_id: Option<u64>,
    },
    /// kill -9 of the active (or the passive) of a local cluster under
    /// closed-loop writes: the longest gap between acknowledgements, and
    /// the acknowledged writes lost (read back after the restart).
    Failover {
        /// The member to kill.
        #[arg(long, value_enum, default_value_t = Victim::Active)]
        kill: Victim,
        /// How long to write; the kill comes after a third of it.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Bytes per value.
        #[arg(long, default_value_t = 256)]
        value_bytes: usize,
        /// Concurrent clients (each with its own session).
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// The clients' longest pause between retries, in ms (the client
        /// library's default is 100).
        #[arg(long, default_value_t = 100)]
        max_backoff_ms: u64,
        #[command(flatten)]
        setup: SetupArgs,
    },
    /// How fast a restarted passive catches up N MiB written while it was
    /// stopped.
    Catchup {
        /// MiB of values written while the passive is stopped.
        #[arg(long, default_value_t = 64)]
        mb: u64,
        /// Bytes per value.
        #[arg(long, default_value_t = 65536)]
        value_bytes: usize,
        /// Concurrent clients writing them.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[command(flatten)]
        setup: SetupArgs,
    },
    /// Each member's resident memory and data directory size after N
    /// writes in sync mode.
    Footprint {
        /// Writes to make (distinct keys).
        #[arg(long, default_value_t = 100_000)]
        writes: u64,
        /// Bytes per value.
        #[arg(long, default_value_t = 256)]
        value_bytes: usize,
        /// Concurrent clients making them.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Then kill -9 the active and time its restart: until it answers
        /// a status request, and until it holds everything it had applied.
        #[arg(long)]
        restart: bool,
        #[command(flatten)]
        setup: SetupArgs,
    },
}

/// Where the local cluster of `failover`, `catchup` and `footprint` runs.
#[derive(Args)]
struct SetupArgs {
    /// The directory holding aoc-node and aoc-witness (default: the
    /// directory of aoc-bench, e.g. target/release).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where to create the cluster's temporary directory (default: the
    /// system's temporary directory). Use the file system to measure.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the temporary directory (configuration files, data
    /// directories, member logs) instead of removing it at the end.
    #[arg(long)]
    keep_dir: bool,
}

impl From<SetupArgs> for Setup {
    fn from(a: SetupArgs) -> Setup {
        Setup {
            bin_dir: a.bin_dir,
            dir: a.dir,
            keep_dir: a.keep_dir,
        }
    }
}

/// Latency percentiles of `samples` (microseconds), sorted in place.
fn percentiles(samples: &mut [u64]) -> (u64, u64, u64) {
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    (at(0.5), at(0.99), samples[samples.len() - 1])
}

/// One synced 4 KiB write (write + fdatasync) at block `i` of `file`.
fn synced_write(file: &std::fs::File, i: usize, path: &std::path::Path) -> Result<(), String> {
    let block = [0x5a_u8; 4096];
    file.write_all_at(&block, (i as u64 % 256) * 4096)
        .and_then(|()| file.sync_data())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `rounds` rounds of `writers` synced writes made at once, each thread
/// to a file of its own under `dir`; the time of each round is that of
/// its slowest write (a commit waits for the syncs it needs, and on one
/// disk they queue behind each other's).
fn shared_sync_rounds(
    dir: &std::path::Path,
    writers: usize,
    rounds: usize,
) -> Result<Vec<u64>, String> {
    let start = std::sync::Arc::new(std::sync::Barrier::new(writers));
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let path = dir.join(format!("shared-{w}"));
            let start = start.clone();
            std::thread::spawn(move || -> Result<Vec<Instant>, String> {
                let file =
                    std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let mut ends = Vec::with_capacity(rounds);
                for i in 0..rounds {
                    // Every thread waits here, so a failed thread must
                    // still come: it records its error and goes on.
                    start.wait();
                    let written = synced_write(&file, i, &path);
                    ends.push(Instant::now());
                    written?;
                }
                Ok(ends)
            })
        })
        .collect();
    let mut per_thread = Vec::with_capacity(writers);
    for t in threads {
        per_thread.push(
            t.join()
                .map_err(|_| "a writer thread panicked".to_string())??,
        );
    }
    // A round starts when the last thread reaches the barrier, just after
    // the latest end of the round before; it ends at its own latest end.
    let latest = |r: usize| per_thread.iter().map(|ends| ends[r]).max();
    let mut round_us = Vec::with_capacity(rounds);
    for r in 1..rounds {
        if let (Some(before), Some(end)) = (latest(r - 1), latest(r)) {
            round_us.push(end.duration_since(before).as_micros() as u64);
        }
    }
    Ok(round_us)
}

/// `aoc-bench floor`: synced 4 KiB writes in a temporary file under `dir`,
/// loopback round trips, and rounds of `writers` synced writes at once,
/// `samples` of each.
fn floor(dir: PathBuf, samples: usize, writers: usize) -> Result<String, String> {
    let samples = samples.max(10);
    let file_dir = tempfile::tempdir_in(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = file_dir.path().join("floor");
    let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut sync_us = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        synced_write(&file, i, &path)?;
        sync_us.push(t.elapsed().as_micros() as u64);
    }
    let mut shared_us = shared_sync_rounds(file_dir.path(), writers, samples + 1)?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_nodelay(true);
            let mut b = [0u8; 64];
            while let Ok(n) = s.read(&mut b) {
                if n == 0 || s.write_all(&b[..n]).is_err() {
                    break;
                }
            }
        }
    });
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut rtt_us = Vec::with_capacity(samples);
    let mut b = [0u8; 64];
    for _ in 0..samples {
        let t = Instant::now();
        s.write_all(&b).map_err(|e| e.to_string())?;
        s.read_exact(&mut b).map_err(|e| e.to_string())?;
        rtt_us.push(t.elapsed().as_micros() as u64);
    }
    drop(s);
    let _ = echo.join();
    let (sync_p50, sync_p99, _) = percentiles(&mut sync_us);
    let (rtt_p50, rtt_p99, _) = percentiles(&mut rtt_us);
    let (shared_p50, shared_p99, _) = percentiles(&mut shared_us);
    Ok(format!(
        "{{\"sync_4k_p50_us\":{sync_p50},\"sync_4k_p99_us\":{sync_p99},\"loopback_rtt_p50_us\":{rtt_p50},\"loopback_rtt_p99_us\":{rtt_p99},\"floor_p50_us\":{},\"shared_sync_writers\":{writers},\"shared_sync_p50_us\":{shared_p50},\"shared_sync_p99_us\":{shared_p99},\"shared_floor_p50_us\":{}}}",
        sync_p50 + rtt_p50,
        shared_p50 + rtt_p50
    ))
}

/// `aoc-bench write`: `clients` closed-loop clients writing `value_bytes`
/// values to a running cluster for `seconds`.
fn write(
    endpoints: Vec<String>,
    clients: usize,
    seconds: u64,
    value_bytes: usize,
    opts: ClientOptions,
) -> Result<String, String> {
    let eps: Vec<SocketAddr> = endpoints
        .iter()
        .map(|e| {
            e.to_socket_addrs()
                .map_err(|err| format!("--endpoints: {e}: {err}"))?
                .next()
                .ok_or_else(|| format!("--endpoints: {e}: no address"))
        })
        .collect::<Result<_, _>>()?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let own_cpu_ms = benches::cluster::process_cpu_ms(std::process::id())?;
    let results: Vec<Result<Vec<u64>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients.max(1))
            .map(|c| {
                let eps = eps.clone();
                let opts = opts.clone();
                s.spawn(move || -> Result<Vec<u64>, String> {
                    let mut client = Client::connect(eps, opts).map_err(|e| e.to_string())?;
                    let value = vec![b'x'; value_bytes];
                    let mut lat = Vec::new();
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        client
                            .put(format!("bench/{c}/{i}"), value.clone())
                            .map_err(|e| e.to_string())?;
                        lat.push(t.elapsed().as_micros() as u64);
                        i += 1;
                    }
                    Ok(lat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".into()))
            })
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let own_cpu_ms =
        benches::cluster::process_cpu_ms(std::process::id())?.saturating_sub(own_cpu_ms);
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    if all.is_empty() {
        return Err("no write completed".into());
    }
    let ops = all.len() as f64 / elapsed;
    // What the load generator itself took of the machine it shares with
    // the cluster (connections and TLS handshakes included).
    let load_cpu_us = own_cpu_ms as f64 * 1000.0 / all.len() as f64;
    let (p50, p99, max) = percentiles(&mut all);
    Ok(format!(
        "{{\"clients\":{clients},\"value_bytes\":{value_bytes},\"ops_per_sec\":{ops:.0},\"p50_us\":{p50},\"p99_us\":{p99},\"max_us\":{max},\"load_generator_cpu_us_per_write\":{load_cpu_us:.1}}}"
    ))
}

/// Runs one measurement and prints its JSON line (exit 0), or the error
/// on stderr (exit 1).
fn main() -> ExitCode {
    let out = match Cli::parse().command {
        Cmd::Floor {
            dir,
            samples,
            writers,
        } => floor(dir, samples, usize::from(writers)),
        Cmd::Write {
            endpoints,
            clients,
            seconds,
            value_bytes,
            tls_ca,
            tls_cert,
            tls_key,
            cluster_id,
        } => {
            let mut opts = ClientOptions::default();
            match (tls_ca, tls_cert, tls_key, cluster_id) {
                (Some(ca), Some(cert), Some(key), Some(cluster_id)) => {
                    match aoc_core::transport::tls::TlsIdentity::from_files(&ca, &cert, &key) {
                        Ok(identity) => {
                            opts.tls = Some(aoc_core::client::ClientTls {
                                identity,
                                cluster_id,
                            });
                            write(endpoints, clients, seconds, value_bytes, opts)
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
                _ => write(endpoints, clients, seconds, value_bytes, opts),
            }
        }
        Cmd::Failover {
            kill,
            seconds,
            value_bytes,
            clients,
            max_backoff_ms,
            setup,
        } => ha::failover(
            &setup.into(),
            &FailoverArgs {
                kill,
                seconds,
                value_bytes,
                clients,
                max_backoff: Duration::from_millis(max_backoff_ms.max(1)),
            },
        ),
        Cmd::Catchup {
            mb,
            value_bytes,
            clients,
            setup,
        } => ha::catchup(
            &setup.into(),
            &CatchupArgs {
                mb,
                value_bytes,
                clients,
            },
        ),
        Cmd::Footprint {
            writes,
            value_bytes,
            clients,
            restart,
            setup,
        } => ha::footprint(
            &setup.into(),
            &FootprintArgs {
                writes,
                value_bytes,
                clients,
                restart,
            },
        ),
    };
    match out {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("aoc-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
