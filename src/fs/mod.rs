//! The FUSE mount: `qemu-bridge mount MOUNTPOINT` serves one directory per running VM.
//!
//! Shutdown follows what works with fuser 0.18 (see the project's facts): on SIGINT, SIGTERM or
//! SIGHUP the daemon detaches the mount (`umount2(MNT_DETACH)`, or `fusermount3 -u -z` when not
//! root) and waits briefly for the session thread; an unmount from outside (`umount`,
//! `fusermount3 -u`, `qemu-bridge umount`) ends the session thread, and the daemon exits.

pub mod audit;
pub mod registry;
pub mod tree;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, SessionACL};
use nix::sys::signal::{SigSet, Signal};

use crate::discovery::{default_run_dir, RunDir};
use audit::AuditLog;
use registry::Registry;
use tree::{Tree, TreeOptions};

/// Source name of the mount (`/proc/mounts` shows `qemu-bridge ... fuse` or `fuse.qemu-bridge`).
pub const FS_NAME: &str = "qemu-bridge";

type VerbResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// `mount` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    /// Where to mount (an existing directory)
    pub mountpoint: PathBuf,
    /// Directory of the VMs' QMP sockets (see `launch --help`)
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Stay attached; Ctrl-C or SIGTERM unmounts
    #[arg(long)]
    pub foreground: bool,
    /// Let other users enter the mount (needs user_allow_other in /etc/fuse.conf for non-root)
    #[arg(long)]
    pub allow_other: bool,
    /// Append one line per operation on guest RAM (time, uid, pid, VM, file, offset, length)
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Serve `ram` by FUSE passthrough (kernel >= 6.9 and root); falls back with a log line
    #[arg(long)]
    pub passthrough: bool,
    /// Threads serving requests [default: number of cores, 2 to 8]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: Option<u16>,
    /// Where the background daemon logs [default: <run-dir>/mount.log]
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

/// Runs `mount`: in the background unless `--foreground`.
///
/// # Errors
///
/// A bad mount point, a mount that fails, or a daemon that does not come up.
pub fn mount_verb(args: MountArgs) -> VerbResult {
    check_mountpoint(&args.mountpoint)?;
    if args.foreground {
        serve(&args)
    } else {
        spawn_daemon(&args)
    }
}

fn check_mountpoint(mountpoint: &Path) -> VerbResult {
    let metadata = std::fs::metadata(mountpoint)
        .map_err(|err| format!("mount point {}: {err}", mountpoint.display()))?;
    if !metadata.is_dir() {
        return Err(format!("mount point {} is not a directory", mountpoint.display()).into());
    }
    if is_mounted(mountpoint) {
        return Err(format!("{} is already a qemu-bridge mount", mountpoint.display()).into());
    }
    Ok(())
}

/// Starts `qemu-bridge mount --foreground` detached, and returns once the mount is live.
fn spawn_daemon(args: &MountArgs) -> VerbResult {
    let run_dir = RunDir::new(args.run_dir.clone().unwrap_or_else(default_run_dir));
    let log_path = match &args.log_file {
        Some(path) => path.clone(),
        None => {
            run_dir.create()?;
            run_dir.path().join("mount.log")
        }
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|err| format!("cannot open log file {}: {err}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("mount").arg("--foreground").arg(&args.mountpoint).arg("--run-dir").arg(run_dir.path());
    if args.allow_other {
        command.arg("--allow-other");
    }
    if let Some(path) = &args.audit_log {
        command.arg("--audit-log").arg(path);
    }
    if args.passthrough {
        command.arg("--passthrough");
    }
    if let Some(threads) = args.threads {
        command.arg("--threads").arg(threads.to_string());
    }
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
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if is_mounted(&args.mountpoint) {
            println!(
                "mounted {} (pid {}, log {})",
                args.mountpoint.display(),
                child.id(),
                log_path.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read(&log_path).unwrap_or_default();
            let tail = String::from_utf8_lossy(&log[(log_start as usize).min(log.len())..]);
            let last = tail.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("no output");
            return Err(format!("mount daemon exited ({status}): {last}").into());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = detach(&args.mountpoint);
            return Err(
                format!("mount daemon did not mount {} within 20 s", args.mountpoint.display()).into()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Mounts and serves until a signal or an unmount from outside.
fn serve(args: &MountArgs) -> VerbResult {
    // Block the signals in this thread before any other starts, so that every thread inherits
    // the mask and only the waiter below receives them.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    signals.thread_block()?;

    let run_dir = RunDir::new(args.run_dir.clone().unwrap_or_else(default_run_dir));
    if let Err(err) = run_dir.check() {
        log::warn!("{err}: no VMs until it appears");
    }
    let audit = match &args.audit_log {
        Some(path) => Some(
            AuditLog::open(path).map_err(|err| format!("cannot open audit log {}: {err}", path.display()))?,
        ),
        None => None,
    };
    let registry = Arc::new(Registry::new(run_dir.clone()));
    registry.spawn_janitor();
    let tree = Tree::new(registry, audit, &TreeOptions { passthrough: args.passthrough });

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
    if args.allow_other {
        config.acl = SessionACL::All;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    config.n_threads = Some(args.threads.map_or(cores.clamp(2, 8), usize::from));
    config.clone_fd = true;

    let mountpoint = std::fs::canonicalize(&args.mountpoint)?;
    let session = fuser::Session::new(tree, &mountpoint, &config)
        .map_err(|err| format!("cannot mount {}: {err}", mountpoint.display()))?;
    let session = session.spawn()?;
    log::info!(
        "serving {} on {} ({} threads)",
        run_dir.path().display(),
        mountpoint.display(),
        config.n_threads.unwrap_or(1)
    );

    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        if let Ok(signal) = signals.wait() {
            let _ = sender.send(signal);
        }
    })?;
    loop {
        if session.guard.is_finished() {
            log::info!("{} was unmounted", mountpoint.display());
            break;
        }
        match receiver.recv_timeout(Duration::from_millis(100)) {
            Ok(signal) => {
                log::info!("{signal}: unmounting {}", mountpoint.display());
                if let Err(err) = detach(&mountpoint) {
                    log::error!("cannot unmount {}: {err}", mountpoint.display());
                }
                let deadline = Instant::now() + Duration::from_secs(3);
                while !session.guard.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if session.guard.is_finished() {
        match session.join() {
            Ok(()) => {}
            Err(err) => log::warn!("session ended with: {err}"),
        }
    }
    Ok(())
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

/// Unmounts a qemu-bridge mount and waits until it is gone.
///
/// # Errors
///
/// When `mountpoint` is not a qemu-bridge mount or cannot be unmounted.
pub fn umount(mountpoint: &Path) -> std::io::Result<()> {
    if !is_mounted(mountpoint) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a qemu-bridge mount", mountpoint.display()),
        ));
    }
    let mountpoint = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    detach(&mountpoint)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_mounted(&mountpoint) {
        if Instant::now() > deadline {
            return Err(std::io::Error::other(format!("{} is still mounted", mountpoint.display())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Whether `mountpoint` is a `fuse.qemu-bridge` mount (per `/proc/self/mountinfo`).
pub fn is_mounted(mountpoint: &Path) -> bool {
    // canonicalize would stat the mount point, which hangs on a dead FUSE mount: resolve the
    // parent instead.
    let absolute = match (mountpoint.parent(), mountpoint.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            std::fs::canonicalize(parent).map(|p| p.join(name)).unwrap_or_else(|_| mountpoint.to_path_buf())
        }
        _ => std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf()),
    };
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    mountinfo.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(separator) = fields.iter().position(|f| *f == "-") else { return false };
        // The pure-Rust mount(2) path records type `fuse` and source `qemu-bridge`;
        // fusermount3 records type `fuse.qemu-bridge`.
        let fstype = fields.get(separator + 1).copied().unwrap_or("");
        let source = fields.get(separator + 2).copied().unwrap_or("");
        fields.get(4).is_some_and(|point| unescape_mountinfo(point) == absolute.to_string_lossy())
            && (fstype == "fuse.qemu-bridge" || (fstype.starts_with("fuse") && source == FS_NAME))
    })
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\' && index + 3 < bytes.len() {
            if let Ok(code) = u8::from_str_radix(&field[index + 1..index + 4], 8) {
                out.push(code as char);
                index += 4;
                continue;
            }
        }
        out.push(bytes[index] as char);
        index += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/mnt/with\\040space"), "/mnt/with space");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
