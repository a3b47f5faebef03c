//! Shared test infrastructure: real QEMU VMs with kill-on-drop, the boot-sector guest, RAM files
//! in /dev/shm that clean themselves up, and polling instead of sleeps.
//!
//! Tests that need QEMU, /dev/fuse or root are `#[ignore = "needs ..."]`, so a plain `cargo
//! test` lists them as ignored instead of passing them silently; `scripts/test.sh` installs what
//! they need and runs them with `--include-ignored`. Once included, a test whose tool is
//! missing fails (the `require_*` helpers panic): it never passes without doing its work.
pub mod browser;
pub mod linux;
pub mod nested;
pub mod process;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use qemu_bridge::launch::{self, LaunchOptions, LaunchedVm};
use qemu_bridge::{Machine, RunDir, SharedMemoryBridge, VmName};

/// Guest-physical address where the boot-sector guest copies its marker.
pub const MARKER_ADDR: u64 = 0x10000;
/// The marker.
pub const MARKER: &[u8] = b"QEMU-BRIDGE-TEST-MARKER:7c1e5a";
/// Guest-physical address of the guest's 32-bit counter.
pub const COUNTER_ADDR: u64 = 0x10040;

/// The checkout (the qemu-bridge package's directory).
pub fn checkout() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The directory of the running test or benchmark's profile (`target/debug`,
/// `target/release`): the test binary is in its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.parent().and_then(Path::parent).expect("the test binary is in <target>/<profile>/deps").to_path_buf()
}

/// The build's target directory.
pub fn target_dir() -> PathBuf {
    profile_dir().parent().expect("the profile is in the target directory").to_path_buf()
}

/// The `qemu-bridge` binary cargo built beside the running test.
pub fn binary() -> PathBuf {
    let binary = profile_dir().join("qemu-bridge");
    assert!(
        binary.is_file(),
        "{} is not built (cargo builds it for the integration tests)",
        binary.display()
    );
    binary
}

/// Whether we run under CI.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Fails the test unless `program` is on PATH.
pub fn require_program(program: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "this test needs {program}, which is not installed (scripts/install-deps.sh installs it)");
}

/// QEMU and binutils, needed for every VM test.
pub fn require_qemu() {
    require_program(&launch::qemu_binary());
    require_program("as");
    require_program("ld");
}

/// Fails the test unless /dev/fuse exists.
pub fn require_fuse() {
    assert!(Path::new("/dev/fuse").exists(), "this test needs /dev/fuse");
}

/// Fails the test unless it runs as root.
pub fn require_root() {
    assert_eq!(process::effective_uid(), 0, "this test needs root");
}

/// A name no other test (or concurrent test run) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // one last look at the deadline, so that a condition met while sleeping is not missed
        let last_look = std::time::Instant::now() >= deadline;
        if condition() {
            return true;
        }
        if last_look {
            return false;
        }
        std::thread::sleep(
            Duration::from_millis(20).min(deadline.saturating_duration_since(std::time::Instant::now())),
        );
    }
}

/// The boot-sector guest, built once per test binary by `scripts/build-boot-guest.sh` (the one
/// builder the demo, the benchmarks and the tests share).
pub fn boot_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| build_guest_image("boot", &[]))
}

/// The boot-sector guest that writes a known set of pages (`tests/guest/boot.S` with `WRITER`).
pub fn writer_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| build_guest_image("writer", &["WRITER"]))
}

/// The boot-sector guest that sweeps a counter over 16-80 MiB about a thousand times a second
/// (`tests/guest/boot.S` with `SWEEPER`): an image of one instant of it has at most one break.
pub fn sweeper_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| build_guest_image("sweeper", &["SWEEPER"]))
}

/// Where the sweeper guest stores its counter: the first dword of each page of this range.
pub const SWEPT: std::ops::Range<u64> = 16 << 20..80 << 20;

/// The places in `image` (the sweeper's RAM, in file order, guest-physical below 2 GiB) where
/// the swept values do not rise by one from page to page: at most one in an image of one
/// instant.
pub fn sweep_breaks(image: &[u8]) -> usize {
    let values: Vec<u32> = (SWEPT.start..SWEPT.end)
        .step_by(4096)
        .map(|at| u32::from_le_bytes(image[at as usize..at as usize + 4].try_into().unwrap()))
        .collect();
    values.windows(2).filter(|pair| pair[1] != pair[0].wrapping_add(1)).count()
}

/// Assembles `tests/guest/boot.S` with `symbols` defined into a 1 MiB disk image `<name>.img`
/// under the test target directory, or under the temporary directory where that cannot be
/// written (the tests run inside the soft-dirty VM see the checkout read-only).
fn build_guest_image(name: &str, symbols: &[&str]) -> PathBuf {
    let target = &target_dir().join("tmp");
    let base = if nix::unistd::access(target, nix::unistd::AccessFlags::W_OK).is_ok() {
        target.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let image = base.join(format!("guest-{}/{name}.img", std::process::id()));
    run(Command::new(checkout().join("scripts/build-boot-guest.sh")).arg(&image).args(symbols));
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 1 << 20, "the boot disk is padded to 1 MiB");
    image
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// The 32-bit little-endian word at offset `at` of a RAM file.
pub fn counter_at(ram: &std::fs::File, at: u64) -> u32 {
    let mut bytes = [0u8; 4];
    ram.read_exact_at(&mut bytes, at).unwrap();
    u32::from_le_bytes(bytes)
}

/// The guest's 32-bit counter, read through the library.
pub fn counter(bridge: &SharedMemoryBridge) -> u32 {
    let mut bytes = [0u8; 4];
    bridge.read_into(COUNTER_ADDR, &mut bytes).unwrap();
    u32::from_le_bytes(bytes)
}

/// The guest's 32-bit counter, read from a `ram` file of the mount.
pub fn counter_in(ram: &std::fs::File) -> u32 {
    counter_at(ram, COUNTER_ADDR)
}

/// A temporary run directory, and a directory the VMs' QEMU may write to.
pub struct TestRunDir {
    pub dir: tempfile::TempDir,
    pub run_dir: RunDir,
    /// Where QEMU writes files it is asked to (pmemsave): QEMU launched by root runs as an
    /// unprivileged user, who cannot enter the run directory (mode 0700).
    out: tempfile::TempDir,
}

impl Default for TestRunDir {
    fn default() -> Self {
        Self::new()
    }
}

impl TestRunDir {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("qbt-run").tempdir().unwrap();
        let run_dir = RunDir::new(dir.path());
        let out = tempfile::Builder::new().prefix("qbt-out").tempdir().unwrap();
        std::fs::set_permissions(out.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        Self { dir, run_dir, out }
    }

    /// A path QEMU may write `file` to.
    pub fn qemu_output(&self, file: &str) -> PathBuf {
        self.out.path().join(file)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The opening of most VM tests: QEMU is required, a run directory of the test's own, and the
/// boot-sector guest launched in it (QMP answers; the guest may not have run yet). Declare the
/// pair in this order (`let (run_dir, vm) = ...`): the VM is killed before its run directory
/// goes.
pub fn running_vm(prefix: &str) -> (TestRunDir, TestVm) {
    require_qemu();
    let run_dir = TestRunDir::new();
    let vm = VmBuilder::new(prefix, &run_dir).launch();
    (run_dir, vm)
}

/// [`running_vm`], once the guest has run: its marker is in RAM.
pub fn booted_vm(prefix: &str) -> (TestRunDir, TestVm) {
    let (run_dir, vm) = running_vm(prefix);
    vm.wait_for_marker();
    (run_dir, vm)
}

/// Plugs a `pc-dimm` of `size` bytes, its RAM in the file `path`, into the running VM `name`
/// (started with `-m ...,slots=N,maxmem=...`), as a user hot-plugging memory would.
pub fn plug_dimm(run_dir: &TestRunDir, name: &str, path: &Path, size: u64) {
    qemu_bridge::Vm::existing(&run_dir.run_dir, name)
        .unwrap()
        .with_qmp(|qmp| {
            qmp.execute(
                "object-add",
                Some(serde_json::json!({"qom-type": "memory-backend-file", "id": "d0", "size": size,
                                        "mem-path": path.display().to_string(), "share": true})),
            )?;
            qmp.execute(
                "device_add",
                Some(serde_json::json!({"driver": "pc-dimm", "id": "dimm0", "memdev": "d0"})),
            )
        })
        .unwrap();
}

/// A paused VM (`-S`) of `machine` with `memory` bytes and no disk: for layout tests, where
/// only QEMU's memory map matters.
pub fn paused_machine(prefix: &str, run_dir: &TestRunDir, machine: Machine, memory: u64) -> TestVm {
    VmBuilder::new(prefix, run_dir).machine(machine).memory(memory).no_drive().extra(&["-S"]).launch()
}

/// `count` VMs of `memory` bytes in `run_dir`, named `<prefix>-...`, never started (`-S`: QEMU
/// is up and answers QMP, the vCPUs have not run, RAM is untouched) and with no disk: the
/// cheapest real VMs, for tests of many. Launched a few at a time; returned in launch order.
pub fn never_started_vms(prefix: &str, run_dir: &TestRunDir, count: usize, memory: u64) -> Vec<TestVm> {
    require_qemu();
    let next = AtomicU32::new(0);
    let launched = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                if index >= count {
                    break;
                }
                let vm = VmBuilder::new(prefix, run_dir).memory(memory).no_drive().extra(&["-S"]).launch();
                launched.lock().unwrap().push((index, vm));
            });
        }
    });
    let mut launched = launched.into_inner().unwrap();
    launched.sort_by_key(|(index, _)| *index);
    launched.into_iter().map(|(_, vm)| vm).collect()
}

/// Builder for a real VM under TCG.
pub struct VmBuilder {
    options: LaunchOptions,
}

impl VmBuilder {
    /// A boot-sector guest VM named `<prefix>-<pid>-<n>` in `run_dir`.
    pub fn new(prefix: &str, run_dir: &TestRunDir) -> Self {
        let name = VmName::new(&unique_name(prefix)).unwrap();
        let mut options = LaunchOptions::new(name, run_dir.run_dir.clone());
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
        self.options.name = VmName::new(name).unwrap();
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

    pub fn machine(mut self, machine: Machine) -> Self {
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
        TestVm { launched: launch::launch(&self.options).expect("launch VM") }
    }
}

/// A launched VM, killed by pid and cleaned up when dropped.
pub struct TestVm {
    pub launched: LaunchedVm,
}

impl TestVm {
    pub fn name(&self) -> &str {
        self.launched.name().as_str()
    }

    pub fn pid(&self) -> u32 {
        self.launched.pid
    }

    /// Waits until the guest has written its marker (it ran) — TCG can be slow on a busy machine.
    pub fn wait_for_marker(&self) {
        let bridge = SharedMemoryBridge::open(self.name(), &self.launched.ram_path).unwrap();
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
        assert!(wait_until(Duration::from_secs(20), || !process::alive(self.pid())));
    }
}

/// Kills QEMU `pid` (SIGKILL, if still alive), waits for it, and removes its RAM file.
pub fn kill_vm(pid: u32, ram_path: &Path) {
    if process::alive(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
        wait_until(Duration::from_secs(10), || !process::alive(pid));
    }
    let _ = std::fs::remove_file(ram_path);
}

/// Kills a VM started outside [`VmBuilder`] (by the CLI, say) when a test ends, even failing.
pub struct VmGuard {
    pub pid: u32,
    pub ram_path: PathBuf,
}

impl VmGuard {
    /// For the VM `name` the CLI launched into `run_dir` (its pidfile, its standard RAM file).
    pub fn launched_by_cli(run_dir: &TestRunDir, name: &str) -> Option<Self> {
        let name = VmName::new(name).unwrap();
        let pid = process::read_pid(&run_dir.run_dir.file_path(&name, "pid"))?;
        Some(Self { pid, ram_path: qemu_bridge::ram::ram_file_path(Path::new("/dev/shm"), &name) })
    }
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
        let vm = &self.launched.vm;
        qemu_bridge::cgroup::remove_dirs(
            &launch::recorded_cgroups(vm.run_dir(), vm.name()).unwrap_or_default(),
        );
        let _ = std::fs::remove_file(vm.socket());
        let _ = std::fs::remove_file(vm.file_path("pid"));
    }
}

/// The `qemu-bridge` binary with `--run-dir` of `run_dir`.
pub fn qemu_bridge(run_dir: &TestRunDir, args: &[&str]) -> Output {
    qemu_bridge_in(run_dir.path(), args)
}

/// The binary with `--run-dir DIR`, for run directories that are not a [`TestRunDir`].
pub fn qemu_bridge_in(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(binary()).args(args).arg("--run-dir").arg(dir).output().unwrap()
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
    // (and a run directory open to others is warned about, once, before the error)
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("For more information")
                && !l.starts_with("warning: run directory")
        })
        .collect();
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

/// `len` pseudo-random bytes (xorshift): high-entropy, as compressed or encrypted data.
pub fn noise(len: usize) -> Vec<u8> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

/// The daemon's pid from what `qemu-bridge mount` prints: `mounted DIR (pid N, log FILE)`.
pub fn daemon_pid(stdout: &str) -> u32 {
    stdout
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no daemon pid in {stdout:?}"))
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
    /// Mounts the run directory with extra `mount` arguments.
    pub fn new(run_dir: &TestRunDir, extra: &[&str]) -> Self {
        require_fuse();
        let dir = tempfile::Builder::new().prefix("qbt-mnt").tempdir().unwrap();
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let log = dir.path().join("mount.log");
        let output = Command::new(binary())
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
        let pid = daemon_pid(&String::from_utf8_lossy(&output.stdout));
        Self { dir, mountpoint, pid, log }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.mountpoint.join(relative)
    }

    pub fn is_mounted(&self) -> bool {
        qemu_bridge::mount::is_mounted(&self.mountpoint)
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
        if process::alive(self.pid) {
            wait_until(Duration::from_secs(5), || !process::alive(self.pid));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::SIGKILL,
            );
        }
    }
}

/// QEMU's own `dump-guest-memory` (ELF, no paging) of `vm` into `path`, once it is written
/// (QEMU writes it as the user it runs as: `path` is in the run directory).
pub fn qemu_dump(vm: &qemu_bridge::Vm, path: &Path) {
    let _ = std::fs::remove_file(path);
    vm.with_qmp(|qmp| {
        qmp.execute(
            "dump-guest-memory",
            Some(serde_json::json!({"paging": false, "protocol": format!("file:{}", path.display())})),
        )
    })
    .unwrap();
    let ram = vm.info().unwrap().ram_size;
    assert!(
        wait_until(Duration::from_secs(60), || std::fs::metadata(path).is_ok_and(|m| m.len() > ram)),
        "QEMU wrote no dump to {}",
        path.display()
    );
}

/// The value of `NAME=hex` in HMP text (QEMU pads short names: `R8 =...`).
pub fn hmp_register(text: &str, name: &str) -> u64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    let hex = words
        .iter()
        .enumerate()
        .find_map(|(index, word)| match word.strip_prefix(name)?.strip_prefix('=') {
            Some(hex) => Some(hex),
            None if word.len() == name.len() => words.get(index + 1)?.strip_prefix('='),
            None => None,
        })
        .unwrap_or_else(|| panic!("no {name} in {text}"));
    u64::from_str_radix(hex, 16).unwrap()
}

/// The JSON of a file (a mount's `layout.json`, `cpus/<n>/registers`).
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The anonymous resident memory of process `pid` (its own, not the guest RAM it maps), in KiB.
pub fn anon_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A child process killed and reaped when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the fake monitor `tests/fixtures/fake_qmp.py` (optionally as `nobody`) on
/// `<run-dir>/<name>.qmp`, naming `ram` as the VM's RAM file (and holding it open with `hold`),
/// and waits until it listens. As `nobody` it needs a run directory others may write.
pub fn fake_monitor(run_dir: &TestRunDir, name: &str, ram: &Path, hold: bool, as_nobody: bool) -> KillOnDrop {
    use std::io::Read;
    // A copy in the run directory: another user may not be able to reach the checkout (CI
    // clones into directories of mode 0700).
    let script = run_dir.path().join("fake_qmp.py");
    if !script.exists() {
        std::fs::copy(checkout().join("tests/fixtures/fake_qmp.py"), &script).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    let mut command = if as_nobody {
        let mut command = Command::new("setpriv");
        // Debian's python3: another user cannot reach an interpreter under root's home
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "/usr/bin/python3"]);
        command
    } else {
        Command::new("python3")
    };
    command.arg(&script).arg(run_dir.path().join(format!("{name}.qmp"))).arg(ram).arg("65536");
    if hold {
        command.arg("--hold");
    }
    let mut child = KillOnDrop(command.stdout(std::process::Stdio::piped()).spawn().unwrap());
    let mut ready = [0u8; 5];
    child.0.stdout.as_mut().unwrap().read_exact(&mut ready).expect("the fake monitor did not start");
    assert_eq!(&ready, b"ready");
    child
}

/// Huge pages for one test at a time: raises `nr_hugepages`, mounts hugetlbfs, and puts both
/// back.
pub struct HugePages {
    previous: String,
    pub dir: tempfile::TempDir,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl HugePages {
    const COUNT_FILE: &'static str = "/proc/sys/vm/nr_hugepages";

    pub fn reserve(pages: u64) -> Self {
        static POOL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        require_root();
        let one_at_a_time = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let previous = std::fs::read_to_string(Self::COUNT_FILE).unwrap();
        let wanted = previous.trim().parse::<u64>().unwrap() + pages;
        std::fs::write(Self::COUNT_FILE, wanted.to_string()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pool = Self { previous, dir, _one_at_a_time: one_at_a_time };
        let mounted = std::process::Command::new("mount")
            .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "none"])
            .arg(pool.dir.path())
            .status()
            .unwrap();
        assert!(mounted.success(), "cannot mount hugetlbfs");
        pool
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::write(Self::COUNT_FILE, self.previous.trim());
    }
}

/// Free huge pages of the default size (`HugePages_Free` of /proc/meminfo).
pub fn huge_pages_free() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("HugePages_Free:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap()
}

/// QEMU started by hand, as users do (not by `launch`): `args`, a QMP socket
/// `<run-dir>/<name>.qmp`, daemonized with a pidfile outside the run directory; killed by pid
/// when dropped.
pub struct HandStartedVm {
    pub pid: u32,
    /// A directory of the test's for the VM's files (its disk, a RAM file...).
    pub dir: tempfile::TempDir,
}

impl HandStartedVm {
    /// Starts QEMU with `args(dir)`, given the VM's own directory.
    pub fn start(run_dir: &TestRunDir, name: &str, args: impl FnOnce(&Path) -> Vec<String>) -> Self {
        Self::start_binary(&launch::qemu_binary(), run_dir, name, args)
    }

    /// [`start`](Self::start) with another QEMU binary (another architecture).
    pub fn start_binary(
        binary: &str,
        run_dir: &TestRunDir,
        name: &str,
        args: impl FnOnce(&Path) -> Vec<String>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("qemu.pid");
        let output = Command::new(binary)
            .args(["-display", "none", "-nodefaults", "-daemonize"])
            .args(args(dir.path()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", run_dir.path().join(format!("{name}.qmp")).display()))
            .arg("-pidfile")
            .arg(&pidfile)
            .output()
            .unwrap();
        assert!(output.status.success(), "QEMU: {}", stderr(&output));
        let pid = process::read_pid(&pidfile).expect("QEMU wrote its pidfile");
        Self { pid, dir }
    }
}

impl Drop for HandStartedVm {
    fn drop(&mut self) {
        process::end(self.pid, Duration::from_millis(100));
    }
}

/// The program headers of an ELF64 file: (p_type, p_offset, p_paddr, p_filesz).
pub fn program_headers(elf: &File) -> (u16, Vec<(u32, u64, u64, u64)>) {
    let mut header = [0u8; 64];
    elf.read_exact_at(&mut header, 0).unwrap();
    assert_eq!(&header[..4], b"\x7fELF");
    let word = |bytes: &[u8], at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let half = |bytes: &[u8], at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap());
    let (phoff, phnum) = (word(&header, 32), half(&header, 56));
    let machine = half(&header, 18);
    let headers = (0..u64::from(phnum))
        .map(|index| {
            let mut phdr = [0u8; 56];
            elf.read_exact_at(&mut phdr, phoff + index * 56).unwrap();
            (
                u32::from_le_bytes(phdr[..4].try_into().unwrap()),
                word(&phdr, 8),
                word(&phdr, 24),
                word(&phdr, 32),
            )
        })
        .collect();
    (machine, headers)
}

/// The bytes an ELF core holds at guest-physical `gpa`, through its program headers.
pub fn core_bytes(core: &Path, gpa: u64, len: usize) -> Option<Vec<u8>> {
    let file = File::open(core).unwrap();
    let (_, headers) = program_headers(&file);
    let (_, offset, paddr, _) = *headers
        .iter()
        .find(|(kind, _, paddr, size)| *kind == 1 && gpa >= *paddr && gpa + len as u64 <= paddr + size)?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, offset + gpa - paddr).unwrap();
    Some(bytes)
}

/// The `NT_PRSTATUS` descriptors in an ELF core's `PT_NOTE`s, in order.
pub fn prstatus_notes(elf: &Path) -> Vec<Vec<u8>> {
    elf_notes(elf, b"CORE", 1)
}

/// The descriptors of the notes named `name` of type `kind` in an ELF core's `PT_NOTE`s, in
/// order.
pub fn elf_notes(elf: &Path, name: &[u8], kind: usize) -> Vec<Vec<u8>> {
    let file = File::open(elf).unwrap();
    let (_, headers) = program_headers(&file);
    let mut found = Vec::new();
    for (_, offset, _, size) in headers.into_iter().filter(|(kind, ..)| *kind == 4) {
        let mut notes = vec![0u8; size as usize];
        file.read_exact_at(&mut notes, offset).unwrap();
        let mut at = 0;
        while at + 12 <= notes.len() {
            let word = |at: usize| u32::from_le_bytes(notes[at..at + 4].try_into().unwrap()) as usize;
            let (namesz, descsz, note_kind) = (word(at), word(at + 4), word(at + 8));
            let desc = at + 12 + namesz.next_multiple_of(4);
            if note_kind == kind && notes[at + 12..at + 12 + namesz].strip_suffix(b"\0") == Some(name) {
                found.push(notes[desc..desc + descsz].to_vec());
            }
            at = desc + descsz.next_multiple_of(4);
        }
    }
    found
}

/// Whether a running boot-sector guest (boot.S, either build) itself may write guest-physical page `page`, besides
/// its counter: the real-mode interrupt vector table and BIOS data area (page 0: SeaBIOS counts
/// timer ticks at 0x46c), its stack (page 0x7000, below 0x7c00), onto which each timer interrupt
/// pushes, and SeaBIOS's own variables in the BIOS area, 0xc0000-0xfffff (seen under QEMU 10.0
/// at 0xe9000, now and then, from its timer interrupt). Nothing else writes guest RAM.
pub fn guest_writes(page: u64) -> bool {
    page == 0x0 || page == 0x7000 || (0xc0000..0x100000).contains(&page)
}

/// `qemu-bridge changes NAME --json` running as a child, read line by line.
pub struct ChangesRun {
    child: Child,
    /// The tracking every report must name.
    tracking: &'static str,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl ChangesRun {
    /// Starts it, every 0.5 s for `count` intervals; each report must say it tracks by
    /// `tracking` (`fingerprints`, `soft-dirty`).
    pub fn start(run_dir: &TestRunDir, name: &str, count: u32, tracking: &'static str) -> Self {
        let mut child = Command::new(binary())
            .args([
                "changes",
                name,
                "--interval",
                "0.5",
                "--json",
                "--count",
                &count.to_string(),
                "--run-dir",
            ])
            .arg(run_dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines, tracking }
    }

    /// The next interval's report: the set of changed guest-physical pages.
    pub fn next_pages(&mut self) -> (BTreeSet<u64>, serde_json::Value) {
        let line = self.lines.next().expect("changes ended early").unwrap();
        let report: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(report["tracking"], self.tracking, "{report}");
        let mut pages = BTreeSet::new();
        for range in report["ranges"].as_array().unwrap() {
            let (start, end) = (range[0].as_u64().unwrap(), range[1].as_u64().unwrap());
            assert!(start < end && start % 4096 == 0, "{range}");
            pages.extend((start / 4096..end.div_ceil(4096)).map(|page| page * 4096));
        }
        let mapped = pages.len() as u64 + report["unmapped_pages"].as_u64().unwrap();
        assert_eq!(report["pages"].as_u64().unwrap(), mapped, "{report}");
        (pages, report)
    }
}

impl Drop for ChangesRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
