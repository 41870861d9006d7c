//! A full disk, on small file systems (tmpfs, mounted as root; skipped
//! with a message where mounting is not allowed): a member whose store
//! fails exits with its documented status instead of lingering half
//! alive, the other data member takes over if its disk has room, and
//! after space is freed and the member restarted, nothing acknowledged is
//! lost.

use std::time::{Duration, Instant};

use aoc_core::client::{Client, ClientOptions};
use aoc_core::Mode;

mod common;

use common::procs::{Procs, SmallDisk};

/// `aoc_node::run::EXIT_NODE_FAILED`.
const EXIT_NODE_FAILED: i32 = 4;

fn value() -> Vec<u8> {
    vec![7u8; 64 * 1024]
}

#[test]
fn a_member_whose_disk_fills_exits_and_comes_back_with_everything() {
    let root = tempfile::tempdir().expect("temp dir");
    let (Some(small), Some(large)) = (
        SmallDisk::mount(root.path(), "small", 24),
        SmallDisk::mount(root.path(), "large", 160),
    ) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let witness_dir = root.path().join("witness");
    let mut c = Procs::new(
        [
            &small.path.join("data"),
            &large.path.join("data"),
            &witness_dir,
        ],
        |_| String::new(),
    );
    c.start_all();
    c.wait_active("member 1 active in sync mode", |id, m| {
        id == 1 && m == Mode::Sync
    });
    let mut client = Client::connect(c.endpoints(), ClientOptions::default()).expect("client");
    let mut acked = Vec::new();
    let mut full_at = None;
    let mut exit = None;
    let start = Instant::now();
    for i in 0.. {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "member 1 never failed"
        );
        let key = format!("k{i}");
        if client.put(key.clone(), value()).is_ok() {
            acked.push(key);
        }
        if full_at.is_none() && small.free_bytes() < 512 * 1024 {
            full_at = Some(Instant::now());
        }
        if let Some(status) = c.exited(1) {
            exit = Some((status, Instant::now()));
            break;
        }
    }
    let (status, exited_at) = exit.expect("member 1 exited");
    assert_eq!(
        status.code(),
        Some(EXIT_NODE_FAILED),
        "member 1's exit status: {}",
        c.log_of(1)
    );
    if let Some(full) = full_at {
        assert!(
            exited_at.saturating_duration_since(full) < Duration::from_secs(5),
            "member 1 exited {:?} after its disk filled",
            exited_at - full
        );
    }
    assert!(
        c.log_of(1).contains("No space left on device"),
        "the last line names the cause: {}",
        c.log_of(1)
    );
    // Member 2 has room: it takes over and writes go on.
    c.wait_active("member 2 active", |id, _| id == 2);
    for i in 0..20 {
        let key = format!("after{i}");
        client
            .put(key.clone(), b"v".to_vec())
            .expect("a write on member 2");
        acked.push(key);
    }
    // Space is freed: member 1 restarts and catches up; nothing
    // acknowledged is lost.
    small.resize(200);
    c.start(1);
    c.wait_active("sync mode with member 1 back", |_, m| m == Mode::Sync);
    for key in &acked {
        assert!(
            client.get(key.clone()).expect("a read").is_some(),
            "acknowledged {key} lost"
        );
    }
    eprintln!("{} acknowledged writes, all read back", acked.len());
}
