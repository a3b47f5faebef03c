//! Processes of this host: who we are, whether a pid lives, and ending one.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The effective user id.
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

#[cfg(feature = "mount")] // the mount's alone
/// The effective group id.
pub fn effective_gid() -> u32 {
    nix::unistd::getegid().as_raw()
}

#[cfg(feature = "mount")] // the mount's alone
/// Whether this process has `CAP_SYS_ADMIN` in its effective set (root, usually).
pub fn has_cap_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// The pid in a pidfile.
pub fn read_pid(pidfile: &Path) -> Option<u32> {
    std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

/// The fields of `/proc/PID/stat` after the parenthesised command name (which may itself hold
/// ')'): the state first, then ppid, ... (field 3 of proc(5) is index 0 here).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields.first().is_some_and(|state| state != "Z"))
}

/// When process `pid` started, in clock ticks since boot (`/proc/PID/stat` field 22): with the
/// pid, it names one process, as a pid alone does not once pids are reused.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Waits up to `timeout` for `pid` to exit (without signalling it); whether it did.
pub fn wait_for_exit(pid: u32, timeout: Duration) -> bool {
    crate::poll::wait_for(timeout, || !alive(pid))
}

/// Waits up to `grace` for `pid` to exit, then sends SIGTERM and waits `grace` again, then
/// SIGKILL and waits `grace` once more. Whether it is gone.
pub fn end(pid: u32, grace: Duration) -> bool {
    let target = Pid::from_raw(pid as i32);
    for signal in [None, Some(Signal::SIGTERM), Some(Signal::SIGKILL)] {
        if let Some(signal) = signal {
            let _ = kill(target, signal);
        }
        if wait_for_exit(pid, grace) {
            return true;
        }
    }
    false
}

#[cfg(feature = "mount")] // the mount's alone
/// FUSE and `SO_PEERCRED` report a thread; this is its process (thread group).
pub fn thread_group(tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| line.strip_prefix("Tgid:").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(tid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_lives_and_a_reaped_child_does_not() {
        assert!(alive(std::process::id()));
        assert_eq!(thread_group(std::process::id()), std::process::id());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!alive(pid));
        assert_eq!(start_time(pid), None, "a reaped child has no start time");
    }

    #[test]
    fn start_times_are_stable_and_order_processes() {
        let ours = start_time(std::process::id()).unwrap();
        assert_eq!(start_time(std::process::id()), Some(ours));
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let theirs = start_time(child.id()).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(theirs >= ours, "a child started after us: {theirs} < {ours}");
    }

    #[test]
    fn end_stops_a_process_that_ignores_nothing() {
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id();
        // reap it in the background so that it does not linger as a zombie (which counts as gone)
        let waiter = std::thread::spawn(move || child.wait());
        assert!(end(pid, Duration::from_millis(200)));
        waiter.join().unwrap().unwrap();
    }
}
