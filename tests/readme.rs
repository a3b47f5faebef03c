//! The README's commands run for real, so that they cannot rot.

use qemu_bridge_test_support as common;

use std::process::Command;

use common::{require_qemu, TestRunDir};

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_readme_quickstart_shows_the_vm_as_files() {
    quickstart("boot");
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_readme_quickstart_boots_linux_and_mounts_it() {
    // the default: no QEMU_BRIDGE_GUEST
    quickstart("");
}

fn quickstart(guest: &str) {
    require_qemu();
    common::require_fuse();
    let run_dir = TestRunDir::new();
    let mount_dir = tempfile::tempdir().unwrap();
    let mountpoint = mount_dir.path().join("qemu");
    let vm = common::unique_name("readme");
    let root = env!("CARGO_MANIFEST_DIR");
    let output = Command::new("bash")
        .arg(format!("{root}/scripts/quickstart.sh"))
        .env("QEMU_BRIDGE_MOUNT", &mountpoint)
        .env("QEMU_BRIDGE_RUN_DIR", run_dir.path())
        .env("QEMU_BRIDGE_VM", &vm)
        .env("QEMU_BRIDGE_BIN", env!("CARGO_BIN_EXE_qemu-bridge"))
        .env("QEMU_BRIDGE_GUEST", guest)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    // clean up before asserting
    let binary = env!("CARGO_BIN_EXE_qemu-bridge");
    let umount = Command::new(binary).arg("umount").arg(&mountpoint).status().unwrap();
    let stop = Command::new(binary).args(["stop", &vm, "--run-dir"]).arg(run_dir.path()).status().unwrap();
    let _ = std::fs::remove_file(format!("{root}/target/guest/{vm}.img"));
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(&vm), "ls shows the VM: {stdout}");
    assert!(stdout.contains("running"), "{stdout}");
    if guest.is_empty() {
        // the tour: version, processes, log, modules, registers, the banner read --virtual
        assert!(stdout.contains("Linux version"), "{stdout}");
        assert!(stdout.contains("    PID    TGID    PPID   UID S COMM"), "the tasks' header: {stdout}");
        assert!(
            stdout.lines().any(|line| line.starts_with("      1       1       0")),
            "init in the tasks: {stdout}"
        );
        assert!(
            stdout.lines().any(|line| line.starts_with('[') && line.contains("] ")),
            "dmesg's tail: {stdout}"
        );
        assert!(stdout.contains("dummy "), "the modules: {stdout}");
        assert!(stdout.contains("'RIP': '0x"), "registers: {stdout}");
        // the hex dump of the banner, read at its virtual address: "Linux "
        assert!(
            stdout.lines().any(|line| line.contains(": 4c69 6e75 7820")),
            "the banner read --virtual: {stdout}"
        );
        assert!(stdout.contains("qemu-bridge-drgn"), "{stdout}");
    } else {
        assert!(stdout.contains("QEMU-BRIDGE-TEST"), "the guest's marker through xxd: {stdout}");
    }
    assert!(stdout.contains("sha256 "), "{stdout}");
    assert!(umount.success() && stop.success());
    assert!(!std::path::Path::new(&format!("/dev/shm/qemu_ram_{vm}")).exists());
}

/// The README's Examples block, run against a mounted Linux guest.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_readme_examples_run() {
    require_qemu();
    common::require_fuse();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let examples = readme.split("## Examples").nth(1).expect("README has an Examples section");
    let block =
        examples.split("```sh\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a sh block");
    let run_dir = TestRunDir::new();
    let vm = common::unique_name("example");
    let root = env!("CARGO_MANIFEST_DIR");
    let guest = std::path::Path::new(root).join("target/guest/linux");
    let built = Command::new(format!("{root}/scripts/build-guest.sh")).arg(&guest).status().unwrap();
    assert!(built.success());
    let binary = env!("CARGO_BIN_EXE_qemu-bridge");
    let launched = Command::new(binary)
        .args(["launch", &vm, "--linux"])
        .arg(&guest)
        .arg("--run-dir")
        .arg(run_dir.path())
        .output()
        .unwrap();
    assert!(launched.status.success(), "{}", String::from_utf8_lossy(&launched.stderr));
    let mount = common::TestMount::new(&run_dir, &[]);
    let work = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        std::path::Path::new(binary).parent().unwrap().display(),
        std::env::var("PATH").unwrap()
    );
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{block}"))
        .current_dir(work.path())
        .env("PATH", path)
        .env("MNT", &mount.mountpoint)
        .env("VM", &vm)
        .env("QEMU_BRIDGE_RUN_DIR", run_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stop = Command::new(binary).args(["stop", &vm, "--run-dir"]).arg(run_dir.path()).status().unwrap();
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stop.success());
    // each example printed what it promises
    assert!(stdout.lines().next().is_some_and(|l| l.contains(":QEMU-BRIDGE-LINUX-MARKER:")), "{stdout}");
    let counters: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("QEMU-BRIDGE-COUNTER:"))
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(counters.len(), 2, "{stdout}");
    assert!(counters[1] > counters[0], "the counter moved on: {counters:?}");
    assert!(
        stdout.lines().any(|l| l.contains(&(128u64 << 20).to_string()) && l.ends_with(&format!("{vm}.ram"))),
        "{stdout}"
    );
    assert!(stdout.contains("paused: checksums match"), "{stdout}");
    assert!(stdout.lines().any(|l| l == "Linux version "), "the banner read --virtual: {stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("CR3 0x")), "{stdout}");
    assert!(stdout.contains(&format!("{vm} running")), "{stdout}");
    assert!(stdout.contains(&format!("['{vm}']")), "{stdout}");
}
