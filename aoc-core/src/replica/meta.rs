//! This member's persisted metadata (the configuration index and member
//! records its conf state was stored with, maintenance mode as applied,
//! the NOSPACE alarms), and the maintenance settings appended above it.
//!
//! Every change goes through [`Meta::change`], which marks the record for
//! the next write: the metadata is persisted with the log write that
//! carries its cause (atomically), or alone (see `Replica::ready`).

use std::ops::Deref;

use super::maintenance;
use crate::proto::MemberMeta;

/// The persisted metadata and whether it changed since it was handed out.
#[derive(Debug, Default)]
pub(super) struct Meta {
    record: MemberMeta,
    dirty: bool,
    /// Maintenance settings appended above the applied one.
    pub(super) tail: maintenance::Tail,
}

impl Meta {
    /// The record as read from the store: nothing to write back.
    pub(super) fn loaded(&mut self, record: MemberMeta) {
        self.record = record;
    }

    /// The record, to change: it is written with the next write.
    pub(super) fn change(&mut self) -> &mut MemberMeta {
        self.dirty = true;
        &mut self.record
    }

    /// Whether the record changed since it was last handed out.
    pub(super) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The record to write, if it changed.
    pub(super) fn take_dirty(&mut self) -> Option<MemberMeta> {
        std::mem::take(&mut self.dirty).then(|| self.record.clone())
    }
}

impl Deref for Meta {
    type Target = MemberMeta;

    fn deref(&self) -> &MemberMeta {
        &self.record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_handed_out_once() {
        let mut m = Meta::default();
        let mut stored = MemberMeta::new();
        stored.conf_index = 4;
        m.loaded(stored);
        assert_eq!(m.conf_index, 4);
        assert!(!m.is_dirty(), "what was read needs no write");
        m.change().conf_index = 9;
        assert!(m.is_dirty());
        assert_eq!(m.take_dirty().map(|r| r.conf_index), Some(9));
        assert_eq!(m.take_dirty(), None);
    }
}
