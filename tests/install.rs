//! `scripts/install.sh` for real: the command, its man page and completions land where a Linux
//! host looks for them, and `mount -t fuse.qemu-bridge` and an fstab line (mount(8) running the
//! installed helper) mount the VMs of a run directory; `umount` ends it; `--uninstall` removes
//! exactly what was installed. On a machine where qemu-bridge is installed already the test
//! leaves it alone (and says so; under CI that is a failure).

use qemu_bridge_test_support as common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{require_qemu, wait_until, TestRunDir, VmBuilder};

const INSTALLED: [&str; 6] = [
    "/usr/local/bin/qemu-bridge",
    "/usr/local/share/man/man1/qemu-bridge.1",
    "/usr/local/share/bash-completion/completions/qemu-bridge",
    "/usr/local/share/zsh/site-functions/_qemu-bridge",
    "/usr/local/share/fish/vendor_completions.d/qemu-bridge.fish",
    "/usr/sbin/mount.fuse.qemu-bridge",
];

/// Uninstalls on drop, so that a failing test leaves nothing installed.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh");
        let _ = Command::new("bash").arg(script).arg("--uninstall").status();
    }
}

fn mounted(mountpoint: &Path) -> bool {
    qemu_bridge::mount::is_mounted(mountpoint)
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_install_gives_man_completions_and_mount_8() {
    require_qemu();
    common::require_root();
    common::require_fuse();
    if INSTALLED.iter().any(|file| Path::new(file).exists()) {
        assert!(!common::in_ci(), "qemu-bridge is installed already on a CI machine");
        eprintln!("SKIPPED: qemu-bridge is installed on this machine; the install test leaves it alone");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh");
    let output = Command::new("bash")
        .arg(script)
        .env("QEMU_BRIDGE_BIN", env!("CARGO_BIN_EXE_qemu-bridge"))
        .output()
        .unwrap();
    let _installed = Installed;
    assert!(output.status.success(), "{}", common::stderr(&output));
    for file in INSTALLED {
        assert!(Path::new(file).exists(), "{file} not installed");
    }
    let man = std::fs::read_to_string(INSTALLED[1]).unwrap();
    assert!(man.contains(".TH qemu-bridge") && man.contains("snapshot"), "{man}");
    let bash = std::fs::read_to_string(INSTALLED[2]).unwrap();
    assert!(bash.contains("complete") && bash.contains("--passthrough"), "{bash}");
    assert!(std::fs::read_to_string(INSTALLED[4]).unwrap().contains("complete -c qemu-bridge"));
    // the installed command prints the same completions
    let printed = Command::new(INSTALLED[0]).args(["completions", "bash"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&printed.stdout), bash);

    let run_dir = TestRunDir::new();
    let vm = VmBuilder::new("fstab", &run_dir).launch();
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("qemu");
    std::fs::create_dir(&mountpoint).unwrap();
    let run = run_dir.path().to_str().unwrap();

    // mount -t fuse.qemu-bridge SOURCE MOUNTPOINT -o OPTIONS, then an fstab line (a private fstab
    // file: mount --fstab) mounted by its mount point: each serves the VM, and umount ends it
    let mount = |args: &[&str]| Command::new("mount").args(args).output().unwrap();
    let target = mountpoint.to_str().unwrap();
    let fstab = dir.path().join("fstab");
    std::fs::write(&fstab, format!("qemu-bridge {target} fuse.qemu-bridge ro,run_dir={run},noauto 0 0\n"))
        .unwrap();
    let options = format!("run_dir={run},passthrough=never");
    let by_type: &[&str] = &["-t", "fuse.qemu-bridge", "qemu-bridge", target, "-o", &options];
    let by_fstab: &[&str] = &["--fstab", fstab.to_str().unwrap(), target];
    for args in [by_type, by_fstab] {
        let output = mount(args);
        assert!(output.status.success(), "{args:?}: {}{}", common::stdout(&output), common::stderr(&output));
        assert!(mounted(&mountpoint));
        let status = mountpoint.join(vm.name()).join("status");
        assert_eq!(std::fs::read_to_string(&status).unwrap(), "running\n");
        assert!(Command::new("umount").arg(&mountpoint).status().unwrap().success());
        assert!(wait_until(Duration::from_secs(10), || !mounted(&mountpoint)), "{args:?}: still mounted");
    }

    // an option qemu-bridge does not know is named, and nothing is mounted
    let output = mount(&[
        "-t",
        "fuse.qemu-bridge",
        "qemu-bridge",
        target,
        "-o",
        &format!("run_dir={run},colour=blue"),
    ]);
    assert!(!output.status.success());
    assert!(
        common::stderr(&output).contains("unknown mount option \"colour=blue\""),
        "{}",
        common::stderr(&output)
    );
    assert!(!mounted(&mountpoint));
    drop(vm);

    // --uninstall removes exactly what was installed
    let uninstall = Command::new("bash").arg(script).arg("--uninstall").output().unwrap();
    assert!(uninstall.status.success());
    for file in INSTALLED {
        assert!(!Path::new(file).exists(), "{file} left behind");
    }
}
