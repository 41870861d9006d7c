//! Membership changes on the replica: proposing one (checked by
//! `membership::check`), applying it (raft-rs's configuration, the member
//! directory, the stored metadata), answering it once every voter holds
//! it (`confirm`), and the snapshot a new learner starts from.

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
    Entry, EntryType,
};
use tracing::{debug, info};

use super::membership::{self, MemberRole, MembershipChange};
use super::{Completion, Event, Replica};
use crate::state::StateMachine;
use crate::storage::LogStore;
use crate::{Error, Result};

impl<L: LogStore, S: StateMachine> Replica<L, S> {
    /// A learner that holds nothing (matched 0) gets a snapshot first, not
    /// the log from index 1: the bootstrap configuration is in no entry, so
    /// a member built from entries alone would not know the first voters.
    /// (A joining member also drops entries until it has a configuration.)
    pub(super) fn snapshot_for_new_learners(&mut self) {
        if !self.is_leader() || self.is_witness() {
            return;
        }
        let applied = self.raw.store().applied;
        let learners: Vec<u64> = self
            .raw
            .raft
            .prs()
            .conf()
            .learners()
            .iter()
            .copied()
            .collect();
        for id in learners {
            if let Some(pr) = self.raw.raft.mut_prs().get_mut(id) {
                if pr.matched == 0
                    && pr.state == raft::ProgressState::Probe
                    && pr.pending_request_snapshot == raft::INVALID_INDEX
                    && applied > 0
                {
                    debug!(
                        member = self.cfg.id,
                        learner = id,
                        applied,
                        "snapshot for a new learner"
                    );
                    pr.pending_request_snapshot = applied;
                }
            }
        }
    }

    /// Why the applied configuration is not yet held by every voter (a
    /// joint configuration not left yet, or voters that have not reported
    /// it durable), on the leader; `None` once it is.
    pub(super) fn unconfirmed(&self) -> Option<String> {
        let cs = self.raw.raft.prs().conf().to_conf_state();
        if !cs.voters_outgoing.is_empty() {
            return Some("the joint configuration is not left yet".into());
        }
        let missing = self
            .confirm
            .missing(self.cfg.id, &cs.voters, self.meta.conf_index);
        (!missing.is_empty()).then(|| {
            format!(
                "members {missing:?} do not hold the configuration of index {} yet",
                self.meta.conf_index
            )
        })
    }

    /// Answers this leader's applied membership changes once every voter
    /// holds the configuration (see `confirm`).
    pub(super) fn release_confirmed_changes(&mut self) {
        if !self.confirm.holding() || !self.is_leader() || self.unconfirmed().is_some() {
            return;
        }
        let done = self.confirm.release();
        self.out.completions.extend(done);
    }

    pub(super) fn apply_conf_change(&mut self, e: &Entry) -> Result<ConfState> {
        let cs = if e.get_entry_type() == EntryType::EntryConfChange {
            let cc = ConfChange::parse_from_bytes(&e.data)
                .map_err(|err| Error::decode("conf change", err))?;
            let cs = self.raw.apply_conf_change(&cc)?;
            // The directory follows the change: an added member's record
            // rides in the context; a removed member's goes.
            match cc.get_change_type() {
                ConfChangeType::AddLearnerNode | ConfChangeType::AddNode => {
                    if let Ok((_, _, Some(m))) = membership::decode_context(&e.context) {
                        self.directory.retain(|d| d.id != m.id);
                        self.directory.push(m);
                        self.directory.sort_by_key(|d| d.id);
                    }
                }
                ConfChangeType::RemoveNode => self.directory.retain(|d| d.id != cc.node_id),
            }
            cs
        } else {
            let cc = ConfChangeV2::parse_from_bytes(&e.data)
                .map_err(|err| Error::decode("conf change", err))?;
            self.raw.apply_conf_change(&cc)?
        };
        let members: Vec<u64> = cs.voters.iter().chain(&cs.learners).copied().collect();
        self.directory.retain(|d| members.contains(&d.id));
        let in_either_half: Vec<u64> = members
            .iter()
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners_next)
            .copied()
            .collect();
        self.ha.lost.retain_members(&in_either_half);
        // A removed member's alarm goes with it (nobody would clear it).
        // Written with the conf state, in the same log write.
        let record = self.meta.change();
        record.alarms.retain(|a| in_either_half.contains(&a.member));
        record.members = self.directory.iter().map(membership::to_record).collect();
        record.conf_index = e.index;
        self.ha.witness = self.witness_id();
        self.raw.mut_store().header_only_to = self.ha.witness;
        info!(
            member = self.cfg.id,
            index = e.index,
            voters = ?cs.voters,
            learners = ?cs.learners,
            witness = ?self.ha.witness,
            "membership changed"
        );
        // Both halves of a joint configuration: every member stays reachable
        // until the change is left.
        let mut voters: Vec<u64> = cs
            .voters
            .iter()
            .chain(&cs.voters_outgoing)
            .copied()
            .collect();
        voters.sort_unstable();
        voters.dedup();
        let mut learners: Vec<u64> = cs
            .learners
            .iter()
            .chain(&cs.learners_next)
            .copied()
            .collect();
        learners.sort_unstable();
        learners.dedup();
        self.out.events.push(Event::MembershipChanged {
            voters,
            learners,
            members: self.directory.clone(),
        });
        self.ha.apply_policy(&mut self.raw);
        Ok(cs)
    }

    /// The witness: the directory's, else the configured one.
    pub(super) fn witness_id(&self) -> Option<u64> {
        self.directory
            .iter()
            .find(|m| m.role == MemberRole::Witness)
            .map(|m| m.id)
            .or(self.cfg.witness)
    }

    /// Proposes a membership change (see [`MembershipChange`]); it
    /// completes with token `token` once applied, or is refused at once
    /// (not the leader, or the change breaks a rule: the error says which).
    /// raft-rs takes one change at a time: a second one while the first is
    /// not applied is refused with [`Error::Busy`].
    pub fn change_membership(&mut self, token: u64, change: MembershipChange) {
        let result = self.try_change_membership(token, &change);
        if let Err(e) = result {
            info!(member = self.cfg.id, ?change, error = %e, "membership change refused");
            self.out.completions.push(Completion {
                token,
                index: 0,
                result: Err(e),
            });
        }
        self.after_input();
    }

    pub(super) fn try_change_membership(
        &mut self,
        token: u64,
        change: &MembershipChange,
    ) -> Result<()> {
        if !self.is_leader() || self.is_witness() {
            return Err(Error::NotLeader {
                leader_hint: self.leader(),
            });
        }
        // Before the rules: they read the applied configuration, which a
        // change in flight (this leader's, or one in its log from before
        // its election) is about to replace; judged against it, a change
        // that will pass would be refused, for a reason the pending
        // change removes (a replacement witness refused for the witness
        // being removed).
        if self.raw.raft.pending_conf_index > self.raw.raft.raft_log.applied {
            return Err(Error::Busy {
                reason: "another membership change is not applied yet; try again".into(),
            });
        }
        let steps = self.check_change(change)?;
        self.propose_steps(token, change, &steps)?;
        info!(member = self.cfg.id, ?change, "membership change proposed");
        self.pending.proposed(token);
        Ok(())
    }

    /// The steps `change` takes from the applied configuration, or why it
    /// is refused. A change already done answers Busy until every voter
    /// holds it.
    fn check_change(&self, change: &MembershipChange) -> Result<Vec<membership::Step>> {
        let conf = self.raw.raft.prs().conf();
        let mut voters: Vec<u64> = conf.voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<u64> = conf.learners().iter().copied().collect();
        learners.sort_unstable();
        let prs = self.raw.raft.prs();
        let matched = |id: u64| prs.get(id).map_or(0, |p| p.matched);
        let checked = membership::check(
            change,
            &membership::ConfView {
                leader: self.cfg.id,
                voters: &voters,
                learners: &learners,
                witness: self.ha.witness,
                last_index: self.raw.raft.raft_log.last_index(),
                matched: &matched,
            },
        );
        match checked {
            // "Already done": a caller takes it as done, which it is only
            // once every voter holds the configuration.
            Err(Error::Membership { reason }) if membership::reasons::is_done(&reason) => {
                Err(match self.unconfirmed() {
                    Some(why) => Error::Busy {
                        reason: format!("{reason}, but {why}; try again"),
                    },
                    None => Error::Membership { reason },
                })
            }
            other => other,
        }
    }

    /// Proposes `steps`: one change alone, several voters through joint
    /// consensus.
    fn propose_steps(
        &mut self,
        token: u64,
        change: &MembershipChange,
        steps: &[membership::Step],
    ) -> Result<()> {
        let single = |step: &membership::Step| {
            let mut cc = ConfChangeSingle::default();
            let (kind, id) = match *step {
                membership::Step::AddLearner(id) => (ConfChangeType::AddLearnerNode, id),
                membership::Step::AddVoter(id) => (ConfChangeType::AddNode, id),
                membership::Step::Remove(id) => (ConfChangeType::RemoveNode, id),
            };
            cc.set_change_type(kind);
            cc.node_id = id;
            cc
        };
        let ctx = membership::encode_context(self.cfg.id, token, change);
        let before = self.raw.raft.raft_log.last_index();
        let proposed = match steps {
            [one] => {
                let s = single(one);
                let mut cc = ConfChange::default();
                cc.set_change_type(s.get_change_type());
                cc.node_id = s.node_id;
                self.raw.propose_conf_change(ctx, cc)
            }
            // Several voters at once: joint consensus, left as soon as it
            // is applied (raft-rs proposes the leave itself).
            many => {
                let mut cc = ConfChangeV2::default();
                cc.set_transition(ConfChangeTransition::Auto);
                cc.set_changes(many.iter().map(single).collect::<Vec<_>>().into());
                self.raw.propose_conf_change(ctx, cc)
            }
        };
        proposed.map_err(|e| Error::Raft(format!("membership change: {e}")))?;
        if self.raw.raft.raft_log.last_index() == before {
            return Err(Error::Busy {
                reason: "raft dropped the membership change (a leader transfer is in progress?); try again"
                    .into(),
            });
        }
        Ok(())
    }
}
