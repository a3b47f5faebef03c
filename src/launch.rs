//! Starting and stopping VMs whose RAM qemu-bridge can read: `memory-backend-file` with
//! `share=on` under `/dev/shm`, a QMP socket in the run directory, pidfile and serial log beside.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::cgroup::{self, Limits, VmCgroup};
use crate::name::{NameError, VmName};
use crate::poll;
use crate::process;
use crate::qmp::{QmpClient, QmpError};
use crate::ram::{ram_file_path, Machine, SHM_DIR};
use crate::record::{FileRole, LaunchRecord, RecordError};
use crate::run_dir::{RunDir, RunDirError};
use crate::vm::{Vm, VmError};

/// Environment variable naming the QEMU binary (default `qemu-system-x86_64`).
pub const QEMU_ENV: &str = "QEMU_BRIDGE_QEMU";

/// Environment variable naming `qemu-img` (default `qemu-img`), used to create state disks.
pub const QEMU_IMG_ENV: &str = "QEMU_BRIDGE_QEMU_IMG";

/// The user QEMU runs as when root launches it without `--user`: a system user of its own,
/// created on first use.
pub const SERVICE_USER: &str = "qemu-bridge";

/// Extension of a launched VM's state disk (a qcow2 image holding its saved states).
const STATE_DISK_EXTENSION: &str = "state.qcow2";

/// Longest path a unix socket address holds (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The state disk of VM `name`: `<run-dir>/<name>.state.qcow2`.
pub fn state_disk_path(run_dir: &RunDir, name: &VmName) -> PathBuf {
    run_dir.file_path(name, STATE_DISK_EXTENSION)
}

/// The cgroup directories a launch recorded for VM `name` (in its launch record), so that
/// `stop` can remove them. No record: none.
///
/// # Errors
///
/// When the record exists but cannot be read or is not trusted.
pub fn recorded_cgroups(run_dir: &RunDir, name: &VmName) -> Result<Vec<PathBuf>, RecordError> {
    Ok(LaunchRecord::read(run_dir, name)?.map(|record| record.cgroups).unwrap_or_default())
}

/// Joins the cgroups named before `--`, then becomes the command after it. A shell rather than
/// a `pre_exec` hook, so that QEMU is in its cgroup from its first allocation without unsafe
/// code outside the RAM mapping module.
const JOIN_CGROUPS_SCRIPT: &str =
    r#"while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@""#;

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

    /// Where the state disk goes.
    pub fn state_disk_path(&self) -> PathBuf {
        state_disk_path(&self.run_dir, &self.name)
    }

    /// Where the RAM file goes.
    pub fn ram_path(&self) -> PathBuf {
        ram_file_path(&self.shm_dir, &self.name)
    }

    fn file_path(&self, extension: &str) -> PathBuf {
        self.run_dir.file_path(&self.name, extension)
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

/// The QEMU binary to run.
pub fn qemu_binary() -> String {
    std::env::var(QEMU_ENV).ok().filter(|b| !b.is_empty()).unwrap_or_else(|| "qemu-system-x86_64".into())
}

/// QEMU's version `(major, minor)` from `--version`.
///
/// # Errors
///
/// [`LaunchError::QemuMissing`] when the binary cannot be run, [`LaunchError::UnknownVersion`]
/// when it prints no version.
pub fn qemu_version(binary: &str) -> Result<(u32, u32), LaunchError> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|_| LaunchError::QemuMissing(binary.to_string()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.split_whitespace().skip_while(|word| *word != "version").nth(1).ok_or_else(|| {
        LaunchError::UnknownVersion { binary: binary.to_string(), output: text.trim().to_string() }
    })?;
    let mut parts = version.split('.').map(|part| part.parse::<u32>().unwrap_or(0));
    Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
}

/// `qemu-img` to run.
pub fn qemu_img_binary() -> String {
    std::env::var(QEMU_IMG_ENV).ok().filter(|b| !b.is_empty()).unwrap_or_else(|| "qemu-img".into())
}

/// A value inside a QEMU option list (`-object`, `-drive`, `-name`...): commas are doubled.
fn option_value(value: &str) -> String {
    value.replace(',', ",,")
}

fn option_path(path: &Path) -> String {
    option_value(&path.display().to_string())
}

/// The image format of a disk, from its first bytes: qcow2 by its magic, raw otherwise.
fn disk_format(path: &Path) -> &'static str {
    let mut magic = [0u8; 4];
    let is_qcow2 =
        fs::File::open(path).and_then(|mut file| io::Read::read_exact(&mut file, &mut magic)).is_ok()
            && &magic == b"QFI\xfb";
    if is_qcow2 {
        "qcow2"
    } else {
        "raw"
    }
}

/// The QEMU command line for `options` (without the binary).
pub fn qemu_args(options: &LaunchOptions, version: (u32, u32)) -> Vec<String> {
    let mut args = machine_args(options);
    args.extend(control_args(options));
    args.extend(boot_args(options));
    if options.state_disk {
        args.extend(state_disk_args(&options.state_disk_path()));
    }
    if let Some(user) = options.user.as_ref().filter(|user| *user != "root") {
        // -runas was deprecated in 9.1 in favour of -run-with user=
        if version >= (9, 1) {
            args.extend(["-run-with".into(), format!("user={user}")]);
        } else {
            args.extend(["-runas".into(), user.clone()]);
        }
    }
    args.extend(options.extra_args.iter().cloned());
    args
}

/// The machine and its RAM, in a shared file.
fn machine_args(options: &LaunchOptions) -> Vec<String> {
    vec![
        "-name".into(),
        option_value(options.name.as_str()),
        "-machine".into(),
        format!("{},accel={},memory-backend=ram0", options.machine.qemu_name(), options.accel.qemu_name()),
        "-m".into(),
        format!("{}M", options.memory >> 20),
        "-object".into(),
        format!(
            "memory-backend-file,id=ram0,mem-path={},size={},share=on",
            option_path(&options.ram_path()),
            options.memory
        ),
    ]
}

/// QMP socket, daemon, pidfile, no display, serial to a file.
fn control_args(options: &LaunchOptions) -> Vec<String> {
    vec![
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", option_path(&options.run_dir.socket_path(&options.name))),
        "-daemonize".into(),
        "-pidfile".into(),
        options.file_path("pid").display().to_string(),
        "-display".into(),
        "none".into(),
        "-nodefaults".into(),
        "-serial".into(),
        format!("file:{}", option_path(&options.file_path("serial"))),
    ]
}

/// Kernel, initrd, command line and disk.
fn boot_args(options: &LaunchOptions) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(kernel) = &options.kernel {
        args.extend(["-kernel".into(), kernel.display().to_string()]);
    }
    if let Some(initrd) = &options.initrd {
        args.extend(["-initrd".into(), initrd.display().to_string()]);
    }
    if let Some(append) = &options.append {
        args.extend(["-append".into(), append.clone()]);
    }
    if let Some(drive) = &options.drive {
        args.extend(["-drive".into(), format!("file={},format={}", option_path(drive), disk_format(drive))]);
    }
    args
}

/// A block node with no device over `path`: the guest does not see it; QEMU keeps saved
/// states in it.
fn state_disk_args(path: &Path) -> Vec<String> {
    let file_node = format!("{}-file", crate::saved_state::STATE_NODE);
    vec![
        "-blockdev".into(),
        format!("driver=file,filename={},node-name={file_node}", option_path(path)),
        "-blockdev".into(),
        format!("driver=qcow2,file={file_node},node-name={}", crate::saved_state::STATE_NODE),
    ]
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
    let mut options = options.clone();
    options.user = qemu_user(options.user.as_deref())?;
    let record = clear_leftovers(&options)?;
    let mut launching = Launching { options, record, created_state_disk: false, cgroup: None };
    let mut warnings = Vec::new();
    if launching.options.state_disk {
        if let Err(warning) = launching.prepare_state_disk() {
            warnings.push(warning);
            launching.options.state_disk = false;
        }
    }
    if !launching.options.limits.is_empty() {
        if let Err(LimitsNotApplied(reason)) = launching.prepare_cgroup() {
            warnings.push(format!("resource limits not applied: {reason}"));
        }
    }
    match launching.save_record().and_then(|()| launching.start(&binary, version)) {
        Ok(mut vm) => {
            // Returned, not logged at warn: the caller says them (the CLI prints `warning: ...`).
            for warning in &warnings {
                log::info!("VM {}: {warning}", launching.options.name);
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

/// The user QEMU runs as (see [`LaunchOptions::user`]).
fn qemu_user(requested: Option<&str>) -> Result<Option<String>, LaunchError> {
    if process::effective_uid() != 0 {
        return Ok(requested.map(str::to_string));
    }
    match requested {
        Some("root") => {
            log::info!("QEMU runs as root, as asked (--user root)");
            Ok(None)
        }
        Some(user) => Ok(Some(user.to_string())),
        None => service_user().map(Some),
    }
}

/// The dedicated system user, created when missing (two launches may race to create it).
fn service_user() -> Result<String, LaunchError> {
    let exists = || nix::unistd::User::from_name(SERVICE_USER).ok().flatten().is_some();
    if exists() {
        return Ok(SERVICE_USER.into());
    }
    let output = Command::new("useradd")
        .args(["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"])
        .args(["--comment", "QEMU started by qemu-bridge", SERVICE_USER])
        .output();
    if exists() {
        log::info!("created the system user {SERVICE_USER} for QEMU");
        return Ok(SERVICE_USER.into());
    }
    Err(LaunchError::NoServiceUser(match output {
        Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_string(),
        Err(err) => format!("cannot run useradd: {err}"),
    }))
}

/// Makes way for a new launch under a name used before. A socket that answers means the name
/// is taken. What an earlier launch recorded (its QEMU gone) is removed, but for the state
/// disk, which keeps its saved states; a RAM file that no launch of ours made is refused, never
/// deleted. Returns the record to start from.
fn clear_leftovers(options: &LaunchOptions) -> Result<LaunchRecord, LaunchError> {
    let socket = options.run_dir.socket_path(&options.name);
    if socket.exists() && answers(&socket) {
        return Err(LaunchError::AlreadyRunning(options.name.to_string()));
    }
    let mut record = match LaunchRecord::read(&options.run_dir, &options.name) {
        Ok(record) => record.unwrap_or_default(),
        Err(err) => {
            log::warn!("{}", crate::error::chain(&err));
            LaunchRecord::default()
        }
    };
    if let Some(pid) = record.pid.filter(|&pid| is_our_qemu(pid, &socket)) {
        if process::alive(pid) {
            return Err(LaunchError::AlreadyRunning(options.name.to_string()));
        }
    }
    cgroup::remove_dirs(&std::mem::take(&mut record.cgroups));
    record
        .remove_files(|role| role != FileRole::StateDisk)
        .map_err(io_error("cannot remove what the last launch left"))?;
    record.pid = None;
    // QEMU would truncate a file at the RAM path in place (a SIGBUS for whoever maps it) or
    // take over someone else's file: refuse what we did not make.
    let ram_path = options.ram_path();
    if fs::symlink_metadata(&ram_path).is_ok() {
        return Err(LaunchError::ForeignRamFile(ram_path));
    }
    Ok(record)
}

/// Why limits were not applied (the launch goes on without them).
struct LimitsNotApplied(String);

/// A launch under way: what to undo when it fails.
struct Launching {
    options: LaunchOptions,
    /// What this launch made so far (and a state disk an earlier launch made).
    record: LaunchRecord,
    created_state_disk: bool,
    cgroup: Option<VmCgroup>,
}

impl Launching {
    /// Creates the state disk unless it exists (it keeps saved states across restarts).
    fn prepare_state_disk(&mut self) -> Result<(), String> {
        let path = self.options.state_disk_path();
        if path.exists() {
            if self.record.file(FileRole::StateDisk).is_none() {
                log::info!(
                    "using the existing state disk {} (not made by qemu-bridge: stop keeps it)",
                    path.display()
                );
            }
            return Ok(());
        }
        let qemu_img = qemu_img_binary();
        let output = Command::new(&qemu_img)
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg("1M")
            .stdin(Stdio::null())
            .output()
            .map_err(|err| {
                format!("no state disk, so the VM's state cannot be saved: cannot run {qemu_img} ({err}; apt-get install qemu-utils)")
            })?;
        if !output.status.success() {
            let _ = fs::remove_file(&path);
            return Err(format!(
                "no state disk, so the VM's state cannot be saved: {qemu_img} create {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        self.created_state_disk = true;
        self.record
            .add(FileRole::StateDisk, &path)
            .map_err(|err| format!("cannot examine {}: {err}", path.display()))
    }

    /// Makes the VM's cgroup and records its directories for `stop`.
    fn prepare_cgroup(&mut self) -> Result<(), LimitsNotApplied> {
        let options = &self.options;
        let host = cgroup::Host::detect().map_err(|err| LimitsNotApplied(err.to_string()))?;
        let cgroup = host
            .create(options.name.as_str(), &options.limits)
            .map_err(|err| LimitsNotApplied(crate::error::chain(&err)))?;
        self.record.cgroups = cgroup.dirs();
        self.cgroup = Some(cgroup);
        Ok(())
    }

    /// Writes the record as it stands: before QEMU starts (so that a launch cut short leaves
    /// a record `stop` can clean up after) and once it runs.
    fn save_record(&self) -> Result<(), LaunchError> {
        let options = &self.options;
        self.record.write(&options.run_dir, &options.name).map_err(|source| LaunchError::Record {
            path: LaunchRecord::path(&options.run_dir, &options.name),
            source,
        })
    }

    /// Records QEMU's pid and the files it made.
    fn record_qemu(&mut self, pid: u32) -> Result<(), LaunchError> {
        let options = &self.options;
        self.record.pid = Some(pid);
        let files = [
            (FileRole::Ram, options.ram_path()),
            (FileRole::Socket, options.run_dir.socket_path(&options.name)),
            (FileRole::Pidfile, options.file_path("pid")),
            (FileRole::Serial, options.file_path("serial")),
            (FileRole::Log, options.file_path("log")),
        ];
        for (role, path) in files {
            if let Err(err) = self.record.add(role, &path) {
                // QEMU made no such file (a serial console elsewhere, say): nothing to remove
                log::debug!("not recording {}: {err}", path.display());
            }
        }
        self.save_record()
    }

    fn command(&self, binary: &str, version: (u32, u32)) -> Command {
        let args = qemu_args(&self.options, version);
        match &self.cgroup {
            None => {
                let mut command = Command::new(binary);
                command.args(args);
                command
            }
            Some(cgroup) => {
                let mut command = Command::new("/bin/sh");
                command.args(["-c", JOIN_CGROUPS_SCRIPT, "qemu-bridge-join-cgroups"]);
                command.args(cgroup.procs_files()).arg("--").arg(binary).args(args);
                command
            }
        }
    }

    /// A QEMU ended by its cgroup's out-of-memory killer is said to be, whatever else failed.
    fn or_out_of_memory(&self, otherwise: LaunchError) -> LaunchError {
        match &self.cgroup {
            Some(cgroup) if cgroup.oom_kills() > 0 => {
                cgroup.limits.max_memory.map_or(otherwise, |limit| LaunchError::OutOfMemory { limit })
            }
            _ => otherwise,
        }
    }

    /// Kills the QEMU that came up but is not usable, and says why.
    fn abandon(&self, pid: u32, why: LaunchError) -> LaunchError {
        process::end(pid, Duration::from_millis(100));
        self.or_out_of_memory(why)
    }

    fn start(&mut self, binary: &str, version: (u32, u32)) -> Result<LaunchedVm, LaunchError> {
        let started = Instant::now();
        let pid = self.spawn_daemon(binary, version, started)?;
        if let Err(err) = self.record_qemu(pid) {
            return Err(self.abandon(pid, err));
        }
        let options = &self.options;
        let socket = options.run_dir.socket_path(&options.name);
        let up = poll::wait_for(options.timeout.saturating_sub(started.elapsed()), || {
            answers(&socket) || !process::alive(pid)
        });
        if !up || !process::alive(pid) {
            return Err(self.abandon(pid, LaunchError::Timeout(options.timeout, Waited::Qmp)));
        }
        if let Some(cgroup) = &self.cgroup {
            if !cgroup.holds(pid) {
                return Err(self.abandon(pid, LaunchError::NotInCgroup { pid, dirs: cgroup.dirs() }));
            }
        }
        let startup = started.elapsed();
        let serial = options.file_path("serial");
        let boot = match &options.wait_for {
            Some(text) => Some(self.wait_for_serial(pid, &serial, text, started)?),
            None => None,
        };
        Ok(LaunchedVm {
            vm: Vm::named(&options.run_dir, options.name.clone()),
            pid,
            ram_path: options.ram_path(),
            serial,
            startup,
            boot,
            state_disk: options.state_disk.then(|| options.state_disk_path()),
            cgroup: self.cgroup.clone(),
            user: options.user.clone(),
            warnings: Vec::new(),
        })
    }

    /// Runs QEMU with `-daemonize` and waits for the first process to exit, which it does once
    /// the VM is set up; returns the daemon's pid from the pidfile.
    fn spawn_daemon(&self, binary: &str, version: (u32, u32), started: Instant) -> Result<u32, LaunchError> {
        let options = &self.options;
        let log_path = options.file_path("log");
        let log =
            fs::File::create(&log_path).map_err(io_error(format!("cannot create {}", log_path.display())))?;
        let mut child = self
            .command(binary, version)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|err| match err.kind() {
                io::ErrorKind::NotFound => LaunchError::QemuMissing(binary.to_string()),
                _ => LaunchError::Io { what: format!("cannot run {binary}"), source: err },
            })?;
        let exited = poll::until(options.timeout, poll::INTERVAL, || child.try_wait().transpose());
        let status = match exited {
            Some(result) => result.map_err(io_error("waiting for QEMU"))?,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LaunchError::Timeout(started.elapsed(), Waited::Daemonize));
            }
        };
        if !status.success() {
            let stderr = fs::read_to_string(&log_path).unwrap_or_default().trim().to_string();
            return Err(self.or_out_of_memory(LaunchError::QemuFailed { status, stderr }));
        }
        let pidfile = options.file_path("pid");
        process::read_pid(&pidfile).ok_or(LaunchError::NoPidfile(pidfile))
    }

    /// Waits for `text` on the serial console; the time since `started` when it appeared.
    fn wait_for_serial(
        &self,
        pid: u32,
        serial: &Path,
        text: &str,
        started: Instant,
    ) -> Result<Duration, LaunchError> {
        let timeout = self.options.timeout;
        let appeared =
            poll::until(timeout.saturating_sub(started.elapsed()), Duration::from_millis(50), || {
                let output = fs::read(serial).unwrap_or_default();
                if output.windows(text.len().max(1)).any(|window| window == text.as_bytes()) {
                    Some(true)
                } else {
                    (!process::alive(pid)).then_some(false)
                }
            });
        if appeared == Some(true) {
            return Ok(started.elapsed());
        }
        let output = fs::read(serial).unwrap_or_default();
        let tail = String::from_utf8_lossy(&output[output.len().saturating_sub(300)..]).trim().to_string();
        Err(self.abandon(pid, LaunchError::NoSerialText { timeout, text: text.to_string(), tail }))
    }

    /// Removes what this launch made: socket, pidfile, RAM file, logs, cgroups, and the state
    /// disk if it was created now. Nothing was at these paths before (see `clear_leftovers`),
    /// so what is there now is this launch's. A state disk kept from before stays recorded.
    fn cleanup(&mut self) {
        let options = &self.options;
        let mut files =
            vec![options.run_dir.socket_path(&options.name), options.file_path("pid"), options.ram_path()];
        if self.created_state_disk {
            files.push(options.state_disk_path());
        }
        for path in files {
            let _ = fs::remove_file(path);
        }
        if let Some(cgroup) = &self.cgroup {
            cgroup.remove();
        }
        self.record.pid = None;
        self.record.cgroups.clear();
        self.record.files.retain(|file| file.role == FileRole::StateDisk && file.is_intact());
        let result = if self.record.files.is_empty() {
            LaunchRecord::delete(&options.run_dir, &options.name)
        } else {
            self.record.write(&options.run_dir, &options.name)
        };
        if let Err(err) = result {
            log::warn!("cannot update the launch record of {}: {err}", options.name);
        }
    }
}

/// Whether `pid` is a QEMU whose command line names `socket` (guards against pid reuse).
fn is_our_qemu(pid: u32, socket: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let needle = socket.display().to_string();
    cmdline.split(|&b| b == 0).any(|arg| String::from_utf8_lossy(arg).contains(&needle))
}

/// What `stop` did.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// Whether QEMU exited through QMP `quit` (false: it was signalled or already gone).
    pub graceful: bool,
    /// Whether `qemu-bridge launch` started the VM (it has a launch record). A VM started
    /// otherwise is only asked to quit: none of its files are touched.
    pub launched: bool,
    /// Files removed (only files the launch made, each still the very file it made).
    pub removed: Vec<PathBuf>,
    /// Recorded files left alone because their path now names another file.
    pub replaced: Vec<PathBuf>,
    /// The state disk, when kept because it holds saved states (or could not be read).
    pub kept_state_disk: Option<PathBuf>,
    /// The states saved in the kept state disk (empty when it could not be read).
    pub saved_states: Vec<String>,
}

/// Quits VM `name` through QMP and waits for QEMU to exit. For a VM that `launch` started (it
/// has a launch record), a QEMU that does not exit is signalled by its recorded pid, and the
/// files and cgroups the launch made are removed, each only while its path still names the file
/// that was made; the state disk is kept (so that a VM launched again under the same name can
/// restore its saved states) unless `discard_state`. A VM started otherwise is asked to quit
/// and nothing else: its files, whatever QMP says they are, are left alone.
///
/// # Errors
///
/// [`VmError::NotFound`] when there is neither socket nor record; a refused QMP peer of a VM
/// that has no record; I/O errors removing files.
pub fn stop(run_dir: &RunDir, name: &str, discard_state: bool) -> Result<Stopped, LaunchError> {
    let vm = Vm::new(run_dir, name)?;
    let record = match LaunchRecord::read(run_dir, vm.name()) {
        Ok(record) => record,
        Err(err) => {
            log::warn!("{}; treating VM {name} as not launched by qemu-bridge", crate::error::chain(&err));
            None
        }
    };
    if !vm.socket().exists() && record.is_none() {
        return Err(vm.not_found().into());
    }
    let quit = quit(&vm);
    let Some(record) = record else {
        let peer = quit?;
        // Not ours to kill: wait a while for it to take the quit, delete nothing.
        if !process::wait_for_exit(peer.pid, Duration::from_secs(10)) {
            log::warn!("VM {name} (pid {}) is still running 10 s after quit", peer.pid);
        }
        return Ok(Stopped {
            graceful: true,
            launched: false,
            removed: Vec::new(),
            replaced: Vec::new(),
            kept_state_disk: None,
            saved_states: Vec::new(),
        });
    };
    let graceful = match quit {
        Ok(_) => true,
        Err(err) => {
            log::warn!("{}; stopping by pid", crate::error::chain(&err));
            false
        }
    };
    if let Some(pid) = record.pid.filter(|&pid| is_our_qemu(pid, vm.socket())) {
        let grace = if graceful { Duration::from_secs(10) } else { Duration::from_millis(100) };
        if !process::end(pid, grace) {
            return Err(LaunchError::Io {
                what: format!("QEMU pid {pid} of VM {name} does not exit"),
                source: io::Error::from(io::ErrorKind::TimedOut),
            });
        }
    }
    tidy(run_dir, vm.name(), record, discard_state, graceful)
}

/// Removes what the launch of a VM whose QEMU has ended made (its record says what): cgroups,
/// files (each only while its path still names the file launch made), and the state disk
/// unless it holds saved states and `discard_state` is false; the record goes with the last file.
fn tidy(
    run_dir: &RunDir,
    name: &VmName,
    mut record: LaunchRecord,
    discard_state: bool,
    graceful: bool,
) -> Result<Stopped, LaunchError> {
    cgroup::remove_dirs(&std::mem::take(&mut record.cgroups));
    // a state disk is kept only for the states saved in it
    let saved_states = match record.file(FileRole::StateDisk).filter(|_| !discard_state) {
        Some(disk) => match crate::saved_state::on_disk(&disk.path) {
            Ok(states) => Some(states),
            Err(err) => {
                log::warn!("{}; keeping it", crate::error::chain(&err));
                None
            }
        },
        None => None,
    };
    let drop_state_disk = discard_state || saved_states.as_ref().is_some_and(Vec::is_empty);
    let removal = record
        .remove_files(|role| role != FileRole::StateDisk || drop_state_disk)
        .map_err(io_error(format!("cannot remove the files of VM {name}")))?;
    record.pid = None;
    let kept_state_disk = record.file(FileRole::StateDisk).map(|file| file.path.clone());
    let saved_states = saved_states.unwrap_or_default();
    let saved = if record.files.is_empty() {
        LaunchRecord::delete(run_dir, name)
    } else {
        record.write(run_dir, name)
    };
    saved.map_err(io_error(format!("cannot update the launch record of VM {name}")))?;
    Ok(Stopped {
        graceful,
        launched: true,
        removed: removal.removed,
        replaced: removal.replaced,
        kept_state_disk,
        saved_states,
    })
}

/// Tidies the run directory: for every VM `launch` started whose QEMU is gone, removes what
/// that launch made and recorded (socket, pidfile, logs, RAM file, cgroups; the state disk unless
/// it holds saved states), as `stop` would have. Touches nothing it did not record, and no VM
/// that runs.
///
/// # Errors
///
/// The first VM whose files cannot be removed.
pub fn clean(run_dir: &RunDir) -> Result<Vec<(VmName, Stopped)>, LaunchError> {
    let mut cleaned = Vec::new();
    for (name, record) in LaunchRecord::of_dead_vms(run_dir) {
        let tidied = tidy(run_dir, &name, record, false, false)?;
        cleaned.push((name, tidied));
    }
    Ok(cleaned)
}

/// A VM `launch` started that no longer runs but left files behind (a state disk with saved
/// states, or the leftovers of a QEMU that died).
#[derive(Debug, Clone)]
pub struct StoppedVm {
    /// Its name.
    pub name: VmName,
    /// Its state disk, if one is left.
    pub state_disk: Option<PathBuf>,
    /// The states saved in it.
    pub saved_states: Vec<String>,
}

/// The VMs of `run_dir` that `launch` started and that no longer run (their QEMU is gone), with
/// what they left: the records of launches whose recorded QEMU is dead.
pub fn stopped_vms(run_dir: &RunDir) -> Vec<StoppedVm> {
    LaunchRecord::of_dead_vms(run_dir)
        .into_iter()
        .map(|(name, record)| {
            let state_disk = record.file(FileRole::StateDisk).map(|file| file.path.clone());
            let saved_states = state_disk
                .as_deref()
                .filter(|disk| disk.exists())
                .and_then(|disk| crate::saved_state::on_disk(disk).ok())
                .unwrap_or_default();
            StoppedVm { name, state_disk, saved_states }
        })
        .collect()
}

/// Sends `quit` to a trusted peer: the peer, once QEMU took it.
fn quit(vm: &Vm) -> Result<crate::vm::Peer, LaunchError> {
    let (mut qmp, peer) = vm.connect_to_peer()?;
    match qmp.quit() {
        Ok(()) | Err(QmpError::Closed) => Ok(peer),
        Err(err) => Err(vm.qmp_error(err).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(name: &str, run_dir: &str) -> LaunchOptions {
        LaunchOptions::new(VmName::new(name).unwrap(), RunDir::new(run_dir))
    }

    #[test]
    fn commas_in_names_and_paths_are_doubled_for_qemu() {
        let mut options = options("a,b", "/run/x,y");
        options.drive = Some(PathBuf::from("/img,1.raw"));
        let args = qemu_args(&options, (7, 2));
        assert_eq!(args[0..2], ["-name", "a,,b"]);
        assert!(args.contains(&"unix:/run/x,,y/a,,b.qmp,server=on,wait=off".to_string()), "{args:?}");
        assert!(args.iter().any(|arg| arg.starts_with("file=/img,,1.raw,format=")), "{args:?}");
        assert!(args.iter().any(|arg| arg.contains("mem-path=/dev/shm/qemu_ram_a,,b,")), "{args:?}");
    }

    #[test]
    fn socket_paths_too_long_for_a_unix_address_are_refused_before_anything_is_made() {
        let long_dir = format!("/tmp/{}", "d".repeat(60));
        let err = options(&"n".repeat(50), &long_dir).validate().unwrap_err();
        assert!(matches!(err, LaunchError::SocketPathTooLong { .. }), "{err}");
        assert!(err.to_string().contains("shorter name"), "{err}");
        assert!(options("ok", &long_dir).validate().is_ok());
    }

    #[test]
    fn user_option_follows_the_qemu_version() {
        let mut options = options("u", "/run/q");
        options.user = Some("nobody".into());
        assert!(qemu_args(&options, (7, 2)).windows(2).any(|w| w == ["-runas", "nobody"]));
        assert!(qemu_args(&options, (9, 1)).windows(2).any(|w| w == ["-run-with", "user=nobody"]));
        // root is no user switch at all
        options.user = Some("root".into());
        assert!(!qemu_args(&options, (7, 2)).iter().any(|arg| arg == "-runas"));
    }
}
