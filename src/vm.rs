//! One VM: its QMP endpoint, its RAM file and layout, as QEMU reports them.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::name::{NameError, VmName};
use crate::qmp::{QmpClient, QmpError, RunState, StatusInfo, DEFAULT_TIMEOUT};
use crate::ram::{BridgeError, GuestLayout, SharedMemoryBridge, Snapshot, Verdict};
use crate::run_dir::RunDir;

/// Errors about one VM, naming it.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The name cannot be a VM name.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// No socket for it in the run directory.
    #[error("no VM named {name:?} in {run_dir} (no socket {name}.qmp)")]
    NotFound {
        /// The name.
        name: String,
        /// The run directory.
        run_dir: PathBuf,
    },
    /// Talking to its QMP socket failed.
    #[error("VM {vm}")]
    Qmp {
        /// The VM.
        vm: String,
        /// Why.
        #[source]
        source: QmpError,
    },
    /// The RAM file named by QMP is not one this tool trusts (see [`Vm::info`]).
    #[error("VM {vm}: refusing RAM file {path}: {reason}")]
    Untrusted {
        /// The VM.
        vm: String,
        /// The file QMP named.
        path: PathBuf,
        /// Why it is not trusted.
        reason: String,
    },
    /// Reading its RAM failed.
    #[error("VM {vm}")]
    Ram {
        /// The VM.
        vm: String,
        /// Why.
        #[source]
        source: BridgeError,
    },
}

/// What QMP reports about a VM, gathered over one connection.
#[derive(Debug, Clone, Serialize)]
pub struct VmInfo {
    /// The VM's name (socket stem).
    pub name: VmName,
    /// Run state.
    pub status: RunState,
    /// Whether vCPUs run.
    pub running: bool,
    /// QOM path of the RAM backend.
    pub backend: String,
    /// The RAM file.
    pub ram_path: PathBuf,
    /// RAM size in bytes.
    pub ram_size: u64,
    /// Machine type.
    pub machine: String,
    /// Guest-physical layout.
    pub layout: GuestLayout,
}

/// A VM reachable through `<run-dir>/<name>.qmp`: the handle every verb, the launcher and the
/// mount use to talk to one VM.
#[derive(Debug, Clone)]
pub struct Vm {
    name: VmName,
    run_dir: RunDir,
    socket: PathBuf,
    timeout: Duration,
}

impl Vm {
    /// The VM `name` of `run_dir`. Does not connect.
    ///
    /// # Errors
    ///
    /// [`VmError::InvalidName`] when `name` is not a valid [`VmName`].
    pub fn new(run_dir: &RunDir, name: &str) -> Result<Self, VmError> {
        Ok(Self::named(run_dir, VmName::new(name)?))
    }

    /// The VM `name` of `run_dir`, for a name already checked. Does not connect.
    pub fn named(run_dir: &RunDir, name: VmName) -> Self {
        let socket = run_dir.socket_path(&name);
        Self { name, run_dir: run_dir.clone(), socket, timeout: DEFAULT_TIMEOUT }
    }

    /// Like [`new`](Self::new), and fails with [`VmError::NotFound`] when the socket is absent.
    ///
    /// # Errors
    ///
    /// [`VmError::InvalidName`], [`VmError::NotFound`].
    pub fn existing(run_dir: &RunDir, name: &str) -> Result<Self, VmError> {
        let vm = Self::new(run_dir, name)?;
        if !vm.socket.exists() {
            return Err(vm.not_found());
        }
        Ok(vm)
    }

    /// Sets the timeout for connecting and for each QMP exchange (default 2 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The VM's name.
    pub fn name(&self) -> &VmName {
        &self.name
    }

    /// Its run directory.
    pub fn run_dir(&self) -> &RunDir {
        &self.run_dir
    }

    /// Path of its file with `extension` in the run directory (`pid`, `serial`, `log`...).
    pub fn file_path(&self, extension: &str) -> PathBuf {
        self.run_dir.file_path(&self.name, extension)
    }

    /// Its QMP socket.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// [`VmError::NotFound`] for this VM.
    pub fn not_found(&self) -> VmError {
        VmError::NotFound { name: self.name.to_string(), run_dir: self.run_dir.path().to_path_buf() }
    }

    /// [`VmError::Qmp`] for this VM.
    pub fn qmp_error(&self, source: QmpError) -> VmError {
        VmError::Qmp { vm: self.name.to_string(), source }
    }

    fn ram_error(&self, source: BridgeError) -> VmError {
        VmError::Ram { vm: self.name.to_string(), source }
    }

    /// Opens a QMP connection. Drop it soon: QEMU 7.2 serves one client at a time.
    ///
    /// # Errors
    ///
    /// [`VmError::Qmp`].
    pub fn connect(&self) -> Result<QmpClient<UnixStream>, VmError> {
        QmpClient::connect(&self.socket, self.timeout).map_err(|err| self.qmp_error(err))
    }

    /// Runs `ask` on a fresh connection and closes it.
    ///
    /// # Errors
    ///
    /// [`VmError::Qmp`].
    pub fn with_qmp<T>(
        &self,
        ask: impl FnOnce(&mut QmpClient<UnixStream>) -> Result<T, QmpError>,
    ) -> Result<T, VmError> {
        let mut client = self.connect()?;
        ask(&mut client).map_err(|err| self.qmp_error(err))
    }

    /// Live `query-status`.
    ///
    /// # Errors
    ///
    /// [`VmError::Qmp`].
    pub fn status(&self) -> Result<StatusInfo, VmError> {
        self.with_qmp(QmpClient::query_status)
    }

    /// Everything QMP says about the VM's RAM and state, over one connection.
    ///
    /// The QMP peer names the file to map, so it is checked before anyone maps it: the process
    /// listening on the socket must run as this user or root (its credentials from
    /// `SO_PEERCRED`), and it must hold the RAM file open (QEMU keeps its backend file open).
    /// A socket planted by someone else cannot point qemu-bridge at an arbitrary file.
    ///
    /// # Errors
    ///
    /// [`VmError::Qmp`], [`VmError::Untrusted`].
    pub fn info(&self) -> Result<VmInfo, VmError> {
        let mut qmp = self.connect()?;
        let info = self.gather(&mut qmp).map_err(|err| self.qmp_error(err))?;
        self.verify_peer_holds(&qmp, &info.ram_path)?;
        Ok(info)
    }

    fn gather(&self, qmp: &mut QmpClient<UnixStream>) -> Result<VmInfo, QmpError> {
        let status = qmp.query_status()?;
        let (backend, ram_path) = qmp.shared_memory_backend()?;
        let ram_size = qmp.backend_size(&backend)?;
        let machine = qmp.machine_type()?;
        let layout = qmp.layout(ram_size)?;
        Ok(VmInfo {
            name: self.name.clone(),
            status: status.status,
            running: status.running,
            backend,
            ram_path,
            ram_size,
            machine,
            layout,
        })
    }

    fn verify_peer_holds(
        &self,
        qmp: &QmpClient<UnixStream>,
        ram_path: &std::path::Path,
    ) -> Result<(), VmError> {
        use std::os::unix::fs::MetadataExt;
        let untrusted = |reason: String| VmError::Untrusted {
            vm: self.name.to_string(),
            path: ram_path.to_path_buf(),
            reason,
        };
        let credentials =
            nix::sys::socket::getsockopt(qmp.stream(), nix::sys::socket::sockopt::PeerCredentials)
                .map_err(|err| untrusted(format!("cannot identify the QMP peer: {err}")))?;
        let me = crate::process::effective_uid();
        if credentials.uid() != me && credentials.uid() != 0 {
            return Err(untrusted(format!(
                "the QMP peer runs as uid {}, not {me} or root",
                credentials.uid()
            )));
        }
        let target = std::fs::metadata(ram_path).map_err(|err| untrusted(err.to_string()))?;
        if !target.is_file() {
            return Err(untrusted("not a regular file".into()));
        }
        let fds = std::fs::read_dir(format!("/proc/{}/fd", credentials.pid()))
            .map_err(|err| untrusted(format!("cannot inspect QMP peer pid {}: {err}", credentials.pid())))?;
        let held = fds.flatten().any(|fd| {
            std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
        });
        if !held {
            return Err(untrusted(format!("QMP peer pid {} does not have it open", credentials.pid())));
        }
        Ok(())
    }

    /// `query-memdev` with each file backend's `mem-path` added, as QMP reports them.
    ///
    /// # Errors
    ///
    /// [`VmError::Qmp`].
    pub fn memdev_json(&self) -> Result<Value, VmError> {
        self.with_qmp(memdev_with_paths)
    }

    /// Maps the VM's RAM file (whatever QMP says it is) with the VM's guest-physical layout.
    ///
    /// # Errors
    ///
    /// [`VmError::Qmp`] and [`VmError::Ram`].
    pub fn open_bridge(&self) -> Result<(SharedMemoryBridge, VmInfo), VmError> {
        let info = self.info()?;
        let bridge = SharedMemoryBridge::open(self.name.as_str(), &info.ram_path)
            .map_err(|err| self.ram_error(err))?;
        let bridge = match bridge.with_layout(info.layout.clone()) {
            Ok(bridge) => bridge,
            Err(err) => return Err(self.ram_error(err)),
        };
        Ok((bridge, info))
    }

    /// An exact snapshot: pauses the VM (`stop`), copies all RAM, and resumes it (`cont`) only
    /// if it was running before, also when the copy fails.
    ///
    /// # Errors
    ///
    /// [`VmError::Qmp`] and [`VmError::Ram`].
    pub fn paused_snapshot(&self, bridge: &SharedMemoryBridge) -> Result<Snapshot, VmError> {
        let mut qmp = self.connect()?;
        let was_running = qmp.query_status().map_err(|err| self.qmp_error(err))?.running;
        if was_running {
            qmp.stop().map_err(|err| self.qmp_error(err))?;
        }
        let copy = bridge.try_snapshot();
        if was_running {
            qmp.cont().map_err(|err| self.qmp_error(err))?;
        }
        let data = copy.map_err(|err| self.ram_error(err))?;
        Ok(Snapshot { data, verdict: Verdict::Paused, attempts: 1, torn_pages: 0, recopied_pages: 0 })
    }
}

/// `query-memdev` with each file backend's `mem-path` added.
///
/// # Errors
///
/// As [`QmpClient::execute`].
pub fn memdev_with_paths<S: std::io::Read + std::io::Write>(
    qmp: &mut QmpClient<S>,
) -> Result<Value, QmpError> {
    let mut backends = qmp.query_memdev()?;
    for backend in &mut backends {
        let Some(id) = backend.get("id").and_then(Value::as_str).map(str::to_string) else { continue };
        if let Some(path) = qmp.mem_path(&format!("/objects/{id}"))? {
            backend["mem-path"] = Value::String(path.display().to_string());
        }
    }
    Ok(Value::Array(backends))
}
