//! The `qemu-bridge` binary: verbs against real VMs, and bad input.

use qemu_bridge_test_support as common;

use std::process::Command;

use common::{
    assert_clean_failure, qemu_bridge, qemu_bridge_in, require_program, require_qemu, stderr, stdout,
    TestRunDir, VmBuilder, MARKER,
};

#[test]
fn test_cli_bad_input() {
    let run_dir = TestRunDir::new();
    assert_clean_failure(&qemu_bridge(&run_dir, &["status", "nosuchvm"]), "nosuchvm");
    assert_clean_failure(&qemu_bridge(&run_dir, &["stop", "nosuchvm"]), "nosuchvm");
    assert_clean_failure(&qemu_bridge(&run_dir, &["status", "a/b"]), "a/b");
    assert_clean_failure(&qemu_bridge(&run_dir, &["launch", "x/y"]), "x/y");
    assert_clean_failure(&qemu_bridge(&run_dir, &["launch", ""]), "invalid VM name");
    // names that would launch but never show in `list` or the mount are refused up front
    assert_clean_failure(&qemu_bridge(&run_dir, &["launch", "new\nline"]), "control character");
    assert_clean_failure(&qemu_bridge(&run_dir, &["launch", &"x".repeat(101)]), "longer than 100 bytes");
    assert_clean_failure(&qemu_bridge(&run_dir, &["launch", ".hidden"]), "starts with '.'");
    // a name that fits, in a run directory that makes its socket path too long for unix(7)
    let deep = run_dir.path().join("d".repeat(90));
    std::fs::create_dir(&deep).unwrap();
    assert_clean_failure(&common::qemu_bridge_in(&deep, &["launch", &"n".repeat(20)]), "shorter name");
    assert_eq!(std::fs::read_dir(&deep).unwrap().count(), 0, "nothing was created");
    for size in ["lots", "-5", "0", "1.5G", "99999999999T"] {
        let output = qemu_bridge(&run_dir, &["launch", "vm", &format!("--memory={size}")]);
        assert!(!output.status.success());
        assert!(stderr(&output).contains("invalid size"), "{size}: {}", stderr(&output));
        assert!(!stderr(&output).contains("panicked"));
    }
    assert_clean_failure(&qemu_bridge(&run_dir, &["read", "vm", "0xZZ", "16"]), "0xZZ");
    assert_clean_failure(&qemu_bridge(&run_dir, &["read", "vm", "0", "0x100000000"]), "too large");
    // a run dir that does not exist, or is a file
    let missing = run_dir.path().join("missing");
    let output = qemu_bridge_in(&missing, &["list"]);
    assert_clean_failure(&output, "does not exist");
    let file = run_dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let output = qemu_bridge_in(&file, &["list"]);
    assert_clean_failure(&output, "not a directory");
    // QEMU missing
    let output = Command::new(env!("CARGO_BIN_EXE_qemu-bridge"))
        .args(["launch", "vm", "--run-dir"])
        .arg(run_dir.path())
        .env("QEMU_BRIDGE_QEMU", "/nonexistent/qemu-system-x86_64")
        .output()
        .unwrap();
    assert_clean_failure(&output, "not found");
    // a kernel that does not exist
    assert_clean_failure(
        &qemu_bridge(&run_dir, &["launch", "vm", "--kernel", "/nonexistent/vmlinuz"]),
        "/nonexistent/vmlinuz",
    );
    // nothing was left behind by the failed launches
    assert!(!std::path::Path::new("/dev/shm/qemu_ram_vm").exists());
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_cli_lifecycle_on_real_vm() {
    require_qemu();
    let run_dir = TestRunDir::new();
    let name = common::unique_name("cli");
    let image = run_dir.path().join("boot.img");
    std::fs::copy(common::boot_image(), &image).unwrap();
    let output =
        qemu_bridge(&run_dir, &["launch", &name, "--memory", "32M", "--drive", image.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let ram_path = format!("/dev/shm/qemu_ram_{name}");
    // a kill-on-drop guard in case an assertion below fails
    let guard = common::VmGuard::launched_by_cli(&run_dir, &name).expect("a pidfile");
    let pid = guard.pid;
    assert!(stdout(&output).contains(&ram_path));

    // launching the same name again is refused while it runs
    assert_clean_failure(
        &qemu_bridge(&run_dir, &["launch", &name, "--drive", image.to_str().unwrap()]),
        "already running",
    );

    let list = qemu_bridge(&run_dir, &["list", "--json"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(rows[0]["name"], name.as_str());
    assert_eq!(rows[0]["state"], "running");
    assert_eq!(rows[0]["ram_size"], 32 << 20);
    assert_eq!(rows[0]["ram_path"], ram_path.as_str());
    assert!(stdout(&qemu_bridge(&run_dir, &["list"])).contains(&name));

    assert_eq!(stdout(&qemu_bridge(&run_dir, &["pause", &name])).trim(), "paused");
    assert_eq!(stdout(&qemu_bridge(&run_dir, &["status", &name])).trim(), "paused");
    assert_eq!(stdout(&qemu_bridge(&run_dir, &["resume", &name])).trim(), "running");

    // the marker, through `read`
    assert!(common::wait_until(std::time::Duration::from_secs(120), || {
        let out = qemu_bridge(&run_dir, &["read", &name, "0x10000", &MARKER.len().to_string(), "--raw"]);
        out.stdout == MARKER
    }));
    let dump = stdout(&qemu_bridge(&run_dir, &["read", &name, "0x10000", "16"]));
    assert!(dump.starts_with("00010000: 5145 4d55"), "{dump}");
    assert_clean_failure(&qemu_bridge(&run_dir, &["read", &name, "0x2000000", "1"]), "invalid address");

    // snapshots: --pause gives an exact image whose digest is printed (sha256 on request)
    let snap = run_dir.path().join("snap.bin");
    let output = qemu_bridge(
        &run_dir,
        &["snapshot", &name, "-o", snap.to_str().unwrap(), "--pause", "--hash", "sha256"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let line = stdout(&output);
    let data = std::fs::read(&snap).unwrap();
    assert_eq!(data.len(), 32 << 20);
    assert!(line.starts_with(&format!("sha256 {} paused", qemu_bridge::ram::sha256_hex(&data))), "{line}");
    let output = qemu_bridge(&run_dir, &["snapshot", &name, "-o", snap.to_str().unwrap(), "--consistent"]);
    assert!(output.status.success());
    assert!(stdout(&output).contains("attempts="));
    // unchecked: written straight from the mapping; the digest is that of the file written
    let output = qemu_bridge(&run_dir, &["snapshot", &name, "-o", snap.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let data = std::fs::read(&snap).unwrap();
    assert_eq!(data.len(), 32 << 20);
    assert_eq!(&data[0x10000..0x10000 + MARKER.len()], MARKER);
    // the default digest is BLAKE3, and it is what b3sum prints for the file written
    common::require_program("b3sum");
    let b3sum = std::process::Command::new("b3sum").arg(&snap).output().unwrap();
    let b3sum = String::from_utf8_lossy(&b3sum.stdout).split_whitespace().next().unwrap_or("").to_string();
    assert_eq!(b3sum.len(), 64);
    assert!(stdout(&output).starts_with(&format!("blake3 {b3sum} unchecked")), "{}", stdout(&output));
    let output =
        qemu_bridge(&run_dir, &["snapshot", &name, "-o", snap.to_str().unwrap(), "--hash", "sha256"]);
    let data = std::fs::read(&snap).unwrap();
    assert!(stdout(&output).starts_with(&format!("sha256 {} unchecked", qemu_bridge::ram::sha256_hex(&data))));
    assert_clean_failure(
        &qemu_bridge(&run_dir, &["snapshot", &name, "-o", snap.to_str().unwrap(), "--hash", "md5"]),
        "unknown hash",
    );
    // an unwritable output leaves nothing behind
    assert!(!qemu_bridge(&run_dir, &["snapshot", &name, "-o", "/nonexistent/dir/x.bin"]).status.success());

    // stop quits through QMP and removes the RAM file and socket
    let output = qemu_bridge(&run_dir, &["stop", &name]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("quit"));
    assert!(!std::path::Path::new(&ram_path).exists());
    assert!(!run_dir.path().join(format!("{name}.qmp")).exists());
    assert!(common::wait_until(std::time::Duration::from_secs(10), || !common::process::alive(pid)));
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_cli_runs_qemu_as_unprivileged_user() {
    require_qemu();
    // only root can switch users
    common::require_root();
    let run_dir = TestRunDir::new();
    let name = common::unique_name("user");
    let output = qemu_bridge(&run_dir, &["launch", &name, "--user", "nobody"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let guard = common::VmGuard::launched_by_cli(&run_dir, &name).expect("a pidfile");
    let pid = guard.pid;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid_line.split_whitespace().skip(1).all(|uid| uid == "65534"), "{uid_line}");
    // its RAM is still trusted and readable: QEMU listened on its socket as root, and holds the file
    let output = qemu_bridge(&run_dir, &["read", &name, "0", "16"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(qemu_bridge(&run_dir, &["stop", &name]).status.success());
}

/// Long work shows a progress bar with rate and ETA on a terminal (a pty from `script`), once it
/// has taken a second; never with `--quiet`, never when stderr is not a terminal.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_progress_bar_on_a_terminal_only() {
    require_qemu();
    require_program("script");
    let run_dir = TestRunDir::new();
    // 4 GiB of RAM, nearly all holes: cheap to hold, seconds to hash with SHA-256
    let vm = VmBuilder::new("progress", &run_dir).memory(4 << 30).launch();
    let out = run_dir.path().join("snap.bin");
    let command = |quiet: bool| {
        format!(
            "{} snapshot {} -o {} --hash sha256 --run-dir {}{}",
            env!("CARGO_BIN_EXE_qemu-bridge"),
            vm.name(),
            out.display(),
            run_dir.path().display(),
            if quiet { " --quiet" } else { "" }
        )
    };
    let on_terminal = |quiet: bool| {
        let output = std::process::Command::new("script")
            .args(["-qefc", &command(quiet), "/dev/null"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let shown = on_terminal(false);
    assert!(shown.contains("ETA") && shown.contains("/s"), "no progress bar on a terminal: {shown:?}");
    assert!(shown.contains("sha256 "), "{shown}");
    let quiet = on_terminal(true);
    assert!(!quiet.contains("ETA"), "--quiet drew a bar: {quiet:?}");
    let piped =
        qemu_bridge(&run_dir, &["snapshot", vm.name(), "-o", out.to_str().unwrap(), "--hash", "sha256"]);
    assert!(piped.status.success());
    assert!(!stderr(&piped).contains("ETA"), "a bar without a terminal: {}", stderr(&piped));
}

/// Scripts tell failures apart by the exit status: 3 no such VM, 4 refused by the trust check,
/// 5 QEMU did not answer, 2 a usage error, 1 anything else, 0 done; `--help` says so.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_exit_statuses_tell_failures_apart() {
    let run_dir = TestRunDir::new();
    let code = |args: &[&str]| qemu_bridge(&run_dir, args).status.code();
    assert_eq!(code(&["status", "nope"]), Some(3));
    assert_eq!(code(&["snapshot", "nope", "-o", "/tmp/never-written"]), Some(3));
    assert_eq!(code(&["status", "--no-such-flag"]), Some(2));
    // -q and -v (repeatable) on every verb, before or after it; not both
    assert_eq!(code(&["-vv", "status", "nope"]), Some(3));
    assert_eq!(code(&["status", "nope", "-q"]), Some(3));
    assert_eq!(code(&["status", "nope", "-q", "-v"]), Some(2));
    // a peer that names a RAM file it does not hold: refused
    let ram = run_dir.path().join("liar.ram");
    std::fs::write(&ram, vec![0u8; 1 << 20]).unwrap();
    let fake = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_qmp.py");
    let mut liar = std::process::Command::new("python3")
        .arg(&fake)
        .arg(run_dir.path().join("liar.qmp"))
        .arg(&ram)
        .arg((1u64 << 20).to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(liar.stdout.take().unwrap()), &mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    assert_eq!(code(&["read", "liar", "0", "16"]), Some(4));
    liar.kill().unwrap();
    liar.wait().unwrap();
    // a socket that accepts and never answers
    let _mute = std::os::unix::net::UnixListener::bind(run_dir.path().join("mute.qmp")).unwrap();
    let output = qemu_bridge(&run_dir, &["status", "mute"]);
    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));
    // a socket nobody listens on
    drop(std::os::unix::net::UnixListener::bind(run_dir.path().join("gone.qmp")).unwrap());
    assert_eq!(code(&["status", "gone"]), Some(5));
    // a VM that runs, and a failure of another kind
    let vm = VmBuilder::new("codes", &run_dir).launch();
    assert_eq!(code(&["status", vm.name()]), Some(0));
    assert_eq!(code(&["snapshot", vm.name(), "-o", run_dir.path().to_str().unwrap()]), Some(1));
    assert!(stdout(&qemu_bridge(&run_dir, &["--help"])).contains("3 no such VM"));
}

/// `--json` of `launch`, `status` and `read` in the shapes the README documents; raw bytes are
/// refused on a terminal (through `script`) unless `--force`, and written to a pipe.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_json_shapes_and_binary_output_on_a_terminal() {
    require_qemu();
    require_program("script");
    let run_dir = TestRunDir::new();
    let name = common::unique_name("json");
    // QEMU locks its disk image: a copy of its own, as the harness gives every VM
    let image = run_dir.path().join(format!("{name}.img"));
    std::fs::copy(common::boot_image(), &image).unwrap();
    let output = qemu_bridge(&run_dir, &["launch", &name, "--json", "--drive", image.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let _guard = common::VmGuard::launched_by_cli(&run_dir, &name);
    let launched: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(launched["name"], name.as_str());
    assert!(launched["pid"].as_u64().is_some() && launched["ram"].as_str().is_some(), "{launched}");
    assert!(launched["qmp"].as_str().unwrap().ends_with(&format!("{name}.qmp")), "{launched}");
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&qemu_bridge(&run_dir, &["status", &name, "--json"]))).unwrap();
    assert_eq!(status, serde_json::json!({"name": name, "status": "running", "running": true}));
    let ram = std::fs::File::open(launched["ram"].as_str().unwrap()).unwrap();
    // TCG boots in a second on a quiet machine, far slower on a busy one
    assert!(common::wait_until(std::time::Duration::from_secs(120), || {
        let mut marker = vec![0u8; MARKER.len()];
        std::os::unix::fs::FileExt::read_exact_at(&ram, &mut marker, 0x10000).is_ok() && marker == MARKER
    }));
    let read: serde_json::Value = serde_json::from_str(&stdout(&qemu_bridge(
        &run_dir,
        &["read", &name, "0x10000", &MARKER.len().to_string(), "--json"],
    )))
    .unwrap();
    let hex: String = MARKER.iter().map(|byte| format!("{byte:02x}")).collect();
    assert_eq!(
        read,
        serde_json::json!({"address": 0x10000, "length": MARKER.len(), "virtual": false, "hex": hex})
    );
    // raw bytes: to a pipe yes, to a terminal only when forced
    let piped = qemu_bridge(&run_dir, &["read", &name, "0x10000", "16", "--raw"]);
    assert_eq!(piped.stdout, MARKER[..16]);
    let on_terminal = |extra: &str| {
        let command = format!(
            "{} read {name} 0x10000 16 --raw --run-dir {}{extra}",
            env!("CARGO_BIN_EXE_qemu-bridge"),
            run_dir.path().display()
        );
        std::process::Command::new("script").args(["-qefc", &command, "/dev/null"]).output().unwrap()
    };
    let refused = on_terminal("");
    assert!(!refused.status.success(), "raw bytes written to a terminal");
    assert!(String::from_utf8_lossy(&refused.stdout).contains("refusing to write binary data to a terminal"));
    let forced = on_terminal(" --force");
    assert!(forced.status.success() && String::from_utf8_lossy(&forced.stdout).contains("QEMU-BRIDGE"));
}

/// Shell completion completes VM names (from `list --names`, which asks no QEMU): bash, run for
/// real on `qemu-bridge status al<TAB>`; zsh's and fish's scripts name the same lister.
#[test]
fn test_completions_complete_vm_names() {
    require_program("bash");
    let run_dir = TestRunDir::new();
    let _alpha = std::os::unix::net::UnixListener::bind(run_dir.path().join("alpha.qmp")).unwrap();
    let _beta = std::os::unix::net::UnixListener::bind(run_dir.path().join("beta.qmp")).unwrap();
    let names = stdout(&qemu_bridge(&run_dir, &["list", "--names"]));
    assert_eq!(names.lines().collect::<std::collections::BTreeSet<_>>(), ["alpha", "beta"].into());
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_qemu-bridge"));
    let script = "source <(qemu-bridge completions bash)\n\
                  COMP_WORDS=(qemu-bridge status al); COMP_CWORD=2; _qemu_bridge_with_vms\n\
                  printf 'status:%s\\n' \"${COMPREPLY[@]}\"\n\
                  COMP_WORDS=(qemu-bridge launch al); COMP_CWORD=2; _qemu_bridge_with_vms\n\
                  printf 'launch:%s\\n' \"${COMPREPLY[@]}\"\n";
    let path =
        format!("{}:{}", binary.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let output = Command::new("bash")
        .args(["-c", script])
        .env("PATH", path)
        .env("QEMU_BRIDGE_RUN_DIR", run_dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}{}", stderr(&output));
    assert!(text.lines().any(|line| line == "status:alpha"), "{text}");
    assert!(!text.lines().any(|line| line == "status:beta"), "{text}");
    assert!(!text.contains("launch:alpha"), "launch takes a new name: {text}");
    for shell in ["zsh", "fish"] {
        let script = stdout(&Command::new(binary).args(["completions", shell]).output().unwrap());
        assert!(script.contains("qemu-bridge list --names"), "{shell}: {script}");
        // saved states' names (tests/lifecycle.rs runs bash's on a VM with a saved state)
        assert!(script.contains("qemu-bridge saved ") && script.contains(" --names"), "{shell}: {script}");
    }
}
