//! What `launch` made for a VM, so that `stop` removes exactly that and nothing else.
//!
//! `<run-dir>/<vm>.launch.json` lists QEMU's pid, every file the launch created (RAM file,
//! socket, pidfile, serial console, QEMU's log, the state disk when it was created for this VM)
//! with its identity (device and inode), and the VM's cgroups. A file is removed only while the
//! path still names that very file: a RAM file replaced by someone else's, or a path turned
//! into a symbolic link, is left alone with a log line.
//!
//! The record itself must be ours: a regular file (never followed through a symbolic link)
//! owned by this user and writable by nobody else. Anything else is ignored with a warning, so
//! that a record planted in a shared run directory cannot name files for `stop` to delete.
//!
//! When `stop` keeps a state disk it made (saved states outlive the VM), the record stays with
//! just that file, so that a later launch of the same name still knows it made the disk.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::name::VmName;
use crate::run_dir::RunDir;
pub use crate::run_dir::RECORD_EXTENSION;

/// What a recorded file is to the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileRole {
    /// Guest RAM (made by QEMU at our request).
    Ram,
    /// The QMP socket.
    Socket,
    /// QEMU's pidfile.
    Pidfile,
    /// The serial console's output.
    Serial,
    /// What QEMU printed on stderr.
    Log,
    /// The qcow2 image of saved states.
    StateDisk,
}

/// A file and the identity it had when it was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedFile {
    /// What it is.
    pub role: FileRole,
    /// Where it is.
    pub path: PathBuf,
    /// Its device.
    pub dev: u64,
    /// Its inode.
    pub ino: u64,
}

impl RecordedFile {
    /// Records `path` as it is now (not following a symbolic link).
    ///
    /// # Errors
    ///
    /// When it cannot be examined.
    pub fn of(role: FileRole, path: &Path) -> io::Result<Self> {
        let metadata = fs::symlink_metadata(path)?;
        Ok(Self { role, path: path.to_path_buf(), dev: metadata.dev(), ino: metadata.ino() })
    }

    /// Whether `path` still names this very file.
    pub fn is_intact(&self) -> bool {
        fs::symlink_metadata(&self.path).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }
}

/// The record of one VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchRecord {
    /// QEMU's pid once it is known (none when only a kept state disk is recorded).
    pub pid: Option<u32>,
    /// Files the launch created.
    pub files: Vec<RecordedFile>,
    /// The VM's cgroup directories.
    pub cgroups: Vec<PathBuf>,
}

/// Why a record was not used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// It cannot be read or parsed.
    #[error("cannot read the launch record {path}")]
    Unreadable {
        /// The record.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// It is not one this user wrote.
    #[error("ignoring the launch record {path}: {reason}")]
    Untrusted {
        /// The record.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What removing recorded files did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removal {
    /// Files removed.
    pub removed: Vec<PathBuf>,
    /// Files whose path now names another file (or a link): left alone.
    pub replaced: Vec<PathBuf>,
}

impl LaunchRecord {
    /// Where the record of VM `name` lives.
    pub fn path(run_dir: &RunDir, name: &VmName) -> PathBuf {
        run_dir.record_path(name)
    }

    /// The records of the run directory whose recorded QEMU no longer runs (or never got a
    /// pid), by VM name; records that cannot be read are skipped.
    pub fn of_dead_vms(run_dir: &RunDir) -> Vec<(VmName, LaunchRecord)> {
        let Ok(entries) = fs::read_dir(run_dir.path()) else { return Vec::new() };
        let suffix = format!(".{RECORD_EXTENSION}");
        let mut records: Vec<(VmName, LaunchRecord)> = entries
            .flatten()
            .filter_map(|entry| {
                let file_name = entry.file_name();
                let name = VmName::new(file_name.to_str()?.strip_suffix(&suffix)?).ok()?;
                let record = Self::read(run_dir, &name).ok()??;
                (!record.pid.is_some_and(crate::process::alive)).then_some((name, record))
            })
            .collect();
        records.sort_by(|a, b| a.0.cmp(&b.0));
        records
    }

    /// The record of VM `name`; `None` when there is none (the VM was not launched by us).
    ///
    /// # Errors
    ///
    /// [`RecordError::Untrusted`] for a record that is a link, not a regular file, owned by
    /// another user or writable by others; [`RecordError::Unreadable`].
    pub fn read(run_dir: &RunDir, name: &VmName) -> Result<Option<Self>, RecordError> {
        let path = Self::path(run_dir, name);
        let unreadable = |source| RecordError::Unreadable { path: path.clone(), source };
        let file = match fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
                return Err(RecordError::Untrusted { path, reason: "it is a symbolic link".into() })
            }
            Err(err) => return Err(unreadable(err)),
        };
        let metadata = file.metadata().map_err(unreadable)?;
        let me = crate::process::effective_uid();
        let reason = if !metadata.is_file() {
            Some("it is not a regular file".to_string())
        } else if metadata.uid() != me {
            Some(format!("it belongs to uid {}, not {me}", metadata.uid()))
        } else if metadata.mode() & 0o022 != 0 {
            Some("others may write it".to_string())
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(RecordError::Untrusted { path, reason });
        }
        serde_json::from_reader(io::BufReader::new(file))
            .map(Some)
            .map_err(|err| unreadable(io::Error::new(io::ErrorKind::InvalidData, err)))
    }

    /// Writes the record (mode 0600, to a temporary name first, then renamed over the old one).
    ///
    /// # Errors
    ///
    /// When it cannot be written.
    pub fn write(&self, run_dir: &RunDir, name: &VmName) -> io::Result<()> {
        let path = Self::path(run_dir, name);
        let temporary = path.with_extension(format!("{RECORD_EXTENSION}.partial-{}", std::process::id()));
        let result = (|| {
            let mut file =
                fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
            file.write_all(&serde_json::to_vec_pretty(self).map_err(io::Error::other)?)?;
            file.sync_all()?;
            fs::rename(&temporary, &path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        result
    }

    /// Deletes the record of VM `name` (nothing when there is none).
    ///
    /// # Errors
    ///
    /// When it exists and cannot be removed.
    pub fn delete(run_dir: &RunDir, name: &VmName) -> io::Result<()> {
        match fs::remove_file(Self::path(run_dir, name)) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    /// The recorded file of `role`, if any.
    pub fn file(&self, role: FileRole) -> Option<&RecordedFile> {
        self.files.iter().find(|file| file.role == role)
    }

    /// Adds (or replaces) the file of `role` as `path` is now.
    ///
    /// # Errors
    ///
    /// When it cannot be examined.
    pub fn add(&mut self, role: FileRole, path: &Path) -> io::Result<()> {
        let file = RecordedFile::of(role, path)?;
        self.files.retain(|known| known.role != role);
        self.files.push(file);
        Ok(())
    }

    /// Removes every recorded file for which `remove` says yes and whose path still names the
    /// recorded file; those files leave the record, the others stay in it.
    ///
    /// # Errors
    ///
    /// The first removal that failed for another reason than the file being gone.
    pub fn remove_files(&mut self, remove: impl Fn(FileRole) -> bool) -> io::Result<Removal> {
        let mut removal = Removal::default();
        let mut kept = Vec::new();
        for file in std::mem::take(&mut self.files) {
            if !remove(file.role) {
                kept.push(file);
                continue;
            }
            if !file.is_intact() {
                if fs::symlink_metadata(&file.path).is_ok() {
                    log::warn!(
                        "leaving {} alone: it is no longer the file qemu-bridge made",
                        file.path.display()
                    );
                    removal.replaced.push(file.path);
                }
                continue;
            }
            match fs::remove_file(&file.path) {
                Ok(()) => removal.removed.push(file.path),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => {
                    self.files = kept;
                    return Err(io::Error::new(
                        err.kind(),
                        format!("cannot remove {}: {err}", file.path.display()),
                    ));
                }
            }
        }
        self.files = kept;
        Ok(removal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn setup() -> (tempfile::TempDir, RunDir, VmName) {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = RunDir::new(dir.path());
        (dir, run_dir, VmName::new("vm").unwrap())
    }

    #[test]
    fn a_written_record_reads_back() {
        let (dir, run_dir, name) = setup();
        assert_eq!(LaunchRecord::read(&run_dir, &name).unwrap(), None);
        let ram = dir.path().join("ram");
        fs::write(&ram, b"x").unwrap();
        let mut record =
            LaunchRecord { pid: Some(42), cgroups: vec!["/sys/fs/cgroup/x".into()], ..Default::default() };
        record.add(FileRole::Ram, &ram).unwrap();
        record.write(&run_dir, &name).unwrap();
        let path = LaunchRecord::path(&run_dir, &name);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(LaunchRecord::read(&run_dir, &name).unwrap(), Some(record));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary left");
    }

    #[test]
    fn only_files_that_are_still_the_recorded_ones_are_removed() {
        let (dir, _run_dir, _name) = setup();
        let (ram, log, replaced, gone) = (
            dir.path().join("ram"),
            dir.path().join("log"),
            dir.path().join("serial"),
            dir.path().join("pid"),
        );
        for path in [&ram, &log, &replaced, &gone] {
            fs::write(path, b"x").unwrap();
        }
        let mut record = LaunchRecord::default();
        record.add(FileRole::Ram, &ram).unwrap();
        record.add(FileRole::Log, &log).unwrap();
        record.add(FileRole::Serial, &replaced).unwrap();
        record.add(FileRole::Pidfile, &gone).unwrap();
        // someone else's file now stands where ours was; ours of another is gone already
        fs::remove_file(&replaced).unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep me").unwrap();
        std::os::unix::fs::symlink(&victim, &replaced).unwrap();
        fs::remove_file(&gone).unwrap();
        let removal = record.remove_files(|role| role != FileRole::Log).unwrap();
        assert_eq!(removal.removed, std::slice::from_ref(&ram));
        assert_eq!(removal.replaced, std::slice::from_ref(&replaced));
        assert!(!ram.exists() && log.exists());
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(record.files.len(), 1, "the kept log stays recorded");
    }

    #[test]
    fn records_that_are_not_ours_are_not_trusted() {
        let (dir, run_dir, name) = setup();
        let path = LaunchRecord::path(&run_dir, &name);
        LaunchRecord::default().write(&run_dir, &name).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(LaunchRecord::read(&run_dir, &name), Err(RecordError::Untrusted { .. })));
        fs::remove_file(&path).unwrap();
        let elsewhere = dir.path().join("elsewhere.json");
        fs::write(&elsewhere, b"{\"pid\":1,\"files\":[],\"cgroups\":[]}").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let err = LaunchRecord::read(&run_dir, &name).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"not json").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(LaunchRecord::read(&run_dir, &name), Err(RecordError::Unreadable { .. })));
    }
}
