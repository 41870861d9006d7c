//! The kernel watchdog, driven by the guard (`[guard] watchdog`): if the
//! guard itself hangs, the host resets before another member can be the
//! active, as Patroni's watchdog does.
//!
//! The device is opened (which arms it) when this member becomes the
//! active, and fed only while feeding keeps the reset inside the lease:
//! a feed at `now` lets the host run until `now + timeout`, so the guard
//! feeds only while `now + timeout <= lease end + margin`, the margin
//! being the `heartbeat_tick` ticks between the lease's end and the
//! earliest another member can be elected. On a clean demotion it is
//! closed with the magic `V`, which disarms it.
//!
//! The timeout is derived from the lease: the lease's length plus the
//! margin, minus a heartbeat interval (the lease is renewed once per
//! heartbeat) and the guard's reaction time. A real device counts whole
//! seconds, so with short ticks there may be none that fits:
//! `required` then refuses to start, `automatic` warns and runs without.
//! A path that is not a character device (a test's file or FIFO) takes
//! the timeout as it is, and receives the same feeds.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::config::{Config, WatchdogMode};

/// `WDIOC_SETTIMEOUT`: `_IOWR('W', 6, int)` (linux/watchdog.h).
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;

/// The watchdog's timing, derived from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The timeout set on the device (whole seconds on a real one).
    pub timeout_ms: u64,
    /// The margin after the lease's end within which the host must reset.
    pub margin_ms: u64,
}

/// The timing for `cfg` and a device that is (`device`) or is not a
/// character device; the error says why none fits.
pub fn timing(cfg: &Config, device: bool) -> Result<Timing, String> {
    let t = &cfg.timeouts;
    let margin_ms = t.heartbeat_tick * t.tick_ms;
    let lease_ms = t.election_tick.saturating_sub(t.heartbeat_tick) * t.tick_ms;
    // The lease plus the margin, less a heartbeat interval (the margin's
    // length: the lease is renewed once per heartbeat) and the reaction.
    let fits_ms = lease_ms.saturating_sub(cfg.guard.reaction_ms);
    let timeout_ms = if device {
        fits_ms / 1000 * 1000
    } else {
        fits_ms
    };
    if timeout_ms == 0 {
        return Err(format!(
            "the lease allows a watchdog timeout of {fits_ms} ms, and a watchdog device counts \
             whole seconds: raise tick_ms (or election_tick) so that the lease lasts over a \
             second"
        ));
    }
    Ok(Timing {
        timeout_ms,
        margin_ms,
    })
}

/// Checks the watchdog of `cfg` at start: a mode other than `off` needs a
/// writable device and a timeout that fits. `Ok(None)`: no watchdog (off,
/// or `automatic` without one, said in the log); `Err((field, problem))`
/// for `required`.
pub fn check(cfg: &Config) -> Result<Option<Watchdog>, (String, String)> {
    let g = &cfg.guard;
    if g.watchdog == WatchdogMode::Off {
        return Ok(None);
    }
    let problem = |field: &str, p: String| (format!("guard.{field}"), p);
    let found = match std::fs::metadata(&g.watchdog_device) {
        Ok(m) if m.file_type().is_char_device() => Ok(true),
        // A test's stand-in.
        Ok(m) if m.file_type().is_fifo() || m.is_file() => Ok(false),
        Ok(_) => Err(problem(
            "watchdog_device",
            format!("{}: not a watchdog device", g.watchdog_device.display()),
        )),
        Err(e) => Err(problem(
            "watchdog_device",
            format!("{}: {e}", g.watchdog_device.display()),
        )),
    };
    let checked = found.and_then(|device| {
        rustix::fs::access(&g.watchdog_device, rustix::fs::Access::WRITE_OK).map_err(|e| {
            problem(
                "watchdog_device",
                format!("{}: not writable: {e}", g.watchdog_device.display()),
            )
        })?;
        let timing = timing(cfg, device).map_err(|p| problem("watchdog", p))?;
        Ok(Watchdog::new(g.watchdog_device.clone(), device, timing))
    });
    match (checked, g.watchdog) {
        (Ok(w), _) => Ok(Some(w)),
        (Err(e), WatchdogMode::Required) => Err(e),
        (Err((field, p)), _) => {
            warn!(field, problem = %p, "watchdog = automatic: running without the watchdog");
            Ok(None)
        }
    }
}

/// The device, armed while this member is the active.
#[derive(Debug)]
pub struct Watchdog {
    path: PathBuf,
    device: bool,
    timing: Timing,
    open: Option<File>,
}

impl Watchdog {
    fn new(path: PathBuf, device: bool, timing: Timing) -> Self {
        Watchdog {
            path,
            device,
            timing,
            open: None,
        }
    }

    /// The timing in use.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Arms the watchdog (opens the device and sets its timeout).
    pub fn arm(&mut self) -> Result<(), String> {
        if self.open.is_some() {
            return Ok(());
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| format!("{}: cannot open: {e}", self.path.display()))?;
        if self.device {
            set_timeout(&file, self.timing.timeout_ms / 1000).map_err(|e| {
                format!(
                    "{}: the device refuses a timeout of {} s: {e}",
                    self.path.display(),
                    self.timing.timeout_ms / 1000
                )
            })?;
        }
        info!(device = %self.path.display(), timeout_ms = self.timing.timeout_ms, "watchdog armed");
        self.open = Some(file);
        Ok(())
    }

    /// Feeds it if a reset `timeout` from now still falls inside the lease
    /// (which ends at `lease_end_ns`) plus the margin; returns whether it
    /// fed.
    pub fn feed(&mut self, now_ns: u64, lease_end_ns: u64) -> bool {
        let Some(file) = self.open.as_mut() else {
            return false;
        };
        if !may_feed(self.timing, now_ns, lease_end_ns) {
            return false;
        }
        match file.write_all(b"f").and_then(|()| file.flush()) {
            Ok(()) => true,
            Err(e) => {
                warn!(device = %self.path.display(), error = %e, "watchdog: a feed failed");
                false
            }
        }
    }

    /// Disarms it (the magic `V`, then close): only once the host let go of
    /// the active role.
    pub fn disarm(&mut self) {
        if let Some(mut file) = self.open.take() {
            if let Err(e) = file.write_all(b"V").and_then(|()| file.flush()) {
                warn!(device = %self.path.display(), error = %e, "watchdog: cannot disarm");
            } else {
                info!(device = %self.path.display(), "watchdog disarmed");
            }
        }
    }

    /// The device's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The feeding rule (see the module docs).
pub fn may_feed(timing: Timing, now_ns: u64, lease_end_ns: u64) -> bool {
    let reset_ns = now_ns.saturating_add(timing.timeout_ms.saturating_mul(1_000_000));
    reset_ns <= lease_end_ns.saturating_add(timing.margin_ms.saturating_mul(1_000_000))
}

/// `ioctl(WDIOC_SETTIMEOUT)`.
fn set_timeout(file: &File, secs: u64) -> std::io::Result<()> {
    let mut t: libc::c_int = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    // SAFETY: `file` is an open descriptor for the call's duration, and
    // WDIOC_SETTIMEOUT reads and writes one `int` at the pointer given,
    // which points at `t`, alive for the call.
    let r = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            WDIOC_SETTIMEOUT,
            &mut t as *mut libc::c_int,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_fed_only_while_a_reset_would_fall_inside_the_lease() {
        let t = Timing {
            timeout_ms: 750,
            margin_ms: 200,
        };
        let ms = 1_000_000u64;
        let end = 10_000 * ms;
        assert!(may_feed(t, end - 800 * ms, end), "just renewed");
        assert!(may_feed(t, end - 550 * ms, end), "the last moment");
        assert!(
            !may_feed(t, end - 549 * ms, end),
            "too late: the reset would come after"
        );
        assert!(!may_feed(t, end + ms, end), "never after the lease");
    }
}
