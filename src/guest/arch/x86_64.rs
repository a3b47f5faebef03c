//! x86_64: QEMU's `x86_64` target. `info registers` prints `NAME=hex` words (EAX.. in real
//! and protected mode, RAX.. and R8..R15 in long mode), segment and descriptor-table lines, and
//! the control registers from which the paging is known (CR0, CR3, CR4, EFER). Its cores carry
//! the notes QEMU's own `dump-guest-memory` writes: `NT_PRSTATUS` and `QEMU` per vCPU.

use super::{ArchInfo, PageTableRoot};
use crate::guest::memory::Gpa;
use crate::guest::paging::{Access, Entry, Level, Mmu};
use crate::guest::registers::VcpuRegisters;

/// What this crate knows of x86_64.
pub static INFO: ArchInfo = ArchInfo {
    name: "x86_64",
    elf_machine: 62, // EM_X86_64
    program_counter: PROGRAM_COUNTER,
    page_table_root: PageTableRoot::InRegisters(CR3),
    core_notes: Some(core_notes),
};

/// The program counter: RIP in long mode, EIP in real and protected mode.
pub const PROGRAM_COUNTER: &[&str] = &["RIP", "EIP"];
/// The segment registers, whose lines give selector, base, limit and flags.
pub const SEGMENTS: [&str; 8] = ["ES", "CS", "SS", "DS", "FS", "GS", "LDT", "TR"];
/// The descriptor-table registers, whose lines give base and limit.
pub const DESCRIPTOR_TABLES: [&str; 2] = ["GDT", "IDT"];
/// Control register 0 (paging on, protection).
pub const CR0: &str = "CR0";
/// Control register 3: the root table.
pub const CR3: &str = "CR3";
/// Control register 4 (PAE, LA57).
pub const CR4: &str = "CR4";
/// The extended feature enable register (long mode, no-execute).
pub const EFER: &str = "EFER";

/// CR0.PG: paging on.
pub(crate) const CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical-address extension, required by long mode.
pub(crate) const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: 5-level paging.
pub(crate) const CR4_LA57: u64 = 1 << 12;
/// EFER.LMA: long mode active.
pub(crate) const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE: bit 63 of an entry means no-execute (reserved otherwise).
pub(crate) const EFER_NXE: u64 = 1 << 11;
/// CR3 bits 51..12: the root table (the low bits are flags or the PCID, the high bits LAM flags).
const CR3_ROOT: u64 = 0x000f_ffff_ffff_f000;

/// Entry bit 0: present (valid, in every format this crate walks).
pub(crate) const PRESENT: u64 = 1 << 0;
/// R/W: writes allowed.
pub(crate) const WRITABLE: u64 = 1 << 1;
/// U/S: user-mode access allowed.
pub(crate) const USER: u64 = 1 << 2;
/// PS: the entry maps a page instead of a table (PDPT and PD entries; PAT in a PT entry).
pub(crate) const PAGE_SIZE: u64 = 1 << 7;
/// XD: no instruction fetches (with EFER.NXE).
pub(crate) const NO_EXECUTE: u64 = 1 << 63;
/// Bits 51..12: a table or 4 KiB page (52 bits is the architecture's largest MAXPHYADDR).
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// x86_64's 4- and 5-level tables (SDM vol. 3, 4.5).
pub(crate) static MMU: Mmu = Mmu { root_mask: CR3_ROOT, decode, access };

fn decode(level: Level, entry: u64) -> Entry {
    match level.page_size() {
        // bit 7 of a PT entry is PAT, not PS: every PT entry maps a page
        Some(size) if level == Level::Pt => Entry::Page { base: entry & ADDRESS, size },
        // bit 12 of a large-page entry is PAT; the base is aligned to the page size
        Some(size) if entry & PAGE_SIZE != 0 => Entry::Page { base: entry & ADDRESS & !(size - 1), size },
        None if entry & PAGE_SIZE != 0 => Entry::ReservedPageSize,
        _ => Entry::Table(Gpa(entry & ADDRESS)),
    }
}

/// R/W and U/S must be set at every level, XD at none.
fn access(above: Access, entry: u64, _leaf: bool, no_execute_enabled: bool) -> Access {
    Access {
        writable: above.writable && entry & WRITABLE != 0,
        user: above.user && entry & USER != 0,
        executable: above.executable && !(no_execute_enabled && entry & NO_EXECUTE != 0),
        privileged_executable: true,
    }
}

/// The notes of an x86_64 core, in the order of QEMU's own dump: every vCPU's `NT_PRSTATUS`,
/// then every vCPU's `QEMU` note.
pub fn core_notes(vcpus: &[VcpuRegisters]) -> Vec<u8> {
    [prstatus_notes(vcpus), qemu_notes(vcpus)].concat()
}

/// `NT_PRSTATUS` notes, one per vCPU, for an x86_64 guest (real and protected mode name EAX..,
/// long mode RAX.. and R8..R15). The layout is the kernel's `struct elf_prstatus` for x86_64
/// (336 bytes, `pr_reg` at 112 in `user_regs_struct` order), as QEMU's own dump writes it;
/// fields QEMU did not print are zero.
pub fn prstatus_notes(vcpus: &[VcpuRegisters]) -> Vec<u8> {
    // user_regs_struct, in order; each name lists the spellings QEMU prints
    const REGS: [&[&str]; 27] = [
        &["R15"],
        &["R14"],
        &["R13"],
        &["R12"],
        &["RBP", "EBP"],
        &["RBX", "EBX"],
        &["R11"],
        &["R10"],
        &["R9"],
        &["R8"],
        &["RAX", "EAX"],
        &["RCX", "ECX"],
        &["RDX", "EDX"],
        &["RSI", "ESI"],
        &["RDI", "EDI"],
        &["orig_rax"],
        &["RIP", "EIP"],
        &["CS"],
        &["RFL", "EFL"],
        &["RSP", "ESP"],
        &["SS"],
        &["FS.base"],
        &["GS.base"],
        &["DS"],
        &["ES"],
        &["FS"],
        &["GS"],
    ];
    let mut notes = Vec::new();
    for (index, vcpu) in vcpus.iter().enumerate() {
        let mut desc = vec![0u8; 336];
        desc[32..36].copy_from_slice(&(index as u32 + 1).to_le_bytes()); // pr_pid: vCPU index + 1
        for (slot, names) in REGS.iter().enumerate() {
            desc[112 + slot * 8..120 + slot * 8]
                .copy_from_slice(&vcpu.first_of(names).unwrap_or(0).to_le_bytes());
        }
        notes.extend_from_slice(&crate::ram::dump::elf_note("CORE", 1, &desc));
        // NT_PRSTATUS
    }
    notes
}

/// The `QEMU` notes of an x86_64 core, one per vCPU: QEMU's `QEMUCPUState` (version 1, 440
/// bytes: general registers, RIP, RFLAGS, the segments CS DS ES FS GS SS LDT TR and the tables
/// GDT IDT as selector/limit/flags/base, CR0-CR4, KERNEL_GS_BASE), as `dump-guest-memory`
/// writes it after the `NT_PRSTATUS` notes. Registers QEMU's monitor does not print (CR1,
/// KERNEL_GS_BASE) are zero.
pub fn qemu_notes(vcpus: &[VcpuRegisters]) -> Vec<u8> {
    const GENERAL: [&[&str]; 18] = [
        &["RAX", "EAX"],
        &["RBX", "EBX"],
        &["RCX", "ECX"],
        &["RDX", "EDX"],
        &["RSI", "ESI"],
        &["RDI", "EDI"],
        &["RSP", "ESP"],
        &["RBP", "EBP"],
        &["R8"],
        &["R9"],
        &["R10"],
        &["R11"],
        &["R12"],
        &["R13"],
        &["R14"],
        &["R15"],
        &["RIP", "EIP"],
        &["RFL", "EFL"],
    ];
    const SEGMENTS: [&str; 10] = ["CS", "DS", "ES", "FS", "GS", "SS", "LDT", "TR", "GDT", "IDT"];
    const SIZE: u32 = 440;
    let mut notes = Vec::new();
    for vcpu in vcpus {
        let mut desc = Vec::with_capacity(SIZE as usize);
        desc.extend_from_slice(&1u32.to_le_bytes()); // version
        desc.extend_from_slice(&SIZE.to_le_bytes());
        for names in GENERAL {
            desc.extend_from_slice(&vcpu.first_of(names).unwrap_or(0).to_le_bytes());
        }
        for name in SEGMENTS {
            // the tables have no selector or flags: zero, as QEMU writes them
            let segment = vcpu.segment(name);
            desc.extend_from_slice(&segment.selector.to_le_bytes());
            desc.extend_from_slice(&segment.limit.to_le_bytes());
            desc.extend_from_slice(&segment.flags.to_le_bytes());
            desc.extend_from_slice(&0u32.to_le_bytes()); // pad
            desc.extend_from_slice(&segment.base.to_le_bytes());
        }
        for cr in ["CR0", "CR1", "CR2", "CR3", "CR4"] {
            desc.extend_from_slice(&vcpu.get(cr).unwrap_or(0).to_le_bytes());
        }
        desc.extend_from_slice(&0u64.to_le_bytes()); // kernel_gs_base: not printed by the monitor
        debug_assert_eq!(desc.len(), SIZE as usize);
        notes.extend_from_slice(&crate::ram::dump::elf_note("QEMU", 0, &desc));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::parse_info_registers;
    use crate::guest::registers::tests::TWO_VCPUS;

    #[test]
    fn prstatus_notes_from_info_registers() {
        let notes = prstatus_notes(&parse_info_registers(TWO_VCPUS));
        assert_eq!(notes.len(), 2 * (12 + 8 + 336));
        let desc = &notes[20..20 + 336];
        let reg =
            |index: usize| u64::from_le_bytes(desc[112 + index * 8..120 + index * 8].try_into().unwrap());
        assert_eq!(
            (reg(10), reg(5), reg(16), reg(18), reg(19)),
            (1, 2, 0xffff_ffff_8100_0010, 0x246, 0xffff_c900_0000_3e80)
        );
        assert_eq!((reg(17), reg(22)), (0x10, 0xffff_8880_7fc0_0000), "CS selector, GS base");
        assert_eq!(&notes[12..16], b"CORE");
        let second = &notes[356 + 20..356 + 20 + 336];
        assert_eq!(u64::from_le_bytes(second[112 + 16 * 8..120 + 16 * 8].try_into().unwrap()), 0xfff0);
        assert_eq!(u32::from_le_bytes(second[32..36].try_into().unwrap()), 2, "pr_pid");
    }

    #[test]
    fn qemu_notes_carry_qemus_cpu_state() {
        let notes = qemu_notes(&parse_info_registers(TWO_VCPUS));
        // name "QEMU\0" padded to 8, 440 bytes of state
        assert_eq!(notes.len(), 2 * (12 + 8 + 440));
        assert_eq!(&notes[12..17], b"QEMU\0");
        let desc = &notes[20..20 + 440];
        let u32_at = |at: usize| u32::from_le_bytes(desc[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(desc[at..at + 8].try_into().unwrap());
        assert_eq!((u32_at(0), u32_at(4)), (1, 440), "version, size");
        assert_eq!((u64_at(8), u64_at(16)), (1, 2), "RAX, RBX");
        assert_eq!((u64_at(8 + 16 * 8), u64_at(8 + 17 * 8)), (0xffff_ffff_8100_0010, 0x246), "RIP, RFLAGS");
        let segment = |index: usize| 8 + 18 * 8 + index * 24;
        assert_eq!(
            (u32_at(segment(0)), u32_at(segment(0) + 4), u32_at(segment(0) + 8)),
            (0x10, 0xffff_ffff, 0x00a0_9b00)
        );
        assert_eq!(u64_at(segment(4) + 16), 0xffff_8880_7fc0_0000, "GS base");
        assert_eq!((u32_at(segment(7)), u64_at(segment(7) + 16)), (0x40, 0xffff_fe00_0000_3000), "TR");
        assert_eq!((u32_at(segment(9) + 4), u64_at(segment(9) + 16)), (0xfff, 0xffff_fe00_0000_0000), "IDT");
        let cr = |index: usize| u64_at(segment(10) + index * 8);
        assert_eq!((cr(0), cr(3), cr(4)), (0x8005_0033, 0x1a0_e000, 0x3506f0));
    }
}

#[cfg(test)]
mod mmu_tests {
    use super::*;
    use crate::guest::paging::{PAGE_1G, PAGE_2M, PAGE_4K};

    #[test]
    fn entries_decode_as_the_sdm_says() {
        let decode = MMU.decode;
        // bit 7 of a PT entry is PAT: still a 4 KiB page
        assert_eq!(
            decode(Level::Pt, 0x1234_5000 | PAGE_SIZE | 1),
            Entry::Page { base: 0x1234_5000, size: PAGE_4K }
        );
        // a 2 MiB page: bit 12 (PAT) is not part of its base
        assert_eq!(
            decode(Level::Pd, 0x4060_0000 | 1 << 12 | PAGE_SIZE | 1),
            Entry::Page { base: 0x4060_0000, size: PAGE_2M }
        );
        assert_eq!(
            decode(Level::Pdpt, 0x8000_0000 | PAGE_SIZE | 1),
            Entry::Page { base: 0x8000_0000, size: PAGE_1G }
        );
        assert_eq!(decode(Level::Pdpt, 0x5000 | 1), Entry::Table(Gpa(0x5000)));
        assert_eq!(decode(Level::Pml4, PAGE_SIZE | 1), Entry::ReservedPageSize);
        assert_eq!(
            decode(Level::Pml5, 1 << 63 | 0xf_ffff_ffff_f000 | 1),
            Entry::Table(Gpa(0xf_ffff_ffff_f000))
        );
        assert_eq!(MMU.root_mask & 0xfff, 0, "CR3's low bits are flags or the PCID");
    }

    #[test]
    fn every_level_limits_access_and_no_execute_needs_nxe() {
        let access = MMU.access;
        let table = access(Access::ALL, WRITABLE | USER | 1, false, true);
        assert_eq!(table, Access::ALL);
        let read_only = access(access(Access::ALL, USER | 1, false, true), WRITABLE | USER | 1, true, true);
        assert!(!read_only.writable && read_only.user && read_only.executable);
        let kernel = access(Access::ALL, WRITABLE | 1, true, true);
        assert!(kernel.writable && !kernel.user);
        assert!(!access(Access::ALL, NO_EXECUTE | 1, true, true).executable);
        assert!(
            access(Access::ALL, NO_EXECUTE | 1, true, false).executable,
            "XD is reserved without EFER.NXE"
        );
    }
}
