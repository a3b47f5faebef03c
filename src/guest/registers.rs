//! vCPU registers as QEMU reports them: HMP `info registers -a` (QEMU's only dump of every
//! register; QMP `query-cpus-fast` names the vCPUs but gives no values), parsed per vCPU into
//! name/value pairs, and turned into the notes QEMU's own `dump-guest-memory` writes for an
//! x86_64 core: `NT_PRSTATUS` and the `QEMU` note of each vCPU (its `QEMUCPUState`, with the
//! control and descriptor-table registers that crash uses to find a KASLR kernel).
//!
//! A sample of a running VM's registers is a moment of each vCPU, taken one after the other:
//! pause the VM first for one consistent set.

use std::os::unix::net::UnixStream;

use crate::qmp::{QmpClient, QmpError};
use crate::vm::{VmError, VmInfo};

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
        if let Some(name) = named(&["ES", "CS", "SS", "DS", "FS", "GS", "LDT", "TR"]) {
            for (suffix, value) in ["", ".base", ".limit", ".flags"].iter().zip(fields()) {
                values.push((format!("{name}{suffix}"), value));
            }
            continue;
        }
        if let Some(name) = named(&["GDT", "IDT"]) {
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

/// `NT_PRSTATUS` notes, one per vCPU, for an x86_64 guest (real and protected mode name EAX..,
/// long mode RAX.. and R8..R15). The layout is the kernel's `struct elf_prstatus` for x86_64
/// (336 bytes, `pr_reg` at 112 in `user_regs_struct` order), as QEMU's own dump writes it;
/// fields QEMU did not print are zero.
pub fn x86_64_prstatus_notes(vcpus: &[VcpuRegisters]) -> Vec<u8> {
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
        notes.extend_from_slice(&crate::ram::views::elf_note("CORE", 1, &desc));
        // NT_PRSTATUS
    }
    notes
}

/// The `QEMU` notes of an x86_64 core, one per vCPU: QEMU's `QEMUCPUState` (version 1, 440
/// bytes: general registers, RIP, RFLAGS, the segments CS DS ES FS GS SS LDT TR and the tables
/// GDT IDT as selector/limit/flags/base, CR0-CR4, KERNEL_GS_BASE), as `dump-guest-memory`
/// writes it after the `NT_PRSTATUS` notes. Registers QEMU's monitor does not print (CR1,
/// KERNEL_GS_BASE) are zero.
pub fn x86_64_qemu_notes(vcpus: &[VcpuRegisters]) -> Vec<u8> {
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
        for segment in SEGMENTS {
            let field = |suffix: &str| vcpu.get(&format!("{segment}{suffix}")).unwrap_or(0);
            // the tables have no selector or flags: zero, as QEMU writes them
            desc.extend_from_slice(&(field("") as u32).to_le_bytes());
            desc.extend_from_slice(&(field(".limit") as u32).to_le_bytes());
            desc.extend_from_slice(&(field(".flags") as u32).to_le_bytes());
            desc.extend_from_slice(&0u32.to_le_bytes()); // pad
            desc.extend_from_slice(&field(".base").to_le_bytes());
        }
        for cr in ["CR0", "CR1", "CR2", "CR3", "CR4"] {
            desc.extend_from_slice(&vcpu.get(cr).unwrap_or(0).to_le_bytes());
        }
        desc.extend_from_slice(&0u64.to_le_bytes()); // kernel_gs_base: not printed by the monitor
        debug_assert_eq!(desc.len(), SIZE as usize);
        notes.extend_from_slice(&crate::ram::views::elf_note("QEMU", 0, &desc));
    }
    notes
}

/// Every vCPU's registers now, asked through `ask` (a QMP exchange of the caller's: a fresh
/// connection or a cached one).
///
/// # Errors
///
/// What `ask` returns.
pub fn vcpu_registers(
    ask: impl FnOnce(&dyn Fn(&mut QmpClient<UnixStream>) -> Result<String, QmpError>) -> Result<String, VmError>,
) -> Result<Vec<VcpuRegisters>, VmError> {
    ask(&|qmp| qmp.human_monitor_command("info registers -a")).map(|text| parse_info_registers(&text))
}

/// The notes of the vCPUs as QEMU reports them now, for x86_64 guests: every vCPU's
/// `NT_PRSTATUS`, then every vCPU's `QEMU` note, in the order of QEMU's own dump (the register
/// text of other architectures is not turned into notes: their cores carry none). A monitor
/// that fails gives none, with a log line.
pub fn vcpu_notes_now(
    info: &VmInfo,
    ask: impl FnOnce(&dyn Fn(&mut QmpClient<UnixStream>) -> Result<String, QmpError>) -> Result<String, VmError>,
) -> Vec<u8> {
    if info.arch != "x86_64" {
        return Vec::new();
    }
    match vcpu_registers(ask) {
        Ok(vcpus) => [x86_64_prstatus_notes(&vcpus), x86_64_qemu_notes(&vcpus)].concat(),
        Err(err) => {
            log::warn!("no vCPU registers in the core of VM {}: {}", info.name, crate::error::chain(&err));
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_VCPUS: &str = "CPU#0\nRAX=0000000000000001 RBX=0000000000000002 RCX=3 RDX=4\n\
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
    fn prstatus_notes_from_info_registers() {
        let notes = x86_64_prstatus_notes(&parse_info_registers(TWO_VCPUS));
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

    #[test]
    fn qemu_notes_carry_qemus_cpu_state() {
        let notes = x86_64_qemu_notes(&parse_info_registers(TWO_VCPUS));
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
