//! The audit log: one line per operation on guest RAM, for forensics.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// What was done to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOp {
    /// The file was opened.
    Open,
    /// Bytes were read.
    Read,
}

impl AuditOp {
    /// The word in the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOp::Open => "open",
            AuditOp::Read => "read",
        }
    }
}

/// One operation on guest RAM.
#[derive(Debug, Clone, Copy)]
pub struct AuditEvent<'a> {
    /// Caller's uid.
    pub uid: u32,
    /// Caller's pid.
    pub pid: u32,
    /// VM name.
    pub vm: &'a str,
    /// File name within the VM directory.
    pub file: &'a str,
    /// What was done.
    pub op: AuditOp,
    /// Offset read.
    pub offset: u64,
    /// Length read.
    pub len: u64,
}

/// An append-only log file.
#[derive(Debug)]
pub struct AuditLog {
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (creating, mode 0600) `path` for appending.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        Ok(Self { file: Mutex::new(file) })
    }

    /// Appends `time=<unix seconds> uid= pid= vm= file= op= offset= len=` as one write.
    pub fn record(&self, event: &AuditEvent<'_>) {
        let AuditEvent { uid, pid, vm, file, op, offset, len } = *event;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let line = format!(
            "time={}.{:06} uid={uid} pid={pid} vm={vm} file={file} op={} offset={offset} len={len}\n",
            now.as_secs(),
            now.subsec_micros(),
            op.as_str()
        );
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = file.write_all(line.as_bytes()) {
            log::error!("audit log write failed: {err}");
        }
    }
}
