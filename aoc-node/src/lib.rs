//! `aoc_node`: the operator-facing pieces that the `aoc-node` and
//! `aoc-witness` binaries share, none of which needs networking between
//! members:
//!
//! - [`config`]: the one TOML configuration file per process, checked
//!   with one-line errors that name the field;
//! - [`health`]: the `/health`, `/ready` and `/metrics` HTTP listener;
//! - [`mgmt_ip`]: the floating management IP and the promote/demote hooks
//!   that follow the active;
//! - [`certs`]: the cluster's CA and certificates for mutual TLS;
//! - [`lock`]: the data directory lock (one process per data directory);
//! - [`identity`]: the cluster and member a data directory belongs to;
//! - [`recover`]: forced recovery of a data member that lost its quorum;
//! - [`backup`]: `aoc-node backup` and `restore` (files, directories,
//!   messages around [`aoc_core::backup`]).
//!
//! A binary's start, in order:
//!
//! ```no_run
//! use std::path::Path;
//! use std::sync::Arc;
//! use aoc_node::{config, health, lock::DataDirLock, mgmt_ip::MgmtIp};
//!
//! # fn start(node: aoc_core::Node<aoc_core::state::MemKv>) -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = match config::load(Path::new("/etc/aoc/node.toml")) {
//!     Ok(cfg) => cfg,
//!     Err(e) => {
//!         eprintln!("aoc-node: {e}");
//!         std::process::exit(2);
//!     }
//! };
//! let _lock = DataDirLock::acquire(&cfg.data_dir)?;
//! // ... open the stores and start `node` with cfg.replica_config(),
//! //     cfg.voters() and cfg.tick() ...
//! let metrics = Arc::new(health::Metrics::new());
//! let status_node = node.clone();
//! let _health = health::serve(
//!     cfg.http_addr.as_str(),
//!     Arc::new(move || status_node.status()),
//!     metrics,
//! )?;
//! if let Some(m) = &cfg.management_ip {
//!     let ip = MgmtIp::new(m.clone());
//!     let _ = ip.demote(); // drop an address a crash may have left
//!     aoc_node::mgmt_ip::follow(node.events(), ip)?;
//! }
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod backup;
pub mod certs;
pub mod config;
pub mod disk;
pub mod guard;
pub mod health;
pub mod identity;
pub mod lock;
pub mod members;
pub mod mgmt_ip;
pub mod recover;
pub mod run;
pub mod watchdog;

pub use config::{load, Config, ConfigError};
