//! Storage benchmarks: one synced log write of a 256-byte entry on
//! raft-engine (the floor of every commit), and one applied batch on the
//! sled state machine.

use aoc_core::state::{ApplyBatch, ApplyCommand, KvCommand, SledKv, StateMachine};
use aoc_core::storage::{EngineLogOptions, EngineLogStore, LogStore, LogWrite};
use criterion::{criterion_group, criterion_main, Criterion};
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

criterion_group!(benches, log_write, state_apply);
criterion_main!(benches);
