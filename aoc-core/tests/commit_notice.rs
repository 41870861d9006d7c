//! How the followers of an HA cluster learn the commit index: with the
//! next append or heartbeat, never from an append sent only to carry it
//! (that one, and its answer, cost every write two more messages per
//! follower). A follower that gets no further write still applies within
//! a heartbeat.

use std::collections::VecDeque;

use aoc_core::state::{KvCommand, MemKv};
use aoc_core::storage::{LogStore, MemLogStore};
use aoc_core::{Replica, ReplicaConfig};
use raft::eraftpb::{Message, MessageType};

const WITNESS: u64 = 3;

/// Data members 1 and 2 and witness 3, joined by a perfect network that
/// the test pumps by hand, on disks that persist at once.
struct Trio {
    members: Vec<Replica<MemLogStore, MemKv>>,
    /// Every message sent, in order.
    sent: Vec<Message>,
    now_ms: u64,
}

impl Trio {
    fn new() -> Trio {
        let members = (1..=3u64)
            .map(|id| {
                let log = MemLogStore::new();
                Replica::<MemLogStore, MemKv>::bootstrap(&log, &[1, 2, 3]).expect("bootstrap");
                let cfg = ReplicaConfig::ha(id, WITNESS);
                if id == WITNESS {
                    Replica::new_witness(cfg, log, id).expect("open the witness")
                } else {
                    Replica::new(cfg, log, MemKv::new(), id).expect("open a data member")
                }
            })
            .collect();
        Trio {
            members,
            sent: Vec::new(),
            now_ms: 0,
        }
    }

    fn member(&mut self, id: u64) -> &mut Replica<MemLogStore, MemKv> {
        &mut self.members[(id - 1) as usize]
    }

    /// Carries out every member's work and delivers every message until
    /// nothing moves.
    fn pump(&mut self) {
        let mut queue: VecDeque<Message> = VecDeque::new();
        for _ in 0..10_000 {
            let mut moved = false;
            for r in &mut self.members {
                while r.has_ready() {
                    moved = true;
                    let rd = r.ready().expect("a replica keeps running");
                    if let Some(w) = rd.write {
                        r.log_store().write(&w).expect("an in-memory write");
                        r.on_persisted(w.number);
                    }
                    queue.extend(rd.messages);
                }
            }
            while let Some(m) = queue.pop_front() {
                moved = true;
                self.sent.push(m.clone());
                self.member(m.to).step(m);
            }
            if !moved {
                return;
            }
        }
        panic!("the cluster never settled");
    }

    fn tick(&mut self) {
        self.now_ms += 100;
        let now_ms = self.now_ms;
        for r in &mut self.members {
            r.tick(now_ms);
        }
        self.pump();
    }
}

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
    let mut c = Trio::new();
    c.pump();
    c.member(1).campaign().expect("a data member campaigns");
    // Settle: the leader's first entry committed and known everywhere.
    for _ in 0..3 {
        c.tick();
    }
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
