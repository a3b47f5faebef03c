//! aarch64: QEMU's `aarch64` target. `info registers` prints the general registers, PC, SP and
//! PSTATE, and none of the system registers (TTBR0_EL1, TTBR1_EL1, TCR_EL1, SCTLR_EL1): the
//! page tables are walked from a root the caller gives.

use super::{ArchInfo, PageTableRoot};
use crate::guest::memory::Gpa;
use crate::guest::paging::{Access, Entry, Level, Mmu};

/// What this crate knows of aarch64.
pub static INFO: ArchInfo = ArchInfo {
    name: "aarch64",
    elf_machine: 183, // EM_AARCH64
    program_counter: &["PC"],
    page_table_root: PageTableRoot::Given(TRANSLATION_TABLE_BASES),
    core_notes: None,
};

/// The registers that hold the translation tables' bases, which QEMU's monitor does not print:
/// TTBR0_EL1 for the lower half of the address space, TTBR1_EL1 for the upper.
pub const TRANSLATION_TABLE_BASES: &str = "TTBR0_EL1, TTBR1_EL1";

/// A TTBR's base address, bits 47..1 (bit 0 is CnP, bits 63..48 the ASID); the 4 KiB
/// granule's table is aligned to 4 KiB.
const ROOT: u64 = 0x0000_ffff_ffff_f000;
/// Descriptor bit 1 (bit 0 is valid): a table (levels 0-2) or page (level 3); clear, a block.
pub(crate) const TABLE_OR_PAGE: u64 = 1 << 1;
/// Descriptor bits 47..12: the output address.
const ADDRESS: u64 = 0x0000_ffff_ffff_f000;
/// Leaf AP[2] (bit 7): read-only; AP[1] (bit 6): accessible at EL0.
pub(crate) const READ_ONLY: u64 = 1 << 7;
pub(crate) const EL0: u64 = 1 << 6;
/// Leaf UXN (bit 54) and PXN (bit 53): not executable at EL0, at EL1.
pub(crate) const UXN: u64 = 1 << 54;
pub(crate) const PXN: u64 = 1 << 53;
/// Table bits: APTable[1] (62) no writes below, APTable[0] (61) no EL0 access below, UXNTable
/// (60), PXNTable (59).
pub(crate) const TABLE_READ_ONLY: u64 = 1 << 62;
pub(crate) const TABLE_NO_EL0: u64 = 1 << 61;
pub(crate) const TABLE_UXN: u64 = 1 << 60;
pub(crate) const TABLE_PXN: u64 = 1 << 59;

/// AArch64's stage-1 tables, 4 KiB granule (the Arm ARM, D8).
pub(crate) static MMU: Mmu = Mmu { root_mask: ROOT, decode, access };

fn decode(level: Level, entry: u64) -> Entry {
    let table_or_page = entry & TABLE_OR_PAGE != 0;
    match level.page_size() {
        Some(size) if level.is_last() && table_or_page => Entry::Page { base: entry & ADDRESS, size },
        Some(size) if !level.is_last() && !table_or_page => {
            Entry::Page { base: entry & ADDRESS & !(size - 1), size }
        }
        _ if !level.is_last() && table_or_page => Entry::Table(Gpa(entry & ADDRESS)),
        _ => Entry::Reserved,
    }
}

/// The table bits (APTable, UXNTable, PXNTable) limit what lies below, the leaf's AP and
/// UXN/PXN its page; execution at EL0 and EL1 stay apart until the leaf says which level may
/// use the page.
fn access(above: Access, entry: u64, leaf: bool, _no_execute_enabled: bool) -> Access {
    if !leaf {
        return Access {
            writable: above.writable && entry & TABLE_READ_ONLY == 0,
            user: above.user && entry & TABLE_NO_EL0 == 0,
            executable: above.executable && entry & TABLE_UXN == 0,
            privileged_executable: above.privileged_executable && entry & TABLE_PXN == 0,
        };
    }
    let user = above.user && entry & EL0 != 0;
    let (user_x, kernel_x) =
        (above.executable && entry & UXN == 0, above.privileged_executable && entry & PXN == 0);
    Access {
        writable: above.writable && entry & READ_ONLY == 0,
        user,
        // what the level that may use the page may execute
        executable: if user { user_x } else { kernel_x },
        privileged_executable: kernel_x,
    }
}

#[cfg(test)]
mod mmu_tests {
    use super::*;
    use crate::guest::paging::{PAGE_1G, PAGE_4K};

    #[test]
    fn descriptors_decode_as_the_arm_arm_says() {
        let decode = MMU.decode;
        assert_eq!(
            decode(Level::Arm(3), 0x4000_1000 | TABLE_OR_PAGE | 1),
            Entry::Page { base: 0x4000_1000, size: PAGE_4K }
        );
        assert_eq!(decode(Level::Arm(3), 0x4000_1000 | 1), Entry::Reserved, "a block at level 3");
        assert_eq!(decode(Level::Arm(1), 0x4000_0000 | 1), Entry::Page { base: 0x4000_0000, size: PAGE_1G });
        assert_eq!(decode(Level::Arm(0), 0x4000_0000 | 1), Entry::Reserved, "no blocks at level 0");
        assert_eq!(decode(Level::Arm(2), 0x4000_5000 | TABLE_OR_PAGE | 1), Entry::Table(Gpa(0x4000_5000)));
    }

    #[test]
    fn table_bits_limit_what_lies_below_and_the_leaf_says_who_executes() {
        let access = MMU.access;
        let below = access(Access::ALL, TABLE_READ_ONLY | TABLE_UXN | TABLE_OR_PAGE | 1, false, true);
        assert!(!below.writable && !below.executable && below.privileged_executable && below.user);
        let user_page = access(Access::ALL, EL0 | UXN | TABLE_OR_PAGE | 1, true, true);
        assert!(user_page.user && user_page.writable && !user_page.executable);
        let kernel_page = access(Access::ALL, READ_ONLY | UXN | TABLE_OR_PAGE | 1, true, true);
        assert!(!kernel_page.user && !kernel_page.writable && kernel_page.executable, "EL1 may execute it");
        assert!(!access(Access::ALL, PXN | TABLE_OR_PAGE | 1, true, true).executable);
    }
}
