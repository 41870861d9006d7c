//! A state machine wrapper that checks, on every batch, that no entry is
//! applied twice and none is skipped.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::state::{ApplyBatch, KvStateMachine, MemKv, Session, StateMachine};
use crate::Result;

/// Violations found by the audit, shared with the cluster.
pub(crate) type Violations = Arc<Mutex<Vec<String>>>;

/// [`MemKv`] with checks (see the module docs).
#[derive(Debug)]
pub(crate) struct AuditKv {
    pub(crate) inner: MemKv,
    member: u64,
    violations: Violations,
}

impl AuditKv {
    pub(crate) fn new(inner: MemKv, member: u64, violations: Violations) -> Self {
        AuditKv {
            inner,
            member,
            violations,
        }
    }

    fn violation(&self, what: String) {
        self.violations.lock().push(
            super::check::Property::ApplyOnce.report(format!("member {}: {what}", self.member)),
        );
    }
}

impl StateMachine for AuditKv {
    fn applied_index(&self) -> u64 {
        self.inner.applied_index()
    }

    fn apply(&mut self, batch: &ApplyBatch<'_>) -> Result<Vec<Vec<u8>>> {
        let applied = self.inner.applied_index();
        if batch.applied_index <= applied {
            self.violation(format!(
                "batch up to {} applied again (state already at {applied})",
                batch.applied_index
            ));
        }
        let mut prev = applied;
        for c in &batch.commands {
            if c.index <= prev || c.index > batch.applied_index {
                self.violation(format!(
                    "command at index {} applied out of order (after {prev}, batch up to {})",
                    c.index, batch.applied_index
                ));
            }
            prev = c.index;
        }
        self.inner.apply(batch)
    }

    fn sessions(&self) -> Result<Vec<Session>> {
        self.inner.sessions()
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        self.inner.snapshot()
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<()> {
        self.inner.restore(index, data)
    }

    fn check_snapshot(&self, index: u64, data: &[u8]) -> Result<()> {
        self.inner.check_snapshot(index, data)
    }

    fn frees_space(&self, command: &[u8]) -> bool {
        self.inner.frees_space(command)
    }

    fn sync(&mut self) -> Result<u64> {
        self.inner.sync()
    }
}

impl KvStateMachine for AuditKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }

    fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan(prefix)
    }
}
