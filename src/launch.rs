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

use crate::discovery::{RunDir, RunDirError};
use crate::qmp::{QmpClient, QmpError};
use crate::ram::{validate_vm_name, BridgeError, RAM_FILE_PREFIX, SHM_DIR};
use crate::vm::{Vm, VmError};

/// Environment variable naming the QEMU binary (default `qemu-system-x86_64`).
pub const QEMU_ENV: &str = "QEMU_BRIDGE_QEMU";

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
        }
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
            options.ram_path().display(),
            options.memory
        ),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", run_dir.socket_path(name).display()),
        "-daemonize".into(),
        "-pidfile".into(),
        run_dir.file_path(name, "pid").display().to_string(),
        "-display".into(),
        "none".into(),
        "-nodefaults".into(),
        "-serial".into(),
        format!("file:{}", run_dir.file_path(name, "serial").display()),
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
        args.extend(["-drive".into(), format!("file={},format=raw", drive.display())]);
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
    let log_path = run_dir.file_path(name, "log");
    let log =
        fs::File::create(&log_path).map_err(io_error(format!("cannot create {}", log_path.display())))?;
    let started = Instant::now();
    let mut child = Command::new(&binary)
        .args(qemu_args(options, version))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => LaunchError::QemuMissing(binary.clone()),
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
            cleanup_files(options);
            return Err(LaunchError::Timeout(options.timeout, "QEMU to daemonize"));
        }
        sleep(Duration::from_millis(20));
    };
    if !status.success() {
        let stderr = fs::read_to_string(&log_path).unwrap_or_default().trim().to_string();
        cleanup_files(options);
        return Err(LaunchError::QemuFailed { status: status.to_string(), stderr });
    }
    let pid = read_pid(&run_dir.file_path(name, "pid"))
        .ok_or_else(|| LaunchError::QemuFailed { status: status.to_string(), stderr: "no pidfile".into() })?;
    loop {
        if answers(&socket) {
            break;
        }
        if started.elapsed() > options.timeout {
            kill_and_wait(pid, Duration::from_secs(5));
            cleanup_files(options);
            return Err(LaunchError::Timeout(options.timeout, "QMP to answer"));
        }
        sleep(Duration::from_millis(20));
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
                kill_and_wait(pid, Duration::from_millis(100));
                cleanup_files(options);
                let tail =
                    String::from_utf8_lossy(&output[output.len().saturating_sub(300)..]).trim().to_string();
                return Err(LaunchError::NoSerialText { timeout: options.timeout, text: text.clone(), tail });
            }
            sleep(Duration::from_millis(50));
        }
    }
    Ok(LaunchedVm { name: name.clone(), pid, socket, ram_path, serial, startup, boot })
}

fn cleanup_files(options: &LaunchOptions) {
    let run_dir = &options.run_dir;
    for path in
        [run_dir.socket_path(&options.name), run_dir.file_path(&options.name, "pid"), options.ram_path()]
    {
        let _ = fs::remove_file(path);
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
/// and removes its RAM file, socket and pidfile.
///
/// # Errors
///
/// [`VmError::NotFound`] when neither socket nor pidfile exist; I/O errors removing files.
pub fn stop(run_dir: &RunDir, name: &str) -> Result<Stopped, LaunchError> {
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
    let mut removed = Vec::new();
    for path in [ram_path, socket, pidfile] {
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
