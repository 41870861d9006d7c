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
        // The guard would restart the member (status 4); here its exit is
        // the thing to see.
        |_| "[storage]\nnospace_alarm = false\n[guard]\nrestart = false\n".into(),
    );
    c.start_all();
    let first = c.wait_active("an active in sync mode", |_, m| m == Mode::Sync);
    let mut client = Client::connect(c.endpoints(), ClientOptions::default()).expect("client");
    if first != 1 {
        // The member on the small disk is to be the active.
        client.switchover().expect("a switchover to member 1");
        c.wait_active("member 1 active", |id, _| id == 1);
    }
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

/// The NOSPACE alarm: both data members on 48 MiB file systems with a
/// 16 MiB reserve. Writes of 64 KiB values go on until they are refused
/// with the documented error, which names the member and its free space;
/// neither disk is ever full and neither member exits; reads and deletes
/// are served meanwhile; once the file systems grow, writes resume without
/// any restart, and nothing acknowledged is lost.
#[test]
fn the_alarm_refuses_writes_before_the_disk_fills_and_clears_with_space() {
    let root = tempfile::tempdir().expect("temp dir");
    let (Some(d1), Some(d2)) = (
        SmallDisk::mount(root.path(), "d1", 48),
        SmallDisk::mount(root.path(), "d2", 48),
    ) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let witness_dir = root.path().join("witness");
    let mut c = Procs::new(
        [&d1.path.join("data"), &d2.path.join("data"), &witness_dir],
        |_| "[storage]\nreserve_mb = 16\n".into(),
    );
    c.start_all();
    c.wait_active("an active in sync mode", |_, m| m == Mode::Sync);
    let mut client = Client::connect(c.endpoints(), ClientOptions::default()).expect("client");
    let mut acked = Vec::new();
    let refusal = loop {
        let key = format!("k{}", acked.len());
        match client.put(key.clone(), value()) {
            Ok(_) => acked.push(key),
            Err(e @ aoc_core::Error::NoSpace { .. }) => break e,
            Err(e) => panic!("write {key}: {e} ({} acknowledged)", acked.len()),
        }
        assert!(acked.len() < 2000, "no alarm after {} writes", acked.len());
    };
    let text = refusal.to_string();
    assert!(
        text.contains("database space exceeded: member") && text.contains("bytes free"),
        "{text}"
    );
    for (id, disk) in [(1, &d1), (2, &d2)] {
        assert!(
            c.exited(id).is_none(),
            "member {id} exited: {}",
            c.log_of(id)
        );
        assert!(disk.free_bytes() > 1 << 20, "member {id}'s disk kept room");
        assert!(
            !c.log_of(id).contains("No space left on device"),
            "member {id} met ENOSPC: {}",
            c.log_of(id)
        );
    }
    // Reads and deletes go on.
    assert!(client.get(acked[0].clone()).expect("a read").is_some());
    client
        .delete(acked[0].clone())
        .expect("a delete under the alarm");
    acked.remove(0);
    // Space comes back: the alarm clears and writes resume, no restart.
    d1.resize(160);
    d2.resize(160);
    let start = Instant::now();
    loop {
        match client.put("after", b"v".to_vec()) {
            Ok(_) => break,
            Err(aoc_core::Error::NoSpace { .. }) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("writes did not resume: {e}"),
        }
    }
    eprintln!(
        "writes resumed {:?} after the disks grew; {} writes acknowledged before the alarm",
        start.elapsed(),
        acked.len()
    );
    for key in &acked {
        assert!(
            client.get(key.clone()).expect("a read").is_some(),
            "acknowledged {key} lost"
        );
    }
}
