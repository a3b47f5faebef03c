//! Change tracking against a real guest: `qemu-bridge changes` reports every page written into a
//! running VM's RAM (the guest's own counter page, and pages written through the RAM file as a
//! vCPU would, holes among them), nothing else but the few pages the guest's BIOS and interrupt
//! handling write (named below), allocates no hole, and two trackers of one VM at once both see
//! everything (neither resets the other).

use qemu_bridge_test_support as common;

use std::collections::BTreeSet;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::process::Command;

use common::{ChangesRun, TestRunDir, COUNTER_ADDR};

const PAGE: u64 = 4096;

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_changes_reports_exactly_the_written_pages_of_a_running_guest() {
    let (run_dir, vm) = common::booted_vm("changes");
    let ram = std::fs::OpenOptions::new().read(true).write(true).open(&vm.launched.ram_path).unwrap();
    let allocated = || ram.metadata().unwrap().blocks() * 512;
    let listed: serde_json::Value =
        serde_json::from_str(&common::stdout(&common::qemu_bridge(&run_dir, &["list", "--json"]))).unwrap();
    assert_eq!(listed[0]["tracking"], "fingerprints", "{listed}");

    // two trackers of the one VM at once, each with its own baseline
    let mut first = ChangesRun::start(&run_dir, vm.name(), 4, "fingerprints");
    let mut second = ChangesRun::start(&run_dir, vm.name(), 4, "fingerprints");
    let (idle, _) = first.next_pages();
    second.next_pages();
    let before = allocated();

    // pages written as a vCPU would: into holes (at 40 MiB and up) and into a page of data
    let written: Vec<u64> = vec![40 << 20, (40 << 20) + 3 * PAGE, (48 << 20) + 5 * PAGE, 63 << 20, 0x20000];
    for (index, &gpa) in written.iter().enumerate() {
        ram.write_all_at(&[0x5a ^ index as u8; 16], gpa + 100).unwrap();
    }
    assert_eq!(allocated() - before, 4 * PAGE, "the four hole pages written are allocated now");

    let mut seen_first = BTreeSet::new();
    let mut seen_second = BTreeSet::new();
    for _ in 0..3 {
        seen_first.extend(first.next_pages().0);
        seen_second.extend(second.next_pages().0);
    }
    let counter_page = COUNTER_ADDR / PAGE * PAGE;
    for (name, seen) in [("first", &seen_first), ("second", &seen_second)] {
        for &gpa in written.iter().chain([&counter_page]) {
            assert!(seen.contains(&gpa), "{name} tracker missed page {gpa:#x}: {seen:x?}");
        }
        let unexpected: Vec<_> = seen
            .iter()
            .filter(|page| !written.contains(page) && **page != counter_page && !common::guest_writes(**page))
            .collect();
        assert!(unexpected.is_empty(), "{name} tracker reported pages nobody wrote: {unexpected:x?}");
    }
    for page in &idle {
        assert!(*page == counter_page || common::guest_writes(*page), "idle interval reported {page:#x}");
    }
    // three full looks at all of RAM allocated no hole
    assert_eq!(allocated() - before, 4 * PAGE, "tracking allocated memory of the guest");
}

#[test]
fn test_changes_refuses_bad_intervals_and_unknown_vms() {
    let run_dir = TestRunDir::new();
    for interval in ["0", "-1", "nan", "soon"] {
        let output = common::qemu_bridge(&run_dir, &["changes", "vm", &format!("--interval={interval}")]);
        common::assert_clean_failure(&output, "seconds");
    }
    let output = common::qemu_bridge(&run_dir, &["changes", "absent", "--count", "1"]);
    common::assert_clean_failure(&output, "absent");
}

/// The first word of `program FILE`'s output (`b3sum`, `sha256sum`).
fn digest_by(program: &str, file: &std::path::Path) -> String {
    let output = Command::new(program).arg(file).output().unwrap();
    assert!(output.status.success(), "{program} failed");
    String::from_utf8_lossy(&output.stdout).split_whitespace().next().unwrap().to_string()
}

/// `snapshot --update` against a real guest: the first is a full snapshot (and says so), the
/// next rewrites only the pages written since, the file equals the paused guest's RAM each time,
/// and the digests printed are what `b3sum` and `sha256sum` print for the file.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_snapshot_update_rewrites_what_changed() {
    common::require_program("b3sum");
    let (run_dir, vm) = common::booted_vm("update");
    let ram = std::fs::OpenOptions::new().read(true).write(true).open(&vm.launched.ram_path).unwrap();
    let out = run_dir.path().join("vm.snap");
    let out_arg = out.to_str().unwrap();
    let snapshot = |extra: &[&str]| {
        let mut args = vec!["snapshot", vm.name(), "-o", out_arg, "--update"];
        args.extend_from_slice(extra);
        let output = common::qemu_bridge(&run_dir, &args);
        assert!(output.status.success(), "{}", common::stderr(&output));
        (common::stdout(&output), common::stderr(&output))
    };
    let same_as_ram = || std::fs::read(&out).unwrap() == std::fs::read(&vm.launched.ram_path).unwrap();

    let (line, note) = snapshot(&["--pause"]);
    assert!(note.contains("a full snapshot") && note.contains("does not exist"), "{note}");
    assert!(line.starts_with("blake3 ") && line.contains(" paused "), "{line}");
    assert_eq!(line.split_whitespace().nth(1).unwrap(), digest_by("b3sum", &out));

    // the guest ticks on; and three pages are written as a vCPU would, one of them a hole
    for (index, gpa) in [0x30_0000u64, 0x30_1000, 60 << 20].into_iter().enumerate() {
        ram.write_all_at(&[0xc3 ^ index as u8; 64], gpa).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(300)); // a few timer ticks of the guest
                                                               // paused by the test, so that the file can be compared with the RAM after the update
    let handle = qemu_bridge::Vm::existing(&run_dir.run_dir, vm.name()).unwrap();
    handle.with_qmp(|qmp| qmp.stop()).unwrap();
    let (line, note) = snapshot(&["--hash", "sha256"]);
    let updated: u64 = note
        .strip_prefix("qemu-bridge: updated ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an update: {note}"));
    // the three pages, the counter's, and the few the guest's BIOS writes (see guest_writes)
    assert!((4..=10).contains(&updated), "{updated} pages rewritten: {note}");
    assert_eq!(line.split_whitespace().nth(1).unwrap(), digest_by("sha256sum", &out));
    assert!(same_as_ram(), "the updated snapshot differs from the paused guest's RAM");
    handle.with_qmp(|qmp| qmp.cont()).unwrap();

    // running, verified: passes until one finds nothing more to write
    let (line, _) = snapshot(&["--consistent"]);
    let verdict = line.split_whitespace().nth(2).unwrap();
    assert!(verdict == "consistent" || verdict == "torn", "{line}");
    assert_eq!(line.split_whitespace().nth(1).unwrap(), digest_by("b3sum", &out));
}
