//! Applying committed entries: each entry is decided against the client
//! table (exactly-once), the commands go to the state machine in one
//! atomic batch with the session changes, and this member's proposals
//! complete with their responses.

use std::collections::{BTreeMap, BTreeSet};

use raft::eraftpb::{ConfState, Entry, EntryType};

use super::membership;
use super::sessions::Decision;
use super::{ProposalResult, Ready, Replica};
use crate::payload::{decode_context, Payload};
use crate::state::{ApplyBatch, ApplyCommand, Session, SessionStamp, StateMachine};
use crate::storage::LogStore;
use crate::{Completion, Error, Result};

/// What one committed entry comes to.
enum Step {
    /// A command for the state machine.
    Apply { session: Option<SessionStamp> },
    /// A retry of a write applied earlier in this same batch: its
    /// response is known only after the batch is applied.
    DuplicateInBatch(u64),
    /// Decided without the state machine.
    Done(ProposalResult),
    /// Nothing to apply or answer.
    Nothing,
}

/// The entries of one batch, decided.
#[derive(Default)]
struct Decided {
    /// (entry, step, command bytes).
    entries: Vec<(Entry, Step, Vec<u8>)>,
    /// Sessions the batch opens.
    new_sessions: Vec<Session>,
    /// Sessions the batch expires.
    expired_sessions: Vec<u64>,
    /// The conf state after a membership change the batch applies.
    conf_changed: Option<ConfState>,
    /// Clients with a write applied in this batch.
    applied_in_batch: BTreeSet<u64>,
}

impl<L: LogStore, S: StateMachine> Replica<L, S> {
    /// Applies committed entries to the state machine in one atomic batch.
    /// Returns the new conf state if a membership change was applied.
    pub(super) fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
        out: &mut Ready,
    ) -> Result<Option<ConfState>> {
        let Some(last) = entries.last() else {
            return Ok(None);
        };
        let (last_index, last_term) = (last.index, last.term);
        let sm_applied = self.sm.applied_index();
        let mut decided = Decided::default();
        for e in entries {
            self.decide_entry(e, sm_applied, &mut decided)?;
        }
        let conf_changed = decided.conf_changed.take();
        let responses = self.apply_batch(&mut decided, last_index, sm_applied)?;
        self.complete(decided.entries, responses, out);
        self.writes
            .on_applied(last_index.saturating_sub(sm_applied));
        let view = self.raw.mut_store();
        if last_index > view.applied {
            view.applied = last_index;
            view.applied_term = last_term;
        }
        if let Some(cs) = &conf_changed {
            view.applied_conf = cs.clone();
        }
        Ok(conf_changed)
    }

    /// Pass 1: decides entry `e` against the client table.
    fn decide_entry(&mut self, e: Entry, sm_applied: u64, d: &mut Decided) -> Result<()> {
        let conf = matches!(
            e.get_entry_type(),
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2
        );
        if conf && e.index > self.meta.conf_index {
            // Applied even when the state machine has the index: the
            // stored conf state lacks it (see `open`).
            d.conf_changed = Some(self.apply_conf_change(&e)?);
            d.entries.push((e, Step::Done(Ok(Vec::new())), Vec::new()));
            return Ok(());
        }
        if conf || e.index <= sm_applied {
            // Already in the state, or in the stored conf state (a
            // restart replays from the log).
            return Ok(());
        }
        if self.sm.is_witness() {
            // The witness runs no state machine: it only advances its
            // applied index past commands, and applies the replicated
            // settings.
            self.apply_if_setting(&e);
            d.entries.push((e, Step::Nothing, Vec::new()));
            return Ok(());
        }
        let (step, command) = match Payload::decode(&e.data) {
            Err(err) => (Step::Done(Err(err)), Vec::new()),
            Ok(Payload::Noop) => (Step::Nothing, Vec::new()),
            Ok(p @ (Payload::Maintenance { .. } | Payload::Alarm { .. })) => {
                self.apply_setting(e.index, p);
                (Step::Done(Ok(Vec::new())), Vec::new())
            }
            Ok(Payload::RegisterClient { stamp_ms }) => {
                d.expired_sessions.extend(self.sessions.expire(stamp_ms));
                d.expired_sessions
                    .extend(self.sessions.register(e.index, stamp_ms));
                d.new_sessions.push(Session {
                    client_id: e.index,
                    last_sequence: 0,
                    last_response: Vec::new(),
                    last_active_ms: stamp_ms,
                });
                (Step::Done(Ok(e.index.to_le_bytes().to_vec())), Vec::new())
            }
            Ok(Payload::Command {
                session,
                stamp_ms,
                command,
            }) => {
                d.expired_sessions.extend(self.sessions.expire(stamp_ms));
                match session {
                    None => (Step::Apply { session: None }, command),
                    Some((client, seq)) => {
                        let step = self.decide_session(client, seq, stamp_ms, d);
                        let applies = matches!(step, Step::Apply { .. });
                        (step, if applies { command } else { Vec::new() })
                    }
                }
            }
        };
        d.entries.push((e, step, command));
        Ok(())
    }

    /// Exactly-once: whether `(client, seq)` applies, repeats an answer
    /// or is refused.
    fn decide_session(&mut self, client: u64, seq: u64, stamp_ms: u64, d: &mut Decided) -> Step {
        match self.sessions.decide(client, seq) {
            Decision::Apply => {
                // Recorded now so that a duplicate later in this batch is
                // caught; the response is filled after apply.
                self.sessions.record(client, seq, Vec::new(), stamp_ms);
                d.applied_in_batch.insert(client);
                Step::Apply {
                    session: Some(SessionStamp {
                        client_id: client,
                        sequence: seq,
                        stamp_ms,
                    }),
                }
            }
            Decision::Duplicate(_) if d.applied_in_batch.contains(&client) => {
                Step::DuplicateInBatch(client)
            }
            Decision::Duplicate(resp) => Step::Done(Ok(resp)),
            Decision::Refuse(err) => Step::Done(Err(err)),
        }
    }

    /// Pass 2: the commands and session changes in one atomic batch;
    /// returns one response per command.
    fn apply_batch(
        &mut self,
        d: &mut Decided,
        last_index: u64,
        sm_applied: u64,
    ) -> Result<Vec<Vec<u8>>> {
        let mut batch = ApplyBatch {
            applied_index: last_index,
            commands: Vec::new(),
            new_sessions: std::mem::take(&mut d.new_sessions),
            expired_sessions: std::mem::take(&mut d.expired_sessions),
        };
        for (e, step, command) in &d.entries {
            if let Step::Apply { session } = step {
                batch.commands.push(ApplyCommand {
                    index: e.index,
                    command,
                    session: *session,
                });
            }
        }
        let responses = if last_index > sm_applied {
            self.sm.apply(&batch)?
        } else {
            Vec::new()
        };
        if responses.len() != batch.commands.len() {
            return Err(Error::storage(
                "state machine",
                format!(
                    "apply returned {} responses for {} commands",
                    responses.len(),
                    batch.commands.len()
                ),
            ));
        }
        debug_assert!(self.sm.applied_index() >= last_index || last_index <= sm_applied);
        Ok(responses)
    }

    /// Pass 3: records the responses in the client table and completes
    /// this member's proposals.
    fn complete(
        &mut self,
        entries: Vec<(Entry, Step, Vec<u8>)>,
        responses: Vec<Vec<u8>>,
        out: &mut Ready,
    ) {
        let mut responses = responses.into_iter();
        let mut last_of_client: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for (e, step, _) in entries {
            let result = match step {
                Step::Apply { session } => {
                    let resp = responses.next().unwrap_or_default();
                    if let Some(s) = session {
                        self.sessions
                            .record(s.client_id, s.sequence, resp.clone(), s.stamp_ms);
                        last_of_client.insert(s.client_id, resp.clone());
                    }
                    Ok(resp)
                }
                Step::DuplicateInBatch(client) => {
                    Ok(last_of_client.get(&client).cloned().unwrap_or_default())
                }
                Step::Done(r) => r,
                Step::Nothing => continue,
            };
            let Some((member, token)) = proposal_of(&e) else {
                continue;
            };
            if member != self.cfg.id || !self.pending.applied(token) {
                continue;
            }
            let c = Completion {
                token,
                index: e.index,
                result,
            };
            if e.get_entry_type() == EntryType::EntryNormal || c.result.is_err() {
                out.completions.push(c);
            } else {
                // A membership change is done once every voter holds it
                // (`confirm`).
                self.confirm.hold(c);
            }
        }
    }
}

/// The proposal an applied entry completes: (proposing member, token).
fn proposal_of(e: &Entry) -> Option<(u64, u64)> {
    match e.get_entry_type() {
        EntryType::EntryNormal => decode_context(&e.context),
        _ => membership::decode_context(&e.context)
            .ok()
            .map(|(member, token, _)| (member, token)),
    }
}
