//! The systemd units in packaging/systemd pass `systemd-analyze verify`
//! (skipped, saying so, where the tool is missing), with their commands
//! pointing at the binaries built for the tests; and a unit with a mistake
//! does not, so the check can fail.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{node_bin, witness_bin};

const UNITS: [&str; 3] = [
    "aoc-node.service",
    "aoc-witness.service",
    "aoc-platform.service",
];

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd")
}

/// `systemd-analyze verify` on the units in `dir`: (success, output).
fn verify(dir: &Path) -> Option<(bool, String)> {
    let files: Vec<PathBuf> = UNITS.iter().map(|u| dir.join(u)).collect();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&files)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success() && text.trim().is_empty(), text))
}

/// The units, copied to `dir` with the built binaries' paths, and `edit`
/// applied to each text.
fn copy_units(dir: &Path, edit: impl Fn(&str, String) -> String) {
    let node = node_bin();
    let witness = witness_bin();
    for u in UNITS {
        let text = std::fs::read_to_string(units_dir().join(u)).expect("a unit file");
        let text = text
            .replace("/usr/bin/aoc-node", &node.display().to_string())
            .replace("/usr/bin/aoc-witness", &witness.display().to_string());
        std::fs::write(dir.join(u), edit(u, text)).expect("unit written");
    }
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    let good = tempfile::tempdir().expect("temp dir");
    copy_units(good.path(), |_, t| t);
    let (ok, text) = verify(good.path()).expect("systemd-analyze runs");
    assert!(ok, "{text}");

    let bad = tempfile::tempdir().expect("temp dir");
    copy_units(bad.path(), |u, t| {
        if u == "aoc-node.service" {
            t.replace("Restart=on-failure", "Restart=on-falure")
        } else {
            t
        }
    });
    let (ok, text) = verify(bad.path()).expect("systemd-analyze runs");
    assert!(!ok, "a misspelt setting went unnoticed");
    eprintln!("a misspelt setting: {}", text.trim());
}

#[test]
fn the_node_unit_hands_over_and_releases_the_address() {
    let text = std::fs::read_to_string(units_dir().join("aoc-node.service")).expect("unit");
    for needed in [
        "Type=notify",
        "NotifyAccess=all",
        "WatchdogSec=",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "ExecStopPost=/usr/bin/aoc-node release-ip",
    ] {
        assert!(text.contains(needed), "aoc-node.service lacks {needed}");
    }
}
