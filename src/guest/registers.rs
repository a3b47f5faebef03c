//! vCPU registers as QEMU reports them: HMP `info registers -a` (QEMU's only dump of every
//! register; QMP `query-cpus-fast` names the vCPUs but gives no values), parsed per vCPU into
//! name/value pairs, and turned into the notes of the guest's architecture for its core
//! ([`ArchInfo::core_notes`](super::arch::ArchInfo::core_notes): x86_64's `NT_PRSTATUS` and
//! `QEMU` notes, with the control and descriptor-table registers that crash uses to find a
//! KASLR kernel).
//!
//! A sample of a running VM's registers is a moment of each vCPU, taken one after the other:
//! pause the VM first for one consistent set.

use super::arch::{x86_64, Arch};

/// One vCPU's registers: `(name, value)` in the order QEMU printed them. Segment registers
/// (`ES`..`GS`, `LDT`, `TR`) give their selector under their name (`CS`) and their base, limit
/// and flags under `CS.base`, `CS.limit`, `CS.flags`; the descriptor tables `GDT.base`,
/// `GDT.limit`, `IDT.base`, `IDT.limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VcpuRegisters {
    values: Vec<(String, u64)>,
}

impl VcpuRegisters {
    /// The value of register `name` (`RIP`, `CR3`, `CS.base`...), as QEMU spells it.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.values.iter().find(|(known, _)| known == name).map(|(_, value)| *value)
    }

    /// The first of `names` that this vCPU has (`["RAX", "EAX"]`: long mode, else 32-bit).
    pub fn first_of(&self, names: &[&str]) -> Option<u64> {
        names.iter().find_map(|name| self.get(name))
    }

    /// Every register, in QEMU's order.
    pub fn values(&self) -> &[(String, u64)] {
        &self.values
    }

    /// The program counter of a vCPU of architecture `arch`, by its spelling
    /// (`ArchInfo::program_counter`: `RIP` or `EIP`,
    /// `pc`, `PC`); `None` when QEMU did not print it or the architecture is not known.
    pub fn pc(&self, arch: &Arch) -> Option<u64> {
        self.first_of(arch.info().program_counter)
    }

    /// The x86 segment register `name` (`CS`..`GS`, `LDT`, `TR`) or descriptor-table register
    /// (`GDT`, `IDT`: selector and flags zero), with zeros for what QEMU did not print.
    pub fn segment(&self, name: &str) -> Segment {
        let field = |suffix: &str| self.get(&format!("{name}{suffix}")).unwrap_or(0);
        Segment {
            selector: field("") as u32,
            base: field(".base"),
            limit: field(".limit") as u32,
            flags: field(".flags") as u32,
        }
    }
}

/// An x86 segment or descriptor-table register as the vCPU caches it, in the widths of QEMU's
/// `QEMUCPUState`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    /// The selector (zero for a descriptor table).
    pub selector: u32,
    /// The base address.
    pub base: u64,
    /// The limit.
    pub limit: u32,
    /// The descriptor's attribute bits, as QEMU keeps them (zero for a descriptor table).
    pub flags: u32,
}

/// Every vCPU's registers from the text of HMP `info registers -a` (blocks that start with
/// `CPU#N`), in vCPU order. Words that are not `NAME=hex` are skipped: the text is QEMU's, its
/// shape varies by version and architecture.
pub fn parse_info_registers(text: &str) -> Vec<VcpuRegisters> {
    text.split("CPU#").skip(1).map(|block| VcpuRegisters { values: register_values(block) }).collect()
}

/// `NAME=hex` pairs of one vCPU's block; for segment lines (`CS =0010 0000000000000000
/// ffffffff 00a09b00 ...`: selector, base, limit, flags) the selector under the name and the
/// rest under `NAME.base`, `NAME.limit`, `NAME.flags`; for descriptor tables (`GDT=
/// fffffe0000001000 0000007f`) `NAME.base` and `NAME.limit`.
fn register_values(block: &str) -> Vec<(String, u64)> {
    let mut values = Vec::new();
    for line in block.lines() {
        let line = line.trim();
        let named = |names: &'static [&'static str]| {
            names
                .iter()
                .find(|name| line.strip_prefix(**name).is_some_and(|rest| rest.trim_start().starts_with('=')))
        };
        let fields = || {
            line.split_once('=')
                .map_or("", |(_, rest)| rest)
                .split_whitespace()
                .map_while(|f| u64::from_str_radix(f, 16).ok())
        };
        if let Some(name) = named(&x86_64::SEGMENTS) {
            for (suffix, value) in ["", ".base", ".limit", ".flags"].iter().zip(fields()) {
                values.push((format!("{name}{suffix}"), value));
            }
            continue;
        }
        if let Some(name) = named(&x86_64::DESCRIPTOR_TABLES) {
            for (suffix, value) in [".base", ".limit"].iter().zip(fields()) {
                values.push((format!("{name}{suffix}"), value));
            }
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if !line.contains('=') {
            // RISC-V prints `name value` pairs (`pc       0000000080000000`, `x2/sp    ...`): the
            // architectural name, before the ABI name
            for pair in words.chunks_exact(2) {
                let name = pair[0].split('/').next().unwrap_or("");
                let is_name = name.starts_with(|c: char| c.is_ascii_alphabetic())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if let (true, Ok(value)) = (is_name, u64::from_str_radix(pair[1], 16)) {
                    values.push((name.to_string(), value));
                }
            }
            continue;
        }
        // QEMU pads short names before the `=` (`R8 =0000000000022e80`): join them first
        let mut index = 0;
        while index < words.len() {
            let (word, next) = (words[index], words.get(index + 1));
            let (name, hex) = match (word.split_once('='), next.and_then(|next| next.strip_prefix('='))) {
                (Some((name, hex)), _) => (name, hex),
                (None, Some(hex)) => {
                    index += 1;
                    (word, hex)
                }
                (None, None) => ("", ""),
            };
            index += 1;
            let is_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if let (true, Ok(value)) = (is_name, u64::from_str_radix(hex, 16)) {
                values.push((name.to_string(), value));
            }
        }
    }
    values
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Two x86_64 vCPUs: one in long mode, one just reset.
    pub(crate) const TWO_VCPUS: &str = "CPU#0\nRAX=0000000000000001 RBX=0000000000000002 RCX=3 RDX=4\n\
                             R8 =0000000000022e80 R9 =00000000314ded62 R10=00000000fffffffb\n\
                             FCW=037f FSW=0000 [ST=0] FTW=00 MXCSR=00001fa0\n\
                             RIP=ffffffff81000010 RFL=00000246 [---Z-P-] CPL=0\nRSP=ffffc90000003e80\n\
                             CS =0010 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]\n\
                             GS =0000 ffff88807fc00000 ffffffff 00c00000\n\
                             LDT=0000 0000000000000000 00000000 00008200 DPL=0 LDT\n\
                             TR =0040 fffffe0000003000 00004087 00008900 DPL=0 TSS64-avl\n\
                             GDT=     fffffe0000001000 0000007f\n\
                             IDT=     fffffe0000000000 00000fff\n\
                             CR0=80050033 CR2=00007f0000001000 CR3=0000000001a0e000 CR4=003506f0\n\
                             CPU#1\nEAX=00000000 EDX=00060fb1 EIP=0000fff0 EFL=00000002\n";

    #[test]
    fn registers_parse_per_vcpu_with_segment_bases() {
        let vcpus = parse_info_registers(TWO_VCPUS);
        assert_eq!(vcpus.len(), 2);
        assert_eq!(vcpus[0].get("CR3"), Some(0x1a0_e000));
        assert_eq!(
            (vcpus[0].get("R8"), vcpus[0].get("R9")),
            (Some(0x22e80), Some(0x314d_ed62)),
            "names padded before ="
        );
        assert_eq!(vcpus[0].get("MXCSR"), Some(0x1fa0));
        assert!(vcpus[0].values().iter().all(|(name, _)| !name.is_empty() && !name.starts_with('[')));
        assert_eq!(vcpus[0].get("CS"), Some(0x10));
        assert_eq!(vcpus[0].get("GS.base"), Some(0xffff_8880_7fc0_0000));
        assert_eq!(
            (vcpus[0].get("CS.limit"), vcpus[0].get("CS.flags")),
            (Some(0xffff_ffff), Some(0x00a0_9b00))
        );
        assert_eq!(vcpus[0].get("TR"), Some(0x40));
        assert_eq!(vcpus[0].get("TR.base"), Some(0xffff_fe00_0000_3000));
        assert_eq!(
            (vcpus[0].get("IDT.base"), vcpus[0].get("IDT.limit")),
            (Some(0xffff_fe00_0000_0000), Some(0xfff))
        );
        assert_eq!(vcpus[0].get("GDT.limit"), Some(0x7f));
        assert_eq!(vcpus[1].first_of(&["RIP", "EIP"]), Some(0xfff0));
        assert_eq!(vcpus[1].get("CR3"), None);
        assert!(parse_info_registers("garbage, no CPU block").is_empty());
    }

    #[test]
    fn x86_64_program_counter_and_segments() {
        let vcpus = parse_info_registers(
            "CPU#0\nRAX=0000000000000001 RBX=0000000000000002\nR8 =0000000000000008 R15=000000000000000f\n\
             RIP=ffffffff81000010 RFL=00000246 [---Z-P-] CPL=0\n\
             CS =0010 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]\n\
             TR =0040 fffffe0000003000 00004087 00008900 DPL=0 TSS64-avl\n\
             IDT=     fffffe0000000000 00000fff\n\
             CR0=80050033 CR2=0000000000000000 CR3=0000000001a0e000 CR4=003506f0\nEFER=0000000000000d01\n",
        );
        let vcpu = &vcpus[0];
        let get = |name| vcpu.get(name).unwrap();
        assert_eq!((get("RAX"), get("RBX"), get("R8"), get("R15")), (1, 2, 8, 15));
        assert_eq!(
            (vcpu.pc(&Arch::X86_64), get("RFL"), get("CR3"), get("EFER")),
            (Some(0xffff_ffff_8100_0010), 0x246, 0x1a0_e000, 0xd01)
        );
        assert_eq!(
            vcpu.segment("CS"),
            Segment { selector: 0x10, base: 0, limit: 0xffff_ffff, flags: 0x00a0_9b00 }
        );
        assert_eq!((vcpu.segment("TR").selector, vcpu.segment("TR").base), (0x40, 0xffff_fe00_0000_3000));
        assert_eq!(
            vcpu.segment("IDT"),
            Segment { selector: 0, base: 0xffff_fe00_0000_0000, limit: 0xfff, flags: 0 }
        );
        assert_eq!(vcpu.segment("DS"), Segment::default(), "not printed: zeros");
        assert_eq!(parse_info_registers(TWO_VCPUS)[1].pc(&Arch::X86_64), Some(0xfff0), "EIP");
        let without_cr3 = parse_info_registers("CPU#0\nRIP=0 RFL=2\nCS =0000 0 0 0\nCR0=0 CR4=0\n");
        assert!(matches!(
            crate::guest::Paging::of_vcpu(&Arch::X86_64, &without_cr3[0]),
            Err(crate::guest::PagingError::MissingRegister { name: "CR3" })
        ));
    }

    #[test]
    fn riscv64_and_aarch64_program_counters() {
        let riscv = parse_info_registers(
            "CPU#0\n pc       0000000080000010\n satp     8000000000080100\n x1/ra    0000000000000001 x31/t6   000000000000001f\n",
        );
        let hart = &riscv[0];
        assert_eq!(
            (hart.pc(&Arch::Riscv64), hart.get("satp"), hart.get("x1"), hart.get("x31")),
            (Some(0x8000_0010), Some(0x8000_0000_0008_0100), Some(1), Some(31))
        );
        let arm = parse_info_registers("CPU#0\nPC=0000000040000000 X00=0000000000000001 X30=000000000000001e\nSP=0000000040001000\nPSTATE=400003c5 -Z-- EL1h\n");
        let arm = &arm[0];
        assert_eq!(arm.pc(&Arch::Aarch64), Some(0x4000_0000));
        assert_eq!(
            (arm.get("X00"), arm.get("X30"), arm.get("SP"), arm.get("PSTATE")),
            (Some(1), Some(30), Some(0x4000_1000), Some(0x4000_03c5))
        );
        assert_eq!(hart.pc(&Arch::Aarch64), None, "another architecture's spelling");
        assert_eq!(hart.pc(&Arch::from_qemu("sparc64")), None);
    }

    #[test]
    fn riscv_registers_are_name_value_pairs() {
        let text = "CPU#0\n V      =   0\n pc       0000000080000010\n mstatus  0000000a00000000\n \
                    satp     8000000000080010\n x0/zero  0000000000000000 x1/ra    0000000000000001 \
                    x2/sp    0000000080001000\n f0/ft0   0000000000000000\n";
        let vcpus = parse_info_registers(text);
        assert_eq!(vcpus.len(), 1);
        let get = |name| vcpus[0].get(name);
        assert_eq!(
            (get("pc"), get("satp"), get("x1"), get("x2")),
            (Some(0x8000_0010), Some(0x8000_0000_0008_0010), Some(1), Some(0x8000_1000))
        );
        assert_eq!(get("mstatus"), Some(0xa_0000_0000));
        assert!(vcpus[0].values().iter().all(|(name, _)| name != "V" && !name.contains('/')));
    }
}
