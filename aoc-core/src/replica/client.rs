//! The client side of the replica: proposals (commands, session
//! registrations) and linearizable reads, from the caller's token to the
//! completion; what waits is owned by `Pending`.

use super::{Completion, Ready, Replica};
use crate::payload::{encode_context, Payload};
use crate::state::StateMachine;
use crate::storage::LogStore;
use crate::Error;

impl<L: LogStore, S: StateMachine> Replica<L, S> {
    /// Proposes a command. The outcome arrives in [`Ready::completions`]
    /// under `token` once the entry is applied (or at once on refusal).
    /// `session` is (client id, sequence) for exactly-once writes.
    pub fn propose(&mut self, token: u64, command: Vec<u8>, session: Option<(u64, u64)>) {
        if let Some(e) = self.no_space_refusal(&command) {
            self.refuse(token, e);
            return;
        }
        let payload = Payload::Command {
            session,
            stamp_ms: self.now_ms,
            command,
        };
        self.propose_payload(token, payload);
    }

    /// Opens a client session. The completion carries the new client id
    /// (8 bytes, little-endian).
    pub fn register_client(&mut self, token: u64) {
        let payload = Payload::RegisterClient {
            stamp_ms: self.now_ms,
        };
        self.propose_payload(token, payload);
    }

    pub(super) fn propose_payload(&mut self, token: u64, payload: Payload) {
        let data = payload.encode();
        if data.len() > self.cfg.max_proposal_bytes {
            self.refuse(
                token,
                Error::TooLarge {
                    what: "proposal".into(),
                    size: data.len(),
                    limit: self.cfg.max_proposal_bytes,
                },
            );
            return;
        }
        if !self.is_leader() || self.is_witness() || self.suppressed() {
            let hint = self.active_hint();
            self.refuse(token, Error::NotLeader { leader_hint: hint });
            return;
        }
        if self.planned.switching() {
            self.refuse(
                token,
                Error::Busy {
                    reason: "a switchover is in progress; retry on the new active".into(),
                },
            );
            return;
        }
        match self.raw.propose(encode_context(self.cfg.id, token), data) {
            Ok(()) => {
                self.pending.proposed(token);
            }
            Err(e) => self.refuse(token, e.into()),
        }
        self.after_input();
    }

    pub(super) fn refuse(&mut self, token: u64, error: Error) {
        self.out.completions.push(Completion {
            token,
            index: 0,
            result: Err(error),
        });
    }

    /// Asks for a linearizable read (ReadIndex). The outcome arrives in
    /// [`Ready::reads`] under `token`; on `Ok`, read the state machine.
    pub fn read(&mut self, token: u64) {
        if !self.is_leader() || self.is_witness() {
            let hint = self.active_hint();
            self.out
                .reads
                .push((token, Err(Error::NotLeader { leader_hint: hint })));
            return;
        }
        self.pending.read_asked(token, self.ticks);
        self.raw.read_index(token.to_le_bytes().to_vec());
        self.after_input();
    }

    /// A lease read: served at once by the active inside its fenced lease
    /// (no round trip), once the state machine has applied everything
    /// committed; elsewhere [`Error::NotLeader`]. The outcome arrives in
    /// [`Ready::reads`] like a ReadIndex read's.
    pub fn read_lease(&mut self, token: u64) {
        if !self.active_now() {
            let hint = self.active_hint();
            self.out
                .reads
                .push((token, Err(Error::NotLeader { leader_hint: hint })));
            return;
        }
        let commit = self.raw.raft.raft_log.committed;
        self.pending.read_at(token, commit);
    }

    /// A leader that steps down fails what it was waiting for: the caller
    /// retries on the new leader (with the same session sequence, a write
    /// that did commit is not applied twice).
    pub(super) fn fail_pending(&mut self, leader: u64) {
        let hint = (leader != 0).then_some(leader);
        let (proposals, reads) = self.pending.take_all();
        for token in proposals {
            self.refuse(token, Error::NotLeader { leader_hint: hint });
        }
        for token in reads {
            self.out
                .reads
                .push((token, Err(Error::NotLeader { leader_hint: hint })));
        }
    }

    /// raft-rs drops ReadIndex requests silently on a leader that has not
    /// committed in its term: ask again until answered.
    pub(super) fn retry_reads(&mut self) {
        let retry_ticks = self.cfg.read_retry_ticks as u64;
        for token in self.pending.reads_to_retry(self.ticks, retry_ticks) {
            self.raw.read_index(token.to_le_bytes().to_vec());
        }
    }

    pub(super) fn release_reads(&mut self, out: &mut Ready) {
        self.pending
            .release_reads(self.sm.applied_index(), &mut out.reads);
    }

    pub(super) fn reads_releasable(&self) -> bool {
        self.pending.reads_releasable(self.sm.applied_index())
    }
}
