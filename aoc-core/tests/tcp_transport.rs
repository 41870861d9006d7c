//! The TCP transport on loopback: traffic both ways, snapshots in chunks,
//! refused handshakes, bad frames, a peer that goes down and comes back,
//! peers added, removed and moved while the transport runs, and a
//! three-member cluster over real sockets.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoc_core::proto::wire::{Frame, Frame_oneof_body, Handshake};
use aoc_core::proto::DataPersisted;
use aoc_core::state::{KvCommand, KvStateMachine, MemKv};
use aoc_core::storage::MemLogStore;
use aoc_core::transport::tcp::{
    Inbound, TcpConfig, TcpTransport, MIN_READ_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use aoc_core::transport::{Notice, Transport};
use aoc_core::{Error, Member, MemberRole, Node, ReplicaConfig, Role};
use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

/// Everything a transport handed to its inbound.
#[derive(Default)]
struct Recorder {
    raft: Mutex<Vec<Message>>,
    notices: Mutex<Vec<Notice>>,
    unreachable: Mutex<Vec<u64>>,
    snapshots: Mutex<Vec<(u64, bool)>>,
}

impl Inbound for Recorder {
    fn raft(&self, msg: Message) {
        self.raft.lock().push(msg);
    }
    fn notice(&self, n: Notice) {
        self.notices.lock().push(n);
    }
    fn unreachable(&self, peer: u64) {
        self.unreachable.lock().push(peer);
    }
    fn snapshot_sent(&self, peer: u64, delivered: bool) {
        self.snapshots.lock().push((peer, delivered));
    }
}

impl Recorder {
    fn commits_from(&self, from: u64) -> Vec<u64> {
        self.raft
            .lock()
            .iter()
            .filter(|m| m.from == from && m.get_msg_type() == MessageType::MsgHeartbeat)
            .map(|m| m.commit)
            .collect()
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

// Every server's address is known before the first one starts: each gets
// a port no other test of this process is given.
#[path = "common/ports.rs"]
mod ports;
use ports::free_addr;

fn config(cluster: u64, id: u64, listen: SocketAddr, peers: &[(u64, SocketAddr)]) -> TcpConfig {
    let mut cfg = TcpConfig::new(cluster, id, listen, peers.iter().copied().collect());
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.max_backoff = Duration::from_millis(200);
    cfg
}

/// Starts a transport with a recorder as its inbound. Retries the bind for
/// a moment (a reserved port may be briefly taken).
fn start(cfg: TcpConfig) -> (TcpTransport, Arc<Recorder>) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let t = loop {
        match TcpTransport::start(cfg.clone()) {
            Ok(t) => break t,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying start: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("transport starts: {e}"),
        }
    };
    let rec = Arc::new(Recorder::default());
    t.set_inbound(rec.clone());
    (t, rec)
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn heartbeat(from: u64, to: u64, commit: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    m.from = from;
    m.to = to;
    m.term = 1;
    m.commit = commit;
    m
}

fn notice(from: u64, to: u64, index: u64) -> Notice {
    let mut n = Notice::new();
    n.from = from;
    n.to = to;
    let mut d = DataPersisted::new();
    d.term = 1;
    d.index = index;
    n.set_data_persisted(d);
    n
}

fn snapshot(from: u64, to: u64, len: usize) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.from = from;
    m.to = to;
    m.term = 3;
    let s = m.mut_snapshot();
    s.mut_metadata().index = 40;
    s.mut_metadata().term = 3;
    s.mut_metadata().mut_conf_state().voters = vec![1, 2];
    s.set_data(
        (0..len)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect::<Vec<u8>>()
            .into(),
    );
    m
}

/// Frames a protobuf `Frame` for a raw stream.
fn frame_bytes(frame: &Frame) -> Vec<u8> {
    let body = frame.write_to_bytes().expect("encode");
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn hello(cluster: u64, member: u64) -> Vec<u8> {
    hello_versions(cluster, member, PROTOCOL_VERSION, 0)
}

/// A hello speaking protocol `speaks` whose frames suit readers of
/// `min_reader` and later (0: as the first version, which sent none).
fn hello_versions(cluster: u64, member: u64, speaks: u32, min_reader: u32) -> Vec<u8> {
    let mut h = Handshake::new();
    h.cluster_id = cluster;
    h.member_id = member;
    h.protocol_version = speaks;
    h.min_protocol_version = min_reader;
    let mut f = Frame::new();
    f.set_hello(h);
    frame_bytes(&f)
}

fn raft_frame(msg: &Message) -> Vec<u8> {
    let mut f = Frame::new();
    f.set_raft(msg.write_to_bytes().expect("encode"));
    frame_bytes(&f)
}

fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("raw connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Reads one frame from a raw stream.
fn read_raw_frame(s: &mut TcpStream) -> Frame {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("a frame's length");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).expect("a frame's body");
    Frame::parse_from_bytes(&body).expect("a valid frame")
}

/// Asserts that the other side closes the connection (soon).
fn assert_closed(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: the connection was not closed")
            }
            Err(_) => return, // reset: closed too
        }
    }
}

#[test]
fn raft_messages_and_notices_flow_both_ways() {
    init_logs();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, ra) = start(config(7, 1, a_addr, &[(2, b_addr)]));
    let (b, rb) = start(config(7, 2, b_addr, &[(1, a_addr)]));
    assert_eq!(a.local_addr(), a_addr);
    wait_until("both connected", Duration::from_secs(5), || {
        a.stats().connected >= 1 && b.stats().connected >= 1
    });
    // (An attempt made before the other side listened may have failed.)
    let unreachable = ra.unreachable.lock().len();
    for i in 1..=200 {
        a.send(heartbeat(1, 2, i));
        b.send(heartbeat(2, 1, i));
        if i % 50 == 0 {
            a.send_notice(notice(1, 2, i));
            b.send_notice(notice(2, 1, i));
        }
    }
    wait_until("everything delivered", Duration::from_secs(5), || {
        ra.raft.lock().len() == 200
            && rb.raft.lock().len() == 200
            && ra.notices.lock().len() == 4
            && rb.notices.lock().len() == 4
    });
    let expected: Vec<u64> = (1..=200).collect();
    assert_eq!(rb.commits_from(1), expected, "in order, nothing lost");
    assert_eq!(ra.commits_from(2), expected);
    assert_eq!(rb.notices.lock()[3], notice(1, 2, 200));
    assert_eq!(ra.notices.lock()[0], notice(2, 1, 50));
    assert_eq!(ra.unreachable.lock().len(), unreachable, "no failure");
    assert_eq!(a.stats().delivered, 204);
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_large_snapshot_arrives_whole_and_is_reported_sent() {
    init_logs();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, ra) = start(config(7, 1, a_addr, &[(2, b_addr)]));
    let (b, rb) = start(config(7, 2, b_addr, &[(1, a_addr)]));
    wait_until("connected", Duration::from_secs(5), || {
        a.stats().connected >= 1
    });
    let snap = snapshot(1, 2, 5 << 20);
    a.send(snap.clone());
    a.send(heartbeat(1, 2, 9));
    wait_until("the snapshot", Duration::from_secs(8), || {
        rb.raft.lock().len() == 2
    });
    let got: Vec<Message> = rb.raft.lock().clone();
    let whole = got
        .iter()
        .find(|m| m.get_msg_type() == MessageType::MsgSnapshot)
        .expect("the snapshot arrived");
    assert_eq!(whole, &snap, "whole and intact");
    assert_eq!(rb.commits_from(1), vec![9]);
    wait_until("the report", Duration::from_secs(2), || {
        !ra.snapshots.lock().is_empty()
    });
    assert_eq!(*ra.snapshots.lock(), vec![(2, true)]);
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_member_of_another_cluster_is_refused() {
    init_logs();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, ra) = start(config(1, 1, a_addr, &[(2, b_addr)]));
    // Member 2 of cluster 2 points at member 1 of cluster 1.
    let (b, rb) = start(config(2, 2, b_addr, &[(1, a_addr)]));
    for i in 0..20 {
        b.send(heartbeat(2, 1, i));
        b.send_notice(notice(2, 1, i));
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_until("the refusal, seen by both", Duration::from_secs(5), || {
        a.stats().refused >= 1 && b.stats().refused_by_peer >= 1
    });
    wait_until("unreachable reported", Duration::from_secs(5), || {
        rb.unreachable.lock().contains(&1)
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(ra.raft.lock().is_empty(), "no message crossed");
    assert!(ra.notices.lock().is_empty(), "no notice crossed");

    // The refusal on the wire: a frame with the reason, then the close.
    let mut s = raw(a_addr);
    s.write_all(&hello(9, 2)).unwrap();
    match read_raw_frame(&mut s).body {
        Some(Frame_oneof_body::refused(r)) => {
            assert!(r.reason.contains("cluster id 9"), "reason: {}", r.reason)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_closed(&mut s, "refused cluster");

    // A member that is not a configured peer is refused too.
    let mut s = raw(a_addr);
    s.write_all(&hello(1, 5)).unwrap();
    match read_raw_frame(&mut s).body {
        Some(Frame_oneof_body::refused(r)) => {
            assert!(
                r.reason.contains("not a configured peer"),
                "reason: {}",
                r.reason
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_closed(&mut s, "unknown member");
    a.shutdown();
    b.shutdown();
}

/// Rolling upgrades: a member one version newer that writes frames this
/// version reads is accepted; one whose frames need a newer reader is
/// refused as too new, one older than this member reads as too old, and
/// each refusal names the member and the side to upgrade.
#[test]
fn members_of_adjacent_versions_meet_and_others_are_refused_with_the_side_to_upgrade() {
    init_logs();
    let a_addr = free_addr();
    let (a, ra) = start(config(1, 1, a_addr, &[(2, free_addr())]));
    let refusal = |bytes: Vec<u8>| {
        let mut s = raw(a_addr);
        s.write_all(&bytes).unwrap();
        let reason = match read_raw_frame(&mut s).body {
            Some(Frame_oneof_body::refused(r)) => r.reason,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_closed(&mut s, "refused version");
        reason
    };
    let too_new = refusal(hello_versions(
        1,
        2,
        PROTOCOL_VERSION + 2,
        PROTOCOL_VERSION + 1,
    ));
    assert!(
        too_new.contains("member 2 is too new") && too_new.contains("upgrade this member"),
        "reason: {too_new}"
    );
    let too_old = refusal(hello_versions(1, 2, MIN_READ_PROTOCOL_VERSION - 1, 0));
    assert!(
        too_old.contains("member 2 is too old") && too_old.contains("upgrade member 2"),
        "reason: {too_old}"
    );
    let malformed = refusal(hello_versions(1, 2, PROTOCOL_VERSION, PROTOCOL_VERSION + 1));
    assert!(malformed.contains("malformed"), "reason: {malformed}");

    // One version newer, writing frames this version reads: accepted, and
    // its messages arrive.
    let mut s = raw(a_addr);
    s.write_all(&hello_versions(
        1,
        2,
        PROTOCOL_VERSION + 1,
        PROTOCOL_VERSION,
    ))
    .unwrap();
    s.write_all(&raft_frame(&heartbeat(2, 1, 7))).unwrap();
    wait_until("the newer member's message", Duration::from_secs(5), || {
        !ra.raft.lock().is_empty()
    });
    assert_eq!(a.stats().refused, 3);
    a.shutdown();
}

#[test]
fn bad_frames_close_their_connection_only() {
    init_logs();
    let b_addr = free_addr();
    let unused = free_addr();
    let (a, ra) = start(config(
        1,
        1,
        "127.0.0.1:0".parse().unwrap(),
        &[(2, b_addr), (3, unused)],
    ));
    let a_addr = a.local_addr();
    let (b, _rb) = start(config(1, 2, b_addr, &[(1, a_addr)]));
    wait_until("b connected", Duration::from_secs(5), || {
        b.stats().connected >= 1
    });
    let mut k = 0;
    let mut still_serving = |what: &str| {
        k += 1;
        b.send(heartbeat(2, 1, k));
        wait_until(what, Duration::from_secs(5), || {
            ra.commits_from(2).contains(&k)
        });
    };
    still_serving("b's traffic");

    // A well-behaved raw member 3: its message arrives, a message claiming
    // to come from member 2 is dropped.
    let mut s = raw(a_addr);
    s.write_all(&hello(1, 3)).unwrap();
    s.write_all(&raft_frame(&heartbeat(2, 1, 7777))).unwrap();
    s.write_all(&raft_frame(&heartbeat(3, 1, 33))).unwrap();
    wait_until("member 3's message", Duration::from_secs(5), || {
        ra.commits_from(3) == vec![33]
    });
    assert!(
        !ra.commits_from(2).contains(&7777),
        "spoofed sender dropped"
    );

    // Garbage after the handshake.
    let mut garbage = 10u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 10]);
    s.write_all(&garbage).unwrap();
    assert_closed(&mut s, "garbage frame");
    wait_until("counted", Duration::from_secs(2), || {
        a.stats().bad_frames == 1
    });
    still_serving("traffic after garbage");

    // Garbage instead of a handshake.
    let mut s = raw(a_addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_closed(&mut s, "not a handshake");
    wait_until("counted", Duration::from_secs(2), || {
        a.stats().bad_frames == 2
    });
    still_serving("traffic after an HTTP request");

    // A truncated frame: the connection ends inside it.
    let mut s = raw(a_addr);
    s.write_all(&hello(1, 3)).unwrap();
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&raft_frame(&heartbeat(3, 1, 1))[4..]);
    s.write_all(&truncated).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_closed(&mut s, "truncated frame");
    wait_until("counted", Duration::from_secs(2), || {
        a.stats().bad_frames == 3
    });
    still_serving("traffic after a truncated frame");

    // An oversized length.
    let mut s = raw(a_addr);
    s.write_all(&hello(1, 3)).unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert_closed(&mut s, "oversized frame");
    wait_until("counted", Duration::from_secs(2), || {
        a.stats().bad_frames == 4
    });
    still_serving("traffic after an oversized frame");

    // A valid frame whose raft bytes are not a raft message.
    let mut s = raw(a_addr);
    s.write_all(&hello(1, 3)).unwrap();
    let mut f = Frame::new();
    f.set_raft(vec![0xff; 12]);
    s.write_all(&frame_bytes(&f)).unwrap();
    assert_closed(&mut s, "malformed raft message");
    wait_until("counted", Duration::from_secs(2), || {
        a.stats().bad_frames == 5
    });
    still_serving("traffic after a malformed raft message");

    assert_eq!(ra.commits_from(3), vec![33], "nothing else from member 3");
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_down_peer_costs_nothing_and_traffic_resumes_when_it_returns() {
    init_logs();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut cfg = config(1, 1, a_addr, &[(2, b_addr)]);
    cfg.queue_len = 8;
    let (a, ra) = start(cfg);

    // Peer 2 is down: sending never blocks, even past a full queue.
    let begin = Instant::now();
    for i in 0..20_000 {
        a.send(heartbeat(1, 2, i));
    }
    a.send(snapshot(1, 2, 1 << 20));
    a.send_notice(notice(1, 2, 1));
    assert!(
        begin.elapsed() < Duration::from_secs(1),
        "send took {:?}",
        begin.elapsed()
    );
    wait_until(
        "unreachable and the snapshot failed",
        Duration::from_secs(5),
        || ra.unreachable.lock().contains(&2) && ra.snapshots.lock().contains(&(2, false)),
    );
    assert!(a.stats().dropped > 0);
    assert!(!ra.snapshots.lock().contains(&(2, true)));

    // The peer comes up: traffic flows both ways.
    let (b, rb) = start(config(1, 2, b_addr, &[(1, a_addr)]));
    let mut k = 100_000;
    let mut resumes = |rb: &Recorder, what: &str| {
        wait_until(what, Duration::from_secs(5), || {
            k += 1;
            a.send(heartbeat(1, 2, k));
            std::thread::sleep(Duration::from_millis(20));
            rb.commits_from(1).iter().any(|&c| c > 100_000)
        });
    };
    resumes(&rb, "traffic to the peer once it is up");
    b.send(heartbeat(2, 1, 5));
    wait_until("traffic from the peer", Duration::from_secs(5), || {
        ra.commits_from(2) == vec![5]
    });

    // Down again: reported; up again on the same port: traffic resumes.
    b.shutdown();
    drop(b);
    let reported = ra.unreachable.lock().len();
    wait_until("the loss reported", Duration::from_secs(5), || {
        a.send(heartbeat(1, 2, 1));
        std::thread::sleep(Duration::from_millis(20));
        ra.unreachable.lock().len() > reported
    });
    let (b2, rb2) = start(config(1, 2, b_addr, &[(1, a_addr)]));
    resumes(&rb2, "traffic to the restarted peer");
    assert!(
        rb2.raft.lock().iter().all(|m| m.from == 1 && m.to == 2),
        "only what was sent"
    );
    a.shutdown();
    b2.shutdown();
}

#[test]
fn three_nodes_elect_a_leader_and_replicate_over_tcp() {
    init_logs();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut transports = Vec::new();
    let mut nodes: Vec<Node<MemKv>> = Vec::new();
    for id in 1..=3u64 {
        let peers: Vec<(u64, SocketAddr)> = (1..=3u64)
            .filter(|&p| p != id)
            .map(|p| (p, addrs[p as usize - 1]))
            .collect();
        let (t, _) = start(config(11, id, addrs[id as usize - 1], &peers));
        let node = Node::builder(ReplicaConfig::new(id))
            .voters(vec![1, 2, 3])
            .tick(Duration::from_millis(20))
            .seed(id)
            .start_with_transport(MemLogStore::new(), MemKv::new(), Arc::new(t.clone()))
            .expect("node starts");
        t.set_inbound(Arc::new(node.clone()));
        transports.push(t);
        nodes.push(node);
    }
    let mut leader = None;
    wait_until("a leader", Duration::from_secs(8), || {
        leader = nodes
            .iter()
            .find(|n| n.status().role == Role::Leader)
            .cloned();
        leader.is_some()
    });
    let mut written = None;
    wait_until("the write", Duration::from_secs(8), || {
        let Some(l) = nodes.iter().find(|n| n.status().role == Role::Leader) else {
            return false;
        };
        match l.propose(KvCommand::put("cluster/1", "healthy").encode()) {
            Ok(applied) => {
                written = Some((l.clone(), applied.index));
                true
            }
            Err(Error::NotLeader { .. }) | Err(Error::Timeout { .. }) => false,
            Err(e) => panic!("write failed: {e}"),
        }
    });
    let (leader, index) = written.expect("written");
    // The status is published after the reply: the write's index bounds
    // the commit from below.
    let commit = leader.status().commit.max(index);
    wait_until("applied everywhere", Duration::from_secs(5), || {
        nodes.iter().all(|n| n.status().applied >= commit)
    });
    let value = leader
        .read(|kv| kv.get(b"cluster/1"))
        .expect("read")
        .expect("get");
    assert_eq!(value.as_deref(), Some(&b"healthy"[..]));
    for n in &nodes {
        n.shutdown();
    }
    for t in &transports {
        t.shutdown();
    }
}

/// A sender that trickles its handshake a byte at a time (slow loris) is
/// cut off when the handshake's 5 seconds are up, however steadily the
/// bytes come; the member serves its real peer all the while.
#[test]
fn a_handshake_trickled_byte_by_byte_is_cut_off() {
    init_logs();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, rec_a) = start(config(7, 1, a_addr, &[(2, b_addr)]));
    let (b, _rec_b) = start(config(7, 2, b_addr, &[(1, a_addr)]));
    let mut loris = raw(a_addr);
    // Large ids make a handshake long enough to trickle, one byte every
    // 400 ms, for longer than the deadline.
    let bytes = hello(u64::MAX, u64::MAX);
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(8) && sent + 1 < bytes.len() {
        if loris.write_all(&bytes[sent..sent + 1]).is_err() {
            break;
        }
        sent += 1;
        b.send(heartbeat(2, 1, sent as u64));
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(5) || sent + 1 >= bytes.len(),
        "the trickle outlasted the deadline ({sent} of {} bytes)",
        bytes.len()
    );
    loris
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    assert_closed(&mut loris, "a trickled handshake");
    wait_until("the real peer's messages", Duration::from_secs(5), || {
        rec_a.raft.lock().len() >= 5
    });
    a.shutdown();
    b.shutdown();
}

/// A peer that comes back is reached at once: its own connection to this
/// member wakes the writer that was backing off, instead of leaving its
/// messages (a restarted member's catch-up) to wait out the back-off.
#[test]
fn a_peer_that_connects_back_is_reached_without_waiting_out_the_back_off() {
    init_logs();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut cfg = config(1, 1, a_addr, &[(2, b_addr)]);
    cfg.max_backoff = Duration::from_secs(10);
    let (a, _ra) = start(cfg);
    // B is down: A's attempts fail at 0, 50, 150, 350, 750 ms, 1.55 and
    // 3.15 s; the next one would come at 6.35 s.
    std::thread::sleep(Duration::from_millis(3500));
    let (b, rb) = start(config(1, 2, b_addr, &[(1, a_addr)]));
    let t = Instant::now();
    // B's message makes B connect to A.
    b.send(heartbeat(2, 1, 1));
    wait_until("A's message at B", Duration::from_secs(10), || {
        a.send(heartbeat(1, 2, 2));
        !rb.raft.lock().is_empty()
    });
    let took = t.elapsed();
    // Waiting out the back-off would take about 2.85 s.
    assert!(
        took < Duration::from_millis(1500),
        "A reached B only after {took:?}"
    );
    a.shutdown();
    b.shutdown();
}

/// Accepts one connection on `l` within 10 seconds.
fn accept_within(l: &TcpListener) -> TcpStream {
    l.set_nonblocking(true).expect("nonblocking listener");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("blocking stream");
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("read timeout");
                return s;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no connection within 10 s");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// The reason of the refusal that answers `bytes` sent to `addr`.
fn refusal_of(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = raw(addr);
    s.write_all(bytes).unwrap();
    let reason = match read_raw_frame(&mut s).body {
        Some(Frame_oneof_body::refused(r)) => r.reason,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_closed(&mut s, "refused handshake");
    reason
}

/// Member 1 starts without peers: member 2's handshake is refused and 1's
/// messages to 2 are dropped, until `set_peers` makes 2 a peer; then
/// traffic flows both ways.
#[test]
fn a_member_added_with_set_peers_is_accepted_and_reached() {
    init_logs();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, ra) = start(config(7, 1, a_addr, &[]));
    let (b, rb) = start(config(7, 2, b_addr, &[(1, a_addr)]));
    assert!(a.peers().is_empty());

    wait_until("2 refused by 1", Duration::from_secs(10), || {
        b.send(heartbeat(2, 1, 1));
        std::thread::sleep(Duration::from_millis(20));
        a.stats().refused >= 1 && b.stats().refused_by_peer >= 1
    });
    let reason = refusal_of(a_addr, &hello(7, 2));
    assert!(
        reason.contains("member id 2 is not a configured peer"),
        "reason: {reason}"
    );
    let dropped = a.stats().dropped;
    a.send(heartbeat(1, 2, 1));
    a.send_notice(notice(1, 2, 1));
    assert_eq!(a.stats().dropped, dropped + 2, "2 is not a peer yet");
    assert!(ra.raft.lock().is_empty(), "nothing from 2 crossed");

    let peers = BTreeMap::from([(2, b_addr)]);
    a.set_peers(peers.clone()).unwrap();
    assert_eq!(a.peers(), peers);
    let mut k = 100;
    wait_until("traffic both ways", Duration::from_secs(10), || {
        k += 1;
        a.send(heartbeat(1, 2, k));
        b.send(heartbeat(2, 1, k));
        std::thread::sleep(Duration::from_millis(20));
        rb.commits_from(1).iter().any(|&c| c > 100) && ra.commits_from(2).iter().any(|&c| c > 100)
    });
    a.shutdown();
    b.shutdown();
}

/// Once `set_peers` removes member 2 from member 1's peers, 1's messages to
/// 2 are dropped (and counted), 2's connection to 1 is closed, and its
/// handshakes are refused as those of a member that is not a peer.
#[test]
fn a_member_removed_with_set_peers_is_cut_off_and_refused() {
    init_logs();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, ra) = start(config(7, 1, a_addr, &[(2, b_addr)]));
    let (b, rb) = start(config(7, 2, b_addr, &[(1, a_addr)]));
    let mut k = 0;
    wait_until("traffic both ways", Duration::from_secs(10), || {
        k += 1;
        a.send(heartbeat(1, 2, k));
        b.send(heartbeat(2, 1, k));
        std::thread::sleep(Duration::from_millis(20));
        !rb.commits_from(1).is_empty() && !ra.commits_from(2).is_empty()
    });
    let refused = a.stats().refused;
    let refused_by_peer = b.stats().refused_by_peer;

    a.set_peers(BTreeMap::new()).unwrap();
    assert!(a.peers().is_empty());
    let dropped = a.stats().dropped;
    for i in 0..10 {
        a.send(heartbeat(1, 2, 1000 + i));
    }
    a.send_notice(notice(1, 2, 1000));
    assert_eq!(
        a.stats().dropped,
        dropped + 11,
        "every message to 2 dropped"
    );

    // 2's connection is closed; when 2 connects again it is refused.
    wait_until("2 refused by 1", Duration::from_secs(10), || {
        b.send(heartbeat(2, 1, 1000));
        std::thread::sleep(Duration::from_millis(20));
        a.stats().refused > refused && b.stats().refused_by_peer > refused_by_peer
    });
    let reason = refusal_of(a_addr, &hello(7, 2));
    assert!(
        reason.contains("member id 2 is not a configured peer"),
        "reason: {reason}"
    );
    assert!(
        rb.commits_from(1).iter().all(|&c| c < 1000),
        "nothing from 1 reached 2 after the removal"
    );
    assert!(
        ra.commits_from(2).iter().all(|&c| c < 1000),
        "nothing from 2 reached 1 after the removal"
    );
    a.shutdown();
    b.shutdown();
}

/// When member 2 moves, member 1's writer is re-pointed: its connection to
/// the old address is closed and the new address is connected to; member
/// 3, whose address did not change, keeps its connection.
#[test]
fn a_moved_member_is_reached_at_its_new_address_and_the_others_keep_their_connections() {
    init_logs();
    let a_addr = free_addr();
    // Member 2's old address: a raw listener, to watch the connection.
    let old = TcpListener::bind("127.0.0.1:0").unwrap();
    let old_addr = old.local_addr().unwrap();
    let d_addr = free_addr();
    let (a, ra) = start(config(7, 1, a_addr, &[(2, old_addr), (3, d_addr)]));
    let (d, rd) = start(config(7, 3, d_addr, &[(1, a_addr)]));

    let mut s = accept_within(&old);
    match read_raw_frame(&mut s).body {
        Some(Frame_oneof_body::hello(h)) => assert_eq!(h.member_id, 1),
        other => panic!("expected a hello, got {other:?}"),
    }
    a.send(heartbeat(1, 2, 5));
    match read_raw_frame(&mut s).body {
        Some(Frame_oneof_body::raft(bytes)) => {
            assert_eq!(Message::parse_from_bytes(&bytes).unwrap().commit, 5)
        }
        other => panic!("expected a raft message, got {other:?}"),
    }
    wait_until("1's messages at 3", Duration::from_secs(10), || {
        a.send(heartbeat(1, 3, 1));
        std::thread::sleep(Duration::from_millis(20));
        !rd.commits_from(1).is_empty()
    });
    let d_accepted = d.stats().accepted;

    // Member 2 now listens elsewhere.
    let new_addr = free_addr();
    let (c, rc) = start(config(7, 2, new_addr, &[(1, a_addr)]));
    let peers = BTreeMap::from([(2, new_addr), (3, d_addr)]);
    a.set_peers(peers.clone()).unwrap();
    assert_eq!(a.peers(), peers);
    assert_closed(&mut s, "the connection to 2's old address");
    let mut k = 100;
    wait_until(
        "1's messages at 2's new address",
        Duration::from_secs(10),
        || {
            k += 1;
            a.send(heartbeat(1, 2, k));
            std::thread::sleep(Duration::from_millis(20));
            rc.commits_from(1).iter().any(|&c| c > 100)
        },
    );
    c.send(heartbeat(2, 1, 7));
    wait_until("2's messages at 1", Duration::from_secs(10), || {
        ra.commits_from(2).contains(&7)
    });

    // Member 3 is still served, on the connection it had.
    a.send(heartbeat(1, 3, 99));
    wait_until("1's messages at 3", Duration::from_secs(10), || {
        rd.commits_from(1).contains(&99)
    });
    assert_eq!(d.stats().accepted, d_accepted, "3's connection was kept");
    match old.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok(_) => panic!("1 connected to 2's old address again"),
        Err(e) => panic!("accept: {e}"),
    }
    a.shutdown();
    c.shutdown();
    d.shutdown();
}

/// `set_peers` refuses a set naming this member or member 0 (and changes
/// nothing), and fails once the transport is shut down.
#[test]
fn set_peers_refuses_a_bad_set_and_a_stopped_transport() {
    init_logs();
    let x = free_addr();
    let (a, _ra) = start(config(7, 1, "127.0.0.1:0".parse().unwrap(), &[(2, x)]));
    for bad in [BTreeMap::from([(1, x)]), BTreeMap::from([(0, x), (3, x)])] {
        match a.set_peers(bad) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "peers"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(a.peers(), BTreeMap::from([(2, x)]), "nothing changed");
    a.shutdown();
    assert_eq!(a.set_peers(BTreeMap::new()), Err(Error::Stopped));
}

/// The limit of accepted connections (four per peer, plus 16) follows the
/// current set of peers.
#[test]
fn the_connection_limit_follows_the_current_peers() {
    init_logs();
    let (a, _ra) = start(config(7, 1, "127.0.0.1:0".parse().unwrap(), &[]));
    let a_addr = a.local_addr();
    // No peers: 16 connections; they are held (without a handshake, each
    // for up to 5 seconds) while the limit is probed.
    let held: Vec<TcpStream> = (0..16).map(|_| raw(a_addr)).collect();
    wait_until("16 accepted", Duration::from_secs(10), || {
        a.stats().accepted >= 16
    });
    let mut over = raw(a_addr);
    assert_closed(&mut over, "a connection over the limit");

    a.set_peers(BTreeMap::from([(2, free_addr())])).unwrap();
    let mut within = raw(a_addr);
    within
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let mut buf = [0u8; 16];
    match within.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("a connection within the new limit was closed: {other:?}"),
    }
    drop(held);
    a.shutdown();
}

/// A directory address that is a host name is looked up off the caller's
/// thread (the raft thread, in a node) and applies once found; an address
/// given as IP and port applies at once.
#[test]
fn members_changed_looks_names_up_off_the_callers_thread() {
    init_logs();
    let (a, _ra) = start(config(7, 1, "127.0.0.1:0".parse().unwrap(), &[]));
    let x = free_addr();
    let named = Member {
        id: 2,
        role: MemberRole::Data,
        ha_addr: format!("localhost:{}", x.port()),
    };
    a.members_changed(&[1, 2], &[named]);
    wait_until(
        "the named member's address",
        Duration::from_secs(10),
        || {
            a.peers()
                .get(&2)
                .is_some_and(|addr| addr.port() == x.port())
        },
    );
    let literal = Member {
        id: 3,
        role: MemberRole::Witness,
        ha_addr: x.to_string(),
    };
    a.members_changed(&[1, 3], &[literal]);
    assert_eq!(a.peers(), BTreeMap::from([(3, x)]), "applied at once");
}

/// A change whose names are still being looked up when a later change is
/// asked for is dropped: the last change asked for is the one that stays.
#[test]
fn a_slower_lookup_does_not_undo_a_later_change() {
    init_logs();
    let (a, _ra) = start(config(7, 1, "127.0.0.1:0".parse().unwrap(), &[]));
    let (x, y) = (free_addr(), free_addr());
    for round in 0..20 {
        let named = Member {
            id: 2,
            role: MemberRole::Data,
            ha_addr: format!("localhost:{}", x.port()),
        };
        let literal = Member {
            id: 3,
            role: MemberRole::Witness,
            ha_addr: y.to_string(),
        };
        // The lookup thread usually finishes after the second change.
        a.members_changed(&[1, 2], &[named]);
        a.members_changed(&[1, 3], &[literal]);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(a.peers(), BTreeMap::from([(3, y)]), "round {round}");
    }
}
