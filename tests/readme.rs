//! The README's commands run for real, so that they cannot rot.

mod common;

use std::process::Command;

use common::{require_qemu, TestRunDir};

#[test]
fn test_readme_quickstart_shows_the_vm_as_files() {
    if !require_qemu() || !std::path::Path::new("/dev/fuse").exists() {
        assert!(!common::in_ci());
        return;
    }
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
    assert!(stdout.contains("QEMU-BRIDGE-TEST"), "the guest's marker through xxd: {stdout}");
    assert!(stdout.contains("sha256 "), "{stdout}");
    assert!(umount.success() && stop.success());
    assert!(!std::path::Path::new(&format!("/dev/shm/qemu_ram_{vm}")).exists());
}
