//! Trust and data: qemu-bridge deletes only what `launch` made, maps and serves only a RAM file
//! its QMP peer holds open (checked on the very descriptor it maps), refuses visibly, runs QEMU
//! unprivileged, and says when a run directory is open to others. Real QEMU, real processes.

use qemu_bridge_test_support as common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process;
use common::{
    assert_clean_failure, qemu_bridge, require_qemu, require_root, stderr, stdout, wait_until, HandStartedVm,
    ShmFile, TestMount, TestRunDir,
};
use qemu_bridge::ram::sha256_hex;

fn ok(output: std::process::Output) -> String {
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
    stdout(&output)
}

fn digest(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

/// `stop` of a VM it did not launch quits it and leaves its files alone; `stop` of a VM it
/// launched removes exactly what the launch made.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_stop_deletes_only_what_launch_made() {
    require_qemu();
    let run_dir = TestRunDir::new();
    // its RAM in a file of the user's, paused at reset
    let hand = HandStartedVm::start(&run_dir, "handvm", |dir| {
        let ram = dir.join("keepme.ram");
        ["-machine", "q35,accel=tcg,memory-backend=m", "-m", "32M", "-S", "-object"]
            .map(String::from)
            .into_iter()
            .chain([format!("memory-backend-file,id=m,size=32M,share=on,mem-path={}", ram.display())])
            .collect()
    });
    let keepme = hand.dir.path().join("keepme.ram");
    // it is a VM like any other: listed, readable
    assert!(ok(qemu_bridge(&run_dir, &["list"])).contains("keepme.ram"));
    ok(qemu_bridge(&run_dir, &["read", "handvm", "0", "16"]));
    let before = digest(&keepme);
    let output = ok(qemu_bridge(&run_dir, &["stop", "handvm"]));
    assert!(output.contains("not started by qemu-bridge launch, so its files are left alone"), "{output}");
    assert!(wait_until(Duration::from_secs(10), || !process::alive(hand.pid)), "QEMU did not quit");
    assert_eq!(digest(&keepme), before, "the user's RAM file survives, byte for byte");

    // a launched VM: every file it made goes, and nothing else in the run directory
    std::fs::write(run_dir.path().join("unrelated.txt"), b"mine").unwrap();
    let name = common::unique_name("own");
    ok(qemu_bridge(&run_dir, &["launch", &name, "--memory", "32M", "--no-state-disk"]));
    let guard = common::VmGuard::launched_by_cli(&run_dir, &name).unwrap();
    let ram = format!("/dev/shm/qemu_ram_{name}");
    assert!(Path::new(&ram).exists());
    let output = ok(qemu_bridge(&run_dir, &["stop", &name]));
    assert!(output.contains("quit; removed"), "{output}");
    assert!(!process::alive(guard.pid));
    assert!(!Path::new(&ram).exists());
    let left: Vec<String> = std::fs::read_dir(run_dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|file| file.starts_with(&name))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(run_dir.path().join("unrelated.txt").exists());

    // with a state disk that holds no saved state, the disk goes too
    let name = common::unique_name("disk");
    ok(qemu_bridge(&run_dir, &["launch", &name, "--memory", "32M"]));
    let _guard = common::VmGuard::launched_by_cli(&run_dir, &name).unwrap();
    assert!(run_dir.path().join(format!("{name}.state.qcow2")).exists());
    let output = ok(qemu_bridge(&run_dir, &["stop", &name]));
    assert!(!output.contains("kept"), "{output}");
    assert_eq!(left_of(&run_dir, &name), Vec::<String>::new());

    // a QEMU that died leaves its files; `clean` removes what its launch recorded, nothing else
    let name = common::unique_name("dead");
    ok(qemu_bridge(&run_dir, &["launch", &name, "--memory", "32M"]));
    let guard = common::VmGuard::launched_by_cli(&run_dir, &name).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(guard.pid as i32), nix::sys::signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(10), || !process::alive(guard.pid)));
    assert!(left_of(&run_dir, &name).contains(&format!("{name}.qmp")), "{:?}", left_of(&run_dir, &name));
    let ram = format!("/dev/shm/qemu_ram_{name}");
    assert!(Path::new(&ram).exists());
    let output = ok(qemu_bridge(&run_dir, &["clean"]));
    assert!(output.contains(&format!("{name}: removed")), "{output}");
    assert_eq!(left_of(&run_dir, &name), Vec::<String>::new());
    assert!(!Path::new(&ram).exists());
    assert!(run_dir.path().join("unrelated.txt").exists());
    assert!(ok(qemu_bridge(&run_dir, &["clean"])).contains("nothing to clean"));
}

/// The files of the run directory named after VM `name`.
fn left_of(run_dir: &TestRunDir, name: &str) -> Vec<String> {
    std::fs::read_dir(run_dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|file| file.starts_with(name))
        .collect()
}

/// A RAM file replaced after launch (someone else's file now at the path) is not deleted by
/// `stop`: only the very file launch made is.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_stop_leaves_a_replaced_ram_file_alone() {
    require_qemu();
    let run_dir = TestRunDir::new();
    let name = common::unique_name("swap");
    ok(qemu_bridge(&run_dir, &["launch", &name, "--memory", "32M", "--no-state-disk"]));
    let _guard = common::VmGuard::launched_by_cli(&run_dir, &name).unwrap();
    let ram = PathBuf::from(format!("/dev/shm/qemu_ram_{name}"));
    std::fs::remove_file(&ram).unwrap();
    std::fs::write(&ram, b"another file now").unwrap();
    let output = ok(qemu_bridge(&run_dir, &["stop", &name]));
    assert!(output.contains(&format!("left {} alone", ram.display())), "{output}");
    assert_eq!(std::fs::read(&ram).unwrap(), b"another file now");
    std::fs::remove_file(&ram).unwrap();
}

/// Peers that lie about the RAM file, as root and as `nobody`: no verb reads, maps, serves or
/// deletes the file they name, and each refusal says which VM, which file and why.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_lying_peers_are_refused_by_every_verb() {
    require_qemu();
    require_root();
    common::require_program("python3");
    common::require_program("setpriv");
    let run_dir = TestRunDir::new();
    std::fs::set_permissions(run_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let victim = ShmFile::with_contents("victim", &common::pattern(65536));
    let before = digest(&victim.path);
    // a peer of a trusted user (root) names a file it does not hold
    let _liar = common::fake_monitor(&run_dir, "liar", &victim.path, false, false);
    // a peer of another user holds the file it names
    let _intruder = common::fake_monitor(&run_dir, "intruder", &victim.path, true, true);
    // a peer of a trusted user names a symbolic link to a file it does hold
    let link = run_dir.path().join("link.ram");
    std::os::unix::fs::symlink(&victim.path, &link).unwrap();
    let _linker = common::fake_monitor(&run_dir, "linker", &link, true, false);
    // the link's target held through the link: fake_qmp opens the path it names
    let refusals = [
        (
            "liar",
            format!("VM liar: refusing {}: the QMP peer (pid", victim.path.display()),
            "does not hold it open",
        ),
        ("intruder", "VM intruder: refusing its QMP peer (pid".to_string(), "uid 65534"),
        ("linker", format!("VM linker: refusing {}: it is a symbolic link", link.display()), "symbolic link"),
    ];
    for (name, start, reason) in &refusals {
        for verb in [&["read", name, "0", "16"][..], &["status", name], &["pause", name]] {
            let output = qemu_bridge(&run_dir, verb);
            if *name != "intruder" && verb[0] != "read" {
                // status and pause need no RAM file: a trusted peer answers them
                assert!(output.status.success(), "{verb:?}: {}", stderr(&output));
                continue;
            }
            assert_clean_failure(&output, start);
            assert!(stderr(&output).contains(reason), "{verb:?}: {}", stderr(&output));
        }
        let out = run_dir.qemu_output(&format!("{name}.snapshot"));
        assert_clean_failure(&qemu_bridge(&run_dir, &["snapshot", name, "-o", out.to_str().unwrap()]), start);
        assert!(!out.exists(), "no snapshot file for a refused VM");
    }
    // list shows each as refused, with the reason
    let listed: serde_json::Value =
        serde_json::from_str(&ok(qemu_bridge(&run_dir, &["list", "--json"]))).unwrap();
    for (name, start, _) in &refusals {
        let row = listed.as_array().unwrap().iter().find(|row| row["name"] == *name).unwrap();
        assert_eq!(row["state"], "refused", "{row}");
        assert!(row["error"].as_str().unwrap().starts_with(start.as_str()), "{row}");
    }
    // the mount shows none of them and logs each refusal
    let mount = TestMount::new(&run_dir, &[]);
    assert!(mount.ls().is_empty(), "{:?}", mount.ls());
    let log = mount.log_text();
    for (_, start, _) in &refusals {
        assert!(log.contains(start.as_str()), "{log}");
    }
    drop(mount);
    // stop: the trusted liar is asked to quit and nothing is deleted; the intruder is refused
    let output = ok(qemu_bridge(&run_dir, &["stop", "liar"]));
    assert!(output.contains("files are left alone"), "{output}");
    assert_clean_failure(&qemu_bridge(&run_dir, &["stop", "intruder"]), "refusing its QMP peer");
    assert_eq!(digest(&victim.path), before, "the victim is untouched");
    assert!(link.exists());
}

/// As root, `launch` without `--user` runs QEMU as the unprivileged qemu-bridge user, and every
/// verb works on it; `--user nobody` and `--user root` are honoured.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_qemu_runs_unprivileged_and_every_verb_works() {
    require_qemu();
    require_root();
    let run_dir = TestRunDir::new();
    for (user, expected_uid) in [
        (None, nix::unistd::User::from_name("qemu-bridge").ok().flatten().map(|u| u.uid.as_raw())),
        (Some("nobody"), Some(65534)),
        (Some("root"), Some(0)),
    ] {
        let name = common::unique_name("user");
        let mut launch = vec!["launch", name.as_str(), "--memory", "32M"];
        if let Some(user) = user {
            launch.extend(["--user", user]);
        }
        let output = ok(qemu_bridge(&run_dir, &launch));
        let guard = common::VmGuard::launched_by_cli(&run_dir, &name).unwrap();
        let expected_uid = expected_uid
            .or_else(|| nix::unistd::User::from_name("qemu-bridge").ok().flatten().map(|u| u.uid.as_raw()))
            .expect("launch created the qemu-bridge user");
        if user.is_none() {
            assert_ne!(expected_uid, 0, "the default is not root");
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", guard.pid)).unwrap();
        let uids = status.lines().find(|line| line.starts_with("Uid:")).unwrap();
        assert!(
            uids.split_whitespace().skip(1).all(|uid| uid == expected_uid.to_string()),
            "{user:?}: {uids}"
        );
        if expected_uid != 0 {
            assert!(output.contains("  user:"), "{output}");
        }
        assert_eq!(ok(qemu_bridge(&run_dir, &["pause", &name])).trim(), "paused");
        assert_eq!(ok(qemu_bridge(&run_dir, &["status", &name])).trim(), "paused");
        let raw = qemu_bridge(&run_dir, &["read", &name, "0", "16", "--raw"]);
        assert!(raw.status.success(), "{}", stderr(&raw));
        assert_eq!(raw.stdout.len(), 16);
        let out = run_dir.qemu_output(&format!("{name}.bin"));
        ok(qemu_bridge(&run_dir, &["snapshot", &name, "-o", out.to_str().unwrap()]));
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 32 << 20);
        assert!(ok(qemu_bridge(&run_dir, &["save", &name, "t1"])).contains("saved"));
        ok(qemu_bridge(&run_dir, &["restore", &name, "t1"]));
        assert_eq!(ok(qemu_bridge(&run_dir, &["resume", &name])).trim(), "running");
        assert!(ok(qemu_bridge(&run_dir, &["list"])).contains(&name));
        let output = ok(qemu_bridge(&run_dir, &["stop", &name, "--discard-state"]));
        assert!(output.contains("quit; removed"), "{output}");
        assert!(!process::alive(guard.pid));
    }
}

/// A run directory others may write is said once per verb; everything else is unchanged.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_shared_run_directory_is_warned_about_once_per_verb() {
    require_qemu();
    let run_dir = TestRunDir::new();
    let name = common::unique_name("shared");
    ok(qemu_bridge(&run_dir, &["launch", &name, "--memory", "32M", "--no-state-disk"]));
    let _guard = common::VmGuard::launched_by_cli(&run_dir, &name).unwrap();
    let warning = "warning: run directory";
    let private = qemu_bridge(&run_dir, &["list"]);
    assert!(!stderr(&private).contains(warning), "{}", stderr(&private));
    std::fs::set_permissions(run_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    for verb in [&["list"][..], &["status", &name], &["read", &name, "0", "16"], &["saved", &name]] {
        let output = qemu_bridge(&run_dir, verb);
        let text = stderr(&output);
        assert_eq!(text.matches(warning).count(), 1, "{verb:?}: {text}");
        assert!(text.contains("writable by other users (mode 0777)"), "{text}");
        if verb[0] != "saved" {
            assert!(output.status.success(), "{verb:?}: {text}");
        }
    }
    assert_eq!(stdout(&qemu_bridge(&run_dir, &["list"])), stdout(&private));
    ok(qemu_bridge(&run_dir, &["stop", &name]));
}
