//! aarch64: QEMU's `aarch64` target. `info registers` prints the general registers, PC, SP and
//! PSTATE, and none of the system registers (TTBR0_EL1, TTBR1_EL1, TCR_EL1, SCTLR_EL1): the
//! page tables are walked from a root the caller gives.

use super::{ArchInfo, PageTableRoot};

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
