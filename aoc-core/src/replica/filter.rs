//! What a peer may send: raft-rs trusts its peers and panics, or goes
//! wrong, on some messages no correct peer sends. The replica drops them
//! before raft-rs sees them (found by the `core_messages` fuzz target;
//! `tests/fuzz_regressions.rs` replays each).
//!
//! - **Local message types** (`MsgHup`, `MsgBeat`, `MsgPropose`,
//!   `MsgReadIndex`, `MsgUnreachable`, `MsgSnapStatus`, `MsgCheckQuorum`,
//!   `MsgTransferLeader`):
//!   raft-rs takes them as this member's own (a `MsgHup` would make it
//!   campaign, a `MsgPropose` would append an entry past every check). This
//!   replica never forwards proposals or reads, so no peer sends them.
//! - **Term 0**: raft-rs takes a message of term 0 for a local one and
//!   skips every term check: a vote request of term 0 makes it answer with
//!   term 0 and panic ("term should be set when sending ..."); an append,
//!   heartbeat or snapshot of term 0 to a candidate sends its term back to
//!   0. Every remote message raft-rs sends carries a term.
//! - **Entries of term 0**: raft-rs reads the term of an index outside its
//!   log as 0, so an append whose previous entry claims term 0 beyond the
//!   log, or that carries an entry of term 0, "matches" without appending
//!   and commits past the last index (a panic in `RaftLog::commit_to`).
//!   Real entries have terms of 1 or more; index 0 (the empty log) is the
//!   only position of term 0.
//! - **Misnumbered entries**: raft-rs assumes an append's entries are
//!   numbered from its previous index + 1, one by one; otherwise it commits
//!   past its log or slices out of range.
//! - **Snapshots at index 0, or with a configuration that is not a member
//!   set** (no voter, id 0, an id both voter and learner): raft-rs
//!   restores, compares with the snapshot's configuration and panics, or
//!   underflows `next_idx - 1`.
//! - A **leader transfer** from a peer is forwarded by a follower as it
//!   came, term included, and raft-rs panics in `send`; this replica asks
//!   only itself to transfer (on the leader), so no peer sends one.

use raft::eraftpb::{Message, MessageType};

/// Why `msg`, received from a peer, must not reach raft-rs; `None` when it
/// may.
pub(crate) fn refuse(msg: &Message) -> Option<&'static str> {
    use MessageType::*;
    match msg.get_msg_type() {
        MsgHup | MsgBeat | MsgPropose | MsgReadIndex | MsgUnreachable | MsgSnapStatus
        | MsgCheckQuorum | MsgTransferLeader => return Some("a local message type"),
        _ => {}
    }
    if msg.term == 0 {
        return Some("term 0");
    }
    if msg.get_msg_type() == MsgAppend {
        if msg.log_term == 0 && msg.index > 0 {
            return Some("an append whose previous entry claims term 0");
        }
        if msg.entries.iter().any(|e| e.term == 0) {
            return Some("an entry of term 0");
        }
        let numbered = msg.entries.iter().enumerate().all(|(i, e)| {
            msg.index
                .checked_add(1 + i as u64)
                .is_some_and(|want| e.index == want)
        });
        if !numbered {
            return Some("entries not numbered from the previous index + 1");
        }
    }
    if msg.get_msg_type() == MsgSnapshot {
        let meta = msg.get_snapshot().get_metadata();
        if meta.term == 0 || meta.index == 0 {
            return Some("a snapshot at term or index 0");
        }
        if !member_set(meta.get_conf_state()) {
            return Some("a snapshot whose configuration is not a member set");
        }
    }
    None
}

/// Whether `cs` is a configuration raft-rs restores as it is: some voter,
/// no id 0, no id both voter and learner (in either half of a joint
/// configuration).
fn member_set(cs: &raft::eraftpb::ConfState) -> bool {
    let voters = cs.voters.iter().chain(cs.voters_outgoing.iter());
    let learners = cs.learners.iter().chain(cs.learners_next.iter());
    !cs.voters.is_empty()
        && !voters.clone().chain(learners.clone()).any(|id| *id == 0)
        && !learners.clone().any(|l| voters.clone().any(|v| v == l))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::Entry;

    fn msg(t: MessageType, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.term = term;
        m
    }

    #[test]
    fn what_correct_peers_send_passes() {
        for t in [
            MessageType::MsgRequestVote,
            MessageType::MsgRequestPreVote,
            MessageType::MsgHeartbeat,
            MessageType::MsgHeartbeatResponse,
            MessageType::MsgAppendResponse,
            MessageType::MsgTimeoutNow,
            MessageType::MsgReadIndexResp,
        ] {
            assert_eq!(refuse(&msg(t, 3)), None, "{t:?}");
        }
        let mut app = msg(MessageType::MsgAppend, 3);
        app.index = 5;
        app.log_term = 2;
        app.entries.push(Entry {
            index: 6,
            term: 3,
            ..Default::default()
        });
        assert_eq!(refuse(&app), None);
        // The first append of a fresh log: previous entry 0 of term 0.
        let mut first = msg(MessageType::MsgAppend, 1);
        first.entries.push(Entry {
            index: 1,
            term: 1,
            ..Default::default()
        });
        assert_eq!(refuse(&first), None);
    }

    #[test]
    fn what_raft_rs_cannot_take_is_refused() {
        assert!(refuse(&msg(MessageType::MsgHup, 3)).is_some());
        assert!(refuse(&msg(MessageType::MsgPropose, 0)).is_some());
        assert!(refuse(&msg(MessageType::MsgRequestPreVote, 0)).is_some());
        let mut app = msg(MessageType::MsgAppend, 1);
        app.index = 13;
        assert!(refuse(&app).is_some());
        let mut app = msg(MessageType::MsgAppend, 1);
        app.entries.push(Entry {
            index: 1,
            ..Default::default()
        });
        assert!(refuse(&app).is_some());
        let mut app = msg(MessageType::MsgAppend, 1);
        app.index = 3;
        app.log_term = 1;
        app.entries.push(Entry {
            index: 5,
            term: 1,
            ..Default::default()
        });
        assert!(refuse(&app).is_some(), "entry 5 after index 3");
        let mut snap = msg(MessageType::MsgSnapshot, 2);
        snap.mut_snapshot().mut_metadata().index = 10;
        snap.mut_snapshot().mut_metadata().term = 2;
        snap.mut_snapshot().mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        assert_eq!(refuse(&snap), None);
        snap.mut_snapshot().mut_metadata().mut_conf_state().learners = vec![2];
        assert!(refuse(&snap).is_some(), "2 both voter and learner");
        assert!(refuse(&msg(MessageType::MsgTransferLeader, 1)).is_some());
    }
}
