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
// `debug_assert_eq!(self.term, m.term)` in `step_candidate`; past that
// assertion (release builds) it calls `become_follower(0, ..)`, which sets
// the candidate's term back to 0.
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

// core_messages, crash-0c45d101 (after the filter above): raft-rs assumes
// the entries of an append are numbered from its previous index + 1 on.
// An append at term 255 after index 0 (log term 0) carrying an entry
// numbered 0 of term 255, commit 7809, to a fresh data member: raft-rs
// finds the "conflict" at index 0, which it reads as no conflict, appends
// nothing and commits to 1: "to_commit 1 is out of range [last_index 0]".
// Numbered 5 instead, the entry makes raft-rs slice the entries from
// position 4 of 1.
#[test]
fn an_append_with_misnumbered_entries_is_not_a_panic() {
    for number in [0, 5] {
        let mut d = data_member();
        let mut m = message(MessageType::MsgAppend, 2, 1);
        m.term = 255;
        m.commit = 7809;
        let mut e = raft::eraftpb::Entry::new();
        e.index = number;
        e.term = 255;
        m.entries.push(e);
        step_survives(
            &mut d,
            m,
            &format!("an append whose entry is numbered {number}"),
        );
    }
}

/// A snapshot message from member `from` to `to` at index 10 of term 5
/// whose configuration is `voters` and `learners`.
fn snapshot(from: u64, to: u64, voters: &[u64], learners: &[u64], data: Vec<u8>) -> Message {
    let mut m = message(MessageType::MsgSnapshot, from, to);
    m.term = 5;
    let snap = m.mut_snapshot();
    snap.mut_metadata().index = 10;
    snap.mut_metadata().term = 5;
    snap.mut_metadata().mut_conf_state().voters = voters.to_vec();
    snap.mut_metadata().mut_conf_state().learners = learners.to_vec();
    snap.data = data.into();
    m
}

// core_messages, crash-0b659de2: a snapshot whose configuration names
// member 0 (voters 3 and 0, to the witness). raft-rs restores the
// configuration, which drops or merges what is not a valid member set,
// compares it with the snapshot's and panics: "invalid restore: voters: 3
// voters: 0 != voters: 3" (`Raft::restore`). The same for a voter that is
// also a learner; a configuration of learners only (crash-cc9618a1) fails
// earlier: "unable to restore config ...: removed all voters".
#[test]
fn a_snapshot_with_a_malformed_configuration_is_not_a_panic() {
    let mut kv = MemKv::new();
    kv.apply(&aoc_core::state::ApplyBatch {
        applied_index: 10,
        ..Default::default()
    })
    .expect("a batch");
    let state = kv.snapshot().expect("a snapshot");
    for (voters, learners) in [
        (&[1, 0][..], &[][..]),
        (&[1, 2, 3][..], &[2][..]),
        (&[][..], &[1, 2, 3][..]),
    ] {
        let mut w = witness();
        let m = snapshot(1, 3, &[voters, &[3]].concat(), learners, Vec::new());
        step_survives(
            &mut w,
            m,
            &format!("a snapshot for voters {voters:?} + 3, learners {learners:?} (witness)"),
        );
        let mut d = data_member();
        let m = snapshot(2, 1, voters, learners, state.clone());
        step_survives(
            &mut d,
            m,
            &format!("a snapshot for voters {voters:?}, learners {learners:?}"),
        );
    }
}

// core_messages, crash-2661c686: a snapshot at index 0 (term 221, voters 3,
// learner 1) to a fresh witness. raft-rs restores it and then computes
// `next_idx - 1` with `next_idx` 0 for the witness's own progress:
// "attempt to subtract with overflow" (`raft.rs:2648`; it wraps in release
// builds). A snapshot at index 0 holds nothing.
#[test]
fn a_snapshot_at_index_0_is_not_a_panic() {
    let mut w = witness();
    let mut m = snapshot(2, 3, &[3], &[1], Vec::new());
    m.term = 6;
    m.mut_snapshot().mut_metadata().index = 0;
    m.mut_snapshot().mut_metadata().term = 221;
    step_survives(&mut w, m, "a snapshot at index 0");
}

// core_messages, crash-bb77c257: a follower that knows its leader (after an
// append of term 1 from member 1) gets a leader transfer of term 1. raft-rs
// forwards it to the leader as it came, term included, and panics in
// `Raft::send`: "term should not be set when sending MsgTransferLeader (was
// 1)". A follower's own raft-rs forwards transfers with its term set, so
// this needs no malice: a transfer forwarded to a member that stopped
// leading does it too.
#[test]
fn a_leader_transfer_from_a_peer_is_not_a_panic() {
    let mut w = witness();
    let mut append = message(MessageType::MsgAppend, 1, 3);
    append.term = 1;
    step_survives(&mut w, append, "an append of term 1");
    assert_eq!(w.leader(), Some(1));
    let mut m = message(MessageType::MsgTransferLeader, 2, 3);
    m.term = 1;
    step_survives(&mut w, m, "a leader transfer of term 1");
}

// core_messages, crash-b40aee7a: not a malformed message but a slow disk.
// A member takes a snapshot (index 100, from leader 2) and its election
// timer fires while the snapshot's log write is still pending (the leader
// went quiet). raft-rs campaigns, reads the entries between its applied
// index (still 0: the replica advances it once the write is persisted) and
// its commit index (100) from a log that now starts after 100, and panics
// in `Raft::hup`: "unexpected error getting unapplied entries [1, 101):
// Store(Compacted)". Data members and the witness alike; with the write
// persisted first, nothing happens.
#[test]
fn an_election_timeout_during_a_snapshot_install_is_not_a_panic() {
    let mut kv = MemKv::new();
    kv.apply(&aoc_core::state::ApplyBatch {
        applied_index: 100,
        ..Default::default()
    })
    .expect("a batch");
    let state = kv.snapshot().expect("a snapshot");
    let mut d = data_member();
    let mut w = witness();
    for (to, data) in [(1, state), (3, Vec::new())] {
        let mut m = snapshot(2, to, &[1, 2, 3], &[], data);
        m.term = 1;
        m.mut_snapshot().mut_metadata().index = 100;
        m.mut_snapshot().mut_metadata().term = 1;
        let survived = if to == 1 {
            install_then_time_out(&mut d, m)
        } else {
            install_then_time_out(&mut w, m)
        };
        assert!(
            survived,
            "member {to} panicked timing out during a snapshot install"
        );
    }
}

/// Steps the snapshot `m`, takes its ready work without persisting the
/// write, then ticks past the election timeout; whether nothing panicked.
fn install_then_time_out<S: StateMachine>(r: &mut Replica<MemLogStore, S>, m: Message) -> bool {
    catch_unwind(AssertUnwindSafe(|| {
        r.step(m);
        for tick in 0..40 {
            while r.has_ready() {
                if r.ready().is_err() {
                    return;
                }
            }
            r.tick(tick * 100);
        }
    }))
    .is_ok()
}

// core_messages, crash-d23c1bbd: a vote grant the candidate never asked
// for (its vote requests still wait for its log write). Member 1 leads at
// term 1 and appends its empty entry (not persisted yet); member 2 sends
// `MsgTimeoutNow` at term 2, so member 1 stands at once at term 3; member 2
// then grants a vote at term 3 before member 1 released its requests.
// raft-rs makes member 1 leader with its log unpersisted and fails
// `assert_eq!(last_index, self.raft_log.persisted)` in `become_leader` (a
// plain assertion: release builds panic too).
#[test]
fn an_unsolicited_vote_grant_is_not_a_panic() {
    let mut d = majority_member();
    d.campaign().expect("campaigns");
    let grant = |t: MessageType, term: u64| {
        let mut m = message(t, 2, 1);
        m.term = term;
        m
    };
    d.step(grant(MessageType::MsgRequestPreVoteResponse, 1));
    d.step(grant(MessageType::MsgRequestVoteResponse, 1));
    assert!(d.is_leader());
    while d.has_ready() {
        d.ready().expect("ready");
    }
    let mut timeout_now = message(MessageType::MsgTimeoutNow, 2, 1);
    timeout_now.term = 2;
    step_survives(&mut d, timeout_now, "a TimeoutNow at term 2");
    let term = d.term();
    let m = grant(MessageType::MsgRequestVoteResponse, term);
    step_survives(
        &mut d,
        m,
        &format!("an unsolicited vote grant at term {term}"),
    );
}

// fuzz/README.md, "an election timeout during a snapshot install", the
// maintenance path: a member held back by maintenance (only member 2 may
// stand) refuses member 2's vote for a shorter log, so it stands itself to
// bring member 2 up to date; it does so while a snapshot install is being
// persisted. raft-rs would read the entries between its applied index and
// its commit index from a log that now starts past them, and panic
// ("unexpected error getting unapplied entries ... Store(Compacted)"):
// every campaign the replica makes now goes through one check
// (`Replica::may_campaign`), and the member stands once the write is done.
#[test]
fn standing_for_the_allowed_member_waits_for_a_snapshot_install() {
    use aoc_core::proto::{EntryKind, EntryPayload};
    use aoc_core::storage::LogStore;
    use protobuf::Message as _;
    use raft::eraftpb::Entry;

    let log = MemLogStore::new();
    Replica::<MemLogStore, MemKv>::bootstrap(&log, &[1, 2, 3]).expect("bootstrap");
    let mut d = Replica::new(ReplicaConfig::ha(1, 3), log.clone(), MemKv::new(), 7).expect("opens");
    // Leader 2 commits "maintenance on, only member 2 may stand".
    let mut p = EntryPayload::new();
    p.set_kind(EntryKind::MAINTENANCE);
    p.set_maintenance_on(true);
    p.set_maintenance_allowed(2);
    let e = Entry {
        index: 1,
        term: 1,
        data: p.write_to_bytes().expect("encodes").into(),
        ..Default::default()
    };
    let mut append = message(MessageType::MsgAppend, 2, 1);
    append.term = 1;
    append.commit = 1;
    append.set_entries(vec![e].into());
    d.step(append);
    for _ in 0..3 {
        while d.has_ready() {
            let rd = d.ready().expect("ready");
            if let Some(w) = rd.write {
                log.write(&w).expect("in memory");
                d.on_persisted(w.number);
            }
        }
    }
    assert_eq!(d.maintenance().map(|(allowed, _)| allowed), Some(2));
    // A snapshot at 100 from leader 2, its write not persisted.
    let mut kv = MemKv::new();
    kv.apply(&aoc_core::state::ApplyBatch {
        applied_index: 100,
        ..Default::default()
    })
    .expect("a batch");
    let mut m = snapshot(2, 1, &[1, 2, 3], &[], kv.snapshot().expect("a snapshot"));
    m.term = 1;
    m.mut_snapshot().mut_metadata().index = 100;
    m.mut_snapshot().mut_metadata().term = 1;
    d.step(m);
    while d.has_ready() {
        d.ready().expect("ready");
    }
    // Member 2 asks for votes with a shorter log: refused, so member 1
    // would stand to bring it up to date.
    let mut vote = message(MessageType::MsgRequestVote, 2, 1);
    vote.term = 2;
    vote.log_term = 1;
    vote.index = 50;
    step_survives(&mut d, vote, "a vote request while the install is pending");
    let ticked = catch_unwind(AssertUnwindSafe(|| {
        for tick in 0..40 {
            d.tick(tick * 100);
            while d.has_ready() {
                let _ = d.ready();
            }
        }
    }));
    assert!(ticked.is_ok(), "the member stood during a snapshot install");
    assert!(!d.is_leader());
}
