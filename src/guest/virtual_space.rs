//! A vCPU's virtual address space as a file, and as a page-table dump: what the mount serves as
//! `cpus/<n>/memory` and `cpus/<n>/mappings`, and the choice of a vCPU's paging that the
//! command line's `read --virtual` makes too.
//!
//! File offsets are virtual addresses with their sign extension dropped
//! ([`offset_of_va`]): with 4-level paging the file is 2^48 bytes,
//! the user half at offsets 0..2^47 (offset = address) and the kernel half from 2^47
//! (0xffff_8000_0000_0000 is at offset 2^47, 0xffff_ffff_8100_0000 at 0xffff_8100_0000); with
//! 5-level paging (and Sv57) 2^57 bytes, the kernel half from 2^56; with Sv39 2^39 bytes, the
//! kernel half from 2^38; Sv48 and AArch64 as 4-level paging. Pages that are not mapped, and mapped
//! pages that are not RAM (device memory), read as zeros; SEEK_DATA and SEEK_HOLE walk the
//! page tables, so a tool that skips holes never reads 256 TiB of them.
//!
//! The page tables are the guest's: every walk here is bounded by [`Limits`], and a table that
//! cannot be read is a hole (in `memory`) or an error line (in `mappings`), never a hang.

use std::fmt::Write as _;

use super::arch::{Arch, PageTableRoot};
use super::memory::{Gpa, GuestMemory, Gva};
use super::paging::{offset_of_va, va_of_offset, Limits, PageRun, Paging, PagingError, PagingMode, PAGE_4K};
use super::registers::VcpuRegisters;

/// Why a vCPU's page tables cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VcpuPagingError {
    /// Only x86_64, riscv64 and aarch64 guests are translated.
    #[error("virtual addresses are translated for x86_64, riscv64 and aarch64 guests, not {arch}")]
    Architecture {
        /// The guest's architecture.
        arch: Arch,
    },
    /// No vCPU of that index.
    #[error("no vCPU {cpu} (the VM has {count})")]
    NoSuchVcpu {
        /// The index asked for.
        cpu: usize,
        /// How many the VM has.
        count: usize,
    },
    /// The vCPU's registers say no paging this module walks.
    #[error("vCPU {cpu}")]
    Paging {
        /// The vCPU.
        cpu: usize,
        /// Why.
        #[source]
        source: PagingError,
    },
}

/// How vCPU `cpu` of a guest of architecture `arch` translates addresses, from every vCPU's
/// registers (as [`Vm::vcpu_registers`](crate::vm::Vm::vcpu_registers) gives them): x86_64 from
/// CR0, CR3, CR4 and EFER, riscv64 from `satp`. With `root`, the tables at that guest-physical
/// address in the vCPU's mode instead of its CR3 or satp; aarch64 needs one (QEMU's monitor
/// prints no TTBR: give TTBR0_EL1's table for the lower half, TTBR1_EL1's for the upper), and
/// is walked with the 4 KiB granule and 48-bit addresses.
///
/// # Errors
///
/// Another architecture, a vCPU that does not exist, a vCPU whose registers select no paging
/// (not in long mode, satp Bare), an aarch64 vCPU without `root`.
pub fn vcpu_paging(
    arch: &Arch,
    vcpus: &[VcpuRegisters],
    cpu: usize,
    root: Option<Gpa>,
) -> Result<Paging, VcpuPagingError> {
    if arch.info().page_table_root == PageTableRoot::NotWalked {
        return Err(VcpuPagingError::Architecture { arch: arch.clone() });
    }
    let registers = vcpus.get(cpu).ok_or(VcpuPagingError::NoSuchVcpu { cpu, count: vcpus.len() })?;
    match (Paging::of_vcpu(arch, registers), root) {
        (Ok(paging), Some(root)) => Ok(Paging::new(paging.mode(), root, paging.no_execute_enabled())),
        (Ok(paging), None) => Ok(paging),
        (Err(PagingError::NoRoot { .. }), Some(root)) if *arch == Arch::Aarch64 => {
            Ok(Paging::new(PagingMode::Arm48, root, true))
        }
        (Err(source), _) => Err(VcpuPagingError::Paging { cpu, source }),
    }
}

/// A vCPU's registers as JSON: `cpu`, `arch`, every register QEMU printed as a hex string
/// (`"RIP": "0xffffffff81000010"`: JSON numbers lose 64-bit values in most readers) and the
/// paging the registers select (`paging`: mode, root, no-execute, address bits; x86_64 from
/// CR0/CR3/CR4/EFER, riscv64 from satp) or why there is none (`paging_error`: aarch64 always,
/// QEMU's monitor printing no TTBR).
pub fn registers_json(arch: &Arch, cpu: usize, registers: &VcpuRegisters) -> serde_json::Value {
    let values: serde_json::Map<String, serde_json::Value> = registers
        .values()
        .iter()
        .map(|(name, value)| (name.clone(), serde_json::Value::String(format!("{value:#x}"))))
        .collect();
    let mut json = serde_json::json!({ "cpu": cpu, "arch": arch, "registers": values });
    match Paging::of_vcpu(arch, registers) {
        Ok(paging) => {
            json["paging"] = serde_json::json!({
                "mode": paging.mode().to_string(),
                "root": format!("{:#x}", paging.root().0),
                "no_execute": paging.no_execute_enabled(),
                "address_bits": paging.mode().address_bits(),
            });
        }
        Err(err) => json["paging_error"] = serde_json::Value::String(crate::error::chain(&err)),
    }
    json
}

/// Text lines of every mapping of `paging` (the page-table dump served as `cpus/<n>/mappings`):
///
/// ```text
/// ffffffff81000000-ffffffff81e00000 0000000001000000 2M r-x kernel
/// 00007ffc8e1fe000-00007ffc8e200000 000000000b2c1000 4K rw- user
/// ```
///
/// virtual start and end (exclusive), the guest-physical address of the start, the page size
/// (4K, 2M, 1G), read/write/execute as the entries allow, and whether user mode may access it.
/// A table that is not RAM, or an entry with a reserved bit, is a line `error: ...`; an
/// enumeration stopped by `limits` ends with one.
pub fn mappings_text<M: GuestMemory + ?Sized>(paging: &Paging, memory: &M, limits: Limits) -> String {
    let mut text = String::new();
    for item in paging.page_runs(memory, .., limits) {
        match item {
            Ok(mapping) => {
                let end = u128::from(mapping.va.0) + u128::from(mapping.len);
                let _ = writeln!(
                    text,
                    "{:016x}-{end:016x} {:016x} {} r{}{} {}",
                    mapping.va,
                    mapping.gpa.0,
                    page_size_name(mapping.page_size),
                    if mapping.writable { 'w' } else { '-' },
                    if mapping.executable { 'x' } else { '-' },
                    if mapping.user { "user" } else { "kernel" },
                );
            }
            Err(err) => {
                let _ = writeln!(text, "error: {}", crate::error::chain(&err));
            }
        }
    }
    text
}

fn page_size_name(size: u64) -> String {
    match size {
        size if size >= 1 << 30 => format!("{}G", size >> 30),
        size if size >= 1 << 20 => format!("{}M", size >> 20),
        size => format!("{}K", size >> 10),
    }
}

/// A vCPU's virtual address space as a sparse file (see the module's docs for the offsets).
#[derive(Debug, Clone, Copy)]
pub struct VirtualSpace {
    paging: Paging,
    limits: Limits,
}

impl VirtualSpace {
    /// The space `paging` translates, with [`Limits::default`] on each seek's walk.
    pub fn new(paging: Paging) -> Self {
        Self { paging, limits: Limits::default() }
    }

    /// The same, with other limits on each seek's walk.
    pub fn with_limits(paging: Paging, limits: Limits) -> Self {
        Self { paging, limits }
    }

    /// The paging it translates with.
    pub fn paging(&self) -> &Paging {
        &self.paging
    }

    /// The file's size: 2^48 with 4-level paging, 2^57 with 5-level.
    pub fn size(&self) -> u64 {
        self.paging.mode().space_size()
    }

    /// Fills `buf` (or its first part, when the file ends first) with the bytes at `offset`,
    /// translating once per page; unmapped pages and pages that are not RAM read as zeros.
    /// Returns how many bytes were filled (0 at or past the end).
    pub fn read_at<M: GuestMemory + ?Sized>(&self, memory: &M, offset: u64, buf: &mut [u8]) -> usize {
        let len = (buf.len() as u64).min(self.size().saturating_sub(offset)) as usize;
        let mut done = 0;
        // consecutive pages start their walk in the table of the page before, as read_virtual's do
        let mut leaf = None;
        while done < len {
            let at = offset + done as u64;
            let Some(va) = va_of_offset(self.paging.mode(), at) else { break };
            let (page_size, gpa) = match self.paging.walk(memory, va, leaf) {
                Ok((page, found)) => {
                    leaf = Some(found);
                    (page.page_size, Some(page.gpa))
                }
                Err(_) => (PAGE_4K, None),
            };
            let part = (page_size - (at & (page_size - 1))).min((len - done) as u64) as usize;
            let dst = &mut buf[done..done + part];
            if gpa.is_none_or(|gpa| memory.read_at(gpa, dst).is_err()) {
                dst.fill(0);
            }
            done += part;
        }
        len
    }

    /// The first offset at or after `offset` that a mapping covers (SEEK_DATA), `None` when no
    /// mapping follows (ENXIO). A walk stopped by the limits answers where it stopped: the
    /// reader then reads zeros there, never skips a mapping.
    pub fn seek_data<M: GuestMemory + ?Sized>(&self, memory: &M, offset: u64) -> Option<u64> {
        let va = va_of_offset(self.paging.mode(), offset)?;
        for item in self.mappings_from(memory, va) {
            match item {
                Ok(mapping) => return Some(self.offset(mapping.va).max(offset)),
                Err(PagingError::Truncated { resume_at, .. }) => {
                    return Some(self.offset(resume_at).max(offset));
                }
                Err(_) => {}
            }
        }
        None
    }

    /// The first offset at or after `offset` that no mapping covers (SEEK_HOLE): the end of the
    /// run of mappings at `offset`, or `offset` itself when none covers it; the size of the file
    /// when the mappings reach its end. `None` past the end (ENXIO). A walk stopped by the limits
    /// answers where it stopped, and always past `offset` when a mapping covers it, so that a
    /// reader alternating SEEK_DATA and SEEK_HOLE moves on.
    pub fn seek_hole<M: GuestMemory + ?Sized>(&self, memory: &M, offset: u64) -> Option<u64> {
        let va = va_of_offset(self.paging.mode(), offset)?;
        let mut end = offset;
        for item in self.mappings_from(memory, va) {
            match item {
                Ok(mapping) if self.offset(mapping.va) > end => return Some(end),
                Ok(mapping) => end = self.offset(mapping.va_last()) + 1,
                Err(PagingError::Truncated { resume_at, .. }) => {
                    let stopped = self.offset(resume_at).max(end);
                    return Some(if stopped > offset { stopped } else { (offset | (PAGE_4K - 1)) + 1 });
                }
                Err(_) => {}
            }
        }
        Some(end)
    }

    fn offset(&self, va: Gva) -> u64 {
        offset_of_va(self.paging.mode(), va)
    }

    fn mappings_from<'a, M: GuestMemory + ?Sized>(
        &self,
        memory: &'a M,
        va: Gva,
    ) -> impl Iterator<Item = Result<PageRun, PagingError>> + 'a {
        self.paging.page_runs(memory, va.., self.limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::FrozenMemory;
    use crate::ram::GuestLayout;

    const RW_USER: u64 = 0b111;

    /// PML4 at 0x1000; user page 0x40_0000 -> 0x5000 (4K), two adjacent pages 0x40_2000 and
    /// 0x40_3000 -> 0x6000, 0x7000; a kernel 2 MiB page at 0xffff_ffff_8000_0000 -> 0x20_0000.
    fn tables() -> Vec<u8> {
        let mut ram = vec![0u8; 0x40_0000];
        let mut put = |at: usize, value: u64| ram[at..at + 8].copy_from_slice(&value.to_le_bytes());
        put(0x1000, 0x2000 | RW_USER); // PML4[0]
        put(0x2000, 0x3000 | RW_USER); // PDPT[0]
        put(0x3000 + 2 * 8, 0x4000 | RW_USER); // PD[2]: 0x40_0000
        put(0x4000, 0x5000 | RW_USER);
        put(0x4000 + 2 * 8, 0x6000 | 0b011);
        put(0x4000 + 3 * 8, 0x7000 | 0b011 | 1 << 63);
        put(0x1000 + 511 * 8, 0x8000 | 0b011); // PML4[511]
        put(0x8000 + 510 * 8, 0x9000 | 0b011); // PDPT[510]: 0xffff_ffff_8000_0000
        put(0x9000, 0x20_0000 | 0b011 | 1 << 7); // PD[0]: a 2 MiB page
        ram[0x5000..0x5004].copy_from_slice(b"user");
        ram[0x6ffc..0x7004].copy_from_slice(b"crossing");
        ram[0x20_0000..0x20_0006].copy_from_slice(b"kernel");
        ram
    }

    fn space() -> VirtualSpace {
        VirtualSpace::new(Paging::new(PagingMode::FourLevel, Gpa(0x1000), true))
    }

    #[test]
    fn reads_mapped_pages_and_zeros_elsewhere() {
        let ram = tables();
        let layout = GuestLayout::identity(ram.len() as u64);
        let memory = FrozenMemory::new(&ram, &layout);
        let space = space();
        assert_eq!(space.size(), 1 << 48);
        let mut buf = [0xaau8; 8];
        assert_eq!(space.read_at(&memory, 0x40_0000, &mut buf), 8);
        assert_eq!(&buf[..4], b"user");
        // across two pages that are not contiguous in physical memory
        space.read_at(&memory, 0x40_2ffc, &mut buf);
        assert_eq!(&buf, b"crossing");
        // an unmapped page reads as zeros
        buf.fill(0xaa);
        space.read_at(&memory, 0x40_1000, &mut buf);
        assert_eq!(buf, [0; 8]);
        // the kernel half from 2^47
        let kernel = offset_of_va(PagingMode::FourLevel, Gva(0xffff_ffff_8000_0000));
        assert_eq!(kernel, 0xffff_8000_0000);
        space.read_at(&memory, kernel, &mut buf);
        assert_eq!(&buf[..6], b"kernel");
        // the end of the file
        assert_eq!(space.read_at(&memory, (1 << 48) - 4, &mut buf), 4);
        assert_eq!(space.read_at(&memory, 1 << 48, &mut buf), 0);
    }

    #[test]
    fn seeks_walk_the_mappings() {
        let ram = tables();
        let layout = GuestLayout::identity(ram.len() as u64);
        let memory = FrozenMemory::new(&ram, &layout);
        let space = space();
        assert_eq!(space.seek_data(&memory, 0), Some(0x40_0000));
        assert_eq!(space.seek_hole(&memory, 0x40_0000), Some(0x40_1000));
        assert_eq!(space.seek_data(&memory, 0x40_1000), Some(0x40_2000));
        // two runs of other permissions, adjacent: one stretch of data
        assert_eq!(space.seek_hole(&memory, 0x40_2000), Some(0x40_4000));
        assert_eq!(space.seek_hole(&memory, 0x40_2800), Some(0x40_4000));
        assert_eq!(space.seek_hole(&memory, 0x10), Some(0x10), "a hole where nothing is mapped");
        let kernel = 0xffff_8000_0000;
        assert_eq!(space.seek_data(&memory, 0x40_4000), Some(kernel));
        assert_eq!(space.seek_hole(&memory, kernel + 5), Some(kernel + (2 << 20)));
        assert_eq!(space.seek_data(&memory, kernel + (2 << 20)), None);
        assert_eq!(space.seek_hole(&memory, kernel + (2 << 20)), Some(kernel + (2 << 20)));
        assert_eq!(space.seek_data(&memory, 1 << 48), None);
        assert_eq!(space.seek_hole(&memory, 1 << 48), None);
    }

    #[test]
    fn a_walk_cut_short_still_moves_on() {
        let ram = tables();
        let layout = GuestLayout::identity(ram.len() as u64);
        let memory = FrozenMemory::new(&ram, &layout);
        let limits = Limits { max_entries_read: 1, max_mappings: 1 };
        let space = VirtualSpace::with_limits(Paging::new(PagingMode::FourLevel, Gpa(0x1000), true), limits);
        let data = space.seek_data(&memory, 0x10).unwrap();
        assert!(data >= 0x10);
        let hole = space.seek_hole(&memory, data).unwrap();
        assert!(hole > data || space.seek_data(&memory, hole) != Some(hole), "no progress at {data:#x}");
    }

    #[test]
    fn mappings_dump_lines() {
        let ram = tables();
        let layout = GuestLayout::identity(ram.len() as u64);
        let memory = FrozenMemory::new(&ram, &layout);
        let text = mappings_text(space().paging(), &memory, Limits::default());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "0000000000400000-0000000000401000 0000000000005000 4K rwx user",
                "0000000000402000-0000000000403000 0000000000006000 4K rwx kernel",
                "0000000000403000-0000000000404000 0000000000007000 4K rw- kernel",
                "ffffffff80000000-ffffffff80200000 0000000000200000 2M rwx kernel",
            ]
        );
        // a root outside RAM is an error line, not a panic
        let outside = Paging::new(PagingMode::FourLevel, Gpa(0x1000_0000), true);
        let text = mappings_text(&outside, &memory, Limits::default());
        assert!(text.starts_with("error: cannot read the PML4 entry"), "{text}");
    }

    #[test]
    fn vcpu_paging_names_what_is_wrong() {
        let vcpus = crate::guest::parse_info_registers(
            "CPU#0\nCR0=80050033 CR3=0000000000001000 CR4=00000020 EFER=0000000000000d01\n",
        );
        let paging = vcpu_paging(&Arch::X86_64, &vcpus, 0, None).unwrap();
        assert_eq!((paging.mode(), paging.root()), (PagingMode::FourLevel, Gpa(0x1000)));
        assert_eq!(vcpu_paging(&Arch::X86_64, &vcpus, 0, Some(Gpa(0x5000))).unwrap().root(), Gpa(0x5000));
        assert!(matches!(
            vcpu_paging(&Arch::X86_64, &vcpus, 1, None),
            Err(VcpuPagingError::NoSuchVcpu { cpu: 1, count: 1 })
        ));
        let sparc = vcpu_paging(&Arch::from_qemu("sparc64"), &vcpus, 0, None).unwrap_err();
        assert!(matches!(sparc, VcpuPagingError::Architecture { .. }));
        assert!(sparc.to_string().ends_with("guests, not sparc64"), "{sparc}");
        // aarch64: QEMU says nothing of TTBRs, so a root must be given
        assert!(matches!(
            vcpu_paging(&Arch::Aarch64, &vcpus, 0, None),
            Err(VcpuPagingError::Paging { source: PagingError::NoRoot { .. }, .. })
        ));
        let arm = vcpu_paging(&Arch::Aarch64, &vcpus, 0, Some(Gpa(0x4000_1000))).unwrap();
        assert_eq!((arm.mode(), arm.root()), (PagingMode::Arm48, Gpa(0x4000_1000)));
        let riscv = crate::guest::parse_info_registers("CPU#0\n satp     9000000000080010\n");
        let sv48 = vcpu_paging(&Arch::Riscv64, &riscv, 0, None).unwrap();
        assert_eq!((sv48.mode(), sv48.root()), (PagingMode::Sv48, Gpa(0x8001_0000)));
        assert_eq!(registers_json(&Arch::Riscv64, 0, &riscv[0])["paging"]["mode"], "Sv48");
        let json = registers_json(&Arch::X86_64, 0, &vcpus[0]);
        assert_eq!(json["arch"], "x86_64");
        assert_eq!(json["registers"]["CR3"], "0x1000");
        assert_eq!(json["paging"]["root"], "0x1000");
        assert_eq!(json["paging"]["mode"], "4-level paging");
    }
}
