//! One write committed by a three-member HA cluster in one process: two
//! data members (raft-engine log, sled state, fsync on) and the witness, on
//! the in-process network. Everything but the TCP transport and the client
//! API: the gap between this and `aoc-bench write` on one client is what
//! processes, sockets and TLS add. The same cluster on in-memory storage
//! (no disk at all) shows what the threads and raft cost alone.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoc_core::state::{KvCommand, MemKv, NoStateMachine, SledKv, StateMachine};
use aoc_core::storage::{EngineLogOptions, EngineLogStore, LogStore, MemLogStore};
use aoc_core::transport::LocalNetwork;
use aoc_core::{Mode, Node, ReplicaConfig};
use criterion::{criterion_group, criterion_main, Criterion};

struct Cluster<S: StateMachine> {
    _dirs: Vec<tempfile::TempDir>,
    data: Vec<Node<S>>,
    witness: Node<NoStateMachine>,
}

fn builder(id: u64) -> aoc_core::NodeBuilder {
    Node::builder(ReplicaConfig::ha(id, 3))
        .voters(vec![1, 2, 3])
        .tick(Duration::from_millis(100))
        .seed(id)
}

/// Member `id`'s raft-engine log in `dir`, tuned for its role as
/// `aoc-node run` tunes it (member 3 is the witness).
fn log(id: u64, dir: &Path) -> EngineLogStore {
    let opts = if id == 3 {
        EngineLogOptions::witness()
    } else {
        EngineLogOptions::default()
    };
    EngineLogStore::open(&dir.join("log"), opts).expect("log opens")
}

impl<S: StateMachine> Cluster<S> {
    /// Starts the three members; `storage(id, dir)` opens member `id`'s
    /// log and (for a data member) state machine in `dir`.
    fn start<L: LogStore>(storage: impl Fn(u64, &Path) -> (L, Option<S>)) -> Self {
        let dirs: Vec<_> = (0..3)
            .map(|_| tempfile::tempdir().expect("temporary directory"))
            .collect();
        let net = LocalNetwork::new();
        let mut data = Vec::new();
        for id in 1..=2u64 {
            let (log, sm) = storage(id, dirs[id as usize - 1].path());
            let node = builder(id)
                .start_with_transport(
                    log,
                    sm.expect("a data member's state"),
                    Arc::new(net.transport()),
                )
                .expect("data member starts");
            net.attach(id, node.clone());
            data.push(node);
        }
        let (log, _) = storage(3, dirs[2].path());
        let witness = builder(3)
            .start_witness(log, Arc::new(net.transport()))
            .expect("witness starts");
        net.attach(3, witness.clone());
        Cluster {
            _dirs: dirs,
            data,
            witness,
        }
    }

    /// The active, once it is in sync mode.
    fn active(&self) -> Node<S> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for n in &self.data {
                let s = n.status();
                if s.active && s.mode == Mode::Sync && s.passive_lag_entries == Some(0) {
                    return n.clone();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no active in sync mode after 30 s");
    }
}

impl<S: StateMachine> Drop for Cluster<S> {
    fn drop(&mut self) {
        for n in &self.data {
            n.shutdown();
        }
        self.witness.shutdown();
    }
}

fn bench_puts<S: StateMachine>(c: &mut Criterion, name: &str, cluster: &Cluster<S>) {
    let active = cluster.active();
    let value = vec![7u8; 256];
    let mut i = 0u64;
    c.bench_function(name, |b| {
        b.iter(|| {
            i += 1;
            active
                .propose(KvCommand::put(format!("k{i}"), value.clone()).encode())
                .expect("the write commits")
        })
    });
}

/// Throughput: `threads` proposers at once (group commit batches them);
/// the time reported is per write.
fn bench_concurrent<S: StateMachine>(
    c: &mut Criterion,
    name: &str,
    cluster: &Cluster<S>,
    threads: u64,
) {
    let active = cluster.active();
    let value = vec![7u8; 256];
    let next = std::sync::atomic::AtomicU64::new(0);
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let per_thread = iters.div_ceil(threads).max(1);
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| {
                        for _ in 0..per_thread {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            active
                                .propose(KvCommand::put(format!("c{i}"), value.clone()).encode())
                                .expect("the write commits");
                        }
                    });
                }
            });
            // Scaled to `iters` writes (the threads made a few more).
            start
                .elapsed()
                .mul_f64(iters as f64 / (per_thread * threads) as f64)
        })
    });
}

fn ha_commit(c: &mut Criterion) {
    let on_disk = Cluster::start(|id, dir| {
        let sm = (id != 3).then(|| SledKv::open(&dir.join("state")).expect("state opens"));
        (log(id, dir), sm)
    });
    bench_puts(
        c,
        "HA commit in process, one 256-byte put, sync mode",
        &on_disk,
    );
    bench_concurrent(
        c,
        "HA commit in process, 64 concurrent proposers, per 256-byte put",
        &on_disk,
        64,
    );
    drop(on_disk);
    let log_only = Cluster::start(|id, dir| (log(id, dir), (id != 3).then(MemKv::new)));
    bench_puts(
        c,
        "HA commit in process, raft-engine logs, in-memory state, one 256-byte put",
        &log_only,
    );
    bench_concurrent(
        c,
        "HA commit in process, raft-engine logs, in-memory state, 64 concurrent proposers, per put",
        &log_only,
        64,
    );
    drop(log_only);
    let in_memory = Cluster::start(|id, _| (MemLogStore::new(), (id != 3).then(MemKv::new)));
    bench_puts(
        c,
        "HA commit in process, in memory (no disk), one 256-byte put",
        &in_memory,
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5));
    targets = ha_commit
}
criterion_main!(benches);
