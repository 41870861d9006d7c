//! `aoc-node`: the AOC HA data member.
//!
//! Today it runs the embedded demo (`aoc-node demo`, the default): a
//! standalone member on real storage that writes, reads, restarts and
//! checks that nothing was lost. Networking, configuration files and the
//! cluster commands come with the binaries' own work.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aoc_core::state::{KvCommand, KvStateMachine, SledKv};
use aoc_core::storage::{EngineLogOptions, EngineLogStore};
use aoc_core::{Node, ReplicaConfig, Role};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "aoc-node", version, about = "AOC HA data member")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a standalone member on real storage: write, read back, restart,
    /// and check every acknowledged write (the default command).
    Demo {
        /// Data directory (default: a temporary directory, removed after).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// How many writes to make.
        #[arg(long, default_value_t = 2000)]
        writes: u64,
        /// Writer threads.
        #[arg(long, default_value_t = 4)]
        threads: u64,
    },
}

fn main() -> ExitCode {
    aoc_core::logging::init_logging();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Demo {
        data_dir: None,
        writes: 2000,
        threads: 4,
    }) {
        Command::Demo {
            data_dir,
            writes,
            threads,
        } => demo(data_dir, writes, threads),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aoc-node: {e}");
            ExitCode::FAILURE
        }
    }
}

fn start(dir: &Path) -> aoc_core::Result<Node<SledKv>> {
    let log = EngineLogStore::open(&dir.join("log"), EngineLogOptions::default())?;
    let kv = SledKv::open(&dir.join("state"))?;
    let node = Node::builder(ReplicaConfig::new(1))
        .voters(vec![1])
        .start(log, kv)?;
    let start = Instant::now();
    while node.status().role != Role::Leader {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(aoc_core::Error::Timeout {
                what: "standalone member to become active".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(node)
}

fn demo(data_dir: Option<PathBuf>, writes: u64, threads: u64) -> aoc_core::Result<()> {
    let temp;
    let dir = match data_dir {
        Some(d) => d,
        None => {
            temp = tempfile::tempdir()
                .map_err(|e| aoc_core::Error::storage("temporary directory", e))?;
            temp.path().to_path_buf()
        }
    };
    println!("standalone member, data directory {}", dir.display());
    let node = start(&dir)?;
    let threads = threads.max(1);
    let per_thread = writes / threads;
    let begin = Instant::now();
    let mut latencies_us: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let node = node.clone();
                s.spawn(move || -> aoc_core::Result<Vec<u64>> {
                    let mut lat = Vec::with_capacity(per_thread as usize);
                    for i in 0..per_thread {
                        let cmd = KvCommand::put(format!("demo/{t}/{i}"), vec![b'x'; 256]);
                        let t0 = Instant::now();
                        node.propose(cmd.encode())?;
                        lat.push(t0.elapsed().as_micros() as u64);
                    }
                    Ok(lat)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            match h.join() {
                Ok(Ok(l)) => all.extend(l),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(aoc_core::Error::Raft("a writer thread panicked".into())),
            }
        }
        Ok(all)
    })?;
    let elapsed = begin.elapsed();
    latencies_us.sort_unstable();
    let pct = |p: f64| latencies_us[((latencies_us.len() as f64 - 1.0) * p) as usize];
    let total = latencies_us.len() as u64;
    println!(
        "{total} synced writes of 256 bytes from {threads} threads in {:.2} s: {:.0} writes/s, p50 {} us, p99 {} us",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );
    let applied = node.status().applied;
    node.shutdown();
    drop(node);

    let node = start(&dir)?;
    let status = node.status();
    println!(
        "restarted: applied index {} (was {applied}), term {}",
        status.applied, status.term
    );
    let mut missing = 0;
    for t in 0..threads {
        for i in 0..per_thread {
            let key = format!("demo/{t}/{i}").into_bytes();
            if node.read(move |kv| kv.get(&key))??.is_none() {
                missing += 1;
            }
        }
    }
    node.shutdown();
    if missing > 0 {
        return Err(aoc_core::Error::storage(
            dir,
            format!("{missing} acknowledged writes missing after restart"),
        ));
    }
    println!("every acknowledged write was read back after the restart");
    Ok(())
}
