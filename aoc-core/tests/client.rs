//! The client API over TCP: an HA cluster (data members 1 and 2, witness
//! 3) in one process over a `LocalNetwork`, a `ClientServer` for each data
//! member on 127.0.0.1, and the `Client` library (plus raw frames where a
//! test needs to misbehave). Ticks are 20 ms so elections are quick.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aoc_core::client::{frame, Client, ClientOptions, ClientServer, ServerLimits};
use aoc_core::proto::client as pb;
use aoc_core::state::{MemKv, NoStateMachine};
use aoc_core::storage::MemLogStore;
use aoc_core::transport::LocalNetwork;
use aoc_core::{Error, Mode, Node, ReplicaConfig, Role};

const TICK: Duration = Duration::from_millis(20);

// Every server's address is known before the first one starts: each gets
// a port no other test of this process is given.
#[path = "common/ports.rs"]
mod ports;
use ports::free_addr;

struct Cluster {
    net: LocalNetwork,
    data: Vec<Option<Node<MemKv>>>,
    servers: Vec<Option<ClientServer>>,
    addrs: Vec<SocketAddr>,
    witness: Option<Node<NoStateMachine>>,
}

impl Cluster {
    fn new() -> Self {
        Self::with_limits(ServerLimits::default())
    }

    fn with_limits(limits: ServerLimits) -> Self {
        let net = LocalNetwork::new();
        let mut data = Vec::new();
        for id in 1..=2u64 {
            let node = Self::builder(id)
                .start_with_transport(MemLogStore::new(), MemKv::new(), Arc::new(net.transport()))
                .expect("data member starts");
            net.attach(id, node.clone());
            data.push(Some(node));
        }
        let witness = Self::builder(3)
            .start_witness(MemLogStore::new(), Arc::new(net.transport()))
            .expect("witness starts");
        net.attach(3, witness.clone());
        // Every server must know both addresses: pick free ports, and pick
        // again should another process take one in between.
        let mut attempts = 0;
        let (addrs, servers) = loop {
            attempts += 1;
            let addrs = vec![free_addr(), free_addr()];
            let peers_api: BTreeMap<u64, SocketAddr> = [(1, addrs[0]), (2, addrs[1])].into();
            let started: Result<Vec<ClientServer>, _> = (0..2)
                .map(|i| {
                    ClientServer::start(
                        addrs[i],
                        data[i].clone().unwrap(),
                        peers_api.clone(),
                        limits.clone(),
                    )
                })
                .collect();
            match started {
                Ok(servers) => break (addrs, servers.into_iter().map(Some).collect()),
                Err(e) if attempts < 5 => eprintln!("client API ports taken ({e}); again"),
                Err(e) => panic!("client API starts: {e}"),
            }
        };
        Cluster {
            net,
            data,
            servers,
            addrs,
            witness: Some(witness),
        }
    }

    fn builder(id: u64) -> aoc_core::NodeBuilder {
        Node::builder(ReplicaConfig::ha(id, 3))
            .voters(vec![1, 2, 3])
            .tick(TICK)
            .seed(id)
            .request_timeout(Duration::from_millis(500))
    }

    fn node(&self, id: u64) -> &Node<MemKv> {
        self.data[id as usize - 1].as_ref().expect("data member up")
    }

    fn addr(&self, id: u64) -> SocketAddr {
        self.addrs[id as usize - 1]
    }

    fn active(&self) -> Option<u64> {
        self.data
            .iter()
            .flatten()
            .find(|n| n.status().active)
            .map(|n| n.id())
    }

    /// Waits for an active in sync mode; returns (active, passive).
    fn wait_sync(&self) -> (u64, u64) {
        wait("an active in sync mode", Duration::from_secs(10), || {
            self.active()
                .is_some_and(|a| self.node(a).status().mode == Mode::Sync)
        });
        let a = self.active().expect("active");
        (a, 3 - a)
    }

    /// Stops data member `id`'s node, then its client API.
    fn kill(&mut self, id: u64) {
        self.net.detach(id);
        if let Some(n) = self.data[id as usize - 1].take() {
            n.shutdown();
        }
        if let Some(s) = self.servers[id as usize - 1].take() {
            s.shutdown();
        }
    }

    fn shutdown(&mut self) {
        for id in 1..=2 {
            self.kill(id);
        }
        self.net.detach(3);
        if let Some(w) = self.witness.take() {
            w.shutdown();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn opts() -> ClientOptions {
    ClientOptions {
        deadline: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

/// A raw connection speaking frames, for the tests that misbehave.
struct Raw {
    stream: TcpStream,
    next_id: u64,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Raw { stream, next_id: 1 }
    }

    fn send(&mut self, body: pb::Request_oneof_body) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = pb::Request::new();
        req.set_request_id(id);
        req.body = Some(body);
        frame::write_message(&mut self.stream, &req).expect("send");
        id
    }

    fn recv(&mut self) -> pb::Response {
        let body = frame::read_frame(&mut self.stream, 64 << 20).expect("an answer");
        frame::decode(&body).expect("a response")
    }

    fn call(&mut self, body: pb::Request_oneof_body) -> pb::Response_oneof_body {
        let id = self.send(body);
        let r = self.recv();
        assert_eq!(r.get_request_id(), id);
        r.body.expect("a body")
    }
}

fn cas_request(client: u64, seq: u64, key: &str, new: &str) -> pb::Request_oneof_body {
    let mut id = pb::WriteId::new();
    id.set_client_id(client);
    id.set_sequence(seq);
    let mut c = pb::CasRequest::new();
    c.set_id(id);
    c.set_key(key.into());
    c.set_expected_absent(true);
    c.set_new_value(new.into());
    pb::Request_oneof_body::cas(c)
}

#[test]
fn put_get_delete_cas_scan() {
    let c = Cluster::new();
    let (active, _) = c.wait_sync();
    let mut client = Client::connect(c.addrs.clone(), opts()).expect("connect");
    assert!(client.client_id() > 0);
    assert_eq!(client.connected_to(), Some(c.addr(active)));

    let r = client.put("a/1", "one").unwrap();
    assert!(r.ok);
    assert_eq!(r.previous, None);
    let r = client.put("a/1", "uno").unwrap();
    assert_eq!(r.previous.as_deref(), Some(&b"one"[..]));
    client.put("a/2", "two").unwrap();
    client.put("b/1", "other").unwrap();
    assert_eq!(client.get("a/1").unwrap().as_deref(), Some(&b"uno"[..]));
    assert_eq!(client.get("missing").unwrap(), None);

    let pairs = client.scan("a/").unwrap();
    assert_eq!(
        pairs,
        vec![
            (b"a/1".to_vec(), b"uno".to_vec()),
            (b"a/2".to_vec(), b"two".to_vec())
        ]
    );
    assert_eq!(client.scan("").unwrap().len(), 3);
    assert!(client.scan("zzz").unwrap().is_empty());

    let r = client.delete("a/2").unwrap();
    assert!(r.ok);
    assert_eq!(r.previous.as_deref(), Some(&b"two"[..]));
    assert!(!client.delete("a/2").unwrap().ok, "already gone");
    assert_eq!(client.get("a/2").unwrap(), None);

    // Compare-and-swap: absent -> value, value -> value, value -> absent.
    assert!(client.cas("lock", None, Some(b"me".to_vec())).unwrap());
    assert!(!client.cas("lock", None, Some(b"you".to_vec())).unwrap());
    assert!(!client
        .cas("lock", Some(b"you".to_vec()), Some(b"x".to_vec()))
        .unwrap());
    assert!(client
        .cas("lock", Some(b"me".to_vec()), Some(b"me2".to_vec()))
        .unwrap());
    assert_eq!(client.get("lock").unwrap().as_deref(), Some(&b"me2"[..]));
    assert!(client.cas("lock", Some(b"me2".to_vec()), None).unwrap());
    assert_eq!(client.get("lock").unwrap(), None);
    // Empty values are values, not absence.
    assert!(client.cas("empty", None, Some(Vec::new())).unwrap());
    assert_eq!(client.get("empty").unwrap(), Some(Vec::new()));
    assert!(!client.cas("empty", None, None).unwrap());
    assert!(client.cas("empty", Some(Vec::new()), None).unwrap());

    assert_eq!(client.last_sequence(), 14);
}

#[test]
fn the_client_finds_the_active_from_the_passive() {
    let c = Cluster::new();
    let (active, passive) = c.wait_sync();
    // Only the passive's endpoint: the NOT_LEADER answer names the active's
    // client address.
    let mut client = Client::connect(vec![c.addr(passive)], opts()).expect("connect");
    assert_eq!(client.connected_to(), Some(c.addr(active)));
    client.put("k", "v").unwrap();
    assert_eq!(client.get("k").unwrap().as_deref(), Some(&b"v"[..]));

    // The passive listed first.
    let mut client = Client::connect(vec![c.addr(passive), c.addr(active)], opts()).unwrap();
    assert_eq!(client.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(client.connected_to(), Some(c.addr(active)));

    // A dead endpoint first: skipped.
    let dead = free_addr();
    let mut client = Client::connect(vec![dead, c.addr(passive)], opts()).unwrap();
    assert_eq!(client.get("k").unwrap().as_deref(), Some(&b"v"[..]));

    // The passive itself refuses reads and writes with the hint.
    let mut raw = Raw::connect(c.addr(passive));
    let mut g = pb::GetRequest::new();
    g.set_key(b"k".to_vec());
    match raw.call(pb::Request_oneof_body::get(g)) {
        pb::Response_oneof_body::error(e) => {
            assert_eq!(e.get_kind(), pb::ErrorKind::NOT_LEADER);
            assert_eq!(e.get_leader_id(), active);
            assert_eq!(e.get_leader_addr(), c.addr(active).to_string());
        }
        other => panic!("expected NOT_LEADER, got {other:?}"),
    }
}

#[test]
fn writes_resume_on_the_new_active_after_a_failover() {
    let mut c = Cluster::new();
    let (active, passive) = c.wait_sync();
    // The old active first, so the client starts there.
    let endpoints = vec![c.addr(active), c.addr(passive)];
    let mut client = Client::connect(endpoints.clone(), opts()).expect("connect");
    assert_eq!(client.connected_to(), Some(c.addr(active)));

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, done, stop) = (acked.clone(), done.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let start = Instant::now();
                let key = format!("w{i:05}");
                client
                    .put(key.clone(), i.to_string())
                    .unwrap_or_else(|e| panic!("put {key}: {e}"));
                // A counter bumped by compare-and-swap: a write applied twice
                // (or answered by something other than its first outcome)
                // would make a later swap fail.
                let expected = (i > 0).then(|| i.to_string().into_bytes());
                let swapped = client
                    .cas("counter", expected, Some((i + 1).to_string().into_bytes()))
                    .unwrap_or_else(|e| panic!("cas {i}: {e}"));
                assert!(swapped, "cas {i} was applied exactly once");
                worst = worst.max(start.elapsed());
                acked.lock().unwrap().push(key);
                i += 1;
                done.store(i as usize, Ordering::SeqCst);
            }
            (client, worst)
        })
    };
    wait(
        "writes before the failover",
        Duration::from_secs(10),
        || done.load(Ordering::SeqCst) >= 30,
    );
    c.kill(active);
    let at_kill = done.load(Ordering::SeqCst);
    wait("writes after the failover", Duration::from_secs(15), || {
        done.load(Ordering::SeqCst) >= at_kill + 30
    });
    stop.store(true, Ordering::SeqCst);
    let (mut client, worst) = writer.join().expect("the writer did not fail");
    eprintln!("client failover: longest write (put + cas) {worst:?}");
    assert_eq!(c.active(), Some(passive));
    assert_eq!(client.connected_to(), Some(c.addr(passive)));

    let acked = acked.lock().unwrap().clone();
    let n = acked.len();
    let stored = client.scan("w").unwrap();
    let stored: Vec<String> = stored
        .into_iter()
        .map(|(k, _)| String::from_utf8(k).unwrap())
        .collect();
    for key in &acked {
        assert!(stored.contains(key), "acknowledged {key} is readable");
    }
    assert_eq!(
        client.get("counter").unwrap(),
        Some(n.to_string().into_bytes()),
        "every acknowledged increment applied once"
    );
    c.shutdown();
}

#[test]
fn a_write_whose_answer_is_lost_is_applied_once() {
    let c = Cluster::new();
    let (active, passive) = c.wait_sync();
    let mut raw = Raw::connect(c.addr(active));
    let client_id = match raw.call(pb::Request_oneof_body::register(pb::RegisterRequest::new())) {
        pb::Response_oneof_body::registered(r) => r.get_client_id(),
        other => panic!("expected registered, got {other:?}"),
    };
    assert!(client_id > 0);

    // Sent, and the connection dropped before the answer: the answer is
    // lost.
    raw.send(cas_request(client_id, 1, "once", "first"));
    drop(raw);
    // The retry, on a new connection: the first answer (it swapped), not a
    // second execution (which would fail to swap and see "first").
    let mut raw = Raw::connect(c.addr(active));
    let answer = |r: pb::Response_oneof_body| match r {
        pb::Response_oneof_body::write(mut w) => {
            // Each retry is carried by an entry of its own: the index
            // differs, the state machine's answer does not.
            assert!(w.get_index() > 0);
            w.clear_index();
            w
        }
        other => panic!("expected a write answer, got {other:?}"),
    };
    let retry = answer(raw.call(cas_request(client_id, 1, "once", "first")));
    let again = answer(raw.call(cas_request(client_id, 1, "once", "first")));
    assert_eq!(retry, again, "every retry gets the same answer");
    assert!(retry.get_ok(), "the retried cas reports the first outcome");
    assert!(!retry.get_had_previous());
    // The next sequence is a new write: it sees the value and fails.
    match raw.call(cas_request(client_id, 2, "once", "second")) {
        pb::Response_oneof_body::write(w) => {
            assert!(!w.get_ok());
            assert_eq!(w.get_previous(), b"first");
        }
        other => panic!("expected a write answer, got {other:?}"),
    }
    // An older sequence is refused.
    match raw.call(cas_request(client_id, 1, "once", "first")) {
        pb::Response_oneof_body::error(e) => {
            assert_eq!(e.get_kind(), pb::ErrorKind::STALE_SEQUENCE);
            assert_eq!(e.get_last_sequence(), 2);
        }
        other => panic!("expected STALE_SEQUENCE, got {other:?}"),
    }
    // An unknown session.
    match raw.call(cas_request(client_id + 1_000_000, 1, "once", "x")) {
        pb::Response_oneof_body::error(e) => {
            assert_eq!(e.get_kind(), pb::ErrorKind::SESSION_EXPIRED)
        }
        other => panic!("expected SESSION_EXPIRED, got {other:?}"),
    }
    let mut client = Client::connect(vec![c.addr(passive)], opts()).unwrap();
    assert_eq!(client.get("once").unwrap(), Some(b"first".to_vec()));
}

#[test]
fn over_limit_and_garbage_requests_get_errors_and_the_server_keeps_serving() {
    let limits = ServerLimits {
        max_frame_bytes: 4096,
        max_key_bytes: 16,
        max_value_bytes: 1024,
        ..ServerLimits::default()
    };
    let c = Cluster::with_limits(limits);
    let (active, _) = c.wait_sync();
    let mut client = Client::connect(c.addrs.clone(), opts()).unwrap();

    match client.put(vec![b'k'; 17], "v") {
        Err(Error::TooLarge { what, size, limit }) => {
            assert!(what.contains("max_key_bytes"), "{what}");
            assert_eq!((size, limit), (17, 16));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    match client.put("k", vec![0u8; 1025]) {
        Err(Error::TooLarge { what, size, limit }) => {
            assert!(what.contains("max_value_bytes"), "{what}");
            assert_eq!((size, limit), (1025, 1024));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    match client.cas("k", Some(vec![0u8; 2000]), None) {
        Err(Error::TooLarge { what, .. }) => assert!(what.contains("max_value_bytes")),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    match client.get(vec![b'k'; 100]) {
        Err(Error::TooLarge { what, .. }) => assert!(what.contains("max_key_bytes")),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // At the limits: fine.
    client.put(vec![b'k'; 16], vec![7u8; 1024]).unwrap();

    // A garbage frame: an INVALID answer, and the connection still works.
    let mut raw = Raw::connect(c.addr(active));
    frame::write_frame(&mut raw.stream, &[0xff; 32]).unwrap();
    let r = raw.recv();
    assert_eq!(r.get_request_id(), 0);
    match r.body {
        Some(pb::Response_oneof_body::error(e)) => {
            assert_eq!(e.get_kind(), pb::ErrorKind::INVALID, "{e:?}")
        }
        other => panic!("expected INVALID, got {other:?}"),
    }
    // A request with no operation.
    let mut empty = pb::Request::new();
    empty.set_request_id(9);
    frame::write_message(&mut raw.stream, &empty).unwrap();
    let r = raw.recv();
    assert_eq!(r.get_request_id(), 9);
    assert!(
        matches!(&r.body, Some(pb::Response_oneof_body::error(e)) if e.get_kind() == pb::ErrorKind::INVALID)
    );
    // A contradictory cas.
    let mut bad = pb::CasRequest::new();
    bad.set_key(b"k".to_vec());
    bad.set_expected(b"x".to_vec());
    bad.set_expected_absent(true);
    match raw.call(pb::Request_oneof_body::cas(bad)) {
        pb::Response_oneof_body::error(e) => assert_eq!(e.get_kind(), pb::ErrorKind::INVALID),
        other => panic!("expected INVALID, got {other:?}"),
    }
    assert!(matches!(
        raw.call(pb::Request_oneof_body::status(pb::StatusRequest::new())),
        pb::Response_oneof_body::status(_)
    ));

    // A frame over max_frame_bytes: TOO_LARGE naming the limit, then the
    // server closes the connection (it cannot follow the stream).
    let mut raw = Raw::connect(c.addr(active));
    raw.stream.write_all(&100_000u32.to_be_bytes()).unwrap();
    let r = raw.recv();
    match r.body {
        Some(pb::Response_oneof_body::error(e)) => {
            assert_eq!(e.get_kind(), pb::ErrorKind::TOO_LARGE);
            assert!(e.get_what().contains("max_frame_bytes"));
            assert_eq!((e.get_size(), e.get_limit()), (100_000, 4096));
        }
        other => panic!("expected TOO_LARGE, got {other:?}"),
    }
    let mut rest = Vec::new();
    assert_eq!(raw.stream.read_to_end(&mut rest).unwrap_or(0), 0, "closed");

    // A connection closed inside a frame.
    let mut raw = Raw::connect(c.addr(active));
    raw.stream.write_all(&[0, 0, 1, 0, 1, 2, 3]).unwrap();
    drop(raw);

    // The server still serves.
    client.put("after", "garbage").unwrap();
    assert_eq!(client.get("after").unwrap(), Some(b"garbage".to_vec()));
}

#[test]
fn too_many_connections_are_refused_with_busy() {
    let node = Node::builder(ReplicaConfig::new(1))
        .voters(vec![1])
        .tick(TICK)
        .start(MemLogStore::new(), MemKv::new())
        .unwrap();
    let limits = ServerLimits {
        max_connections: 1,
        ..ServerLimits::default()
    };
    let server = ClientServer::start(
        "127.0.0.1:0".parse().unwrap(),
        node.clone(),
        BTreeMap::new(),
        limits,
    )
    .unwrap();
    let mut first = Raw::connect(server.local_addr());
    assert!(matches!(
        first.call(pb::Request_oneof_body::status(pb::StatusRequest::new())),
        pb::Response_oneof_body::status(_)
    ));
    let mut second = Raw::connect(server.local_addr());
    let r = second.recv();
    match r.body {
        Some(pb::Response_oneof_body::error(e)) => {
            assert_eq!(e.get_kind(), pb::ErrorKind::BUSY);
            assert!(e.get_message().contains("max_connections"));
            assert_eq!(e.get_limit(), 1);
        }
        other => panic!("expected BUSY, got {other:?}"),
    }
    drop(first);
    wait(
        "the first connection to close",
        Duration::from_secs(5),
        || server.connections() == 0,
    );
    // Room again: a client connects (retrying if it races the close).
    let mut client = Client::connect(vec![server.local_addr()], opts()).unwrap();
    client.put("k", "v").unwrap();
    drop(client);
    server.shutdown();
    node.shutdown();
}

#[test]
fn status_reports_role_and_mode() {
    let c = Cluster::new();
    let (active, passive) = c.wait_sync();
    let client = Client::connect(c.addrs.clone(), opts()).unwrap();
    let all = client.status_all();
    assert_eq!(all.len(), 2);
    for (addr, status) in all {
        let s = status.unwrap_or_else(|e| panic!("status of {addr}: {e}"));
        let id = if addr == c.addr(active) {
            active
        } else {
            passive
        };
        assert_eq!(s.status.id, id);
        assert_eq!(s.status.voters, vec![1, 2, 3]);
        assert!(!s.status.witness);
        assert_eq!(s.status.leader, Some(active));
        assert_eq!(s.leader_api, Some(c.addr(active)));
        if id == active {
            assert_eq!(s.status.role, Role::Leader);
            assert!(s.status.active);
            assert_eq!(s.status.mode, Mode::Sync);
            assert!(s.status.passive_lag_entries.is_some());
            assert_eq!(s.status.progress.len(), 2, "{:?}", s.status.progress);
        } else {
            assert_eq!(s.status.role, Role::Follower);
            assert!(!s.status.active);
        }
        assert_eq!(s.status.maintenance, None);
    }
    // An unreachable endpoint: an error naming it.
    let dead = free_addr();
    match client.status(dead) {
        Err(Error::Timeout { what }) => assert!(what.contains(&dead.to_string())),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn switchover_and_maintenance_through_the_client() {
    let c = Cluster::new();
    let (active, passive) = c.wait_sync();
    let mut client = Client::connect(vec![c.addr(passive)], opts()).unwrap();
    client.put("before", "1").unwrap();

    client.maintenance(true).unwrap();
    let s = client.status(c.addr(active)).unwrap().status;
    assert_eq!(s.maintenance.map(|(allowed, _)| allowed), Some(active));
    client.maintenance(false).unwrap();
    wait("maintenance off", Duration::from_secs(5), || {
        client
            .status(c.addr(active))
            .unwrap()
            .status
            .maintenance
            .is_none()
    });

    let pause = client.switchover().expect("switchover");
    eprintln!("client switchover: pause {pause:?}");
    wait("the new active", Duration::from_secs(5), || {
        c.active() == Some(passive)
    });
    client.put("after", "2").unwrap();
    assert_eq!(client.connected_to(), Some(c.addr(passive)));
    assert_eq!(client.get("before").unwrap(), Some(b"1".to_vec()));
    assert_eq!(client.get("after").unwrap(), Some(b"2".to_vec()));
}

#[test]
fn a_client_with_no_reachable_member_times_out() {
    let options = ClientOptions {
        deadline: Duration::from_millis(300),
        ..ClientOptions::default()
    };
    let start = Instant::now();
    match Client::connect(vec![free_addr(), free_addr()], options) {
        Err(Error::Timeout { what }) => assert!(what.contains("register"), "{what}"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        Client::connect(Vec::new(), ClientOptions::default()),
        Err(Error::InvalidConfig { .. })
    ));
}

#[test]
fn a_write_not_answered_in_time_gets_timeout_and_the_connection_goes_on() {
    let node = Node::builder(ReplicaConfig::new(1))
        .voters(vec![1])
        .tick(TICK)
        .request_timeout(Duration::from_secs(1))
        .start(MemLogStore::new(), MemKv::new())
        .unwrap();
    let server = ClientServer::start(
        "127.0.0.1:0".parse().unwrap(),
        node.clone(),
        BTreeMap::new(),
        ServerLimits::default(),
    )
    .unwrap();
    let mut raw = Raw::connect(server.local_addr());
    assert!(matches!(
        raw.call(pb::Request_oneof_body::status(pb::StatusRequest::new())),
        pb::Response_oneof_body::status(_)
    ));
    // A read that holds the raft thread for 1.6 s: the write waits past
    // the request timeout (1 s), and the get sent after its TIMEOUT is
    // still waiting when the raft thread comes back (half a second of
    // margin each way).
    let holder = node.clone();
    let hold = std::thread::spawn(move || {
        holder.read(|_| std::thread::sleep(Duration::from_millis(1600)))
    });
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let mut p = pb::PutRequest::new();
    p.set_key(b"late".to_vec());
    p.set_value(b"v".to_vec());
    match raw.call(pb::Request_oneof_body::put(p)) {
        pb::Response_oneof_body::error(e) => {
            assert_eq!(e.get_kind(), pb::ErrorKind::TIMEOUT, "{e:?}");
        }
        other => panic!("expected TIMEOUT, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(1450),
        "answered after {waited:?}"
    );
    // A second put, sent while the raft thread is still held: both are
    // applied together when it comes back, the first one first. The
    // second is answered with its own outcome (the last entry), never
    // with the first one's.
    let mut p = pb::PutRequest::new();
    p.set_key(b"later".to_vec());
    p.set_value(b"w".to_vec());
    match raw.call(pb::Request_oneof_body::put(p)) {
        pb::Response_oneof_body::write(w) => {
            assert!(w.get_ok());
            assert_eq!(w.get_index(), node.status().last_index, "{w:?}");
        }
        other => panic!("expected the second put's outcome, got {other:?}"),
    }
    assert!(matches!(
        raw.call(pb::Request_oneof_body::status(pb::StatusRequest::new())),
        pb::Response_oneof_body::status(_)
    ));
    let _ = hold.join();
    server.shutdown();
    node.shutdown();
}

#[test]
fn idle_connections_are_closed_and_the_client_reconnects() {
    let node = Node::builder(ReplicaConfig::new(1))
        .voters(vec![1])
        .tick(TICK)
        .start(MemLogStore::new(), MemKv::new())
        .unwrap();
    let limits = ServerLimits {
        idle_timeout: Some(Duration::from_millis(200)),
        ..ServerLimits::default()
    };
    let server = ClientServer::start(
        "127.0.0.1:0".parse().unwrap(),
        node.clone(),
        BTreeMap::new(),
        limits,
    )
    .unwrap();
    let mut client = Client::connect(vec![server.local_addr()], opts()).unwrap();
    client.put("k", "1").unwrap();
    assert_eq!(server.connections(), 1);
    wait(
        "the idle connection to close",
        Duration::from_secs(5),
        || server.connections() == 0,
    );
    client.put("k", "2").unwrap();
    assert_eq!(client.get("k").unwrap(), Some(b"2".to_vec()));
    drop(client);
    server.shutdown();
    node.shutdown();
}

#[test]
fn an_expired_session_is_replaced_and_the_write_applied() {
    let mut cfg = ReplicaConfig::new(1);
    cfg.session_ttl_ms = 200;
    let node = Node::builder(cfg)
        .voters(vec![1])
        .tick(TICK)
        .start(MemLogStore::new(), MemKv::new())
        .unwrap();
    let server = ClientServer::start(
        "127.0.0.1:0".parse().unwrap(),
        node.clone(),
        BTreeMap::new(),
        ServerLimits::default(),
    )
    .unwrap();
    let mut client = Client::connect(vec![server.local_addr()], opts()).unwrap();
    assert!(client.cas("c", None, Some(b"1".to_vec())).unwrap());
    let first = client.client_id();
    std::thread::sleep(Duration::from_millis(400));
    // Another client's entries move the leader's stamp past the ttl.
    let mut other = Client::connect(vec![server.local_addr()], opts()).unwrap();
    other.put("x", "y").unwrap();
    assert!(client
        .cas("c", Some(b"1".to_vec()), Some(b"2".to_vec()))
        .unwrap());
    assert_ne!(client.client_id(), first, "a new session");
    assert_eq!(client.last_sequence(), 1);
    assert_eq!(client.get("c").unwrap(), Some(b"2".to_vec()));
    drop((client, other));
    server.shutdown();
    node.shutdown();
}

/// A client that trickles a request a byte at a time (slow loris) is cut
/// off at `frame_timeout`, though every byte comes well within
/// `idle_timeout`; other clients are served all the while, and nothing is
/// written.
#[test]
fn a_request_trickled_byte_by_byte_is_cut_off() {
    let node = Node::builder(ReplicaConfig::new(1))
        .voters(vec![1])
        .tick(TICK)
        .start(MemLogStore::new(), MemKv::new())
        .unwrap();
    let limits = ServerLimits {
        idle_timeout: Some(Duration::from_secs(2)),
        frame_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    };
    let server = ClientServer::start(
        "127.0.0.1:0".parse().unwrap(),
        node.clone(),
        BTreeMap::new(),
        limits,
    )
    .unwrap();
    let mut req = pb::Request::new();
    req.set_request_id(1);
    let mut put = pb::PutRequest::new();
    put.set_key(b"slow".to_vec());
    put.set_value(vec![b'x'; 64]);
    req.set_put(put);
    let mut bytes = Vec::new();
    frame::write_message(&mut bytes, &req).expect("a frame in memory");
    let mut loris = TcpStream::connect(server.local_addr()).expect("connect");
    let mut client = Client::connect(vec![server.local_addr()], opts()).unwrap();
    let started = Instant::now();
    let mut cut = false;
    for (i, b) in bytes.iter().enumerate() {
        if loris.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        client
            .put(format!("other{i}"), "v")
            .expect("others are served");
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    if !cut {
        loris
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let closed = match loris.read(&mut buf) {
            Ok(n) => n == 0,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        assert!(closed, "the trickling connection was closed");
    }
    assert_eq!(client.get("slow").unwrap(), None, "nothing was written");
    drop(client);
    server.shutdown();
    node.shutdown();
}
