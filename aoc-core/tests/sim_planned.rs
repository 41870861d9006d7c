//! Planned operations on the deterministic HA cluster (data members 1 and
//! 2, witness 3): switchover and maintenance mode. Every test checks that
//! every acknowledged write is present afterwards, and the cluster checks
//! one active after every event.

use std::collections::BTreeMap;

use aoc_core::sim::{Cluster, Outcome};
use aoc_core::state::KvCommand;
use aoc_core::Mode;

mod common;

use common::{start, Writer, MS, SECOND_US};
const ELECTION_US: u64 = SECOND_US;

/// Lets the cluster settle (a follower applies the last commit index with
/// the next heartbeat once no write follows), then checks that `member`
/// holds every acknowledged write.
fn has_all(c: &mut Cluster, member: u64, w: &Writer) {
    c.run_for(500 * MS);
    let kv: BTreeMap<_, _> = c.state_of(member).expect("up").1.into_iter().collect();
    for k in w.acked(c) {
        assert!(
            kv.contains_key(k.as_bytes()),
            "{}: acknowledged {k} missing on {member}",
            c.replay_hint()
        );
    }
    let v = c.violations();
    assert!(v.is_empty(), "{}: {v:#?}", c.replay_hint());
}

fn wait_outcome(c: &mut Cluster, t: u64) -> Outcome {
    assert!(
        c.run_until(10 * SECOND_US, |c| c.outcome(t).is_some()),
        "no outcome"
    );
    c.outcome(t).cloned().expect("an outcome")
}

fn set_maintenance(c: &mut Cluster, active: u64, on: bool) {
    let t = c.set_maintenance(active, on);
    match wait_outcome(c, t) {
        Outcome::Proposal { result: Ok(_), .. } => {}
        other => panic!("maintenance {on}: {other:?}"),
    }
    c.run_for(200 * MS);
}

/// 1: switchover under continuous writes: nothing lost, one active at
/// every instant, the pause measured; and back.
#[test]
fn case_1_switchover_and_back_under_writes() {
    let mut pauses = Vec::new();
    for seed in 0..12 {
        let (mut c, a, p) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        let at = c.now_us();
        let t = c.switchover(a);
        w.run(&mut c, 2 * SECOND_US);
        match c.outcome(t) {
            Some(Outcome::Switchover(Ok(ticks))) => {
                assert!(*ticks <= 5, "seed {seed}: {ticks} ticks")
            }
            other => panic!("seed {seed}: switchover: {other:?}"),
        }
        // The longest gap between acknowledgements around the switchover.
        let times: Vec<u64> = c
            .acked()
            .iter()
            .map(|x| x.at_us)
            .filter(|t| *t >= at)
            .collect();
        let gap = times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(u64::MAX);
        pauses.push(gap);
        assert_eq!(c.active(), Some(p), "seed {seed}");
        assert_eq!(
            c.status(p).unwrap().mode,
            Mode::Sync,
            "seed {seed}: the new active starts in sync mode"
        );
        w.run(&mut c, SECOND_US);
        let t = c.switchover(p);
        w.run(&mut c, 2 * SECOND_US);
        assert!(
            matches!(c.outcome(t), Some(Outcome::Switchover(Ok(_)))),
            "seed {seed}: back"
        );
        assert_eq!(c.active(), Some(a));
        w.run(&mut c, SECOND_US);
        has_all(&mut c, a, &w);
        has_all(&mut c, p, &w);
    }
    let max = *pauses.iter().max().unwrap();
    eprintln!(
        "switchover write pause (simulated): max {} ms over {} switchovers",
        max / MS,
        pauses.len()
    );
    assert!(max < SECOND_US, "switchover pause {max} us");
}

/// 2: refused while the passive lags or in degraded mode; abandoned when the
/// passive cannot catch up, with the old active serving again.
#[test]
fn case_2_switchover_refused_and_abandoned() {
    for seed in 0..8 {
        let (mut c, a, p) = start(seed);
        let mut w = Writer::new();
        // Degraded mode: refused with the reason.
        c.crash(p);
        w.run(&mut c, 2 * SECOND_US);
        let t = c.switchover(a);
        match wait_outcome(&mut c, t) {
            Outcome::Switchover(Err(e)) => assert!(e.to_string().contains("Degraded"), "{e}"),
            other => panic!("seed {seed}: {other:?}"),
        }
        // Asked of the passive or the witness: refused.
        c.restart(p);
        w.run(&mut c, 3 * SECOND_US);
        for other in [p, 3] {
            let t = c.switchover(other);
            assert!(
                matches!(
                    wait_outcome(&mut c, t),
                    Outcome::Switchover(Err(aoc_core::Error::NotLeader { .. }))
                ),
                "seed {seed}: asked of {other}"
            );
        }
        // The passive's disk stalls right after the switchover starts: it
        // cannot catch up; the switchover is abandoned and the active serves.
        assert_eq!(c.status(a).unwrap().mode, Mode::Sync, "seed {seed}");
        let t = c.switchover(a);
        c.stall_disk(p, true);
        w.run(&mut c, 5 * SECOND_US);
        match c.outcome(t) {
            Some(Outcome::Switchover(Err(e))) => {
                assert!(e.to_string().contains("abandoned"), "{e}")
            }
            other => panic!("seed {seed}: expected abandoned, got {other:?}"),
        }
        assert_eq!(
            c.active(),
            Some(a),
            "seed {seed}: the old active serves again"
        );
        let before = w.acked(&c).len();
        w.run(&mut c, SECOND_US);
        assert!(w.acked(&c).len() > before, "seed {seed}: writes go on");
        c.stall_disk(p, false);
        w.run(&mut c, 2 * SECOND_US);
        has_all(&mut c, a, &w);
    }
}

/// 3: maintenance on: kill the active: no failover for ten election
/// timeouts; restart it: it takes its role back, also when it was killed
/// after its last appends reached its peers but before its own write.
#[test]
fn case_3_maintenance_suspends_failover() {
    for seed in 0..10 {
        let (mut c, a, p) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        set_maintenance(&mut c, a, true);
        assert_eq!(c.status(p).unwrap().maintenance.map(|m| m.0), Some(a));
        if seed % 2 == 1 {
            // Killed under load with its disk behind its appends.
            c.stall_disk(a, true);
            for i in 0..20 {
                c.propose(a, KvCommand::put(format!("late{i}"), "x").encode(), None);
            }
            c.run_for(50 * MS);
        }
        c.crash(a);
        c.stall_disk(a, false);
        c.run_for(10 * ELECTION_US);
        assert_eq!(
            c.active(),
            None,
            "seed {seed}: no failover during maintenance"
        );
        assert!(
            !c.events().iter().any(|(m, e)| *m == p
                && matches!(
                    e,
                    aoc_core::Event::RoleChanged {
                        role: aoc_core::Role::Leader,
                        ..
                    }
                )),
            "seed {seed}: the passive never led"
        );
        c.restart(a);
        let ok = c.run_until(20 * SECOND_US, |c| c.active() == Some(a));
        assert!(ok, "seed {seed}: the active took its role back");
        w.run(&mut c, SECOND_US);
        has_all(&mut c, a, &w);
    }
}

/// 4: maintenance on, the active dies for good; maintenance is turned off
/// locally on the survivors (also in degraded mode, where only the witness
/// holds the newest entries): a data member becomes active with every
/// acknowledged write.
#[test]
fn case_4_local_off_after_the_active_died() {
    for seed in 0..10 {
        let (mut c, a, p) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        set_maintenance(&mut c, a, true);
        if seed % 2 == 1 {
            // Degraded: the passive is behind; the witness holds the newest.
            c.crash(p);
            w.run(&mut c, 2 * SECOND_US);
            c.restart(p);
            c.isolate(p);
            c.run_for(SECOND_US);
        }
        c.crash(a);
        c.heal();
        c.run_for(3 * ELECTION_US);
        assert_eq!(c.active(), None, "seed {seed}");
        c.maintenance_off_local(p);
        c.maintenance_off_local(3);
        let ok = c.run_until(20 * SECOND_US, |c| c.active() == Some(p));
        assert!(ok, "seed {seed}: the passive became active");
        c.run_for(SECOND_US);
        assert_eq!(
            c.status(p).unwrap().maintenance,
            None,
            "seed {seed}: the replicated off is committed"
        );
        assert_eq!(c.status(3).unwrap().maintenance, None);
        w.run(&mut c, SECOND_US);
        has_all(&mut c, p, &w);
    }
}

/// 5: maintenance on while the passive and the witness restart: they
/// rejoin and replication goes on; off: automatic failover works again.
#[test]
fn case_5_restarts_during_maintenance_then_off() {
    for seed in 0..8 {
        let (mut c, a, p) = start(seed);
        let mut w = Writer::new();
        set_maintenance(&mut c, a, true);
        c.crash(p);
        w.run(&mut c, SECOND_US);
        c.restart(p);
        c.crash(3);
        w.run(&mut c, SECOND_US);
        c.restart(3);
        w.run(&mut c, 3 * SECOND_US);
        assert_eq!(c.active(), Some(a));
        assert_eq!(
            c.status(a).unwrap().mode,
            Mode::Sync,
            "seed {seed}: replication caught up"
        );
        assert_eq!(
            c.status(p).unwrap().maintenance.map(|m| m.0),
            Some(a),
            "seed {seed}"
        );
        set_maintenance(&mut c, a, false);
        c.crash(a);
        w.run(&mut c, 4 * SECOND_US);
        assert_eq!(c.active(), Some(p), "seed {seed}: failover works again");
        c.restart(a);
        w.run(&mut c, SECOND_US);
        has_all(&mut c, p, &w);
    }
}

/// 6: a switchover during maintenance, then a restart of the new active:
/// it takes its role back, and the old active does not take over.
#[test]
fn case_6_switchover_during_maintenance() {
    for seed in 0..8 {
        let (mut c, a, p) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        set_maintenance(&mut c, a, true);
        let t = c.switchover(a);
        w.run(&mut c, 3 * SECOND_US);
        assert!(
            matches!(c.outcome(t), Some(Outcome::Switchover(Ok(_)))),
            "seed {seed}: {:?}",
            c.outcome(t)
        );
        assert_eq!(c.active(), Some(p));
        assert_eq!(
            c.status(a).unwrap().maintenance.map(|m| m.0),
            Some(p),
            "seed {seed}: the new one is allowed"
        );
        c.crash(p);
        c.run_for(10 * ELECTION_US);
        assert_eq!(
            c.active(),
            None,
            "seed {seed}: the old active does not take over"
        );
        c.restart(p);
        let ok = c.run_until(20 * SECOND_US, |c| c.active() == Some(p));
        assert!(ok, "seed {seed}: the new active took its role back");
        w.run(&mut c, SECOND_US);
        has_all(&mut c, p, &w);
    }
}

/// 7: `maintenance on`, the active killed and restarted (it takes its role
/// back), `maintenance off` answered, and the active killed at once,
/// before the others learn that the off committed (they learn the commit
/// index with the next heartbeat). They hold the off entry, unapplied: a
/// member decides whether it may stand from the newest setting in its
/// log, so one of them stands and an active is back within the failover
/// bound. Deciding from the applied setting only ("maintenance on, only
/// the dead member may stand") left no active for good: 5 runs out of 5
/// on three processes. Nothing the runbook does after an answered
/// `maintenance off` helps here, and the test does nothing either.
#[test]
fn case_7_the_active_dies_right_after_maintenance_off() {
    for seed in 0..12 {
        let (mut c, a, p) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        set_maintenance(&mut c, a, true);
        c.crash(a);
        w.run(&mut c, SECOND_US);
        c.restart(a);
        assert!(
            c.run_until(10 * SECOND_US, |c| c.active() == Some(a)),
            "seed {seed}: the allowed member takes its role back"
        );
        w.run(&mut c, 300 * MS);
        let t = c.set_maintenance(a, false);
        assert!(c.run_until(SECOND_US, |c| c.outcome(t).is_some()));
        assert!(matches!(
            c.outcome(t),
            Some(Outcome::Proposal { result: Ok(_), .. })
        ));
        c.crash(a);
        let killed_at = c.now_us();
        let back = c.run_until(5 * SECOND_US, |c| c.active().is_some());
        assert!(
            back,
            "seed {seed}: no active after the active died right after maintenance off: {:?} ({})",
            c.status(p).and_then(|s| s.waiting_for),
            c.replay_hint()
        );
        assert_eq!(c.active(), Some(p), "seed {seed}");
        eprintln!(
            "seed {seed}: active again {} ms after the kill",
            (c.now_us() - killed_at) / MS
        );
        w.run(&mut c, SECOND_US);
        c.restart(a);
        has_all(&mut c, p, &w);
        assert_eq!(c.status(p).and_then(|s| s.maintenance), None);
    }
}
