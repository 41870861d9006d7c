//! How the followers of an HA cluster learn the commit index: with the
//! next append or heartbeat, never from an append sent only to carry it
//! (that one, and its answer, cost every write two more messages per
//! follower). A follower that gets no further write still applies within
//! a heartbeat.

use aoc_core::state::KvCommand;
use aoc_core::ReplicaConfig;
use raft::eraftpb::{Message, MessageType};

#[path = "common/trio.rs"]
mod trio;
use trio::{Trio, WITNESS};

/// Appends from `leader` that carry no entry.
fn empty_appends(sent: &[Message], leader: u64) -> usize {
    sent.iter()
        .filter(|m| {
            m.from == leader
                && m.get_msg_type() == MessageType::MsgAppend
                && m.get_entries().is_empty()
        })
        .count()
}

#[test]
fn followers_learn_the_commit_index_from_the_next_message() {
    let mut c = Trio::with_leader();
    assert_eq!(c.member(1).status().leader, Some(1), "member 1 leads");
    c.sent.clear();

    let writes = 20u64;
    for i in 0..writes {
        c.member(1)
            .propose(i + 1, KvCommand::put(format!("k{i}"), "v").encode(), None);
        c.pump();
    }
    let leader = c.member(1).status();
    assert_eq!(leader.applied, leader.last_index, "every write applied");
    assert_eq!(
        empty_appends(&c.sent, 1),
        0,
        "no append was sent only to carry a commit index"
    );
    // Each write's append carried the commit index of the one before it.
    let passive = c.member(2).status();
    assert_eq!(passive.last_index, leader.last_index);
    assert_eq!(passive.applied, leader.commit - 1, "one behind the leader");

    // With no further write, the heartbeat carries it.
    for _ in 0..ReplicaConfig::ha(1, WITNESS).heartbeat_tick {
        c.tick();
    }
    assert_eq!(c.member(2).status().applied, leader.commit);
    assert_eq!(c.member(WITNESS).status().commit, leader.commit);
}
