//! Helpers shared by the tests that run the real binaries.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The `aoc-node` binary cargo built for these tests.
pub fn node_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_aoc-node"))
}

/// The witness binary lives in its own package: built (or brought up to
/// date) once per test process, next to aoc-node, since cargo builds only
/// this package's binaries for its tests.
pub fn witness_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "aoc-witness"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building aoc-witness");
    });
    node_bin().with_file_name("aoc-witness")
}

// Ports for the members' configuration files: each is given once per test
// process, and the kernel hands none of them to outgoing connections, so it
// is still free when a member starts seconds later.
#[path = "../../../aoc-core/tests/common/ports.rs"]
mod ports;
#[allow(unused_imports)]
pub use ports::free_port;

/// Waits (30 s at most; a start takes well under a second) until the member
/// `child` answers on `http`, its health port and the last listener it
/// opens, so its member and client ports are bound too. Returns the exit
/// status instead when the member exits first (a port taken, a bad
/// configuration): the caller prints the member's log and fails.
pub fn wait_listening(
    child: &mut std::process::Child,
    http: std::net::SocketAddr,
) -> Result<(), String> {
    let start = std::time::Instant::now();
    loop {
        if std::net::TcpStream::connect_timeout(&http, std::time::Duration::from_millis(200))
            .is_ok()
        {
            return Ok(());
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || start.elapsed() > std::time::Duration::from_secs(30) {
            return Err(format!(
                "the member is not listening on {http}: exit status {exited:?}"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub mod netns;
pub mod procs;
