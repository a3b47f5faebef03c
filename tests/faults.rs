//! Fault injection: hostile QMP peers, RAM files that change under the mount, VMs that die
//! mid-read, and load. The daemon must answer, stay up and keep its memory bounded.

use qemu_bridge_test_support as common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::process::alive as process_alive;
use common::{require_qemu, wait_until, TestMount, TestRunDir, VmBuilder, MARKER, MARKER_ADDR};
use qemu_bridge::Vm;

const SIZE: u64 = 64 << 20;
const GREETING: &[u8] = br#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}"#;

/// These tests load the machine hard (several VMs, 16 readers); running them one at a time
/// keeps QEMU's monitors answering within their timeouts on a 2-core machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `ls` in a thread, with a generous hang guard (not a timing assertion: it fails only if the
/// call never returns).
fn ls_does_not_hang(mount: &TestMount) -> Vec<String> {
    let path = mount.mountpoint.clone();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut names: Vec<String> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let _ = sender.send(names);
    });
    receiver.recv_timeout(Duration::from_secs(60)).expect("ls of the mount hung")
}

/// A fake QMP server on `<run-dir>/<name>.qmp` that behaves as `script` says for every client.
fn hostile_peer(run_dir: &TestRunDir, name: &str, script: fn(std::os::unix::net::UnixStream)) {
    let listener = UnixListener::bind(run_dir.path().join(format!("{name}.qmp"))).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || script(stream));
        }
    });
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_hostile_qmp_peers_never_take_the_mount_down() {
    require_qemu();
    let _serial = one_at_a_time();
    let run_dir = TestRunDir::new();
    let healthy = VmBuilder::new("healthy", &run_dir).launch();
    hostile_peer(&run_dir, "silent", |stream| {
        std::thread::sleep(Duration::from_secs(120));
        drop(stream);
    });
    hostile_peer(&run_dir, "greets-then-silent", |mut stream| {
        let _ = stream.write_all(GREETING);
        let _ = stream.write_all(b"\n");
        std::thread::sleep(Duration::from_secs(120));
    });
    hostile_peer(&run_dir, "huge-line", |mut stream| {
        // 100 MiB without a newline: the reader must give up at its line cap
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..100 {
            if stream.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    hostile_peer(&run_dir, "invalid-utf8", |mut stream| {
        let _ = stream.write_all(b"\xff\xfe\xfd{\"QMP\": {}}\n");
    });
    hostile_peer(&run_dir, "wrong-shape", |mut stream| {
        let _ = stream.write_all(GREETING);
        let _ = stream.write_all(b"\n");
        let mut request = [0u8; 4096];
        while let Ok(n) = stream.read(&mut request) {
            if n == 0 {
                return;
            }
            let id = String::from_utf8_lossy(&request[..n])
                .split("\"id\":")
                .nth(1)
                .and_then(|r| r.split(['}', ',']).next().map(|s| s.trim().to_string()))
                .unwrap_or_default();
            // valid JSON, wrong shapes: a list for an object, a number for a path
            let _ = stream.write_all(format!("{{\"return\": [1, 2, 3], \"id\": {id}}}\n").as_bytes());
        }
    });
    hostile_peer(&run_dir, "closes-mid-reply", |mut stream| {
        let _ = stream.write_all(GREETING);
        let _ = stream.write_all(b"\n");
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request);
        let _ = stream.write_all(br#"{"return": {"sta"#);
    });
    let mount = TestMount::new(&run_dir, &[]);
    let baseline_rss = common::anon_rss_kib(mount.pid);
    for round in 0..3 {
        let started = std::time::Instant::now();
        assert_eq!(ls_does_not_hang(&mount), [healthy.name()]);
        // reported, not asserted: timing lives in benchmarks
        eprintln!("ls with 6 hostile peers, round {round}: {:?}", started.elapsed());
    }
    // the healthy VM is fully served meanwhile
    assert_eq!(
        std::fs::read_to_string(mount.path(&format!("{}/status", healthy.name()))).unwrap(),
        "running\n"
    );
    let mut marker = vec![0u8; MARKER.len()];
    healthy.wait_for_marker();
    File::open(mount.path(&format!("{}/ram", healthy.name())))
        .unwrap()
        .read_exact_at(&mut marker, MARKER_ADDR)
        .unwrap();
    assert_eq!(marker, MARKER);
    // lookups of the bad ones fail cleanly
    for bad in
        ["silent", "greets-then-silent", "huge-line", "invalid-utf8", "wrong-shape", "closes-mid-reply"]
    {
        assert!(std::fs::metadata(mount.path(bad)).is_err(), "{bad} must not appear");
    }
    // a VM started now is probed in the background: ls answers without it first (never
    // waiting for a probe), and lists it on a later call once it answered
    let late = VmBuilder::new("late", &run_dir).launch();
    let mut names = ls_does_not_hang(&mount);
    assert!(wait_until(Duration::from_secs(30), || {
        names = ls_does_not_hang(&mount);
        names.iter().any(|name| name == late.name())
    }));
    names.sort();
    let mut expected = vec![healthy.name().to_string(), late.name().to_string()];
    expected.sort();
    assert_eq!(names, expected);
    drop(late);
    // memory stays bounded: the 100 MiB line was cut at the 4 MiB cap
    let grown = common::anon_rss_kib(mount.pid).saturating_sub(baseline_rss);
    assert!(grown < 32 * 1024, "daemon RSS grew by {grown} KiB");
    assert!(process_alive(mount.pid));
    // the CLI's list behaves the same: healthy listed, every bad one unreachable, no hang
    let output = Command::new(env!("CARGO_BIN_EXE_qemu-bridge"))
        .args(["list", "--json", "--run-dir"])
        .arg(run_dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 7);
    for row in rows {
        let expected = if row["name"] == healthy.name() { "running" } else { "unreachable" };
        assert_eq!(row["state"], expected, "{row}\n{}", mount.log_text());
    }
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_ram_file_truncated_deleted_or_replaced_under_the_mount() {
    require_qemu();
    let _serial = one_at_a_time();
    let run_dir = TestRunDir::new();
    let vm = VmBuilder::new("ramfault", &run_dir).launch();
    vm.wait_for_marker();
    // the daemon's path (its SIGBUS guard is what this is about) and, beside it, passthrough
    let mount = TestMount::new(&run_dir, &["--passthrough=never"]);
    let passthrough = TestMount::new(&run_dir, &["--passthrough=always"]);
    let ram_path = mount.path(&format!("{}/ram", vm.name()));
    let ram = File::open(&ram_path).unwrap();
    let passthrough_ram = File::open(passthrough.path(&format!("{}/ram", vm.name()))).unwrap();
    let mut buffer = vec![0u8; 4096];
    ram.read_exact_at(&mut buffer, 1 << 20).unwrap();
    passthrough_ram.read_exact_at(&mut buffer, 32 << 20).unwrap();

    // deleted while mapped: the mapping keeps the old inode alive and stays readable
    std::fs::remove_file(&vm.launched.ram_path).unwrap();
    let mut marker = vec![0u8; MARKER.len()];
    ram.read_exact_at(&mut marker, MARKER_ADDR).unwrap();
    assert_eq!(marker, MARKER);

    // truncated while mapped (through /proc, since the name is gone): EIO, the daemon lives
    let fd_path = std::fs::read_dir(format!("/proc/{}/fd", vm.pid()))
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            std::fs::read_link(path).is_ok_and(|target| target.to_string_lossy().contains("qemu_ram_"))
        })
        .expect("QEMU holds its RAM file open");
    qmp_stop(&run_dir, vm.name());
    let truncated = std::fs::OpenOptions::new().write(true).open(&fd_path).unwrap();
    truncated.set_len(1 << 20).unwrap();
    assert_eq!(truncated.metadata().unwrap().len(), 1 << 20);
    let err = ram.read_at(&mut buffer, 32 << 20).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // under passthrough the kernel reads the file itself: past its new end is end of file
    assert_eq!(passthrough_ram.read_at(&mut buffer, 32 << 20).unwrap(), 0);
    drop(passthrough_ram);
    drop(passthrough);
    // what the file still holds is still served, from the same inode
    let mut head = vec![0u8; 4096];
    File::open(&ram_path).unwrap().read_exact_at(&mut head, 0).unwrap();
    let mut oracle = vec![0u8; 4096];
    truncated.sync_all().unwrap();
    File::open(&fd_path).unwrap().read_exact_at(&mut oracle, 0).unwrap();
    assert_eq!(head, oracle);
    assert!(process_alive(mount.pid), "the daemon died: {}", mount.log_text());
    assert!(mount.log_text().contains("shrank"), "{}", mount.log_text());
    drop(ram);
    vm.kill();

    // a VM restarted under the same name: the directory serves the new RAM, not the old mapping
    let mut builder = VmBuilder::new("unused", &run_dir);
    builder = builder.named(vm.name());
    let again = builder.launch();
    again.wait_for_marker();
    let stamp = b"second-life-of-this-vm";
    std::fs::OpenOptions::new()
        .write(true)
        .open(&again.launched.ram_path)
        .unwrap()
        .write_all_at(stamp, 3 << 20)
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || {
        let mut seen = vec![0u8; stamp.len()];
        File::open(mount.path(&format!("{}/ram", again.name())))
            .and_then(|f| f.read_exact_at(&mut seen, 3 << 20))
            .is_ok_and(|()| seen == stamp)
    }));
    assert_eq!(std::fs::metadata(mount.path(&format!("{}/ram", again.name()))).unwrap().len(), SIZE);
}

fn qmp_stop(run_dir: &TestRunDir, name: &str) {
    Vm::existing(&run_dir.run_dir, name).unwrap().with_qmp(|q| q.stop()).unwrap();
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_vm_killed_during_dd_and_checksum() {
    require_qemu();
    let _serial = one_at_a_time();
    let run_dir = TestRunDir::new();
    let vm = VmBuilder::new("dies", &run_dir).launch();
    let other = VmBuilder::new("lives", &run_dir).launch();
    let mount = TestMount::new(&run_dir, &[]);
    let ram_path = mount.path(&format!("{}/ram", vm.name()));
    let checksum_path = mount.path(&format!("{}/checksum", vm.name()));
    std::thread::scope(|scope| {
        // long reads: dd over and over with small blocks
        let dd = scope.spawn(|| {
            let mut results = Vec::new();
            for _ in 0..20 {
                let status = Command::new("dd")
                    .arg(format!("if={}", ram_path.display()))
                    .args(["of=/dev/null", "bs=64k", "status=none"])
                    .status()
                    .unwrap();
                results.push(status.code());
            }
            results
        });
        // checksums computed while the VM dies: each returns (a line or an error), none hangs
        let checksums =
            scope.spawn(|| (0..10).map(|_| std::fs::read_to_string(&checksum_path)).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(300));
        vm.kill();
        // every dd ended: with success (the RAM file outlives QEMU) or an error; none hung
        let codes = dd.join().unwrap();
        assert!(codes.iter().all(|code| code.is_some()), "{codes:?}");
        // each read of checksum either gave a whole summary line or failed cleanly: EIO while
        // the VM dies, ENOENT once its directory is gone
        for outcome in checksums.join().unwrap() {
            match outcome {
                Ok(line) => assert!(line.starts_with("sha256 ") && line.contains(" size="), "{line:?}"),
                Err(err) => assert!(matches!(err.raw_os_error(), Some(libc::EIO | libc::ENOENT)), "{err}"),
            }
        }
    });
    assert!(process_alive(mount.pid), "daemon died: {}", mount.log_text());
    assert!(wait_until(Duration::from_secs(10), || !mount.ls().contains(&vm.name().to_string())));
    assert_eq!(mount.ls(), [other.name()]);
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_load_16_readers_3_vms_every_byte_checked() {
    require_qemu();
    let _serial = one_at_a_time();
    let run_dir = TestRunDir::new();
    let vms: Vec<_> = (0..3).map(|i| VmBuilder::new(&format!("load{i}"), &run_dir).launch()).collect();
    for vm in &vms {
        vm.wait_for_marker();
        qmp_stop(&run_dir, vm.name());
    }
    let mount = TestMount::new(&run_dir, &[]);
    // paused VMs: the RAM files are the oracle
    let expected: Vec<Vec<u8>> = vms.iter().map(|vm| std::fs::read(&vm.launched.ram_path).unwrap()).collect();
    let seconds: u64 = std::env::var("QB_LOAD_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let baseline_rss = common::anon_rss_kib(mount.pid);
    let stop = AtomicBool::new(false);
    let (reads, mismatches, errors) = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..16u64)
            .map(|reader| {
                let vm = &vms[(reader % 3) as usize];
                let oracle = &expected[(reader % 3) as usize];
                let path = mount.path(&format!("{}/ram", vm.name()));
                let stop = &stop;
                scope.spawn(move || {
                    let file = File::open(&path).unwrap();
                    let mut seed = reader.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    let mut buffer = vec![0u8; 1 << 20];
                    let (mut reads, mut mismatches, mut errors) = (0u64, 0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let len = (seed % (1 << 20)) as usize + 1;
                        let offset = (seed >> 21) % (SIZE + 4096);
                        match file.read_at(&mut buffer[..len], offset) {
                            Ok(n) => {
                                let start = offset.min(SIZE) as usize;
                                let end = (offset + len as u64).min(SIZE) as usize;
                                if n != end - start || buffer[..n] != oracle[start..end] {
                                    mismatches += 1;
                                }
                            }
                            Err(_) => errors += 1,
                        }
                        reads += 1;
                    }
                    (reads, mismatches, errors)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
        readers
            .into_iter()
            .map(|r| r.join().unwrap())
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
    });
    eprintln!("load: {reads} reads in {seconds} s, {mismatches} mismatches, {errors} errors");
    assert!(reads > 1000);
    assert_eq!((mismatches, errors), (0, 0));
    // bound: no growth with the number of reads (stated in the README: < 32 MiB over baseline)
    let grown = common::anon_rss_kib(mount.pid).saturating_sub(baseline_rss);
    assert!(grown < 32 * 1024, "daemon RSS grew by {grown} KiB over {reads} reads");
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_unmount_under_load() {
    require_qemu();
    let _serial = one_at_a_time();
    let run_dir = TestRunDir::new();
    let vm = VmBuilder::new("busy", &run_dir).launch();
    let mount = TestMount::new(&run_dir, &[]);
    let path = mount.path(&format!("{}/ram", vm.name()));
    let stop = AtomicBool::new(false);
    let unmounted = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let path = &path;
                let stop = &stop;
                let unmounted = &unmounted;
                scope.spawn(move || {
                    let file = File::open(path).unwrap();
                    let mut buffer = vec![0u8; 1 << 20];
                    let mut offset = 0;
                    // reads that completed after `umount` returned: each reader must see the
                    // unmount, as reads still served or as a clean error
                    let mut reads_after_unmount = 0u32;
                    loop {
                        let after = unmounted.load(Ordering::Relaxed);
                        match file.read_at(&mut buffer, offset) {
                            Ok(0) => offset = 0,
                            Ok(n) => offset += n as u64,
                            // after the unmount: ENOTCONN (or another clean error), no hang
                            Err(err) => return (Some(err.raw_os_error()), reads_after_unmount),
                        }
                        reads_after_unmount += u32::from(after);
                        if stop.load(Ordering::Relaxed) && reads_after_unmount > 0 {
                            return (None, reads_after_unmount);
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let status = Command::new(env!("CARGO_BIN_EXE_qemu-bridge"))
            .arg("umount")
            .arg(&mount.mountpoint)
            .status()
            .unwrap();
        assert!(status.success());
        assert!(!mount.is_mounted());
        unmounted.store(true, Ordering::Relaxed);
        // the lazily detached mount keeps serving open files until they close; then it ends
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            let (error, reads_after_unmount) = reader.join().unwrap();
            match error {
                None => assert!(reads_after_unmount > 0),
                Some(errno) => {
                    assert!(matches!(errno, Some(libc::ENOTCONN) | Some(libc::ENODEV)), "{errno:?}")
                }
            }
        }
    });
    assert!(
        wait_until(Duration::from_secs(10), || !process_alive(mount.pid)),
        "daemon still running after its readers left"
    );
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_planted_sockets_cannot_point_the_mount_at_other_files() {
    require_qemu();
    common::require_program("python3");
    common::require_program("setpriv");
    common::require_root();
    let _serial = one_at_a_time();
    let run_dir = TestRunDir::new();
    std::fs::set_permissions(run_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let healthy = VmBuilder::new("real", &run_dir).launch();
    // a root-owned file that is not any VM's RAM
    let secret = common::ShmFile::with_contents("secret", &[0x5a; 65536]);
    std::fs::set_permissions(&secret.path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // 1: a peer of a trusted user names a file it does not hold open
    let liar = common::fake_monitor(&run_dir, "liar", &secret.path, false, false);
    // 2: a peer of another user (nobody) names a file it does hold open
    let intruder = common::fake_monitor(&run_dir, "intruder", &secret.path, true, true);
    let mount = TestMount::new(&run_dir, &[]);
    let names = ls_does_not_hang(&mount);
    assert_eq!(names, [healthy.name()], "{}", mount.log_text());
    let log = mount.log_text();
    assert!(log.contains("VM liar: refusing") && log.contains("does not hold it open"), "{log}");
    assert!(log.contains("uid 65534"), "{log}");
    // the CLI refuses the same way
    let output = Command::new(env!("CARGO_BIN_EXE_qemu-bridge"))
        .args(["read", "liar", "0", "16", "--run-dir"])
        .arg(run_dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("does not hold it open"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    drop((liar, intruder));
}
