//! The payload of the raft entries aoc-core writes, and the context that
//! ties an entry to the proposal that created it.

use protobuf::Message as _;

use crate::proto::{EntryKind, EntryPayload};
use crate::{Error, Result};

/// What an entry asks of the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Payload {
    /// A command, with an optional client session (client id, sequence).
    Command {
        session: Option<(u64, u64)>,
        stamp_ms: u64,
        command: Vec<u8>,
    },
    /// Opens a client session whose id is the entry's index.
    RegisterClient { stamp_ms: u64 },
    /// No effect (raft's empty entries and probes).
    Noop,
    /// Maintenance mode on (only `allowed` may stand) or off.
    Maintenance {
        on: bool,
        allowed: u64,
        stamp_ms: u64,
    },
    /// A data member's NOSPACE alarm raised (with its free bytes and
    /// reserve) or cleared; `member` 0 clears every alarm.
    Alarm {
        member: u64,
        on: bool,
        free_bytes: u64,
        reserve_bytes: u64,
        stamp_ms: u64,
    },
}

impl Payload {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut p = EntryPayload::new();
        match self {
            Payload::Command {
                session,
                stamp_ms,
                command,
            } => {
                p.set_kind(EntryKind::COMMAND);
                if let Some((client, seq)) = session {
                    p.set_client_id(*client);
                    p.set_sequence(*seq);
                }
                p.set_stamp_ms(*stamp_ms);
                p.set_command(command.clone());
            }
            Payload::RegisterClient { stamp_ms } => {
                p.set_kind(EntryKind::REGISTER_CLIENT);
                p.set_stamp_ms(*stamp_ms);
            }
            Payload::Noop => p.set_kind(EntryKind::NOOP),
            Payload::Maintenance {
                on,
                allowed,
                stamp_ms,
            } => {
                p.set_kind(EntryKind::MAINTENANCE);
                p.set_maintenance_on(*on);
                p.set_maintenance_allowed(*allowed);
                p.set_stamp_ms(*stamp_ms);
            }
            Payload::Alarm {
                member,
                on,
                free_bytes,
                reserve_bytes,
                stamp_ms,
            } => {
                p.set_kind(EntryKind::ALARM);
                p.set_alarm_member(*member);
                p.set_alarm_on(*on);
                p.set_alarm_free_bytes(*free_bytes);
                p.set_alarm_reserve_bytes(*reserve_bytes);
                p.set_stamp_ms(*stamp_ms);
            }
        }
        // Writing a message into a Vec cannot fail.
        p.write_to_bytes().unwrap_or_default()
    }

    /// Decodes an entry's data; raft's own empty entries are `Noop`.
    pub(crate) fn decode(data: &[u8]) -> Result<Payload> {
        if data.is_empty() {
            return Ok(Payload::Noop);
        }
        let p = EntryPayload::parse_from_bytes(data).map_err(|e| Error::decode("entry", e))?;
        Ok(match p.get_kind() {
            EntryKind::COMMAND => Payload::Command {
                session: (p.get_client_id() != 0).then(|| (p.get_client_id(), p.get_sequence())),
                stamp_ms: p.get_stamp_ms(),
                command: p.command,
            },
            EntryKind::REGISTER_CLIENT => Payload::RegisterClient {
                stamp_ms: p.get_stamp_ms(),
            },
            EntryKind::NOOP => Payload::Noop,
            EntryKind::MAINTENANCE => Payload::Maintenance {
                on: p.get_maintenance_on(),
                allowed: p.get_maintenance_allowed(),
                stamp_ms: p.get_stamp_ms(),
            },
            EntryKind::ALARM => Payload::Alarm {
                member: p.get_alarm_member(),
                on: p.get_alarm_on(),
                free_bytes: p.get_alarm_free_bytes(),
                reserve_bytes: p.get_alarm_reserve_bytes(),
                stamp_ms: p.get_stamp_ms(),
            },
        })
    }
}

/// Entry context: the proposing member and its proposal token, so that the
/// proposer can complete the proposal when the entry is applied.
pub(crate) fn encode_context(member: u64, token: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&member.to_le_bytes());
    v.extend_from_slice(&token.to_le_bytes());
    v
}

pub(crate) fn decode_context(ctx: &[u8]) -> Option<(u64, u64)> {
    if ctx.len() != 16 {
        return None;
    }
    let member = u64::from_le_bytes(ctx[..8].try_into().ok()?);
    let token = u64::from_le_bytes(ctx[8..].try_into().ok()?);
    Some((member, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        for p in [
            Payload::Command {
                session: Some((7, 3)),
                stamp_ms: 99,
                command: b"x".to_vec(),
            },
            Payload::Command {
                session: None,
                stamp_ms: 1,
                command: vec![],
            },
            Payload::RegisterClient { stamp_ms: 5 },
            Payload::Noop,
            Payload::Maintenance {
                on: true,
                allowed: 2,
                stamp_ms: 9,
            },
            Payload::Alarm {
                member: 2,
                on: true,
                free_bytes: 1 << 20,
                reserve_bytes: 1 << 28,
                stamp_ms: 9,
            },
        ] {
            assert_eq!(Payload::decode(&p.encode()).unwrap(), p);
        }
        assert!(Payload::decode(&[0xff, 0xff, 0xff]).is_err());
        assert_eq!(decode_context(&encode_context(3, 9)), Some((3, 9)));
        assert_eq!(decode_context(b"short"), None);
    }
}
