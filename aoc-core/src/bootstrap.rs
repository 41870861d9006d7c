//! The start of a member whose store is blank (no configuration): a fresh
//! member, or one whose directory was wiped.
//!
//! A blank member never votes (it has no replica yet) and never
//! bootstraps on its own. It asks every configured member whether it holds
//! anything ([`crate::proto::BlankProbe`]), every `probe_every_ticks`:
//! - every other member answers blank, or "fresh" (bootstrapped, nothing
//!   written since): the cluster is new, and the member writes the same
//!   initial configuration as the others ([`Decision::Bootstrap`]). A fresh
//!   cluster thus starts with no operator step, and a member that starts
//!   late is waited for;
//! - a member holds data and lists this member as a voter: this member
//!   was wiped. Joining as a voter with an empty log could hand a stale
//!   member a quorum, so it refuses ([`Decision::Refuse`]) and names the
//!   replacement procedure;
//! - a member holds data without listing it: it joins ([`Decision::Join`]):
//!   it opens with no configuration and waits for the leader to add it as
//!   a learner and send it a snapshot (see `crate::MembershipChange`);
//! - some member has not answered: it waits, and says for whom.
//!
//! Sans-I/O like the replica: the driver feeds ticks and notices and sends
//! what comes out.

use std::collections::BTreeMap;

use crate::proto::{BlankAnswer, BlankProbe, Notice, Notice_oneof_body};

/// What a blank member does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Keep asking; the reason names whom it waits for.
    Wait {
        /// Why, for status.
        reason: String,
    },
    /// Write the initial configuration (the configured voters) and start.
    Bootstrap,
    /// A running cluster does not list this member: start with no
    /// configuration and wait to be added as a learner.
    Join {
        /// Why, for status.
        reason: String,
    },
    /// Do not start: the member was wiped.
    Refuse {
        /// Why, and what the operator should do.
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    blank: bool,
    fresh: bool,
    voters: Vec<u64>,
}

/// The blank-member handshake (see the module docs).
#[derive(Debug, Clone)]
pub struct Bootstrap {
    id: u64,
    voters: Vec<u64>,
    answers: BTreeMap<u64, Answer>,
    ticks: u64,
    probe_every_ticks: u64,
}

impl Bootstrap {
    /// A blank member `id` of the cluster whose voters are `voters`.
    pub fn new(id: u64, voters: &[u64], probe_every_ticks: u64) -> Self {
        let mut voters = voters.to_vec();
        voters.sort_unstable();
        voters.dedup();
        Bootstrap {
            id,
            voters,
            answers: BTreeMap::new(),
            ticks: 0,
            probe_every_ticks: probe_every_ticks.max(1),
        }
    }

    /// The configured voters.
    pub fn voters(&self) -> &[u64] {
        &self.voters
    }

    fn others(&self) -> impl Iterator<Item = u64> + '_ {
        self.voters.iter().copied().filter(move |v| *v != self.id)
    }

    /// One tick; returns the probes to send (every `probe_every_ticks`,
    /// starting with the first tick).
    pub fn tick(&mut self) -> Vec<Notice> {
        self.ticks += 1;
        if !(self.ticks - 1).is_multiple_of(self.probe_every_ticks) {
            return Vec::new();
        }
        self.others()
            .map(|to| {
                let mut n = Notice::new();
                n.from = self.id;
                n.to = to;
                n.set_blank_probe(BlankProbe::new());
                n
            })
            .collect()
    }

    /// Takes a notice; returns the answer to send, if any (a blank member
    /// answers other blank members' probes: "blank").
    pub fn on_notice(&mut self, notice: Notice) -> Option<Notice> {
        if notice.to != self.id || !self.voters.contains(&notice.from) {
            return None;
        }
        match notice.body {
            Some(Notice_oneof_body::blank_probe(_)) => {
                let mut answer = BlankAnswer::new();
                answer.blank = true;
                let mut n = Notice::new();
                n.from = self.id;
                n.to = notice.from;
                n.set_blank_answer(answer);
                Some(n)
            }
            Some(Notice_oneof_body::blank_answer(a)) => {
                self.answers.insert(
                    notice.from,
                    Answer {
                        blank: a.blank,
                        fresh: a.fresh,
                        voters: a.voters,
                    },
                );
                None
            }
            _ => None,
        }
    }

    /// What to do, given the answers so far.
    pub fn decision(&self) -> Decision {
        for (from, a) in &self.answers {
            if a.blank || a.fresh {
                continue;
            }
            if a.voters.contains(&self.id) {
                return Decision::Refuse {
                    reason: format!(
                        "this member's store is blank but member {from} holds data and lists it as \
                         a voter: it was wiped. Replace it (`aoc-node members replace`) instead \
                         of restarting it as it is"
                    ),
                };
            }
            return Decision::Join {
                reason: format!(
                    "blank; member {from} holds data: waiting to be added as a learner by the leader"
                ),
            };
        }
        let missing: Vec<u64> = self
            .others()
            .filter(|o| !self.answers.contains_key(o))
            .collect();
        if missing.is_empty() {
            Decision::Bootstrap
        } else {
            Decision::Wait {
                reason: format!(
                    "blank; waiting for members {missing:?} to answer before bootstrapping"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(from: u64, to: u64, blank: bool, fresh: bool, voters: &[u64]) -> Notice {
        let mut a = BlankAnswer::new();
        a.blank = blank;
        a.fresh = fresh;
        a.voters = voters.to_vec();
        let mut n = Notice::new();
        n.from = from;
        n.to = to;
        n.set_blank_answer(a);
        n
    }

    #[test]
    fn bootstraps_only_when_every_member_is_blank_or_fresh() {
        let mut b = Bootstrap::new(1, &[1, 2, 3], 5);
        assert_eq!(b.tick().len(), 2, "probes both others at once");
        assert!(b.tick().is_empty());
        assert!(matches!(b.decision(), Decision::Wait { .. }));
        b.on_notice(answer(2, 1, true, false, &[]));
        match b.decision() {
            Decision::Wait { reason } => assert!(reason.contains("[3]"), "{reason}"),
            d => panic!("{d:?}"),
        }
        b.on_notice(answer(3, 1, false, true, &[1, 2, 3]));
        assert_eq!(b.decision(), Decision::Bootstrap);
    }

    #[test]
    fn a_wiped_voter_refuses_and_a_new_member_waits() {
        let mut b = Bootstrap::new(1, &[1, 2, 3], 5);
        b.on_notice(answer(2, 1, true, false, &[]));
        b.on_notice(answer(3, 1, false, false, &[1, 2, 3]));
        assert!(
            matches!(b.decision(), Decision::Refuse { reason } if reason.contains("members replace"))
        );
        let mut n = Bootstrap::new(4, &[1, 2, 4], 5);
        n.on_notice(answer(1, 4, false, false, &[1, 2, 3]));
        assert!(matches!(n.decision(), Decision::Join { reason } if reason.contains("learner")));
    }

    #[test]
    fn a_standalone_member_bootstraps_at_once_and_answers_probes() {
        let b = Bootstrap::new(1, &[1], 5);
        assert_eq!(b.decision(), Decision::Bootstrap);
        let mut b = Bootstrap::new(1, &[1, 2, 3], 5);
        let mut probe = Notice::new();
        probe.from = 2;
        probe.to = 1;
        probe.set_blank_probe(BlankProbe::new());
        let a = b.on_notice(probe).expect("an answer");
        assert!(a.get_blank_answer().blank);
    }
}
