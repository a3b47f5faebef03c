//! Virtual addresses of RISC-V and AArch64 guests, through page tables built by hand in the
//! RAM of real QEMU guests (`virt` machines), translated as the architecture manuals say: the
//! command line's `read --virtual` and the mount's `cpus/<n>/` files.

use qemu_bridge_test_support as common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::{require_qemu, stderr, wait_until, HandStartedVm, TestMount, TestRunDir};
use qemu_bridge::Vm;

const MIB: u64 = 1 << 20;

/// A `virt` guest of `arch` with 256 MiB of RAM in a file of the test's, started paused.
fn virt_guest(run_dir: &TestRunDir, arch: &str) -> (HandStartedVm, std::path::PathBuf) {
    let binary = format!("qemu-system-{arch}");
    common::require_program(&binary);
    let ram_file = run_dir.qemu_output(&format!("{arch}.ram"));
    let mut args: Vec<String> = ["-M", "virt", "-m", "256M", "-S", "-machine", "memory-backend=m", "-object"]
        .map(String::from)
        .into_iter()
        .chain([format!("memory-backend-file,id=m,size=256M,share=on,mem-path={}", ram_file.display())])
        .collect();
    if arch == "aarch64" {
        // the machine's default CPU is a 32-bit Cortex-A15
        args.extend(["-cpu", "cortex-a57"].map(String::from));
    }
    if arch == "riscv64" {
        // no firmware: the reset vector jumps to the start of RAM, where the test puts its code
        args.extend(["-bios", "none"].map(String::from));
    }
    let vm = HandStartedVm::start_binary(&binary, run_dir, arch, |_| args);
    (vm, ram_file)
}

fn put(ram: &File, offset: u64, bytes: &[u8]) {
    ram.write_all_at(bytes, offset).unwrap();
}

fn read_virtual(run_dir: &TestRunDir, vm: &str, va: u64, len: usize, extra: &[&str]) -> std::process::Output {
    let (va, len) = (format!("{va:#x}"), len.to_string());
    let mut args = vec!["read", vm, va.as_str(), len.as_str(), "--virtual", "--raw"];
    args.extend_from_slice(extra);
    common::qemu_bridge(run_dir, &args)
}

fn hmp(run_dir: &TestRunDir, vm: &str, command: &str) -> String {
    let vm = Vm::existing(&run_dir.run_dir, vm).unwrap();
    vm.with_qmp(|qmp| qmp.human_monitor_command(command)).unwrap()
}

/// A RISC-V PTE for physical address `pa` with `flags` (V added).
fn riscv_pte(pa: u64, flags: u64) -> [u8; 8] {
    ((pa >> 12) << 10 | flags | 1).to_le_bytes()
}

/// A RISC-V hart writes satp (Sv39, root at 0x8010_0000) itself, in M-mode, where satp does
/// not translate its own fetches; the test builds the tables it names: a 4 KiB page, a 2 MiB
/// megapage, a 1 GiB gigapage, a table that points at itself and one outside RAM.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_riscv_satp_and_sv39_tables_translate_as_the_manual_says() {
    require_qemu();
    common::require_fuse();
    let run_dir = TestRunDir::new();
    let (_vm, ram_path) = virt_guest(&run_dir, "riscv64");
    let ram = std::fs::OpenOptions::new().write(true).open(&ram_path).unwrap();
    const RAM_BASE: u64 = 0x8000_0000;
    const ROOT: u64 = RAM_BASE + MIB;
    const LEVEL1: u64 = ROOT + 0x1000;
    const LEVEL0: u64 = ROOT + 0x2000;
    const PAGE: u64 = RAM_BASE + 2 * MIB;
    let satp: u64 = 8 << 60 | ROOT >> 12;
    // auipc t0, 0; ld t0, 16(t0); csrw satp, t0; j . ; then satp's value
    let mut code = Vec::new();
    for instruction in [0x0000_0297u32, 0x0102_b283, 0x1802_9073, 0x0000_006f] {
        code.extend_from_slice(&instruction.to_le_bytes());
    }
    code.extend_from_slice(&satp.to_le_bytes());
    put(&ram, 0, &code);
    let (r, w, x, u) = (1 << 1, 1 << 2, 1 << 3, 1 << 4);
    let entry = |table: u64, index: u64| table - RAM_BASE + index * 8;
    put(&ram, entry(ROOT, 0), &riscv_pte(LEVEL1, 0));
    put(&ram, entry(LEVEL1, 0), &riscv_pte(LEVEL0, 0));
    put(&ram, entry(LEVEL0, 1), &riscv_pte(PAGE, r | w | x | u)); // 0x1000
    put(&ram, entry(LEVEL1, 1), &riscv_pte(PAGE, r)); // 0x20_0000: a megapage, read-only
    put(&ram, entry(ROOT, 1), &riscv_pte(RAM_BASE, r | x)); // 0x4000_0000: a gigapage
    put(&ram, entry(ROOT, 2), &riscv_pte(ROOT, 0)); // 0x8000_0000: the root again
    put(&ram, entry(ROOT, 3), &riscv_pte(0x40_0000_0000, 0)); // 0xc000_0000: a table outside RAM
    put(&ram, PAGE - RAM_BASE, b"RISCV-PAGE");
    let vm = Vm::existing(&run_dir.run_dir, "riscv64").unwrap();
    vm.with_qmp(|qmp| qmp.cont()).unwrap();
    // the guest's own write of satp, as QEMU's monitor shows it
    assert!(
        wait_until(Duration::from_secs(30), || hmp(&run_dir, "riscv64", "info registers")
            .contains(&format!("satp     {satp:016x}"))),
        "{}",
        hmp(&run_dir, "riscv64", "info registers")
    );
    vm.with_qmp(|qmp| qmp.stop()).unwrap();

    for va in [0x1000, 0x20_0000, 0x4000_0000 + 2 * MIB] {
        let output = read_virtual(&run_dir, "riscv64", va, 10, &[]);
        assert_eq!(output.stdout, b"RISCV-PAGE", "{va:#x}: {}", stderr(&output));
    }
    common::assert_clean_failure(&read_virtual(&run_dir, "riscv64", 0x2000, 4, &[]), "not mapped");
    common::assert_clean_failure(
        &read_virtual(&run_dir, "riscv64", 0xc000_0000, 4, &[]),
        "cannot read the level-1",
    );
    // 39 bits: an address with bit 38 set but not sign-extended is no address
    common::assert_clean_failure(&read_virtual(&run_dir, "riscv64", 1 << 38, 4, &[]), "not canonical");

    let mount = TestMount::new(&run_dir, &[]);
    let cpu = mount.path("riscv64/cpus/0");
    let json = common::read_json(&cpu.join("registers"));
    assert_eq!(json["registers"]["satp"], format!("{satp:#x}"));
    let vcpus = vm.vcpu_registers().unwrap();
    let hart = &vcpus[0];
    // spinning on `j .` at 0x8000_000c, with the root's address loaded into t0 (x5)
    assert_eq!(
        (hart.get("satp"), hart.pc(&qemu_bridge::guest::Arch::Riscv64), hart.get("x5")),
        (Some(satp), Some(RAM_BASE + 12), Some(satp))
    );
    assert_eq!(json["paging"]["mode"], "Sv39");
    assert_eq!(json["paging"]["root"], format!("{ROOT:#x}"));
    let mappings = std::fs::read_to_string(cpu.join("mappings")).unwrap();
    let lines: Vec<&str> = mappings.lines().collect();
    for expected in [
        "0000000000001000-0000000000002000 0000000080200000 4K rwx user",
        "0000000000200000-0000000000400000 0000000080200000 2M r-- kernel",
        "0000000040000000-0000000080000000 0000000080000000 1G r-x kernel",
    ] {
        assert!(lines.contains(&expected), "{expected} missing from:\n{mappings}");
    }
    assert!(lines.iter().any(|line| line.starts_with("error: cannot read the level-1 entry")), "{mappings}");
    assert!(lines.len() < 100, "the loop through the root is walked once: {}", lines.len());
    let memory = File::open(cpu.join("memory")).unwrap();
    assert_eq!(memory.metadata().unwrap().len(), 1 << 39);
    let mut bytes = [0u8; 10];
    memory.read_exact_at(&mut bytes, 0x1000).unwrap();
    assert_eq!(&bytes, b"RISCV-PAGE");
}

/// An AArch64 `virt` guest, paused: QEMU's monitor prints no TTBR, so the table base is given
/// (`--root`); levels 0-3 with 4 KiB pages, a 2 MiB block, a 1 GiB block, a level-0 block (a
/// reserved encoding) and a table whose APTable bits forbid writes below.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_aarch64_tables_translate_from_a_given_root() {
    require_qemu();
    common::require_fuse();
    let run_dir = TestRunDir::new();
    let (_vm, ram_path) = virt_guest(&run_dir, "aarch64");
    let ram = std::fs::OpenOptions::new().write(true).open(&ram_path).unwrap();
    const RAM_BASE: u64 = 0x4000_0000;
    const L0: u64 = RAM_BASE + MIB;
    const L1: u64 = L0 + 0x1000;
    const L2: u64 = L0 + 0x2000;
    const L3: u64 = L0 + 0x3000;
    const PAGE: u64 = RAM_BASE + 4 * MIB;
    let (table, block, page) = (0b11u64, 0b01u64, 0b11u64);
    let entry = |at: u64, index: u64, value: u64| put(&ram, at - RAM_BASE + index * 8, &value.to_le_bytes());
    entry(L0, 0, L1 | table);
    entry(L1, 0, L2 | table);
    entry(L2, 0, L3 | table);
    entry(L3, 1, PAGE | page | 1 << 6); // 0x1000: EL0 may read and write
    entry(L2, 1, PAGE & !(2 * MIB - 1) | block | 1 << 7); // 0x20_0000: 2 MiB, read-only
    entry(L1, 1, RAM_BASE | block | 1 << 53); // 0x4000_0000: 1 GiB at the start of RAM, PXN
    entry(L0, 1, RAM_BASE | block); // 1 << 39: a level-0 block is reserved with 4 KiB pages
    put(&ram, PAGE - RAM_BASE, b"ARM64-PAGE");
    let root = format!("{L0:#x}");
    let rooted: &[&str] = &["--root", &root];
    for va in [0x1000, 0x20_0000 + (PAGE & (2 * MIB - 1)), 0x4000_0000 + 4 * MIB] {
        let output = read_virtual(&run_dir, "aarch64", va, 10, rooted);
        assert_eq!(output.stdout, b"ARM64-PAGE", "{va:#x}: {}", stderr(&output));
    }
    // the upper half (TTBR1_EL1's) walks the same way from the root given for it
    let output = read_virtual(&run_dir, "aarch64", 0xffff_0000_0000_1000, 10, rooted);
    assert_eq!(output.stdout, b"ARM64-PAGE", "{}", stderr(&output));
    common::assert_clean_failure(&read_virtual(&run_dir, "aarch64", 1 << 39, 4, rooted), "reserved encoding");
    common::assert_clean_failure(&read_virtual(&run_dir, "aarch64", 0x2000, 4, rooted), "not mapped");
    // without a root, the error says what is missing and how to give it
    common::assert_clean_failure(&read_virtual(&run_dir, "aarch64", 0x1000, 4, &[]), "TTBR0_EL1");

    // the mount: registers, as QEMU prints them; no page-table files without a root
    let mount = TestMount::new(&run_dir, &[]);
    let cpu = mount.path("aarch64/cpus/0");
    let json = common::read_json(&cpu.join("registers"));
    let text = hmp(&run_dir, "aarch64", "info registers");
    let pc = common::hmp_register(&text, "PC");
    assert_eq!(json["registers"]["PC"], format!("{pc:#x}"));
    assert!(json["paging_error"].as_str().unwrap().contains("TTBR"), "{json}");
    let vm = Vm::existing(&run_dir.run_dir, "aarch64").unwrap();
    let vcpus = vm.vcpu_registers().unwrap();
    assert_eq!(vcpus[0].pc(&qemu_bridge::guest::Arch::Aarch64), Some(pc));
    assert!(!Path::new(&cpu.join("mappings")).exists() && !cpu.join("memory").exists());
}
