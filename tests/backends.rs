//! Every kind of VM RAM, with VMs started by hand as users do: a memfd backend (libvirt's shared
//! memory), a file on hugetlbfs, and QEMU's default private RAM. Each is listed with its kind,
//! served by the mount with the guest's live bytes, and equal to QEMU's own `pmemsave`.

use qemu_bridge_test_support as common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    require_qemu, stderr, stdout, wait_until, HandStartedVm, HugePages, TestMount, TestRunDir, MARKER,
    MARKER_ADDR,
};
use qemu_bridge::Vm;

/// The VGA window and ROM shadowing, where `pmemsave` shows other bytes than guest RAM.
const VGA_AND_ROM: std::ops::Range<usize> = 0xA0000..0x100000;
const SIZE: u64 = 64 << 20;

/// QEMU started by hand with the boot-sector guest, 64 MiB and `memory` options.
fn hand_vm(run_dir: &TestRunDir, name: &str, memory: &[String]) -> HandStartedVm {
    HandStartedVm::start(run_dir, name, |dir| {
        let disk = dir.join("boot.img");
        std::fs::copy(common::boot_image(), &disk).unwrap();
        let mut args: Vec<String> = vec!["-m".into(), "64M".into()];
        args.extend(memory.iter().cloned());
        args.extend(["-drive".into(), format!("file={},format=raw", disk.display())]);
        args
    })
}

/// Checks one VM of `kind` end to end: listed with its kind, the guest's marker in `ram`
/// through the mount, `ram` equal to `pmemsave` while paused, the counter moving once resumed.
fn check_vm(run_dir: &TestRunDir, mount: &TestMount, name: &str, kind: &str, zero_copy: bool) {
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&common::qemu_bridge(run_dir, &["list", "--json"]))).unwrap();
    let row = listed.as_array().unwrap().iter().find(|row| row["name"] == name).unwrap().clone();
    assert_eq!(row["state"], "running", "{row}");
    assert_eq!(row["ram_kind"], kind, "{row}");
    assert_eq!(row["zero_copy"], zero_copy, "{row}");
    assert_eq!(row["ram_size"], SIZE, "{row}");
    let ram = mount.path(&format!("{name}/ram"));
    let marker_seen = wait_until(Duration::from_secs(120), || {
        std::fs::File::open(&ram).is_ok_and(|file| {
            let mut bytes = vec![0u8; MARKER.len()];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, MARKER_ADDR).is_ok()
                && bytes == MARKER
        })
    });
    assert!(marker_seen, "{name}: the guest's marker never showed in ram");
    let memdev = std::fs::read_to_string(mount.path(&format!("{name}/memdev.json"))).unwrap();
    assert!(memdev.contains(&format!("\"kind\": \"{kind}\"")), "{memdev}");

    let vm = Vm::existing(&run_dir.run_dir, name).unwrap();
    let oracle = run_dir.qemu_output(&format!("{name}.pmemsave"));
    vm.with_qmp(|qmp| {
        qmp.stop()?;
        qmp.pmemsave(0, SIZE, &oracle)
    })
    .unwrap();
    assert!(wait_until(Duration::from_secs(30), || std::fs::metadata(&oracle).is_ok_and(|m| m.len() == SIZE)));
    let expected = std::fs::read(&oracle).unwrap();
    let ours = std::fs::read(&ram).unwrap();
    assert_eq!(ours.len(), expected.len());
    let mismatches: Vec<usize> =
        (0..ours.len()).filter(|&i| ours[i] != expected[i] && !VGA_AND_ROM.contains(&i)).take(8).collect();
    assert!(mismatches.is_empty(), "{name}: bytes differ from pmemsave at {mismatches:#x?}");
    let checksum = std::fs::read_to_string(mount.path(&format!("{name}/checksum"))).unwrap();
    assert!(
        checksum.starts_with(&format!("sha256 {} consistent", qemu_bridge::ram::sha256_hex(&ours))),
        "{checksum}"
    );

    vm.with_qmp(|qmp| qmp.cont()).unwrap();
    let counter = |file: &std::fs::File| common::counter_in(file);
    let file = std::fs::File::open(&ram).unwrap();
    let first = counter(&file);
    assert!(
        wait_until(Duration::from_secs(60), || counter(&file) != first),
        "{name}: the counter does not move"
    );
    let output = common::qemu_bridge(run_dir, &["read", name, &MARKER_ADDR.to_string(), "8", "--raw"]);
    assert_eq!(output.stdout, MARKER[..8], "{}", stderr(&output));
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_memfd_and_private_ram_vms() {
    require_qemu();
    common::require_root();
    let run_dir = TestRunDir::new();
    let _memfd = hand_vm(
        &run_dir,
        "memfd",
        &[
            "-machine".into(),
            "q35,accel=tcg,memory-backend=mf".into(),
            "-object".into(),
            "memory-backend-memfd,id=mf,size=64M,share=on".into(),
        ],
    );
    let _private = hand_vm(&run_dir, "private", &["-machine".into(), "q35,accel=tcg".into()]);
    let mount = TestMount::new(&run_dir, &["--passthrough=never"]);
    assert_eq!(mount.ls(), ["memfd", "private"], "{}", mount.log_text());
    check_vm(&run_dir, &mount, "memfd", "memfd", true);
    check_vm(&run_dir, &mount, "private", "private", false);
    // private RAM can be copied, not viewed in place
    let (bridge, _) = Vm::existing(&run_dir.run_dir, "private").unwrap().open_bridge().unwrap();
    assert!(matches!(bridge.read_physical(0, 16), Err(qemu_bridge::BridgeError::NotMapped)));
    // under the default passthrough=auto, memfd RAM is served by the kernel from QEMU's memfd
    // and private RAM (no file) by the daemon, with a line saying so: the same bytes either way
    for name in ["memfd", "private"] {
        Vm::existing(&run_dir.run_dir, name).unwrap().with_qmp(|qmp| qmp.stop()).unwrap();
    }
    let passthrough = TestMount::new(&run_dir, &[]);
    for name in ["memfd", "private"] {
        let direct = std::fs::read(mount.path(&format!("{name}/ram"))).unwrap();
        let through = std::fs::read(passthrough.path(&format!("{name}/ram"))).unwrap();
        assert!(direct == through, "{name}: passthrough serves other bytes");
    }
    let log = passthrough.log_text();
    assert!(log.contains("private/ram: no passthrough (the RAM is not one file)"), "{log}");
    assert!(!log.contains("memfd/ram: no passthrough"), "{log}");
    drop(passthrough);
    // --passthrough=always: memfd RAM opens, private RAM is refused with a clear errno
    let always = TestMount::new(&run_dir, &["--passthrough=always"]);
    assert!(std::fs::read(always.path("memfd/ram")).is_ok());
    let refused = std::fs::File::open(always.path("private/ram")).map(drop);
    assert_eq!(refused.map_err(|err| err.raw_os_error()), Err(Some(libc::EOPNOTSUPP)));
    assert!(always.log_text().contains("private/ram: --passthrough=always: the RAM is not one file"));
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_hugetlbfs_ram_vm() {
    require_qemu();
    let pool = HugePages::reserve(40);
    let run_dir = TestRunDir::new();
    let ram_file = pool.dir.path().join("vm-ram");
    let vm = hand_vm(
        &run_dir,
        "huge",
        &[
            "-machine".into(),
            "q35,accel=tcg,memory-backend=h".into(),
            "-object".into(),
            format!("memory-backend-file,id=h,size=64M,share=on,mem-path={}", ram_file.display()),
        ],
    );
    let mount = TestMount::new(&run_dir, &[]);
    assert_eq!(mount.ls(), ["huge"], "{}", mount.log_text());
    // Reading all of it (ram, checksum, a snapshot) faults in none of the guest's untouched
    // huge pages: measured with the guest paused, before pmemsave (QEMU's own read faults in
    // every page).
    assert!(wait_until(Duration::from_secs(120), || common::qemu_bridge(
        &run_dir,
        &["read", "huge", &MARKER_ADDR.to_string(), "30", "--raw"]
    )
    .stdout
        == MARKER));
    let vm_handle = Vm::existing(&run_dir.run_dir, "huge").unwrap();
    vm_handle.with_qmp(|qmp| qmp.stop()).unwrap();
    let free = common::huge_pages_free();
    assert!(free >= 16, "the guest touched most of its RAM already: {free} huge pages free");
    assert_eq!(std::fs::read(mount.path("huge/ram")).unwrap().len() as u64, SIZE);
    assert!(std::fs::read_to_string(mount.path("huge/checksum")).unwrap().contains(" consistent "));
    let out = run_dir.qemu_output("huge.snapshot");
    let output = common::qemu_bridge(&run_dir, &["snapshot", "huge", "-o", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(common::huge_pages_free(), free, "reading allocated huge pages");
    vm_handle.with_qmp(|qmp| qmp.cont()).unwrap();
    check_vm(&run_dir, &mount, "huge", "hugetlbfs", false);
    drop(mount);
    drop(vm);
    assert!(wait_until(Duration::from_secs(10), || Path::new(&ram_file).exists()));
    let _ = std::fs::remove_file(&ram_file);
}

fn allocated(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(path).unwrap()) * 512
}

/// A 4 GiB VM that touched little of its RAM: reading every file of its directory in full and a
/// snapshot leave its RAM file's allocated size as it was; the snapshot is 4 GiB long, equal to
/// the RAM file, and sparse.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_reading_a_big_idle_vm_allocates_nothing() {
    const BIG: u64 = 4 << 30;
    require_qemu();
    let run_dir = TestRunDir::new();
    let vm = common::VmBuilder::new("idle", &run_dir).memory(BIG).launch();
    vm.wait_for_marker();
    let handle = Vm::existing(&run_dir.run_dir, vm.name()).unwrap();
    handle.with_qmp(|qmp| qmp.stop()).unwrap();
    let ram_file = vm.launched.ram_path.clone();
    let before = allocated(&ram_file);
    assert!(before < 256 << 20, "the guest touched {before} bytes already");
    let mount = TestMount::new(&run_dir, &[]);
    for file in ["ram", "physical", "core", "checksum", "memdev.json", "layout.json", "status", "map.png"] {
        let path = mount.path(&format!("{}/{file}", vm.name()));
        let status = Command::new("dd")
            .arg(format!("if={}", path.display()))
            .args(["of=/dev/null", "bs=1M", "status=none"])
            .status()
            .unwrap();
        assert!(status.success(), "dd of {file}");
    }
    // the boot-sector guest is no Linux: vmcoreinfo says so, after a look that allocated nothing
    let vmcoreinfo = std::fs::read(mount.path(&format!("{}/vmcoreinfo", vm.name()))).unwrap_err();
    assert_eq!(vmcoreinfo.raw_os_error(), Some(libc::ENODATA), "{vmcoreinfo}");
    let out = run_dir.qemu_output("idle.snapshot");
    let output = common::qemu_bridge(&run_dir, &["snapshot", vm.name(), "-o", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let after = allocated(&ram_file);
    assert!(after <= before + (4 << 20), "reading allocated guest RAM: {before} -> {after} bytes");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), BIG);
    assert!(allocated(&out) <= before + (4 << 20), "the snapshot is not sparse: {} bytes", allocated(&out));
    let same = Command::new("cmp").arg(&out).arg(&ram_file).status().unwrap();
    assert!(same.success(), "the snapshot differs from the RAM file");
}
