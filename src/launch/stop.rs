//! Stopping a launched VM and removing what its launch made: `stop` for one VM that runs,
//! `clean` for those whose QEMU is gone, `stopped_vms` to list what they left.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::{io_error, is_our_qemu, LaunchError};
use crate::cgroup;
use crate::name::VmName;
use crate::process;
use crate::qmp::QmpError;
use crate::record::{FileRole, LaunchRecord, RecordError};
use crate::run_dir::RunDir;
use crate::vm::Vm;

/// The cgroup directories a launch recorded for VM `name` (in its launch record), so that
/// `stop` can remove them. No record: none.
///
/// # Errors
///
/// When the record exists but cannot be read or is not trusted.
pub fn recorded_cgroups(run_dir: &RunDir, name: &VmName) -> Result<Vec<PathBuf>, RecordError> {
    Ok(LaunchRecord::read(run_dir, name)?.map(|record| record.cgroups).unwrap_or_default())
}

/// What `stop` did.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// Whether QEMU exited through QMP `quit` (false: it was signalled or already gone).
    pub graceful: bool,
    /// Whether `qemu-bridge launch` started the VM (it has a launch record). A VM started
    /// otherwise is only asked to quit: none of its files are touched.
    pub launched: bool,
    /// Files removed (only files the launch made, each still the very file it made).
    pub removed: Vec<PathBuf>,
    /// Recorded files left alone because their path now names another file.
    pub replaced: Vec<PathBuf>,
    /// The state disk, when kept because it holds saved states (or could not be read).
    pub kept_state_disk: Option<PathBuf>,
    /// The states saved in the kept state disk (empty when it could not be read).
    pub saved_states: Vec<String>,
}

/// Quits VM `name` through QMP and waits for QEMU to exit. For a VM that `launch` started (it
/// has a launch record), a QEMU that does not exit is signalled by its recorded pid, and the
/// files and cgroups the launch made are removed, each only while its path still names the file
/// that was made; the state disk is kept (so that a VM launched again under the same name can
/// restore its saved states) unless `discard_state`. A VM started otherwise is asked to quit
/// and nothing else: its files, whatever QMP says they are, are left alone.
///
/// # Errors
///
/// [`VmError::NotFound`](crate::vm::VmError::NotFound) when there is neither socket nor record;
/// a refused QMP peer of a VM that has no record; I/O errors removing files.
pub fn stop(run_dir: &RunDir, name: &str, discard_state: bool) -> Result<Stopped, LaunchError> {
    let vm = Vm::new(run_dir, name)?;
    let record = match LaunchRecord::read(run_dir, vm.name()) {
        Ok(record) => record,
        Err(err) => {
            log::warn!("{}; treating VM {name} as not launched by qemu-bridge", crate::error::chain(&err));
            None
        }
    };
    if !vm.socket().exists() && record.is_none() {
        return Err(vm.not_found().into());
    }
    let quit = quit(&vm);
    let Some(record) = record else {
        let peer = quit?;
        // Not ours to kill: wait a while for it to take the quit, delete nothing.
        if !process::wait_for_exit(peer.pid, Duration::from_secs(10)) {
            log::warn!("VM {name} (pid {}) is still running 10 s after quit", peer.pid);
        }
        return Ok(Stopped {
            graceful: true,
            launched: false,
            removed: Vec::new(),
            replaced: Vec::new(),
            kept_state_disk: None,
            saved_states: Vec::new(),
        });
    };
    let graceful = match quit {
        Ok(_) => true,
        Err(err) => {
            log::warn!("{}; stopping by pid", crate::error::chain(&err));
            false
        }
    };
    if let Some(pid) = record.pid.filter(|&pid| is_our_qemu(pid, vm.socket())) {
        let grace = if graceful { Duration::from_secs(10) } else { Duration::from_millis(100) };
        if !process::end(pid, grace) {
            return Err(LaunchError::Io {
                what: format!("QEMU pid {pid} of VM {name} does not exit"),
                source: io::Error::from(io::ErrorKind::TimedOut),
            });
        }
    }
    tidy(run_dir, vm.name(), record, discard_state, graceful)
}

/// Removes what the launch of a VM whose QEMU has ended made (its record says what): cgroups,
/// files (each only while its path still names the file launch made), and the state disk
/// unless it holds saved states and `discard_state` is false; the record goes with the last file.
fn tidy(
    run_dir: &RunDir,
    name: &VmName,
    mut record: LaunchRecord,
    discard_state: bool,
    graceful: bool,
) -> Result<Stopped, LaunchError> {
    cgroup::remove_dirs(&std::mem::take(&mut record.cgroups));
    // a state disk is kept only for the states saved in it
    let saved_states = match record.file(FileRole::StateDisk).filter(|_| !discard_state) {
        Some(disk) => match crate::saved_state::on_disk(&disk.path) {
            Ok(states) => Some(states),
            Err(err) => {
                log::warn!("{}; keeping it", crate::error::chain(&err));
                None
            }
        },
        None => None,
    };
    let drop_state_disk = discard_state || saved_states.as_ref().is_some_and(Vec::is_empty);
    let removal = record
        .remove_files(|role| role != FileRole::StateDisk || drop_state_disk)
        .map_err(io_error(format!("cannot remove the files of VM {name}")))?;
    record.pid = None;
    let kept_state_disk = record.file(FileRole::StateDisk).map(|file| file.path.clone());
    let saved_states = saved_states.unwrap_or_default();
    let saved = if record.files.is_empty() {
        LaunchRecord::delete(run_dir, name)
    } else {
        record.write(run_dir, name)
    };
    saved.map_err(io_error(format!("cannot update the launch record of VM {name}")))?;
    Ok(Stopped {
        graceful,
        launched: true,
        removed: removal.removed,
        replaced: removal.replaced,
        kept_state_disk,
        saved_states,
    })
}

/// Tidies the run directory: for every VM `launch` started whose QEMU is gone, removes what
/// that launch made and recorded (socket, pidfile, logs, RAM file, cgroups; the state disk unless
/// it holds saved states), as `stop` would have. Touches nothing it did not record, and no VM
/// that runs.
///
/// # Errors
///
/// The first VM whose files cannot be removed.
pub fn clean(run_dir: &RunDir) -> Result<Vec<(VmName, Stopped)>, LaunchError> {
    let mut cleaned = Vec::new();
    for (name, record) in LaunchRecord::of_dead_vms(run_dir) {
        let tidied = tidy(run_dir, &name, record, false, false)?;
        cleaned.push((name, tidied));
    }
    Ok(cleaned)
}

/// A VM `launch` started that no longer runs but left files behind (a state disk with saved
/// states, or the leftovers of a QEMU that died).
#[derive(Debug, Clone)]
pub struct StoppedVm {
    /// Its name.
    pub name: VmName,
    /// Its state disk, if one is left.
    pub state_disk: Option<PathBuf>,
    /// The states saved in it.
    pub saved_states: Vec<String>,
}

/// The VMs of `run_dir` that `launch` started and that no longer run (their QEMU is gone), with
/// what they left: the records of launches whose recorded QEMU is dead.
pub fn stopped_vms(run_dir: &RunDir) -> Vec<StoppedVm> {
    LaunchRecord::of_dead_vms(run_dir)
        .into_iter()
        .map(|(name, record)| {
            let state_disk = record.file(FileRole::StateDisk).map(|file| file.path.clone());
            let saved_states = state_disk
                .as_deref()
                .filter(|disk| disk.exists())
                .and_then(|disk| crate::saved_state::on_disk(disk).ok())
                .unwrap_or_default();
            StoppedVm { name, state_disk, saved_states }
        })
        .collect()
}

/// Sends `quit` to a trusted peer: the peer, once QEMU took it.
fn quit(vm: &Vm) -> Result<crate::vm::Peer, LaunchError> {
    let (mut qmp, peer) = vm.connect_to_peer()?;
    match qmp.quit() {
        Ok(()) | Err(QmpError::Closed) => Ok(peer),
        Err(err) => Err(vm.qmp_error(err).into()),
    }
}
