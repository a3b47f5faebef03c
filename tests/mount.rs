//! The FUSE mount against real VMs: discovery, live files, bounds, read-only, shutdown.

use qemu_bridge_test_support as common;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

use common::process::alive as process_alive;
use common::{require_qemu, wait_until, TestMount, TestRunDir, VmBuilder, MARKER, MARKER_ADDR};
use qemu_bridge::Vm;

const SIZE: u64 = 64 << 20;

fn qmp(run_dir: &TestRunDir, name: &str) -> Vm {
    Vm::existing(&run_dir.run_dir, name).unwrap()
}

/// A mount point whose path is not ASCII is found in /proc/self/mountinfo (it used to be
/// compared as `char`s of single bytes, so `mount` waited 20 s and failed).
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_mount_point_with_a_non_ascii_path() {
    common::require_fuse();
    let run_dir = TestRunDir::new();
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("qemu-ünïcode mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let output = common::qemu_bridge(&run_dir, &["mount", mountpoint.to_str().unwrap()]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    let pid = common::daemon_pid(&common::stdout(&output));
    assert!(qemu_bridge::mount::is_mounted(&mountpoint));
    assert_eq!(std::fs::read_dir(&mountpoint).unwrap().count(), 0, "no VMs in an empty run directory");
    let output =
        Command::new(env!("CARGO_BIN_EXE_qemu-bridge")).arg("umount").arg(&mountpoint).output().unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    assert!(!qemu_bridge::mount::is_mounted(&mountpoint));
    assert!(wait_until(Duration::from_secs(10), || !process_alive(pid)));
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_mount_lists_launched_vms_and_drops_killed_ones() {
    let (run_dir, first) = common::running_vm("ls-a");
    let mount = TestMount::new(&run_dir, &[]);
    assert_eq!(mount.ls(), [first.name()]);
    // a VM launched after mounting shows up at the next ls
    let second = VmBuilder::new("ls-b", &run_dir).launch();
    assert!(wait_until(Duration::from_secs(10), || mount.ls().contains(&second.name().to_string())));
    let mut entries: Vec<String> = std::fs::read_dir(mount.path(first.name()))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            "checksum",
            "core",
            "cpus",
            "layout.json",
            "map.png",
            "memdev.json",
            "physical",
            "ram",
            "status",
            "vmcoreinfo"
        ]
    );
    // a killed VM disappears: no stale directory
    first.kill();
    assert!(wait_until(Duration::from_secs(10), || mount.ls() == [second.name()]), "{:?}", mount.ls());
    assert!(!mount.path(first.name()).exists());
    assert!(std::fs::read(mount.path(&format!("{}/status", first.name()))).is_err());
    // the other VM is unaffected
    assert_eq!(
        std::fs::read_to_string(mount.path(&format!("{}/status", second.name()))).unwrap(),
        "running\n"
    );
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_mount_status_follows_qmp() {
    let (run_dir, vm) = common::running_vm("status");
    let mount = TestMount::new(&run_dir, &[]);
    let status = mount.path(&format!("{}/status", vm.name()));
    assert_eq!(std::fs::read_to_string(&status).unwrap(), "running\n");
    qmp(&run_dir, vm.name()).with_qmp(|q| q.stop()).unwrap();
    assert_eq!(std::fs::read_to_string(&status).unwrap(), "paused\n");
    qmp(&run_dir, vm.name()).with_qmp(|q| q.cont()).unwrap();
    assert_eq!(std::fs::read_to_string(&status).unwrap(), "running\n");
    // `cat` reads the generated file whole although it reports size 0
    let output = Command::new("cat").arg(&status).output().unwrap();
    assert_eq!(output.stdout, b"running\n");
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_mount_memdev_json_and_checksum() {
    let (run_dir, vm) = common::booted_vm("memdev");
    let mount = TestMount::new(&run_dir, &[]);
    let text = std::fs::read_to_string(mount.path(&format!("{}/memdev.json", vm.name()))).unwrap();
    assert!(text.ends_with("}\n]\n"), "pretty JSON ending in a newline: {text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json[0]["mem-path"], vm.launched.ram_path.to_str().unwrap());
    assert_eq!(json[0]["size"], SIZE);
    assert_eq!(json[0]["share"], true);

    // paused: the checksum is consistent on the first attempt and equals sha256 of the file
    qmp(&run_dir, vm.name()).with_qmp(|q| q.stop()).unwrap();
    let line = std::fs::read_to_string(mount.path(&format!("{}/checksum", vm.name()))).unwrap();
    let expected = qemu_bridge::ram::sha256_hex(&std::fs::read(&vm.launched.ram_path).unwrap());
    assert_eq!(line, format!("sha256 {expected} consistent attempts=1 torn_pages=0 size={SIZE}\n"));
    // running, the guest's counter changes constantly: the verdict must say so honestly
    qmp(&run_dir, vm.name()).with_qmp(|q| q.cont()).unwrap();
    let line = std::fs::read_to_string(mount.path(&format!("{}/checksum", vm.name()))).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[0], "sha256");
    assert_eq!(fields[1].len(), 64);
    assert!(fields[2] == "torn" || fields[2] == "consistent", "{line}");
    let layout: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(mount.path(&format!("{}/layout.json", vm.name()))).unwrap(),
    )
    .unwrap();
    // QEMU's own map: RAM below the BIOS window (where the firmware may have made part of
    // 0xC0000-0xFFFFF RAM again), then up to the end
    assert_eq!(layout["source"], "mtree", "{layout}");
    assert_eq!(layout["regions"][0]["gpa"], 0);
    assert!((0xa0000..=0x100000).contains(&layout["regions"][0]["len"].as_u64().unwrap()), "{layout}");
    let last = &layout["regions"][layout["regions"].as_array().unwrap().len() - 1];
    assert_eq!(last["gpa"].as_u64().unwrap() + last["len"].as_u64().unwrap(), SIZE, "{layout}");
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_mount_ram_equals_pmemsave_and_is_live() {
    let (run_dir, vm) = common::booted_vm("ram");
    let mount = TestMount::new(&run_dir, &[]);
    let ram_path = mount.path(&format!("{}/ram", vm.name()));
    assert_eq!(std::fs::metadata(&ram_path).unwrap().len(), SIZE);

    // live: the counter changes between two reads of the same open file (no page cache)
    let ram = File::open(&ram_path).unwrap();
    let first = common::counter_in(&ram);
    assert!(wait_until(Duration::from_secs(60), || common::counter_in(&ram) != first), "stale reads");

    // xxd at the marker shows it
    let output = Command::new("xxd")
        .args(["-s", &MARKER_ADDR.to_string(), "-l", "32"])
        .arg(&ram_path)
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("QEMU-BRIDGE-TEST"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    // dd of a stopped VM's ram equals QEMU's pmemsave outside the VGA/ROM window
    let handle = qmp(&run_dir, vm.name());
    let oracle = run_dir.qemu_output("pmemsave.bin");
    handle
        .with_qmp(|q| {
            q.stop()?;
            q.pmemsave(0, SIZE, &oracle)
        })
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || std::fs::metadata(&oracle).is_ok_and(|m| m.len() == SIZE)));
    let dumped = run_dir.path().join("dd.bin");
    let status = Command::new("dd")
        .arg(format!("if={}", ram_path.display()))
        .arg(format!("of={}", dumped.display()))
        .args(["bs=1M", "status=none"])
        .status()
        .unwrap();
    assert!(status.success());
    let ours = std::fs::read(&dumped).unwrap();
    let expected = std::fs::read(&oracle).unwrap();
    assert_eq!(ours.len(), expected.len());
    let differing =
        (0..ours.len()).filter(|&i| ours[i] != expected[i] && !(0xA0000..0x100000).contains(&i)).count();
    assert_eq!(differing, 0);
    assert_eq!(&ours[MARKER_ADDR as usize..MARKER_ADDR as usize + MARKER.len()], MARKER);

    // grep -a finds the marker
    let output =
        Command::new("grep").args(["-a", "-c", "QEMU-BRIDGE-TEST-MARKER"]).arg(&ram_path).output().unwrap();
    assert!(output.status.success());

    // bounds: at or past the end nothing, across the end cut
    let mut buffer = vec![0u8; 8192];
    assert_eq!(ram.read_at(&mut buffer, SIZE).unwrap(), 0);
    assert_eq!(ram.read_at(&mut buffer, SIZE + 12345).unwrap(), 0);
    // far past the end the kernel itself refuses the offset (EINVAL) or we return nothing
    assert!(ram
        .read_at(&mut buffer, u64::MAX / 2)
        .map_or_else(|e| e.raw_os_error() == Some(libc::EINVAL), |n| n == 0));
    assert_eq!(ram.read_at(&mut buffer, SIZE - 100).unwrap(), 100);
    assert_eq!(ram.read_at(&mut buffer[..0], 0).unwrap(), 0);
    // a whole read through the mount equals the RAM file (VM paused)
    let mut whole = Vec::new();
    File::open(&ram_path).unwrap().read_to_end(&mut whole).unwrap();
    assert_eq!(whole, std::fs::read(&vm.launched.ram_path).unwrap());
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_mount_is_read_only() {
    let (run_dir, vm) = common::running_vm("ro");
    let mount = TestMount::new(&run_dir, &[]);
    let dir = mount.path(vm.name());
    let ram = dir.join("ram");
    let read_only = |err: std::io::Error| {
        assert!(
            matches!(err.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM)),
            "unexpected error {err}"
        )
    };
    read_only(std::fs::OpenOptions::new().write(true).open(&ram).unwrap_err());
    read_only(std::fs::OpenOptions::new().read(true).write(true).open(&ram).unwrap_err());
    read_only(std::fs::OpenOptions::new().write(true).truncate(true).open(dir.join("status")).unwrap_err());
    read_only(File::create(dir.join("new-file")).unwrap_err());
    read_only(std::fs::create_dir(dir.join("subdir")).unwrap_err());
    read_only(std::fs::remove_file(&ram).unwrap_err());
    read_only(
        std::fs::set_permissions(&ram, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap_err(),
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&ram).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o444);
    // the daemon maps guest RAM read-only, never writable
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", mount.pid)).unwrap();
    let ram_file = vm.launched.ram_path.to_str().unwrap();
    let mappings: Vec<&str> = maps.lines().filter(|l| l.ends_with(ram_file)).collect();
    assert!(!mappings.is_empty(), "the daemon should map the RAM file");
    for line in mappings {
        assert_eq!(line.split_whitespace().nth(1), Some("r--s"), "{line}");
    }
    // lookups of odd names fail cleanly
    assert!(!mount.path("..hidden").exists());
    assert!(std::fs::metadata(dir.join("nonexistent")).is_err());
    assert!(std::fs::metadata(mount.path(&"x".repeat(255))).is_err());
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_multi_vm() {
    require_qemu();
    let run_dir = TestRunDir::new();
    let vms: Vec<_> = (0..3).map(|i| VmBuilder::new(&format!("multi{i}"), &run_dir).launch()).collect();
    // Stamp each VM's RAM (the test writes the files; the mount never does) at the same offset.
    const STAMP_AT: u64 = 0x200000;
    for (index, vm) in vms.iter().enumerate() {
        let file = std::fs::OpenOptions::new().write(true).open(&vm.launched.ram_path).unwrap();
        file.write_all_at(format!("stamp-of-vm-{index}-{}", vm.name()).as_bytes(), STAMP_AT).unwrap();
    }
    let mount = TestMount::new(&run_dir, &[]);
    let mut names: Vec<String> = vms.iter().map(|vm| vm.name().to_string()).collect();
    names.sort();
    assert_eq!(mount.ls(), names);
    // all three read at the same time, each directory serving only its own VM
    std::thread::scope(|scope| {
        for (index, vm) in vms.iter().enumerate() {
            let path = mount.path(&format!("{}/ram", vm.name()));
            scope.spawn(move || {
                let ram = File::open(&path).unwrap();
                let expected = format!("stamp-of-vm-{index}-{}", vm.name());
                for _ in 0..50 {
                    let mut buffer = vec![0u8; expected.len()];
                    ram.read_exact_at(&mut buffer, STAMP_AT).unwrap();
                    assert_eq!(String::from_utf8_lossy(&buffer), expected);
                    let mut chunk = vec![0u8; 1 << 20];
                    assert_eq!(ram.read_at(&mut chunk, 0).unwrap(), 1 << 20);
                }
            });
        }
    });
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_mount_survives_dead_and_hung_sockets() {
    let (run_dir, vm) = common::running_vm("healthy");
    // a socket nobody listens on, one that accepts and never speaks, one that speaks garbage
    let dead = std::os::unix::net::UnixListener::bind(run_dir.path().join("dead.qmp")).unwrap();
    drop(dead);
    let _hung = std::os::unix::net::UnixListener::bind(run_dir.path().join("hung.qmp")).unwrap();
    let garbage = std::os::unix::net::UnixListener::bind(run_dir.path().join("garbage.qmp")).unwrap();
    std::thread::spawn(move || {
        for stream in garbage.incoming().flatten() {
            let mut stream = stream;
            let _ = std::io::Write::write_all(&mut stream, b"\xff\xfe not json at all\n{\"QMP\": 5}\n");
        }
    });
    let mount = TestMount::new(&run_dir, &[]);
    assert_eq!(mount.ls(), [vm.name()]);
    assert_eq!(std::fs::read_to_string(mount.path(&format!("{}/status", vm.name()))).unwrap(), "running\n");
    assert!(!mount.path("hung").exists());
    assert!(mount.log_text().contains("skipping VM"), "{}", mount.log_text());
    // a second mount on the same mount point is refused with a clear error
    let output = Command::new(env!("CARGO_BIN_EXE_qemu-bridge"))
        .arg("mount")
        .arg(&mount.mountpoint)
        .arg("--run-dir")
        .arg(run_dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already a qemu-bridge mount"));
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_audit_log_records_ram_access() {
    let (run_dir, vm) = common::running_vm("audit");
    let audit = run_dir.path().join("audit.log");
    let mount = TestMount::new(&run_dir, &["--audit-log", audit.to_str().unwrap()]);
    let ram = File::open(mount.path(&format!("{}/ram", vm.name()))).unwrap();
    let mut buffer = [0u8; 4096];
    ram.read_exact_at(&mut buffer, 0x7000).unwrap();
    drop(ram);
    let log = std::fs::read_to_string(&audit).unwrap();
    let me = std::process::id();
    let uid = common::process::effective_uid();
    assert!(log.contains(&format!("uid={uid} pid={me} vm={} file=ram op=open", vm.name())), "{log}");
    assert!(
        log.contains(&format!(
            "uid={uid} pid={me} vm={} file=ram op=read offset={} len=4096",
            vm.name(),
            0x7000
        )),
        "{log}"
    );
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_unmount_paths_leave_nothing_behind() {
    let (run_dir, vm) = common::running_vm("umount");
    // qemu-bridge umount, umount(8) and fusermount3 -u all end the daemon and the mount
    let binary = env!("CARGO_BIN_EXE_qemu-bridge");
    for how in ["qemu-bridge", "umount", "fusermount3"] {
        let mount = TestMount::new(&run_dir, &[]);
        // a file open while unmounting
        let open = File::open(mount.path(&format!("{}/ram", vm.name()))).unwrap();
        let status = match how {
            "qemu-bridge" => Command::new(binary).arg("umount").arg(&mount.mountpoint).status(),
            "umount" => Command::new("umount").arg("-l").arg(&mount.mountpoint).status(),
            _ => Command::new("fusermount3").arg("-u").arg("-z").arg(&mount.mountpoint).status(),
        }
        .unwrap();
        assert!(status.success(), "{how}");
        assert!(!mount.is_mounted(), "{how}: still mounted");
        drop(open);
        assert!(
            wait_until(Duration::from_secs(10), || !process_alive(mount.pid)),
            "{how}: daemon still running"
        );
    }
    // the daemon's exit is clean: it logged the unmount, no panic
    let output = Command::new(binary).args(["umount", "/nonexistent-mountpoint"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a qemu-bridge mount"));
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_foreground_mount_ends_on_signals() {
    let (run_dir, vm) = common::running_vm("fg");
    for signal in [nix::sys::signal::SIGINT, nix::sys::signal::SIGTERM] {
        let dir = tempfile::tempdir().unwrap();
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_qemu-bridge"))
            .arg("mount")
            .arg(&mountpoint)
            .arg("--foreground")
            .arg("--run-dir")
            .arg(run_dir.path())
            // the daemon's reads: under passthrough, a file opened before the unmount keeps
            // reading the RAM file through the kernel (as any open file outlives a lazy unmount)
            .arg("--passthrough=never")
            .spawn()
            .unwrap();
        assert!(wait_until(Duration::from_secs(20), || qemu_bridge::mount::is_mounted(&mountpoint)));
        // a reader active while the signal arrives
        let ram = File::open(mountpoint.join(format!("{}/ram", vm.name()))).unwrap();
        let mut buffer = vec![0u8; 1 << 20];
        assert_eq!(ram.read_at(&mut buffer, 0).unwrap(), 1 << 20);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || child.try_wait().unwrap().is_some()),
            "{signal} ignored"
        );
        assert!(child.wait().unwrap().success());
        assert!(!qemu_bridge::mount::is_mounted(&mountpoint), "{signal}: stale mount");
        // the daemon is gone, so the open reader's connection is too: an error, never a hang
        // and never bytes
        let after = ram.read_at(&mut buffer, 0);
        assert!(
            matches!(after.as_ref().map_err(|e| e.raw_os_error()), Err(Some(libc::ENOTCONN | libc::ENODEV))),
            "{signal}: {after:?}"
        );
    }
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_passthrough_serves_the_same_bytes() {
    let (run_dir, vm) = common::booted_vm("passthrough");
    qmp(&run_dir, vm.name()).with_qmp(|q| q.stop()).unwrap();
    let audit = run_dir.path().join("audit.log");
    let mount = TestMount::new(&run_dir, &["--passthrough=always", "--audit-log", audit.to_str().unwrap()]);
    let ram_path = mount.path(&format!("{}/ram", vm.name()));
    let mut whole = Vec::new();
    File::open(&ram_path).unwrap().read_to_end(&mut whole).unwrap();
    assert_eq!(whole, std::fs::read(&vm.launched.ram_path).unwrap());
    let ram = File::open(&ram_path).unwrap();
    let mut buffer = vec![0u8; 100];
    assert_eq!(ram.read_at(&mut buffer, SIZE - 10).unwrap(), 10);
    assert_eq!(ram.read_at(&mut buffer, SIZE).unwrap(), 0);
    // passthrough reads are live too
    qmp(&run_dir, vm.name()).with_qmp(|q| q.cont()).unwrap();
    let first = common::counter_in(&ram);
    assert!(wait_until(Duration::from_secs(60), || common::counter_in(&ram) != first));
    // With kernel passthrough, reads never reach the daemon: the audit log sees opens only.
    // Where the kernel refuses it, the daemon says so and serves the reads itself.
    let log = mount.log_text();
    let audit = std::fs::read_to_string(&audit).unwrap();
    assert!(audit.contains("op=open"));
    if log.contains("no passthrough") || log.contains("does not offer FUSE passthrough") {
        assert!(!common::in_ci(), "CI machines (kernel >= 6.9, root) must support passthrough: {log}");
        assert!(audit.contains("op=read"));
    } else {
        assert!(!audit.contains("op=read"), "passthrough reads reached the daemon: {audit}");
    }
}

/// With no flag, root's mount is served by passthrough: `ram` can be mapped, the mapping holds
/// the RAM file's bytes and is live. Under `--passthrough=never`, mmap fails with ENODEV.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_default_mount_can_mmap_live_ram() {
    require_qemu();
    common::require_root();
    let run_dir = TestRunDir::new();
    let vm = VmBuilder::new("mmap", &run_dir).launch();
    vm.wait_for_marker();
    let mount = TestMount::new(&run_dir, &[]);
    let ram = File::open(mount.path(&format!("{}/ram", vm.name()))).unwrap();
    // SAFETY (test): a read-only shared mapping whose bytes change; only copied out of.
    let map = unsafe { memmap2::Mmap::map(&ram) }.expect("mmap of ram under the default mount");
    assert_eq!(map.len() as u64, SIZE);
    let counter = || {
        let at = common::COUNTER_ADDR as usize;
        // SAFETY (test): in bounds; a volatile read of live memory
        let bytes: [u8; 4] = unsafe { std::ptr::read_volatile(map.as_ptr().add(at) as *const [u8; 4]) };
        u32::from_le_bytes(bytes)
    };
    let first = counter();
    assert!(wait_until(Duration::from_secs(60), || counter() != first), "the mapping is not live");
    qmp(&run_dir, vm.name()).with_qmp(|q| q.stop()).unwrap();
    assert!(
        map[..] == std::fs::read(&vm.launched.ram_path).unwrap()[..],
        "the mapping differs from the RAM file"
    );
    drop(map);
    drop(ram);
    drop(mount);

    let never = TestMount::new(&run_dir, &["--passthrough=never"]);
    let ram = File::open(never.path(&format!("{}/ram", vm.name()))).unwrap();
    // SAFETY (test): as above; expected to fail
    let refused = unsafe { memmap2::Mmap::map(&ram) }.map(drop);
    assert_eq!(refused.map_err(|err| err.raw_os_error()), Err(Some(libc::ENODEV)));
}

/// `--passthrough=always` where it cannot be had (a user without CAP_SYS_ADMIN) fails before
/// mounting, with the reason, and leaves no mount behind; an unknown mode is named.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_passthrough_always_refused_without_privileges() {
    common::require_root();
    common::require_fuse();
    let dir = tempfile::Builder::new().prefix("qb-nobody").tempdir().unwrap();
    let (mountpoint, run) = (dir.path().join("mnt"), dir.path().join("run"));
    std::fs::create_dir(&mountpoint).unwrap();
    std::fs::create_dir(&run).unwrap();
    for path in [dir.path(), &mountpoint, &run] {
        nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    }
    // a copy of the binary nobody can reach (CI clones into directories of mode 0700)
    let binary = dir.path().join("qemu-bridge");
    std::fs::copy(env!("CARGO_BIN_EXE_qemu-bridge"), &binary).unwrap();
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(&binary)
            .arg("mount")
            .arg(&mountpoint)
            .arg("--run-dir")
            .arg(&run)
            .args(args)
            .output()
            .unwrap()
    };
    let refused = as_nobody(&["--passthrough=always"]);
    common::assert_clean_failure(&refused, "--passthrough=always: FUSE passthrough needs CAP_SYS_ADMIN");
    assert!(!qemu_bridge::mount::is_mounted(&mountpoint));
    let unknown = as_nobody(&["--passthrough=sometimes"]);
    common::assert_clean_failure(&unknown, "sometimes");
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_unresponsive_qmp_gives_eio_not_a_hang() {
    let (run_dir, frozen) = common::running_vm("frozen");
    let healthy = VmBuilder::new("fine", &run_dir).launch();
    let mount = TestMount::new(&run_dir, &[]);
    assert_eq!(mount.ls().len(), 2);
    // SIGSTOP: the socket still accepts connections (kernel backlog) but QEMU never answers
    let pid = nix::unistd::Pid::from_raw(frozen.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::SIGSTOP).unwrap();
    let result = std::fs::read_to_string(mount.path(&format!("{}/status", frozen.name())));
    let ram_still_readable = std::fs::File::open(mount.path(&format!("{}/ram", frozen.name())))
        .and_then(|ram| {
            let mut buffer = [0u8; 16];
            ram.read_exact_at(&mut buffer, MARKER_ADDR)
        })
        .is_ok();
    nix::sys::signal::kill(pid, nix::sys::signal::SIGCONT).unwrap();
    let err = result.expect_err("status of a frozen VM must fail, not show stale text");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(ram_still_readable, "RAM is read from the mapping, without QMP");
    assert!(mount.log_text().contains(&format!("{}/status", frozen.name())), "{}", mount.log_text());
    // the other VM was never affected
    assert_eq!(
        std::fs::read_to_string(mount.path(&format!("{}/status", healthy.name()))).unwrap(),
        "running\n"
    );
    // and the frozen one recovers once it runs again
    assert!(wait_until(Duration::from_secs(10), || std::fs::read_to_string(
        mount.path(&format!("{}/status", frozen.name()))
    )
    .is_ok_and(|s| s == "running\n")));
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_other_users_need_allow_other() {
    require_qemu();
    common::require_program("setpriv");
    common::require_root();
    let run_dir = TestRunDir::new();
    let vm = VmBuilder::new("acl", &run_dir).launch();
    let as_nobody = |path: &std::path::Path| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "cat"])
            .arg(path)
            .output()
            .unwrap()
    };
    for (extra, allowed) in [(&[][..], false), (&["--allow-other"][..], true)] {
        let mount = TestMount::new(&run_dir, extra);
        // the temporary directory above the mount point must be traversable by nobody
        std::fs::set_permissions(mount.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let output = as_nobody(&mount.path(&format!("{}/status", vm.name())));
        assert_eq!(
            output.status.success(),
            allowed,
            "{extra:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        if allowed {
            assert_eq!(output.stdout, b"running\n");
        }
    }
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_status_readers_never_starve_other_qmp_clients() {
    let (run_dir, vm) = common::running_vm("starve");
    let mount = TestMount::new(&run_dir, &[]);
    let status = mount.path(&format!("{}/status", vm.name()));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let reads = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        // a tight loop of status reads keeps the mount's cached QMP connection busy
        let reader = scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = std::fs::read_to_string(&status);
                assert!(text.as_deref().is_ok_and(|t| t == "running\n"), "{text:?}: {}", mount.log_text());
                reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        // the other clients come once the loop holds the connection, whenever it got a CPU
        assert!(wait_until(Duration::from_secs(30), || reads.load(std::sync::atomic::Ordering::Relaxed) > 0));
        // QEMU 7.2 serves one QMP client at a time: other clients must still get their turn
        for _ in 0..5 {
            let before = reads.load(std::sync::atomic::Ordering::Relaxed);
            let answer = qmp(&run_dir, vm.name()).status();
            assert!(answer.is_ok(), "another QMP client starved: {answer:?}");
            // and the loop went on between them
            assert!(wait_until(Duration::from_secs(30), || reads.load(std::sync::atomic::Ordering::Relaxed)
                > before));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap();
    });
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_bad_input_at_every_edge() {
    require_qemu();
    use std::os::unix::ffi::OsStrExt;
    let run_dir = TestRunDir::new();
    let vm = VmBuilder::new("edges", &run_dir).launch();
    let mount = TestMount::new(&run_dir, &[]);
    let dir = mount.path(vm.name());
    // odd names: non-UTF-8, very long, dot names, a file name as a directory
    let not_found = |path: std::path::PathBuf| {
        let err = std::fs::metadata(&path).unwrap_err();
        assert!(
            matches!(err.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENAMETOOLONG) | Some(libc::ENOTDIR)),
            "{path:?}: {err}"
        );
    };
    not_found(mount.mountpoint.join(std::ffi::OsStr::from_bytes(b"\xff\xfe-not-utf8")));
    not_found(dir.join(std::ffi::OsStr::from_bytes(b"ram\xff")));
    not_found(mount.path(&"n".repeat(255)));
    not_found(mount.path(&"n".repeat(300)));
    not_found(dir.join("ram/inside"));
    not_found(mount.path(".hidden"));
    // `..` from a VM directory is the root
    let parent = std::fs::read_dir(dir.join("..")).unwrap().count();
    assert_eq!(parent, 1);
    // zero-length and huge-offset reads
    let ram = File::open(dir.join("ram")).unwrap();
    assert_eq!(ram.read_at(&mut [], 12345).unwrap(), 0);
    assert!(ram
        .read_at(&mut [0u8; 16], u64::MAX - 15)
        .map_or_else(|e| e.raw_os_error() == Some(libc::EINVAL), |n| n == 0));
    // directories cannot be opened for writing, files cannot be truncated, xattrs cannot be set
    assert!(std::fs::OpenOptions::new().write(true).open(&dir).is_err());
    assert!(std::fs::OpenOptions::new().write(true).truncate(true).open(dir.join("ram")).is_err());
    let program = format!(
        "import os, errno\ntry:\n    os.setxattr({path:?}, 'user.test', b'1')\n    print('set')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n",
        path = dir.join("ram")
    );
    let output = Command::new("python3").arg("-c").arg(&program).output().unwrap();
    let answer = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        ["EROFS", "ENOTSUP", "EOPNOTSUPP", "EPERM", "EACCES"].contains(&answer.as_str()),
        "setxattr: {answer}"
    );
    // getxattr and listxattr answer without errors a tool would choke on
    let program = format!("import os\nprint(os.listxattr({path:?}))\n", path = dir.join("ram"));
    let output = Command::new("python3").arg("-c").arg(&program).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "[]");
    // the daemon is still fine
    assert_eq!(std::fs::read_to_string(dir.join("status")).unwrap(), "running\n");
    assert!(process_alive(mount.pid));
}

/// The threads, open sockets (QMP connections among them), other open descriptors and private
/// memory (KiB) of process `pid`.
fn footprint(pid: u32) -> (usize, usize, usize, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|count| count.trim().parse().ok())
        .unwrap();
    let (mut sockets, mut others) = (0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        // a descriptor closed while listed is gone: not counted
        match std::fs::read_link(entry.unwrap().path()) {
            Ok(target) if target.to_string_lossy().starts_with("socket:") => sockets += 1,
            Ok(_) => others += 1,
            Err(_) => {}
        }
    }
    (threads, sockets, others, common::anon_rss_kib(pid))
}

/// A host full of VMs: a mount of 100 (never started, 16 MiB each) lists every one on the first
/// `ls` and serves each its own files (`ls -l` of every directory; its status; its memdev,
/// naming its own RAM file; its `ram`, where a marker of its own written into each RAM file,
/// as its guest would, reads back from that VM only: no two VMs' inodes alias), and nothing in
/// the daemon grows per VM or per read: its threads stay a handful, the QMP connections it
/// opened are closed once idle, and a second pass over every file leaves its other descriptors
/// (one RAM file a VM) and its memory where the first pass left them. (Figures: the
/// `many_vms` rows of the benchmarks.)
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_a_mount_of_a_hundred_vms() {
    const COUNT: usize = 100;
    const MARKER_AT: u64 = 0x7000;
    let run_dir = TestRunDir::new();
    let vms = common::never_started_vms("many", &run_dir, COUNT, 16 << 20);
    for vm in &vms {
        let ram = std::fs::OpenOptions::new().write(true).open(&vm.launched.ram_path).unwrap();
        ram.write_all_at(vm.name().as_bytes(), MARKER_AT).unwrap();
    }
    let mount = TestMount::new(&run_dir, &[]);
    let mut names: Vec<String> = vms.iter().map(|vm| vm.name().to_string()).collect();
    names.sort();
    assert_eq!(mount.ls(), names, "the first ls lists every VM");
    let every_file = || {
        for vm in &vms {
            let dir = mount.path(vm.name());
            let entries: std::collections::BTreeSet<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|entry| {
                    let entry = entry.unwrap();
                    entry.metadata().unwrap();
                    entry.file_name().into_string().unwrap()
                })
                .collect();
            for file in ["ram", "physical", "core", "status", "memdev.json", "layout.json", "cpus"] {
                assert!(entries.contains(file), "{}: no {file} in {entries:?}", vm.name());
            }
            assert_eq!(std::fs::read_to_string(dir.join("status")).unwrap(), "prelaunch\n", "{}", vm.name());
            let memdev = common::read_json(&dir.join("memdev.json"));
            assert_eq!(memdev[0]["mem-path"], vm.launched.ram_path.to_str().unwrap());
            let mut marker = vec![0u8; vm.name().len()];
            File::open(dir.join("ram")).unwrap().read_exact_at(&mut marker, MARKER_AT).unwrap();
            assert_eq!(marker, vm.name().as_bytes(), "{}'s ram serves another VM's bytes", vm.name());
        }
    };
    let idle = || {
        let mut now = footprint(mount.pid);
        // cached QMP connections close after a moment unused
        let closed = wait_until(Duration::from_secs(10), || {
            now = footprint(mount.pid);
            now.1 <= 2
        });
        assert!(
            closed,
            "QMP connections kept open per VM: {now:?} (threads, sockets, other descriptors, KiB)"
        );
        now
    };
    every_file();
    let first = idle();
    every_file();
    let second = idle();
    assert!(first.0 <= 16, "threads grow with the VMs: {first:?} with {COUNT} VMs");
    assert!(
        second.0 <= first.0 && second.2 <= first.2 && second.3 <= first.3 + 1024,
        "a second pass grew the daemon: {first:?} then {second:?} (threads, sockets, other descriptors, KiB)"
    );
}
