//! Property: **settled**. Once every fault is healed and the cluster had
//! time to recover: both data members (the data voters of the current
//! configuration) are up and hold the same state at the active's commit
//! index, the active runs in sync mode, and the witness
//! retains no more entries that both data members persisted than one
//! compaction step (it compacts in steps of `WITNESS_COMPACT_BATCH`
//! entries, so that compaction, itself a synced write, stays rare).

use super::Property;
use crate::replica::WITNESS_COMPACT_BATCH;
use crate::sim::Cluster;
use crate::storage::LogStore;
use crate::Mode;

/// What keeps the cluster from being settled, if anything.
pub(crate) fn unsettled(c: &Cluster) -> Option<String> {
    let Some(active) = c.active() else {
        return Some("no active".into());
    };
    let st = c.status(active)?;
    if st.mode != Mode::Sync {
        return Some(format!("the active {active} runs in {:?} mode", st.mode));
    }
    let data = c.data_members();
    let mut states = Vec::new();
    for d in &data {
        let Some((applied, pairs)) = c.state_of(*d) else {
            return Some(format!("data member {d} is not running"));
        };
        if applied != st.commit {
            return Some(format!(
                "data member {d} applied {applied}, the active's commit is {}",
                st.commit
            ));
        }
        states.push(pairs);
    }
    if states.windows(2).any(|w| w[0] != w[1]) {
        return Some("the data members hold different states".into());
    }
    if let Some(w) = c.witness() {
        if c.is_up(w) && !c.is_blank(w) {
            let persisted = data
                .iter()
                .filter_map(|d| c.log_store(*d).and_then(|l| l.last_index().ok()))
                .min()
                .unwrap_or(0);
            let ws = c.status(w)?;
            let retained = persisted
                .min(ws.last_index)
                .saturating_sub(ws.first_index.saturating_sub(1));
            if retained > WITNESS_COMPACT_BATCH {
                return Some(format!(
                    "the witness retains {retained} entries both data members persisted \
                     (its log {}..={}, persisted {persisted})",
                    ws.first_index, ws.last_index
                ));
            }
        }
    }
    None
}

/// Runs until the cluster is settled, at most `max_us`; the report if not.
pub(crate) fn settle(c: &mut Cluster, max_us: u64) -> Option<String> {
    if c.run_until(max_us, |c| unsettled(c).is_none()) {
        return None;
    }
    let why = unsettled(c).unwrap_or_default();
    Some(Property::Settled.report(format!(
        "not settled {} ms after the heal: {why}",
        max_us / 1000
    )))
}
