//! Lifecycle against real QEMU: saving and restoring a VM's state with QEMU's snapshots (RAM
//! checked byte for byte through the shared file), QEMU's refusals, and per-VM cgroup limits
//! seen in force on the QEMU process.

use qemu_bridge_test_support as common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    assert_clean_failure, qemu_bridge, require_program, require_qemu, stderr, stdout, wait_until, TestRunDir,
    VmBuilder,
};
use qemu_bridge::ram::sha256_hex;
use qemu_bridge::saved_state::{self, SavedStateError};
use qemu_bridge::{SharedMemoryBridge, Vm};

const PATIENCE: Duration = Duration::from_secs(120);

/// SHA-256 of the whole RAM file, copied while the VM is paused.
fn ram_digest(bridge: &SharedMemoryBridge) -> String {
    sha256_hex(&bridge.try_snapshot().unwrap())
}

fn status(run_dir: &TestRunDir, name: &str) -> String {
    stdout(&qemu_bridge(run_dir, &["status", name])).trim().to_string()
}

/// What bash completes for `qemu-bridge WORDS...` (the last word being completed), with the
/// completion script the binary prints.
fn bash_completes(run_dir: &TestRunDir, words: &[&str]) -> Vec<String> {
    let binary = Path::new(env!("CARGO_BIN_EXE_qemu-bridge"));
    let script = format!(
        "source <(qemu-bridge completions bash)\n\
         COMP_WORDS=(qemu-bridge {}); COMP_CWORD={}; _qemu_bridge_with_vms\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        words.join(" "),
        words.len()
    );
    let path =
        format!("{}:{}", binary.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let output = std::process::Command::new("bash")
        .args(["-c", &script])
        .env("PATH", path)
        .env("QEMU_BRIDGE_RUN_DIR", run_dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output).lines().filter(|line| !line.is_empty()).map(String::from).collect()
}

fn ok(output: std::process::Output) -> String {
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_save_and_restore_bring_back_ram_exactly() {
    require_qemu();
    require_program("qemu-img");
    let run_dir = TestRunDir::new();
    let name = common::unique_name("save");
    let disk = common::qcow2_boot_disk(&run_dir, &name);
    let vm = VmBuilder::new("save", &run_dir).named(&name).drive(&disk).launch();
    let state_disk = vm.launched.state_disk.clone().expect("a state disk is attached by default");
    assert_eq!(state_disk, run_dir.path().join(format!("{name}.state.qcow2")));
    vm.wait_for_marker();
    let bridge = SharedMemoryBridge::open(&name, &vm.launched.ram_path).unwrap();

    // save while paused, so that the RAM file at save time is known exactly
    assert_eq!(ok(qemu_bridge(&run_dir, &["pause", &name])).trim(), "paused");
    let saved_digest = ram_digest(&bridge);
    let saved_counter = common::counter(&bridge);
    assert!(ok(qemu_bridge(&run_dir, &["save", &name, "before"])).contains("saved"));
    assert_eq!(status(&run_dir, &name), "paused", "save keeps a paused VM paused");
    let listed: serde_json::Value =
        serde_json::from_str(&ok(qemu_bridge(&run_dir, &["saved", &name, "--json"]))).unwrap();
    assert_eq!(listed[0]["tag"], "before");
    assert!(listed[0]["vm_state_size"].as_u64().unwrap() > 0, "{listed}");
    // the shell completes saved states' names where a verb takes one, and not for save
    assert_eq!(ok(qemu_bridge(&run_dir, &["saved", &name, "--names"])), "before\n");
    assert_eq!(bash_completes(&run_dir, &["restore", &name, "be"]), ["before"]);
    assert_eq!(bash_completes(&run_dir, &["delete-saved", &name, ""]), ["before"]);
    assert_eq!(bash_completes(&run_dir, &["restore", &name, "x"]), Vec::<String>::new());
    assert!(!bash_completes(&run_dir, &["save", &name, "be"]).contains(&"before".to_string()));

    // the guest runs on and changes memory
    ok(qemu_bridge(&run_dir, &["resume", &name]));
    assert!(wait_until(PATIENCE, || common::counter(&bridge) != saved_counter), "the guest never counted");
    ok(qemu_bridge(&run_dir, &["pause", &name]));
    assert_ne!(ram_digest(&bridge), saved_digest);

    // restore rewrites the shared file in place: the mapping sees the saved bytes, all of them
    let restored = ok(qemu_bridge(&run_dir, &["restore", &name, "before"]));
    assert!(restored.contains("now paused"), "a paused VM stays paused: {restored}");
    assert_eq!(common::counter(&bridge), saved_counter);
    assert_eq!(ram_digest(&bridge), saved_digest, "RAM after restore differs from RAM at save");

    // and the guest runs on from there
    ok(qemu_bridge(&run_dir, &["resume", &name]));
    assert!(wait_until(PATIENCE, || common::counter(&bridge) != saved_counter));
    assert!(ok(qemu_bridge(&run_dir, &["restore", &name, "before"])).contains("now running"));

    // refusals: clear, one line, and the VM untouched (QEMU 7.2 would leave it in restore-vm
    // for an unknown name, so that is checked before QEMU is asked)
    let output = qemu_bridge(&run_dir, &["restore", &name, "nope"]);
    assert_clean_failure(&output, "no saved state \"nope\" (saved: before)");
    assert_eq!(status(&run_dir, &name), "running");
    assert_clean_failure(&qemu_bridge(&run_dir, &["save", &name, "before"]), "already has a saved state");
    assert_clean_failure(&qemu_bridge(&run_dir, &["save", &name, "42"]), "all digits");
    assert_clean_failure(&qemu_bridge(&run_dir, &["restore", &name, ""]), "empty");
    assert_eq!(status(&run_dir, &name), "running");

    // saved states outlive the VM: stop keeps the state disk, a new QEMU of the same name and
    // disks restores them into its own fresh RAM file
    let output = ok(qemu_bridge(&run_dir, &["stop", &name]));
    assert!(output.contains(&format!("kept {}: saved states before", state_disk.display())), "{output}");
    assert!(state_disk.exists());
    // a stopped VM with saved states is listed, so that they can be found (and deleted)
    let listed = ok(qemu_bridge(&run_dir, &["list"]));
    let row = listed.lines().find(|line| line.starts_with(&name)).unwrap_or_else(|| panic!("{listed}"));
    assert!(row.contains("stopped") && row.contains("saved states: before"), "{row}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(qemu_bridge(&run_dir, &["list", "--json"]))).unwrap();
    let entry = json.as_array().unwrap().iter().find(|row| row["name"] == name.as_str()).unwrap();
    assert_eq!(
        (entry["state"].as_str(), &entry["saved_states"]),
        (Some("stopped"), &serde_json::json!(["before"]))
    );
    // `clean` keeps a state disk with saved states
    ok(qemu_bridge(&run_dir, &["clean"]));
    assert!(state_disk.exists());
    drop(bridge);
    drop(vm);
    let vm = VmBuilder::new("save", &run_dir).named(&name).drive(&disk).launch();
    let bridge = SharedMemoryBridge::open(&name, &vm.launched.ram_path).unwrap();
    ok(qemu_bridge(&run_dir, &["pause", &name]));
    assert!(ok(qemu_bridge(&run_dir, &["saved", &name])).contains("before"));
    ok(qemu_bridge(&run_dir, &["restore", &name, "before"]));
    assert_eq!(ram_digest(&bridge), saved_digest, "state restored into a new QEMU differs");

    ok(qemu_bridge(&run_dir, &["delete-saved", &name, "before"]));
    assert_eq!(ok(qemu_bridge(&run_dir, &["saved", &name, "--json"])).trim(), "[]");
    assert_clean_failure(&qemu_bridge(&run_dir, &["delete-saved", &name, "before"]), "saved: none");
    ok(qemu_bridge(&run_dir, &["stop", &name, "--discard-state"]));
    assert!(!state_disk.exists(), "--discard-state deletes the state disk");
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_qemu_refusals_are_reported_and_change_nothing() {
    require_qemu();
    require_program("qemu-img");
    let run_dir = TestRunDir::new();
    // a writable raw disk cannot hold a snapshot: QEMU refuses, as saving RAM without the disk
    // would let the two disagree after a restore
    let raw = VmBuilder::new("raw", &run_dir).launch();
    let output = qemu_bridge(&run_dir, &["save", raw.name(), "t"]);
    assert_clean_failure(&output, "does not support snapshots");
    assert!(stderr(&output).contains("QEMU could not save state \"t\""), "{}", stderr(&output));
    assert_eq!(status(&run_dir, raw.name()), "running");
    assert_eq!(ok(qemu_bridge(&run_dir, &["saved", raw.name(), "--json"])).trim(), "[]");

    // no state disk: said so, by the library too
    let bare = VmBuilder::new("bare", &run_dir).no_state_disk().no_drive().launch();
    assert!(bare.launched.state_disk.is_none());
    let handle = Vm::existing(&run_dir.run_dir, bare.name()).unwrap();
    let err = saved_state::save(&handle, "t", saved_state::DEFAULT_WAIT).unwrap_err();
    assert!(matches!(err, SavedStateError::NoStateDisk { .. }), "{err}");
    assert!(err.to_string().contains("has no state disk"), "{err}");
    assert_clean_failure(&qemu_bridge(&run_dir, &["restore", bare.name(), "t"]), "has no state disk");
    assert_eq!(status(&run_dir, bare.name()), "running");
}

/// The cgroup file of a controller: v2 and v1 names.
fn read_cgroup(dir: &Path, v2: &str, v1: &str) -> String {
    std::fs::read_to_string(dir.join(v2)).or_else(|_| std::fs::read_to_string(dir.join(v1))).unwrap()
}

fn stat_value(text: &str, key: &str) -> u64 {
    text.lines().find_map(|line| line.strip_prefix(key)?.trim().parse().ok()).unwrap_or(0)
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_limits_are_in_force_on_the_qemu_process() {
    require_qemu();
    let run_dir = TestRunDir::new();
    let name = common::unique_name("limits");
    let image = run_dir.path().join("boot.img");
    std::fs::copy(common::boot_image(), &image).unwrap();
    let output = qemu_bridge(
        &run_dir,
        &[
            "launch",
            &name,
            "--drive",
            image.to_str().unwrap(),
            "--no-state-disk",
            "--max-memory",
            "256M",
            "--cpu-quota",
            "10%",
        ],
    );
    // dropped last: the cgroups go once QEMU is gone
    let dirs =
        qemu_bridge::launch::recorded_cgroups(&run_dir.run_dir, &qemu_bridge::VmName::new(&name).unwrap())
            .unwrap();
    let _cleanup = CgroupCleanup(dirs.clone());
    let guard = common::VmGuard::launched_by_cli(&run_dir, &name)
        .unwrap_or_else(|| panic!("launch failed: {}", stderr(&output)));
    let pid = guard.pid;
    if stderr(&output).contains("resource limits not applied") {
        assert!(!common::in_ci(), "CI runs as root on a host with cgroups: {}", stderr(&output));
        eprintln!("SKIPPED: no usable cgroup here: {}", stderr(&output));
        return;
    }
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("limit:  memory 256 MiB ("), "{text}");
    assert!(text.contains("limit:  cpu 10% of one CPU ("), "{text}");
    assert!(!dirs.is_empty());

    let own_cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mut memory_dir = None;
    let mut cpu_dir = None;
    for dir in &dirs {
        // QEMU itself is a member: the kernel lists it, and names the cgroup for it
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|line| line == pid.to_string()), "{pid} not in {}", dir.display());
        let leaf = dir.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            own_cgroups.lines().any(|line| line.ends_with(&format!("/qemu-bridge/{leaf}"))),
            "{own_cgroups}"
        );
        if dir.join("memory.max").exists() || dir.join("memory.limit_in_bytes").exists() {
            memory_dir = Some(dir.clone());
        }
        if dir.join("cpu.max").exists() || dir.join("cpu.cfs_quota_us").exists() {
            cpu_dir = Some(dir.clone());
        }
    }
    let memory_dir = memory_dir.expect("a memory cgroup");
    let cpu_dir = cpu_dir.expect("a cpu cgroup");

    // the memory limit is the kernel's, and QEMU's memory is charged against it
    let limit: u64 = read_cgroup(&memory_dir, "memory.max", "memory.limit_in_bytes").trim().parse().unwrap();
    assert_eq!(limit, 256 << 20);
    let usage: u64 =
        read_cgroup(&memory_dir, "memory.current", "memory.usage_in_bytes").trim().parse().unwrap();
    assert!(usage > 1 << 20 && usage <= limit, "QEMU's charge {usage} should be in (1 MiB, limit]");

    // the CPU quota is the kernel's, and the kernel throttles QEMU by it: booting under TCG wants
    // far more than 10 ms of CPU per 100 ms period
    let quota = read_cgroup(&cpu_dir, "cpu.max", "cpu.cfs_quota_us");
    assert_eq!(quota.split_whitespace().next(), Some("10000"), "{quota}");
    assert!(
        wait_until(PATIENCE, || {
            stat_value(&std::fs::read_to_string(cpu_dir.join("cpu.stat")).unwrap(), "nr_throttled ") > 0
        }),
        "QEMU was never throttled"
    );

    // stop removes the cgroups
    ok(qemu_bridge(&run_dir, &["stop", &name]));
    for dir in &dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

/// Removes cgroup directories when a test ends, even failing.
struct CgroupCleanup(Vec<PathBuf>);

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        qemu_bridge::cgroup::remove_dirs(&self.0);
    }
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_memory_limit_too_small_is_a_clear_error() {
    require_qemu();
    common::require_root();
    let run_dir = TestRunDir::new();
    let name = common::unique_name("oom");
    // QEMU needs well over 4 MiB to start: the out-of-memory killer of its cgroup ends it
    let output = qemu_bridge(&run_dir, &["launch", &name, "--no-state-disk", "--max-memory", "4M"]);
    assert_clean_failure(&output, "killed by the out-of-memory killer: --max-memory 4 MiB is too small");
    // nothing is left behind: no socket, pidfile, RAM file, cgroup record
    let left: Vec<String> = std::fs::read_dir(run_dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().to_string())
        .filter(|file| !file.ends_with(".log"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!Path::new(&format!("/dev/shm/qemu_ram_{name}")).exists());
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_no_usable_cgroup_is_said_and_the_vm_runs() {
    require_qemu();
    require_program("setpriv");
    common::require_root();
    // an unprivileged user may not make cgroups here
    let run_dir = TestRunDir::new();
    let binary = run_dir.path().join("qemu-bridge");
    std::fs::copy(env!("CARGO_BIN_EXE_qemu-bridge"), &binary).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(run_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let name = common::unique_name("nocg");
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&binary)
        .args(["launch", &name, "--no-state-disk", "--max-memory", "256M", "--run-dir"])
        .arg(run_dir.path())
        .env("XDG_RUNTIME_DIR", run_dir.path())
        .output()
        .unwrap();
    let _guard = common::VmGuard::launched_by_cli(&run_dir, &name);
    assert!(output.status.success(), "the VM runs without limits: {}", stderr(&output));
    let warning = stderr(&output);
    assert!(warning.contains("warning: resource limits not applied: cannot create"), "{warning}");
    assert!(warning.contains("Permission denied"), "{warning}");
    assert!(!stdout(&output).contains("limit:"));
    assert!(!run_dir.path().join(format!("{name}.cgroup")).exists());
}
