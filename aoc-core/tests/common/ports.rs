#![allow(dead_code)]
//! Ports for servers whose addresses a test writes down before it starts
//! them (configuration files naming every member, say).
//!
//! A port found by binding port 0 and closing comes from the kernel's
//! ephemeral range. Until the server binds it again, anything may take it:
//! the source port of an outgoing connection, or another test of the same
//! process asking for a free port (the kernel can hand the same one out
//! twice), and a server that cannot listen fails the test. These ports are
//! taken below that range, where the kernel assigns none, and each is
//! handed out once per test process.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out.
const LOWEST_PORT: u32 = 10_000;

/// The first port of the kernel's ephemeral range (32768 when it cannot be
/// read).
fn ephemeral_low_port() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A port on 127.0.0.1 that is free now, that no other call in this
/// process returns, and that the kernel does not pick for others.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // With an ephemeral range starting unusually low, fall back to a fixed
    // span: the bind check below still skips ports in use.
    let end = ephemeral_low_port().clamp(LOWEST_PORT + 2_000, 65_536);
    let span = end - LOWEST_PORT;
    // Processes run one after another start at different places, so that a
    // port the previous one left in use is not the first one tried.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOWEST_PORT + (start + n) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port on 127.0.0.1 between {LOWEST_PORT} and {end}");
}

/// [`free_port`] as an address on 127.0.0.1.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}
