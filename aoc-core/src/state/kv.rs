//! The ready-made key-value state machine: its commands, its responses, its
//! snapshot format and the apply logic shared by [`super::MemKv`] and
//! [`super::SledKv`].
//!
//! Both stores compute a batch with [`plan_batch`]: given a lookup of the
//! current value of a key, it returns the final effect of the batch (every
//! key written or removed, every session written or removed, the applied
//! index) and one response per command. The stores only differ in how they
//! write that effect atomically.

use std::collections::BTreeMap;

use protobuf::Message;

use super::{ApplyBatch, Session, StateMachine};
use crate::proto;
use crate::{Error, Result};

/// A command of the key-value state machine (encoded as the proto
/// `KvCommand`).
///
/// Build one with [`KvCommand::put`], [`KvCommand::delete`] or
/// [`KvCommand::cas`], propose [`KvCommand::encode`], and read the answer
/// with [`KvResponse::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvCommand {
    /// Sets `key` to `value`. Response: `ok` is true, `previous` is the old
    /// value if there was one.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Removes `key`. Response: `ok` says whether the key existed,
    /// `previous` is the removed value.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Compare-and-swap: when the current value of `key` equals `expected`
    /// (`None`: the key must be absent), sets it to `new` (`None`: removes
    /// it). Response: `ok` says whether it swapped, `previous` is the value
    /// found (whether or not it swapped).
    Cas {
        /// The key.
        key: Vec<u8>,
        /// The value the key must have (`None`: the key must be absent).
        expected: Option<Vec<u8>>,
        /// The value to set (`None`: remove the key).
        new: Option<Vec<u8>>,
    },
}

impl KvCommand {
    /// A command that sets `key` to `value`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        KvCommand::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    /// A command that removes `key`.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        KvCommand::Delete { key: key.into() }
    }

    /// A compare-and-swap of `key` from `expected` to `new` (`None` means
    /// absent on either side).
    pub fn cas(key: impl Into<Vec<u8>>, expected: Option<Vec<u8>>, new: Option<Vec<u8>>) -> Self {
        KvCommand::Cas {
            key: key.into(),
            expected,
            new,
        }
    }

    /// The key the command concerns.
    pub fn key(&self) -> &[u8] {
        match self {
            KvCommand::Put { key, .. } | KvCommand::Delete { key } | KvCommand::Cas { key, .. } => {
                key
            }
        }
    }

    /// The command's wire form (the proto `KvCommand`).
    pub fn encode(&self) -> Vec<u8> {
        let mut msg = proto::KvCommand::new();
        match self {
            KvCommand::Put { key, value } => {
                let mut put = proto::KvPut::new();
                put.set_key(key.clone());
                put.set_value(value.clone());
                msg.set_put(put);
            }
            KvCommand::Delete { key } => {
                let mut delete = proto::KvDelete::new();
                delete.set_key(key.clone());
                msg.set_delete(delete);
            }
            KvCommand::Cas { key, expected, new } => {
                let mut cas = proto::KvCas::new();
                cas.set_key(key.clone());
                match expected {
                    Some(v) => cas.set_expected(v.clone()),
                    None => cas.set_expected_absent(true),
                }
                match new {
                    Some(v) => cas.set_new_value(v.clone()),
                    None => cas.set_delete(true),
                }
                msg.set_cas(cas);
            }
        }
        write_message(&msg)
    }

    /// Decodes a command from its wire form. Bytes that are not a
    /// `KvCommand`, or a `KvCommand` with no operation, give
    /// [`Error::Decode`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut msg = proto::KvCommand::parse_from_bytes(bytes)
            .map_err(|e| Error::decode("kv command", e))?;
        if msg.has_put() {
            let mut put = msg.take_put();
            Ok(KvCommand::Put {
                key: put.take_key(),
                value: put.take_value(),
            })
        } else if msg.has_delete() {
            Ok(KvCommand::Delete {
                key: msg.take_delete().take_key(),
            })
        } else if msg.has_cas() {
            let mut cas = msg.take_cas();
            if cas.get_expected_absent() && !cas.get_expected().is_empty() {
                return Err(Error::decode(
                    "kv command",
                    "cas sets both an expected value and expected_absent",
                ));
            }
            if cas.get_delete() && !cas.get_new_value().is_empty() {
                return Err(Error::decode(
                    "kv command",
                    "cas sets both a new value and delete",
                ));
            }
            let expected = if cas.get_expected_absent() {
                None
            } else {
                Some(cas.take_expected())
            };
            let new = if cas.get_delete() {
                None
            } else {
                Some(cas.take_new_value())
            };
            Ok(KvCommand::Cas {
                key: cas.take_key(),
                expected,
                new,
            })
        } else {
            Err(Error::decode("kv command", "no operation is set"))
        }
    }
}

/// The response to a [`KvCommand`] (encoded as the proto `KvResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KvResponse {
    /// put: true; delete: whether the key existed; cas: whether it swapped.
    /// False when `error` is set.
    pub ok: bool,
    /// The value the key had before the command, if it had one.
    pub previous: Option<Vec<u8>>,
    /// Set when the command could not be decoded; nothing was changed.
    pub error: Option<String>,
}

impl KvResponse {
    /// The response's wire form (the proto `KvResponse`).
    pub fn encode(&self) -> Vec<u8> {
        let mut msg = proto::KvResponse::new();
        msg.set_ok(self.ok);
        if let Some(previous) = &self.previous {
            msg.set_had_previous(true);
            msg.set_previous(previous.clone());
        }
        if let Some(error) = &self.error {
            msg.set_error(error.clone());
        }
        write_message(&msg)
    }

    /// Decodes a response from its wire form ([`Error::Decode`] when the
    /// bytes are not a `KvResponse`).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut msg = proto::KvResponse::parse_from_bytes(bytes)
            .map_err(|e| Error::decode("kv response", e))?;
        if !msg.get_had_previous() && !msg.get_previous().is_empty() {
            return Err(Error::decode(
                "kv response",
                "a previous value is set without had_previous",
            ));
        }
        let previous = if msg.get_had_previous() {
            Some(msg.take_previous())
        } else {
            None
        };
        let error = if msg.get_error().is_empty() {
            None
        } else {
            Some(msg.take_error())
        };
        Ok(KvResponse {
            ok: msg.get_ok(),
            previous,
            error,
        })
    }
}

/// A [`StateMachine`] that is a key-value store: the reads served next to
/// the replicated writes.
///
/// Reads see every applied batch (synced or not): they are linearizable
/// when the caller has made sure (read index or lease) that the applied
/// index covers the read.
pub trait KvStateMachine: StateMachine {
    /// The value of `key`, if it is set.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Every pair whose key starts with `prefix`, in key order (an empty
    /// prefix gives every pair).
    fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
}

/// What one command does: the response, and the write (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The response to return (and to store in the session).
    pub response: KvResponse,
    /// `Some((key, Some(value)))`: set; `Some((key, None))`: remove;
    /// `None`: no change.
    pub write: Option<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Executes one command against `current`, the current value of its key.
///
/// Deterministic: the outcome depends only on the command and the current
/// value. (An undecodable command never gets here: [`plan_batch`] answers
/// it with an error response and no write.)
pub(crate) fn execute(command: &KvCommand, current: Option<Vec<u8>>) -> Outcome {
    match command {
        KvCommand::Put { key, value } => Outcome {
            response: KvResponse {
                ok: true,
                previous: current,
                error: None,
            },
            write: Some((key.clone(), Some(value.clone()))),
        },
        KvCommand::Delete { key } => {
            let existed = current.is_some();
            Outcome {
                response: KvResponse {
                    ok: existed,
                    previous: current,
                    error: None,
                },
                write: existed.then(|| (key.clone(), None)),
            }
        }
        KvCommand::Cas { key, expected, new } => {
            let swap = current == *expected;
            let write = if swap && current != *new {
                Some((key.clone(), new.clone()))
            } else {
                None
            };
            Outcome {
                response: KvResponse {
                    ok: swap,
                    previous: current,
                    error: None,
                },
                write,
            }
        }
    }
}

/// The whole effect of one [`ApplyBatch`], ready to be written atomically.
#[derive(Debug, Clone, Default)]
pub(crate) struct BatchEffect {
    /// The final value of every key the batch changed (`None`: removed).
    pub writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The final row of every session the batch changed (`None`: removed).
    pub sessions: BTreeMap<u64, Option<Session>>,
    /// The applied index after the batch.
    pub applied_index: u64,
    /// One encoded [`KvResponse`] per command, in order.
    pub responses: Vec<Vec<u8>>,
}

/// Computes the effect of `batch` on a store whose current values `lookup`
/// reads. Commands see the writes of the earlier commands of the same
/// batch.
///
/// Session changes, in this order: the batch's new sessions are inserted,
/// then the session of every command that carries a stamp is set to
/// `Session { client_id, last_sequence: sequence, last_response: response,
/// last_active_ms: stamp_ms }`, then the expired sessions are removed (a
/// session listed as expired is gone after the batch).
///
/// Only an error of `lookup` (a store failure) is returned as an error.
pub(crate) fn plan_batch(
    batch: &ApplyBatch<'_>,
    mut lookup: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>>,
) -> Result<BatchEffect> {
    let mut effect = BatchEffect {
        applied_index: batch.applied_index,
        responses: Vec::with_capacity(batch.commands.len()),
        ..BatchEffect::default()
    };
    for session in &batch.new_sessions {
        effect
            .sessions
            .insert(session.client_id, Some(session.clone()));
    }
    for cmd in &batch.commands {
        let response = match KvCommand::decode(cmd.command) {
            Ok(command) => {
                let current = match effect.writes.get(command.key()) {
                    Some(pending) => pending.clone(),
                    None => lookup(command.key())?,
                };
                let outcome = execute(&command, current);
                if let Some((key, value)) = outcome.write {
                    effect.writes.insert(key, value);
                }
                outcome.response
            }
            Err(e) => KvResponse {
                ok: false,
                previous: None,
                error: Some(e.to_string()),
            },
        };
        let encoded = response.encode();
        if let Some(stamp) = cmd.session {
            effect.sessions.insert(
                stamp.client_id,
                Some(Session {
                    client_id: stamp.client_id,
                    last_sequence: stamp.sequence,
                    last_response: encoded.clone(),
                    last_active_ms: stamp.stamp_ms,
                }),
            );
        }
        effect.responses.push(encoded);
    }
    for client_id in &batch.expired_sessions {
        effect.sessions.insert(*client_id, None);
    }
    Ok(effect)
}

/// Encodes a session as the proto `Session` (the form stored on disk and in
/// snapshots).
pub(crate) fn encode_session(session: &Session) -> Vec<u8> {
    write_message(&session_to_proto(session))
}

/// Decodes a session stored by [`encode_session`].
pub(crate) fn decode_session(bytes: &[u8]) -> Result<Session> {
    let msg = proto::Session::parse_from_bytes(bytes).map_err(|e| Error::decode("session", e))?;
    Ok(session_from_proto(&msg))
}

fn session_to_proto(session: &Session) -> proto::Session {
    let mut msg = proto::Session::new();
    msg.set_client_id(session.client_id);
    msg.set_last_sequence(session.last_sequence);
    msg.set_last_response(session.last_response.clone());
    msg.set_last_active_ms(session.last_active_ms);
    msg
}

fn session_from_proto(msg: &proto::Session) -> Session {
    Session {
        client_id: msg.get_client_id(),
        last_sequence: msg.get_last_sequence(),
        last_response: msg.get_last_response().to_vec(),
        last_active_ms: msg.get_last_active_ms(),
    }
}

/// The content of a key-value snapshot (the proto `KvSnapshot`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SnapshotData {
    /// The applied index the snapshot was taken at.
    pub applied_index: u64,
    /// Every pair, in strictly increasing key order.
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Every session, in strictly increasing client id order.
    pub sessions: Vec<Session>,
}

impl SnapshotData {
    /// The snapshot's wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut msg = proto::KvSnapshot::new();
        msg.set_applied_index(self.applied_index);
        for (key, value) in &self.pairs {
            let mut pair = proto::KvPair::new();
            pair.set_key(key.clone());
            pair.set_value(value.clone());
            msg.mut_pairs().push(pair);
        }
        for session in &self.sessions {
            msg.mut_sessions().push(session_to_proto(session));
        }
        write_message(&msg)
    }

    /// Decodes a snapshot that must have been taken at `index`.
    ///
    /// Refused with [`Error::Decode`]: empty bytes or an index of 0 (a
    /// snapshot with no state), bytes that are not a `KvSnapshot`, an
    /// applied index other than `index`, keys or client ids that are not in
    /// strictly increasing order (duplicates).
    pub fn decode(index: u64, bytes: &[u8]) -> Result<Self> {
        const WHAT: &str = "kv snapshot";
        if bytes.is_empty() {
            return Err(Error::decode(
                WHAT,
                "the snapshot is empty (it holds no state)",
            ));
        }
        if index == 0 {
            return Err(Error::decode(WHAT, "a snapshot at index 0 holds no state"));
        }
        let mut msg =
            proto::KvSnapshot::parse_from_bytes(bytes).map_err(|e| Error::decode(WHAT, e))?;
        if msg.get_applied_index() != index {
            return Err(Error::decode(
                WHAT,
                format!(
                    "the snapshot was taken at applied index {}, not at {}",
                    msg.get_applied_index(),
                    index
                ),
            ));
        }
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(msg.get_pairs().len());
        for mut pair in msg.take_pairs().into_iter() {
            let key = pair.take_key();
            if let Some((last, _)) = pairs.last() {
                if *last >= key {
                    return Err(Error::decode(
                        WHAT,
                        "the keys are not in strictly increasing order",
                    ));
                }
            }
            pairs.push((key, pair.take_value()));
        }
        let mut sessions: Vec<Session> = Vec::with_capacity(msg.get_sessions().len());
        for session in msg.get_sessions() {
            let session = session_from_proto(session);
            if let Some(last) = sessions.last() {
                if last.client_id >= session.client_id {
                    return Err(Error::decode(
                        WHAT,
                        "the client ids are not in strictly increasing order",
                    ));
                }
            }
            sessions.push(session);
        }
        Ok(SnapshotData {
            applied_index: index,
            pairs,
            sessions,
        })
    }
}

/// Writes a generated message. Writing a fully built proto3 message to a
/// vector cannot fail (no required fields, no I/O); should the library ever
/// report an error, the bytes written so far are returned, which the
/// reader then refuses.
fn write_message(msg: &impl Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.compute_size() as usize);
    // Ignoring the error is deliberate: see above.
    let _ = msg.write_to_vec(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trip() {
        let cmds = [
            KvCommand::put(b"k".to_vec(), b"v".to_vec()),
            KvCommand::put(Vec::new(), Vec::new()),
            KvCommand::delete(b"k".to_vec()),
            KvCommand::cas(b"k".to_vec(), None, None),
            KvCommand::cas(b"k".to_vec(), Some(Vec::new()), Some(b"x".to_vec())),
            KvCommand::cas(b"k".to_vec(), Some(b"a".to_vec()), None),
        ];
        for cmd in cmds {
            assert_eq!(KvCommand::decode(&cmd.encode()), Ok(cmd));
        }
    }

    #[test]
    fn bad_commands_are_refused() {
        assert!(matches!(KvCommand::decode(&[]), Err(Error::Decode { .. })));
        assert!(matches!(
            KvCommand::decode(&[0xff, 0xff, 0xff]),
            Err(Error::Decode { .. })
        ));
    }

    #[test]
    fn response_round_trip() {
        let responses = [
            KvResponse::default(),
            KvResponse {
                ok: true,
                previous: Some(Vec::new()),
                error: None,
            },
            KvResponse {
                ok: false,
                previous: Some(b"p".to_vec()),
                error: Some("bad".into()),
            },
        ];
        for r in responses {
            assert_eq!(KvResponse::decode(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn snapshot_checks() {
        let data = SnapshotData {
            applied_index: 7,
            pairs: vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), Vec::new())],
            sessions: vec![Session {
                client_id: 3,
                last_sequence: 2,
                last_response: vec![1],
                last_active_ms: 9,
            }],
        };
        let bytes = data.encode();
        assert_eq!(SnapshotData::decode(7, &bytes), Ok(data));
        assert!(SnapshotData::decode(8, &bytes).is_err());
        assert!(SnapshotData::decode(0, &[]).is_err());
        let dup = SnapshotData {
            applied_index: 1,
            pairs: vec![(b"a".to_vec(), Vec::new()), (b"a".to_vec(), Vec::new())],
            sessions: Vec::new(),
        };
        assert!(SnapshotData::decode(1, &dup.encode()).is_err());
    }
}
