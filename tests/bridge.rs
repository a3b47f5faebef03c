//! The seed's library API on real files in /dev/shm.

use qemu_bridge_test_support as common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{pattern, ShmFile};
use qemu_bridge::{BridgeError, GuestLayout, SharedMemoryBridge, Verdict};

const SIZE: usize = 8 << 20;

#[test]
fn test_bridge_creation() {
    let file = ShmFile::with_contents("create", &pattern(SIZE));
    let bridge = SharedMemoryBridge::new(&file.id).unwrap();
    assert_eq!(bridge.size(), SIZE);
    assert_eq!(bridge.vm_id(), file.id);
    assert_eq!(bridge.path(), file.path);

    match SharedMemoryBridge::new("qbt-no-such-vm-anywhere") {
        Err(BridgeError::FileNotFound(path)) => assert_eq!(path, "/dev/shm/qemu_ram_qbt-no-such-vm-anywhere"),
        other => panic!("expected FileNotFound, got {other:?}"),
    }
    for bad in ["", "a/b", "..", "x\0y"] {
        assert!(matches!(SharedMemoryBridge::new(bad), Err(BridgeError::InvalidName(_))), "{bad:?}");
    }
    // a directory is not a RAM file
    assert!(matches!(
        SharedMemoryBridge::open("dir", std::path::Path::new("/dev/shm")),
        Err(BridgeError::NotAFile(_))
    ));
}

#[test]
fn test_bridge_is_read_only() {
    let file = ShmFile::with_contents("readonly", &pattern(1 << 20));
    let bridge = SharedMemoryBridge::new(&file.id).unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps.lines().find(|line| line.ends_with(file.path.to_str().unwrap())).expect("mapping listed");
    let perms = line.split_whitespace().nth(1).unwrap();
    assert_eq!(perms, "r--s", "RAM must be mapped read-only and shared: {line}");
    drop(bridge);
}

#[test]
fn test_permission_denied_is_reported() {
    // Root bypasses file modes: as root, re-run this very test as `nobody` through setpriv.
    if common::process::effective_uid() != 0 {
        let path = std::env::var("QBT_UNREADABLE").map(std::path::PathBuf::from);
        let owned;
        let path = match path {
            Ok(path) => path,
            Err(_) => {
                owned = ShmFile::with_contents("perm", &pattern(4096));
                std::fs::set_permissions(&owned.path, std::os::unix::fs::PermissionsExt::from_mode(0o000))
                    .unwrap();
                owned.path.clone()
            }
        };
        assert!(matches!(SharedMemoryBridge::open("perm", &path), Err(BridgeError::PermissionDenied)));
        return;
    }
    common::require_program("setpriv");
    let file = ShmFile::with_contents("perm", &pattern(4096));
    std::fs::set_permissions(&file.path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "test_permission_denied_is_reported", "--test-threads=1", "--include-ignored"])
        .env("QBT_UNREADABLE", &file.path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "as nobody: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("1 passed"), "{stdout}");
}

#[test]
fn test_read_physical() {
    let data = pattern(SIZE);
    let file = ShmFile::with_contents("read", &data);
    let bridge = SharedMemoryBridge::new(&file.id).unwrap();
    for (addr, len) in [(0usize, 1usize), (0x7c00, 512), (4095, 2), (SIZE - 16, 16), (0, SIZE), (SIZE, 0)] {
        let view = bridge.read_physical(addr as u64, len).unwrap();
        assert_eq!(view.len(), len);
        // compare a copy, not the live view
        let copied = view.to_vec();
        assert_eq!(copied, &data[addr..addr + len], "view at {addr:#x}+{len}");
        let mut buffer = vec![0u8; len];
        bridge.read_into(addr as u64, &mut buffer).unwrap();
        assert_eq!(buffer, &data[addr..addr + len], "copy at {addr:#x}+{len}");
    }
    // zero copy: the view points into the mapping, not into a fresh allocation
    let first = bridge.read_physical(0, 16).unwrap().as_ptr();
    let second = bridge.read_physical(16, 16).unwrap().as_ptr();
    assert_eq!(second as usize - first as usize, 16);
    assert_eq!(bridge.snapshot(), data);
}

#[test]
fn test_invalid_address() {
    let file = ShmFile::with_contents("invalid", &pattern(SIZE));
    let bridge = SharedMemoryBridge::new(&file.id).unwrap();
    for (addr, len) in [
        (SIZE as u64, 1usize),
        (SIZE as u64 - 1, 2),
        (u64::MAX, 1),
        (u64::MAX - 3, 8),
        (0, SIZE + 1),
        (1 << 40, 0),
        (0, usize::MAX),
    ] {
        match bridge.read_physical(addr, len) {
            Err(BridgeError::InvalidAddress { addr: a, len: l, max }) => {
                assert_eq!((a, l, max), (addr, len, SIZE));
            }
            other => panic!("{addr:#x}+{len:#x}: expected InvalidAddress, got {other:?}"),
        }
        let mut buffer = [0u8; 8];
        let short = buffer.len().min(len);
        if addr.checked_add(short as u64).is_none_or(|end| end > SIZE as u64) {
            assert!(bridge.read_into(addr, &mut buffer[..short]).is_err());
        }
    }
    let message = bridge.read_physical(SIZE as u64, 4).unwrap_err().to_string();
    assert!(message.contains("0x800000"), "{message}");
}

#[test]
fn test_layout_holes_are_invalid() {
    // 8 MiB split as 6 MiB low + 2 MiB at 4 GiB, like a machine with a PCI hole.
    let data = pattern(SIZE);
    let file = ShmFile::with_contents("layout", &data);
    let bridge = SharedMemoryBridge::new(&file.id)
        .unwrap()
        .with_layout(GuestLayout::from_split(6 << 20, 2 << 20))
        .unwrap();
    let mut buffer = [0u8; 16];
    bridge.read_into(1 << 32, &mut buffer).unwrap();
    assert_eq!(buffer, data[6 << 20..(6 << 20) + 16]);
    assert!(matches!(bridge.read_physical(6 << 20, 1), Err(BridgeError::InvalidAddress { .. })));
    assert!(matches!(bridge.read_physical((6 << 20) - 8, 16), Err(BridgeError::InvalidAddress { .. })));
    // a layout that does not cover the file is refused
    let other = SharedMemoryBridge::new(&file.id).unwrap();
    assert!(matches!(
        other.with_layout(GuestLayout::identity(1 << 20)),
        Err(BridgeError::LayoutMismatch { .. })
    ));
}

#[test]
fn test_snapshot_consistency() {
    let data = pattern(SIZE);
    let file = ShmFile::with_contents("consistency", &data);
    let bridge = SharedMemoryBridge::new(&file.id).unwrap();

    // A quiet file is consistent on the first attempt, and its checksum is the file's SHA-256.
    let quiet = bridge.consistent_snapshot(4).unwrap();
    assert_eq!(quiet.verdict, Verdict::Consistent);
    assert_eq!(quiet.attempts, 1);
    assert_eq!(quiet.torn_pages, 0);
    assert_eq!(quiet.data, data);
    assert_eq!(quiet.checksum(), qemu_bridge::ram::sha256_hex(&data));

    // A writer that keeps mutating pages through its own writable mapping-free path (pwrite on
    // the same file) must be detected: the verdict is torn, or the pages it changed were
    // re-copied. Both prove the verification looked at live memory again.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let path = file.path.clone();
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            let mut value = 0u64;
            while !stop.load(Ordering::Relaxed) {
                value += 1;
                for page in (0..SIZE / 4096).step_by(97) {
                    file.write_at(&value.to_le_bytes(), (page * 4096) as u64).unwrap();
                }
            }
            value
        })
    };
    let mut detected = false;
    for _ in 0..20 {
        let snapshot = bridge.consistent_snapshot(2).unwrap();
        if snapshot.verdict == Verdict::Torn {
            assert!(snapshot.torn_pages > 0);
            assert_eq!(snapshot.attempts, 2);
            detected = true;
            break;
        }
        if snapshot.recopied_pages > 0 {
            detected = true;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 0);
    assert!(detected, "a file mutated during snapshots was never seen as changing");
}

#[test]
fn test_concurrent_reads() {
    let data = Arc::new(pattern(SIZE));
    let file = ShmFile::with_contents("concurrent", &data);
    let bridge = Arc::new(SharedMemoryBridge::new(&file.id).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|thread| {
            let bridge = Arc::clone(&bridge);
            let data = Arc::clone(&data);
            std::thread::spawn(move || {
                let mut seed = thread.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
                let mut buffer = vec![0u8; 1 << 16];
                for _ in 0..2000 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let len = (seed % (1 << 16)) as usize;
                    let addr = ((seed >> 20) as usize) % (SIZE - len);
                    bridge.read_into(addr as u64, &mut buffer[..len]).unwrap();
                    assert_eq!(&buffer[..len], &data[addr..addr + len], "thread {thread} at {addr:#x}+{len}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn test_truncated_file_is_an_error_not_sigbus() {
    let file = ShmFile::with_contents("shrink", &pattern(SIZE));
    let bridge = SharedMemoryBridge::new(&file.id).unwrap();
    std::fs::OpenOptions::new().write(true).open(&file.path).unwrap().set_len(4096).unwrap();
    let mut buffer = [0u8; 64];
    assert!(matches!(bridge.read_into(1 << 20, &mut buffer), Err(BridgeError::FileShrunk { .. })));
    assert!(matches!(bridge.consistent_snapshot(2), Err(BridgeError::FileShrunk { .. })));
    // the seed's infallible snapshot() panics with the error rather than pass off an empty or
    // partial vector as guest RAM; try_snapshot() returns it
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bridge.snapshot())).unwrap_err();
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("shrank under the mapping"), "{message}");
    assert!(matches!(bridge.try_snapshot(), Err(BridgeError::FileShrunk { .. })));
    // what is still in the file remains readable
    bridge.read_into(0, &mut buffer).unwrap();
}

#[test]
fn test_truncation_during_copies_is_an_error_not_a_crash() {
    // Without the SIGBUS guard this test process dies: copies run back to back while another
    // thread truncates the file, so some copy is in flight past the new end.
    for round in 0..5u32 {
        let file = ShmFile::with_contents("race", &pattern(SIZE));
        let bridge = Arc::new(SharedMemoryBridge::new(&file.id).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let copies = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let shrunk_seen = Arc::new(AtomicBool::new(false));
        let copier = {
            let bridge = Arc::clone(&bridge);
            let stop = Arc::clone(&stop);
            let copies = Arc::clone(&copies);
            let shrunk_seen = Arc::clone(&shrunk_seen);
            std::thread::spawn(move || {
                let mut buffer = vec![0u8; SIZE];
                let mut outcomes = (0u32, 0u32);
                while !stop.load(Ordering::Relaxed) {
                    copies.fetch_add(1, Ordering::Relaxed);
                    match bridge.mapping().copy_with_threads(0, &mut buffer, 1) {
                        Ok(()) => outcomes.0 += 1,
                        Err(BridgeError::FileShrunk { .. }) => {
                            outcomes.1 += 1;
                            shrunk_seen.store(true, Ordering::Relaxed);
                        }
                        Err(other) => panic!("unexpected {other}"),
                    }
                }
                outcomes
            })
        };
        // let some copies run first, truncate, then wait (without a deadline a slow machine
        // could miss) until a copy has seen the truncation
        assert!(
            common::wait_until(std::time::Duration::from_secs(30), || copies.load(Ordering::Relaxed) > round)
        );
        std::fs::OpenOptions::new().write(true).open(&file.path).unwrap().set_len(4096).unwrap();
        assert!(
            common::wait_until(std::time::Duration::from_secs(30), || shrunk_seen.load(Ordering::Relaxed)),
            "no copy reported the truncation"
        );
        stop.store(true, Ordering::Relaxed);
        let (_ok, shrunk) = copier.join().unwrap();
        assert!(shrunk > 0, "copies after the truncation must report it");
        // the mapping stays unusable past the new end, and never returns the guard's zeros
        let mut buffer = [0u8; 64];
        assert!(matches!(bridge.read_into(1 << 20, &mut buffer), Err(BridgeError::FileShrunk { .. })));
    }
}

#[test]
fn test_touching_a_truncated_page_is_survived() {
    // Deterministic version of the race: a view taken before the truncation is touched after
    // it. Without the guard the kernel kills this process with SIGBUS.
    let file = ShmFile::with_contents("touch", &pattern(SIZE));
    let bridge = SharedMemoryBridge::new(&file.id).unwrap();
    let view = bridge.read_physical(4 << 20, 4096).unwrap();
    std::fs::OpenOptions::new().write(true).open(&file.path).unwrap().set_len(4096).unwrap();
    // the seed API's caveat in action: the guard maps zeros over the lost page
    let byte = unsafe_free_read(view);
    assert_eq!(byte, 0);
    let mut buffer = [0u8; 16];
    assert!(
        matches!(bridge.read_into(0, &mut buffer), Err(BridgeError::FileShrunk { .. })),
        "poisoned mapping must refuse reads"
    );
}

fn unsafe_free_read(view: &[u8]) -> u8 {
    std::hint::black_box(view)[100]
}

/// A RAM file on hugetlbfs (2 MiB pages) truncated under a view: the SIGBUS guard must replace a
/// whole huge page (a 4 KiB page cannot be mapped into a huge page mapping, and the process
/// died of the SIGBUS when the guard tried).
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_touching_a_truncated_huge_page_is_survived() {
    const HUGE: u64 = 2 << 20;
    let pool = common::HugePages::reserve(4);
    let path = pool.dir.path().join("ram");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(2 * HUGE).unwrap();
    {
        let bridge = SharedMemoryBridge::open("huge", &path).unwrap();
        let mut buffer = [0xffu8; 16];
        bridge.read_into(HUGE + 4096, &mut buffer).unwrap();
        assert_eq!(buffer, [0; 16]);
        let view = bridge.read_physical(HUGE + 4096, 4096).unwrap();
        file.set_len(HUGE).unwrap();
        assert_eq!(unsafe_free_read(view), 0);
        assert!(matches!(bridge.read_into(0, &mut buffer), Err(BridgeError::FileShrunk { .. })));
    }
    drop(file);
    std::fs::remove_file(&path).unwrap();
}

/// A RAM file on hugetlbfs whose pool is used up (every free huge page reserved by the VM's own
/// mapping) and whose guest touched one page of four: every way of reading it returns zeros for
/// the untouched pages, raises no SIGBUS and allocates no huge page.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_reading_hugetlbfs_allocates_no_huge_page() {
    const HUGE: usize = 2 << 20;
    common::require_program("python3");
    let pool = common::HugePages::reserve(4);
    let path = pool.dir.path().join("ram");
    std::fs::File::create(&path).unwrap().set_len(4 * HUGE as u64).unwrap();
    // the "guest": maps the whole file (reserving all four pages) and touches the first one
    let script = "import mmap,os,sys\nf=os.open(sys.argv[1],os.O_RDWR)\nm=mmap.mmap(f,4*2*1024*1024)\n\
                  m[100]=0x5a\nprint('ready',flush=True)\nsys.stdin.read()\n";
    let mut guest = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 5];
    std::io::Read::read_exact(guest.stdout.as_mut().unwrap(), &mut ready).unwrap();
    let free = common::huge_pages_free();
    {
        let bridge = SharedMemoryBridge::open("huge", &path).unwrap();
        assert_eq!(bridge.mapping().read_method(), qemu_bridge::ram::ReadMethod::Pread);
        let data = bridge.try_snapshot().unwrap();
        assert_eq!(data[100], 0x5a);
        assert_eq!(data.iter().filter(|&&b| b != 0).count(), 1);
        let checked = bridge.consistent_snapshot(2).unwrap();
        assert_eq!(checked.verdict, Verdict::Consistent);
        assert!(checked.data == data);
        let reply = bridge.mapping().read_for_reply(3 * HUGE, HUGE).unwrap();
        assert!(reply.iter().all(|&b| b == 0));
        let out = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        bridge.write_snapshot_to(out.as_file()).unwrap();
        assert!(std::fs::read(out.path()).unwrap() == data);
    }
    assert_eq!(common::huge_pages_free(), free, "reading allocated huge pages");
    drop(guest.stdin.take());
    guest.wait().unwrap();
    std::fs::remove_file(&path).unwrap();
}
