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

/// A log store that records each durable write (member, first and last
/// entry index) after it returns, so a test can check that every
/// acknowledgement came after the syncs that cover it.
struct RecordingLog {
    member: u64,
    inner: EngineLogStore,
    record: Arc<parking_lot::Mutex<Vec<(u64, u64, u64)>>>,
}

impl aoc_core::storage::LogStore for RecordingLog {
    fn initial_state(&self) -> aoc_core::Result<raft::RaftState> {
        self.inner.initial_state()
    }
    fn first_index(&self) -> aoc_core::Result<u64> {
        self.inner.first_index()
    }
    fn last_index(&self) -> aoc_core::Result<u64> {
        self.inner.last_index()
    }
    fn term(&self, index: u64) -> raft::Result<u64> {
        self.inner.term(index)
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> raft::Result<Vec<raft::eraftpb::Entry>> {
        self.inner.entries(low, high, max_size)
    }
    fn snapshot_metadata(&self) -> aoc_core::Result<raft::eraftpb::SnapshotMetadata> {
        self.inner.snapshot_metadata()
    }
    fn member_meta(&self) -> aoc_core::Result<aoc_core::proto::MemberMeta> {
        self.inner.member_meta()
    }
    fn write(&self, write: &aoc_core::storage::LogWrite) -> aoc_core::Result<()> {
        self.inner.write(write)?;
        if let (Some(first), Some(last)) = (write.entries.first(), write.entries.last()) {
            self.record
                .lock()
                .push((self.member, first.index, last.index));
        }
        Ok(())
    }
    fn compact(&self, index: u64) -> aoc_core::Result<()> {
        self.inner.compact(index)
    }
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
}

/// Every acknowledged write was already synced on a majority when the
/// acknowledgement reached the caller.
#[test]
fn acknowledgements_follow_the_syncs_that_cover_them() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let net = LocalNetwork::new();
    let record = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let (log, kv) = open(dirs[id as usize - 1].path());
        let log = RecordingLog {
            member: id,
            inner: log,
            record: record.clone(),
        };
        let node = Node::builder(config(id))
            .voters(vec![1, 2, 3])
            .tick(TICK)
            .seed(id)
            .start_with_transport(log, kv, Arc::new(net.transport()))
            .expect("node starts");
        net.attach(id, node.clone());
        nodes.push(node);
    }
    let leader = {
        let start = Instant::now();
        loop {
            if let Some(n) = nodes.iter().find(|n| n.status().role == Role::Leader) {
                break n.clone();
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no leader");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let acks = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let leader = leader.clone();
                let record = record.clone();
                s.spawn(move || {
                    let mut checked = 0;
                    for i in 0..100 {
                        let applied = leader
                            .propose(KvCommand::put(format!("{t}/{i}"), "v").encode())
                            .expect("write");
                        let holders: std::collections::BTreeSet<u64> = record
                            .lock()
                            .iter()
                            .filter(|(_, first, last)| {
                                *first <= applied.index && applied.index <= *last
                            })
                            .map(|(m, _, _)| *m)
                            .collect();
                        assert!(
                            holders.len() >= 2,
                            "index {} acknowledged while synced on {holders:?} only",
                            applied.index
                        );
                        checked += 1;
                    }
                    checked
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum::<u32>()
    });
    assert_eq!(acks, 400);
    for n in &nodes {
        n.shutdown();
    }
}

/// A caller told its write is applied finds it in the status at once: the
/// status is published before the answers go out, not after.
#[test]
fn the_status_shows_a_write_as_soon_as_it_is_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_standalone(dir.path());
    wait_until("leader", Duration::from_secs(5), || node.status().active);
    for i in 0..300 {
        let applied = node
            .propose(KvCommand::put(format!("k{i}"), "v").encode())
            .expect("write");
        let status = node.status();
        assert!(
            status.applied >= applied.index,
            "write {i}: applied at index {} but the status says applied {}",
            applied.index,
            status.applied
        );
    }
    node.shutdown();
}
