//! What the client server does with each request: checks it, then answers
//! at once (status, a refusal), hands it to the node with a completion (a
//! write, a read, a registration), or runs it on a thread of its own when
//! it waits long (a switchover, maintenance, a membership change, a
//! backup).

use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::info;

use super::convert::{busy, error_to_proto, invalid, status_to_proto, too_large, write_to_proto};
use super::server::{Answer, Ctx, HeldBackup, BACKUP_CHUNK_BYTES, MAX_BACKUPS_HELD};
use crate::proto::client as pb;
use crate::proto::client::Request_oneof_body as Req;
use crate::proto::client::Response_oneof_body as Resp;
use crate::state::{KvCommand, KvResponse, KvStateMachine};
use crate::{Applied, Error, Result};

/// Room kept in a backup answer for everything but the chunk's bytes (the
/// response's and the chunk's other fields take well under this).
const BACKUP_CHUNK_OVERHEAD: usize = 256;

/// A result whose error is the API error to answer with (boxed: it is
/// large).
type Refusable<T> = std::result::Result<T, Box<pb::ApiError>>;

/// How a request is answered.
pub(super) enum Dispatch {
    /// At once.
    Now(Box<Resp>),
    /// Later, through the server's completions (`tell` was handed on).
    Later,
    /// On a thread that may block: see [`answer_blocking`].
    Blocking(Req),
}

/// Sends a request's outcome back to the server's loop.
pub(super) type Tell = Box<dyn FnOnce(Answer) + Send>;

/// Checks `bytes` (a key, a prefix or a value, named `what`) against the
/// limit named `limit_name`.
fn check_size(what: &str, bytes: &[u8], limit_name: &str, limit: usize) -> Refusable<()> {
    if bytes.len() > limit {
        return Err(Box::new(too_large(
            format!("{what} ({limit_name})"),
            bytes.len() as u64,
            limit,
        )));
    }
    Ok(())
}

/// Checks a key (or prefix) against `max_key_bytes`.
fn check_key<S>(ctx: &Ctx<S>, what: &str, key: &[u8]) -> Refusable<()> {
    check_size(what, key, "max_key_bytes", ctx.limits.max_key_bytes)
}

/// Checks a value against `max_value_bytes`.
fn check_value<S>(ctx: &Ctx<S>, what: &str, value: &[u8]) -> Refusable<()> {
    check_size(what, value, "max_value_bytes", ctx.limits.max_value_bytes)
}

/// Starts answering `body`; `tell` is used only by [`Dispatch::Later`].
pub(super) fn dispatch<S: KvStateMachine>(ctx: &Ctx<S>, body: Req, tell: Tell) -> Dispatch {
    match start(ctx, body, tell) {
        Ok(d) => d,
        Err(err) => Dispatch::Now(Box::new(Resp::error(*err))),
    }
}

fn start<S: KvStateMachine>(ctx: &Ctx<S>, body: Req, tell: Tell) -> Refusable<Dispatch> {
    let node = &ctx.node;
    match body {
        Req::register(_) => {
            node.register_then(Box::new(move |id| tell(Answer::Registered(id))));
            Ok(Dispatch::Later)
        }
        Req::put(mut p) => {
            check_key(ctx, "key", p.get_key())?;
            check_value(ctx, "value", p.get_value())?;
            let cmd = KvCommand::put(p.take_key(), p.take_value());
            propose(ctx, p.get_id(), cmd, tell)
        }
        Req::delete(mut d) => {
            check_key(ctx, "key", d.get_key())?;
            let cmd = KvCommand::delete(d.take_key());
            propose(ctx, d.get_id(), cmd, tell)
        }
        Req::cas(mut c) => {
            check_key(ctx, "key", c.get_key())?;
            check_value(ctx, "expected value", c.get_expected())?;
            check_value(ctx, "new value", c.get_new_value())?;
            if c.get_expected_absent() && !c.get_expected().is_empty() {
                return Err(Box::new(invalid(
                    "cas",
                    "both an expected value and expected_absent are set",
                )));
            }
            if c.get_delete() && !c.get_new_value().is_empty() {
                return Err(Box::new(invalid(
                    "cas",
                    "both a new value and delete are set",
                )));
            }
            let expected = (!c.get_expected_absent()).then(|| c.take_expected());
            let new = (!c.get_delete()).then(|| c.take_new_value());
            let cmd = KvCommand::cas(c.take_key(), expected, new);
            propose(ctx, c.get_id(), cmd, tell)
        }
        Req::get(mut g) => {
            check_key(ctx, "key", g.get_key())?;
            let key = g.take_key();
            node.read_then(
                move |kv| kv.get(&key),
                Box::new(move |value| tell(Answer::Value(value.and_then(|v| v)))),
            );
            Ok(Dispatch::Later)
        }
        Req::scan(mut s) => {
            check_key(ctx, "prefix", s.get_prefix())?;
            let prefix = s.take_prefix();
            node.read_then(
                move |kv| kv.scan(&prefix),
                Box::new(move |pairs| tell(Answer::Pairs(pairs.and_then(|p| p)))),
            );
            Ok(Dispatch::Later)
        }
        Req::status(_) => Ok(Dispatch::Now(Box::new(Resp::status(status_to_proto(
            &node.status(),
            &ctx.peers_api,
        ))))),
        body @ (Req::switchover(_)
        | Req::maintenance(_)
        | Req::membership(_)
        | Req::backup(_)
        | Req::alarm_disarm(_)) => Ok(Dispatch::Blocking(body)),
    }
}

/// Proposes a write (exactly-once when it carries a session).
fn propose<S: KvStateMachine>(
    ctx: &Ctx<S>,
    id: &pb::WriteId,
    cmd: KvCommand,
    tell: Tell,
) -> Refusable<Dispatch> {
    let session = if id.get_client_id() == 0 {
        None
    } else {
        if id.get_sequence() == 0 {
            return Err(Box::new(invalid("sequence", "sequences start at 1")));
        }
        Some((id.get_client_id(), id.get_sequence()))
    };
    let started = Instant::now();
    ctx.node.propose_then(
        cmd.encode(),
        session,
        Box::new(move |applied| tell(Answer::Write { applied, started })),
    );
    Ok(Dispatch::Later)
}

/// The answer to an outcome that came back through the completions.
pub(super) fn finish<S>(ctx: &Ctx<S>, answer: Answer) -> Resp {
    let api = |e: Error| Resp::error(error_to_proto(&e, &ctx.peers_api));
    match answer {
        Answer::Write { applied, started } => match written(applied) {
            Ok((index, response)) => {
                if let Some(observe) = &ctx.observer {
                    observe(started.elapsed());
                }
                Resp::write(write_to_proto(index, response))
            }
            Err(e) => api(e),
        },
        Answer::Registered(Ok(client_id)) => {
            let mut r = pb::Registered::new();
            r.set_client_id(client_id);
            Resp::registered(r)
        }
        Answer::Registered(Err(e)) => api(e),
        Answer::Value(Ok(value)) => {
            let mut v = pb::Value::new();
            if let Some(value) = value {
                v.set_found(true);
                v.set_value(value);
            }
            Resp::value(v)
        }
        Answer::Value(Err(e)) => api(e),
        Answer::Pairs(Ok(pairs)) => scan_answer(ctx, pairs),
        Answer::Pairs(Err(e)) => api(e),
        // Handled by the loop (it gives the backup back to its connection).
        Answer::Done(done) => done.0,
    }
}

fn written(applied: Result<Applied>) -> Result<(u64, KvResponse)> {
    let applied = applied?;
    Ok((applied.index, KvResponse::decode(&applied.response)?))
}

fn scan_answer<S>(ctx: &Ctx<S>, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Resp {
    // Refuse before building an answer that cannot be sent (each pair
    // costs its bytes plus a few bytes of framing).
    let size: u64 = pairs
        .iter()
        .map(|(k, v)| k.len() as u64 + v.len() as u64 + 16)
        .sum();
    let limit = ctx.limits.max_response_bytes;
    if size > limit as u64 {
        return Resp::error(too_large(
            "scan result (max_response_bytes)".into(),
            size,
            limit,
        ));
    }
    let mut out = pb::Pairs::new();
    for (key, value) in pairs {
        let mut p = pb::Pair::new();
        p.set_key(key);
        p.set_value(value);
        out.mut_pairs().push(p);
    }
    Resp::pairs(out)
}

/// Answers a request that may wait long, on the calling thread; `held` is
/// the connection's backup in progress.
pub(super) fn answer_blocking<S: KvStateMachine>(
    ctx: &Ctx<S>,
    body: Req,
    held: &mut Option<HeldBackup>,
) -> Resp {
    let node = &ctx.node;
    let api = |e: Error| Box::new(error_to_proto(&e, &ctx.peers_api));
    let answered: Refusable<Resp> = match body {
        Req::switchover(_) => node.switchover().map_err(api).map(|pause| {
            let mut r = pb::SwitchoverDone::new();
            r.set_pause_ms(u64::try_from(pause.as_millis()).unwrap_or(u64::MAX));
            Resp::switchover(r)
        }),
        Req::maintenance(m) => node
            .set_maintenance(m.get_on())
            .map_err(api)
            .map(|()| Resp::done(pb::Done::new())),
        Req::membership(m) => node
            .change_membership(super::convert::membership_from_proto(&m))
            .map_err(api)
            .map(|()| Resp::done(pb::Done::new())),
        Req::alarm_disarm(_) => node
            .disarm_alarms()
            .map_err(api)
            .map(|()| Resp::done(pb::Done::new())),
        Req::backup(b) => backup_chunk(ctx, &b, held),
        // dispatch() sends nothing else here.
        _ => Err(Box::new(invalid("request", "not a long-running operation"))),
    };
    match answered {
        Ok(body) => body,
        Err(err) => Resp::error(*err),
    }
}

/// Answers a backup request: takes the snapshot (on `start`), then the
/// chunk at the requested offset.
fn backup_chunk<S: KvStateMachine>(
    ctx: &Ctx<S>,
    req: &pb::BackupRequest,
    held: &mut Option<HeldBackup>,
) -> Refusable<Resp> {
    if req.get_start() {
        // A new start replaces the connection's snapshot (and its slot).
        *held = None;
        *held = Some(take_backup(ctx)?);
    }
    let Some(backup) = held.as_ref() else {
        return Err(Box::new(invalid(
            "backup",
            "no backup is in progress on this connection (the connection that \
             started it was closed, or its last chunk was sent): start a new one",
        )));
    };
    let len = backup.data.len();
    let offset = if req.get_start() { 0 } else { req.get_offset() };
    let from = match usize::try_from(offset) {
        Ok(from) if from <= len => from,
        _ => {
            return Err(Box::new(invalid(
                "backup offset",
                format!("offset {offset} is beyond the snapshot's {len} bytes"),
            )))
        }
    };
    // Every answer stays under max_response_bytes and under what the
    // client takes; at least one byte, so a transfer always advances.
    let mut chunk = BACKUP_CHUNK_BYTES.min(
        ctx.limits
            .max_response_bytes
            .saturating_sub(BACKUP_CHUNK_OVERHEAD),
    );
    if req.get_max_chunk_bytes() > 0 {
        chunk = chunk.min(usize::try_from(req.get_max_chunk_bytes()).unwrap_or(usize::MAX));
    }
    let to = from + chunk.max(1).min(len - from);
    let mut out = backup.description.clone();
    out.set_offset(offset);
    out.set_data(backup.data[from..to].to_vec());
    if to == len {
        // The last chunk: free the copy now rather than at disconnect.
        *held = None;
    }
    Ok(Resp::backup(out))
}

/// Takes a snapshot for a backup: a linearizable read on the active, so
/// the state covers every write acknowledged before the request, read off
/// the raft thread (`Node::read_snapshot`).
fn take_backup<S: KvStateMachine>(ctx: &Ctx<S>) -> Refusable<HeldBackup> {
    let member = ctx.node.id();
    let held_now = ctx.shared.backups_held.fetch_add(1, Ordering::SeqCst);
    // From here the slot is given back on every path (its drop).
    let slot = super::server::BackupSlot(ctx.shared.clone());
    if held_now >= MAX_BACKUPS_HELD {
        return Err(Box::new(busy(
            "backups in progress (MAX_BACKUPS_HELD)",
            MAX_BACKUPS_HELD,
            format!(
                "{MAX_BACKUPS_HELD} backups are in progress on member {member} (the limit); retry later"
            ),
        )));
    }
    let started = Instant::now();
    let snapshot = ctx
        .node
        .read_snapshot()
        .map_err(|e| error_to_proto(&e, &ctx.peers_api))?;
    let (index, term, data) = (snapshot.index, snapshot.term, snapshot.state);
    info!(
        member,
        index,
        bytes = data.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "snapshot taken for a backup"
    );
    let mut description = pb::BackupChunk::new();
    description.set_cluster_id(ctx.cluster_id);
    description.set_member_id(member);
    description.set_index(index);
    description.set_term(term);
    description.set_total_bytes(data.len() as u64);
    description.set_data_crc32(crc32fast::hash(&data));
    Ok(HeldBackup {
        description,
        data,
        _slot: slot,
    })
}
