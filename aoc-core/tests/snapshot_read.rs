//! A leader reads the snapshot a lagging member needs off its raft thread.
//!
//! The state machine here holds its snapshot back until the test opens a
//! gate, for many election timeouts. Meanwhile the active must stay the
//! active and go on committing writes; once the gate opens, the passive
//! catches up from the snapshot. A leader that read the snapshot on its
//! raft thread (through `StateMachine::snapshot`, which blocks here while
//! the gate is shut) would stop heartbeating and be failed over.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoc_core::state::{
    ApplyBatch, KvCommand, KvStateMachine, MemKv, Session, SnapshotRead, StateMachine,
};
use aoc_core::storage::MemLogStore;
use aoc_core::transport::LocalNetwork;
use aoc_core::{Node, ReplicaConfig, Result};

const TICK: Duration = Duration::from_millis(20);

/// A [`MemKv`] whose snapshots wait for a gate.
struct Gated {
    inner: MemKv,
    open: Arc<AtomicBool>,
    reads_started: Arc<AtomicUsize>,
}

struct GatedRead {
    index: u64,
    data: Option<Result<Vec<u8>>>,
    open: Arc<AtomicBool>,
}

impl SnapshotRead for GatedRead {
    fn index(&self) -> u64 {
        self.index
    }

    fn poll(&mut self) -> Option<Result<Vec<u8>>> {
        if self.open.load(Ordering::SeqCst) {
            self.data.take()
        } else {
            None
        }
    }
}

impl StateMachine for Gated {
    fn applied_index(&self) -> u64 {
        self.inner.applied_index()
    }

    fn apply(&mut self, batch: &ApplyBatch<'_>) -> Result<Vec<Vec<u8>>> {
        self.inner.apply(batch)
    }

    fn sessions(&self) -> Result<Vec<Session>> {
        self.inner.sessions()
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        // A read on the caller's thread: it lasts as long as the gate is
        // shut.
        self.reads_started.fetch_add(1, Ordering::SeqCst);
        while !self.open.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.inner.snapshot()
    }

    fn start_snapshot(&mut self) -> Result<Box<dyn SnapshotRead>> {
        self.reads_started.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(GatedRead {
            index: self.inner.applied_index(),
            data: Some(self.inner.snapshot()),
            open: self.open.clone(),
        }))
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<()> {
        self.inner.restore(index, data)
    }

    fn check_snapshot(&self, index: u64, data: &[u8]) -> Result<()> {
        self.inner.check_snapshot(index, data)
    }

    fn sync(&mut self) -> Result<u64> {
        self.inner.sync()
    }
}

struct Members {
    net: LocalNetwork,
    open: Arc<AtomicBool>,
    reads_started: Arc<AtomicUsize>,
    data: Vec<Node<Gated>>,
    _witness: Node<aoc_core::state::NoStateMachine>,
}

fn config(id: u64) -> ReplicaConfig {
    let mut cfg = ReplicaConfig::ha(id, 3);
    // Compact often, so a member that was away needs a snapshot.
    cfg.compact_every_entries = 50;
    cfg.compact_keep_entries = 10;
    cfg
}

fn start_data(
    net: &LocalNetwork,
    id: u64,
    open: &Arc<AtomicBool>,
    reads: &Arc<AtomicUsize>,
) -> Node<Gated> {
    let sm = Gated {
        inner: MemKv::new(),
        open: open.clone(),
        reads_started: reads.clone(),
    };
    let node = Node::builder(config(id))
        .voters(vec![1, 2, 3])
        .tick(TICK)
        .request_timeout(Duration::from_millis(500))
        .seed(id)
        .start_with_transport(MemLogStore::new(), sm, Arc::new(net.transport()))
        .expect("data member starts");
    net.attach(id, node.clone());
    node
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start() -> Members {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let net = LocalNetwork::new();
    let open = Arc::new(AtomicBool::new(true));
    let reads_started = Arc::new(AtomicUsize::new(0));
    let data = vec![
        start_data(&net, 1, &open, &reads_started),
        start_data(&net, 2, &open, &reads_started),
    ];
    let witness = Node::builder(config(3))
        .voters(vec![1, 2, 3])
        .tick(TICK)
        .seed(3)
        .start_witness(MemLogStore::new(), Arc::new(net.transport()))
        .expect("witness starts");
    net.attach(3, witness.clone());
    let m = Members {
        net,
        open,
        reads_started,
        data,
        _witness: witness,
    };
    wait("an active", Duration::from_secs(10), || {
        m.active().is_some()
    });
    m
}

/// Writes through `active` every 20 ms for `held`, while a snapshot read
/// is held back: each write must be acknowledged, `active` must stay the
/// active and `other` (the other data member) must never claim the role.
/// Returns the number of writes (keys `during0`...).
fn write_while_held(active: &Node<Gated>, other: &Node<Gated>, held: Duration) -> usize {
    let started = Instant::now();
    let mut written = 0;
    while started.elapsed() < held {
        let r = active.propose(KvCommand::put(format!("during{written}"), "v").encode());
        assert!(r.is_ok(), "a write while a snapshot is read failed: {r:?}");
        assert!(active.status().active, "the active lost the role");
        assert!(
            !other.status().active,
            "the other data member claims the role too"
        );
        written += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    written
}

impl Members {
    fn active(&self) -> Option<usize> {
        self.data.iter().position(|n| n.status().active)
    }
}

#[test]
fn the_active_commits_while_a_slow_snapshot_is_read() {
    let m = start();
    let a = m.active().expect("an active");
    let p = 1 - a;
    let passive_id = m.data[p].id();

    // The passive is cut off; the active writes on and compacts its log
    // past what the passive holds.
    m.net.detach(passive_id);
    for i in 0..300 {
        m.data[a]
            .propose(KvCommand::put(format!("k{i}"), "v").encode())
            .expect("a write with the passive away");
    }
    wait("a compaction", Duration::from_secs(10), || {
        m.data[a].status().first_index > m.data[p].status().applied + 1
    });

    // It comes back, and the snapshot it needs is held back.
    m.open.store(false, Ordering::SeqCst);
    m.net.attach(passive_id, m.data[p].clone());
    wait("a snapshot read", Duration::from_secs(10), || {
        m.reads_started.load(Ordering::SeqCst) > 0
    });

    // Many election timeouts (11 to 14 ticks each) while the read is held
    // back: the active stays the active and commits.
    let written = write_while_held(&m.data[a], &m.data[p], Duration::from_secs(2));
    assert!(written > 20, "writes went on ({written})");
    assert!(
        m.data[p].status().applied < m.data[a].status().applied,
        "the passive cannot catch up before the snapshot is released"
    );

    // Released: the passive catches up, with the same pairs.
    m.open.store(true, Ordering::SeqCst);
    wait("the passive to catch up", Duration::from_secs(20), || {
        m.data[p].status().applied >= m.data[a].status().applied
    });
    let pairs = |n: &Node<Gated>| {
        n.read_applied(|sm, _| sm.inner.scan(&[]))
            .expect("read")
            .expect("scan")
    };
    // The log kept the entries after the snapshot while it was read (50
    // and more entries were written, enough for compactions): the
    // snapshot read first was the one sent, not a second one.
    assert_eq!(
        m.reads_started.load(Ordering::SeqCst),
        1,
        "one snapshot read"
    );
    let want = pairs(&m.data[a]);
    assert_eq!(
        want.len(),
        300 + written,
        "every acknowledged write is there"
    );
    // Only the active serves reads: hand the role over, then read.
    m.data[a]
        .switchover()
        .expect("switchover to the caught-up passive");
    wait("the passive to be active", Duration::from_secs(10), || {
        m.data[p].status().active
    });
    assert_eq!(pairs(&m.data[p]), want, "the passive holds the same pairs");
}

#[test]
fn a_backup_is_read_while_the_active_commits() {
    let m = start();
    let a = m.active().expect("an active");
    let mut last_acked = 0;
    for i in 0..50 {
        last_acked = m.data[a]
            .propose(KvCommand::put(format!("k{i}"), "v").encode())
            .expect("a write")
            .index;
    }
    assert!(
        matches!(
            m.data[1 - a].read_snapshot(),
            Err(aoc_core::Error::NotLeader { .. })
        ),
        "only the active serves a snapshot read"
    );

    m.open.store(false, Ordering::SeqCst);
    let node = m.data[a].clone();
    let backup = std::thread::spawn(move || node.read_snapshot());
    wait("a snapshot read", Duration::from_secs(10), || {
        m.reads_started.load(Ordering::SeqCst) > 0
    });
    write_while_held(&m.data[a], &m.data[1 - a], Duration::from_millis(1500));
    assert!(!backup.is_finished(), "the read waits for the gate");
    m.open.store(true, Ordering::SeqCst);
    let snapshot = backup
        .join()
        .expect("backup thread")
        .expect("the snapshot read");

    // It covers every write acknowledged before it was asked for.
    assert!(snapshot.index >= last_acked);
    let mut copy = MemKv::new();
    copy.restore(snapshot.index, &snapshot.state)
        .expect("the state restores");
    for i in 0..50 {
        assert_eq!(
            copy.get(format!("k{i}").as_bytes()).expect("get"),
            Some(b"v".to_vec()),
            "k{i} is in the backup"
        );
    }
}
