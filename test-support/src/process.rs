//! Processes of the tests: who runs them, whether a pid lives, ending one.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The effective user id.
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The pid in a pidfile.
pub fn read_pid(pidfile: &Path) -> Option<u32> {
    std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // the state follows the command name, which may itself hold ')'
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z")
}

/// Waits up to `grace` for `pid` to exit, then sends SIGTERM and waits `grace` again, then
/// SIGKILL and waits `grace` once more. Whether it is gone.
pub fn end(pid: u32, grace: Duration) -> bool {
    let target = Pid::from_raw(pid as i32);
    for signal in [None, Some(Signal::SIGTERM), Some(Signal::SIGKILL)] {
        if let Some(signal) = signal {
            let _ = kill(target, signal);
        }
        if super::wait_until(grace, || !alive(pid)) {
            return true;
        }
    }
    false
}
