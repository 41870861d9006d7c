//! Witness arbitration and RPO=0 replication on the deterministic cluster:
//! data members 1 and 2, witness 3. Every test checks, across seeds, that
//! every acknowledged write is present afterwards on both data members,
//! that no two members were active at the same simulated instant (the
//! cluster checks it after every event), and that acknowledgements in sync
//! mode were on both data members' synced logs.

use std::collections::BTreeMap;

use aoc_core::sim::{Cluster, Outcome, SimOptions};
use aoc_core::state::KvCommand;
use aoc_core::Mode;

mod common;

use common::{start, Writer, MS, SECOND_US};
/// Default sync_timeout: 10 ticks of 100 ms.
const SYNC_TIMEOUT_US: u64 = SECOND_US;

/// The longest gap between consecutive acknowledgements after `from_us`.
fn write_pause_us(c: &Cluster, from_us: u64) -> u64 {
    let times: Vec<u64> = c
        .acked()
        .iter()
        .map(|a| a.at_us)
        .filter(|t| *t >= from_us)
        .collect();
    let mut gap = times.first().map(|t| t - from_us).unwrap_or(u64::MAX);
    for w in times.windows(2) {
        gap = gap.max(w[1] - w[0]);
    }
    gap
}

fn settle(c: &mut Cluster) {
    c.heal();
    for id in 1..=3 {
        c.restart(id);
    }
    let done = c.run_until(30 * SECOND_US, |c| {
        let Some(a) = c.active() else { return false };
        let Some(st) = c.status(a) else { return false };
        st.mode == Mode::Sync
            && [1, 2].iter().all(|d| {
                c.state_of(*d)
                    .is_some_and(|(applied, _)| applied == st.commit)
            })
    });
    assert!(done, "{}: did not settle in sync mode", c.replay_hint());
}

/// Every acknowledged write is on both data members, which hold the same
/// state; no invariant was broken.
fn check(c: &Cluster, w: &Writer) {
    let v = c.violations();
    assert!(v.is_empty(), "{}: {v:#?}", c.replay_hint());
    let s1 = c.state_of(1).expect("member 1 up");
    let s2 = c.state_of(2).expect("member 2 up");
    assert_eq!(s1.1, s2.1, "{}: data members differ", c.replay_hint());
    let kv: BTreeMap<_, _> = s1.1.into_iter().collect();
    let acked = w.acked(c);
    assert!(
        !acked.is_empty(),
        "{}: nothing acknowledged",
        c.replay_hint()
    );
    for k in acked {
        assert!(
            kv.contains_key(k.as_bytes()),
            "{}: acknowledged {k} lost",
            c.replay_hint()
        );
    }
}

const SEEDS: std::ops::Range<u64> = 0..12;

#[test]
fn the_first_active_is_a_data_member_and_the_witness_runs_no_state_machine() {
    for seed in 0..50 {
        let mut c = Cluster::new(SimOptions::ha(seed));
        assert!(
            c.run_until(20 * SECOND_US, |c| c.active().is_some()),
            "seed {seed}"
        );
        assert_ne!(
            c.active(),
            Some(3),
            "seed {seed}: the witness became active"
        );
        assert!(c.replica(3).unwrap().state_machine().is_none());
        assert!(c.status(3).unwrap().witness);
    }
}

/// Case 1: the active dies in sync mode; the passive takes over with every
/// acknowledged write.
#[test]
fn case_1_active_dies_in_sync_mode() {
    let mut pauses = Vec::new();
    for seed in SEEDS {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        let at = c.now_us();
        c.crash(active);
        w.run(&mut c, 5 * SECOND_US);
        assert_eq!(
            c.active(),
            Some(passive),
            "seed {seed}: the passive took over"
        );
        pauses.push(write_pause_us(&c, at));
        settle(&mut c);
        check(&c, &w);
    }
    let max = *pauses.iter().max().unwrap();
    eprintln!(
        "case 1 write pause (simulated): max {} ms over {} seeds",
        max / MS,
        pauses.len()
    );
    assert!(max < 3 * SECOND_US, "failover pause {max} us");
}

/// Case 2: the passive dies; writes pause no longer than sync_timeout, go
/// on degraded; the passive returns, catches up under writes, sync resumes.
#[test]
fn case_2_passive_dies_then_returns() {
    let mut pauses = Vec::new();
    for seed in SEEDS {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        let at = c.now_us();
        c.crash(passive);
        w.run(&mut c, 3 * SECOND_US);
        assert_eq!(c.active(), Some(active), "seed {seed}");
        let st = c.status(active).unwrap();
        assert_eq!(st.mode, Mode::Degraded, "seed {seed}");
        // Status shows how far behind the passive is.
        assert!(
            st.passive_lag_entries.unwrap_or(0) > 100,
            "seed {seed}: {st:?}"
        );
        assert!(
            st.passive_lag_bytes.unwrap_or(0) > 100 * 20,
            "seed {seed}: {st:?}"
        );
        let pause = write_pause_us(&c, at);
        pauses.push(pause);
        assert!(
            pause <= SYNC_TIMEOUT_US + 300 * MS,
            "seed {seed}: pause {pause} us"
        );
        c.restart(passive);
        let back = c.now_us();
        w.run(&mut c, 3 * SECOND_US);
        assert_eq!(
            c.status(active).unwrap().mode,
            Mode::Sync,
            "seed {seed}: sync resumed"
        );
        assert!(
            c.events().iter().any(|(m, e)| *m == active
                && matches!(e, aoc_core::Event::ModeChanged { mode: Mode::Sync })),
            "seed {seed}"
        );
        let _ = back;
        settle(&mut c);
        check(&c, &w);
    }
    eprintln!(
        "case 2 write pause (simulated): max {} ms",
        pauses.iter().max().unwrap() / MS
    );
}

/// Case 3: the passive dies, writes go on degraded, then the active dies:
/// the passive returns, the witness brings it up to date, and it becomes
/// active with every acknowledged write.
#[test]
fn case_3_passive_then_active_die() {
    for seed in SEEDS {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        c.crash(passive);
        w.run(&mut c, 3 * SECOND_US);
        c.crash(active);
        c.run_for(SECOND_US);
        c.restart(passive);
        let ok = c.run_until(20 * SECOND_US, |c| c.active() == Some(passive));
        assert!(ok, "seed {seed}: the returning passive became active");
        // It holds every write acknowledged in degraded mode.
        let kv: BTreeMap<_, _> = c.state_of(passive).unwrap().1.into_iter().collect();
        for k in w.acked(&c) {
            assert!(
                kv.contains_key(k.as_bytes()),
                "seed {seed}: {k} missing on the new active"
            );
        }
        w.run(&mut c, SECOND_US);
        settle(&mut c);
        check(&c, &w);
    }
}

/// Case 4: the witness dies: sync mode continues; then the passive dies
/// too: writes stop, and resume when either returns.
#[test]
fn case_4_witness_then_passive_die() {
    for seed in SEEDS {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        c.crash(3);
        w.run(&mut c, 2 * SECOND_US);
        assert_eq!(
            c.status(active).map(|s| s.mode),
            Some(Mode::Sync),
            "seed {seed}"
        );
        let before = w.acked(&c).len();
        assert!(
            before > 100,
            "seed {seed}: writes went on without the witness ({before})"
        );
        c.crash(passive);
        w.run(&mut c, 3 * SECOND_US);
        let stopped = w.acked(&c).len();
        c.run_for(SECOND_US);
        assert!(
            stopped <= before + 110,
            "seed {seed}: writes must stop without a quorum"
        );
        if seed % 2 == 0 {
            c.restart(3);
        } else {
            c.restart(passive);
        }
        let ok = c.run_until(20 * SECOND_US, |c| c.active().is_some());
        assert!(ok, "seed {seed}: an active once a second member returned");
        w.run(&mut c, 2 * SECOND_US);
        assert!(w.acked(&c).len() > stopped, "seed {seed}: writes resumed");
        settle(&mut c);
        check(&c, &w);
    }
}

/// Cases 5 and 6: partitions. The cluster's one-active check runs after
/// every event.
#[test]
fn case_5_and_6_partitions_keep_one_active() {
    for seed in SEEDS {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        // 5: the active is cut off from both peers.
        c.isolate(active);
        w.run(&mut c, 5 * SECOND_US);
        assert_eq!(
            c.active(),
            Some(passive),
            "seed {seed}: the other side elected"
        );
        c.heal();
        w.run(&mut c, 3 * SECOND_US);
        // 6: the data members cannot reach each other; both reach the witness.
        let a = c.active().expect("an active after healing");
        let p = if a == 1 { 2 } else { 1 };
        c.set_link(a, p, false);
        c.set_link(p, a, false);
        w.run(&mut c, 5 * SECOND_US);
        assert!(c.active().is_some(), "seed {seed}: one active continues");
        settle(&mut c);
        check(&c, &w);
    }
}

/// Case 7: the passive's disk stalls while its heartbeats continue: the
/// active degrades within sync_timeout and goes on.
#[test]
fn case_7_passive_disk_stall_degrades() {
    for seed in SEEDS {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        let at = c.now_us();
        c.stall_disk(passive, true);
        w.run(&mut c, 3 * SECOND_US);
        assert_eq!(
            c.status(active).unwrap().mode,
            Mode::Degraded,
            "seed {seed}"
        );
        assert!(
            write_pause_us(&c, at) <= SYNC_TIMEOUT_US + 300 * MS,
            "seed {seed}"
        );
        c.stall_disk(passive, false);
        w.run(&mut c, 2 * SECOND_US);
        settle(&mut c);
        check(&c, &w);
    }
}

/// Case 10: a failover right after a failover never waits sync_timeout for
/// the member that is gone.
#[test]
fn case_10_failover_after_failover() {
    let mut pauses = Vec::new();
    for seed in SEEDS {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        c.crash(active);
        w.run(&mut c, 3 * SECOND_US);
        assert_eq!(c.active(), Some(passive));
        c.restart(active);
        w.run(&mut c, 3 * SECOND_US);
        assert_eq!(c.status(passive).unwrap().mode, Mode::Sync, "seed {seed}");
        let at = c.now_us();
        c.crash(passive);
        w.run(&mut c, 4 * SECOND_US);
        assert_eq!(c.active(), Some(active), "seed {seed}");
        let pause = write_pause_us(&c, at);
        pauses.push(pause);
        settle(&mut c);
        check(&c, &w);
    }
    let max = *pauses.iter().max().unwrap();
    eprintln!("case 10 write pause (simulated): max {} ms", max / MS);
}

/// Case 14: the active's disk stalls while its network is fine: a caught-up
/// passive takes over.
#[test]
fn case_14_active_disk_stall_hands_over() {
    for seed in SEEDS {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        c.stall_disk(active, true);
        w.run(&mut c, 5 * SECOND_US);
        assert_eq!(
            c.active(),
            Some(passive),
            "seed {seed}: the passive took over"
        );
        c.stall_disk(active, false);
        w.run(&mut c, SECOND_US);
        settle(&mut c);
        check(&c, &w);
    }
}

/// Case 9, the stale tail: the active is cut off and keeps taking
/// proposals until its uncommitted tail is longer than the others' logs;
/// the passive is elected with the witness and acknowledges writes in
/// degraded mode; the new active dies and the old one returns. The witness
/// leads, discards the stale tail, brings the old active up to date and
/// hands it leadership, with every acknowledged write.
#[test]
fn case_9_stale_tail() {
    let mut pauses = Vec::new();
    for seed in SEEDS {
        let (mut c, old, passive) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        c.isolate(old);
        // Proposals the cut-off leader still appends (never committed).
        for i in 0..200 {
            c.propose(old, KvCommand::put(format!("stale{i}"), "x").encode(), None);
        }
        c.run_for(3 * SECOND_US);
        // A few writes acknowledged by the new active in degraded mode.
        w.run(&mut c, SECOND_US / 2);
        assert_eq!(
            c.active(),
            Some(passive),
            "seed {seed}: the passive was elected"
        );
        let stale_last = c.status(old).map(|s| s.last_index).unwrap_or(0);
        let new_last = c.status(passive).unwrap().last_index;
        assert!(
            stale_last > new_last,
            "seed {seed}: the stale tail is longer ({stale_last} > {new_last})"
        );
        let at = c.now_us();
        c.crash(passive);
        c.heal();
        let ok = c.run_until(20 * SECOND_US, |c| c.active() == Some(old));
        assert!(ok, "seed {seed}: the old active took over again");
        assert!(
            c.events().iter().any(|(m, e)| *m == 3
                && matches!(
                    e,
                    aoc_core::Event::RoleChanged {
                        role: aoc_core::Role::Leader,
                        ..
                    }
                )),
            "seed {seed}: the witness led"
        );
        pauses.push(c.now_us() - at);
        let kv: BTreeMap<_, _> = c.state_of(old).unwrap().1.into_iter().collect();
        for k in w.acked(&c) {
            assert!(
                kv.contains_key(k.as_bytes()),
                "seed {seed}: acknowledged {k} lost"
            );
        }
        assert!(
            !kv.keys().any(|k| k.starts_with(b"stale")),
            "seed {seed}: the stale tail was discarded"
        );
        w.run(&mut c, SECOND_US);
        settle(&mut c);
        check(&c, &w);
    }
    eprintln!(
        "case 9 time to a new active (simulated): max {} ms",
        pauses.iter().max().unwrap() / MS
    );
}

/// Case 15: the fenced lease holds when replies are delayed up to the
/// election timeout and when a voter restarts at once (a restarted member
/// knows no leader, hence has no lease: it must not vote at once).
#[test]
fn case_15_the_fence_holds_under_delays_and_voter_restarts() {
    use aoc_core::sim::NetFaults;
    for seed in 0..24 {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        // The data members lose each other; the passive keeps standing and
        // the witness, in the active's lease, refuses it. Then the witness
        // restarts at once, while the active's lease still runs.
        c.set_link(active, passive, false);
        c.set_link(passive, active, false);
        // No writes meanwhile: the passive's log stays as up to date as the
        // witness's, so only the vote rule stands in its way.
        c.run_for(1_500_000 + seed * 50_000);
        c.crash(3);
        c.restart(3);
        // The restarted witness does not hear from the active either, so it
        // learns of no leader (and no lease) until the active's lease ends.
        c.set_link(active, 3, false);
        c.set_link(3, active, false);
        c.run_for(2 * SECOND_US);
        w.run(&mut c, 2 * SECOND_US);
        c.heal();
        // Replies delayed up to the election timeout.
        c.set_net(NetFaults {
            drop_per_mille: 0,
            duplicate_per_mille: 10,
            min_delay_us: 100,
            max_delay_us: SECOND_US,
        });
        w.run(&mut c, 8 * SECOND_US);
        c.set_net(NetFaults::default());
        settle(&mut c);
        check(&c, &w);
    }
}

/// The witness keeps only the in-flight tail once the cluster is settled in
/// sync mode (it compacts in steps of 64 entries).
fn check_witness_retention(c: &Cluster) {
    let w = c.status(3).expect("witness up");
    let retained = w.last_index.saturating_sub(w.first_index) + 1;
    assert!(
        w.log_bytes < 64 * 1024,
        "{}: witness log {} bytes",
        c.replay_hint(),
        w.log_bytes
    );
    assert!(
        retained <= 2 * 64,
        "{}: the witness retains {retained} entries",
        c.replay_hint()
    );
}

#[test]
fn the_witness_keeps_only_the_tail_in_sync_mode() {
    for seed in 0..4 {
        let (mut c, _, _) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, 5 * SECOND_US);
        settle(&mut c);
        c.run_for(3 * SECOND_US);
        check(&c, &w);
        assert!(w.acked(&c).len() > 300);
        check_witness_retention(&c);
    }
}

/// Case 8: the witness is elected after it has compacted its log (and
/// hands over to the data member it completes).
#[test]
fn case_8_witness_elected_after_compaction() {
    for seed in SEEDS {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, 4 * SECOND_US);
        let first = c.status(3).unwrap().first_index;
        assert!(
            first > 64,
            "seed {seed}: the witness compacted (first index {first})"
        );
        // The passive falls behind; the witness keeps what it lacks.
        c.crash(passive);
        w.run(&mut c, 2 * SECOND_US);
        c.crash(active);
        c.restart(passive);
        let ok = c.run_until(20 * SECOND_US, |c| c.active() == Some(passive));
        assert!(
            ok,
            "seed {seed}: the passive became active through the witness"
        );
        assert!(
            c.events().iter().any(|(m, e)| *m == 3
                && matches!(
                    e,
                    aoc_core::Event::RoleChanged {
                        role: aoc_core::Role::Leader,
                        ..
                    }
                )),
            "seed {seed}: the witness led"
        );
        w.run(&mut c, SECOND_US);
        settle(&mut c);
        check(&c, &w);
    }
}

/// Case 11: the witness leads, but the only reachable data member cannot
/// be completed from its log (its disk was rolled back past what the
/// witness compacted): it serves nothing, says why, and hands over when a
/// data member it can complete appears.
#[test]
fn case_11_witness_waits_for_a_data_member_it_can_complete() {
    for seed in 0..6 {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US / 2);
        c.crash(passive);
        let old = c.disk_image(passive).expect("passive is down");
        c.restart(passive);
        w.run(&mut c, 4 * SECOND_US);
        c.crash(passive);
        c.restore_image(passive, &old);
        // No message of the old active may reach the rolled-back passive:
        // a heartbeat carrying a commit index it no longer holds would tell
        // it that it lost data (it then refuses to vote, rightly).
        c.set_link(active, passive, false);
        c.run_for(SECOND_US);
        c.crash(active);
        c.heal();
        c.restart(passive);
        let waiting = c.run_until(20 * SECOND_US, |c| {
            c.status(3).is_some_and(|s| s.waiting_for.is_some())
        });
        assert!(waiting, "seed {seed}: the witness says what it waits for");
        let why = c.status(3).unwrap().waiting_for.unwrap();
        assert!(
            why.contains("waiting for a data member holding index >="),
            "{why}"
        );
        assert_eq!(c.active(), None, "seed {seed}: nothing is served meanwhile");
        c.restart(active);
        let ok = c.run_until(20 * SECOND_US, |c| c.active() == Some(active));
        assert!(
            ok,
            "seed {seed}: the witness handed over to the member it completes"
        );
        settle(&mut c);
        check(&c, &w);
    }
}

/// Case 12: the witness restarts wiped while the active is down (and,
/// separately, while partitioned): it neither bootstraps nor votes, and
/// the lagging passive is not elected with its help.
#[test]
fn case_12_a_wiped_witness_neither_bootstraps_nor_votes() {
    for seed in 0..6 {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        c.crash(passive);
        w.run(&mut c, 2 * SECOND_US);
        c.crash(active);
        c.wipe(3);
        c.restart(3);
        c.restart(passive);
        c.run_for(10 * SECOND_US);
        assert_eq!(
            c.active(),
            None,
            "seed {seed}: the lagging passive was not elected"
        );
        let why = c.status(3).and_then(|s| s.waiting_for).unwrap_or_default();
        assert!(why.contains("members replace"), "seed {seed}: {why}");
        // The active returns: with the passive it holds a quorum.
        c.restart(active);
        let ok = c.run_until(20 * SECOND_US, |c| c.active() == Some(active));
        assert!(ok, "seed {seed}");
        let kv: BTreeMap<_, _> = c.state_of(active).unwrap().1.into_iter().collect();
        for k in w.acked(&c) {
            assert!(kv.contains_key(k.as_bytes()), "seed {seed}: {k} lost");
        }
        assert!(c.violations().is_empty(), "{:?}", c.violations());

        // Separately: wiped while cut off from everyone: it only waits.
        let (mut c, _, _) = start(seed + 100);
        c.isolate(3);
        c.wipe(3);
        c.restart(3);
        c.run_for(5 * SECOND_US);
        let why = c.status(3).and_then(|s| s.waiting_for).unwrap_or_default();
        assert!(why.contains("waiting for members"), "seed {seed}: {why}");
        assert!(c.violations().is_empty());
    }
}

/// Case 13: a fresh cluster whose third member starts late bootstraps when
/// it arrives, with no operator step.
#[test]
fn case_13_a_late_third_member() {
    for seed in 0..6 {
        let mut c = Cluster::new(SimOptions::ha(seed));
        let late = 1 + seed % 3;
        c.crash(late);
        c.run_for(5 * SECOND_US);
        assert_eq!(
            c.active(),
            None,
            "seed {seed}: nobody bootstraps without member {late}"
        );
        let other = if late == 1 { 2 } else { 1 };
        let why = c
            .status(other)
            .and_then(|s| s.waiting_for)
            .unwrap_or_default();
        assert!(
            why.contains(&format!("[{late}]")),
            "seed {seed}: status names whom it waits for: {why}"
        );
        c.restart(late);
        let mut w = Writer::new();
        let ok = c.run_until(20 * SECOND_US, |c| c.active().is_some());
        assert!(
            ok,
            "seed {seed}: the cluster started once member {late} arrived"
        );
        w.run(&mut c, SECOND_US);
        settle(&mut c);
        check(&c, &w);
    }
}

/// Random faults on the HA cluster: crashes (losing unsynced state),
/// restarts, partitions (one-way and both ways), stalled disks, message
/// loss, duplication and delay. One fault at a time so that a correct
/// build can always recover; then heal and settle. Checks: every
/// acknowledged write survives on both data members, one active at every
/// instant, sync-mode acknowledgements on both data members' synced logs,
/// and liveness after healing. `AOC_SIM_SEEDS=N` runs more seeds.
#[test]
fn random_faults_keep_every_promise() {
    use aoc_core::sim::NetFaults;
    use rand::{Rng, SeedableRng};
    let seeds: u64 = std::env::var("AOC_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let only: Option<u64> = std::env::var("AOC_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    for seed in only.map(|s| s..s + 1).unwrap_or(0..seeds) {
        eprintln!("ha seed {seed} (replay: AOC_SIM_SEED={seed} cargo test -p aoc-core --test sim_ha random)");
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed ^ 0xA0C);
        let (mut c, _, _) = start(seed);
        let mut w = Writer::new();
        c.set_net(NetFaults {
            drop_per_mille: 20,
            duplicate_per_mille: 20,
            min_delay_us: 100,
            max_delay_us: 20_000,
        });
        for _ in 0..12 {
            let id = rng.gen_range(1..=3u64);
            match rng.gen_range(0..6) {
                0 => {
                    c.crash(id);
                    w.run(&mut c, rng.gen_range(100..3_000) * MS);
                    c.restart(id);
                }
                1 => {
                    c.isolate(id);
                    w.run(&mut c, rng.gen_range(100..3_000) * MS);
                    c.heal();
                }
                2 => {
                    let other = 1 + (id % 3);
                    c.set_link(id, other, false);
                    w.run(&mut c, rng.gen_range(100..3_000) * MS);
                    c.heal();
                }
                3 => {
                    c.stall_disk(id, true);
                    w.run(&mut c, rng.gen_range(100..3_000) * MS);
                    c.stall_disk(id, false);
                }
                _ => {}
            }
            w.run(&mut c, rng.gen_range(200..2_000) * MS);
        }
        c.set_net(NetFaults::default());
        settle(&mut c);
        check(&c, &w);
    }
}

/// Lease reads: the active answers at once inside its lease, with every
/// acknowledged write; a passive, the witness, or a cut-off old active
/// whose lease ended refuse.
#[test]
fn lease_reads_are_served_only_inside_the_lease() {
    for seed in 0..6 {
        let (mut c, active, passive) = start(seed);
        let t = c.propose(active, KvCommand::put("k", "v1").encode(), None);
        assert!(c.run_until(SECOND_US, |c| c.outcome(t).is_some()));
        let r = c.read_lease(active, b"k");
        assert_eq!(
            c.outcome(r),
            Some(&Outcome::Read(Ok(Some(b"v1".to_vec())))),
            "seed {seed}"
        );
        for other in [passive, 3] {
            let r = c.read_lease(other, b"k");
            assert!(
                matches!(
                    c.outcome(r),
                    Some(Outcome::Read(Err(aoc_core::Error::NotLeader { .. })))
                ),
                "seed {seed}: member {other} refused"
            );
        }
        c.isolate(active);
        c.run_for(SECOND_US);
        let r = c.read_lease(active, b"k");
        assert!(
            matches!(c.outcome(r), Some(Outcome::Read(Err(_)))),
            "seed {seed}: the cut-off active's lease ended: {:?}",
            c.outcome(r)
        );
        assert!(c.violations().is_empty());
    }
}

/// A double failure: the passive was down (degraded mode), then the active
/// and the witness fail. The returning passive cannot be elected alone (the
/// newest writes were only on the other two): no automatic failover, and
/// its status says why.
#[test]
fn no_failover_without_a_quorum_and_status_says_why() {
    for seed in 0..6 {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        c.crash(passive);
        w.run(&mut c, 2 * SECOND_US);
        c.crash(active);
        c.crash(3);
        c.restart(passive);
        c.run_for(5 * SECOND_US);
        assert_eq!(c.active(), None, "seed {seed}");
        let why = c
            .status(passive)
            .and_then(|s| s.waiting_for)
            .unwrap_or_default();
        assert!(why.contains("not heard from members"), "seed {seed}: {why}");
        assert!(
            why.contains(&active.to_string()) && why.contains('3'),
            "seed {seed}: {why}"
        );
        c.restart(3);
        c.restart(active);
        settle(&mut c);
        check(&c, &w);
    }
}

/// The witness is wiped while the active waits in sync mode for a passive
/// it cannot reach: the witness's earlier acknowledgements are void, so
/// the active must not fall back to degraded mode on them (the entries
/// would commit with one copy). Writes wait, status says why, and resume
/// when the passive is back. Without the rule, the durability check
/// reports `acknowledged ... held durably by 1 of 3 members`.
#[test]
fn a_wiped_witness_gives_the_active_no_second_copy() {
    for seed in 0..8 {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        c.set_link(active, passive, false);
        w.run(&mut c, 200 * MS);
        c.wipe(3);
        c.restart(3);
        let acked_at_wipe = w.acked(&c).len();
        let waited = c.run_until(3 * SECOND_US, |c| {
            c.status(active)
                .and_then(|s| s.waiting_for)
                .is_some_and(|why| why.contains("the witness lost its data"))
        });
        let v = c.violations();
        assert!(v.is_empty(), "{}: {v:#?}", c.replay_hint());
        assert!(waited, "seed {seed}: status says what writes wait for");
        w.run(&mut c, 2 * SECOND_US);
        assert_eq!(
            w.acked(&c).len(),
            acked_at_wipe,
            "seed {seed}: nothing acknowledged with one copy"
        );
        let v = c.violations();
        assert!(v.is_empty(), "{}: {v:#?}", c.replay_hint());
        c.set_link(active, passive, true);
        w.run(&mut c, 2 * SECOND_US);
        assert!(
            w.acked(&c).len() > acked_at_wipe,
            "seed {seed}: writes resumed with the passive"
        );
        let v = c.violations();
        assert!(v.is_empty(), "{}: {v:#?}", c.replay_hint());
        // The passive learns the last commit index with the next
        // heartbeat (no write follows), and applies it.
        c.run_for(500 * MS);
        let kv: BTreeMap<_, _> = c.state_of(passive).unwrap().1.into_iter().collect();
        for k in w.acked(&c) {
            assert!(kv.contains_key(k.as_bytes()), "seed {seed}: {k} lost");
        }
    }
}

/// Proposes five writes on `active`, 10 ms apart: (token, key).
fn propose_five(c: &mut Cluster, active: u64) -> Vec<(u64, String)> {
    let mut pending = Vec::new();
    for i in 0..5 {
        let key = format!("stalled{i}");
        let t = c.propose(active, KvCommand::put(key.clone(), "v").encode(), None);
        pending.push((t, key));
        c.run_for(10 * MS);
    }
    pending
}

/// None of `pending` was acknowledged (they rest on one disk).
#[track_caller]
fn assert_none_acknowledged(c: &Cluster, pending: &[(u64, String)], seed: u64) {
    for (t, key) in pending {
        assert!(
            !matches!(c.outcome(*t), Some(Outcome::Proposal { result: Ok(_), .. })),
            "seed {seed}: {key} acknowledged with one copy"
        );
    }
}

/// The passive is cut off, the active runs degraded and its disk stalls;
/// the witness syncs entries the active has not persisted yet, and is
/// then wiped; the active hears it probe as blank; the active's disk
/// recovers. Those entries are on the active's disk alone: nothing may be
/// acknowledged until the passive holds them too (found by the
/// verification runner, seed 1005534: raft-rs still counted the wiped
/// witness's old acknowledgements in degraded mode). Without the rule the
/// durability check reports `acknowledged ... held durably by 1 of 3
/// voters` and writes are acknowledged while the passive is cut off.
#[test]
fn a_witness_wiped_while_the_active_disk_stalls_gives_no_second_copy() {
    for seed in 0..8 {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        c.set_link(active, passive, false);
        c.set_link(passive, active, false);
        for _ in 0..30 {
            if c.status(active).is_some_and(|s| s.mode == Mode::Degraded) {
                break;
            }
            w.run(&mut c, 100 * MS);
        }
        assert_eq!(
            c.status(active).map(|s| s.mode),
            Some(Mode::Degraded),
            "seed {seed}: the active degrades without the passive"
        );
        // Writes wait for the active's own disk; the witness syncs them.
        c.stall_disk(active, true);
        let pending = propose_five(&mut c, active);
        let witness_has = c.run_until(SECOND_US, |c| {
            c.log_store(3).is_some_and(|l| {
                aoc_core::storage::LogStore::last_index(l).unwrap_or(0)
                    >= c.status(active).map_or(u64::MAX, |s| s.last_index)
            })
        });
        assert!(
            witness_has,
            "seed {seed}: the witness synced the stalled writes"
        );
        c.wipe(3);
        c.restart(3);
        // The blank witness probes every tick; the active hears it.
        c.run_for(300 * MS);
        c.stall_disk(active, false);
        c.run_for(2 * SECOND_US);
        let v = c.violations();
        assert!(v.is_empty(), "seed {seed} {}: {v:#?}", c.replay_hint());
        assert_none_acknowledged(&c, &pending, seed);
        let why = c.status(active).and_then(|s| s.waiting_for);
        assert!(
            why.as_ref()
                .is_some_and(|why| why.contains("the witness lost its data")),
            "seed {seed}: status says what writes wait for: {why:?}"
        );
        // The passive comes back: the writes commit on both data members.
        c.heal();
        w.run(&mut c, 3 * SECOND_US);
        let v = c.violations();
        assert!(v.is_empty(), "seed {seed} {}: {v:#?}", c.replay_hint());
        assert!(
            c.active().is_some(),
            "seed {seed}: an active once the passive is back"
        );
    }
}

/// The neighbouring case with the passive: in sync mode the active's disk
/// stalls, the passive syncs entries the active has not persisted, and is
/// then wiped; the active hears it probe as blank before its disk
/// recovers. Those entries may commit only on the active and the witness
/// (degraded mode, after `sync_timeout`), never on the wiped passive's old
/// acknowledgements in sync mode. Without the rule the durability check
/// reports `acknowledged ... in sync mode while data members [..] had not
/// synced it`.
#[test]
fn a_passive_wiped_while_the_active_disk_stalls_counts_for_nothing() {
    for seed in 0..8 {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        // The witness must not hold the stalled writes either, or they
        // would commit on it at once: cut the active's link to it.
        c.set_link(active, 3, false);
        c.stall_disk(active, true);
        let pending = propose_five(&mut c, active);
        c.run_for(100 * MS);
        c.wipe(passive);
        c.restart(passive);
        c.run_for(300 * MS);
        c.stall_disk(active, false);
        c.run_for(200 * MS);
        let v = c.violations();
        assert!(v.is_empty(), "seed {seed} {}: {v:#?}", c.replay_hint());
        assert_none_acknowledged(&c, &pending, seed);
        let why = c.status(active).and_then(|s| s.waiting_for);
        assert!(
            why.as_ref()
                .is_some_and(|why| why.contains(&format!("member {passive} lost its data"))),
            "seed {seed}: status names the lost passive: {why:?}"
        );
        // The witness comes back: writes commit on the active and the
        // witness, degraded.
        c.set_link(active, 3, true);
        w.run(&mut c, 3 * SECOND_US);
        let v = c.violations();
        assert!(v.is_empty(), "seed {seed} {}: {v:#?}", c.replay_hint());
        assert_eq!(
            c.status(active).map(|s| s.mode),
            Some(Mode::Degraded),
            "seed {seed}: degraded without the passive"
        );
    }
}

/// The same with a rolled-back disk: the passive syncs entries the
/// stalled active has not persisted, crashes, and comes back with its
/// disk rolled back to before them. The active's next heartbeat tells it
/// (its log ends below the commit index it had acknowledged), and it
/// tells the active, which then counts it for nothing: the entries commit
/// on the active and the witness alone, never on the passive's old
/// acknowledgements. Without the notice the durability check reports
/// `acknowledged ... in sync mode while data members [..] had not synced
/// it`.
#[test]
fn a_passive_with_a_rolled_back_disk_tells_the_active() {
    for seed in 0..8 {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        c.crash(passive);
        let old = c.disk_image(passive).expect("the passive is down");
        c.restart(passive);
        w.run(&mut c, SECOND_US);
        c.set_link(active, 3, false);
        c.stall_disk(active, true);
        let pending = propose_five(&mut c, active);
        c.run_for(50 * MS);
        c.crash(passive);
        c.restore_image(passive, &old);
        c.restart(passive);
        let told = c.run_until(800 * MS, |c| {
            c.status(active)
                .and_then(|s| s.waiting_for)
                .is_some_and(|why| why.contains(&format!("member {passive} lost its data")))
        });
        c.stall_disk(active, false);
        c.run_for(200 * MS);
        let v = c.violations();
        assert!(v.is_empty(), "seed {seed} {}: {v:#?}", c.replay_hint());
        assert!(told, "seed {seed}: the passive told the active");
        assert_none_acknowledged(&c, &pending, seed);
        c.set_link(active, 3, true);
        w.run(&mut c, 3 * SECOND_US);
        let v = c.violations();
        assert!(v.is_empty(), "seed {seed} {}: {v:#?}", c.replay_hint());
        assert!(
            pending.iter().all(|(t, _)| c.outcome(*t).is_some()),
            "seed {seed}: the stalled writes complete once the witness is back"
        );
    }
}

/// The NOSPACE alarm: the active's free space falls below its reserve. It
/// raises its alarm through the log, so writes that take space are
/// refused with `NoSpace` (naming it) on whichever member is active, while
/// deletes go on; and it hands the active role to the passive, whose disk
/// has room. When its disk has room again the alarm clears and writes
/// resume, nothing acknowledged lost.
#[test]
fn a_low_disk_refuses_writes_and_moves_the_active_role() {
    for seed in 0..6 {
        let (mut c, active, passive) = start(seed);
        let mut w = Writer::new();
        w.run(&mut c, SECOND_US);
        c.set_disk_low(active, true);
        let raised = c.run_until(3 * SECOND_US, |c| {
            c.active() == Some(passive) && c.status(passive).is_some_and(|s| s.alarms.len() == 1)
        });
        assert!(
            raised,
            "seed {seed}: alarm in effect and the role moved: {:?}",
            c.status(passive)
        );
        let t = c.propose(passive, KvCommand::put("big", "v").encode(), None);
        c.run_until(SECOND_US, |c| c.outcome(t).is_some());
        assert!(
            matches!(
                c.outcome(t),
                Some(Outcome::Proposal {
                    result: Err(aoc_core::Error::NoSpace { member, .. }),
                    ..
                }) if *member == active
            ),
            "seed {seed}: {:?}",
            c.outcome(t)
        );
        let t = c.propose(passive, KvCommand::delete("w0").encode(), None);
        c.run_until(SECOND_US, |c| c.outcome(t).is_some());
        assert!(
            matches!(c.outcome(t), Some(Outcome::Proposal { result: Ok(_), .. })),
            "seed {seed}: a delete is served: {:?}",
            c.outcome(t)
        );
        c.set_disk_low(active, false);
        let cleared = c.run_until(3 * SECOND_US, |c| {
            c.active()
                .and_then(|a| c.status(a))
                .is_some_and(|s| s.alarms.is_empty())
        });
        assert!(cleared, "seed {seed}: the alarm cleared");
        let before = w.acked(&c).len();
        w.run(&mut c, SECOND_US);
        assert!(w.acked(&c).len() > before, "seed {seed}: writes resumed");
        let v = c.violations();
        assert!(v.is_empty(), "seed {seed}: {v:#?}");
    }
}
