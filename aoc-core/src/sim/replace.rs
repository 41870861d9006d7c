//! The replacement scenario of a run (`RunOptions::replace`): at a time
//! drawn from the seed, a member (the witness, or a data member: the active
//! or the passive, drawn too) is lost for good: crashed and never
//! restarted. It is then replaced as an operator would, through the
//! leader, while the workload and the fault schedule go on:
//!
//! 1. remove the lost member;
//! 2. start a fresh member of the same role under a new id (blank: its
//!    handshake hears that the cluster holds data without listing it, and
//!    it opens to join, see `Cluster::add_member`);
//! 3. add it as a learner (it gets the leader's snapshot);
//! 4. promote it once it has caught up (refused as "not caught up" until
//!    then: retried).
//!
//! In half of the runs a second member (of a role drawn again) is lost
//! once the first replacement completed, if that leaves time in the faulty
//! phase: a replacement of a replacement, or of the other role with the
//! directory already holding the first one.
//!
//! Each change is proposed on the active (or the leader), and retried when
//! refused for a passing reason (no leader, another change in flight, a
//! learner behind) or when no answer came (a lost proposal). Before each
//! attempt the configuration the members applied says whether the change
//! already took effect (its answer may have been lost with its proposer).
//! A refusal a correct build never gives for these steps (the cluster
//! already has a witness, or two data members, ...) is a violation.

use rand::rngs::SmallRng;
use rand::Rng;

use super::check::Property;
use super::{Cluster, Outcome};
use crate::replica::membership_reasons::{ALREADY_VOTER, NOT_A_MEMBER};
use crate::{Error, Member, MemberRole, MembershipChange};

/// A change with no answer after this long is proposed again.
const ANSWER_TIMEOUT_US: u64 = 2_000_000;
/// Pause before trying again after a passing refusal.
const RETRY_US: u64 = 50_000;
/// Pause before asking again to promote a learner that has not caught up.
const CATCH_UP_RETRY_US: u64 = 200_000;

/// What a replacement did (simulated times in microseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaceReport {
    /// The member lost for good.
    pub lost: Option<u64>,
    /// Its role, which its replacement takes.
    pub role: Option<MemberRole>,
    /// The replacement's id.
    pub added: Option<u64>,
    /// When the member was lost.
    pub lost_at_us: Option<u64>,
    /// When the removal took effect.
    pub removed_at_us: Option<u64>,
    /// When the replacement became a learner.
    pub learner_at_us: Option<u64>,
    /// When the replacement became a voter: the replacement completed.
    pub promoted_at_us: Option<u64>,
    /// Promotions refused because the learner had not caught up yet.
    pub not_caught_up: u64,
    /// Changes proposed, retries included.
    pub attempts: u64,
    /// Changes refused for a reason a correct build never gives (the first
    /// is reported as a violation).
    pub unexpected_refusals: u64,
}

impl ReplaceReport {
    /// Whether the replacement is a voter.
    pub fn completed(&self) -> bool {
        self.promoted_at_us.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Lose,
    Remove,
    Start,
    AddLearner,
    Promote,
    Done,
}

/// The scenario's state (see the module docs).
#[derive(Debug)]
pub(crate) struct Replacement {
    lose_at_us: u64,
    role: MemberRole,
    /// A data member: the active (else the passive).
    lose_active: bool,
    /// A second loss once this replacement completes: its role, whom
    /// (as `lose_active`), and how long after.
    again: Option<(MemberRole, bool, u64)>,
    /// A second loss starts only before this time.
    again_before_us: u64,
    /// Replacements completed before the current one.
    finished: Vec<ReplaceReport>,
    step: Step,
    /// The change in flight: (token, when it was proposed).
    pending: Option<(u64, u64)>,
    next_try_us: u64,
    report: ReplaceReport,
}

impl Replacement {
    /// Draws when the member is lost (in the first half of a faulty phase
    /// of `duration_us`, leaving time to replace it under faults) and
    /// which one, and whether a second one is lost later.
    pub(crate) fn draw(rng: &mut SmallRng, duration_us: u64) -> Self {
        let lose_at_us = rng.gen_range(duration_us / 10..=duration_us / 2);
        let role = |rng: &mut SmallRng| {
            if rng.gen_bool(0.5) {
                MemberRole::Witness
            } else {
                MemberRole::Data
            }
        };
        let first = role(rng);
        let lose_active = rng.gen_bool(0.5);
        let again = rng.gen_bool(0.5);
        let second = (
            role(rng),
            rng.gen_bool(0.5),
            rng.gen_range(500_000..=2_000_000),
        );
        Replacement {
            lose_at_us,
            role: first,
            lose_active,
            again: again.then_some(second),
            again_before_us: duration_us * 7 / 10,
            finished: Vec::new(),
            step: Step::Lose,
            pending: None,
            next_try_us: 0,
            report: ReplaceReport::default(),
        }
    }

    /// Every replacement so far, in order.
    pub(crate) fn reports(&self) -> Vec<ReplaceReport> {
        let mut all = self.finished.clone();
        if self.report.lost.is_some() || all.is_empty() {
            all.push(self.report.clone());
        }
        all
    }

    /// Whether every replacement started is complete and no loss is to
    /// come.
    pub(crate) fn done(&self) -> bool {
        self.step == Step::Done
    }

    /// The step the scenario is at, for reports.
    pub(crate) fn describe(&self) -> String {
        format!("{:?} ({:?})", self.step, self.report)
    }

    /// Moves the scenario on; returns a violation report when a change was
    /// refused for a reason a correct build never gives.
    pub(crate) fn poll(&mut self, c: &mut Cluster) -> Option<String> {
        let now = c.now_us();
        match self.step {
            Step::Lose => {
                if now >= self.lose_at_us {
                    self.lose(c);
                }
                None
            }
            Step::Remove => {
                let lost = self.report.lost?;
                if !in_configuration(c, lost) {
                    self.advance(c, Step::Start);
                    return None;
                }
                self.propose(c, MembershipChange::Remove(lost))
            }
            Step::Start => {
                let id = self.report.added?;
                c.add_member(id, self.role, self.report.lost);
                self.step = Step::AddLearner;
                None
            }
            Step::AddLearner => {
                let id = self.report.added?;
                if in_configuration(c, id) {
                    self.advance(c, Step::Promote);
                    return None;
                }
                let member = Member {
                    id,
                    role: self.role,
                    ha_addr: format!("sim-{id}:7400"),
                };
                self.propose(c, MembershipChange::AddLearner(member))
            }
            Step::Promote => {
                // Done only on the leader's word: it answers a promotion
                // (or one asked again) once every voter holds it, so that
                // losing any member afterwards leaves voters that all run
                // the new configuration (`replica/confirm.rs`). A member
                // applying it is not enough.
                let id = self.report.added?;
                self.propose(c, MembershipChange::Promote(id))
            }
            Step::Done => None,
        }
    }

    /// Loses the member drawn, if it can be found now.
    fn lose(&mut self, c: &mut Cluster) {
        let victim = match self.role {
            MemberRole::Witness => c.witness(),
            MemberRole::Data => {
                let data = c.data_members();
                let active = c.active().filter(|a| data.contains(a));
                let other = data.iter().copied().find(|d| Some(*d) != active);
                if self.lose_active {
                    active.or(other)
                } else {
                    other.or(active)
                }
            }
        };
        let Some(victim) = victim else {
            return;
        };
        let new_id = c.member_ids().into_iter().max().unwrap_or(0) + 1;
        c.note(format!(
            "replacement: {} member {victim} lost for good; member {new_id} will replace it",
            self.role
        ));
        c.lose(victim);
        self.report.lost = Some(victim);
        self.report.role = Some(self.role);
        self.report.added = Some(new_id);
        self.report.lost_at_us = Some(c.now_us());
        self.step = Step::Remove;
    }

    /// The step before `next` took effect.
    fn advance(&mut self, c: &mut Cluster, next: Step) {
        let now = c.now_us();
        match next {
            Step::Start => self.report.removed_at_us = Some(now),
            Step::Promote => self.report.learner_at_us = Some(now),
            Step::Done => self.report.promoted_at_us = Some(now),
            _ => {}
        }
        c.note(format!("replacement: {:?} done", self.step));
        self.pending = None;
        self.step = next;
        if next != Step::Done {
            return;
        }
        if let Some((role, lose_active, after_us)) = self.again.take() {
            if now + after_us < self.again_before_us {
                self.finished.push(std::mem::take(&mut self.report));
                self.role = role;
                self.lose_active = lose_active;
                self.lose_at_us = now + after_us;
                self.next_try_us = 0;
                self.step = Step::Lose;
            }
        }
    }

    /// Proposes `change` (the current step's) unless one is in flight;
    /// handles the answer to the last one.
    fn propose(&mut self, c: &mut Cluster, change: MembershipChange) -> Option<String> {
        let now = c.now_us();
        if let Some((token, sent)) = self.pending {
            match c.outcome(token) {
                None if now < sent + ANSWER_TIMEOUT_US => return None,
                // No answer: the proposal was lost (or its proposer went
                // down); the configuration tells at the next poll whether
                // it took effect.
                None => self.pending = None,
                Some(Outcome::Proposal { result: Ok(_), .. }) => {
                    let next = match self.step {
                        Step::Remove => Step::Start,
                        Step::AddLearner => Step::Promote,
                        _ => Step::Done,
                    };
                    self.advance(c, next);
                    return None;
                }
                Some(Outcome::Proposal { result: Err(e), .. }) => {
                    let e = e.clone();
                    self.pending = None;
                    let step = self.step;
                    let report = self.refused(c, &change, &e);
                    if report.is_some() || self.step != step {
                        // A violation, or the refusal showed the change
                        // took effect: the next poll goes on.
                        return report;
                    }
                }
                Some(other) => {
                    let other = format!("{other:?}");
                    self.pending = None;
                    return Some(Property::Membership.report(format!(
                        "{change:?} answered with a non-proposal outcome {other}"
                    )));
                }
            }
        }
        if self.pending.is_some() || now < self.next_try_us {
            return None;
        }
        // No leader now: the next poll tries again.
        let target = c.active().or_else(|| c.leader())?;
        let token = c.change_membership(target, change);
        self.report.attempts += 1;
        self.pending = Some((token, now));
        None
    }

    /// Handles a refusal: when to try again, or a violation.
    fn refused(&mut self, c: &mut Cluster, change: &MembershipChange, e: &Error) -> Option<String> {
        let now = c.now_us();
        let Error::Membership { reason } = e else {
            // Not the leader, another change in flight, the member went
            // down: passing.
            self.next_try_us = now + RETRY_US;
            return None;
        };
        if reason.contains("not caught up") {
            self.report.not_caught_up += 1;
            self.next_try_us = now + CATCH_UP_RETRY_US;
            return None;
        }
        // The change already took effect on the leader (its answer was
        // lost, or the members' configuration lags the leader's).
        let done_already = match change {
            MembershipChange::Remove(_) => reason.contains(NOT_A_MEMBER),
            MembershipChange::AddLearner(_) | MembershipChange::Promote(_) => {
                reason.contains(ALREADY_VOTER)
            }
            // The scenario never shrinks.
            MembershipChange::Shrink => false,
        };
        if done_already {
            let next = match self.step {
                Step::Remove => Step::Start,
                Step::AddLearner => Step::Promote,
                _ => Step::Done,
            };
            self.advance(c, next);
            return None;
        }
        self.next_try_us = now + RETRY_US;
        c.note(format!("replacement: {change:?} refused: {reason}"));
        self.report.unexpected_refusals += 1;
        (self.report.unexpected_refusals == 1).then(|| {
            Property::Membership.report(format!("{change:?} refused at {now} us: {reason}"))
        })
    }
}

/// Whether `id` is a voter or a learner of the configuration.
fn in_configuration(c: &Cluster, id: u64) -> bool {
    let conf = c.configuration();
    conf.voters.contains(&id) || conf.learners.contains(&id)
}
