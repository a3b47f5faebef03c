//! Virtual-address translation: the guest's own page tables, walked as the architecture
//! manuals describe them:
//!
//! - x86_64 4-level and 5-level paging with 4 KiB, 2 MiB and 1 GiB pages (Intel SDM vol. 3,
//!   ch. 4 "Paging");
//! - RISC-V Sv39, Sv48 and Sv57 with pages at every level (the privileged specification,
//!   "Supervisor-Level ISA", virtual-memory systems);
//! - AArch64 stage 1 with the 4 KiB granule and 48-bit addresses: levels 0-3, 1 GiB and 2 MiB
//!   blocks (Arm ARM, VMSAv8-64), from one translation table base (TTBR0_EL1 for the lower half,
//!   TTBR1_EL1 for the upper) given by the caller: QEMU's monitor does not print them.
//!
//! One walker serves the three: each format is data (an `Mmu`: what a root
//! holds, what a present entry of a level points to, what it allows), kept with the bits of its
//! manual in its architecture's file (`guest::arch::x86_64`, `riscv64`, `aarch64`).
//!
//! The tables are the guest's, so they are hostile input. A translation reads at most five entries.
//! An enumeration of mappings ([`Paging::page_runs`]) holds a fixed amount of memory whatever the
//! tables say and stops at its [`Limits`]: tables that point at themselves (a self-referencing root
//! entry is normal on some systems: x86's recursive PML4), that fan out to the same table 512 times
//! per level, or that point outside RAM cost bounded work and give errors, never a panic or a hang.
//! A walk never loops: each step goes one level down, and there are at most five.
//!
//! Virtual addresses are canonical: the bits above a mode's significant ones
//! ([`PagingMode::address_bits`]: 39 with Sv39; 48 with x86_64 4-level paging, Sv48 and AArch64; 57
//! with 5-level paging and Sv57) copy the highest significant bit, so that bits 63..48 copy bit 47
//! with 4-level paging (AArch64: bits 63..48 all zeros or all ones, which says the half but not the
//! table). A file whose offsets are virtual addresses drops that sign extension: see
//! [`offset_of_va`] and [`va_of_offset`].
//!
//! Left out: x86 32-bit and PAE paging (the guest must be in long mode), protection keys, the
//! supervisor rules of CR0.WP, SMEP and SMAP (the permissions reported are the entries' own),
//! and MAXPHYADDR (addresses keep bits 51..12 of an entry; reserved bits are not checked, except
//! the page-size bit at the PML4 and PML5 levels, which no page can have); RISC-V's A/D bits,
//! SUM/MXR and the hypervisor's two-stage translation; AArch64's other granules, 52-bit
//! addresses, TCR's T0SZ/T1SZ other than 16, hierarchical permissions disabled (HPD) and stage
//! 2. Every architecture reports pages as readable: RISC-V's execute-only pages too.
//!
//! # Examples
//!
//! ```
//! use qemu_bridge::guest::{PagingMode, Paging};
//! use qemu_bridge::guest::{FrozenMemory, Gpa, Gva};
//! use qemu_bridge::ram::GuestLayout;
//!
//! // PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at 0x4000, one page at 0x5000
//! let mut ram = vec![0u8; 0x6000];
//! for (entry_at, points_to) in [(0x1000, 0x2000u64), (0x2000, 0x3000), (0x3000, 0x4000), (0x4008, 0x5000)] {
//!     ram[entry_at..entry_at + 8].copy_from_slice(&(points_to | 0b111).to_le_bytes());
//! }
//! let layout = GuestLayout::identity(ram.len() as u64);
//! let memory = FrozenMemory::new(&ram, &layout);
//! let paging = Paging::new(PagingMode::FourLevel, Gpa(0x1000), true);
//! let page = paging.translate(&memory, Gva(0x1234))?;
//! assert_eq!((page.gpa, page.page_size), (Gpa(0x5234), 0x1000));
//! # Ok::<(), qemu_bridge::guest::PagingError>(())
//! ```

use std::ops::{Bound, RangeBounds};

mod page_runs;
pub use page_runs::PageRuns;

use super::arch::riscv64::{SATP_MODE_SHIFT, SATP_PPN};
use super::arch::x86_64::{CR0_PG, CR4_LA57, CR4_PAE, EFER_LMA, EFER_NXE, PRESENT};
use super::arch::{aarch64, riscv64, x86_64, Arch, PageTableRoot};
use super::memory::{Gpa, GuestMemory, GuestMemoryError, Gva};
use super::registers::VcpuRegisters;

const ENTRIES_PER_TABLE: usize = 512;
const ENTRY_BYTES: usize = 8;

/// 4 KiB, the size of a page mapped by a last-level entry (x86_64 PT, RISC-V level 0, AArch64
/// level 3).
pub const PAGE_4K: u64 = 1 << 12;
/// 2 MiB, the size of a page mapped one level up (x86_64 PD, RISC-V level 1, AArch64 level 2).
pub const PAGE_2M: u64 = 1 << 21;
/// 1 GiB, the size of a page mapped two levels up (x86_64 PDPT, RISC-V level 2, AArch64
/// level 1).
pub const PAGE_1G: u64 = 1 << 30;

/// The format of the page tables and how many levels translate an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PagingMode {
    /// x86_64 4-level paging: 48-bit virtual addresses, root table PML4.
    FourLevel,
    /// x86_64 5-level paging (CR4.LA57): 57-bit virtual addresses, root table PML5.
    FiveLevel,
    /// RISC-V Sv39: 39-bit virtual addresses, three levels.
    Sv39,
    /// RISC-V Sv48: 48-bit virtual addresses, four levels.
    Sv48,
    /// RISC-V Sv57: 57-bit virtual addresses, five levels.
    Sv57,
    /// AArch64 stage 1, 4 KiB granule, 48-bit virtual addresses (T0SZ/T1SZ 16), levels 0-3,
    /// from one table base: an address of either half is translated by its bits 47..0 (give
    /// TTBR0_EL1's table for the lower half, TTBR1_EL1's for the upper). An enumeration of
    /// mappings reports addresses sign-extended from bit 47, as the other formats do.
    Arm48,
}

impl PagingMode {
    /// Significant bits of a virtual address: 39, 48 or 57.
    pub fn address_bits(self) -> u32 {
        match self {
            PagingMode::Sv39 => 39,
            PagingMode::FourLevel | PagingMode::Sv48 | PagingMode::Arm48 => 48,
            PagingMode::FiveLevel | PagingMode::Sv57 => 57,
        }
    }

    /// The architecture whose tables these are.
    pub fn arch(self) -> Arch {
        match self {
            PagingMode::FourLevel | PagingMode::FiveLevel => Arch::X86_64,
            PagingMode::Sv39 | PagingMode::Sv48 | PagingMode::Sv57 => Arch::Riscv64,
            PagingMode::Arm48 => Arch::Aarch64,
        }
    }

    /// The format of this mode's table entries, as data ([`Mmu`]), from its architecture's
    /// file.
    pub(crate) fn mmu(self) -> &'static Mmu {
        match self.arch() {
            Arch::X86_64 => &x86_64::MMU,
            Arch::Riscv64 => &riscv64::MMU,
            _ => &aarch64::MMU,
        }
    }

    /// Bytes of virtual address space without the sign extension, 2 to the power
    /// [`address_bits`](Self::address_bits): 2^39, 2^48 or 2^57. The kernel half starts at half
    /// of it.
    pub fn space_size(self) -> u64 {
        1 << self.address_bits()
    }

    /// The table levels a walk goes through, root first.
    pub fn levels(self) -> &'static [Level] {
        match self {
            PagingMode::FourLevel => &[Level::Pml4, Level::Pdpt, Level::Pd, Level::Pt],
            PagingMode::FiveLevel => &[Level::Pml5, Level::Pml4, Level::Pdpt, Level::Pd, Level::Pt],
            PagingMode::Sv39 => &[Level::Riscv(2), Level::Riscv(1), Level::Riscv(0)],
            PagingMode::Sv48 => &[Level::Riscv(3), Level::Riscv(2), Level::Riscv(1), Level::Riscv(0)],
            PagingMode::Sv57 => {
                &[Level::Riscv(4), Level::Riscv(3), Level::Riscv(2), Level::Riscv(1), Level::Riscv(0)]
            }
            PagingMode::Arm48 => &[Level::Arm(0), Level::Arm(1), Level::Arm(2), Level::Arm(3)],
        }
    }

    /// Whether `va` is canonical: its bits above the significant ones all copy the highest
    /// significant bit. AArch64 is the exception: bits 63..48 all zeros (TTBR0_EL1's half) or
    /// all ones (TTBR1_EL1's), bits 47..0 indexing the tables of either.
    pub fn is_canonical(self, va: Gva) -> bool {
        match self {
            PagingMode::Arm48 => [0, 0xffff].contains(&(va.0 >> 48)),
            _ => self.sign_extend(va.0) == va.0,
        }
    }

    /// `va` with its significant bits sign-extended to 64.
    fn sign_extend(self, va: u64) -> u64 {
        let unused = 64 - self.address_bits();
        (((va << unused) as i64) >> unused) as u64
    }
}

impl std::fmt::Display for PagingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PagingMode::FourLevel => "4-level paging",
            PagingMode::FiveLevel => "5-level paging",
            PagingMode::Sv39 => "Sv39",
            PagingMode::Sv48 => "Sv48",
            PagingMode::Sv57 => "Sv57",
            PagingMode::Arm48 => "AArch64 4 KiB granule, 48-bit",
        })
    }
}

/// A level of page tables, named as each architecture's manual names it: the SDM's tables for
/// x86_64, level numbers for RISC-V and AArch64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// Page-map level 5, the root with 5-level paging.
    Pml5,
    /// Page-map level 4, the root with 4-level paging.
    Pml4,
    /// Page-directory-pointer table; its entries map a table or a 1 GiB page.
    Pdpt,
    /// Page directory; its entries map a table or a 2 MiB page.
    Pd,
    /// Page table; its entries map 4 KiB pages.
    Pt,
    /// RISC-V level `n` (the root is level 2 for Sv39, 4 for Sv57; level 0 maps 4 KiB pages);
    /// an entry of any level can map a page of its size.
    Riscv(u8),
    /// AArch64 level `n`, 0-3 (level 1 blocks are 1 GiB, level 2 blocks 2 MiB, level 3 pages
    /// 4 KiB).
    Arm(u8),
}

impl Level {
    /// The lowest virtual-address bit of this level's table index: 12 for a PT up to 48 for a
    /// PML5.
    pub fn shift(self) -> u32 {
        match self {
            Level::Pml5 => 48,
            Level::Pml4 => 39,
            Level::Pdpt => 30,
            Level::Pd => 21,
            Level::Pt => 12,
            Level::Riscv(n) => 12 + 9 * u32::from(n.min(4)),
            Level::Arm(n) => 39 - 9 * u32::from(n.min(3)),
        }
    }

    /// The size of the page an entry of this level can map, if it can map one.
    pub fn page_size(self) -> Option<u64> {
        match self {
            Level::Pdpt => Some(PAGE_1G),
            Level::Pd => Some(PAGE_2M),
            Level::Pt => Some(PAGE_4K),
            Level::Pml5 | Level::Pml4 | Level::Arm(0) => None,
            Level::Riscv(_) | Level::Arm(_) => Some(1 << self.shift()),
        }
    }

    /// Whether this is the last level of its format (its entries map pages, never tables).
    pub(crate) fn is_last(self) -> bool {
        matches!(self, Level::Pt | Level::Riscv(0) | Level::Arm(3))
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Pml5 => "PML5",
            Level::Pml4 => "PML4",
            Level::Pdpt => "PDPT",
            Level::Pd => "PD",
            Level::Pt => "PT",
            Level::Riscv(n) => return write!(f, "level-{n}"),
            Level::Arm(n) => return write!(f, "level-{n}"),
        })
    }
}

/// Which cap of [`Limits`] stopped an enumeration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// [`Limits::max_entries_read`].
    EntriesRead,
    /// [`Limits::max_mappings`].
    PageRuns,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limit::EntriesRead => "the limit of page-table entries read",
            Limit::PageRuns => "the limit of mappings",
        })
    }
}

/// Why an address could not be translated or read, or why an enumeration skipped or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// CR0.PG is clear: addresses are physical.
    #[error("paging is off (CR0 {cr0:#x} has PG clear)")]
    PagingOff {
        /// The CR0 given.
        cr0: u64,
    },
    /// EFER.LMA is clear: 32-bit or PAE paging, which this module does not walk.
    #[error("the vCPU is not in long mode (EFER {efer:#x} has LMA clear)")]
    NotLongMode {
        /// The EFER given.
        efer: u64,
    },
    /// Long mode with CR4.PAE clear, a state no real vCPU is in.
    #[error("long mode without PAE (CR4 {cr4:#x} has PAE clear)")]
    PaeOff {
        /// The CR4 given.
        cr4: u64,
    },
    /// QEMU did not report a control register.
    #[error("the vCPU registers lack {name}")]
    MissingRegister {
        /// The register, as QEMU names it.
        name: &'static str,
    },
    /// The address is not canonical for the paging mode.
    #[error("virtual address {va:#x} is not canonical with {mode}")]
    NonCanonical {
        /// The address.
        va: Gva,
        /// The paging mode.
        mode: PagingMode,
    },
    /// The entry for the address at `level` is not present.
    #[error("virtual address {va:#x} is not mapped: its {level} entry is not present")]
    NotMapped {
        /// The address.
        va: Gva,
        /// The table whose entry is not present.
        level: Level,
    },
    /// A table is not in RAM (the entry above it, or the root, points outside RAM) or cannot be
    /// read.
    #[error("cannot read the {level} entry of virtual address {va:#x}")]
    Table {
        /// The address being translated (in an enumeration: the first address the table maps).
        va: Gva,
        /// The table that could not be read.
        level: Level,
        /// Why.
        #[source]
        source: GuestMemoryError,
    },
    /// x86_64: an entry of a level that cannot map a page (PML4, PML5) has the page-size bit
    /// set.
    #[error("the {level} entry of virtual address {va:#x} sets the page-size bit, reserved at that level")]
    ReservedPageSize {
        /// The address being translated (in an enumeration: the first address the entry maps).
        va: Gva,
        /// The table of the entry.
        level: Level,
    },
    /// A RISC-V or AArch64 entry with an encoding the architecture reserves: RISC-V write
    /// without read, a pointer at the last level, a superpage whose address is not aligned to
    /// its size; AArch64 a block at level 0 or the reserved encoding at level 3.
    #[error("the {level} entry of virtual address {va:#x} has a reserved encoding")]
    Reserved {
        /// The address being translated (in an enumeration: the first address the entry maps).
        va: Gva,
        /// The table of the entry.
        level: Level,
    },
    /// RISC-V `satp` selects no translation (Bare) or a mode this module does not walk.
    #[error("satp {satp:#x} selects no paging this walks (mode {mode}: 8, 9, 10 are Sv39, Sv48, Sv57)")]
    SatpMode {
        /// The satp given.
        satp: u64,
        /// Its mode field.
        mode: u64,
    },
    /// The architecture's page-table root is not among the registers QEMU reports.
    #[error("QEMU does not report where {arch} page tables are ({registers}): give the table's address as the root")]
    NoRoot {
        /// The architecture.
        arch: &'static str,
        /// The registers that would say.
        registers: &'static str,
    },
    /// The page the address maps to cannot be read.
    #[error("cannot read virtual address {va:#x} at guest-physical {gpa}")]
    Read {
        /// The first virtual address of the part that could not be read.
        va: Gva,
        /// Where it maps to.
        gpa: Gpa,
        /// Why.
        #[source]
        source: GuestMemoryError,
    },
    /// A read would run past the last virtual address, 0xffff_ffff_ffff_ffff.
    #[error("{len} bytes at virtual address {va:#x} run past the end of the address space")]
    Wraps {
        /// The first address.
        va: Gva,
        /// Bytes asked for.
        len: usize,
    },
    /// An enumeration stopped at one of its [`Limits`]; everything below `resume_at` in the
    /// range has been reported.
    #[error("enumeration stopped at virtual address {resume_at:#x}: {limit} reached")]
    Truncated {
        /// The limit reached.
        limit: Limit,
        /// Where a later enumeration could go on from.
        resume_at: Gva,
    },
}

/// Caps on one enumeration of mappings, so that hostile tables cost bounded work and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Page-table entries read, counting every entry of the range in each table visited
    /// (including tables that turn out not to be RAM). The enumeration stops before a table
    /// whose entries would pass the cap, so a cap below 512 may stop at the first table.
    pub max_entries_read: usize,
    /// Items yielded, mappings and errors together (the final [`PagingError::Truncated`] is
    /// one more).
    pub max_mappings: usize,
}

impl Default for Limits {
    /// 4 Mi entries read (32 MiB of tables, more than a busy guest's whole address space uses)
    /// and 1 Mi mappings.
    fn default() -> Self {
        Self { max_entries_read: 4 << 20, max_mappings: 1 << 20 }
    }
}

/// Where a virtual address maps to, and what the entries on the way allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The guest-physical address of the byte at the virtual address.
    pub gpa: Gpa,
    /// The size of the page that maps it ([`Level::page_size`]): `PAGE_4K`, `PAGE_2M` or
    /// `PAGE_1G`, and with Sv48 and Sv57 512 GiB and 256 TiB.
    pub page_size: u64,
    /// Writes are allowed: x86_64 R/W set at every level, RISC-V W in the leaf, AArch64 `AP[2]`
    /// clear in the leaf and `APTable[1]` in every table above.
    pub writable: bool,
    /// User mode may access the page: x86_64 U/S set at every level, RISC-V U in the leaf,
    /// AArch64 `AP[1]` set in the leaf and `APTable[0]` clear above.
    pub user: bool,
    /// The mode that may access the page may fetch instructions from it: x86_64 no XD at any
    /// level (with EFER.NXE clear, always true), RISC-V X in the leaf, AArch64 UXN (a user
    /// page) or PXN (a kernel page) clear in the leaf and the tables above.
    pub executable: bool,
}

/// A run of virtual addresses mapped to contiguous guest-physical addresses by pages of one
/// size with the same permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    /// The first virtual address, canonical.
    pub va: Gva,
    /// Bytes mapped, a multiple of `page_size` (a length rather than an end, because the last
    /// page ends at 2^64).
    pub len: u64,
    /// Where `va` maps to.
    pub gpa: Gpa,
    /// The size of each page of the run.
    pub page_size: u64,
    /// As [`Translation::writable`].
    pub writable: bool,
    /// As [`Translation::user`].
    pub user: bool,
    /// As [`Translation::executable`].
    pub executable: bool,
}

impl PageRun {
    /// The last virtual address of the run (inclusive, so that it never overflows).
    pub fn va_last(&self) -> Gva {
        self.va.wrapping_add(self.len.wrapping_sub(1))
    }

    /// Whether the run maps `va`.
    pub fn contains(&self, va: Gva) -> bool {
        va >= self.va && va <= self.va_last()
    }

    fn permissions(&self) -> (bool, bool, bool) {
        (self.writable, self.user, self.executable)
    }
}

/// The offset of `va` in a file of the virtual address space: `va` without its sign extension, in
/// `0..mode.space_size()`. The user half comes first (offset = address), the kernel half follows
/// from `space_size() / 2` (2^38 with Sv39, 2^47 with the 48-bit modes, 2^56 with the 57-bit ones),
/// so that 0xffff_8000_0000_0000 is at offset 2^47 with 4-level paging. The bits dropped are not
/// checked: a non-canonical `va` gives the offset of the canonical one with the same low bits.
pub fn offset_of_va(mode: PagingMode, va: Gva) -> u64 {
    va.0 & (mode.space_size() - 1)
}

/// The virtual address at `offset` of a file of the virtual address space, sign-extended
/// (the inverse of [`offset_of_va`]), or `None` past the end of the space.
pub fn va_of_offset(mode: PagingMode, offset: u64) -> Option<Gva> {
    (offset < mode.space_size()).then(|| Gva(mode.sign_extend(offset)))
}

/// What the entries walked so far allow. AArch64 keeps execution at EL0 and EL1 apart until
/// the leaf says which one applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Access {
    pub(crate) writable: bool,
    pub(crate) user: bool,
    pub(crate) executable: bool,
    pub(crate) privileged_executable: bool,
}

impl Access {
    pub(crate) const ALL: Access =
        Access { writable: true, user: true, executable: true, privileged_executable: true };
}

/// An architecture's page-table format as data, for the one walker here: what a root holds,
/// what a present entry (bit 0, in every format) of a level points to, and what it allows.
/// Each architecture's file (`guest::arch::*`) has one, with the bits of its manual.
pub(crate) struct Mmu {
    /// The root-address bits a root register or entry can hold.
    pub(crate) root_mask: u64,
    /// What a present entry of a level points to.
    pub(crate) decode: fn(Level, u64) -> Entry,
    /// What the entries above allow (`Access`), also subject to this entry, a page (`leaf`) or
    /// a table, with no-execute on or off (x86_64's EFER.NXE; the other formats ignore it).
    pub(crate) access: fn(Access, u64, bool, bool) -> Access,
}

/// The table in which a walk found its page: its depth in the mode's levels, its address,
/// what the entries above it allow, and an address it maps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeafTable {
    depth: usize,
    table: Gpa,
    access: Access,
    va: Gva,
}

impl LeafTable {
    /// Whether this table is the one that maps `va`: the same index in every level above.
    fn maps(&self, levels: &[Level], va: Gva) -> bool {
        let Some(level) = levels.get(self.depth) else { return false };
        let span_bits = level.shift() + 9;
        span_bits >= 64 || va.0 >> span_bits == self.va.0 >> span_bits
    }
}

/// What a present entry at a level points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A table of the next level.
    Table(Gpa),
    /// A page (or block) of `size` bytes at `base`.
    Page {
        /// Its guest-physical address.
        base: u64,
        /// Its size.
        size: u64,
    },
    /// A page-size bit where the level has no pages (x86_64 PML4 and PML5).
    ReservedPageSize,
    /// An encoding the format reserves.
    Reserved,
}

/// A vCPU's paging: the mode, the root table and (x86_64) whether no-execute is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    mode: PagingMode,
    root: Gpa,
    no_execute_enabled: bool,
}

impl Paging {
    /// Paging with the root table at `root` (the bits below the page and above what the format
    /// addresses are dropped: x86_64 keeps 51..12, RISC-V 55..12, AArch64 47..12) and, for
    /// x86_64, bit 63 of entries meaning no-execute when `no_execute_enabled` (EFER.NXE; the
    /// other formats ignore it).
    pub fn new(mode: PagingMode, root: Gpa, no_execute_enabled: bool) -> Self {
        Self { mode, root: Gpa(root.0 & mode.mmu().root_mask), no_execute_enabled }
    }

    /// The paging a RISC-V hart's `satp` selects: its mode (bits 63..60: 8 Sv39, 9 Sv48, 10
    /// Sv57) and root page number (bits 43..0).
    ///
    /// # Errors
    ///
    /// [`PagingError::SatpMode`] for Bare (0) and the reserved modes.
    pub fn from_satp(satp: u64) -> Result<Self, PagingError> {
        let mode = match satp >> SATP_MODE_SHIFT {
            8 => PagingMode::Sv39,
            9 => PagingMode::Sv48,
            10 => PagingMode::Sv57,
            mode => return Err(PagingError::SatpMode { satp, mode }),
        };
        Ok(Self::new(mode, Gpa((satp & SATP_PPN) << 12), true))
    }

    /// The paging of a vCPU of architecture `arch` from the registers QEMU reports: x86_64 as
    /// [`from_vcpu`](Self::from_vcpu), riscv64 from `satp` as [`from_satp`](Self::from_satp).
    ///
    /// # Errors
    ///
    /// As those two; [`PagingError::NoRoot`] for aarch64 (QEMU's monitor prints no TTBR) and
    /// other architectures.
    pub fn of_vcpu(arch: &Arch, registers: &VcpuRegisters) -> Result<Self, PagingError> {
        let satp = riscv64::SATP;
        match (arch, arch.info().page_table_root) {
            (Arch::X86_64, _) => Self::from_vcpu(registers),
            (Arch::Riscv64, _) => {
                Self::from_satp(registers.get(satp).ok_or(PagingError::MissingRegister { name: satp })?)
            }
            // aarch64: QEMU's monitor prints no TTBR
            (_, PageTableRoot::Given(registers)) => {
                Err(PagingError::NoRoot { arch: arch.info().name, registers })
            }
            _ => Err(PagingError::NoRoot { arch: "this architecture's", registers: "no page-table walker" }),
        }
    }

    /// The paging a vCPU with these control registers uses: 5-level when CR4.LA57 (bit 12) is
    /// set, the root from CR3 bits 51..12 (the PCID or flags and the LAM bits dropped),
    /// no-execute when EFER.NXE (bit 11) is set.
    ///
    /// # Errors
    ///
    /// [`PagingError::PagingOff`] when CR0.PG (bit 31) is clear, [`PagingError::NotLongMode`]
    /// when EFER.LMA (bit 10) is clear, [`PagingError::PaeOff`] when CR4.PAE (bit 5) is clear.
    pub fn from_registers(cr0: u64, cr3: u64, cr4: u64, efer: u64) -> Result<Self, PagingError> {
        if cr0 & CR0_PG == 0 {
            return Err(PagingError::PagingOff { cr0 });
        }
        if efer & EFER_LMA == 0 {
            return Err(PagingError::NotLongMode { efer });
        }
        if cr4 & CR4_PAE == 0 {
            return Err(PagingError::PaeOff { cr4 });
        }
        let mode = if cr4 & CR4_LA57 != 0 { PagingMode::FiveLevel } else { PagingMode::FourLevel };
        Ok(Self::new(mode, Gpa(cr3), efer & EFER_NXE != 0))
    }

    /// The paging of a vCPU from the registers QEMU reports (`CR0`, `CR3`, `CR4`, `EFER`), as
    /// [`from_registers`](Self::from_registers).
    ///
    /// # Errors
    ///
    /// [`PagingError::MissingRegister`] when one of the four is missing, else as
    /// [`from_registers`](Self::from_registers).
    pub fn from_vcpu(registers: &VcpuRegisters) -> Result<Self, PagingError> {
        let get = |name: &'static str| registers.get(name).ok_or(PagingError::MissingRegister { name });
        Self::from_registers(get(x86_64::CR0)?, get(x86_64::CR3)?, get(x86_64::CR4)?, get(x86_64::EFER)?)
    }

    /// The format of the tables and how many levels translate an address.
    pub fn mode(&self) -> PagingMode {
        self.mode
    }

    /// The guest-physical address of the root table: x86_64's PML4 or PML5, the one RISC-V's
    /// satp names, AArch64's level-0 table.
    pub fn root(&self) -> Gpa {
        self.root
    }

    /// Whether bit 63 of an entry forbids instruction fetches (x86_64 EFER.NXE).
    pub fn no_execute_enabled(&self) -> bool {
        self.no_execute_enabled
    }

    /// Where `va` maps to, reading one entry per level (at most five).
    ///
    /// # Errors
    ///
    /// [`PagingError::NonCanonical`] for an address that is not canonical,
    /// [`PagingError::NotMapped`] naming the level of the first entry that is not present,
    /// [`PagingError::Table`] when a table is not RAM, [`PagingError::Reserved`] for an entry
    /// with a reserved encoding (RISC-V, AArch64), [`PagingError::ReservedPageSize`] when an
    /// x86_64 PML4 or PML5 entry has the page-size bit set.
    pub fn translate<M: GuestMemory + ?Sized>(
        &self,
        memory: &M,
        va: Gva,
    ) -> Result<Translation, PagingError> {
        self.walk(memory, va, None).map(|(translation, _)| translation)
    }

    /// The walk of [`translate`](Self::translate), from the root or from the table where an
    /// earlier walk found its page (`from`, when `va` is in the range that table maps), and
    /// where this one found its page.
    pub(crate) fn walk<M: GuestMemory + ?Sized>(
        &self,
        memory: &M,
        va: Gva,
        from: Option<LeafTable>,
    ) -> Result<(Translation, LeafTable), PagingError> {
        if !self.mode.is_canonical(va) {
            return Err(PagingError::NonCanonical { va, mode: self.mode });
        }
        let levels = self.mode.levels();
        let (mut depth, mut table, mut access) = (0, self.root, Access::ALL);
        if let Some(known) = from.filter(|known| known.maps(levels, va)) {
            (depth, table, access) = (known.depth, known.table, known.access);
        }
        for (at, &level) in levels.iter().enumerate().skip(depth) {
            let index = (va.0 >> level.shift()) % ENTRIES_PER_TABLE as u64;
            let entry = memory
                .read_u64(Gpa(table.0 + index * ENTRY_BYTES as u64))
                .map_err(|source| PagingError::Table { va, level, source })?;
            if entry & PRESENT == 0 {
                return Err(PagingError::NotMapped { va, level });
            }
            let decoded = (self.mode.mmu().decode)(level, entry);
            let above = access;
            let leaf = matches!(decoded, Entry::Page { .. });
            access = (self.mode.mmu().access)(access, entry, leaf, self.no_execute_enabled);
            match decoded {
                Entry::Table(next) => table = next,
                Entry::Page { base, size } => {
                    let translation = Translation {
                        gpa: Gpa(base | (va.0 & (size - 1))),
                        page_size: size,
                        writable: access.writable,
                        user: access.user,
                        executable: access.executable,
                    };
                    return Ok((translation, LeafTable { depth: at, table, access: above, va }));
                }
                Entry::ReservedPageSize => return Err(PagingError::ReservedPageSize { va, level }),
                Entry::Reserved => return Err(PagingError::Reserved { va, level }),
            }
        }
        // Only reached if the last level could point to a table, which no format's does.
        let level = levels.last().copied().unwrap_or(Level::Pt);
        Err(PagingError::NotMapped { va, level })
    }

    /// Fills `buf` with the bytes at virtual address `va`, translating once per page, so that
    /// a read may cross into pages that are not contiguous in guest-physical memory.
    ///
    /// # Errors
    ///
    /// [`PagingError::Wraps`] when the range runs past 0xffff_ffff_ffff_ffff, an error of
    /// [`translate`](Self::translate) for the first page that does not translate (a range that
    /// crosses from the user half into the non-canonical hole gives
    /// [`PagingError::NonCanonical`]), [`PagingError::Read`] when a page is not RAM. On error
    /// `buf` holds the bytes of the pages read before the failure; the rest is unspecified.
    pub fn read_virtual<M: GuestMemory + ?Sized>(
        &self,
        memory: &M,
        va: Gva,
        buf: &mut [u8],
    ) -> Result<(), PagingError> {
        // consecutive pages are mostly in one table: the walk of the next starts there
        let mut leaf = None;
        read_pages(memory, va, buf, |at| {
            let (page, found) = self.walk(memory, at, leaf)?;
            leaf = Some(found);
            Ok((page.gpa, page.page_size - (at.0 & (page.page_size - 1))))
        })
    }

    /// Every mapping of the virtual addresses in `range` (canonical addresses; the
    /// non-canonical hole is skipped, `..` is the whole space), in address order, with runs of
    /// pages contiguous in both virtual and guest-physical space, of one size and the same
    /// permissions merged into one [`PageRun`]. A page that overlaps the range is reported
    /// whole. Runs never merge across the non-canonical hole.
    ///
    /// The iterator reads tables as it goes and holds about 24 KiB whatever the tables say.
    ///
    /// # Errors
    ///
    /// Items, after which the enumeration goes on: [`PagingError::Table`] for a table that is
    /// not RAM (what it would map is skipped), [`PagingError::Reserved`] for an entry with a
    /// reserved encoding, [`PagingError::ReservedPageSize`] for an x86_64 PML4 or PML5 entry
    /// with the page-size bit. A last item [`PagingError::Truncated`] when `limits`
    /// stopped the enumeration before the end of the range.
    pub fn page_runs<'a, M: GuestMemory + ?Sized>(
        &self,
        memory: &'a M,
        range: impl RangeBounds<Gva>,
        limits: Limits,
    ) -> PageRuns<'a, M> {
        PageRuns::new(*self, memory, page_runs::offset_span(self.mode, range), limits)
    }
}

/// Fills `buf` with the bytes at virtual address `va`, page by page: `translate(va)` gives the
/// guest-physical address of a byte and how many bytes from it on are in the same page. The
/// one loop every virtual read goes through ([`Paging::read_virtual`], the kernel reader's).
///
/// # Errors
///
/// [`PagingError::Wraps`] when the range runs past the end of the address space, what
/// `translate` returns, [`PagingError::Read`] when a page is not RAM. On error `buf` holds the
/// bytes of the pages read before the failure.
pub(crate) fn read_pages<M: GuestMemory + ?Sized>(
    memory: &M,
    va: Gva,
    buf: &mut [u8],
    mut translate: impl FnMut(Gva) -> Result<(Gpa, u64), PagingError>,
) -> Result<(), PagingError> {
    if !buf.is_empty() && va.checked_add(buf.len() as u64 - 1).is_none() {
        return Err(PagingError::Wraps { va, len: buf.len() });
    }
    let mut done = 0;
    while done < buf.len() {
        let at = va.wrapping_add(done as u64);
        let (gpa, left_in_page) = translate(at)?;
        let part = left_in_page.min((buf.len() - done) as u64) as usize;
        memory.read_at(gpa, &mut buf[done..done + part]).map_err(|source| PagingError::Read {
            va: at,
            gpa,
            source,
        })?;
        done += part;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::arch::aarch64::{
        EL0 as ARM_EL0, PXN as ARM_PXN, READ_ONLY as ARM_READ_ONLY, TABLE_NO_EL0 as ARM_TABLE_NO_EL0,
        TABLE_READ_ONLY as ARM_TABLE_READ_ONLY, UXN as ARM_UXN,
    };
    use crate::guest::arch::riscv64::{
        PPN_SHIFT as RISCV_PPN_SHIFT, R as RISCV_R, U as RISCV_U, W as RISCV_W, X as RISCV_X,
    };
    use crate::guest::arch::x86_64::{NO_EXECUTE, PAGE_SIZE, USER, WRITABLE};
    use crate::guest::FrozenMemory;
    use crate::ram::GuestLayout;

    const P: u64 = PRESENT;
    const W: u64 = WRITABLE;
    const U: u64 = USER;
    const PS: u64 = PAGE_SIZE;
    const NX: u64 = NO_EXECUTE;
    /// Bit 12 of a large-page entry: PAT, not part of the address.
    const PAT_LARGE: u64 = 1 << 12;

    const PML4: u64 = 0x1000;
    const PDPT: u64 = 0x2000;
    const PD: u64 = 0x3000;
    const PT: u64 = 0x4000;
    const PML5: u64 = 0x5000;
    const RAM: usize = 0x10000;

    /// Page tables by hand in a RAM image at GPA 0.
    struct Tables {
        ram: Vec<u8>,
        layout: GuestLayout,
    }

    impl Tables {
        fn empty() -> Self {
            // every byte its page number: reads show which page they came from
            let ram = (0..RAM).map(|at| (at / 0x1000) as u8).collect();
            let mut tables = Self { ram, layout: GuestLayout::identity(RAM as u64) };
            for table in [PML4, PDPT, PD, PT, PML5] {
                for index in 0..512 {
                    tables.set(table, index, 0);
                }
            }
            tables
        }

        /// PML4[0] -> PDPT[0] -> PD[0] -> PT; PT[1] maps 0x8000, PT[2] 0x6000; PD[1] maps a
        /// 2 MiB page at 2 MiB (with PAT set), PDPT[1] a 1 GiB page at 1 GiB.
        fn four_level() -> Self {
            let mut tables = Self::empty();
            tables.set(PML4, 0, PDPT | P | W | U);
            tables.set(PDPT, 0, PD | P | W | U);
            tables.set(PD, 0, PT | P | W | U);
            tables.set(PT, 1, 0x8000 | P | W | U);
            tables.set(PT, 2, 0x6000 | P | W | U);
            tables.set(PD, 1, PAGE_2M | PAT_LARGE | P | W | PS);
            tables.set(PDPT, 1, PAGE_1G | P | W | U | PS);
            tables
        }

        fn set(&mut self, table: u64, index: u64, entry: u64) {
            let at = (table + index * 8) as usize;
            self.ram[at..at + 8].copy_from_slice(&entry.to_le_bytes());
        }

        fn memory(&self) -> FrozenMemory<'_> {
            FrozenMemory::new(&self.ram, &self.layout)
        }
    }

    fn four_level(root: u64) -> Paging {
        Paging::new(PagingMode::FourLevel, Gpa(root), true)
    }

    fn all(
        paging: &Paging,
        tables: &Tables,
        range: impl RangeBounds<u64>,
        limits: Limits,
    ) -> Vec<Result<PageRun, PagingError>> {
        let gva = |bound: Bound<&u64>| bound.map(|&va| Gva(va));
        let range = (gva(range.start_bound()), gva(range.end_bound()));
        paging.page_runs(&tables.memory(), range, limits).collect()
    }

    fn mapping(
        va: u64,
        len: u64,
        gpa: u64,
        page_size: u64,
        (writable, user, executable): (bool, bool, bool),
    ) -> PageRun {
        PageRun { va: Gva(va), len, gpa: Gpa(gpa), page_size, writable, user, executable }
    }

    const RWX_USER: (bool, bool, bool) = (true, true, true);

    #[test]
    fn four_level_pages_of_4k_2m_and_1g_keep_the_offset_within_the_page() {
        let tables = Tables::four_level();
        let paging = four_level(PML4);
        let memory = tables.memory();
        let small = paging.translate(&memory, Gva(0x1234)).unwrap();
        assert_eq!(
            small,
            Translation {
                gpa: Gpa(0x8234),
                page_size: PAGE_4K,
                writable: true,
                user: true,
                executable: true
            }
        );
        assert_eq!(paging.translate(&memory, Gva(0x2fff)).unwrap().gpa, Gpa(0x6fff));
        let large = paging.translate(&memory, Gva(PAGE_2M + 0x1_2345)).unwrap();
        assert_eq!(
            (large.gpa, large.page_size),
            (Gpa(PAGE_2M + 0x1_2345), PAGE_2M),
            "PAT bit 12 is no address"
        );
        assert!(large.writable && !large.user);
        let huge = paging.translate(&memory, Gva(PAGE_1G + 0x1234_5678)).unwrap();
        assert_eq!((huge.gpa, huge.page_size), (Gpa(0x5234_5678), PAGE_1G));
    }

    #[test]
    fn the_kernel_half_is_reached_through_the_upper_pml4_entries() {
        let mut tables = Tables::four_level();
        tables.set(PML4, 256, PDPT | P | W);
        tables.set(PML4, 511, PDPT | P | W);
        let paging = four_level(PML4);
        let memory = tables.memory();
        let low = paging.translate(&memory, Gva(0xffff_8000_0000_1234)).unwrap();
        assert_eq!((low.gpa, low.user), (Gpa(0x8234), false));
        assert_eq!(paging.translate(&memory, Gva(0xffff_ff80_0000_2010)).unwrap().gpa, Gpa(0x6010));
    }

    #[test]
    fn five_level_paging_adds_the_pml5() {
        let mut tables = Tables::four_level();
        tables.set(PML5, 1, PML4 | P | W | U);
        tables.set(PML5, 256, PML4 | P | W);
        let paging = Paging::from_registers(CR0_PG, PML5, CR4_PAE | CR4_LA57, EFER_LMA).unwrap();
        assert_eq!(paging.mode(), PagingMode::FiveLevel);
        let memory = tables.memory();
        assert_eq!(paging.translate(&memory, Gva((1 << 48) | 0x1234)).unwrap().gpa, Gpa(0x8234));
        let kernel = paging.translate(&memory, Gva(0xff00_0000_0000_1234)).unwrap();
        assert_eq!((kernel.gpa, kernel.user), (Gpa(0x8234), false));
        assert!(matches!(
            paging.translate(&memory, Gva(0x1234)),
            Err(PagingError::NotMapped { va: Gva(0x1234), level: Level::Pml5 })
        ));
        // canonical with 57 bits, not with 48
        assert!(matches!(
            four_level(PML4).translate(&memory, Gva((1 << 48) | 0x1234)),
            Err(PagingError::NonCanonical { mode: PagingMode::FourLevel, .. })
        ));
    }

    /// A fresh chain PML4[3] -> PDPT -> PD -> PT[0] -> 0x9000 with these bits at each level
    /// (P added), translated at 3 << 39.
    fn chain(bits: [u64; 4], no_execute_enabled: bool) -> Result<Translation, PagingError> {
        let mut tables = Tables::empty();
        let targets = [PDPT, PD, PT, 0x9000];
        for (level, (table, target)) in [PML4, PDPT, PD, PT].into_iter().zip(targets).enumerate() {
            let index = if table == PML4 { 3 } else { 0 };
            tables.set(table, index, target | bits[level]);
        }
        Paging::new(PagingMode::FourLevel, Gpa(PML4), no_execute_enabled).translate(&tables.memory(), Gva(3 << 39))
    }

    #[test]
    fn permissions_are_and_of_write_and_user_and_or_of_no_execute_over_all_levels() {
        let rwu = P | W | U;
        let permissions = |bits, nxe| {
            let page = chain(bits, nxe).unwrap();
            assert_eq!(page.gpa, Gpa(0x9000), "bit 63 is no address");
            (page.writable, page.user, page.executable)
        };
        assert_eq!(permissions([rwu; 4], true), (true, true, true));
        assert_eq!(permissions([rwu, P | U, rwu, rwu], true), (false, true, true), "PDPT read-only");
        assert_eq!(permissions([rwu, rwu, rwu, P | U], true), (false, true, true), "PT read-only");
        assert_eq!(permissions([rwu, rwu, P | W, rwu], true), (true, false, true), "PD supervisor");
        assert_eq!(permissions([rwu | NX, rwu, rwu, rwu], true), (true, true, false), "PML4 no-execute");
        assert_eq!(permissions([rwu, rwu, rwu, rwu | NX], true), (true, true, false), "PT no-execute");
        assert_eq!(
            permissions([rwu | NX, rwu, rwu, rwu | NX], false),
            (true, true, true),
            "NXE clear: bit 63 ignored"
        );
        assert_eq!(permissions([P, P | W, P | U, P | NX], true), (false, false, false));
    }

    #[test]
    fn a_not_present_entry_names_its_level() {
        let rwu = P | W | U;
        for (level, name) in [Level::Pml4, Level::Pdpt, Level::Pd, Level::Pt].into_iter().enumerate() {
            let mut bits = [rwu; 4];
            bits[level] = W | U;
            match chain(bits, true) {
                Err(PagingError::NotMapped { va, level }) => assert_eq!((va, level), (Gva(3 << 39), name)),
                other => panic!("{name}: {other:?}"),
            }
        }
        let error = chain([rwu, rwu, W | U, rwu], true).unwrap_err();
        assert_eq!(
            error.to_string(),
            "virtual address 0x18000000000 is not mapped: its PD entry is not present"
        );
    }

    #[test]
    fn tables_outside_ram_are_errors_not_panics() {
        let mut tables = Tables::four_level();
        tables.set(PDPT, 2, 0x10_0000_0000 | P | W);
        // past any RAM: bits 63..52 are not part of the address, so the PD is at 0xf_ffff_ffff_f000
        tables.set(PDPT, 3, !PS);
        tables.set(PDPT, 4, (7 * PAGE_1G) | P | PS);
        let paging = four_level(PML4);
        let memory = tables.memory();
        for va in [2 * PAGE_1G + 0x10, 3 * PAGE_1G] {
            match paging.translate(&memory, Gva(va)) {
                Err(PagingError::Table {
                    va: at,
                    level: Level::Pd,
                    source: GuestMemoryError::NotRam { .. },
                }) => {
                    assert_eq!(at, Gva(va))
                }
                other => panic!("{va:#x}: {other:?}"),
            }
        }
        // CR3 outside RAM
        assert!(matches!(
            four_level(1 << 40).translate(&memory, Gva(0)),
            Err(PagingError::Table { level: Level::Pml4, .. })
        ));
        // a page outside RAM translates, but cannot be read
        assert_eq!(paging.translate(&memory, Gva(4 * PAGE_1G)).unwrap().gpa, Gpa(7 * PAGE_1G));
        let mut buf = [0u8; 4];
        assert!(matches!(
            paging.read_virtual(&memory, Gva(4 * PAGE_1G), &mut buf),
            Err(PagingError::Read { va, gpa, .. }) if va == Gva(4 * PAGE_1G) && gpa == Gpa(7 * PAGE_1G)
        ));
    }

    #[test]
    fn the_page_size_bit_is_reserved_in_pml4_and_pml5_entries() {
        let mut tables = Tables::four_level();
        tables.set(PML4, 4, PDPT | P | PS);
        tables.set(PML5, 2, PML4 | P | PS);
        let memory = tables.memory();
        assert!(matches!(
            four_level(PML4).translate(&memory, Gva(4 << 39)),
            Err(PagingError::ReservedPageSize { level: Level::Pml4, .. })
        ));
        let five = Paging::new(PagingMode::FiveLevel, Gpa(PML5), true);
        assert!(matches!(
            five.translate(&memory, Gva(2 << 48)),
            Err(PagingError::ReservedPageSize { level: Level::Pml5, .. })
        ));
    }

    #[test]
    fn non_canonical_addresses_are_refused() {
        let tables = Tables::four_level();
        let memory = tables.memory();
        for va in [1 << 47, 0xffff_7fff_ffff_ffff, 0x0001_0000_0000_0000, 0x8000_0000_0000_0000] {
            assert!(
                matches!(four_level(PML4).translate(&memory, Gva(va)), Err(PagingError::NonCanonical { .. })),
                "{va:#x}"
            );
        }
        let five = Paging::new(PagingMode::FiveLevel, Gpa(PML5), true);
        assert!(matches!(five.translate(&memory, Gva(1 << 47)), Err(PagingError::NotMapped { .. })));
        assert!(matches!(five.translate(&memory, Gva(1 << 56)), Err(PagingError::NonCanonical { .. })));
        let mut buf = [0u8; 16];
        assert!(matches!(
            four_level(PML4).read_virtual(&memory, Gva((1 << 47) - 8), &mut buf),
            Err(PagingError::NotMapped { .. })
        ));
    }

    #[test]
    fn control_registers_choose_mode_root_and_no_execute() {
        let (pg, pae, lma) = (CR0_PG | 1, CR4_PAE, EFER_LMA | (1 << 8));
        let cr3 = (1 << 63) | (1 << 62) | (0xfff << 52) | 0x1234_5000 | 0xabc;
        let paging = Paging::from_registers(pg, cr3, pae, lma).unwrap();
        assert_eq!(paging, Paging::new(PagingMode::FourLevel, Gpa(0x1234_5000), false));
        assert_eq!(paging.root(), Gpa(0x1234_5000), "PCID and bits 63..52 dropped");
        assert!(Paging::from_registers(pg, cr3, pae, lma | EFER_NXE).unwrap().no_execute_enabled());
        assert!(matches!(Paging::from_registers(1, cr3, pae, lma), Err(PagingError::PagingOff { cr0: 1 })));
        assert!(matches!(Paging::from_registers(pg, cr3, pae, 0), Err(PagingError::NotLongMode { .. })));
        assert!(matches!(Paging::from_registers(pg, cr3, 0, lma), Err(PagingError::PaeOff { .. })));
        assert_eq!(
            Paging::from_registers(pg, cr3, 0, 0x500).unwrap_err().to_string(),
            "long mode without PAE (CR4 0x0 has PAE clear)"
        );
        let vcpus = crate::guest::parse_info_registers(
            "CPU#0\nRIP=ffffffff81000010\nCR0=80050033 CR2=0 CR3=0000000001a0e000 CR4=003516f0\n\
             EFER=0000000000000d01\nCPU#1\nCR0=80050033 CR3=0 CR4=20\n",
        );
        let paging = Paging::from_vcpu(&vcpus[0]).unwrap();
        assert_eq!(
            (paging.mode(), paging.root(), paging.no_execute_enabled()),
            (PagingMode::FiveLevel, Gpa(0x1a0_e000), true)
        );
        assert!(matches!(Paging::from_vcpu(&vcpus[1]), Err(PagingError::MissingRegister { name: "EFER" })));
    }

    #[test]
    fn read_virtual_crosses_into_a_page_elsewhere() {
        let tables = Tables::four_level();
        let paging = four_level(PML4);
        let memory = tables.memory();
        let mut buf = [0u8; 16];
        paging.read_virtual(&memory, Gva(0x1ff8), &mut buf).unwrap();
        assert_eq!(buf, [8, 8, 8, 8, 8, 8, 8, 8, 6, 6, 6, 6, 6, 6, 6, 6], "0x8ff8.. then 0x6000..");
        let mut whole = vec![0u8; 0x2000];
        paging.read_virtual(&memory, Gva(0x1000), &mut whole).unwrap();
        assert!(whole[..0x1000].iter().all(|&b| b == 8) && whole[0x1000..].iter().all(|&b| b == 6));
        paging.read_virtual(&memory, Gva(0x1000), &mut []).unwrap();
        // into a page that is not mapped
        assert!(matches!(
            paging.read_virtual(&memory, Gva(0x2ff8), &mut buf),
            Err(PagingError::NotMapped { va: Gva(0x3000), level: Level::Pt })
        ));
        assert!(matches!(
            paging.read_virtual(&memory, Gva(u64::MAX - 3), &mut buf),
            Err(PagingError::Wraps { len: 16, .. })
        ));
    }

    #[test]
    fn read_virtual_walks_from_the_root_again_in_another_table() {
        // PD[0] -> PT, PD[1] -> a second PT (at PML5's page); PT[511] maps 0x8000, the second
        // PT's entry 0 maps 0x6000: a read across 2 MiB goes from one last-level table to another
        let mut tables = Tables::four_level();
        tables.set(PD, 1, PML5 | P | W | U);
        tables.set(PT, 511, 0x8000 | P | W | U);
        tables.set(PML5, 0, 0x6000 | P | W | U);
        let paging = four_level(PML4);
        let mut buf = [0u8; 16];
        paging.read_virtual(&tables.memory(), Gva(PAGE_2M - 8), &mut buf).unwrap();
        assert_eq!(buf, [8, 8, 8, 8, 8, 8, 8, 8, 6, 6, 6, 6, 6, 6, 6, 6], "0x8ff8.. then 0x6000..");
        // and within one table, pages after the first come from it
        let mut run = vec![0u8; 0x3000];
        tables.set(PT, 3, 0x9000 | P | W | U);
        paging.read_virtual(&tables.memory(), Gva(0x1000), &mut run).unwrap();
        assert!(run[..0x1000].iter().all(|&b| b == 8) && run[0x1000..0x2000].iter().all(|&b| b == 6));
        assert!(run[0x2000..].iter().all(|&b| b == 9));
    }

    #[test]
    fn offsets_of_the_virtual_space_drop_the_sign_extension_and_round_trip() {
        for (mode, kernel_first, size) in [
            (PagingMode::FourLevel, 0xffff_8000_0000_0000u64, 1u64 << 48),
            (PagingMode::FiveLevel, 0xff00_0000_0000_0000, 1 << 57),
        ] {
            assert_eq!(mode.space_size(), size);
            for (va, offset) in [
                (0, 0),
                (0x1234, 0x1234),
                (size / 2 - 1, size / 2 - 1),
                (kernel_first, size / 2),
                (kernel_first + 0x1000, size / 2 + 0x1000),
                (u64::MAX, size - 1),
            ] {
                assert!(mode.is_canonical(Gva(va)), "{mode}: {va:#x}");
                assert_eq!(offset_of_va(mode, Gva(va)), offset, "{mode}: {va:#x}");
                assert_eq!(va_of_offset(mode, offset), Some(Gva(va)), "{mode}: {offset:#x}");
            }
            assert_eq!(va_of_offset(mode, size), None);
            assert_eq!(va_of_offset(mode, u64::MAX), None);
        }
    }

    #[test]
    fn mappings_merge_contiguous_runs_in_address_order_with_canonical_addresses() {
        let mut tables = Tables::four_level();
        tables.set(PT, 3, 0x7000 | P | W | U);
        tables.set(PT, 4, 0x8000 | P | U);
        tables.set(PML4, 256, PDPT | P | W);
        let paging = four_level(PML4);
        let user: Vec<PageRun> =
            all(&paging, &tables, ..(1 << 47), Limits::default()).into_iter().map(Result::unwrap).collect();
        assert_eq!(
            user,
            [
                mapping(0x1000, 0x1000, 0x8000, PAGE_4K, RWX_USER),
                mapping(0x2000, 0x2000, 0x6000, PAGE_4K, RWX_USER),
                mapping(0x4000, 0x1000, 0x8000, PAGE_4K, (false, true, true)),
                mapping(PAGE_2M, PAGE_2M, PAGE_2M, PAGE_2M, (true, false, true)),
                mapping(PAGE_1G, PAGE_1G, PAGE_1G, PAGE_1G, RWX_USER),
            ]
        );
        let everything: Vec<PageRun> =
            all(&paging, &tables, .., Limits::default()).into_iter().map(Result::unwrap).collect();
        assert_eq!(everything.len(), 10);
        assert_eq!(everything[..5], user[..]);
        let kernel = 0xffff_8000_0000_0000;
        assert_eq!(everything[5], mapping(kernel + 0x1000, 0x1000, 0x8000, PAGE_4K, (true, false, true)));
        assert_eq!(everything[9], mapping(kernel + PAGE_1G, PAGE_1G, PAGE_1G, PAGE_1G, (true, false, true)));
        assert_eq!(all(&paging, &tables, kernel.., Limits::default()).len(), 5);
        // a page overlapping the range is reported whole; a range in the hole has nothing
        let middle: Vec<_> = all(&paging, &tables, 0x2800..0x2801, Limits::default())
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(middle, [mapping(0x2000, 0x1000, 0x6000, PAGE_4K, RWX_USER)]);
        assert_eq!(all(&paging, &tables, PAGE_1G + 5..=PAGE_1G + 5, Limits::default()).len(), 1);
        assert!(all(&paging, &tables, (1 << 47)..kernel, Limits::default()).is_empty());
        assert!(all(&paging, &tables, 5..5, Limits::default()).is_empty());
    }

    #[test]
    fn runs_do_not_merge_across_the_non_canonical_hole() {
        let mut tables = Tables::empty();
        // the last page of the user half at 0x8000, the first of the kernel half at 0x9000
        tables.set(PML4, 255, PDPT | P | W | U);
        tables.set(PDPT, 511, PD | P | W | U);
        tables.set(PD, 511, PT | P | W | U);
        tables.set(PT, 511, 0x8000 | P | W | U);
        tables.set(PML4, 256, 0x6000 | P | W | U);
        tables.ram[0x6000..0x7000].fill(0);
        tables.set(0x6000, 0, 0x7000 | P | W | U);
        tables.ram[0x7000..0x8000].fill(0);
        tables.set(0x7000, 0, 0xa000 | P | W | U);
        tables.ram[0xa000..0xb000].fill(0);
        tables.set(0xa000, 0, 0x9000 | P | W | U);
        let found: Vec<_> =
            all(&four_level(PML4), &tables, .., Limits::default()).into_iter().map(Result::unwrap).collect();
        assert_eq!(
            found,
            [
                mapping(0x7fff_ffff_f000, 0x1000, 0x8000, PAGE_4K, RWX_USER),
                mapping(0xffff_8000_0000_0000, 0x1000, 0x9000, PAGE_4K, RWX_USER),
            ]
        );
    }

    #[test]
    fn mappings_report_bad_tables_and_go_on() {
        let mut tables = Tables::four_level();
        tables.set(PDPT, 2, 0x10_0000_0000 | P | W);
        tables.set(PML4, 1, PDPT | P | PS);
        tables.set(PML4, 2, PDPT | P | W | U);
        let found = all(&four_level(PML4), &tables, .., Limits::default());
        let kinds: Vec<String> = found
            .iter()
            .map(|item| match item {
                Ok(mapping) => format!("{:#x}", mapping.va),
                Err(PagingError::Table { va, level, .. }) => format!("table {level} {va:#x}"),
                Err(PagingError::ReservedPageSize { va, level }) => format!("ps {level} {va:#x}"),
                Err(other) => panic!("{other}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "0x1000",
                "0x2000",
                "0x200000",
                "0x40000000",
                "table PD 0x80000000",
                "ps PML4 0x8000000000",
                "0x10000001000",
                "0x10000002000",
                "0x10000200000",
                "0x10040000000",
                "table PD 0x10080000000",
            ]
        );
    }

    #[test]
    fn max_mappings_truncates_and_says_where_to_resume() {
        let tables = Tables::four_level();
        let paging = four_level(PML4);
        let found = all(&paging, &tables, .., Limits { max_mappings: 2, ..Limits::default() });
        assert_eq!(found.len(), 3);
        assert_eq!(found[1].as_ref().unwrap().va, Gva(0x2000));
        assert!(matches!(
            found[2],
            Err(PagingError::Truncated { limit: Limit::PageRuns, resume_at: Gva(PAGE_2M) })
        ));
        let rest = all(&paging, &tables, PAGE_2M.., Limits::default());
        assert_eq!(rest.len(), 2);
        assert!(matches!(
            all(&paging, &tables, .., Limits { max_mappings: 0, ..Limits::default() })[..],
            [Err(PagingError::Truncated { limit: Limit::PageRuns, resume_at: Gva(0x1000) })]
        ));
    }

    #[test]
    fn a_self_referencing_pml4_entry_stays_bounded() {
        let mut tables = Tables::four_level();
        // the classic recursive slot: the PML4 maps itself as PDPT, PD and PT
        tables.set(PML4, 511, PML4 | P | W);
        let paging = four_level(PML4);
        let memory = tables.memory();
        assert_eq!(paging.translate(&memory, Gva(0xffff_ffff_ffff_f008)).unwrap().gpa, Gpa(PML4 + 8));
        // PML4[511] -> PML4[0] = PDPT as a PD -> PDPT[0] = PD as a PT -> PD[0] = PT as a page
        assert_eq!(paging.translate(&memory, Gva(0xffff_ff80_0000_0000)).unwrap().gpa, Gpa(PT));
        let found = all(&paging, &tables, .., Limits::default());
        assert!(found.iter().all(Result::is_ok), "{found:?}");
        let found: Vec<PageRun> = found.into_iter().map(Result::unwrap).collect();
        assert!(found.contains(&mapping(0xffff_ffff_ffff_f000, 0x1000, PML4, PAGE_4K, (true, false, true))));
        assert!(found.contains(&mapping(0x1000, 0x1000, 0x8000, PAGE_4K, RWX_USER)));
        assert_eq!(found.last().unwrap().va_last(), Gva(u64::MAX));
        assert!(found.windows(2).all(|pair| pair[0].va_last() < pair[1].va));
    }

    #[test]
    fn fan_out_to_one_table_hits_the_entry_limit_and_says_so() {
        let mut tables = Tables::empty();
        for index in 0..512 {
            tables.set(PML4, index, PDPT | P | W);
            tables.set(PDPT, index, PD | P | W);
            tables.set(PD, index, PT | P | W);
            tables.set(PT, index, (0x10_0000 + index * 0x1000) | P | W);
        }
        let paging = four_level(PML4);
        let limits = Limits::default();
        let found = all(&paging, &tables, .., limits);
        let (last, mappings) = found.split_last().unwrap();
        let Err(PagingError::Truncated { limit: Limit::EntriesRead, resume_at }) = last else {
            panic!("{last:?}")
        };
        // each PT's 512 pages merge into one run; a few of the 8192 tables read are PDs
        let tables_read = limits.max_entries_read / 512;
        assert!(mappings.len() < tables_read && mappings.len() > tables_read - 32, "{}", mappings.len());
        let mappings: Vec<PageRun> = mappings.iter().map(|item| *item.as_ref().unwrap()).collect();
        assert!(mappings.iter().all(|run| run.len == PAGE_2M && run.gpa == Gpa(0x10_0000)));
        assert_eq!(*resume_at, mappings.last().unwrap().va + PAGE_2M);
        assert_eq!(
            last.as_ref().unwrap_err().to_string(),
            format!("enumeration stopped at virtual address {resume_at:#x}: the limit of page-table entries read reached")
        );
        // a small cap stops early
        let few = all(&paging, &tables, .., Limits { max_entries_read: 3000, ..limits });
        assert_eq!(few.len(), 2 + 1, "PML4 (512) + PDPT (512) + PD (512) + 2 PTs = 2560 of 3000");
    }

    /// A RISC-V PTE for physical address `pa` with `flags` (V added).
    fn riscv(pa: u64, flags: u64) -> u64 {
        (pa >> 12) << RISCV_PPN_SHIFT | flags | 1
    }

    #[test]
    fn riscv_sv39_pages_at_every_level_with_the_leafs_own_permissions() {
        const R: u64 = RISCV_R;
        const RW: u64 = RISCV_R | RISCV_W;
        let mut tables = Tables::empty();
        // root (level 2) at PML4's page, level 1 at PDPT's, level 0 at PD's
        tables.set(PML4, 0, riscv(PDPT, 0));
        tables.set(PDPT, 0, riscv(PD, 0));
        tables.set(PD, 1, riscv(0x8000, RW | RISCV_X | RISCV_U));
        tables.set(PD, 2, riscv(PT, 0)); // a pointer from the last level
        tables.set(PML4, 1, riscv(PAGE_1G, RW)); // a gigapage
        tables.set(PDPT, 1, riscv(PAGE_2M, R | RISCV_X)); // a megapage
        tables.set(PML4, 2, riscv(PAGE_2M, R)); // a gigapage at a 2 MiB address: misaligned
        tables.set(PML4, 3, riscv(0x9000, RISCV_W)); // write without read
        tables.set(PML4, 256, riscv(PDPT, 0)); // the upper half
        let paging = Paging::from_satp(8 << 60 | PML4 >> 12).unwrap();
        assert_eq!((paging.mode(), paging.root()), (PagingMode::Sv39, Gpa(PML4)));
        let memory = tables.memory();
        let page = paging.translate(&memory, Gva(0x1234)).unwrap();
        assert_eq!(
            (page.gpa, page.page_size, page.writable, page.user, page.executable),
            (Gpa(0x8234), PAGE_4K, true, true, true)
        );
        let giga = paging.translate(&memory, Gva(PAGE_1G + 0x12_3456)).unwrap();
        assert_eq!(
            (giga.gpa, giga.page_size, giga.writable, giga.user, giga.executable),
            (Gpa(PAGE_1G + 0x12_3456), PAGE_1G, true, false, false)
        );
        let mega = paging.translate(&memory, Gva(PAGE_2M + 0x1234)).unwrap();
        assert_eq!(
            (mega.gpa, mega.page_size, mega.writable, mega.executable),
            (Gpa(PAGE_2M + 0x1234), PAGE_2M, false, true)
        );
        for (va, level) in
            [(2 * PAGE_1G, Level::Riscv(2)), (3 * PAGE_1G, Level::Riscv(2)), (0x2000, Level::Riscv(0))]
        {
            assert!(
                matches!(paging.translate(&memory, Gva(va)), Err(PagingError::Reserved { level: found, .. }) if found == level),
                "{va:#x}"
            );
        }
        assert!(matches!(
            paging.translate(&memory, Gva(0x3000)),
            Err(PagingError::NotMapped { level: Level::Riscv(0), .. })
        ));
        // 39 bits: bit 38 set is the upper half, sign-extended
        assert!(matches!(paging.translate(&memory, Gva(1 << 38)), Err(PagingError::NonCanonical { .. })));
        assert_eq!(paging.translate(&memory, Gva(0xffff_ffc0_0000_1234)).unwrap().gpa, Gpa(0x8234));
        // the enumeration agrees, with the bad entries as errors
        let items = all(&paging, &tables, .., Limits::default());
        let pages: Vec<(u64, u64, u64)> = items
            .iter()
            .filter_map(|item| item.as_ref().ok())
            .map(|m| (m.va.0, m.gpa.0, m.page_size))
            .collect();
        assert_eq!(
            pages,
            [
                (0x1000, 0x8000, PAGE_4K),
                (PAGE_2M, PAGE_2M, PAGE_2M),
                (PAGE_1G, PAGE_1G, PAGE_1G),
                (0xffff_ffc0_0000_1000, 0x8000, PAGE_4K),
                (0xffff_ffc0_0020_0000, PAGE_2M, PAGE_2M)
            ]
        );
        assert_eq!(items.iter().filter(|item| matches!(item, Err(PagingError::Reserved { .. }))).count(), 4);
    }

    #[test]
    fn satp_modes_and_levels() {
        assert!(matches!(Paging::from_satp(0x80010), Err(PagingError::SatpMode { mode: 0, .. })));
        assert!(matches!(Paging::from_satp(15 << 60), Err(PagingError::SatpMode { mode: 15, .. })));
        assert_eq!(Paging::from_satp(9 << 60).unwrap().mode().levels().len(), 4);
        let sv57 = Paging::from_satp(10 << 60 | 0xfff_ffff_ffff).unwrap();
        assert_eq!((sv57.mode().levels().len(), sv57.root()), (5, Gpa(0xfff_ffff_ffff << 12)));
        assert_eq!(Level::Riscv(4).page_size(), Some(1 << 48));
    }

    #[test]
    fn aarch64_4k_granule_tables_blocks_and_hierarchical_permissions() {
        const VALID: u64 = 1;
        const TABLE: u64 = 0b11;
        const PAGE: u64 = 0b11;
        const BLOCK: u64 = 0b01;
        let mut tables = Tables::empty();
        tables.set(PML4, 0, PDPT | TABLE); // level 0 -> level 1
        tables.set(PDPT, 0, PD | TABLE); // level 1 -> level 2
        tables.set(PD, 0, PT | TABLE); // level 2 -> level 3
        tables.set(PT, 1, 0x8000 | PAGE | ARM_EL0); // EL0 read/write, executable at EL0
        tables.set(PT, 2, 0x9000 | BLOCK); // level 3 reserved encoding
        tables.set(PDPT, 1, PAGE_1G | BLOCK | ARM_READ_ONLY | ARM_UXN); // kernel, read-only, executable at EL1
        tables.set(PD, 1, PAGE_2M | BLOCK | ARM_PXN); // kernel, not executable
        tables.set(PML4, 1, PAGE_1G | BLOCK); // a level-0 block: reserved
        tables.set(PML4, 2, PML5 | TABLE | ARM_TABLE_READ_ONLY | ARM_TABLE_NO_EL0);
        tables.set(PML5, 0, PAGE_1G | BLOCK | ARM_EL0 | VALID);
        let paging = Paging::new(PagingMode::Arm48, Gpa(PML4 | 1), true);
        assert_eq!(paging.root(), Gpa(PML4), "CnP is no address");
        let memory = tables.memory();
        let page = paging.translate(&memory, Gva(0x1234)).unwrap();
        assert_eq!(
            (page.gpa, page.page_size, page.writable, page.user, page.executable),
            (Gpa(0x8234), PAGE_4K, true, true, true)
        );
        let block = paging.translate(&memory, Gva(PAGE_1G + 0x10)).unwrap();
        assert_eq!(
            (block.gpa, block.page_size, block.writable, block.user, block.executable),
            (Gpa(PAGE_1G + 0x10), PAGE_1G, false, false, true)
        );
        let no_exec = paging.translate(&memory, Gva(PAGE_2M + 0x10)).unwrap();
        assert_eq!((no_exec.page_size, no_exec.executable), (PAGE_2M, false));
        // the table above limits the block below it: no writes, no EL0
        let limited = paging.translate(&memory, Gva((2 << 39) + 0x10)).unwrap();
        assert_eq!((limited.gpa, limited.writable, limited.user), (Gpa(PAGE_1G + 0x10), false, false));
        assert!(matches!(
            paging.translate(&memory, Gva(0x2000)),
            Err(PagingError::Reserved { level: Level::Arm(3), .. })
        ));
        assert!(matches!(
            paging.translate(&memory, Gva(1 << 39)),
            Err(PagingError::Reserved { level: Level::Arm(0), .. })
        ));
        assert!(matches!(
            paging.translate(&memory, Gva(0x3000)),
            Err(PagingError::NotMapped { level: Level::Arm(3), .. })
        ));
        assert!(matches!(paging.translate(&memory, Gva(1 << 48)), Err(PagingError::NonCanonical { .. })));
        let pages: Vec<u64> = all(&paging, &tables, ..(3 << 39), Limits::default())
            .into_iter()
            .filter_map(|item| item.ok())
            .map(|m| m.va.0)
            .collect();
        assert_eq!(pages, [0x1000, PAGE_2M, PAGE_1G, 2 << 39]);
        assert!(matches!(
            Paging::of_vcpu(&Arch::Aarch64, &VcpuRegisters::default()),
            Err(PagingError::NoRoot { .. })
        ));
    }
}
