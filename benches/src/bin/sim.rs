//! Runs the verification simulation over many seeds (or one, with its
//! trace) and exits with status 0 only when every seed passed.
//!
//! ```text
//! cargo run --release -p benches --bin sim -- --seeds 500
//! cargo run --release -p benches --bin sim -- --seed 42 --trace
//! cargo run --release -p benches --bin sim -- --prove-checkers --seeds 500
//! cargo run --release -p benches --bin sim -- --replace --seeds 200
//! cargo run --release -p benches --bin sim -- --swarm --minutes 30   # fresh seeds for 30 minutes
//! ```

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aoc_core::sim::{run_seed, Break, RunOptions, RunReport};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    about = "Randomized fault simulation of an HA cluster with RPO, linearizability, \
                   one-active, witness, settle and liveness checks"
)]
struct Args {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Run this one seed only.
    #[arg(long)]
    seed: Option<u64>,
    /// Print the full trace of each seed run (use with --seed).
    #[arg(long)]
    trace: bool,
    /// Simulated seconds of faults per seed.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Run with a deliberate protocol break (repeatable): ack-before-sync,
    /// lying-disk, witness-stays-leader, witness-low-priority,
    /// wiped-member-votes, skip-fence, maintenance-applied-only.
    #[arg(long = "break", value_name = "NAME")]
    breaks: Vec<Break>,
    /// For every break, run seeds until its checker reports it; fails if a
    /// break goes unreported within --seeds.
    #[arg(long)]
    prove_checkers: bool,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Lose a member for good in each run and replace it by membership
    /// changes (remove, add a learner, promote) under the same faults.
    #[arg(long)]
    replace: bool,
    /// Swarm mode: each seed also draws its own fault mix and rates (which
    /// faults, how often, how long, how many overlap, the network, the
    /// clock skew) instead of the defaults.
    #[arg(long)]
    swarm: bool,
    /// Run fresh seeds for this many minutes of wall-clock time, from a
    /// first seed drawn from the clock (printed, with the range run, so
    /// every seed can be replayed); --seeds is ignored.
    #[arg(long, value_name = "N")]
    minutes: Option<u64>,
}

fn options(args: &Args, seed: u64, breaks: BTreeSet<Break>) -> RunOptions {
    RunOptions {
        seconds: args.seconds,
        breaks,
        replace: args.replace,
        swarm: args.swarm,
        ..RunOptions::new(seed)
    }
}

fn replay(args: &Args, seed: u64, breaks: &BTreeSet<Break>) -> String {
    let mut cmd = format!(
        "cargo run --release -p benches --bin sim -- --seed {seed} --seconds {} --trace",
        args.seconds
    );
    if args.replace {
        cmd.push_str(" --replace");
    }
    if args.swarm {
        cmd.push_str(" --swarm");
    }
    for b in breaks {
        cmd.push_str(&format!(" --break {b}"));
    }
    cmd
}

/// Runs `seeds` on worker threads; `stop` ends the run early once it
/// returns true for a report. Reports come back in seed order.
fn run_many(
    args: &Args,
    seeds: Vec<u64>,
    breaks: &BTreeSet<Break>,
    stop: impl Fn(&RunReport) -> bool + Sync,
) -> Vec<RunReport> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = AtomicU64::new(0);
    let stopped_at = AtomicU64::new(u64::MAX);
    let reports = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i as usize >= seeds.len() || i > stopped_at.load(Ordering::SeqCst) {
                    return;
                }
                let mut report = run_caught(options(args, seeds[i as usize], breaks.clone()));
                if !args.trace {
                    // Traces are large (tens of MB per seed): keep them
                    // only when asked to print them.
                    report.trace = Vec::new();
                }
                if stop(&report) {
                    stopped_at.fetch_min(i, Ordering::SeqCst);
                }
                if let Ok(mut r) = reports.lock() {
                    r.push((i, report));
                }
            });
        }
    });
    let mut reports = reports.into_inner().unwrap_or_default();
    reports.sort_by_key(|(i, _)| *i);
    reports.into_iter().map(|(_, r)| r).collect()
}

/// Runs a seed; a panic (a member's invariant assertion, or raft-rs's)
/// becomes a failed report instead of ending the whole run.
fn run_caught(opts: RunOptions) -> RunReport {
    let seed = opts.seed;
    std::panic::catch_unwind(|| run_seed(&opts)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".to_string());
        RunReport {
            seed,
            violations: vec![format!("[member-failed] panicked: {what}")],
            faults: Vec::new(),
            stats: Default::default(),
            history_ops: 0,
            sim_us: 0,
            recovery_us: None,
            replacements: Vec::new(),
            trace: Vec::new(),
        }
    })
}

fn summary(reports: &[RunReport]) -> String {
    let n = reports.len().max(1) as u64;
    let faults: usize = reports.iter().map(|r| r.faults.len()).sum();
    let acked: u64 = reports.iter().map(|r| r.stats.writes_acked).sum();
    let unknown: u64 = reports.iter().map(|r| r.stats.writes_unknown).sum();
    let reads: u64 = reports.iter().map(|r| r.stats.reads_ok).sum();
    let ops: usize = reports.iter().map(|r| r.history_ops).sum();
    let recovery_max = reports
        .iter()
        .filter_map(|r| r.recovery_us)
        .max()
        .unwrap_or(0);
    let mut out = format!(
        "faults per run {:.1}; per run: {} acknowledged writes, {} unknown, {} reads, {} checked \
         operations; longest recovery after the heal {} ms",
        faults as f64 / n as f64,
        acked / n,
        unknown / n,
        reads / n,
        ops as u64 / n,
        recovery_max / 1000
    );
    let replacing: Vec<_> = reports
        .iter()
        .filter(|r| !r.replacements.is_empty())
        .collect();
    if !replacing.is_empty() {
        let all_done = replacing
            .iter()
            .filter(|r| r.replacements.iter().all(|x| x.completed()))
            .count();
        let replaced: usize = replacing
            .iter()
            .map(|r| r.replacements.iter().filter(|x| x.completed()).count())
            .sum();
        out.push_str(&format!(
            "; {replaced} members replaced, every lost member replaced in {all_done} of {} runs",
            replacing.len()
        ));
    }
    out
}

fn prove_checkers(args: &Args) -> ExitCode {
    let mut all_caught = true;
    for b in Break::ALL {
        let started = Instant::now();
        let breaks = BTreeSet::from([b]);
        let seeds: Vec<u64> = (args.first_seed..args.first_seed + args.seeds).collect();
        let caught_by = b.caught_by();
        let reports = run_many(args, seeds, &breaks, |r| {
            r.properties().iter().any(|p| caught_by.contains(p))
        });
        let first = reports
            .iter()
            .position(|r| r.properties().iter().any(|p| caught_by.contains(p)));
        match first {
            Some(i) => {
                let r = &reports[i];
                let v = r
                    .violations
                    .iter()
                    .find(|v| {
                        aoc_core::sim::check::Property::of(v)
                            .is_some_and(|p| caught_by.contains(&p))
                    })
                    .cloned()
                    .unwrap_or_default();
                println!(
                    "break {b}: caught at seed {} (run {} of at most {}, {:.1} s): {v}",
                    r.seed,
                    i + 1,
                    args.seeds,
                    started.elapsed().as_secs_f64()
                );
                println!("  replay: {}", replay(args, r.seed, &breaks));
            }
            None => {
                all_caught = false;
                let names: Vec<&str> = caught_by.iter().map(|p| p.name()).collect();
                println!(
                    "break {b}: NOT caught by {} within {} seeds",
                    names.join(" or "),
                    args.seeds
                );
            }
        }
    }
    if all_caught {
        println!("every break was caught");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs fresh seeds for `minutes` of wall-clock time, in batches, from a
/// first seed drawn from the clock; reports like a run of that many seeds.
fn run_for_minutes(args: &Args, minutes: u64, breaks: &BTreeSet<Break>) -> Vec<RunReport> {
    let first = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_000_000);
    println!("fresh seeds from {first} for {minutes} minutes");
    let until = Instant::now() + Duration::from_secs(minutes * 60);
    let batch = 64 * args.threads.unwrap_or(2).max(1) as u64;
    let mut next = first;
    let mut reports = Vec::new();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    while Instant::now() < until {
        let seeds: Vec<u64> = (next..next + batch).collect();
        next += batch;
        let mut done = run_many(args, seeds, breaks, |_| false);
        // Keep the failures whole and the rest small.
        for r in &mut done {
            if r.passed() {
                r.violations.clear();
            } else {
                println!("seed {} FAILED: {:?}", r.seed, r.violations.first());
            }
        }
        reports.extend(done);
        if last_progress.elapsed() >= Duration::from_secs(60) {
            last_progress = Instant::now();
            let failed = reports.iter().filter(|r| !r.passed()).count();
            println!(
                "progress: {} seeds ({first} to {}), {failed} failed, {:.0} s",
                reports.len(),
                next - 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "ran seeds {first} to {} (replay one with --seed S{}{})",
        next - 1,
        if args.replace { " --replace" } else { "" },
        if args.swarm { " --swarm" } else { "" }
    );
    reports
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.prove_checkers {
        return prove_checkers(&args);
    }
    let breaks: BTreeSet<Break> = args.breaks.iter().copied().collect();
    let started = Instant::now();
    let reports = match (args.seed, args.minutes) {
        (Some(s), _) => run_many(&args, vec![s], &breaks, |_| false),
        (None, Some(minutes)) => run_for_minutes(&args, minutes, &breaks),
        (None, None) => {
            let seeds = (args.first_seed..args.first_seed + args.seeds).collect();
            run_many(&args, seeds, &breaks, |_| false)
        }
    };
    let mut failed = 0;
    for r in &reports {
        if args.trace {
            for line in &r.trace {
                println!("{line}");
            }
            for f in &r.faults {
                println!("fault {f}");
            }
        }
        if !r.passed() {
            failed += 1;
            println!("seed {} FAILED:", r.seed);
            for v in r.violations.iter().take(10) {
                println!("  {v}");
            }
            println!("  replay: {}", replay(&args, r.seed, &breaks));
        }
    }
    println!(
        "{} seeds, {} passed, {} failed in {:.1} s; {}",
        reports.len(),
        reports.len() - failed,
        failed,
        started.elapsed().as_secs_f64(),
        summary(&reports)
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
