//! Inputs the fuzz targets (`fuzz/`) found, fed again to the same public
//! API: each test asserts that the input is refused or handled, not a
//! panic. The raft-rs panics are filtered by the replica
//! (`replica/filter.rs`); `fuzz/README.md` lists the findings.

use std::panic::{catch_unwind, AssertUnwindSafe};

use aoc_core::state::{MemKv, NoStateMachine, StateMachine};
use aoc_core::storage::MemLogStore;
use aoc_core::{Replica, ReplicaConfig};
use raft::eraftpb::{Message, MessageType};

/// A fresh member of the three-voter group 1, 2, 3 (witness 3).
fn data_member() -> Replica<MemLogStore, MemKv> {
    let log = MemLogStore::new();
    Replica::<MemLogStore, MemKv>::bootstrap(&log, &[1, 2, 3]).expect("bootstrap");
    Replica::new(ReplicaConfig::ha(1, 3), log, MemKv::new(), 7).expect("opens")
}

/// A fresh member 1 of the three-voter group 1, 2, 3 without a witness.
fn majority_member() -> Replica<MemLogStore, MemKv> {
    let log = MemLogStore::new();
    Replica::<MemLogStore, MemKv>::bootstrap(&log, &[1, 2, 3]).expect("bootstrap");
    Replica::new(ReplicaConfig::new(1), log, MemKv::new(), 7).expect("opens")
}

/// A fresh witness of the same group.
fn witness() -> Replica<MemLogStore, NoStateMachine> {
    let log = MemLogStore::new();
    Replica::<MemLogStore, NoStateMachine>::bootstrap(&log, &[1, 2, 3]).expect("bootstrap");
    Replica::new_witness(ReplicaConfig::ha(3, 3), log, 7).expect("opens")
}

fn message(msg_type: MessageType, from: u64, to: u64) -> Message {
    let mut m = Message::new();
    m.set_msg_type(msg_type);
    m.from = from;
    m.to = to;
    m
}

/// Steps `msg` and takes the ready work; fails the test with `what` if
/// either panics.
fn step_survives<S: StateMachine>(r: &mut Replica<MemLogStore, S>, msg: Message, what: &str) {
    let stepped = catch_unwind(AssertUnwindSafe(|| {
        r.step(msg);
        while r.has_ready() {
            if r.ready().is_err() {
                break;
            }
        }
    }));
    assert!(stepped.is_ok(), "the replica panicked on {what}");
}

// core_messages, crash-ad63acbd: a fresh witness got a pre-vote request
// with term 0 from member 1. raft-rs grants it and answers with the
// request's term, then panics in `Raft::send`: "term should be set when
// sending MsgRequestPreVoteResponse".
#[test]
fn a_pre_vote_request_with_term_0_is_not_a_panic() {
    let mut w = witness();
    let m = message(MessageType::MsgRequestPreVote, 1, 3);
    step_survives(&mut w, m, "a pre-vote request with term 0 (witness)");
    let mut d = data_member();
    let m = message(MessageType::MsgRequestPreVote, 2, 1);
    step_survives(&mut d, m, "a pre-vote request with term 0 (data member)");
}

#[test]
fn a_vote_request_with_term_0_is_not_a_panic() {
    let mut d = data_member();
    let m = message(MessageType::MsgRequestVote, 2, 1);
    step_survives(&mut d, m, "a vote request with term 0");
}

// core_messages, crash-66addef8: a (pre-)candidate got an append, a
// heartbeat or a snapshot with term 0 (raft-rs skips its term checks for
// term 0, taking it for a local message). raft-rs fails
// `debug_assert_eq!(self.term, m.term)` in `step_candidate`; in a release
// build the candidate becomes a follower at term 0: its term goes back.
#[test]
fn a_candidate_takes_no_message_with_term_0() {
    for t in [
        MessageType::MsgAppend,
        MessageType::MsgHeartbeat,
        MessageType::MsgSnapshot,
    ] {
        let mut d = data_member();
        // Pre-vote, then member 2's grant: a candidate at term 1.
        d.campaign().expect("campaigns");
        let mut grant = message(MessageType::MsgRequestPreVoteResponse, 2, 1);
        grant.term = 1;
        d.step(grant);
        let term = d.term();
        assert_eq!(term, 1, "a candidate");
        let m = message(t, 2, 1);
        step_survives(&mut d, m, &format!("a {t:?} with term 0 to a candidate"));
        assert!(
            d.term() >= term,
            "the term went back from {term} to {}",
            d.term()
        );
    }
}

// core_messages, crash-d9ca91f3: an append whose previous entry (index 13)
// is beyond the log and claims term 0 matches in raft-rs (the term of an
// index out of range reads as 0), so raft-rs commits to the append's
// commit index, beyond the log: "to_commit 12 is out of range [last_index
// 0]" in `RaftLog::commit_to`.
#[test]
fn an_append_claiming_term_0_beyond_the_log_is_not_a_panic() {
    for term in [0, 1] {
        let mut d = data_member();
        let mut m = message(MessageType::MsgAppend, 2, 1);
        m.term = term;
        m.index = 13;
        m.log_term = 0;
        m.commit = 12;
        step_survives(
            &mut d,
            m,
            &format!("an append at term {term}, log term 0, beyond the log"),
        );
        let mut w = witness();
        let mut m = message(MessageType::MsgAppend, 1, 3);
        m.term = term;
        m.index = 13;
        m.log_term = 0;
        m.commit = 12;
        step_survives(
            &mut w,
            m,
            &format!("an append at term {term} to the witness"),
        );
    }
}

// core_messages, crash-33562645: the same through an entry: an append at
// term 1 after index 0 carrying entry 1 with term 0 and commit 64511. Entry
// 1 is beyond the log, its term reads as 0, so raft-rs takes it as already
// held, appends nothing and commits to 1: "to_commit 1 is out of range
// [last_index 0]".
#[test]
fn an_append_carrying_an_entry_of_term_0_is_not_a_panic() {
    let mut d = majority_member();
    let mut m = message(MessageType::MsgAppend, 2, 1);
    m.term = 1;
    m.commit = 64511;
    let mut e = raft::eraftpb::Entry::new();
    e.index = 1;
    m.entries.push(e);
    step_survives(&mut d, m, "an append carrying an entry of term 0");
}
