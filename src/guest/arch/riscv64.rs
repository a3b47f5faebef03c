//! riscv64: QEMU's `riscv64` target. `info registers` prints `name value` pairs (`pc`, the
//! CSRs, `x1/ra`...: the architectural name before the ABI name), among them `satp`, which
//! says how the hart translates (the privileged specification's Sv39, Sv48, Sv57) and where
//! its root table is.

use super::{ArchInfo, PageTableRoot};
use crate::guest::memory::Gpa;
use crate::guest::paging::{Access, Entry, Level, Mmu};

/// What this crate knows of riscv64.
pub static INFO: ArchInfo = ArchInfo {
    name: "riscv64",
    elf_machine: 243, // EM_RISCV
    program_counter: PROGRAM_COUNTER,
    page_table_root: PageTableRoot::InRegisters(SATP),
    core_notes: None,
};

/// The program counter, as QEMU spells it.
pub const PROGRAM_COUNTER: &[&str] = &["pc"];
/// The CSR that selects the translation mode and the root table.
pub const SATP: &str = "satp";

/// satp bits 63..60: the translation mode.
pub(crate) const SATP_MODE_SHIFT: u32 = 60;
/// satp bits 43..0: the root table's page number.
pub(crate) const SATP_PPN: u64 = (1 << 44) - 1;
/// A root: a page number of up to 44 bits (a 56-bit physical address).
const ROOT: u64 = 0x00ff_ffff_ffff_f000;

/// PTE bits: readable, writable, executable, user (bit 0 is valid).
pub(crate) const R: u64 = 1 << 1;
pub(crate) const W: u64 = 1 << 2;
pub(crate) const X: u64 = 1 << 3;
pub(crate) const U: u64 = 1 << 4;
/// PTE bits 53..10: the page number.
pub(crate) const PPN_SHIFT: u32 = 10;
const PPN: u64 = (1 << 44) - 1;

/// RISC-V's Sv39, Sv48 and Sv57 tables (the privileged specification, 4.3-4.5).
pub(crate) static MMU: Mmu = Mmu { root_mask: ROOT, decode, access };

fn decode(level: Level, entry: u64) -> Entry {
    let base = ((entry >> PPN_SHIFT) & PPN) << 12;
    let leaf = entry & (R | W | X) != 0;
    match level.page_size() {
        _ if entry & W != 0 && entry & R == 0 => Entry::Reserved,
        Some(size) if leaf && base & (size - 1) == 0 => Entry::Page { base, size },
        // a misaligned superpage faults, as a pointer from the last level does
        _ if leaf || level.is_last() => Entry::Reserved,
        _ => Entry::Table(Gpa(base)),
    }
}

/// The leaf's own R/W/X/U alone (a pointer to a table has none).
fn access(above: Access, entry: u64, leaf: bool, _no_execute_enabled: bool) -> Access {
    if !leaf {
        return above;
    }
    Access {
        writable: entry & W != 0,
        user: entry & U != 0,
        executable: entry & X != 0,
        privileged_executable: true,
    }
}

#[cfg(test)]
mod mmu_tests {
    use super::*;
    use crate::guest::paging::{PAGE_2M, PAGE_4K};

    fn pte(pa: u64, flags: u64) -> u64 {
        (pa >> 12) << PPN_SHIFT | flags | 1
    }

    #[test]
    fn entries_decode_as_the_privileged_specification_says() {
        let decode = MMU.decode;
        assert_eq!(
            decode(Level::Riscv(0), pte(0x8000_1000, R | W)),
            Entry::Page { base: 0x8000_1000, size: PAGE_4K }
        );
        assert_eq!(
            decode(Level::Riscv(1), pte(0x8020_0000, R | X)),
            Entry::Page { base: 0x8020_0000, size: PAGE_2M }
        );
        assert_eq!(decode(Level::Riscv(1), pte(0x8000_3000, 0)), Entry::Table(Gpa(0x8000_3000)));
        // write without read; a misaligned megapage; a pointer from the last level
        assert_eq!(decode(Level::Riscv(0), pte(0x8000_1000, W)), Entry::Reserved);
        assert_eq!(decode(Level::Riscv(1), pte(0x8000_1000, R)), Entry::Reserved);
        assert_eq!(decode(Level::Riscv(0), pte(0x8000_1000, 0)), Entry::Reserved);
    }

    #[test]
    fn the_leaf_alone_gives_access() {
        let access = MMU.access;
        assert_eq!(access(Access::ALL, pte(0x1000, 0), false, true), Access::ALL, "a pointer has no bits");
        let page = access(Access::ALL, pte(0x1000, R | U), true, true);
        assert!(!page.writable && page.user && !page.executable);
        let code = access(Access::ALL, pte(0x1000, R | X), true, false);
        assert!(code.executable && !code.user);
    }
}
