//! What this member's clients wait for: its proposals not yet applied, and
//! its linearizable reads, first waiting for raft's ReadIndex answer, then
//! for the state machine to reach the index it named.

use std::collections::{BTreeMap, BTreeSet};

use crate::Result;

/// Proposals and reads in flight on this member, by token.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Proposals of this member not yet applied.
    proposals: BTreeSet<u64>,
    /// Reads waiting for their ReadIndex answer: token -> tick issued.
    reads_waiting_index: BTreeMap<u64, u64>,
    /// Reads waiting for the state machine to reach their index:
    /// (index, token), in the order their answers came.
    reads_waiting_apply: Vec<(u64, u64)>,
}

impl Pending {
    /// A proposal of this member went to raft.
    pub(super) fn proposed(&mut self, token: u64) {
        self.proposals.insert(token);
    }

    /// An applied entry carries `token`: true when it was this member's
    /// pending proposal (it completes now, once).
    pub(super) fn applied(&mut self, token: u64) -> bool {
        self.proposals.remove(&token)
    }

    /// A read asked raft for its ReadIndex at `tick`.
    pub(super) fn read_asked(&mut self, token: u64, tick: u64) {
        self.reads_waiting_index.insert(token, tick);
    }

    /// A lease read: linearizable once the state machine reaches `commit`.
    pub(super) fn read_at(&mut self, token: u64, commit: u64) {
        self.reads_waiting_apply.push((commit, token));
    }

    /// raft answered read `token` with `index`; false for an unknown token.
    pub(super) fn read_answered(&mut self, token: u64, index: u64) -> bool {
        if self.reads_waiting_index.remove(&token).is_none() {
            return false;
        }
        self.reads_waiting_apply.push((index, token));
        true
    }

    /// The reads whose ReadIndex has waited `retry_ticks` by `tick`,
    /// stamped as asked again at `tick` (raft may have dropped the
    /// request: a leader change, a lost message).
    pub(super) fn reads_to_retry(&mut self, tick: u64, retry_ticks: u64) -> Vec<u64> {
        let due: Vec<u64> = self
            .reads_waiting_index
            .iter()
            .filter(|(_, issued)| tick - **issued >= retry_ticks)
            .map(|(t, _)| *t)
            .collect();
        for token in &due {
            self.reads_waiting_index.insert(*token, tick);
        }
        due
    }

    /// Whether a read can be answered with the state machine at `applied`.
    pub(super) fn reads_releasable(&self, applied: u64) -> bool {
        self.reads_waiting_apply.iter().any(|(i, _)| *i <= applied)
    }

    /// Answers every read the state machine at `applied` serves.
    pub(super) fn release_reads(&mut self, applied: u64, reads: &mut Vec<(u64, Result<()>)>) {
        self.reads_waiting_apply.retain(|&(index, token)| {
            if index <= applied {
                reads.push((token, Ok(())));
                false
            } else {
                true
            }
        });
    }

    /// This member stopped leading: every proposal and read in flight, in
    /// order (proposals, then reads waiting for an index, then reads
    /// waiting to be applied), to be refused.
    pub(super) fn take_all(&mut self) -> (Vec<u64>, Vec<u64>) {
        let proposals = std::mem::take(&mut self.proposals).into_iter().collect();
        let waiting_index = std::mem::take(&mut self.reads_waiting_index);
        let waiting_apply = std::mem::take(&mut self.reads_waiting_apply);
        let reads = waiting_index
            .into_keys()
            .chain(waiting_apply.into_iter().map(|(_, t)| t))
            .collect();
        (proposals, reads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_answered_once_its_index_is_applied() {
        let mut p = Pending::default();
        p.read_asked(7, 0);
        assert!(!p.read_answered(8, 5), "an unknown token is ignored");
        assert!(p.read_answered(7, 5));
        assert!(!p.read_answered(7, 5), "answered once");
        assert!(!p.reads_releasable(4));
        let mut reads = Vec::new();
        p.release_reads(4, &mut reads);
        assert!(reads.is_empty());
        p.release_reads(5, &mut reads);
        assert_eq!(reads.len(), 1);
        assert_eq!(reads[0].0, 7);
    }

    #[test]
    fn a_read_index_is_asked_again_after_the_retry_interval() {
        let mut p = Pending::default();
        p.read_asked(1, 0);
        p.read_asked(2, 3);
        assert!(p.reads_to_retry(4, 5).is_empty());
        assert_eq!(p.reads_to_retry(5, 5), vec![1]);
        assert!(p.reads_to_retry(9, 5).contains(&2));
        assert!(!p.reads_to_retry(9, 5).contains(&1), "restamped at 5");
    }

    #[test]
    fn a_leader_change_refuses_everything_in_flight_once() {
        let mut p = Pending::default();
        p.proposed(3);
        p.proposed(1);
        p.read_asked(9, 0);
        p.read_at(4, 10);
        let (proposals, reads) = p.take_all();
        assert_eq!(proposals, vec![1, 3]);
        assert_eq!(reads, vec![9, 4]);
        assert!(!p.applied(1), "a refused proposal does not complete again");
        assert_eq!(p.take_all(), (vec![], vec![]));
    }
}
