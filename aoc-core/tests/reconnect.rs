//! A leader told that a member can be reached again sends its heartbeats at
//! once, so the member's catch-up starts without waiting for the next
//! heartbeat tick.

use aoc_core::state::MemKv;
use aoc_core::storage::{LogStore, MemLogStore};
use aoc_core::{Replica, ReplicaConfig};
use raft::eraftpb::{Message, MessageType};

type R = Replica<MemLogStore, MemKv>;

/// Runs each replica's work and delivers its messages until none is left.
fn settle(rs: &mut [R]) -> Vec<Message> {
    let mut seen = Vec::new();
    for _ in 0..100 {
        let mut sent = Vec::new();
        for r in rs.iter_mut() {
            while r.has_ready() {
                let rd = r.ready().expect("the replica keeps running");
                if let Some(w) = rd.write {
                    r.log_store().write(&w).expect("an in-memory write");
                    r.on_persisted(w.number);
                }
                sent.extend(rd.messages);
            }
        }
        if sent.is_empty() {
            return seen;
        }
        for m in &sent {
            rs[(m.to - 1) as usize].step(m.clone());
        }
        seen.extend(sent);
    }
    panic!("the replicas never settled");
}

fn three() -> Vec<R> {
    let mut rs: Vec<R> = (1..=3)
        .map(|id| {
            let log = MemLogStore::new();
            R::bootstrap(&log, &[1, 2, 3]).expect("bootstrap");
            R::new(ReplicaConfig::new(id), log, MemKv::new(), id).expect("open")
        })
        .collect();
    rs[0].campaign().expect("member 1 campaigns");
    settle(&mut rs);
    assert!(rs[0].is_leader(), "member 1 leads");
    rs
}

fn heartbeats_to(messages: &[Message], to: u64) -> usize {
    messages
        .iter()
        .filter(|m| m.get_msg_type() == MessageType::MsgHeartbeat && m.to == to)
        .count()
}

#[test]
fn a_leader_sends_heartbeats_when_a_member_is_reachable_again() {
    let mut rs = three();
    rs[0].report_unreachable(2);
    assert_eq!(
        heartbeats_to(&settle(&mut rs), 2),
        0,
        "nothing before a tick"
    );
    rs[0].report_reachable(2);
    let sent = settle(&mut rs);
    assert_eq!(heartbeats_to(&sent, 2), 1, "a heartbeat at once: {sent:?}");
    assert!(
        sent.iter()
            .any(|m| m.get_msg_type() == MessageType::MsgHeartbeatResponse && m.from == 2),
        "member 2 answered"
    );
}

#[test]
fn a_follower_or_an_unknown_member_sends_nothing() {
    let mut rs = three();
    rs[1].report_reachable(1);
    rs[0].report_reachable(9);
    assert!(settle(&mut rs).is_empty());
}
