//! A QMP client: unix socket, greeting, capabilities negotiation, commands with ids, events
//! kept aside, typed errors, and a deadline on every exchange.
//!
//! QEMU 7.2 serves one client per QMP socket at a time, so callers connect, ask and disconnect
//! ([`QmpClient::connect`] then drop); holding a connection blocks every other client.
//! The client is generic over `Read + Write` so its parser can be fed scripted bytes.

pub mod protocol;
mod scripted;

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use crate::guest::Arch;
use crate::ram::{GuestLayout, Machine};
use protocol::{LineReader, Message};
pub use scripted::ScriptedStream;

/// Default time allowed for connecting and for each exchange.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Events kept from the stream; older ones are dropped.
const MAX_EVENTS: usize = 256;

/// Errors of the QMP layer.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected.
    #[error("cannot connect to QMP socket {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("QMP I/O error")]
    Io(#[source] io::Error),
    /// The peer did not answer in time.
    #[error("QMP peer did not answer in time")]
    Timeout,
    /// The peer closed the connection.
    #[error("QMP peer closed the connection")]
    Closed,
    /// The peer sent a line longer than the cap.
    #[error("QMP peer sent a line longer than {0} bytes")]
    LineTooLong(usize),
    /// The peer sent something that is not QMP.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// QEMU answered the command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QMP error class, e.g. `GenericError`, `CommandNotFound`.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// A reply had an unexpected shape.
    #[error("unexpected reply to {command}: {detail}")]
    UnexpectedReply {
        /// The command.
        command: String,
        /// What was wrong.
        detail: String,
    },
    /// A background job QEMU ran for a command ended with an error.
    #[error("QEMU job {job} ({command}) failed: {desc}")]
    Job {
        /// The job's id.
        job: String,
        /// The command that started it.
        command: String,
        /// QEMU's description.
        desc: String,
    },
    /// A background job did not conclude in time (it may still be running in QEMU).
    #[error("QEMU job {job} ({command}) did not conclude within {waited:?}")]
    JobTimeout {
        /// The job's id.
        job: String,
        /// The command that started it.
        command: String,
        /// How long it was waited for.
        waited: Duration,
    },
    /// The VM's RAM is not in a file (no `mem-path` on any memory backend).
    #[error("the VM has no file-backed RAM (no memory backend with a mem-path)")]
    NoFileBackend,
    /// QEMU names no memory backend (neither the machine's nor any `query-memdev` one).
    #[error("QEMU names no memory backend for the VM's RAM")]
    NoRamBackend,
}

/// Run states QEMU reports in `query-status` (QAPI `RunState`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RunState {
    /// `running`
    Running,
    /// `paused` (stopped by `stop` or the user)
    Paused,
    /// `prelaunch` (started with `-S`, never run)
    Prelaunch,
    /// `inmigrate`
    InMigrate,
    /// `postmigrate`
    PostMigrate,
    /// `finish-migrate`
    FinishMigrate,
    /// `shutdown` (guest shut down, `-no-shutdown`)
    Shutdown,
    /// `guest-panicked`
    GuestPanicked,
    /// `internal-error`
    InternalError,
    /// `io-error`
    IoError,
    /// `watchdog`
    Watchdog,
    /// `suspended`
    Suspended,
    /// `restore-vm`
    RestoreVm,
    /// `save-vm`
    SaveVm,
    /// `debug`
    Debug,
    /// `colo`
    Colo,
    /// A state this version does not know, kept verbatim.
    Other(String),
}

impl RunState {
    const NAMES: [(&'static str, RunState); 16] = [
        ("running", RunState::Running),
        ("paused", RunState::Paused),
        ("prelaunch", RunState::Prelaunch),
        ("inmigrate", RunState::InMigrate),
        ("postmigrate", RunState::PostMigrate),
        ("finish-migrate", RunState::FinishMigrate),
        ("shutdown", RunState::Shutdown),
        ("guest-panicked", RunState::GuestPanicked),
        ("internal-error", RunState::InternalError),
        ("io-error", RunState::IoError),
        ("watchdog", RunState::Watchdog),
        ("suspended", RunState::Suspended),
        ("restore-vm", RunState::RestoreVm),
        ("save-vm", RunState::SaveVm),
        ("debug", RunState::Debug),
        ("colo", RunState::Colo),
    ];

    /// Parses QEMU's name of a state; unknown names are kept as [`RunState::Other`].
    pub fn from_qmp(name: &str) -> Self {
        Self::NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map_or_else(|| Self::Other(name.to_string()), |(_, state)| state.clone())
    }

    /// QEMU's name of the state.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Other(name) => name,
            known => Self::NAMES.iter().find(|(_, state)| state == known).map_or("?", |(n, _)| n),
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RunState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Where a memory backend keeps guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendStorage {
    /// A file (`memory-backend-file`, `mem-path`), on tmpfs, hugetlbfs or any file system.
    File(PathBuf),
    /// An anonymous shared memory file (`memory-backend-memfd`): no path, only QEMU's open
    /// descriptor.
    Memfd,
    /// Anonymous memory of the QEMU process (`memory-backend-ram`, QEMU's default).
    Anonymous,
}

/// A memory backend of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamBackend {
    /// Its QOM path, e.g. `/objects/ram0`.
    pub qom_path: String,
    /// Where it keeps the RAM.
    pub storage: BackendStorage,
    /// Its size in bytes.
    pub size: u64,
}

impl RamBackend {
    /// The main one of `backends` (see `ram::mtree::place` for where the others go): the first with a file, else
    /// the first memfd, else the first.
    pub fn main(backends: &[RamBackend]) -> Option<&RamBackend> {
        let rank = |backend: &&RamBackend| match backend.storage {
            BackendStorage::File(_) => 0,
            BackendStorage::Memfd => 1,
            BackendStorage::Anonymous => 2,
        };
        backends.iter().min_by_key(rank)
    }

    /// Its id, the name of its memory region in QEMU's memory map (`ram0`).
    pub fn id(&self) -> &str {
        self.qom_path.rsplit('/').next().unwrap_or(&self.qom_path)
    }
}

/// One memory backend as `query-memdev` describes it: its id (hence its QOM path) and size,
/// and the whole object QEMU sent (`merge`, `dump`, `prealloc`, `share`, `policy`... vary by
/// version), for callers that show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Memdev {
    /// Its id, e.g. `ram0`: the name of its memory region in QEMU's memory map.
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
    /// The object as QEMU sent it.
    pub fields: serde_json::Map<String, Value>,
}

impl Memdev {
    /// Reads one element of `query-memdev`'s answer.
    fn from_value(value: Value) -> Option<Self> {
        let Value::Object(fields) = value else { return None };
        let id = fields.get("id")?.as_str()?.to_string();
        let size = fields.get("size")?.as_u64()?;
        Some(Self { id, size, fields })
    }

    /// Its QOM path, where `qom-get` finds its properties: `/objects/<id>`.
    pub fn qom_path(&self) -> String {
        format!("/objects/{}", self.id)
    }
}

/// The answer to `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusInfo {
    /// The run state.
    pub status: RunState,
    /// Whether vCPUs are running.
    pub running: bool,
}

/// A QMP connection.
#[derive(Debug)]
pub struct QmpClient<S: Read + Write> {
    stream: S,
    reader: LineReader,
    timeout: Duration,
    next_id: u64,
    events: VecDeque<Value>,
    greeting: Value,
}

impl QmpClient<UnixStream> {
    /// Connects to a QMP unix socket and negotiates capabilities, all within `timeout`; each
    /// later exchange gets `timeout` again.
    ///
    /// # Errors
    ///
    /// [`QmpError::Connect`] when the socket cannot be reached, else as
    /// [`QmpClient::handshake`].
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let connect_error = |source| QmpError::Connect { path: path.to_path_buf(), source };
        let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
            .map_err(connect_error)?;
        let address = socket2::SockAddr::unix(path).map_err(connect_error)?;
        // A blocking connect bounded by SO_SNDTIMEO: a unix socket whose backlog is full (QEMU
        // busy with another client) makes connect wait for room, up to the timeout. A
        // non-blocking connect would fail at once with EAGAIN instead.
        socket.set_write_timeout(Some(timeout)).map_err(connect_error)?;
        socket.connect(&address).map_err(connect_error)?;
        let stream = UnixStream::from(socket);
        stream.set_read_timeout(Some(timeout)).map_err(QmpError::Io)?;
        stream.set_write_timeout(Some(timeout)).map_err(QmpError::Io)?;
        Self::handshake(stream, timeout)
    }

    /// Sets the time each later exchange may take (for commands during which QEMU's monitor
    /// is known to be busy, such as saving a VM's state).
    ///
    /// # Errors
    ///
    /// [`QmpError::Io`] when the socket's timeouts cannot be set.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), QmpError> {
        self.stream.set_read_timeout(Some(timeout)).map_err(QmpError::Io)?;
        self.stream.set_write_timeout(Some(timeout)).map_err(QmpError::Io)?;
        self.timeout = timeout;
        Ok(())
    }
}

impl<S: Read + Write> QmpClient<S> {
    /// Reads the greeting and sends `qmp_capabilities`. The stream's own timeouts bound each
    /// read; `timeout` bounds each whole exchange.
    ///
    /// # Errors
    ///
    /// [`QmpError::Timeout`], [`QmpError::Closed`], [`QmpError::Protocol`] when the peer is
    /// not a QMP server, [`QmpError::Command`] when it refuses capabilities negotiation.
    pub fn handshake(stream: S, timeout: Duration) -> Result<Self, QmpError> {
        let mut client = Self {
            stream,
            reader: LineReader::default(),
            timeout,
            next_id: 1,
            events: VecDeque::new(),
            greeting: Value::Null,
        };
        let deadline = Instant::now() + timeout;
        loop {
            match client.read_message(deadline)? {
                Message::Greeting(greeting) => {
                    client.greeting = greeting;
                    break;
                }
                Message::Event(event) => client.keep_event(event),
                other => return Err(QmpError::Protocol(format!("expected the QMP greeting, got {other:?}"))),
            }
        }
        client.execute("qmp_capabilities", None)?;
        Ok(client)
    }

    /// The underlying stream.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// The server's greeting (`{"version": ..., "capabilities": [...]}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// QEMU's version `(major, minor, micro)` from the greeting.
    pub fn qemu_version(&self) -> Option<(u64, u64, u64)> {
        let version = self.greeting.get("version")?.get("qemu")?;
        Some((
            version.get("major")?.as_u64()?,
            version.get("minor")?.as_u64()?,
            version.get("micro")?.as_u64()?,
        ))
    }

    /// Asynchronous events received so far (oldest first, at most 256 kept).
    pub fn events(&self) -> impl Iterator<Item = &Value> {
        self.events.iter()
    }

    /// Removes and returns the events received so far.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }

    fn keep_event(&mut self, event: Value) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn read_message(&mut self, deadline: Instant) -> Result<Message, QmpError> {
        let line = self.reader.read_line(&mut self.stream, deadline)?;
        protocol::parse_line(&line)
    }

    /// Runs `command` with optional `arguments` and returns its `return` value. Events that
    /// arrive before the reply are kept (see [`events`](Self::events)).
    ///
    /// # Errors
    ///
    /// [`QmpError::Command`] when QEMU answers with an error; I/O, timeout and protocol errors.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut bytes = serde_json::to_vec(&request).map_err(|err| QmpError::Protocol(err.to_string()))?;
        bytes.push(b'\n');
        let deadline = Instant::now() + self.timeout;
        self.stream.write_all(&bytes).and_then(|()| self.stream.flush()).map_err(|err| match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => QmpError::Timeout,
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => QmpError::Closed,
            _ => QmpError::Io(err),
        })?;
        loop {
            match self.read_message(deadline)? {
                Message::Event(event) => self.keep_event(event),
                Message::Return { value, id: reply_id } => {
                    if reply_id == Some(json!(id)) {
                        return Ok(value);
                    }
                    // A late reply to an earlier command that timed out.
                    log::debug!("QMP: skipping reply for id {reply_id:?} while waiting for {id}");
                }
                Message::Error { class, desc, id: reply_id } => {
                    // QEMU answers unparsable input with an error without id.
                    if reply_id.is_none() || reply_id == Some(json!(id)) {
                        return Err(QmpError::Command { command: command.to_string(), class, desc });
                    }
                    log::debug!("QMP: skipping error for id {reply_id:?} while waiting for {id}");
                }
                Message::Greeting(_) => return Err(QmpError::Protocol("unexpected second greeting".into())),
            }
        }
    }

    fn unexpected(command: &str, detail: impl Into<String>) -> QmpError {
        QmpError::UnexpectedReply { command: command.to_string(), detail: detail.into() }
    }

    /// `qom-get` of `property` on the object at `path`.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub fn qom_get(&mut self, path: &str, property: &str) -> Result<Value, QmpError> {
        self.execute("qom-get", Some(json!({ "path": path, "property": property })))
    }

    /// `qom-get` of a property that older machines or versions may lack: `None` when QEMU
    /// answers with an error (no such object or property), while a timeout or a broken
    /// connection is still an error.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), except [`QmpError::Command`].
    pub fn optional_property(&mut self, path: &str, property: &str) -> Result<Option<Value>, QmpError> {
        match self.qom_get(path, property) {
            Ok(value) => Ok(Some(value)),
            Err(QmpError::Command { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `query-status`: every run state QEMU reports.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), and [`QmpError::UnexpectedReply`] for a malformed answer.
    pub fn query_status(&mut self) -> Result<StatusInfo, QmpError> {
        let reply = self.execute("query-status", None)?;
        let status = reply
            .get("status")
            .and_then(Value::as_str)
            .ok_or_else(|| Self::unexpected("query-status", "no status string"))?;
        let running = reply.get("running").and_then(Value::as_bool).unwrap_or(status == "running");
        Ok(StatusInfo { status: RunState::from_qmp(status), running })
    }

    /// `query-memdev`: the memory backends as QEMU describes them (no `mem-path`; see
    /// [`get_shared_memory_path`](Self::get_shared_memory_path)).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), and [`QmpError::UnexpectedReply`] if it is not a list of
    /// backends with an id and a size.
    pub fn query_memdev(&mut self) -> Result<Vec<Memdev>, QmpError> {
        match self.execute("query-memdev", None)? {
            Value::Array(backends) => backends
                .into_iter()
                .map(|backend| {
                    let shown = backend.to_string();
                    Memdev::from_value(backend)
                        .ok_or_else(|| Self::unexpected("query-memdev", format!("no id or size in {shown}")))
                })
                .collect(),
            other => Err(Self::unexpected("query-memdev", format!("expected a list, got {other}"))),
        }
    }

    /// The QOM path of the machine's main RAM backend (`/objects/ram0`), if it has one.
    fn memory_backend(&mut self) -> Result<Option<String>, QmpError> {
        // Older machines lack the property.
        match self.optional_property("/machine", "memory-backend")? {
            Some(Value::String(path)) if !path.is_empty() => {
                Ok(Some(if path.starts_with('/') { path } else { format!("/objects/{path}") }))
            }
            _ => Ok(None),
        }
    }

    /// QOM paths of the memory backends that may hold main RAM: the machine's
    /// `memory-backend`, then every `query-memdev` backend (VMs started with `-numa memdev=` or
    /// without `memory-backend=`).
    fn backend_candidates(&mut self) -> Result<Vec<String>, QmpError> {
        let mut candidates = Vec::new();
        if let Some(backend) = self.memory_backend()? {
            candidates.push(backend);
        }
        for backend in self.query_memdev()? {
            let path = backend.qom_path();
            if !candidates.contains(&path) {
                candidates.push(path);
            }
        }
        Ok(candidates)
    }

    /// Every memory backend QEMU names (the machine's `memory-backend`, then every
    /// `query-memdev` backend) with where it keeps its RAM and its size.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub fn ram_backends(&mut self) -> Result<Vec<RamBackend>, QmpError> {
        let mut backends = Vec::new();
        for qom_path in self.backend_candidates()? {
            let storage = match self.mem_path(&qom_path)? {
                Some(path) => BackendStorage::File(path),
                None if self.optional_property(&qom_path, "type")?.as_ref().and_then(Value::as_str)
                    == Some("memory-backend-memfd") =>
                {
                    BackendStorage::Memfd
                }
                None => BackendStorage::Anonymous,
            };
            let size = self.backend_size(&qom_path)?;
            backends.push(RamBackend { qom_path, storage, size });
        }
        Ok(backends)
    }

    /// QEMU's flat memory map (`info mtree -f`), or `None` when the monitor does not give it
    /// (no HMP, or an answer of another shape).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute) for timeouts and broken connections.
    pub fn memory_map(&mut self) -> Result<Option<String>, QmpError> {
        match self.human_monitor_command("info mtree -f") {
            Ok(text) => Ok(Some(text)),
            Err(err @ (QmpError::Command { .. } | QmpError::UnexpectedReply { .. })) => {
                log::info!("info mtree -f gave no map ({err})");
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// The `mem-path` of the memory backend at QOM path `backend`; `None` for backends without
    /// one (memfd, anonymous RAM) or with an empty one.
    ///
    /// # Errors
    ///
    /// As [`optional_property`](Self::optional_property).
    pub fn mem_path(&mut self, backend: &str) -> Result<Option<PathBuf>, QmpError> {
        Ok(match self.optional_property(backend, "mem-path")? {
            Some(Value::String(path)) if !path.is_empty() => Some(PathBuf::from(path)),
            _ => None,
        })
    }

    /// The file that holds the VM's RAM: the `mem-path` of the first backend that has one (the
    /// machine's `memory-backend` first). `query-memdev` does not report it, so this asks QOM.
    ///
    /// # Errors
    ///
    /// [`QmpError::NoFileBackend`] when no backend has a `mem-path`, else as
    /// [`execute`](Self::execute).
    pub fn get_shared_memory_path(&mut self) -> Result<PathBuf, QmpError> {
        for backend in self.backend_candidates()? {
            if let Some(path) = self.mem_path(&backend)? {
                return Ok(path);
            }
        }
        Err(QmpError::NoFileBackend)
    }

    /// Size in bytes of the backend at QOM path `backend`.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub fn backend_size(&mut self, backend: &str) -> Result<u64, QmpError> {
        self.qom_get(backend, "size")?
            .as_u64()
            .ok_or_else(|| Self::unexpected("qom-get size", "not an integer"))
    }

    /// The VM's `-name`, if set.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub fn query_name(&mut self) -> Result<Option<String>, QmpError> {
        Ok(self.execute("query-name", None)?.get("name").and_then(Value::as_str).map(str::to_string))
    }

    /// The guest architecture from `query-target`, e.g. `x86_64`, `aarch64`, `riscv64`
    /// ([`Arch::Other`] with an empty name when QEMU does not say).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), but for QEMU refusing the command.
    pub fn target_arch(&mut self) -> Result<Arch, QmpError> {
        match self.execute("query-target", None) {
            Ok(reply) => Ok(Arch::from_qemu(reply.get("arch").and_then(Value::as_str).unwrap_or_default())),
            Err(QmpError::Command { .. }) => Ok(Arch::from_qemu("")),
            Err(err) => Err(err),
        }
    }

    /// The machine type, e.g. `pc-q35-7.2-machine`.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub fn machine_type(&mut self) -> Result<String, QmpError> {
        match self.qom_get("/machine", "type")? {
            Value::String(name) => Ok(name),
            other => Err(Self::unexpected("qom-get /machine type", format!("got {other}"))),
        }
    }

    /// The layout for callers that found no usable memory map: the x86 rule, q35's reported
    /// split where present, otherwise the machine type's rule with its `max-ram-below-4g`.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub fn rule_layout(&mut self, ram_size: u64) -> Result<GuestLayout, QmpError> {
        let kind = Machine::from_type_name(&self.machine_type()?);
        if kind == Machine::Q35 {
            let below = self.optional_property("/machine/q35", "below-4g-mem-size")?.and_then(|v| v.as_u64());
            let above = self.optional_property("/machine/q35", "above-4g-mem-size")?.and_then(|v| v.as_u64());
            if let (Some(below), Some(above)) = (below, above) {
                if below + above == ram_size {
                    return Ok(GuestLayout::from_split(below, above));
                }
                log::warn!(
                    "q35 reports {below}+{above} bytes of RAM, backend has {ram_size}; using the rule"
                );
            }
        }
        let cap = self.optional_property("/machine", "max-ram-below-4g")?.and_then(|v| v.as_u64());
        Ok(GuestLayout::x86(&kind, ram_size, cap))
    }

    /// Pauses the vCPUs (`stop`).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", None).map(drop)
    }

    /// Resumes the vCPUs (`cont`).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).map(drop)
    }

    /// Resets the machine (`system_reset`).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub fn system_reset(&mut self) -> Result<(), QmpError> {
        self.execute("system_reset", None).map(drop)
    }

    /// Asks QEMU to exit (`quit`). The connection closes afterwards.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub fn quit(&mut self) -> Result<(), QmpError> {
        self.execute("quit", None).map(drop)
    }

    /// QEMU writes `size` bytes of guest-physical memory at `addr` to `file` (`pmemsave`).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub fn pmemsave(&mut self, addr: u64, size: u64, file: &Path) -> Result<(), QmpError> {
        let filename = file.to_str().ok_or_else(|| Self::unexpected("pmemsave", "file name is not UTF-8"))?;
        self.execute("pmemsave", Some(json!({ "val": addr, "size": size, "filename": filename }))).map(drop)
    }

    /// Runs `command` with `arguments` plus `"job-id": job`, which starts a background job,
    /// polls `query-jobs` until that job concludes (at most `wait`), then dismisses it. Used for `snapshot-save`,
    /// `snapshot-load` and `snapshot-delete`, whose errors come from the job, not the reply.
    ///
    /// # Errors
    ///
    /// [`QmpError::Job`] with QEMU's message when the job failed, [`QmpError::JobTimeout`];
    /// as [`execute`](Self::execute).
    pub fn run_job(
        &mut self,
        command: &str,
        job: &str,
        arguments: Value,
        wait: Duration,
    ) -> Result<(), QmpError> {
        let mut arguments = arguments;
        arguments["job-id"] = json!(job);
        self.execute(command, Some(arguments))?;
        // Some(outcome) once the job concluded or the monitor failed; None while it runs.
        let outcome =
            crate::poll::until(wait, crate::poll::INTERVAL, || self.job_outcome(command, job).transpose());
        outcome.unwrap_or_else(|| {
            Err(QmpError::JobTimeout { job: job.to_string(), command: command.to_string(), waited: wait })
        })
    }

    /// `Ok(None)` while `job` runs; once it concluded, dismisses it and says how it ended.
    fn job_outcome(&mut self, command: &str, job: &str) -> Result<Option<()>, QmpError> {
        let jobs = self.execute("query-jobs", None)?;
        let jobs = jobs.as_array().ok_or_else(|| Self::unexpected("query-jobs", "not an array"))?;
        let Some(info) = jobs.iter().find(|info| info["id"] == job) else {
            return Err(Self::unexpected("query-jobs", format!("job {job} vanished")));
        };
        if info["status"] != "concluded" && info["status"] != "null" {
            return Ok(None);
        }
        let error = info["error"].as_str().map(str::to_string);
        self.execute("job-dismiss", Some(json!({ "id": job })))?;
        match error {
            Some(desc) => Err(QmpError::Job { job: job.to_string(), command: command.to_string(), desc }),
            None => Ok(Some(())),
        }
    }

    /// Runs an HMP command and returns its text output.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub fn human_monitor_command(&mut self, command_line: &str) -> Result<String, QmpError> {
        match self.execute("human-monitor-command", Some(json!({ "command-line": command_line })))? {
            Value::String(output) => Ok(output),
            other => Err(Self::unexpected("human-monitor-command", format!("got {other}"))),
        }
    }
}

#[cfg(test)]
mod tests;
