//! The codecs on every write's path: a raft append (one 256-byte entry) as
//! the member transport encodes it (protobuf), and a key-value command as
//! the state machine decodes it. And the cost of the other thing every
//! write does many times: handing work to a parked thread and back (a
//! crossbeam channel round trip, as between the node's threads).

use aoc_core::state::KvCommand;
use criterion::{criterion_group, criterion_main, Criterion};
use protobuf::Message as _;
use raft::eraftpb::{Entry, Message, MessageType};

fn append() -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.from = 1;
    m.to = 2;
    m.term = 3;
    m.index = 1000;
    m.log_term = 3;
    m.commit = 999;
    m.set_entries(
        vec![Entry {
            index: 1001,
            term: 3,
            data: KvCommand::put("some-key", vec![7u8; 256]).encode().into(),
            ..Default::default()
        }]
        .into(),
    );
    m
}

fn raft_message(c: &mut Criterion) {
    let msg = append();
    let bytes = msg.write_to_bytes().expect("encodes");
    c.bench_function("raft append (one 256-byte put) encode", |b| {
        b.iter(|| msg.write_to_bytes().expect("encodes"))
    });
    c.bench_function("raft append (one 256-byte put) decode", |b| {
        b.iter(|| Message::parse_from_bytes(&bytes).expect("decodes"))
    });
}

fn kv_command(c: &mut Criterion) {
    let cmd = KvCommand::put("some-key", vec![7u8; 256]);
    let bytes = cmd.encode();
    c.bench_function("kv put (256 bytes) encode", |b| b.iter(|| cmd.encode()));
    c.bench_function("kv put (256 bytes) decode", |b| {
        b.iter(|| KvCommand::decode(&bytes).expect("decodes"))
    });
}

fn hand_off(c: &mut Criterion) {
    let (to_tx, to_rx) = crossbeam::channel::unbounded::<u64>();
    let (back_tx, back_rx) = crossbeam::channel::unbounded::<u64>();
    let echo = std::thread::spawn(move || {
        while let Ok(v) = to_rx.recv() {
            if back_tx.send(v).is_err() {
                break;
            }
        }
    });
    c.bench_function("thread hand-off round trip, busy threads", |b| {
        b.iter(|| {
            to_tx.send(1).expect("the echo thread runs");
            back_rx.recv().expect("the echo thread answers")
        })
    });
    // As on a write's path: the other thread has been idle long enough to
    // park (and its CPU to go idle), so each hand-off wakes it.
    c.bench_function("thread hand-off round trip, parked threads", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                std::thread::sleep(std::time::Duration::from_micros(500));
                let start = std::time::Instant::now();
                to_tx.send(1).expect("the echo thread runs");
                back_rx.recv().expect("the echo thread answers");
                total += start.elapsed();
            }
            total
        })
    });
    drop(to_tx);
    let _ = echo.join();
}

criterion_group!(benches, raft_message, kv_command, hand_off);
criterion_main!(benches);
