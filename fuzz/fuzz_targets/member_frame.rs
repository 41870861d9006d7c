//! Feeds the receiving side of the HA channel arbitrary byte streams: a mix
//! of raw bytes, broken length prefixes and well-formed frames (handshakes,
//! raft messages, notices, snapshot chunks and whole chunked snapshots)
//! built from the fuzz input.
//!
//! Every stream is decoded in-process with the public pieces the transport
//! uses (`wire.Frame`, `eraftpb.Message`, `aoc.Notice`, `Reassembler`), and
//! one stream in 32 (by a hash of its bytes) is also sent over a loopback
//! connection to a real `TcpTransport` (member 1 of cluster 7, peers 2 and
//! 3).
//!
//! Asserts: nothing panics; a frame, raft message or notice that decodes
//! re-encodes to bytes that decode to the same value; a snapshot the
//! reassembler completes is a `MsgSnapshot` from the stream's sender whose
//! data matches the checksum it was sent with; the transport closes every
//! connection once its peer stopped sending (no hang), delivers only
//! messages addressed to member 1 from a configured peer, and still accepts
//! and delivers from a well-formed connection afterwards.
#![no_main]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aoc_core::proto::wire::{Frame, Frame_oneof_body, Handshake, HandshakeRefused};
use aoc_core::proto::{BlankProbe, DataPersisted, Notice, SnapshotChunk, SwitchoverNotice};
use aoc_core::transport::tcp::{Inbound, TcpConfig, TcpTransport, PROTOCOL_VERSION};
use aoc_core::transport::{split_snapshot, Reassembler};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use protobuf::Message as _;
use protobuf::ProtobufEnum as _;
use raft::eraftpb::{Entry, Message, MessageType};

const CLUSTER: u64 = 7;
const ME: u64 = 1;
const PEERS: [u64; 2] = [2, 3];
/// Small limits, so that oversized frames and snapshots are reachable.
const MAX_FRAME_BYTES: usize = 80 * 1024;
const MAX_SNAPSHOT_BYTES: u64 = 4096;
/// The transport's limit for the frame before the handshake.
const MAX_HANDSHAKE_BYTES: usize = 4096;
/// How long the transport may take to close a connection whose peer sent
/// everything and shut down its side.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

#[derive(Arbitrary, Debug)]
struct Input {
    pieces: Vec<Piece>,
}

/// One part of the byte stream.
#[derive(Arbitrary, Debug)]
enum Piece {
    /// Bytes as they are, with no length prefix.
    Raw(Vec<u8>),
    /// A length prefix and the bytes as they are (an arbitrary frame body).
    Framed(Vec<u8>),
    /// A length prefix alone (the peer announces more than it sends).
    Length(u32),
    /// A handshake; `cluster` and `version` other than 0 replace the
    /// right values.
    Hello {
        cluster: u64,
        member: u8,
        version: u32,
    },
    /// A valid handshake from peer 2.
    GoodHello,
    /// A refusal (which only the accepting side may send).
    Refused(String),
    /// A raft message in a frame.
    Raft(RaftSpec),
    /// Arbitrary bytes as the raft message of a frame.
    RaftBytes(Vec<u8>),
    /// A notice.
    Notice(NoticeSpec),
    /// One snapshot chunk, fields as given.
    Chunk(ChunkSpec),
    /// A whole snapshot split into chunks, possibly damaged.
    Snapshot(SnapshotSpec),
}

#[derive(Arbitrary, Debug)]
struct RaftSpec {
    msg_type: u8,
    from: u8,
    to: u8,
    term: u8,
    index: u16,
    log_term: u8,
    commit: u16,
    entries: Vec<(u8, Vec<u8>)>,
    context: Vec<u8>,
    snapshot_data: Option<Vec<u8>>,
}

#[derive(Arbitrary, Debug)]
struct NoticeSpec {
    from: u8,
    to: u8,
    body: u8,
    term: u64,
    index: u64,
}

#[derive(Arbitrary, Debug)]
struct ChunkSpec {
    from: u8,
    to: u8,
    term: u8,
    index: u8,
    offset: u16,
    total: u16,
    header: Option<RaftSpec>,
    data: Vec<u8>,
    crc32: u32,
}

#[derive(Arbitrary, Debug)]
struct SnapshotSpec {
    msg: RaftSpec,
    data: Vec<u8>,
    chunk_bytes: u8,
    /// Leaves out the chunk at this position.
    skip: Option<u8>,
    /// Flips bits of one byte of the data of one chunk: (chunk, byte, mask).
    flip: Option<(u8, u16, u8)>,
}

/// A member id near the configured ones (0 to 4).
fn member(b: u8) -> u64 {
    u64::from(b % 5)
}

fn raft_message(s: &RaftSpec) -> Message {
    let mut m = Message::new();
    // 19 message types; out-of-range numbers cannot be set through the
    // typed API (they are reachable through `RaftBytes`).
    let t = MessageType::from_i32(i32::from(s.msg_type % 19)).unwrap_or(MessageType::MsgHup);
    m.set_msg_type(t);
    m.from = member(s.from);
    m.to = member(s.to);
    m.term = u64::from(s.term);
    m.index = u64::from(s.index);
    m.log_term = u64::from(s.log_term);
    m.commit = u64::from(s.commit);
    for (i, (term, data)) in s.entries.iter().take(8).enumerate() {
        let mut e = Entry::new();
        e.term = u64::from(*term);
        e.index = m.index + 1 + i as u64;
        e.data = data.clone().into();
        m.entries.push(e);
    }
    m.context = s.context.clone().into();
    if let Some(data) = &s.snapshot_data {
        let (index, term) = (m.index, m.log_term);
        let snap = m.mut_snapshot();
        snap.data = data.clone().into();
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    }
    m
}

fn notice(s: &NoticeSpec) -> Notice {
    let mut n = Notice::new();
    n.from = member(s.from);
    n.to = member(s.to);
    match s.body % 4 {
        0 => n.set_blank_probe(BlankProbe::new()),
        1 => {
            let mut d = DataPersisted::new();
            d.term = s.term;
            d.index = s.index;
            n.set_data_persisted(d);
        }
        2 => {
            let mut sw = SwitchoverNotice::new();
            sw.term = s.term;
            n.set_switchover(sw);
        }
        _ => {}
    }
    n
}

fn chunk(s: &ChunkSpec) -> SnapshotChunk {
    let mut c = SnapshotChunk::new();
    c.from = member(s.from);
    c.to = member(s.to);
    c.term = u64::from(s.term);
    c.index = u64::from(s.index);
    c.offset = u64::from(s.offset);
    c.total = u64::from(s.total);
    if let Some(h) = &s.header {
        c.header = raft_message(h).write_to_bytes().unwrap_or_default();
    }
    c.data = s.data.clone();
    c.crc32 = s.crc32;
    c
}

fn push_frame(out: &mut Vec<u8>, frame: &Frame) {
    let body = frame.write_to_bytes().unwrap_or_default();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
}

fn frame_of(body: Frame_oneof_body) -> Frame {
    let mut f = Frame::new();
    f.body = Some(body);
    f
}

fn hello(cluster: u64, member: u64, version: u32) -> Frame {
    let mut h = Handshake::new();
    h.cluster_id = cluster;
    h.member_id = member;
    h.protocol_version = version;
    frame_of(Frame_oneof_body::hello(h))
}

/// The byte stream the pieces describe.
fn stream(pieces: &[Piece]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Raw(b) => out.extend_from_slice(b),
            Piece::Framed(b) => {
                out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                out.extend_from_slice(b);
            }
            Piece::Length(n) => out.extend_from_slice(&n.to_be_bytes()),
            Piece::Hello {
                cluster,
                member: m,
                version,
            } => {
                let cluster = if *cluster == 0 { CLUSTER } else { *cluster };
                let version = if *version == 0 {
                    PROTOCOL_VERSION
                } else {
                    *version
                };
                push_frame(&mut out, &hello(cluster, member(*m), version));
            }
            Piece::GoodHello => push_frame(&mut out, &hello(CLUSTER, 2, PROTOCOL_VERSION)),
            Piece::Refused(reason) => {
                let mut r = HandshakeRefused::new();
                r.reason = reason.clone();
                push_frame(&mut out, &frame_of(Frame_oneof_body::refused(r)));
            }
            Piece::Raft(s) => {
                let bytes = raft_message(s).write_to_bytes().unwrap_or_default();
                push_frame(&mut out, &frame_of(Frame_oneof_body::raft(bytes)));
            }
            Piece::RaftBytes(b) => {
                push_frame(&mut out, &frame_of(Frame_oneof_body::raft(b.clone())))
            }
            Piece::Notice(s) => {
                push_frame(&mut out, &frame_of(Frame_oneof_body::notice(notice(s))))
            }
            Piece::Chunk(s) => push_frame(&mut out, &frame_of(Frame_oneof_body::chunk(chunk(s)))),
            Piece::Snapshot(s) => {
                let mut msg = raft_message(&s.msg);
                msg.set_msg_type(MessageType::MsgSnapshot);
                let snap = msg.mut_snapshot();
                snap.data = s.data.clone().into();
                snap.mut_metadata().index = u64::from(s.msg.index);
                snap.mut_metadata().term = u64::from(s.msg.log_term);
                let chunk_bytes = usize::from(s.chunk_bytes).max(1) * 16;
                let Some(chunks) = split_snapshot(&msg, chunk_bytes) else {
                    continue;
                };
                let n = chunks.len();
                for (i, mut c) in chunks.into_iter().enumerate() {
                    if s.skip.is_some_and(|k| usize::from(k) % n == i) {
                        continue;
                    }
                    if let Some((at, byte, mask)) = s.flip {
                        if usize::from(at) % n == i && !c.data.is_empty() {
                            let b = usize::from(byte) % c.data.len();
                            c.data[b] ^= mask.max(1);
                        }
                    }
                    push_frame(&mut out, &frame_of(Frame_oneof_body::chunk(c)));
                }
            }
        }
    }
    out
}

/// Decodes `bytes` frame by frame as the transport's reader does (the
/// first frame under the handshake limit), until the stream ends or breaks.
fn decode_in_process(bytes: &[u8]) {
    let mut rest = bytes;
    let mut reassembler = Reassembler::new(MAX_SNAPSHOT_BYTES);
    let mut first = true;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let max = if first {
            MAX_HANDSHAKE_BYTES
        } else {
            MAX_FRAME_BYTES
        };
        if len > max || rest.len() - 4 < len {
            return;
        }
        let body = &rest[4..4 + len];
        rest = &rest[4 + len..];
        first = false;
        let Ok(frame) = Frame::parse_from_bytes(body) else {
            return;
        };
        let again = Frame::parse_from_bytes(&frame.write_to_bytes().expect("a frame encodes"))
            .expect("a re-encoded frame decodes");
        assert_eq!(frame, again, "a frame survives a round trip");
        match frame.body {
            None => return,
            Some(Frame_oneof_body::raft(b)) => {
                if let Ok(m) = Message::parse_from_bytes(&b) {
                    let again = Message::parse_from_bytes(&m.write_to_bytes().expect("encodes"))
                        .expect("a re-encoded raft message decodes");
                    assert_eq!(m, again, "a raft message survives a round trip");
                }
            }
            Some(Frame_oneof_body::notice(n)) => {
                let again = Notice::parse_from_bytes(&n.write_to_bytes().expect("encodes"))
                    .expect("a re-encoded notice decodes");
                assert_eq!(n, again, "a notice survives a round trip");
            }
            Some(Frame_oneof_body::chunk(c)) => {
                let (from, crc) = (c.from, c.crc32);
                if let Ok(Some(m)) = reassembler.push(c) {
                    assert_eq!(m.get_msg_type(), MessageType::MsgSnapshot);
                    assert_eq!(m.from, from, "a snapshot comes from its stream's sender");
                    assert_eq!(crc32(m.get_snapshot().get_data()), crc);
                    assert!(m.get_snapshot().get_data().len() as u64 <= MAX_SNAPSHOT_BYTES);
                }
            }
            Some(Frame_oneof_body::hello(_)) | Some(Frame_oneof_body::refused(_)) => {}
        }
    }
}

/// CRC-32 (IEEE), bit by bit: an independent check of the reassembler's.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// What the transport delivered.
#[derive(Default)]
struct Received {
    raft: Mutex<Vec<Message>>,
    notices: Mutex<Vec<Notice>>,
}

impl Inbound for Received {
    fn raft(&self, msg: Message) {
        self.raft
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(msg);
    }
    fn notice(&self, n: Notice) {
        self.notices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(n);
    }
    fn unreachable(&self, _peer: u64) {}
    fn snapshot_sent(&self, _peer: u64, _delivered: bool) {}
}

struct Harness {
    transport: TcpTransport,
    received: Arc<Received>,
    runs: Mutex<u64>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        // Nothing listens on the discard port: the transport's writers
        // retry in the background, on the loopback only.
        let nowhere: SocketAddr = "127.0.0.1:9".parse().expect("an address");
        let peers = BTreeMap::from([(2, nowhere), (3, nowhere)]);
        let mut cfg = TcpConfig::new(
            CLUSTER,
            ME,
            "127.0.0.1:0".parse().expect("an address"),
            peers,
        );
        cfg.max_frame_bytes = MAX_FRAME_BYTES;
        cfg.snapshot_chunk_bytes = 8 * 1024;
        cfg.max_snapshot_bytes = MAX_SNAPSHOT_BYTES;
        let transport = TcpTransport::start(cfg).expect("the transport starts");
        let received = Arc::new(Received::default());
        transport.set_inbound(received.clone());
        Harness {
            transport,
            received,
            runs: Mutex::new(0),
        }
    })
}

/// Sends `bytes` on a new connection, shuts down the sending side and
/// waits until the transport closes the connection.
fn send_over_tcp(h: &Harness, bytes: &[u8]) {
    let mut s = TcpStream::connect(h.transport.local_addr()).expect("the transport accepts");
    s.set_write_timeout(Some(CLOSE_WITHIN)).expect("socket");
    s.set_read_timeout(Some(CLOSE_WITHIN)).expect("socket");
    // The transport may close early (a bad frame): a failed write is fine.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "the transport kept the connection open {:?} after its peer stopped sending",
                    started.elapsed()
                );
            }
            // Reset by the transport: closed too.
            Err(_) => break,
        }
    }
}

fn check_deliveries(h: &Harness) {
    for m in h
        .received
        .raft
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
    {
        assert_eq!(m.to, ME, "delivered a raft message for another member");
        assert!(
            PEERS.contains(&m.from),
            "delivered a raft message from {}",
            m.from
        );
    }
    for n in h
        .received
        .notices
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
    {
        assert_eq!(n.to, ME, "delivered a notice for another member");
        assert!(
            PEERS.contains(&n.from),
            "delivered a notice from {}",
            n.from
        );
    }
}

/// A well-formed connection from peer 3 is still accepted and served.
fn check_alive(h: &Harness) {
    let mut bytes = Vec::new();
    push_frame(&mut bytes, &hello(CLUSTER, 3, PROTOCOL_VERSION));
    let mut m = Message::new();
    m.set_msg_type(MessageType::MsgHeartbeat);
    m.from = 3;
    m.to = ME;
    m.term = 4242;
    let raft = m.write_to_bytes().expect("encodes");
    push_frame(&mut bytes, &frame_of(Frame_oneof_body::raft(raft)));
    send_over_tcp(h, &bytes);
    let got = std::mem::take(&mut *h.received.raft.lock().unwrap_or_else(|e| e.into_inner()));
    assert!(
        got.iter().any(|g| g.term == 4242 && g.from == 3),
        "the transport no longer delivers from a well-formed connection"
    );
}

/// Whether a stream also goes over TCP: one in 32, by a hash of the
/// stream, so that the fuzzer cannot pin every input to the slow path (a
/// connection costs milliseconds, decoding in-process microseconds).
fn over_tcp(bytes: &[u8]) -> bool {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    h % 32 == 0
}

fuzz_target!(|input: Input| {
    let bytes = stream(&input.pieces);
    decode_in_process(&bytes);
    if !over_tcp(&bytes) {
        return;
    }
    let h = harness();
    send_over_tcp(h, &bytes);
    check_deliveries(h);
    let mut runs = h.runs.lock().unwrap_or_else(|e| e.into_inner());
    *runs += 1;
    if (*runs).is_multiple_of(64) {
        check_alive(h);
    }
});
