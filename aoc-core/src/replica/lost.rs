//! Members known to have lost synced state they had acknowledged, as the
//! leader learns it: a blank probe from a member that had acknowledged
//! entries to it (wiped), or a member's `LostData` notice (its disk was
//! rolled back). While a member is marked, the leader counts none of its
//! acknowledgements and drops its raft messages (`Ha::member_lost`).
//!
//! The mark lasts while the evidence keeps coming, and a quiet period
//! after it: a wiped member probes every tick for as long as it stays
//! blank, and a rolled-back one reports at every heartbeat until the
//! leader has voided what it held. A probe can also be stale: a member
//! that joined probed while blank, and a probe delayed past its first
//! acknowledgement looks the same as a wipe. Such a member sends no
//! further evidence, so its mark lifts after the quiet period, by which
//! time no message it sent before any loss is still in flight, and its
//! acknowledgements count again from the next it sends.

use std::collections::BTreeMap;

/// One marked member.
#[derive(Debug, Clone)]
struct Mark {
    /// How this member knows.
    why: String,
    /// The tick of the latest evidence.
    last_tick: u64,
}

/// The marked members (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct LostMembers {
    marks: BTreeMap<u64, Mark>,
}

impl LostMembers {
    /// Evidence that `id` lost synced state, at `tick`; true when it was
    /// not marked before.
    pub(crate) fn note(&mut self, id: u64, why: String, tick: u64) -> bool {
        match self.marks.get_mut(&id) {
            Some(m) => {
                m.last_tick = m.last_tick.max(tick);
                false
            }
            None => {
                self.marks.insert(
                    id,
                    Mark {
                        why,
                        last_tick: tick,
                    },
                );
                true
            }
        }
    }

    /// Whether `id` is marked.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.marks.contains_key(&id)
    }

    /// The marked members.
    pub(crate) fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.marks.keys().copied()
    }

    /// Lifts the marks whose last evidence is `quiet_ticks` old at `tick`;
    /// returns the members lifted.
    pub(crate) fn expire(&mut self, tick: u64, quiet_ticks: u64) -> Vec<u64> {
        let gone: Vec<u64> = self
            .marks
            .iter()
            .filter(|(_, m)| tick.saturating_sub(m.last_tick) >= quiet_ticks)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.marks.remove(id);
        }
        gone
    }

    /// Keeps only the marks of `members` (a membership change removed
    /// the others; the same id may come back blank).
    pub(crate) fn retain_members(&mut self, members: &[u64]) {
        self.marks.retain(|id, _| members.contains(id));
    }

    /// What status says, if any member is marked (`witness`: the
    /// configuration's witness).
    pub(crate) fn note_for_status(&self, witness: Option<u64>) -> Option<String> {
        let notes: Vec<String> = self
            .marks
            .iter()
            .map(|(id, m)| {
                if Some(*id) == witness {
                    format!(
                        "the witness lost its data ({}): it counts for no write, so writes \
                         wait for the passive; replace it (members replace)",
                        m.why
                    )
                } else {
                    format!(
                        "member {id} lost its data ({}): it counts for no write; replace it \
                         (members replace)",
                        m.why
                    )
                }
            })
            .collect();
        (!notes.is_empty()).then(|| notes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_lasts_while_evidence_comes_and_lifts_after_a_quiet_period() {
        let mut l = LostMembers::default();
        assert!(l.note(3, "it probes as a blank member".into(), 10));
        assert!(!l.note(3, "it probes as a blank member".into(), 15));
        assert!(
            l.expire(34, 20).is_empty(),
            "evidence at 15: marked until 35"
        );
        assert_eq!(l.expire(35, 20), vec![3]);
        assert!(!l.contains(3));
    }

    #[test]
    fn a_removed_member_is_forgotten() {
        let mut l = LostMembers::default();
        l.note(3, "x".into(), 1);
        l.note(2, "y".into(), 1);
        l.retain_members(&[1, 2]);
        assert_eq!(l.ids().collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn status_names_the_witness_and_the_others() {
        let mut l = LostMembers::default();
        assert_eq!(l.note_for_status(Some(3)), None);
        l.note(3, "wiped".into(), 1);
        l.note(2, "rolled back".into(), 1);
        let note = l.note_for_status(Some(3)).unwrap_or_default();
        assert!(note.contains("the witness lost its data (wiped)"), "{note}");
        assert!(
            note.contains("member 2 lost its data (rolled back)"),
            "{note}"
        );
    }
}
