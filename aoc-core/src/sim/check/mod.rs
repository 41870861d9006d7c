//! The simulation's invariants, one per file, each named for the property
//! it guards. The cluster checks the first three after every event; a run
//! checks the others once the cluster is healed and settled. Every
//! violation is reported as `[property] what happened`.
//!
//! | property | file | when |
//! |---|---|---|
//! | `durable-at-ack` | `durable_at_ack.rs` | at every acknowledgement |
//! | `one-active` | `one_active.rs` | after every event |
//! | `witness-lead` | `witness_lead.rs` | after every event |
//! | `apply-once` | `../audit.rs` | at every applied batch |
//! | `rpo` | `rpo.rs` | after the run |
//! | `linearizable` | `linearizable.rs` | after the run |
//! | `settled` | `settled.rs` | after the run |
//! | `liveness` | `liveness.rs` | after the heal |
//! | `membership` | `../replace.rs` | at every change the replacement scenario makes, and after the heal |

mod durable_at_ack;
mod linearizable;
pub(crate) mod liveness;
pub(crate) mod one_active;
pub(crate) mod rpo;
pub(crate) mod settled;
mod witness_lead;

use std::fmt;

pub use linearizable::{check_history, HistoryOp, KvOp, KvOutput, Verdict};
pub(crate) use witness_lead::WitnessLead;

/// A property the simulation checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Property {
    /// When a write is acknowledged, its entry is on both data members'
    /// synced logs in sync mode, on a majority's in any mode.
    DurableAtAck,
    /// Never two members in the active role at one instant.
    OneActive,
    /// The witness leads no longer than a bound once a data member it can
    /// complete is up and connected.
    WitnessLead,
    /// No state machine applies an entry twice or skips one.
    ApplyOnce,
    /// Every acknowledged write is applied on every data member.
    Rpo,
    /// The client history is linearizable (decided within the budget).
    Linearizable,
    /// Once healed: the data members hold the same state, sync mode is
    /// back, the witness holds only the unpersisted tail.
    Settled,
    /// Once healed, a data member is active and serving within a bound.
    Liveness,
    /// A member stopped on an error.
    MemberFailed,
    /// A lost member's replacement (`RunOptions::replace`) completes within
    /// a bound after the heal, and no change it needs is refused for a
    /// reason a correct build never gives.
    Membership,
}

impl Property {
    /// Every property.
    pub const ALL: [Property; 10] = [
        Property::DurableAtAck,
        Property::OneActive,
        Property::WitnessLead,
        Property::ApplyOnce,
        Property::Rpo,
        Property::Linearizable,
        Property::Settled,
        Property::Liveness,
        Property::MemberFailed,
        Property::Membership,
    ];

    /// The property's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Property::DurableAtAck => "durable-at-ack",
            Property::OneActive => "one-active",
            Property::WitnessLead => "witness-lead",
            Property::ApplyOnce => "apply-once",
            Property::Rpo => "rpo",
            Property::Linearizable => "linearizable",
            Property::Settled => "settled",
            Property::Liveness => "liveness",
            Property::MemberFailed => "member-failed",
            Property::Membership => "membership",
        }
    }

    /// The property a violation report names.
    pub fn of(violation: &str) -> Option<Property> {
        let name = violation.strip_prefix('[')?.split(']').next()?;
        Property::ALL.into_iter().find(|p| p.name() == name)
    }

    /// A violation report of this property.
    pub(crate) fn report(self, what: impl fmt::Display) -> String {
        format!("[{}] {what}", self.name())
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
