//! The runtime directory: one QMP socket per VM, `<run-dir>/<vm>.qmp`, and beside it the other
//! files of a launched VM. Every rule that names a VM's file is here ([`VmPaths`]), so that the
//! launcher, QEMU's command line, the launch record and `stop` cannot disagree on a path.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::name::VmName;
use crate::process::effective_uid;
use crate::ram::ram_file_path;

/// Extension of QMP sockets in the run directory.
pub const SOCKET_EXTENSION: &str = "qmp";

/// Extension of a VM's launch record (the record says what launch made).
pub const RECORD_EXTENSION: &str = "launch.json";

/// Extension of a launched VM's state disk (a qcow2 image holding its saved states).
const STATE_DISK_EXTENSION: &str = "state.qcow2";

/// Where every file of one VM goes: beside its QMP socket, `<run-dir>/<name>.<extension>`, and
/// its RAM file in the shared-memory directory ([`ram_file_path`]). `launch` tells QEMU these
/// paths, records them, and removes them when it fails; one struct so that no caller has a path
/// rule of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    /// The QMP socket, `<run-dir>/<name>.qmp`.
    pub socket: PathBuf,
    /// QEMU's pidfile, `<run-dir>/<name>.pid`.
    pub pidfile: PathBuf,
    /// The serial console's output, `<run-dir>/<name>.serial`.
    pub serial: PathBuf,
    /// QEMU's own log (its stderr), `<run-dir>/<name>.log`.
    pub log: PathBuf,
    /// The launch record, `<run-dir>/<name>.launch.json`.
    pub record: PathBuf,
    /// The state disk, `<run-dir>/<name>.state.qcow2`.
    pub state_disk: PathBuf,
    /// Guest RAM, `<shm-dir>/qemu_ram_<name>`.
    pub ram: PathBuf,
}

/// Environment variable that overrides the default run directory.
pub const RUN_DIR_ENV: &str = "QEMU_BRIDGE_RUN_DIR";

/// `$QEMU_BRIDGE_RUN_DIR`, else `/run/qemu-bridge` for root, else
/// `$XDG_RUNTIME_DIR/qemu-bridge` (falling back to `/tmp/qemu-bridge-<uid>`).
pub fn default_run_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(RUN_DIR_ENV).filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir);
    }
    let uid = effective_uid();
    if uid == 0 {
        return PathBuf::from("/run/qemu-bridge");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("qemu-bridge"),
        None => PathBuf::from(format!("/tmp/qemu-bridge-{uid}")),
    }
}

/// Errors about the run directory.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// It does not exist.
    #[error("run directory {0} does not exist")]
    Missing(PathBuf),
    /// It exists but is not a directory.
    #[error("run directory {0} is not a directory")]
    NotADirectory(PathBuf),
    /// It cannot be read or created.
    #[error("cannot access run directory {path}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A run directory holding QMP sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// A run directory at `path` (not checked until used).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The files of VM `name`, its RAM file in `shm_dir` (normally [`crate::ram::SHM_DIR`]).
    pub fn vm_paths(&self, name: &VmName, shm_dir: &Path) -> VmPaths {
        VmPaths {
            socket: self.socket_path(name),
            pidfile: self.file_path(name, "pid"),
            serial: self.file_path(name, "serial"),
            log: self.file_path(name, "log"),
            record: self.record_path(name),
            state_disk: self.state_disk_path(name),
            ram: ram_file_path(shm_dir, name),
        }
    }

    /// The socket path for VM `name` (as in [`VmPaths::socket`]).
    pub fn socket_path(&self, name: &VmName) -> PathBuf {
        self.file_path(name, SOCKET_EXTENSION)
    }

    /// The launch record of VM `name` (as in [`VmPaths::record`]).
    pub fn record_path(&self, name: &VmName) -> PathBuf {
        self.file_path(name, RECORD_EXTENSION)
    }

    /// The state disk of VM `name` (as in [`VmPaths::state_disk`]).
    pub fn state_disk_path(&self, name: &VmName) -> PathBuf {
        self.file_path(name, STATE_DISK_EXTENSION)
    }

    /// Path of a per-VM file with `extension`, `<run-dir>/<name>.<extension>`: the form of every
    /// run-directory path in [`VmPaths`], which names the VM's files.
    pub fn file_path(&self, name: &VmName, extension: &str) -> PathBuf {
        self.path.join(format!("{name}.{extension}"))
    }

    /// Checks that the directory exists and is a directory.
    ///
    /// # Errors
    ///
    /// [`RunDirError::Missing`], [`RunDirError::NotADirectory`], [`RunDirError::Io`].
    pub fn check(&self) -> Result<(), RunDirError> {
        match fs::metadata(&self.path) {
            Ok(metadata) if metadata.is_dir() => Ok(()),
            Ok(_) => Err(RunDirError::NotADirectory(self.path.clone())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                Err(RunDirError::Missing(self.path.clone()))
            }
            Err(source) => Err(RunDirError::Io { path: self.path.clone(), source }),
        }
    }

    /// Creates the directory (mode 0700 for new directories) if needed.
    ///
    /// # Errors
    ///
    /// [`RunDirError::NotADirectory`] when a non-directory is in the way, [`RunDirError::Io`].
    pub fn create(&self) -> Result<(), RunDirError> {
        use std::os::unix::fs::DirBuilderExt;
        match fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.path) {
            Ok(()) => self.check(),
            Err(_) if self.path.exists() => self.check(),
            Err(source) => Err(RunDirError::Io { path: self.path.clone(), source }),
        }
    }

    /// A warning when other users may write the directory (group- or world-writable, or owned
    /// by another user): they could plant sockets in it. The trust check still refuses their
    /// peers; the warning makes the exposure visible. `None` when it is private or absent.
    pub fn sharing_warning(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let metadata = fs::metadata(&self.path).ok()?;
        let mode = metadata.mode() & 0o7777;
        let me = effective_uid();
        let why = if mode & 0o022 != 0 {
            format!("writable by other users (mode {mode:04o})")
        } else if metadata.uid() != me && metadata.uid() != 0 {
            format!("owned by uid {}", metadata.uid())
        } else {
            return None;
        };
        Some(format!(
            "run directory {} is {why}: others can put QMP sockets in it (qemu-bridge refuses peers it does not trust; chmod 700 makes it private)",
            self.path.display()
        ))
    }

    /// Names of the VMs whose sockets are in the directory, sorted. Sockets whose stems are not
    /// valid [`VmName`]s (not UTF-8, control characters, too long) are skipped with a log line;
    /// nothing is connected to here.
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check), or when the directory cannot be listed.
    pub fn vm_names(&self) -> Result<Vec<VmName>, RunDirError> {
        self.check()?;
        let entries =
            fs::read_dir(&self.path).map_err(|source| RunDirError::Io { path: self.path.clone(), source })?;
        let mut names = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension() != Some(OsStr::new(SOCKET_EXTENSION)) {
                continue;
            }
            let is_socket = entry.file_type().is_ok_and(|kind| kind.is_socket());
            if !is_socket {
                continue;
            }
            let Some(stem) = path.file_stem() else { continue };
            match stem.to_str().map(VmName::new) {
                Some(Ok(name)) => names.push(name),
                Some(Err(err)) => log::warn!("skipping QMP socket {}: {err}", path.display()),
                None => log::warn!("skipping QMP socket {}: its name is not UTF-8", path.display()),
            }
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_only_sockets_with_safe_names() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = RunDir::new(dir.path());
        let name = |text: &str| VmName::new(text).unwrap();
        let _a = std::os::unix::net::UnixListener::bind(run_dir.socket_path(&name("alpha"))).unwrap();
        let _b = std::os::unix::net::UnixListener::bind(run_dir.socket_path(&name("beta"))).unwrap();
        let _c = std::os::unix::net::UnixListener::bind(dir.path().join("bad\u{1}.qmp")).unwrap();
        let _d = std::os::unix::net::UnixListener::bind(dir.path().join(".hidden.qmp")).unwrap();
        std::fs::write(run_dir.socket_path(&name("not-a-socket")), b"").unwrap();
        std::fs::write(run_dir.file_path(&name("alpha"), "pid"), b"1").unwrap();
        assert_eq!(run_dir.vm_names().unwrap(), [name("alpha"), name("beta")]);
    }

    #[test]
    fn the_files_of_a_vm_sit_beside_its_socket_but_for_its_ram() {
        let name = VmName::new("a").unwrap();
        let paths = RunDir::new("/run/q").vm_paths(&name, Path::new("/dev/shm"));
        let expected = |path: &str| PathBuf::from(path);
        assert_eq!(
            paths,
            VmPaths {
                socket: expected("/run/q/a.qmp"),
                pidfile: expected("/run/q/a.pid"),
                serial: expected("/run/q/a.serial"),
                log: expected("/run/q/a.log"),
                record: expected("/run/q/a.launch.json"),
                state_disk: expected("/run/q/a.state.qcow2"),
                ram: expected("/dev/shm/qemu_ram_a"),
            }
        );
    }

    #[test]
    fn a_run_directory_made_by_us_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let run_dir = RunDir::new(dir.path().join("new/run"));
        run_dir.create().unwrap();
        assert_eq!(fs::metadata(run_dir.path()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(run_dir.sharing_warning(), None);
    }

    #[test]
    fn shared_run_dirs_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let run_dir = RunDir::new(dir.path());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(run_dir.sharing_warning(), None);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let warning = run_dir.sharing_warning().unwrap();
        assert!(warning.contains("writable by other users (mode 0777)"), "{warning}");
        assert_eq!(RunDir::new(dir.path().join("absent")).sharing_warning(), None);
    }

    #[test]
    fn missing_and_file_run_dirs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = RunDir::new(dir.path().join("nope"));
        assert!(matches!(missing.vm_names(), Err(RunDirError::Missing(_))));
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(RunDir::new(&file).vm_names(), Err(RunDirError::NotADirectory(_))));
        assert!(RunDir::new(&file).create().is_err());
    }
}
