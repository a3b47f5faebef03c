//! Captures of a running guest against outside oracles: a guest that sweeps a counter across
//! 64 MiB of its RAM about a thousand times a second, whose image of one instant shows at most one
//! break; QEMU's own `STOP` and `RESUME` events (on a second QMP monitor) for the pause; the RAM
//! file of the paused guest for the bytes.

use qemu_bridge_test_support as common;

use std::path::Path;

use common::{sweep_breaks, TestRunDir, VmBuilder, SWEPT};
use qemu_bridge::QmpClient;

const RAM: u64 = 128 << 20;

/// The sweeper, running, with a second QMP monitor at `<run-dir>/<name>.watch` on which a test
/// watches QEMU's events.
fn sweeper(run_dir: &TestRunDir) -> (common::TestVm, std::path::PathBuf) {
    common::require_qemu();
    let name = common::unique_name("sweep");
    let watch = run_dir.path().join(format!("{name}.watch"));
    let monitor = format!("unix:{},server=on,wait=off", watch.display());
    // QEMU locks its disk image for writing: each sweeper gets a copy of its own (the tests of
    // this file run in parallel)
    let image = run_dir.path().join(format!("{name}.sweeper.img"));
    std::fs::copy(common::sweeper_image(), &image).unwrap();
    let vm = VmBuilder::new("sweep", run_dir)
        .named(&name)
        .memory(RAM)
        .drive(&image)
        .extra(&["-qmp", &monitor])
        .launch();
    // sweeping: the first swept page holds a counter that moves
    let ram = std::fs::File::open(&vm.launched.ram_path).unwrap();
    let first = || common::counter_at(&ram, SWEPT.start);
    let start = first();
    assert!(
        common::wait_until(std::time::Duration::from_secs(60), || first() > start + 100_000),
        "the guest does not sweep"
    );
    (vm, watch)
}

fn snapshot(run_dir: &TestRunDir, name: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["snapshot", name, "-o", out.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let output = common::qemu_bridge(run_dir, &args);
    assert!(output.status.success(), "snapshot {extra:?}: {}", common::stderr(&output));
    serde_json::from_str(&common::stdout(&output)).unwrap()
}

fn status(run_dir: &TestRunDir, name: &str) -> String {
    common::stdout(&common::qemu_bridge(run_dir, &["status", name])).trim().to_string()
}

/// QEMU's timestamp of an event, in microseconds.
fn micros(event: &serde_json::Value) -> i64 {
    event["timestamp"]["seconds"].as_i64().unwrap() * 1_000_000
        + event["timestamp"]["microseconds"].as_i64().unwrap()
}

/// `--consistent` of the running sweeper is an image of one instant (at most one break), taken
/// with one pause that QEMU's own events bracket, the guest running again afterwards; the report
/// names the passes and the pause. A plain snapshot of the same running guest shows more breaks,
/// and its smear report (printed, and kept in the side record) covers every swept page where it
/// differs from a paused copy taken at once after it.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_a_consistent_capture_of_a_running_guest_is_one_instant() {
    let run_dir = TestRunDir::new();
    let (vm, watch) = sweeper(&run_dir);
    let mut events = QmpClient::connect(&watch, std::time::Duration::from_secs(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let out = dir.path().join("consistent.raw");
    let report = snapshot(&run_dir, vm.name(), &out, &["--consistent"]);
    let image = std::fs::read(&out).unwrap();
    assert_eq!(image.len() as u64, RAM);
    assert!(sweep_breaks(&image) <= 1, "{} breaks in a consistent capture: {report}", sweep_breaks(&image));
    assert_eq!(report["verdict"], "consistent", "{report}");
    // soft-dirty bits where the host keeps them (tests/soft_dirty.rs checks that they are used)
    assert!(report["tracking"] == "fingerprints" || report["tracking"] == "soft-dirty", "{report}");
    let passes = report["passes"].as_array().unwrap();
    assert!(
        passes.len() >= 3 && passes[0] == RAM / 4096,
        "a whole copy, a pass while running, a pass paused: {report}"
    );
    assert_eq!(status(&run_dir, vm.name()), "running");
    events.query_status().unwrap();
    let seen = events.take_events();
    let stops: Vec<&serde_json::Value> = seen.iter().filter(|event| event["event"] == "STOP").collect();
    let resumes: Vec<&serde_json::Value> = seen.iter().filter(|event| event["event"] == "RESUME").collect();
    assert!(stops.len() == 1 && resumes.len() == 1, "one pause: {seen:?}");
    let paused = micros(resumes[0]) - micros(stops[0]);
    assert!(paused > 0, "{seen:?}");
    eprintln!(
        "consistent: passes {passes:?}, paused {paused} µs by QEMU's events ({} ms by ours)",
        report["paused_ms"]
    );
    // the side record is there: an update of the file is incremental
    assert!(common::qemu_bridge(&run_dir, &["snapshot", vm.name(), "-o", out.to_str().unwrap(), "--update"])
        .status
        .success());

    // a plain snapshot of the running guest: smeared, and it says where
    let out = dir.path().join("plain.raw");
    let report = snapshot(&run_dir, vm.name(), &out, &[]);
    let paused_copy = {
        vm.launched.vm.with_qmp(|qmp| qmp.stop()).unwrap();
        std::fs::read(&vm.launched.ram_path).unwrap()
    };
    let image = std::fs::read(&out).unwrap();
    assert!(sweep_breaks(&image) > 1, "a copy of a running sweeper shows more than one break");
    assert_eq!(report["verdict"], "unchecked", "{report}");
    let ranges: Vec<(u64, u64)> = report["smear"]["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|range| (range[0].as_u64().unwrap(), range[1].as_u64().unwrap()))
        .collect();
    let mut differing = 0;
    for page in (SWEPT.start..SWEPT.end).step_by(4096) {
        let at = page as usize;
        if image[at..at + 4096] != paused_copy[at..at + 4096] {
            differing += 1;
            assert!(
                ranges.iter().any(|&(start, end)| start <= page && page < end),
                "page {page:#x} differs from the paused copy but is not in the smear report"
            );
        }
    }
    assert!(differing > 0);
    // the side record keeps the same ranges
    let record = std::fs::read(qemu_bridge::ram::record_path(&out)).unwrap();
    let header_len = u32::from_le_bytes(record[8..12].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&record[12..12 + header_len]).unwrap();
    let kept: Vec<(u64, u64)> = header["smear"]
        .as_array()
        .unwrap()
        .iter()
        .map(|range| (range[0].as_u64().unwrap(), range[1].as_u64().unwrap()))
        .collect();
    assert_eq!(kept, ranges);

    // --pause stops the guest for the whole copy: one instant too
    vm.launched.vm.with_qmp(|qmp| qmp.cont()).unwrap();
    let out = dir.path().join("paused.raw");
    let report = snapshot(&run_dir, vm.name(), &out, &["--pause"]);
    assert!(sweep_breaks(&std::fs::read(&out).unwrap()) <= 1, "{report}");
    assert_eq!(report["verdict"], "paused");
    assert_eq!(status(&run_dir, vm.name()), "running");
}

/// Every snapshot can be updated: `--update` of a file a plain `snapshot` made writes only what
/// changed, and the file then equals the RAM file of the paused guest.
/// The library's consistent capture into a buffer reused from one capture to the next: of the
/// running sweeper, the buffer holds one instant (at most one break) each time, a pause that
/// QEMU's own events bracket each time, the guest running again after each; the refreshes after
/// the first copy only what the guest wrote (fewer pages than RAM has).
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_a_consistent_capture_into_a_reused_buffer_is_one_instant() {
    let run_dir = TestRunDir::new();
    let (vm, watch) = sweeper(&run_dir);
    let mut events = QmpClient::connect(&watch, std::time::Duration::from_secs(10)).unwrap();
    let handle = qemu_bridge::Vm::existing(&run_dir.run_dir, vm.name()).unwrap();
    let bridge = qemu_bridge::SharedMemoryBridge::open(vm.name(), &vm.launched.ram_path).unwrap();
    let mut buffer = qemu_bridge::ram::SnapshotBuffer::new(bridge.mapping()).unwrap();
    for round in 0..2 {
        let capture = qemu_bridge::capture::consistent_into(&handle, &bridge, &mut buffer, 0).unwrap();
        let breaks = sweep_breaks(buffer.data());
        assert!(breaks <= 1, "round {round}: {breaks} breaks in a consistent capture: {capture:?}");
        assert!(capture.paused_for.is_some() && capture.passes.len() >= 2, "{capture:?}");
        assert!(capture.passes.iter().all(|&pages| pages < RAM / 4096), "only what was written: {capture:?}");
        assert_eq!(status(&run_dir, vm.name()), "running");
        events.query_status().unwrap();
        let seen = events.take_events();
        let stops = seen.iter().filter(|event| event["event"] == "STOP").count();
        let resumes = seen.iter().filter(|event| event["event"] == "RESUME").count();
        assert!(stops == 1 && resumes == 1, "round {round}: one pause: {seen:?}");
        eprintln!(
            "into a buffer, round {round}: passes {:?}, paused {:?}",
            capture.passes, capture.paused_for
        );
    }
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_an_update_of_a_plain_snapshot_is_incremental() {
    let run_dir = TestRunDir::new();
    let vm = VmBuilder::new("update", &run_dir).memory(64 << 20).launch();
    vm.wait_for_marker();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plain.raw");
    vm.launched.vm.with_qmp(|qmp| qmp.stop()).unwrap();
    let report = snapshot(&run_dir, vm.name(), &out, &[]);
    assert_eq!(report["verdict"], "consistent", "a paused guest is copied as of one instant: {report}");
    assert!(report["smear"].is_null() && report["tracking"].is_null(), "one whole copy: {report}");
    // the guest runs a moment (its counter moves), then an update
    vm.launched.vm.with_qmp(|qmp| qmp.cont()).unwrap();
    let ram = std::fs::File::open(&vm.launched.ram_path).unwrap();
    let before = common::counter_in(&ram);
    assert!(common::wait_until(std::time::Duration::from_secs(30), || common::counter_in(&ram) > before + 2));
    vm.launched.vm.with_qmp(|qmp| qmp.stop()).unwrap();
    let report = snapshot(&run_dir, vm.name(), &out, &["--update"]);
    let update = &report["update"];
    assert!(update["full"].is_null(), "an incremental update: {report}");
    let written = update["pages_written"].as_u64().unwrap();
    assert!((1..64).contains(&written), "{report}");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&vm.launched.ram_path).unwrap());
}

/// Bad output: a directory, a disk that fills up (a small tmpfs): a clear error, no partial file
/// left, the guest running as before.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_a_capture_that_cannot_be_written_leaves_nothing() {
    common::require_root();
    let run_dir = TestRunDir::new();
    let vm = VmBuilder::new("full", &run_dir).memory(64 << 20).launch();
    vm.wait_for_marker();
    let dir = tempfile::tempdir().unwrap();
    let output = common::qemu_bridge(&run_dir, &["snapshot", vm.name(), "-o", dir.path().to_str().unwrap()]);
    common::assert_clean_failure(&output, dir.path().to_str().unwrap());
    // a tmpfs of 1 MiB cannot hold 64 MiB of a guest that wrote... its counter and BIOS: make
    // the guest's RAM hold more than the tmpfs by writing pages through the RAM file
    let ram = std::fs::OpenOptions::new().write(true).open(&vm.launched.ram_path).unwrap();
    for page in 0..512u64 {
        std::os::unix::fs::FileExt::write_all_at(&ram, &[0x5a; 64], (8 << 20) + page * 4096).unwrap();
    }
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(&small);
    for extra in [&[][..], &["--consistent"], &["--pause"], &["--update"]] {
        let out = small.join("image.raw");
        let mut args = vec!["snapshot", vm.name(), "-o", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let output = common::qemu_bridge(&run_dir, &args);
        common::assert_clean_failure(&output, "No space left on device");
        let left: Vec<_> =
            std::fs::read_dir(&small).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert!(left.is_empty(), "{extra:?} left {left:?}");
        assert_eq!(status(&run_dir, vm.name()), "running", "{extra:?}");
    }
}
