//! riscv64: QEMU's `riscv64` target. `info registers` prints `name value` pairs (`pc`, the
//! CSRs, `x1/ra`...: the architectural name before the ABI name), among them `satp`, which
//! says how the hart translates (the privileged specification's Sv39, Sv48, Sv57) and where
//! its root table is.

use super::{ArchInfo, PageTableRoot};

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
