//! The health listener with a fake status source: `/health` follows
//! `active`, `/ready` follows the replica's start and the known leader,
//! `/metrics` reports the status and the recorded counters.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aoc_core::{Mode, Role, Status};
use aoc_node::health::{self, Metrics, StatusSource};

/// A minimal HTTP/1.0 request; returns (status code, body).
fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path)
}

fn leader_status() -> Status {
    let mut s = Status::blank(1, String::new());
    s.waiting_for = None;
    s.role = Role::Leader;
    s.term = 7;
    s.leader = Some(1);
    s.commit = 120;
    s.applied = 118;
    s.last_index = 121;
    s.voters = vec![1, 2, 3];
    s.active = true;
    s.fencing_token = Some(7);
    s.mode = Mode::Sync;
    s.passive_lag_entries = Some(3);
    s.passive_lag_bytes = Some(4096);
    s.log_bytes = 1_048_576;
    s
}

fn fake(status: Status) -> (Arc<Mutex<Status>>, StatusSource) {
    let shared = Arc::new(Mutex::new(status));
    let source = {
        let shared = shared.clone();
        Arc::new(move || shared.lock().expect("status lock").clone()) as StatusSource
    };
    (shared, source)
}

#[test]
fn health_follows_active() {
    let (status, source) = fake(leader_status());
    let server = health::serve("127.0.0.1:0", source, Arc::new(Metrics::new())).expect("serve");
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    let (code, body) = get(addr, "/health");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.lines().count(), 1, "{body:?}");
    let v: serde_json::Value = serde_json::from_str(body.trim()).expect("one JSON object");
    assert_eq!(v["active"], true, "{body}");
    assert_eq!(v["fencing_token"], 7, "{body}");

    // The lease ended: still leader for raft, but no longer the active.
    status.lock().expect("lock").active = false;
    let (code, body) = get(addr, "/health");
    assert_eq!(code, 503, "{body}");
    assert_eq!(body.lines().count(), 1, "{body:?}");

    // A passive that follows member 2.
    {
        let mut s = status.lock().expect("lock");
        s.role = Role::Follower;
        s.leader = Some(2);
    }
    let (code, body) = get(addr, "/health");
    assert_eq!(code, 503);
    let v: serde_json::Value = serde_json::from_str(body.trim()).expect("one JSON object");
    assert_eq!(
        (v["active"].clone(), v["leader"].clone()),
        (false.into(), 2.into()),
        "{body}"
    );

    status.lock().expect("lock").active = true;
    assert_eq!(get(addr, "/health").0, 200);
    // HEAD works too (load balancers use it).
    assert_eq!(request(addr, "HEAD", "/health").0, 200);
    server.shutdown();
}

#[test]
fn ready_needs_a_started_replica_and_a_leader() {
    // A blank member in the bootstrap handshake.
    let (status, source) = fake(Status::blank(2, "WaitForPeers".into()));
    let server = health::serve("127.0.0.1:0", source, Arc::new(Metrics::new())).expect("serve");
    let addr = server.local_addr();

    let (code, body) = get(addr, "/ready");
    assert_eq!(code, 503, "{body}");
    assert_eq!(body.lines().count(), 1, "{body:?}");
    assert!(body.contains("not started"), "{body}");
    assert!(body.contains("WaitForPeers"), "{body}");

    // Started, no leader known yet.
    {
        let mut s = status.lock().expect("lock");
        s.voters = vec![1, 2, 3];
        s.waiting_for = None;
    }
    let (code, body) = get(addr, "/ready");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no leader"), "{body}");

    // Follows leader 1: ready, though not the active.
    status.lock().expect("lock").leader = Some(1);
    let (code, body) = get(addr, "/ready");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("leader 1"), "{body}");
    assert_eq!(get(addr, "/health").0, 503);

    // Leads.
    {
        let mut s = status.lock().expect("lock");
        s.leader = None;
        s.role = Role::Leader;
    }
    assert_eq!(get(addr, "/ready").0, 200);
    server.shutdown();
}

#[test]
fn metrics_report_status_and_counters() {
    let (status, source) = fake(leader_status());
    let metrics = Arc::new(Metrics::new());
    let server = health::serve("127.0.0.1:0", source, metrics.clone()).expect("serve");
    let addr = server.local_addr();

    metrics.record_proposal(Duration::from_micros(300)); // <= 0.0005
    metrics.record_proposal(Duration::from_millis(3)); // <= 0.005
    metrics.record_proposal(Duration::from_millis(3));
    metrics.record_proposal(Duration::from_secs(20)); // +Inf only
    metrics.failover();
    metrics.failover();
    assert_eq!(metrics.proposals(), 4);
    assert_eq!(metrics.failovers(), 2);

    let (code, body) = get(addr, "/metrics");
    assert_eq!(code, 200);
    for line in [
        "aoc_role{role=\"leader\"} 1",
        "aoc_role{role=\"follower\"} 0",
        "aoc_role{role=\"candidate\"} 0",
        "aoc_role{role=\"pre_candidate\"} 0",
        "aoc_term 7",
        "aoc_commit_index 120",
        "aoc_applied_index 118",
        "aoc_mode{mode=\"sync\"} 1",
        "aoc_mode{mode=\"degraded\"} 0",
        "aoc_mode{mode=\"majority\"} 0",
        "aoc_mode{mode=\"standalone\"} 0",
        "aoc_active 1",
        "aoc_passive_lag_entries 3",
        "aoc_passive_lag_bytes 4096",
        "aoc_log_bytes 1048576",
        "aoc_failovers_total 2",
        "# TYPE aoc_failovers_total counter",
        "# TYPE aoc_proposal_latency_seconds histogram",
        "aoc_proposal_latency_seconds_bucket{le=\"0.0005\"} 1",
        "aoc_proposal_latency_seconds_bucket{le=\"0.001\"} 1",
        "aoc_proposal_latency_seconds_bucket{le=\"0.005\"} 3",
        "aoc_proposal_latency_seconds_bucket{le=\"10\"} 3",
        "aoc_proposal_latency_seconds_bucket{le=\"+Inf\"} 4",
        "aoc_proposal_latency_seconds_count 4",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
    let sum: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("aoc_proposal_latency_seconds_sum "))
        .and_then(|v| v.parse().ok())
        .expect("a sum");
    assert!((sum - 20.0063).abs() < 1e-6, "{sum}");
    // Every sample line is `name{labels} value` with a number.
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = l.rsplit_once(' ').expect("name value");
        assert!(v.parse::<f64>().is_ok(), "{l}");
    }

    // A follower: the lag is unknown there, so it has no sample.
    {
        let mut s = status.lock().expect("lock");
        s.role = Role::Follower;
        s.active = false;
        s.mode = Mode::Degraded;
        s.passive_lag_entries = None;
        s.passive_lag_bytes = None;
    }
    let (_, body) = get(addr, "/metrics");
    assert!(body.lines().any(|l| l == "aoc_active 0"), "{body}");
    assert!(
        body.lines().any(|l| l == "aoc_role{role=\"follower\"} 1"),
        "{body}"
    );
    assert!(
        body.lines().any(|l| l == "aoc_mode{mode=\"degraded\"} 1"),
        "{body}"
    );
    assert!(
        !body
            .lines()
            .any(|l| l.starts_with("aoc_passive_lag_entries ")),
        "{body}"
    );
    assert!(
        body.contains("# TYPE aoc_passive_lag_entries gauge"),
        "{body}"
    );
    server.shutdown();
}

#[test]
fn unknown_paths_and_methods() {
    let (_, source) = fake(leader_status());
    let server = health::serve("127.0.0.1:0", source, Arc::new(Metrics::new())).expect("serve");
    let addr = server.local_addr();
    assert_eq!(get(addr, "/nope").0, 404);
    assert_eq!(request(addr, "POST", "/health").0, 405);
    // A query string does not change the path.
    assert_eq!(get(addr, "/health?verbose=1").0, 200);
    server.shutdown();
}

#[test]
fn shutdown_frees_the_port() {
    let (_, source) = fake(leader_status());
    let server =
        health::serve("127.0.0.1:0", source.clone(), Arc::new(Metrics::new())).expect("serve");
    let addr = server.local_addr();
    assert_eq!(get(addr, "/health").0, 200);
    server.shutdown();
    // The same port can be bound again once the server is gone.
    let again = health::serve(addr, source, Arc::new(Metrics::new())).expect("rebind");
    assert_eq!(get(again.local_addr(), "/health").0, 200);
    drop(again);
}

#[test]
fn a_taken_port_is_an_error() {
    let (_, source) = fake(leader_status());
    let first =
        health::serve("127.0.0.1:0", source.clone(), Arc::new(Metrics::new())).expect("serve");
    let err = health::serve(first.local_addr(), source, Arc::new(Metrics::new()))
        .expect_err("the port is taken");
    assert!(!err.to_string().is_empty());
}
