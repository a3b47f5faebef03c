//! The FUSE mount: `qemu-bridge mount MOUNTPOINT` serves one directory per running VM.
//!
//! Shutdown works around fuser 0.18, whose own unmount fails on a busy mount: on SIGINT, SIGTERM or
//! SIGHUP the daemon detaches the mount (`umount2(MNT_DETACH)`, or `fusermount3 -u -z` when not
//! root) and waits briefly for the session thread; an unmount from outside (`umount`,
//! `fusermount3 -u`, `qemu-bridge umount`) ends the session thread, and the daemon exits.

mod audit;
mod inode;
mod per_vm;
mod table;
mod tree;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};
use nix::sys::signal::{SigSet, Signal};

use crate::poll;
use crate::run_dir::{default_run_dir, RunDir, RunDirError};
use audit::AuditLog;
use per_vm::{mount_parts, Registry};
use tree::{Tree, TreeOptions};

/// Source name of the mount (`/proc/mounts` shows `qemu-bridge ... fuse` or `fuse.qemu-bridge`).
pub const FS_NAME: &str = "qemu-bridge";

/// How long `spawn_daemon` waits for the mount to appear.
const DAEMON_START: Duration = Duration::from_secs(20);

/// Errors of mounting and unmounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount point cannot be used.
    #[error("mount point {path}: {reason}")]
    BadMountPoint {
        /// The mount point.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The path is not a qemu-bridge mount.
    #[error("{0} is not a qemu-bridge mount")]
    NotMounted(PathBuf),
    /// The run directory cannot be made (for the daemon's log).
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// A file could not be opened.
    #[error("cannot open {what} {path}")]
    Open {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused the mount.
    #[error("cannot mount {path}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The background daemon exited before mounting.
    #[error("mount daemon exited ({status}): {last_line}")]
    DaemonExited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The last line it logged.
        last_line: String,
    },
    /// `--passthrough=always` where it cannot be had.
    #[error("--passthrough=always: {0}")]
    Passthrough(String),
    /// The background daemon did not mount in time.
    #[error("mount daemon did not mount {0} within 20 s")]
    DaemonTimeout(PathBuf),
    /// Unmounting failed.
    #[error("cannot unmount {path}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Other I/O (signals, threads, the daemon's process).
    #[error("{what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io_error(what: &'static str) -> impl FnOnce(std::io::Error) -> MountError {
    move |source| MountError::Io { what, source }
}

/// How to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Where to mount (an existing directory).
    pub mountpoint: PathBuf,
    /// Directory of the VMs' QMP sockets (`None`: [`default_run_dir`]).
    pub run_dir: Option<PathBuf>,
    /// Let other users enter the mount.
    pub allow_other: bool,
    /// Append one line per operation on guest RAM to this file.
    pub audit_log: Option<PathBuf>,
    /// When the kernel serves `ram` straight from the RAM file (see [`Passthrough`]).
    pub passthrough: Passthrough,
    /// Threads serving requests (`None`: the number of cores, 2 to 8).
    pub threads: Option<u16>,
    /// Where the background daemon logs (`None`: `<run-dir>/mount.log`).
    pub log_file: Option<PathBuf>,
}

impl MountOptions {
    /// Defaults for `mountpoint`.
    pub fn new(mountpoint: impl Into<PathBuf>) -> Self {
        Self {
            mountpoint: mountpoint.into(),
            run_dir: None,
            allow_other: false,
            audit_log: None,
            passthrough: Passthrough::Auto,
            threads: None,
            log_file: None,
        }
    }

    /// The run directory to serve.
    pub fn run_dir(&self) -> RunDir {
        RunDir::new(self.run_dir.clone().unwrap_or_else(default_run_dir))
    }

    /// The arguments of `qemu-bridge mount --foreground` that reproduce these options: how the
    /// background daemon is told what to serve. Every field is destructured, so a new option
    /// does not compile until it is passed on here too (and the CLI's round-trip test checks
    /// that it parses back equal).
    pub fn to_args(&self) -> Vec<OsString> {
        let MountOptions { mountpoint, run_dir, allow_other, audit_log, passthrough, threads, log_file } =
            self;
        let mut args: Vec<OsString> = vec![mountpoint.into()];
        let mut path_flag = |flag: &str, value: &Option<PathBuf>| {
            if let Some(value) = value {
                args.push(flag.into());
                args.push(value.into());
            }
        };
        path_flag("--run-dir", run_dir);
        path_flag("--audit-log", audit_log);
        path_flag("--log-file", log_file);
        if *allow_other {
            args.push("--allow-other".into());
        }
        if *passthrough != Passthrough::default() {
            args.push(format!("--passthrough={passthrough}").into());
        }
        if let Some(threads) = threads {
            args.push("--threads".into());
            args.push(threads.to_string().into());
        }
        args
    }
}

/// When `ram` is served by FUSE passthrough: the kernel reads the RAM file itself (as fast as
/// reading it directly, and `mmap` works and stays live) instead of asking the daemon.
/// Passthrough needs kernel >= 6.9 and `CAP_SYS_ADMIN`, and RAM in one file (not private RAM,
/// not RAM over several backends).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Passthrough {
    /// Wherever the kernel and the privileges allow it; elsewhere the daemon serves, with one
    /// log line per file. An audited mount (`audit_log`) is served by the daemon, so that every
    /// read is recorded.
    #[default]
    Auto,
    /// Everywhere, or not at all: the mount fails where the kernel or the privileges refuse it,
    /// and a `ram` that cannot be passed through fails to open. Under an audit log, reads are
    /// then not recorded (opens are).
    Always,
    /// Never: every read goes through the daemon (`mmap` of `ram` fails with ENODEV).
    Never,
}

impl std::fmt::Display for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Passthrough::Auto => "auto",
            Passthrough::Always => "always",
            Passthrough::Never => "never",
        })
    }
}

impl std::str::FromStr for Passthrough {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Passthrough::Auto),
            "always" => Ok(Passthrough::Always),
            "never" => Ok(Passthrough::Never),
            other => Err(format!("unknown passthrough mode {other:?} (auto, always or never)")),
        }
    }
}

/// Whether this process may use FUSE passthrough, and why not: it needs `CAP_SYS_ADMIN` and a
/// kernel >= 6.9.
pub fn passthrough_refusal() -> Option<String> {
    if !crate::process::has_cap_sys_admin() {
        return Some("FUSE passthrough needs CAP_SYS_ADMIN (mount as root)".into());
    }
    let release = nix::sys::utsname::uname().ok()?.release().to_string_lossy().into_owned();
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next()?, numbers.next()?);
    if version < (6, 9) {
        return Some(format!("FUSE passthrough needs Linux >= 6.9 (this is {release})"));
    }
    None
}

/// A mount daemon that came up.
#[derive(Debug, Clone)]
pub struct Daemon {
    /// Its pid.
    pub pid: u32,
    /// Its log file.
    pub log: PathBuf,
}

/// Checks that `mountpoint` is a directory that is not a qemu-bridge mount already.
///
/// # Errors
///
/// [`MountError::BadMountPoint`].
pub fn check_mountpoint(mountpoint: &Path) -> Result<(), MountError> {
    let bad = |reason: String| MountError::BadMountPoint { path: mountpoint.to_path_buf(), reason };
    let metadata = std::fs::metadata(mountpoint).map_err(|err| bad(err.to_string()))?;
    if !metadata.is_dir() {
        return Err(bad("not a directory".into()));
    }
    if is_mounted(mountpoint) {
        return Err(bad("already a qemu-bridge mount".into()));
    }
    Ok(())
}

/// Starts `program mount --foreground OPTIONS` (this tool's binary) detached, in a process
/// group of its own, logging to the log file, and returns once the mount is live.
///
/// # Errors
///
/// A bad mount point, a log file that cannot be opened, a daemon that exits or does not mount
/// within 20 s (it is then killed and the mount point detached).
pub fn spawn_daemon(options: &MountOptions, program: &Path) -> Result<Daemon, MountError> {
    check_mountpoint(&options.mountpoint)?;
    check_passthrough(options)?;
    let log_path = match &options.log_file {
        Some(path) => path.clone(),
        None => {
            let run_dir = options.run_dir();
            run_dir.create()?;
            run_dir.path().join("mount.log")
        }
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| MountError::Open { what: "log file", path: log_path.clone(), source })?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut command = Command::new(program);
    command.arg("mount").arg("--foreground").args(options.to_args());
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info,fuser=warn,fuser::mnt=error");
    }
    use std::os::unix::process::CommandExt;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // its own process group: a Ctrl-C meant for the shell does not reach the daemon
        .process_group(0)
        .spawn()
        .map_err(io_error("cannot start the mount daemon"))?;
    // Some(true): mounted; Some(false): the daemon exited first.
    let outcome = poll::until(DAEMON_START, poll::INTERVAL, || {
        if is_mounted(&options.mountpoint) {
            return Some(Ok(true));
        }
        match child.try_wait() {
            Ok(None) => None,
            Ok(Some(_)) => Some(Ok(false)),
            Err(err) => Some(Err(err)),
        }
    });
    match outcome {
        Some(Ok(true)) => Ok(Daemon { pid: child.id(), log: log_path }),
        Some(Ok(false)) => {
            let status = child.wait().map_err(io_error("cannot wait for the mount daemon"))?;
            let log = std::fs::read(&log_path).unwrap_or_default();
            let tail = String::from_utf8_lossy(&log[(log_start as usize).min(log.len())..]).into_owned();
            let last_line =
                tail.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("no output").to_string();
            Err(MountError::DaemonExited { status, last_line })
        }
        Some(Err(source)) => Err(MountError::Io { what: "cannot wait for the mount daemon", source }),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = detach(&options.mountpoint);
            Err(MountError::DaemonTimeout(options.mountpoint.clone()))
        }
    }
}

/// Mounts and serves until a signal (SIGINT, SIGTERM, SIGHUP) or an unmount from outside.
///
/// # Errors
///
/// A bad mount point, an audit log that cannot be opened, a mount the kernel refuses.
pub fn serve(options: &MountOptions) -> Result<(), MountError> {
    check_mountpoint(&options.mountpoint)?;
    let passthrough = effective_passthrough(options)?;
    // Block the signals in this thread before any other starts, so that every thread inherits
    // the mask and only the waiter below receives them.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    signals
        .thread_block()
        .map_err(|errno| MountError::Io { what: "cannot block signals", source: errno.into() })?;

    let run_dir = options.run_dir();
    if let Err(err) = run_dir.check() {
        log::warn!("{err}: no VMs until it appears");
    }
    if let Some(warning) = run_dir.sharing_warning() {
        log::warn!("{warning}");
    }
    let audit = match &options.audit_log {
        Some(path) => Some(AuditLog::open(path).map_err(|source| MountError::Open {
            what: "audit log",
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let registry = Arc::new(Registry::new(run_dir.clone(), mount_parts));
    registry.spawn_janitor();
    // what is there before the first `ls` (each socket answers or fails within the probe timeout)
    registry.probe_all();
    let tree = Tree::new(registry, audit, &TreeOptions { passthrough });
    let config = fuse_config(options);
    let mountpoint = std::fs::canonicalize(&options.mountpoint)
        .map_err(|source| MountError::Mount { path: options.mountpoint.clone(), source })?;
    let session = fuser::Session::new(tree, &mountpoint, &config)
        .and_then(|session| session.spawn())
        .map_err(|source| MountError::Mount { path: mountpoint.clone(), source })?;
    log::info!(
        "serving {} on {} ({} threads)",
        run_dir.path().display(),
        mountpoint.display(),
        config.n_threads.unwrap_or(1)
    );
    wait_for_end(&session, signals, &mountpoint)?;
    if session.guard.is_finished() {
        if let Err(err) = session.join() {
            log::warn!("session ended with: {err}");
        }
    }
    Ok(())
}

/// `--passthrough=always` fails before mounting where it cannot be had.
fn check_passthrough(options: &MountOptions) -> Result<(), MountError> {
    match (options.passthrough, passthrough_refusal()) {
        (Passthrough::Always, Some(reason)) => Err(MountError::Passthrough(reason)),
        _ => Ok(()),
    }
}

/// What the tree will do: `auto` turns into `never` where passthrough cannot be had or would
/// hide reads from the audit log, with one log line saying why; `always` where it cannot be had
/// is an error.
fn effective_passthrough(options: &MountOptions) -> Result<Passthrough, MountError> {
    let refusal = if options.passthrough == Passthrough::Never { None } else { passthrough_refusal() };
    match (options.passthrough, refusal) {
        (Passthrough::Never, _) => Ok(Passthrough::Never),
        (Passthrough::Always, Some(reason)) => Err(MountError::Passthrough(reason)),
        (Passthrough::Always, None) => {
            if options.audit_log.is_some() {
                log::warn!(
                    "--passthrough=always: the kernel serves ram reads, the audit log records opens only"
                );
            }
            Ok(Passthrough::Always)
        }
        (Passthrough::Auto, _) if options.audit_log.is_some() => {
            log::info!("audited mount: ram is served by the daemon, so that every read is recorded");
            Ok(Passthrough::Never)
        }
        (Passthrough::Auto, Some(reason)) => {
            log::info!("{reason}: ram is served by the daemon (mmap of ram fails with ENODEV)");
            Ok(Passthrough::Never)
        }
        (Passthrough::Auto, None) => Ok(Passthrough::Auto),
    }
}

fn fuse_config(options: &MountOptions) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(FS_NAME.into()),
        MountOption::Subtype(FS_NAME.into()),
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
    ];
    if options.allow_other {
        config.acl = SessionACL::All;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    config.n_threads = Some(options.threads.map_or(cores.clamp(2, 8), usize::from));
    config.clone_fd = true;
    config
}

/// Returns when the session ends (an unmount from outside) or, after a signal, once the mount
/// is detached and the session has ended (or 3 s have passed).
fn wait_for_end(
    session: &fuser::BackgroundSession,
    signals: SigSet,
    mountpoint: &Path,
) -> Result<(), MountError> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(signal) = signals.wait() {
                let _ = sender.send(signal);
            }
        })
        .map_err(io_error("cannot start the signal thread"))?;
    loop {
        if session.guard.is_finished() {
            log::info!("{} was unmounted", mountpoint.display());
            return Ok(());
        }
        match receiver.recv_timeout(Duration::from_millis(100)) {
            Ok(signal) => {
                log::info!("{signal}: unmounting {}", mountpoint.display());
                if let Err(err) = detach(mountpoint) {
                    log::error!("cannot unmount {}: {err}", mountpoint.display());
                }
                poll::wait_for(Duration::from_secs(3), || session.guard.is_finished());
                return Ok(());
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

/// Detaches the mount: `umount2(MNT_DETACH)` as root, `fusermount3 -u -z` otherwise.
fn detach(mountpoint: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let status = Command::new("fusermount3").arg("-u").arg("-z").arg(mountpoint).status()?;
            if status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("fusermount3 -u -z failed: {status}")))
            }
        }
        Err(err) => Err(err.into()),
    }
}

/// Unmounts a qemu-bridge mount and waits (up to 5 s) until it is gone.
///
/// # Errors
///
/// [`MountError::NotMounted`] when `mountpoint` is not a qemu-bridge mount,
/// [`MountError::Unmount`] when it cannot be unmounted or stays mounted.
pub fn umount(mountpoint: &Path) -> Result<(), MountError> {
    if !is_mounted(mountpoint) {
        return Err(MountError::NotMounted(mountpoint.to_path_buf()));
    }
    let mountpoint = absolute_mountpoint(mountpoint);
    let unmount_error = |source| MountError::Unmount { path: mountpoint.clone(), source };
    detach(&mountpoint).map_err(unmount_error)?;
    if !poll::wait_for(Duration::from_secs(5), || !is_mounted(&mountpoint)) {
        return Err(unmount_error(std::io::Error::other("still mounted after 5 s")));
    }
    Ok(())
}

/// The absolute path of a mount point, without touching the mount point itself: `stat` of a
/// dead FUSE mount hangs, so only its parent is resolved.
fn absolute_mountpoint(mountpoint: &Path) -> PathBuf {
    match (mountpoint.parent(), mountpoint.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            std::fs::canonicalize(parent).map(|p| p.join(name)).unwrap_or_else(|_| mountpoint.to_path_buf())
        }
        _ => std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf()),
    }
}

/// Whether `mountpoint` is a qemu-bridge mount (per `/proc/self/mountinfo`).
pub fn is_mounted(mountpoint: &Path) -> bool {
    let absolute = absolute_mountpoint(mountpoint);
    let Ok(mounts) = crate::mountinfo::read_self() else { return false };
    mounts.iter().any(|mount| mount.mount_point == absolute && is_ours(mount))
}

/// The pure-Rust mount(2) path records type `fuse` and source `qemu-bridge`; fusermount3
/// records type `fuse.qemu-bridge`.
fn is_ours(mount: &crate::mountinfo::MountEntry) -> bool {
    mount.fs_type == "fuse.qemu-bridge" || (mount.fs_type.starts_with("fuse") && mount.source == FS_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ways_of_mounting_are_recognised() {
        let entries = crate::mountinfo::parse(
            b"1 0 0:1 / /a rw - fuse qemu-bridge rw\n2 0 0:1 / /b rw - fuse.qemu-bridge x rw\n\
              3 0 0:1 / /c rw - fuse sshfs rw\n4 0 0:1 / /d rw - tmpfs qemu-bridge rw\n",
        );
        let ours: Vec<bool> = entries.iter().map(is_ours).collect();
        assert_eq!(ours, [true, true, false, false]);
    }

    #[test]
    fn default_options_have_only_the_mount_point() {
        assert_eq!(MountOptions::new("/mnt/q").to_args(), [OsString::from("/mnt/q")]);
    }
}
