//! Soft-dirty change tracking, which this host's kernel may lack, exercised inside a VM on
//! Debian's generic kernel that has it (`common/nested.rs`): the harness itself, then this very
//! test binary run in there (`inside_*` tests), with a nested TCG guest that writes a known set of
//! pages (tests/guest/boot.S built with WRITER) and qemu-bridge's library and command line tracking it.

use qemu_bridge_test_support as common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use common::{nested, wait_until, ChangesRun, TestRunDir, TestVm, VmBuilder, COUNTER_ADDR};
use qemu_bridge::ram::host_has_soft_dirty;
use qemu_bridge::ram::soft_dirty_for;
use qemu_bridge::ram::SnapshotBuffer;
use qemu_bridge::ram::{ChangeSet, Fingerprints, GuestLayout, GuestRam, TrackingMethod};
use qemu_bridge::{SharedMemoryBridge, Vm};

const PAGE: u64 = 4096;

/// Python, with nothing but the standard library, shows the kernel's soft-dirty bit (bit 55 of
/// a `/proc/self/pagemap` entry) working on one anonymous page: set by a write, cleared by
/// writing 4 to `/proc/self/clear_refs`, set again by the next write.
const SOFT_DIRTY_CHECK: &str = r#"
import ctypes, mmap, os, struct
page = mmap.mmap(-1, 4096)
address = ctypes.addressof(ctypes.c_char.from_buffer(page))
def soft_dirty():
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(address // 4096 * 8)
        return struct.unpack("<Q", pagemap.read(8))[0] >> 55 & 1
page[0] = 1
print("SOFT-DIRTY-AFTER-WRITE:%d" % soft_dirty())
with open("/proc/self/clear_refs", "w") as clear_refs:
    clear_refs.write("4")
print("SOFT-DIRTY-AFTER-CLEAR:%d" % soft_dirty())
page[0] = 2
print("SOFT-DIRTY-AFTER-REWRITE:%d" % soft_dirty())
"#;

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn the_nested_vm_runs_host_commands_on_a_kernel_with_soft_dirty() {
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let script = format!(
        "set -e\n\
         echo \"NESTED-KERNEL:$(uname -r)\"\n\
         /usr/bin/python3 -c '{SOFT_DIRTY_CHECK}'\n\
         /usr/bin/qemu-system-x86_64 --version | head -1 | sed 's/^/NESTED-QEMU:/'\n\
         echo written > /tmp/file && cat /tmp/file\n\
         exit 0\n"
    );
    let run = nested::run_inside(&script, 512, Duration::from_secs(600));
    println!("{}", run.output);
    assert_eq!(run.exit_code, 0, "{}", run.output);
    let kernel = run.output.lines().find_map(|l| l.strip_prefix("NESTED-KERNEL:")).expect("uname ran");
    assert!(kernel.ends_with("-amd64") && !kernel.contains("cloud"), "Debian's generic kernel: {kernel}");
    assert_ne!(kernel, host_kernel.trim(), "not this host's kernel");
    for (marker, bit) in [
        ("SOFT-DIRTY-AFTER-WRITE:", "1"),
        ("SOFT-DIRTY-AFTER-CLEAR:", "0"),
        ("SOFT-DIRTY-AFTER-REWRITE:", "1"),
    ] {
        assert!(
            run.output.lines().any(|l| l == format!("{marker}{bit}")),
            "{marker}{bit} expected: {}",
            run.output
        );
    }
    assert!(
        run.output.contains("NESTED-QEMU:QEMU emulator version"),
        "the host's QEMU runs inside: {}",
        run.output
    );
    assert!(run.output.lines().any(|l| l == "written"), "/tmp is writable inside: {}", run.output);
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn a_failing_script_reports_its_exit_code_and_output() {
    let run =
        nested::run_inside("echo to-stdout\necho to-stderr >&2\nexit 3\n", 256, Duration::from_secs(600));
    assert_eq!(run.exit_code, 3, "{}", run.output);
    assert!(run.output.lines().any(|l| l == "to-stdout"), "{}", run.output);
    assert!(run.output.lines().any(|l| l == "to-stderr"), "{}", run.output);
}

/// The `inside_*` tests of this binary, run in the soft-dirty VM.
const INSIDE_TESTS: [&str; 4] = [
    "inside_a_clear_by_another_tracker_never_hides_a_write",
    "inside_two_changes_runs_report_exactly_the_guests_writes",
    "inside_snapshot_updates_look_at_what_qemu_wrote_and_stay_exact",
    "inside_a_consistent_capture_tracks_by_soft_dirty_and_is_one_instant",
];

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_soft_dirty_tracking_inside_debian_kernel() {
    common::require_qemu();
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "export {INSIDE}=1 RUST_BACKTRACE=1\ncd /tmp\nexec {} --ignored --exact --test-threads 1 {}\n",
        exe.display(),
        INSIDE_TESTS.join(" ")
    );
    let run = nested::run_inside(&script, 1024, Duration::from_secs(1500));
    println!("{}", run.output);
    assert_eq!(run.exit_code, 0, "the tests inside failed:\n{}", run.output);
    for name in INSIDE_TESTS {
        assert!(
            run.output.lines().any(|line| line == format!("test {name} ... ok")),
            "{name} did not pass inside:\n{}",
            run.output
        );
    }
}

// ---- run inside the Debian-kernel VM (by test_soft_dirty_inside_debian_kernel) ----

/// Set in the environment of the tests run inside the VM.
const INSIDE: &str = "QEMU_BRIDGE_SOFT_DIRTY_HOST";

/// Whether this test runs inside the Debian-kernel VM; elsewhere the `inside_*` tests say they
/// were left to the outer test (which runs them there and fails when they fail).
fn inside() -> bool {
    if std::env::var_os(INSIDE).is_some() {
        assert!(host_has_soft_dirty(), "the kernel of the soft-dirty VM keeps no soft-dirty bits");
        true
    } else {
        eprintln!("not inside the soft-dirty VM: run there by test_soft_dirty_inside_debian_kernel");
        false
    }
}

/// The pages the writer guest stores into (tests/guest/boot.S with WRITER), besides its counter's.
const WRITTEN: [u64; 5] = [0x30000, 0x31000, 0x58000, 0x100000, 0x10a000];
/// Where in the first of them it stores its counter ...
const FIRST_STORE: u64 = 0x30010;
/// ... and in the last, the last store of each round.
const LAST_STORE: u64 = 0x10a010;

/// Inside the soft-dirty VM, a run directory with the writer guest running in it, past its first
/// round of stores; elsewhere `None` (see [`inside`]).
fn writer_inside() -> Option<(TestRunDir, TestVm)> {
    if !inside() {
        return None;
    }
    let run_dir = TestRunDir::new();
    let vm = writer_vm(&run_dir);
    Some((run_dir, vm))
}

fn writer_vm(run_dir: &TestRunDir) -> TestVm {
    let image = run_dir.path().join("writer.img");
    std::fs::copy(common::writer_image(), &image).unwrap();
    let vm = VmBuilder::new("sd", run_dir).drive(&image).launch();
    vm.wait_for_marker();
    // its first round of stores done: every page it writes is data of the RAM file from now on
    let bridge = SharedMemoryBridge::open(vm.name(), &vm.launched.ram_path).unwrap();
    assert!(
        wait_until(Duration::from_secs(120), || stored(&bridge, LAST_STORE) != 0),
        "the guest never stored"
    );
    vm
}

/// The writer guest's counter (it stores it into every page of [`WRITTEN`]).
fn stored(bridge: &SharedMemoryBridge, gpa: u64) -> u32 {
    let mut bytes = [0u8; 4];
    bridge.read_into(gpa, &mut bytes).unwrap();
    u32::from_le_bytes(bytes)
}

fn page_set(ram: &GuestRam, layout: &GuestLayout, pages: &[usize]) -> BTreeSet<u64> {
    ChangeSet::of_pages(pages, ram.len(), layout)
        .ranges
        .iter()
        .flat_map(|range| (range.start / PAGE..range.end / PAGE).map(|page| page * PAGE))
        .collect()
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn inside_a_clear_by_another_tracker_never_hides_a_write() {
    let Some((run_dir, vm)) = writer_inside() else { return };
    let qemu = Vm::existing(&run_dir.run_dir, vm.name()).unwrap();
    let (bridge, info) = qemu.open_bridge().unwrap();
    let (ram, layout) = (bridge.mapping(), bridge.layout());
    assert_eq!(info.tracking_method(), TrackingMethod::SoftDirty);
    let ours = soft_dirty_for(info.qemu_pid, ram).unwrap();
    let theirs = soft_dirty_for(info.qemu_pid, ram).unwrap();
    let mut prints = Fingerprints::with_soft_dirty(ram, Arc::clone(&ours), |_, _| {}).unwrap();
    assert_eq!(prints.method(), TrackingMethod::SoftDirty);
    let baseline = ours.generation().unwrap();
    assert!(baseline.count >= 1, "the first tracker cleared the bits: {baseline:?}");

    // the guest writes its pages once more; then it is paused, so that nothing writes after
    let before = stored(&bridge, FIRST_STORE);
    assert!(wait_until(Duration::from_secs(60), || stored(&bridge, FIRST_STORE) != before));
    qemu.with_qmp(|qmp| qmp.stop()).unwrap();
    // another consumer clears: the bits of those writes are gone from the kernel
    let cleared = theirs.clear().unwrap();
    assert_eq!(cleared.count, baseline.count + 1);
    let mut bits = Vec::new();
    assert_eq!(ours.dirty_pages(0..ours.pages(), &mut bits).unwrap(), cleared);
    assert!(
        bits.is_empty(),
        "a paused guest wrote nothing since the clear: {:x?}",
        page_set(ram, layout, &bits)
    );

    // yet the tracker reports them: it saw the generation move and looked at every page
    let mut changed = Vec::new();
    prints.sweep(ram, |page, _| changed.push(page)).unwrap();
    let changed = page_set(ram, layout, &changed);
    for page in WRITTEN.iter().chain([&(COUNTER_ADDR / PAGE * PAGE)]) {
        assert!(changed.contains(page), "page {page:#x} missed after another tracker's clear: {changed:x?}");
    }
    // and, the generation now known, a look with nothing written reports nothing and reads
    // only bits
    let mut again = Vec::new();
    prints.sweep(ram, |page, _| again.push(page)).unwrap();
    assert!(again.is_empty(), "{again:?}");
    qemu.with_qmp(|qmp| qmp.cont()).unwrap();
    // the guest's next writes are seen through the bits alone
    let paused_at = stored(&bridge, FIRST_STORE);
    assert!(wait_until(Duration::from_secs(60), || stored(&bridge, FIRST_STORE) != paused_at));
    let mut next = Vec::new();
    prints.sweep(ram, |page, _| next.push(page)).unwrap();
    let next = page_set(ram, layout, &next);
    for page in &WRITTEN {
        assert!(next.contains(page), "page {page:#x} missed: {next:x?}");
    }
    drop(vm);
}

fn allocated(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn inside_two_changes_runs_report_exactly_the_guests_writes() {
    let Some((run_dir, vm)) = writer_inside() else { return };
    let listed: serde_json::Value =
        serde_json::from_str(&common::stdout(&common::qemu_bridge(&run_dir, &["list", "--json"]))).unwrap();
    assert_eq!(listed[0]["tracking"], "soft-dirty", "{listed}");
    let before = allocated(&vm.launched.ram_path);

    let mut first = ChangesRun::start(&run_dir, vm.name(), 8, "soft-dirty");
    let mut second = ChangesRun::start(&run_dir, vm.name(), 8, "soft-dirty");
    let (mut seen_first, mut seen_second) = (BTreeSet::new(), BTreeSet::new());
    for _ in 0..8 {
        seen_first.extend(first.next_pages().0);
        seen_second.extend(second.next_pages().0);
    }
    let counter_page = COUNTER_ADDR / PAGE * PAGE;
    for (name, seen) in [("first", &seen_first), ("second", &seen_second)] {
        for page in WRITTEN.iter().chain([&counter_page]) {
            assert!(seen.contains(page), "{name} run missed page {page:#x}: {seen:x?}");
        }
        let unexpected: Vec<_> = seen
            .iter()
            .filter(|page| !WRITTEN.contains(page) && **page != counter_page && !common::guest_writes(**page))
            .collect();
        assert!(unexpected.is_empty(), "{name} run reported pages nobody wrote: {unexpected:x?}");
    }
    assert_eq!(allocated(&vm.launched.ram_path), before, "tracking allocated holes of the RAM file");
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn inside_snapshot_updates_look_at_what_qemu_wrote_and_stay_exact() {
    let Some((run_dir, vm)) = writer_inside() else { return };
    let qemu = Vm::existing(&run_dir.run_dir, vm.name()).unwrap();
    let (bridge, info) = qemu.open_bridge().unwrap();
    let pages = bridge.mapping().pages() as u64;
    let output = run_dir.path().join("snap.raw");
    let snapshot = |what: &str| {
        let out = common::qemu_bridge(
            &run_dir,
            &["snapshot", vm.name(), "-o", output.to_str().unwrap(), "--update"],
        );
        assert!(out.status.success(), "{what}: {}", common::stderr(&out));
        common::stderr(&out)
    };
    // the bytes of the file equal the paused RAM's
    let exact = |what: &str| {
        qemu.with_qmp(|qmp| qmp.stop()).unwrap();
        let said = snapshot(what);
        let ram = std::fs::read(&vm.launched.ram_path).unwrap();
        let file = std::fs::read(&output).unwrap();
        assert!(ram == file, "{what}: the snapshot differs from the paused RAM");
        qemu.with_qmp(|qmp| qmp.cont()).unwrap();
        said
    };
    let looked = |said: &str| -> u64 {
        let at = said.find("looked at ").unwrap_or_else(|| panic!("{said}"));
        said[at + 10..].split(':').next().unwrap().parse().unwrap()
    };
    let wait_for_writes = || {
        let before = stored(&bridge, FIRST_STORE);
        assert!(wait_until(Duration::from_secs(60), || stored(&bridge, FIRST_STORE) != before));
    };

    assert!(snapshot("first").contains("a full snapshot"));
    wait_for_writes();
    let said = exact("update");
    assert!(said.contains("soft-dirty"), "{said}");
    assert!(looked(&said) * 100 < pages, "an update looked at more than 1 % of the pages: {said}");

    // another consumer clears between two updates: the next update looks at every page and is
    // still exact
    wait_for_writes();
    soft_dirty_for(info.qemu_pid, bridge.mapping()).unwrap().clear().unwrap();
    let said = exact("update after a clear");
    assert_eq!(looked(&said), pages, "{said}");
    wait_for_writes();
    let said = exact("update after that");
    assert!(looked(&said) * 100 < pages, "{said}");
    std::fs::remove_file(&output).unwrap();
    std::fs::remove_file(qemu_bridge::ram::record_path(&output)).unwrap();

    // the library's reused buffer follows the same bits and stays exact
    let source = soft_dirty_for(info.qemu_pid, bridge.mapping()).unwrap();
    let mut buffer = SnapshotBuffer::with_soft_dirty(bridge.mapping(), source).unwrap();
    wait_for_writes();
    qemu.with_qmp(|qmp| qmp.stop()).unwrap();
    let copied = buffer.refresh(bridge.mapping()).unwrap();
    let ram = std::fs::read(&vm.launched.ram_path).unwrap();
    qemu.with_qmp(|qmp| qmp.cont()).unwrap();
    assert!(copied > WRITTEN.len(), "the writer's pages and its counter's: {copied}");
    assert!(buffer.data() == ram.as_slice(), "the buffer differs from the paused RAM");
}

/// `snapshot --consistent` of the running writer guest where the kernel keeps soft-dirty bits:
/// the passes after the first find what QEMU wrote by its soft-dirty bits, one pause, the guest
/// running again afterwards, and the image is of one instant by the guest's own arithmetic: the
/// writer stores its tick counter (0x10040, one more each tick) into five places, in order,
/// every eighth tick, so at any instant each place holds the last multiple of 8 the counter
/// reached, or (only while the counter sits on a multiple of 8, in the middle of a round) the
/// one before, in store order. A copy that missed what the guest wrote while it ran (the passes
/// run for seconds under the nested TCG, a round every 0.44 s) holds older values. (The
/// sweeper of tests/captures.rs gives a finer oracle, but does not sweep under the nested TCG.)
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn inside_a_consistent_capture_tracks_by_soft_dirty_and_is_one_instant() {
    const STORES: [u64; 5] = [0x30010, 0x31020, 0x58030, 0x100010, 0x10a010];
    let Some((run_dir, vm)) = writer_inside() else { return };
    let out = run_dir.path().join("consistent.raw");
    let output = common::qemu_bridge(
        &run_dir,
        &["snapshot", vm.name(), "-o", out.to_str().unwrap(), "--consistent", "--json"],
    );
    assert!(output.status.success(), "{}", common::stderr(&output));
    let report: serde_json::Value = serde_json::from_str(&common::stdout(&output)).unwrap();
    eprintln!("consistent with soft-dirty: {report}");
    assert_eq!(report["tracking"], "soft-dirty", "{report}");
    assert_eq!(report["verdict"], "consistent", "{report}");
    assert!(report["paused_ms"].is_number() && report["passes"].as_array().unwrap().len() >= 3, "{report}");
    let image = std::fs::File::open(&out).unwrap();
    let counter = common::counter_at(&image, COUNTER_ADDR);
    let stored: Vec<u32> = STORES.iter().map(|&at| common::counter_at(&image, at)).collect();
    let base = counter & !7;
    let one_instant = if counter % 8 != 0 {
        stored.iter().all(|&value| value == base)
    } else {
        stored.windows(2).all(|pair| pair[0] >= pair[1])
            && stored.iter().all(|&value| value == base || value == base.wrapping_sub(8))
    };
    assert!(base > 0 && one_instant, "not one instant: counter {counter}, stores {stored:?}: {report}");
    let status = common::qemu_bridge(&run_dir, &["status", vm.name()]);
    assert_eq!(common::stdout(&status).trim(), "running");
}
