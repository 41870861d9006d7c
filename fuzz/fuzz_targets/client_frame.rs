//! Feeds the client API arbitrary byte streams from both ends: a mix of raw
//! bytes, broken length prefixes and well-formed frames (requests of every
//! kind, responses of every kind) built from the fuzz input.
//!
//! - Server side: the request stream goes over a loopback connection to a
//!   real `ClientServer` in front of a standalone `Node` (on `MemLogStore`
//!   and `MemKv`, small key and value limits). Asserts: the server answers
//!   every complete frame in order, each answer a decodable `Response` with
//!   a body; the `request_id` of each answer is the request's, or 0 for a
//!   frame that is not a request or is over `max_frame_bytes` (after which
//!   nothing more is answered); the connection is closed once the client
//!   stopped sending; the server still answers a status request afterwards.
//! - Client side: `status_of` asks a fake member that answers with the
//!   response stream. Asserts: it returns (no panic, no hang), and a
//!   well-formed status or error answer becomes the status or error it
//!   describes.
//! - In-process: both streams are split with `frame::read_frame` and each
//!   body decoded as a `Request` and a `Response`; whatever decodes survives
//!   an encode/decode round trip.
#![no_main]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aoc_core::client::frame::{self, FrameError};
use aoc_core::client::{status_of, ClientOptions, ClientServer, ServerLimits};
use aoc_core::proto::client as pb;
use aoc_core::proto::client::Request_oneof_body as Req;
use aoc_core::proto::client::Response_oneof_body as Resp;
use aoc_core::state::MemKv;
use aoc_core::storage::MemLogStore;
use aoc_core::{Error, Node, ReplicaConfig};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

/// The server's limits: small, so that every limit is reachable.
const MAX_FRAME_BYTES: usize = 2048;
const MAX_KEY_BYTES: usize = 32;
const MAX_VALUE_BYTES: usize = 128;
const MAX_RESPONSE_BYTES: usize = 4096;
/// The client's limit on an answer frame.
const CLIENT_MAX_FRAME_BYTES: usize = 4096;
/// Longer than any answer of a healthy standalone member can take.
const WAIT: Duration = Duration::from_secs(20);

#[derive(Arbitrary, Debug)]
struct Input {
    requests: Vec<Piece<Op>>,
    answer: Vec<Piece<Answer>>,
}

/// One part of a byte stream.
#[derive(Arbitrary, Debug)]
enum Piece<T> {
    /// Bytes as they are, with no length prefix.
    Raw(Vec<u8>),
    /// A length prefix and the bytes as they are.
    Framed(Vec<u8>),
    /// A length prefix alone.
    Length(u32),
    /// A well-formed message in a frame.
    Message { id: u8, body: T },
}

#[derive(Arbitrary, Debug)]
enum Op {
    None,
    Register,
    Put {
        id: WriteId,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
    Delete {
        id: WriteId,
        key: Vec<u8>,
    },
    Cas {
        id: WriteId,
        key: Vec<u8>,
        expected: Vec<u8>,
        expected_absent: bool,
        new_value: Vec<u8>,
        delete: bool,
    },
    Scan {
        prefix: Vec<u8>,
    },
    Status,
    Switchover,
    Maintenance(bool),
}

#[derive(Arbitrary, Debug)]
struct WriteId {
    client_id: u8,
    sequence: u8,
}

#[derive(Arbitrary, Debug)]
enum Answer {
    None,
    Error {
        kind: u8,
        message: String,
        leader_id: u64,
        leader_addr: String,
        what: String,
        size: u64,
        limit: u64,
        client_id: u64,
    },
    Status {
        member_id: u64,
        role: u8,
        term: u64,
        leader: u64,
        leader_addr: String,
        commit: u64,
        last_index: u64,
        voters: Vec<u64>,
        mode: u8,
        flags: u8,
        waiting_for: String,
        progress: Vec<(u64, u64, String)>,
        numbers: [u64; 4],
    },
    Registered(u64),
    Write {
        index: u64,
        ok: bool,
        previous: Option<Vec<u8>>,
        error: String,
    },
    Value(Option<Vec<u8>>),
    Pairs(Vec<(Vec<u8>, Vec<u8>)>),
    Switchover(u64),
    Done,
}

fn write_id(id: &WriteId) -> pb::WriteId {
    let mut w = pb::WriteId::new();
    w.client_id = u64::from(id.client_id);
    w.sequence = u64::from(id.sequence);
    w
}

fn request(id: u8, op: &Op) -> pb::Request {
    let mut r = pb::Request::new();
    r.request_id = u64::from(id);
    r.body = match op {
        Op::None => None,
        Op::Register => Some(Req::register(pb::RegisterRequest::new())),
        Op::Put { id, key, value } => {
            let mut p = pb::PutRequest::new();
            p.set_id(write_id(id));
            p.key = key.clone();
            p.value = value.clone();
            Some(Req::put(p))
        }
        Op::Get { key } => {
            let mut g = pb::GetRequest::new();
            g.key = key.clone();
            Some(Req::get(g))
        }
        Op::Delete { id, key } => {
            let mut d = pb::DeleteRequest::new();
            d.set_id(write_id(id));
            d.key = key.clone();
            Some(Req::delete(d))
        }
        Op::Cas {
            id,
            key,
            expected,
            expected_absent,
            new_value,
            delete,
        } => {
            let mut c = pb::CasRequest::new();
            c.set_id(write_id(id));
            c.key = key.clone();
            c.expected = expected.clone();
            c.expected_absent = *expected_absent;
            c.new_value = new_value.clone();
            c.delete = *delete;
            Some(Req::cas(c))
        }
        Op::Scan { prefix } => {
            let mut s = pb::ScanRequest::new();
            s.prefix = prefix.clone();
            Some(Req::scan(s))
        }
        Op::Status => Some(Req::status(pb::StatusRequest::new())),
        Op::Switchover => Some(Req::switchover(pb::SwitchoverRequest::new())),
        Op::Maintenance(on) => {
            let mut m = pb::MaintenanceRequest::new();
            m.on = *on;
            Some(Req::maintenance(m))
        }
    };
    r
}

const KINDS: [pb::ErrorKind; 10] = [
    pb::ErrorKind::OTHER,
    pb::ErrorKind::NOT_LEADER,
    pb::ErrorKind::BUSY,
    pb::ErrorKind::TIMEOUT,
    pb::ErrorKind::SESSION_EXPIRED,
    pb::ErrorKind::TOO_LARGE,
    pb::ErrorKind::INVALID,
    pb::ErrorKind::STOPPED,
    pb::ErrorKind::STALE_SEQUENCE,
    pb::ErrorKind::STORAGE,
];
const ROLES: [pb::Role; 4] = [
    pb::Role::FOLLOWER,
    pb::Role::LEADER,
    pb::Role::CANDIDATE,
    pb::Role::PRE_CANDIDATE,
];
const MODES: [pb::Mode; 4] = [
    pb::Mode::STANDALONE,
    pb::Mode::MAJORITY,
    pb::Mode::SYNC,
    pb::Mode::DEGRADED,
];

fn response(id: u8, a: &Answer) -> pb::Response {
    let mut r = pb::Response::new();
    r.request_id = u64::from(id);
    r.body = match a {
        Answer::None => None,
        Answer::Error {
            kind,
            message,
            leader_id,
            leader_addr,
            what,
            size,
            limit,
            client_id,
        } => {
            let mut e = pb::ApiError::new();
            e.kind = KINDS[usize::from(*kind) % KINDS.len()];
            e.message = message.clone();
            e.leader_id = *leader_id;
            e.leader_addr = leader_addr.clone();
            e.what = what.clone();
            e.size = *size;
            e.limit = *limit;
            e.client_id = *client_id;
            e.sequence = size.wrapping_add(1);
            e.last_sequence = *limit;
            Some(Resp::error(e))
        }
        Answer::Status {
            member_id,
            role,
            term,
            leader,
            leader_addr,
            commit,
            last_index,
            voters,
            mode,
            flags,
            waiting_for,
            progress,
            numbers,
        } => {
            let mut s = pb::MemberStatus::new();
            s.member_id = *member_id;
            s.role = ROLES[usize::from(*role) % ROLES.len()];
            s.term = *term;
            s.leader = *leader;
            s.leader_addr = leader_addr.clone();
            s.commit = *commit;
            s.applied = numbers[0];
            s.first_index = numbers[1];
            s.last_index = *last_index;
            s.voters = voters.clone();
            s.sessions = numbers[2];
            s.active = flags & 1 != 0;
            s.mode = MODES[usize::from(*mode) % MODES.len()];
            s.witness = flags & 2 != 0;
            s.has_passive_lag_entries = flags & 4 != 0;
            s.passive_lag_entries = numbers[3];
            s.has_passive_lag_bytes = flags & 8 != 0;
            s.passive_lag_bytes = numbers[0];
            s.maintenance = flags & 16 != 0;
            s.maintenance_allowed = numbers[1];
            s.has_last_failover = flags & 32 != 0;
            s.last_failover_at_ms = numbers[2];
            s.has_witness_log = flags & 64 != 0;
            s.witness_log_entries = numbers[3];
            s.waiting_for = waiting_for.clone();
            for (id, matched, state) in progress {
                let mut p = pb::PeerProgress::new();
                p.id = *id;
                p.matched = *matched;
                p.next = matched.wrapping_add(1);
                p.state = state.clone();
                s.progress.push(p);
            }
            Some(Resp::status(s))
        }
        Answer::Registered(id) => {
            let mut g = pb::Registered::new();
            g.client_id = *id;
            Some(Resp::registered(g))
        }
        Answer::Write {
            index,
            ok,
            previous,
            error,
        } => {
            let mut w = pb::WriteResult::new();
            w.index = *index;
            w.ok = *ok;
            if let Some(p) = previous {
                w.had_previous = true;
                w.previous = p.clone();
            }
            w.error = error.clone();
            Some(Resp::write(w))
        }
        Answer::Value(v) => {
            let mut out = pb::Value::new();
            if let Some(v) = v {
                out.found = true;
                out.value = v.clone();
            }
            Some(Resp::value(out))
        }
        Answer::Pairs(pairs) => {
            let mut out = pb::Pairs::new();
            for (k, v) in pairs {
                let mut p = pb::Pair::new();
                p.key = k.clone();
                p.value = v.clone();
                out.pairs.push(p);
            }
            Some(Resp::pairs(out))
        }
        Answer::Switchover(ms) => {
            let mut s = pb::SwitchoverDone::new();
            s.pause_ms = *ms;
            Some(Resp::switchover(s))
        }
        Answer::Done => Some(Resp::done(pb::Done::new())),
    };
    r
}

fn stream<T>(pieces: &[Piece<T>], encode: impl Fn(u8, &T) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Raw(b) => out.extend_from_slice(b),
            Piece::Framed(b) => {
                out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                out.extend_from_slice(b);
            }
            Piece::Length(n) => out.extend_from_slice(&n.to_be_bytes()),
            Piece::Message { id, body } => {
                let body = encode(*id, body);
                out.extend_from_slice(&(body.len() as u32).to_be_bytes());
                out.extend_from_slice(&body);
            }
        }
    }
    out
}

/// The frames of `bytes` as the server reads them: the bodies, and whether
/// the stream then held a frame over `max`.
fn split(bytes: &[u8], max: usize) -> (Vec<Vec<u8>>, bool) {
    let mut r = bytes;
    let mut bodies = Vec::new();
    loop {
        match frame::read_frame(&mut r, max) {
            Ok(body) => {
                assert!(body.len() <= max);
                bodies.push(body);
            }
            Err(FrameError::TooLarge { size, limit }) => {
                assert!(size > limit as u64);
                return (bodies, true);
            }
            Err(FrameError::Closed) => return (bodies, false),
            Err(FrameError::Io(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
                return (bodies, false);
            }
        }
    }
}

fn round_trips(bodies: &[Vec<u8>]) {
    for body in bodies {
        if let Ok(req) = frame::decode::<pb::Request>(body) {
            let again: pb::Request = frame::decode(&frame::encode(&req)).expect("re-encoded");
            assert_eq!(req, again, "a request survives a round trip");
        }
        if let Ok(resp) = frame::decode::<pb::Response>(body) {
            let again: pb::Response = frame::decode(&frame::encode(&resp)).expect("re-encoded");
            assert_eq!(resp, again, "a response survives a round trip");
        }
    }
}

struct Harness {
    node: Node<MemKv>,
    server: ClientServer,
    fake: SocketAddr,
    answer: Arc<Mutex<Vec<u8>>>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let node = Node::builder(ReplicaConfig::new(1))
            .voters(vec![1])
            .tick(Duration::from_millis(10))
            .start(MemLogStore::new(), MemKv::new())
            .expect("a standalone node starts");
        let limits = ServerLimits {
            max_frame_bytes: MAX_FRAME_BYTES,
            max_response_bytes: MAX_RESPONSE_BYTES,
            max_key_bytes: MAX_KEY_BYTES,
            max_value_bytes: MAX_VALUE_BYTES,
            max_connections: 64,
            idle_timeout: Some(WAIT),
            ..ServerLimits::default()
        };
        let local: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let server = ClientServer::start(local, node.clone(), BTreeMap::new(), limits)
            .expect("the client API starts");
        // A fake member: reads one request, answers with the fuzzed bytes
        // and closes.
        let listener = TcpListener::bind(local).expect("a fake member listens");
        let fake = listener.local_addr().expect("an address");
        let answer = Arc::new(Mutex::new(Vec::new()));
        let bytes = answer.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(WAIT));
                let _ = frame::read_frame(&mut conn, 1 << 20);
                let out = bytes.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let _ = conn.write_all(&out);
                let _ = conn.shutdown(Shutdown::Both);
            }
        });
        Harness {
            node,
            server,
            fake,
            answer,
        }
    })
}

/// Sends `bytes` to the server, closes the sending side and returns every
/// frame it answered with until it closed the connection.
fn exchange(h: &Harness, bytes: &[u8]) -> Vec<pb::Response> {
    let mut s = TcpStream::connect(h.server.local_addr()).expect("the server accepts");
    s.set_read_timeout(Some(WAIT)).expect("socket");
    s.set_write_timeout(Some(WAIT)).expect("socket");
    // The server may close early (a frame over the limit).
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let mut answers = Vec::new();
    loop {
        match frame::read_frame(&mut s, 1 << 20) {
            Ok(body) => {
                let r: pb::Response = frame::decode(&body).expect("the server answers a Response");
                assert!(r.body.is_some(), "an answer without a body: {r:?}");
                answers.push(r);
            }
            Err(FrameError::Closed) => return answers,
            Err(e) if e.is_timeout() => panic!("the server neither answered nor closed: {e}"),
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return answers
            }
            Err(e) => panic!("the server sent a broken frame: {e}"),
        }
    }
}

fn check_server(h: &Harness, bytes: &[u8]) {
    let (bodies, over) = split(bytes, MAX_FRAME_BYTES);
    let mut expected: Vec<u64> = bodies
        .iter()
        .map(|b| frame::decode::<pb::Request>(b).map_or(0, |r| r.request_id))
        .collect();
    if over {
        expected.push(0);
    }
    let answers = exchange(h, bytes);
    let ids: Vec<u64> = answers.iter().map(|a| a.request_id).collect();
    assert_eq!(ids, expected, "answers: {answers:?}");
    if over {
        let Some(Resp::error(e)) = &answers.last().and_then(|a| a.body.clone()) else {
            panic!("a frame over the limit is answered with an error");
        };
        assert_eq!(e.kind, pb::ErrorKind::TOO_LARGE);
    }
}

fn check_client(h: &Harness, bytes: Vec<u8>) {
    let (bodies, over) = split(&bytes, CLIENT_MAX_FRAME_BYTES);
    let first = bodies
        .first()
        .and_then(|b| frame::decode::<pb::Response>(b).ok());
    *h.answer.lock().unwrap_or_else(|e| e.into_inner()) = bytes;
    let opts = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        attempt_timeout: WAIT,
        max_frame_bytes: CLIENT_MAX_FRAME_BYTES,
        ..ClientOptions::default()
    };
    let got = status_of(h.fake, &opts);
    if let Err(Error::Timeout { what }) = &got {
        assert!(
            !what.contains("no answer within"),
            "status_of waited for an answer that was closed: {what}"
        );
    }
    match first {
        Some(pb::Response {
            body: Some(Resp::status(s)),
            ..
        }) => {
            let m = got.expect("a status answer is a status");
            assert_eq!(m.status.id, s.member_id);
            assert_eq!(m.status.term, s.term);
            assert_eq!(m.status.commit, s.commit);
            assert_eq!(m.status.last_index, s.last_index);
            assert_eq!(m.status.voters, s.voters);
            assert_eq!(m.status.progress.len(), s.progress.len());
            assert_eq!(m.status.leader, (s.leader != 0).then_some(s.leader));
        }
        Some(pb::Response {
            body: Some(Resp::error(_)),
            ..
        }) => assert!(got.is_err(), "an error answer is an error"),
        None if bodies.is_empty() && !over => {
            assert!(got.is_err(), "no answer is an error")
        }
        _ => {}
    }
}

fuzz_target!(|input: Input| {
    let requests = stream(&input.requests, |id, op| frame::encode(&request(id, op)));
    let answer = stream(&input.answer, |id, a| frame::encode(&response(id, a)));
    for bytes in [&requests, &answer] {
        round_trips(&split(bytes, 1 << 20).0);
    }
    let h = harness();
    check_server(h, &requests);
    check_client(h, answer);
    // The server still serves a request of its own.
    let status = status_of(h.server.local_addr(), &ClientOptions::default())
        .expect("the server still answers a status request");
    assert_eq!(status.status.id, h.node.id());
});
