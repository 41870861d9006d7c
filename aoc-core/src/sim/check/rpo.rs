//! Property: **RPO=0**. Every write a client saw acknowledged, named by
//! its session and sequence, is applied on every data member (the data
//! voters of the final configuration: a member that replaced a lost one
//! included, the lost one not): each data member's session table holds
//! that client at that sequence or later
//! (sessions apply writes in sequence order, exactly once). The final read
//! of every key, checked with the history (`linearizable.rs`), shows the
//! values themselves survived.

use super::Property;
use crate::sim::workload::AckedWrite;
use crate::sim::Cluster;

/// Reports of acknowledged writes missing on a data member (the first few,
/// then a count).
pub(crate) fn check(c: &Cluster, acked: &[AckedWrite]) -> Vec<String> {
    let mut out = Vec::new();
    for d in c.data_members() {
        let Some(r) = c.replica(d) else {
            out.push(
                Property::Rpo.report(format!("data member {d} is not running after the heal")),
            );
            continue;
        };
        let missing: Vec<&AckedWrite> = acked
            .iter()
            .filter(|a| {
                r.session(a.client_id)
                    .is_none_or(|s| s.last_sequence < a.sequence)
            })
            .collect();
        if let Some(first) = missing.first() {
            out.push(Property::Rpo.report(format!(
                "data member {d} lacks {} acknowledged writes; first: client {} sequence {} \
                 (acknowledged at {} us; the member's session is at {:?})",
                missing.len(),
                first.client_id,
                first.sequence,
                first.at_us,
                r.session(first.client_id).map(|s| s.last_sequence)
            )));
        }
    }
    out
}
