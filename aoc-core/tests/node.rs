//! The threaded node on real storage (raft-engine log, sled state machine):
//! standalone and three members over an in-process network.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoc_core::state::{KvCommand, KvStateMachine, SledKv};
use aoc_core::storage::{EngineLogOptions, EngineLogStore};
use aoc_core::transport::LocalNetwork;
use aoc_core::{Error, Node, ReplicaConfig, Role};

const TICK: Duration = Duration::from_millis(20);

fn open(dir: &Path) -> (EngineLogStore, SledKv) {
    let log =
        EngineLogStore::open(&dir.join("log"), EngineLogOptions::default()).expect("log opens");
    let kv = SledKv::open(&dir.join("state")).expect("state opens");
    (log, kv)
}

fn config(id: u64) -> ReplicaConfig {
    let mut cfg = ReplicaConfig::new(id);
    cfg.compact_every_entries = 50;
    cfg.compact_keep_entries = 5;
    cfg
}

fn start_standalone(dir: &Path) -> Node<SledKv> {
    let (log, kv) = open(dir);
    Node::builder(config(1))
        .voters(vec![1])
        .tick(TICK)
        .start(log, kv)
        .expect("node starts")
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn get(node: &Node<SledKv>, key: &str) -> Option<Vec<u8>> {
    let key = key.as_bytes().to_vec();
    node.read(move |kv| kv.get(&key))
        .expect("read")
        .expect("get")
}

#[test]
fn standalone_writes_reads_and_recovers_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_standalone(dir.path());
    wait_until("leadership", Duration::from_secs(5), || {
        node.status().role == Role::Leader
    });
    for i in 0..120 {
        node.propose(KvCommand::put(format!("k{i}"), format!("v{i}")).encode())
            .expect("write");
    }
    assert_eq!(get(&node, "k7").as_deref(), Some(&b"v7"[..]));
    let applied = node.status().applied;
    node.shutdown();
    drop(node);

    let node = start_standalone(dir.path());
    wait_until("leadership after restart", Duration::from_secs(5), || {
        node.status().role == Role::Leader
    });
    assert!(node.status().applied >= applied, "applied index recovered");
    for i in 0..120 {
        assert_eq!(
            get(&node, &format!("k{i}")),
            Some(format!("v{i}").into_bytes())
        );
    }
    node.shutdown();
}

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    net: LocalNetwork,
    nodes: Vec<Option<Node<SledKv>>>,
}

impl Cluster {
    fn new() -> Self {
        let mut c = Cluster {
            dirs: (0..3).map(|_| tempfile::tempdir().unwrap()).collect(),
            net: LocalNetwork::new(),
            nodes: vec![None, None, None],
        };
        for id in 1..=3 {
            c.start(id);
        }
        c
    }

    fn start(&mut self, id: u64) {
        let (log, kv) = open(self.dirs[id as usize - 1].path());
        let node = Node::builder(config(id))
            .voters(vec![1, 2, 3])
            .tick(TICK)
            .seed(id)
            .start_with_transport(log, kv, Arc::new(self.net.transport()))
            .expect("node starts");
        self.net.attach(id, node.clone());
        self.nodes[id as usize - 1] = Some(node);
    }

    fn stop(&mut self, id: u64) {
        self.net.detach(id);
        if let Some(n) = self.nodes[id as usize - 1].take() {
            n.shutdown();
        }
    }

    fn node(&self, id: u64) -> &Node<SledKv> {
        self.nodes[id as usize - 1].as_ref().expect("node is up")
    }

    fn leader(&self) -> u64 {
        let start = Instant::now();
        loop {
            for n in self.nodes.iter().flatten() {
                if n.status().role == Role::Leader {
                    return n.id();
                }
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no leader");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Writes through whichever member leads, retrying across leader changes.
    fn write(&self, key: &str, value: &str) {
        let start = Instant::now();
        loop {
            let l = self.leader();
            match self.node(l).propose(KvCommand::put(key, value).encode()) {
                Ok(_) => return,
                Err(Error::NotLeader { .. }) | Err(Error::Timeout { .. }) => {}
                Err(e) => panic!("write failed: {e}"),
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "write {key} never succeeded"
            );
        }
    }

    /// Waits until every running member applied the leader's commit index.
    fn converge(&self) {
        let leader = self.leader();
        let target = self.node(leader).status().commit;
        wait_until(
            "every member to apply the commit index",
            Duration::from_secs(20),
            || {
                self.nodes
                    .iter()
                    .flatten()
                    .all(|n| n.status().applied >= target)
            },
        );
    }

    /// Stops every member and returns each one's durable key-value pairs.
    fn stop_and_collect(&mut self) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        for id in 1..=3 {
            self.stop(id);
        }
        (1..=3u64)
            .map(|id| {
                let kv = SledKv::open(&self.dirs[id as usize - 1].path().join("state")).unwrap();
                kv.scan(b"").unwrap()
            })
            .collect()
    }
}

#[test]
fn three_members_apply_concurrent_writes_identically_and_survive_restarts() {
    let mut c = Cluster::new();
    c.leader();
    let c_ref = &c;
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for i in 0..50 {
                    c_ref.write(&format!("t{t}-k{i}"), &format!("{i}"));
                }
            });
        }
    });
    c.converge();

    // Restart each member in turn, writing while it is down.
    for id in 1..=3 {
        c.stop(id);
        for i in 0..20 {
            c.write(&format!("restart{id}-{i}"), "x");
        }
        c.start(id);
        c.converge();
    }
    let states = c.stop_and_collect();
    assert_eq!(states[0].len(), 260, "every write is there");
    assert_eq!(states[0], states[1], "members 1 and 2 hold the same state");
    assert_eq!(states[1], states[2], "members 2 and 3 hold the same state");
}

#[test]
fn a_member_down_past_compaction_catches_up_by_snapshot() {
    let mut c = Cluster::new();
    let leader = c.leader();
    let lagging = if leader == 1 { 2 } else { 1 };
    c.stop(lagging);
    for i in 0..200 {
        c.write(&format!("k{i}"), "v");
    }
    let leader = c.leader();
    wait_until(
        "the leader to compact its log",
        Duration::from_secs(10),
        || c.node(leader).status().first_index > 100,
    );
    c.start(lagging);
    let events = c.node(lagging).events();
    c.converge();
    let installed = events
        .try_iter()
        .any(|e| matches!(e, aoc_core::Event::SnapshotInstalled { .. }));
    assert!(installed, "the lagging member installed a snapshot");
    let states = c.stop_and_collect();
    assert_eq!(states[0].len(), 200);
    assert_eq!(states[0], states[1]);
    assert_eq!(states[1], states[2]);
}
