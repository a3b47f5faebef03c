//! A libvirt-managed VM, for real: `libvirtd` (and `virtlogd`) run as daemons, a domain whose
//! XML is what `qemu-bridge libvirt-xml` prints (shared file memory backing, a QMP socket of its
//! own in the run directory) boots the boot-sector guest under TCG, the mount shows it and reads
//! its marker, and `virsh destroy` makes it vanish. Daemons this test starts are ended by pid;
//! daemons already running are used and left alone.

use qemu_bridge_test_support as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{require_program, require_qemu, wait_until, TestMount, TestRunDir, MARKER, MARKER_ADDR};

const LIBVIRT_SOCKET: &str = "/run/libvirt/libvirt-sock";

/// libvirtd and virtlogd, started here unless one already serves; ended by pid on drop.
struct Daemons {
    pidfiles: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Daemons {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut pidfiles = Vec::new();
        if std::os::unix::net::UnixStream::connect(LIBVIRT_SOCKET).is_err() {
            for daemon in ["virtlogd", "libvirtd"] {
                let pidfile = dir.path().join(format!("{daemon}.pid"));
                let status = Command::new(daemon).args(["-d", "-p"]).arg(&pidfile).status().unwrap();
                assert!(status.success(), "{daemon} did not start");
                pidfiles.push(pidfile);
            }
            assert!(
                wait_until(Duration::from_secs(30), || std::os::unix::net::UnixStream::connect(
                    LIBVIRT_SOCKET
                )
                .is_ok()),
                "libvirtd does not answer on {LIBVIRT_SOCKET}"
            );
        }
        Self { pidfiles, _dir: dir }
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for pidfile in self.pidfiles.iter().rev() {
            if let Some(pid) = common::process::read_pid(pidfile) {
                common::process::end(pid, Duration::from_secs(5));
            }
        }
    }
}

/// `virsh destroy` on drop, so that a failing test leaves no domain running.
struct Domain(String);

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.0]);
    }
}

fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh").arg("-c").arg("qemu:///system").args(args).output().unwrap()
}

/// The domain XML: `qemu-bridge libvirt-xml`'s snippet in a minimal TCG domain booting `disk`.
fn domain_xml(run_dir: &TestRunDir, name: &str, disk: &Path) -> String {
    let snippet = common::qemu_bridge(run_dir, &["libvirt-xml", name]);
    assert!(snippet.status.success(), "{}", common::stderr(&snippet));
    let snippet = common::stdout(&snippet);
    // the snippet's parts, placed where libvirt wants them
    let part = |open: &str, close: &str| {
        let start = snippet.find(open).unwrap_or_else(|| panic!("no {open} in {snippet}"));
        let end = snippet[start..].find(close).unwrap() + start + close.len();
        snippet[start..end].to_string()
    };
    format!(
        "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n\
         <name>{name}</name>\n<memory unit='MiB'>64</memory>\n{}\n<vcpu>1</vcpu>\n\
         <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os>\n\
         <devices><emulator>{}</emulator>\n\
         <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{}'/>\
         <target dev='sda' bus='sata'/></disk></devices>\n{}\n{}\n</domain>\n",
        part("<memoryBacking>", "</memoryBacking>"),
        emulator().display(),
        disk.display(),
        part("<seclabel", "</seclabel>"),
        part("<qemu:commandline>", "</qemu:commandline>"),
    )
}

/// The QEMU the other tests use, as the absolute path libvirt wants.
fn emulator() -> PathBuf {
    let binary = PathBuf::from(qemu_bridge::launch::qemu_binary());
    if binary.is_absolute() {
        return binary;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(&binary))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{} is not in PATH", binary.display()))
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_libvirt_domain_is_seen_and_vanishes() {
    require_qemu();
    common::require_root();
    common::require_fuse();
    for program in ["libvirtd", "virtlogd", "virsh"] {
        require_program(program);
    }
    let _daemons = Daemons::start();
    let run_dir = TestRunDir::new();
    let name = common::unique_name("libvirt");
    // QEMU locks its disk image: a copy of the boot image of its own
    let disk = run_dir.path().join("boot.img");
    std::fs::copy(common::boot_image(), &disk).unwrap();
    let xml = run_dir.path().join("domain.xml");
    std::fs::write(&xml, domain_xml(&run_dir, &name, &disk)).unwrap();
    let mount = TestMount::new(&run_dir, &[]);

    let created = virsh(&["create", xml.to_str().unwrap()]);
    assert!(created.status.success(), "{}{}", common::stdout(&created), common::stderr(&created));
    let domain = Domain(name.clone());
    assert!(wait_until(Duration::from_secs(30), || mount.ls() == [name.as_str()]), "{:?}", mount.ls());
    let memdev = std::fs::read_to_string(mount.path(&format!("{name}/memdev.json"))).unwrap();
    assert!(memdev.contains("\"kind\": \"file\""), "libvirt's shared file backing: {memdev}");
    // the guest's marker, read through the mount
    let ram = std::fs::File::open(mount.path(&format!("{name}/ram"))).unwrap();
    let mut marker = vec![0u8; MARKER.len()];
    assert!(wait_until(Duration::from_secs(60), || {
        std::os::unix::fs::FileExt::read_exact_at(&ram, &mut marker, MARKER_ADDR).is_ok() && marker == MARKER
    }));
    drop(ram);
    // its vCPU, as libvirt's own monitor shows it: a real-mode guest, so no page tables to walk
    let cpu = mount.path(&format!("{name}/cpus/0"));
    let json = common::read_json(&cpu.join("registers"));
    let hmp = virsh(&["qemu-monitor-command", "--hmp", &name, "info registers"]);
    let text = common::stdout(&hmp);
    assert_eq!(json["registers"]["CR0"], format!("{:#x}", common::hmp_register(&text, "CR0")), "{text}");
    assert!(json["paging_error"].as_str().unwrap().contains("paging is off"), "{json}");
    let mappings = std::fs::read_to_string(cpu.join("mappings")).unwrap();
    assert!(mappings.starts_with("error: vCPU 0") && mappings.lines().count() == 1, "{mappings}");
    // virsh destroy: the VM vanishes from the mount
    let destroyed = virsh(&["destroy", &name]);
    assert!(destroyed.status.success(), "{}", common::stderr(&destroyed));
    std::mem::forget(domain);
    assert!(wait_until(Duration::from_secs(30), || mount.ls().is_empty()), "{:?}", mount.ls());
}
