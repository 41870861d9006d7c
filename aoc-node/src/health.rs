//! The health and metrics listener: a small HTTP/1.1 server (tiny_http)
//! for load balancers, orchestrators and Prometheus.
//!
//! | path | 200 when | otherwise |
//! |---|---|---|
//! | `/health` | this member is the active | 503 |
//! | `/ready` | the replica has started and a leader is known (or this member leads) | 503 |
//! | `/metrics` | always: Prometheus text format | |
//!
//! `/health` and `/ready` answer with one line of text. The server does not
//! know the node's type: it reads a [`StatusSource`] (typically
//! `Arc::new(move || node.status())`) and a shared [`Metrics`] that the
//! binary records proposal latencies and failovers into.
//!
//! ```no_run
//! use std::sync::Arc;
//! use aoc_node::health::{serve, Metrics, StatusSource};
//!
//! # fn demo(node: aoc_core::Node<aoc_core::state::MemKv>) -> std::io::Result<()> {
//! let metrics = Arc::new(Metrics::new());
//! let status: StatusSource = Arc::new(move || node.status());
//! let server = serve("127.0.0.1:7301", status, metrics.clone())?;
//! println!("health on {}", server.local_addr());
//! // ... metrics.record_proposal(elapsed) after each write ...
//! server.shutdown();
//! # Ok(())
//! # }
//! ```

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use aoc_core::{Mode, Role, Status};
use tracing::{debug, warn};

/// Where the server reads the member's status from on every request.
pub type StatusSource = Arc<dyn Fn() -> Status + Send + Sync>;

/// Upper bounds (seconds) of the proposal latency histogram's buckets
/// (`+Inf` is implied).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counters the binary records into and `/metrics` reports. Share it with
/// an `Arc`; every method takes `&self` and is lock-free.
#[derive(Debug, Default)]
pub struct Metrics {
    failovers: AtomicU64,
    /// What the guard did before this member started: restarts, and kills
    /// at a lease's end.
    guard_restarts: AtomicU64,
    guard_fenced: AtomicU64,
    /// Proposals per bucket of [`LATENCY_BUCKETS`], plus one for `+Inf`
    /// (not cumulative; `/metrics` adds them up).
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_ns: AtomicU64,
    latency_count: AtomicU64,
}

impl Metrics {
    /// Empty counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the latency of one proposal (from the request to its
    /// acknowledgement).
    pub fn record_proposal(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency_sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failover (this member took the active role from another
    /// member without a planned switchover).
    pub fn failover(&self) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
    }

    /// What the guard passed this member: how often it restarted a member,
    /// and how often it killed one whose lease ended without a renewal.
    pub fn guard_counts(&self, restarts: u64, fenced: u64) {
        self.guard_restarts.store(restarts, Ordering::Relaxed);
        self.guard_fenced.store(fenced, Ordering::Relaxed);
    }

    /// Failovers counted so far.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// Proposals recorded so far.
    pub fn proposals(&self) -> u64 {
        self.latency_count.load(Ordering::Relaxed)
    }

    /// Renders `status` and these counters in the Prometheus text format
    /// (what `/metrics` answers). The passive's lag is reported only where
    /// it is known (on the leader); elsewhere its family has no sample.
    pub fn render(&self, status: &Status) -> String {
        let mut out = String::with_capacity(4096);
        let o = &mut out;

        header(o, "aoc_role", "gauge", "1 for this member's raft role.");
        for (label, role) in [
            ("leader", Role::Leader),
            ("follower", Role::Follower),
            ("candidate", Role::Candidate),
            ("pre_candidate", Role::PreCandidate),
        ] {
            let v = u8::from(status.role == role);
            let _ = writeln!(o, "aoc_role{{role=\"{label}\"}} {v}");
        }
        sample(o, "aoc_term", "gauge", "The raft term.", Some(status.term));
        sample(
            o,
            "aoc_commit_index",
            "gauge",
            "The commit index this member knows of.",
            Some(status.commit),
        );
        sample(
            o,
            "aoc_applied_index",
            "gauge",
            "The state machine's applied index.",
            Some(status.applied),
        );
        header(
            o,
            "aoc_mode",
            "gauge",
            "1 for the replication mode (meaningful on the active).",
        );
        for (label, mode) in [
            ("standalone", Mode::Standalone),
            ("majority", Mode::Majority),
            ("sync", Mode::Sync),
            ("degraded", Mode::Degraded),
        ] {
            let v = u8::from(status.mode == mode);
            let _ = writeln!(o, "aoc_mode{{mode=\"{label}\"}} {v}");
        }
        sample(
            o,
            "aoc_active",
            "gauge",
            "1 while this member holds the active role.",
            Some(u64::from(status.active)),
        );
        sample(
            o,
            "aoc_passive_lag_entries",
            "gauge",
            "The passive's lag behind the last index in entries (on the leader only).",
            status.passive_lag_entries,
        );
        sample(
            o,
            "aoc_passive_lag_bytes",
            "gauge",
            "The passive's lag in bytes of entry data (on the leader only).",
            status.passive_lag_bytes,
        );
        sample(
            o,
            "aoc_log_bytes",
            "gauge",
            "Bytes the raft log store uses.",
            Some(status.log_bytes),
        );
        sample(
            o,
            "aoc_disk_free_bytes",
            "gauge",
            "Free bytes on the data directory's file system, as last measured.",
            status.disk.map(|(d, _)| d.free_bytes),
        );
        sample(
            o,
            "aoc_disk_reserve_bytes",
            "gauge",
            "Free bytes below which this member raises its NOSPACE alarm.",
            status.disk.map(|(d, _)| d.reserve_bytes),
        );
        sample(
            o,
            "aoc_disk_low",
            "gauge",
            "1 while this member's disk is below its reserve.",
            status.disk.map(|(_, low)| u64::from(low)),
        );
        header(
            o,
            "aoc_nospace_alarm",
            "gauge",
            "1 per data member whose NOSPACE alarm is in effect (writes that take space are refused).",
        );
        for a in &status.alarms {
            let _ = writeln!(o, "aoc_nospace_alarm{{member=\"{}\"}} 1", a.member);
        }
        sample(
            o,
            "aoc_failovers_total",
            "counter",
            "Failovers in which this member took the active role.",
            Some(self.failovers()),
        );

        sample(
            o,
            "aoc_guard_restarts_total",
            "counter",
            "Times the guard restarted this member (it exited or was fenced).",
            Some(self.guard_restarts.load(Ordering::Relaxed)),
        );
        sample(
            o,
            "aoc_guard_fenced_total",
            "counter",
            "Times the guard killed this member because its lease ended without a renewal.",
            Some(self.guard_fenced.load(Ordering::Relaxed)),
        );

        let name = "aoc_proposal_latency_seconds";
        header(
            o,
            name,
            "histogram",
            "Time from a proposal to its acknowledgement.",
        );
        let mut cumulative = 0u64;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(o, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(o, "{name}_sum {sum}");
        // The count is the +Inf bucket, so the two always agree.
        let _ = writeln!(o, "{name}_count {cumulative}");
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, kind: &str, help: &str, value: Option<u64>) {
    header(out, name, kind, help);
    if let Some(v) = value {
        let _ = writeln!(out, "{name} {v}");
    }
}

/// Whether `status` makes `/ready` answer 200: the replica has started (a
/// blank member in the bootstrap handshake has no voters yet) and a leader
/// is known, or this member is the leader.
pub fn is_ready(status: &Status) -> bool {
    !status.voters.is_empty() && (status.leader.is_some() || status.role == Role::Leader)
}

/// The `/health` answer: (HTTP status, one line of JSON). 200 on the
/// active, with its fencing token (the platform stamps its commands with
/// it: see `aoc_core::fencing`); 503 elsewhere, with the role and the
/// leader this member knows.
fn health(status: &Status) -> (u16, String) {
    let role = if status.active {
        "active"
    } else if status.witness {
        "witness"
    } else {
        "not active"
    };
    let body = serde_json::json!({
        "active": status.active,
        "role": role,
        "member": status.id,
        "raft_role": format!("{:?}", status.role),
        "term": status.term,
        "leader": status.leader,
        "fencing_token": status.fencing_token,
    });
    (if status.active { 200 } else { 503 }, body.to_string())
}

/// The `/ready` answer: (HTTP status, one line).
fn ready(status: &Status) -> (u16, String) {
    if is_ready(status) {
        let leader = status.leader.unwrap_or(status.id);
        return (
            200,
            format!(
                "ready: member {}, leader {leader}, term {}",
                status.id, status.term
            ),
        );
    }
    let why = if status.voters.is_empty() {
        "the replica has not started"
    } else {
        "no leader is known"
    };
    let mut line = format!("not ready: member {}: {why}", status.id);
    if let Some(w) = &status.waiting_for {
        let _ = write!(line, " ({})", one_line(w));
    }
    (503, line)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A running listener; [`HealthServer::shutdown`] (or dropping it) stops it.
pub struct HealthServer {
    server: Option<Arc<tiny_http::Server>>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HealthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl HealthServer {
    /// The address it listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the listener and waits for its thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The last reference: tiny_http's accept thread now closes the
        // listening socket, a moment later. Wait for it (at most a second)
        // so the port is free when this returns.
        drop(server);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < deadline
            && TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok()
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Binds `addr` and serves `/health`, `/ready` and `/metrics` on a thread
/// of its own.
pub fn serve(
    addr: impl ToSocketAddrs,
    status: StatusSource,
    metrics: Arc<Metrics>,
) -> io::Result<HealthServer> {
    let server = tiny_http::Server::http(addr).map_err(io::Error::other)?;
    let local = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| io::Error::other("the health listener is not on an IP address"))?;
    let server = Arc::new(server);
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let server = server.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("aoc-health".into())
            .spawn(move || serve_loop(&server, &stop, &status, &metrics))?
    };
    Ok(HealthServer {
        server: Some(server),
        addr: local,
        stop,
        thread: Some(thread),
    })
}

fn serve_loop(server: &tiny_http::Server, stop: &AtomicBool, status: &StatusSource, m: &Metrics) {
    while !stop.load(Ordering::SeqCst) {
        match server.recv_timeout(Duration::from_millis(500)) {
            Ok(Some(rq)) => answer(rq, status, m),
            Ok(None) => {}
            Err(e) => {
                // An accept or read error concerns one connection (or a
                // passing shortage of descriptors): keep serving.
                warn!(error = %e, "health listener");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn answer(rq: tiny_http::Request, status: &StatusSource, metrics: &Metrics) {
    use tiny_http::Method;
    let text_plain = "text/plain; charset=utf-8";
    let path = rq.url().split('?').next().unwrap_or("").to_string();
    let (code, body, ctype) = match rq.method() {
        Method::Get | Method::Head => match path.as_str() {
            "/health" => {
                let (c, line) = health(&status());
                (c, line + "\n", "application/json")
            }
            "/ready" => {
                let (c, line) = ready(&status());
                (c, line + "\n", text_plain)
            }
            "/metrics" => (
                200,
                metrics.render(&status()),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            _ => (
                404,
                "not found: try /health, /ready or /metrics\n".to_string(),
                text_plain,
            ),
        },
        _ => (405, "method not allowed\n".to_string(), text_plain),
    };
    let mut response = tiny_http::Response::from_string(body).with_status_code(code);
    if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes()) {
        response.add_header(h);
    }
    if code == 405 {
        if let Ok(h) = tiny_http::Header::from_bytes(&b"Allow"[..], &b"GET, HEAD"[..]) {
            response.add_header(h);
        }
    }
    if let Err(e) = rq.respond(response) {
        debug!(error = %e, path = %path, "health listener: the client went away");
    }
}
