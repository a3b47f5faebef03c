//! Starting and stopping VMs whose RAM qemu-bridge can read: `memory-backend-file` with
//! `share=on` under `/dev/shm`, a QMP socket in the run directory, pidfile and serial log beside.
//!
//! One concern per file: `args` builds QEMU's command line, `user` picks the user QEMU
//! runs as, `start` starts QEMU and waits for it, `stop` stops, tidies and cleans up after it,
//! and [`linux_image`] builds the small Linux guest of `launch --linux`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use crate::cgroup::{Limits, VmCgroup};
use crate::name::{NameError, VmName};
use crate::qmp::QmpClient;
use crate::ram::{Machine, SHM_DIR};
use crate::run_dir::{RunDir, RunDirError, VmPaths};
use crate::vm::{Vm, VmError};

mod args;
pub mod linux_image;
mod start;
mod stop;
mod user;

pub use args::qemu_args;
pub use start::{qemu_binary, qemu_img_binary, qemu_version, QEMU_ENV, QEMU_IMG_ENV};
pub use stop::{clean, recorded_cgroups, stop, stopped_vms, Stopped, StoppedVm};
pub use user::SERVICE_USER;

use start::{clear_leftovers, Launching};
use user::qemu_user;

/// Longest path a unix socket address holds (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The state disk of VM `name`: `<run-dir>/<name>.state.qcow2` (see [`VmPaths::state_disk`]).
pub fn state_disk_path(run_dir: &RunDir, name: &VmName) -> PathBuf {
    run_dir.state_disk_path(name)
}

/// What a launch was waiting for when time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// The first QEMU process to daemonize (exit once the VM is set up).
    Daemonize,
    /// The QMP socket to answer.
    Qmp,
}

impl std::fmt::Display for Waited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Waited::Daemonize => "QEMU to daemonize",
            Waited::Qmp => "QMP to answer",
        })
    }
}

/// Errors of launching and stopping.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Bad VM name.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The VM's socket path is too long for a unix socket address.
    #[error("VM name {name:?} makes the QMP socket path {path} longer than {MAX_SOCKET_PATH} bytes: use a shorter name or run directory")]
    SocketPathTooLong {
        /// The name.
        name: String,
        /// The socket path.
        path: PathBuf,
    },
    /// Run directory problem.
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// A VM of that name answers on its socket already.
    #[error("a VM named {0:?} is already running")]
    AlreadyRunning(String),
    /// A file is where the VM's RAM file would go, and qemu-bridge did not make it.
    #[error("{0} exists and was not made by qemu-bridge: remove it yourself or choose another name")]
    ForeignRamFile(PathBuf),
    /// No unprivileged user could be had for QEMU.
    #[error("cannot create the system user {SERVICE_USER} for QEMU ({0}); pass --user USER, or --user root to run QEMU as root")]
    NoServiceUser(String),
    /// The launch record could not be written.
    #[error("cannot write the launch record {path}")]
    Record {
        /// The record.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Memory size QEMU cannot take.
    #[error("invalid memory size {0} bytes: must be a whole number of MiB")]
    InvalidMemory(u64),
    /// A file given on the command line does not exist.
    #[error("{what} {path} does not exist")]
    MissingFile {
        /// What it was meant to be.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The QEMU binary is not installed.
    #[error("QEMU binary {0} not found (install it: apt-get install qemu-system-x86)")]
    QemuMissing(String),
    /// `QEMU --version` printed no version.
    #[error("{binary} --version printed no version: {output}")]
    UnknownVersion {
        /// The binary.
        binary: String,
        /// What it printed.
        output: String,
    },
    /// The out-of-memory killer of the VM's cgroup ended QEMU before the VM was up.
    #[error("QEMU was killed by the out-of-memory killer: --max-memory {} MiB is too small for it", .limit >> 20)]
    OutOfMemory {
        /// The memory limit in bytes.
        limit: u64,
    },
    /// QEMU exited with an error before the VM was up.
    #[error("QEMU failed to start ({status}): {stderr}")]
    QemuFailed {
        /// How the first QEMU process exited.
        status: ExitStatus,
        /// What QEMU printed.
        stderr: String,
    },
    /// QEMU daemonized without writing its pidfile.
    #[error("QEMU started but wrote no pidfile {0}")]
    NoPidfile(PathBuf),
    /// QEMU runs, but outside the cgroup made for it.
    #[error("QEMU pid {pid} is not in its cgroup {dirs:?}")]
    NotInCgroup {
        /// QEMU's pid.
        pid: u32,
        /// The cgroup directories.
        dirs: Vec<PathBuf>,
    },
    /// The VM did not come up in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, Waited),
    /// The guest never printed the awaited text.
    #[error("timed out after {timeout:?} waiting for {text:?} on the serial console; it ends with: {tail}")]
    NoSerialText {
        /// How long we waited.
        timeout: Duration,
        /// The text.
        text: String,
        /// The last serial output.
        tail: String,
    },
    /// QMP error while talking to the new or old VM.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Other I/O.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Accelerators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: works everywhere, including hosts whose `/dev/kvm` exists but whose
    /// nested virtualisation hangs guests.
    Tcg,
    /// Hardware virtualisation; only where KVM really runs guests.
    Kvm,
}

impl Accel {
    /// The name QEMU's `accel=` takes.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

impl std::str::FromStr for Accel {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "tcg" => Ok(Accel::Tcg),
            "kvm" => Ok(Accel::Kvm),
            _ => Err(format!("unknown accelerator {name:?}: expected tcg or kvm")),
        }
    }
}

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// VM name: socket stem and RAM file suffix.
    pub name: VmName,
    /// Run directory.
    pub run_dir: RunDir,
    /// RAM in bytes (whole MiB).
    pub memory: u64,
    /// Machine type.
    pub machine: Machine,
    /// Accelerator.
    pub accel: Accel,
    /// `-kernel`.
    pub kernel: Option<PathBuf>,
    /// `-initrd`.
    pub initrd: Option<PathBuf>,
    /// `-append`.
    pub append: Option<String>,
    /// Raw or qcow2 disk image.
    pub drive: Option<PathBuf>,
    /// The user QEMU runs as when root launches it: `None` for the dedicated system user
    /// [`SERVICE_USER`] (created on first use), `Some("root")` to keep root (logged), any
    /// other name for that user. Ignored when not root (QEMU runs as the caller).
    pub user: Option<String>,
    /// Extra QEMU arguments.
    pub extra_args: Vec<String>,
    /// Directory of the RAM file.
    pub shm_dir: PathBuf,
    /// How long to wait for QMP to answer (and for `wait_for`).
    pub timeout: Duration,
    /// Wait until this text appears on the serial console before returning.
    pub wait_for: Option<String>,
    /// Resource limits, applied through a cgroup of the VM's own.
    pub limits: Limits,
    /// Attach a qcow2 state disk (`<run-dir>/<vm>.state.qcow2`, created when missing, kept
    /// across restarts) so that the VM's state can be saved and restored ([`crate::saved_state`]).
    pub state_disk: bool,
}

impl LaunchOptions {
    /// Defaults: 64 MiB, q35, TCG, RAM under `/dev/shm`.
    pub fn new(name: VmName, run_dir: RunDir) -> Self {
        Self {
            name,
            run_dir,
            memory: 64 << 20,
            machine: Machine::Q35,
            accel: Accel::Tcg,
            kernel: None,
            initrd: None,
            append: None,
            drive: None,
            user: None,
            extra_args: Vec::new(),
            shm_dir: PathBuf::from(SHM_DIR),
            timeout: Duration::from_secs(60),
            wait_for: None,
            limits: Limits::default(),
            state_disk: true,
        }
    }

    /// Where the VM's files go: in the run directory, and the RAM file in `shm_dir`.
    pub fn paths(&self) -> VmPaths {
        self.run_dir.vm_paths(&self.name, &self.shm_dir)
    }

    /// Where the state disk goes.
    pub fn state_disk_path(&self) -> PathBuf {
        self.paths().state_disk
    }

    /// Where the RAM file goes.
    pub fn ram_path(&self) -> PathBuf {
        self.paths().ram
    }

    /// Checks what can be checked before anything is created.
    fn validate(&self) -> Result<(), LaunchError> {
        let socket = self.run_dir.socket_path(&self.name);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(LaunchError::SocketPathTooLong { name: self.name.to_string(), path: socket });
        }
        if self.memory == 0 || self.memory % (1 << 20) != 0 {
            return Err(LaunchError::InvalidMemory(self.memory));
        }
        for (what, path) in [("kernel", &self.kernel), ("initrd", &self.initrd), ("drive", &self.drive)] {
            if let Some(path) = path.as_ref().filter(|path| !path.exists()) {
                return Err(LaunchError::MissingFile { what, path: path.clone() });
            }
        }
        Ok(())
    }
}

/// What a launch makes of its options. The options stay what the caller asked; what the launch
/// decides (the user QEMU really runs as, whether the state disk could be had) is kept here, and
/// QEMU's command line is built from both.
#[derive(Debug, Clone)]
struct Plan {
    /// Where the VM's files go.
    paths: VmPaths,
    /// The user QEMU runs as, as [`qemu_user`] resolved [`LaunchOptions::user`].
    user: Option<String>,
    /// The state disk QEMU is given: asked for, and made or found (`qemu-img` may be missing).
    state_disk: Option<PathBuf>,
}

impl Plan {
    /// The options taken as they are, before anything is decided: what [`qemu_args`] shows.
    fn as_asked(options: &LaunchOptions) -> Self {
        let paths = options.paths();
        let state_disk = options.state_disk.then(|| paths.state_disk.clone());
        Self { paths, user: options.user.clone(), state_disk }
    }
}

/// A VM that was launched.
#[derive(Debug, Clone)]
pub struct LaunchedVm {
    /// The VM (its name, run directory and QMP socket).
    pub vm: Vm,
    /// QEMU's pid.
    pub pid: u32,
    /// RAM file.
    pub ram_path: PathBuf,
    /// Serial console log.
    pub serial: PathBuf,
    /// Time from spawning QEMU until QMP answered.
    pub startup: Duration,
    /// Time from spawning QEMU until the `wait_for` text appeared, if one was given.
    pub boot: Option<Duration>,
    /// The state disk, if one is attached.
    pub state_disk: Option<PathBuf>,
    /// The VM's cgroup, if limits were asked for and could be applied.
    pub cgroup: Option<VmCgroup>,
    /// The user QEMU runs as, when it is not the caller.
    pub user: Option<String>,
    /// What was asked for but could not be had (no usable cgroup, no `qemu-img`), in words.
    pub warnings: Vec<String>,
}

impl LaunchedVm {
    /// The VM's name.
    pub fn name(&self) -> &VmName {
        self.vm.name()
    }
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Io { what, source }
}

/// Whether a QMP socket answers.
fn answers(socket: &Path) -> bool {
    QmpClient::connect(socket, Duration::from_millis(500)).is_ok()
}

/// Starts a daemonized QEMU and returns once its QMP socket answers.
///
/// # Errors
///
/// Every [`LaunchError`]; on failure nothing is left behind (no socket, pidfile or RAM file
/// of this launch).
pub fn launch(options: &LaunchOptions) -> Result<LaunchedVm, LaunchError> {
    options.validate()?;
    let binary = qemu_binary();
    let version = qemu_version(&binary)?;
    options.run_dir.create()?;
    let plan = Plan { user: qemu_user(options.user.as_deref())?, ..Plan::as_asked(options) };
    let record = clear_leftovers(options, &plan.paths)?;
    let mut launching = Launching::new(options, plan, record);
    let warnings = launching.prepare();
    match launching.save_record().and_then(|()| launching.start(&binary, version)) {
        Ok(mut vm) => {
            // Returned, not logged at warn: the caller says them (the CLI prints `warning: ...`).
            for warning in &warnings {
                log::info!("VM {}: {warning}", options.name);
            }
            vm.warnings = warnings;
            Ok(vm)
        }
        Err(err) => {
            launching.cleanup();
            Err(err)
        }
    }
}

/// Whether `pid` is a QEMU whose command line names `socket` (guards against pid reuse).
fn is_our_qemu(pid: u32, socket: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let needle = socket.display().to_string();
    cmdline.split(|&b| b == 0).any(|arg| String::from_utf8_lossy(arg).contains(&needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default options of VM `name` in `run_dir`, for the tests of every part of launch.
    pub(super) fn options(name: &str, run_dir: &str) -> LaunchOptions {
        LaunchOptions::new(VmName::new(name).unwrap(), RunDir::new(run_dir))
    }

    #[test]
    fn socket_paths_too_long_for_a_unix_address_are_refused_before_anything_is_made() {
        let long_dir = format!("/tmp/{}", "d".repeat(60));
        let err = options(&"n".repeat(50), &long_dir).validate().unwrap_err();
        assert!(matches!(err, LaunchError::SocketPathTooLong { .. }), "{err}");
        assert!(err.to_string().contains("shorter name"), "{err}");
        assert!(options("ok", &long_dir).validate().is_ok());
    }
}
