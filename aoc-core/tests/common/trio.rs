//! Three replicas (data members 1 and 2, witness 3) pumped by hand: the
//! replica's own inputs and outputs, with no thread, clock or socket.
#![allow(dead_code)]

use std::collections::VecDeque;

use aoc_core::state::MemKv;
use aoc_core::storage::{LogStore, MemLogStore};
use aoc_core::{Replica, ReplicaConfig};
use raft::eraftpb::Message;

/// The witness's id.
pub const WITNESS: u64 = 3;

/// Data members 1 and 2 and witness 3, joined by a perfect network that
/// the test pumps by hand, on disks that persist at once.
pub struct Trio {
    pub members: Vec<Replica<MemLogStore, MemKv>>,
    /// Every message sent, in order.
    pub sent: Vec<Message>,
    pub now_ms: u64,
    /// Members that are down: they neither run nor receive.
    pub down: Vec<u64>,
    /// Which messages the network loses.
    pub lose: Option<fn(&Message) -> bool>,
}

impl Trio {
    pub fn new() -> Trio {
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
            down: Vec::new(),
            lose: None,
        }
    }

    /// A trio whose member 1 was elected and has settled: its first entry
    /// committed and known everywhere, three ticks on.
    pub fn with_leader() -> Trio {
        let mut c = Trio::new();
        c.pump();
        c.member(1).campaign().expect("a data member campaigns");
        for _ in 0..3 {
            c.tick();
        }
        c
    }

    pub fn member(&mut self, id: u64) -> &mut Replica<MemLogStore, MemKv> {
        &mut self.members[(id - 1) as usize]
    }

    /// Carries out every member's work and delivers every message until
    /// nothing moves.
    pub fn pump(&mut self) {
        let mut queue: VecDeque<Message> = VecDeque::new();
        for _ in 0..10_000 {
            let mut moved = false;
            for (i, r) in self.members.iter_mut().enumerate() {
                if self.down.contains(&(i as u64 + 1)) {
                    continue;
                }
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
                if self.down.contains(&m.to) || self.lose.is_some_and(|lose| lose(&m)) {
                    continue;
                }
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

    pub fn tick(&mut self) {
        self.now_ms += 100;
        let now_ms = self.now_ms;
        for (i, r) in self.members.iter_mut().enumerate() {
            if !self.down.contains(&(i as u64 + 1)) {
                r.tick(now_ms);
            }
        }
        self.pump();
    }
}
