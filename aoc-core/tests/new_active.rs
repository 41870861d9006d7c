//! When a new leader becomes the active.
//!
//! - As soon as it has committed an entry of its term and the other voters
//!   have answered its lease probe, not at the next tick. A failover is
//!   shorter by up to a tick for it (raft-rs drops a ReadIndex sent before
//!   that first commit, so a probe sent only on ticks waits for the tick
//!   after the commit).
//! - With its view of maintenance mode current: a follower learns the
//!   commit index with the next append or heartbeat, so a new leader may
//!   hold a maintenance off it has not applied yet. It neither acts on the
//!   stale view nor takes the role before it has applied its term's first
//!   entry.
//! - Without waiting for the witness's own election timeout when the
//!   witness holds entries the passive never received (the active died
//!   between its two sends): the witness refuses the passive's vote for
//!   its shorter log, so it stands at once and hands over.

#[path = "common/trio.rs"]
mod trio;
use trio::{Trio, WITNESS};

use aoc_core::state::KvCommand;
use aoc_core::ReplicaConfig;
use raft::eraftpb::MessageType;

#[test]
fn a_new_leader_is_active_once_its_first_entry_commits() {
    let mut c = Trio::new();
    c.pump();
    c.member(1).campaign().expect("a data member campaigns");
    c.pump();
    let st = c.member(1).status();
    assert_eq!(st.leader, Some(1), "member 1 leads");
    assert!(st.commit > 0, "its first entry is committed");
    assert_eq!(c.now_ms, 0, "no tick has passed");
    assert!(
        c.member(1).is_active(),
        "the leader holds the active role without waiting for a tick"
    );
}

#[test]
fn the_passive_is_active_in_the_tick_it_is_elected() {
    let mut c = Trio::with_leader();
    assert!(c.member(1).is_active(), "member 1 is the active");

    // The active dies. The passive stands once its election timeout is
    // past (the witness's lease has ended by then) and wins with the
    // witness's vote, all within one tick's messages.
    c.down.push(1);
    let max_ticks = ReplicaConfig::ha(2, WITNESS).max_election_tick * 2;
    let mut elected_at = None;
    for t in 0..max_ticks {
        c.tick();
        if c.member(2).status().leader == Some(2) {
            elected_at = Some(t);
            break;
        }
    }
    let t = elected_at.expect("the passive is elected within two election timeouts");
    assert!(
        c.member(2).is_active(),
        "the passive holds the active role in the tick it was elected (tick {t} after the failure)"
    );
    assert!(
        !c.member(WITNESS).is_active(),
        "the witness is never active"
    );
}

#[test]
fn a_switchover_right_after_maintenance_off_stays_with_the_target() {
    let mut c = Trio::with_leader();
    assert!(c.member(1).is_active(), "member 1 is the active");
    assert_eq!(c.member(1).mode(), aoc_core::Mode::Sync);

    c.member(1).set_maintenance(1, true);
    c.pump();
    c.member(1).set_maintenance(2, false);
    c.pump();
    assert_eq!(c.member(1).maintenance(), None, "off on the active");
    // The precondition of the race: the passive holds the off but has not
    // learned that it is committed (no tick, so no heartbeat, since). It
    // acts on the newest setting in its log already.
    let st = c.member(2).status();
    assert!(
        st.applied < st.last_index,
        "the passive has not applied the off: {st:?}"
    );
    assert_eq!(
        c.member(2).maintenance(),
        None,
        "the passive acts on the off it holds"
    );

    // The switchover moves on at the next tick; that tick's heartbeat,
    // which would carry the commit index, is lost.
    c.member(1).switchover(3);
    c.lose = Some(|m| m.from == 1 && m.get_msg_type() == MessageType::MsgHeartbeat);
    c.tick();
    c.lose = None;
    assert_eq!(c.member(2).status().leader, Some(2), "the passive leads");
    assert!(c.member(2).is_active(), "the passive holds the active role");
    assert_eq!(c.member(2).maintenance(), None, "and has applied the off");
    assert!(!c.member(1).is_active(), "the old active does not");
    // Nothing bounces it back later.
    for _ in 0..5 {
        c.tick();
    }
    assert!(c.member(2).is_active(), "the passive keeps the role");
}

#[test]
fn a_witness_with_a_longer_log_than_the_passive_stands_at_once_and_hands_over() {
    let mut c = Trio::with_leader();
    assert!(c.member(1).is_active(), "member 1 is the active");

    // The last write reaches the witness but not the passive, and the
    // active dies: the witness's log is one entry longer.
    c.lose = Some(|m| m.from == 1 && m.to == 2);
    c.member(1)
        .propose(1, KvCommand::put("last", "v").encode(), None);
    c.pump();
    c.lose = None;
    c.down.push(1);
    let (passive, witness) = (c.member(2).status(), c.member(WITNESS).status());
    assert_eq!(
        witness.last_index,
        passive.last_index + 1,
        "the witness holds one more entry"
    );

    let data = ReplicaConfig::ha(2, WITNESS);
    let witness_min = ReplicaConfig::ha(WITNESS, WITNESS).min_election_tick;
    let mut active_at = None;
    for t in 1..=witness_min {
        c.tick();
        if c.member(2).is_active() {
            active_at = Some(t);
            break;
        }
    }
    let t = active_at.unwrap_or_else(|| {
        panic!("the passive is not active within {witness_min} ticks (the witness's own timeout)")
    });
    assert!(
        t <= data.max_election_tick,
        "the passive is active {t} ticks after the failure, past its own election timeout"
    );
    let st = c.member(2).status();
    assert!(
        st.last_index > witness.last_index,
        "it holds the witness's entry, and one of its own term"
    );
    assert_eq!(st.leader, Some(2));
    assert!(
        !c.member(WITNESS).is_active(),
        "the witness is never active"
    );
}
