//! The configuration file: one TOML file per process (data member or
//! witness).
//!
//! ```toml
//! cluster_id = 1
//! member_id = 1
//! role = "data"                      # "data" or "witness"
//! data_dir = "./data/node1"          # relative to this file's directory
//! ha_addr = "127.0.0.1:7101"         # member-to-member traffic
//! api_addr = "127.0.0.1:7201"        # clients (data members only)
//! http_addr = "127.0.0.1:7301"       # /health, /ready, /metrics
//! allow_plain_tcp = true             # no TLS yet: must be said explicitly
//!
//! [[peers]]
//! id = 2
//! role = "data"
//! ha_addr = "127.0.0.1:7102"
//! api_addr = "127.0.0.1:7202"
//!
//! [[peers]]
//! id = 3
//! role = "witness"
//! ha_addr = "127.0.0.1:7103"
//!
//! [timeouts]                         # every key optional, defaults shown
//! tick_ms = 100
//! election_tick = 10
//! heartbeat_tick = 2
//! sync_timeout_ms = 1000
//! switchover_timeout_ms = 3000
//!
//! [storage]                          # optional
//! nospace_alarm = true               # refuse writes before the disk is full
//! reserve_mb = 1024                  # NOSPACE alarm below this much free space
//!                                    # (default: 256 MiB + state + log sizes)
//!
//! [guard]                            # optional, data members only
//! enabled = true                     # run the member under the guard
//! restart = true                     # restart it after it exits or is fenced
//! reaction_ms = 50                   # at most half of heartbeat_tick x tick_ms
//! max_backoff_ms = 30000
//! watchdog = "off"                   # "off", "automatic" or "required"
//! watchdog_device = "/dev/watchdog"
//!
//! [management_ip]                    # optional, data members only
//! address = "10.0.0.10/24"
//! interface = "eth0"
//! promote_hook = "systemctl start aoc-api"
//! demote_hook = "systemctl stop aoc-api"
//! arping = true
//! ```
//!
//! [`load`] reads and checks a file; every problem is reported as one
//! [`ConfigError`] line that names the field, for example
//! `node1.toml: peers[1].ha_addr: "x:y" is not host:port (...)`. The
//! binaries exit with code 2 on it.
//!
//! A cluster is either **standalone** (one data member, no peers) or **HA**
//! (two data members and one witness: this member plus two peers). While
//! members are added or replaced (`aoc-node members`), a file may also
//! describe the shapes in between: two data members, or one data member and
//! the witness.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aoc_core::ReplicaConfig;
use serde::{Deserialize, Deserializer};

/// The largest `tick_ms` accepted (10 s): longer ticks make every timeout
/// uselessly coarse.
pub const MAX_TICK_MS: u64 = 10_000;

/// A configuration file that cannot be used. Its [`Display`](fmt::Display)
/// is one line: `FILE: FIELD: PROBLEM` (or `FILE: PROBLEM` when no single
/// field is at fault, e.g. a TOML syntax error, which gives its line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file.
    pub path: PathBuf,
    /// The offending field as a path into the file (`member_id`,
    /// `peers[1].ha_addr`, `timeouts.tick_ms`), when there is one.
    pub field: Option<String>,
    /// What is wrong, on one line.
    pub problem: String,
}

impl ConfigError {
    fn new(path: &Path, field: Option<String>, problem: impl Into<String>) -> Self {
        // One line, whatever the source of the message.
        let problem = problem
            .into()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        ConfigError {
            path: path.to_path_buf(),
            field,
            problem,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {field}: {}", self.path.display(), self.problem),
            None => write!(f, "{}: {}", self.path.display(), self.problem),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A member's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberRole {
    /// Stores the service data and serves clients (`"data"`).
    Data,
    /// Votes and keeps a short log tail, stores no service data
    /// (`"witness"`).
    Witness,
}

impl MemberRole {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Data => "data",
            MemberRole::Witness => "witness",
        }
    }
}

impl fmt::Display for MemberRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MemberRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "data" => Ok(MemberRole::Data),
            "witness" => Ok(MemberRole::Witness),
            other => Err(format!("must be \"data\" or \"witness\", got {other:?}")),
        }
    }
}

impl<'de> Deserialize<'de> for MemberRole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Another member of the cluster (`[[peers]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Its member id (non-zero, unique in the cluster).
    pub id: u64,
    /// Its role.
    pub role: MemberRole,
    /// Where it listens for member-to-member traffic (`host:port`).
    pub ha_addr: String,
    /// Where it serves clients (`host:port`): required for a data member,
    /// not allowed for the witness.
    #[serde(default)]
    pub api_addr: Option<String>,
}

/// Raft timing (`[timeouts]`). Every key is optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// The length of a raft tick in milliseconds (default 100).
    pub tick_ms: u64,
    /// Ticks without hearing from the leader after which a follower's
    /// lease ends (default 10). Election timeouts are drawn above it.
    pub election_tick: u64,
    /// Ticks between the leader's heartbeats (default 2).
    pub heartbeat_tick: u64,
    /// How long the active waits for the passive before committing without
    /// it (degraded mode), in ms; a multiple of `tick_ms` (default 1000).
    pub sync_timeout_ms: u64,
    /// How long a planned switchover may wait for its target to catch up,
    /// in ms; a multiple of `tick_ms` (default 3000).
    pub switchover_timeout_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tick_ms: 100,
            election_tick: 10,
            heartbeat_tick: 2,
            sync_timeout_ms: 1000,
            switchover_timeout_ms: 3000,
        }
    }
}

/// The data directory's space (`[storage]`). Every key is optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Watch the data directory's free space and raise the NOSPACE alarm
    /// below the reserve (default true). Off, a full disk fails the member
    /// (it exits with status 4) instead of refusing writes beforehand.
    pub nospace_alarm: bool,
    /// Free space (MiB) below which this member raises its NOSPACE alarm
    /// and writes that take space are refused cluster-wide (reads, deletes
    /// and backups go on). Default: 256 MiB plus the sizes of the state
    /// and the log, which leaves room for a snapshot install (a second
    /// copy of the state), the log's rewrite and compaction.
    pub reserve_mb: Option<u64>,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            nospace_alarm: true,
            reserve_mb: None,
        }
    }
}

/// The guard (`[guard]`, data members only): the process that runs the
/// member and fences its host when the member dies or hangs (see
/// [`crate::guard`]). Every key is optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Guard {
    /// Run the member under the guard (default true).
    pub enabled: bool,
    /// Restart the member after it exited or was fenced (default true;
    /// false: the guard exits with the member's status).
    pub restart: bool,
    /// The most time the guard may take to act (kill the member, remove
    /// the management IP) before the lease ends, in ms (default 50). It
    /// must fit in half the time between the lease's end and the earliest
    /// another member can be active (`heartbeat_tick` ticks).
    pub reaction_ms: u64,
    /// The longest pause between restarts (default 30000); the pause
    /// doubles from one second after each quick exit.
    pub max_backoff_ms: u64,
    /// The kernel watchdog (default off): `automatic` uses it when it can
    /// and warns otherwise, `required` refuses to start without one that
    /// fits the lease (see [`crate::watchdog`]).
    pub watchdog: WatchdogMode,
    /// The watchdog device (default `/dev/watchdog`).
    pub watchdog_device: PathBuf,
}

/// `[guard] watchdog`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchdogMode {
    /// No watchdog.
    Off,
    /// The watchdog if one fits; a warning otherwise.
    Automatic,
    /// The watchdog, or no start.
    Required,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            enabled: true,
            restart: true,
            reaction_ms: 50,
            max_backoff_ms: 30_000,
            watchdog: WatchdogMode::Off,
            watchdog_device: PathBuf::from("/dev/watchdog"),
        }
    }
}

/// The floating management IP and the commands run when this member takes
/// or loses the active role (`[management_ip]`, data members only). See
/// [`crate::mgmt_ip`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagementIpConfig {
    /// The address with its prefix length (`10.0.0.10/24`). Needs
    /// `interface`.
    #[serde(default)]
    pub address: Option<String>,
    /// The interface the address is added to (`eth0`).
    #[serde(default)]
    pub interface: Option<String>,
    /// A shell command run (`sh -c`) when this member becomes active,
    /// before the address is added.
    #[serde(default)]
    pub promote_hook: Option<String>,
    /// A shell command run when this member stops being active, after the
    /// address was removed.
    #[serde(default)]
    pub demote_hook: Option<String>,
    /// Announce the address with gratuitous ARP after adding it (IPv4).
    #[serde(default)]
    pub arping: bool,
    /// Run every command inside this network namespace
    /// (`ip netns exec NS ...`); for tests and namespaced deployments.
    #[serde(default)]
    pub netns: Option<String>,
}

/// One process's configuration. Build it with [`load`] or
/// [`Config::parse`], which check it; the fields are public to read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The cluster's id (non-zero); members of different clusters refuse
    /// each other.
    pub cluster_id: u64,
    /// This member's id (non-zero).
    pub member_id: u64,
    /// This member's role.
    pub role: MemberRole,
    /// The data directory. A relative path in the file is taken relative
    /// to the file's directory; after [`load`] it is already joined.
    pub data_dir: PathBuf,
    /// Where this member listens for member-to-member traffic.
    pub ha_addr: String,
    /// Where this member serves clients: required for a data member, not
    /// allowed for the witness.
    #[serde(default)]
    pub api_addr: Option<String>,
    /// Where the health and metrics listener binds (`/health`, `/ready`,
    /// `/metrics`).
    pub http_addr: String,
    /// The other members (none for a standalone member).
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// Raft timing.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// The data directory's space.
    #[serde(default)]
    pub storage: Storage,
    /// The guard process (data members).
    #[serde(default)]
    pub guard: Guard,
    /// The floating management IP and its hooks, if any.
    #[serde(default)]
    pub management_ip: Option<ManagementIpConfig>,
    /// Allow member and client traffic over plain TCP, without TLS
    /// (default false): a binary refuses to start with neither `[tls]` nor
    /// this.
    #[serde(default)]
    pub allow_plain_tcp: bool,
    /// Mutual TLS on the HA channel and the client API (see
    /// `aoc-node certs`).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

/// The `[tls]` section: PEM files, relative paths taken relative to the
/// configuration file's directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster's CA certificate.
    pub ca: PathBuf,
    /// This member's certificate (naming `member-<id>.cluster-<id>.aoc`).
    pub cert: PathBuf,
    /// This member's private key.
    pub key: PathBuf,
}

/// Reads and checks the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, None, format!("cannot read the file: {e}")))?;
    Config::parse(&text, path)
}

impl Config {
    /// Parses and checks `text`; `path` is the file it came from (named in
    /// errors; a relative `data_dir` is joined to its directory).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| toml_error(path, text, &e))?;
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let at = e.path().to_string();
            let (field, problem) = serde_field_problem(&at, e.inner().message());
            // A field missing from the top level has no useful line (the
            // span is the whole document).
            let problem = match e.inner().span() {
                Some(span) if at != "." => {
                    format!("{problem} (line {})", line_of(text, span.start))
                }
                _ => problem,
            };
            ConfigError::new(path, Some(field), problem)
        })?;
        cfg.validate()
            .map_err(|(field, problem)| ConfigError::new(path, Some(field), problem))?;
        if let Some(dir) = path.parent() {
            if cfg.guard.watchdog_device.is_relative() {
                cfg.guard.watchdog_device = dir.join(&cfg.guard.watchdog_device);
            }
        }
        if let (Some(tls), Some(dir)) = (cfg.tls.as_mut(), path.parent()) {
            for p in [&mut tls.ca, &mut tls.cert, &mut tls.key] {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        if cfg.data_dir.is_relative() {
            if let Some(dir) = path.parent() {
                // `./data/x` joins as `DIR/data/x`, not `DIR/./data/x`.
                let rel: PathBuf = cfg
                    .data_dir
                    .components()
                    .filter(|c| *c != std::path::Component::CurDir)
                    .collect();
                cfg.data_dir = dir.join(rel);
            }
        }
        Ok(cfg)
    }

    /// Whether this is a standalone member (one data member, no peers).
    pub fn is_standalone(&self) -> bool {
        self.peers.is_empty()
    }

    /// Whether this member is the witness.
    pub fn is_witness(&self) -> bool {
        self.role == MemberRole::Witness
    }

    /// Every member's id (this member and its peers), ascending: the
    /// voters a blank member bootstraps with.
    pub fn voters(&self) -> Vec<u64> {
        let mut v: Vec<u64> = std::iter::once(self.member_id)
            .chain(self.peers.iter().map(|p| p.id))
            .collect();
        v.sort_unstable();
        v
    }

    /// The witness's member id (`None` when standalone).
    pub fn witness_id(&self) -> Option<u64> {
        if self.role == MemberRole::Witness {
            return Some(self.member_id);
        }
        self.peers
            .iter()
            .find(|p| p.role == MemberRole::Witness)
            .map(|p| p.id)
    }

    /// The peer with member id `id`.
    pub fn peer(&self, id: u64) -> Option<&Peer> {
        self.peers.iter().find(|p| p.id == id)
    }

    /// The length of a raft tick.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.timeouts.tick_ms)
    }

    /// The replica configuration: [`ReplicaConfig::ha`] (HA) or
    /// [`ReplicaConfig::new`] (standalone), then `[timeouts]`.
    ///
    /// With the default `election_tick` (10) the election ranges are
    /// exactly `ReplicaConfig::ha`'s: data members [11, 14), the witness
    /// [16, 21). Another `election_tick` scales them in the same
    /// proportions (data from 1.1x to 1.4x, witness from 1.6x to 2.1x, each
    /// range at least one tick wide, the witness's starting above the data
    /// members'), so the witness still stands only when no data member did.
    pub fn replica_config(&self) -> ReplicaConfig {
        let mut rc = match self.witness_id() {
            Some(w) => ReplicaConfig::ha(self.member_id, w),
            None => ReplicaConfig::new(self.member_id),
        };
        let t = &self.timeouts;
        let (min, max) = election_range(t.election_tick, self.is_witness());
        rc.election_tick = to_usize(t.election_tick);
        rc.heartbeat_tick = to_usize(t.heartbeat_tick);
        rc.min_election_tick = min;
        rc.max_election_tick = max;
        let tick_ms = t.tick_ms.max(1);
        rc.sync_timeout_ticks = to_usize(t.sync_timeout_ms / tick_ms);
        rc.switchover_timeout_ticks = to_usize(t.switchover_timeout_ms / tick_ms);
        rc
    }

    /// Checks everything serde cannot: returns (field, problem).
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |field: &str, problem: String| Err((field.to_string(), problem));
        if self.cluster_id == 0 {
            return bad("cluster_id", "0 is not allowed".into());
        }
        if self.member_id == 0 {
            return bad("member_id", "0 is not allowed".into());
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "must not be empty".into());
        }
        if self.storage.reserve_mb == Some(0) {
            return bad(
                "storage.reserve_mb",
                "0 would let the disk fill up before writes are refused; give at least 1".into(),
            );
        }
        check_addr(&self.ha_addr, false).or_else(|p| bad("ha_addr", p))?;
        match (self.role, &self.api_addr) {
            (MemberRole::Data, None) => {
                return bad("api_addr", "is required for a data member".into())
            }
            (MemberRole::Witness, Some(_)) => {
                return bad(
                    "api_addr",
                    "is not allowed for a witness (it serves no client)".into(),
                )
            }
            (MemberRole::Data, Some(a)) => check_addr(a, false).or_else(|p| bad("api_addr", p))?,
            (MemberRole::Witness, None) => {}
        }
        check_addr(&self.http_addr, true).or_else(|p| bad("http_addr", p))?;
        // This member's listeners must differ from each other.
        let mut own: Vec<(&str, &str)> = vec![("ha_addr", &self.ha_addr)];
        if let Some(a) = &self.api_addr {
            own.push(("api_addr", a));
        }
        own.push(("http_addr", &self.http_addr));
        for (i, (field, addr)) in own.iter().enumerate() {
            if let Some((other, _)) = own[..i].iter().find(|(_, a)| a == addr) {
                return bad(field, format!("{addr:?} is also {other}"));
            }
        }

        // Peers, one by one.
        let mut ids = BTreeSet::new();
        let mut ha_addrs: BTreeMap<&str, String> = BTreeMap::new();
        ha_addrs.insert(&self.ha_addr, "ha_addr".into());
        let mut api_addrs: BTreeMap<&str, String> = BTreeMap::new();
        if let Some(a) = &self.api_addr {
            api_addrs.insert(a, "api_addr".into());
        }
        for (i, p) in self.peers.iter().enumerate() {
            let f = |name: &str| format!("peers[{i}].{name}");
            if p.id == 0 {
                return Err((f("id"), "0 is not allowed".into()));
            }
            if p.id == self.member_id {
                return Err((
                    f("id"),
                    format!(
                        "{} is this member's member_id; list only the other members",
                        p.id
                    ),
                ));
            }
            if !ids.insert(p.id) {
                return Err((f("id"), format!("{} is listed twice", p.id)));
            }
            check_addr(&p.ha_addr, false).map_err(|e| (f("ha_addr"), e))?;
            if let Some(other) = ha_addrs.insert(&p.ha_addr, f("ha_addr")) {
                return Err((f("ha_addr"), format!("{:?} is also {other}", p.ha_addr)));
            }
            match (p.role, &p.api_addr) {
                (MemberRole::Data, None) => {
                    return Err((f("api_addr"), "is required for a data member".into()))
                }
                (MemberRole::Witness, Some(_)) => {
                    return Err((
                        f("api_addr"),
                        "is not allowed for a witness (it serves no client)".into(),
                    ))
                }
                (MemberRole::Data, Some(a)) => {
                    check_addr(a, false).map_err(|e| (f("api_addr"), e))?;
                    if let Some(other) = api_addrs.insert(a, f("api_addr")) {
                        return Err((f("api_addr"), format!("{a:?} is also {other}")));
                    }
                }
                (MemberRole::Witness, None) => {}
            }
        }

        // The shape of the cluster.
        let roles = std::iter::once(self.role).chain(self.peers.iter().map(|p| p.role));
        let data = roles.clone().filter(|r| *r == MemberRole::Data).count();
        let witnesses = roles.filter(|r| *r == MemberRole::Witness).count();
        if self.peers.is_empty() {
            if self.role == MemberRole::Witness {
                return bad(
                    "peers",
                    "a witness needs its cluster's data members as peers".into(),
                );
            }
        } else if !(1..=2).contains(&data) || witnesses > 1 {
            return bad(
                "peers",
                format!(
                    "a cluster has one or two data members and at most one witness \
                     (this member included; HA is two data members and one witness), \
                     this file gives {data} data member{} and {witnesses} witness{}; a \
                     standalone member lists no peers",
                    if data == 1 { "" } else { "s" },
                    if witnesses == 1 { "" } else { "es" },
                ),
            );
        }

        self.validate_timeouts()?;
        self.validate_guard()?;
        if let Some(m) = &self.management_ip {
            if self.role == MemberRole::Witness {
                return bad(
                    "management_ip",
                    "is not allowed for a witness (it never becomes the active)".into(),
                );
            }
            validate_management_ip(m)?;
        }
        // Whatever aoc-core still refuses (should be nothing after the
        // checks above).
        if let Err(e) = self.replica_config().validate() {
            return bad("timeouts", e.to_string());
        }
        Ok(())
    }

    /// The guard must act within half of the time between the lease's
    /// end and the earliest moment another member can be active (the other
    /// half covers clock-rate differences, as the lease's own margin does).
    fn validate_guard(&self) -> Result<(), (String, String)> {
        let g = &self.guard;
        if !g.enabled {
            return Ok(());
        }
        let slack_ms = self
            .timeouts
            .heartbeat_tick
            .saturating_mul(self.timeouts.tick_ms);
        if g.reaction_ms == 0 || g.reaction_ms.saturating_mul(2) > slack_ms {
            return Err((
                "guard.reaction_ms".into(),
                format!(
                    "{} ms does not fit: the lease ends {slack_ms} ms (heartbeat_tick x \
                     tick_ms) before another member can be active, and the guard may use at \
                     most half of it ({} ms); lower reaction_ms or raise heartbeat_tick or \
                     tick_ms",
                    g.reaction_ms,
                    slack_ms / 2
                ),
            ));
        }
        if g.max_backoff_ms < 1000 {
            return Err((
                "guard.max_backoff_ms".into(),
                format!("{} ms is below the first pause (1000 ms)", g.max_backoff_ms),
            ));
        }
        Ok(())
    }

    fn validate_timeouts(&self) -> Result<(), (String, String)> {
        let t = &self.timeouts;
        let bad = |field: &str, problem: String| Err((format!("timeouts.{field}"), problem));
        if t.tick_ms == 0 {
            return bad("tick_ms", "0 is not allowed".into());
        }
        if t.tick_ms > MAX_TICK_MS {
            return bad(
                "tick_ms",
                format!("{} is too long (at most {MAX_TICK_MS})", t.tick_ms),
            );
        }
        if t.heartbeat_tick == 0 {
            return bad("heartbeat_tick", "0 is not allowed".into());
        }
        if t.election_tick <= t.heartbeat_tick {
            return bad(
                "election_tick",
                format!(
                    "{} must be greater than heartbeat_tick ({})",
                    t.election_tick, t.heartbeat_tick
                ),
            );
        }
        if t.election_tick > 1000 {
            return bad(
                "election_tick",
                format!("{} is too many ticks (at most 1000)", t.election_tick),
            );
        }
        for (field, ms) in [
            ("sync_timeout_ms", t.sync_timeout_ms),
            ("switchover_timeout_ms", t.switchover_timeout_ms),
        ] {
            if ms == 0 {
                return bad(field, "0 is not allowed".into());
            }
            if ms % t.tick_ms != 0 {
                return bad(
                    field,
                    format!("{ms} is not a multiple of tick_ms ({})", t.tick_ms),
                );
            }
            if ms / t.tick_ms > 100_000 {
                return bad(field, format!("{ms} is too long (at most 100000 ticks)"));
            }
        }
        Ok(())
    }
}

fn validate_management_ip(m: &ManagementIpConfig) -> Result<(), (String, String)> {
    let bad = |field: &str, problem: String| Err((format!("management_ip.{field}"), problem));
    match (&m.address, &m.interface) {
        (Some(_), None) => return bad("interface", "is required with address".into()),
        (None, Some(_)) => return bad("address", "is required with interface".into()),
        _ => {}
    }
    if let Some(a) = &m.address {
        let ip = parse_cidr(a).map_err(|p| ("management_ip.address".to_string(), p))?;
        if m.arping && !ip.is_ipv4() {
            return bad(
                "arping",
                "gratuitous ARP is for IPv4 addresses only; set arping = false".into(),
            );
        }
    } else if m.arping {
        return bad("arping", "needs address and interface".into());
    }
    if let Some(i) = &m.interface {
        check_name(i, 15).or_else(|p| bad("interface", p))?;
    }
    if let Some(ns) = &m.netns {
        check_name(ns, 255).or_else(|p| bad("netns", p))?;
    }
    for (field, hook) in [
        ("promote_hook", &m.promote_hook),
        ("demote_hook", &m.demote_hook),
    ] {
        if let Some(h) = hook {
            if h.trim().is_empty() {
                return bad(field, "must not be empty (leave it out instead)".into());
            }
        }
    }
    Ok(())
}

/// An interface or namespace name: non-empty, at most `max` bytes, no
/// whitespace and no `/`.
fn check_name(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > max {
        return Err(format!("{name:?} is longer than {max} characters"));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c == '/' || c.is_control())
    {
        return Err(format!("{name:?} contains a space or a '/'"));
    }
    Ok(())
}

/// Parses `ADDR/PREFIX`.
fn parse_cidr(s: &str) -> Result<IpAddr, String> {
    let bad = || format!("{s:?} is not an address with a prefix length (e.g. 10.0.0.10/24)");
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!(
            "{s:?}: the prefix length must be at most {max} for this address"
        ));
    }
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!("{s:?} is not a unicast address"));
    }
    Ok(ip)
}

/// Checks `host:port` (`[v6]:port` for IPv6 literals).
pub fn check_addr(s: &str, allow_port_zero: bool) -> Result<(), String> {
    let not = |why: &str| format!("{s:?} is not host:port ({why})");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| not("an IPv6 address is written [addr]:port"))?;
        h.parse::<Ipv6Addr>()
            .map_err(|_| not("not an IPv6 address between the brackets"))?;
        (None, p)
    } else {
        let (h, p) = s
            .rsplit_once(':')
            .ok_or_else(|| not("no ':' before a port"))?;
        if h.contains(':') {
            return Err(not("an IPv6 address is written [addr]:port"));
        }
        (Some(h), p)
    };
    let port: u16 = port
        .parse()
        .map_err(|_| not("the port must be a number from 1 to 65535"))?;
    if port == 0 && !allow_port_zero {
        return Err(not("port 0 is not allowed: other members must reach it"));
    }
    if let Some(h) = host {
        if h.is_empty() {
            return Err(not("the host is empty"));
        }
        if h.chars().all(|c| c.is_ascii_digit() || c == '.') {
            h.parse::<Ipv4Addr>()
                .map_err(|_| not("not an IPv4 address"))?;
        } else if !valid_hostname(h) {
            return Err(not("not a valid host name"));
        }
    }
    Ok(())
}

fn valid_hostname(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The election timeout range for `election_tick` (see
/// [`Config::replica_config`]).
fn election_range(election_tick: u64, witness: bool) -> (usize, usize) {
    let e = election_tick;
    let frac = |tenths: u64| e + (e * tenths).div_ceil(10);
    let data_min = frac(1);
    let data_max = frac(4).max(data_min + 1);
    let (min, max) = if witness {
        let w_min = frac(6).max(data_max + 1);
        (w_min, frac(11).max(w_min + 1))
    } else {
        (data_min, data_max)
    };
    (to_usize(min), to_usize(max))
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Turns a serde message at `path` into (field, problem), naming the
/// missing or unknown field itself rather than its table.
fn serde_field_problem(path: &str, message: &str) -> (String, String) {
    let join = |name: &str| {
        if path == "." || path.is_empty() {
            name.to_string()
        } else if path == name || path.ends_with(&format!(".{name}")) {
            // The path already ends at the key (unknown fields).
            path.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    let quoted = |rest: &str| {
        rest.strip_prefix('`')
            .and_then(|r| r.split_once('`'))
            .map(|(name, tail)| (name.to_string(), tail.to_string()))
    };
    if let Some((name, _)) = message.strip_prefix("missing field ").and_then(quoted) {
        return (join(&name), "is missing".into());
    }
    if let Some((name, tail)) = message.strip_prefix("unknown field ").and_then(quoted) {
        let expected = tail.trim_start_matches(',').trim();
        let problem = if expected.is_empty() {
            "unknown field".to_string()
        } else {
            format!("unknown field ({expected})")
        };
        return (join(&name), problem);
    }
    let field = if path == "." || path.is_empty() {
        "(top level)".to_string()
    } else {
        path.to_string()
    };
    (field, message.to_string())
}

fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let problem = match e.span() {
        Some(span) => format!(
            "line {}: {} (TOML syntax)",
            line_of(text, span.start),
            e.message()
        ),
        None => format!("{} (TOML syntax)", e.message()),
    };
    ConfigError::new(path, None, problem)
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}
