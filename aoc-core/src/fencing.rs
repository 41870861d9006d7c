//! Fencing tokens: how a platform that acts outside the cluster (the
//! commands AOC sends to managed clusters) keeps a deposed active's late
//! commands out, even after a pause that no lease or watchdog catches.
//!
//! The active's token is the raft term it leads in
//! ([`crate::Status::fencing_token`], [`crate::Node::fencing_token`]). It
//! strictly increases across every change of active (a failover, a
//! switchover, a restart, a membership change that moves the role: each
//! elects a leader in a higher term), and no two actives ever share one
//! (raft elects at most one leader per term, and the fenced lease makes a
//! leader active only inside its lease). The active stamps every command
//! it sends with its token; the receiver keeps the highest token it has
//! seen and refuses older ones ([`FencingVerifier`]), so once it has
//! heard from a new active, nothing the old one sends later is taken.
//!
//! ```
//! use aoc_core::fencing::FencingVerifier;
//!
//! let mut agent = FencingVerifier::new();
//! agent.check(7)?;                      // the active of term 7
//! agent.check(7)?;                      // the same active again
//! agent.check(9)?;                      // a new active, after a failover
//! let late = agent.check(7).unwrap_err(); // the deposed one, resumed
//! assert_eq!((late.token, late.highest), (7, 9));
//! # Ok::<(), aoc_core::fencing::StaleToken>(())
//! ```

/// A command stamped with a token older than one already seen: it comes
/// from a deposed active and must not be carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "fencing token {token} is older than {highest}, already seen: the command comes from a \
     deposed active and is refused"
)]
pub struct StaleToken {
    /// The token the command carried.
    pub token: u64,
    /// The highest token seen before.
    pub highest: u64,
}

/// The receiving side's check (see the module docs): keeps the highest
/// token seen. Persist [`FencingVerifier::highest`] with the state the
/// commands change, so a restart does not forget it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FencingVerifier {
    highest: u64,
}

impl FencingVerifier {
    /// A verifier that has seen no token.
    pub fn new() -> Self {
        Self::default()
    }

    /// A verifier that has seen `highest` (restored after a restart).
    pub fn with_highest(highest: u64) -> Self {
        FencingVerifier { highest }
    }

    /// The highest token seen.
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Takes a command stamped with `token`: accepted (and remembered) if
    /// it is not older than every token seen, refused otherwise. A token
    /// equal to the highest is the same active's.
    pub fn check(&mut self, token: u64) -> Result<(), StaleToken> {
        if token < self.highest {
            return Err(StaleToken {
                token,
                highest: self.highest,
            });
        }
        self.highest = token;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_tokens_are_refused_and_refusals_change_nothing() {
        let mut v = FencingVerifier::with_highest(4);
        assert_eq!(
            v.check(3),
            Err(StaleToken {
                token: 3,
                highest: 4
            })
        );
        assert_eq!(v.highest(), 4);
        assert_eq!(v.check(4), Ok(()));
        assert_eq!(v.check(6), Ok(()));
        assert!(v.check(5).is_err());
        assert_eq!(v.highest(), 6);
    }
}
