//! The client table: exactly-once writes through (client id, sequence).
//!
//! Every member computes the same table from the same entries: a session is
//! opened by a `RegisterClient` entry (its index is the client id), updated
//! by each applied write, and expires when the leader's stamp of a later
//! entry is more than `ttl_ms` past its last activity, or when the table is
//! full and a new session needs room. No local clock is read at apply time.

use std::collections::{BTreeSet, HashMap};

use crate::state::Session;
use crate::Error;

#[derive(Debug, Clone)]
struct Entry {
    last_sequence: u64,
    last_response: Vec<u8>,
    last_active_ms: u64,
}

/// What to do with a write from a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Apply it.
    Apply,
    /// Already applied: answer with the stored response.
    Duplicate(Vec<u8>),
    /// Refuse it (unknown/expired session, or a sequence older than the last).
    Refuse(Error),
}

/// In-memory mirror of the sessions the state machine stores.
#[derive(Debug, Clone)]
pub(crate) struct ClientTable {
    sessions: HashMap<u64, Entry>,
    by_activity: BTreeSet<(u64, u64)>,
    ttl_ms: u64,
    max_sessions: usize,
}

impl ClientTable {
    pub(crate) fn new(ttl_ms: u64, max_sessions: usize) -> Self {
        ClientTable {
            sessions: HashMap::new(),
            by_activity: BTreeSet::new(),
            ttl_ms,
            max_sessions,
        }
    }

    /// Replaces the table with the stored sessions.
    pub(crate) fn load(&mut self, stored: Vec<Session>) {
        self.sessions.clear();
        self.by_activity.clear();
        for s in stored {
            self.by_activity.insert((s.last_active_ms, s.client_id));
            self.sessions.insert(
                s.client_id,
                Entry {
                    last_sequence: s.last_sequence,
                    last_response: s.last_response,
                    last_active_ms: s.last_active_ms,
                },
            );
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    fn remove(&mut self, client: u64) {
        if let Some(e) = self.sessions.remove(&client) {
            self.by_activity.remove(&(e.last_active_ms, client));
        }
    }

    /// Expires the sessions idle for more than the ttl at `stamp_ms`;
    /// returns their ids.
    pub(crate) fn expire(&mut self, stamp_ms: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let cutoff = stamp_ms.saturating_sub(self.ttl_ms);
        while let Some(&(active, client)) = self.by_activity.iter().next() {
            if active >= cutoff {
                break;
            }
            self.remove(client);
            out.push(client);
        }
        out
    }

    /// Opens session `client` (the registering entry's index); returns the
    /// sessions expired to make room.
    pub(crate) fn register(&mut self, client: u64, stamp_ms: u64) -> Vec<u64> {
        let mut out = Vec::new();
        while self.sessions.len() >= self.max_sessions {
            let Some(&(_, oldest)) = self.by_activity.iter().next() else {
                break;
            };
            self.remove(oldest);
            out.push(oldest);
        }
        self.sessions.insert(
            client,
            Entry {
                last_sequence: 0,
                last_response: Vec::new(),
                last_active_ms: stamp_ms,
            },
        );
        self.by_activity.insert((stamp_ms, client));
        out
    }

    /// Decides what to do with write `sequence` of `client`.
    pub(crate) fn decide(&self, client: u64, sequence: u64) -> Decision {
        match self.sessions.get(&client) {
            None => Decision::Refuse(Error::SessionExpired { client_id: client }),
            Some(e) if sequence == e.last_sequence && sequence != 0 => {
                Decision::Duplicate(e.last_response.clone())
            }
            Some(e) if sequence <= e.last_sequence => Decision::Refuse(Error::StaleSequence {
                client_id: client,
                sequence,
                last: e.last_sequence,
            }),
            Some(_) => Decision::Apply,
        }
    }

    /// Records an applied write.
    pub(crate) fn record(&mut self, client: u64, sequence: u64, response: Vec<u8>, stamp_ms: u64) {
        if let Some(e) = self.sessions.get_mut(&client) {
            self.by_activity.remove(&(e.last_active_ms, client));
            // Stamps come from successive leaders whose clocks may differ:
            // activity never moves backwards.
            e.last_active_ms = e.last_active_ms.max(stamp_ms);
            e.last_sequence = sequence;
            e.last_response = response;
            self.by_activity.insert((e.last_active_ms, client));
        }
    }

    /// The stored form of session `client`.
    pub(crate) fn session(&self, client: u64) -> Option<Session> {
        self.sessions.get(&client).map(|e| Session {
            client_id: client,
            last_sequence: e.last_sequence,
            last_response: e.last_response.clone(),
            last_active_ms: e.last_active_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_is_answered_with_the_stored_response() {
        let mut t = ClientTable::new(1000, 10);
        t.register(5, 0);
        assert_eq!(t.decide(5, 1), Decision::Apply);
        t.record(5, 1, b"r1".to_vec(), 10);
        assert_eq!(t.decide(5, 1), Decision::Duplicate(b"r1".to_vec()));
        assert!(matches!(t.decide(5, 0), Decision::Refuse(_)));
        assert_eq!(t.decide(5, 2), Decision::Apply);
        assert!(matches!(
            t.decide(6, 1),
            Decision::Refuse(Error::SessionExpired { client_id: 6 })
        ));
    }

    #[test]
    fn expiry_follows_stamps_and_capacity() {
        let mut t = ClientTable::new(100, 2);
        t.register(1, 0);
        t.register(2, 50);
        assert_eq!(t.register(3, 60), vec![1]);
        assert_eq!(t.expire(155), vec![2]);
        assert_eq!(t.len(), 1);
        assert!(matches!(t.decide(2, 1), Decision::Refuse(_)));
    }
}
