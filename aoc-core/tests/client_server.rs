//! The client server's loop: one thread serves every connection, requests
//! sent back to back on a connection are answered in order, and answers
//! larger than a socket buffer cross whole over TLS. A standalone member
//! on 127.0.0.1.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use aoc_core::client::{frame, Client, ClientOptions, ClientServer, ClientTls, ServerLimits};
use aoc_core::proto::client as pb;
use aoc_core::state::MemKv;
use aoc_core::storage::MemLogStore;
use aoc_core::transport::tls::{CertificateAuthority, TlsIdentity};
use aoc_core::{Node, ReplicaConfig};

const CLUSTER: u64 = 9;

fn standalone() -> Node<MemKv> {
    Node::builder(ReplicaConfig::new(1))
        .voters(vec![1])
        .tick(Duration::from_millis(20))
        .start(MemLogStore::new(), MemKv::new())
        .expect("a standalone member starts")
}

fn serve(node: &Node<MemKv>, tls: Option<TlsIdentity>) -> ClientServer {
    ClientServer::start_observed(
        "127.0.0.1:0".parse().expect("an address"),
        node.clone(),
        BTreeMap::new(),
        ServerLimits::default(),
        None,
        tls,
    )
    .expect("the client API starts")
}

/// The client API threads of this process (named `aoc-client...`).
fn client_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("the process's threads are listed")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("aoc-client"))
        .count()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    s
}

fn request(id: u64, body: pb::Request_oneof_body) -> Vec<u8> {
    let mut req = pb::Request::new();
    req.set_request_id(id);
    req.body = Some(body);
    let mut out = Vec::new();
    frame::write_message(&mut out, &req).expect("a frame in memory");
    out
}

fn status_request(id: u64) -> Vec<u8> {
    request(id, pb::Request_oneof_body::status(pb::StatusRequest::new()))
}

fn recv(s: &mut TcpStream) -> pb::Response {
    let body = frame::read_frame(s, 64 << 20).expect("an answer");
    frame::decode(&body).expect("a response")
}

#[test]
fn one_thread_serves_every_connection() {
    let node = standalone();
    let server = serve(&node, None);
    let before = client_threads();
    let mut conns: Vec<TcpStream> = (0..100).map(|_| connect(server.local_addr())).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(&status_request(i as u64 + 1)).expect("send");
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let r = recv(c);
        assert_eq!(r.get_request_id(), i as u64 + 1);
        assert!(matches!(r.body, Some(pb::Response_oneof_body::status(_))));
    }
    assert_eq!(server.connections(), 100);
    // A thread per connection would have added a hundred; the other
    // tests of this file, running alongside, start a server each.
    let during = client_threads();
    assert!(
        during <= before + 2,
        "{before} threads before 100 connections, {during} with them"
    );
    drop(conns);
    server.shutdown();
    node.shutdown();
}

#[test]
fn requests_sent_back_to_back_are_answered_in_order() {
    let node = standalone();
    let server = serve(&node, None);
    let mut s = connect(server.local_addr());
    let mut put = pb::PutRequest::new();
    put.set_key(b"k".to_vec());
    put.set_value(b"v".to_vec());
    let mut get = pb::GetRequest::new();
    get.set_key(b"k".to_vec());
    // Three requests in one write: each waits for the one before.
    let mut wire = status_request(1);
    wire.extend(request(2, pb::Request_oneof_body::put(put)));
    wire.extend(request(3, pb::Request_oneof_body::get(get)));
    s.write_all(&wire).expect("send");
    let answers: Vec<pb::Response> = (0..3).map(|_| recv(&mut s)).collect();
    assert_eq!(
        answers
            .iter()
            .map(|r| r.get_request_id())
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(matches!(
        answers[0].body,
        Some(pb::Response_oneof_body::status(_))
    ));
    assert!(matches!(
        answers[1].body,
        Some(pb::Response_oneof_body::write(_))
    ));
    match &answers[2].body {
        Some(pb::Response_oneof_body::value(v)) => {
            assert!(v.get_found(), "the get follows the put");
            assert_eq!(v.get_value(), b"v");
        }
        other => panic!("expected a value, got {other:?}"),
    }
    server.shutdown();
    node.shutdown();
}

#[test]
fn a_large_answer_crosses_whole_over_tls() {
    let ca = CertificateAuthority::generate(CLUSTER).expect("a CA");
    let (cert, key) = ca.issue_member(CLUSTER, 1).expect("a member certificate");
    let member = TlsIdentity::from_pem(ca.cert_pem().as_bytes(), cert.as_bytes(), key.as_bytes())
        .expect("the member's identity");
    let (cert, key) = ca
        .issue_client(CLUSTER, "admin")
        .expect("a client certificate");
    let client = TlsIdentity::from_pem(ca.cert_pem().as_bytes(), cert.as_bytes(), key.as_bytes())
        .expect("the client's identity");
    let node = standalone();
    let server = serve(&node, Some(member));
    let opts = ClientOptions {
        tls: Some(ClientTls {
            identity: client,
            cluster_id: CLUSTER,
        }),
        deadline: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let mut c = Client::connect(vec![server.local_addr()], opts).expect("a TLS client connects");
    // 48 values of 64 KiB: a 3 MiB answer, far more than a socket takes
    // at once, written as the client reads it.
    let value = vec![0xa5u8; 64 * 1024];
    for i in 0..48 {
        c.put(format!("big/{i:02}"), value.clone()).expect("a put");
    }
    let pairs = c.scan("big/").expect("a scan");
    assert_eq!(pairs.len(), 48);
    assert!(pairs.iter().all(|(_, v)| v == &value));
    // A plain TCP client gets no answer from a TLS server.
    let mut plain = connect(server.local_addr());
    plain.write_all(&status_request(1)).expect("send");
    assert!(frame::read_frame(&mut plain, 1 << 20).is_err());
    drop(c);
    server.shutdown();
    node.shutdown();
}
