//! One VM: its QMP endpoint, its RAM file and layout, as QEMU reports them.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::guest::Arch;
use crate::name::{NameError, VmName};
use crate::qmp::BackendStorage;
use crate::qmp::{QmpClient, QmpError, RunState, StatusInfo, DEFAULT_TIMEOUT};
use crate::ram::{BridgeError, GuestLayout, RamKind, SharedMemoryBridge, Snapshot, Verdict};
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
    /// The process on the VM's socket is not one this tool trusts (see [`Vm::connect`]).
    #[error("VM {vm}: refusing its QMP peer (pid {pid}, uid {uid}): {reason}")]
    UntrustedPeer {
        /// The VM.
        vm: String,
        /// The peer's pid.
        pid: u32,
        /// The peer's uid.
        uid: u32,
        /// Why it is not trusted.
        reason: String,
    },
    /// The RAM file named by QMP is not one this tool trusts (see [`Vm::open_bridge`]).
    #[error("VM {vm}: refusing {path}: {reason}")]
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
    /// The RAM file: the backend's `mem-path`, QEMU's descriptor of a memfd
    /// (`/proc/PID/fd/N`), or for private RAM the QEMU process's memory (`/proc/PID/mem`).
    pub ram_path: PathBuf,
    /// Where the RAM lives (file, hugetlbfs, memfd, private).
    pub ram_kind: RamKind,
    /// RAM size in bytes, over every backend.
    pub ram_size: u64,
    /// Machine type.
    pub machine: String,
    /// Guest architecture (`query-target`), e.g. `x86_64`, `aarch64`; serialized as QEMU's name.
    pub arch: Arch,
    /// Guest-physical layout.
    pub layout: GuestLayout,
    /// The QEMU process (the QMP peer), which holds the RAM file open.
    pub qemu_pid: u32,
    /// Every backend the guest's RAM is in, in their order in `ram` (the first is `backend`).
    pub backends: Vec<BackendInfo>,
}

impl VmInfo {
    /// How changed pages of this VM's RAM are found on this host
    /// (`tracker::method`).
    pub fn tracking_method(&self) -> crate::ram::tracker::TrackingMethod {
        let on_hugetlbfs = self.backends.iter().any(|backend| backend.kind == RamKind::Hugetlbfs);
        crate::ram::tracker::method(self.qemu_pid, on_hugetlbfs)
    }
}

/// One memory backend of a VM.
#[derive(Debug, Clone, Serialize)]
pub struct BackendInfo {
    /// Its QOM path.
    pub qom_path: String,
    /// Where its RAM lives.
    pub kind: RamKind,
    /// Its file (or QEMU's descriptor of it, or `/proc/PID/mem`).
    pub ram_path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Where its bytes start in `ram`.
    pub offset: u64,
}

impl VmError {
    /// Whether the VM was refused by the trust check (as opposed to unreachable or failing).
    pub fn is_refusal(&self) -> bool {
        matches!(self, VmError::Untrusted { .. } | VmError::UntrustedPeer { .. })
    }
}

/// The process listening on a VM's QMP socket, as the kernel reports it (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its pid.
    pub pid: u32,
    /// Its uid.
    pub uid: u32,
}

impl std::fmt::Display for Peer {
    /// `the QMP peer (pid N, uid N)`, as refusals name it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the QMP peer (pid {}, uid {})", self.pid, self.uid)
    }
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

    /// Opens a QMP connection to a trusted peer. Drop it soon: QEMU 7.2 serves one client at a
    /// time.
    ///
    /// The peer is trusted when it runs as this user or as root (its credentials from
    /// `SO_PEERCRED`), or when it is the QEMU that `qemu-bridge launch` started for this VM
    /// (the pid in the VM's launch record: a QEMU launched with `--user` drops to that user).
    /// A socket planted by anybody else is refused before anything is asked of it.
    ///
    /// # Errors
    ///
    /// [`VmError::Qmp`], [`VmError::UntrustedPeer`].
    pub fn connect(&self) -> Result<QmpClient<UnixStream>, VmError> {
        self.connect_to_peer().map(|(client, _)| client)
    }

    /// [`connect`](Self::connect), and who the trusted peer is.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub fn connect_to_peer(&self) -> Result<(QmpClient<UnixStream>, Peer), VmError> {
        let client = QmpClient::connect(&self.socket, self.timeout).map_err(|err| self.qmp_error(err))?;
        let peer = self.trusted_peer(&client)?;
        Ok((client, peer))
    }

    /// The peer of `qmp`, if it is trusted (see [`connect`](Self::connect)).
    fn trusted_peer(&self, qmp: &QmpClient<UnixStream>) -> Result<Peer, VmError> {
        let credentials =
            nix::sys::socket::getsockopt(qmp.stream(), nix::sys::socket::sockopt::PeerCredentials)
                .map_err(|err| self.qmp_error(QmpError::Io(err.into())))?;
        let peer = Peer { pid: credentials.pid() as u32, uid: credentials.uid() };
        let me = crate::process::effective_uid();
        if peer.uid == me || peer.uid == 0 || self.launched_pid() == Some(peer.pid) {
            return Ok(peer);
        }
        Err(VmError::UntrustedPeer {
            vm: self.name.to_string(),
            pid: peer.pid,
            uid: peer.uid,
            reason: format!("it runs neither as uid {me} nor as root, and qemu-bridge did not launch it"),
        })
    }

    /// Whether something listens on the VM's socket (a dead QEMU leaves a socket that refuses
    /// connections). A non-blocking connect: asks nothing, waits for nothing. A listener that is
    /// busy with another QMP client still accepts the connection into its backlog, so this does
    /// not depend on QEMU's one-client-at-a-time rule.
    pub fn is_listening(&self) -> bool {
        let Ok(socket) = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None) else {
            return false;
        };
        let Ok(address) = socket2::SockAddr::unix(&self.socket) else { return false };
        if socket.set_nonblocking(true).is_err() {
            return false;
        }
        match socket.connect(&address) {
            Ok(()) => true,
            // EAGAIN: the backlog is full, so a listener exists: alive, just busy
            Err(err) => err.kind() == std::io::ErrorKind::WouldBlock,
        }
    }

    /// The peer on the other end of a trusted connection.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub fn peer(&self) -> Result<Peer, VmError> {
        self.connect_to_peer().map(|(_, peer)| peer)
    }

    /// QEMU's pid from this VM's launch record, if qemu-bridge launched it.
    pub fn launched_pid(&self) -> Option<u32> {
        match crate::record::LaunchRecord::read(&self.run_dir, &self.name) {
            Ok(record) => record.and_then(|record| record.pid),
            Err(err) => {
                log::warn!("{}", crate::error::chain(&err));
                None
            }
        }
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

    /// Every vCPU's registers now (one HMP exchange, `info registers -a`).
    ///
    /// # Errors
    ///
    /// QEMU did not answer.
    pub fn vcpu_registers(&self) -> Result<Vec<crate::guest::VcpuRegisters>, VmError> {
        vcpu_registers(|ask| self.with_qmp(ask))
    }

    /// Live `query-status`.
    ///
    /// # Errors
    ///
    /// [`VmError::Qmp`].
    pub fn status(&self) -> Result<StatusInfo, VmError> {
        self.with_qmp(QmpClient::query_status)
    }

    /// Everything QMP says about the VM's RAM and state, over one connection, once the RAM
    /// file it names has passed the trust check (see [`open_bridge`](Self::open_bridge)).
    ///
    /// # Errors
    ///
    /// [`VmError::Qmp`], [`VmError::UntrustedPeer`], [`VmError::Untrusted`], [`VmError::Ram`].
    pub fn info(&self) -> Result<VmInfo, VmError> {
        self.info_and_ram().map(|(info, _)| info)
    }

    /// [`info`](Self::info), and the RAM of every backend opened and verified.
    fn info_and_ram(&self) -> Result<(VmInfo, Vec<OpenRam>), VmError> {
        let (mut qmp, peer) = self.connect_to_peer()?;
        let (mut info, storages) = self.gather(&mut qmp, peer).map_err(|err| self.qmp_error(err))?;
        let mut opened = Vec::with_capacity(storages.len());
        for (backend, storage) in info.backends.iter_mut().zip(storages) {
            let (path, kind, ram) = self.open_backend(peer, storage, backend.size)?;
            backend.ram_path = path;
            backend.kind = kind;
            opened.push(ram);
        }
        if let Some(main) = info.backends.first() {
            info.ram_path = main.ram_path.clone();
            info.ram_kind = main.kind;
        }
        Ok((info, opened))
    }

    /// Opens one backend's RAM after the trust check (see [`open_bridge`](Self::open_bridge)).
    fn open_backend(
        &self,
        peer: Peer,
        storage: BackendStorage,
        size: u64,
    ) -> Result<(PathBuf, RamKind, OpenRam), VmError> {
        Ok(match storage {
            BackendStorage::File(path) => {
                let file = self.open_held_file(peer, &path)?;
                let hugetlbfs = crate::ram::is_hugetlbfs(&file)
                    .map_err(|err| self.ram_error(BridgeError::io("stat the file system of")(err)))?;
                (path, if hugetlbfs { RamKind::Hugetlbfs } else { RamKind::File }, OpenRam::File(file))
            }
            BackendStorage::Memfd => {
                let (path, file) = self.open_memfd(peer, size)?;
                (path, RamKind::Memfd, OpenRam::File(file))
            }
            BackendStorage::Anonymous => {
                let address = self.find_private_ram(peer, size)?;
                let path = PathBuf::from(format!("/proc/{}/mem", peer.pid));
                (path, RamKind::Private, OpenRam::Process { pid: peer.pid, address })
            }
        })
    }

    /// What QMP says, and where each backend the guest uses keeps its RAM. The backends are
    /// those QEMU's memory map places in the guest's address space (the machine's, NUMA nodes',
    /// DIMMs'), in the order of their lowest guest-physical address, which is their order in
    /// `ram`; without a map, the main backend alone with the x86 rule.
    fn gather(
        &self,
        qmp: &mut QmpClient<UnixStream>,
        peer: Peer,
    ) -> Result<(VmInfo, Vec<BackendStorage>), QmpError> {
        let status = qmp.query_status()?;
        let machine = qmp.machine_type()?;
        let arch = qmp.target_arch()?;
        let backends = qmp.ram_backends()?;
        let names: Vec<(&str, u64)> = backends.iter().map(|backend| (backend.id(), backend.size)).collect();
        let placement = match qmp.memory_map()? {
            Some(text) => crate::ram::mtree::place(&text, &names),
            None => None,
        };
        let (placed, layout): (Vec<&crate::qmp::RamBackend>, GuestLayout) = match placement {
            Some(placement) => {
                (placement.order.iter().map(|&index| &backends[index]).collect(), placement.layout)
            }
            None => {
                log::info!("VM {}: no usable memory map; the main backend alone, by the x86 rule", self.name);
                let main = crate::qmp::RamBackend::main(&backends).ok_or(QmpError::NoRamBackend)?;
                (vec![main], qmp.rule_layout(main.size)?)
            }
        };
        let mut offset = 0;
        let infos = placed
            .iter()
            .map(|backend| {
                let info = BackendInfo {
                    qom_path: backend.qom_path.clone(),
                    kind: RamKind::Private,
                    ram_path: PathBuf::new(),
                    size: backend.size,
                    offset,
                };
                offset += backend.size;
                info
            })
            .collect();
        let storages = placed.iter().map(|backend| backend.storage.clone()).collect();
        let info = VmInfo {
            name: self.name.clone(),
            status: status.status,
            running: status.running,
            backend: placed[0].qom_path.clone(),
            ram_path: PathBuf::new(),
            ram_kind: RamKind::Private,
            ram_size: offset,
            machine,
            arch,
            layout,
            qemu_pid: peer.pid,
            backends: infos,
        };
        Ok((info, storages))
    }

    /// The memfd the peer holds for its RAM: among its open files, the one named `memfd:...`
    /// of the backend's size, opened read-only through `/proc/PID/fd/N` (a file QEMU holds, by
    /// construction). Several of that size: refused, as it cannot be told which.
    fn open_memfd(&self, peer: Peer, size: u64) -> Result<(PathBuf, std::fs::File), VmError> {
        use std::os::unix::fs::OpenOptionsExt;
        let fd_dir = PathBuf::from(format!("/proc/{}/fd", peer.pid));
        let refuse =
            |reason: String| VmError::Untrusted { vm: self.name.to_string(), path: fd_dir.clone(), reason };
        let who = peer;
        let entries = std::fs::read_dir(&fd_dir)
            .map_err(|err| refuse(format!("cannot see the files of {who}: {err}")))?;
        let candidates: Vec<PathBuf> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|fd| {
                std::fs::read_link(fd).is_ok_and(|target| target.to_string_lossy().starts_with("/memfd:"))
            })
            .filter(|fd| std::fs::metadata(fd).is_ok_and(|m| m.is_file() && m.len() == size))
            .collect();
        let path = match candidates.as_slice() {
            [only] => only.clone(),
            [] => return Err(refuse(format!("{who} holds no memfd of {size} bytes"))),
            _ => {
                return Err(refuse(format!(
                    "{who} holds {} memfds of {size} bytes: cannot tell which is RAM",
                    candidates.len()
                )))
            }
        };
        let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC).open(&path).map_err(
            |err| match err.kind() {
                std::io::ErrorKind::PermissionDenied => self.ram_error(BridgeError::PermissionDenied),
                _ => self.ram_error(BridgeError::io("open")(err)),
            },
        )?;
        Ok((path, file))
    }

    /// Where private RAM of `size` bytes sits in the peer's address space: its one anonymous
    /// read-write mapping of exactly that size that QEMU marked as guest RAM (`dc`: not copied
    /// on fork, as QEMU does with RAM blocks), from `/proc/PID/smaps`.
    fn find_private_ram(&self, peer: Peer, size: u64) -> Result<usize, VmError> {
        let smaps = PathBuf::from(format!("/proc/{}/smaps", peer.pid));
        let refuse =
            |reason: String| VmError::Untrusted { vm: self.name.to_string(), path: smaps.clone(), reason };
        let who = peer;
        let text = std::fs::read_to_string(&smaps)
            .map_err(|err| refuse(format!("cannot read the memory map of {who}: {err}")))?;
        let candidates = private_ram_candidates(&text, size);
        match candidates.as_slice() {
            [only] => Ok(*only),
            [] => Err(refuse(format!("{who} has no anonymous mapping of {size} bytes for guest RAM"))),
            _ => Err(refuse(format!(
                "{who} has {} anonymous mappings of {size} bytes: cannot tell which is RAM",
                candidates.len()
            ))),
        }
    }

    /// Opens `path` (never through a symbolic link) and checks that this very file, by device
    /// and inode of the open descriptor, is one the peer holds open: what is checked is what
    /// gets mapped, with no window for a swapped path.
    fn open_held_file(&self, peer: Peer, path: &std::path::Path) -> Result<std::fs::File, VmError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let refuse = |reason: String| VmError::Untrusted {
            vm: self.name.to_string(),
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|err| match err.kind() {
                _ if err.raw_os_error() == Some(libc::ELOOP) => refuse("it is a symbolic link".into()),
                std::io::ErrorKind::NotFound => {
                    self.ram_error(BridgeError::FileNotFound(path.display().to_string()))
                }
                std::io::ErrorKind::PermissionDenied => self.ram_error(BridgeError::PermissionDenied),
                _ => self.ram_error(BridgeError::io("open")(err)),
            })?;
        let target = file.metadata().map_err(|err| self.ram_error(BridgeError::io("stat")(err)))?;
        if !target.is_file() {
            return Err(refuse("it is not a regular file".into()));
        }
        let who = peer;
        let fds = std::fs::read_dir(format!("/proc/{}/fd", peer.pid))
            .map_err(|err| refuse(format!("cannot see the files of {who}: {err}")))?;
        let held = fds.flatten().any(|fd| {
            std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
        });
        if !held {
            return Err(refuse(format!("{who} does not hold it open")));
        }
        Ok(file)
    }

    /// `query-memdev` with each file backend's `mem-path` added, as QMP reports them.
    ///
    /// # Errors
    ///
    /// [`VmError::Qmp`].
    pub fn memdev_json(&self) -> Result<Value, VmError> {
        let backends = self.with_qmp(memdev_with_paths)?;
        Ok(Value::Array(backends.into_iter().map(|backend| Value::Object(backend.fields)).collect()))
    }

    /// Maps the VM's RAM file (whatever QMP says it is) with the VM's guest-physical layout,
    /// once it passed the trust check: the peer is trusted (see [`connect`](Self::connect)),
    /// the file is opened once without following a symbolic link, the peer holds that very
    /// file open, and that same descriptor is mapped.
    ///
    /// # Errors
    ///
    /// [`VmError::Qmp`], [`VmError::UntrustedPeer`], [`VmError::Untrusted`], [`VmError::Ram`].
    pub fn open_bridge(&self) -> Result<(SharedMemoryBridge, VmInfo), VmError> {
        let (info, opened) = self.info_and_ram()?;
        let mut parts = Vec::with_capacity(opened.len());
        for (ram, backend) in opened.into_iter().zip(&info.backends) {
            let mapping = match ram {
                OpenRam::File(file) => crate::ram::Mapping::from_file(file, &backend.ram_path),
                OpenRam::Process { pid, address } => {
                    crate::ram::Mapping::of_process(pid, address, backend.size as usize, &backend.ram_path)
                }
            };
            parts.push(mapping.map_err(|err| self.ram_error(err))?);
        }
        let bridge = SharedMemoryBridge::of_parts(self.name.as_str(), parts, &info.ram_path);
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

/// A VM's RAM, opened and verified, ready to map or read.
enum OpenRam {
    /// A file or memfd the peer holds.
    File(std::fs::File),
    /// Private RAM at `address` in process `pid`.
    Process { pid: u32, address: usize },
}

/// Start addresses of the anonymous read-write mappings of exactly `size` bytes that QEMU marked
/// as guest RAM (`dc` in VmFlags), in the text of `/proc/PID/smaps`.
fn private_ram_candidates(smaps: &str, size: u64) -> Vec<usize> {
    let mut candidates = Vec::new();
    let mut current: Option<(usize, bool)> = None;
    let mut finish = |current: &mut Option<(usize, bool)>, flags: &str| {
        if let Some((start, true)) = current.take() {
            if flags.split_whitespace().any(|flag| flag == "dc") {
                candidates.push(start);
            }
        }
    };
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            finish(&mut current, flags);
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
            continue;
        };
        // an anonymous mapping: no path after offset, device and inode
        let anonymous = fields.nth(2) == Some("0") && fields.next().is_none();
        current = Some((start, anonymous && perms.starts_with("rw-p") && (end - start) as u64 == size));
    }
    candidates
}

/// `query-memdev` with each file backend's `mem-path` and each backend's `qom-type` added to
/// its fields.
///
/// # Errors
///
/// As [`QmpClient::query_memdev`].
pub fn memdev_with_paths<S: std::io::Read + std::io::Write>(
    qmp: &mut QmpClient<S>,
) -> Result<Vec<crate::qmp::Memdev>, QmpError> {
    let mut backends = qmp.query_memdev()?;
    for backend in &mut backends {
        let qom_path = backend.qom_path();
        if let Some(path) = qmp.mem_path(&qom_path)? {
            backend.fields.insert("mem-path".into(), Value::String(path.display().to_string()));
        }
        if let Some(kind) = qmp.optional_property(&qom_path, "type")? {
            backend.fields.insert("qom-type".into(), kind);
        }
    }
    Ok(backends)
}

/// Every vCPU's registers now, asked through `ask` (a QMP exchange of the caller's: a fresh
/// connection or a cached one).
///
/// # Errors
///
/// What `ask` returns.
pub fn vcpu_registers(
    ask: impl FnOnce(&dyn Fn(&mut QmpClient<UnixStream>) -> Result<String, QmpError>) -> Result<String, VmError>,
) -> Result<Vec<crate::guest::VcpuRegisters>, VmError> {
    ask(&|qmp| qmp.human_monitor_command("info registers -a"))
        .map(|text| crate::guest::parse_info_registers(&text))
}

/// The notes of the vCPUs as QEMU reports them now, as the guest's architecture's cores carry
/// them (`ArchInfo::core_notes`; x86_64: every vCPU's
/// `NT_PRSTATUS`, then every vCPU's `QEMU` note, in the order of QEMU's own dump). The cores of
/// other architectures carry none, and QEMU is not asked. A monitor that fails gives none,
/// with a log line.
pub fn vcpu_notes_now(
    info: &VmInfo,
    ask: impl FnOnce(&dyn Fn(&mut QmpClient<UnixStream>) -> Result<String, QmpError>) -> Result<String, VmError>,
) -> Vec<u8> {
    let Some(core_notes) = info.arch.info().core_notes else {
        return Vec::new();
    };
    match vcpu_registers(ask) {
        Ok(vcpus) => core_notes(&vcpus),
        Err(err) => {
            log::warn!("no vCPU registers in the core of VM {}: {}", info.name, crate::error::chain(&err));
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from QEMU 7.2 with `-m 64M` and no memory backend option (trimmed).
    const SMAPS: &str = "\
55d1c0a00000-55d1c0c00000 rw-p 00000000 00:00 0                          [heap]
Size:               2048 kB
VmFlags: rd wr mr mw me ac
7fbde8021000-7fbdec000000 ---p 00000000 00:00 0
Size:              65404 kB
VmFlags: mr mw me nr
7fbdefe00000-7fbdf3e00000 rw-p 00000000 00:00 0
Size:              65536 kB
THPeligible:           1
VmFlags: rd wr mr mw me dc ac hg mg
7fbdf4000000-7fbdf8000000 rw-p 00000000 00:00 0
Size:              65536 kB
VmFlags: rd wr mr mw me ac
7fbe00000000-7fbe04000000 rw-s 00000000 00:01 202                        /memfd:memory-backend-memfd (deleted)
Size:              65536 kB
VmFlags: rd wr sh mr mw me ms dc sd
";

    #[test]
    fn private_ram_is_the_anonymous_mapping_qemu_marked() {
        assert_eq!(private_ram_candidates(SMAPS, 64 << 20), vec![0x7fbd_efe0_0000]);
        assert_eq!(private_ram_candidates(SMAPS, 32 << 20), Vec::<usize>::new());
    }
}
