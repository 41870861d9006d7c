//! Deliberate protocol breaks: the replica's test seam.
//!
//! The simulation switches these on to prove that its checkers can fail
//! (each break is a known-wrong rule a checker must catch). The flags
//! exist only with the `sim` feature; without it [`Breaks`] has no fields
//! and every accessor is a constant `false`, so the production build
//! carries no break and no branch on one.

/// The breaks a replica runs with (all off unless the simulation set them).
#[cfg(feature = "sim")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Breaks {
    /// Group commit stays off in sync mode.
    pub(crate) ack_before_sync: bool,
    /// A witness that leads never hands over.
    pub(crate) witness_stays_leader: bool,
    /// A leader is active without its fenced lease.
    pub(crate) skip_fence: bool,
    /// The witness gets a lower raft priority than the data members.
    /// Applied once the member's term is past 0: raft-rs 0.7 panics when a
    /// member at term 0 refuses a pre-vote for priority (it sends the
    /// refusal with term 0), another reason the design leaves priority
    /// alone.
    pub(crate) low_priority_witness: bool,
    /// Standing follows the applied maintenance setting only.
    pub(crate) maintenance_applied_only: bool,
}

/// The breaks a replica runs with: none, in a build without the `sim`
/// feature.
#[cfg(not(feature = "sim"))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Breaks {}

macro_rules! accessors {
    ($($name:ident),* $(,)?) => {
        impl Breaks {
            $(
                #[cfg(feature = "sim")]
                #[inline]
                pub(crate) fn $name(&self) -> bool {
                    self.$name
                }

                #[cfg(not(feature = "sim"))]
                #[inline]
                pub(crate) fn $name(&self) -> bool {
                    false
                }
            )*
        }
    };
}

accessors!(
    ack_before_sync,
    witness_stays_leader,
    skip_fence,
    low_priority_witness,
    maintenance_applied_only,
);
