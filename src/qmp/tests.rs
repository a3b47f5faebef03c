//! The client against scripted byte streams: what a real QEMU would send, and what a broken or
//! hostile peer might.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;

type Scripted = ScriptedStream;

fn scripted(lines: &[&str]) -> Scripted {
    ScriptedStream::from_lines(lines)
}

fn client(lines: &[&str]) -> Result<QmpClient<Scripted>, QmpError> {
    QmpClient::handshake(scripted(lines), Duration::from_secs(2))
}

fn sent_commands(client: &QmpClient<Scripted>) -> Vec<Value> {
    client
        .stream
        .written()
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect()
}

#[test]
fn negotiates_and_runs_a_command_with_an_id() {
    let mut client = client(&[
        GREETING,
        r#"{"return": {}, "id": 1}"#,
        r#"{"return": {"status": "running", "singlestep": false, "running": true}, "id": 2}"#,
    ])
    .unwrap();
    assert_eq!(client.qemu_version(), Some((7, 2, 22)));
    let status = client.query_status().unwrap();
    assert_eq!(status, StatusInfo { status: RunState::Running, running: true });
    let sent = sent_commands(&client);
    assert_eq!(sent[0], json!({"execute": "qmp_capabilities", "id": 1}));
    assert_eq!(sent[1], json!({"execute": "query-status", "id": 2}));
}

#[test]
fn events_between_replies_are_kept_not_mistaken_for_replies() {
    let mut client = client(&[
        GREETING,
        r#"{"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 2}}"#,
        r#"{"return": {}, "id": 1}"#,
        r#"{"event": "STOP", "timestamp": {"seconds": 3, "microseconds": 4}}"#,
        r#"{"event": "RTC_CHANGE", "data": {"offset": 1}, "timestamp": {"seconds": 5, "microseconds": 6}}"#,
        r#"{"return": {"status": "paused", "singlestep": false, "running": false}, "id": 2}"#,
    ])
    .unwrap();
    assert_eq!(client.query_status().unwrap().status, RunState::Paused);
    let names: Vec<_> =
        client.take_events().iter().map(|e| e["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["RESUME", "STOP", "RTC_CHANGE"]);
    assert_eq!(client.events().count(), 0);
}

#[test]
fn every_run_state_is_reported() {
    for state in [
        "prelaunch",
        "inmigrate",
        "postmigrate",
        "shutdown",
        "guest-panicked",
        "internal-error",
        "io-error",
        "watchdog",
        "suspended",
        "finish-migrate",
        "restore-vm",
        "save-vm",
        "debug",
        "colo",
    ] {
        let reply = format!(
            r#"{{"return": {{"status": "{state}", "singlestep": false, "running": false}}, "id": 2}}"#
        );
        let mut client = client(&[GREETING, r#"{"return": {}, "id": 1}"#, &reply]).unwrap();
        let status = client.query_status().unwrap();
        assert_eq!(status.status.as_str(), state);
        assert!(!matches!(status.status, RunState::Other(_)), "{state} should be known");
    }
    assert_eq!(RunState::from_qmp("new-state-2030"), RunState::Other("new-state-2030".into()));
}

#[test]
fn error_replies_are_typed() {
    let mut client = client(&[
        GREETING,
        r#"{"return": {}, "id": 1}"#,
        r#"{"error": {"class": "DeviceNotFound", "desc": "Device '/machine/q35' not found"}, "id": 2}"#,
    ])
    .unwrap();
    match client.qom_get("/machine/q35", "below-4g-mem-size") {
        Err(QmpError::Command { command, class, desc }) => {
            assert_eq!(command, "qom-get");
            assert_eq!(class, "DeviceNotFound");
            assert!(desc.contains("/machine/q35"));
        }
        other => panic!("expected a command error, got {other:?}"),
    }
}

#[test]
fn stale_replies_for_other_ids_are_skipped() {
    let mut client = client(&[
        GREETING,
        r#"{"return": {}, "id": 1}"#,
        r#"{"return": {"late": true}, "id": 99}"#,
        r#"{"return": {"name": "vm1"}, "id": 2}"#,
    ])
    .unwrap();
    assert_eq!(client.query_name().unwrap().as_deref(), Some("vm1"));
}

#[test]
fn memory_path_comes_from_qom_not_query_memdev() {
    let mut client = client(&[
        GREETING,
        r#"{"return": {}, "id": 1}"#,
        r#"{"return": "/objects/ram0", "id": 2}"#,
        r#"{"return": [{"share": true, "size": 67108864, "id": "ram0"}], "id": 3}"#,
        r#"{"return": "/dev/shm/elsewhere", "id": 4}"#,
    ])
    .unwrap();
    assert_eq!(client.get_shared_memory_path().unwrap(), PathBuf::from("/dev/shm/elsewhere"));
    let sent = sent_commands(&client);
    assert_eq!(sent[3]["arguments"], json!({"path": "/objects/ram0", "property": "mem-path"}));
}

#[test]
fn a_vm_without_a_file_backend_is_reported() {
    let mut client = client(&[
        GREETING,
        r#"{"return": {}, "id": 1}"#,
        r#"{"return": "/objects/pc.ram", "id": 2}"#,
        r#"{"return": [{"share": false, "size": 67108864, "id": "pc.ram"}], "id": 3}"#,
        r#"{"error": {"class": "GenericError", "desc": "Property 'memory-backend-ram.mem-path' not found"}, "id": 4}"#,
    ])
    .unwrap();
    assert!(matches!(client.get_shared_memory_path(), Err(QmpError::NoFileBackend)));
}

#[test]
fn the_rule_layout_uses_q35s_reported_split() {
    let mut client = client(&[
        GREETING,
        r#"{"return": {}, "id": 1}"#,
        r#"{"return": "pc-q35-7.2-machine", "id": 2}"#,
        r#"{"return": 2147483648, "id": 3}"#,
        r#"{"return": 1073741824, "id": 4}"#,
    ])
    .unwrap();
    let layout = client.rule_layout(3 << 30).unwrap();
    assert_eq!(layout.source(), crate::ram::LayoutSource::X86Rule);
    assert_eq!(layout.translate(1 << 32, 1), Some(1 << 31));
}

#[test]
fn the_memory_map_is_text_or_none_and_a_silent_monitor_is_an_error() {
    let map = "FlatView #0\n AS \"memory\", root: system\n  0000000000000000-000000000009ffff (prio 0, ram): ram0\n";
    let reply = serde_json::json!({"return": map, "id": 2}).to_string();
    let mut answering = client(&[GREETING, r#"{"return": {}, "id": 1}"#, &reply]).unwrap();
    assert_eq!(answering.memory_map().unwrap().as_deref(), Some(map));
    let mut refused = client(&[
        GREETING,
        r#"{"return": {}, "id": 1}"#,
        r#"{"error": {"class": "CommandNotFound", "desc": "The command human-monitor-command has not been found"}, "id": 2}"#,
    ])
    .unwrap();
    assert_eq!(refused.memory_map().unwrap(), None);
    // a monitor that stops answering is an error, not a silent fallback
    let mut silent = client_with_eof(&[GREETING, r#"{"return": {}, "id": 1}"#]);
    assert!(matches!(silent.memory_map(), Err(QmpError::Closed)));
}

#[test]
fn memdev_records_are_typed_and_malformed_ones_refused() {
    let mut client = client(&[
        GREETING,
        r#"{"return": {}, "id": 1}"#,
        r#"{"return": [{"share": true, "size": 67108864, "id": "ram0", "policy": "default"}], "id": 2}"#,
        r#"{"return": [{"share": true, "id": "ram0"}], "id": 3}"#,
    ])
    .unwrap();
    let memdev = client.query_memdev().unwrap();
    assert_eq!((memdev[0].id.as_str(), memdev[0].size), ("ram0", 64 << 20));
    assert_eq!(memdev[0].qom_path(), "/objects/ram0");
    assert_eq!(memdev[0].fields["policy"], "default");
    assert!(matches!(client.query_memdev(), Err(QmpError::UnexpectedReply { .. })));
}

fn client_with_eof(lines: &[&str]) -> QmpClient<Scripted> {
    client(lines).unwrap()
}

#[test]
fn garbage_truncated_and_wrong_shapes_are_protocol_errors() {
    assert!(matches!(client(&["this is not json"]), Err(QmpError::Protocol(_))));
    assert!(matches!(client(&["[1,2,3]"]), Err(QmpError::Protocol(_))));
    assert!(matches!(client(&[r#"{"return": {}, "id": 1}"#]), Err(QmpError::Protocol(_))));
    // greeting, then the stream ends in the middle of the reply
    let truncated = ScriptedStream::new(format!("{GREETING}\n{{\"return\": {{").into_bytes());
    assert!(matches!(QmpClient::handshake(truncated, Duration::from_secs(1)), Err(QmpError::Protocol(_))));
    // a reply of the wrong shape for its command
    let mut client = client(&[GREETING, r#"{"return": {}, "id": 1}"#, r#"{"return": 42, "id": 2}"#]).unwrap();
    assert!(matches!(client.query_status(), Err(QmpError::UnexpectedReply { .. })));
}

#[test]
fn closed_before_greeting() {
    assert!(matches!(client(&[]), Err(QmpError::Closed)));
}

#[test]
fn a_peer_that_never_answers_times_out() {
    let (ours, _theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    assert!(matches!(QmpClient::handshake(ours, Duration::from_millis(200)), Err(QmpError::Timeout)));
}

#[test]
fn a_peer_that_greets_then_goes_silent_times_out() {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    writeln!(theirs, "{GREETING}").unwrap();
    assert!(matches!(QmpClient::handshake(ours, Duration::from_millis(200)), Err(QmpError::Timeout)));
}

#[test]
fn connect_to_missing_socket_names_the_path() {
    let err = QmpClient::connect(Path::new("/nonexistent/vm.qmp"), Duration::from_millis(200)).unwrap_err();
    assert!(matches!(err, QmpError::Connect { .. }));
    assert!(err.to_string().contains("/nonexistent/vm.qmp"));
}

/// A job that runs, then concludes with an error: the error is QEMU's, and the job is dismissed.
#[test]
fn jobs_are_polled_until_concluded_and_dismissed() {
    let mut client = client(&[
        GREETING,
        r#"{"return": {}, "id": 1}"#,
        r#"{"event": "JOB_STATUS_CHANGE", "data": {"status": "created", "id": "j"}, "timestamp": {"seconds": 1, "microseconds": 0}}"#,
        r#"{"return": {}, "id": 2}"#,
        r#"{"return": [{"current-progress": 0, "status": "running", "total-progress": 1, "type": "snapshot-load", "id": "j"}], "id": 3}"#,
        r#"{"return": [{"status": "concluded", "type": "snapshot-load", "id": "other"}, {"current-progress": 1, "status": "concluded", "total-progress": 1, "type": "snapshot-load", "id": "j", "error": "Snapshot 'x' does not exist in one or more devices"}], "id": 4}"#,
        r#"{"return": {}, "id": 5}"#,
    ])
    .unwrap();
    let err = client.run_job("snapshot-load", "j", json!({"tag": "x"}), Duration::from_secs(5)).unwrap_err();
    match err {
        QmpError::Job { job, command, desc } => {
            assert_eq!((job.as_str(), command.as_str()), ("j", "snapshot-load"));
            assert_eq!(desc, "Snapshot 'x' does not exist in one or more devices");
        }
        other => panic!("expected a job error, got {other:?}"),
    }
    let sent = sent_commands(&client);
    let commands: Vec<&str> = sent.iter().map(|c| c["execute"].as_str().unwrap()).collect();
    assert_eq!(commands, ["qmp_capabilities", "snapshot-load", "query-jobs", "query-jobs", "job-dismiss"]);
    assert_eq!(sent[1]["arguments"], json!({"job-id": "j", "tag": "x"}));
    assert_eq!(sent[4]["arguments"], json!({"id": "j"}));
}

/// A job that vanished from query-jobs is an error, not an endless wait.
#[test]
fn a_vanished_job_is_an_error() {
    let mut client = client(&[
        GREETING,
        r#"{"return": {}, "id": 1}"#,
        r#"{"return": {}, "id": 2}"#,
        r#"{"return": [], "id": 3}"#,
    ])
    .unwrap();
    let err = client.run_job("snapshot-save", "j", json!({}), Duration::from_secs(5)).unwrap_err();
    assert!(err.to_string().contains("job j vanished"), "{err}");
}
