//! The QMP client fed arbitrary server bytes: it may fail, never panic, hang or grow unbounded.
#![no_main]

use std::io::{Cursor, Read, Write};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use qemu_bridge::qmp::{protocol, QmpClient};

struct Scripted(Cursor<Vec<u8>>);

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = protocol::parse_line(data);
    let Ok(mut client) = QmpClient::handshake(Scripted(Cursor::new(data.to_vec())), Duration::from_secs(1))
    else {
        return;
    };
    let _ = client.query_status();
    let _ = client.get_shared_memory_path();
    let _ = client.query_memdev();
    let _ = client.layout(64 << 20);
    let _ = client.human_monitor_command("info mtree -f");
    assert!(client.events().count() <= 256);
});
