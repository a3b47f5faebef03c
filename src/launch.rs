//! Starting and stopping VMs whose RAM qemu-bridge can read: `memory-backend-file` with
//! `share=on` under `/dev/shm`, a QMP socket in the run directory, pidfile and serial log beside.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cgroup::{self, Limits, VmCgroup};
use crate::discovery::{RunDir, RunDirError};
use crate::qmp::{QmpClient, QmpError};
use crate::ram::{validate_vm_name, BridgeError, RAM_FILE_PREFIX, SHM_DIR};
use crate::vm::{Vm, VmError};

/// Environment variable naming the QEMU binary (default `qemu-system-x86_64`).
pub const QEMU_ENV: &str = "QEMU_BRIDGE_QEMU";

/// Environment variable naming `qemu-img` (default `qemu-img`), used to create state disks.
pub const QEMU_IMG_ENV: &str = "QEMU_BRIDGE_QEMU_IMG";

/// Extension of the file, beside the socket, that lists a launched VM's cgroup directories.
const CGROUP_FILE: &str = "cgroup";

/// Extension of a launched VM's state disk (a qcow2 image holding its saved states).
const STATE_DISK_EXTENSION: &str = "state.qcow2";

/// The state disk of VM `name`: `<run-dir>/<name>.state.qcow2`.
pub fn state_disk_path(run_dir: &RunDir, name: &str) -> PathBuf {
    run_dir.file_path(name, STATE_DISK_EXTENSION)
}

/// The cgroup directories a launch recorded for VM `name` (in `<run-dir>/<name>.cgroup`, one
/// per line), so that `stop` can remove them.
pub fn recorded_cgroups(run_dir: &RunDir, name: &str) -> Vec<PathBuf> {
    let listing = fs::read_to_string(run_dir.file_path(name, CGROUP_FILE)).unwrap_or_default();
    listing.lines().filter(|line| !line.is_empty()).map(PathBuf::from).collect()
}

/// Joins the cgroups named before `--`, then becomes the command after it. A shell rather than
/// a `pre_exec` hook, so that QEMU is in its cgroup from its first allocation without unsafe
/// code outside the RAM mapping module.
const JOIN_CGROUPS_SCRIPT: &str =
    r#"while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@""#;

/// Errors of launching and stopping.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Bad VM name.
    #[error(transparent)]
    InvalidName(BridgeError),
    /// Run directory problem.
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// A VM of that name answers on its socket already.
    #[error("a VM named {0:?} is already running")]
    AlreadyRunning(String),
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
    /// The out-of-memory killer of the VM's cgroup ended QEMU before the VM was up.
    #[error("QEMU was killed by the out-of-memory killer: --max-memory {} MiB is too small for it", .limit >> 20)]
    OutOfMemory {
        /// The memory limit in bytes.
        limit: u64,
    },
    /// QEMU exited with an error before the VM was up.
    #[error("QEMU failed to start ({status}): {stderr}")]
    QemuFailed {
        /// Exit status.
        status: String,
        /// What QEMU printed.
        stderr: String,
    },
    /// The VM did not come up in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
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

/// Machine types the launcher knows the RAM layout of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Machine {
    /// ICH9 chipset (QEMU's modern default for x86).
    Q35,
    /// i440FX chipset.
    Pc,
}

/// Accelerators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Software emulation: works everywhere, including hosts whose `/dev/kvm` exists but whose
    /// nested virtualisation hangs guests.
    Tcg,
    /// Hardware virtualisation; only where KVM really runs guests.
    Kvm,
}

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// VM name: socket stem and RAM file suffix.
    pub name: String,
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
    /// Raw disk image.
    pub drive: Option<PathBuf>,
    /// Run QEMU as this user (when started by root).
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
    /// across restarts) so that the VM's state can be saved and restored ([`crate::state`]).
    pub state_disk: bool,
}

impl LaunchOptions {
    /// Defaults: 64 MiB, q35, TCG, RAM under `/dev/shm`.
    pub fn new(name: &str, run_dir: RunDir) -> Self {
        Self {
            name: name.to_string(),
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
        self.shm_dir.join(format!("{RAM_FILE_PREFIX}{}", self.name))
    }
}

/// A VM that was launched.
#[derive(Debug, Clone)]
pub struct LaunchedVm {
    /// Name.
    pub name: String,
    /// QEMU's pid.
    pub pid: u32,
    /// QMP socket.
    pub socket: PathBuf,
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
    /// What was asked for but could not be had (no usable cgroup, no `qemu-img`), in words.
    pub warnings: Vec<String>,
}

/// The QEMU binary to run.
pub fn qemu_binary() -> String {
    std::env::var(QEMU_ENV).ok().filter(|b| !b.is_empty()).unwrap_or_else(|| "qemu-system-x86_64".into())
}

/// QEMU's version `(major, minor)` from `--version`.
///
/// # Errors
///
/// [`LaunchError::QemuMissing`] when the binary cannot be run.
pub fn qemu_version(binary: &str) -> Result<(u32, u32), LaunchError> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|_| LaunchError::QemuMissing(binary.to_string()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version =
        text.split_whitespace().skip_while(|word| *word != "version").nth(1).ok_or_else(|| {
            LaunchError::QemuFailed { status: "--version".into(), stderr: text.to_string() }
        })?;
    let mut parts = version.split('.').map(|part| part.parse::<u32>().unwrap_or(0));
    Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
}

/// `qemu-img` to run.
pub fn qemu_img_binary() -> String {
    std::env::var(QEMU_IMG_ENV).ok().filter(|b| !b.is_empty()).unwrap_or_else(|| "qemu-img".into())
}

/// A value inside a QEMU `-object`/`-drive` option list: commas are doubled.
fn option_value(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
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
    let run_dir = &options.run_dir;
    let name = &options.name;
    let machine = match options.machine {
        Machine::Q35 => "q35",
        Machine::Pc => "pc",
    };
    let accel = match options.accel {
        Accel::Tcg => "tcg",
        Accel::Kvm => "kvm",
    };
    let mut args: Vec<String> = vec![
        "-name".into(),
        name.clone(),
        "-machine".into(),
        format!("{machine},accel={accel},memory-backend=ram0"),
        "-m".into(),
        format!("{}M", options.memory >> 20),
        "-object".into(),
        format!(
            "memory-backend-file,id=ram0,mem-path={},size={},share=on",
            option_value(&options.ram_path()),
            options.memory
        ),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", option_value(&run_dir.socket_path(name))),
        "-daemonize".into(),
        "-pidfile".into(),
        run_dir.file_path(name, "pid").display().to_string(),
        "-display".into(),
        "none".into(),
        "-nodefaults".into(),
        "-serial".into(),
        format!("file:{}", option_value(&run_dir.file_path(name, "serial"))),
    ];
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
        args.extend(["-drive".into(), format!("file={},format={}", option_value(drive), disk_format(drive))]);
    }
    if options.state_disk {
        // A block node with no device: the guest does not see it; QEMU keeps saved states in it.
        let file_node = format!("{}-file", crate::state::STATE_NODE);
        args.extend([
            "-blockdev".into(),
            format!(
                "driver=file,filename={},node-name={file_node}",
                option_value(&options.state_disk_path())
            ),
            "-blockdev".into(),
            format!("driver=qcow2,file={file_node},node-name={}", crate::state::STATE_NODE),
        ]);
    }
    if let Some(user) = &options.user {
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
    validate_vm_name(&options.name).map_err(LaunchError::InvalidName)?;
    if options.memory == 0 || options.memory % (1 << 20) != 0 {
        return Err(LaunchError::InvalidMemory(options.memory));
    }
    for (what, path) in [("kernel", &options.kernel), ("initrd", &options.initrd), ("drive", &options.drive)]
    {
        if let Some(path) = path {
            if !path.exists() {
                return Err(LaunchError::MissingFile { what, path: path.clone() });
            }
        }
    }
    let binary = qemu_binary();
    let version = qemu_version(&binary)?;
    options.run_dir.create()?;
    let run_dir = &options.run_dir;
    let name = &options.name;
    let socket = run_dir.socket_path(name);
    if socket.exists() {
        if answers(&socket) {
            return Err(LaunchError::AlreadyRunning(name.clone()));
        }
        log::info!("removing stale socket {}", socket.display());
        fs::remove_file(&socket)
            .map_err(io_error(format!("cannot remove stale socket {}", socket.display())))?;
    }
    // A stale RAM file may still be mapped by a reader: unlink it rather than let QEMU truncate
    // it in place (which would SIGBUS that reader).
    let ram_path = options.ram_path();
    if ram_path.exists() {
        fs::remove_file(&ram_path)
            .map_err(io_error(format!("cannot remove stale RAM file {}", ram_path.display())))?;
    }
    let mut launched = Launching { options: options.clone(), created_state_disk: false, cgroup: None };
    let mut warnings = Vec::new();
    if options.state_disk {
        if let Err(warning) = launched.prepare_state_disk() {
            warnings.push(warning);
            launched.options.state_disk = false;
        }
    }
    if !options.limits.is_empty() {
        match cgroup::Host::detect()
            .map_err(|err| err.to_string())
            .and_then(|host| host.create(name, &options.limits).map_err(|err| crate::cli::error_chain(&err)))
        {
            Ok(cgroup) => {
                let listing: String =
                    cgroup.dirs().iter().map(|dir| format!("{}\n", dir.display())).collect();
                let file = run_dir.file_path(name, CGROUP_FILE);
                if let Err(source) = fs::write(&file, listing) {
                    cgroup.remove();
                    launched.cleanup();
                    return Err(LaunchError::Io { what: format!("cannot write {}", file.display()), source });
                }
                launched.cgroup = Some(cgroup);
            }
            Err(reason) => warnings.push(format!("resource limits not applied: {reason}")),
        }
    }
    let result = launched.start(&binary, version);
    match result {
        Ok(mut vm) => {
            // Returned, not logged: the caller says them (the CLI prints `warning: ...`).
            for warning in &warnings {
                log::info!("VM {name}: {warning}");
            }
            vm.warnings = warnings;
            Ok(vm)
        }
        Err(err) => {
            launched.cleanup();
            Err(err)
        }
    }
}

/// A launch under way: what to undo when it fails.
struct Launching {
    options: LaunchOptions,
    created_state_disk: bool,
    cgroup: Option<VmCgroup>,
}

impl Launching {
    /// Creates the state disk unless it exists (it keeps saved states across restarts).
    fn prepare_state_disk(&mut self) -> Result<(), String> {
        let path = self.options.state_disk_path();
        if path.exists() {
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
        Ok(())
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

    fn start(&self, binary: &str, version: (u32, u32)) -> Result<LaunchedVm, LaunchError> {
        let options = &self.options;
        let run_dir = &options.run_dir;
        let name = &options.name;
        let socket = run_dir.socket_path(name);
        let log_path = run_dir.file_path(name, "log");
        let log =
            fs::File::create(&log_path).map_err(io_error(format!("cannot create {}", log_path.display())))?;
        let started = Instant::now();
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
        // With -daemonize the process we started exits once the VM is initialised.
        let status = loop {
            if let Some(status) = child.try_wait().map_err(io_error("waiting for QEMU"))? {
                break status;
            }
            if started.elapsed() > options.timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LaunchError::Timeout(options.timeout, "QEMU to daemonize"));
            }
            sleep(Duration::from_millis(20));
        };
        // A QEMU ended by its cgroup's out-of-memory killer is said to be, whatever else failed.
        let or_out_of_memory = |otherwise: LaunchError| match &self.cgroup {
            Some(cgroup) if cgroup.oom_kills() > 0 => {
                cgroup.limits.max_memory.map_or(otherwise, |limit| LaunchError::OutOfMemory { limit })
            }
            _ => otherwise,
        };
        if !status.success() {
            let stderr = fs::read_to_string(&log_path).unwrap_or_default().trim().to_string();
            return Err(or_out_of_memory(LaunchError::QemuFailed { status: status.to_string(), stderr }));
        }
        let pid = read_pid(&run_dir.file_path(name, "pid")).ok_or_else(|| LaunchError::QemuFailed {
            status: status.to_string(),
            stderr: "no pidfile".into(),
        })?;
        let gone = |otherwise: LaunchError| {
            kill_and_wait(pid, Duration::from_millis(100));
            or_out_of_memory(otherwise)
        };
        loop {
            if answers(&socket) {
                break;
            }
            if started.elapsed() > options.timeout || !process_alive(pid) {
                return Err(gone(LaunchError::Timeout(options.timeout, "QMP to answer")));
            }
            sleep(Duration::from_millis(20));
        }
        if let Some(cgroup) = &self.cgroup {
            if !cgroup.holds(pid) {
                return Err(gone(LaunchError::QemuFailed {
                    status: "started".into(),
                    stderr: format!("QEMU pid {pid} is not in its cgroup {:?}", cgroup.dirs()),
                }));
            }
        }
        let startup = started.elapsed();
        let serial = run_dir.file_path(name, "serial");
        let mut boot = None;
        if let Some(text) = &options.wait_for {
            loop {
                let output = fs::read(&serial).unwrap_or_default();
                if output.windows(text.len().max(1)).any(|window| window == text.as_bytes()) {
                    boot = Some(started.elapsed());
                    break;
                }
                if started.elapsed() > options.timeout || !process_alive(pid) {
                    let tail = String::from_utf8_lossy(&output[output.len().saturating_sub(300)..])
                        .trim()
                        .to_string();
                    return Err(gone(LaunchError::NoSerialText {
                        timeout: options.timeout,
                        text: text.clone(),
                        tail,
                    }));
                }
                sleep(Duration::from_millis(50));
            }
        }
        Ok(LaunchedVm {
            name: name.clone(),
            pid,
            socket,
            ram_path: options.ram_path(),
            serial,
            startup,
            boot,
            state_disk: options.state_disk.then(|| options.state_disk_path()),
            cgroup: self.cgroup.clone(),
            warnings: Vec::new(),
        })
    }

    /// Removes what this launch made: socket, pidfile, RAM file, cgroups, and the state disk
    /// if it was created now.
    fn cleanup(&self) {
        let options = &self.options;
        let run_dir = &options.run_dir;
        let mut files = vec![
            run_dir.socket_path(&options.name),
            run_dir.file_path(&options.name, "pid"),
            run_dir.file_path(&options.name, CGROUP_FILE),
            options.ram_path(),
        ];
        if self.created_state_disk {
            files.push(options.state_disk_path());
        }
        for path in files {
            let _ = fs::remove_file(path);
        }
        if let Some(cgroup) = &self.cgroup {
            cgroup.remove();
        }
    }
}

/// The pid in a pidfile.
pub fn read_pid(pidfile: &Path) -> Option<u32> {
    fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

/// Whether process `pid` exists (and is not a zombie of ours).
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether `pid` is a QEMU whose command line names `socket` (guards against pid reuse).
fn is_our_qemu(pid: u32, socket: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let needle = socket.display().to_string();
    cmdline.split(|&b| b == 0).any(|arg| String::from_utf8_lossy(arg).contains(&needle))
}

/// Waits up to `grace` for `pid` to exit, then SIGTERM, then SIGKILL.
fn kill_and_wait(pid: u32, grace: Duration) -> bool {
    let target = Pid::from_raw(pid as i32);
    for signal in [None, Some(Signal::SIGTERM), Some(Signal::SIGKILL)] {
        if let Some(signal) = signal {
            let _ = kill(target, signal);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !process_alive(pid) {
                return true;
            }
            sleep(Duration::from_millis(20));
        }
    }
    !process_alive(pid)
}

/// What `stop` did.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// Whether QEMU exited through QMP `quit` (false: it was signalled or already gone).
    pub graceful: bool,
    /// Files removed.
    pub removed: Vec<PathBuf>,
}

/// Quits VM `name` through QMP, waits for QEMU to exit (signalling its pid if it does not),
/// and removes its RAM file, socket, pidfile and cgroups. Its state disk is kept, so that a VM
/// launched again under the same name can restore its saved states, unless `discard_state`.
///
/// # Errors
///
/// [`VmError::NotFound`] when neither socket nor pidfile exist; I/O errors removing files.
pub fn stop(run_dir: &RunDir, name: &str, discard_state: bool) -> Result<Stopped, LaunchError> {
    let vm = Vm::new(run_dir, name)?;
    let pidfile = run_dir.file_path(name, "pid");
    let socket = run_dir.socket_path(name);
    if !socket.exists() && !pidfile.exists() {
        return Err(
            VmError::NotFound { name: name.to_string(), run_dir: run_dir.path().to_path_buf() }.into()
        );
    }
    let pid = read_pid(&pidfile).filter(|&pid| is_our_qemu(pid, &socket));
    let mut ram_path = None;
    let graceful = match vm.connect() {
        Ok(mut qmp) => {
            ram_path = qmp.get_shared_memory_path().ok();
            match qmp.quit() {
                Ok(()) | Err(QmpError::Closed) => true,
                Err(err) => {
                    log::warn!("VM {name}: quit failed: {err}");
                    false
                }
            }
        }
        Err(err) => {
            log::warn!("{err}; stopping by pid");
            false
        }
    };
    if let Some(pid) = pid {
        let grace = if graceful { Duration::from_secs(10) } else { Duration::from_millis(100) };
        if !kill_and_wait(pid, grace) {
            return Err(LaunchError::Io {
                what: format!("QEMU pid {pid} of VM {name} does not exit"),
                source: io::Error::from(io::ErrorKind::TimedOut),
            });
        }
    }
    // Launched VMs have their RAM under the standard name; remove that too when QMP was gone.
    let ram_path = ram_path.unwrap_or_else(|| Path::new(SHM_DIR).join(format!("{RAM_FILE_PREFIX}{name}")));
    cgroup::remove_dirs(&recorded_cgroups(run_dir, name));
    let cgroup_file = run_dir.file_path(name, CGROUP_FILE);
    let mut removed = Vec::new();
    let mut files = vec![ram_path, socket, pidfile, cgroup_file];
    if discard_state {
        files.push(state_disk_path(run_dir, name));
    }
    for path in files {
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LaunchError::Io { what: format!("cannot remove {}", path.display()), source })
            }
        }
    }
    Ok(Stopped { graceful, removed })
}
