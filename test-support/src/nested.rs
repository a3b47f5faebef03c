//! Runs a shell script of this host inside a VM on Debian's generic kernel, for code that needs
//! what this host's kernel may lack: soft-dirty page tracking (`CONFIG_MEM_SOFT_DIRTY`).
//!
//! The VM (TCG: KVM is unusable on the machines that run these tests) shares this host's root
//! read-only over virtio-9p and runs the script with `chroot` into it, as root: every binary
//! here, the test binaries under `target/` included, runs there at its own path (the checkout is
//! shared once more on its own, so that a checkout under `/tmp` is seen too). Inside, the
//! share is read-only; `/tmp`, `/var/tmp`, `/run` and `/dev/shm` are empty tmpfs, and `/proc`,
//! `/sys`, `/dev` the VM's own. The environment is `HOME=/root`, a standard `PATH` and, when
//! `CI=true` here, `CI=true`: export anything else in the script. The image is built by
//! `scripts/build-softdirty-host.sh`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The kernel and initramfs (`vmlinuz`, `initrd.gz`), built once and cached under `target/`.
pub fn host_image() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let manifest = super::checkout();
        let dir = manifest.join("target/guest/softdirty-host");
        let script = manifest.join("scripts/build-softdirty-host.sh");
        let output = Command::new(&script)
            .arg(&dir)
            .output()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", script.display()));
        assert!(
            output.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        dir
    })
}

/// What a script run by [`run_inside`] did.
#[derive(Debug)]
pub struct NestedRun {
    /// The script's exit code.
    pub exit_code: i32,
    /// The VM's console up to the exit line: the script's stdout and stderr, and whatever the
    /// kernel printed meanwhile (`\r` removed).
    pub output: String,
}

/// Kills QEMU by its pid if it is still running when dropped (a test that panics leaks none).
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Boots the VM with `memory_mib` MiB, runs `script` with `/bin/sh` in it as root and returns its
/// exit code and output. 128 MiB leaves about 50 MiB free for the script; what it writes to the
/// tmpfs directories and a nested QEMU's guest RAM come on top. The VM boots in about 5 s on a
/// quiet machine (TCG), several times slower on a busy one: give `timeout` room. Panics, with the
/// console, if QEMU fails, the VM cannot set up or the script does not end within `timeout`
/// (QEMU is then killed by its pid).
pub fn run_inside(script: &str, memory_mib: u64, timeout: Duration) -> NestedRun {
    let image = host_image();
    // a directory anyone may read: the file is read by the VM through the share
    let dir = tempfile::Builder::new().prefix("qb-nested").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script_path = dir.path().join("script.sh");
    std::fs::write(&script_path, script).unwrap();
    let serial = dir.path().join("serial.log");
    let qemu_stderr = dir.path().join("qemu.stderr");

    let checkout = super::checkout().canonicalize().unwrap();
    let checkout = checkout.display();
    let mut append =
        format!("console=ttyS0 quiet panic=-1 qb.run={} qb.checkout={checkout}", script_path.display());
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        append.push_str(" qb.ci=true");
    }
    let mut qemu = Qemu(
        Command::new("qemu-system-x86_64")
            .args(["-machine", "q35,accel=tcg", "-cpu", "qemu64", "-smp", "2", "-m"])
            .arg(memory_mib.to_string())
            .args(["-display", "none", "-monitor", "none", "-nic", "none", "-no-reboot", "-serial"])
            .arg(format!("file:{}", serial.display()))
            .arg("-kernel")
            .arg(image.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.join("initrd.gz"))
            .args(["-append", &append])
            .args([
                "-virtfs",
                "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            ])
            // the checkout again, on its own: where it lies under /tmp, the VM covers that
            .arg("-virtfs")
            .arg(format!(
                "local,path={checkout},mount_tag=checkout,security_model=none,readonly=on,multidevs=remap"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&qemu_stderr).unwrap())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run qemu-system-x86_64: {err}")),
    );
    let console = || std::fs::read_to_string(&serial).unwrap_or_default().replace('\r', "");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = qemu.0.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > timeout {
            drop(qemu); // kills it, by pid
            panic!("the nested VM did not finish within {timeout:?}; its console:\n{}", console());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = console();
    let stderr = std::fs::read_to_string(&qemu_stderr).unwrap_or_default();
    let exit = output.lines().enumerate().filter_map(|(i, line)| {
        line.trim()
            .strip_prefix("QB-NESTED-EXIT:")
            .and_then(|code| code.parse::<i32>().ok())
            .map(|code| (i, code))
    });
    match (exit.last(), output.contains("QB-NESTED-SETUP-FAILED")) {
        (Some((line, exit_code)), false) => {
            NestedRun { exit_code, output: output.lines().take(line).map(|l| format!("{l}\n")).collect() }
        }
        _ => panic!("the nested VM ended ({status}) without running the script to its end; QEMU said:\n{stderr}\nits console:\n{output}"),
    }
}
