//! A QMP peer made of bytes: replays what a server would send and records what the client
//! writes, so that [`QmpClient`](super::QmpClient) can be tested (and fuzzed) without QEMU,
//! against real transcripts, garbage and hostile replies alike.

use std::io::{self, Cursor, Read, Write};

/// Replays scripted server bytes and records what the client writes.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use qemu_bridge::qmp::{QmpClient, ScriptedStream};
///
/// let stream = ScriptedStream::from_lines(&[
///     r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}"#,
///     r#"{"return": {}, "id": 1}"#,
///     r#"{"return": {"status": "paused", "running": false}, "id": 2}"#,
/// ]);
/// let mut client = QmpClient::handshake(stream, Duration::from_secs(1))?;
/// assert_eq!(client.query_status()?.status.as_str(), "paused");
/// # Ok::<(), qemu_bridge::QmpError>(())
/// ```
#[derive(Debug, Default)]
pub struct ScriptedStream {
    input: Cursor<Vec<u8>>,
    written: Vec<u8>,
}

impl ScriptedStream {
    /// A peer that sends `bytes`, then end of stream.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self { input: Cursor::new(bytes), written: Vec::new() }
    }

    /// A peer that sends each of `lines` followed by a newline.
    pub fn from_lines(lines: &[&str]) -> Self {
        Self::new(lines.iter().flat_map(|line| line.bytes().chain([b'\n'])).collect())
    }

    /// Everything the client wrote.
    pub fn written(&self) -> &[u8] {
        &self.written
    }
}

impl Read for ScriptedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for ScriptedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
