//! The guard on three real processes: its configuration checks, and the
//! kernel watchdog against a stand-in device (a FIFO the test reads): armed
//! when the member becomes the active, fed while its lease holds, never
//! fed once the reset would fall after the lease, disarmed (the magic `V`)
//! when the host lets go of the role.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::node_bin;
use common::procs::{Procs, SmallDisk};

/// `aoc-node run` with a configuration whose guard or watchdog is wrong:
/// (exit code, stderr).
fn refused(extra: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let c = Procs::new(
        [
            &dir.path().join("d1"),
            &dir.path().join("d2"),
            &dir.path().join("d3"),
        ],
        |id| {
            if id == 1 {
                extra.to_string()
            } else {
                String::new()
            }
        },
    );
    let out = Command::new(node_bin())
        .args(["run", "--config"])
        .arg(&c.members[0].config)
        .output()
        .expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn assert_refused(extra: &str, field: &str) {
    let (code, err) = refused(extra);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&format!(": {field}: ")),
        "names {field}: {err}"
    );
}

#[test]
fn a_guard_that_cannot_fence_in_time_or_a_bad_watchdog_is_refused() {
    // The lease ends 100 ms (2 ticks of 50 ms) before another member can
    // be active: a reaction of 80 ms does not fit in half of it.
    assert_refused("[guard]\nreaction_ms = 80\n", "guard.reaction_ms");
    assert_refused(
        "[guard]\nwatchdog = \"required\"\nwatchdog_device = \"/nonexistent/watchdog\"\n",
        "guard.watchdog_device",
    );
    assert_refused(
        "[guard]\nwatchdog = \"required\"\nwatchdog_device = \"/tmp\"\n",
        "guard.watchdog_device",
    );
    let root = tempfile::tempdir().expect("temp dir");
    if let Some(ro) = SmallDisk::mount(root.path(), "ro", 1) {
        let dev = ro.path.join("watchdog");
        std::fs::write(&dev, b"").expect("a stand-in device");
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&ro.path)
            .status()
            .expect("mount runs");
        assert!(status.success());
        assert_refused(
            &format!(
                "[guard]\nwatchdog = \"required\"\nwatchdog_device = \"{}\"\n",
                dev.display()
            ),
            "guard.watchdog_device",
        );
    } else {
        eprintln!("skipped the read-only device: cannot mount a tmpfs here (needs root)");
    }
    // 50 ms ticks give a lease under a second: no real device fits.
    assert_refused(
        "[guard]\nwatchdog = \"required\"\nwatchdog_device = \"/dev/null\"\n",
        "guard.watchdog",
    );
}

/// Every byte written to the FIFO at `path`, with when it was read; the
/// FIFO is opened again after each close (each arming opens it).
fn record(path: PathBuf) -> Arc<Mutex<Vec<(u8, Instant)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    std::thread::spawn(move || loop {
        let Ok(mut f) = std::fs::File::open(&path) else {
            return;
        };
        let mut b = [0u8; 1];
        while let Ok(1) = f.read(&mut b) {
            if let Ok(mut s) = out.lock() {
                s.push((b[0], Instant::now()));
            }
        }
    });
    seen
}

fn fifo(path: &Path) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn the_watchdog_is_fed_only_inside_the_lease_and_disarmed_on_demote() {
    let root = tempfile::tempdir().expect("temp dir");
    let devs: Vec<PathBuf> = (1..=2)
        .map(|i| root.path().join(format!("wd{i}")))
        .collect();
    for d in &devs {
        fifo(d);
    }
    let seen: Vec<_> = devs.iter().map(|d| record(d.clone())).collect();
    let mut c = Procs::new(
        [
            &root.path().join("d1"),
            &root.path().join("d2"),
            &root.path().join("d3"),
        ],
        |id| {
            if id == 3 {
                return String::new();
            }
            format!(
                "[guard]\nwatchdog = \"required\"\nwatchdog_device = \"{}\"\n",
                devs[id as usize - 1].display()
            )
        },
    );
    c.start_all();
    let active = c.wait_active("an active", |_, _| true);
    let passive = if active == 1 { 2 } else { 1 };
    std::thread::sleep(Duration::from_secs(1));
    let fed = |id: u64| {
        seen[id as usize - 1]
            .lock()
            .map(|s| s.iter().filter(|(b, _)| *b == b'f').count())
            .unwrap_or(0)
    };
    assert!(
        fed(active) > 20,
        "the active's watchdog is fed: {}",
        fed(active)
    );
    assert_eq!(fed(passive), 0, "the passive's is not armed");

    // A switchover: the old active's guard disarms (the magic V) and feeds
    // no more; the new active's is armed and fed.
    c.wait_active("sync mode", |_, m| m == aoc_core::Mode::Sync);
    let mut client =
        aoc_core::client::Client::connect(c.endpoints(), Default::default()).expect("a client");
    client.switchover().expect("a switchover");
    c.wait_active("the switchover", |id, _| id == passive);
    std::thread::sleep(Duration::from_millis(500));
    let s = seen[active as usize - 1].lock().expect("seen").clone();
    let v = s
        .iter()
        .position(|(b, _)| *b == b'V')
        .expect("disarmed on demote");
    assert!(
        !s[v + 1..].iter().any(|(b, _)| *b == b'f'),
        "not fed after it"
    );
    assert!(fed(passive) > 5, "the new active's is fed");
    let (active, passive) = (passive, active);

    // The active hangs: its guard stops feeding before the reset would
    // fall after the lease, kills it at the lease's end and disarms.
    let member = member_of(&c, active).expect("the guard's member process");
    let hung = Instant::now();
    let _ = Command::new("kill")
        .args(["-STOP", &member.to_string()])
        .status();
    c.wait_active("the passive takes over", |id, _| id == passive);
    std::thread::sleep(Duration::from_millis(500));
    let s = seen[active as usize - 1].lock().expect("seen").clone();
    let disarm = s
        .iter()
        .position(|(b, t)| *b == b'V' && *t >= hung)
        .expect("disarmed after the member hung");
    let last_feed = s[..disarm]
        .iter()
        .rev()
        .find(|(b, _)| *b == b'f')
        .map(|(_, t)| *t)
        .expect("fed before");
    let quiet = s[disarm].1.duration_since(last_feed);
    eprintln!("last feed {quiet:?} before the disarm that followed the hang");
    // With 50 ms ticks the lease lasts 400 ms and ends 100 ms before
    // another member can be active; the timeout is 350 ms (the lease less
    // the guard's 50 ms reaction). A reset 350 ms after the last feed must
    // come within the lease plus 100 ms, so feeding stops 250 ms before the
    // lease's end, and the fence comes 50 ms before it: 200 ms with no
    // feed (150 ms allowed for when the reader saw the bytes). Feeding up
    // to the fence would leave 50 ms or less.
    assert!(
        quiet >= Duration::from_millis(150),
        "fed too close to the lease's end: {quiet:?}"
    );
    assert!(
        !s[disarm + 1..].iter().any(|(b, _)| *b == b'f'),
        "never fed after the disarm"
    );
}

/// The member process the guard of member `id` runs.
fn member_of(c: &Procs, id: u64) -> Option<u32> {
    let guard = c.members[id as usize - 1].child.as_ref()?.id();
    let children = std::fs::read_to_string(format!("/proc/{guard}/task/{guard}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}
