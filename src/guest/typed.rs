//! vCPU registers by architecture, with names the manuals use: what
//! [`VcpuRegisters`] holds as QEMU printed it, taken apart for callers
//! that want a field rather than a lookup by name. Registers the mode does not have (R8-R15 of
//! a 32-bit x86 vCPU) are zero; the ones a sample cannot do without are errors when missing.

use super::registers::VcpuRegisters;

/// A register every sample of the architecture has was missing from QEMU's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistersError {
    /// The register, as QEMU names it.
    #[error("QEMU's registers of this {arch} vCPU lack {name}")]
    Missing {
        /// The architecture.
        arch: &'static str,
        /// The register.
        name: &'static str,
    },
    /// No typed registers for this architecture.
    #[error("no typed registers for {0} vCPUs")]
    Architecture(String),
}

/// An x86 segment register as the vCPU caches it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    /// The selector.
    pub selector: u16,
    /// The base address.
    pub base: u64,
    /// The limit.
    pub limit: u32,
    /// The descriptor's attribute bits, as QEMU keeps them.
    pub flags: u32,
}

/// An x86 descriptor table register (GDTR, IDTR).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DescriptorTable {
    /// The table's linear address.
    pub base: u64,
    /// Its limit.
    pub limit: u32,
}

/// An x86_64 vCPU (in real and protected mode the 32-bit registers, zero-extended).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct X86_64Registers {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    /// R8..R15
    pub r: [u64; 8],
    pub rip: u64,
    pub rflags: u64,
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub ldt: Segment,
    pub tr: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

/// A RISC-V hart (the CSRs QEMU prints that say where it is and how it translates).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Riscv64Registers {
    pub pc: u64,
    /// x0..x31 (x0 is zero)
    pub x: [u64; 32],
    pub satp: u64,
    pub mstatus: u64,
    pub mepc: u64,
    pub mcause: u64,
    pub mtvec: u64,
    pub sepc: u64,
    pub scause: u64,
    pub stvec: u64,
}

/// An AArch64 vCPU as QEMU's monitor prints it: no system registers (TTBRn_EL1, TCR_EL1,
/// SCTLR_EL1 are not in its text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Aarch64Registers {
    pub pc: u64,
    /// X0..X30
    pub x: [u64; 31],
    pub sp: u64,
    pub pstate: u64,
}

/// One vCPU's registers, by architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registers {
    /// x86_64
    X86_64(Box<X86_64Registers>),
    /// riscv64
    Riscv64(Box<Riscv64Registers>),
    /// aarch64
    Aarch64(Box<Aarch64Registers>),
}

impl Registers {
    /// The registers of a vCPU of architecture `arch` (as QEMU names it) from QEMU's text.
    ///
    /// # Errors
    ///
    /// [`RegistersError::Missing`] when the program counter or (x86_64) the flags, CS or a
    /// control register the paging needs is missing; [`RegistersError::Architecture`] for
    /// another architecture.
    pub fn from_vcpu(arch: &str, vcpu: &VcpuRegisters) -> Result<Self, RegistersError> {
        match arch {
            "x86_64" => x86_64(vcpu).map(|registers| Registers::X86_64(Box::new(registers))),
            "riscv64" => riscv64(vcpu).map(|registers| Registers::Riscv64(Box::new(registers))),
            "aarch64" => aarch64(vcpu).map(|registers| Registers::Aarch64(Box::new(registers))),
            other => Err(RegistersError::Architecture(other.to_string())),
        }
    }

    /// The program counter: RIP, pc or PC.
    pub fn pc(&self) -> u64 {
        match self {
            Registers::X86_64(registers) => registers.rip,
            Registers::Riscv64(registers) => registers.pc,
            Registers::Aarch64(registers) => registers.pc,
        }
    }
}

fn required(arch: &'static str, vcpu: &VcpuRegisters, names: &[&'static str]) -> Result<u64, RegistersError> {
    vcpu.first_of(names).ok_or(RegistersError::Missing { arch, name: names[0] })
}

fn x86_64(vcpu: &VcpuRegisters) -> Result<X86_64Registers, RegistersError> {
    let get = |names: &[&str]| vcpu.first_of(names).unwrap_or(0);
    let need = |names: &[&'static str]| required("x86_64", vcpu, names);
    let segment = |name: &str| Segment {
        selector: vcpu.get(name).unwrap_or(0) as u16,
        base: vcpu.get(&format!("{name}.base")).unwrap_or(0),
        limit: vcpu.get(&format!("{name}.limit")).unwrap_or(0) as u32,
        flags: vcpu.get(&format!("{name}.flags")).unwrap_or(0) as u32,
    };
    let table = |name: &str| DescriptorTable {
        base: vcpu.get(&format!("{name}.base")).unwrap_or(0),
        limit: vcpu.get(&format!("{name}.limit")).unwrap_or(0) as u32,
    };
    need(&["CS"])?;
    Ok(X86_64Registers {
        rax: get(&["RAX", "EAX"]),
        rbx: get(&["RBX", "EBX"]),
        rcx: get(&["RCX", "ECX"]),
        rdx: get(&["RDX", "EDX"]),
        rsi: get(&["RSI", "ESI"]),
        rdi: get(&["RDI", "EDI"]),
        rbp: get(&["RBP", "EBP"]),
        rsp: get(&["RSP", "ESP"]),
        r: ["R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15"].map(|name| get(&[name])),
        rip: need(&["RIP", "EIP"])?,
        rflags: need(&["RFL", "EFL"])?,
        cs: segment("CS"),
        ds: segment("DS"),
        es: segment("ES"),
        fs: segment("FS"),
        gs: segment("GS"),
        ss: segment("SS"),
        ldt: segment("LDT"),
        tr: segment("TR"),
        gdt: table("GDT"),
        idt: table("IDT"),
        cr0: need(&["CR0"])?,
        cr2: get(&["CR2"]),
        cr3: need(&["CR3"])?,
        cr4: need(&["CR4"])?,
        efer: get(&["EFER"]),
    })
}

fn riscv64(vcpu: &VcpuRegisters) -> Result<Riscv64Registers, RegistersError> {
    let get = |name: &str| vcpu.get(name).unwrap_or(0);
    let mut x = [0u64; 32];
    for (index, value) in x.iter_mut().enumerate().skip(1) {
        *value = get(&format!("x{index}"));
    }
    Ok(Riscv64Registers {
        pc: required("riscv64", vcpu, &["pc"])?,
        x,
        satp: required("riscv64", vcpu, &["satp"])?,
        mstatus: get("mstatus"),
        mepc: get("mepc"),
        mcause: get("mcause"),
        mtvec: get("mtvec"),
        sepc: get("sepc"),
        scause: get("scause"),
        stvec: get("stvec"),
    })
}

fn aarch64(vcpu: &VcpuRegisters) -> Result<Aarch64Registers, RegistersError> {
    let mut x = [0u64; 31];
    for (index, value) in x.iter_mut().enumerate() {
        *value = vcpu.get(&format!("X{index:02}")).unwrap_or(0);
    }
    Ok(Aarch64Registers {
        pc: required("aarch64", vcpu, &["PC"])?,
        x,
        sp: vcpu.get("SP").unwrap_or(0),
        pstate: required("aarch64", vcpu, &["PSTATE"])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::parse_info_registers;

    #[test]
    fn x86_64_fields_from_qemus_text() {
        let vcpus = parse_info_registers(
            "CPU#0\nRAX=0000000000000001 RBX=0000000000000002\nR8 =0000000000000008 R15=000000000000000f\n\
             RIP=ffffffff81000010 RFL=00000246 [---Z-P-] CPL=0\n\
             CS =0010 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]\n\
             TR =0040 fffffe0000003000 00004087 00008900 DPL=0 TSS64-avl\n\
             IDT=     fffffe0000000000 00000fff\n\
             CR0=80050033 CR2=0000000000000000 CR3=0000000001a0e000 CR4=003506f0\nEFER=0000000000000d01\n",
        );
        let Registers::X86_64(registers) = Registers::from_vcpu("x86_64", &vcpus[0]).unwrap() else {
            panic!()
        };
        assert_eq!((registers.rax, registers.rbx, registers.r[0], registers.r[7]), (1, 2, 8, 15));
        assert_eq!(
            (registers.rip, registers.rflags, registers.cr3, registers.efer),
            (0xffff_ffff_8100_0010, 0x246, 0x1a0_e000, 0xd01)
        );
        assert_eq!(registers.cs, Segment { selector: 0x10, base: 0, limit: 0xffff_ffff, flags: 0x00a0_9b00 });
        assert_eq!((registers.tr.selector, registers.tr.base), (0x40, 0xffff_fe00_0000_3000));
        assert_eq!(registers.idt, DescriptorTable { base: 0xffff_fe00_0000_0000, limit: 0xfff });
        let without_cr3 = parse_info_registers("CPU#0\nRIP=0 RFL=2\nCS =0000 0 0 0\nCR0=0 CR4=0\n");
        assert_eq!(
            Registers::from_vcpu("x86_64", &without_cr3[0]),
            Err(RegistersError::Missing { arch: "x86_64", name: "CR3" })
        );
    }

    #[test]
    fn riscv64_and_aarch64_fields() {
        let riscv = parse_info_registers(
            "CPU#0\n pc       0000000080000010\n satp     8000000000080100\n x1/ra    0000000000000001 x31/t6   000000000000001f\n",
        );
        let Registers::Riscv64(hart) = Registers::from_vcpu("riscv64", &riscv[0]).unwrap() else { panic!() };
        assert_eq!(
            (hart.pc, hart.satp, hart.x[0], hart.x[1], hart.x[31]),
            (0x8000_0010, 0x8000_0000_0008_0100, 0, 1, 31)
        );
        let arm = parse_info_registers("CPU#0\nPC=0000000040000000 X00=0000000000000001 X30=000000000000001e\nSP=0000000040001000\nPSTATE=400003c5 -Z-- EL1h\n");
        let registers = Registers::from_vcpu("aarch64", &arm[0]).unwrap();
        assert_eq!(registers.pc(), 0x4000_0000);
        let Registers::Aarch64(arm) = registers else { panic!() };
        assert_eq!((arm.x[0], arm.x[30], arm.sp, arm.pstate), (1, 30, 0x4000_1000, 0x4000_03c5));
        assert!(matches!(Registers::from_vcpu("sparc64", &riscv[0]), Err(RegistersError::Architecture(_))));
    }
}
