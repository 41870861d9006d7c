//! Maintenance settings appended to the log but not applied yet.
//!
//! Whether a member may stand is decided from the newest maintenance
//! setting in its log, applied or not, as raft decides membership from
//! what is appended in the thesis' single-server changes. Deciding from
//! what is applied alone leaves a cluster unable to elect: the active
//! commits `maintenance off`, answers the operator, and dies before the
//! others learn the commit (a heartbeat later); they still apply
//! "maintenance on, only the dead member may stand", and nobody stands.
//!
//! Why the newest appended setting is safe to act on: maintenance decides
//! only who may stand, never what commits (raft decides that), so acting
//! on a setting that is later overwritten can only let a member stand
//! that a committed setting would have held back, or hold back one it
//! would have let stand; neither breaks a guarantee, and an "off" that
//! reached no member never returned to the operator. And why it is
//! enough: an "off" that was answered is committed, so it is in the log
//! of a majority, and at least one survivor of any single failure holds
//! it. That member may stand; the members that lack it (still held back)
//! vote, and raft elects a holder of the longer log, which commits the
//! off for all.

use crate::payload::Payload;
use raft::eraftpb::{Entry, EntryType};

/// An encoded maintenance payload is at most this long (kind, flag, member
/// id and stamp as varints); longer entries are not decoded to check.
const MAX_MAINTENANCE_BYTES: usize = 48;

/// One maintenance setting, as an entry carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Setting {
    /// The entry's index.
    pub(crate) index: u64,
    /// On or off.
    pub(crate) on: bool,
    /// While on, the only member that may stand.
    pub(crate) allowed: u64,
    /// The proposing leader's clock (ms).
    pub(crate) stamp_ms: u64,
}

impl Setting {
    /// The setting `e` carries, if it is a maintenance entry.
    pub(crate) fn of(e: &Entry) -> Option<Setting> {
        if e.get_entry_type() != EntryType::EntryNormal || e.data.len() > MAX_MAINTENANCE_BYTES {
            return None;
        }
        match Payload::decode(&e.data) {
            Ok(Payload::Maintenance {
                on,
                allowed,
                stamp_ms,
            }) => Some(Setting {
                index: e.index,
                on,
                allowed,
                stamp_ms,
            }),
            _ => None,
        }
    }
}

/// The settings in the log above the applied one, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    settings: Vec<Setting>,
}

impl Tail {
    /// Entries were appended from `first` on: what the log held from there
    /// is replaced (raft truncates a conflicting tail).
    pub(crate) fn appended(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        self.settings.retain(|s| s.index < first.index);
        self.settings.extend(entries.iter().filter_map(Setting::of));
    }

    /// Settings up to `index` are applied (or replaced by a snapshot).
    pub(crate) fn applied_up_to(&mut self, index: u64) {
        self.settings.retain(|s| s.index > index);
    }

    /// The newest setting above `floor`.
    pub(crate) fn newest_above(&self, floor: u64) -> Option<Setting> {
        self.settings.last().copied().filter(|s| s.index > floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, payload: Payload) -> Entry {
        Entry {
            index,
            data: payload.encode().into(),
            ..Default::default()
        }
    }

    fn maintenance(index: u64, on: bool) -> Entry {
        entry(
            index,
            Payload::Maintenance {
                on,
                allowed: 2,
                stamp_ms: u64::MAX,
            },
        )
    }

    #[test]
    fn the_newest_setting_wins_and_a_truncation_drops_what_it_replaced() {
        let mut t = Tail::default();
        let command = entry(
            6,
            Payload::Command {
                session: Some((u64::MAX, u64::MAX)),
                stamp_ms: u64::MAX,
                command: vec![0; 64],
            },
        );
        t.appended(&[maintenance(5, true), command, maintenance(7, false)]);
        assert_eq!(t.newest_above(0).map(|s| (s.index, s.on)), Some((7, false)));
        // A new leader overwrites from 7: the off is gone.
        t.appended(&[entry(7, Payload::Noop)]);
        assert_eq!(t.newest_above(0).map(|s| (s.index, s.on)), Some((5, true)));
        assert_eq!(t.newest_above(5), None, "a local off at 5 covers it");
        t.applied_up_to(5);
        assert_eq!(t.newest_above(0), None);
    }

    #[test]
    fn the_longest_maintenance_payload_fits_the_bound() {
        let e = entry(
            u64::MAX,
            Payload::Maintenance {
                on: true,
                allowed: u64::MAX,
                stamp_ms: u64::MAX,
            },
        );
        assert!(e.data.len() <= MAX_MAINTENANCE_BYTES, "{}", e.data.len());
        assert!(Setting::of(&e).is_some());
    }
}
