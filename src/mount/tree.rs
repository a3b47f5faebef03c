//! The file tree served over FUSE:
//!
//! ```text
//! /<vm>/ram           guest RAM in file order, straight from the mapping (direct I/O)
//! /<vm>/status        live query-status state, one line
//! /<vm>/memdev.json   live query-memdev plus each backend's mem-path
//! /<vm>/checksum      sha256 of a consistency-checked snapshot, with its verdict
//! /<vm>/layout.json   how guest-physical addresses map onto `ram` offsets
//! /<vm>/physical      guest-physical address space (offset = address, holes read zeros)
//! /<vm>/core          live ELF core of the guest
//! /<vm>/map.png       picture of guest RAM: one pixel per page, by class, along a Hilbert curve
//! /<vm>/vmcoreinfo    the guest kernel's vmcoreinfo text, found in its RAM (Linux guests)
//! /<vm>/linux/version      a Linux guest's banner, kallsyms and dmesg, from its memory
//! /<vm>/linux/kallsyms     (only for VMs whose RAM holds a Linux vmcoreinfo)
//! /<vm>/linux/dmesg
//! /<vm>/linux/btf
//! /<vm>/linux/tasks
//! /<vm>/linux/modules
//! /<vm>/linux/proc/<pid>/{status,cmdline,environ,maps,mem}   one process, as /proc/<pid>/
//! /<vm>/linux/volatility/<release>-<hash>.json   a Volatility 3 symbol table (vol -s DIR)
//! /<vm>/cpus/<n>/registers  vCPU n's registers now (JSON)
//! /<vm>/cpus/<n>/mappings   every mapping of vCPU n's page tables now (x86_64, riscv64)
//! /<vm>/cpus/<n>/memory     vCPU n's virtual address space, sparse (x86_64, riscv64)
//! ```

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use std::borrow::Cow;

use super::audit::{AuditEvent, AuditLog, AuditOp};
use super::parts::{core_now, linux_now, LinuxNowError, MountedVm, Registry};
use crate::guest::linux::ProcessView;

/// Inodes per VM: directory, files, the `linux` directory and its files, the `cpus` directory.
const INODES_PER_INSTANCE: u64 = 32;
/// The offset of a VM's `cpus` directory among its inodes (after its files).
const CPUS_OFFSET: u64 = 31;
/// The offset of a VM's `linux` directory; its files are at `LINUX_FILES_OFFSET` on.
const LINUX_OFFSET: u64 = 30;
const LINUX_FILES_OFFSET: u64 = 16;
/// The offset of a VM's `linux/proc` directory.
const LINUX_PROC_OFFSET: u64 = 29;
/// The offset of a VM's `linux/volatility` directory, and of the symbol table in it.
const LINUX_VOLATILITY_OFFSET: u64 = 28;
const LINUX_ISF_OFFSET: u64 = 27;
// every file of a VM, of `linux` and the three directories have inodes of their own
const _: () = assert!((VmFile::ALL.len() as u64) < LINUX_FILES_OFFSET);
const _: () = assert!(LINUX_FILES_OFFSET + crate::guest::linux::View::ALL.len() as u64 <= LINUX_ISF_OFFSET);
/// Inodes of the process directories (`linux/proc/<pid>`) and their files: this bit, the VM's
/// number from bit 32, the pid from bit 3, the file in bits 2..0 (its index + 1; 0 for the
/// directory).
const PROCESS_INODES: u64 = 1 << 61;
const PROCESS_NUMBER_SHIFT: u32 = 32;
const PID_SHIFT: u32 = 3;
/// Pids that have inodes (Linux's `PID_MAX_LIMIT` is 4 Mi).
const MAX_PID: i32 = 1 << (PROCESS_NUMBER_SHIFT - PID_SHIFT);
/// Inodes of the vCPU directories and their files: this bit, the VM's number from bit 22, the
/// vCPU from bit 2, the file in bits 1..0 (0 for the directory).
const CPU_INODES: u64 = 1 << 62;
const CPU_SHIFT: u32 = 2;
const NUMBER_SHIFT: u32 = 22;
/// vCPU indexes that have inodes (QEMU allows at most 4096 vCPUs on x86_64).
const MAX_CPUS: usize = 1 << (NUMBER_SHIFT - CPU_SHIFT);

/// The inode of a VM's directory; its files follow it.
fn dir_inode(instance: &MountedVm) -> u64 {
    instance.number * INODES_PER_INSTANCE
}
use crate::ram::views::Piece;
use crate::ram::BridgeError;
use crate::ram::DEFAULT_ATTEMPTS;

/// Attributes of files whose content is fixed for an instance's life.
const TTL: Duration = Duration::from_secs(1);

/// The files of a VM directory, by inode offset within the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmFile {
    /// `ram`
    Ram = 1,
    /// `status`
    Status = 2,
    /// `memdev.json`
    Memdev = 3,
    /// `checksum`
    Checksum = 4,
    /// `layout.json`
    Layout = 5,
    /// `physical`
    Physical = 6,
    /// `core`
    Core = 7,
    /// `map.png`
    MapPng = 8,
    /// `vmcoreinfo`
    Vmcoreinfo = 9,
}

impl VmFile {
    /// All files, in listing order.
    pub const ALL: [VmFile; 9] = [
        VmFile::Ram,
        VmFile::Physical,
        VmFile::Core,
        VmFile::Status,
        VmFile::Memdev,
        VmFile::Checksum,
        VmFile::Layout,
        VmFile::MapPng,
        VmFile::Vmcoreinfo,
    ];

    /// The file's name.
    pub fn name(self) -> &'static str {
        match self {
            VmFile::Ram => "ram",
            VmFile::Status => "status",
            VmFile::Memdev => "memdev.json",
            VmFile::Checksum => "checksum",
            VmFile::Layout => "layout.json",
            VmFile::Physical => "physical",
            VmFile::Core => "core",
            VmFile::MapPng => "map.png",
            VmFile::Vmcoreinfo => "vmcoreinfo",
        }
    }

    fn from_name(name: &OsStr) -> Option<Self> {
        Self::ALL.into_iter().find(|file| OsStr::new(file.name()) == name)
    }

    fn from_offset(offset: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|file| *file as u64 == offset)
    }
}

/// The files of a vCPU's directory `cpus/<n>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuFile {
    /// `registers`: JSON, as QEMU reports them now
    Registers = 1,
    /// `mappings`: the page-table dump (x86_64, riscv64)
    Mappings = 2,
    /// `memory`: the virtual address space (x86_64, riscv64)
    Memory = 3,
}

impl CpuFile {
    /// All files, in listing order.
    pub const ALL: [CpuFile; 3] = [CpuFile::Registers, CpuFile::Mappings, CpuFile::Memory];

    /// The file's name.
    pub fn name(self) -> &'static str {
        match self {
            CpuFile::Registers => "registers",
            CpuFile::Mappings => "mappings",
            CpuFile::Memory => "memory",
        }
    }

    /// Whether a guest of architecture `arch` has it: the page tables are walked where the
    /// registers say where they are (x86_64, riscv64; QEMU gives no TTBR of aarch64 vCPUs).
    fn exists_for(self, arch: &crate::guest::Arch) -> bool {
        self == CpuFile::Registers || arch.page_table_root_in_registers()
    }

    fn from_name(name: &OsStr) -> Option<Self> {
        Self::ALL.into_iter().find(|file| OsStr::new(file.name()) == name)
    }

    fn from_offset(offset: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|file| *file as u64 == offset)
    }
}

/// What an inode number names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Root,
    Dir(u64),
    File(u64, VmFile),
    /// `<vm>/cpus`
    Cpus(u64),
    /// `<vm>/linux`
    Linux(u64),
    /// `<vm>/linux/<file>`
    LinuxFile(u64, crate::guest::linux::View),
    /// `<vm>/linux/proc`
    LinuxProc(u64),
    /// `<vm>/linux/volatility`
    LinuxVolatility(u64),
    /// `<vm>/linux/volatility/<release>-<hash>.json`
    LinuxIsf(u64),
    /// `<vm>/linux/proc/<pid>`
    Process(u64, i32),
    /// `<vm>/linux/proc/<pid>/<file>`
    ProcessFile(u64, i32, ProcessView),
    /// `<vm>/cpus/<n>`
    Cpu(u64, usize),
    /// `<vm>/cpus/<n>/<file>`
    CpuFile(u64, usize, CpuFile),
}

impl Node {
    fn from_inode(ino: INodeNo) -> Option<Self> {
        let ino = u64::from(ino);
        if ino == 1 {
            return Some(Node::Root);
        }
        if ino & PROCESS_INODES != 0 && ino & CPU_INODES == 0 {
            let number = (ino & !PROCESS_INODES) >> PROCESS_NUMBER_SHIFT;
            let pid = ((ino >> PID_SHIFT) as i32) & (MAX_PID - 1);
            return match (ino % (1 << PID_SHIFT)) as usize {
                0 => Some(Node::Process(number, pid)),
                file => ProcessView::ALL.get(file - 1).map(|view| Node::ProcessFile(number, pid, *view)),
            };
        }
        if ino & CPU_INODES != 0 {
            let number = (ino & !CPU_INODES) >> NUMBER_SHIFT;
            let cpu = ((ino >> CPU_SHIFT) as usize) % MAX_CPUS;
            return match ino % (1 << CPU_SHIFT) {
                0 => Some(Node::Cpu(number, cpu)),
                offset => CpuFile::from_offset(offset).map(|file| Node::CpuFile(number, cpu, file)),
            };
        }
        let (number, offset) = (ino / INODES_PER_INSTANCE, ino % INODES_PER_INSTANCE);
        if number == 0 {
            return None;
        }
        match offset {
            0 => Some(Node::Dir(number)),
            CPUS_OFFSET => Some(Node::Cpus(number)),
            LINUX_OFFSET => Some(Node::Linux(number)),
            LINUX_PROC_OFFSET => Some(Node::LinuxProc(number)),
            LINUX_VOLATILITY_OFFSET => Some(Node::LinuxVolatility(number)),
            LINUX_ISF_OFFSET => Some(Node::LinuxIsf(number)),
            offset if (LINUX_FILES_OFFSET..LINUX_OFFSET).contains(&offset) => crate::guest::linux::View::ALL
                .get((offset - LINUX_FILES_OFFSET) as usize)
                .map(|view| Node::LinuxFile(number, *view)),
            _ => VmFile::from_offset(offset).map(|file| Node::File(number, file)),
        }
    }

    /// The inode of `linux/proc/<pid>` (`view` `None`) or of a file in it.
    fn process_inode(number: u64, pid: i32, view: Option<ProcessView>) -> INodeNo {
        let file =
            view.map_or(0, |view| ProcessView::ALL.iter().position(|known| *known == view).unwrap_or(0) + 1);
        INodeNo(PROCESS_INODES | number << PROCESS_NUMBER_SHIFT | (pid as u64) << PID_SHIFT | file as u64)
    }

    /// The inode of `cpus/<cpu>` (`file` `None`) or of a file in it.
    fn cpu_inode(number: u64, cpu: usize, file: Option<CpuFile>) -> INodeNo {
        let file = file.map_or(0, |file| file as u64);
        INodeNo(CPU_INODES | number << NUMBER_SHIFT | (cpu as u64) << CPU_SHIFT | file)
    }
}

/// Every vCPU's registers now (one HMP exchange).
fn vcpus_now(instance: &MountedVm) -> Result<Vec<crate::guest::VcpuRegisters>, crate::vm::VmError> {
    crate::guest::registers::vcpu_registers(|ask| instance.with_qmp(ask))
}

fn linux_file_inode(instance: &MountedVm, view: crate::guest::linux::View) -> INodeNo {
    let index = crate::guest::linux::View::ALL.iter().position(|known| *known == view).unwrap_or(0);
    INodeNo(dir_inode(instance) + LINUX_FILES_OFFSET + index as u64)
}

/// Whether the VM is a Linux guest whose kernel can be read (its RAM holds a vmcoreinfo).
fn is_linux(instance: &MountedVm) -> bool {
    super::parts::vmcoreinfo_now(instance).ok().flatten().is_some()
}

/// A `linux/` file's text now: what the kernel's structures say, or one `error:` line saying
/// what in them is wrong (the guest's memory is its own to break).
fn linux_text(instance: &MountedVm, view: crate::guest::linux::View) -> Result<Vec<u8>, GenerateError> {
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

/// A directory listing's first two entries: the directory itself and its parent.
fn dot_entries(this: INodeNo, parent: INodeNo) -> Vec<(INodeNo, FileType, String)> {
    vec![(this, FileType::Directory, ".".into()), (parent, FileType::Directory, "..".into())]
}

/// The pids of the guest's processes now (the idle task, pid 0, is none of `/proc`'s).
fn pids_now(instance: &MountedVm) -> Result<Vec<i32>, GenerateError> {
    let guest = linux_now(instance)?;
    let tasks = guest.tasks(&instance.bridge).map_err(LinuxNowError::Linux)?;
    Ok(tasks.into_iter().map(|task| task.pid).filter(|pid| (1..MAX_PID).contains(pid)).collect())
}

/// Whether the guest has a process `pid` now (found by its pid, not by listing them all).
fn process_exists(instance: &MountedVm, pid: i32) -> bool {
    (1..MAX_PID).contains(&pid)
        && linux_now(instance).is_ok_and(|guest| matches!(guest.task(&instance.bridge, pid), Ok(Some(_))))
}

fn file_inode(instance: &MountedVm, file: VmFile) -> INodeNo {
    INodeNo(dir_inode(instance) + file as u64)
}

/// Why a generated file could not be made.
#[derive(Debug, thiserror::Error)]
enum GenerateError {
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
    /// `ram`, `physical` and `core` are read, not generated.
    #[error("not a generated file")]
    NotGenerated,
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

impl From<LinuxNowError> for GenerateError {
    fn from(err: LinuxNowError) -> Self {
        match err {
            LinuxNowError::NoVmcoreinfo => GenerateError::NoVmcoreinfo,
            LinuxNowError::Ram(err) => GenerateError::Ram(err),
            other => GenerateError::Linux(other),
        }
    }
}

/// Why `ram` cannot be served by the kernel (passthrough).
#[derive(Debug, thiserror::Error)]
enum PassthroughError {
    /// Private RAM, or RAM over several backends: no one file for the kernel to read.
    #[error("the RAM is not one file")]
    NotOneFile,
    /// The RAM file could not be opened again for the kernel.
    #[error("cannot reopen the RAM file")]
    Reopen(#[source] std::io::Error),
    /// The kernel refused the backing file.
    #[error("the kernel refused the RAM file as a backing file")]
    Backing(#[source] std::io::Error),
}

enum Handle {
    Ram(Arc<MountedVm>),
    /// `physical`: guest RAM at other offsets.
    View(Arc<MountedVm>, VmFile),
    /// `core`, with the registers of the moment it was opened.
    Core(Arc<MountedVm>, crate::ram::views::Core),
    /// `cpus/<n>/memory`, through the page tables of the moment it was opened.
    Virtual(Arc<MountedVm>, crate::guest::VirtualSpace),
    Text(Vec<u8>),
    /// A generated file kept for the VM's boot (the Volatility symbol table).
    Shared(Arc<Vec<u8>>),
}

/// Options of the file system.
#[derive(Debug, Clone, Default)]
pub struct TreeOptions {
    /// When `ram` is served by FUSE passthrough.
    pub passthrough: super::Passthrough,
}

/// Backing files registered with the kernel for passthrough, by inode, with their open count;
/// and the inodes whose passthrough failed in `auto` (said once in the log, then served by the
/// daemon).
#[derive(Default)]
struct Backing {
    ids: HashMap<u64, (Arc<BackingId>, usize)>,
    refused: std::collections::HashSet<u64>,
}

/// The FUSE file system.
pub struct Tree {
    registry: Arc<Registry>,
    audit: Option<AuditLog>,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
    handles: RwLock<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
    /// `Never` once the kernel refused passthrough at init.
    passthrough: Mutex<super::Passthrough>,
    backing: Mutex<Backing>,
}

impl Tree {
    /// A tree over `registry`, owned by the mounting user.
    pub fn new(registry: Arc<Registry>, audit: Option<AuditLog>, options: &TreeOptions) -> Self {
        Self {
            registry,
            audit,
            uid: crate::process::effective_uid(),
            gid: crate::process::effective_gid(),
            mounted_at: SystemTime::now(),
            handles: RwLock::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            passthrough: Mutex::new(options.passthrough),
            backing: Mutex::new(Backing::default()),
        }
    }

    fn attr(&self, ino: INodeNo, kind: FileType, perm: u16, size: u64, time: SystemTime) -> FileAttr {
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: crate::ram::PAGE_SIZE as u32,
            flags: 0,
        }
    }

    fn dir_attr(&self, instance: &MountedVm) -> FileAttr {
        self.attr(INodeNo(dir_inode(instance)), FileType::Directory, 0o555, 0, instance.since)
    }

    fn file_attr(&self, instance: &MountedVm, file: VmFile) -> FileAttr {
        // Generated files report size 0: with direct I/O, readers read until EOF.
        let size = match file {
            VmFile::Ram => instance.bridge.size() as u64,
            VmFile::Physical => instance.parts.physical.size(),
            VmFile::Core => instance.parts.core.size(),
            _ => 0,
        };
        self.attr(file_inode(instance, file), FileType::RegularFile, 0o444, size, instance.since)
    }

    fn linux_attr(&self, instance: &MountedVm) -> FileAttr {
        let ino = INodeNo(dir_inode(instance) + LINUX_OFFSET);
        self.attr(ino, FileType::Directory, 0o555, 0, instance.since)
    }

    /// `btf` has its size (readers of BTF take it before they read); the text files report 0.
    fn linux_file_attr(&self, instance: &MountedVm, view: crate::guest::linux::View) -> FileAttr {
        let size = match view {
            crate::guest::linux::View::Btf => super::parts::btf_size_now(instance),
            _ => 0,
        };
        self.attr(linux_file_inode(instance, view), FileType::RegularFile, 0o444, size, instance.since)
    }

    fn linux_proc_attr(&self, instance: &MountedVm) -> FileAttr {
        let ino = INodeNo(dir_inode(instance) + LINUX_PROC_OFFSET);
        self.attr(ino, FileType::Directory, 0o555, 0, instance.since)
    }

    fn volatility_attr(&self, instance: &MountedVm) -> FileAttr {
        let ino = INodeNo(dir_inode(instance) + LINUX_VOLATILITY_OFFSET);
        self.attr(ino, FileType::Directory, 0o555, 0, instance.since)
    }

    /// The symbol table has its size: it is made once per boot, and readers may take the size
    /// first.
    fn isf_attr(&self, instance: &MountedVm) -> FileAttr {
        let size = isf_now(instance).map_or(0, |(_, isf)| isf.len() as u64);
        self.attr(
            INodeNo(dir_inode(instance) + LINUX_ISF_OFFSET),
            FileType::RegularFile,
            0o444,
            size,
            instance.since,
        )
    }

    fn process_attr(&self, instance: &MountedVm, pid: i32) -> FileAttr {
        let ino = Node::process_inode(instance.number, pid, None);
        self.attr(ino, FileType::Directory, 0o555, 0, instance.since)
    }

    /// `mem` has the size of the kernel's address space (2^48 or 2^57), the text files 0.
    fn process_file_attr(&self, instance: &MountedVm, pid: i32, view: ProcessView) -> FileAttr {
        let size = match view {
            ProcessView::Mem => {
                linux_now(instance).map_or(0, |guest| guest.kernel().paging().mode().space_size())
            }
            _ => 0,
        };
        let ino = Node::process_inode(instance.number, pid, Some(view));
        self.attr(ino, FileType::RegularFile, 0o444, size, instance.since)
    }

    /// A process's file opened: its text now, or its virtual memory through its page tables.
    fn open_process_file(
        instance: Arc<MountedVm>,
        pid: i32,
        view: ProcessView,
    ) -> Result<Handle, GenerateError> {
        let guest = linux_now(&instance)?;
        let process = match guest.process(&instance.bridge, pid) {
            Ok(Some(process)) => process,
            Ok(None) => return Err(GenerateError::NoProcess(pid)),
            Err(err) => return Ok(Handle::Text(error_line(&err))),
        };
        if view == ProcessView::Mem {
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

    fn cpus_attr(&self, instance: &MountedVm) -> FileAttr {
        let ino = INodeNo(dir_inode(instance) + CPUS_OFFSET);
        self.attr(ino, FileType::Directory, 0o555, 0, instance.since)
    }

    fn cpu_attr(&self, instance: &MountedVm, cpu: usize) -> FileAttr {
        let ino = Node::cpu_inode(instance.number, cpu, None);
        self.attr(ino, FileType::Directory, 0o555, 0, instance.since)
    }

    /// `memory` has the size of the vCPU's address space now (2^48 or 2^57; 0 without paging);
    /// the other files are generated and report 0.
    fn cpu_file_attr(&self, instance: &MountedVm, cpu: usize, file: CpuFile) -> FileAttr {
        let size = match file {
            CpuFile::Memory => vcpus_now(instance)
                .ok()
                .and_then(|vcpus| crate::guest::vcpu_paging(&instance.info.arch, &vcpus, cpu, None).ok())
                .map_or(0, |paging| paging.mode().space_size()),
            CpuFile::Registers | CpuFile::Mappings => 0,
        };
        let ino = Node::cpu_inode(instance.number, cpu, Some(file));
        self.attr(ino, FileType::RegularFile, 0o444, size, instance.since)
    }

    /// The bytes of `cpus/<cpu>/registers` or `mappings`, from the vCPU's registers now.
    fn generate_cpu(instance: &MountedVm, cpu: usize, file: CpuFile) -> Result<Vec<u8>, GenerateError> {
        let vcpus = vcpus_now(instance)?;
        let arch = &instance.info.arch;
        let text = match file {
            CpuFile::Registers => {
                let registers = vcpus
                    .get(cpu)
                    .ok_or(crate::guest::VcpuPagingError::NoSuchVcpu { cpu, count: vcpus.len() })?;
                let mut text =
                    serde_json::to_string_pretty(&crate::guest::space::registers_json(arch, cpu, registers))?;
                text.push('\n');
                text
            }
            CpuFile::Mappings => match crate::guest::vcpu_paging(arch, &vcpus, cpu, None) {
                Ok(paging) => crate::guest::space::mappings_text(
                    &paging,
                    &instance.bridge,
                    crate::guest::paging::Limits::default(),
                ),
                // a vCPU without paging (real mode, booting) has a dump of one line that says so
                Err(err @ crate::guest::VcpuPagingError::Paging { .. }) => {
                    format!("error: {}\n", crate::error::chain(&err))
                }
                Err(err) => return Err(err.into()),
            },
            CpuFile::Memory => return Err(GenerateError::NotGenerated),
        };
        Ok(text.into_bytes())
    }

    fn open_cpu_file(&self, instance: Arc<MountedVm>, cpu: usize, file: CpuFile, reply: ReplyOpen) {
        let opened = match file {
            CpuFile::Memory => vcpus_now(&instance)
                .map_err(GenerateError::from)
                .and_then(|vcpus| Ok(crate::guest::vcpu_paging(&instance.info.arch, &vcpus, cpu, None)?))
                .map(|paging| {
                    Handle::Virtual(Arc::clone(&instance), crate::guest::VirtualSpace::new(paging))
                }),
            CpuFile::Registers | CpuFile::Mappings => {
                Self::generate_cpu(&instance, cpu, file).map(Handle::Text)
            }
        };
        match opened {
            Ok(handle) => {
                let fh = self.new_handle(handle);
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
            }
            Err(err) => {
                let errno = match &err {
                    GenerateError::Paging(crate::guest::VcpuPagingError::NoSuchVcpu { .. }) => Errno::ENOENT,
                    GenerateError::Paging(_) => Errno::ENODATA,
                    _ => Errno::EIO,
                };
                log::warn!(
                    "{}/cpus/{cpu}/{}: {}",
                    instance.vm.name(),
                    file.name(),
                    crate::error::chain(&err)
                );
                reply.error(errno);
            }
        }
    }

    fn audit(&self, req: &Request, instance: &MountedVm, file: VmFile, op: AuditOp, offset: u64, len: u64) {
        if let Some(audit) = &self.audit {
            audit.record(&AuditEvent {
                uid: req.uid(),
                pid: crate::process::thread_group(req.pid()),
                vm: instance.vm.name().as_str(),
                file: file.name(),
                op,
                offset,
                len,
            });
        }
    }

    /// Bytes of a generated file, asked of QMP or computed now.
    fn generate(instance: &MountedVm, file: VmFile) -> Result<Vec<u8>, GenerateError> {
        let mut text = match file {
            VmFile::MapPng => {
                // a picture, not text: no newline
                let classes = crate::ram::picture::page_classes(instance.bridge.mapping())?;
                return crate::ram::picture::png(&classes).map_err(GenerateError::Png);
            }
            VmFile::Ram | VmFile::Physical | VmFile::Core => return Err(GenerateError::NotGenerated),
            VmFile::Vmcoreinfo => {
                // the kernel's text as it is, newline-terminated already
                let info = super::parts::vmcoreinfo_now(instance)?.ok_or(GenerateError::NoVmcoreinfo)?;
                return Ok(info.text.into_bytes());
            }
            VmFile::Status => instance.with_qmp(|qmp| qmp.query_status())?.status.to_string(),
            VmFile::Memdev => {
                let backends = instance.with_qmp(crate::vm::memdev_with_paths)?;
                // where each backend's RAM is and how it is read, and where it lies in `ram`
                let json: Vec<serde_json::Value> = backends
                    .into_iter()
                    .map(|backend| {
                        let qom_path = backend.qom_path();
                        let mut fields = backend.fields;
                        if let Some(used) =
                            instance.info.backends.iter().find(|used| used.qom_path == qom_path)
                        {
                            fields.insert("kind".into(), serde_json::json!(used.kind));
                            fields.insert("zero-copy".into(), serde_json::json!(used.kind.zero_copy()));
                            fields.insert("ram-path".into(), serde_json::json!(used.ram_path));
                            fields.insert("ram-offset".into(), serde_json::json!(used.offset));
                        }
                        serde_json::Value::Object(fields)
                    })
                    .collect();
                serde_json::to_string_pretty(&json)?
            }
            VmFile::Checksum => instance.bridge.consistent_snapshot(DEFAULT_ATTEMPTS)?.summary_line(),
            VmFile::Layout => {
                let json = serde_json::json!({
                    "machine": instance.info.machine,
                    "ram_size": instance.info.ram_size,
                    "ram_path": instance.info.ram_path,
                    "source": instance.bridge.layout().source(),
                    "regions": instance.bridge.layout().regions(),
                });
                serde_json::to_string_pretty(&json)?
            }
        };
        text.push('\n');
        Ok(text.into_bytes())
    }

    /// `len` bytes at `offset` of `physical` or `core`: RAM pieces read live (one RAM piece
    /// alone is answered without a copy), holes and padding as zeros, headers as generated.
    fn read_view<'a>(instance: &'a MountedVm, pieces: Vec<Piece<'_>>) -> Result<Cow<'a, [u8]>, BridgeError> {
        let mapping = instance.bridge.mapping();
        if let [Piece::Ram { offset, len }] = pieces.as_slice() {
            return mapping.read_for_reply(*offset as usize, *len as usize);
        }
        let mut bytes = Vec::with_capacity(pieces.iter().map(Piece::len).sum::<u64>() as usize);
        for piece in pieces {
            match piece {
                Piece::Ram { offset, len } => {
                    bytes.extend_from_slice(&mapping.read_for_reply(offset as usize, len as usize)?)
                }
                Piece::Bytes(generated) => bytes.extend_from_slice(generated),
                Piece::Zeros(len) => bytes.resize(bytes.len() + len as usize, 0),
            }
        }
        Ok(Cow::Owned(bytes))
    }

    fn new_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.write().unwrap_or_else(|e| e.into_inner()).insert(fh, handle);
        fh
    }

    fn open_ram(&self, instance: Arc<MountedVm>, ino: INodeNo, reply: ReplyOpen) {
        use super::Passthrough;
        let mode = *self.passthrough.lock().unwrap_or_else(|e| e.into_inner());
        if mode != Passthrough::Never {
            match self.backing_id(&instance, ino, &reply) {
                Ok(Some(id)) => {
                    let fh = self.new_handle(Handle::Ram(instance));
                    return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                }
                Ok(None) if mode == Passthrough::Always => return reply.error(Errno::EOPNOTSUPP),
                Ok(None) => {}
                Err(err) if mode == Passthrough::Always => {
                    log::error!("{}/ram: --passthrough=always: {err}", instance.vm.name());
                    return reply.error(Errno::EOPNOTSUPP);
                }
                Err(err) => {
                    log::info!("{}/ram: no passthrough ({err}); served by the daemon", instance.vm.name());
                }
            }
        }
        let fh = self.new_handle(Handle::Ram(instance));
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
    }

    /// The kernel's backing id of `ram` (one per inode, counted by open), `Ok(None)` for a file
    /// whose passthrough failed before (already logged), or why it cannot be had.
    fn backing_id(
        &self,
        instance: &MountedVm,
        ino: INodeNo,
        reply: &ReplyOpen,
    ) -> Result<Option<Arc<BackingId>>, PassthroughError> {
        let mut backing = self.backing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, count)) = backing.ids.get_mut(&ino.0) {
            *count += 1;
            return Ok(Some(Arc::clone(id)));
        }
        if backing.refused.contains(&ino.0) {
            return Ok(None);
        }
        // private RAM and RAM over several backends have no one file for the kernel to read
        let file = match instance.bridge.mapping().try_clone_file() {
            Some(file) if instance.bridge.mapping().is_one_file() => file.map_err(PassthroughError::Reopen),
            _ => Err(PassthroughError::NotOneFile),
        };
        match file.and_then(|file| reply.open_backing(&file).map_err(PassthroughError::Backing)) {
            Ok(id) => {
                let id = Arc::new(id);
                backing.ids.insert(ino.0, (Arc::clone(&id), 1));
                Ok(Some(id))
            }
            Err(err) => {
                backing.refused.insert(ino.0);
                Err(err)
            }
        }
    }
}

impl Filesystem for Tree {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        use super::Passthrough;
        let mode = self.passthrough.get_mut().unwrap_or_else(|e| e.into_inner());
        if *mode != Passthrough::Never {
            let enabled = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !enabled && *mode == Passthrough::Always {
                log::error!("--passthrough=always: the kernel does not offer FUSE passthrough");
                return Err(std::io::Error::from(std::io::ErrorKind::Unsupported));
            }
            if !enabled {
                log::info!("the kernel does not offer FUSE passthrough; ram is served by the daemon");
                *mode = Passthrough::Never;
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match Node::from_inode(parent) {
            Some(Node::Root) => {
                let Some(instance) = name.to_str().and_then(|name| self.registry.lookup(name)) else {
                    return reply.error(Errno::ENOENT);
                };
                // TTL 0: a VM that dies must vanish at the next path walk.
                reply.entry(&Duration::ZERO, &self.dir_attr(&instance), Generation(0));
            }
            Some(Node::Dir(number)) => {
                let Some(instance) = self.registry.by_number(number) else {
                    return reply.error(Errno::ENOENT);
                };
                if name == "cpus" {
                    return reply.entry(&TTL, &self.cpus_attr(&instance), Generation(0));
                }
                if name == "linux" {
                    return match is_linux(&instance) {
                        true => reply.entry(&Duration::ZERO, &self.linux_attr(&instance), Generation(0)),
                        false => reply.error(Errno::ENOENT),
                    };
                }
                let Some(file) = VmFile::from_name(name) else { return reply.error(Errno::ENOENT) };
                reply.entry(&TTL, &self.file_attr(&instance, file), Generation(0));
            }
            Some(Node::Linux(number)) => {
                let Some(instance) = self.registry.by_number(number) else {
                    return reply.error(Errno::ENOENT);
                };
                if name == "proc" {
                    return reply.entry(&TTL, &self.linux_proc_attr(&instance), Generation(0));
                }
                if name == "volatility" {
                    return reply.entry(&TTL, &self.volatility_attr(&instance), Generation(0));
                }
                match name.to_str().and_then(crate::guest::linux::View::from_name) {
                    Some(view) => reply.entry(&TTL, &self.linux_file_attr(&instance, view), Generation(0)),
                    None => reply.error(Errno::ENOENT),
                }
            }
            Some(Node::LinuxVolatility(number)) => {
                let Some(instance) = self.registry.by_number(number) else {
                    return reply.error(Errno::ENOENT);
                };
                match isf_now(&instance) {
                    // TTL 0: a reboot into another kernel names another table
                    Ok((isf_name, _)) if name.to_str() == Some(isf_name.as_str()) => {
                        reply.entry(&Duration::ZERO, &self.isf_attr(&instance), Generation(0))
                    }
                    _ => reply.error(Errno::ENOENT),
                }
            }
            Some(Node::LinuxProc(number)) => {
                let Some(instance) = self.registry.by_number(number) else {
                    return reply.error(Errno::ENOENT);
                };
                let pid = name.to_str().and_then(|name| name.parse::<i32>().ok());
                match pid.filter(|pid| process_exists(&instance, *pid)) {
                    // TTL 0: a process that exits must vanish at the next path walk
                    Some(pid) => {
                        reply.entry(&Duration::ZERO, &self.process_attr(&instance, pid), Generation(0))
                    }
                    None => reply.error(Errno::ENOENT),
                }
            }
            Some(Node::Process(number, pid)) => {
                let Some(instance) = self.registry.by_number(number) else {
                    return reply.error(Errno::ENOENT);
                };
                match name.to_str().and_then(ProcessView::from_name) {
                    Some(view) => reply.entry(
                        &Duration::ZERO,
                        &self.process_file_attr(&instance, pid, view),
                        Generation(0),
                    ),
                    None => reply.error(Errno::ENOENT),
                }
            }
            Some(Node::Cpus(number)) => {
                let Some(instance) = self.registry.by_number(number) else {
                    return reply.error(Errno::ENOENT);
                };
                let cpu =
                    name.to_str().and_then(|name| name.parse::<usize>().ok()).filter(|cpu| *cpu < MAX_CPUS);
                let count = vcpus_now(&instance).map_or(0, |vcpus| vcpus.len());
                match cpu {
                    // TTL 0: a vCPU unplugged must vanish at the next path walk
                    Some(cpu) if cpu < count => {
                        reply.entry(&Duration::ZERO, &self.cpu_attr(&instance, cpu), Generation(0))
                    }
                    _ => reply.error(Errno::ENOENT),
                }
            }
            Some(Node::Cpu(number, cpu)) => {
                let Some(instance) = self.registry.by_number(number) else {
                    return reply.error(Errno::ENOENT);
                };
                match CpuFile::from_name(name).filter(|file| file.exists_for(&instance.info.arch)) {
                    Some(file) => {
                        reply.entry(&Duration::ZERO, &self.cpu_file_attr(&instance, cpu, file), Generation(0))
                    }
                    None => reply.error(Errno::ENOENT),
                }
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match Node::from_inode(ino) {
            Some(Node::Root) => {
                reply.attr(&TTL, &self.attr(INodeNo::ROOT, FileType::Directory, 0o555, 0, self.mounted_at))
            }
            Some(Node::Dir(number)) => match self.registry.by_number(number) {
                Some(instance) => reply.attr(&Duration::ZERO, &self.dir_attr(&instance)),
                None => reply.error(Errno::ENOENT),
            },
            Some(Node::File(number, file)) => match self.registry.by_number(number) {
                Some(instance) => reply.attr(&TTL, &self.file_attr(&instance, file)),
                None => reply.error(Errno::ENOENT),
            },
            Some(Node::Cpus(number)) => match self.registry.by_number(number) {
                Some(instance) => reply.attr(&TTL, &self.cpus_attr(&instance)),
                None => reply.error(Errno::ENOENT),
            },
            Some(Node::Linux(number)) => match self.registry.by_number(number) {
                Some(instance) => reply.attr(&Duration::ZERO, &self.linux_attr(&instance)),
                None => reply.error(Errno::ENOENT),
            },
            Some(Node::LinuxFile(number, view)) => match self.registry.by_number(number) {
                Some(instance) => reply.attr(&TTL, &self.linux_file_attr(&instance, view)),
                None => reply.error(Errno::ENOENT),
            },
            Some(Node::Cpu(number, cpu)) => match self.registry.by_number(number) {
                Some(instance) => reply.attr(&Duration::ZERO, &self.cpu_attr(&instance, cpu)),
                None => reply.error(Errno::ENOENT),
            },
            Some(Node::LinuxProc(number)) => match self.registry.by_number(number) {
                Some(instance) => reply.attr(&TTL, &self.linux_proc_attr(&instance)),
                None => reply.error(Errno::ENOENT),
            },
            Some(Node::LinuxVolatility(number)) => match self.registry.by_number(number) {
                Some(instance) => reply.attr(&TTL, &self.volatility_attr(&instance)),
                None => reply.error(Errno::ENOENT),
            },
            Some(Node::LinuxIsf(number)) => match self.registry.by_number(number) {
                Some(instance) => reply.attr(&Duration::ZERO, &self.isf_attr(&instance)),
                None => reply.error(Errno::ENOENT),
            },
            Some(Node::Process(number, pid)) => match self.registry.by_number(number) {
                Some(instance) => reply.attr(&Duration::ZERO, &self.process_attr(&instance, pid)),
                None => reply.error(Errno::ENOENT),
            },
            Some(Node::ProcessFile(number, pid, view)) => match self.registry.by_number(number) {
                Some(instance) => reply.attr(&Duration::ZERO, &self.process_file_attr(&instance, pid, view)),
                None => reply.error(Errno::ENOENT),
            },
            Some(Node::CpuFile(number, cpu, file)) => match self.registry.by_number(number) {
                Some(instance) => reply.attr(&Duration::ZERO, &self.cpu_file_attr(&instance, cpu, file)),
                None => reply.error(Errno::ENOENT),
            },
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut entries: Vec<(INodeNo, FileType, String)>;
        match Node::from_inode(ino) {
            Some(Node::Root) => {
                entries = dot_entries(INodeNo::ROOT, INodeNo::ROOT);
                for instance in self.registry.list() {
                    entries.push((
                        INodeNo(dir_inode(&instance)),
                        FileType::Directory,
                        instance.vm.name().as_str().into(),
                    ));
                }
            }
            Some(Node::Dir(number)) => {
                let Some(instance) = self.registry.by_number(number) else {
                    return reply.error(Errno::ENOENT);
                };
                entries = dot_entries(INodeNo(dir_inode(&instance)), INodeNo::ROOT);
                for file in VmFile::ALL {
                    entries.push((file_inode(&instance, file), FileType::RegularFile, file.name().into()));
                }
                entries.push((
                    INodeNo(dir_inode(&instance) + CPUS_OFFSET),
                    FileType::Directory,
                    "cpus".into(),
                ));
                if is_linux(&instance) {
                    entries.push((
                        INodeNo(dir_inode(&instance) + LINUX_OFFSET),
                        FileType::Directory,
                        "linux".into(),
                    ));
                }
            }
            Some(Node::Linux(number)) => {
                let Some(instance) = self.registry.by_number(number) else {
                    return reply.error(Errno::ENOENT);
                };
                entries =
                    dot_entries(INodeNo(dir_inode(&instance) + LINUX_OFFSET), INodeNo(dir_inode(&instance)));
                for view in crate::guest::linux::View::ALL {
                    entries.push((
                        linux_file_inode(&instance, view),
                        FileType::RegularFile,
                        view.name().into(),
                    ));
                }
                entries.push((
                    INodeNo(dir_inode(&instance) + LINUX_PROC_OFFSET),
                    FileType::Directory,
                    "proc".into(),
                ));
                entries.push((
                    INodeNo(dir_inode(&instance) + LINUX_VOLATILITY_OFFSET),
                    FileType::Directory,
                    "volatility".into(),
                ));
            }
            Some(Node::LinuxVolatility(number)) => {
                let Some(instance) = self.registry.by_number(number) else {
                    return reply.error(Errno::ENOENT);
                };
                entries = dot_entries(
                    INodeNo(dir_inode(&instance) + LINUX_VOLATILITY_OFFSET),
                    INodeNo(dir_inode(&instance) + LINUX_OFFSET),
                );
                match isf_now(&instance) {
                    Ok((name, _)) => entries.push((
                        INodeNo(dir_inode(&instance) + LINUX_ISF_OFFSET),
                        FileType::RegularFile,
                        name,
                    )),
                    // a kernel without usable types has no table: an empty directory, and why in the log
                    Err(err) => {
                        log::warn!("{}/linux/volatility: {}", instance.vm.name(), crate::error::chain(&err))
                    }
                }
            }
            Some(Node::LinuxProc(number)) => {
                let Some(instance) = self.registry.by_number(number) else {
                    return reply.error(Errno::ENOENT);
                };
                entries = dot_entries(
                    INodeNo(dir_inode(&instance) + LINUX_PROC_OFFSET),
                    INodeNo(dir_inode(&instance) + LINUX_OFFSET),
                );
                match pids_now(&instance) {
                    Ok(pids) => {
                        for pid in pids {
                            entries.push((
                                Node::process_inode(number, pid, None),
                                FileType::Directory,
                                pid.to_string(),
                            ));
                        }
                    }
                    Err(err) => {
                        log::warn!("{}/linux/proc: {}", instance.vm.name(), crate::error::chain(&err));
                        return reply.error(Errno::EIO);
                    }
                }
            }
            Some(Node::Process(number, pid)) => {
                entries = dot_entries(
                    Node::process_inode(number, pid, None),
                    INodeNo(number * INODES_PER_INSTANCE + LINUX_PROC_OFFSET),
                );
                for view in ProcessView::ALL {
                    entries.push((
                        Node::process_inode(number, pid, Some(view)),
                        FileType::RegularFile,
                        view.name().into(),
                    ));
                }
            }
            Some(Node::Cpus(number)) => {
                let Some(instance) = self.registry.by_number(number) else {
                    return reply.error(Errno::ENOENT);
                };
                entries =
                    dot_entries(INodeNo(dir_inode(&instance) + CPUS_OFFSET), INodeNo(dir_inode(&instance)));
                let count = match vcpus_now(&instance) {
                    Ok(vcpus) => vcpus.len().min(MAX_CPUS),
                    Err(err) => {
                        log::warn!("{}/cpus: {}", instance.vm.name(), crate::error::chain(&err));
                        return reply.error(Errno::EIO);
                    }
                };
                for cpu in 0..count {
                    entries.push((Node::cpu_inode(number, cpu, None), FileType::Directory, cpu.to_string()));
                }
            }
            Some(Node::Cpu(number, cpu)) => {
                let Some(instance) = self.registry.by_number(number) else {
                    return reply.error(Errno::ENOENT);
                };
                entries = dot_entries(
                    Node::cpu_inode(number, cpu, None),
                    INodeNo(dir_inode(&instance) + CPUS_OFFSET),
                );
                for file in CpuFile::ALL.into_iter().filter(|file| file.exists_for(&instance.info.arch)) {
                    entries.push((
                        Node::cpu_inode(number, cpu, Some(file)),
                        FileType::RegularFile,
                        file.name().into(),
                    ));
                }
            }
            _ => return reply.error(Errno::ENOTDIR),
        }
        for (index, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        let (number, file) = match Node::from_inode(ino) {
            Some(Node::File(number, file)) => (number, file),
            Some(Node::CpuFile(number, cpu, file)) => {
                let Some(instance) = self.registry.by_number(number) else {
                    return reply.error(Errno::ENOENT);
                };
                return self.open_cpu_file(instance, cpu, file, reply);
            }
            Some(Node::LinuxIsf(number)) => {
                let Some(instance) = self.registry.by_number(number) else {
                    return reply.error(Errno::ENOENT);
                };
                return match isf_now(&instance) {
                    Ok((_, isf)) => {
                        let fh = self.new_handle(Handle::Shared(isf));
                        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
                    }
                    Err(err) => {
                        log::error!("{}/linux/volatility: {}", instance.vm.name(), crate::error::chain(&err));
                        reply.error(Errno::EIO)
                    }
                };
            }
            Some(Node::ProcessFile(number, pid, view)) => {
                let Some(instance) = self.registry.by_number(number) else {
                    return reply.error(Errno::ENOENT);
                };
                return match Self::open_process_file(Arc::clone(&instance), pid, view) {
                    Ok(handle) => {
                        let fh = self.new_handle(handle);
                        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
                    }
                    Err(GenerateError::NoProcess(_)) => reply.error(Errno::ENOENT),
                    Err(GenerateError::NoVmcoreinfo) => reply.error(Errno::ENODATA),
                    Err(err) => {
                        log::error!(
                            "{}/linux/proc/{pid}/{}: {}",
                            instance.vm.name(),
                            view.name(),
                            crate::error::chain(&err)
                        );
                        reply.error(Errno::EIO)
                    }
                };
            }
            Some(Node::LinuxFile(number, view)) => {
                let Some(instance) = self.registry.by_number(number) else {
                    return reply.error(Errno::ENOENT);
                };
                return match linux_text(&instance, view) {
                    Ok(text) => {
                        let fh = self.new_handle(Handle::Text(text));
                        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
                    }
                    Err(GenerateError::NoVmcoreinfo) => reply.error(Errno::ENODATA),
                    Err(err) => {
                        log::error!(
                            "{}/linux/{}: {}",
                            instance.vm.name(),
                            view.name(),
                            crate::error::chain(&err)
                        );
                        reply.error(Errno::EIO)
                    }
                };
            }
            _ => return reply.error(Errno::EISDIR),
        };
        let Some(instance) = self.registry.by_number(number) else { return reply.error(Errno::ENOENT) };
        self.audit(req, &instance, file, AuditOp::Open, 0, 0);
        if file == VmFile::Ram {
            return self.open_ram(instance, ino, reply);
        }
        if file == VmFile::Core {
            // the vCPUs' registers as of this open; same size as the core `stat` reports
            let core = core_now(&instance);
            let fh = self.new_handle(Handle::Core(instance, core));
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
        }
        if file == VmFile::Physical {
            let fh = self.new_handle(Handle::View(instance, file));
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
        }
        match Self::generate(&instance, file) {
            Ok(text) => {
                let fh = self.new_handle(Handle::Text(text));
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
            }
            Err(GenerateError::NoVmcoreinfo) => reply.error(Errno::ENODATA),
            Err(err) => {
                log::error!("{}/{}: {}", instance.vm.name(), file.name(), crate::error::chain(&err));
                reply.error(Errno::EIO);
            }
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let handles = self.handles.read().unwrap_or_else(|e| e.into_inner());
        match handles.get(&fh.0) {
            Some(Handle::Shared(text)) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(text.len());
                let end = start.saturating_add(size as usize).min(text.len());
                reply.data(&text[start..end]);
            }
            Some(Handle::Text(text)) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(text.len());
                let end = start.saturating_add(size as usize).min(text.len());
                reply.data(&text[start..end]);
            }
            Some(Handle::Ram(instance)) => {
                let total = instance.bridge.size() as u64;
                if offset >= total {
                    return reply.data(&[]);
                }
                let len = (size as u64).min(total - offset) as usize;
                self.audit(req, instance, VmFile::Ram, AuditOp::Read, offset, len as u64);
                // Data is written to /dev/fuse straight from the mapping (zero copy); holes are
                // answered with zeros, never by touching (and so allocating) the guest's pages.
                match instance.bridge.mapping().read_for_reply(offset as usize, len) {
                    Ok(bytes) => reply.data(&bytes),
                    Err(err) => {
                        log::error!("{}/ram at {offset:#x}: {err}", instance.vm.name());
                        reply.error(Errno::EIO);
                    }
                }
            }
            Some(Handle::View(instance, file)) => {
                self.audit(req, instance, *file, AuditOp::Read, offset, u64::from(size));
                match Self::read_view(instance, instance.parts.physical.pieces(offset, u64::from(size))) {
                    Ok(bytes) => reply.data(&bytes),
                    Err(err) => {
                        log::error!("{}/{} at {offset:#x}: {err}", instance.vm.name(), file.name());
                        reply.error(Errno::EIO);
                    }
                }
            }
            Some(Handle::Core(instance, core)) => {
                self.audit(req, instance, VmFile::Core, AuditOp::Read, offset, u64::from(size));
                match Self::read_view(instance, core.pieces(offset, u64::from(size))) {
                    Ok(bytes) => reply.data(&bytes),
                    Err(err) => {
                        log::error!("{}/core at {offset:#x}: {err}", instance.vm.name());
                        reply.error(Errno::EIO);
                    }
                }
            }
            Some(Handle::Virtual(instance, space)) => {
                let mut bytes = vec![0u8; size as usize];
                let len = space.read_at(&instance.bridge, offset, &mut bytes);
                reply.data(&bytes[..len]);
            }
            None => {
                log::warn!("read of inode {ino:?} with unknown handle {}", fh.0);
                reply.error(Errno::EBADF);
            }
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let handles = self.handles.read().unwrap_or_else(|e| e.into_inner());
        let Ok(start) = u64::try_from(offset) else { return reply.error(Errno::EINVAL) };
        // SEEK_DATA / SEEK_HOLE over `physical` walk its RAM ranges; elsewhere the kernel's
        // default (all data) is right for generated files and `ram`.
        let found = match (handles.get(&fh.0), whence) {
            (Some(Handle::View(instance, VmFile::Physical)), libc::SEEK_DATA) => {
                instance.parts.physical.seek_data(start)
            }
            (Some(Handle::View(instance, VmFile::Physical)), libc::SEEK_HOLE) => {
                instance.parts.physical.seek_hole(start)
            }
            (Some(_), libc::SEEK_SET) => Some(start),
            (Some(Handle::Ram(instance)), libc::SEEK_DATA) => {
                (start < instance.bridge.size() as u64).then_some(start)
            }
            (Some(Handle::Ram(instance)), libc::SEEK_HOLE) => {
                (start < instance.bridge.size() as u64).then_some(instance.bridge.size() as u64)
            }
            (Some(Handle::Virtual(instance, space)), libc::SEEK_DATA) => {
                space.seek_data(&instance.bridge, start)
            }
            (Some(Handle::Virtual(instance, space)), libc::SEEK_HOLE) => {
                space.seek_hole(&instance.bridge, start)
            }
            (Some(Handle::Core(_, core)), libc::SEEK_DATA) => (start < core.size()).then_some(start),
            (Some(Handle::Core(_, core)), libc::SEEK_HOLE) => (start < core.size()).then_some(core.size()),
            (None, _) => {
                log::warn!("lseek of inode {ino:?} with unknown handle {}", fh.0);
                return reply.error(Errno::EBADF);
            }
            _ => return reply.error(Errno::EINVAL),
        };
        match found.and_then(|at| i64::try_from(at).ok()) {
            Some(at) => reply.offset(at),
            None => reply.error(Errno::ENXIO),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.write().unwrap_or_else(|e| e.into_inner()).remove(&fh.0);
        let mut backing = self.backing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, count)) = backing.ids.get_mut(&ino.0) {
            *count -= 1;
            if *count == 0 {
                backing.ids.remove(&ino.0);
            }
        }
        reply.ok();
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
}
