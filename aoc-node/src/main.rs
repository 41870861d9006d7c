//! `aoc-node`: the AOC HA data member, and the operator's command line.
//!
//! - `aoc-node run --config FILE`: runs a data member;
//! - `aoc-node status --endpoints A,B [--json]`: each member's role, term,
//!   commit and applied index, the mode, the passive's lag, maintenance;
//! - `aoc-node kv put|get|delete|cas|scan ... --endpoints ...`;
//! - `aoc-node switchover --endpoints ...`, `aoc-node maintenance on|off`;
//! - `aoc-node backup --out FILE --endpoints ...`: a consistent copy of the
//!   state, taken on the active while the cluster serves;
//! - `aoc-node restore --from FILE --config FILE`: the data directory of a
//!   new standalone member holding a backup's state;
//! - `aoc-node members add|remove|replace|shrink|list --endpoints ...`: grow
//!   a standalone member to HA, replace a failed passive or witness, shrink
//!   back to standalone;
//! - `aoc-node certs --cluster-id N --members 1,2,3 --out DIR`: the
//!   cluster's CA and the members' (and clients') certificates for mutual
//!   TLS;
//! - `aoc-node demo` (the default): a standalone member on real storage in
//!   a temporary directory that writes, reads, restarts and checks that
//!   nothing was lost.
//!
//! The client commands speak TLS with `--tls-ca`, `--tls-cert`,
//! `--tls-key` and `--cluster-id` (a client certificate from `certs`).
//!
//! Exit codes: 0 success, 1 a failed operation (or `kv get` of a missing
//! key), 2 a bad configuration or command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use aoc_core::client::{self, Client, ClientOptions, MemberStatus};
use aoc_core::state::{KvCommand, KvStateMachine, SledKv};
use aoc_core::storage::{EngineLogOptions, EngineLogStore};
use aoc_core::{Node, ReplicaConfig, Role};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "aoc-node", version, about = "AOC HA data member")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Client commands over TLS: the cluster's CA certificate (PEM).
    #[arg(long, global = true, requires_all = ["tls_cert", "tls_key", "cluster_id"])]
    tls_ca: Option<PathBuf>,
    /// The client's certificate (PEM), signed by the cluster's CA.
    #[arg(long, global = true, requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    /// The client's private key (PEM).
    #[arg(long, global = true, requires = "tls_ca")]
    tls_key: Option<PathBuf>,
    /// The cluster the members must belong to (with TLS).
    #[arg(long, global = true)]
    cluster_id: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a data member from its configuration file.
    Run {
        /// The member's TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Show each member's role, term, indexes, the mode and maintenance.
    Status {
        /// Client API addresses of the data members (host:port,...).
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Read and write keys through the active.
    Kv {
        #[command(subcommand)]
        op: KvOp,
        /// Client API addresses of the data members (host:port,...).
        #[arg(long, value_delimiter = ',', global = true)]
        endpoints: Vec<String>,
    },
    /// Move the active role to the passive with nothing lost.
    Switchover {
        /// Client API addresses of the data members (host:port,...).
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
    },
    /// Copy the state, consistent at one applied index, into a new backup
    /// file while the cluster keeps serving (see docs/operations.md).
    Backup {
        /// The backup file to write (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Client API addresses of the data members (host:port,...).
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
    },
    /// Build the data directory of a new standalone data member from a
    /// backup file; then start it with `aoc-node run --config FILE`.
    Restore {
        /// The backup file (checked whole before anything is written).
        #[arg(long)]
        from: PathBuf,
        /// The new member's configuration (standalone: no peers); its
        /// data_dir must be missing or empty.
        #[arg(long)]
        config: PathBuf,
    },
    /// Add, remove or replace members of the running cluster, through the
    /// active (see docs/operations.md).
    Members {
        #[command(subcommand)]
        op: MembersOp,
        /// Client API addresses of the data members (host:port,...).
        #[arg(long, value_delimiter = ',', global = true)]
        endpoints: Vec<String>,
    },
    /// Suspend (on) or resume (off) automatic failover.
    Maintenance {
        /// `on` or `off`.
        state: OnOff,
        /// Client API addresses of the data members (host:port,...).
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        /// `off` on one member alone, through its admin socket in DATA_DIR
        /// (works with no active, on the witness too).
        #[arg(long, value_name = "DATA_DIR", conflicts_with = "endpoints")]
        local: Option<PathBuf>,
    },
    /// Remove the management IP from this host and run the demote hook
    /// (systemd's ExecStopPost: whatever happened, the address leaves with
    /// the service).
    ReleaseIp {
        /// The member's configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// The NOSPACE alarms: `list` them (from the active), or `disarm` them
    /// all (a disk still below its reserve raises its alarm again).
    Alarm {
        /// `list` or `disarm`.
        op: AlarmOp,
        /// Client API addresses of the data members (host:port,...).
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
    },
    /// Generate the cluster's CA and certificates for mutual TLS: DIR/ca.pem
    /// and ca.key (reused when present, to add members later),
    /// member-ID.pem/.key and client-NAME.pem/.key. Existing certificate
    /// files are never overwritten. Keys are written owner-only.
    Certs {
        /// Where to write the files.
        #[arg(long)]
        out: PathBuf,
        /// Member ids to issue certificates for (1,2,3).
        #[arg(long, value_delimiter = ',')]
        members: Vec<u64>,
        /// Client names to issue certificates for (admin,...).
        #[arg(long, value_delimiter = ',')]
        clients: Vec<String>,
    },
    /// Forced recovery, when the active AND the witness are lost: report
    /// what promoting this (stopped) data member to a standalone member
    /// loses, and with --accept-data-loss, promote it. Without the flag it
    /// changes nothing.
    Recover {
        /// The member's TOML configuration (its data_dir is recovered).
        #[arg(long)]
        config: PathBuf,
        /// The member to promote: the id in the configuration.
        #[arg(long)]
        promote: u64,
        /// The stopped witness's data directory, if its disk survived: the
        /// lost writes are then counted exactly.
        #[arg(long, value_name = "DIR")]
        witness_data_dir: Option<PathBuf>,
        /// Promote, losing what the report lists.
        #[arg(long)]
        accept_data_loss: bool,
    },
    /// Run a standalone member on real storage: write, read back, restart,
    /// and check every acknowledged write (the default command).
    Demo {
        /// Data directory (default: a temporary directory, removed after).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// How many writes to make.
        #[arg(long, default_value_t = 2000)]
        writes: u64,
        /// Writer threads.
        #[arg(long, default_value_t = 4)]
        threads: u64,
    },
}

#[derive(Subcommand)]
enum KvOp {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print KEY's value alone; exit 1 when the key is missing.
    Get { key: String },
    /// Remove KEY.
    Delete { key: String },
    /// Set KEY to NEW if its value is EXPECTED ("-" for absent); exit 1 if not.
    Cas {
        key: String,
        expected: String,
        new: String,
    },
    /// Print every KEY=VALUE whose key starts with PREFIX.
    Scan { prefix: String },
}

#[derive(Subcommand)]
enum MembersOp {
    /// Add a member (started blank, its file listing the cluster's
    /// members): as a learner, then as a voter once it has caught up.
    Add {
        #[command(flatten)]
        new: NewMember,
    },
    /// Remove a member (not the active: switch over first). The others
    /// refuse it from then on.
    Remove {
        /// The member's id.
        #[arg(long)]
        id: u64,
    },
    /// Remove a failed member, then add a new one in its place.
    Replace {
        /// The failed member's id.
        #[arg(long)]
        old: u64,
        /// The new member (a new id).
        #[command(flatten)]
        new: NewMember,
    },
    /// Remove every member but the active at once: back to standalone.
    Shrink,
    /// The members, as the active sees them.
    List,
}

/// The member `members add` and `members replace` add.
#[derive(clap::Args)]
struct NewMember {
    /// The new member's id.
    #[arg(long)]
    id: u64,
    /// `data` or `witness`.
    #[arg(long)]
    role: aoc_node::config::MemberRole,
    /// Its member listener (host:port), as the others will reach it.
    #[arg(long)]
    ha_addr: String,
    /// Give up waiting for it to catch up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
}

impl NewMember {
    fn member(&self) -> Result<(aoc_core::Member, Duration), (u8, String)> {
        let m = aoc_node::members::member(self.id, self.role, &self.ha_addr).map_err(|e| (2, e))?;
        Ok((m, Duration::from_secs(self.timeout_s)))
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum AlarmOp {
    List,
    Disarm,
}

/// `aoc-node recover`: prints the survey; exit status 0 once promoted, 3
/// when the report was printed and nothing changed (no
/// --accept-data-loss).
fn recover(
    cfg: &aoc_node::config::Config,
    path: &std::path::Path,
    promote: u64,
    witness_dir: Option<&std::path::Path>,
    accept: bool,
) -> Result<(), (u8, String)> {
    let outcome =
        aoc_node::recover::recover(cfg, promote, witness_dir, accept).map_err(|e| (1, e))?;
    println!("{}", outcome.survey);
    if !outcome.promoted {
        return Err((
            3,
            format!(
                "nothing changed. To promote member {promote} to a standalone member, losing \
                 what is listed above, run again with --accept-data-loss"
            ),
        ));
    }
    println!(
        "member {promote} is now standalone (its stored configuration is itself alone). Next: \
         remove the [[peers]] entries from {} and start it with `aoc-node run --config {}`. Do \
         not start the old active or witness with their data again: this member drops their \
         messages, and they would hold writes it does not.",
        path.display(),
        path.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    aoc_core::logging::init_logging();
    let cli = Cli::parse();
    let opts = match client_options(&cli) {
        Ok(o) => o,
        Err((code, e)) => {
            eprintln!("aoc-node: {e}");
            return ExitCode::from(code);
        }
    };
    let result = match cli.command.unwrap_or(Command::Demo {
        data_dir: None,
        writes: 2000,
        threads: 4,
    }) {
        Command::Demo {
            data_dir,
            writes,
            threads,
        } => demo(data_dir, writes, threads).map_err(|e| (1, e.to_string())),
        Command::Run { config } => match aoc_node::config::load(&config) {
            Err(e) => Err((2, e.to_string())),
            Ok(cfg) if cfg.is_witness() => Err((
                2,
                format!(
                    "{}: role: this file is a witness's; run it with aoc-witness",
                    config.display()
                ),
            )),
            Ok(cfg)
                if cfg.guard.enabled && std::env::var_os(aoc_node::guard::CHILD_ENV).is_none() =>
            {
                aoc_node::guard::run(&config, &cfg).map_err(|e| (e.code, e.message))
            }
            Ok(cfg) => aoc_node::run::run(cfg).map_err(|e| (e.code, e.message)),
        },
        Command::Recover {
            config,
            promote,
            witness_data_dir,
            accept_data_loss,
        } => match aoc_node::config::load(&config) {
            Err(e) => Err((2, e.to_string())),
            Ok(cfg) => recover(
                &cfg,
                &config,
                promote,
                witness_data_dir.as_deref(),
                accept_data_loss,
            ),
        },
        Command::Certs {
            out,
            members,
            clients,
        } => match cli.cluster_id {
            None => Err((2, "--cluster-id: give the cluster's id".into())),
            Some(cluster) => aoc_node::certs::generate(&out, cluster, &members, &clients)
                .map(|written| {
                    for f in written {
                        println!("wrote {}", f.display());
                    }
                })
                .map_err(|e| (1, e)),
        },
        Command::Status { endpoints, json } => status(&endpoints, json, &opts),
        Command::Backup {
            out,
            endpoints: list,
        } => endpoints(&list).and_then(|eps| {
            let summary = aoc_node::backup::take(&out, eps, opts.clone()).map_err(|e| (1, e))?;
            println!("{summary}");
            Ok(())
        }),
        Command::Restore { from, config } => restore(&from, &config),
        Command::Kv { op, endpoints } => kv(op, &endpoints, &opts),
        Command::Members { op, endpoints } => members(op, &endpoints, &opts),
        Command::Switchover { endpoints } => connect(&endpoints, &opts).and_then(|mut c| {
            let pause = c.switchover().map_err(|e| (1, e.to_string()))?;
            println!("switchover done; write pause {} ms", pause.as_millis());
            Ok(())
        }),
        Command::Maintenance {
            state: OnOff::Off,
            local: Some(dir),
            ..
        } => aoc_node::run::admin_command(&dir, "maintenance-off")
            .map(|answer| println!("{answer}"))
            .map_err(|e| (1, e)),
        Command::Alarm { op, endpoints } => alarm(op, &endpoints, &opts),
        Command::ReleaseIp { config } => match aoc_node::config::load(&config) {
            Err(e) => Err((2, e.to_string())),
            Ok(cfg) => match &cfg.management_ip {
                None => {
                    println!("no management IP configured: nothing to release");
                    Ok(())
                }
                Some(m) => aoc_node::mgmt_ip::MgmtIp::new(m.clone())
                    .demote()
                    .map(|()| println!("management IP released"))
                    .map_err(|e| (1, e)),
            },
        },
        Command::Maintenance { local: Some(_), .. } => Err((
            2,
            "--local: only `maintenance off` has a local form; turn it on through the active"
                .into(),
        )),
        Command::Maintenance {
            state, endpoints, ..
        } => connect(&endpoints, &opts).and_then(|mut c| {
            let on = matches!(state, OnOff::On);
            c.maintenance(on).map_err(|e| (1, e.to_string()))?;
            println!("maintenance {}", if on { "on" } else { "off" });
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, e)) => {
            eprintln!("aoc-node: {e}");
            ExitCode::from(code)
        }
    }
}

type CliResult = Result<(), (u8, String)>;

/// `aoc-node alarm list|disarm`.
fn alarm(op: AlarmOp, list: &[String], opts: &ClientOptions) -> CliResult {
    let mut c = connect(list, opts)?;
    match op {
        AlarmOp::Disarm => {
            c.disarm_alarms().map_err(|e| (1, e.to_string()))?;
            println!(
                "every NOSPACE alarm cleared (a disk still below its reserve raises its own again)"
            );
        }
        AlarmOp::List => {
            let all = c.status_all();
            let active = all
                .iter()
                .filter_map(|(_, st)| st.as_ref().ok())
                .find(|m| m.status.active)
                .ok_or((
                    1,
                    "no member is active: the alarms are read from the active".to_string(),
                ))?;
            if active.status.alarms.is_empty() {
                println!("no alarm");
            }
            for a in &active.status.alarms {
                println!("{}", alarm_line(a));
            }
        }
    }
    Ok(())
}

/// One NOSPACE alarm, for an operator.
fn alarm_line(a: &aoc_core::Alarm) -> String {
    format!(
        "NOSPACE on member {}: {} MiB free, below its reserve of {} MiB, since {} ms; \
         writes that take space are refused (reads, deletes and backups go on)",
        a.member,
        a.free_bytes >> 20,
        a.reserve_bytes >> 20,
        a.since_ms
    )
}

/// `restore`: a bad or non-standalone configuration exits 2, a refused
/// backup or data directory 1.
fn restore(from: &Path, config: &Path) -> CliResult {
    let cfg = aoc_node::config::load(config).map_err(|e| (2, e.to_string()))?;
    if cfg.is_witness() || !cfg.is_standalone() {
        return Err((
            2,
            format!(
                "{}: restore builds a standalone data member (role = \"data\", no [[peers]]); \
                 this configuration is {}",
                config.display(),
                if cfg.is_witness() {
                    "a witness's".to_string()
                } else {
                    format!("an HA member's ({} peers)", cfg.peers.len())
                }
            ),
        ));
    }
    let restored = aoc_node::backup::restore(from, &cfg, config).map_err(|e| (1, e))?;
    for note in restored.notes {
        eprintln!("aoc-node: {note}");
    }
    println!("{}", restored.summary);
    Ok(())
}

fn members(op: MembersOp, list: &[String], opts: &ClientOptions) -> CliResult {
    use aoc_node::members;
    match op {
        MembersOp::Add { new } => {
            let (m, timeout) = new.member()?;
            let mut c = connect(list, opts)?;
            members::add(&mut c, &m, timeout).map_err(|e| (1, e))
        }
        MembersOp::Remove { id } => {
            let mut c = connect(list, opts)?;
            members::remove(&mut c, id).map_err(|e| (1, e))
        }
        MembersOp::Replace { old, new } => {
            let (m, timeout) = new.member()?;
            let mut c = connect(list, opts)?;
            members::replace(&mut c, old, &m, timeout).map_err(|e| (1, e))
        }
        MembersOp::Shrink => {
            let mut c = connect(list, opts)?;
            members::shrink(&mut c).map_err(|e| (1, e))
        }
        MembersOp::List => {
            let mut c = connect(list, opts)?;
            print!("{}", members::list(&mut c).map_err(|e| (1, e))?);
            Ok(())
        }
    }
}

fn endpoints(list: &[String]) -> Result<Vec<SocketAddr>, (u8, String)> {
    if list.is_empty() {
        return Err((
            2,
            "--endpoints: give the data members' client API addresses (host:port,...)".into(),
        ));
    }
    list.iter()
        .map(|e| aoc_node::run::resolve("--endpoints", e).map_err(|m| (2, m)))
        .collect()
}

/// The client options: TLS when `--tls-ca` (and the rest) are given.
fn client_options(cli: &Cli) -> Result<ClientOptions, (u8, String)> {
    let mut opts = ClientOptions::default();
    if let (Some(ca), Some(cert), Some(key), Some(cluster_id)) =
        (&cli.tls_ca, &cli.tls_cert, &cli.tls_key, cli.cluster_id)
    {
        let identity = aoc_core::transport::tls::TlsIdentity::from_files(ca, cert, key)
            .map_err(|e| (2, e.to_string()))?;
        opts.tls = Some(client::ClientTls {
            identity,
            cluster_id,
        });
    }
    Ok(opts)
}

fn connect(list: &[String], opts: &ClientOptions) -> Result<Client, (u8, String)> {
    Client::connect(endpoints(list)?, opts.clone()).map_err(|e| (1, e.to_string()))
}

fn kv(op: KvOp, list: &[String], opts: &ClientOptions) -> CliResult {
    let mut c = connect(list, opts)?;
    let fail = |e: aoc_core::Error| (1, e.to_string());
    match op {
        KvOp::Put { key, value } => {
            c.put(key, value).map_err(fail)?;
        }
        KvOp::Get { key } => match c.get(key.clone()).map_err(fail)? {
            Some(v) => println!("{}", String::from_utf8_lossy(&v)),
            None => return Err((1, format!("{key}: no such key"))),
        },
        KvOp::Delete { key } => {
            c.delete(key).map_err(fail)?;
        }
        KvOp::Cas { key, expected, new } => {
            let expected = (expected != "-").then(|| expected.into_bytes());
            if !c
                .cas(key.clone(), expected, Some(new.into_bytes()))
                .map_err(fail)?
            {
                return Err((1, format!("{key}: the value was not the expected one")));
            }
        }
        KvOp::Scan { prefix } => {
            for (k, v) in c.scan(prefix).map_err(fail)? {
                println!(
                    "{}={}",
                    String::from_utf8_lossy(&k),
                    String::from_utf8_lossy(&v)
                );
            }
        }
    }
    Ok(())
}

/// A member's role as operators name it.
fn role_name(s: &aoc_core::Status) -> &'static str {
    if s.witness {
        "witness"
    } else if s.active {
        "active"
    } else if matches!(s.role, Role::Candidate | Role::PreCandidate) {
        "candidate"
    } else if s.role == Role::Leader {
        "leader"
    } else {
        "passive"
    }
}

fn status(list: &[String], json: bool, opts: &ClientOptions) -> CliResult {
    let mut members = Vec::new();
    // Why a member did not answer (refused TLS, connection refused, ...).
    let mut errors = std::collections::HashMap::new();
    let mut active: Option<MemberStatus> = None;
    for ep in endpoints(list)? {
        match client::status_of(ep, opts) {
            Ok(ms) => {
                if ms.status.active {
                    active = Some(ms.clone());
                }
                members.push((ep, Some(ms.status)));
            }
            Err(e) => {
                errors.insert(ep, e.to_string());
                members.push((ep, None));
            }
        }
    }
    // The witness has no client API: the active's view of it (the witness
    // the active names; from a member that does not name it, the
    // directory's witness, else the voter no endpoint answered for).
    let witness = active.as_ref().and_then(|a| {
        let seen: Vec<u64> = members
            .iter()
            .filter_map(|(_, s)| s.as_ref().map(|s| s.id))
            .collect();
        let listed = a.status.witness_id.or_else(|| {
            a.status
                .members
                .iter()
                .find(|m| m.role == aoc_core::MemberRole::Witness)
                .map(|m| m.id)
        });
        a.status
            .progress
            .iter()
            .find(|p| match listed {
                Some(w) => p.id == w,
                None => !seen.contains(&p.id) && !a.status.learners.contains(&p.id),
            })
            .map(|p| (p.id, p.matched))
    });
    let (voters, learners) = active
        .as_ref()
        .map(|a| (a.status.voters.clone(), a.status.learners.clone()))
        .unwrap_or_default();
    let mode = active
        .as_ref()
        .map(|a| format!("{:?}", a.status.mode).to_lowercase())
        .unwrap_or_else(|| "none".into());
    // The active's view; with no active, what the members that answered
    // apply (a member held back by maintenance says so in its notes).
    let maintenance = match &active {
        Some(a) => a.status.maintenance,
        None => members
            .iter()
            .find_map(|(_, s)| s.as_ref().and_then(|s| s.maintenance)),
    };
    let last_failover = members
        .iter()
        .filter_map(|(_, s)| {
            s.as_ref()
                .and_then(|s| s.last_failover_ms.map(|f| (s.id, f)))
        })
        .max_by_key(|(_, (at, _))| *at);
    if json {
        let mut arr = Vec::new();
        for (ep, st) in &members {
            arr.push(match st {
                Some(s) => serde_json::json!({
                    "id": s.id, "endpoint": ep.to_string(), "role": role_name(s), "term": s.term,
                    "fencing_token": s.fencing_token,
                    "commit": s.commit, "applied": s.applied, "leader": s.leader,
                    "passive_lag_entries": s.passive_lag_entries, "passive_lag_bytes": s.passive_lag_bytes,
                    "maintenance": s.maintenance.map(|(a, since)| serde_json::json!({"allowed": a, "since_ms": since})),
                    "waiting_for": s.waiting_for,
                    "disk": s.disk.map(|(d, low)| serde_json::json!({"free_bytes": d.free_bytes, "reserve_bytes": d.reserve_bytes, "low": low})),
                }),
                None => serde_json::json!({"id": null, "endpoint": ep.to_string(), "role": "down", "error": errors.get(ep)}),
            });
        }
        if let Some((id, matched)) = witness {
            let log = active.as_ref().and_then(|a| a.status.witness_log);
            arr.push(serde_json::json!({
                "id": id, "role": "witness", "matched": matched,
                "log_bytes": log.map(|l| l.0), "log_entries": log.map(|l| l.1),
            }));
        }
        let out = serde_json::json!({
            "mode": mode,
            "voters": voters,
            "learners": learners,
            "members": arr,
            "maintenance": maintenance.map(|(a, since)| serde_json::json!({"allowed": a, "since_ms": since})),
            "alarms": active.as_ref().map(|a| a.status.alarms.iter().map(|a| serde_json::json!({
                "member": a.member, "free_bytes": a.free_bytes, "reserve_bytes": a.reserve_bytes, "since_ms": a.since_ms,
            })).collect::<Vec<_>>()).unwrap_or_default(),
            "last_failover": last_failover.map(|(id, (at, took))| serde_json::json!({"to": id, "at_ms": at, "took_ms": took})),
        });
        println!("{out}");
    } else {
        println!("mode: {mode}");
        if !learners.is_empty() {
            println!("learners (being added): {learners:?}; voters: {voters:?}");
        }
        if let Some((id, (at, took))) = last_failover {
            println!("last failover: to member {id} at {at} ms, {took} ms after its last contact with the previous active");
        }
        let alarms = active
            .as_ref()
            .map(|a| a.status.alarms.clone())
            .unwrap_or_default();
        for a in &alarms {
            println!("alarm: {}", alarm_line(a));
        }
        if let Some((allowed, since)) = maintenance {
            println!("maintenance: on (failover suspended; only member {allowed} may stand; since {since} ms)");
            if active.is_none() {
                println!(
                    "no member is active and maintenance holds the others back: bring member \
                     {allowed} back, or turn maintenance off with `maintenance off --local DIR` \
                     on each member"
                );
            }
        }
        println!(
            "{:<4} {:<22} {:<10} {:>6} {:>10} {:>10}  notes",
            "id", "endpoint", "role", "term", "commit", "applied"
        );
        for (ep, st) in &members {
            match st {
                Some(s) => {
                    let mut notes = Vec::new();
                    if let Some(t) = s.fencing_token {
                        notes.push(format!("fencing token {t}"));
                    }
                    if let Some(l) = s.passive_lag_entries {
                        notes.push(format!(
                            "passive lag {l} entries, {} bytes",
                            s.passive_lag_bytes.unwrap_or(0)
                        ));
                    }
                    if let Some((d, low)) = s.disk {
                        if low {
                            notes.push(format!(
                                "disk below its reserve: {} MiB free of a {} MiB reserve",
                                d.free_bytes >> 20,
                                d.reserve_bytes >> 20
                            ));
                        }
                    }
                    if let Some(w) = &s.waiting_for {
                        notes.push(w.clone());
                    }
                    println!(
                        "{:<4} {:<22} {:<10} {:>6} {:>10} {:>10}  {}",
                        s.id,
                        ep,
                        role_name(s),
                        s.term,
                        s.commit,
                        s.applied,
                        notes.join("; ")
                    );
                }
                None => println!(
                    "{:<4} {:<22} {:<10} {:>6} {:>10} {:>10}  {}",
                    "?",
                    ep,
                    "down",
                    "-",
                    "-",
                    "-",
                    errors.get(ep).map(String::as_str).unwrap_or("")
                ),
            }
        }
        if let Some((id, matched)) = witness {
            let log = active
                .as_ref()
                .and_then(|a| a.status.witness_log)
                .map(|(b, e)| format!("; retains {e} entries, {b} bytes"))
                .unwrap_or_default();
            println!(
                "{:<4} {:<22} {:<10} {:>6} {:>10} {:>10}  (as the active sees it{log})",
                id, "-", "witness", "-", matched, "-"
            );
        }
    }
    if members.iter().all(|(_, s)| s.is_none()) {
        return Err((1, "no member answered".into()));
    }
    Ok(())
}

fn start(dir: &Path) -> aoc_core::Result<Node<SledKv>> {
    let log = EngineLogStore::open(&dir.join("log"), EngineLogOptions::default())?;
    let kv = SledKv::open(&dir.join("state"))?;
    let node = Node::builder(ReplicaConfig::new(1))
        .voters(vec![1])
        .start(log, kv)?;
    let start = Instant::now();
    while node.status().role != Role::Leader {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(aoc_core::Error::Timeout {
                what: "standalone member to become active".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(node)
}

fn demo(data_dir: Option<PathBuf>, writes: u64, threads: u64) -> aoc_core::Result<()> {
    let temp;
    let dir = match data_dir {
        Some(d) => d,
        None => {
            temp = tempfile::tempdir()
                .map_err(|e| aoc_core::Error::storage("temporary directory", e))?;
            temp.path().to_path_buf()
        }
    };
    println!("standalone member, data directory {}", dir.display());
    let node = start(&dir)?;
    let threads = threads.max(1);
    let per_thread = writes / threads;
    let begin = Instant::now();
    let mut latencies_us: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let node = node.clone();
                s.spawn(move || -> aoc_core::Result<Vec<u64>> {
                    let mut lat = Vec::with_capacity(per_thread as usize);
                    for i in 0..per_thread {
                        let cmd = KvCommand::put(format!("demo/{t}/{i}"), vec![b'x'; 256]);
                        let t0 = Instant::now();
                        node.propose(cmd.encode())?;
                        lat.push(t0.elapsed().as_micros() as u64);
                    }
                    Ok(lat)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            match h.join() {
                Ok(Ok(l)) => all.extend(l),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(aoc_core::Error::Raft("a writer thread panicked".into())),
            }
        }
        Ok(all)
    })?;
    let elapsed = begin.elapsed();
    latencies_us.sort_unstable();
    let pct = |p: f64| latencies_us[((latencies_us.len() as f64 - 1.0) * p) as usize];
    let total = latencies_us.len() as u64;
    println!(
        "{total} synced writes of 256 bytes from {threads} threads in {:.2} s: {:.0} writes/s, p50 {} us, p99 {} us",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );
    let applied = node.status().applied;
    node.shutdown();
    drop(node);

    let node = start(&dir)?;
    let status = node.status();
    println!(
        "restarted: applied index {} (was {applied}), term {}",
        status.applied, status.term
    );
    let mut missing = 0;
    for t in 0..threads {
        for i in 0..per_thread {
            let key = format!("demo/{t}/{i}").into_bytes();
            if node.read(move |kv| kv.get(&key))??.is_none() {
                missing += 1;
            }
        }
    }
    node.shutdown();
    if missing > 0 {
        return Err(aoc_core::Error::storage(
            dir,
            format!("{missing} acknowledged writes missing after restart"),
        ));
    }
    println!("every acknowledged write was read back after the restart");
    Ok(())
}
