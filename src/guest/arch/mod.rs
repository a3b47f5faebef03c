//! Guest architectures as a type: [`Arch`], parsed once from the name QEMU gives in
//! `query-target`, and what this crate knows of each ([`ArchInfo`]: its ELF machine, the notes
//! of its cores, where its page tables are, QEMU's spellings of its registers), one file per
//! architecture it translates ([`x86_64`], [`riscv64`], [`aarch64`]), as drgn keeps one
//! `drgn_architecture_info` per architecture.
//!
//! Targets this crate does not know stay representable ([`Arch::Other`], with QEMU's name):
//! their RAM, layout and core are served as any other's, with no registers taken apart and no
//! page tables walked.

pub mod aarch64;
pub mod riscv64;
pub mod x86_64;

use super::registers::VcpuRegisters;

/// A guest architecture, as QEMU's `query-target` names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `x86_64`
    X86_64,
    /// `i386`
    I386,
    /// `aarch64`
    Aarch64,
    /// `arm`
    Arm,
    /// `riscv64`
    Riscv64,
    /// `riscv32`
    Riscv32,
    /// `ppc64`
    Ppc64,
    /// `s390x`
    S390x,
    /// Any other target, by QEMU's name (empty when QEMU did not say).
    Other(String),
}

/// Where a vCPU's page tables are, as far as QEMU's monitor tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageTableRoot {
    /// In these registers, which `info registers` prints (x86_64's CR3, RISC-V's satp): the
    /// tables are walked from them.
    InRegisters(&'static str),
    /// In these registers, which QEMU's monitor does not print: the tables are walked from a
    /// root the caller gives.
    Given(&'static str),
    /// Nowhere this crate looks: no page-table walker.
    NotWalked,
}

/// What this crate knows of an architecture.
#[derive(Debug)]
pub struct ArchInfo {
    /// QEMU's name of the target (`query-target`), empty for an unknown one.
    pub name: &'static str,
    /// The ELF machine (`e_machine`) of its cores; 0 (`EM_NONE`) when unknown.
    pub elf_machine: u16,
    /// QEMU's spellings of the program counter in `info registers`, the first that a vCPU has
    /// being its value (`RIP`, else `EIP` in real and protected mode).
    pub program_counter: &'static [&'static str],
    /// Where the vCPUs' page tables are.
    pub page_table_root: PageTableRoot,
    /// The notes of each vCPU its cores carry, as QEMU's `dump-guest-memory` writes them
    /// (`None`: its cores carry none).
    pub core_notes: Option<CoreNotes>,
}

/// Makes the notes of every vCPU for a core, from their registers.
pub type CoreNotes = fn(&[VcpuRegisters]) -> Vec<u8>;

/// Every architecture with a name of its own, in the order `from_qemu` tries them.
const KNOWN: [Arch; 8] = [
    Arch::X86_64,
    Arch::I386,
    Arch::Aarch64,
    Arch::Arm,
    Arch::Riscv64,
    Arch::Riscv32,
    Arch::Ppc64,
    Arch::S390x,
];

/// A target known only by name: an ELF machine, nothing more.
const fn named(name: &'static str, elf_machine: u16) -> ArchInfo {
    ArchInfo {
        name,
        elf_machine,
        program_counter: &[],
        page_table_root: PageTableRoot::NotWalked,
        core_notes: None,
    }
}

static I386: ArchInfo = ArchInfo { program_counter: &["EIP"], ..named("i386", 3) };
static ARM: ArchInfo = named("arm", 40);
static RISCV32: ArchInfo = ArchInfo { program_counter: riscv64::PROGRAM_COUNTER, ..named("riscv32", 243) };
static PPC64: ArchInfo = named("ppc64", 21);
static S390X: ArchInfo = named("s390x", 22);
static OTHER: ArchInfo = named("", 0);

impl Arch {
    /// The architecture QEMU names `name` in `query-target` (`x86_64`, `aarch64`...); a name
    /// this crate does not know is [`Arch::Other`].
    pub fn from_qemu(name: &str) -> Arch {
        KNOWN
            .into_iter()
            .find(|arch| arch.info().name == name)
            .unwrap_or_else(|| Arch::Other(name.to_string()))
    }

    /// QEMU's name of it, as `query-target` gave it.
    pub fn as_str(&self) -> &str {
        match self {
            Arch::Other(name) => name,
            known => known.info().name,
        }
    }

    /// What this crate knows of it.
    pub(crate) fn info(&self) -> &'static ArchInfo {
        match self {
            Arch::X86_64 => &x86_64::INFO,
            Arch::I386 => &I386,
            Arch::Aarch64 => &aarch64::INFO,
            Arch::Arm => &ARM,
            Arch::Riscv64 => &riscv64::INFO,
            Arch::Riscv32 => &RISCV32,
            Arch::Ppc64 => &PPC64,
            Arch::S390x => &S390X,
            Arch::Other(_) => &OTHER,
        }
    }

    /// The ELF machine of its cores (`EM_X86_64` 62, `EM_AARCH64` 183...; 0 when unknown).
    pub fn elf_machine(&self) -> u16 {
        self.info().elf_machine
    }

    /// Whether its vCPUs' page tables are walked from the registers QEMU prints (x86_64,
    /// riscv64), with no root given.
    pub fn page_table_root_in_registers(&self) -> bool {
        matches!(self.info().page_table_root, PageTableRoot::InRegisters(_))
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// QEMU's name, as a JSON string.
impl serde::Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemus_names_round_trip() {
        for arch in KNOWN {
            assert_eq!(Arch::from_qemu(arch.as_str()), arch);
            assert_eq!(arch.to_string(), arch.as_str());
        }
        assert_eq!(Arch::from_qemu("x86_64"), Arch::X86_64);
        assert_eq!(Arch::from_qemu("sparc64"), Arch::Other("sparc64".to_string()));
        assert_eq!(Arch::from_qemu("sparc64").to_string(), "sparc64");
        assert_eq!(Arch::from_qemu("").as_str(), "", "QEMU said no name");
        assert_eq!(serde_json::to_value(Arch::Riscv64).unwrap(), "riscv64");
        assert_eq!(serde_json::to_value(Arch::from_qemu("mips")).unwrap(), "mips");
    }

    #[test]
    fn per_architecture_facts() {
        let machines: Vec<u16> = KNOWN.iter().map(Arch::elf_machine).collect();
        assert_eq!(machines, [62, 3, 183, 40, 243, 243, 21, 22]);
        assert_eq!(Arch::from_qemu("sparc64").elf_machine(), 0);
        let walked: Vec<bool> = KNOWN.iter().map(Arch::page_table_root_in_registers).collect();
        assert_eq!(walked, [true, false, false, false, true, false, false, false]);
        assert!(Arch::X86_64.info().core_notes.is_some());
        assert!(KNOWN[1..].iter().all(|arch| arch.info().core_notes.is_none()));
    }
}
