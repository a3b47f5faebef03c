//! QMP framing: newline-delimited JSON, read with a cap on line length and a deadline.

use std::io::{self, Read};
use std::time::Instant;

use serde_json::Value;

use super::QmpError;

/// Longest line accepted from a QMP peer. Real replies are a few KiB (`info mtree` some
/// hundreds); a peer that sends more is broken or hostile and must not grow our memory.
pub const MAX_LINE: usize = 4 << 20;

/// What one line from the server is.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `{"QMP": {...}}`: the greeting.
    Greeting(Value),
    /// `{"return": ..., "id": ...}`.
    Return {
        /// The `return` value.
        value: Value,
        /// The command id echoed back.
        id: Option<Value>,
    },
    /// `{"error": {"class", "desc"}, "id": ...}`.
    Error {
        /// QMP error class.
        class: String,
        /// Description.
        desc: String,
        /// The command id echoed back, absent for unparsable input.
        id: Option<Value>,
    },
    /// `{"event": ..., "data": ..., "timestamp": ...}`.
    Event(Value),
}

/// Classifies one parsed line.
pub fn classify(value: Value) -> Result<Message, QmpError> {
    let Value::Object(mut object) = value else {
        return Err(QmpError::Protocol(format!("expected a JSON object, got {value}")));
    };
    let id = object.remove("id");
    if let Some(greeting) = object.remove("QMP") {
        return Ok(Message::Greeting(greeting));
    }
    if let Some(value) = object.remove("return") {
        return Ok(Message::Return { value, id });
    }
    if let Some(error) = object.remove("error") {
        let class = error.get("class").and_then(Value::as_str).unwrap_or("GenericError");
        let desc = error.get("desc").and_then(Value::as_str).unwrap_or("(no description)");
        return Ok(Message::Error { class: class.to_string(), desc: desc.to_string(), id });
    }
    if object.contains_key("event") {
        return Ok(Message::Event(Value::Object(object)));
    }
    let keys: Vec<&String> = object.keys().collect();
    Err(QmpError::Protocol(format!("unrecognised message with keys {keys:?}")))
}

/// Reads newline-terminated lines from a byte stream with bounded memory.
#[derive(Debug)]
pub struct LineReader {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already returned as lines.
    consumed: usize,
    /// Bytes of `buffer` known to hold no newline: each byte is looked at once, so a long line
    /// costs linear time, not quadratic.
    scanned: usize,
}

impl Default for LineReader {
    fn default() -> Self {
        Self { buffer: Vec::with_capacity(4096), consumed: 0, scanned: 0 }
    }
}

impl LineReader {
    /// Reads the next line (without its newline), failing on EOF, on a line longer than
    /// [`MAX_LINE`], and once `deadline` has passed. The stream's own read timeout bounds each
    /// single `read` call.
    pub fn read_line<R: Read>(&mut self, stream: &mut R, deadline: Instant) -> Result<Vec<u8>, QmpError> {
        loop {
            let from = self.scanned.max(self.consumed);
            if let Some(newline) = self.buffer[from..].iter().position(|&b| b == b'\n') {
                let start = self.consumed;
                let end = from + newline;
                self.consumed = end + 1;
                self.scanned = self.consumed;
                let line = self.buffer[start..end].to_vec();
                if self.consumed == self.buffer.len() {
                    self.buffer.clear();
                    self.consumed = 0;
                    self.scanned = 0;
                }
                return Ok(line);
            }
            self.scanned = self.buffer.len();
            if Instant::now() >= deadline {
                return Err(QmpError::Timeout);
            }
            if self.consumed > 0 {
                self.buffer.drain(..self.consumed);
                self.scanned -= self.consumed;
                self.consumed = 0;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(if self.buffer.is_empty() {
                        QmpError::Closed
                    } else {
                        QmpError::Protocol(format!(
                            "connection closed in the middle of a line ({} bytes)",
                            self.buffer.len()
                        ))
                    })
                }
                Ok(n) => {
                    if self.buffer.len() + n > MAX_LINE {
                        return Err(QmpError::LineTooLong(MAX_LINE));
                    }
                    self.buffer.extend_from_slice(&chunk[..n]);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(QmpError::Timeout)
                }
                Err(err) => return Err(QmpError::Io(err)),
            }
        }
    }
}

/// Parses one line as JSON and classifies it.
pub fn parse_line(line: &[u8]) -> Result<Message, QmpError> {
    let text =
        std::str::from_utf8(line).map_err(|err| QmpError::Protocol(format!("reply is not UTF-8: {err}")))?;
    let value: Value = serde_json::from_str(text.trim())
        .map_err(|err| QmpError::Protocol(format!("reply is not JSON: {err}")))?;
    classify(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn classifies_every_kind() {
        assert!(matches!(classify(json!({"QMP": {"version": {}}})), Ok(Message::Greeting(_))));
        assert_eq!(
            classify(json!({"return": {}, "id": 3})).unwrap(),
            Message::Return { value: json!({}), id: Some(json!(3)) }
        );
        assert_eq!(
            classify(json!({"error": {"class": "CommandNotFound", "desc": "nope"}})).unwrap(),
            Message::Error { class: "CommandNotFound".into(), desc: "nope".into(), id: None }
        );
        assert!(matches!(classify(json!({"event": "STOP", "timestamp": {}})), Ok(Message::Event(_))));
        assert!(matches!(classify(json!([1, 2])), Err(QmpError::Protocol(_))));
        assert!(matches!(classify(json!({"weird": 1})), Err(QmpError::Protocol(_))));
    }

    #[test]
    fn splits_lines_across_reads() {
        let mut reader = LineReader::default();
        let mut stream = io::Cursor::new(b"{\"a\":1}\r\n{\"b\"".to_vec());
        assert_eq!(reader.read_line(&mut stream, later()).unwrap(), b"{\"a\":1}\r");
        assert!(matches!(reader.read_line(&mut stream, later()), Err(QmpError::Protocol(_))));
    }

    #[test]
    fn eof_before_anything_is_closed() {
        let mut reader = LineReader::default();
        let mut stream = io::Cursor::new(Vec::new());
        assert!(matches!(reader.read_line(&mut stream, later()), Err(QmpError::Closed)));
    }

    #[test]
    fn caps_line_length() {
        let mut reader = LineReader::default();
        let mut stream = io::repeat(b'x');
        assert!(matches!(reader.read_line(&mut stream, later()), Err(QmpError::LineTooLong(_))));
        assert!(reader.buffer.len() <= MAX_LINE);
    }

    #[test]
    fn rejects_invalid_utf8_and_garbage() {
        assert!(matches!(parse_line(b"\xff\xfe{}"), Err(QmpError::Protocol(_))));
        assert!(matches!(parse_line(b"hello"), Err(QmpError::Protocol(_))));
        assert!(matches!(parse_line(b"{\"return\": "), Err(QmpError::Protocol(_))));
    }
}
