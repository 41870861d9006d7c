//! What the replica asks the log to write, per proposal: under a steady
//! load one synced write per entry (a commit index that moved alone rides
//! on the next write), and an idle member still writes its commit index
//! within two ticks.

use aoc_core::state::{KvCommand, MemKv};
use aoc_core::storage::{LogStore, MemLogStore};
use aoc_core::{Replica, ReplicaConfig};

fn standalone() -> Replica<MemLogStore, MemKv> {
    let log = MemLogStore::new();
    Replica::<MemLogStore, MemKv>::bootstrap(&log, &[1]).expect("bootstrap");
    let mut r = Replica::new(ReplicaConfig::new(1), log, MemKv::new(), 7).expect("open");
    r.campaign().expect("a standalone member campaigns");
    r
}

/// Carries out the replica's work; returns (writes, completions).
fn drain(r: &mut Replica<MemLogStore, MemKv>) -> (usize, usize) {
    let (mut writes, mut done) = (0, 0);
    for _ in 0..64 {
        if !r.has_ready() {
            return (writes, done);
        }
        let rd = r.ready().expect("the replica keeps running");
        done += rd.completions.len();
        if let Some(w) = rd.write {
            writes += 1;
            r.log_store().write(&w).expect("an in-memory write");
            r.on_persisted(w.number);
        }
    }
    panic!("the replica never ran out of work");
}

fn stored_commit(r: &Replica<MemLogStore, MemKv>) -> u64 {
    r.log_store()
        .initial_state()
        .expect("the in-memory store answers")
        .hard_state
        .commit
}

#[test]
fn a_steady_load_costs_one_synced_write_per_entry() {
    let mut r = standalone();
    drain(&mut r);
    let (mut writes, mut done) = (0, 0);
    for i in 0..20u64 {
        r.propose(i + 1, KvCommand::put(format!("k{i}"), "v").encode(), None);
        let (w, d) = drain(&mut r);
        writes += w;
        done += d;
    }
    assert_eq!(done, 20, "every proposal was applied");
    // Writing each commit index on its own doubled this.
    assert_eq!(writes, 20, "one write per proposal");
    let last = r.status().last_index;
    assert!(
        stored_commit(&r) < last,
        "the last commit index is not written yet"
    );
}

#[test]
fn an_idle_member_writes_its_commit_within_two_ticks() {
    let mut r = standalone();
    drain(&mut r);
    r.propose(1, KvCommand::put("k", "v").encode(), None);
    drain(&mut r);
    let last = r.status().last_index;
    assert!(stored_commit(&r) < last);
    for now_ms in [100, 200, 300] {
        r.tick(now_ms);
        drain(&mut r);
    }
    assert_eq!(stored_commit(&r), last, "the commit index reached the log");
    // Nothing more to write once it did.
    r.tick(400);
    assert_eq!(drain(&mut r).0, 0);
}
