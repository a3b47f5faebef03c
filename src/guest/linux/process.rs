//! One process of the guest, as its `/proc/<pid>/` shows it: `status`, `cmdline`, `environ`,
//! `maps` (its memory areas: the maple tree `mm_mt` of Linux >= 6.1, or the `mmap` list
//! before), and its virtual memory through its own page tables (`mm->pgd`).
//!
//! Every member is at the offset the kernel's BTF gives; every walk is bounded (areas, path
//! components, string lengths) and a bad structure is an error saying where.

use std::collections::HashSet;
use std::fmt::Write as _;

use super::btf::Btf;
use super::kallsyms::Symbols;
use super::maple;
use super::reader::KernelReader;
use super::tasks::Task;
use super::LinuxError;
use crate::guest::memory::{GuestMemory, Gva};
use crate::guest::paging::Paging;

/// Memory areas listed at most (Linux's default `max_map_count` is 65,530).
pub const MAX_AREAS: usize = 1 << 17;
/// Bytes of `cmdline` or `environ` read at most.
pub const MAX_ARGUMENTS: u64 = 1 << 20;
/// Components of a file's path followed at most.
pub const MAX_PATH_COMPONENTS: usize = 256;

/// A process's memory descriptor (`struct mm_struct`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mm {
    /// Its address.
    pub address: Gva,
    /// Its page tables' root, a kernel address (`pgd`).
    pub pgd: Gva,
    /// Its arguments (`arg_start..arg_end`).
    pub arguments: (Gva, Gva),
    /// Its environment (`env_start..env_end`).
    pub environment: (Gva, Gva),
    /// Its heap (`start_brk..brk`).
    pub heap: (Gva, Gva),
    /// Where its stack started (`start_stack`).
    pub start_stack: Gva,
}

/// One memory area (`struct vm_area_struct`), as a line of `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Area {
    /// `vm_start`.
    pub start: Gva,
    /// `vm_end`.
    pub end: Gva,
    /// `vm_flags`.
    pub flags: u64,
    /// The offset in its file, in bytes (0 without a file).
    pub offset: u64,
    /// Its file's device (`s_dev`) and inode number, (0, 0) without a file.
    pub device: u32,
    /// Its file's inode number.
    pub inode: u64,
    /// Its file's path, or the kernel's name for it (`[heap]`, `[stack]`, `[vdso]`...).
    pub name: Option<String>,
}

/// Where each member is, from BTF.
#[derive(Debug, Clone)]
pub struct Offsets {
    task_mm: u64,
    task_signal: u64,
    task_cred: u64,
    nr_threads: u64,
    cred: [u64; 8],
    mm: MmOffsets,
    vma: VmaOffsets,
    areas: Areas,
    file_dentry: u64,
    file_mnt: u64,
    file_inode: u64,
    inode_sb: u64,
    inode_ino: u64,
    sb_dev: u64,
    dentry_parent: u64,
    dentry_name: u64,
    dentry_name_len: u64,
    mount_mnt: u64,
    mount_parent: u64,
    mount_mountpoint: u64,
    vfsmount_root: u64,
    ops_name: u64,
    special_name: u64,
    anon_name: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Copy)]
struct MmOffsets {
    pgd: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
}

#[derive(Debug, Clone, Copy)]
struct VmaOffsets {
    start: u64,
    end: u64,
    flags: u64,
    pgoff: u64,
    file: u64,
    mm: u64,
    ops: u64,
    private_data: u64,
    next: Option<u64>,
}

/// How a kernel keeps a process's areas.
#[derive(Debug, Clone, Copy)]
enum Areas {
    /// `mm_struct.mm_mt`, a maple tree (Linux >= 6.1): its `ma_root`.
    Maple { root: u64, layout: maple::Layout },
    /// `mm_struct.mmap`, a list through `vm_next` (Linux < 6.1).
    List { first: u64 },
}

impl Offsets {
    /// The offsets of this kernel's structures.
    ///
    /// # Errors
    ///
    /// A structure or member the BTF lacks.
    pub fn from_btf(btf: &Btf) -> Result<Self, LinuxError> {
        let id = |name: &str| btf.struct_id(name).map_err(LinuxError::from);
        let (task, mm, vma, cred, signal) =
            (id("task_struct")?, id("mm_struct")?, id("vm_area_struct")?, id("cred")?, id("signal_struct")?);
        let (file, inode, sb, dentry, mount, vfsmount) =
            (id("file")?, id("inode")?, id("super_block")?, id("dentry")?, id("mount")?, id("vfsmount")?);
        let of = |strukt: u32, path: &str| btf.offset_of(strukt, path).map_err(LinuxError::from);
        let areas = if btf.has(mm, "mm_mt") {
            Areas::Maple {
                root: of(mm, "mm_mt")? + of(id("maple_tree")?, "ma_root")?,
                layout: maple::Layout::from_btf(btf)?,
            }
        } else {
            Areas::List { first: of(mm, "mmap")? }
        };
        let anon_name = match (btf.has(vma, "anon_name"), btf.struct_id("anon_vma_name")) {
            (true, Ok(anon)) => Some((of(vma, "anon_name")?, of(anon, "name")?)),
            _ => None,
        };
        Ok(Self {
            task_mm: of(task, "mm")?,
            task_signal: of(task, "signal")?,
            task_cred: of(task, "cred")?,
            nr_threads: of(signal, "nr_threads")?,
            cred: [
                of(cred, "uid")?,
                of(cred, "euid")?,
                of(cred, "suid")?,
                of(cred, "fsuid")?,
                of(cred, "gid")?,
                of(cred, "egid")?,
                of(cred, "sgid")?,
                of(cred, "fsgid")?,
            ],
            mm: MmOffsets {
                pgd: of(mm, "pgd")?,
                arg_start: of(mm, "arg_start")?,
                arg_end: of(mm, "arg_end")?,
                env_start: of(mm, "env_start")?,
                env_end: of(mm, "env_end")?,
                start_brk: of(mm, "start_brk")?,
                brk: of(mm, "brk")?,
                start_stack: of(mm, "start_stack")?,
            },
            vma: VmaOffsets {
                start: of(vma, "vm_start")?,
                end: of(vma, "vm_end")?,
                flags: of(vma, "vm_flags")?,
                pgoff: of(vma, "vm_pgoff")?,
                file: of(vma, "vm_file")?,
                mm: of(vma, "vm_mm")?,
                ops: of(vma, "vm_ops")?,
                private_data: of(vma, "vm_private_data")?,
                next: of(vma, "vm_next").ok(),
            },
            areas,
            file_dentry: of(file, "f_path.dentry")?,
            file_mnt: of(file, "f_path.mnt")?,
            file_inode: of(file, "f_inode")?,
            inode_sb: of(inode, "i_sb")?,
            inode_ino: of(inode, "i_ino")?,
            sb_dev: of(sb, "s_dev")?,
            dentry_parent: of(dentry, "d_parent")?,
            dentry_name: of(dentry, "d_name.name")?,
            dentry_name_len: of(dentry, "d_name.len")?,
            mount_mnt: of(mount, "mnt")?,
            mount_parent: of(mount, "mnt_parent")?,
            mount_mountpoint: of(mount, "mnt_mountpoint")?,
            vfsmount_root: of(vfsmount, "mnt_root")?,
            ops_name: of(id("vm_operations_struct")?, "name")?,
            special_name: of(id("vm_special_mapping")?, "name")?,
            anon_name,
        })
    }
}

/// One process, with what reading it needs.
pub struct Process<'a, M: ?Sized> {
    reader: KernelReader<'a, M>,
    offsets: &'a Offsets,
    symbols: &'a Symbols,
    /// The task.
    pub task: Task,
}

impl<'a, M: GuestMemory + ?Sized> Process<'a, M> {
    /// `task`, read through `reader` with `offsets` (symbols name the kernel's special
    /// mappings).
    pub(crate) fn new(
        reader: KernelReader<'a, M>,
        offsets: &'a Offsets,
        symbols: &'a Symbols,
        task: Task,
    ) -> Self {
        Self { reader, offsets, symbols, task }
    }

    fn pointer(&self, va: Gva, what: &'static str) -> Result<Gva, LinuxError> {
        self.reader.pointer(va, what)
    }

    /// Its memory descriptor, `None` for a kernel thread.
    ///
    /// # Errors
    ///
    /// Memory that cannot be read.
    pub fn mm(&self) -> Result<Option<Mm>, LinuxError> {
        let address = self.pointer(self.task.address.wrapping_add(self.offsets.task_mm), "task")?;
        if address.is_null() {
            return Ok(None);
        }
        let o = &self.offsets.mm;
        let at = |offset: u64| self.pointer(address.wrapping_add(offset), "memory descriptor");
        Ok(Some(Mm {
            address,
            pgd: at(o.pgd)?,
            arguments: (at(o.arg_start)?, at(o.arg_end)?),
            environment: (at(o.env_start)?, at(o.env_end)?),
            heap: (at(o.start_brk)?, at(o.brk)?),
            start_stack: at(o.start_stack)?,
        }))
    }

    /// Its own page tables (`mm->pgd`), `None` for a kernel thread.
    ///
    /// # Errors
    ///
    /// A `pgd` the kernel's tables do not map.
    pub fn paging(&self) -> Result<Option<Paging>, LinuxError> {
        self.mm()?.map(|mm| self.paging_of(&mm)).transpose()
    }

    /// The page tables of memory descriptor `mm` (its `pgd`, a kernel address).
    fn paging_of(&self, mm: &Mm) -> Result<Paging, LinuxError> {
        let kernel = self.reader.kernel().paging();
        let root = self
            .reader
            .translate(mm.pgd)
            .map_err(|source| LinuxError::Read { what: "page tables (mm->pgd)", source })?;
        Ok(Paging::new(kernel.mode(), root, kernel.no_execute_enabled()))
    }

    /// The bytes of the range `range` picks of its memory descriptor, at most
    /// [`MAX_ARGUMENTS`] of them (none for a kernel thread).
    fn user_bytes(&self, range: fn(&Mm) -> (Gva, Gva), what: &'static str) -> Result<Vec<u8>, LinuxError> {
        let Some(mm) = self.mm()? else { return Ok(Vec::new()) };
        let (start, end) = range(&mm);
        let mut bytes = vec![0u8; end.offset_from(start).unwrap_or(0).min(MAX_ARGUMENTS) as usize];
        self.paging_of(&mm)?
            .read_virtual(self.reader.memory(), start, &mut bytes)
            .map_err(|source| LinuxError::Read { what, source })?;
        Ok(bytes)
    }

    /// Its arguments, as `/proc/<pid>/cmdline` gives them (empty for a kernel thread).
    ///
    /// # Errors
    ///
    /// Memory that cannot be read (a page of the arguments swapped out among them).
    pub fn cmdline(&self) -> Result<Vec<u8>, LinuxError> {
        self.user_bytes(|mm| mm.arguments, "arguments")
    }

    /// Its environment, as `/proc/<pid>/environ` gives it (empty for a kernel thread).
    ///
    /// # Errors
    ///
    /// As [`cmdline`](Self::cmdline).
    pub fn environ(&self) -> Result<Vec<u8>, LinuxError> {
        self.user_bytes(|mm| mm.environment, "environment")
    }

    /// The lines of `/proc/<pid>/status` that describe who it is: name, state, ids, parent,
    /// users, groups, threads.
    ///
    /// # Errors
    ///
    /// Memory that cannot be read.
    pub fn status(&self) -> Result<String, LinuxError> {
        let task = &self.task;
        let cred = self.pointer(task.address.wrapping_add(self.offsets.task_cred), "task")?;
        let mut ids = [0u32; 8];
        for (id, offset) in ids.iter_mut().zip(self.offsets.cred) {
            *id = self.reader.u32(cred.wrapping_add(offset), "credentials")?;
        }
        let signal = self.pointer(task.address.wrapping_add(self.offsets.task_signal), "task")?;
        let threads = self.reader.u32(signal.wrapping_add(self.offsets.nr_threads), "signal")?;
        let mut name = String::new();
        for c in task.comm.chars() {
            match c {
                '\\' => name.push_str("\\\\"),
                '\n' => name.push_str("\\n"),
                c if c.is_control() => name.push('?'),
                c => name.push(c),
            }
        }
        let (letter, word) = task.state_name();
        Ok(format!(
            "Name:\t{name}\nState:\t{letter} ({word})\nTgid:\t{}\nPid:\t{}\nPPid:\t{}\n\
             Uid:\t{}\t{}\t{}\t{}\nGid:\t{}\t{}\t{}\t{}\nThreads:\t{threads}\n",
            task.tgid, task.pid, task.ppid, ids[0], ids[1], ids[2], ids[3], ids[4], ids[5], ids[6], ids[7]
        ))
    }

    /// Its memory areas in address order (none for a kernel thread).
    ///
    /// # Errors
    ///
    /// A tree or list that is corrupt, too large or unreadable; an area that is not the
    /// process's (`vm_mm`) or ends before it starts.
    pub fn areas(&self) -> Result<Vec<Area>, LinuxError> {
        let Some(mm) = self.mm()? else { return Ok(Vec::new()) };
        let addresses = match self.offsets.areas {
            Areas::Maple { root, layout } => {
                let root = self.pointer(mm.address.wrapping_add(root), "memory descriptor")?;
                maple::entries(&self.reader, &layout, root.0)?.into_iter().map(Gva).collect::<Vec<_>>()
            }
            Areas::List { first } => {
                self.area_list(self.pointer(mm.address.wrapping_add(first), "memory descriptor")?)?
            }
        };
        if addresses.len() > MAX_AREAS {
            return Err(LinuxError::Corrupt { what: "memory areas", why: format!("more than {MAX_AREAS}") });
        }
        let mut seen = HashSet::new();
        let mut areas = Vec::with_capacity(addresses.len());
        for vma in addresses {
            if seen.insert(vma) {
                areas.push(self.area(vma, &mm)?);
            }
        }
        areas.sort_by_key(|area| area.start);
        Ok(areas)
    }

    fn area_list(&self, first: Gva) -> Result<Vec<Gva>, LinuxError> {
        let next =
            self.offsets.vma.next.ok_or_else(|| LinuxError::Missing("vm_area_struct.vm_next".into()))?;
        let (mut areas, mut seen, mut vma) = (Vec::new(), HashSet::new(), first);
        while !vma.is_null() {
            if areas.len() >= MAX_AREAS || !seen.insert(vma) {
                return Err(LinuxError::Corrupt {
                    what: "memory areas",
                    why: format!("the list loops or runs past {MAX_AREAS} at {vma:#x}"),
                });
            }
            areas.push(vma);
            vma = self.pointer(vma.wrapping_add(next), "memory area")?;
        }
        Ok(areas)
    }

    fn area(&self, vma: Gva, mm: &Mm) -> Result<Area, LinuxError> {
        let o = &self.offsets.vma;
        let at = |offset: u64| self.pointer(vma.wrapping_add(offset), "memory area");
        let number = |offset: u64| self.reader.u64(vma.wrapping_add(offset), "memory area");
        let (start, end, owner) = (at(o.start)?, at(o.end)?, at(o.mm)?);
        if owner != mm.address || end <= start {
            return Err(LinuxError::Corrupt {
                what: "memory areas",
                why: format!(
                    "the area at {vma:#x} ({start:#x}-{end:#x}, of mm {owner:#x}) is not one of mm {:#x}",
                    mm.address
                ),
            });
        }
        let mut area =
            Area { start, end, flags: number(o.flags)?, offset: 0, device: 0, inode: 0, name: None };
        let file = at(o.file)?;
        if !file.is_null() {
            let inode = self.pointer(file.wrapping_add(self.offsets.file_inode), "file")?;
            let sb = self.pointer(inode.wrapping_add(self.offsets.inode_sb), "inode")?;
            area.device = self.reader.u32(sb.wrapping_add(self.offsets.sb_dev), "super block")?;
            area.inode = self.reader.u64(inode.wrapping_add(self.offsets.inode_ino), "inode")?;
            area.offset = number(o.pgoff)?.wrapping_mul(crate::ram::PAGE_SIZE as u64);
            area.name = Some(self.path(file)?);
            return Ok(area);
        }
        area.name = self.special_name(vma)?;
        // the initial heap: Linux 6.6 made the test strict (vma_is_initial_heap)
        let heap = match self.reader.kernel().version() {
            Some(version) if version >= (6, 6) => start < mm.heap.1 && end > mm.heap.0,
            _ => start <= mm.heap.1 && end >= mm.heap.0,
        };
        if area.name.is_none() {
            if heap {
                area.name = Some("[heap]".into());
            } else if start <= mm.start_stack && end >= mm.start_stack {
                area.name = Some("[stack]".into());
            } else if let Some((member, name)) = self.offsets.anon_name {
                let anon = at(member)?;
                if !anon.is_null() {
                    let text = self.reader.c_string(anon.wrapping_add(name), 256, "area name")?;
                    area.name = Some(format!("[anon:{}]", escape(&text)));
                }
            }
        }
        Ok(area)
    }

    /// The name of a special mapping (`[vdso]`, `[vvar]`): an area whose operations name it
    /// with `special_mapping_name`.
    fn special_name(&self, vma: Gva) -> Result<Option<String>, LinuxError> {
        let ops = self.pointer(vma.wrapping_add(self.offsets.vma.ops), "memory area")?;
        if ops.is_null() {
            return Ok(None);
        }
        let namer = self.pointer(ops.wrapping_add(self.offsets.ops_name), "area operations")?;
        if namer.is_null() || self.symbols.address("special_mapping_name").ok() != Some(namer) {
            return Ok(None);
        }
        let special = self.pointer(vma.wrapping_add(self.offsets.vma.private_data), "memory area")?;
        let name = self.pointer(special.wrapping_add(self.offsets.special_name), "special mapping")?;
        Ok(Some(escape(&self.reader.c_string(name, 256, "special mapping name")?)))
    }

    /// The path of `file` from the root of the mount tree (`d_path`), at most
    /// [`MAX_PATH_COMPONENTS`] components across mounts.
    fn path(&self, file: Gva) -> Result<String, LinuxError> {
        let o = self.offsets;
        let mut dentry = self.pointer(file.wrapping_add(o.file_dentry), "file")?;
        let mut vfsmount = self.pointer(file.wrapping_add(o.file_mnt), "file")?;
        let mut names: Vec<Vec<u8>> = Vec::new();
        for _ in 0..MAX_PATH_COMPONENTS {
            let root = self.pointer(vfsmount.wrapping_add(o.vfsmount_root), "mount")?;
            let parent = self.pointer(dentry.wrapping_add(o.dentry_parent), "dentry")?;
            if dentry == root || dentry == parent {
                let mount = vfsmount.wrapping_sub(o.mount_mnt);
                let mount_parent = self.pointer(mount.wrapping_add(o.mount_parent), "mount")?;
                if mount_parent == mount || mount_parent.is_null() {
                    let mut path = Vec::new();
                    for name in names.iter().rev() {
                        path.push(b'/');
                        path.extend_from_slice(name);
                    }
                    if path.is_empty() {
                        path.push(b'/');
                    }
                    return Ok(escape(&path));
                }
                dentry = self.pointer(mount.wrapping_add(o.mount_mountpoint), "mount")?;
                vfsmount = mount_parent.wrapping_add(o.mount_mnt);
                continue;
            }
            let len = self.reader.u32(dentry.wrapping_add(o.dentry_name_len), "dentry")?;
            let name = self.pointer(dentry.wrapping_add(o.dentry_name), "dentry")?;
            let mut bytes = vec![0u8; (len as usize).min(255)];
            self.reader.read(name, &mut bytes, "file name")?;
            names.push(bytes);
            dentry = parent;
        }
        Err(LinuxError::Corrupt {
            what: "file path",
            why: format!("more than {MAX_PATH_COMPONENTS} components"),
        })
    }
}

/// Text as `seq_file_path` writes it: a newline as `\012`; bytes that are not UTF-8 as U+FFFD.
fn escape(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\n', "\\012")
}

/// The areas as `/proc/<pid>/maps` lists them (`show_map_vma` of `fs/proc/task_mmu.c`): the
/// name, where there is one, starts at column 74.
pub fn maps_text(areas: &[Area]) -> String {
    let mut text = String::new();
    for area in areas {
        let flag = |bit: u64, c: char| if area.flags & bit != 0 { c } else { '-' };
        let line_start = text.len();
        let _ = write!(
            text,
            "{:08x}-{:08x} {}{}{}{} {:08x} {:02x}:{:02x} {} ",
            area.start,
            area.end,
            flag(1, 'r'),
            flag(2, 'w'),
            flag(4, 'x'),
            if area.flags & 0x80 != 0 { 's' } else { 'p' },
            area.offset,
            area.device >> 20,
            area.device & 0xf_ffff,
            area.inode
        );
        if let Some(name) = &area.name {
            // seq_pad: to 72 characters from the line's start, then a space
            let width = text.len() - line_start;
            text.extend(std::iter::repeat_n(' ', 72usize.saturating_sub(width) + 1));
            text.push_str(name);
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_are_those_of_proc() {
        let areas = [
            Area {
                start: Gva(0x40_0000),
                end: Gva(0x40_1000),
                flags: 1,
                offset: 0,
                device: 2,
                inode: 12,
                name: Some("/bin/busybox".into()),
            },
            Area {
                start: Gva(0x5e_5000),
                end: Gva(0x5ec_000),
                flags: 3,
                offset: 0,
                device: 0,
                inode: 0,
                name: None,
            },
            Area {
                start: Gva(0x7ffc_4aed_6000),
                end: Gva(0x7ffc_4aef_7000),
                flags: 3,
                offset: 0,
                device: 0,
                inode: 0,
                name: Some("[stack]".into()),
            },
            Area {
                start: Gva(0x1000),
                end: Gva(0x2000),
                flags: 0x80 | 5,
                offset: 0x18_5000,
                device: (8 << 20) | 1,
                inode: 4242,
                name: Some("/lib/x.so".into()),
            },
        ];
        assert_eq!(
            maps_text(&areas),
            "00400000-00401000 r--p 00000000 00:02 12                                 /bin/busybox\n\
             005e5000-005ec000 rw-p 00000000 00:00 0 \n\
             7ffc4aed6000-7ffc4aef7000 rw-p 00000000 00:00 0                          [stack]\n\
             00001000-00002000 r-xs 00185000 08:01 4242                               /lib/x.so\n"
        );
    }
}
