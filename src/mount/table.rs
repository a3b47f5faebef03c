//! The directories of the tree as tables: a row per file (its name, whether a VM has it, its
//! size, how its bytes are had), then its subdirectories; and the directories whose entries
//! come from the VM (the VMs, the vCPUs, the processes, the Volatility table). [`place`] finds
//! what a node is; `tree.rs` serves it over FUSE.
//!
//! Adding a file under `linux/` is one row of [`LINUX`] and the function that makes its bytes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::Errno;

use super::inode::{Cpu, Node, Pid, Row, VmNumber};
use super::per_vm::{core_now, linux_now, LinuxNowError, MountedVm, Registry};
use super::tree::Handle;
use crate::guest::linux::{LinuxFile, ProcessFile};
use crate::ram::BridgeError;
use crate::ram::DEFAULT_ATTEMPTS;

/// How long the kernel may keep the name of what lives as long as its VM.
const TTL: Duration = Duration::from_secs(1);
/// How long the kernel may keep the name of what can vanish at any time (a VM, `linux/`, a
/// vCPU, a process, a table): not at all, so that it is gone at the next path walk.
const VANISHING: Duration = Duration::ZERO;
/// How long the kernel may keep the attributes of every node, even one whose name can vanish
/// (the next path walk asks for its name again, and gets fresh attributes with it): an `fstat`
/// of a file open, as `cat` makes two of each file it reads, needs no round trip.
pub(super) const ATTRIBUTES: Duration = TTL;

/// A file of a directory's table; `C` is what the directory adds to its VM (a vCPU, a pid).
pub(super) struct File<C> {
    /// Its name (in [`ISF`], none: the kernel names it).
    name: &'static str,
    /// Whether the VM has it.
    exists: fn(&MountedVm) -> bool,
    /// Its size in `stat`. Generated files report 0: opened with direct I/O, they are read to
    /// EOF.
    size: fn(&MountedVm, C) -> u64,
    /// How its bytes are had when it is opened.
    open: Open<C>,
}

/// How a file is opened.
enum Open<C> {
    /// `ram`: the mapping itself, or the RAM file for the kernel to read (passthrough).
    Ram,
    /// Bytes made now.
    Text(fn(&MountedVm, C) -> Result<Vec<u8>, GenerateError>),
    /// A handle made now.
    Handle(fn(&Arc<MountedVm>, C) -> Result<Handle, GenerateError>),
}

impl<C> File<C> {
    /// A file every VM has, its bytes made when it is opened.
    const fn text(name: &'static str, make: fn(&MountedVm, C) -> Result<Vec<u8>, GenerateError>) -> Self {
        File { name, exists: always, size: generated, open: Open::Text(make) }
    }

    /// A file every VM has, opened as the handle `open` makes.
    const fn handle(
        name: &'static str,
        open: fn(&Arc<MountedVm>, C) -> Result<Handle, GenerateError>,
    ) -> Self {
        File { name, exists: always, size: generated, open: Open::Handle(open) }
    }
}

/// A subdirectory in a directory's table.
struct Subdir {
    name: &'static str,
    node: fn(VmNumber) -> Node,
    /// Whether the VM has it.
    exists: fn(&MountedVm) -> bool,
}

/// A directory of `LEN` files and some subdirectories, listed in that order.
pub(super) struct Table<C: 'static, const LEN: usize> {
    /// Its path in the VM's directory, for log lines.
    path: fn(C) -> String,
    files: &'static [File<C>],
    dirs: &'static [Subdir],
    /// The node of its file in `row`.
    node: fn(VmNumber, C, Row<LEN>) -> Node,
    /// How long the kernel may keep its files' names.
    ttl: Duration,
    /// Whether opening its files is written to the audit log (guest RAM's own files).
    audited: bool,
}

impl<C, const LEN: usize> Table<C, LEN> {
    fn file(&self, row: Row<LEN>) -> &'static File<C> {
        // LEN is the table's length (see the constants below it): every row is in it
        &self.files[row.index()]
    }
}

fn always(_: &MountedVm) -> bool {
    true
}

/// Generated on open, no size.
fn generated<C>(_: &MountedVm, _: C) -> u64 {
    0
}

/// `<vm>/`: guest RAM, what QEMU says of the VM, and what is computed from both.
pub(super) static VM: Table<(), VM_FILES> = Table {
    path: |()| String::new(),
    files: VM_ROWS,
    dirs: &[
        Subdir { name: "cpus", node: Node::Cpus, exists: always },
        Subdir { name: "linux", node: Node::Linux, exists: is_linux },
    ],
    node: |vm, (), row| Node::VmFile(vm, row),
    ttl: TTL,
    audited: true,
};
const VM_ROWS: &[File<()>] = &[
    File { name: "ram", exists: always, size: |vm, ()| vm.bridge.size() as u64, open: Open::Ram },
    File {
        name: "physical",
        exists: always,
        size: |vm, ()| vm.parts.physical.size(),
        open: Open::Handle(|vm, ()| Ok(Handle::Physical(Arc::clone(vm)))),
    },
    File {
        name: "core",
        exists: always,
        size: |vm, ()| vm.parts.core.size(),
        // the vCPUs' registers as of this open; same size as the core `stat` reports
        open: Open::Handle(|vm, ()| Ok(Handle::Core(Arc::clone(vm), core_now(vm)))),
    },
    File::text("status", |vm, ()| status(vm)),
    File::text("memdev.json", |vm, ()| memdev(vm)),
    File::text("checksum", |vm, ()| checksum(vm)),
    File::text("layout.json", |vm, ()| layout(vm)),
    File::text("map.png", |vm, ()| map_png(vm)),
    File::text("vmcoreinfo", |vm, ()| vmcoreinfo(vm)),
];
/// Files of [`VM`].
pub(super) const VM_FILES: usize = VM_ROWS.len();

/// `<vm>/cpus/<n>/`: a vCPU's registers and, where the registers say where its page tables are
/// (x86_64, riscv64: QEMU gives no TTBR of aarch64 vCPUs), its address space.
pub(super) static CPU: Table<Cpu, CPU_FILES> = Table {
    path: |cpu| format!("cpus/{}", cpu.index()),
    files: CPU_ROWS,
    dirs: &[],
    node: |vm, cpu, row| Node::CpuFile(vm, cpu, row),
    ttl: VANISHING,
    audited: false,
};
const CPU_ROWS: &[File<Cpu>] = &[
    File::text("registers", registers),
    File { name: "mappings", exists: has_paging, size: generated, open: Open::Text(mappings) },
    File { name: "memory", exists: has_paging, size: cpu_space_size, open: Open::Handle(open_cpu_memory) },
];
/// Files of [`CPU`].
pub(super) const CPU_FILES: usize = CPU_ROWS.len();

/// `<vm>/linux/`: what a Linux guest's kernel says of itself, read from its memory.
pub(super) static LINUX: Table<(), LINUX_FILES> = Table {
    path: |()| "linux".into(),
    files: LINUX_ROWS,
    dirs: &[
        Subdir { name: "proc", node: Node::Proc, exists: always },
        Subdir { name: "volatility", node: Node::Volatility, exists: always },
    ],
    node: |vm, (), row| Node::LinuxFile(vm, row),
    ttl: TTL,
    audited: false,
};
const LINUX_ROWS: &[File<()>] = &[
    File::text("version", |vm, ()| linux_text(vm, LinuxFile::Version)),
    File::text("kallsyms", |vm, ()| linux_text(vm, LinuxFile::Kallsyms)),
    File::text("dmesg", |vm, ()| linux_text(vm, LinuxFile::Dmesg)),
    // BTF readers take the size before they read
    File {
        size: |vm, ()| super::per_vm::btf_size_now(vm),
        ..File::text("btf", |vm, ()| linux_text(vm, LinuxFile::Btf))
    },
    File::text("tasks", |vm, ()| linux_text(vm, LinuxFile::Tasks)),
    File::text("modules", |vm, ()| linux_text(vm, LinuxFile::Modules)),
];
/// Files of [`LINUX`].
pub(super) const LINUX_FILES: usize = LINUX_ROWS.len();

/// `<vm>/linux/proc/<pid>/`: one process, as `/proc/<pid>/`.
pub(super) static PROCESS: Table<Pid, PROCESS_FILES> = Table {
    path: |pid| format!("linux/proc/{}", pid.get()),
    files: PROCESS_ROWS,
    dirs: &[],
    node: |vm, pid, row| Node::ProcessFile(vm, pid, row),
    // a process's files live as long as its directory, whose name is asked again at every
    // path walk (a process that exits takes them with it); a `cat` of each file then costs no
    // lookup of its name after the shell's glob looked it up
    ttl: TTL,
    audited: false,
};
const PROCESS_ROWS: &[File<Pid>] = &[
    File::handle("status", |vm, pid| open_process_file(Arc::clone(vm), pid.get(), ProcessFile::Status)),
    File::handle("cmdline", |vm, pid| open_process_file(Arc::clone(vm), pid.get(), ProcessFile::Cmdline)),
    File::handle("environ", |vm, pid| open_process_file(Arc::clone(vm), pid.get(), ProcessFile::Environ)),
    File::handle("maps", |vm, pid| open_process_file(Arc::clone(vm), pid.get(), ProcessFile::Maps)),
    // the size of the kernel's address space (2^48 or 2^57)
    File {
        size: |vm, _| linux_now(vm).map_or(0, |guest| guest.kernel().paging().mode().space_size()),
        ..File::handle("mem", |vm, pid| open_process_file(Arc::clone(vm), pid.get(), ProcessFile::Mem))
    },
];
/// Files of [`PROCESS`].
pub(super) const PROCESS_FILES: usize = PROCESS_ROWS.len();

/// `<vm>/linux/volatility/<release>-<hash>.json`, named by [`Volatility`]. It has its size: it
/// is made once per boot, and readers may take the size first.
static ISF: File<()> = File {
    name: "",
    exists: always,
    size: |vm, ()| isf_now(vm).map_or(0, |(_, isf)| isf.len() as u64),
    open: Open::Handle(|vm, ()| {
        isf_now(vm).map(|(_, isf)| Handle::Shared(isf)).map_err(|err| match err {
            // said as EIO, as before the tables (the other files of `linux/` say ENODATA)
            GenerateError::NoVmcoreinfo => GenerateError::Linux(LinuxNowError::NoVmcoreinfo),
            err => err,
        })
    }),
};

/// A node as the tree serves it: what it is, and how long its name holds.
pub(super) struct Place {
    /// The node.
    pub node: Node,
    /// How long the kernel may keep its name, found by lookup (its attributes hold
    /// [`ATTRIBUTES`]).
    pub ttl: Duration,
    /// Its times: its VM's admission (the mount's for the root).
    pub time: SystemTime,
    /// A directory or a file.
    pub what: What,
}

/// A directory, or a file of a VM.
pub(super) enum What {
    /// A directory.
    Dir(Box<dyn Directory>),
    /// A file of `vm`.
    File {
        /// Its VM.
        vm: Arc<MountedVm>,
        /// The file.
        file: Box<dyn Content>,
    },
}

/// What a node is now: `None` if its VM is gone. `mounted_at` is the root's time.
pub(super) fn place(registry: &Arc<Registry>, node: Node, mounted_at: SystemTime) -> Option<Place> {
    let Some(number) = node.vm() else {
        let vms = Box::new(Vms(Arc::clone(registry)));
        return Some(Place { node, ttl: TTL, time: mounted_at, what: What::Dir(vms) });
    };
    let vm = registry.by_number(number.get())?;
    // TTL 0 for what can vanish before its VM does: a vCPU unplugged, a process that exits,
    // the table of a kernel that reboots into another. `linux/` keeps its name as its files do
    // theirs (a guest that reboots into no Linux shows it a second more: its files then say
    // why they cannot be read)
    let (ttl, what) = match node {
        Node::Root => return None, // has no VM: answered above
        Node::Vm(_) => (VANISHING, rows(&VM, &vm, number, ())),
        Node::Cpus(_) => (TTL, What::Dir(Box::new(Cpus(Arc::clone(&vm), number)))),
        Node::Cpu(_, cpu) => (VANISHING, rows(&CPU, &vm, number, cpu)),
        Node::Linux(_) => (TTL, rows(&LINUX, &vm, number, ())),
        Node::Proc(_) => (TTL, What::Dir(Box::new(Processes(Arc::clone(&vm), number)))),
        Node::Process(_, pid) => (VANISHING, rows(&PROCESS, &vm, number, pid)),
        Node::Volatility(_) => (TTL, What::Dir(Box::new(Volatility(Arc::clone(&vm), number)))),
        Node::VmFile(_, row) => table_file(&VM, &vm, (), row),
        Node::CpuFile(_, cpu, row) => table_file(&CPU, &vm, cpu, row),
        Node::LinuxFile(_, row) => table_file(&LINUX, &vm, (), row),
        Node::ProcessFile(_, pid, row) => table_file(&PROCESS, &vm, pid, row),
        Node::Isf(_) => (VANISHING, bound(&ISF, &vm, (), |()| "linux/volatility".into(), false)),
    };
    Some(Place { node, ttl, time: vm.since, what })
}

/// The directory of `table` in `vm`.
fn rows<C: Copy + 'static, const LEN: usize>(
    table: &'static Table<C, LEN>,
    vm: &Arc<MountedVm>,
    number: VmNumber,
    context: C,
) -> What {
    What::Dir(Box::new(Rows { table, vm: Arc::clone(vm), number, context }))
}

/// The file in `row` of `table` in `vm`, and its attributes' TTL.
fn table_file<C: Copy + 'static, const LEN: usize>(
    table: &'static Table<C, LEN>,
    vm: &Arc<MountedVm>,
    context: C,
    row: Row<LEN>,
) -> (Duration, What) {
    (table.ttl, bound(table.file(row), vm, context, table.path, table.audited))
}

fn bound<C: Copy + 'static>(
    file: &'static File<C>,
    vm: &Arc<MountedVm>,
    context: C,
    dir: fn(C) -> String,
    audited: bool,
) -> What {
    let content = Bound { file, vm: Arc::clone(vm), context, dir, audited };
    What::File { vm: Arc::clone(vm), file: Box::new(content) }
}

/// A directory's entries.
pub(super) trait Directory {
    /// Its entries now (without `.` and `..`), in listing order.
    ///
    /// # Errors
    ///
    /// The errno of a listing that cannot be made (the cause is logged).
    fn entries(&self) -> Result<Vec<(String, Node)>, Errno>;

    /// Its entry `name`, if it has one now.
    fn find(&self, name: &str) -> Option<Node>;
}

/// How a file opens.
pub(super) enum Opening {
    /// `ram`: the tree opens it (passthrough).
    Ram,
    /// A handle, or why none could be made.
    Handle(Result<Handle, GenerateError>),
}

/// A file of a VM.
pub(super) trait Content {
    /// Its name in the audit log.
    fn name(&self) -> &'static str;
    /// Its path in the VM's directory, for log lines.
    fn path(&self) -> String;
    /// Whether opening it is written to the audit log.
    fn audited(&self) -> bool;
    /// Its size in `stat`.
    fn size(&self) -> u64;
    /// It opened now.
    fn open(&self) -> Opening;
}

/// A table's directory in one VM (and vCPU, or process).
struct Rows<C: 'static, const LEN: usize> {
    table: &'static Table<C, LEN>,
    vm: Arc<MountedVm>,
    number: VmNumber,
    context: C,
}

impl<C: Copy, const LEN: usize> Directory for Rows<C, LEN> {
    fn entries(&self) -> Result<Vec<(String, Node)>, Errno> {
        let table = self.table;
        let files = Row::all()
            .filter(|row| (table.file(*row).exists)(&self.vm))
            .map(|row| (table.file(row).name.into(), (table.node)(self.number, self.context, row)));
        let dirs = table.dirs.iter().filter(|dir| (dir.exists)(&self.vm));
        Ok(files.chain(dirs.map(|dir| (dir.name.into(), (dir.node)(self.number)))).collect())
    }

    fn find(&self, name: &str) -> Option<Node> {
        let table = self.table;
        if let Some(row) = Row::all().find(|row| table.file(*row).name == name) {
            return (table.file(row).exists)(&self.vm).then(|| (table.node)(self.number, self.context, row));
        }
        let dir = table.dirs.iter().find(|dir| dir.name == name)?;
        (dir.exists)(&self.vm).then(|| (dir.node)(self.number))
    }
}

/// A table's file in one VM (and vCPU, or process).
struct Bound<C: 'static> {
    file: &'static File<C>,
    vm: Arc<MountedVm>,
    context: C,
    dir: fn(C) -> String,
    audited: bool,
}

impl<C: Copy> Content for Bound<C> {
    fn name(&self) -> &'static str {
        self.file.name
    }

    fn path(&self) -> String {
        match ((self.dir)(self.context), self.file.name) {
            (dir, "") => dir,
            (dir, name) if dir.is_empty() => name.into(),
            (dir, name) => format!("{dir}/{name}"),
        }
    }

    fn audited(&self) -> bool {
        self.audited
    }

    fn size(&self) -> u64 {
        (self.file.size)(&self.vm, self.context)
    }

    fn open(&self) -> Opening {
        match self.file.open {
            Open::Ram => Opening::Ram,
            Open::Text(make) => Opening::Handle(make(&self.vm, self.context).map(Handle::Text)),
            Open::Handle(open) => Opening::Handle(open(&self.vm, self.context)),
        }
    }
}

/// `/`: one directory per VM.
struct Vms(Arc<Registry>);

impl Directory for Vms {
    fn entries(&self) -> Result<Vec<(String, Node)>, Errno> {
        let vms = self.0.list().into_iter();
        Ok(vms.filter_map(|vm| Some((vm.vm.name().as_str().into(), Node::Vm(numbered(&vm)?)))).collect())
    }

    fn find(&self, name: &str) -> Option<Node> {
        Some(Node::Vm(numbered(&*self.0.lookup(name)?)?))
    }
}

/// The VM's number, if it has inodes (else said in the log: it is not served).
fn numbered(vm: &MountedVm) -> Option<VmNumber> {
    let number = VmNumber::new(vm.number);
    if number.is_none() {
        log::warn!("VM {}: number {} past the last with inodes; not served", vm.vm.name(), vm.number);
    }
    number
}

/// `<vm>/cpus/`: one directory per vCPU.
struct Cpus(Arc<MountedVm>, VmNumber);

impl Directory for Cpus {
    fn entries(&self) -> Result<Vec<(String, Node)>, Errno> {
        let count = match vcpus_now(&self.0) {
            Ok(vcpus) => vcpus.len(),
            Err(err) => {
                log::warn!("{}/cpus: {}", self.0.vm.name(), crate::error::chain(&err));
                return Err(Errno::EIO);
            }
        };
        let cpus = (0..count).map_while(Cpu::new);
        Ok(cpus.map(|cpu| (cpu.index().to_string(), Node::Cpu(self.1, cpu))).collect())
    }

    fn find(&self, name: &str) -> Option<Node> {
        let cpu = Cpu::new(name.parse().ok()?)?;
        let count = vcpus_now(&self.0).map_or(0, |vcpus| vcpus.len());
        (cpu.index() < count).then_some(Node::Cpu(self.1, cpu))
    }
}

/// `<vm>/linux/proc/`: one directory per process.
struct Processes(Arc<MountedVm>, VmNumber);

impl Directory for Processes {
    fn entries(&self) -> Result<Vec<(String, Node)>, Errno> {
        match pids_now(&self.0) {
            Ok(pids) => {
                Ok(pids.into_iter().map(|pid| (pid.get().to_string(), Node::Process(self.1, pid))).collect())
            }
            Err(err) => {
                log::warn!("{}/linux/proc: {}", self.0.vm.name(), crate::error::chain(&err));
                Err(Errno::EIO)
            }
        }
    }

    /// A process found by its pid (the kernel's pid tree), not by listing them all.
    fn find(&self, name: &str) -> Option<Node> {
        let pid = Pid::new(name.parse().ok()?)?;
        let found = linux_now(&self.0).map_err(GenerateError::from).and_then(|guest| {
            guest.task(&self.0.bridge, pid.get()).map_err(|err| LinuxNowError::Linux(err).into())
        });
        match found {
            Ok(task) => task.map(|_| Node::Process(self.1, pid)),
            Err(err) => {
                log::debug!("{}/linux/proc/{}: {}", self.0.vm.name(), pid.get(), crate::error::chain(&err));
                None
            }
        }
    }
}

/// `<vm>/linux/volatility/`: the kernel's symbol table, named by the kernel.
struct Volatility(Arc<MountedVm>, VmNumber);

impl Directory for Volatility {
    fn entries(&self) -> Result<Vec<(String, Node)>, Errno> {
        match isf_now(&self.0) {
            Ok((name, _)) => Ok(vec![(name, Node::Isf(self.1))]),
            // a kernel without usable types has no table: an empty directory, and why in the log
            Err(err) => {
                log::warn!("{}/linux/volatility: {}", self.0.vm.name(), crate::error::chain(&err));
                Ok(Vec::new())
            }
        }
    }

    fn find(&self, name: &str) -> Option<Node> {
        let (isf_name, _) = isf_now(&self.0).ok()?;
        (isf_name == name).then_some(Node::Isf(self.1))
    }
}

/// Why a generated file could not be made.
#[derive(Debug, thiserror::Error)]
pub(super) enum GenerateError {
    /// QEMU did not answer as asked.
    #[error("cannot ask QEMU")]
    Qmp(#[from] crate::vm::VmError),
    /// The RAM could not be read.
    #[error("cannot read the RAM")]
    Ram(#[from] BridgeError),
    /// The picture could not be encoded.
    #[error("cannot encode the picture")]
    Png(#[source] std::io::Error),
    /// The JSON could not be written.
    #[error("cannot write the JSON")]
    Json(#[from] serde_json::Error),
    /// The guest's RAM holds no vmcoreinfo (not Linux, or not booted yet).
    #[error("no vmcoreinfo in the guest's RAM (not a Linux guest, or not booted yet)")]
    NoVmcoreinfo,
    /// The guest's kernel could not be read.
    #[error("cannot read the guest's kernel")]
    Linux(#[source] LinuxNowError),
    /// No process has that pid (any more).
    #[error("no process {0}")]
    NoProcess(i32),
    /// The vCPU does not exist (any more) or has no paging to walk.
    #[error("no virtual address space")]
    Paging(#[from] crate::guest::VcpuPagingError),
}

impl GenerateError {
    /// What `open` answers.
    pub(super) fn errno(&self) -> Errno {
        match self {
            GenerateError::NoProcess(_)
            | GenerateError::Paging(crate::guest::VcpuPagingError::NoSuchVcpu { .. }) => Errno::ENOENT,
            GenerateError::NoVmcoreinfo | GenerateError::Paging(_) => Errno::ENODATA,
            _ => Errno::EIO,
        }
    }
}

impl From<LinuxNowError> for GenerateError {
    fn from(err: LinuxNowError) -> Self {
        match err {
            LinuxNowError::NoVmcoreinfo => GenerateError::NoVmcoreinfo,
            LinuxNowError::Ram(err) => GenerateError::Ram(err),
            other => GenerateError::Linux(other),
        }
    }
}

/// A text file's content: the text and a newline.
fn line(mut text: String) -> Result<Vec<u8>, GenerateError> {
    text.push('\n');
    Ok(text.into_bytes())
}

/// `status`: QEMU's run state.
fn status(vm: &MountedVm) -> Result<Vec<u8>, GenerateError> {
    line(vm.with_qmp(|qmp| qmp.query_status())?.status.to_string())
}

/// `memdev.json`: where each backend's RAM is and how it is read, and where it lies in `ram`.
fn memdev(vm: &MountedVm) -> Result<Vec<u8>, GenerateError> {
    let backends = vm.with_qmp(crate::vm::memdev_with_paths)?;
    let json: Vec<serde_json::Value> = backends
        .into_iter()
        .map(|backend| {
            let qom_path = backend.qom_path();
            let mut fields = backend.fields;
            if let Some(used) = vm.info.backends.iter().find(|used| used.qom_path == qom_path) {
                fields.insert("kind".into(), serde_json::json!(used.kind));
                fields.insert("zero-copy".into(), serde_json::json!(used.kind.zero_copy()));
                fields.insert("ram-path".into(), serde_json::json!(used.ram_path));
                fields.insert("ram-offset".into(), serde_json::json!(used.offset));
            }
            serde_json::Value::Object(fields)
        })
        .collect();
    line(serde_json::to_string_pretty(&json)?)
}

/// `checksum`: the hash of a consistent snapshot, with its verdict.
fn checksum(vm: &MountedVm) -> Result<Vec<u8>, GenerateError> {
    line(vm.bridge.consistent_snapshot(DEFAULT_ATTEMPTS)?.summary_line())
}

/// `layout.json`: the guest-physical ranges and where each lives in `ram`.
fn layout(vm: &MountedVm) -> Result<Vec<u8>, GenerateError> {
    let json = serde_json::json!({
        "machine": vm.info.machine,
        "ram_size": vm.info.ram_size,
        "ram_path": vm.info.ram_path,
        "source": vm.bridge.layout().source(),
        "regions": vm.bridge.layout().regions(),
    });
    line(serde_json::to_string_pretty(&json)?)
}

/// `map.png`: a picture, not text (no newline).
fn map_png(vm: &MountedVm) -> Result<Vec<u8>, GenerateError> {
    let classes = crate::ram::picture::page_classes(vm.bridge.mapping())?;
    crate::ram::picture::png(&classes).map_err(GenerateError::Png)
}

/// `vmcoreinfo`: the kernel's text as it is, newline-terminated already.
fn vmcoreinfo(vm: &MountedVm) -> Result<Vec<u8>, GenerateError> {
    let info = super::per_vm::vmcoreinfo_now(vm)?.ok_or(GenerateError::NoVmcoreinfo)?;
    Ok(info.text.into_bytes())
}

/// Every vCPU's registers now (one HMP exchange).
fn vcpus_now(vm: &MountedVm) -> Result<Vec<crate::guest::VcpuRegisters>, crate::vm::VmError> {
    crate::vm::vcpu_registers(|ask| vm.with_qmp(ask))
}

/// Whether the guest's vCPUs have page tables to walk: the registers say where they are
/// (x86_64, riscv64; QEMU gives no TTBR of aarch64 vCPUs).
fn has_paging(vm: &MountedVm) -> bool {
    vm.info.arch.page_table_root_in_registers()
}

/// `cpus/<n>/registers`: JSON, as QEMU reports them now.
fn registers(vm: &MountedVm, cpu: Cpu) -> Result<Vec<u8>, GenerateError> {
    let vcpus = vcpus_now(vm)?;
    let cpu = cpu.index();
    let registers =
        vcpus.get(cpu).ok_or(crate::guest::VcpuPagingError::NoSuchVcpu { cpu, count: vcpus.len() })?;
    line(serde_json::to_string_pretty(&crate::guest::virtual_space::registers_json(
        &vm.info.arch,
        cpu,
        registers,
    ))?)
}

/// `cpus/<n>/mappings`: every mapping of the vCPU's page tables now.
fn mappings(vm: &MountedVm, cpu: Cpu) -> Result<Vec<u8>, GenerateError> {
    let vcpus = vcpus_now(vm)?;
    let text = match crate::guest::vcpu_paging(&vm.info.arch, &vcpus, cpu.index(), None) {
        Ok(paging) => crate::guest::virtual_space::mappings_text(
            &paging,
            &vm.bridge,
            crate::guest::paging::Limits::default(),
        ),
        // a vCPU without paging (real mode, booting) has a dump of one line that says so
        Err(err @ crate::guest::VcpuPagingError::Paging { .. }) => {
            format!("error: {}\n", crate::error::chain(&err))
        }
        Err(err) => return Err(err.into()),
    };
    Ok(text.into_bytes())
}

/// `cpus/<n>/memory`: the vCPU's virtual address space, through its page tables now.
fn open_cpu_memory(vm: &Arc<MountedVm>, cpu: Cpu) -> Result<Handle, GenerateError> {
    let paging = crate::guest::vcpu_paging(&vm.info.arch, &vcpus_now(vm)?, cpu.index(), None)?;
    Ok(Handle::Virtual(Arc::clone(vm), crate::guest::VirtualSpace::new(paging)))
}

/// The size of `cpus/<n>/memory`: the vCPU's address space now (2^48 or 2^57; 0 without
/// paging).
fn cpu_space_size(vm: &MountedVm, cpu: Cpu) -> u64 {
    vcpus_now(vm)
        .ok()
        .and_then(|vcpus| crate::guest::vcpu_paging(&vm.info.arch, &vcpus, cpu.index(), None).ok())
        .map_or(0, |paging| paging.mode().space_size())
}

/// Whether the VM is a Linux guest whose kernel can be read (its RAM holds a vmcoreinfo).
fn is_linux(instance: &MountedVm) -> bool {
    super::per_vm::vmcoreinfo_now(instance).ok().flatten().is_some()
}

/// A `linux/` file's text now: what the kernel's structures say, or one `error:` line saying
/// what in them is wrong (the guest's memory is its own to break).
fn linux_text(instance: &MountedVm, view: crate::guest::linux::LinuxFile) -> Result<Vec<u8>, GenerateError> {
    Ok(match linux_now(instance) {
        Ok(guest) => view.render(&guest, &instance.bridge),
        Err(LinuxNowError::Linux(err)) => Err(err),
        Err(err) => return Err(err.into()),
    }
    .unwrap_or_else(|err| error_line(&err)))
}

/// One line that says what went wrong, as a generated file's whole content.
fn error_line(err: &dyn std::error::Error) -> Vec<u8> {
    format!("error: {}\n", crate::error::chain(err)).into_bytes()
}

/// The guest kernel's Volatility symbol table and its file name (made once per boot).
fn isf_now(instance: &MountedVm) -> Result<(String, Arc<Vec<u8>>), GenerateError> {
    let guest = linux_now(instance)?;
    let name = guest.isf_name(&instance.bridge).map_err(LinuxNowError::Linux)?;
    Ok((name, guest.isf(&instance.bridge).map_err(LinuxNowError::Linux)?))
}

/// The pids of the guest's processes now (the idle task, pid 0, is none of `/proc`'s).
fn pids_now(instance: &MountedVm) -> Result<Vec<Pid>, GenerateError> {
    let guest = linux_now(instance)?;
    let tasks = guest.tasks(&instance.bridge).map_err(LinuxNowError::Linux)?;
    Ok(tasks.into_iter().filter_map(|task| Pid::new(task.pid)).collect())
}

/// A process's file opened: its text now, or its virtual memory through its page tables.
fn open_process_file(instance: Arc<MountedVm>, pid: i32, view: ProcessFile) -> Result<Handle, GenerateError> {
    let guest = linux_now(&instance)?;
    let process = match guest.process(&instance.bridge, pid) {
        Ok(Some(process)) => process,
        Ok(None) => return Err(GenerateError::NoProcess(pid)),
        Err(err) => return Ok(Handle::Text(error_line(&err))),
    };
    if view == ProcessFile::Mem {
        return Ok(match process.paging() {
            Ok(Some(paging)) => {
                Handle::Virtual(Arc::clone(&instance), crate::guest::VirtualSpace::new(paging))
            }
            // a kernel thread has no memory of its own
            Ok(None) => Handle::Text(Vec::new()),
            Err(err) => Handle::Text(error_line(&err)),
        });
    }
    Ok(Handle::Text(view.render(&process).unwrap_or_else(|err| error_line(&err))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_and_process_files_are_named_as_the_views_they_render() {
        // `volatility` is a directory of its own, whether LinuxFile::ALL has it or not
        let linux_names = LINUX_ROWS.iter().map(|file| file.name).collect::<Vec<_>>();
        let views = LinuxFile::ALL.into_iter().filter(|view| *view != LinuxFile::Volatility);
        assert_eq!(linux_names, views.map(LinuxFile::name).collect::<Vec<_>>());
        let process_names = PROCESS_ROWS.iter().map(|file| file.name).collect::<Vec<_>>();
        assert_eq!(process_names, ProcessFile::ALL.map(ProcessFile::name));
    }

    #[test]
    fn every_table_has_the_rows_its_inodes_count() {
        assert_eq!(VM.files.len(), VM_FILES);
        assert_eq!(CPU.files.len(), CPU_FILES);
        assert_eq!(LINUX.files.len(), LINUX_FILES);
        assert_eq!(PROCESS.files.len(), PROCESS_FILES);
        // the names of today's tree, in its listing order
        let names = |files: &[File<()>]| files.iter().map(|file| file.name).collect::<Vec<_>>();
        let vm = ["ram", "physical", "core", "status", "memdev.json", "checksum", "layout.json", "map.png"];
        assert_eq!(names(VM_ROWS), [&vm[..], &["vmcoreinfo"]].concat());
        assert_eq!(
            CPU_ROWS.iter().map(|file| file.name).collect::<Vec<_>>(),
            ["registers", "mappings", "memory"]
        );
        assert_eq!(VM.dirs.iter().map(|dir| dir.name).collect::<Vec<_>>(), ["cpus", "linux"]);
        assert_eq!(LINUX.dirs.iter().map(|dir| dir.name).collect::<Vec<_>>(), ["proc", "volatility"]);
    }

    #[test]
    fn every_row_is_in_the_directory_its_inode_says() {
        fn check<C: Copy, const LEN: usize>(table: &Table<C, LEN>, context: C, dir: Node) {
            let vm = dir.vm().unwrap();
            for row in Row::all() {
                let node = (table.node)(vm, context, row);
                assert!(!node.is_directory() && node.parent() == dir, "{node:?} in {dir:?}");
            }
            for subdir in table.dirs {
                let node = (subdir.node)(vm);
                assert!(node.is_directory() && node.parent() == dir, "{node:?} in {dir:?}");
            }
        }
        let vm = VmNumber::new(7).unwrap();
        let (cpu, pid) = (Cpu::new(3).unwrap(), Pid::new(42).unwrap());
        check(&VM, (), Node::Vm(vm));
        check(&CPU, cpu, Node::Cpu(vm, cpu));
        check(&LINUX, (), Node::Linux(vm));
        check(&PROCESS, pid, Node::Process(vm, pid));
        assert_eq!(Node::Isf(vm).parent(), Node::Volatility(vm));
    }

    #[test]
    fn no_directory_has_two_entries_of_one_name() {
        fn names<C, const LEN: usize>(table: &Table<C, LEN>) -> Vec<&'static str> {
            let mut names: Vec<_> = table.files.iter().map(|file| file.name).collect();
            names.extend(table.dirs.iter().map(|dir| dir.name));
            names
        }
        for names in [names(&VM), names(&CPU), names(&LINUX), names(&PROCESS)] {
            let mut unique = names.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), names.len(), "{names:?}");
            assert!(names.iter().all(|name| !name.is_empty() && !name.contains('/')), "{names:?}");
        }
    }
}
