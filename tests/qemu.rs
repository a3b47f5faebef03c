//! The library and QMP client against real QEMU (TCG) running the boot-sector guest.

use qemu_bridge_test_support as common;

use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::{require_qemu, wait_until, TestRunDir, VmBuilder, MARKER, MARKER_ADDR};
use qemu_bridge::Machine;
use qemu_bridge::{RunState, SharedMemoryBridge, Verdict, Vm};

const VGA_AND_ROM: std::ops::Range<usize> = 0xA0000..0x100000;

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_qemu_vm_launch() {
    let (_run_dir, vm) = common::running_vm("launch");
    assert!(vm.launched.ram_path.starts_with("/dev/shm"));
    assert_eq!(
        vm.launched.ram_path.file_name().unwrap().to_str().unwrap(),
        format!("qemu_ram_{}", vm.name())
    );
    vm.wait_for_marker();

    // The seed's constructor finds the launched VM's RAM by name.
    let bridge = SharedMemoryBridge::new(vm.name()).unwrap();
    assert_eq!(bridge.size(), 64 << 20);
    let mut marker = vec![0u8; MARKER.len()];
    bridge.read_into(MARKER_ADDR, &mut marker).unwrap();
    assert_eq!(marker, MARKER);
    assert_eq!(bridge.read_physical(MARKER_ADDR, MARKER.len()).unwrap().to_vec(), MARKER);

    // The guest's counter is live: it changes under us.
    let first = common::counter(&bridge);
    assert!(
        wait_until(Duration::from_secs(60), || common::counter(&bridge) != first),
        "counter never changed"
    );

    // The serial console shows the same marker.
    let serial = &vm.launched.serial;
    assert!(wait_until(Duration::from_secs(30), || std::fs::read(serial)
        .is_ok_and(|s| s.windows(MARKER.len()).any(|w| w == MARKER))));
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_bytes_equal_pmemsave_of_stopped_vm() {
    let (run_dir, vm) = common::booted_vm("pmemsave");
    let handle = Vm::existing(&run_dir.run_dir, vm.name()).unwrap();
    let (bridge, info) = handle.open_bridge().unwrap();
    assert_eq!(info.ram_path, vm.launched.ram_path);
    let oracle = run_dir.qemu_output("pmemsave.bin");
    handle
        .with_qmp(|qmp| {
            qmp.stop()?;
            qmp.pmemsave(0, info.ram_size, &oracle)
        })
        .unwrap();
    assert_eq!(handle.status().unwrap().status, RunState::Paused);
    // pmemsave completes asynchronously on some versions: wait for the whole file
    assert!(wait_until(Duration::from_secs(30), || std::fs::metadata(&oracle)
        .is_ok_and(|m| m.len() == info.ram_size)));
    let expected = std::fs::read(&oracle).unwrap();
    let ours = bridge.try_snapshot().unwrap();
    assert_eq!(ours.len(), expected.len());
    let mismatches: Vec<usize> =
        (0..ours.len()).filter(|&i| ours[i] != expected[i] && !VGA_AND_ROM.contains(&i)).take(8).collect();
    assert!(mismatches.is_empty(), "bytes differ from pmemsave at {mismatches:#x?}");
    // the comparison is not vacuous: the marker is in both
    let at = MARKER_ADDR as usize;
    assert_eq!(&expected[at..at + MARKER.len()], MARKER);

    // Stopped, the counter is frozen and a checked snapshot is consistent on attempt 1.
    let checked = bridge.consistent_snapshot(4).unwrap();
    assert_eq!((checked.verdict, checked.attempts), (Verdict::Consistent, 1));
    assert_eq!(checked.data, ours);

    // paused_snapshot leaves a paused VM paused
    let paused = handle.paused_snapshot(&bridge).unwrap();
    assert_eq!(paused.verdict, Verdict::Paused);
    assert_eq!(handle.status().unwrap().status, RunState::Paused);
    handle.with_qmp(|qmp| qmp.cont()).unwrap();
    // ... and resumes a running one
    let resumed = handle.paused_snapshot(&bridge).unwrap();
    assert_eq!(resumed.data.len(), 64 << 20);
    assert_eq!(handle.status().unwrap().status, RunState::Running);
    // a running guest's checked snapshot is torn (its counter changed in every attempt) or,
    // having caught a quiet moment, consistent; its report must agree with itself either way
    let live = bridge.consistent_snapshot(2).unwrap();
    match live.verdict {
        Verdict::Consistent => assert_eq!(live.torn_pages, 0, "{live:?}"),
        Verdict::Torn => {
            assert!(live.torn_pages > 0 && live.attempts == 2 && live.recopied_pages > 0, "{live:?}")
        }
        other => panic!("a checked snapshot of a running VM cannot be {other}: {live:?}"),
    }
    assert!(live.attempts == 1 || live.recopied_pages > 0, "a second attempt recopies pages: {live:?}");
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_qmp_states_and_memdev_on_real_qemu() {
    require_qemu();
    let run_dir = TestRunDir::new();
    // -S: the VM never starts its vCPUs
    let vm = VmBuilder::new("states", &run_dir).extra(&["-S"]).launch();
    let handle = Vm::existing(&run_dir.run_dir, vm.name()).unwrap();
    let mut qmp = handle.connect().unwrap();
    assert!(qmp.qemu_version().is_some_and(|(major, _, _)| major >= 7));
    assert_eq!(qmp.query_status().unwrap().status, RunState::Prelaunch);
    let memdev = qmp.query_memdev().unwrap();
    assert_eq!(memdev.len(), 1);
    assert_eq!(memdev[0].size, 64 << 20);
    assert_eq!(memdev[0].fields["share"], true);
    assert!(!memdev[0].fields.contains_key("mem-path"), "QEMU does not report mem-path in query-memdev");
    assert_eq!(qmp.get_shared_memory_path().unwrap(), vm.launched.ram_path);
    assert!(qmp.machine_type().unwrap().contains("q35"));
    assert_eq!(qmp.query_name().unwrap().as_deref(), Some(vm.name()));
    qmp.cont().unwrap();
    assert_eq!(qmp.query_status().unwrap().status, RunState::Running);
    qmp.stop().unwrap();
    let status = qmp.query_status().unwrap();
    assert_eq!((status.status, status.running), (RunState::Paused, false));
    // events (RESUME, STOP) arrived between replies and were kept aside
    let events: Vec<String> =
        qmp.take_events().iter().filter_map(|e| e["event"].as_str().map(String::from)).collect();
    assert!(events.contains(&"STOP".to_string()), "{events:?}");
    // an unknown command is a typed error
    assert!(
        matches!(qmp.execute("no-such-command", None), Err(qemu_bridge::QmpError::Command { ref class, .. }) if class == "CommandNotFound")
    );
    drop(qmp);
    let json = handle.memdev_json().unwrap();
    assert_eq!(json[0]["mem-path"], vm.launched.ram_path.to_str().unwrap());
}

/// Writes a pattern into the RAM file at a file offset, then asks QEMU (pmemsave) what the
/// guest sees at a guest-physical address: the layout must agree with QEMU itself.
fn check_layout_against_qemu(machine: Machine, memory: u64, gpa: u64, expected_offset: u64) {
    let run_dir = TestRunDir::new();
    let vm = common::paused_machine("layout", &run_dir, machine.clone(), memory);
    let handle = Vm::existing(&run_dir.run_dir, vm.name()).unwrap();
    let (bridge, info) = handle.open_bridge().unwrap();
    assert_eq!(bridge.translate(gpa, 4096).unwrap() as u64, expected_offset, "{machine:?} {memory:#x}");
    // QEMU's map: all RAM but the BIOS window (0xC0000-0xFFFFF, ROM over RAM)
    assert_eq!(info.layout.source(), qemu_bridge::ram::LayoutSource::Mtree);
    assert_eq!(info.layout.ram_size(), memory - 0x40000);
    assert_eq!(info.layout.file_end(), memory);
    let stamp: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    // the test (not the bridge) writes the RAM file: share=on makes it guest memory
    let file = std::fs::OpenOptions::new().write(true).open(&info.ram_path).unwrap();
    file.write_at(&stamp, expected_offset).unwrap();
    let oracle = run_dir.qemu_output("page.bin");
    handle.with_qmp(|qmp| qmp.pmemsave(gpa, 4096, &oracle)).unwrap();
    assert!(wait_until(Duration::from_secs(30), || std::fs::metadata(&oracle).is_ok_and(|m| m.len() == 4096)));
    assert_eq!(std::fs::read(&oracle).unwrap(), stamp, "QEMU sees other bytes at GPA {gpa:#x}");
    let mut ours = vec![0u8; 4096];
    bridge.read_into(gpa, &mut ours).unwrap();
    assert_eq!(ours, stamp);
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_layout_q35_3g_matches_qemu() {
    require_qemu();
    check_layout_against_qemu(Machine::Q35, 3 << 30, 1 << 32, 2 << 30);
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_layout_pc_4g_matches_qemu() {
    require_qemu();
    check_layout_against_qemu(Machine::Pc, 4 << 30, (1 << 32) + 4096, (3 << 30) + 4096);
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_python_qmp_client_against_real_vm() {
    require_qemu();
    common::require_program("python3");
    let run_dir = TestRunDir::new();
    let vm = VmBuilder::new("python", &run_dir).launch();
    // the package's qemu_bridge.qmp, which needs nothing but the standard library: run as a
    // script and loaded on its own, without the package's native module
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/qemu_bridge/qmp.py");
    let output =
        std::process::Command::new("python3").arg(&script).arg(vm.launched.vm.socket()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reply["status"], "running", "query_status() is the state string");
    assert_eq!(reply["status_full"]["running"], true, "the whole reply under query_status_full()");
    assert_eq!(reply["memdev"][0]["size"], 64 << 20);
    assert_eq!(reply["mem_path"], vm.launched.ram_path.to_str().unwrap());
    // the class API, imported as a module, and a clear error for a dead socket
    let program = format!(
        "import importlib.util as u; spec = u.spec_from_file_location('qmp', {script:?})\n\
         qmp = u.module_from_spec(spec); spec.loader.exec_module(qmp); QMPClient, QMPError = qmp.QMPClient, qmp.QMPError\n\
         c = QMPClient({sock:?}); print(c.query_status(), c.get_shared_memory_path()); c.close()\n\
         try:\n    QMPClient('/nonexistent.qmp')\nexcept QMPError as e:\n    print('error', e)\n",
        sock = vm.launched.vm.socket().display(),
    );
    let output = std::process::Command::new("python3").arg("-c").arg(&program).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with(&format!("running {}", vm.launched.ram_path.display())), "{stdout}");
    assert!(stdout.contains("error /nonexistent.qmp"), "{stdout}");
}

/// The guest-state layer reads a live VM and a frozen copy of it alike: the marker at its
/// guest-physical address from both, and the hole QEMU's map leaves below 1 MiB (the VGA
/// window) and the address past the end of RAM refused by both.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_guest_memory_reads_live_and_frozen_alike() {
    use qemu_bridge::guest::{FrozenMemory, Gpa, GuestMemory, GuestMemoryError};
    let (run_dir, vm) = common::booted_vm("guestmem");
    let handle = Vm::existing(&run_dir.run_dir, vm.name()).unwrap();
    handle.with_qmp(|qmp| qmp.stop()).unwrap();
    let (bridge, _) = handle.open_bridge().unwrap();
    let copy = bridge.snapshot();
    let frozen = FrozenMemory::new(&copy, bridge.layout());
    let regions = bridge.layout().regions();
    let hole = regions[0].gpa + regions[0].len;
    assert!(regions[1].gpa > hole && hole < 1 << 20, "no hole below 1 MiB: {regions:?}");
    let memories: [&dyn GuestMemory; 2] = [&bridge, &frozen];
    for memory in memories {
        let mut marker = vec![0u8; common::MARKER.len()];
        memory.read_at(Gpa(common::MARKER_ADDR), &mut marker).unwrap();
        assert_eq!(marker, common::MARKER);
        assert_eq!(memory.read_u32(Gpa(common::COUNTER_ADDR)).unwrap(), common::counter(&bridge));
        assert!(matches!(memory.read_u64(Gpa(hole)), Err(GuestMemoryError::NotRam { .. })));
        assert!(matches!(memory.read_u64(Gpa(hole - 4)), Err(GuestMemoryError::NotRam { .. })));
        assert!(matches!(memory.read_u64(Gpa(64 << 20)), Err(GuestMemoryError::NotRam { .. })));
    }
}
