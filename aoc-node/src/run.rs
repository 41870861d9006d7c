//! Running a member: the process behind `aoc-node run` and
//! `aoc-witness run`. It opens the stores, starts the node with the TCP
//! transport, the client API (data members), the health listener and the
//! management IP, and waits for SIGTERM or SIGINT. On a signal, an active
//! with a caught-up passive hands over first (a switchover), then
//! everything stops.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::RecvTimeoutError;

use aoc_core::client::{ClientServer, ServerLimits};
use aoc_core::state::SledKv;
use aoc_core::storage::{EngineLogOptions, EngineLogStore};
use aoc_core::transport::tcp::{TcpConfig, TcpTransport};
use aoc_core::transport::tls::TlsIdentity;
use aoc_core::{Mode, Node};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

use crate::config::{Config, MemberRole};
use crate::health::{self, Metrics};
use crate::lock::DataDirLock;
use crate::mgmt_ip::{self, MgmtIp};

/// Resolves `host:port` (the configuration checked its form).
pub fn resolve(what: &str, addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("{what}: cannot resolve {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{what}: {addr:?} resolves to no address"))
}

/// The exit status of a member whose node failed (a storage error it
/// cannot continue from): a supervisor restarts it, and the other data
/// member takes over meanwhile.
pub const EXIT_NODE_FAILED: u8 = 4;

/// How a run ended in error: the exit status and the one-line reason.
#[derive(Debug)]
pub struct RunError {
    /// The process's exit status (1, or [`EXIT_NODE_FAILED`]).
    pub code: u8,
    /// What went wrong.
    pub message: String,
}

impl From<String> for RunError {
    fn from(message: String) -> Self {
        RunError { code: 1, message }
    }
}

impl From<&str> for RunError {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

/// Runs the member described by `cfg` until SIGTERM or SIGINT, or until
/// its node fails ([`EXIT_NODE_FAILED`]).
pub fn run(cfg: Config) -> Result<(), RunError> {
    let tls = match (&cfg.tls, cfg.allow_plain_tcp) {
        (Some(_), true) => {
            return Err(
                "allow_plain_tcp: set either [tls] or allow_plain_tcp = true, not both".into(),
            )
        }
        (Some(files), false) => {
            let identity = TlsIdentity::from_files(&files.ca, &files.cert, &files.key)
                .map_err(|e| e.to_string())?;
            info!("member and client traffic: mutual TLS");
            Some(identity)
        }
        (None, true) => {
            warn!("member and client traffic is plain TCP (allow_plain_tcp = true): unauthenticated and unencrypted");
            None
        }
        (None, false) => {
            return Err(
                "tls: no [tls] section (ca, cert, key: see `aoc-node certs`); to run \
                        over plain TCP instead, set allow_plain_tcp = true"
                    .into(),
            )
        }
    };
    let lock = DataDirLock::acquire(&cfg.data_dir)?;
    crate::identity::check_or_stamp(
        &cfg.data_dir,
        crate::identity::Identity {
            cluster_id: cfg.cluster_id,
            member_id: cfg.member_id,
        },
    )?;
    let listen = resolve("ha_addr", &cfg.ha_addr)?;
    let mut peers = BTreeMap::new();
    let mut peers_api = BTreeMap::new();
    for p in &cfg.peers {
        peers.insert(
            p.id,
            resolve(&format!("peers[{}].ha_addr", p.id), &p.ha_addr)?,
        );
        if let Some(api) = &p.api_addr {
            peers_api.insert(p.id, resolve(&format!("peers[{}].api_addr", p.id), api)?);
        }
    }
    let mut tcp = TcpConfig::new(cfg.cluster_id, cfg.member_id, listen, peers);
    tcp.tls = tls.clone();
    let transport = TcpTransport::start(tcp).map_err(|e| e.to_string())?;
    let log_options = match cfg.role {
        MemberRole::Witness => EngineLogOptions::witness(),
        MemberRole::Data => EngineLogOptions::default(),
    };
    let log =
        EngineLogStore::open(&cfg.data_dir.join("log"), log_options).map_err(|e| e.to_string())?;
    check_stored_voters(&cfg, &log)?;
    let builder = Node::builder(cfg.replica_config())
        .voters(cfg.voters())
        .tick(cfg.tick());
    let metrics = Arc::new(Metrics::new());
    let http = resolve("http_addr", &cfg.http_addr)?;
    match cfg.role {
        MemberRole::Witness => {
            let node = builder
                .start_witness(log, Arc::new(transport.clone()))
                .map_err(|e| e.to_string())?;
            transport.set_inbound(Arc::new(node.clone()));
            let status_node = node.clone();
            let health = health::serve(http, Arc::new(move || status_node.status()), metrics)
                .map_err(|e| format!("http_addr: cannot listen on {http}: {e}"))?;
            serve_admin(&cfg.data_dir, node.clone())?;
            if cfg.storage.nospace_alarm {
                crate::disk::watch(node.clone(), cfg.data_dir.clone(), cfg.storage.reserve_mb)
                    .map_err(|e| format!("cannot start the disk thread: {e}"))?;
            }
            info!(member = cfg.member_id, "witness running");
            let failed = wait_for_stop(&node)?;
            stop_within(stop_bound(&cfg), None);
            if let Some(e) = failed {
                exit_failed(&node_failed(&cfg, &e, None));
            }
            info!("stopping");
            health.shutdown();
            node.shutdown();
        }
        MemberRole::Data => {
            let kv = SledKv::open(&cfg.data_dir.join("state")).map_err(|e| e.to_string())?;
            let node = builder
                .start_with_transport(log, kv, Arc::new(transport.clone()))
                .map_err(|e| e.to_string())?;
            transport.set_inbound(Arc::new(node.clone()));
            let api = resolve(
                "api_addr",
                cfg.api_addr
                    .as_deref()
                    .ok_or("api_addr: required for a data member")?,
            )?;
            peers_api.insert(cfg.member_id, api);
            let observed = metrics.clone();
            let server = ClientServer::start_in_cluster(
                cfg.cluster_id,
                api,
                node.clone(),
                peers_api,
                ServerLimits::default(),
                Some(Arc::new(move |latency| observed.record_proposal(latency))),
                tls.clone(),
            )
            .map_err(|e| e.to_string())?;
            let status_node = node.clone();
            let health = health::serve(
                http,
                Arc::new(move || status_node.status()),
                metrics.clone(),
            )
            .map_err(|e| format!("http_addr: cannot listen on {http}: {e}"))?;
            // Under the guard, the guard owns the management IP and the
            // hooks: this member reports its lease to it instead.
            let guarded = std::env::var_os(crate::guard::CHILD_ENV).is_some();
            if guarded {
                crate::guard::die_with_guard()?;
                crate::guard::report_to_guard(node.clone())
                    .map_err(|e| format!("cannot start the guard report thread: {e}"))?;
                metrics.guard_counts(
                    env_count(crate::guard::RESTARTS_ENV),
                    env_count(crate::guard::FENCED_ENV),
                );
            }
            let ip = cfg
                .management_ip
                .as_ref()
                .filter(|_| !guarded)
                .map(|m| MgmtIp::new(m.clone()));
            if let Some(ip) = &ip {
                // An address a crash may have left behind goes first.
                if let Err(e) = ip.demote() {
                    warn!(error = %e, "clearing the management IP at start");
                }
                mgmt_ip::follow(node.events(), ip.clone())
                    .map_err(|e| format!("cannot start the management IP thread: {e}"))?;
            }
            count_failovers(&node, metrics);
            serve_admin(&cfg.data_dir, node.clone())?;
            if cfg.storage.nospace_alarm {
                crate::disk::watch(node.clone(), cfg.data_dir.clone(), cfg.storage.reserve_mb)
                    .map_err(|e| format!("cannot start the disk thread: {e}"))?;
            }
            notify_systemd(node.clone());
            info!(member = cfg.member_id, api = %api, "data member running");
            let failed = wait_for_stop(&node)?;
            stop_within(stop_bound(&cfg), ip.clone());
            if let Some(e) = failed {
                exit_failed(&node_failed(&cfg, &e, ip.as_ref()));
            }
            info!("stopping");
            hand_over_if_active(&node);
            server.shutdown();
            health.shutdown();
            node.shutdown();
        }
    }
    transport.shutdown();
    drop(lock);
    Ok(())
}

/// The admin socket's file name in the data directory.
pub const ADMIN_SOCKET: &str = "admin.sock";

/// The data directory's membership is the cluster's once it holds one:
/// membership changes (`aoc-node members`) update it, and the file's
/// `[[peers]]` then only bootstrap blank members and give addresses. A file
/// that differs is reported (so the operator updates it) but does not stop
/// the member, except in two cases:
/// - the directory holds a standalone member and the file lists peers:
///   after `aoc-node recover` the member is standalone, and its old peers
///   must not come back with it;
/// - the directory records this member with another role than the file's.
fn check_stored_voters(cfg: &Config, log: &EngineLogStore) -> Result<(), String> {
    use aoc_core::storage::LogStore;
    let state = log.initial_state().map_err(|e| e.to_string())?;
    if !state.initialized() {
        return Ok(());
    }
    let mut voters = state.conf_state.voters.clone();
    voters.sort_unstable();
    let mut learners = state.conf_state.learners.clone();
    learners.sort_unstable();
    let configured = cfg.voters();
    if voters == vec![cfg.member_id] && learners.is_empty() && configured != voters {
        return Err(format!(
            "peers: the data directory {} holds a standalone member (as `aoc-node recover` \
             leaves it), but the file gives voters {configured:?}: remove the [[peers]] entries",
            cfg.data_dir.display()
        ));
    }
    let meta = log.member_meta().map_err(|e| e.to_string())?;
    if let Some(me) = meta.members.iter().find(|m| m.id == cfg.member_id) {
        let stored = if me.witness { "witness" } else { "data" };
        if stored != cfg.role.as_str() {
            return Err(format!(
                "role: the cluster added this member as a {stored} member, the file says {:?}",
                cfg.role.as_str()
            ));
        }
    }
    let mut members: Vec<u64> = voters.iter().chain(&learners).copied().collect();
    members.sort_unstable();
    if members != configured {
        warn!(
            data_dir = %cfg.data_dir.display(),
            ?voters,
            ?learners,
            file = ?configured,
            "the cluster's membership changed since this file was written: the data \
             directory's applies; update [[peers]] to list the members"
        );
    }
    Ok(())
}

/// The local admin socket (`DATA_DIR/admin.sock`, a Unix socket in the
/// owner-only data directory): `maintenance-off` turns maintenance mode off
/// on this member alone, with no leader needed (the witness included, which
/// has no client API). One command per line; the answer is one line.
fn serve_admin<S: aoc_core::state::StateMachine>(
    data_dir: &std::path::Path,
    node: Node<S>,
) -> Result<(), String> {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    let path = data_dir.join(ADMIN_SOCKET);
    // A socket file left by a crashed process (the data directory lock
    // guarantees no other process uses it now).
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| format!("cannot create the admin socket {}: {e}", path.display()))?;
    std::thread::Builder::new()
        .name("aoc-admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut line = String::new();
                let Ok(clone) = stream.try_clone() else {
                    continue;
                };
                if BufReader::new(clone).read_line(&mut line).is_err() {
                    continue;
                }
                let answer = match line.trim() {
                    "maintenance-off" => match node.maintenance_off_local() {
                        Ok(()) => "ok: maintenance is off on this member".to_string(),
                        Err(e) => format!("error: {e}"),
                    },
                    other => format!("error: unknown command {other:?} (known: maintenance-off)"),
                };
                let mut stream = stream;
                let _ = writeln!(stream, "{answer}");
            }
        })
        .map_err(|e| format!("cannot start the admin thread: {e}"))?;
    Ok(())
}

/// Sends one command to a member's admin socket; returns its answer.
pub fn admin_command(data_dir: &std::path::Path, command: &str) -> Result<String, String> {
    use std::io::{BufRead, BufReader, Write};
    let path = data_dir.join(ADMIN_SOCKET);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        format!(
            "{}: cannot connect (is the member running?): {e}",
            path.display()
        )
    })?;
    writeln!(stream, "{command}").map_err(|e| format!("{}: {e}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let answer = answer.trim().to_string();
    if answer.starts_with("ok") {
        Ok(answer)
    } else {
        Err(answer)
    }
}

/// Tells systemd the member is ready (`Type=notify`) and, when the unit
/// sets `WatchdogSec`, keeps its watchdog fed while the node is healthy
/// (not failed, its raft thread publishing): a member that hangs or fails
/// is restarted by systemd even if its guard did not act. Nothing is sent
/// outside systemd.
fn notify_systemd<S: aoc_core::state::StateMachine>(node: Node<S>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        warn!(error = %e, "cannot tell systemd the member is ready");
    }
    // The unit's watchdog is the service's, whose main process is the
    // guard: this member (NotifyAccess=all) reads the interval itself.
    let Some(usec) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let every = Duration::from_micros(usec / 2);
    let spawned = std::thread::Builder::new()
        .name("aoc-sd-watchdog".into())
        .spawn(move || loop {
            if node.failure().is_some() {
                return;
            }
            if node.healthy(every) {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
            std::thread::sleep(every);
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the systemd watchdog thread");
    }
}

/// A count the guard passed in the environment (0 when absent).
fn env_count(name: &str) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// How often the main thread looks for a failed node.
const FAILURE_POLL: Duration = Duration::from_millis(100);

/// Waits for SIGTERM or SIGINT, or for the node to fail: `Some(reason)`
/// then.
fn wait_for_stop<S: aoc_core::state::StateMachine>(
    node: &Node<S>,
) -> Result<Option<String>, String> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("cannot handle signals: {e}"))?;
    loop {
        if let Some(sig) = signals.pending().next() {
            info!(signal = sig, "signal received");
            return Ok(None);
        }
        if let Some(e) = node.failure() {
            return Ok(Some(e.to_string()));
        }
        std::thread::sleep(FAILURE_POLL);
    }
}

/// The longest a stop may take: a hand-over (the switchover timeout), then
/// every thread (a few seconds each at most).
fn stop_bound(cfg: &Config) -> Duration {
    Duration::from_millis(cfg.timeouts.switchover_timeout_ms) + Duration::from_secs(10)
}

/// Ends the process once `bound` has passed, whatever it is waiting for
/// (a hand-over to a passive that never answers, a store that never
/// closes), releasing the management IP first.
fn stop_within(bound: Duration, ip: Option<MgmtIp>) {
    let _ = std::thread::Builder::new()
        .name("aoc-stop-bound".into())
        .spawn(move || {
            std::thread::sleep(bound);
            error!(
                bound_ms = bound.as_millis() as u64,
                "stopping took longer than its bound; exiting now"
            );
            if let Some(ip) = ip {
                if let Err(e) = ip.demote() {
                    error!(error = %e, "management IP: not every step succeeded");
                }
            }
            std::process::exit(1);
        });
}

/// Ends the process now with `e`'s status and one line on stderr, without
/// waiting for any thread (see [`node_failed`]).
fn exit_failed(e: &RunError) -> ! {
    let program = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "aoc-node".into());
    error!("{}", e.message);
    eprintln!("{program}: {}", e.message);
    std::process::exit(i32::from(e.code));
}

/// The node failed: the management IP and the demote hook go first, then
/// the process ends with [`EXIT_NODE_FAILED`] (its threads are not waited
/// for: a store that failed may never close, and everything acknowledged
/// is in the synced log).
fn node_failed(cfg: &Config, reason: &str, ip: Option<&MgmtIp>) -> RunError {
    if let Some(ip) = ip {
        if let Err(e) = ip.demote() {
            error!(error = %e, "management IP: not every step succeeded");
        }
    }
    RunError {
        code: EXIT_NODE_FAILED,
        message: format!(
            "member {} stopped: {reason}; exiting with status {EXIT_NODE_FAILED} so that a \
             supervisor restarts it once the cause is fixed",
            cfg.member_id
        ),
    }
}

/// An active with a caught-up passive hands over before it stops, so a
/// planned restart costs a switchover, not a failover.
fn hand_over_if_active<S: aoc_core::state::StateMachine>(node: &Node<S>) {
    let st = node.status();
    if st.active && st.mode == Mode::Sync {
        match node.switchover() {
            Ok(pause) => info!(?pause, "handed over before stopping"),
            Err(e) => warn!(error = %e, "could not hand over before stopping"),
        }
    }
}

/// Counts this member's takeovers of the active role from another member
/// (for /metrics), as the replica records them (`Status::last_failover_ms`);
/// the first election of a fresh cluster is not one.
fn count_failovers<S: aoc_core::state::StateMachine>(node: &Node<S>, metrics: Arc<Metrics>) {
    let events = node.events();
    let node = node.clone();
    let _ = std::thread::Builder::new()
        .name("aoc-metrics".into())
        .spawn(move || {
            // Events wake it up; the status a role change produces is
            // published just after the event, hence the second look a
            // second later.
            let mut seen = None;
            loop {
                let woke = events.recv_timeout(Duration::from_secs(1));
                if matches!(woke, Err(RecvTimeoutError::Disconnected)) {
                    return;
                }
                let last = node.status().last_failover_ms;
                if last.is_some() && last != seen {
                    metrics.failover();
                    seen = last;
                }
            }
        });
}
