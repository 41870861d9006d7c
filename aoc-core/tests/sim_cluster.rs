//! The deterministic test cluster: elections, replication, crashes,
//! snapshots and reproducibility, on the same replica the node runs.

use aoc_core::sim::{Cluster, NetFaults, Outcome, SimOptions};
use aoc_core::state::{KvCommand, KvResponse};

const SECOND_US: u64 = 1_000_000;

fn put(c: &mut Cluster, member: u64, key: &str, value: &str) -> u64 {
    c.propose(member, KvCommand::put(key, value).encode(), None)
}

fn ok(c: &Cluster, token: u64) -> bool {
    matches!(
        c.outcome(token),
        Some(Outcome::Proposal { result: Ok(_), .. })
    )
}

fn assert_clean(c: &Cluster) {
    let v = c.violations();
    assert!(v.is_empty(), "{}: violations: {v:#?}", c.replay_hint());
}

#[test]
fn elects_a_leader_and_replicates_to_all() {
    let mut c = Cluster::new(SimOptions::new(1));
    let leader = c.wait_for_leader(10 * SECOND_US).expect("a leader");
    let tokens: Vec<u64> = (0..20)
        .map(|i| put(&mut c, leader, &format!("k{i}"), "v"))
        .collect();
    assert!(c.run_until(5 * SECOND_US, |c| tokens.iter().all(|t| ok(c, *t))));
    c.run_for(SECOND_US);
    let states: Vec<_> = [1, 2, 3]
        .iter()
        .map(|id| c.state_of(*id).unwrap())
        .collect();
    assert_eq!(states[0].1.len(), 20);
    assert_eq!(states[0], states[1]);
    assert_eq!(states[1], states[2]);
    assert_clean(&c);
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let run = |seed| {
        let mut opts = SimOptions::new(seed);
        opts.net = NetFaults {
            drop_per_mille: 50,
            duplicate_per_mille: 20,
            min_delay_us: 100,
            max_delay_us: 20_000,
        };
        let mut c = Cluster::new(opts);
        for round in 0..40u64 {
            if let Some(l) = c.leader() {
                put(&mut c, l, &format!("k{round}"), "v");
            }
            if round == 20 {
                c.crash(1);
            }
            if round == 30 {
                c.restart(1);
            }
            c.run_for(200_000);
        }
        c.trace().to_vec()
    };
    let a = run(42);
    let b = run(42);
    assert!(a.len() > 100, "the run did something ({} events)", a.len());
    assert_eq!(a, b, "seed 42 ran differently twice");
    assert_ne!(a, run(43), "another seed should give another run");
}

/// Acknowledged writes survive random crashes (with unsynced state lost),
/// partitions, drops, duplicates and reordering, across many seeds; no
/// entry is applied twice; every acknowledgement follows the syncs that
/// make it durable on a majority.
#[test]
fn crashes_never_lose_acknowledged_writes() {
    // AOC_SIM_SEED=N replays one seed; AOC_SIM_SEEDS=N runs seeds 0..N.
    if let Some(seed) = std::env::var("AOC_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run_crash_schedule(seed);
        return;
    }
    let seeds: u64 = std::env::var("AOC_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    for seed in 0..seeds {
        run_crash_schedule(seed);
    }
}

fn run_crash_schedule(seed: u64) {
    eprintln!("crash schedule seed {seed} (replay: AOC_SIM_SEED={seed} cargo test -p aoc-core --test sim_cluster crashes)");
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed ^ 0x5eed);
    let mut opts = SimOptions::new(seed);
    // Small thresholds so that compaction and snapshot installs happen.
    opts.replica.compact_every_entries = 20;
    opts.replica.compact_keep_entries = 5;
    opts.net = NetFaults {
        drop_per_mille: 30,
        duplicate_per_mille: 20,
        min_delay_us: 100,
        max_delay_us: 30_000,
    };
    let mut c = Cluster::new(opts);
    // Faults start once the cluster has bootstrapped: a member that crashes
    // while blank, after the others saw it blank and bootstrapped, comes
    // back blank beside members holding data and (rightly) refuses to start
    // as a voter.
    let started = c.run_until(30 * SECOND_US, |c| {
        c.leader().is_some() && (1..=3).all(|id| c.status(id).is_some_and(|s| !s.voters.is_empty()))
    });
    assert!(started, "{}: the cluster did not start", c.replay_hint());
    let mut writes: Vec<(u64, String, String)> = Vec::new();
    let mut down: Option<(u64, u64)> = None;
    for round in 0..150u64 {
        if let Some(l) = c.leader() {
            for i in 0..rng.gen_range(0..4) {
                let (k, v) = (format!("s{seed}-r{round}-{i}"), format!("v{round}"));
                let t = put(&mut c, l, &k, &v);
                writes.push((t, k, v));
            }
        }
        match rng.gen_range(0..100) {
            0..=5 if down.is_none() => {
                let id = rng.gen_range(1..=3);
                c.crash(id);
                down = Some((id, round + rng.gen_range(1..20)));
            }
            6..=8 => {
                let id = rng.gen_range(1..=3);
                c.isolate(id);
            }
            9..=14 => c.heal(),
            _ => {}
        }
        if let Some((id, until)) = down {
            if round >= until {
                c.restart(id);
                down = None;
            }
        }
        c.run_for(rng.gen_range(10_000..300_000));
    }
    c.heal();
    for id in 1..=3 {
        c.restart(id);
    }
    c.set_net(NetFaults::default());
    // Settle: a leader, and every member applied what the leader applied.
    let settled = c.run_until(60 * SECOND_US, |c| {
        let Some(l) = c.leader() else { return false };
        let Some((applied, _)) = c.state_of(l) else {
            return false;
        };
        let commit = c.replica(l).map(|r| r.status().commit).unwrap_or(0);
        applied == commit && (1..=3).all(|id| c.state_of(id).is_some_and(|(a, _)| a == applied))
    });
    if !settled {
        for l in c.trace().iter().rev().take(40).rev() {
            eprintln!("{l}");
        }
    }
    assert!(
        settled,
        "{}: the cluster did not settle: {:#?}",
        c.replay_hint(),
        (1..=3).map(|id| c.status(id)).collect::<Vec<_>>()
    );
    assert_clean(&c);
    let states: Vec<_> = (1..=3).map(|id| c.state_of(id).unwrap()).collect();
    assert_eq!(states[0], states[1], "{}", c.replay_hint());
    assert_eq!(states[1], states[2], "{}", c.replay_hint());
    let kv: std::collections::BTreeMap<_, _> = states[0].1.iter().cloned().collect();
    let mut acked = 0;
    for (t, k, v) in &writes {
        if ok(&c, *t) {
            acked += 1;
            assert_eq!(
                kv.get(k.as_bytes()).map(|v| v.as_slice()),
                Some(v.as_bytes()),
                "{}: acknowledged write {k} lost",
                c.replay_hint()
            );
        }
    }
    assert!(acked > 0, "{}: nothing was acknowledged", c.replay_hint());
}

#[test]
fn a_member_down_past_compaction_catches_up_by_snapshot() {
    let mut opts = SimOptions::new(5);
    opts.replica.compact_every_entries = 10;
    opts.replica.compact_keep_entries = 2;
    let mut c = Cluster::new(opts);
    let leader = c.wait_for_leader(10 * SECOND_US).expect("a leader");
    let lagging = if leader == 1 { 2 } else { 1 };
    c.crash(lagging);
    let tokens: Vec<u64> = (0..100)
        .map(|i| put(&mut c, leader, &format!("k{i}"), "v"))
        .collect();
    assert!(c.run_until(10 * SECOND_US, |c| tokens.iter().all(|t| ok(c, *t))));
    c.run_for(SECOND_US);
    let first = c
        .log_store(leader)
        .map(|l| aoc_core::storage::LogStore::first_index(l).unwrap());
    assert!(
        first.unwrap() > 2,
        "the leader compacted its log (first index {first:?})"
    );
    c.restart(lagging);
    assert!(
        c.run_until(10 * SECOND_US, |c| c.state_of(lagging).map(|s| s.1.len())
            == Some(100))
    );
    assert!(
        c.events()
            .iter()
            .any(|(m, e)| *m == lagging && matches!(e, aoc_core::Event::SnapshotInstalled { .. })),
        "the lagging member installed a snapshot"
    );
    assert_eq!(c.state_of(lagging), c.state_of(leader));
    assert_clean(&c);
}

#[test]
fn a_cut_snapshot_stream_is_retried_and_completes() {
    let mut opts = SimOptions::new(6);
    opts.replica.compact_every_entries = 10;
    opts.replica.compact_keep_entries = 2;
    opts.replica.snapshot_timeout_ticks = 5;
    let mut c = Cluster::new(opts);
    let leader = c.wait_for_leader(10 * SECOND_US).expect("a leader");
    let lagging = if leader == 3 { 2 } else { 3 };
    c.crash(lagging);
    let tokens: Vec<u64> = (0..60)
        .map(|i| put(&mut c, leader, &format!("k{i}"), "v"))
        .collect();
    assert!(c.run_until(10 * SECOND_US, |c| tokens.iter().all(|t| ok(c, *t))));
    // Compaction waits for the commit index to be durable, which an idle
    // leader writes a tick or two after its last write.
    c.run_for(SECOND_US);
    let first = c
        .log_store(leader)
        .map(|l| aoc_core::storage::LogStore::first_index(l).unwrap());
    assert!(
        first.unwrap() > 2,
        "the leader compacted its log (first index {first:?})"
    );
    c.drop_snapshots(true);
    c.restart(lagging);
    c.run_for(3 * SECOND_US);
    let sent = |c: &Cluster| {
        c.events()
            .iter()
            .filter(|(_, e)| matches!(e, aoc_core::Event::SnapshotSent { .. }))
            .count()
    };
    assert!(
        sent(&c) >= 2,
        "the cut stream was retried ({} sends)",
        sent(&c)
    );
    assert_ne!(c.state_of(lagging).map(|s| s.1.len()), Some(60));
    c.drop_snapshots(false);
    assert!(
        c.run_until(10 * SECOND_US, |c| c.state_of(lagging).map(|s| s.1.len())
            == Some(60))
    );
    assert_clean(&c);
}

#[test]
fn reads_right_after_a_leader_change_complete() {
    for seed in 0..20 {
        let mut c = Cluster::new(SimOptions::new(100 + seed));
        let old = c.wait_for_leader(10 * SECOND_US).expect("a leader");
        let t = put(&mut c, old, "k", "v1");
        assert!(c.run_until(5 * SECOND_US, |c| ok(c, t)));
        c.crash(old);
        let new = c.wait_for_leader(10 * SECOND_US).expect("a new leader");
        assert_ne!(new, old);
        // Read at once: the new leader has not yet committed in its term,
        // and raft-rs drops such ReadIndex requests; the replica retries.
        let r = c.read(new, b"k");
        assert!(
            c.run_until(5 * SECOND_US, |c| c.outcome(r).is_some()),
            "seed {seed}: the read hung"
        );
        assert_eq!(
            c.outcome(r),
            Some(&Outcome::Read(Ok(Some(b"v1".to_vec())))),
            "seed {seed}"
        );
        assert_clean(&c);
    }
}

#[test]
fn a_retried_write_is_applied_once() {
    let mut c = Cluster::new(SimOptions::new(9));
    let leader = c.wait_for_leader(10 * SECOND_US).expect("a leader");
    let reg = c.register_client(leader);
    assert!(c.run_until(5 * SECOND_US, |c| c.outcome(reg).is_some()));
    let client = match c.outcome(reg) {
        Some(Outcome::Proposal { result: Ok(id), .. }) => {
            u64::from_le_bytes(id.as_slice().try_into().expect("8-byte client id"))
        }
        other => panic!("registration failed: {other:?}"),
    };
    // A compare-and-swap from "absent" succeeds once; applied twice, the
    // second would fail. Both proposals carry the same (client, sequence).
    let cas = KvCommand::cas("k", None, Some(b"1".to_vec())).encode();
    let a = c.propose(leader, cas.clone(), Some((client, 1)));
    let b = c.propose(leader, cas.clone(), Some((client, 1)));
    assert!(c.run_until(5 * SECOND_US, |c| c.outcome(a).is_some()
        && c.outcome(b).is_some()));
    let resp = |c: &Cluster, t| match c.outcome(t) {
        Some(Outcome::Proposal { result: Ok(r), .. }) => KvResponse::decode(r).unwrap(),
        other => panic!("proposal failed: {other:?}"),
    };
    assert!(resp(&c, a).ok, "the first compare-and-swap succeeds");
    assert_eq!(
        resp(&c, a),
        resp(&c, b),
        "the retry gets the original response"
    );
    // Again later, in another batch, after a leader change.
    c.crash(leader);
    let new = c.wait_for_leader(10 * SECOND_US).expect("a new leader");
    let d = c.propose(new, cas, Some((client, 1)));
    assert!(c.run_until(5 * SECOND_US, |c| c.outcome(d).is_some()));
    assert_eq!(resp(&c, d), resp(&c, a));
    // A plain proposal without a session is applied again, and fails.
    let e = c.propose(
        new,
        KvCommand::cas("k", None, Some(b"1".to_vec())).encode(),
        None,
    );
    assert!(c.run_until(5 * SECOND_US, |c| c.outcome(e).is_some()));
    assert!(
        !resp(&c, e).ok,
        "without a session the second swap is applied and fails"
    );
    // An unknown session is refused, never applied.
    let f = c.propose(
        new,
        KvCommand::put("x", "1").encode(),
        Some((client + 1000, 1)),
    );
    assert!(c.run_until(5 * SECOND_US, |c| c.outcome(f).is_some()));
    assert!(matches!(
        c.outcome(f),
        Some(Outcome::Proposal {
            result: Err(aoc_core::Error::SessionExpired { .. }),
            ..
        })
    ));
    assert_clean(&c);
}

/// The sync-before-acknowledgement check can fail: with disks that report
/// writes persisted before they are durable, it reports violations.
#[test]
fn the_durability_check_catches_an_acknowledgement_before_sync() {
    let mut opts = SimOptions::new(11);
    opts.lying_disk = true;
    opts.min_disk_us = 5_000;
    opts.max_disk_us = 20_000;
    let mut c = Cluster::new(opts);
    let leader = c.wait_for_leader(10 * SECOND_US).expect("a leader");
    let tokens: Vec<u64> = (0..10)
        .map(|i| put(&mut c, leader, &format!("k{i}"), "v"))
        .collect();
    c.run_until(5 * SECOND_US, |c| tokens.iter().all(|t| ok(c, *t)));
    let v = c.violations();
    assert!(
        v.iter().any(|v| v.contains("acknowledged")),
        "the check reported nothing: {v:?}"
    );
}

/// A crash at each step of a snapshot install: after the state machine was
/// restored but before the log recorded the snapshot, and after the log
/// recorded it. Either way the member restarts, converges, and nothing
/// acknowledged is lost.
#[test]
fn crashes_during_a_snapshot_install_lose_nothing() {
    for (seed, step) in [
        (21, "restored"),
        (22, "recorded"),
        (23, "restored"),
        (24, "recorded"),
    ] {
        let mut opts = SimOptions::new(seed);
        opts.replica.compact_every_entries = 10;
        opts.replica.compact_keep_entries = 2;
        // A slow disk widens the window between the restore and the write.
        opts.min_disk_us = 2_000;
        opts.max_disk_us = 4_000;
        let mut c = Cluster::new(opts);
        let leader = c.wait_for_leader(10 * SECOND_US).expect("a leader");
        let lagging = if leader == 1 { 3 } else { 1 };
        c.crash(lagging);
        let tokens: Vec<u64> = (0..80)
            .map(|i| put(&mut c, leader, &format!("k{i}"), "v"))
            .collect();
        assert!(c.run_until(10 * SECOND_US, |c| tokens.iter().all(|t| ok(c, *t))));
        c.run_for(SECOND_US);
        let seen = c.events().len();
        c.restart(lagging);
        let installed = |c: &Cluster| {
            c.events()[seen..].iter().any(|(m, e)| {
                *m == lagging && matches!(e, aoc_core::Event::SnapshotInstalled { .. })
            })
        };
        assert!(
            c.run_until(10 * SECOND_US, installed),
            "seed {seed}: no snapshot install"
        );
        if step == "recorded" {
            let recorded = |c: &Cluster| {
                c.log_store(lagging)
                    .is_some_and(|l| aoc_core::storage::LogStore::first_index(l).unwrap() > 1)
            };
            assert!(
                c.run_until(SECOND_US, recorded),
                "seed {seed}: snapshot never recorded"
            );
        } else {
            assert_eq!(
                c.log_store(lagging)
                    .map(|l| aoc_core::storage::LogStore::first_index(l).unwrap()),
                Some(1),
                "seed {seed}: the crash must come before the log records the snapshot"
            );
        }
        c.crash(lagging);
        c.restart(lagging);
        assert!(
            c.run_until(10 * SECOND_US, |c| c.state_of(lagging).map(|s| s.1.len())
                == Some(80)),
            "seed {seed} ({step}): the member did not converge"
        );
        assert_eq!(
            c.state_of(lagging).unwrap().1,
            c.state_of(leader).unwrap().1
        );
        assert_clean(&c);
    }
}
