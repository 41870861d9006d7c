//! A membership change across a restart: the stored conf state and member
//! directory are written with the change, in the same log write, with the
//! index of the change (`MemberMeta::conf_index`). A restart replays only
//! the later changes, and replays a change the state machine applied but
//! whose log write a crash lost.

use aoc_core::proto::MemberMeta;
use aoc_core::state::{KvCommand, MemKv};
use aoc_core::storage::{LogStore, LogWrite, MemLogStore};
use aoc_core::{Member, MemberRole, MembershipChange, Replica, ReplicaConfig};
use raft::eraftpb::ConfState;

fn drain(r: &mut Replica<MemLogStore, MemKv>) -> usize {
    let mut done = 0;
    for _ in 0..64 {
        if !r.has_ready() {
            return done;
        }
        let rd = r.ready().expect("the replica keeps running");
        for c in &rd.completions {
            assert!(c.result.is_ok(), "token {}: {:?}", c.token, c.result);
        }
        done += rd.completions.len();
        if let Some(w) = rd.write {
            r.log_store().write(&w).expect("an in-memory write");
            r.on_persisted(w.number);
        }
    }
    panic!("the replica never ran out of work");
}

fn learner() -> Member {
    Member {
        id: 2,
        role: MemberRole::Data,
        ha_addr: "10.0.0.2:7400".into(),
    }
}

/// Standalone member 1 with learner 2 added, and writes after it; returns
/// the replica and its log store.
fn with_a_learner() -> (Replica<MemLogStore, MemKv>, MemLogStore) {
    let log = MemLogStore::new();
    Replica::<MemLogStore, MemKv>::bootstrap(&log, &[1]).expect("bootstrap");
    let mut r = Replica::new(ReplicaConfig::new(1), log.clone(), MemKv::new(), 7).expect("open");
    r.campaign().expect("a standalone member campaigns");
    drain(&mut r);
    r.propose(1, KvCommand::put("a", "1").encode(), None);
    drain(&mut r);
    r.change_membership(2, MembershipChange::AddLearner(learner()));
    assert_eq!(drain(&mut r), 1, "the change completes");
    for i in 0..3u64 {
        r.propose(10 + i, KvCommand::put(format!("b{i}"), "1").encode(), None);
    }
    drain(&mut r);
    assert_eq!(r.status().learners, vec![2]);
    (r, log)
}

#[test]
fn a_restart_keeps_the_change_and_its_directory() {
    let (r, log) = with_a_learner();
    let meta = log.member_meta().expect("meta");
    assert!(meta.conf_index > 0, "the change's index is stored");
    assert_eq!(meta.members.len(), 1);
    let sm = r.into_state_machine().expect("a data member");
    let r = Replica::new(ReplicaConfig::new(1), log.clone(), sm, 7).expect("reopen");
    let st = r.status();
    assert_eq!(st.voters, vec![1]);
    assert_eq!(st.learners, vec![2]);
    assert_eq!(st.members, vec![learner()]);
}

/// The state machine applied the change (and later writes) but the log
/// write that carried the conf state was lost: the restart applies the
/// change again from the log. Opening at the state machine's applied index
/// alone would skip it, leaving the learner out.
#[test]
fn a_change_applied_but_lost_from_the_log_is_replayed() {
    let (r, log) = with_a_learner();
    let sm = r.into_state_machine().expect("a data member");
    // The crash lost the write carrying the conf state and the directory.
    log.write(&LogWrite {
        conf_state: Some(ConfState {
            voters: vec![1],
            ..Default::default()
        }),
        member_meta: Some(MemberMeta::new()),
        ..Default::default()
    })
    .expect("an in-memory write");
    let mut r = Replica::new(ReplicaConfig::new(1), log.clone(), sm, 7).expect("reopen");
    r.campaign().expect("campaign");
    drain(&mut r);
    let st = r.status();
    assert_eq!(st.learners, vec![2], "the change was replayed");
    assert_eq!(st.members, vec![learner()]);
    // And stored again: a second restart keeps it.
    assert_eq!(
        log.initial_state().expect("state").conf_state.learners,
        vec![2]
    );
    let sm = r.into_state_machine().expect("a data member");
    let r = Replica::new(ReplicaConfig::new(1), log, sm, 7).expect("reopen again");
    assert_eq!(r.status().learners, vec![2]);
}

/// A joining member (blank, no configuration) takes no entry before the
/// snapshot that gives it the configuration: the bootstrap voters are in
/// no entry, so a log built from entries alone would not know them.
#[test]
fn a_joining_member_waits_for_its_snapshot() {
    use raft::eraftpb::{Entry, Message, MessageType};
    let mut r =
        Replica::join(ReplicaConfig::new(2), MemLogStore::new(), MemKv::new(), 7).expect("join");
    assert!(r.status().voters.is_empty());
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.from = 1;
    m.to = 2;
    m.term = 3;
    m.commit = 2;
    m.entries = vec![
        Entry {
            index: 1,
            term: 3,
            ..Default::default()
        },
        Entry {
            index: 2,
            term: 3,
            ..Default::default()
        },
    ]
    .into();
    r.step(m);
    drain(&mut r);
    let st = r.status();
    assert_eq!(st.last_index, 0, "entries taken before the snapshot");
    assert!(st.voters.is_empty());
}
