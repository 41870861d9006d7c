//! The HA rules on the threaded node with real storage (raft-engine log,
//! sled state machine): data members 1 and 2, witness 3, over an in-process
//! network. Ticks are 20 ms so the scenarios run quickly.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoc_core::state::{KvCommand, KvStateMachine, NoStateMachine, SledKv};
use aoc_core::storage::{EngineLogOptions, EngineLogStore};
use aoc_core::transport::LocalNetwork;
use aoc_core::{Error, Mode, Node, ReplicaConfig};

const TICK: Duration = Duration::from_millis(20);

fn log(dir: &Path) -> EngineLogStore {
    EngineLogStore::open(&dir.join("log"), EngineLogOptions::default()).expect("log opens")
}

struct Ha {
    dirs: Vec<tempfile::TempDir>,
    net: LocalNetwork,
    data: Vec<Option<Node<SledKv>>>,
    witness: Option<Node<NoStateMachine>>,
}

impl Ha {
    fn new() -> Self {
        let mut h = Ha {
            dirs: (0..3).map(|_| tempfile::tempdir().unwrap()).collect(),
            net: LocalNetwork::new(),
            data: vec![None, None],
            witness: None,
        };
        for id in 1..=3 {
            h.start(id);
        }
        h
    }

    fn builder(id: u64) -> aoc_core::NodeBuilder {
        Node::builder(ReplicaConfig::ha(id, 3))
            .voters(vec![1, 2, 3])
            .tick(TICK)
            .seed(id)
            .request_timeout(Duration::from_millis(500))
    }

    fn start(&mut self, id: u64) {
        let dir = self.dirs[id as usize - 1].path().to_path_buf();
        let transport = Arc::new(self.net.transport());
        if id == 3 {
            let node = Self::builder(id)
                .start_witness(log(&dir), transport)
                .expect("witness starts");
            self.net.attach(id, node.clone());
            self.witness = Some(node);
        } else {
            let kv = SledKv::open(&dir.join("state")).expect("state opens");
            let node = Self::builder(id)
                .start_with_transport(log(&dir), kv, transport)
                .expect("node starts");
            self.net.attach(id, node.clone());
            self.data[id as usize - 1] = Some(node);
        }
    }

    fn kill(&mut self, id: u64) {
        self.net.detach(id);
        if id == 3 {
            if let Some(n) = self.witness.take() {
                n.shutdown();
            }
        } else if let Some(n) = self.data[id as usize - 1].take() {
            n.shutdown();
        }
    }

    fn node(&self, id: u64) -> &Node<SledKv> {
        self.data[id as usize - 1].as_ref().expect("data member up")
    }

    fn active(&self) -> Option<u64> {
        self.data
            .iter()
            .flatten()
            .find(|n| n.status().active)
            .map(|n| n.id())
    }

    fn wait(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !f(self) {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wait_sync(&self) -> (u64, u64) {
        self.wait("an active in sync mode", Duration::from_secs(10), |h| {
            h.active()
                .is_some_and(|a| h.node(a).status().mode == Mode::Sync)
        });
        let a = self.active().expect("active");
        (a, if a == 1 { 2 } else { 1 })
    }

    /// Writes `n` keys through whichever member is active; returns the keys
    /// acknowledged and the longest time a write waited.
    fn write(&self, prefix: &str, n: usize) -> (Vec<String>, Duration) {
        let mut acked = Vec::new();
        let mut worst = Duration::ZERO;
        for i in 0..n {
            let key = format!("{prefix}{i}");
            let start = Instant::now();
            loop {
                if let Some(a) = self.active() {
                    match self
                        .node(a)
                        .propose(KvCommand::put(key.clone(), "v").encode())
                    {
                        Ok(_) => break,
                        Err(
                            Error::NotLeader { .. }
                            | Error::Timeout { .. }
                            | Error::Stopped
                            | Error::Busy { .. },
                        ) => {}
                        Err(e) => panic!("write {key}: {e}"),
                    }
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "write {key} never succeeded"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            worst = worst.max(start.elapsed());
            acked.push(key);
        }
        (acked, worst)
    }

    fn assert_has(&self, id: u64, keys: &[String]) {
        let keys = keys.to_vec();
        let missing = self
            .node(id)
            .read(move |kv| {
                keys.iter()
                    .filter(|k| kv.get(k.as_bytes()).ok().flatten().is_none())
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .expect("read on the active");
        assert!(
            missing.is_empty(),
            "acknowledged writes missing on {id}: {missing:?}"
        );
    }

    fn shutdown(&mut self) {
        for id in 1..=3 {
            self.kill(id);
        }
    }
}

/// Case 1: the active dies in sync mode; the passive takes over with every
/// acknowledged write.
#[test]
fn case_1_active_dies_in_sync_mode() {
    let mut h = Ha::new();
    let (active, passive) = h.wait_sync();
    let (mut acked, _) = h.write("a", 100);
    h.kill(active);
    let (more, pause) = h.write("b", 50);
    acked.extend(more);
    assert_eq!(h.active(), Some(passive));
    eprintln!("threaded case 1: longest write wait across the failover {pause:?}");
    h.assert_has(passive, &acked);
    h.start(active);
    h.wait_sync();
    h.shutdown();
}

/// Case 2: the passive dies; writes wait at most about sync_timeout, then
/// go on degraded; the passive returns and sync mode resumes.
#[test]
fn case_2_passive_dies_then_returns() {
    let mut h = Ha::new();
    let (active, passive) = h.wait_sync();
    let (mut acked, _) = h.write("a", 50);
    h.kill(passive);
    let (more, pause) = h.write("b", 50);
    acked.extend(more);
    assert_eq!(h.node(active).status().mode, Mode::Degraded);
    // sync_timeout is 10 ticks of 20 ms; allow wide scheduling slack.
    assert!(pause < Duration::from_secs(2), "writes paused {pause:?}");
    eprintln!("threaded case 2: longest write wait {pause:?}");
    h.start(passive);
    let (more, _) = h.write("c", 50);
    acked.extend(more);
    h.wait("sync mode again", Duration::from_secs(10), |h| {
        h.node(active).status().mode == Mode::Sync
    });
    h.assert_has(active, &acked);
    h.shutdown();
}

/// Case 9: the stale tail, on real storage.
#[test]
fn case_9_stale_tail() {
    let mut h = Ha::new();
    let (old, passive) = h.wait_sync();
    let (mut acked, _) = h.write("a", 20);
    h.net.isolate(old, &[passive, 3]);
    // The cut-off leader still appends proposals it can never commit.
    let stale = h.node(old).clone();
    let proposers: Vec<_> = (0..32)
        .map(|i| {
            let n = stale.clone();
            std::thread::spawn(move || {
                let _ = n.propose(KvCommand::put(format!("stale{i}"), "x").encode());
            })
        })
        .collect();
    for p in proposers {
        let _ = p.join();
    }
    h.wait("the passive to take over", Duration::from_secs(10), |h| {
        h.node(passive).status().active
    });
    let (more, _) = h.write("b", 5);
    acked.extend(more);
    let stale_last = h.node(old).status().last_index;
    let new_last = h.node(passive).status().last_index;
    assert!(
        stale_last > new_last,
        "stale tail {stale_last} > {new_last}"
    );
    h.kill(passive);
    h.net.heal();
    h.wait("the old active to return", Duration::from_secs(15), |h| {
        h.active() == Some(old)
    });
    h.assert_has(old, &acked);
    let stale_left = h.node(old).read(|kv| kv.scan(b"stale")).unwrap().unwrap();
    assert!(stale_left.is_empty(), "the stale tail was discarded");
    h.shutdown();
}

/// A planned switchover under writes, on real storage: nothing lost, the
/// write pause measured; and back.
#[test]
fn switchover_under_writes() {
    let mut h = Ha::new();
    let (a, p) = h.wait_sync();
    let (mut acked, _) = h.write("a", 50);
    let h_ref = &h;
    let (pause, more) = std::thread::scope(|s| {
        let writer = s.spawn(move || h_ref.write("b", 200));
        std::thread::sleep(Duration::from_millis(50));
        let pause = h_ref.node(a).switchover().expect("switchover");
        let (more, worst) = writer.join().unwrap();
        (pause.max(Duration::ZERO), (more, worst))
    });
    acked.extend(more.0);
    eprintln!(
        "threaded switchover: reported pause {pause:?}, longest write wait {:?}",
        more.1
    );
    h.wait("the new active", Duration::from_secs(5), |h| {
        h.active() == Some(p)
    });
    h.assert_has(p, &acked);
    h.wait("sync mode on the new active", Duration::from_secs(5), |h| {
        h.node(p).status().mode == Mode::Sync
    });
    h.node(p).switchover().expect("switchover back");
    h.wait("the old active back", Duration::from_secs(5), |h| {
        h.active() == Some(a)
    });
    h.assert_has(a, &acked);
    h.shutdown();
}

/// The active's raft thread stalls for 1.5 s (a read callback that blocks
/// it; a paused process or a stuck thread looks the same): the passive
/// takes over, and the two are never reported active at once. The stalled
/// member stops reporting the role when its lease ends (its last published
/// status said until when), and when it resumes, the ticks it missed count
/// (its lease is measured in its own ticks, and the ticker drops the ticks
/// nobody took), so it does not hold the role again for the rest of a
/// lease it no longer has.
#[test]
fn a_stalled_active_is_never_reported_active_beside_the_new_one() {
    for round in 0..3 {
        let mut h = Ha::new();
        let (a, p) = h.wait_sync();
        let stalled = h.node(a).clone();
        let stall = std::thread::spawn(move || {
            stalled.read(|_| std::thread::sleep(Duration::from_millis(1500)))
        });
        let start = Instant::now();
        let mut both = None;
        let mut taken_over = false;
        while start.elapsed() < Duration::from_secs(3) {
            let (sa, sp) = (h.node(a).status(), h.node(p).status());
            if sa.active && sp.active && both.is_none() {
                both = Some(start.elapsed());
            }
            taken_over |= sp.active;
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = stall.join();
        assert_eq!(both, None, "round {round}: members {a} and {p} both active");
        assert!(taken_over, "round {round}: the passive took over");
        h.shutdown();
    }
}

/// Fencing tokens on the threaded node: each new active holds a strictly
/// greater token than the one before, across a switchover, a failover
/// and a restart of every member, and the verifier a managed cluster's
/// agent keeps refuses the deposed active's token once it has seen the
/// new one.
#[test]
fn the_fencing_token_grows_with_every_change_of_active() {
    use aoc_core::fencing::FencingVerifier;
    let mut h = Ha::new();
    let mut agent = FencingVerifier::new();
    let token_of = |h: &Ha, who: u64| {
        h.node(who)
            .fencing_token()
            .expect("the active holds a fencing token")
    };
    let (a, p) = h.wait_sync();
    let mut last = token_of(&h, a);
    agent.check(last).expect("the first active's token");
    assert_eq!(h.node(p).fencing_token(), None, "only the active has one");

    // Switchover.
    h.node(a).switchover().expect("switchover");
    h.wait("the new active", Duration::from_secs(5), |h| {
        h.active() == Some(p)
    });
    let t = token_of(&h, p);
    assert!(t > last, "switchover: {t} after {last}");
    agent.check(t).expect("the new active's token");
    let deposed = agent
        .check(last)
        .expect_err("the old active's token is refused");
    assert_eq!((deposed.token, deposed.highest), (last, t));
    last = t;

    // Failover.
    h.wait("sync mode", Duration::from_secs(5), |h| {
        h.node(p).status().mode == Mode::Sync
    });
    h.kill(p);
    h.wait("a failover", Duration::from_secs(10), |h| {
        h.active() == Some(a)
    });
    let t = token_of(&h, a);
    assert!(t > last, "failover: {t} after {last}");
    last = t;

    // Every member restarted.
    h.start(p);
    h.wait_sync();
    for id in 1..=3 {
        h.kill(id);
    }
    for id in 1..=3 {
        h.start(id);
    }
    let (now, _) = h.wait_sync();
    let t = token_of(&h, now);
    assert!(t > last, "restart of every member: {t} after {last}");
    agent.check(t).expect("the latest active's token");
    h.shutdown();
}
