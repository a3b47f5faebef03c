//! `qemu_bridge._native`: the qemu-bridge library as Python objects.
//!
//! A thin layer: every method is a call into the library (`qemu_bridge`), with its errors turned
//! into Python exceptions that subclass the matching built-ins and carry the library's message
//! chain. The GIL is released for QMP exchanges, copies above [`DETACH_ABOVE`] bytes and walks of
//! the guest kernel's structures. The only `unsafe` of the binding is the buffer protocol of
//! [`RamView`] (in `buffer.rs`), which exports live guest RAM read-only.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod btf;
mod buffer;
mod errors;
mod linux;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyMemoryView};

use qemu_bridge::guest::linux::LinuxGuest;
use qemu_bridge::guest::{find_vmcoreinfo, VmcoreInfo};
use qemu_bridge::guest::{vcpu_paging, Gpa, Gva, Paging};
use qemu_bridge::{RunDir, SharedMemoryBridge, VmInfo};

use errors::{bridge_error, paging_error, vcpu_paging_error, vm_error, Error};

/// Copies of more bytes than this release the GIL (below, taking and giving it back costs more
/// than the copy).
const DETACH_ABOVE: usize = 64 << 10;

/// The run directory `run_dir` names, or the default one.
fn run_dir_of(run_dir: Option<PathBuf>) -> RunDir {
    RunDir::new(run_dir.unwrap_or_else(qemu_bridge::default_run_dir))
}

/// Runs `work` without the GIL when `len` is large enough for that to pay.
fn maybe_detached<T: Send>(py: Python<'_>, len: usize, work: impl FnOnce() -> T + Send) -> T {
    if len > DETACH_ABOVE {
        py.detach(work)
    } else {
        work()
    }
}

/// The VMs of a run directory: one dict per VM, with `name`, `status`, `ram_size`, `arch`,
/// `tracking`, `ram_path`, or `name` and `error` for one that could not be asked.
#[pyfunction]
#[pyo3(signature = (run_dir = None))]
fn list(py: Python<'_>, run_dir: Option<PathBuf>) -> PyResult<Vec<Py<PyDict>>> {
    let run_dir = run_dir_of(run_dir);
    let names = run_dir.vm_names().map_err(|err| Error::Os.of(&err))?;
    let rows = py.detach(|| {
        names
            .into_iter()
            .map(|name| {
                let vm = qemu_bridge::Vm::named(&run_dir, name.clone());
                (name, vm.info())
            })
            .collect::<Vec<_>>()
    });
    rows.into_iter()
        .map(|(name, info)| {
            let row = PyDict::new(py);
            row.set_item("name", name.as_str())?;
            match info {
                Ok(info) => {
                    row.set_item("status", info.status.as_str())?;
                    row.set_item("ram_size", info.ram_size)?;
                    row.set_item("arch", info.arch.to_string())?;
                    row.set_item("tracking", info.tracking_method().to_string())?;
                    row.set_item("ram_path", info.ram_path)?;
                }
                Err(err) => row.set_item("error", qemu_bridge::error::chain(&err))?,
            }
            Ok(row.unbind())
        })
        .collect()
}

/// Opens the VM `name` of the run directory: asks QEMU where its RAM is and maps it, once it
/// passed the trust check.
#[pyfunction]
#[pyo3(signature = (name, run_dir = None))]
fn open(py: Python<'_>, name: &str, run_dir: Option<PathBuf>) -> PyResult<Vm> {
    let run_dir = run_dir_of(run_dir);
    py.detach(|| {
        let vm = qemu_bridge::Vm::existing(&run_dir, name)?;
        let (bridge, info) = vm.open_bridge()?;
        Ok(Vm { vm, ram: Arc::new(bridge), info, linux: Mutex::new(None) })
    })
    .map_err(vm_error)
}

/// One VM: its RAM mapped read-only, its QMP socket asked on demand.
#[pyclass(frozen, module = "qemu_bridge")]
struct Vm {
    vm: qemu_bridge::Vm,
    ram: Arc<SharedMemoryBridge>,
    info: VmInfo,
    /// The guest kernel read last, and the vmcoreinfo it was found by.
    linux: Mutex<Option<(VmcoreInfo, Arc<LinuxGuest>)>>,
}

impl Vm {
    /// How vCPU `cpu` translates virtual addresses now (with `root` in place of its own root).
    fn paging(&self, cpu: usize, root: Option<u64>) -> PyResult<Paging> {
        let vcpus = self.vm.vcpu_registers().map_err(vm_error)?;
        vcpu_paging(&self.info.arch, &vcpus, cpu, root.map(Gpa))
            .map_err(|err| vcpu_paging_error(&self.info, err))
    }

    /// The guest's kernel as it is now: the one read last while its vmcoreinfo is where it was,
    /// else read again; `None` with no vmcoreinfo in RAM (not Linux, or not booted yet).
    fn linux_now(&self) -> PyResult<Option<Arc<LinuxGuest>>> {
        let mut cached = self.linux.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((known, guest)) = cached.as_ref() {
            if known.still_in(self.ram.mapping()).map_err(bridge_error)? {
                return Ok(Some(Arc::clone(guest)));
            }
        }
        let Some(info) = find_vmcoreinfo(self.ram.mapping()).map_err(bridge_error)? else {
            *cached = None;
            return Ok(None);
        };
        let guest = Arc::new(LinuxGuest::read(info.clone(), &*self.ram).map_err(linux::error)?);
        *cached = Some((info, Arc::clone(&guest)));
        Ok(Some(guest))
    }
}

#[pymethods]
impl Vm {
    /// The VM's name (its QMP socket's stem).
    #[getter]
    fn name(&self) -> &str {
        self.info.name.as_str()
    }

    /// The guest's architecture, as QEMU names it (`x86_64`, `aarch64`, `riscv64`).
    #[getter]
    fn arch(&self) -> String {
        self.info.arch.to_string()
    }

    /// The guest's RAM in bytes, over every backend.
    #[getter]
    fn ram_size(&self) -> u64 {
        self.info.ram_size
    }

    /// How changed pages are found on this host: `soft-dirty` or `fingerprints`.
    #[getter]
    fn tracking(&self) -> String {
        self.info.tracking_method().to_string()
    }

    /// The RAM file QEMU named (or its descriptor of a memfd, or `/proc/PID/mem`).
    #[getter]
    fn ram_path(&self) -> PathBuf {
        self.info.ram_path.clone()
    }

    /// Its run state now (`running`, `paused`, `prelaunch`...), asked of QEMU.
    fn status(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| self.vm.status()).map(|status| status.status.as_str().to_string()).map_err(vm_error)
    }

    /// Pauses its vCPUs (QMP `stop`).
    fn pause(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.vm.with_qmp(|qmp| qmp.stop())).map_err(vm_error)
    }

    /// Resumes its vCPUs (QMP `cont`).
    fn resume(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.vm.with_qmp(|qmp| qmp.cont())).map_err(vm_error)
    }

    /// The guest-physical RAM ranges: dicts with `start`, `size` and `offset` (where the range
    /// starts in the RAM file), in address order.
    fn layout(&self, py: Python<'_>) -> PyResult<Vec<Py<PyDict>>> {
        self.ram
            .layout()
            .regions()
            .iter()
            .map(|region| {
                let row = PyDict::new(py);
                row.set_item("start", region.gpa)?;
                row.set_item("size", region.len)?;
                row.set_item("offset", region.offset)?;
                Ok(row.unbind())
            })
            .collect()
    }

    /// `size` bytes of guest-physical memory at `gpa`, copied. A byte that is no RAM raises
    /// `AddressError`, unless `zero_holes` is set: then holes read as zeros, as the mount's
    /// `physical` file reads them.
    #[pyo3(signature = (gpa, size, *, zero_holes = false))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        gpa: u64,
        size: usize,
        zero_holes: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        PyBytes::new_with(py, size, |buf| maybe_detached(py, size, || self.read_to(gpa, buf, zero_holes)))
    }

    /// Copies guest-physical memory at `gpa` into `buffer` (any writable buffer: `bytearray`,
    /// `memoryview`, a NumPy array...), as many bytes as it holds.
    fn read_into(&self, py: Python<'_>, gpa: u64, buffer: &Bound<'_, PyAny>) -> PyResult<()> {
        buffer::with_writable(buffer, |buf| maybe_detached(py, buf.len(), || self.read_to(gpa, buf, false)))
    }

    /// A read-only `memoryview` of `size` bytes at `gpa`, straight over the live mapping: no
    /// copy, and the bytes change as the guest writes them. All of it must be in one RAM
    /// region of mapped RAM (not private RAM, which is read by copies only). The view keeps
    /// the mapping alive; it cannot be hashed. Reading a page the guest never touched through
    /// it allocates that page in the RAM file, as any mapping does: `read` does not.
    fn view<'py>(&self, py: Python<'py>, gpa: u64, size: usize) -> PyResult<Bound<'py, PyMemoryView>> {
        let view = buffer::RamView::new(Arc::clone(&self.ram), gpa, size)?;
        PyMemoryView::from(Bound::new(py, view)?.as_any())
    }

    /// `size` bytes at virtual address `va` as vCPU `cpu` sees them now (or through the page
    /// tables at guest-physical `root`).
    #[pyo3(signature = (va, size, cpu = 0, root = None))]
    fn read_virtual<'py>(
        &self,
        py: Python<'py>,
        va: u64,
        size: usize,
        cpu: usize,
        root: Option<u64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let paging = py.detach(|| self.paging(cpu, root))?;
        PyBytes::new_with(py, size, |buf| {
            maybe_detached(py, size, || paging.read_virtual(&*self.ram, Gva(va), buf)).map_err(paging_error)
        })
    }

    /// The guest-physical address of virtual address `va` as vCPU `cpu` sees it now (or
    /// through the page tables at guest-physical `root`, in the vCPU's paging mode).
    #[pyo3(signature = (va, cpu = 0, root = None))]
    fn translate(&self, py: Python<'_>, va: u64, cpu: usize, root: Option<u64>) -> PyResult<u64> {
        py.detach(|| {
            let paging = self.paging(cpu, root)?;
            paging.translate(&*self.ram, Gva(va)).map(|translation| translation.gpa.0).map_err(paging_error)
        })
    }

    /// vCPU `cpu`'s registers now: name -> value, as QEMU names them.
    #[pyo3(signature = (cpu = 0))]
    fn registers(&self, py: Python<'_>, cpu: usize) -> PyResult<Vec<(String, u64)>> {
        let vcpus = py.detach(|| self.vm.vcpu_registers()).map_err(vm_error)?;
        let count = vcpus.len();
        let vcpu = vcpus.into_iter().nth(cpu).ok_or_else(|| {
            Error::Address.message(format!("VM {}: no vCPU {cpu} (it has {count})", self.info.name))
        })?;
        Ok(vcpu.values().to_vec())
    }

    /// Every `interval` seconds, what the guest wrote since the last: an iterator of
    /// `ChangeSet`s (soft-dirty bits where the host has them, else fingerprints of every page).
    #[pyo3(signature = (interval = 1.0))]
    fn changes(&self, py: Python<'_>, interval: f64) -> PyResult<Changes> {
        if !(interval.is_finite() && interval > 0.0) {
            return Err(
                Error::Address.message(format!("interval {interval}: not a positive number of seconds"))
            );
        }
        let soft_dirty = qemu_bridge::ram::soft_dirty_for(self.info.qemu_pid, self.ram.mapping()).ok();
        let ram = Arc::clone(&self.ram);
        let changes = py
            .detach(|| qemu_bridge::Changes::new(ram, Duration::from_secs_f64(interval), soft_dirty))
            .map_err(bridge_error)?;
        Ok(Changes { changes: Mutex::new(changes) })
    }

    /// Writes the guest's RAM to the file `path` (`format` `raw`: RAM in file order, holes
    /// sparse; `elf`: an ELF core crash, drgn and Volatility read) and returns what `qemu-bridge
    /// snapshot --json` reports, as a dict: `algorithm`, `digest`, `verdict`, `attempts`,
    /// `torn_pages`, `size`, `passes`, `paused_ms`, `tracking` (how the passes after the first
    /// found what the guest wrote: `soft-dirty` or `fingerprints`, or `None` for one whole
    /// copy), `smear` (the guest-physical ranges a running guest wrote during a plain copy), and for an update `update` (`full`: why it was written
    /// whole, or `None`; `pages_written`, `pages_looked`, `pages`, `method`). `pause` pauses the
    /// VM for the copy; `consistent` makes an image of one instant with a short pause
    /// (pre-copy); `update` rewrites only what changed since the file was written.
    #[pyo3(signature = (path, *, update = false, consistent = false, pause = false, format = "raw", hash = "blake3"))]
    #[allow(clippy::too_many_arguments)]
    fn snapshot(
        &self,
        py: Python<'_>,
        path: PathBuf,
        update: bool,
        consistent: bool,
        pause: bool,
        format: &str,
        hash: &str,
    ) -> PyResult<Py<PyDict>> {
        use qemu_bridge::capture::{self, CaptureError, CaptureOptions};
        if consistent && pause {
            return Err(Error::Address
                .message("consistent and pause exclude each other: pause is already exact".into()));
        }
        let hash = hash.parse().map_err(|err: String| Error::Address.message(err))?;
        let format = format.parse().map_err(|err: String| Error::Address.message(err))?;
        let options = CaptureOptions { update, consistent, pause, format, hash, ..CaptureOptions::default() };
        let captured =
            py.detach(|| capture::to_file(&self.vm, &self.ram, &self.info, &path, &options, &|_| {}));
        let captured = captured.map_err(|err| match err {
            CaptureError::Vm(err) => vm_error(err),
            CaptureError::Ram { source, .. } => bridge_error(source),
            err => Error::Os.of(&err),
        })?;
        let summary = &captured.summary;
        let report = PyDict::new(py);
        report.set_item("algorithm", summary.algorithm.to_string())?;
        report.set_item("digest", &summary.digest)?;
        report.set_item("verdict", summary.verdict.to_string())?;
        report.set_item("attempts", summary.attempts)?;
        report.set_item("torn_pages", summary.torn_pages)?;
        report.set_item("size", summary.size)?;
        report.set_item("passes", &captured.passes)?;
        report.set_item("paused_ms", captured.paused_for.map(|paused| paused.as_secs_f64() * 1e3))?;
        report.set_item("tracking", captured.tracking.map(|method| method.to_string()))?;
        let smear: Option<Vec<(u64, u64)>> = captured
            .smear
            .as_ref()
            .map(|smear| smear.ranges.iter().map(|range| (range.start, range.end)).collect());
        report.set_item("smear", smear)?;
        match &captured.update {
            Some(update) => {
                let row = PyDict::new(py);
                row.set_item("full", update.full.clone())?;
                row.set_item("pages_written", update.pages_written)?;
                row.set_item("pages_looked", update.pages_looked)?;
                row.set_item("pages", update.pages)?;
                row.set_item("method", update.method.to_string())?;
                report.set_item("update", row)?;
            }
            None => report.set_item("update", py.None())?,
        }
        Ok(report.unbind())
    }

    /// The guest's Linux kernel, read from its memory; `None` when RAM holds no Linux kernel's
    /// vmcoreinfo (another system, or not booted yet).
    #[getter]
    fn linux(&self, py: Python<'_>) -> PyResult<Option<linux::Linux>> {
        let guest = py.detach(|| self.linux_now())?;
        Ok(guest.map(|guest| linux::Linux::new(guest, Arc::clone(&self.ram), self.info.name.to_string())))
    }

    fn __repr__(&self) -> String {
        format!(
            "<qemu_bridge.Vm {:?} {} {} MiB>",
            self.info.name.as_str(),
            self.info.arch,
            self.info.ram_size >> 20
        )
    }
}

impl Vm {
    /// Reads `buf.len()` bytes at `gpa` into `buf`, holes as zeros if `zero_holes`.
    fn read_to(&self, gpa: u64, buf: &mut [u8], zero_holes: bool) -> PyResult<()> {
        if !zero_holes {
            return self.ram.read_into(gpa, buf).map_err(bridge_error);
        }
        let mut done = 0;
        for piece in self.ram.layout().pieces(gpa, buf.len() as u64) {
            let part = &mut buf[done..done + piece.len as usize];
            match piece.offset {
                Some(_) => self.ram.read_into(piece.gpa, part).map_err(bridge_error)?,
                None => part.fill(0),
            }
            done += piece.len as usize;
        }
        // past the end of the address space
        buf[done..].fill(0);
        Ok(())
    }
}

/// What the guest wrote in one interval.
#[pyclass(frozen, get_all, module = "qemu_bridge")]
struct ChangeSet {
    /// How many pages changed.
    pages: usize,
    /// The guest-physical ranges of those pages, merged: `(start, end)` pairs.
    ranges: Vec<(u64, u64)>,
    /// Pages that changed at no guest-physical address (RAM no region maps).
    unmapped_pages: usize,
}

#[pymethods]
impl ChangeSet {
    fn __repr__(&self) -> String {
        format!("<qemu_bridge.ChangeSet {} pages in {} ranges>", self.pages, self.ranges.len())
    }
}

/// The iterator `Vm.changes` returns.
#[pyclass(frozen, module = "qemu_bridge")]
struct Changes {
    changes: Mutex<qemu_bridge::Changes<Arc<SharedMemoryBridge>>>,
}

#[pymethods]
impl Changes {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<ChangeSet> {
        let set = py.detach(|| {
            let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
            changes.next().expect("Changes never ends")
        });
        let set = set.map_err(bridge_error)?;
        Ok(ChangeSet {
            pages: set.pages,
            ranges: set.ranges.iter().map(|range| (range.start, range.end)).collect(),
            unmapped_pages: set.unmapped_pages,
        })
    }

    /// `soft-dirty` or `fingerprints`.
    #[getter]
    fn method(&self) -> String {
        self.changes.lock().unwrap_or_else(|e| e.into_inner()).method().to_string()
    }
}

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(list, module)?)?;
    module.add_function(wrap_pyfunction!(open, module)?)?;
    module.add_class::<Vm>()?;
    module.add_class::<ChangeSet>()?;
    module.add_class::<Changes>()?;
    module.add_class::<buffer::RamView>()?;
    module.add_class::<btf::BtfIndex>()?;
    linux::register(module)?;
    errors::register(module)?;
    Ok(())
}
