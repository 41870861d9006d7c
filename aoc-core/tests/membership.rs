//! Membership changes on the threaded node with real storage (raft-engine
//! log, sled state machine) over an in-process network, under continuous
//! writes: a standalone member grows to HA; a dead passive and a dead
//! witness are replaced; a removed member that returns is left out. Ticks
//! are 20 ms so the scenarios run quickly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoc_core::state::{KvCommand, KvStateMachine, NoStateMachine, SledKv};
use aoc_core::storage::{EngineLogOptions, EngineLogStore};
use aoc_core::transport::LocalNetwork;
use aoc_core::{Error, Member, MemberRole, MembershipChange, Mode, Node, ReplicaConfig};
use parking_lot::Mutex;

const TICK: Duration = Duration::from_millis(20);

fn log(dir: &Path) -> EngineLogStore {
    EngineLogStore::open(&dir.join("log"), EngineLogOptions::default()).expect("log opens")
}

/// The members of one test, by id: data members and at most one witness.
struct Cluster {
    root: tempfile::TempDir,
    net: LocalNetwork,
    data: Arc<Mutex<BTreeMap<u64, Node<SledKv>>>>,
    witness: Option<(u64, Node<NoStateMachine>)>,
}

impl Cluster {
    fn new() -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        Cluster {
            root: tempfile::tempdir().expect("temp dir"),
            net: LocalNetwork::new(),
            data: Arc::new(Mutex::new(BTreeMap::new())),
            witness: None,
        }
    }

    /// Data members 1 and 2 and witness 3, bootstrapped together, with an
    /// active in sync mode.
    fn ha() -> Self {
        let mut c = Cluster::new();
        for id in [1, 2] {
            c.start_data(id, &[1, 2, 3], Some(3));
        }
        c.start_witness(3, &[1, 2, 3]);
        c.wait("sync mode", Duration::from_secs(10), |c| {
            c.active()
                .is_some_and(|a| c.node(a).status().mode == Mode::Sync)
        });
        c
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("m{id}"))
    }

    fn builder(cfg: ReplicaConfig, voters: &[u64]) -> aoc_core::NodeBuilder {
        Node::builder(cfg)
            .voters(voters.to_vec())
            .tick(TICK)
            .request_timeout(Duration::from_millis(500))
    }

    /// Starts data member `id` with the voters its file would list and the
    /// witness it would name.
    fn start_data(&mut self, id: u64, voters: &[u64], witness: Option<u64>) {
        let dir = self.dir(id);
        let kv = SledKv::open(&dir.join("state")).expect("state opens");
        let cfg = match witness {
            Some(w) => ReplicaConfig::ha(id, w),
            None => ReplicaConfig::new(id),
        };
        let node = Self::builder(cfg, voters)
            .seed(id)
            .start_with_transport(log(&dir), kv, Arc::new(self.net.transport()))
            .expect("data member starts");
        self.net.attach(id, node.clone());
        self.data.lock().insert(id, node);
    }

    fn start_witness(&mut self, id: u64, voters: &[u64]) {
        let dir = self.dir(id);
        let node = Self::builder(ReplicaConfig::ha(id, id), voters)
            .seed(id)
            .start_witness(log(&dir), Arc::new(self.net.transport()))
            .expect("witness starts");
        self.net.attach(id, node.clone());
        self.witness = Some((id, node));
    }

    fn kill(&mut self, id: u64) {
        self.net.detach(id);
        if let Some(n) = self.data.lock().remove(&id) {
            n.shutdown();
        }
        if self.witness.as_ref().is_some_and(|(w, _)| *w == id) {
            if let Some((_, n)) = self.witness.take() {
                n.shutdown();
            }
        }
    }

    fn node(&self, id: u64) -> Node<SledKv> {
        self.data.lock().get(&id).cloned().expect("data member up")
    }

    fn active(&self) -> Option<u64> {
        active_of(&self.data)
    }

    fn wait(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !f(self) {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_active(&self) -> u64 {
        self.wait("an active", Duration::from_secs(10), |c| {
            c.active().is_some()
        });
        self.active().expect("active")
    }

    /// Applies `change` through the active, retrying while it is refused
    /// for a passing reason (a learner still catching up, another change in
    /// flight, a leader change). Returns how many times it was refused
    /// because the learner had not caught up.
    fn change(&self, change: MembershipChange) -> usize {
        let start = Instant::now();
        let mut not_caught_up = 0;
        loop {
            let Some(a) = self.active() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            match self.node(a).change_membership(change.clone()) {
                Ok(()) => return not_caught_up,
                Err(Error::Membership { reason }) if reason.contains("not caught up") => {
                    not_caught_up += 1
                }
                Err(Error::Busy { .. } | Error::NotLeader { .. } | Error::Timeout { .. }) => {}
                Err(e) => panic!("{change:?}: {e}"),
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{change:?} never applied"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every key in `keys` is on data member `id` (read locally once it
    /// has applied `index`).
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
            "{} acknowledged writes missing on {id}: {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }

    fn shutdown(&mut self) {
        let ids: Vec<u64> = self.data.lock().keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
        if let Some((w, _)) = &self.witness {
            let w = *w;
            self.kill(w);
        }
    }
}

fn active_of(data: &Mutex<BTreeMap<u64, Node<SledKv>>>) -> Option<u64> {
    data.lock()
        .values()
        .find(|n| n.status().active)
        .map(|n| n.id())
}

/// Writes keys `prefix0, prefix1...` through whichever member is active
/// until stopped; returns the acknowledged ones.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Writer {
    fn start(c: &Cluster, prefix: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let data = c.data.clone();
        let prefix = prefix.to_string();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                let key = format!("{prefix}{i}");
                let node = active_of(&data).and_then(|a| data.lock().get(&a).cloned());
                let Some(node) = node else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                match node.propose(KvCommand::put(key.clone(), "v").encode()) {
                    Ok(_) => {
                        acked.push(key);
                        i += 1;
                    }
                    // Not acknowledged: retried under the same key, which is
                    // idempotent for a put.
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            acked
        });
        Writer { stop, thread }
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("writer thread")
    }
}

fn data(id: u64) -> Member {
    Member {
        id,
        role: MemberRole::Data,
        ha_addr: format!("10.0.0.{id}:7400"),
    }
}

fn witness(id: u64) -> Member {
    Member {
        id,
        role: MemberRole::Witness,
        ha_addr: format!("10.0.0.{id}:7400"),
    }
}

/// Standalone member 1 grows to active + passive + witness while a client
/// writes: the new members join blank, are added as learners, get a
/// snapshot, and are promoted; nothing acknowledged is lost, and the new
/// passive takes over with every write when member 1 dies.
#[test]
fn a_standalone_member_grows_to_ha_under_writes() {
    let mut c = Cluster::new();
    c.start_data(1, &[1], None);
    c.wait_active();
    let w = Writer::start(&c, "k");
    c.wait("writes before growing", Duration::from_secs(10), |c| {
        c.node(1).status().applied > 200
    });

    // The new members' files list the cluster they join.
    c.start_data(2, &[1, 2, 3], Some(3));
    c.change(MembershipChange::AddLearner(data(2)));
    // Caught up, member 2 is not promoted alone: with two voters, either
    // failing would stop every write.
    c.wait("member 2 caught up, awaiting its pair", Duration::from_secs(10), |c| {
        matches!(
            c.node(1).change_membership(MembershipChange::Promote(2)),
            Err(Error::Membership { reason }) if reason.contains("waits for a second new member")
        )
    });
    assert_eq!(c.node(1).status().voters, vec![1]);
    c.start_witness(3, &[1, 2, 3]);
    c.change(MembershipChange::AddLearner(witness(3)));
    // Both promoted at once (joint consensus).
    c.change(MembershipChange::Promote(3));

    c.wait(
        "sync mode with the new members",
        Duration::from_secs(10),
        |c| {
            let st = c.node(1).status();
            st.voters == vec![1, 2, 3] && st.mode == Mode::Sync
        },
    );
    let st = c.node(1).status();
    assert_eq!(st.members, vec![data(2), witness(3)]);
    assert!(st.learners.is_empty());
    c.wait(
        "member 2 applies the last change",
        Duration::from_secs(5),
        |c| {
            let st = c.node(2).status();
            st.voters == vec![1, 2, 3] && st.members == vec![data(2), witness(3)]
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let acked_before_failover = w.stop();
    assert!(acked_before_failover.len() > 200);

    // The new passive is a real standby: it takes over with every write.
    let w = Writer::start(&c, "after");
    c.kill(1);
    c.wait("member 2 active", Duration::from_secs(10), |c| {
        c.active() == Some(2)
    });
    std::thread::sleep(Duration::from_millis(200));
    let after = w.stop();
    assert!(!after.is_empty(), "no write succeeded after the failover");
    c.assert_has(2, &acked_before_failover);
    c.assert_has(2, &after);
    eprintln!(
        "grow: {} writes acknowledged while growing, {} after the failover",
        acked_before_failover.len(),
        after.len()
    );
    c.shutdown();
}

/// HA cluster 1, 2, witness 3. The passive dies for good: it is removed,
/// member 4 is added in its place, and sync mode resumes. The old member,
/// restarted with its data, is refused: it never takes part again.
#[test]
fn a_dead_passive_is_replaced_and_cannot_return() {
    let mut c = Cluster::ha();
    let active = c.wait_active();
    let dead = if active == 1 { 2 } else { 1 };
    let w = Writer::start(&c, "k");
    std::thread::sleep(Duration::from_millis(300));
    c.kill(dead);

    c.change(MembershipChange::Remove(dead));
    c.start_data(4, &[active, 3, 4], Some(3));
    c.change(MembershipChange::AddLearner(data(4)));
    c.change(MembershipChange::Promote(4));
    c.wait("sync mode with member 4", Duration::from_secs(10), |c| {
        let st = c.node(active).status();
        st.voters
            == vec![active.min(4), 3, active.max(4)]
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
            && st.mode == Mode::Sync
    });

    // The old passive comes back with its old data and its old file. It
    // never takes part: never active, never a voter or a learner again,
    // and a member of the new configuration stays active. Which one is
    // not checked: on a loaded machine the active can miss its lease and
    // member 4 be elected, as raft allows (seen once on CI, never in 42
    // local runs, with up to six busy loops beside them).
    c.start_data(dead, &[1, 2, 3], Some(3));
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !c.node(dead).status().active,
            "the removed member became active"
        );
    }
    let now_active = c.wait_active();
    assert!(
        now_active == active || now_active == 4,
        "member {now_active} is active, not a data member of the new configuration"
    );
    let st = c.node(now_active).status();
    assert!(!st.voters.contains(&dead), "voters {:?}", st.voters);
    assert!(!st.learners.contains(&dead));
    c.kill(dead);

    let acked = w.stop();
    // The other data member holds every acknowledged write, and takes
    // over.
    let other = if now_active == 4 { active } else { 4 };
    c.kill(now_active);
    c.wait(
        "the other data member active",
        Duration::from_secs(10),
        |c| c.active() == Some(other),
    );
    c.assert_has(other, &acked);
    c.shutdown();
}

/// HA cluster 1, 2, witness 3. The witness dies for good: it is removed,
/// witness 5 is added in its place, and it does the witness's job: with
/// the passive then down, the active goes on in degraded mode on witness
/// 5's acknowledgements.
#[test]
fn a_dead_witness_is_replaced() {
    let mut c = Cluster::ha();
    let w = Writer::start(&c, "k");
    std::thread::sleep(Duration::from_millis(300));
    c.kill(3);
    c.change(MembershipChange::Remove(3));
    c.start_witness(5, &[1, 2, 5]);
    c.change(MembershipChange::AddLearner(witness(5)));
    c.change(MembershipChange::Promote(5));
    let active = c.wait_active();
    c.wait("sync mode with witness 5", Duration::from_secs(10), |c| {
        let st = c.node(active).status();
        st.voters == vec![1, 2, 5] && st.mode == Mode::Sync
    });
    // The active kept its role through the changes; a later active, in
    // the new configuration, holds a greater fencing token.
    let token = c.node(active).fencing_token().expect("a fencing token");
    let passive = if active == 1 { 2 } else { 1 };
    c.node(active)
        .switchover()
        .expect("a switchover to the passive");
    c.wait("the passive active", Duration::from_secs(10), |c| {
        c.node(passive).status().active
    });
    let after = c.node(passive).fencing_token().expect("a fencing token");
    assert!(after > token, "{after} after {token}");
    let (active, passive) = (passive, active);
    c.wait("sync mode again", Duration::from_secs(10), |c| {
        c.node(active).status().mode == Mode::Sync
    });
    c.kill(passive);
    c.wait("degraded mode on witness 5", Duration::from_secs(10), |c| {
        c.node(active).status().mode == Mode::Degraded
    });
    let before = c.node(active).status().commit;
    c.wait(
        "commits on the active and witness 5",
        Duration::from_secs(10),
        |c| c.node(active).status().commit > before + 20,
    );
    let acked = w.stop();
    c.assert_has(active, &acked);
    c.shutdown();
}

/// HA cluster 1, 2, witness 3 shrinks back to its active alone, at once
/// (joint consensus), and goes on serving standalone; the others are left
/// out.
#[test]
fn an_ha_cluster_shrinks_to_standalone() {
    let mut c = Cluster::ha();
    let active = c.wait_active();
    let w = Writer::start(&c, "k");
    std::thread::sleep(Duration::from_millis(300));
    c.change(MembershipChange::Shrink);
    c.wait("standalone", Duration::from_secs(10), |c| {
        let st = c.node(active).status();
        st.voters == vec![active] && st.mode == Mode::Standalone
    });
    // The others are out: the active stays standalone with them running,
    // and the removed data member never becomes active (it could win no
    // election: the joint configuration it may hold needs the active's
    // vote, which the active no longer gives it).
    let removed = if active == 1 { 2 } else { 1 };
    for _ in 0..25 {
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !c.node(removed).status().active,
            "the removed member is active"
        );
        // No other member is active. (The active itself was seen without
        // the role for a moment once, on a loaded machine: its lease can
        // lapse around the end of the joint configuration.)
        let now = c.active();
        assert!(
            now.is_none() || now == Some(active),
            "member {now:?} is active"
        );
    }
    c.wait("the active", Duration::from_secs(10), |c| {
        c.active() == Some(active)
    });
    let st = c.node(active).status();
    assert_eq!(st.voters, vec![active]);
    assert!(st.learners.is_empty());
    let acked = w.stop();
    assert!(acked.len() > 50, "only {} writes", acked.len());
    c.assert_has(active, &acked);
    c.shutdown();
}

/// A witness promoted while cut off never received its promotion; the
/// passive applied it; the active dies. The passive, whose configuration
/// lists witness 5 as a voter, asks it for its vote, and 5 (a learner in
/// its own configuration) grants it: the passive becomes active and 5
/// learns it is a voter. The promotion is not answered while 5 lacks it
/// (the change is done once every voter holds it).
#[test]
fn a_witness_that_missed_its_promotion_still_votes() {
    let mut c = Cluster::ha();
    let w = Writer::start(&c, "k");
    std::thread::sleep(Duration::from_millis(300));
    c.kill(3);
    c.change(MembershipChange::Remove(3));
    c.start_witness(5, &[1, 2, 5]);
    c.change(MembershipChange::AddLearner(witness(5)));
    let active = c.wait_active();
    let passive = if active == 1 { 2 } else { 1 };
    c.wait("witness 5 caught up", Duration::from_secs(10), |c| {
        let st = c.node(active).status();
        st.progress
            .iter()
            .any(|p| p.id == 5 && p.matched > 0 && p.matched + 64 >= st.last_index)
    });
    c.net.isolate(5, &[1, 2]);
    let promoted = c
        .node(active)
        .change_membership(MembershipChange::Promote(5));
    assert!(
        matches!(promoted, Err(Error::Timeout { .. })),
        "not answered while witness 5 lacks the promotion: {promoted:?}"
    );
    c.wait("the passive applies it", Duration::from_secs(5), |c| {
        c.node(passive).status().voters == vec![1, 2, 5]
    });
    let acked = w.stop();
    c.kill(active);
    c.net.heal();
    c.wait("the passive is active", Duration::from_secs(10), |c| {
        c.active() == Some(passive)
    });
    let witness_voters = || c.witness.as_ref().map(|(_, n)| n.status().voters);
    c.wait(
        "witness 5 learns it is a voter",
        Duration::from_secs(5),
        |_| witness_voters() == Some(vec![1, 2, 5]),
    );
    c.assert_has(passive, &acked);
    c.shutdown();
}
