//! A Linux guest's kernel, found in its memory with no file from outside: its vmcoreinfo (see
//! `vmcoreinfo`) says where the kernel's own page tables (`init_top_pgt` on
//! x86_64, `swapper_pg_dir` on arm64), symbol tables (`kallsyms_*`, Linux >= 6.0) and log (`prb`,
//! with the layout of every structure of the ring buffer, Linux >= 5.10) are; [`LinuxKernel`]
//! reads kernel virtual addresses through those tables, `kallsyms` decodes the symbols and
//! `printk` the log.
//!
//! What works from vmcoreinfo and kallsyms alone, with no type information: the version banner,
//! the symbol table, the kernel log and the kernel's raw type information (the BTF blob between
//! `__start_BTF` and `__stop_BTF`). Tasks ([`Task`]), processes ([`Process`]: memory areas in a
//! maple tree, arguments, environment), modules ([`Module`]) and the Volatility symbol
//! table (`isf`) need those types parsed (`btf`); [`LinuxGuest`] reads a kernel once and
//! serves them all. x86_64 guests (4- and 5-level paging, as `NUMBER(pgtable_l5_enabled)` says)
//! and arm64 guests (4 KiB pages, 48-bit addresses in use).
//!
//! Everything is the guest's: counts are capped, walks bounded, and a bad structure is an
//! error naming what was wrong, never a hang or a panic.

// the parsers and walks are the crate's own (public to the fuzz targets only); what a user
// needs of them is re-exported below
crate::internal_mod!(btf);
crate::internal_mod!(isf);
crate::internal_mod!(kallsyms);
crate::internal_mod!(maple);
mod modules;
crate::internal_mod!(pid);
crate::internal_mod!(printk);
mod process;
mod reader;
mod tasks;
crate::internal_mod!(walk);

pub use btf::{Btf, BtfError, MemberInfo, TypeKind};
pub use kallsyms::{Symbol, Symbols};
pub use modules::{Module, ModuleState};
pub use process::{maps_text, Area, Mm, Process};
pub use reader::KernelReader;
pub use tasks::Task;

use super::memory::{Gpa, GuestMemory, Gva};
use super::paging::{Paging, PagingError, PagingMode};
use super::vmcoreinfo::VmcoreInfo;

/// x86_64's `__START_KERNEL_map`: the kernel image is mapped from here, at `phys_base`.
const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;

/// Why the kernel could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// The vmcoreinfo lacks a line this needs (an older kernel, or another architecture).
    #[error("the kernel's vmcoreinfo has no {0} (Linux too old, or another architecture)")]
    Missing(String),
    /// A vmcoreinfo value is not a number.
    #[error("the kernel's vmcoreinfo has a {key} that is no number: {value:?}")]
    BadNumber {
        /// The key.
        key: String,
        /// Its value.
        value: String,
    },
    /// Kernel memory could not be read.
    #[error("cannot read the kernel's {what}")]
    Read {
        /// What was being read.
        what: &'static str,
        /// Why.
        #[source]
        source: PagingError,
    },
    /// The kernel's types (BTF) are missing or unusable, and this needs them.
    #[error("this needs the kernel's types (BTF): {0}")]
    NoTypes(String),
    /// A kernel structure is not what it must be.
    #[error("the kernel's {what} is corrupt: {why}")]
    Corrupt {
        /// The structure.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

/// A Linux kernel in guest memory: its vmcoreinfo and the page tables of its own address space.
#[derive(Debug, Clone)]
pub struct LinuxKernel {
    vmcoreinfo: VmcoreInfo,
    paging: Paging,
}

impl LinuxKernel {
    /// The kernel that `vmcoreinfo` describes: its page tables are `init_top_pgt`, at its
    /// physical address in the kernel image (`__pa_symbol`: the address less
    /// `__START_KERNEL_map`, plus `phys_base`), 5-level where `pgtable_l5_enabled` says so.
    ///
    /// # Errors
    ///
    /// [`LinuxError::Missing`] or [`LinuxError::BadNumber`] for a vmcoreinfo without those.
    pub fn new(vmcoreinfo: VmcoreInfo) -> Result<Self, LinuxError> {
        // arm64 kernels say where their image is mapped (kimage_voffset); x86_64 kernels do not
        if vmcoreinfo.get("NUMBER(kimage_voffset)").is_some() {
            return Self::arm64(vmcoreinfo);
        }
        let root = symbol(&vmcoreinfo, "init_top_pgt")?;
        let phys_base = number(&vmcoreinfo, "NUMBER(phys_base)")?;
        let five_level = vmcoreinfo.get("NUMBER(pgtable_l5_enabled)") == Some("1");
        let mode = if five_level { PagingMode::FiveLevel } else { PagingMode::FourLevel };
        let root_gpa = image_physical(root, phys_base).ok_or_else(|| LinuxError::Corrupt {
            what: "vmcoreinfo",
            why: format!("init_top_pgt {root:#x} is not in the kernel image"),
        })?;
        Ok(Self { vmcoreinfo, paging: Paging::new(mode, Gpa(root_gpa), true) })
    }

    /// An arm64 kernel: its tables are `swapper_pg_dir`, at its address less
    /// `kimage_voffset` (`__pa_symbol`), 4 KiB pages and 48-bit addresses in use (the only
    /// format of arm64 the walker reads; others are an error saying so).
    fn arm64(vmcoreinfo: VmcoreInfo) -> Result<Self, LinuxError> {
        let root = symbol(&vmcoreinfo, "swapper_pg_dir")?;
        let voffset = hex_number(&vmcoreinfo, "NUMBER(kimage_voffset)")?;
        // the width the kernel runs with: a kernel built for 52 bits runs with 48 on a CPU
        // without LPA2 (TCR_EL1.T1SZ says which), VA_BITS is what it was built for
        let va_bits = match vmcoreinfo.get("NUMBER(TCR_EL1_T1SZ)") {
            Some(_) => 64 - hex_number(&vmcoreinfo, "NUMBER(TCR_EL1_T1SZ)")? as i64,
            None => number(&vmcoreinfo, "NUMBER(VA_BITS)")?,
        };
        let page_size = number(&vmcoreinfo, "PAGESIZE")?;
        if va_bits != 48 || page_size != 4096 {
            return Err(LinuxError::Corrupt {
                what: "vmcoreinfo",
                why: format!("an arm64 kernel with {va_bits}-bit addresses and {page_size}-byte pages (only 48 and 4096 are read)"),
            });
        }
        let root_gpa = root.0.wrapping_sub(voffset);
        Ok(Self { vmcoreinfo, paging: Paging::new(PagingMode::Arm48, Gpa(root_gpa), true) })
    }

    /// Its vmcoreinfo.
    pub fn vmcoreinfo(&self) -> &VmcoreInfo {
        &self.vmcoreinfo
    }

    /// The kernel's own paging (`init_top_pgt`): every kernel address, whatever a vCPU runs.
    pub fn paging(&self) -> &Paging {
        &self.paging
    }

    /// Its version, major and minor, from vmcoreinfo's `OSRELEASE` (`6.12.95+deb12-cloud-amd64`
    /// is (6, 12)); `None` where it says none.
    pub fn version(&self) -> Option<(u32, u32)> {
        let release = self.vmcoreinfo.get("OSRELEASE")?;
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }

    /// The address of `SYMBOL(name)` in its vmcoreinfo.
    ///
    /// # Errors
    ///
    /// As [`LinuxKernel::new`].
    pub fn symbol(&self, name: &str) -> Result<Gva, LinuxError> {
        symbol(&self.vmcoreinfo, name)
    }

    /// `KEY`'s value as a number (decimal, or hex where vmcoreinfo writes hex).
    ///
    /// # Errors
    ///
    /// As [`LinuxError::Missing`], [`LinuxError::BadNumber`].
    pub fn number(&self, key: &str) -> Result<i64, LinuxError> {
        number(&self.vmcoreinfo, key)
    }

    /// A reader of the kernel's memory in `memory` ([`KernelReader`]), for one request.
    pub fn reader<'a, M: GuestMemory + ?Sized>(&'a self, memory: &'a M) -> KernelReader<'a, M> {
        KernelReader::new(self, memory)
    }

    /// The kernel's version banner (`linux_banner`, as `/proc/version` prints it), found through
    /// kallsyms: a NUL-terminated line of at most 512 bytes.
    ///
    /// # Errors
    ///
    /// As `kallsyms::read_tables`, or a banner that is not `Linux version ...` text.
    pub fn banner<M: GuestMemory + ?Sized>(
        reader: &KernelReader<'_, M>,
        symbols: &kallsyms::Symbols,
    ) -> Result<String, LinuxError> {
        let bytes = reader.bytes(symbols.address("linux_banner")?, 512, "linux_banner")?;
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = String::from_utf8_lossy(&bytes[..end]).into_owned();
        if !text.starts_with("Linux version ") {
            return Err(LinuxError::Corrupt {
                what: "linux_banner",
                why: format!("it starts {:?}", &text[..text.len().min(32)]),
            });
        }
        Ok(if text.ends_with('\n') { text } else { text + "\n" })
    }
}

/// The files of a Linux guest's `linux/` directory, made from vmcoreinfo and kallsyms alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinuxFile {
    /// `version`: the banner, as `/proc/version`.
    Version,
    /// `kallsyms`: the kernel's symbols, as `/proc/kallsyms` lists the kernel's own.
    Kallsyms,
    /// `dmesg`: the kernel log, as `dmesg` prints it.
    Dmesg,
    /// `btf`: the kernel's BTF, as `/sys/kernel/btf/vmlinux` (for `bpftool btf dump file`).
    Btf,
    /// `tasks`: every process, as `ps -e` lists them (needs BTF).
    Tasks,
    /// `modules`: the loaded modules, as `/proc/modules` (needs BTF).
    Modules,
    /// `volatility/<release>-<hash>.json`: a Volatility 3 symbol table (needs BTF).
    Volatility,
}

impl LinuxFile {
    /// Every view, in listing order.
    pub const ALL: [LinuxFile; 6] = [
        LinuxFile::Version,
        LinuxFile::Kallsyms,
        LinuxFile::Dmesg,
        LinuxFile::Btf,
        LinuxFile::Tasks,
        LinuxFile::Modules,
    ];

    /// The file's name (and the command line's word).
    pub fn name(self) -> &'static str {
        match self {
            LinuxFile::Version => "version",
            LinuxFile::Kallsyms => "kallsyms",
            LinuxFile::Dmesg => "dmesg",
            LinuxFile::Btf => "btf",
            LinuxFile::Tasks => "tasks",
            LinuxFile::Modules => "modules",
            LinuxFile::Volatility => "volatility",
        }
    }

    /// The view named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|view| view.name() == name)
    }

    /// The view's bytes now, read from guest memory (text but for `btf`).
    ///
    /// # Errors
    ///
    /// What reading the kernel's structures found wrong ([`LinuxError`]).
    pub fn render<M: GuestMemory + ?Sized>(
        self,
        guest: &LinuxGuest,
        memory: &M,
    ) -> Result<Vec<u8>, LinuxError> {
        let (reader, symbols) = (guest.reader(memory), &guest.symbols);
        match self {
            LinuxFile::Version => LinuxKernel::banner(&reader, symbols).map(String::into_bytes),
            LinuxFile::Kallsyms => Ok(kallsyms::text(symbols).into_bytes()),
            LinuxFile::Dmesg => Ok(printk::text(&printk::read(&reader, &guest.log_layout()?)?).into_bytes()),
            LinuxFile::Btf => LinuxKernel::btf(&reader, symbols),
            LinuxFile::Tasks => Ok(tasks::text(&guest.tasks(memory)?).into_bytes()),
            LinuxFile::Modules => Ok(modules::text(&guest.modules(memory)?).into_bytes()),
            LinuxFile::Volatility => Ok(guest.isf(memory)?.to_vec()),
        }
    }
}

/// The files of a process's directory (`linux/proc/<pid>/`), as in `/proc/<pid>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessFile {
    /// `status`: who it is (name, state, ids, users, threads).
    Status,
    /// `cmdline`: its arguments, NUL-separated.
    Cmdline,
    /// `environ`: its environment, NUL-separated.
    Environ,
    /// `maps`: its memory areas.
    Maps,
    /// `mem`: its virtual memory through its own page tables (a sparse file).
    Mem,
}

impl ProcessFile {
    /// Every file, in listing order.
    pub const ALL: [ProcessFile; 5] = [
        ProcessFile::Status,
        ProcessFile::Cmdline,
        ProcessFile::Environ,
        ProcessFile::Maps,
        ProcessFile::Mem,
    ];

    /// The file's name.
    pub fn name(self) -> &'static str {
        match self {
            ProcessFile::Status => "status",
            ProcessFile::Cmdline => "cmdline",
            ProcessFile::Environ => "environ",
            ProcessFile::Maps => "maps",
            ProcessFile::Mem => "mem",
        }
    }

    /// The file named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|view| view.name() == name)
    }

    /// The file's bytes now (`mem` is no text: [`LinuxGuest::process`] gives its paging).
    ///
    /// # Errors
    ///
    /// What reading the process's structures found wrong.
    pub fn render<M: GuestMemory + ?Sized>(
        self,
        process: &process::Process<'_, M>,
    ) -> Result<Vec<u8>, LinuxError> {
        match self {
            ProcessFile::Status => process.status().map(String::into_bytes),
            ProcessFile::Cmdline => process.cmdline(),
            ProcessFile::Environ => process.environ(),
            ProcessFile::Maps => Ok(process::maps_text(&process.areas()?).into_bytes()),
            ProcessFile::Mem => Ok(Vec::new()),
        }
    }
}

/// A Linux guest's kernel as read once per boot: its page tables, its symbols (indexed by
/// name), and its types (parsed once, with the layout of every structure the linux files read worked
/// out once; `None`, with why, for a kernel without usable BTF). Its memory is read live at
/// every call.
pub struct LinuxGuest {
    kernel: LinuxKernel,
    symbols: kallsyms::Symbols,
    types: Result<Types, String>,
    /// The log's ring buffer, as vmcoreinfo lays it out (`None` before Linux 5.10).
    log: Option<printk::Layout>,
    /// The Volatility symbol table, made at its first use.
    isf: std::sync::Mutex<Option<std::sync::Arc<Vec<u8>>>>,
}

/// What the kernel's BTF says of the structures read here: every layout a view needs, worked
/// out once per boot (each `Err` says what its files lack).
struct Types {
    btf: btf::Btf,
    tasks: Result<tasks::Offsets, String>,
    modules: Result<modules::Offsets, String>,
    process: Result<process::Offsets, String>,
    pids: Result<pid::Offsets, String>,
}

impl Types {
    fn of(btf: btf::Btf) -> Self {
        fn kept<T>(offsets: Result<T, LinuxError>) -> Result<T, String> {
            offsets.map_err(|err| crate::error::chain(&err))
        }
        Self {
            tasks: kept(tasks::Offsets::from_btf(&btf)),
            modules: kept(modules::Offsets::from_btf(&btf)),
            process: kept(process::Offsets::from_btf(&btf)),
            pids: kept(pid::Offsets::from_btf(&btf)),
            btf,
        }
    }
}

impl std::fmt::Debug for LinuxGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxGuest")
            .field("kernel", &self.kernel)
            .field("symbols", &self.symbols.len())
            .field("types", &self.types.as_ref().map(|types| types.btf.len()))
            .finish()
    }
}

impl LinuxGuest {
    /// The kernel `vmcoreinfo` describes, its symbols decoded and its BTF parsed, from `memory`.
    ///
    /// # Errors
    ///
    /// What [`LinuxKernel::new`] and the symbol tables found wrong (a kernel without usable
    /// BTF is no error: what needs types says so).
    pub fn read<M: GuestMemory + ?Sized>(vmcoreinfo: VmcoreInfo, memory: &M) -> Result<Self, LinuxError> {
        let kernel = LinuxKernel::new(vmcoreinfo)?;
        let reader = kernel.reader(memory);
        let symbols = kallsyms::Symbols::new(kallsyms::parse(&kallsyms::read_tables(&reader)?)?);
        let types = LinuxKernel::btf(&reader, &symbols)
            .and_then(|blob| Ok(btf::Btf::parse(&blob)?))
            .map(Types::of)
            .map_err(|err| crate::error::chain(&err));
        drop(reader);
        let log = printk::Layout::of(&kernel).ok();
        Ok(Self { kernel, symbols, types, log, isf: std::sync::Mutex::new(None) })
    }

    /// A reader of the kernel's memory in `memory`, for one request.
    pub fn reader<'a, M: GuestMemory + ?Sized>(&'a self, memory: &'a M) -> KernelReader<'a, M> {
        self.kernel.reader(memory)
    }

    /// The kernel's Volatility 3 symbol table (`isf`), made once.
    ///
    /// # Errors
    ///
    /// No types, no banner, or a vmcoreinfo without `KERNELOFFSET`.
    pub fn isf<M: GuestMemory + ?Sized>(&self, memory: &M) -> Result<std::sync::Arc<Vec<u8>>, LinuxError> {
        let mut cached = self.isf.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(isf) = cached.as_ref() {
            return Ok(std::sync::Arc::clone(isf));
        }
        let btf = self.btf()?;
        let banner = LinuxKernel::banner(&self.reader(memory), &self.symbols)?;
        let offset = hex(self.kernel.vmcoreinfo(), "KERNELOFFSET")?;
        let isf = std::sync::Arc::new(isf::generate(btf, &self.symbols, &banner, offset));
        *cached = Some(std::sync::Arc::clone(&isf));
        Ok(isf)
    }

    /// The name the symbol table is served under (`isf::file_name`).
    ///
    /// # Errors
    ///
    /// No banner.
    pub fn isf_name<M: GuestMemory + ?Sized>(&self, memory: &M) -> Result<String, LinuxError> {
        let release = self.kernel.vmcoreinfo().get("OSRELEASE").unwrap_or("linux");
        Ok(isf::file_name(release, &LinuxKernel::banner(&self.reader(memory), &self.symbols)?))
    }

    /// The kernel.
    pub fn kernel(&self) -> &LinuxKernel {
        &self.kernel
    }

    /// Its symbols.
    pub fn symbols(&self) -> &kallsyms::Symbols {
        &self.symbols
    }

    /// The layout of its log's ring buffer.
    ///
    /// # Errors
    ///
    /// A kernel whose vmcoreinfo does not lay it out (before Linux 5.10): what
    /// `printk::Layout::of` says it lacks.
    pub(crate) fn log_layout(&self) -> Result<printk::Layout, LinuxError> {
        self.log.map_or_else(|| printk::Layout::of(&self.kernel), Ok)
    }

    /// Its types.
    ///
    /// # Errors
    ///
    /// [`LinuxError::NoTypes`] saying why there are none.
    pub fn btf(&self) -> Result<&btf::Btf, LinuxError> {
        self.types.as_ref().map(|types| &types.btf).map_err(|why| LinuxError::NoTypes(why.clone()))
    }

    /// The layouts `pick` chooses among the types, or why there are none.
    fn layouts<T>(&self, pick: fn(&Types) -> &Result<T, String>) -> Result<&T, LinuxError> {
        match &self.types {
            Ok(types) => pick(types).as_ref().map_err(|why| LinuxError::NoTypes(why.clone())),
            Err(why) => Err(LinuxError::NoTypes(why.clone())),
        }
    }

    /// Every process (thread-group leader), the idle task first.
    ///
    /// # Errors
    ///
    /// Memory that cannot be read, a task list that loops or runs past `tasks::MAX_TASKS`, or no types.
    pub fn tasks<M: GuestMemory + ?Sized>(&self, memory: &M) -> Result<Vec<tasks::Task>, LinuxError> {
        let init_task = self.symbols.address("init_task")?;
        tasks::read(&self.reader(memory), self.layouts(|types| &types.tasks)?, init_task)
    }

    /// The loaded modules.
    ///
    /// # Errors
    ///
    /// Memory that cannot be read, a module list that loops or runs past `modules::MAX_MODULES`, or no types.
    pub fn modules<M: GuestMemory + ?Sized>(&self, memory: &M) -> Result<Vec<modules::Module>, LinuxError> {
        // `modules` is the list's head in kernel/module/main.c (a data symbol: other symbols of
        // that name may be functions)
        let head = self
            .symbols
            .named("modules")
            .find(|symbol| matches!(symbol.kind, 'd' | 'D' | 'b' | 'B'))
            .map(|symbol| Gva(symbol.address))
            .ok_or_else(|| LinuxError::Missing("modules among the kernel's symbols".into()))?;
        modules::read(&self.reader(memory), self.layouts(|types| &types.modules)?, head)
    }

    /// The process (thread-group leader) whose pid is `pid`, `None` if there is none: found
    /// through the kernel's pid tree in a few reads (`find_task_by_pid_ns` in `init_pid_ns`),
    /// or, on a kernel whose types lack that tree, by a walk of the task list.
    ///
    /// # Errors
    ///
    /// A pid tree or task that is corrupt, memory that cannot be read, no types.
    pub fn task<M: GuestMemory + ?Sized>(
        &self,
        memory: &M,
        pid: i32,
    ) -> Result<Option<tasks::Task>, LinuxError> {
        self.task_with(&self.reader(memory), pid)
    }

    /// [`task`](Self::task), through `reader`.
    fn task_with<M: GuestMemory + ?Sized>(
        &self,
        reader: &KernelReader<'_, M>,
        pid: i32,
    ) -> Result<Option<tasks::Task>, LinuxError> {
        let layouts = self.layouts(|types| &types.tasks)?;
        let (Ok(pids), Ok(namespace)) =
            (self.layouts(|types| &types.pids), self.symbols.address("init_pid_ns"))
        else {
            let init_task = self.symbols.address("init_task")?;
            return Ok(tasks::read(reader, layouts, init_task)?.into_iter().find(|task| task.pid == pid));
        };
        let read_task =
            |address| tasks::task_at(reader, layouts, address).map(|task| ((task.pid, task.tgid), task));
        pid::find_leader(reader, pids, namespace, pid, read_task)
    }

    /// The process whose pid is `pid` (a thread-group leader), `None` if there is none, as
    /// [`task`](Self::task) finds it.
    ///
    /// # Errors
    ///
    /// As [`task`](Self::task), or types that lack what processes need.
    pub fn process<'a, M: GuestMemory + ?Sized>(
        &'a self,
        memory: &'a M,
        pid: i32,
    ) -> Result<Option<process::Process<'a, M>>, LinuxError> {
        let offsets = self.layouts(|types| &types.process)?;
        let reader = self.reader(memory);
        let task = self.task_with(&reader, pid)?;
        Ok(task.map(|task| process::Process::new(reader, offsets, &self.symbols, task)))
    }
}

/// The most BTF read (Debian 12's kernel has 5 MB).
pub const MAX_BTF: u64 = 64 << 20;

impl LinuxKernel {
    /// The kernel's BTF blob (`__start_BTF` to `__stop_BTF`), checked as the kernel checks its
    /// header (`kernel/bpf/btf.c`): magic 0xeb9f, version 1, a header of at least 24 bytes, type
    /// and string sections within the blob, and the string `task_struct` among the strings.
    ///
    /// # Errors
    ///
    /// [`LinuxError::Missing`] without those symbols (no `CONFIG_DEBUG_INFO_BTF`),
    /// [`LinuxError::Corrupt`] for a blob larger than [`MAX_BTF`] or one that fails the checks.
    pub fn btf<M: GuestMemory + ?Sized>(
        reader: &KernelReader<'_, M>,
        symbols: &kallsyms::Symbols,
    ) -> Result<Vec<u8>, LinuxError> {
        let (start, len) = btf_extent(symbols)?;
        let blob = reader.bytes(start, len as usize, "BTF")?;
        btf::check(&blob)?;
        Ok(blob)
    }
}

/// Where the kernel's BTF starts and how long it is (`__start_BTF`, `__stop_BTF`).
///
/// # Errors
///
/// [`LinuxError::Missing`] without those symbols (no `CONFIG_DEBUG_INFO_BTF`),
/// [`LinuxError::Corrupt`] for a size past [`MAX_BTF`] (or negative).
pub fn btf_extent(symbols: &kallsyms::Symbols) -> Result<(Gva, u64), LinuxError> {
    let address = |name: &str| {
        symbols
            .address(name)
            .map_err(|_| LinuxError::Missing(format!("{name} among the kernel's symbols (no BTF)")))
    };
    let (start, stop) = (address("__start_BTF")?, address("__stop_BTF")?);
    let len = stop.offset_from(start).filter(|len| *len <= MAX_BTF).ok_or_else(|| LinuxError::Corrupt {
        what: "BTF",
        why: format!("__start_BTF {start:#x} to __stop_BTF {stop:#x} is no size of at most {MAX_BTF} bytes"),
    })?;
    Ok((start, len))
}

impl From<btf::BtfError> for LinuxError {
    fn from(err: btf::BtfError) -> Self {
        match err {
            btf::BtfError::Corrupt(why) => LinuxError::Corrupt { what: "BTF", why },
            other => LinuxError::Corrupt { what: "types (BTF)", why: other.to_string() },
        }
    }
}

/// The physical address of `va` in the kernel image (x86_64 `__pa_symbol`).
fn image_physical(va: Gva, phys_base: i64) -> Option<u64> {
    va.offset_from(Gva(START_KERNEL_MAP)).map(|offset| offset.wrapping_add(phys_base as u64))
}

fn symbol(vmcoreinfo: &VmcoreInfo, name: &str) -> Result<Gva, LinuxError> {
    hex(vmcoreinfo, &format!("SYMBOL({name})")).map(Gva)
}

/// A value the kernel writes in hex without a `0x` (`SYMBOL(...)`, `KERNELOFFSET`).
fn hex(vmcoreinfo: &VmcoreInfo, key: &str) -> Result<u64, LinuxError> {
    let value = vmcoreinfo.get(key).ok_or_else(|| LinuxError::Missing(key.to_string()))?;
    u64::from_str_radix(value, 16)
        .map_err(|_| LinuxError::BadNumber { key: key.to_string(), value: value.to_string() })
}

/// A value the kernel writes in hex with a `0x` (`NUMBER(kimage_voffset)`).
fn hex_number(vmcoreinfo: &VmcoreInfo, key: &str) -> Result<u64, LinuxError> {
    let value = vmcoreinfo.get(key).ok_or_else(|| LinuxError::Missing(key.to_string()))?;
    value
        .strip_prefix("0x")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| LinuxError::BadNumber { key: key.to_string(), value: value.to_string() })
}

/// A `NUMBER(...)`, `SIZE(...)`, `OFFSET(...)` or `LENGTH(...)` value: decimal, as the kernel
/// writes them (`NUMBER(phys_base)` may be negative).
fn number(vmcoreinfo: &VmcoreInfo, key: &str) -> Result<i64, LinuxError> {
    let value = vmcoreinfo.get(key).ok_or_else(|| LinuxError::Missing(key.to_string()))?;
    value.parse().map_err(|_| LinuxError::BadNumber { key: key.to_string(), value: value.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(text: &str) -> VmcoreInfo {
        VmcoreInfo { offset: 0, text: text.to_string() }
    }

    #[test]
    fn the_kernels_tables_are_found_from_vmcoreinfo() {
        let kernel = LinuxKernel::new(info(
            "OSRELEASE=6.1\nSYMBOL(init_top_pgt)=ffffffff9d00a000\nNUMBER(phys_base)=-390070272\nNUMBER(pgtable_l5_enabled)=0\n",
        ))
        .unwrap();
        // 0xffffffff9d00a000 - __START_KERNEL_map - 0x17400000
        assert_eq!(kernel.paging().root(), Gpa(0x1d00_a000 - 0x1740_0000));
        assert_eq!(kernel.paging().mode(), PagingMode::FourLevel);
        let five = LinuxKernel::new(info(
            "SYMBOL(init_top_pgt)=ffffffff81000000\nNUMBER(phys_base)=0\nNUMBER(pgtable_l5_enabled)=1\n",
        ))
        .unwrap();
        assert_eq!((five.paging().mode(), five.paging().root()), (PagingMode::FiveLevel, Gpa(0x100_0000)));
        assert!(matches!(LinuxKernel::new(info("NUMBER(phys_base)=0\n")), Err(LinuxError::Missing(_))));
        let release = |text: &str| {
            LinuxKernel::new(info(&format!(
                "SYMBOL(init_top_pgt)=ffffffff81000000\nNUMBER(phys_base)=0\n{text}"
            )))
            .unwrap()
            .version()
        };
        assert_eq!(release("OSRELEASE=6.12.95+deb12-cloud-amd64\n"), Some((6, 12)));
        assert_eq!(release("OSRELEASE=6.1.0-57-cloud-amd64\n"), Some((6, 1)));
        assert_eq!(release("OSRELEASE=junk\n"), None);
        assert_eq!(release(""), None);
        // arm64: swapper_pg_dir less kimage_voffset, 48-bit 4 KiB tables only
        let arm64 = |va_bits: u32| {
            LinuxKernel::new(info(&format!(
                "PAGESIZE=4096\nSYMBOL(swapper_pg_dir)=ffff800009f6d000\nNUMBER(VA_BITS)={va_bits}\n\
                 NUMBER(kimage_voffset)=0xffff7fffc7e00000\n"
            )))
        };
        let kernel = arm64(48).unwrap();
        assert_eq!((kernel.paging().mode(), kernel.paging().root()), (PagingMode::Arm48, Gpa(0x4216_d000)));
        assert!(arm64(52).unwrap_err().to_string().contains("52-bit"));
        // built for 52 bits, running with 48 (T1SZ 16)
        let running = LinuxKernel::new(info(
            "PAGESIZE=4096\nSYMBOL(swapper_pg_dir)=ffff800009f6d000\nNUMBER(VA_BITS)=52\n\
             NUMBER(kimage_voffset)=0xffff7fffc7e00000\nNUMBER(TCR_EL1_T1SZ)=0x10\n",
        ));
        assert_eq!(running.unwrap().paging().mode(), PagingMode::Arm48);
        assert!(matches!(
            LinuxKernel::new(info("SYMBOL(init_top_pgt)=ffffffff81000000\nNUMBER(phys_base)=x\n")),
            Err(LinuxError::BadNumber { .. })
        ));
        assert!(matches!(
            LinuxKernel::new(info("SYMBOL(init_top_pgt)=1000\nNUMBER(phys_base)=0\n")),
            Err(LinuxError::Corrupt { .. })
        ));
    }
}
