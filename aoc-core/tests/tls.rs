//! Mutual TLS on the HA channel: members with certificates of the cluster's
//! CA talk; a member with another CA's certificate, a plain TCP sender, and
//! a member whose certificate names another member than the one it claims
//! are refused; the transport serves its real peers throughout. The
//! certificates are made at test time.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoc_core::proto::wire::{Frame, Frame_oneof_body, Handshake};
use aoc_core::transport::tcp::{Inbound, TcpConfig, TcpTransport, PROTOCOL_VERSION};
use aoc_core::transport::tls::{member_name, CertificateAuthority, TlsIdentity};
use aoc_core::transport::{Notice, Transport};
use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

#[derive(Default)]
struct Recorder {
    raft: Mutex<Vec<Message>>,
}

impl Inbound for Recorder {
    fn raft(&self, msg: Message) {
        self.raft.lock().push(msg);
    }
    fn notice(&self, _n: Notice) {}
    fn unreachable(&self, _peer: u64) {}
    fn snapshot_sent(&self, _peer: u64, _delivered: bool) {}
}

const CLUSTER: u64 = 7;

// Every server's address is known before the first one starts: each gets
// a port no other test of this process is given.
#[path = "common/ports.rs"]
mod ports;
use ports::free_addr;

fn identity(ca: &CertificateAuthority, member: u64) -> TlsIdentity {
    let (cert, key) = ca.issue_member(CLUSTER, member).expect("issue");
    TlsIdentity::from_pem(ca.cert_pem().as_bytes(), cert.as_bytes(), key.as_bytes())
        .expect("identity")
}

fn start(
    id: u64,
    listen: SocketAddr,
    peers: &[(u64, SocketAddr)],
    tls: TlsIdentity,
) -> (TcpTransport, Arc<Recorder>) {
    let mut cfg = TcpConfig::new(
        CLUSTER,
        id,
        listen,
        peers.iter().copied().collect::<BTreeMap<_, _>>(),
    );
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.max_backoff = Duration::from_millis(200);
    cfg.tls = Some(tls);
    let t = TcpTransport::start(cfg).expect("transport starts");
    let rec = Arc::new(Recorder::default());
    t.set_inbound(rec.clone());
    (t, rec)
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

/// A framed `hello` of this cluster claiming to be `member`.
fn hello_from(member: u64) -> Vec<u8> {
    let mut h = Handshake::new();
    h.cluster_id = CLUSTER;
    h.member_id = member;
    h.protocol_version = PROTOCOL_VERSION;
    let mut f = Frame::new();
    f.set_hello(h);
    let body = f.write_to_bytes().expect("encode");
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    bytes
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            eprintln!("timed out waiting for {what}");
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Sends heartbeats from `t` to member `to` for a while; true if `rec` got
/// one.
fn reaches(t: &TcpTransport, from: u64, to: u64, rec: &Recorder, wait: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < wait {
        t.send(heartbeat(from, to, 1));
        if rec.raft.lock().iter().any(|m| m.from == from) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn members_of_one_ca_talk_and_another_ca_is_refused() {
    let ca = CertificateAuthority::generate(CLUSTER).expect("ca");
    let (a_addr, b_addr, c_addr) = (free_addr(), free_addr(), free_addr());
    let (a, rec_a) = start(1, a_addr, &[(2, b_addr), (3, c_addr)], identity(&ca, 1));
    let (b, rec_b) = start(2, b_addr, &[(1, a_addr)], identity(&ca, 2));
    assert!(reaches(&b, 2, 1, &rec_a, Duration::from_secs(5)), "2 -> 1");
    assert!(reaches(&a, 1, 2, &rec_b, Duration::from_secs(5)), "1 -> 2");

    // Member 3 holds a certificate for its name, from another CA.
    let other = CertificateAuthority::generate(CLUSTER).expect("another ca");
    let (c, _rec_c) = start(3, c_addr, &[(1, a_addr)], identity(&other, 3));
    assert!(
        !reaches(&c, 3, 1, &rec_a, Duration::from_secs(2)),
        "a certificate of another CA is refused"
    );
    assert!(a.stats().bad_frames > 0, "{:?}", a.stats());
    // The real peer is still served.
    let before = rec_a.raft.lock().len();
    b.send(heartbeat(2, 1, 9));
    assert!(wait_until(
        "member 2 still served",
        Duration::from_secs(5),
        || { rec_a.raft.lock().len() > before }
    ));
    a.shutdown();
    b.shutdown();
    c.shutdown();
}

#[test]
fn a_plain_tcp_sender_gets_nothing_in() {
    let ca = CertificateAuthority::generate(CLUSTER).expect("ca");
    let addr = free_addr();
    let (a, rec_a) = start(1, addr, &[(2, free_addr())], identity(&ca, 1));
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // A valid plain hello and a raft frame: not TLS, so not accepted.
    let bytes = hello_from(2);
    let _ = s.write_all(&bytes);
    let mut buf = [0u8; 256];
    // The member answers with a TLS alert at most, then closes.
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    assert!(rec_a.raft.lock().is_empty());
    assert!(a.stats().bad_frames > 0, "{:?}", a.stats());
    a.shutdown();
}

/// A raw TLS client holding member 3's certificate says it is member 2:
/// refused at the hello, naming why.
#[test]
fn a_certificate_must_name_the_member_it_speaks_for() {
    let ca = CertificateAuthority::generate(CLUSTER).expect("ca");
    let addr = free_addr();
    let (a, rec_a) = start(
        1,
        addr,
        &[(2, free_addr()), (3, free_addr())],
        identity(&ca, 1),
    );

    let (cert, key) = ca.issue_member(CLUSTER, 3).expect("issue");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(member_name(CLUSTER, 1)).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let bytes = hello_from(2);
    tls.write_all(&bytes)
        .expect("the TLS handshake itself succeeds");
    tls.flush().expect("flush");
    let mut len = [0u8; 4];
    tls.read_exact(&mut len).expect("a refusal frame");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    tls.read_exact(&mut body).expect("its body");
    let frame = Frame::parse_from_bytes(&body).expect("a frame");
    match frame.body {
        Some(Frame_oneof_body::refused(r)) => {
            assert!(
                r.reason.contains("does not name member-2.cluster-7.aoc"),
                "{}",
                r.reason
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(rec_a.raft.lock().is_empty());
    assert_eq!(a.stats().refused, 1);
    a.shutdown();
}

#[test]
fn a_member_configured_with_another_members_certificate_does_not_start() {
    let ca = CertificateAuthority::generate(CLUSTER).expect("ca");
    let mut cfg = TcpConfig::new(CLUSTER, 2, free_addr(), BTreeMap::new());
    cfg.tls = Some(identity(&ca, 3));
    let err = TcpTransport::start(cfg).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("tls.cert") && text.contains("member-2.cluster-7.aoc"),
        "{text}"
    );
}

#[test]
fn damaged_pem_names_the_file_that_is_wrong() {
    let ca = CertificateAuthority::generate(CLUSTER).expect("ca");
    let (cert, key) = ca.issue_member(CLUSTER, 1).expect("issue");
    let ca_pem = ca.cert_pem();
    let ca_key = ca.key_pem();
    // (ca, cert, key, the field the error must name)
    type Case<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a str);
    let cases: [Case; 4] = [
        (b"garbage", cert.as_bytes(), key.as_bytes(), "tls.ca"),
        (ca_pem.as_bytes(), b"garbage", key.as_bytes(), "tls.cert"),
        (ca_pem.as_bytes(), cert.as_bytes(), b"garbage", "tls.key"),
        (
            ca_pem.as_bytes(),
            cert.as_bytes(),
            ca_key.as_bytes(),
            "tls.key",
        ),
    ];
    for (i, (c, e, k, field)) in cases.iter().enumerate() {
        let err = TlsIdentity::from_pem(c, e, k).expect_err("refused");
        assert!(err.to_string().contains(field), "case {i}: {err}");
    }
    let err = ca.issue_member(8, 1).expect_err("another cluster's member");
    assert!(err.to_string().contains("cluster 7"), "{err}");
}
