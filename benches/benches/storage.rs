//! Storage benchmarks: one synced log write of a 256-byte entry on
//! raft-engine (the floor of every commit), one applied batch on the sled
//! state machine, and the state machine's side of a catch-up by snapshot
//! (build, check, restore) for 16 MiB of 64 KiB values and of 256-byte
//! values.

use aoc_core::state::{ApplyBatch, ApplyCommand, KvCommand, SledKv, StateMachine};
use aoc_core::storage::{EngineLogOptions, EngineLogStore, LogStore, LogWrite};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use raft::eraftpb::Entry;

fn log_write(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let log = EngineLogStore::open(dir.path(), EngineLogOptions::default()).expect("log opens");
    let mut index = 0u64;
    c.bench_function("raft-engine synced write, one 256-byte entry", |b| {
        b.iter(|| {
            index += 1;
            let e = Entry {
                index,
                term: 1,
                data: vec![7u8; 256].into(),
                ..Default::default()
            };
            log.write(&LogWrite {
                entries: vec![e],
                ..Default::default()
            })
            .expect("write");
        })
    });
}

fn state_apply(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut kv = SledKv::open(dir.path()).expect("state opens");
    let cmd = KvCommand::put("key", vec![1u8; 256]).encode();
    let mut index = 0u64;
    c.bench_function("sled apply, one 256-byte put (not synced)", |b| {
        b.iter(|| {
            index += 1;
            let batch = ApplyBatch {
                applied_index: index,
                commands: vec![ApplyCommand {
                    index,
                    command: &cmd,
                    session: None,
                }],
                new_sessions: vec![],
                expired_sessions: vec![],
            };
            kv.apply(&batch).expect("apply");
        })
    });
}

/// A synced store holding `total_bytes` of values of `value_bytes`.
fn filled_store(dir: &std::path::Path, total_bytes: usize, value_bytes: usize) -> SledKv {
    let mut kv = SledKv::open(dir).expect("state opens");
    let value = vec![5u8; value_bytes];
    let keys = total_bytes / value_bytes;
    let mut index = 0u64;
    // 256 puts per applied batch, as a busy cluster applies them.
    for first in (0..keys).step_by(256) {
        let commands: Vec<Vec<u8>> = (first..keys.min(first + 256))
            .map(|k| KvCommand::put(format!("key{k:08}"), value.clone()).encode())
            .collect();
        let batch = ApplyBatch {
            applied_index: index + commands.len() as u64,
            commands: commands
                .iter()
                .map(|command| {
                    index += 1;
                    ApplyCommand {
                        index,
                        command,
                        session: None,
                    }
                })
                .collect(),
            new_sessions: vec![],
            expired_sessions: vec![],
        };
        kv.apply(&batch).expect("apply");
    }
    kv.sync().expect("sync");
    kv
}

fn snapshot(c: &mut Criterion) {
    const TOTAL_BYTES: usize = 16 << 20;
    for (label, value_bytes) in [("64 KiB values", 65536), ("256-byte values", 256)] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut kv = filled_store(dir.path(), TOTAL_BYTES, value_bytes);
        let index = kv.applied_index();
        c.bench_function(&format!("sled snapshot build, 16 MiB of {label}"), |b| {
            b.iter(|| kv.snapshot().expect("snapshot"))
        });
        // The same read as the leader makes it (`start_snapshot`): on the
        // store's own thread, polled until done.
        c.bench_function(
            &format!("sled snapshot read on its own thread, 16 MiB of {label}"),
            |b| {
                b.iter(|| {
                    let mut read = kv.start_snapshot().expect("start_snapshot");
                    loop {
                        if let Some(data) = read.poll() {
                            break data.expect("snapshot read");
                        }
                        std::thread::yield_now();
                    }
                })
            },
        );
        let data = kv.snapshot().expect("snapshot");
        c.bench_function(&format!("snapshot check, 16 MiB of {label}"), |b| {
            b.iter(|| kv.check_snapshot(index, &data).expect("a valid snapshot"))
        });
        c.bench_function(
            &format!("sled restore into an empty store and sync, 16 MiB of {label}"),
            |b| {
                b.iter_batched(
                    || {
                        let target = tempfile::tempdir().expect("temporary directory");
                        let store = SledKv::open(target.path()).expect("state opens");
                        (target, store)
                    },
                    |(_target, mut store)| store.restore(index, &data).expect("restore"),
                    BatchSize::PerIteration,
                )
            },
        );
    }
}

criterion_group!(benches, log_write, state_apply);
criterion_group! {
    name = snapshots;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(10));
    targets = snapshot
}
criterion_main!(benches, snapshots);
