//! `aoc-bench`: load and floor measurements that print one JSON line each.
//!
//! - `aoc-bench floor [--dir DIR] [--samples N]`: the physical floor on this
//!   machine: a synced 4 KiB write's latency in DIR (write + fdatasync) and
//!   the loopback TCP round trip;
//! - `aoc-bench write --endpoints A,B --clients N --seconds S --value-bytes B`:
//!   drives a running cluster through the client, closed loop (each client
//!   waits for its write's acknowledgement before the next), and prints
//!   `{"ops_per_sec":..,"p50_us":..,"p99_us":..,"max_us":..}`.
//!
//! The failover, catch-up and footprint measurements are still to come.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aoc_core::client::{Client, ClientOptions};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "aoc-bench", about = "AOC HA load and floor measurements")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

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
    },
}

/// Latency percentiles of `samples` (microseconds), sorted in place.
fn percentiles(samples: &mut [u64]) -> (u64, u64, u64) {
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    (at(0.5), at(0.99), samples[samples.len() - 1])
}

fn floor(dir: PathBuf, samples: usize) -> Result<String, String> {
    let samples = samples.max(10);
    let file_dir = tempfile::tempdir_in(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = file_dir.path().join("floor");
    let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let block = vec![0x5a_u8; 4096];
    let mut sync_us = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        file.write_all_at(&block, (i as u64 % 256) * 4096)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        sync_us.push(t.elapsed().as_micros() as u64);
    }
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
    Ok(format!(
        "{{\"sync_4k_p50_us\":{sync_p50},\"sync_4k_p99_us\":{sync_p99},\"loopback_rtt_p50_us\":{rtt_p50},\"loopback_rtt_p99_us\":{rtt_p99},\"floor_p50_us\":{}}}",
        sync_p50 + rtt_p50
    ))
}

fn write(
    endpoints: Vec<String>,
    clients: usize,
    seconds: u64,
    value_bytes: usize,
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
    let results: Vec<Result<Vec<u64>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients.max(1))
            .map(|c| {
                let eps = eps.clone();
                s.spawn(move || -> Result<Vec<u64>, String> {
                    let mut client = Client::connect(eps, ClientOptions::default())
                        .map_err(|e| e.to_string())?;
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
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    if all.is_empty() {
        return Err("no write completed".into());
    }
    let ops = all.len() as f64 / elapsed;
    let (p50, p99, max) = percentiles(&mut all);
    Ok(format!(
        "{{\"clients\":{clients},\"value_bytes\":{value_bytes},\"ops_per_sec\":{ops:.0},\"p50_us\":{p50},\"p99_us\":{p99},\"max_us\":{max}}}"
    ))
}

fn main() -> ExitCode {
    let out = match Cli::parse().command {
        Cmd::Floor { dir, samples } => floor(dir, samples),
        Cmd::Write {
            endpoints,
            clients,
            seconds,
            value_bytes,
        } => write(endpoints, clients, seconds, value_bytes),
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
