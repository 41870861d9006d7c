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

use protobuf::wire_format::WireType;
use protobuf::{CodedInputStream, CodedOutputStream, Message, ProtobufResult, UnknownFields};

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
    /// Whether the encoded command only removes (a delete, or a
    /// compare-and-swap to absent): see [`crate::state::StateMachine::frees_space`].
    /// Bytes that do not decode take no space either (they are refused at
    /// apply), but are not let through: `false`.
    pub fn frees_space(bytes: &[u8]) -> bool {
        matches!(
            KvCommand::decode(bytes),
            Ok(KvCommand::Delete { .. } | KvCommand::Cas { new: None, .. })
        )
    }

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
    /// The snapshot's wire form (the stores write theirs with
    /// [`SnapshotEncoder`] from their rows).
    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = SnapshotEncoder::new(self.applied_index);
        for (key, value) in &self.pairs {
            out.pair(key, value);
        }
        out.finish(&self.sessions)
    }

    /// Decodes a snapshot that must have been taken at `index`; the checks
    /// are [`SnapshotView::decode`]'s.
    pub fn decode(index: u64, bytes: &[u8]) -> Result<Self> {
        let view = SnapshotView::decode(index, bytes)?;
        Ok(SnapshotData {
            applied_index: view.applied_index,
            pairs: view
                .pairs
                .into_iter()
                .map(|(key, value)| (key.to_vec(), value.to_vec()))
                .collect(),
            sessions: view.sessions,
        })
    }
}

/// Writes a `KvSnapshot` (the proto) field by field with protobuf's own
/// encoder, straight from a store's rows: no message holding the whole
/// state is built, so the bytes are the only copy of the state (building
/// the message and then writing it meant three copies of 64 MiB in fresh
/// memory: about 0.11 s of a 0.17 s snapshot). The bytes are exactly what
/// the generated `KvSnapshot::write_to_bytes` writes.
pub(crate) struct SnapshotEncoder {
    out: Vec<u8>,
}

impl SnapshotEncoder {
    /// Starts a snapshot taken at `applied_index`.
    pub fn new(applied_index: u64) -> Self {
        let mut encoder = SnapshotEncoder { out: Vec::new() };
        // proto3 leaves default values out, as the generated code does.
        if applied_index != 0 {
            encoder.write(|os| os.write_uint64(1, applied_index));
        }
        encoder
    }

    /// Adds a pair; pairs must come in strictly increasing key order (the
    /// reader refuses others).
    pub fn pair(&mut self, key: &[u8], value: &[u8]) {
        let mut len = 0;
        if !key.is_empty() {
            len += protobuf::rt::bytes_size(1, key);
        }
        if !value.is_empty() {
            len += protobuf::rt::bytes_size(2, value);
        }
        self.write(|os| {
            os.write_tag(2, WireType::WireTypeLengthDelimited)?;
            os.write_raw_varint32(len)?;
            if !key.is_empty() {
                os.write_bytes(1, key)?;
            }
            if !value.is_empty() {
                os.write_bytes(2, value)?;
            }
            Ok(())
        });
    }

    /// Adds the sessions (in strictly increasing client id order) and
    /// returns the snapshot's bytes.
    pub fn finish(mut self, sessions: &[Session]) -> Vec<u8> {
        for session in sessions {
            let msg = session_to_proto(session);
            self.write(|os| os.write_message(3, &msg));
        }
        self.out
    }

    fn write(&mut self, f: impl FnOnce(&mut CodedOutputStream) -> ProtobufResult<()>) {
        let mut os = CodedOutputStream::vec(&mut self.out);
        // Writing to a vector cannot fail (see `write_message`); an error
        // would leave bytes that the reader refuses.
        let _ = f(&mut os).and_then(|()| os.flush());
    }
}

/// A decoded key-value snapshot whose keys and values are borrowed from
/// its bytes: checking a received snapshot copies nothing, and restoring
/// one copies each value once, into the store.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SnapshotView<'a> {
    /// The applied index the snapshot was taken at.
    pub applied_index: u64,
    /// Every pair, in strictly increasing key order.
    pub pairs: Vec<(&'a [u8], &'a [u8])>,
    /// Every session, in strictly increasing client id order.
    pub sessions: Vec<Session>,
}

impl<'a> SnapshotView<'a> {
    /// Decodes a snapshot that must have been taken at `index`.
    ///
    /// Refused with [`Error::Decode`]: empty bytes or an index of 0 (a
    /// snapshot with no state), bytes that are not a `KvSnapshot`, an
    /// applied index other than `index`, keys or client ids that are not in
    /// strictly increasing order (duplicates).
    ///
    /// The bytes are read with protobuf's decoder one field at a time, as
    /// the generated `KvSnapshot` parser reads them (same fields, wire
    /// types, unknown fields skipped, the last of a repeated scalar kept):
    /// `decoding_agrees_with_the_generated_parser` holds the two together.
    pub fn decode(index: u64, bytes: &'a [u8]) -> Result<Self> {
        if bytes.is_empty() {
            return Err(Error::decode(
                SNAPSHOT,
                "the snapshot is empty (it holds no state)",
            ));
        }
        if index == 0 {
            return Err(Error::decode(
                SNAPSHOT,
                "a snapshot at index 0 holds no state",
            ));
        }
        let wire = |e: protobuf::ProtobufError| Error::decode(SNAPSHOT, e);
        let mut reader = WireReader::new(bytes);
        let mut view = SnapshotView {
            applied_index: 0,
            pairs: Vec::new(),
            sessions: Vec::new(),
        };
        while !reader.at_end() {
            let (field, wire_type) = reader.tag().map_err(wire)?;
            match field {
                1 => {
                    expect_wire_type(wire_type, WireType::WireTypeVarint).map_err(wire)?;
                    view.applied_index = reader.read(|is| is.read_uint64()).map_err(wire)?;
                }
                2 => {
                    expect_wire_type(wire_type, WireType::WireTypeLengthDelimited).map_err(wire)?;
                    let bytes = reader.message().map_err(wire)?;
                    let (key, value) = decode_pair(bytes).map_err(wire)?;
                    if let Some((last, _)) = view.pairs.last() {
                        if *last >= key {
                            return Err(Error::decode(
                                SNAPSHOT,
                                "the keys are not in strictly increasing order",
                            ));
                        }
                    }
                    view.pairs.push((key, value));
                }
                3 => {
                    expect_wire_type(wire_type, WireType::WireTypeLengthDelimited).map_err(wire)?;
                    let bytes = reader.message().map_err(wire)?;
                    let session = proto::Session::parse_from_bytes(bytes).map_err(wire)?;
                    let session = session_from_proto(&session);
                    if let Some(last) = view.sessions.last() {
                        if last.client_id >= session.client_id {
                            return Err(Error::decode(
                                SNAPSHOT,
                                "the client ids are not in strictly increasing order",
                            ));
                        }
                    }
                    view.sessions.push(session);
                }
                _ => reader.skip(field, wire_type).map_err(wire)?,
            }
        }
        if view.applied_index != index {
            return Err(Error::decode(
                SNAPSHOT,
                format!(
                    "the snapshot was taken at applied index {}, not at {}",
                    view.applied_index, index
                ),
            ));
        }
        Ok(view)
    }
}

const SNAPSHOT: &str = "kv snapshot";

/// Decodes a `KvPair` (the last key and the last value win, as in the
/// generated parser), borrowing both.
fn decode_pair(bytes: &[u8]) -> ProtobufResult<(&[u8], &[u8])> {
    let mut reader = WireReader::new(bytes);
    let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
    while !reader.at_end() {
        let (field, wire_type) = reader.tag()?;
        match field {
            1 | 2 => {
                expect_wire_type(wire_type, WireType::WireTypeLengthDelimited)?;
                // A bytes field's length is read as a 32-bit varint, as
                // `CodedInputStream::read_bytes` does.
                let len = reader.read(|is| is.read_raw_varint32())?;
                let bytes = reader.take(u64::from(len))?;
                if field == 1 {
                    key = bytes;
                } else {
                    value = bytes;
                }
            }
            _ => reader.skip(field, wire_type)?,
        }
    }
    Ok((key, value))
}

fn expect_wire_type(found: WireType, expected: WireType) -> ProtobufResult<()> {
    if found == expected {
        Ok(())
    } else {
        Err(protobuf::rt::unexpected_wire_type(found))
    }
}

/// A position in a message's bytes. Tags, varints and unknown fields are
/// read by protobuf's decoder on the rest of the bytes; lengths of bytes
/// and messages are taken as slices of them, so nothing is copied.
struct WireReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> WireReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        WireReader { bytes, at: 0 }
    }

    fn at_end(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// Runs one read of protobuf's decoder at the current position and
    /// moves past what it read.
    fn read<T>(
        &mut self,
        f: impl FnOnce(&mut CodedInputStream) -> ProtobufResult<T>,
    ) -> ProtobufResult<T> {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        let mut is = CodedInputStream::from_bytes(rest);
        let value = f(&mut is)?;
        // The decoder read at most `rest`: `at` stays within the bytes.
        self.at += usize::try_from(is.pos())
            .unwrap_or(rest.len())
            .min(rest.len());
        Ok(value)
    }

    fn tag(&mut self) -> ProtobufResult<(u32, WireType)> {
        self.read(|is| is.read_tag_unpack())
    }

    /// A length-delimited message: its length is read as a 64-bit varint,
    /// as `CodedInputStream::merge_message` does.
    ///
    /// A message whose length runs past the end of the bytes is refused
    /// (`TruncatedMessage`). The generated parser of protobuf 2 accepts one
    /// that ends with the bytes (it stops at the end of the input before
    /// the message's length): a snapshot cut short there would lose its
    /// last pairs unnoticed.
    fn message(&mut self) -> ProtobufResult<&'a [u8]> {
        let len = self.read(|is| is.read_raw_varint64())?;
        self.take(len).map_err(|_| {
            protobuf::ProtobufError::WireError(protobuf::error::WireError::TruncatedMessage)
        })
    }

    /// The next `len` bytes.
    fn take(&mut self, len: u64) -> ProtobufResult<&'a [u8]> {
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.at.checked_add(len))
            .filter(|end| *end <= self.bytes.len())
            .ok_or(protobuf::ProtobufError::WireError(
                protobuf::error::WireError::UnexpectedEof,
            ))?;
        let bytes = &self.bytes[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    /// Skips an unknown field as the generated parsers do (a group is
    /// skipped to its end; a field of another wire type is read whole).
    fn skip(&mut self, field: u32, wire_type: WireType) -> ProtobufResult<()> {
        if wire_type == WireType::WireTypeLengthDelimited {
            // Read as `read_unknown` does (a 32-bit length), without the copy.
            let len = self.read(|is| is.read_raw_varint32())?;
            return self.take(u64::from(len)).map(|_| ());
        }
        self.read(|is| {
            protobuf::rt::read_unknown_or_skip_group(
                field,
                wire_type,
                is,
                &mut UnknownFields::new(),
            )
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
    use proptest::prelude::*;

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

    #[test]
    fn a_snapshot_cut_inside_its_last_pair_is_refused() {
        let data = SnapshotData {
            applied_index: 5,
            pairs: vec![(b"a".to_vec(), vec![1; 40]), (b"b".to_vec(), vec![2; 40])],
            sessions: Vec::new(),
        };
        let bytes = data.encode();
        // Cut where the last pair's value field starts (tag, length, 40 bytes).
        let cut = &bytes[..bytes.len() - 42];
        // protobuf 2's generated parser takes the cut pair as a whole one,
        // with an empty value.
        let lenient = generated_decode(5, cut).expect("the generated parser accepts it");
        assert_eq!(lenient.pairs[1], (b"b".to_vec(), Vec::new()));
        let refused = SnapshotData::decode(5, cut).expect_err("a cut snapshot is refused");
        assert!(
            refused.to_string().contains("truncated message"),
            "{refused}"
        );
    }

    /// The snapshot as the generated code writes it.
    fn generated_encode(data: &SnapshotData) -> Vec<u8> {
        let mut msg = proto::KvSnapshot::new();
        msg.set_applied_index(data.applied_index);
        for (key, value) in &data.pairs {
            let mut pair = proto::KvPair::new();
            pair.set_key(key.clone());
            pair.set_value(value.clone());
            msg.mut_pairs().push(pair);
        }
        for session in &data.sessions {
            msg.mut_sessions().push(session_to_proto(session));
        }
        msg.write_to_bytes().expect("a built message encodes")
    }

    /// The snapshot as the generated parser reads it, with the same checks
    /// as `SnapshotView::decode`. `None`: refused.
    fn generated_decode(index: u64, bytes: &[u8]) -> Option<SnapshotData> {
        if bytes.is_empty() || index == 0 {
            return None;
        }
        let msg = proto::KvSnapshot::parse_from_bytes(bytes).ok()?;
        let pairs: Vec<_> = msg
            .get_pairs()
            .iter()
            .map(|p| (p.get_key().to_vec(), p.get_value().to_vec()))
            .collect();
        let sessions: Vec<_> = msg.get_sessions().iter().map(session_from_proto).collect();
        let increasing = pairs.windows(2).all(|w| w[0].0 < w[1].0)
            && sessions.windows(2).all(|w| w[0].client_id < w[1].client_id);
        (msg.get_applied_index() == index && increasing).then_some(SnapshotData {
            applied_index: index,
            pairs,
            sessions,
        })
    }

    fn snapshot_data() -> impl Strategy<Value = SnapshotData> {
        let pairs = proptest::collection::btree_map(
            proptest::collection::vec(any::<u8>(), 0..6),
            proptest::collection::vec(any::<u8>(), 0..300),
            0..6,
        );
        let sessions = proptest::collection::btree_map(
            any::<u64>(),
            (
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..4),
                any::<u64>(),
            ),
            0..3,
        );
        (1..u64::MAX, pairs, sessions).prop_map(|(applied_index, pairs, sessions)| SnapshotData {
            applied_index,
            pairs: pairs.into_iter().collect(),
            sessions: sessions
                .into_iter()
                .map(
                    |(client_id, (last_sequence, last_response, last_active_ms))| Session {
                        client_id,
                        last_sequence,
                        last_response,
                        last_active_ms,
                    },
                )
                .collect(),
        })
    }

    /// A valid snapshot's bytes, damaged: a byte changed, bytes cut off at
    /// the end, or bytes put in.
    fn damaged(bytes: Vec<u8>, at: usize, byte: u8, how: u8) -> Vec<u8> {
        let mut bytes = bytes;
        let at = at % (bytes.len() + 1);
        match how % 3 {
            0 if at < bytes.len() => bytes[at] = byte,
            1 => bytes.truncate(at),
            _ => bytes.insert(at, byte),
        }
        bytes
    }

    fn varint(mut n: u64, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    /// One field of the number and wire type given (any, valid or not),
    /// with a payload that suits its wire type.
    fn field(field: u64, wire_type: u64, n: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(field << 3 | wire_type, &mut out);
        match wire_type {
            0 => varint(n, &mut out),
            1 => out.extend_from_slice(&n.to_le_bytes()),
            2 => {
                varint(payload.len() as u64, &mut out);
                out.extend_from_slice(payload);
            }
            // A group: empty, closed by its end tag.
            3 => varint(field << 3 | 4, &mut out),
            5 => out.extend_from_slice(&n.to_le_bytes()[..4]),
            _ => {}
        }
        out
    }

    fn payload() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..6)
    }

    /// Small numbers read as lengths and indexes that fit.
    fn small_or_any() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..4, any::<u64>()]
    }

    /// Any field at all: numbers 0 to 7, wire types 0 to 7.
    fn any_field() -> impl Strategy<Value = Vec<u8>> {
        (0u64..8, 0u64..8, small_or_any(), payload()).prop_map(|(f, w, n, p)| field(f, w, n, &p))
    }

    /// A well-formed field unknown to `KvSnapshot` and `KvPair`.
    fn unknown_field() -> impl Strategy<Value = Vec<u8>> {
        (
            4u64..8,
            prop::sample::select(vec![0u64, 1, 2, 3, 5]),
            small_or_any(),
            payload(),
        )
            .prop_map(|(f, w, n, p)| field(f, w, n, &p))
    }

    /// Messages built field by field, mostly well formed: applied indexes,
    /// pairs of keys, values and unknown fields (a few pairs declaring a
    /// wrong length), unknown fields, and now and then any field at all.
    fn any_fields() -> impl Strategy<Value = Vec<u8>> {
        let pair_field = prop_oneof![
            4 => payload().prop_map(|p| field(1, 2, 0, &p)),
            4 => payload().prop_map(|p| field(2, 2, 0, &p)),
            2 => unknown_field(),
            1 => any_field(),
        ];
        let pair = (proptest::collection::vec(pair_field, 0..4), -2i64..3, 0..4).prop_map(
            |(fields, skew, exact)| {
                let body = fields.concat();
                let len = body.len() as i64 + if exact > 0 { 0 } else { skew };
                let mut out = vec![0x12];
                varint(len.max(0) as u64, &mut out);
                out.extend_from_slice(&body);
                out
            },
        );
        let top_field = prop_oneof![
            3 => pair,
            2 => (1u64..3).prop_map(|n| field(1, 0, n, &[])),
            1 => unknown_field(),
            1 => any_field(),
        ];
        proptest::collection::vec(top_field, 0..5).prop_map(|f| f.concat())
    }

    /// Our decoder accepts what the generated parser accepts, with the same
    /// result, and refuses what it refuses, with one difference: a message
    /// cut short by the end of the bytes (see `WireReader::message`).
    fn agrees_with_the_generated_parser(
        index: u64,
        bytes: &[u8],
    ) -> std::result::Result<(), proptest::test_runner::TestCaseError> {
        match (
            SnapshotData::decode(index, bytes),
            generated_decode(index, bytes),
        ) {
            (Ok(ours), theirs) => prop_assert_eq!(Some(ours), theirs, "bytes {:?}", bytes),
            (Err(_), None) => {}
            (Err(e), Some(_)) => prop_assert!(
                e.to_string().contains("truncated message"),
                "refused {:?}: {}",
                bytes,
                e
            ),
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn field_by_field_decoding_agrees_with_the_generated_parser(bytes in any_fields()) {
            // The index the generated parser finds, so that both can accept.
            let index = proto::KvSnapshot::parse_from_bytes(&bytes)
                .map_or(1, |m| m.get_applied_index().max(1));
            agrees_with_the_generated_parser(index, &bytes)?;
        }

        #[test]
        fn encoding_is_the_generated_encoding(data in snapshot_data()) {
            prop_assert_eq!(data.encode(), generated_encode(&data));
        }

        #[test]
        fn decoding_agrees_with_the_generated_parser(
            data in snapshot_data(),
            at in any::<usize>(),
            // Small bytes are the tags (fields 1 to 3, every wire type) and
            // the lengths of short fields.
            byte in prop_oneof![any::<u8>(), 0u8..0x20],
            how in any::<u8>(),
            noise in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let index = data.applied_index;
            let bytes = data.encode();
            prop_assert_eq!(SnapshotData::decode(index, &bytes).ok(), Some(data));
            // Noise after valid bytes: unknown fields, or a field read again.
            let appended = [bytes.clone(), noise.clone()].concat();
            for bytes in [damaged(bytes, at, byte, how), appended, noise] {
                agrees_with_the_generated_parser(index, &bytes)?;
            }
        }
    }
}
