//! Backups through the client API: a standalone member on `MemKv` with its
//! `ClientServer` on 127.0.0.1, small response limits so that a small state
//! crosses in many chunks, and raw frames where a test needs to misbehave.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use aoc_core::backup::{self, Backup};
use aoc_core::client::{
    frame, Client, ClientOptions, ClientServer, ServerLimits, MAX_BACKUPS_HELD,
};
use aoc_core::proto::client as pb;
use aoc_core::state::{KvCommand, KvStateMachine, MemKv};
use aoc_core::storage::MemLogStore;
use aoc_core::{Node, ReplicaConfig};

/// A standalone member of cluster 9 with `keys` keys of 100-byte values,
/// its server answering at most `max_response_bytes` per frame.
fn member(keys: usize, max_response_bytes: usize) -> (Node<MemKv>, ClientServer) {
    let node = Node::builder(ReplicaConfig::new(1))
        .voters(vec![1])
        .tick(Duration::from_millis(20))
        .start(MemLogStore::new(), MemKv::new())
        .expect("the member starts");
    for i in 0..keys {
        node.propose(KvCommand::put(format!("k{i:04}"), vec![b'v'; 100]).encode())
            .expect("written");
    }
    let limits = ServerLimits {
        max_response_bytes,
        ..ServerLimits::default()
    };
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    let server = ClientServer::start_in_cluster(
        9,
        listen,
        node.clone(),
        BTreeMap::new(),
        limits,
        None,
        None,
    )
    .expect("the server starts");
    (node, server)
}

fn scan_all(node: &Node<MemKv>) -> Vec<(Vec<u8>, Vec<u8>)> {
    node.read(|kv| kv.scan(b"")).expect("read").expect("scan")
}

#[test]
fn a_backup_crosses_in_bounded_chunks_and_restores_the_same_state() {
    let (node, server) = member(300, 4096);
    let mut client =
        Client::connect(vec![server.local_addr()], ClientOptions::default()).expect("client");
    let written = client
        .put("last", "write")
        .expect("a write before the backup");
    assert!(written.ok);
    let mut calls = Vec::new();
    let b = client
        .backup(|got, total| calls.push((got, total)))
        .expect("backup");
    // ~33 KB of state under a 4 KiB response limit: many chunks, each
    // progress report further on, the last one complete.
    assert!(calls.len() >= 8, "{} chunks", calls.len());
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(
        calls.last().copied(),
        Some((b.data.len() as u64, b.data.len() as u64))
    );
    assert_eq!((b.meta.cluster_id, b.meta.member_id), (9, 1));
    assert!(b.meta.term >= 1);
    let status = node.status();
    assert!(b.meta.index <= status.applied, "{:?} {status:?}", b.meta);
    let summary = backup::kv_summary(&b).expect("a key-value snapshot");
    assert_eq!(summary.keys, 301);

    // Through the file form, into a new member 5.
    let b = Backup::decode(&b.encode()).expect("decoded");
    let (log, mut kv) = (MemLogStore::new(), MemKv::new());
    backup::restore(&b, 5, &log, &mut kv).expect("restored");
    let restored = Node::builder(ReplicaConfig::new(5))
        .voters(vec![5])
        .tick(Duration::from_millis(20))
        .start(log, kv)
        .expect("the restored member starts");
    assert_eq!(scan_all(&restored), scan_all(&node));
    restored.shutdown();
    server.shutdown();
    node.shutdown();
}

#[test]
fn the_client_frame_limit_bounds_the_chunks_too() {
    let (node, server) = member(50, 16 * 1024 * 1024);
    let opts = ClientOptions {
        max_frame_bytes: 2048,
        ..ClientOptions::default()
    };
    let mut client = Client::connect(vec![server.local_addr()], opts).expect("client");
    let mut chunks = 0;
    let b = client.backup(|_, _| chunks += 1).expect("backup");
    assert!(b.data.len() > 4096, "{} bytes", b.data.len());
    assert!(chunks >= 4, "{chunks} chunks for {} bytes", b.data.len());
    server.shutdown();
    node.shutdown();
}

/// One raw request on `stream`; its answer's body.
fn exchange(stream: &mut TcpStream, body: pb::Request_oneof_body) -> pb::Response_oneof_body {
    let mut req = pb::Request::new();
    req.set_request_id(1);
    req.body = Some(body);
    frame::write_message(stream, &req).expect("sent");
    let answer = frame::read_frame(stream, 1 << 20).expect("answered");
    let r: pb::Response = frame::decode(&answer).expect("a response");
    r.body.expect("a body")
}

fn backup_request(start: bool, offset: u64) -> pb::Request_oneof_body {
    let mut b = pb::BackupRequest::new();
    b.set_start(start);
    b.set_offset(offset);
    pb::Request_oneof_body::backup(b)
}

#[test]
fn held_snapshots_are_bounded_and_given_back() {
    let (node, server) = member(100, 4096);
    let connect = || {
        let s = TcpStream::connect(server.local_addr()).expect("connected");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    };
    // A continuation with nothing started is refused, naming why.
    let mut lone = connect();
    match exchange(&mut lone, backup_request(false, 0)) {
        pb::Response_oneof_body::error(e) => {
            assert_eq!(e.get_kind(), pb::ErrorKind::INVALID);
            assert!(
                e.get_message().contains("no backup is in progress"),
                "{e:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // MAX_BACKUPS_HELD connections each hold a snapshot (none finished).
    let mut holders: Vec<TcpStream> = (0..MAX_BACKUPS_HELD).map(|_| connect()).collect();
    for h in &mut holders {
        match exchange(h, backup_request(true, 0)) {
            pb::Response_oneof_body::backup(c) => {
                assert!((c.get_data().len() as u64) < c.get_total_bytes())
            }
            other => panic!("{other:?}"),
        }
    }
    // One more is busy.
    match exchange(&mut lone, backup_request(true, 0)) {
        pb::Response_oneof_body::error(e) => {
            assert_eq!(e.get_kind(), pb::ErrorKind::BUSY, "{e:?}");
            assert!(e.get_message().contains("backups are in progress"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    // An offset beyond the snapshot is refused; the holder keeps its place.
    match exchange(&mut holders[0], backup_request(false, 1 << 40)) {
        pb::Response_oneof_body::error(e) => {
            assert_eq!(e.get_kind(), pb::ErrorKind::INVALID);
            assert!(e.get_message().contains("beyond"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    // A holder that goes away gives its place back (the server notices
    // the close and drops the snapshot).
    drop(holders.pop());
    let mut started = false;
    for _ in 0..100 {
        if let pb::Response_oneof_body::backup(_) = exchange(&mut lone, backup_request(true, 0)) {
            started = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(started, "the slot of a closed connection was given back");
    drop(holders);
    drop(lone);
    server.shutdown();
    node.shutdown();
}
