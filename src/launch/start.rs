//! Starting QEMU: making way for the launch, the state disk and the cgroup, spawning the daemon,
//! waiting for QMP (and the serial console), and undoing all of it when the launch fails.

use std::fs;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::args::command_line;
use super::{answers, io_error, is_our_qemu, LaunchError, LaunchOptions, LaunchedVm, Plan, Waited};
use crate::cgroup::{self, VmCgroup};
use crate::poll;
use crate::process;
use crate::record::{FileRole, LaunchRecord};
use crate::run_dir::VmPaths;
use crate::vm::Vm;

/// Environment variable naming the QEMU binary (default `qemu-system-x86_64`).
pub const QEMU_ENV: &str = "QEMU_BRIDGE_QEMU";

/// Environment variable naming `qemu-img` (default `qemu-img`), used to create state disks.
pub const QEMU_IMG_ENV: &str = "QEMU_BRIDGE_QEMU_IMG";

/// Joins the cgroups named before `--`, then becomes the command after it. A shell rather than
/// a `pre_exec` hook (which Rust marks as needing a promise of the caller, allowed only in the
/// RAM mapping module), so that QEMU is in its cgroup from its first allocation.
const JOIN_CGROUPS_SCRIPT: &str =
    r#"while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@""#;

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

/// Makes way for a new launch under a name used before. A socket that answers means the name
/// is taken. What an earlier launch recorded (its QEMU gone) is removed, but for the state
/// disk, which keeps its saved states; a RAM file that no launch of ours made is refused, never
/// deleted. Returns the record to start from.
pub(super) fn clear_leftovers(options: &LaunchOptions, paths: &VmPaths) -> Result<LaunchRecord, LaunchError> {
    let socket = &paths.socket;
    if socket.exists() && answers(socket) {
        return Err(LaunchError::AlreadyRunning(options.name.to_string()));
    }
    let mut record = match LaunchRecord::read(&options.run_dir, &options.name) {
        Ok(record) => record.unwrap_or_default(),
        Err(err) => {
            log::warn!("{}", crate::error::chain(&err));
            LaunchRecord::default()
        }
    };
    if let Some(pid) = record.pid.filter(|&pid| is_our_qemu(pid, socket)) {
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
    if fs::symlink_metadata(&paths.ram).is_ok() {
        return Err(LaunchError::ForeignRamFile(paths.ram.clone()));
    }
    Ok(record)
}

/// Why limits were not applied (the launch goes on without them).
struct LimitsNotApplied(String);

/// A launch under way: what to undo when it fails.
pub(super) struct Launching<'a> {
    /// What was asked.
    options: &'a LaunchOptions,
    /// What this launch decided.
    plan: Plan,
    /// What this launch made so far (and a state disk an earlier launch made).
    record: LaunchRecord,
    created_state_disk: bool,
    cgroup: Option<VmCgroup>,
}

impl<'a> Launching<'a> {
    /// A launch of `options` as `plan` decided, from the `record` that [`clear_leftovers`] left.
    pub(super) fn new(options: &'a LaunchOptions, plan: Plan, record: LaunchRecord) -> Self {
        Self { options, plan, record, created_state_disk: false, cgroup: None }
    }

    /// Makes the state disk and the cgroup asked for. Neither is worth failing the launch
    /// for: what cannot be had is left out of the plan and said in the warnings returned.
    pub(super) fn prepare(&mut self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.plan.state_disk.is_some() {
            if let Err(warning) = self.prepare_state_disk() {
                warnings.push(warning);
                self.plan.state_disk = None;
            }
        }
        if !self.options.limits.is_empty() {
            if let Err(LimitsNotApplied(reason)) = self.prepare_cgroup() {
                warnings.push(format!("resource limits not applied: {reason}"));
            }
        }
        warnings
    }

    /// Creates the state disk unless it exists (it keeps saved states across restarts).
    fn prepare_state_disk(&mut self) -> Result<(), String> {
        let path = &self.plan.paths.state_disk;
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
            .arg(path)
            .arg("1M")
            .stdin(Stdio::null())
            .output()
            .map_err(|err| {
                format!("no state disk, so the VM's state cannot be saved: cannot run {qemu_img} ({err}; apt-get install qemu-utils)")
            })?;
        if !output.status.success() {
            let _ = fs::remove_file(path);
            return Err(format!(
                "no state disk, so the VM's state cannot be saved: {qemu_img} create {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        self.created_state_disk = true;
        self.record
            .add(FileRole::StateDisk, path)
            .map_err(|err| format!("cannot examine {}: {err}", path.display()))
    }

    /// Makes the VM's cgroup and records its directories for `stop`.
    fn prepare_cgroup(&mut self) -> Result<(), LimitsNotApplied> {
        let options = self.options;
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
    pub(super) fn save_record(&self) -> Result<(), LaunchError> {
        let options = self.options;
        self.record
            .write(&options.run_dir, &options.name)
            .map_err(|source| LaunchError::Record { path: self.plan.paths.record.clone(), source })
    }

    /// Records QEMU's pid and the files it made.
    fn record_qemu(&mut self, pid: u32) -> Result<(), LaunchError> {
        let paths = &self.plan.paths;
        self.record.pid = Some(pid);
        let files = [
            (FileRole::Ram, &paths.ram),
            (FileRole::Socket, &paths.socket),
            (FileRole::Pidfile, &paths.pidfile),
            (FileRole::Serial, &paths.serial),
            (FileRole::Log, &paths.log),
        ];
        for (role, path) in files {
            if let Err(err) = self.record.add(role, path) {
                // QEMU made no such file (a serial console elsewhere, say): nothing to remove
                log::debug!("not recording {}: {err}", path.display());
            }
        }
        self.save_record()
    }

    fn command(&self, binary: &str, version: (u32, u32)) -> Command {
        let args = command_line(self.options, &self.plan, version);
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

    pub(super) fn start(&mut self, binary: &str, version: (u32, u32)) -> Result<LaunchedVm, LaunchError> {
        let started = Instant::now();
        let pid = self.spawn_daemon(binary, version, started)?;
        if let Err(err) = self.record_qemu(pid) {
            return Err(self.abandon(pid, err));
        }
        let options = self.options;
        let paths = &self.plan.paths;
        let up = poll::wait_for(options.timeout.saturating_sub(started.elapsed()), || {
            answers(&paths.socket) || !process::alive(pid)
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
        let boot = match &options.wait_for {
            Some(text) => Some(self.wait_for_serial(pid, &paths.serial, text, started)?),
            None => None,
        };
        Ok(LaunchedVm {
            vm: Vm::named(&options.run_dir, options.name.clone()),
            pid,
            ram_path: paths.ram.clone(),
            serial: paths.serial.clone(),
            startup,
            boot,
            state_disk: self.plan.state_disk.clone(),
            cgroup: self.cgroup.clone(),
            user: self.plan.user.clone(),
            warnings: Vec::new(),
        })
    }

    /// Runs QEMU with `-daemonize` and waits for the first process to exit, which it does once
    /// the VM is set up; returns the daemon's pid from the pidfile.
    fn spawn_daemon(&self, binary: &str, version: (u32, u32), started: Instant) -> Result<u32, LaunchError> {
        let options = self.options;
        let log_path = &self.plan.paths.log;
        let log =
            fs::File::create(log_path).map_err(io_error(format!("cannot create {}", log_path.display())))?;
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
            let stderr = fs::read_to_string(log_path).unwrap_or_default().trim().to_string();
            return Err(self.or_out_of_memory(LaunchError::QemuFailed { status, stderr }));
        }
        let pidfile = &self.plan.paths.pidfile;
        process::read_pid(pidfile).ok_or_else(|| LaunchError::NoPidfile(pidfile.clone()))
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
    pub(super) fn cleanup(&mut self) {
        let options = self.options;
        let paths = &self.plan.paths;
        let mut files = vec![&paths.socket, &paths.pidfile, &paths.ram];
        if self.created_state_disk {
            files.push(&paths.state_disk);
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
