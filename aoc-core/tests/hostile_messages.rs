//! Hostile raft messages stepped into a replica from a peer: a snapshot
//! whose data cannot be restored, a snapshot carrying state sent to the
//! witness, and messages replayed from an old term. Each is refused or
//! ignored; the replica keeps running (its `ready` never fails) and its
//! state does not change.

use aoc_core::state::{MemKv, StateMachine};
use aoc_core::storage::{LogStore, MemLogStore};
use aoc_core::{Replica, ReplicaConfig};
use raft::eraftpb::{ConfState, Entry, Message, MessageType, Snapshot};

fn data_member() -> Replica<MemLogStore, MemKv> {
    let log = MemLogStore::new();
    Replica::<MemLogStore, MemKv>::bootstrap(&log, &[1, 2, 3]).expect("bootstrap");
    Replica::new(ReplicaConfig::ha(1, 3), log, MemKv::new(), 7).expect("open")
}

fn snapshot_msg(from: u64, to: u64, term: u64, index: u64, data: &[u8]) -> Message {
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = index;
    snap.mut_metadata().term = term;
    snap.mut_metadata().set_conf_state(ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    });
    snap.set_data(data.to_vec().into());
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.from = from;
    m.to = to;
    m.term = term;
    m.set_snapshot(snap);
    m
}

/// Drains the replica's ready work, failing the test if it fails.
fn drain<S: StateMachine>(r: &mut Replica<MemLogStore, S>) {
    for _ in 0..16 {
        if !r.has_ready() {
            return;
        }
        let rd = r.ready().expect("the replica keeps running");
        if let Some(w) = rd.write {
            r.log_store().write(&w).expect("an in-memory write");
            r.on_persisted(w.number);
        }
    }
}

#[test]
fn a_snapshot_that_cannot_be_restored_is_refused() {
    let mut r = data_member();
    drain(&mut r);
    r.step(snapshot_msg(2, 1, 5, 100, b"not a kv snapshot"));
    drain(&mut r);
    assert_eq!(r.state_machine().map(|s| s.applied_index()), Some(0));
    assert_eq!(r.status().last_index, 0, "the snapshot was not installed");
    // A well-formed snapshot taken at another index is refused too.
    let other = MemKv::new().snapshot().expect("a snapshot");
    r.step(snapshot_msg(2, 1, 5, 100, &other));
    drain(&mut r);
    assert_eq!(r.status().last_index, 0);
}

#[test]
fn the_witness_refuses_a_snapshot_with_state() {
    let log = MemLogStore::new();
    Replica::<MemLogStore, MemKv>::bootstrap(&log, &[1, 2, 3]).expect("bootstrap");
    let mut w: Replica<MemLogStore, MemKv> =
        Replica::new_witness(ReplicaConfig::ha(3, 3), log, 7).expect("open");
    drain(&mut w);
    w.step(snapshot_msg(
        1,
        3,
        5,
        100,
        b"state the witness must not hold",
    ));
    drain(&mut w);
    assert_eq!(w.status().last_index, 0);
    // Metadata alone is what the witness takes.
    w.step(snapshot_msg(1, 3, 5, 100, b""));
    drain(&mut w);
    assert_eq!(w.status().last_index, 100);
}

#[test]
fn messages_replayed_from_an_old_term_change_nothing() {
    let mut r = data_member();
    drain(&mut r);
    // A leader of term 3 appends entry 1.
    let mut app = Message::default();
    app.set_msg_type(MessageType::MsgAppend);
    app.from = 2;
    app.to = 1;
    app.term = 3;
    app.index = 0;
    app.log_term = 0;
    app.commit = 0;
    app.mut_entries().push(Entry {
        index: 1,
        term: 3,
        ..Default::default()
    });
    r.step(app.clone());
    drain(&mut r);
    assert_eq!(r.term(), 3);
    assert_eq!(r.status().last_index, 1);
    // The same kind of append replayed from term 2 with other entries, and
    // a vote request from term 2, are ignored.
    let mut old = app;
    old.term = 2;
    old.mut_entries()[0].term = 2;
    r.step(old);
    let mut vote = Message::default();
    vote.set_msg_type(MessageType::MsgRequestVote);
    vote.from = 2;
    vote.to = 1;
    vote.term = 2;
    vote.index = 5;
    vote.log_term = 2;
    r.step(vote);
    drain(&mut r);
    assert_eq!(r.term(), 3);
    assert_eq!(r.status().last_index, 1);
    assert_eq!(r.status().term, 3);
}

fn vote_request(from: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgRequestVote);
    m.from = from;
    m.to = 1;
    m.term = term;
    m
}

/// A member left out of the configuration (by a forced recovery) that
/// comes back must not move this member's term or get its vote; a member
/// of the configuration does.
#[test]
fn messages_from_outside_the_configuration_are_dropped() {
    let mut r = data_member();
    drain(&mut r);
    let before = r.status().term;
    r.step(vote_request(9, before + 5));
    drain(&mut r);
    assert_eq!(r.status().term, before, "a non-member moved the term");
    r.step(vote_request(2, before + 5));
    drain(&mut r);
    assert_eq!(r.status().term, before + 5, "a member's higher term counts");
}
