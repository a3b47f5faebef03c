//! A Linux guest's kernel, read from its memory alone: `Vm.linux`.

use std::sync::{Arc, OnceLock};

use pyo3::exceptions::{PyKeyError, PyProcessLookupError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use qemu_bridge::guest::linux::{maps_text, LinuxError, LinuxFile, LinuxGuest};
use qemu_bridge::{Gva, SharedMemoryBridge};

use crate::errors::{paging_error, Error};

/// A [`LinuxError`] as its exception.
pub fn error(err: LinuxError) -> PyErr {
    Error::Guest.of(&err)
}

/// The kernel of a Linux guest as it was found (`Vm.linux`): read again through `Vm.linux` after
/// the guest reboots.
#[pyclass(frozen, module = "qemu_bridge")]
pub struct Linux {
    guest: Arc<LinuxGuest>,
    ram: Arc<SharedMemoryBridge>,
    vm: String,
    /// The symbols' distinct addresses, sorted: where each symbol's size ends.
    addresses: OnceLock<Vec<u64>>,
}

impl Linux {
    pub fn new(guest: Arc<LinuxGuest>, ram: Arc<SharedMemoryBridge>, vm: String) -> Self {
        Self { guest, ram, vm, addresses: OnceLock::new() }
    }

    fn render(&self, py: Python<'_>, file: LinuxFile) -> PyResult<Vec<u8>> {
        py.detach(|| file.render(&self.guest, &*self.ram)).map_err(|err| self.error(err))
    }

    fn error(&self, err: LinuxError) -> PyErr {
        Error::Guest.message(format!("VM {}: {}", self.vm, qemu_bridge::error::chain(&err)))
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
}

#[pymethods]
impl Linux {
    /// The kernel's version banner (`/proc/version`).
    #[getter]
    fn version(&self, py: Python<'_>) -> PyResult<String> {
        Ok(text(self.render(py, LinuxFile::Version)?).trim_end().to_string())
    }

    /// Its release (`uname -r`), from its vmcoreinfo.
    #[getter]
    fn release(&self) -> Option<String> {
        self.guest.kernel().vmcoreinfo().release().map(String::from)
    }

    /// Its vmcoreinfo text, as found in its memory.
    #[getter]
    fn vmcoreinfo(&self) -> String {
        self.guest.kernel().vmcoreinfo().text.clone()
    }

    /// Every process (thread-group leader), the idle task first.
    fn tasks(&self, py: Python<'_>) -> PyResult<Vec<Task>> {
        let tasks = py.detach(|| self.guest.tasks(&*self.ram)).map_err(|err| self.error(err))?;
        Ok(tasks.iter().map(Task::of).collect())
    }

    /// The loaded modules.
    fn modules(&self, py: Python<'_>) -> PyResult<Vec<Module>> {
        let modules = py.detach(|| self.guest.modules(&*self.ram)).map_err(|err| self.error(err))?;
        Ok(modules
            .into_iter()
            .map(|module| Module {
                name: module.name,
                address: module.address.0,
                size: module.size,
                refcount: module.refcount,
                users: module.users,
                state: module.state.word().to_string(),
                base: module.base.0,
                taints: module.taints,
            })
            .collect())
    }

    /// The kernel's log, as `dmesg` prints it.
    fn dmesg(&self, py: Python<'_>) -> PyResult<String> {
        Ok(text(self.render(py, LinuxFile::Dmesg)?))
    }

    /// Every symbol of the kernel (its kallsyms), in address order.
    fn kallsyms(&self) -> Vec<Symbol> {
        self.guest
            .symbols()
            .iter()
            .map(|symbol| Symbol {
                address: symbol.address,
                kind: symbol.kind.to_string(),
                name: symbol.name.clone(),
            })
            .collect()
    }

    /// The address of the symbol `name` (the first of that name); `KeyError` if there is none.
    fn symbol(&self, name: &str) -> PyResult<u64> {
        self.guest
            .symbols()
            .named(name)
            .next()
            .map(|symbol| symbol.address)
            .ok_or_else(|| PyKeyError::new_err(name.to_string()))
    }

    /// `(address, size, kind)` of the first symbol named `name`, `None` if there is none: its
    /// size runs to the next higher address of any symbol (0 for the last one, and for a gap
    /// past 1 GiB, which runs across the kernel's areas), as drgn wants a symbol.
    fn symbol_info(&self, name: &str) -> Option<(u64, u64, String)> {
        let symbols = self.guest.symbols();
        let symbol = symbols.named(name).next()?;
        let addresses = self.addresses.get_or_init(|| {
            let mut addresses: Vec<u64> = symbols.iter().map(|symbol| symbol.address).collect();
            addresses.sort_unstable();
            addresses.dedup();
            addresses
        });
        let next = addresses.partition_point(|&address| address <= symbol.address);
        let size = addresses.get(next).map_or(0, |&next| next - symbol.address);
        Some((symbol.address, if size <= 1 << 30 { size } else { 0 }, symbol.kind.to_string()))
    }

    /// The kernel's BTF (its types), as the kernel keeps it.
    fn btf<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.render(py, LinuxFile::Btf)?))
    }

    /// The kernel's Volatility 3 symbol table (ISF JSON), made from its BTF and kallsyms.
    fn isf(&self, py: Python<'_>) -> PyResult<String> {
        Ok(text(self.render(py, LinuxFile::Volatility)?))
    }

    /// The name Volatility expects the table under (`<release>-<hash of the banner>.json`).
    fn isf_name(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| self.guest.isf_name(&*self.ram)).map_err(|err| self.error(err))
    }

    /// The process whose pid is `pid` (a thread-group leader); `ProcessLookupError` if none.
    fn process(&self, py: Python<'_>, pid: i32) -> PyResult<Process> {
        let task = py.detach(|| self.guest.task(&*self.ram, pid)).map_err(|err| self.error(err))?;
        let task =
            task.ok_or_else(|| PyProcessLookupError::new_err(format!("VM {}: no process {pid}", self.vm)))?;
        Ok(Process {
            task: Task::of(&task),
            linux: Linux::new(Arc::clone(&self.guest), Arc::clone(&self.ram), self.vm.clone()),
        })
    }

    fn __repr__(&self) -> String {
        let release = self.guest.kernel().vmcoreinfo().release().unwrap_or("?");
        format!("<qemu_bridge.Linux {release} of VM {}>", self.vm)
    }
}

/// One process or thread (`struct task_struct`).
#[pyclass(frozen, get_all, module = "qemu_bridge")]
#[derive(Clone)]
pub struct Task {
    /// Its `task_struct`'s kernel address.
    address: u64,
    pid: i32,
    tgid: i32,
    ppid: i32,
    uid: u32,
    /// Its state as `ps` prints it: one letter (`R`, `S`, `D`, `I`, `Z`...).
    state: String,
    comm: String,
}

impl Task {
    fn of(task: &qemu_bridge::guest::linux::Task) -> Self {
        Self {
            address: task.address.0,
            pid: task.pid,
            tgid: task.tgid,
            ppid: task.ppid,
            uid: task.uid,
            state: task.state_letter().to_string(),
            comm: task.comm.clone(),
        }
    }
}

#[pymethods]
impl Task {
    fn __repr__(&self) -> String {
        format!("<qemu_bridge.Task {} {:?} {}>", self.pid, self.comm, self.state)
    }
}

/// One loaded module (`struct module`).
#[pyclass(frozen, get_all, module = "qemu_bridge")]
pub struct Module {
    name: String,
    address: u64,
    /// Its size in bytes, as `lsmod` prints it.
    size: u64,
    refcount: i64,
    /// The modules that use it.
    users: Vec<String>,
    /// `Live`, `Loading` or `Unloading`.
    state: String,
    /// Where its code starts.
    base: u64,
    taints: u64,
}

#[pymethods]
impl Module {
    fn __repr__(&self) -> String {
        format!("<qemu_bridge.Module {} {} bytes>", self.name, self.size)
    }
}

/// One kernel symbol.
#[pyclass(frozen, get_all, module = "qemu_bridge")]
pub struct Symbol {
    address: u64,
    /// Its type letter, as `nm` and `/proc/kallsyms` print it.
    kind: String,
    name: String,
}

#[pymethods]
impl Symbol {
    /// The module it belongs to: always `None` (the kernel's own kallsyms hold vmlinux's symbols).
    #[getter]
    fn module(&self) -> Option<String> {
        None
    }

    fn __repr__(&self) -> String {
        format!("<qemu_bridge.Symbol {:#x} {} {}>", self.address, self.kind, self.name)
    }
}

/// A process of the guest, found by pid: each method reads it again (it lives on meanwhile).
#[pyclass(frozen, module = "qemu_bridge")]
pub struct Process {
    task: Task,
    linux: Linux,
}

impl Process {
    /// Runs `read` on the process as it is now, `ProcessLookupError` if it has gone.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        read: impl FnOnce(&qemu_bridge::guest::linux::Process<'_, SharedMemoryBridge>) -> Result<T, PyErr> + Send,
    ) -> PyResult<T> {
        let (linux, pid) = (&self.linux, self.task.pid);
        py.detach(|| {
            let process = linux.guest.process(&*linux.ram, pid).map_err(|err| linux.error(err))?;
            let process = process.ok_or_else(|| {
                PyProcessLookupError::new_err(format!("VM {}: process {pid} has gone", linux.vm))
            })?;
            read(&process)
        })
    }
}

#[pymethods]
impl Process {
    #[getter]
    fn pid(&self) -> i32 {
        self.task.pid
    }

    /// The process's task as it was found.
    #[getter]
    fn task(&self) -> Task {
        self.task.clone()
    }

    /// Its memory areas, as `/proc/<pid>/maps` prints them.
    fn maps(&self, py: Python<'_>) -> PyResult<String> {
        let linux = &self.linux;
        self.with(py, |process| {
            process.areas().map(|areas| maps_text(&areas)).map_err(|err| linux.error(err))
        })
    }

    /// Its arguments (empty for a kernel thread).
    fn cmdline(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let bytes = self.with(py, |process| process.cmdline().map_err(|err| self.linux.error(err)))?;
        Ok(split_nul(&bytes))
    }

    /// Its environment, `NAME=value` strings split at the first `=`.
    fn environ(&self, py: Python<'_>) -> PyResult<Vec<(String, String)>> {
        let bytes = self.with(py, |process| process.environ().map_err(|err| self.linux.error(err)))?;
        Ok(split_nul(&bytes)
            .into_iter()
            .map(|entry| match entry.split_once('=') {
                Some((name, value)) => (name.to_string(), value.to_string()),
                None => (entry, String::new()),
            })
            .collect())
    }

    /// Its status, as `/proc/<pid>/status` prints it.
    fn status(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |process| process.status().map_err(|err| self.linux.error(err)))
    }

    /// `size` bytes of its memory at virtual address `va`, through its own page tables.
    fn read<'py>(&self, py: Python<'py>, va: u64, size: usize) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self.with(py, |process| {
            let paging = process.paging().map_err(|err| self.linux.error(err))?.ok_or_else(|| {
                Error::Address
                    .message(format!("process {} is a kernel thread: no memory of its own", self.task.pid))
            })?;
            let mut bytes = vec![0u8; size];
            paging.read_virtual(&*self.linux.ram, Gva(va), &mut bytes).map_err(paging_error)?;
            Ok(bytes)
        })?;
        Ok(PyBytes::new(py, &bytes))
    }

    fn __repr__(&self) -> String {
        format!("<qemu_bridge.Process {} {:?} of VM {}>", self.task.pid, self.task.comm, self.linux.vm)
    }
}

/// NUL-separated strings (a trailing NUL ends the last), decoded with U+FFFD for bad bytes.
fn split_nul(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes.split(|&byte| byte == 0).map(|part| String::from_utf8_lossy(part).into_owned()).collect()
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Linux>()?;
    module.add_class::<Task>()?;
    module.add_class::<Module>()?;
    module.add_class::<Symbol>()?;
    module.add_class::<Process>()?;
    Ok(())
}
