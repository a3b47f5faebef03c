//! The mount's view of the run directory: which VMs are alive, each with its RAM mapped once.
//!
//! Every VM found alive becomes a [`MountedVm`] with inode numbers of its own. A VM restarted
//! under the same name (a new socket file) is a new instance: handles opened on the old one keep
//! the old mapping, new opens see the new RAM. A VM that dies is dropped, which unmaps its RAM
//! (so tmpfs can free a deleted RAM file) once no open handle holds it.
//!
//! `ls` (readdir) never waits for QMP: it answers from what is known, and new sockets are probed
//! in the background, in parallel. A lookup by name probes that one VM at once. A socket that is
//! dead, hangs or speaks garbage never blocks a caller for longer than the probe timeout, and
//! is not asked again for a while after it failed.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use std::os::unix::net::UnixStream;

use crate::name::VmName;
use crate::qmp::{QmpClient, QmpError};
use crate::ram::views::{elf_machine, Core, Physical};
use crate::ram::SharedMemoryBridge;
use crate::run_dir::RunDir;
use crate::vm::{Vm, VmError, VmInfo};

/// Time allowed for the QMP exchanges that admit a new VM.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// A live VM is re-checked (socket connect) at most this often.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(500);
/// A socket that failed to answer is not asked again before this.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(3);
/// A cached QMP connection is closed after this long unused ...
const QMP_IDLE: Duration = Duration::from_millis(100);
/// ... and after this long in all, so that other QMP clients (QEMU 7.2 serves one at a time)
/// never wait longer than this for their turn.
const QMP_MAX_HOLD: Duration = Duration::from_millis(500);
/// Inodes per instance: directory + files.
pub const INODES_PER_INSTANCE: u64 = 16;

/// One discovered, running VM as the mount serves it: the [`Vm`] handle, what QMP said when it
/// was admitted, its RAM mapped once, its inode numbers and a short-lived QMP connection.
#[derive(Debug)]
pub struct MountedVm {
    /// MountedVm number; its inodes are `number * 16 ..`.
    pub number: u64,
    /// The VM handle (QMP endpoint).
    pub vm: Vm,
    /// What QMP said when it was admitted.
    pub info: VmInfo,
    /// Its RAM, mapped read-only.
    pub bridge: SharedMemoryBridge,
    /// The guest-physical address space as a file.
    pub physical: Physical,
    /// The live ELF core of the guest.
    pub core: Core,
    /// The ids of QEMU's memory backends when it was admitted.
    memdev_ids: Vec<String>,
    /// Identity of its socket file: a new socket means a new QEMU.
    socket_id: SocketId,
    /// When it was admitted.
    pub since: std::time::SystemTime,
    last_seen_alive: Mutex<Instant>,
    /// A QMP connection kept for bursts of reads: (client, connected at, last used).
    qmp: Mutex<Option<CachedQmp>>,
}

#[derive(Debug)]
struct CachedQmp {
    client: QmpClient<UnixStream>,
    connected: Instant,
    used: Instant,
}

impl CachedQmp {
    fn expired(&self) -> bool {
        self.used.elapsed() > QMP_IDLE || self.connected.elapsed() > QMP_MAX_HOLD
    }
}

impl MountedVm {
    /// Runs `ask` over a QMP connection kept for a short while, so that a burst of reads
    /// (`watch cat status`) costs one round trip each rather than a connection each. A stale
    /// cached connection is replaced once; a timeout is not retried.
    ///
    /// # Errors
    ///
    /// [`VmError::Qmp`].
    pub fn with_qmp<T>(
        &self,
        ask: impl Fn(&mut QmpClient<UnixStream>) -> Result<T, QmpError>,
    ) -> Result<T, VmError> {
        let mut cached = self.qmp.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut entry) = cached.take().filter(|entry| !entry.expired()) {
            match ask(&mut entry.client) {
                Ok(value) => {
                    entry.used = Instant::now();
                    *cached = Some(entry);
                    return Ok(value);
                }
                Err(QmpError::Command { command, class, desc }) => {
                    entry.used = Instant::now();
                    *cached = Some(entry);
                    return Err(self.vm.qmp_error(QmpError::Command { command, class, desc }));
                }
                Err(QmpError::Timeout) => return Err(self.vm.qmp_error(QmpError::Timeout)),
                Err(err) => {
                    log::debug!("cached QMP connection to {} failed ({err}); reconnecting", self.vm.name())
                }
            }
        }
        let mut client = self.vm.connect()?;
        let value = ask(&mut client).map_err(|source| self.vm.qmp_error(source))?;
        let now = Instant::now();
        *cached = Some(CachedQmp { client, connected: now, used: now });
        Ok(value)
    }

    /// Whether QEMU now names other memory backends than when the VM was admitted (a DIMM or
    /// virtio-mem device plugged or unplugged). A failed question is no change.
    fn memory_changed(&self) -> bool {
        match self.with_qmp(memdev_ids) {
            Ok(ids) => ids != self.memdev_ids,
            Err(err) => {
                log::debug!("{}", crate::error::chain(&err));
                false
            }
        }
    }

    /// The core with the vCPUs' registers as they are now (the RAM in it is live anyway).
    pub fn core_now(&self) -> Core {
        let registers = vcpu_registers(&self.info, |ask| self.with_qmp(ask));
        Core::new(self.bridge.layout(), elf_machine(&self.info.arch), &registers)
    }

    /// Closes the cached QMP connection if it has been kept long enough.
    fn release_idle_qmp(&self) {
        if let Ok(mut cached) = self.qmp.try_lock() {
            if cached.as_ref().is_some_and(CachedQmp::expired) {
                *cached = None;
            }
        }
    }

    /// Whether a cached QMP connection was used just now (the VM is certainly alive).
    fn recently_answered(&self) -> bool {
        self.qmp.try_lock().is_ok_and(|cached| cached.as_ref().is_some_and(|entry| !entry.expired()))
    }

    /// The directory's inode.
    pub fn dir_inode(&self) -> u64 {
        self.number * INODES_PER_INSTANCE
    }
}

#[derive(Debug, Default)]
struct State {
    by_name: HashMap<VmName, Arc<MountedVm>>,
    by_number: HashMap<u64, Arc<MountedVm>>,
    failed: HashMap<SocketId, Instant>,
    /// VMs with a probe or a QMP check running in the background.
    probing: std::collections::HashSet<VmName>,
    next_number: u64,
}

/// Whether a VM not known yet is probed before returning or in the background.
#[derive(Debug, Clone, Copy)]
enum Probe {
    Now,
    InBackground,
}

/// The set of live VMs of one run directory.
#[derive(Debug)]
pub struct Registry {
    run_dir: RunDir,
    state: RwLock<State>,
}

/// Identity of a socket file: device, inode and change time. tmpfs reuses inode numbers, so a
/// new QEMU's socket can get the old one's number; the change time tells them apart.
type SocketId = (u64, u64, i64, i64);

fn socket_id(run_dir: &RunDir, name: &VmName) -> Option<SocketId> {
    let metadata = std::fs::symlink_metadata(run_dir.socket_path(name)).ok()?;
    Some((metadata.dev(), metadata.ino(), metadata.ctime(), metadata.ctime_nsec()))
}

/// `NT_PRSTATUS` notes of the vCPUs as QEMU reports them now, for x86_64 guests (the register
/// text of other architectures is not parsed: their cores carry no notes). A monitor that
/// fails gives none, with a log line.
fn vcpu_registers(
    info: &VmInfo,
    ask: impl FnOnce(&dyn Fn(&mut QmpClient<UnixStream>) -> Result<String, QmpError>) -> Result<String, VmError>,
) -> Vec<u8> {
    if info.arch != "x86_64" {
        return Vec::new();
    }
    match ask(&|qmp| qmp.human_monitor_command("info registers -a")) {
        Ok(text) => crate::ram::views::x86_64_prstatus_notes(&text),
        Err(err) => {
            log::warn!("no vCPU registers in the core of VM {}: {}", info.name, crate::error::chain(&err));
            Vec::new()
        }
    }
}

/// The ids `query-memdev` lists, sorted.
fn memdev_ids(qmp: &mut QmpClient<UnixStream>) -> Result<Vec<String>, QmpError> {
    let mut ids: Vec<String> = qmp
        .query_memdev()?
        .iter()
        .filter_map(|backend| backend.get("id").and_then(|id| id.as_str()).map(str::to_string))
        .collect();
    ids.sort();
    Ok(ids)
}

impl Registry {
    /// A registry over `run_dir`; nothing is probed yet.
    pub fn new(run_dir: RunDir) -> Self {
        Self { run_dir, state: RwLock::new(State { next_number: 1, ..State::default() }) }
    }

    /// The run directory.
    pub fn run_dir(&self) -> &RunDir {
        &self.run_dir
    }

    /// Starts a thread that closes idle cached QMP connections; it ends with the registry.
    pub fn spawn_janitor(self: &Arc<Self>) {
        let registry = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("qmp-janitor".into()).spawn(move || loop {
            std::thread::sleep(QMP_IDLE / 2);
            let Some(registry) = registry.upgrade() else { return };
            let instances: Vec<_> = registry
                .state
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .by_number
                .values()
                .cloned()
                .collect();
            for instance in instances {
                instance.release_idle_qmp();
            }
        });
        if let Err(err) = spawned {
            log::error!("cannot start the QMP janitor thread: {err}");
        }
    }

    /// The instance with inode-range number `number`, if still live.
    pub fn by_number(&self, number: u64) -> Option<Arc<MountedVm>> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).by_number.get(&number).cloned()
    }

    /// Live instances, sorted by name, at once: what is known now, minus VMs whose socket is
    /// gone or refuses connections. New sockets are probed in the background, in parallel, and
    /// appear in a later list once they answer; a hostile or dead socket delays nothing.
    pub fn list(self: &Arc<Self>) -> Vec<Arc<MountedVm>> {
        let names = match self.run_dir.vm_names() {
            Ok(names) => names,
            Err(err) => {
                log::debug!("{err}");
                Vec::new()
            }
        };
        for name in &names {
            self.check(name, Probe::InBackground);
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<VmName> = state.by_name.keys().filter(|name| !names.contains(name)).cloned().collect();
        for name in gone {
            Self::remove(&mut state, &name);
        }
        let mut instances: Vec<_> = state.by_name.values().cloned().collect();
        instances.sort_by(|a, b| a.vm.name().cmp(b.vm.name()));
        instances
    }

    /// Probes every socket of the run directory in parallel and returns when each has
    /// answered or failed (at most about the probe timeout): what a new mount knows before
    /// its first `ls`.
    pub fn probe_all(self: &Arc<Self>) {
        let names = self.run_dir.vm_names().unwrap_or_default();
        std::thread::scope(|scope| {
            for name in &names {
                scope.spawn(move || self.check(name, Probe::Now));
            }
        });
    }

    /// The live instance called `name`, checking that it is still alive; a VM not known yet is
    /// probed now (it was asked for by name).
    pub fn lookup(self: &Arc<Self>, name: &str) -> Option<Arc<MountedVm>> {
        let name = VmName::new(name).ok()?;
        self.check(&name, Probe::Now);
        self.state.read().unwrap_or_else(|e| e.into_inner()).by_name.get(&name).cloned()
    }

    fn remove(state: &mut State, name: &VmName) {
        if let Some(instance) = state.by_name.remove(name) {
            log::info!("VM {name} is gone");
            state.by_number.remove(&instance.number);
        }
    }

    /// Keeps, admits, replaces or drops one VM. Liveness is a non-blocking connect; what needs
    /// QMP (whether its memory backends changed) is asked in the background.
    fn check(self: &Arc<Self>, name: &VmName, probe: Probe) {
        let Some(id) = socket_id(&self.run_dir, name) else {
            Self::remove(&mut self.state.write().unwrap_or_else(|e| e.into_inner()), name);
            return;
        };
        let existing = self.state.read().unwrap_or_else(|e| e.into_inner()).by_name.get(name).cloned();
        if let Some(instance) = existing {
            if instance.socket_id == id {
                let mut last = instance.last_seen_alive.lock().unwrap_or_else(|e| e.into_inner());
                if last.elapsed() < LIVENESS_INTERVAL {
                    return;
                }
                if instance.recently_answered() || instance.vm.is_listening() {
                    *last = Instant::now();
                    drop(last);
                    self.in_background(name, move |registry| registry.recheck_memory(&instance));
                    return;
                }
            }
            // dead, or a new QEMU behind a new socket
            Self::remove(&mut self.state.write().unwrap_or_else(|e| e.into_inner()), name);
        }
        if let Some(failed_at) = self.state.read().unwrap_or_else(|e| e.into_inner()).failed.get(&id) {
            if failed_at.elapsed() < RETRY_FAILED_AFTER {
                return;
            }
        }
        match probe {
            Probe::Now => self.admit_and_record(name, id),
            Probe::InBackground => {
                let owned = name.clone();
                self.in_background(name, move |registry| registry.admit_and_record(&owned, id))
            }
        }
    }

    /// Runs `job` on a thread of its own unless one runs for `name` already.
    fn in_background(self: &Arc<Self>, name: &VmName, job: impl FnOnce(&Registry) + Send + 'static) {
        if !self.state.write().unwrap_or_else(|e| e.into_inner()).probing.insert(name.clone()) {
            return;
        }
        let registry = Arc::clone(self);
        let owned = name.clone();
        let spawned = std::thread::Builder::new().name("probe".into()).spawn(move || {
            job(&registry);
            registry.state.write().unwrap_or_else(|e| e.into_inner()).probing.remove(&owned);
        });
        if let Err(err) = spawned {
            log::error!("cannot start a probe thread: {err}");
            self.state.write().unwrap_or_else(|e| e.into_inner()).probing.remove(name);
        }
    }

    /// Memory hot-plugged (or unplugged) since the VM was admitted: drop it, so that the next
    /// look serves it anew, whole.
    fn recheck_memory(&self, instance: &Arc<MountedVm>) {
        if !instance.memory_changed() {
            return;
        }
        let name = instance.vm.name();
        log::info!("VM {name}: its memory backends changed; serving it anew");
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.by_name.get(name).is_some_and(|current| Arc::ptr_eq(current, instance)) {
            Self::remove(&mut state, name);
        }
    }

    /// Admits the VM behind socket `id`, or records that it failed (not asked again for a
    /// while).
    fn admit_and_record(&self, name: &VmName, id: SocketId) {
        match self.admit(name, id) {
            Ok(instance) => {
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                state.failed.remove(&id);
                // a concurrent lookup admitted the same QEMU first: keep that one
                if state.by_name.get(name).is_some_and(|other| other.socket_id == id) {
                    return;
                }
                Self::remove(&mut state, name);
                state.by_number.insert(instance.number, Arc::clone(&instance));
                state.by_name.insert(name.clone(), instance);
            }
            Err(err) => {
                // a refusal names the VM, the file and the reason already
                if err.is_refusal() {
                    log::warn!("{}", crate::error::chain(&err));
                } else {
                    log::warn!("skipping VM {name}: {}", crate::error::chain(&err));
                }
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                state.failed.retain(|_, at| at.elapsed() < RETRY_FAILED_AFTER);
                state.failed.insert(id, Instant::now());
            }
        }
    }

    fn admit(&self, name: &VmName, id: SocketId) -> Result<Arc<MountedVm>, VmError> {
        let vm = Vm::named(&self.run_dir, name.clone()).with_timeout(PROBE_TIMEOUT);
        let (bridge, info) = vm.open_bridge()?;
        let number = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let number = state.next_number;
            state.next_number += 1;
            number
        };
        log::info!("VM {name}: RAM {} ({} bytes), {}", info.ram_path.display(), info.ram_size, info.status);
        let memdev_ids = vm.with_qmp(memdev_ids)?;
        let physical = Physical::new(bridge.layout().clone());
        let registers = vcpu_registers(&info, |ask| vm.with_qmp(ask));
        let core = Core::new(bridge.layout(), elf_machine(&info.arch), &registers);
        Ok(Arc::new(MountedVm {
            number,
            vm,
            info,
            bridge,
            physical,
            core,
            memdev_ids,
            socket_id: id,
            since: std::time::SystemTime::now(),
            last_seen_alive: Mutex::new(Instant::now()),
            qmp: Mutex::new(None),
        }))
    }
}
