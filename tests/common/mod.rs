//! Shared test infrastructure: real QEMU VMs with kill-on-drop, the boot-sector guest, RAM files
//! in /dev/shm that clean themselves up, and polling instead of sleeps.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use qemu_bridge::discovery::RunDir;
use qemu_bridge::launch::{self, LaunchOptions, LaunchedVm};

/// Guest-physical address where the boot-sector guest copies its marker.
pub const MARKER_ADDR: u64 = 0x10000;
/// The marker.
pub const MARKER: &[u8] = b"QEMU-BRIDGE-TEST-MARKER:7c1e5a";
/// Guest-physical address of the guest's 32-bit counter.
pub const COUNTER_ADDR: u64 = 0x10040;

/// Whether we run under CI, where a missing tool or device fails the run.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Checks that a program is on PATH. Under CI a missing one fails the test; elsewhere the test
/// is skipped with a loud message. Returns whether to go on.
pub fn require_program(program: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(!in_ci(), "{program} is required under CI=true but is not installed");
        eprintln!("SKIPPED: {program} not installed (CI=true makes this a failure)");
    }
    found
}

/// QEMU and binutils, needed for every VM test.
pub fn require_qemu() -> bool {
    require_program(&launch::qemu_binary()) && require_program("as") && require_program("ld")
}

/// A name no other test (or concurrent test run) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The boot-sector guest, assembled once per test binary from `tests/guest/boot.S`.
pub fn boot_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("guest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/boot.S");
        let object = dir.join("boot.o");
        let image = dir.join("boot.img");
        run(Command::new("as").arg("--32").arg(&source).arg("-o").arg(&object));
        run(Command::new("ld")
            .args(["-m", "elf_i386", "-Ttext", "0x7c00", "--oformat", "binary"])
            .arg(&object)
            .arg("-o")
            .arg(&image));
        assert_eq!(std::fs::metadata(&image).unwrap().len(), 512, "boot sector must be 512 bytes");
        // SeaBIOS refuses a 512-byte disk.
        std::fs::OpenOptions::new().write(true).open(&image).unwrap().set_len(1 << 20).unwrap();
        image
    })
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// A temporary run directory.
pub struct TestRunDir {
    pub dir: tempfile::TempDir,
    pub run_dir: RunDir,
}

impl TestRunDir {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("qbt-run").tempdir().unwrap();
        let run_dir = RunDir::new(dir.path());
        Self { dir, run_dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Builder for a real VM under TCG.
pub struct VmBuilder {
    options: LaunchOptions,
}

impl VmBuilder {
    /// A boot-sector guest VM named `<prefix>-<pid>-<n>` in `run_dir`.
    pub fn new(prefix: &str, run_dir: &TestRunDir) -> Self {
        let mut options = LaunchOptions::new(&unique_name(prefix), run_dir.run_dir.clone());
        // QEMU locks a disk image for writing: each VM gets its own copy.
        let image = run_dir.path().join(format!("{}.img", options.name));
        std::fs::copy(boot_image(), &image).unwrap();
        options.drive = Some(image);
        options.timeout = Duration::from_secs(120);
        Self { options }
    }

    /// Uses exactly `name` (e.g. to restart a VM under the same name).
    pub fn named(mut self, name: &str) -> Self {
        let old_image = self.options.drive.clone();
        self.options.name = name.to_string();
        if let Some(old) = old_image {
            let image = old.with_file_name(format!("{name}.img"));
            if image != old {
                std::fs::rename(&old, &image).unwrap();
            }
            self.options.drive = Some(image);
        }
        self
    }

    pub fn memory(mut self, bytes: u64) -> Self {
        self.options.memory = bytes;
        self
    }

    pub fn machine(mut self, machine: launch::Machine) -> Self {
        self.options.machine = machine;
        self
    }

    /// Boots from `image` (raw or qcow2) instead of a copy of the boot sector.
    pub fn drive(mut self, image: &Path) -> Self {
        self.options.drive = Some(image.to_path_buf());
        self
    }

    pub fn no_state_disk(mut self) -> Self {
        self.options.state_disk = false;
        self
    }

    pub fn no_drive(mut self) -> Self {
        self.options.drive = None;
        self
    }

    pub fn extra(mut self, args: &[&str]) -> Self {
        self.options.extra_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn options(&self) -> &LaunchOptions {
        &self.options
    }

    pub fn launch(self) -> TestVm {
        let launched = launch::launch(&self.options).expect("launch VM");
        TestVm { launched, options: self.options }
    }
}

/// A launched VM, killed by pid and cleaned up when dropped.
pub struct TestVm {
    pub launched: LaunchedVm,
    pub options: LaunchOptions,
}

impl TestVm {
    pub fn name(&self) -> &str {
        &self.launched.name
    }

    pub fn pid(&self) -> u32 {
        self.launched.pid
    }

    /// Waits until the guest has written its marker (it ran) — TCG can be slow on a busy machine.
    pub fn wait_for_marker(&self) {
        let bridge = qemu_bridge::SharedMemoryBridge::open(self.name(), &self.launched.ram_path).unwrap();
        let mut buffer = vec![0u8; MARKER.len()];
        let seen = wait_until(Duration::from_secs(120), || {
            bridge.read_into(MARKER_ADDR, &mut buffer).unwrap();
            buffer == MARKER
        });
        assert!(seen, "guest {} never wrote its marker", self.name());
    }

    /// Kills QEMU by pid (SIGKILL) without cleaning up, as a crash would.
    pub fn kill(&self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), nix::sys::signal::SIGKILL);
        assert!(wait_until(Duration::from_secs(20), || !launch::process_alive(self.pid())));
    }
}

/// Kills QEMU `pid` (SIGKILL, if still alive), waits for it, and removes its RAM file.
pub fn kill_vm(pid: u32, ram_path: &Path) {
    if launch::process_alive(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
        wait_until(Duration::from_secs(10), || !launch::process_alive(pid));
    }
    let _ = std::fs::remove_file(ram_path);
}

/// Kills a VM started outside [`VmBuilder`] (by the CLI, say) when a test ends, even failing.
pub struct VmGuard {
    pub pid: u32,
    pub ram_path: PathBuf,
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        kill_vm(self.pid, &self.ram_path);
    }
}

/// A qcow2 image in `run_dir` over the boot sector (a backing file), so that the VM's disk can
/// be saved with its state. Needs `qemu-img`.
pub fn qcow2_boot_disk(run_dir: &TestRunDir, name: &str) -> PathBuf {
    let image = run_dir.path().join(format!("{name}.qcow2"));
    run(Command::new(launch::qemu_img_binary())
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(boot_image())
        .arg(&image));
    image
}

impl Drop for TestVm {
    fn drop(&mut self) {
        kill_vm(self.launched.pid, &self.launched.ram_path);
        qemu_bridge::cgroup::remove_dirs(&launch::recorded_cgroups(
            &self.options.run_dir,
            &self.launched.name,
        ));
        let _ = std::fs::remove_file(&self.launched.socket);
        let _ = std::fs::remove_file(self.options.run_dir.file_path(&self.launched.name, "pid"));
    }
}

/// The `qemu-bridge` binary with `--run-dir` of `run_dir`.
pub fn qemu_bridge(run_dir: &TestRunDir, args: &[&str]) -> Output {
    qemu_bridge_in(run_dir.path(), args)
}

/// The binary with `--run-dir DIR`, for run directories that are not a [`TestRunDir`].
pub fn qemu_bridge_in(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qemu-bridge")).args(args).arg("--run-dir").arg(dir).output().unwrap()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A one-line error naming what was wrong, a non-zero exit, never a panic.
pub fn assert_clean_failure(output: &Output, needle: &str) {
    let text = stderr(output);
    assert!(!output.status.success(), "expected failure, got success: {}", stdout(output));
    assert!(!text.contains("panicked"), "panic: {text}");
    assert!(text.contains(needle), "error should mention {needle:?}: {text}");
    // clap adds a "For more information, try '--help'." hint to usage errors
    let lines: Vec<&str> =
        text.lines().filter(|l| !l.is_empty() && !l.starts_with("For more information")).collect();
    assert_eq!(lines.len(), 1, "one line expected: {text}");
}

/// A file under /dev/shm named `qemu_ram_<id>`, removed on drop.
pub struct ShmFile {
    pub id: String,
    pub path: PathBuf,
}

impl ShmFile {
    pub fn with_contents(prefix: &str, contents: &[u8]) -> Self {
        let id = unique_name(prefix);
        let path = PathBuf::from(format!("/dev/shm/qemu_ram_{id}"));
        std::fs::write(&path, contents).unwrap();
        Self { id, path }
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A deterministic pattern: byte i = low byte of a hash of i.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8).collect()
}

/// A qemu-bridge mount in a temporary directory, unmounted (and its daemon killed by pid if it
/// lingers) on drop.
pub struct TestMount {
    pub dir: tempfile::TempDir,
    pub mountpoint: PathBuf,
    pub pid: u32,
    pub log: PathBuf,
}

impl TestMount {
    /// Mounts the run directory with extra `mount` arguments; None (after a loud message) when
    /// /dev/fuse is missing outside CI.
    pub fn new(run_dir: &TestRunDir, extra: &[&str]) -> Option<Self> {
        if !Path::new("/dev/fuse").exists() {
            assert!(!in_ci(), "/dev/fuse is required under CI=true");
            eprintln!("SKIPPED: /dev/fuse missing");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("qbt-mnt").tempdir().unwrap();
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let log = dir.path().join("mount.log");
        let output = Command::new(env!("CARGO_BIN_EXE_qemu-bridge"))
            .arg("mount")
            .arg(&mountpoint)
            .arg("--run-dir")
            .arg(run_dir.path())
            .arg("--log-file")
            .arg(&log)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "mount failed: {}{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let pid =
            stdout.split("(pid ").nth(1).and_then(|rest| rest.split(',').next()).unwrap().parse().unwrap();
        Some(Self { dir, mountpoint, pid, log })
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.mountpoint.join(relative)
    }

    pub fn is_mounted(&self) -> bool {
        qemu_bridge::fs::is_mounted(&self.mountpoint)
    }

    /// Names listed at the mount's root.
    pub fn ls(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.mountpoint)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if self.is_mounted() {
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
        if launch::process_alive(self.pid) {
            wait_until(Duration::from_secs(5), || !launch::process_alive(self.pid));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::SIGKILL,
            );
        }
    }
}
