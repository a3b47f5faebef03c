//! The small Linux guest of scripts/build-guest.sh (Debian's cloud kernel, busybox), booted
//! under TCG for the tests and the benchmarks, and its kernel's debug symbols.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use qemu_bridge::launch::{self, LaunchOptions};

use super::{wait_until, TestRunDir};

/// The guest of Debian 12's kernel, built (or found in the cache) once per test binary.
pub fn guest_dir() -> &'static Path {
    Kernel::Debian12.dir()
}

/// The guest built (once per test binary) in `target/guest/<subdir>` with the kernel of
/// Debian's `suite` for `arch`, by the build script the binary carries (`launch --linux` with
/// no directory runs it).
fn built(cell: &'static OnceLock<PathBuf>, subdir: &str, suite: &str, arch: &str) -> &'static Path {
    cell.get_or_init(|| {
        let dir = super::checkout().join("target/guest").join(subdir);
        qemu_bridge::launch::linux_image::ensure_for(&dir, suite, arch)
            .unwrap_or_else(|err| panic!("{}", qemu_bridge::error::chain(&err)));
        dir
    })
}

/// The kernels the tests boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Debian 12's cloud kernel (6.1).
    Debian12,
    /// bookworm-backports' cloud kernel (6.12).
    Backports,
    /// bookworm-backports' arm64 cloud kernel (6.12), on QEMU's virt board.
    Arm64,
    /// Debian 11's cloud kernel (5.10).
    Bullseye,
}

impl Kernel {
    /// Where its guest is built.
    pub fn dir(self) -> &'static Path {
        static DEBIAN12: OnceLock<PathBuf> = OnceLock::new();
        static BACKPORTS: OnceLock<PathBuf> = OnceLock::new();
        static ARM64: OnceLock<PathBuf> = OnceLock::new();
        static BULLSEYE: OnceLock<PathBuf> = OnceLock::new();
        match self {
            Kernel::Debian12 => built(&DEBIAN12, "linux", "bookworm", "amd64"),
            Kernel::Backports => built(&BACKPORTS, "linux-6.12", "bookworm-backports", "amd64"),
            // Debian 12's own arm64 cloud kernel is built without KALLSYMS_ALL: its symbols
            // name no data
            Kernel::Arm64 => built(&ARM64, "linux-arm64-6.12", "bookworm-backports", "arm64"),
            // its vmcoreinfo names no kallsyms tables
            Kernel::Bullseye => built(&BULLSEYE, "linux-5.10", "bullseye", "amd64"),
        }
    }
}

/// A Linux guest booted and settled (its view of itself printed): its VM's name, its serial
/// console's file, and the process that keeps it (killed when this is dropped).
pub struct BootedLinux {
    pub name: String,
    pub serial: PathBuf,
    pub ram_path: PathBuf,
    _vm: Running,
}

enum Running {
    Launched(#[allow(dead_code)] Box<LinuxVm>),
    ByHand(#[allow(dead_code)] super::HandStartedVm),
}

/// The guest of `kernel` with 128 MiB (256 MiB on arm64), booted and settled: x86_64 guests by
/// qemu-bridge's launcher, the arm64 one by hand (`qemu-system-aarch64 -M virt`).
pub fn boot_settled(kernel: Kernel, run_dir: &TestRunDir) -> BootedLinux {
    if kernel != Kernel::Arm64 {
        let linux = boot_kernel(kernel, run_dir, 128 << 20, &[], "");
        let (name, serial) = (linux.launched.name().to_string(), linux.launched.serial.clone());
        let ram_path = linux.launched.ram_path.clone();
        return BootedLinux { name, serial, ram_path, _vm: Running::Launched(Box::new(linux)) };
    }
    super::require_program("qemu-system-aarch64");
    let dir = kernel.dir();
    let name = super::unique_name("arm64");
    let vm = super::HandStartedVm::start_binary("qemu-system-aarch64", run_dir, &name, |own| {
        let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.gz"));
        vec![
            "-M".into(),
            "virt".into(),
            "-cpu".into(),
            "cortex-a57".into(),
            "-m".into(),
            "256M".into(),
            "-accel".into(),
            "tcg".into(),
            "-kernel".into(),
            kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            "console=ttyAMA0 quiet".into(),
            "-serial".into(),
            format!("file:{}", own.join("serial").display()),
            "-object".into(),
            format!("memory-backend-file,id=m,size=256M,share=on,mem-path={}", own.join("ram").display()),
            "-machine".into(),
            "memory-backend=m".into(),
        ]
    });
    let serial = vm.dir.path().join("serial");
    let ram_path = vm.dir.path().join("ram");
    // TCG boots the arm64 kernel in about 25 s on a quiet machine
    assert!(
        wait_until(Duration::from_secs(300), || std::fs::read_to_string(&serial)
            .is_ok_and(|text| text.contains("QEMU-BRIDGE-ORACLE-END"))),
        "the arm64 guest printed no view of its own: {}",
        std::fs::read_to_string(&serial).unwrap_or_default()
    );
    BootedLinux { name, serial, ram_path, _vm: Running::ByHand(vm) }
}

pub struct LinuxVm {
    pub launched: launch::LaunchedVm,
    /// The whole marker line, with this boot's id.
    pub marker: String,
}

impl Drop for LinuxVm {
    fn drop(&mut self) {
        super::kill_vm(self.launched.pid, &self.launched.ram_path);
    }
}

pub fn boot_linux(run_dir: &TestRunDir) -> LinuxVm {
    boot_linux_with(run_dir, 128 << 20, &[])
}

/// The guest (128 MiB, `extra` QEMU arguments) booted, then paused, with a handle on it.
pub fn paused_linux(run_dir: &TestRunDir, extra: &[&str]) -> (LinuxVm, qemu_bridge::Vm) {
    paused_kernel(Kernel::Debian12, run_dir, extra)
}

/// As [`paused_linux`], with the guest of `kernel`.
pub fn paused_kernel(kernel: Kernel, run_dir: &TestRunDir, extra: &[&str]) -> (LinuxVm, qemu_bridge::Vm) {
    let linux = boot_kernel(kernel, run_dir, 128 << 20, extra, "");
    let vm = qemu_bridge::Vm::existing(&run_dir.run_dir, linux.launched.name().as_str()).unwrap();
    vm.with_qmp(|qmp| qmp.stop()).unwrap();
    (linux, vm)
}

/// The guest with `memory` bytes of RAM and `extra` QEMU arguments.
pub fn boot_linux_with(run_dir: &TestRunDir, memory: u64, extra: &[&str]) -> LinuxVm {
    boot_kernel(Kernel::Debian12, run_dir, memory, extra, "")
}

/// The guest of `kernel` with `memory` bytes of RAM, `extra` QEMU arguments and `append` added
/// to the kernel's command line.
pub fn boot_kernel(
    kernel: Kernel,
    run_dir: &TestRunDir,
    memory: u64,
    extra: &[&str],
    append: &str,
) -> LinuxVm {
    let dir = kernel.dir();
    let mut options = LaunchOptions::new(
        qemu_bridge::VmName::new(&super::unique_name("linux")).unwrap(),
        run_dir.run_dir.clone(),
    );
    options.memory = memory;
    options.extra_args = extra.iter().map(|arg| arg.to_string()).collect();
    if kernel == Kernel::Backports {
        // QEMU 7.2's TCG corrupts RFLAGS in CMPXCHG16B with a segment prefix, which SLUB of Linux
        // 6.12 uses: a double fault in kmem_cache_alloc in most boots. Without CX16 SLUB does
        // without it.
        options.extra_args.extend(["-cpu".to_string(), "qemu64,-cx16".to_string()]);
    }
    options.kernel = Some(dir.join("vmlinuz"));
    options.initrd = Some(dir.join("initrd.gz"));
    options.append = Some(format!("console=ttyS0 quiet {append}").trim_end().to_string());
    options.wait_for = Some("QEMU-BRIDGE-LINUX-MARKER:".into());
    // TCG boots in ~3 s on a quiet machine, up to a minute on a busy one: poll, never sleep
    options.timeout = Duration::from_secs(180);
    let launched = launch::launch(&options).expect("boot the Linux guest");
    // the whole marker line, with this boot's id
    let mut marker = String::new();
    assert!(wait_until(Duration::from_secs(30), || {
        let serial = std::fs::read_to_string(&launched.serial).unwrap_or_default();
        match serial.lines().find_map(|line| line.trim().strip_prefix("QEMU-BRIDGE-LINUX-MARKER:")) {
            Some(id) if id.len() == 36 => {
                marker = format!("QEMU-BRIDGE-LINUX-MARKER:{id}");
                true
            }
            _ => false,
        }
    }));
    // the guest then prints its own view of its kernel (for the tests' oracles): until it has,
    // its console buffers in RAM are being rewritten, and the marker's copies there with them
    assert!(
        wait_until(Duration::from_secs(60), || std::fs::read_to_string(&launched.serial)
            .is_ok_and(|serial| serial.contains("QEMU-BRIDGE-ORACLE-END"))),
        "the guest printed no view of its own kernel"
    );
    eprintln!("Linux guest booted in {:.2} s", launched.boot.unwrap().as_secs_f64());
    LinuxVm { launched, marker }
}

/// The guest kernel's DWARF `vmlinux` (Debian's `linux-image-RELEASE-dbg`, 283 MB), downloaded
/// and unpacked once into the build's cache.
pub fn debug_vmlinux(release: &str) -> PathBuf {
    static VMLINUX: OnceLock<PathBuf> = OnceLock::new();
    VMLINUX
        .get_or_init(|| {
            let dir = super::checkout().join("target/guest/dbg");
            let vmlinux = dir.join(format!("vmlinux-{release}"));
            if vmlinux.exists() {
                return vmlinux;
            }
            let work = tempfile::tempdir().unwrap();
            // apt-get download drops to the _apt user, who must be able to write there
            std::fs::set_permissions(work.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777))
                .unwrap();
            let package = format!("linux-image-{release}-dbg");
            let status = Command::new("apt-get")
                .args(["download", "-qq", &package])
                .current_dir(work.path())
                .status()
                .unwrap();
            assert!(status.success(), "apt-get download {package}");
            let deb = std::fs::read_dir(work.path()).unwrap().next().unwrap().unwrap().path();
            let member = format!("./usr/lib/debug/boot/vmlinux-{release}");
            let status = Command::new("sh")
                .arg("-c")
                .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" \"$3\"")
                .args(["sh", deb.to_str().unwrap(), work.path().to_str().unwrap(), &member])
                .status()
                .unwrap();
            assert!(status.success(), "unpacking {member}");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::rename(work.path().join(&member), &vmlinux).unwrap();
            vmlinux
        })
        .clone()
}

/// The debug `vmlinux` ([`debug_vmlinux`]) of the kernel whose vmcoreinfo text is the file
/// `vmcoreinfo` (a mount's `<vm>/vmcoreinfo`).
pub fn debug_vmlinux_of(vmcoreinfo: &Path) -> PathBuf {
    let release = std::fs::read_to_string(vmcoreinfo)
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("OSRELEASE=").map(String::from))
        .unwrap();
    debug_vmlinux(&release)
}

/// How many tasks drgn lists (`for_each_task`) of the program `target`, with the symbols of
/// `vmlinux`.
pub fn drgn_tasks(target: &[&std::ffi::OsStr], vmlinux: &Path) -> usize {
    let script = "from drgn.helpers.linux.pid import for_each_task\nprint(len(list(for_each_task(prog))))";
    drgn(target, vmlinux, script).trim().parse().unwrap()
}

/// What drgn prints running `script` on the program `target` (`-c CORE`, `--qemu SOCKET`) with
/// the symbols of `vmlinux`; a failure of drgn's is a panic with its stderr.
pub fn drgn(target: &[&std::ffi::OsStr], vmlinux: &Path, script: &str) -> String {
    let output =
        Command::new("drgn").args(target).arg("-s").arg(vmlinux).arg("-e").arg(script).output().unwrap();
    assert!(output.status.success(), "drgn: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}
