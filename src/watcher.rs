//! One watcher of a run directory, for every front end (the mount, the view): which VMs are
//! alive, each with its RAM mapped once and whatever the front end keeps beside it.
//!
//! Every VM found alive becomes a [`WatchedVm`] with a number of its own (the mount derives its
//! inode numbers from it, the view its picture's id). A VM restarted under the same name (a new
//! socket file) is a new instance with a new number: holders of the old one keep the old
//! mapping, new lookups see the new RAM. A VM whose memory backends change (a DIMM or
//! virtio-mem device plugged or unplugged) is dropped and admitted anew, whole. A VM that dies is
//! dropped, which unmaps its RAM (so tmpfs can free a deleted RAM file) once nothing holds it.
//! Failures are remembered by socket identity, so a new QEMU behind the same name is probed at
//! once, and a socket that failed is not asked again for a while.
//!
//! What a front end keeps per VM (`T`: the mount's guest-physical and core dumps) is made once,
//! when the VM is admitted, by the function given to [`Watcher::new`]. The watcher needs neither
//! fuser nor a web server.
//!
//! `ls` (readdir) never waits for QMP: it answers from what is known, and new sockets are probed
//! in the background, in parallel. A lookup by name probes that one VM at once. A socket that is
//! dead, hangs or speaks garbage never blocks a caller for longer than the probe timeout, and
//! is not asked again for a while after it failed.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use std::os::unix::net::UnixStream;

use crate::name::VmName;
use crate::qmp::{QmpClient, QmpError};
use crate::ram::soft_dirty::SoftDirty;
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

/// One discovered, running VM: the [`Vm`] handle, what QMP said when it was admitted, its RAM
/// mapped once, its number, a short-lived QMP connection and what the front end keeps for it.
#[derive(Debug)]
pub struct WatchedVm<T> {
    /// Its number, unique in the watcher's life (never 0); a restarted VM gets a new one.
    pub number: u64,
    /// The VM handle (QMP endpoint).
    pub vm: Vm,
    /// What QMP said when it was admitted.
    pub info: VmInfo,
    /// Its RAM, mapped read-only.
    pub bridge: SharedMemoryBridge,
    /// What the front end made for it when it was admitted.
    pub parts: T,
    /// The soft-dirty bits of its QEMU process over its RAM, opened on first use.
    soft_dirty: OnceLock<Option<Arc<SoftDirty>>>,
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

impl<T> WatchedVm<T> {
    /// Runs `ask` over a QMP connection kept for a short while, so that a burst of reads
    /// (`watch cat status`) costs one round trip each rather than a connection each. A stale
    /// cached connection is replaced once; a timeout is not retried.
    ///
    /// # Errors
    ///
    /// [`VmError::Qmp`].
    pub fn with_qmp<R>(
        &self,
        ask: impl Fn(&mut QmpClient<UnixStream>) -> Result<R, QmpError>,
    ) -> Result<R, VmError> {
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

    /// The soft-dirty bits of its QEMU process over its RAM where the host has them (see
    /// `ram::soft_dirty`), opened once, on first use, and shared by every tracker of this
    /// VM in this process; `None`: its changes are tracked by fingerprints (the reason is logged).
    pub fn soft_dirty(&self) -> Option<Arc<SoftDirty>> {
        self.soft_dirty
            .get_or_init(|| {
                crate::ram::tracker::soft_dirty_for(self.info.qemu_pid, self.bridge.mapping())
                    .inspect_err(|why| {
                        log::info!("VM {}: changes tracked by fingerprints: {why}", self.info.name)
                    })
                    .ok()
            })
            .clone()
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
}

#[derive(Debug)]
struct State<T> {
    by_name: HashMap<VmName, Arc<WatchedVm<T>>>,
    by_number: HashMap<u64, Arc<WatchedVm<T>>>,
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

impl<T> Default for State<T> {
    fn default() -> Self {
        Self {
            by_name: HashMap::new(),
            by_number: HashMap::new(),
            failed: HashMap::new(),
            probing: std::collections::HashSet::new(),
            next_number: 1,
        }
    }
}

/// Makes what a front end keeps for a VM it admits, or refuses the VM.
pub type MakeParts<T> = dyn Fn(&Vm, &SharedMemoryBridge, &VmInfo) -> Result<T, VmError> + Send + Sync;

/// The set of live VMs of one run directory.
pub struct Watcher<T> {
    run_dir: RunDir,
    state: RwLock<State<T>>,
    make_parts: Box<MakeParts<T>>,
}

impl<T> std::fmt::Debug for Watcher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("run_dir", &self.run_dir).finish_non_exhaustive()
    }
}

/// Identity of a socket file: device, inode and change time. tmpfs reuses inode numbers, so a
/// new QEMU's socket can get the old one's number; the change time tells them apart.
type SocketId = (u64, u64, i64, i64);

fn socket_id(run_dir: &RunDir, name: &VmName) -> Option<SocketId> {
    let metadata = std::fs::symlink_metadata(run_dir.socket_path(name)).ok()?;
    Some((metadata.dev(), metadata.ino(), metadata.ctime(), metadata.ctime_nsec()))
}

/// The ids `query-memdev` lists, sorted.
fn memdev_ids(qmp: &mut QmpClient<UnixStream>) -> Result<Vec<String>, QmpError> {
    let mut ids: Vec<String> = qmp.query_memdev()?.into_iter().map(|backend| backend.id).collect();
    ids.sort();
    Ok(ids)
}

impl<T: Send + Sync + 'static> Watcher<T> {
    /// A watcher of `run_dir` whose front end keeps `make_parts(vm, ram, info)` for each VM it
    /// admits; nothing is probed yet.
    pub fn new(
        run_dir: RunDir,
        make_parts: impl Fn(&Vm, &SharedMemoryBridge, &VmInfo) -> Result<T, VmError> + Send + Sync + 'static,
    ) -> Self {
        Self { run_dir, state: RwLock::new(State::default()), make_parts: Box::new(make_parts) }
    }

    /// Starts a thread that closes idle cached QMP connections; it ends with the watcher.
    pub fn spawn_janitor(self: &Arc<Self>) {
        let watcher = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("qmp-janitor".into()).spawn(move || loop {
            std::thread::sleep(QMP_IDLE / 2);
            let Some(watcher) = watcher.upgrade() else { return };
            let instances: Vec<_> =
                watcher.state.read().unwrap_or_else(|e| e.into_inner()).by_number.values().cloned().collect();
            for instance in instances {
                instance.release_idle_qmp();
            }
        });
        if let Err(err) = spawned {
            log::error!("cannot start the QMP janitor thread: {err}");
        }
    }

    /// The instance with inode-range number `number`, if still live.
    pub fn by_number(&self, number: u64) -> Option<Arc<WatchedVm<T>>> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).by_number.get(&number).cloned()
    }

    /// Live instances, sorted by name, at once: what is known now, minus VMs whose socket is
    /// gone or refuses connections. New sockets are probed in the background, in parallel, and
    /// appear in a later list once they answer; a hostile or dead socket delays nothing.
    pub fn list(self: &Arc<Self>) -> Vec<Arc<WatchedVm<T>>> {
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
    pub fn lookup(self: &Arc<Self>, name: &str) -> Option<Arc<WatchedVm<T>>> {
        let name = VmName::new(name).ok()?;
        self.check(&name, Probe::Now);
        self.state.read().unwrap_or_else(|e| e.into_inner()).by_name.get(&name).cloned()
    }

    fn remove(state: &mut State<T>, name: &VmName) {
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
                    self.in_background(name, move |watcher| watcher.recheck_memory(&instance));
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
                self.in_background(name, move |watcher| watcher.admit_and_record(&owned, id))
            }
        }
    }

    /// Runs `job` on a thread of its own unless one runs for `name` already.
    fn in_background(self: &Arc<Self>, name: &VmName, job: impl FnOnce(&Self) + Send + 'static) {
        if !self.state.write().unwrap_or_else(|e| e.into_inner()).probing.insert(name.clone()) {
            return;
        }
        let watcher = Arc::clone(self);
        let owned = name.clone();
        let spawned = std::thread::Builder::new().name("probe".into()).spawn(move || {
            job(&watcher);
            watcher.state.write().unwrap_or_else(|e| e.into_inner()).probing.remove(&owned);
        });
        if let Err(err) = spawned {
            log::error!("cannot start a probe thread: {err}");
            self.state.write().unwrap_or_else(|e| e.into_inner()).probing.remove(name);
        }
    }

    /// Memory hot-plugged (or unplugged) since the VM was admitted: drop it, so that the next
    /// look serves it anew, whole.
    fn recheck_memory(&self, instance: &Arc<WatchedVm<T>>) {
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

    fn admit(&self, name: &VmName, id: SocketId) -> Result<Arc<WatchedVm<T>>, VmError> {
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
        let parts = (self.make_parts)(&vm, &bridge, &info)?;
        Ok(Arc::new(WatchedVm {
            number,
            vm,
            info,
            bridge,
            parts,
            soft_dirty: OnceLock::new(),
            memdev_ids,
            socket_id: id,
            since: std::time::SystemTime::now(),
            last_seen_alive: Mutex::new(Instant::now()),
            qmp: Mutex::new(None),
        }))
    }
}
