//! End-to-end against a real Linux guest (Debian's cloud kernel + busybox, built by
//! scripts/build-guest.sh) and the boot-sector guests beside it.

use qemu_bridge_test_support as common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::linux::{
    boot_linux, boot_linux_with, debug_vmlinux, guest_dir, paused_kernel, paused_linux, Kernel,
};
use common::{require_qemu, wait_until, TestMount, TestRunDir, VmBuilder, MARKER, MARKER_ADDR};
use qemu_bridge::{Gva, RunState, Verdict, Vm};

/// The largest `n` of any `QEMU-BRIDGE-COUNTER:n` in `ram`.
fn max_counter(ram: &[u8]) -> u64 {
    let prefix = b"QEMU-BRIDGE-COUNTER:";
    ram.windows(prefix.len())
        .enumerate()
        .filter(|(_, window)| window == prefix)
        .filter_map(|(at, _)| {
            let digits: Vec<u8> = ram[at + prefix.len()..]
                .iter()
                .take(20)
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect();
            std::str::from_utf8(&digits).ok()?.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_linux_guest_seen_through_mount_and_library() {
    require_qemu();
    let run_dir = TestRunDir::new();
    let linux = boot_linux(&run_dir);
    let name = linux.launched.name().to_string();
    let mount = TestMount::new(&run_dir, &[]);
    let ram = mount.path(&format!("{name}/ram"));
    assert_eq!(std::fs::metadata(&ram).unwrap().len(), 128 << 20);

    // the marker with this boot's id, found by grep -a in the mounted ram
    let output = Command::new("grep").args(["-a", "-c", &linux.marker]).arg(&ram).output().unwrap();
    assert!(output.status.success(), "grep -a found no marker in {name}/ram");
    // ... and through the library, in a snapshot
    let vm = Vm::existing(&run_dir.run_dir, &name).unwrap();
    let (bridge, info) = vm.open_bridge().unwrap();
    assert_eq!(info.ram_size, 128 << 20);
    // paused while it is compared: a running kernel frees and reuses the buffers that hold
    // copies of the marker
    vm.with_qmp(|q| q.stop()).unwrap();
    let snapshot = vm.paused_snapshot(&bridge).unwrap();
    let at = find(&snapshot.data, linux.marker.as_bytes()).expect("marker in a paused snapshot");
    // read_into at that guest-physical address (all RAM is below 4 GiB at 128 MiB) agrees
    let mut again = vec![0u8; linux.marker.len()];
    bridge.read_into(at as u64, &mut again).unwrap();
    assert_eq!(again, linux.marker.as_bytes());
    vm.with_qmp(|q| q.cont()).unwrap();
    // the kernel's version banner
    let banner = find(&snapshot.data, b"Linux version 6.").expect("Linux version banner in RAM");
    let line: String = snapshot.data[banner..banner + 40].iter().map(|&b| b as char).collect();
    eprintln!("found: {line}");

    // the checksum file of a running Linux guest reports its verdict honestly
    let line = std::fs::read_to_string(mount.path(&format!("{name}/checksum"))).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((fields[0], fields[1].len()), ("sha256", 64), "{line}");
    assert!(["consistent", "torn"].contains(&fields[2]), "{line}");
    // paused, it is consistent on the first attempt and equals the file's sha256
    vm.with_qmp(|q| q.stop()).unwrap();
    let line = std::fs::read_to_string(mount.path(&format!("{name}/checksum"))).unwrap();
    let expected = qemu_bridge::ram::sha256_hex(&std::fs::read(&info.ram_path).unwrap());
    assert!(line.starts_with(&format!("sha256 {expected} consistent attempts=1")), "{line}");
    let checked = bridge.consistent_snapshot(4).unwrap();
    assert_eq!(checked.verdict, Verdict::Consistent);

    // lifecycle commands change what status shows
    let status = || std::fs::read_to_string(mount.path(&format!("{name}/status"))).unwrap();
    assert_eq!(status(), "paused\n");
    // `verb NAME [TAG]` through the binary; its output
    let cli_with = |verb: &str, tag: Option<&str>| {
        let output = common::qemu_bridge(&run_dir, &[&[verb, name.as_str()], tag.as_slice()].concat());
        assert!(output.status.success(), "{verb}: {}", common::stderr(&output));
        common::stdout(&output).trim().to_string()
    };
    let cli = |verb: &str| cli_with(verb, None);
    assert_eq!(cli("resume"), "running");
    assert_eq!(status(), "running\n");
    assert_eq!(cli("pause"), "paused");
    assert_eq!(vm.status().unwrap().status, RunState::Paused);
    // save the booted guest (paused, so its RAM at save time is known exactly)
    let ram_digest = || qemu_bridge::ram::sha256_hex(&bridge.try_snapshot().unwrap());
    let booted = ram_digest();
    cli_with("save", Some("booted"));
    assert_eq!(cli("resume"), "running");
    // reset reboots the guest: a new boot id appears on the console and in RAM
    assert_eq!(cli("reset"), "running");
    let boots = || {
        std::fs::read_to_string(&linux.launched.serial)
            .unwrap_or_default()
            .matches("QEMU-BRIDGE-LINUX-MARKER:")
            .count()
    };
    assert!(wait_until(Duration::from_secs(180), || boots() >= 2));
    // restoring brings back the first boot's RAM, byte for byte, and the guest runs on from it
    assert_eq!(cli("pause"), "paused");
    assert_ne!(ram_digest(), booted);
    cli_with("restore", Some("booted"));
    assert_eq!(ram_digest(), booted);
    assert_eq!(cli("resume"), "running");
    // the workload writes ever larger counters: one beyond any in the restored RAM appears
    let highest = || max_counter(&std::fs::read(mount.path(&format!("{name}/ram"))).unwrap());
    let restored = highest();
    assert!(wait_until(Duration::from_secs(60), || highest() > restored), "the restored guest does not run");
}

/// `launch NAME --linux` with no directory boots the guest of the cache directory
/// (`$XDG_CACHE_HOME/qemu-bridge/linux`); a cache that cannot be built is an error naming it
/// (after the line saying it is being built).
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_launch_linux_without_a_directory_uses_the_cache() {
    require_qemu();
    let cache = tempfile::tempdir().unwrap();
    let cached = cache.path().join("qemu-bridge/linux");
    std::fs::create_dir_all(&cached).unwrap();
    for file in ["vmlinuz", "initrd.gz", ".complete"] {
        std::fs::copy(guest_dir().join(file), cached.join(file)).unwrap();
    }
    let run_dir = TestRunDir::new();
    let name = common::unique_name("cached");
    let launch = |cache: &Path| {
        Command::new(env!("CARGO_BIN_EXE_qemu-bridge"))
            .args(["launch", &name, "--linux", "--run-dir"])
            .arg(run_dir.path())
            .env("XDG_CACHE_HOME", cache)
            .output()
            .unwrap()
    };
    let output = launch(cache.path());
    let _guard = common::VmGuard::launched_by_cli(&run_dir, &name);
    assert!(output.status.success(), "{}", common::stderr(&output));
    assert!(common::stdout(&output).contains("QEMU-BRIDGE-LINUX-MARKER"), "{}", common::stdout(&output));
    let stopped = common::qemu_bridge(&run_dir, &["stop", &name]);
    assert!(stopped.status.success(), "{}", common::stderr(&stopped));
    // a cache that cannot be made (a file where the directory should be): one line, no VM
    let blocked = tempfile::tempdir().unwrap();
    std::fs::write(blocked.path().join("qemu-bridge"), b"not a directory").unwrap();
    let refused = launch(blocked.path());
    let text = common::stderr(&refused);
    assert!(!refused.status.success() && !text.contains("panicked"), "{text}");
    let last = text.lines().last().unwrap_or("");
    assert!(last.starts_with("qemu-bridge: error: building the Linux guest in"), "{text}");
    assert!(!run_dir.path().join(format!("{name}.qmp")).exists());
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_multi_vm_linux_and_two_small_guests() {
    require_qemu();
    let run_dir = TestRunDir::new();
    let linux = boot_linux(&run_dir);
    let small: Vec<_> = (0..2).map(|i| VmBuilder::new(&format!("small{i}"), &run_dir).launch()).collect();
    for vm in &small {
        vm.wait_for_marker();
    }
    let mount = TestMount::new(&run_dir, &[]);
    let mut names: Vec<String> = small.iter().map(|vm| vm.name().to_string()).collect();
    names.push(linux.launched.name().to_string());
    names.sort();
    assert_eq!(mount.ls(), names);
    // all three read at the same time, each directory serving only its own VM
    std::thread::scope(|scope| {
        let linux_ram = mount.path(&format!("{}/ram", linux.launched.name()));
        let marker = linux.marker.clone();
        let linux_reader = scope.spawn(move || {
            let output = Command::new("grep").args(["-a", "-c", &marker]).arg(&linux_ram).output().unwrap();
            output.status.success()
        });
        let small_readers: Vec<_> = small
            .iter()
            .map(|vm| {
                let path = mount.path(&format!("{}/ram", vm.name()));
                let marker = linux.marker.clone();
                scope.spawn(move || {
                    let whole = std::fs::read(&path).unwrap();
                    assert_eq!(whole.len(), 64 << 20);
                    let mut at = vec![0u8; MARKER.len()];
                    File::open(&path).unwrap().read_exact_at(&mut at, MARKER_ADDR).unwrap();
                    // its own marker, and nothing of the Linux guest
                    at == MARKER && find(&whole, marker.as_bytes()).is_none()
                })
            })
            .collect();
        assert!(linux_reader.join().unwrap(), "the Linux directory lacks its marker");
        for reader in small_readers {
            assert!(reader.join().unwrap(), "a small VM's directory served someone else's bytes");
        }
    });
}

/// Volatility 3 reads `core` and `physical` of a Linux guest whose RAM crosses the PCI hole (3
/// GiB on q35: 2 GiB below, 1 GiB above 4 GiB, where physical KASLR may put the kernel): its
/// `banners.Banners` plugin finds the kernel's version banner in both, at an address that is
/// guest-physical, with no symbol files.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_volatility_reads_core_and_physical() {
    require_qemu();
    common::require_program("vol");
    let run_dir = TestRunDir::new();
    let linux = boot_linux_with(&run_dir, 3 << 30, &[]);
    let name = linux.launched.name().to_string();
    Vm::existing(&run_dir.run_dir, &name).unwrap().with_qmp(|qmp| qmp.stop()).unwrap();
    let mount = TestMount::new(&run_dir, &[]);
    for file in ["core", "physical"] {
        let path = mount.path(&format!("{name}/{file}"));
        let output = Command::new("vol")
            .args(["-q", "-r", "csv", "-f"])
            .arg(&path)
            .arg("banners.Banners")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "vol on {file}: {text}{}", String::from_utf8_lossy(&output.stderr));
        let line = text
            .lines()
            .find(|line| line.contains("Linux version"))
            .unwrap_or_else(|| panic!("no banner in {file}: {text}"));
        eprintln!("{file}: {line}");
        // the offset Volatility reports is guest-physical: the banner is there in `physical`
        let offset = line
            .split(',')
            .find_map(|field| field.trim().strip_prefix("0x"))
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .unwrap();
        let mut bytes = [0u8; 13];
        File::open(mount.path(&format!("{name}/physical")))
            .unwrap()
            .read_exact_at(&mut bytes, offset)
            .unwrap();
        assert_eq!(&bytes, b"Linux version", "{file}: at {offset:#x}");
    }
}

/// `core` carries the vCPUs' registers as `NT_PRSTATUS` and `QEMU` notes, equal to those of
/// QEMU's own `dump-guest-memory` of the same paused guest (in long mode: the Linux guest).
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_core_registers_equal_qemus_dump() {
    require_qemu();
    common::require_program("readelf");
    let run_dir = TestRunDir::new();
    let (linux, vm) = paused_linux(&run_dir, &[]);
    let name = linux.launched.name().to_string();
    let dump = run_dir.qemu_output("linux.core");
    common::qemu_dump(&vm, &dump);
    let mount = TestMount::new(&run_dir, &[]);
    let core = mount.path(&format!("{name}/core"));
    let ours = common::prstatus_notes(&core);
    let qemus = common::prstatus_notes(&dump);
    assert_eq!(ours.len(), 1, "one note per vCPU");
    assert_eq!(qemus.len(), 1);
    let reg = |desc: &[u8], index: usize| {
        u64::from_le_bytes(desc[112 + index * 8..120 + index * 8].try_into().unwrap())
    };
    // rbx rax rcx rdx rsi rdi rip cs rflags rsp ss (user_regs_struct indexes)
    for (index, register) in [
        (7, "r10"),
        (8, "r9"),
        (9, "r8"),
        (5, "rbx"),
        (10, "rax"),
        (11, "rcx"),
        (12, "rdx"),
        (13, "rsi"),
        (14, "rdi"),
        (16, "rip"),
        (17, "cs"),
        (18, "rflags"),
        (19, "rsp"),
        (20, "ss"),
    ] {
        assert_eq!(reg(&ours[0], index), reg(&qemus[0], index), "{register}");
    }
    // not vacuous: a guest paused in long mode, in the kernel (CS 0x10) or in busybox (CS 0x33)
    assert!(
        reg(&ours[0], 16) != 0 && [0x10, 0x33].contains(&reg(&ours[0], 17)),
        "rip {:#x} cs {:#x}",
        reg(&ours[0], 16),
        reg(&ours[0], 17)
    );
    // the QEMU note (QEMUCPUState: registers, segments, GDT/IDT, CR0-CR4) as QEMU writes it,
    // but for its last field, KERNEL_GS_BASE, which QEMU's monitor does not print
    let (ours, qemus) = (common::elf_notes(&core, b"QEMU", 0), common::elf_notes(&dump, b"QEMU", 0));
    assert_eq!((ours.len(), qemus.len()), (1, 1), "one QEMU note per vCPU");
    assert_eq!(ours[0].len(), qemus[0].len(), "QEMUCPUState size");
    let state = ours[0].len() - 8;
    assert_eq!(ours[0][..state], qemus[0][..state], "QEMUCPUState");
    let idt_base = 8 + 18 * 8 + 9 * 24 + 16;
    assert_ne!(ours[0][idt_base..idt_base + 8], [0; 8], "the IDT base crash looks for");
    let readelf = Command::new("readelf").arg("-n").arg(&core).output().unwrap();
    assert!(
        String::from_utf8_lossy(&readelf.stdout).contains("NT_PRSTATUS"),
        "{}",
        String::from_utf8_lossy(&readelf.stdout)
    );
}

/// QEMU's own view of `len` bytes at virtual address `va` (HMP `x`, through the vCPU's page
/// tables).
fn qemu_virtual_bytes(vm: &Vm, va: u64, len: usize) -> Vec<u8> {
    let text = vm.with_qmp(|qmp| qmp.human_monitor_command(&format!("x /{len}xb {va:#x}"))).unwrap();
    let bytes: Vec<u8> = text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(bytes.len(), len, "{text}");
    bytes
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_read_virtual_equals_qemus_own_translation() {
    require_qemu();
    let run_dir = TestRunDir::new();
    let (linux, vm) = paused_linux(&run_dir, &[]);
    let name = linux.launched.name().to_string();
    let vcpus = vm.vcpu_registers().unwrap();
    let (rip, rsp) = (vcpus[0].get("RIP").unwrap(), vcpus[0].get("RSP").unwrap());
    let ours = |va: u64, len: usize, extra: &[&str]| {
        let (va, len) = (format!("{va:#x}"), len.to_string());
        let mut args = vec!["read", name.as_str(), va.as_str(), len.as_str(), "--virtual", "--raw"];
        args.extend_from_slice(extra);
        common::qemu_bridge(&run_dir, &args)
    };
    // the code the vCPU runs, its stack, and a read that crosses into the next page of the
    // kernel's text (where KASLR put it: the vCPU may be paused in a process, whose next page
    // of code need not be mapped)
    let (bridge, _) = vm.open_bridge().unwrap();
    let vmcoreinfo = qemu_bridge::guest::find_vmcoreinfo(bridge.mapping()).unwrap().unwrap();
    let kaslr = u64::from_str_radix(vmcoreinfo.get("KERNELOFFSET").unwrap(), 16).unwrap();
    let page_end = 0xffff_ffff_8100_0000u64 + kaslr + 0x1000 - 8;
    for (va, len) in [(rip, 64), (rsp, 64), (page_end, 16)] {
        let output = ours(va, len, &[]);
        assert!(output.status.success(), "{va:#x}: {}", common::stderr(&output));
        assert_eq!(output.stdout, qemu_virtual_bytes(&vm, va, len), "{va:#x}: QEMU reads other bytes");
    }
    // the vCPU's own page tables named as --root give the same bytes
    let cr3 = vcpus[0].get("CR3").unwrap() & 0x000f_ffff_ffff_f000;
    let rooted = ours(rip, 64, &["--root", &format!("{cr3:#x}"), "--cpu", "0"]);
    assert_eq!(rooted.stdout, qemu_virtual_bytes(&vm, rip, 64));
    // what is not mapped, and a vCPU that does not exist, are clean errors
    common::assert_clean_failure(&ours(0x1000, 16, &[]), "not mapped");
    common::assert_clean_failure(&ours(rip, 16, &["--cpu", "7"]), "no vCPU 7");
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_read_virtual_refuses_a_guest_without_paging() {
    let (run_dir, vm) = common::booted_vm("realmode");
    let output = common::qemu_bridge(&run_dir, &["read", vm.name(), "0x7c00", "16", "--virtual"]);
    common::assert_clean_failure(&output, "paging");
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_vmcoreinfo_is_found_in_guest_memory() {
    require_qemu();
    common::require_fuse();
    let run_dir = TestRunDir::new();
    let linux = boot_linux(&run_dir);
    let name = linux.launched.name().to_string();
    // the guest's own word for its release, on its console (the line after the marker)
    let mut release = String::new();
    let printed = wait_until(Duration::from_secs(60), || {
        let serial = std::fs::read_to_string(&linux.launched.serial).unwrap_or_default();
        let line = serial.lines().find_map(|line| line.trim().strip_prefix("qemu-bridge guest up: "));
        line.map(|line| release = line.to_string()).is_some()
    });
    assert!(printed, "the guest printed no release");
    let mount = TestMount::new(&run_dir, &[]);
    let text = std::fs::read_to_string(mount.path(&format!("{name}/vmcoreinfo"))).unwrap();
    let value = |key: &str| text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('='));
    assert_eq!(value("OSRELEASE"), Some(release.as_str()), "{text}");
    assert_eq!(value("PAGESIZE"), Some("4096"));
    // a KASLR kernel says where it is, and where its structures are
    assert!(value("KERNELOFFSET").is_some_and(|offset| u64::from_str_radix(offset, 16).is_ok()), "{text}");
    assert!(value("SYMBOL(init_uts_ns)").is_some(), "{text}");
    assert!(text.lines().count() > 50, "{text}");
    // read twice: the second comes from the page found the first time, and says the same
    assert_eq!(std::fs::read_to_string(mount.path(&format!("{name}/vmcoreinfo"))).unwrap(), text);
}

/// drgn (the kernel developers' debugger) on our live `core` with no symbol file at all: the
/// VMCOREINFO note makes it a kernel core, kallsyms come from guest memory, and its own page
/// walk reads `linux_banner` at its KASLR address. Prints `ADDRESS HEXBYTES`.
const DRGN_BANNER: &str = r#"
from drgn import ProgramFlags
from drgn.helpers.linux.kallsyms import load_vmlinux_kallsyms
assert prog.flags & ProgramFlags.IS_LINUX_KERNEL, prog.flags
prog.register_symbol_finder("kallsyms", load_vmlinux_kallsyms(prog), enable_index=0)
banner = prog.symbol("linux_banner").address
print("BANNER", hex(banner), prog.read(banner, 64).hex())
"#;

/// What drgn with no symbol file reads of the kernel core `core` ([`DRGN_BANNER`]): the banner's
/// address (as drgn printed it) and its first 64 bytes.
fn drgn_banner(core: &Path) -> (String, Vec<u8>) {
    let output = Command::new("drgn")
        .arg("-c")
        .arg(core)
        .args(["--no-default-symbols", "-q", "-e", DRGN_BANNER])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "drgn: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    let line = stdout.lines().find_map(|line| line.strip_prefix("BANNER ")).expect("drgn printed the banner");
    let (address, hex) = line.split_once(' ').unwrap();
    let bytes =
        (0..hex.len()).step_by(2).map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap()).collect();
    (address.to_string(), bytes)
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_drgn_reads_the_live_core_with_no_symbol_files() {
    require_qemu();
    common::require_fuse();
    common::require_program("drgn");
    let run_dir = TestRunDir::new();
    let (linux, _vm) = paused_linux(&run_dir, &[]);
    let name = linux.launched.name().to_string();
    let mount = TestMount::new(&run_dir, &[]);
    let core = mount.path(&format!("{name}/core"));
    let (address, bytes) = drgn_banner(&core);
    let address = address.as_str();
    assert!(bytes.starts_with(b"Linux version 6."), "{}", String::from_utf8_lossy(&bytes));
    // our own translation of the same virtual address, through the vCPU's page tables, agrees
    let ours = common::qemu_bridge(&run_dir, &["read", &name, address, "64", "--virtual", "--raw"]);
    assert!(ours.status.success(), "{}", common::stderr(&ours));
    assert_eq!(ours.stdout, bytes, "read --virtual {address}");
}

/// One line of `cpus/<n>/mappings`: virtual start and end, guest-physical start, page size,
/// permissions, user or kernel.
struct MappingLine {
    start: u64,
    end: u128,
    gpa: u64,
    perms: String,
    mode: String,
}

fn mapping_lines(text: &str) -> Vec<MappingLine> {
    text.lines()
        .filter(|line| !line.starts_with("error: "))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.len(), 5, "{line}");
            let (start, end) = fields[0].split_once('-').unwrap();
            MappingLine {
                start: u64::from_str_radix(start, 16).unwrap(),
                end: u128::from_str_radix(end, 16).unwrap(),
                gpa: u64::from_str_radix(fields[1], 16).unwrap(),
                perms: fields[3].to_string(),
                mode: fields[4].to_string(),
            }
        })
        .collect()
}

/// The first hex word after `NAME=` and its padding (`IDT=     fffffe0000000000 00000fff`: the
/// table's base).
fn hmp_register_pair(text: &str, name: &str) -> u64 {
    let rest =
        text.lines().find_map(|line| line.trim().strip_prefix(name)?.trim_start().strip_prefix('=')).unwrap();
    u64::from_str_radix(rest.split_whitespace().next().unwrap(), 16).unwrap()
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_cpus_registers_mappings_and_memory_agree_with_qemu() {
    cpus_agree_with_qemu(&[], false);
}

/// The same with 5-level paging: a vCPU with LA57, which Debian's kernel turns on.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_cpus_of_a_guest_with_five_level_paging() {
    cpus_agree_with_qemu(&["-cpu", "qemu64,+la57"], true);
}

/// `cpus/0` of the paused Linux guest booted with `extra` QEMU arguments: registers as QEMU's
/// monitor has them, the kernel text mapped where KASLR put it and where QEMU's own translation
/// (gva2gpa) says, the address space as a file with seeks that walk the tables.
fn cpus_agree_with_qemu(extra: &[&str], five_level_expected: bool) {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsFd;
    require_qemu();
    common::require_fuse();
    let run_dir = TestRunDir::new();
    let (linux, vm) = paused_linux(&run_dir, extra);
    let name = linux.launched.name().to_string();
    let mount = TestMount::new(&run_dir, &[]);
    let cpus = mount.path(&format!("{name}/cpus"));
    let listed: Vec<String> = std::fs::read_dir(&cpus)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed, ["0"]);
    let cpu = cpus.join("0");
    let mut files: Vec<String> = std::fs::read_dir(&cpu)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["mappings", "memory", "registers"]);
    assert!(!cpus.join("1").exists(), "a vCPU the VM does not have");

    // registers: what QEMU's monitor says of the paused vCPU
    let json = common::read_json(&cpu.join("registers"));
    let hmp = vm.with_qmp(|qmp| qmp.human_monitor_command("info registers")).unwrap();
    for register in ["RIP", "RSP", "R8", "R9", "CR3", "CR4", "EFER"] {
        assert_eq!(
            json["registers"][register],
            format!("{:#x}", common::hmp_register(&hmp, register)),
            "{register}"
        );
    }
    let (rip, cr4) = (common::hmp_register(&hmp, "RIP"), common::hmp_register(&hmp, "CR4"));
    let vcpus = vm.vcpu_registers().unwrap();
    let vcpu = &vcpus[0];
    assert_eq!(
        (
            vcpu.pc(&qemu_bridge::guest::Arch::X86_64),
            vcpu.get("R8"),
            vcpu.get("CR3"),
            vcpu.segment("IDT").base
        ),
        (
            Some(rip),
            Some(common::hmp_register(&hmp, "R8")),
            Some(common::hmp_register(&hmp, "CR3")),
            hmp_register_pair(&hmp, "IDT")
        )
    );
    let five_level = cr4 & (1 << 12) != 0;
    assert_eq!(five_level, five_level_expected, "CR4 {cr4:#x}");
    assert_eq!(json["paging"]["mode"], if five_level { "5-level paging" } else { "4-level paging" });

    // mappings: the kernel text where KASLR put it, executable, kernel only, and where QEMU's
    // own translation (gva2gpa) says
    let vmcoreinfo = std::fs::read_to_string(mount.path(&format!("{name}/vmcoreinfo"))).unwrap();
    let kaslr = vmcoreinfo.lines().find_map(|line| line.strip_prefix("KERNELOFFSET=")).unwrap();
    let text_start = 0xffff_ffff_8100_0000u64 + u64::from_str_radix(kaslr, 16).unwrap();
    let mappings = mapping_lines(&std::fs::read_to_string(cpu.join("mappings")).unwrap());
    assert!(mappings.len() > 10, "{} mappings", mappings.len());
    for va in [text_start, rip] {
        let line = mappings
            .iter()
            .find(|line| line.start <= va && u128::from(va) < line.end)
            .unwrap_or_else(|| panic!("no mapping of {va:#x}"));
        // the kernel's text, and the code the vCPU was paused in: the kernel's or a process's
        let mode = if va >> 63 == 1 { "kernel" } else { "user" };
        assert!(line.perms.starts_with('r') && line.perms.ends_with('x') && line.mode == mode, "{va:#x}");
        let qemu = vm.with_qmp(|qmp| qmp.human_monitor_command(&format!("gva2gpa {va:#x}"))).unwrap();
        let qemu_gpa = u64::from_str_radix(qemu.trim().trim_start_matches("gpa: 0x"), 16).unwrap();
        assert_eq!(line.gpa + (va - line.start), qemu_gpa, "{va:#x}: {qemu}");
    }

    // memory: the address space as a file, offset = address without its sign extension
    let memory = File::open(cpu.join("memory")).unwrap();
    let bits = if five_level { 57 } else { 48 };
    assert_eq!(memory.metadata().unwrap().len(), 1u64 << bits);
    let offset = |va: u64| va & ((1u64 << bits) - 1);
    let mut code = vec![0u8; 64];
    memory.read_exact_at(&mut code, offset(rip)).unwrap();
    assert_eq!(code, qemu_virtual_bytes(&vm, rip, 64), "the code at RIP");
    // SEEK_DATA and SEEK_HOLE walk the page tables: the first mapping, and the end of its run
    let first = &mappings[0];
    let data = lseek(memory.as_fd(), 0, Whence::SeekData).unwrap() as u64;
    assert_eq!(data, offset(first.start));
    let mut run_end = first.end;
    for line in &mappings[1..] {
        if u128::from(line.start) != run_end {
            break;
        }
        run_end = line.end;
    }
    let hole = lseek(memory.as_fd(), data as i64, Whence::SeekHole).unwrap() as u64;
    assert_eq!(u128::from(hole), u128::from(offset(first.start)) + (run_end - u128::from(first.start)));
    // an unmapped page in the user half reads as zeros
    let mut zeros = vec![0xffu8; 16];
    memory.read_exact_at(&mut zeros, 0).unwrap();
    assert!(first.start == 0 || zeros.iter().all(|b| *b == 0));
}

/// crash's `sys` without the line that names the dump file.
fn crash_sys(vmlinux: &Path, core: &Path, commands: &Path) -> String {
    let output =
        Command::new("crash").arg("-s").arg("-i").arg(commands).arg(vmlinux).arg(core).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "crash on {}: {text}{}",
        core.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines().filter(|line| !line.trim_start().starts_with("DUMPFILE:")).collect::<Vec<_>>().join("\n")
}

/// With the kernel's debug symbols, the tools kernel developers use read our live `core` of a
/// KASLR guest that has no `-device vmcoreinfo`: crash's `sys` says what it says of QEMU's own
/// dump of the same paused VM, drgn reads the release and `init_task`, and `read --virtual` of
/// `linux_banner` (its address in the symbol table plus the KASLR offset) is the banner.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_crash_and_drgn_read_the_core_with_debug_symbols() {
    require_qemu();
    common::require_fuse();
    for program in ["crash", "drgn", "nm", "apt-get"] {
        common::require_program(program);
    }
    let run_dir = TestRunDir::new();
    let (linux, vm) = paused_linux(&run_dir, &[]);
    let name = linux.launched.name().to_string();
    let mount = TestMount::new(&run_dir, &[]);
    let vmcoreinfo = std::fs::read_to_string(mount.path(&format!("{name}/vmcoreinfo"))).unwrap();
    let value =
        |key: &str| vmcoreinfo.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('=')).unwrap();
    let release = value("OSRELEASE").to_string();
    let kaslr = u64::from_str_radix(value("KERNELOFFSET"), 16).unwrap();
    assert_ne!(kaslr, 0, "a KASLR kernel");
    let vmlinux = debug_vmlinux(&release);
    let core = mount.path(&format!("{name}/core"));

    // crash: the same `sys` from our core as from QEMU's dump
    let dump = run_dir.qemu_output("linux.core");
    common::qemu_dump(&vm, &dump);
    let commands = run_dir.path().join("crash.cmds");
    std::fs::write(&commands, "sys\nq\n").unwrap();
    let ours = crash_sys(&vmlinux, &core, &commands);
    let qemus = crash_sys(&vmlinux, &dump, &commands);
    assert!(ours.lines().any(|line| line.trim() == format!("RELEASE: {release}")), "{ours}");
    assert_eq!(ours, qemus, "crash says other things of our core than of QEMU's dump");

    // drgn with the symbols: the release and the first task
    let script = "print(prog['init_uts_ns'].name.release.string_().decode())\n\
                  print(prog['init_task'].comm.string_().decode())";
    let stdout = common::linux::drgn(&["-c".as_ref(), core.as_os_str()], &vmlinux, script);
    assert_eq!(stdout.lines().collect::<Vec<_>>(), [release.as_str(), "swapper/0"]);

    // read --virtual of linux_banner where the symbol table and KASLR put it
    let nm = Command::new("nm").arg(&vmlinux).output().unwrap();
    let symbols = String::from_utf8_lossy(&nm.stdout);
    let banner =
        symbols.lines().find_map(|line| line.strip_suffix(" D linux_banner")).expect("linux_banner in nm");
    let address = u64::from_str_radix(banner, 16).unwrap() + kaslr;
    let output =
        common::qemu_bridge(&run_dir, &["read", &name, &format!("{address:#x}"), "64", "--virtual", "--raw"]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    let expected = format!("Linux version {release} ");
    assert_eq!(
        &output.stdout[..expected.len()],
        expected.as_bytes(),
        "{:?}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// With `-device vmcoreinfo` and a guest that loads `qemu_fw_cfg`, the kernel hands QEMU its
/// vmcoreinfo note and QEMU's own dump carries it: our core's note (found in guest memory, not
/// asked of QEMU) holds the same text.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_vmcoreinfo_note_equals_qemus_with_device_vmcoreinfo() {
    require_qemu();
    common::require_fuse();
    let run_dir = TestRunDir::new();
    let (linux, vm) = paused_linux(&run_dir, &["-device", "vmcoreinfo"]);
    let name = linux.launched.name().to_string();
    let dump = run_dir.qemu_output("vmcoreinfo.core");
    common::qemu_dump(&vm, &dump);
    let qemus = common::elf_notes(&dump, b"VMCOREINFO", 0);
    assert_eq!(qemus.len(), 1, "QEMU's dump has the guest's note (qemu_fw_cfg loaded in the guest)");
    let mount = TestMount::new(&run_dir, &[]);
    let ours = common::elf_notes(&mount.path(&format!("{name}/core")), b"VMCOREINFO", 0);
    assert_eq!(ours.len(), 1);
    assert_eq!(String::from_utf8_lossy(&ours[0]), String::from_utf8_lossy(&qemus[0]));
    assert!(String::from_utf8_lossy(&ours[0]).contains("OSRELEASE="));
}

/// Page tables written by a hostile guest: every entry of the vCPU's PML4 points at the PML4
/// itself, so that at every level every entry is present and 2^36 pages are mapped. `mappings`
/// still ends, after its cap, with a line saying where it stopped; `memory`'s seeks answer; the
/// daemon does not keep what it built.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_page_tables_that_fan_out_cost_bounded_work() {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsFd;
    require_qemu();
    common::require_fuse();
    let run_dir = TestRunDir::new();
    let (linux, vm) = paused_linux(&run_dir, &[]);
    let name = linux.launched.name().to_string();
    let vcpus = vm.vcpu_registers().unwrap();
    let root = vcpus[0].get("CR3").unwrap() & 0x000f_ffff_ffff_f000;
    // below the PCI hole of a 128 MiB q35 guest, RAM file offset = guest-physical address
    let ram = std::fs::OpenOptions::new().write(true).open(&linux.launched.ram_path).unwrap();
    let table: Vec<u8> = (0..512).flat_map(|_| (root | 0b111).to_le_bytes()).collect();
    ram.write_all_at(&table, root).unwrap();

    let mount = TestMount::new(&run_dir, &[]);
    let cpu = mount.path(&format!("{name}/cpus/0"));
    let before = common::anon_rss_kib(mount.pid);
    let text = std::fs::read_to_string(cpu.join("mappings")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() <= (1 << 20) + 1, "{} lines", lines.len());
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("error: enumeration stopped at virtual address") && last.contains("limit"),
        "{last}"
    );
    assert_eq!(lines[0], format!("0000000000000000-0000000000001000 {root:016x} 4K rwx user"));
    drop(text);
    let memory = File::open(cpu.join("memory")).unwrap();
    assert_eq!(lseek(memory.as_fd(), 0, Whence::SeekData).unwrap(), 0);
    let hole = lseek(memory.as_fd(), 0, Whence::SeekHole).unwrap();
    assert!(hole > 0, "a seek moves on");
    let mut page = vec![0u8; 4096];
    memory.read_exact_at(&mut page, 0x1234_5000).unwrap();
    assert_eq!(page, table, "every page maps the PML4");
    drop(memory);
    // the dump of a million lines was the open's, and went with it
    let after = common::anon_rss_kib(mount.pid);
    assert!(after < before + 128 * 1024, "the daemon grew from {before} KiB to {after} KiB");
}

/// What the guest printed of its own kernel between QEMU-BRIDGE-ORACLE-BEGIN and -END: its
/// `/proc/version`, the count and SHA-256 of the kernel's own lines of `/proc/kallsyms`, its
/// `dmesg`.
struct GuestOracle {
    version: String,
    kallsyms: (usize, String),
    /// SHA-256 of /sys/kernel/btf/vmlinux
    btf: String,
    /// `ps -o pid,ppid,comm`: (pid, ppid, comm)
    ps: Vec<(i32, i32, String)>,
    dmesg: Vec<String>,
    /// `/proc/modules`
    modules: String,
    /// The pid of the guest's own process (qb-sleeper), and its `/proc/<pid>/maps`, `status`,
    /// and `cmdline` and `environ` in hex
    sleeper: i32,
    maps: String,
    status: Vec<String>,
    cmdline: String,
    environ: String,
}

fn guest_oracle(linux: &common::linux::LinuxVm) -> GuestOracle {
    oracle_of(&linux.launched.serial)
}

/// What the guest whose console is in `serial` printed of its own kernel.
fn oracle_of(serial_path: &Path) -> GuestOracle {
    let mut serial = String::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            serial = std::fs::read_to_string(serial_path).unwrap_or_default();
            serial.contains("QEMU-BRIDGE-ORACLE-END")
        }),
        "the guest printed no view of its own: {serial}"
    );
    let lines: Vec<&str> = serial.lines().map(|line| line.trim_end_matches('\r')).collect();
    let field = |prefix: &str| lines.iter().find_map(|line| line.strip_prefix(prefix)).unwrap().to_string();
    let kallsyms = field("kallsyms: ");
    let (count, hash) = kallsyms.split_once(' ').unwrap();
    GuestOracle {
        version: field("version: "),
        kallsyms: (count.parse().unwrap(), hash.to_string()),
        btf: field("btf: "),
        ps: lines
            .iter()
            .filter_map(|line| line.strip_prefix("ps: "))
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let (pid, ppid) = (words.next()?.parse().ok()?, words.next()?.parse().ok()?);
                Some((
                    pid,
                    ppid,
                    words.collect::<Vec<_>>().join(" ").trim_matches(|c| c == '[' || c == ']').to_string(),
                ))
            })
            .collect(),
        dmesg: lines.iter().filter_map(|line| line.strip_prefix("dmesg: ")).map(String::from).collect(),
        modules: lines
            .iter()
            .filter_map(|line| line.strip_prefix("modules: "))
            .map(|line| format!("{line}\n"))
            .collect(),
        sleeper: field("sleeper: ").parse().unwrap(),
        maps: lines
            .iter()
            .filter_map(|line| line.strip_prefix("maps: "))
            .map(|line| format!("{line}\n"))
            .collect(),
        status: lines.iter().filter_map(|line| line.strip_prefix("status: ")).map(String::from).collect(),
        cmdline: field("cmdline: "),
        environ: field("environ: "),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `linux/modules` and `linux/proc/<pid>/` of a Linux guest, from its memory alone, against
/// what the guest printed of itself: its `/proc/modules` (dummy.ko loaded), and of a process of
/// its own its `maps` (a maple tree of Linux 6.1, file paths, [heap], [stack], [vvar], [vdso]),
/// the identity lines of its `status`, its `cmdline` and `environ` byte for byte; its `mem`
/// reads its program's ELF header where its maps say the program is; the command line says
/// the same.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_linux_processes_and_modules_agree_with_the_guests_own() {
    processes_and_modules_agree(Kernel::Debian12);
}

/// The same of Linux 6.12.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_linux_processes_and_modules_of_6_12_agree_with_the_guests_own() {
    processes_and_modules_agree(Kernel::Backports);
}

/// The same of Linux 5.10 (Debian 11), whose vmcoreinfo names no kallsyms tables (found in its
/// image), whose areas are a list (`mmap`), not a maple tree, and whose modules have layouts.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_linux_processes_and_modules_of_5_10_agree_with_the_guests_own() {
    processes_and_modules_agree(Kernel::Bullseye);
}

/// The same of an arm64 guest (Linux 6.12 on QEMU's virt board: the kernel's tables from
/// swapper_pg_dir, 48-bit addresses in use though it is built for 52).
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_linux_processes_and_modules_of_arm64_agree_with_the_guests_own() {
    processes_and_modules_agree(Kernel::Arm64);
}

fn processes_and_modules_agree(kernel: Kernel) {
    require_qemu();
    common::require_fuse();
    let run_dir = TestRunDir::new();
    let linux = common::linux::boot_settled(kernel, &run_dir);
    let name = linux.name.clone();
    let oracle = oracle_of(&linux.serial);
    let mount = TestMount::new(&run_dir, &[]);
    let dir = mount.path(&format!("{name}/linux"));

    let modules = std::fs::read_to_string(dir.join("modules")).unwrap();
    assert!(
        oracle.modules.contains("dummy ") && oracle.modules.contains("qemu_fw_cfg "),
        "{}",
        oracle.modules
    );
    assert_eq!(modules, oracle.modules, "/proc/modules");

    // the guest's process among linux/proc's, and in it the files of /proc/<pid>/
    let pids: Vec<i32> = std::fs::read_dir(dir.join("proc"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap().parse().unwrap())
        .collect();
    assert!(pids.contains(&1) && pids.contains(&oracle.sleeper) && !pids.contains(&0), "{pids:?}");
    let process = dir.join(format!("proc/{}", oracle.sleeper));
    let mut files: Vec<String> = std::fs::read_dir(&process)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["cmdline", "environ", "maps", "mem", "status"]);
    let maps = std::fs::read_to_string(process.join("maps")).unwrap();
    assert!(oracle.maps.contains("/bin/busybox") && oracle.maps.contains("[vdso]"), "{}", oracle.maps);
    assert_eq!(maps, oracle.maps, "/proc/{}/maps", oracle.sleeper);
    let status = std::fs::read_to_string(process.join("status")).unwrap();
    for line in status.lines() {
        assert!(oracle.status.iter().any(|theirs| theirs == line), "{line:?} is not in the guest's status");
    }
    assert!(status.starts_with("Name:\tqb-sleeper\nState:\tS (sleeping)\n"), "{status}");
    assert_eq!(hex(&std::fs::read(process.join("cmdline")).unwrap()), oracle.cmdline);
    assert_eq!(hex(&std::fs::read(process.join("environ")).unwrap()), oracle.environ);
    assert!(String::from_utf8_lossy(&std::fs::read(process.join("environ")).unwrap())
        .contains("QB_SECRET=hush-42"));
    // mem: the program's first page (busybox at file offset 0) is its ELF header; an address
    // no area covers reads zeros
    let program =
        maps.lines().find(|line| line.ends_with("/bin/busybox") && line.contains(" 00000000 ")).unwrap();
    let start = u64::from_str_radix(program.split('-').next().unwrap(), 16).unwrap();
    let mem = File::open(process.join("mem")).unwrap();
    let mut header = [0u8; 4];
    mem.read_exact_at(&mut header, start).unwrap();
    assert_eq!(&header, b"\x7fELF");
    let mut nothing = [0xffu8; 16];
    mem.read_exact_at(&mut nothing, 0x1000).unwrap();
    assert_eq!(nothing, [0; 16], "page 1 is no process's");
    // a kernel thread has an empty maps and cmdline; a pid that is none is no directory
    let kthreadd = dir.join("proc/2");
    assert_eq!(std::fs::read(kthreadd.join("maps")).unwrap(), b"");
    assert_eq!(std::fs::read(kthreadd.join("cmdline")).unwrap(), b"");
    assert!(!dir.join("proc/999999").exists());

    // the command line prints the same, and as JSON
    let output = common::qemu_bridge(&run_dir, &["linux", &name, "modules"]);
    assert_eq!(common::stdout(&output), oracle.modules);
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["linux", name.as_str()];
        all.extend_from_slice(args);
        all.push("--json");
        let output = common::qemu_bridge(&run_dir, &all);
        assert!(output.status.success(), "{args:?}: {}", common::stderr(&output));
        serde_json::from_str(&common::stdout(&output)).unwrap()
    };
    let listed: Vec<String> = json(&["modules"])
        .as_array()
        .unwrap()
        .iter()
        .map(|module| module["name"].as_str().unwrap().to_string())
        .collect();
    let theirs: Vec<String> =
        oracle.modules.lines().map(|line| line.split(' ').next().unwrap().to_string()).collect();
    assert_eq!(listed, theirs);
    let ps = json(&["ps"]);
    let sleeper =
        ps.as_array().unwrap().iter().find(|task| task["pid"] == oracle.sleeper).expect("the sleeper in ps");
    assert_eq!(sleeper["comm"], "qb-sleeper");
    let sleeper_pid = oracle.sleeper.to_string();
    let maps = json(&["maps", &sleeper_pid]);
    assert_eq!(maps.as_array().unwrap().len(), oracle.maps.lines().count());
    assert_eq!(json(&["status", &sleeper_pid])["Name"], "qb-sleeper");
    assert_eq!(json(&["environ", &sleeper_pid])["QB_SECRET"], "hush-42");
    assert!(json(&["version"])["version"].as_str().unwrap().starts_with("Linux version "));
    assert!(!common::qemu_bridge(&run_dir, &["linux", &name, "btf", "--json"]).status.success());
    let output = common::qemu_bridge(&run_dir, &["linux", &name, "maps", &oracle.sleeper.to_string()]);
    assert_eq!(common::stdout(&output), oracle.maps);
    let output = common::qemu_bridge(&run_dir, &["linux", &name, "maps"]);
    common::assert_clean_failure(&output, "needs a PID");
    let output = common::qemu_bridge(&run_dir, &["linux", &name, "status", "999999"]);
    common::assert_clean_failure(&output, "no process 999999");
}

/// `linux/` of a Linux guest, from its memory alone, against what the guest itself printed of
/// its kernel: the banner, every one of the kernel's symbols (the same lines, byte for byte), and
/// every line of its log, including one it wrote into /dev/kmsg; the command line says the same;
/// a guest that is not Linux has no `linux/`.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_linux_views_agree_with_the_guests_own() {
    linux_views_agree(Kernel::Debian12);
}

/// The same of bookworm-backports' Linux 6.12 (kallsyms without KALLSYMS_BASE_RELATIVE, modules
/// sized by `mem[]`, its own BTF): nothing in qemu-bridge is of one kernel.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_linux_views_of_6_12_agree_with_the_guests_own() {
    linux_views_agree(Kernel::Backports);
}

/// The same of Linux 5.10 (its kallsyms tables found in its image: vmcoreinfo names them from
/// 6.0 on).
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_linux_views_of_5_10_agree_with_the_guests_own() {
    linux_views_agree(Kernel::Bullseye);
}

/// The same of an arm64 guest.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_linux_views_of_arm64_agree_with_the_guests_own() {
    linux_views_agree(Kernel::Arm64);
}

fn linux_views_agree(kernel: Kernel) {
    use sha2::{Digest, Sha256};
    require_qemu();
    common::require_fuse();
    let run_dir = TestRunDir::new();
    let linux = common::linux::boot_settled(kernel, &run_dir);
    let name = linux.name.clone();
    let oracle = oracle_of(&linux.serial);
    let tiny = VmBuilder::new("tiny", &run_dir).launch();
    let mount = TestMount::new(&run_dir, &[]);
    let dir = mount.path(&format!("{name}/linux"));
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["btf", "dmesg", "kallsyms", "modules", "proc", "tasks", "version", "volatility"]);
    assert!(!mount.path(&format!("{}/linux", tiny.name())).exists(), "a guest that is not Linux");

    let version = std::fs::read_to_string(dir.join("version")).unwrap();
    assert_eq!(version.trim_end(), oracle.version);
    let kallsyms = std::fs::read_to_string(dir.join("kallsyms")).unwrap();
    let hash: String = Sha256::digest(kallsyms.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!((kallsyms.lines().count(), hash), oracle.kallsyms, "the kernel's /proc/kallsyms");
    // (the BTF, below)
    // the guest's dmesg, line for line and in order, within ours (which goes on after it)
    let dmesg = std::fs::read_to_string(dir.join("dmesg")).unwrap();
    let ours: Vec<&str> = dmesg.lines().collect();
    assert!(
        oracle.dmesg.len() > 100
            && oracle.dmesg.iter().any(|line| line.contains("qemu-bridge-test: a line of the guest's own"))
    );
    let mut at = 0;
    for line in &oracle.dmesg {
        let found = ours[at..].iter().position(|ours| ours == line);
        at += found.unwrap_or_else(|| panic!("{line:?} is not in our dmesg after line {at}")) + 1;
    }
    // the kernel's BTF, as its /sys/kernel/btf/vmlinux, which bpftool reads
    let sha256 =
        |bytes: &[u8]| -> String { Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect() };
    let btf = dir.join("btf");
    assert_eq!(sha256(&std::fs::read(&btf).unwrap()), oracle.btf, "/sys/kernel/btf/vmlinux");
    common::require_program("bpftool");
    let dump = Command::new("bpftool").args(["btf", "dump", "file"]).arg(&btf).output().unwrap();
    assert!(dump.status.success(), "{}", common::stderr(&dump));
    assert!(common::stdout(&dump).contains("STRUCT 'task_struct' size="), "bpftool finds no task_struct");
    // tasks: every process the guest's ps listed, with its parent and name (but for the ps, the
    // sed and the shell of the pipeline that printed it, and the counter loop's sleep, gone since)
    let tasks = std::fs::read_to_string(dir.join("tasks")).unwrap();
    let ours: Vec<(i32, i32, String)> = tasks
        .lines()
        .skip(1)
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            (words[0].parse().unwrap(), words[2].parse().unwrap(), words[5..].join(" "))
        })
        .collect();
    let lasting: Vec<&(i32, i32, String)> = oracle
        .ps
        .iter()
        .filter(|(pid, _, comm)| {
            !(["ps", "sed", "sleep"].contains(&comm.as_str()) || comm == "init" && *pid != 1)
        })
        .collect();
    assert!(lasting.len() > 30, "the guest's ps: {:?}", oracle.ps);
    // (procfs names a kworker with its workqueue, "kworker/0:0-rcu": task->comm is the first part)
    let same = |(pid, ppid, comm): &(i32, i32, String),
                (our_pid, our_ppid, our_comm): &(i32, i32, String)| {
        pid == our_pid
            && ppid == our_ppid
            && (comm == our_comm
                || comm.strip_prefix(our_comm.as_str()).is_some_and(|rest| rest.starts_with(['-', '+'])))
    };
    for process in lasting {
        assert!(ours.iter().any(|our| same(process, our)), "{process:?} is not among our tasks:\n{tasks}");
    }
    assert_eq!(ours[0], (0, 0, "swapper/0".to_string()), "the idle task first");
    // the command line prints the same
    let output = common::qemu_bridge(&run_dir, &["linux", &name, "version"]);
    assert_eq!(common::stdout(&output), version);
    let output = common::qemu_bridge(&run_dir, &["linux", tiny.name(), "dmesg"]);
    common::assert_clean_failure(&output, "no Linux kernel's vmcoreinfo");
}

/// `linux/proc` of a guest with a thousand more processes (`qb_tasks=1000`, paused): one
/// listing names every process its own `ps` printed (but the counter loop's short `sleep`, gone
/// since), and every `linux/proc/<pid>/status` of the listing is that process's: its pid, its
/// parent and its name as the guest's `ps` gives them. Each lookup finds the process by its pid
/// (the kernel's pid tree); the figure is a benchmark row (`linux_views`), not asserted here.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_every_status_of_a_thousand_processes_agrees_with_the_guests_ps() {
    require_qemu();
    common::require_fuse();
    let run_dir = TestRunDir::new();
    let linux = common::linux::boot_kernel(Kernel::Debian12, &run_dir, 256 << 20, &[], "qb_tasks=1000");
    let name = linux.launched.name().to_string();
    let oracle = guest_oracle(&linux);
    let vm = Vm::existing(&run_dir.run_dir, &name).unwrap();
    vm.with_qmp(|qmp| qmp.stop()).unwrap();
    let mount = TestMount::new(&run_dir, &[]);
    let proc_dir = mount.path(&format!("{name}/linux/proc"));
    let pids: Vec<i32> = std::fs::read_dir(&proc_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap().parse().unwrap())
        .collect();
    assert!(pids.len() > 1000, "{} processes listed", pids.len());
    let mut statuses = std::collections::HashMap::new();
    for pid in &pids {
        let status = std::fs::read_to_string(proc_dir.join(format!("{pid}/status"))).unwrap();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .unwrap_or_else(|| panic!("{status}"))
                .to_string()
        };
        assert_eq!((field("Pid:\t"), field("Tgid:\t")), (pid.to_string(), pid.to_string()), "{status}");
        statuses.insert(*pid, (field("PPid:\t").parse::<i32>().unwrap(), field("Name:\t")));
    }
    let sleeps = oracle.ps.iter().filter(|(_, ppid, comm)| comm == "sleep" && *ppid == 1).count();
    assert!(sleeps >= 1000, "the guest's ps lists {sleeps} sleeps");
    let mut missing = Vec::new();
    for (pid, ppid, comm) in &oracle.ps {
        if ["ps", "sed"].contains(&comm.as_str()) || comm == "init" && *pid != 1 {
            continue; // the pipeline that printed the list
        }
        match statuses.get(pid) {
            // procfs names a kworker with its workqueue ("kworker/0:0-rcu"): comm is the first part
            Some((our_ppid, our_name)) => assert!(
                our_ppid == ppid && (comm == our_name || comm.starts_with(&format!("{our_name}-"))),
                "{pid}: the guest's ps says {ppid} {comm}, our status {our_ppid} {our_name}"
            ),
            None => missing.push((*pid, *ppid, comm.clone())),
        }
    }
    // the counter loop's `sleep 0.1` of the moment ps ran has ended since
    assert!(
        missing.len() <= 1 && missing.iter().all(|(_, _, comm)| comm == "sleep"),
        "not in linux/proc: {missing:?}"
    );
    // a pid that is a process's no more, or never was, is no directory
    assert!(!proc_dir.join("4000000").exists() && !proc_dir.join("0").exists());
}

/// The rows of a Volatility plugin's CSV output, as maps from column to value.
fn volatility_rows(
    image: &Path,
    symbols: &Path,
    cache: &Path,
    plugin: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let output = Command::new("vol")
        .args(["-q", "--offline", "-r", "csv", "--cache-path"])
        .arg(cache)
        .arg("-f")
        .arg(image)
        .arg("-s")
        .arg(symbols)
        .arg(plugin)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "vol {plugin}: {text}{}", common::stderr(&output));
    let mut lines = text.lines().skip_while(|line| !line.starts_with("TreeDepth,"));
    let header: Vec<String> =
        lines.next().unwrap_or_else(|| panic!("vol {plugin}: {text}")).split(',').map(String::from).collect();
    let rows: Vec<_> = lines
        .filter(|line| line.split(',').count() == header.len())
        .map(|line| header.iter().cloned().zip(line.split(',').map(String::from)).collect())
        .collect();
    assert!(!rows.is_empty(), "vol {plugin}: {text}");
    rows
}

/// Volatility 3 reads the live guest through the mount's `core` with the symbol table the
/// mount made from the guest's own BTF and kallsyms (`linux/volatility/`), and no other symbol
/// file: `linux.pslist.PsList` lists the processes the guest's own `ps` listed, with their
/// parents, names and start times, `linux.bash.Bash` the history of its bash, and
/// `linux.lsmod.Lsmod` the modules of its `/proc/modules`.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_volatility_reads_the_guest_with_the_table_made_from_its_memory() {
    volatility_reads_the_guest(Kernel::Debian12);
}

/// The same of Linux 5.10.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_volatility_reads_a_5_10_guest_with_the_table_made_from_its_memory() {
    volatility_reads_the_guest(Kernel::Bullseye);
}

/// The same of Linux 6.12.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_volatility_reads_a_6_12_guest_with_the_table_made_from_its_memory() {
    volatility_reads_the_guest(Kernel::Backports);
}

fn volatility_reads_the_guest(kernel: Kernel) {
    require_qemu();
    common::require_fuse();
    common::require_program("vol");
    let run_dir = TestRunDir::new();
    let (linux, _vm) = paused_kernel(kernel, &run_dir, &[]);
    let name = linux.launched.name().to_string();
    let oracle = guest_oracle(&linux);
    let mount = TestMount::new(&run_dir, &[]);
    let symbols = mount.path(&format!("{name}/linux/volatility"));
    let tables: Vec<String> = std::fs::read_dir(&symbols)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    let release = oracle.version.split_whitespace().nth(2).unwrap().to_string();
    assert!(
        tables.len() == 1 && tables[0].starts_with(&release) && tables[0].ends_with(".json"),
        "{tables:?}"
    );
    let cache = tempfile::tempdir().unwrap();
    let core = mount.path(&format!("{name}/core"));

    let rows = volatility_rows(&core, &symbols, cache.path(), "linux.pslist.PsList");
    let listed: Vec<(i32, i32, String)> = rows
        .iter()
        .map(|row| (row["PID"].parse().unwrap(), row["PPID"].parse().unwrap(), row["COMM"].clone()))
        .collect();
    let lasting: Vec<&(i32, i32, String)> = oracle
        .ps
        .iter()
        .filter(|(pid, _, comm)| {
            !(["ps", "sed", "sleep"].contains(&comm.as_str()) || comm == "init" && *pid != 1)
        })
        .collect();
    assert!(lasting.len() > 30, "the guest's ps: {:?}", oracle.ps);
    for (pid, ppid, comm) in lasting {
        // procfs names a kworker with its workqueue ("kworker/0:0-rcu"); comm is the first part
        assert!(
            listed.iter().any(|(their_pid, their_ppid, their_comm)| their_pid == pid
                && their_ppid == ppid
                && comm.starts_with(their_comm.as_str())),
            "{pid} {ppid} {comm} is not in Volatility's list: {listed:?}"
        );
    }
    assert!(listed.iter().any(|(pid, _, comm)| *pid == oracle.sleeper && comm == "qb-sleeper"));
    // the times tasks started, through the timekeeper (tk_core, typed by its members)
    let init = rows.iter().find(|row| row["PID"] == "1").unwrap();
    assert!(init["CREATION TIME"].ends_with(" UTC"), "{init:?}");

    // linux.bash finds the history of the guest's own bash in its memory
    let rows = volatility_rows(&core, &symbols, cache.path(), "linux.bash.Bash");
    let commands: Vec<&str> = rows.iter().map(|row| row["Command"].as_str()).collect();
    for command in ["echo qb-history-one", "cat /etc/qb-history-two"] {
        assert!(commands.contains(&command), "{command} is not in Volatility's bash history: {commands:?}");
    }

    let rows = volatility_rows(&core, &symbols, cache.path(), "linux.lsmod.Lsmod");
    let mut modules: Vec<&str> = rows.iter().map(|row| row["Module Name"].as_str()).collect();
    modules.sort();
    let mut theirs: Vec<&str> = oracle.modules.lines().map(|line| line.split(' ').next().unwrap()).collect();
    theirs.sort();
    assert_eq!(modules, theirs, "Volatility's modules against the guest's /proc/modules");
}

/// The kernel address `va` of the guest as an offset in its RAM file.
fn ram_offset(
    guest: &qemu_bridge::guest::linux::LinuxGuest,
    bridge: &qemu_bridge::SharedMemoryBridge,
    va: Gva,
) -> u64 {
    let gpa = guest.kernel().paging().translate(bridge, va).unwrap().gpa.0;
    let region = bridge
        .layout()
        .regions()
        .iter()
        .find(|region| gpa >= region.gpa && gpa - region.gpa < region.len)
        .unwrap();
    region.offset + (gpa - region.gpa)
}

/// A hostile guest: its module list, its process's maple tree and its task list made to loop
/// (written into the paused guest's RAM). Each file that walks them answers at once with one
/// error line saying what is wrong; the other files and the daemon go on, no larger.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_hostile_kernel_structures_are_error_lines() {
    require_qemu();
    common::require_fuse();
    let run_dir = TestRunDir::new();
    let (linux, vm) = paused_linux(&run_dir, &[]);
    let name = linux.launched.name().to_string();
    let oracle = guest_oracle(&linux);
    let (bridge, _) = vm.open_bridge().unwrap();
    let info = qemu_bridge::guest::find_vmcoreinfo(bridge.mapping()).unwrap().unwrap();
    let guest = qemu_bridge::guest::linux::LinuxGuest::read(info, &bridge).unwrap();
    let btf = guest.btf().unwrap();
    let offset = |strukt: &str, path: &str| btf.offset_of(btf.struct_id(strukt).unwrap(), path).unwrap();
    let ram = std::fs::OpenOptions::new().write(true).open(&linux.launched.ram_path).unwrap();
    let write = |va: Gva, value: u64| {
        ram.write_all_at(&value.to_le_bytes(), ram_offset(&guest, &bridge, va)).unwrap()
    };

    // the first module's list.next points at itself: a loop that never reaches the head
    let first = guest.modules(&bridge).unwrap()[0].address;
    let list = first + offset("module", "list");
    write(list, list.0);
    // the process's maple tree: its root node's first slot is the node itself
    let process = guest.process(&bridge, oracle.sleeper).unwrap().unwrap();
    let mm = process.mm().unwrap().unwrap().address;
    let root = guest.reader(&bridge).u64(mm + offset("mm_struct", "mm_mt.ma_root"), "root").unwrap();
    let node = root & !0xff;
    let range = node | 2 << 3 | 2; // the node as a maple_range_64 (not a leaf)
    write(mm + offset("mm_struct", "mm_mt.ma_root"), range);
    write(Gva(node) + offset("maple_range_64", "slot"), range);
    write(Gva(node) + offset("maple_range_64", "pivot"), 0x1000);
    let mount = TestMount::new(&run_dir, &[]);
    let dir = mount.path(&format!("{name}/linux"));
    let second = guest.tasks(&bridge).unwrap()[1].address + offset("task_struct", "tasks");
    let error_line = |file: &str, says: &str| {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(
            text.starts_with("error: ") && text.contains(says) && text.lines().count() == 1,
            "{file}: {text}"
        );
    };
    // (the kernel read once: what the daemon keeps of it, before the walks that fail)
    let _ = std::fs::read(dir.join("version")).unwrap();
    let before = common::anon_rss_kib(mount.pid);
    error_line("modules", "module list is corrupt: it comes back to");
    error_line(&format!("proc/{}/maps", oracle.sleeper), "maple tree is corrupt");
    // init_task.tasks.next of the second task points back at the second task
    write(second, second.0);
    error_line("tasks", "task list is corrupt: it comes back to");
    // a directory of processes cannot be listed from a list that loops: an error, not a hang
    let listed =
        std::fs::read_dir(dir.join("proc")).and_then(|entries| entries.collect::<Result<Vec<_>, _>>());
    assert!(listed.is_err(), "{listed:?}");
    // a process is still found by its pid, through the kernel's pid tree
    let sleeper = format!("proc/{}/status", oracle.sleeper);
    let status = std::fs::read_to_string(dir.join(&sleeper)).unwrap();
    assert!(status.starts_with("Name:\tqb-sleeper\n"), "{status}");
    // the pid tree made to loop (the slot on the sleeper's way points back at its node): each
    // lookup is an error, never a hang
    let reader = guest.reader(&bridge);
    let namespace = guest.symbols().address("init_pid_ns").unwrap();
    let head = reader.u64(namespace + offset("pid_namespace", "idr.idr_rt.xa_head"), "pid tree").unwrap();
    assert_eq!(head & 3, 2, "the pid tree's root is a node: {head:#x}");
    let node = head - 2;
    let shift = reader.bytes(Gva(node + offset("xa_node", "shift")), 1, "pid tree").unwrap()[0];
    let slot = (oracle.sleeper as u64 >> shift) % 64;
    write(Gva(node + offset("xa_node", "slots") + 8 * slot), head);
    assert!(!dir.join(format!("proc/{}", oracle.sleeper)).exists());
    let output = common::qemu_bridge(&run_dir, &["linux", &name, "status", &oracle.sleeper.to_string()]);
    common::assert_clean_failure(&output, "pid tree is corrupt");
    // the rest goes on, and the daemon kept nothing of the walks that failed
    assert_eq!(std::fs::read_to_string(dir.join("version")).unwrap().trim_end(), oracle.version);
    assert!(mount.is_mounted());
    let after = common::anon_rss_kib(mount.pid);
    assert!(after < before + 16 * 1024, "the daemon grew from {before} KiB to {after} KiB");
}

/// `snapshot --format elf`, consistent, of the running Linux guest: an ELF core that crash (with
/// the debug `vmlinux`), drgn (with no symbol file) and Volatility (with the table made from the
/// guest's memory) read; makedumpfile turns it into a kdump-compressed file that crash opens and
/// whose log is the guest's; an `--update` of it after the guest ran is incremental and still
/// read; a format it does not know is refused, the guest running on.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_elf_captures_are_read_by_crash_drgn_volatility_and_makedumpfile() {
    require_qemu();
    common::require_fuse();
    for program in ["crash", "drgn", "vol", "makedumpfile", "apt-get"] {
        common::require_program(program);
    }
    let run_dir = TestRunDir::new();
    let linux = boot_linux(&run_dir);
    let name = linux.launched.name().to_string();
    let oracle = guest_oracle(&linux);
    let dir = tempfile::tempdir().unwrap();
    let elf = dir.path().join("guest.elf");
    let snapshot = |extra: &[&str]| {
        let mut args = vec!["snapshot", &name, "-o", elf.to_str().unwrap(), "--format", "elf", "--json"];
        args.extend_from_slice(extra);
        let output = common::qemu_bridge(&run_dir, &args);
        assert!(output.status.success(), "{}", common::stderr(&output));
        serde_json::from_str::<serde_json::Value>(&common::stdout(&output)).unwrap()
    };
    let report = snapshot(&["--consistent"]);
    assert_eq!(report["verdict"], "consistent", "{report}");
    assert_eq!(report["format"], "elf", "{report}");
    let status = common::stdout(&common::qemu_bridge(&run_dir, &["status", &name]));
    assert_eq!(status.trim(), "running");

    // drgn with no symbol file: a kernel core (its VMCOREINFO note), the banner at its address
    let (_, banner) = drgn_banner(&elf);
    assert!(
        banner.starts_with(oracle.version.as_bytes().get(..20).unwrap()),
        "{}",
        String::from_utf8_lossy(&banner)
    );

    // crash with the debug vmlinux
    let release = oracle.version.split_whitespace().nth(2).unwrap().to_string();
    let vmlinux = debug_vmlinux(&release);
    let commands = run_dir.path().join("crash.cmds");
    std::fs::write(&commands, "sys\nq\n").unwrap();
    let sys = crash_sys(&vmlinux, &elf, &commands);
    assert!(sys.lines().any(|line| line.trim() == format!("RELEASE: {release}")), "{sys}");

    // Volatility with the table the mount makes from the guest's memory
    let mount = TestMount::new(&run_dir, &[]);
    let symbols = mount.path(&format!("{name}/linux/volatility"));
    let cache = tempfile::tempdir().unwrap();
    let rows = volatility_rows(&elf, &symbols, cache.path(), "linux.pslist.PsList");
    let listed: Vec<i32> = rows.iter().map(|row| row["PID"].parse().unwrap()).collect();
    assert!(listed.contains(&1) && listed.contains(&oracle.sleeper), "{listed:?}");

    // makedumpfile: a kdump-compressed file, which crash opens and whose log is the guest's
    let kdump = dir.path().join("guest.kdump");
    let output =
        Command::new("makedumpfile").args(["-c", "-d", "31"]).arg(&elf).arg(&kdump).output().unwrap();
    assert!(output.status.success(), "makedumpfile: {}", common::stderr(&output));
    let log = dir.path().join("guest.log");
    let output = Command::new("makedumpfile").arg("--dump-dmesg").arg(&kdump).arg(&log).output().unwrap();
    assert!(output.status.success(), "makedumpfile --dump-dmesg: {}", common::stderr(&output));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("qemu-bridge-test: a line of the guest's own"), "{log}");
    let sys = crash_sys(&vmlinux, &kdump, &commands);
    assert!(sys.lines().any(|line| line.trim() == format!("RELEASE: {release}")), "{sys}");

    // the guest runs on; an update of the core is incremental and still a core drgn reads
    std::thread::sleep(Duration::from_millis(300));
    let report = snapshot(&["--update", "--pause"]);
    assert!(report["update"]["full"].is_null(), "{report}");
    let (_, again) = drgn_banner(&elf);
    assert_eq!(again, banner, "drgn after the update");
    // a raw update of the ELF file is another format: written whole, and said so
    let output = common::qemu_bridge(&run_dir, &["snapshot", &name, "-o", elf.to_str().unwrap(), "--update"]);
    assert!(common::stderr(&output).contains("another format"), "{}", common::stderr(&output));

    let output =
        common::qemu_bridge(&run_dir, &["snapshot", &name, "-o", elf.to_str().unwrap(), "--format", "png"]);
    assert!(
        !output.status.success() && common::stderr(&output).contains("unknown format"),
        "{}",
        common::stderr(&output)
    );
    let status = common::stdout(&common::qemu_bridge(&run_dir, &["status", &name]));
    assert_eq!(status.trim(), "running");
}
