//! The persistence pipeline: the log writes handed to the driver, the
//! messages that wait for them, the commit-only hard state that rides on
//! the next write, and the counters that make compaction due.
//!
//! The replica hands a write out with each raft-rs ready that needs one;
//! the messages of that ready (votes, append acknowledgements) wait here
//! until the driver reports the write persisted, and leave in ready order.

use std::collections::VecDeque;

use raft::eraftpb::{Entry, HardState, Message};

use crate::storage::LogWrite;

/// Where a ready's messages wait for its write.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) number: u64,
    /// False for a ready that wrote nothing: it is released with the write
    /// before it (messages leave in ready order).
    pub(super) needs_write: bool,
    pub(super) messages: Vec<Message>,
    pub(super) hard_state_commit: Option<u64>,
    /// The configuration index the write makes durable, if it carries a
    /// configuration.
    pub(super) conf_index: Option<u64>,
}

/// What a persisted report released.
#[derive(Debug, Default)]
pub(super) struct Released {
    /// The highest ready number released (0: nothing).
    pub(super) number: u64,
    /// Messages that waited for the writes, in order.
    pub(super) messages: Vec<Message>,
    /// Configuration indexes now durable.
    pub(super) conf_indexes: Vec<u64>,
}

/// The writes in flight and what waits for them (see the module docs).
#[derive(Debug)]
pub(super) struct Writes {
    held: VecDeque<Held>,
    /// Commit index of the last durable hard state.
    persisted_commit: u64,
    /// Term and vote of the last hard state handed out for writing.
    written_term_vote: (u64, u64),
    /// A hard state that moved only the commit index, not written yet: it
    /// rides on the next write (see [`Writes::defer_commit_only`]).
    deferred: Option<HardState>,
    /// The tick at which the deferred hard state was first held back.
    deferred_since_tick: Option<u64>,
    /// The deferred hard state has waited a whole tick: write it alone.
    flush_due: bool,
    /// The number of the last raft-rs ready (a write of the deferred hard
    /// state alone reuses it).
    last_ready_number: u64,
    /// Since when this member's own log write has been pending.
    pending_since_tick: Option<u64>,
    /// Entries applied since the last compaction.
    applied_since_compact: u64,
    /// Entry bytes written to the log since the last compaction.
    bytes_since_compact: u64,
}

impl Writes {
    /// The pipeline of a member that starts with `commit` durable and
    /// `term_vote` written.
    pub(super) fn new(commit: u64, term_vote: (u64, u64)) -> Writes {
        Writes {
            held: VecDeque::new(),
            persisted_commit: commit,
            written_term_vote: term_vote,
            deferred: None,
            deferred_since_tick: None,
            flush_due: false,
            last_ready_number: 0,
            pending_since_tick: None,
            applied_since_compact: 0,
            bytes_since_compact: 0,
        }
    }

    /// The commit index of the last durable hard state (the compaction
    /// bound).
    pub(super) fn persisted_commit(&self) -> u64 {
        self.persisted_commit
    }

    /// Since when this member's own log write has been pending.
    pub(super) fn pending_since_tick(&self) -> Option<u64> {
        self.pending_since_tick
    }

    /// Whether nothing waits for a write.
    pub(super) fn idle(&self) -> bool {
        self.held.is_empty()
    }

    /// Whether the deferred hard state is due alone and can go now.
    pub(super) fn flush_ready(&self) -> bool {
        self.flush_due && self.held.is_empty()
    }

    /// A tick: a deferred hard state that waited two ticks is due alone.
    pub(super) fn on_tick(&mut self, tick: u64) {
        if self
            .deferred_since_tick
            .is_some_and(|since| tick >= since + 2)
        {
            self.flush_due = true;
        }
    }

    /// A raft-rs ready numbered `number` was taken.
    pub(super) fn on_ready(&mut self, number: u64) {
        self.last_ready_number = number;
    }

    /// Keeps a hard state that only moved the commit index out of the log
    /// until something else is written (entries, a term or a vote, a
    /// configuration, a snapshot): it then rides on that write.
    ///
    /// Why this is safe: the commit index is volatile in Raft. A member
    /// restarted with an older one learns the commit from the leader again;
    /// what it applied was committed, and at start the log view raises the
    /// stored commit to the applied index (`LogView::initial_state`). Term
    /// and vote, which elections rely on, are always written before any
    /// message that depends on them. Why it matters: under a steady load
    /// every entry's commit came as a ready of its own, one more synced
    /// write on each data member per write, which the next entry's append
    /// waited behind.
    ///
    /// The persisted commit (the compaction bound) advances only when the
    /// deferred commit is written; an idle member writes it alone after a
    /// whole tick without another write ([`Writes::flush`]), so the bound
    /// keeps up and a restart finds a recent commit.
    pub(super) fn defer_commit_only(&mut self, write: &mut LogWrite, tick: u64) {
        match write.hard_state.take() {
            Some(hs) => {
                let commit_only = (hs.term, hs.vote) == self.written_term_vote
                    && write.entries.is_empty()
                    && write.snapshot.is_none()
                    && write.conf_state.is_none();
                if commit_only {
                    self.deferred = Some(hs);
                    self.deferred_since_tick.get_or_insert(tick);
                } else {
                    // A newer hard state replaces the deferred one (raft-rs
                    // never moves the commit index back).
                    self.written_term_vote = (hs.term, hs.vote);
                    self.clear_deferred();
                    write.hard_state = Some(hs);
                }
            }
            None if !write.is_empty() => {
                write.hard_state = self.deferred.take();
                self.clear_deferred();
            }
            None => {}
        }
        debug_assert!(
            self.deferred.is_none() || write.hard_state.is_none(),
            "a deferred hard state is never written alongside a newer one"
        );
    }

    fn clear_deferred(&mut self) {
        self.deferred = None;
        self.deferred_since_tick = None;
        self.flush_due = false;
    }

    /// The write of the deferred hard state alone (see
    /// [`Writes::defer_commit_only`]), once it is due and nothing else is
    /// pending (`other_write`: the ready has a write of its own). The write
    /// reuses the last ready's number: raft-rs and the log view take a
    /// number reported twice as done, and with nothing pending before it,
    /// its completion releases only itself.
    pub(super) fn flush(&mut self, other_write: bool, tick: u64) -> Option<LogWrite> {
        if !self.flush_due || other_write || !self.held.is_empty() {
            return None;
        }
        let Some(hs) = self.deferred.take() else {
            self.clear_deferred();
            return None;
        };
        self.clear_deferred();
        let number = self.last_ready_number;
        self.hold(
            Held {
                number,
                needs_write: true,
                messages: Vec::new(),
                hard_state_commit: Some(hs.commit),
                conf_index: None,
            },
            tick,
        );
        Some(LogWrite {
            number,
            hard_state: Some(hs),
            ..Default::default()
        })
    }

    /// Holds a ready's messages until its write (or, for a ready without
    /// one, the writes before it) is persisted.
    pub(super) fn hold(&mut self, held: Held, tick: u64) {
        if held.needs_write && self.pending_since_tick.is_none() {
            self.pending_since_tick = Some(tick);
        }
        self.held.push_back(held);
    }

    /// Every write up to `number` is durable: releases what waited for it.
    /// `more_pending`: whether the store still has writes pending after
    /// the released ones.
    pub(super) fn release(
        &mut self,
        number: u64,
        more_pending: impl FnOnce(u64) -> bool,
        tick: u64,
    ) -> Released {
        let mut out = Released::default();
        while let Some(h) = self.held.front() {
            if h.needs_write && h.number > number {
                break;
            }
            let Some(h) = self.held.pop_front() else {
                break;
            };
            out.number = out.number.max(h.number);
            if let Some(c) = h.hard_state_commit {
                self.persisted_commit = self.persisted_commit.max(c);
            }
            out.conf_indexes.extend(h.conf_index);
            out.messages.extend(h.messages);
        }
        if out.number > 0 {
            self.pending_since_tick = more_pending(out.number).then_some(tick);
        }
        out
    }

    /// `entries` entries were applied.
    pub(super) fn on_applied(&mut self, entries: u64) {
        self.applied_since_compact += entries;
    }

    /// A write with `bytes` of entry data was handed out.
    pub(super) fn on_written(&mut self, bytes: u64) {
        self.bytes_since_compact += bytes;
    }

    /// Whether enough was applied or written since the last compaction.
    pub(super) fn compaction_due(&self, every_entries: u64, log_bytes: u64) -> bool {
        self.applied_since_compact >= every_entries || self.bytes_since_compact >= log_bytes
    }

    /// A compaction round starts: the counters start again.
    pub(super) fn on_compaction(&mut self) {
        self.applied_since_compact = 0;
        self.bytes_since_compact = 0;
    }
}

/// The entry bytes this member wrote, for the passive's lag in bytes, and
/// the log store's size.
#[derive(Debug, Default)]
pub(super) struct WrittenBytes {
    /// (index, cumulative entry bytes), oldest first.
    by_index: VecDeque<(u64, u64)>,
    /// The log store's size, refreshed every election timeout (asking a
    /// store can cost system calls; status is read often).
    log_bytes: u64,
}

impl WrittenBytes {
    /// Records written `entries`; forgets what the passive holds (its
    /// persisted index is `passive_matched`).
    pub(super) fn record(&mut self, entries: &[Entry], passive_matched: u64) {
        if let Some(first) = entries.first() {
            while self.by_index.back().is_some_and(|(i, _)| *i >= first.index) {
                self.by_index.pop_back();
            }
        }
        let mut total = self.by_index.back().map(|(_, b)| *b).unwrap_or(0);
        for e in entries {
            total += (e.data.len() + e.context.len()) as u64;
            self.by_index.push_back((e.index, total));
        }
        while self.by_index.len() > 100_000
            || self
                .by_index
                .get(1)
                .is_some_and(|(i, _)| *i <= passive_matched)
        {
            self.by_index.pop_front();
        }
    }

    /// Entry bytes written after `index`.
    pub(super) fn after(&self, index: u64) -> u64 {
        let last = self.by_index.back().map(|(_, b)| *b).unwrap_or(0);
        let at = self
            .by_index
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map(|(_, b)| *b)
            .unwrap_or_else(|| self.by_index.front().map(|(_, b)| *b).unwrap_or(0));
        last.saturating_sub(at)
    }

    /// The log store's size as last measured.
    pub(super) fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    /// The log store measured `bytes`.
    pub(super) fn set_log_bytes(&mut self, bytes: u64) {
        self.log_bytes = bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    fn entry(index: u64) -> Entry {
        Entry {
            index,
            term: 1,
            data: vec![0; 10].into(),
            ..Default::default()
        }
    }

    fn held(number: u64, needs_write: bool, commit: Option<u64>) -> Held {
        Held {
            number,
            needs_write,
            messages: vec![Message {
                index: number,
                ..Default::default()
            }],
            hard_state_commit: commit,
            conf_index: None,
        }
    }

    #[test]
    fn a_commit_only_hard_state_rides_on_the_next_write() {
        let mut w = Writes::new(0, (1, 1));
        let mut alone = LogWrite {
            number: 1,
            hard_state: Some(hs(1, 1, 5)),
            ..Default::default()
        };
        w.defer_commit_only(&mut alone, 0);
        assert!(
            alone.hard_state.is_none(),
            "a commit move is not written alone"
        );
        let mut next = LogWrite {
            number: 2,
            entries: vec![entry(6)],
            ..Default::default()
        };
        w.defer_commit_only(&mut next, 0);
        assert_eq!(next.hard_state, Some(hs(1, 1, 5)));
        assert_eq!(w.flush(false, 5), None, "nothing is left to flush");
    }

    #[test]
    fn a_new_term_or_vote_is_written_at_once() {
        let mut w = Writes::new(0, (1, 1));
        let mut vote = LogWrite {
            number: 1,
            hard_state: Some(hs(2, 3, 5)),
            ..Default::default()
        };
        w.defer_commit_only(&mut vote, 0);
        assert_eq!(vote.hard_state, Some(hs(2, 3, 5)));
    }

    #[test]
    fn a_deferred_commit_is_flushed_alone_two_ticks_later_and_then_bounds_compaction() {
        let mut w = Writes::new(0, (1, 1));
        w.on_ready(7);
        let mut alone = LogWrite {
            number: 7,
            hard_state: Some(hs(1, 1, 9)),
            ..Default::default()
        };
        w.defer_commit_only(&mut alone, 10);
        w.on_tick(11);
        assert!(!w.flush_ready());
        w.on_tick(12);
        assert!(w.flush_ready());
        assert_eq!(w.flush(true, 12), None, "another write goes first");
        let flushed = w.flush(false, 12).expect("the deferred hard state");
        assert_eq!((flushed.number, flushed.hard_state), (7, Some(hs(1, 1, 9))));
        assert_eq!(w.pending_since_tick(), Some(12));
        assert_eq!(
            w.persisted_commit(),
            0,
            "not durable before it is persisted"
        );
        let released = w.release(7, |_| false, 13);
        assert_eq!(released.number, 7);
        assert_eq!(w.persisted_commit(), 9);
        assert_eq!(w.pending_since_tick(), None);
    }

    #[test]
    fn messages_leave_in_ready_order_once_their_writes_are_persisted() {
        let mut w = Writes::new(0, (1, 1));
        w.hold(held(1, true, Some(3)), 0);
        w.hold(held(2, false, None), 0);
        w.hold(held(3, true, None), 1);
        assert_eq!(w.pending_since_tick(), Some(0));
        let none = w.release(0, |_| true, 2);
        assert_eq!(none.number, 0);
        assert!(none.messages.is_empty());
        let first = w.release(1, |_| true, 2);
        let order: Vec<u64> = first.messages.iter().map(|m| m.index).collect();
        assert_eq!(
            order,
            vec![1, 2],
            "a ready without a write leaves with the write before it"
        );
        assert_eq!(w.persisted_commit(), 3);
        assert_eq!(w.pending_since_tick(), Some(2), "write 3 is still pending");
        let rest = w.release(3, |_| false, 4);
        assert_eq!(rest.messages.len(), 1);
        assert!(w.idle());
        assert_eq!(w.pending_since_tick(), None);
    }

    #[test]
    fn the_passive_lag_in_bytes_counts_what_it_lacks() {
        let mut b = WrittenBytes::default();
        b.record(&[entry(1), entry(2), entry(3)], 0);
        assert_eq!(b.after(1), 20);
        assert_eq!(b.after(3), 0);
        // A rewritten tail replaces what it overwrote.
        b.record(&[entry(3), entry(4)], 2);
        assert_eq!(b.after(2), 20);
    }
}
