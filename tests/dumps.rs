//! The guest-physical views against QEMU itself: `physical` (offset = guest-physical address)
//! and `core` (an ELF core like QEMU's `dump-guest-memory`), on q35 and pc guests whose RAM
//! crosses the PCI hole (sparse RAM files: no real memory is used).

use qemu_bridge_test_support as common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{require_qemu, stderr, wait_until, TestMount, TestRunDir};
use qemu_bridge::{Machine, Vm};

fn lseek(path: &Path, offset: u64, whence: &str) -> String {
    let script = format!(
        "import os,sys\nf=os.open(sys.argv[1],os.O_RDONLY)\ntry: print(os.lseek(f,{offset},os.{whence}))\nexcept OSError as e: print('errno',e.errno)"
    );
    let output = Command::new("python3").args(["-c", &script]).arg(path).output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Stamps written into the RAM file at file offsets are what QEMU (pmemsave) sees at the
/// matching guest-physical addresses, and what `physical`, `core` and `read` return there; the
/// PCI hole reads zeros; SEEK_DATA/SEEK_HOLE walk the RAM ranges.
fn check_machine(machine: Machine, memory: u64, stamps: &[(u64, u64)], hole: u64) {
    let run_dir = TestRunDir::new();
    let vm = common::paused_machine("views", &run_dir, machine.clone(), memory);
    let handle = Vm::existing(&run_dir.run_dir, vm.name()).unwrap();
    let ram = std::fs::OpenOptions::new().write(true).open(&vm.launched.ram_path).unwrap();
    let mount = TestMount::new(&run_dir, &[]);
    let physical = mount.path(&format!("{}/physical", vm.name()));
    let core = mount.path(&format!("{}/core", vm.name()));
    let highest = stamps.iter().map(|(gpa, _)| *gpa).max().unwrap();
    assert!(std::fs::metadata(&physical).unwrap().len() > highest);
    for (index, &(gpa, file_offset)) in stamps.iter().enumerate() {
        let stamp = format!("{machine:?}-{memory:#x}-stamp-{index}-at-{gpa:#x}");
        ram.write_all_at(stamp.as_bytes(), file_offset).unwrap();
        let oracle = run_dir.qemu_output(&format!("stamp-{index}"));
        handle.with_qmp(|qmp| qmp.pmemsave(gpa, stamp.len() as u64, &oracle)).unwrap();
        assert!(wait_until(Duration::from_secs(30), || std::fs::read(&oracle)
            .is_ok_and(|b| b.len() == stamp.len())));
        assert_eq!(std::fs::read(&oracle).unwrap(), stamp.as_bytes(), "QEMU at {gpa:#x}");
        let mut bytes = vec![0u8; stamp.len()];
        File::open(&physical).unwrap().read_exact_at(&mut bytes, gpa).unwrap();
        assert_eq!(bytes, stamp.as_bytes(), "physical at {gpa:#x}");
        assert_eq!(
            common::core_bytes(&core, gpa, stamp.len()).unwrap(),
            stamp.as_bytes(),
            "core at {gpa:#x}"
        );
        let output = common::qemu_bridge(
            &run_dir,
            &["read", vm.name(), &format!("{gpa:#x}"), &stamp.len().to_string(), "--raw"],
        );
        assert_eq!(output.stdout, stamp.as_bytes(), "read at {gpa:#x}: {}", stderr(&output));
    }
    let mut zeros = vec![0xffu8; 4096];
    File::open(&physical).unwrap().read_exact_at(&mut zeros, hole).unwrap();
    assert!(zeros.iter().all(|&b| b == 0), "the PCI hole reads zeros");
    assert!(common::core_bytes(&core, hole, 16).is_none(), "the PCI hole is in no PT_LOAD");
    assert_eq!(lseek(&physical, hole, "SEEK_HOLE"), hole.to_string());
    let data = lseek(&physical, hole, "SEEK_DATA").parse::<u64>().unwrap();
    assert!(data > hole, "{data:#x}");
    assert_eq!(lseek(&physical, 0x1000, "SEEK_DATA"), "4096");
    let readelf = Command::new("readelf").arg("-l").arg(&core).output().unwrap();
    assert!(
        readelf.status.success() && String::from_utf8_lossy(&readelf.stdout).contains("LOAD"),
        "{}",
        stderr(&readelf)
    );
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_q35_views_below_and_above_4g() {
    require_qemu();
    common::require_program("python3");
    common::require_program("readelf");
    const G: u64 = 1 << 30;
    // 64 MiB: all below the PCI hole; the BIOS window at 0xC0000 is the hole to check
    check_machine(Machine::Q35, 64 << 20, &[(0x7c00, 0x7c00), (0x3ff_f000, 0x3ff_f000)], 0xc0000);
    // 2816 MiB: q35 then puts 2 GiB below and the rest above 4 GiB
    check_machine(Machine::Q35, 2816 << 20, &[(0x1000, 0x1000), (4 * G + 0x100, 2 * G + 0x100)], 0xb000_0000);
    // 4 GiB: 2 GiB below, 2 GiB above
    check_machine(Machine::Q35, 4 * G, &[(0x7c00, 0x7c00), (5 * G, 3 * G)], 3 * G);
    // 6 GiB: 2 GiB below, 4 GiB above
    check_machine(Machine::Q35, 6 * G, &[(2 * G - 64, 2 * G - 64), (8 * G - 4096, 6 * G - 4096)], 3 * G);
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_pc_views_below_and_above_4g() {
    require_qemu();
    common::require_program("python3");
    common::require_program("readelf");
    const G: u64 = 1 << 30;
    // 64 MiB and 2816 MiB: all below the hole (pc keeps up to 3.5 GiB below)
    check_machine(Machine::Pc, 64 << 20, &[(0x7c00, 0x7c00), (0x3ff_f000, 0x3ff_f000)], 0xc0000);
    check_machine(
        Machine::Pc,
        2816 << 20,
        &[(0x1000, 0x1000), ((2816 << 20) - 64, (2816 << 20) - 64)],
        0xc0000,
    );
    // 4 GiB on pc: 3 GiB below, 1 GiB above
    check_machine(Machine::Pc, 4 * G, &[(3 * G - 64, 3 * G - 64), (4 * G + 8, 3 * G + 8)], 3 * G + 0x1000);
    // 6 GiB on pc: 3 GiB below, 3 GiB above
    check_machine(Machine::Pc, 6 * G, &[(0x2000, 0x2000), (7 * G - 4096, 6 * G - 4096)], 3 * G + 0x1000);
}

/// `core` against QEMU's own `dump-guest-memory` (no paging) of the same paused guest: every
/// RAM range of ours is inside one of QEMU's PT_LOADs at the same guest-physical address, with
/// the same bytes.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_core_equals_qemus_dump() {
    let (run_dir, vm) = common::booted_vm("dump");
    let handle = Vm::existing(&run_dir.run_dir, vm.name()).unwrap();
    handle.with_qmp(|qmp| qmp.stop()).unwrap();
    let dump = run_dir.qemu_output("qemu.core");
    common::qemu_dump(&handle, &dump);
    let mount = TestMount::new(&run_dir, &[]);
    let ours = mount.path(&format!("{}/core", vm.name()));
    let (machine, our_loads) = common::program_headers(&File::open(&ours).unwrap());
    let (_, qemu_loads) = common::program_headers(&File::open(&dump).unwrap());
    assert!(machine == 62 || machine == 3, "x86 ELF machine: {machine}");
    let our_loads: Vec<_> = our_loads.into_iter().filter(|(kind, ..)| *kind == 1).collect();
    assert!(our_loads.len() >= 2, "{our_loads:?}");
    for (_, _, paddr, size) in our_loads {
        assert!(
            qemu_loads.iter().any(|(kind, _, p, s)| *kind == 1 && paddr >= *p && paddr + size <= p + s),
            "our range {paddr:#x}+{size:#x} is in none of QEMU's: {qemu_loads:?}"
        );
        let mut offset = 0;
        while offset < size {
            let len = (size - offset).min(1 << 20) as usize;
            assert_eq!(
                common::core_bytes(&ours, paddr + offset, len),
                common::core_bytes(&dump, paddr + offset, len),
                "at {:#x}",
                paddr + offset
            );
            offset += len as u64;
        }
    }
}

/// aarch64 and riscv64 `virt` machines, RAM at 1 GiB and 2 GiB: guest-physical addresses come
/// from QEMU's own memory map, so `read` and the library find the guest's byte where QEMU
/// (`pmemsave`) sees it.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_arm_and_riscv_guest_physical_addresses() {
    require_qemu();
    let run_dir = TestRunDir::new();
    for (arch, ram_base, elf_machine) in [("aarch64", 0x4000_0000u64, 183u16), ("riscv64", 0x8000_0000, 243)]
    {
        common::require_program(&format!("qemu-system-{arch}"));
        let ram_file = run_dir.qemu_output(&format!("{arch}.ram"));
        let binary = format!("qemu-system-{arch}");
        let _vm = common::HandStartedVm::start_binary(&binary, &run_dir, arch, |_| {
            ["-M", "virt", "-m", "256M", "-S", "-machine", "memory-backend=m", "-object"]
                .map(String::from)
                .into_iter()
                .chain([format!(
                    "memory-backend-file,id=m,size=256M,share=on,mem-path={}",
                    ram_file.display()
                )])
                .collect()
        });
        let stamp = format!("{arch}-STAMP-at-file-offset-0x1000");
        std::os::unix::fs::FileExt::write_all_at(
            &std::fs::OpenOptions::new().write(true).open(&ram_file).unwrap(),
            stamp.as_bytes(),
            0x1000,
        )
        .unwrap();
        let addr = format!("{:#x}", ram_base + 0x1000);
        let output = common::qemu_bridge(&run_dir, &["read", arch, &addr, &stamp.len().to_string(), "--raw"]);
        assert_eq!(output.stdout, stamp.as_bytes(), "{arch}: {}", stderr(&output));
        // below RAM is not RAM
        let output = common::qemu_bridge(&run_dir, &["read", arch, "0x1000", "16"]);
        assert!(stderr(&output).contains("invalid address"), "{arch}: {}", stderr(&output));
        let vm = Vm::existing(&run_dir.run_dir, arch).unwrap();
        let info = vm.info().unwrap();
        assert_eq!(info.layout.source(), qemu_bridge::ram::LayoutSource::Mtree);
        assert_eq!(info.layout.regions()[0].gpa, ram_base);
        let oracle = run_dir.qemu_output(&format!("{arch}.pmemsave"));
        vm.with_qmp(|qmp| qmp.pmemsave(ram_base + 0x1000, stamp.len() as u64, &oracle)).unwrap();
        assert!(wait_until(Duration::from_secs(30), || std::fs::read(&oracle)
            .is_ok_and(|b| b == stamp.as_bytes())));
        // physical and core through the mount, with the architecture's ELF machine
        let mount = TestMount::new(&run_dir, &[]);
        let physical = mount.path(&format!("{arch}/physical"));
        let mut bytes = vec![0u8; stamp.len()];
        File::open(&physical).unwrap().read_exact_at(&mut bytes, ram_base + 0x1000).unwrap();
        assert_eq!(bytes, stamp.as_bytes(), "{arch} physical");
        let core = mount.path(&format!("{arch}/core"));
        assert_eq!(
            common::core_bytes(&core, ram_base + 0x1000, stamp.len()).unwrap(),
            stamp.as_bytes(),
            "{arch} core"
        );
        let (machine, _) = common::program_headers(&File::open(&core).unwrap());
        assert_eq!(machine, elf_machine, "{arch}");
        assert_eq!(lseek(&physical, 0, "SEEK_DATA"), ram_base.to_string());
    }
}

/// Writes `stamp` at `file_offset` of `file`, and checks that QEMU (pmemsave), `physical`,
/// `core` and `read` all show it at guest-physical `gpa`.
fn check_stamp(run_dir: &TestRunDir, mount: &TestMount, vm: &str, file: &Path, file_offset: u64, gpa: u64) {
    let stamp = format!("{vm}-stamp-at-{gpa:#x}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .write_all_at(stamp.as_bytes(), file_offset)
        .unwrap();
    let handle = Vm::existing(&run_dir.run_dir, vm).unwrap();
    let oracle = run_dir.qemu_output(&format!("{vm}-{gpa:x}"));
    handle.with_qmp(|qmp| qmp.pmemsave(gpa, stamp.len() as u64, &oracle)).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || std::fs::read(&oracle).is_ok_and(|b| b.len() == stamp.len()))
    );
    assert_eq!(std::fs::read(&oracle).unwrap(), stamp.as_bytes(), "QEMU at {gpa:#x}");
    let mut bytes = vec![0u8; stamp.len()];
    File::open(mount.path(&format!("{vm}/physical"))).unwrap().read_exact_at(&mut bytes, gpa).unwrap();
    assert_eq!(bytes, stamp.as_bytes(), "physical at {gpa:#x}");
    let core = mount.path(&format!("{vm}/core"));
    assert_eq!(common::core_bytes(&core, gpa, stamp.len()).unwrap(), stamp.as_bytes(), "core at {gpa:#x}");
    let output =
        common::qemu_bridge(run_dir, &["read", vm, &format!("{gpa:#x}"), &stamp.len().to_string(), "--raw"]);
    assert_eq!(output.stdout, stamp.as_bytes(), "read at {gpa:#x}: {}", stderr(&output));
}

fn listed_size(run_dir: &TestRunDir, vm: &str) -> u64 {
    let output = common::qemu_bridge(run_dir, &["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    listed.as_array().unwrap().iter().find(|row| row["name"] == vm).unwrap()["ram_size"].as_u64().unwrap_or(0)
}

/// A two-node NUMA VM (a RAM file per node, as libvirt gives guests with a NUMA topology) and a
/// VM with a `pc-dimm` plugged while the mount serves it: every node's and the DIMM's bytes are
/// where QEMU sees them, `list` shows the whole RAM, and the DIMM appears without remounting.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_numa_nodes_and_a_hot_plugged_dimm() {
    require_qemu();
    const MIB: u64 = 1 << 20;
    let run_dir = TestRunDir::new();
    let node = |index: u32| run_dir.qemu_output(&format!("node{index}.ram"));
    let _numa = common::HandStartedVm::start(&run_dir, "numa", |_| {
        let mut args: Vec<String> =
            ["-machine", "q35,accel=tcg", "-m", "128M", "-S"].map(String::from).to_vec();
        for index in 0..2 {
            args.push("-object".into());
            args.push(format!(
                "memory-backend-file,id=m{index},size=64M,share=on,mem-path={}",
                node(index).display()
            ));
            args.push("-numa".into());
            args.push(format!("node,memdev=m{index}"));
        }
        args
    });
    let main = run_dir.qemu_output("main.ram");
    let _dimm_vm = common::HandStartedVm::start(&run_dir, "dimm", |_| {
        ["-machine", "q35,accel=tcg,memory-backend=m", "-m", "64M,slots=2,maxmem=1G", "-S", "-object"]
            .map(String::from)
            .into_iter()
            .chain([format!("memory-backend-file,id=m,size=64M,share=on,mem-path={}", main.display())])
            .collect()
    });
    let mount = TestMount::new(&run_dir, &["--passthrough=never"]);
    assert_eq!(listed_size(&run_dir, "numa"), 128 * MIB);
    assert_eq!(std::fs::metadata(mount.path("numa/ram")).unwrap().len(), 128 * MIB);
    check_stamp(&run_dir, &mount, "numa", &node(0), 0x7c00, 0x7c00);
    check_stamp(&run_dir, &mount, "numa", &node(1), 0x1000, 64 * MIB + 0x1000);
    let memdev = std::fs::read_to_string(mount.path("numa/memdev.json")).unwrap();
    assert_eq!(memdev.matches("\"kind\": \"file\"").count(), 2, "{memdev}");
    // RAM over two files is served by the daemon under passthrough=auto, the same bytes, and
    // passthrough stays on for the VMs whose RAM is one file
    let passthrough = TestMount::new(&run_dir, &[]);
    assert!(
        std::fs::read(passthrough.path("numa/ram")).unwrap()
            == std::fs::read(mount.path("numa/ram")).unwrap()
    );
    assert!(
        std::fs::read(passthrough.path("dimm/ram")).unwrap()
            == std::fs::read(mount.path("dimm/ram")).unwrap()
    );
    let log = passthrough.log_text();
    assert!(log.contains("numa/ram: no passthrough") && !log.contains("dimm/ram: no passthrough"), "{log}");
    drop(passthrough);

    // plug a 128 MiB DIMM into the running mount's VM
    assert_eq!(std::fs::metadata(mount.path("dimm/ram")).unwrap().len(), 64 * MIB);
    let dimm = run_dir.qemu_output("dimm.ram");
    common::plug_dimm(&run_dir, "dimm", &dimm, 128 * MIB);
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::metadata(mount.path("dimm/ram"))
            .is_ok_and(|m| m.len() == 192 * MIB)),
        "the DIMM did not appear: {}",
        mount.log_text()
    );
    assert_eq!(listed_size(&run_dir, "dimm"), 192 * MIB);
    let layout = common::read_json(&mount.path("dimm/layout.json"));
    let dimm_gpa = layout["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|region| region["offset"] == 64 * MIB)
        .map(|region| region["gpa"].as_u64().unwrap())
        .unwrap_or_else(|| panic!("no region for the DIMM: {layout}"));
    check_stamp(&run_dir, &mount, "dimm", &dimm, 0x2000, dimm_gpa + 0x2000);
    check_stamp(&run_dir, &mount, "dimm", &main, 0x3000, 0x3000);
}
