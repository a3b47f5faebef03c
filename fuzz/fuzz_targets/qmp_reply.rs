//! The QMP client fed arbitrary server bytes: it may fail, never panic, hang or grow unbounded.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use qemu_bridge::qmp::{protocol, QmpClient, ScriptedStream};

fuzz_target!(|data: &[u8]| {
    let _ = protocol::parse_line(data);
    let Ok(mut client) = QmpClient::handshake(ScriptedStream::new(data.to_vec()), Duration::from_secs(1))
    else {
        return;
    };
    let _ = client.query_status();
    let _ = client.get_shared_memory_path();
    let _ = client.query_memdev();
    let _ = client.rule_layout(64 << 20);
    let _ = client.target_arch();
    let _ = client.human_monitor_command("info mtree -f");
    assert!(client.events().count() <= 256);
});
