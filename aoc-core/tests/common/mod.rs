//! Helpers shared by the HA simulation tests: a closed-loop writer and the
//! start of a cluster in sync mode.
#![allow(dead_code)]

use aoc_core::sim::{Cluster, Outcome, SimOptions};
use aoc_core::state::KvCommand;
use aoc_core::Mode;

pub const MS: u64 = 1_000;
pub const SECOND_US: u64 = 1_000_000;

/// A closed-loop writer: one put every 10 ms on whichever member is active.
pub struct Writer {
    pub writes: Vec<(u64, String)>,
    pub next: u64,
}

impl Writer {
    pub fn new() -> Self {
        Writer {
            writes: Vec::new(),
            next: 0,
        }
    }

    pub fn run(&mut self, c: &mut Cluster, us: u64) {
        let end = c.now_us() + us;
        while c.now_us() < end {
            if let Some(a) = c.active() {
                let key = format!("w{}", self.next);
                self.next += 1;
                let t = c.propose(a, KvCommand::put(key.clone(), "v").encode(), None);
                self.writes.push((t, key));
            }
            c.run_for(10 * MS);
        }
    }

    pub fn acked(&self, c: &Cluster) -> Vec<String> {
        self.writes
            .iter()
            .filter(|(t, _)| matches!(c.outcome(*t), Some(Outcome::Proposal { result: Ok(_), .. })))
            .map(|(_, k)| k.clone())
            .collect()
    }
}

/// An HA cluster (data 1 and 2, witness 3) with an active in sync mode:
/// (cluster, active, passive).
pub fn start(seed: u64) -> (Cluster, u64, u64) {
    let mut c = Cluster::new(SimOptions::ha(seed));
    let ok = c.run_until(20 * SECOND_US, |c| {
        c.active()
            .is_some_and(|a| c.status(a).is_some_and(|s| s.mode == Mode::Sync))
    });
    assert!(ok, "seed {seed}: no active in sync mode");
    let active = c.active().expect("an active");
    assert_ne!(active, 3, "seed {seed}: the witness is never the active");
    let passive = if active == 1 { 2 } else { 1 };
    (c, active, passive)
}
