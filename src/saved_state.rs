//! Saving and restoring a VM's whole state (RAM, devices, vCPUs) with QEMU's own snapshots:
//! the QMP jobs `snapshot-save`, `snapshot-load` and `snapshot-delete` (QEMU >= 6.0).
//!
//! QEMU keeps a saved state inside a qcow2 image. VMs started by [`crate::launch()`] get one
//! that the guest does not see: a block node named [`STATE_NODE`] over
//! `<run-dir>/<vm>.state.qcow2`. Every writable disk of the VM is saved and restored together
//! with it, so RAM and disks never disagree; QEMU refuses when such a disk cannot hold
//! snapshots (raw images), and that refusal is passed on.
//!
//! A restore names a state that every device holds, checked before QEMU is asked: QEMU 7.2
//! stops the VM before looking for the state and leaves it stopped in `restore-vm` when it is
//! not found.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use crate::qmp::{QmpClient, QmpError, RunState};
use crate::vm::{Vm, VmError};

/// Node name of the qcow2 image that holds saved states of launched VMs.
pub const STATE_NODE: &str = "qemu-bridge-state";

/// Default time a save, restore or delete may take.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(120);

/// Errors of saving and restoring.
#[derive(Debug, thiserror::Error)]
pub enum SavedStateError {
    /// The tag cannot name a saved state.
    #[error("invalid state name {tag:?}: {reason}")]
    InvalidTag {
        /// The tag.
        tag: String,
        /// Why.
        reason: &'static str,
    },
    /// The VM has no qcow2 image for saved states.
    #[error(
        "VM {vm} has no state disk (no block node {STATE_NODE}): start it with `qemu-bridge launch`, \
         which attaches one, or give QEMU a writable qcow2 image with node-name={STATE_NODE}"
    )]
    NoStateDisk {
        /// The VM.
        vm: String,
    },
    /// No device holds a state of that name.
    #[error("VM {vm} has no saved state {tag:?} (saved: {known})")]
    UnknownTag {
        /// The VM.
        vm: String,
        /// The tag.
        tag: String,
        /// The states it has, comma-separated, or `none`.
        known: String,
    },
    /// A state of that name exists already.
    #[error("VM {vm} already has a saved state {tag:?}: delete it first")]
    Exists {
        /// The VM.
        vm: String,
        /// The tag.
        tag: String,
    },
    /// A disk that is restored with the state lacks it.
    #[error("VM {vm}: disk {node} has no saved state {tag:?}, so RAM and disk would disagree; nothing was restored")]
    DiskLacksState {
        /// The VM.
        vm: String,
        /// The block node.
        node: String,
        /// The tag.
        tag: String,
    },
    /// A state disk no QEMU holds could not be read.
    #[error("cannot read the saved states of {path}: {reason}")]
    Inspect {
        /// The state disk.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// QEMU refused or failed.
    #[error("VM {vm}: QEMU could not {action} state {tag:?}: {desc}{}", after_failure(.state_after))]
    Refused {
        /// The VM.
        vm: String,
        /// `save`, `restore` or `delete`.
        action: &'static str,
        /// The tag.
        tag: String,
        /// QEMU's message.
        desc: String,
        /// The VM's run state afterwards, when it is no longer running although it was.
        state_after: Option<RunState>,
    },
    /// Talking to the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
}

fn after_failure(state_after: &Option<RunState>) -> String {
    match state_after {
        Some(state) => format!(
            "; the VM is left {state}: QEMU may have restored part of it \
             (`resume` continues it as it is, `reset` reboots it)"
        ),
        None => String::new(),
    }
}

/// One saved state, as the state disk lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SavedState {
    /// Its name.
    pub tag: String,
    /// When it was saved (seconds since the epoch, host clock).
    pub date: u64,
    /// Size of the saved RAM and device state in bytes.
    pub vm_state_size: u64,
    /// The guest's clock when it was saved, in nanoseconds.
    pub vm_clock_ns: u64,
}

/// Checks that `tag` can name a saved state.
///
/// # Errors
///
/// [`SavedStateError::InvalidTag`]: empty, longer than 127 bytes, control characters, or all
/// digits (QEMU looks snapshots up by id as well as by name, so `2` could find another one).
pub fn validate_tag(tag: &str) -> Result<(), SavedStateError> {
    let invalid = |reason| Err(SavedStateError::InvalidTag { tag: tag.to_string(), reason });
    if tag.is_empty() {
        return invalid("it is empty");
    }
    if tag.len() > 127 {
        return invalid("it is longer than 127 bytes");
    }
    if tag.chars().any(char::is_control) {
        return invalid("it contains control characters");
    }
    if tag.chars().all(|c| c.is_ascii_digit()) {
        return invalid("it is all digits, which QEMU would take for a snapshot id");
    }
    Ok(())
}

/// A named block node and the states it holds.
struct BlockNode {
    name: String,
    read_only: bool,
    states: Vec<SavedState>,
}

impl BlockNode {
    fn holds(&self, tag: &str) -> bool {
        self.states.iter().any(|state| state.tag == tag)
    }
}

/// Every named block node.
fn block_nodes(qmp: &mut QmpClient<UnixStream>) -> Result<Vec<BlockNode>, QmpError> {
    let reply = qmp.execute("query-named-block-nodes", Some(json!({ "flat": true })))?;
    parse_block_nodes(&reply)
}

/// The nodes of a `query-named-block-nodes` reply. A reply that is not a list is an error, not
/// "no nodes" (which would read as "no state disk").
fn parse_block_nodes(reply: &Value) -> Result<Vec<BlockNode>, QmpError> {
    let nodes = reply.as_array().ok_or_else(|| QmpError::UnexpectedReply {
        command: "query-named-block-nodes".into(),
        detail: format!("expected a list, got {reply}"),
    })?;
    Ok(nodes
        .iter()
        .filter_map(|node| {
            let name = node["node-name"].as_str()?.to_string();
            let states =
                node["image"]["snapshots"].as_array().map(|list| parse_states(list)).unwrap_or_default();
            Some(BlockNode { name, read_only: node["ro"].as_bool().unwrap_or(true), states })
        })
        .collect())
}

fn parse_states(list: &[Value]) -> Vec<SavedState> {
    list.iter()
        .filter_map(|snapshot| {
            Some(SavedState {
                tag: snapshot["name"].as_str()?.to_string(),
                date: snapshot["date-sec"].as_u64().unwrap_or(0),
                vm_state_size: snapshot["vm-state-size"].as_u64().unwrap_or(0),
                vm_clock_ns: snapshot["vm-clock-sec"].as_u64().unwrap_or(0) * 1_000_000_000
                    + snapshot["vm-clock-nsec"].as_u64().unwrap_or(0),
            })
        })
        .collect()
}

/// The state disk, then the top node of every writable disk attached to a device: the nodes
/// saved and restored together.
fn state_devices(qmp: &mut QmpClient<UnixStream>) -> Result<Vec<String>, QmpError> {
    let block = qmp.execute("query-block", None)?;
    let disks = block
        .as_array()
        .into_iter()
        .flatten()
        .filter(|device| device["inserted"]["ro"] == false)
        .filter_map(|device| device["inserted"]["node-name"].as_str().map(str::to_string))
        .filter(|node| node != STATE_NODE);
    Ok(std::iter::once(STATE_NODE.to_string()).chain(disks).collect())
}

fn job_id(action: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("qemu-bridge-{action}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

struct Session<'a> {
    vm: &'a Vm,
    qmp: QmpClient<UnixStream>,
    wait: Duration,
}

impl<'a> Session<'a> {
    fn open(vm: &'a Vm, wait: Duration) -> Result<Self, SavedStateError> {
        let mut qmp = vm.connect()?;
        // The monitor does not answer while QEMU writes or reads the state.
        qmp.set_timeout(wait).map_err(|source| vm.qmp_error(source))?;
        Ok(Self { vm, qmp, wait })
    }

    fn qmp_error(&self, source: QmpError) -> SavedStateError {
        SavedStateError::Vm(self.vm.qmp_error(source))
    }

    /// The states on the state disk, and every block node.
    fn states(&mut self) -> Result<(Vec<SavedState>, Vec<BlockNode>), SavedStateError> {
        let nodes = block_nodes(&mut self.qmp).map_err(|err| self.qmp_error(err))?;
        let states = nodes
            .iter()
            .find(|node| node.name == STATE_NODE)
            .map(|node| node.states.clone())
            .ok_or_else(|| SavedStateError::NoStateDisk { vm: self.vm.name().to_string() })?;
        Ok((states, nodes))
    }

    fn devices(&mut self) -> Result<Vec<String>, SavedStateError> {
        state_devices(&mut self.qmp).map_err(|err| self.qmp_error(err))
    }

    /// Runs QEMU's job `command`; on failure says whether it left a running VM stopped.
    fn run(
        &mut self,
        action: &'static str,
        command: &str,
        tag: &str,
        arguments: Value,
    ) -> Result<(), SavedStateError> {
        let was_running = self.qmp.query_status().map_err(|err| self.qmp_error(err))?.running;
        match self.qmp.run_job(command, &job_id(action), arguments, self.wait) {
            Ok(()) => Ok(()),
            Err(QmpError::Job { desc, .. } | QmpError::Command { desc, .. }) => {
                let state_after = match self.qmp.query_status() {
                    Ok(status) if was_running && !status.running => Some(status.status),
                    _ => None,
                };
                Err(SavedStateError::Refused {
                    vm: self.vm.name().to_string(),
                    action,
                    tag: tag.to_string(),
                    desc,
                    state_after,
                })
            }
            Err(err) => Err(self.qmp_error(err)),
        }
    }
}

fn require_state(vm: &Vm, states: &[SavedState], tag: &str) -> Result<(), SavedStateError> {
    if states.iter().any(|state| state.tag == tag) {
        return Ok(());
    }
    let known: Vec<&str> = states.iter().map(|state| state.tag.as_str()).collect();
    let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
    Err(SavedStateError::UnknownTag { vm: vm.name().to_string(), tag: tag.to_string(), known })
}

/// The names of the states saved in a state disk, read from the image itself with `qemu-img
/// info` (for a VM that is not running; `-U`, so a running QEMU's lock does not stop it).
///
/// # Errors
///
/// [`SavedStateError::Inspect`] when `qemu-img` cannot read it.
pub fn on_disk(disk: &std::path::Path) -> Result<Vec<String>, SavedStateError> {
    let inspect = |reason: String| SavedStateError::Inspect { path: disk.to_path_buf(), reason };
    let output = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U", "-f", "qcow2"])
        .arg(disk)
        .output()
        .map_err(|err| inspect(format!("cannot run qemu-img: {err}")))?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr);
        return Err(inspect(text.lines().next().unwrap_or("qemu-img failed").to_string()));
    }
    states_in_image_info(&output.stdout).map_err(inspect)
}

/// The snapshot names of `qemu-img info --output=json`.
fn states_in_image_info(json: &[u8]) -> Result<Vec<String>, String> {
    let info: Value = serde_json::from_slice(json).map_err(|err| err.to_string())?;
    match info.get("snapshots") {
        None => Ok(Vec::new()),
        Some(Value::Array(states)) => states
            .iter()
            .map(|state| state.get("name").and_then(Value::as_str).map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "a snapshot without a name".to_string()),
        Some(other) => Err(format!("snapshots is not a list: {other}")),
    }
}

/// The states saved for `vm`, oldest first.
///
/// # Errors
///
/// [`SavedStateError::NoStateDisk`]; QMP errors.
pub fn list(vm: &Vm) -> Result<Vec<SavedState>, SavedStateError> {
    let mut session = Session::open(vm, crate::qmp::DEFAULT_TIMEOUT)?;
    Ok(session.states()?.0)
}

/// Saves `vm`'s state (RAM, devices, vCPUs and its writable disks) as `tag`. QEMU pauses the
/// VM while it writes and resumes it if it was running.
///
/// # Errors
///
/// [`SavedStateError::InvalidTag`], [`SavedStateError::NoStateDisk`], [`SavedStateError::Exists`],
/// [`SavedStateError::Refused`] with QEMU's reason (for instance a writable raw disk, which cannot
/// hold snapshots); QMP errors.
pub fn save(vm: &Vm, tag: &str, wait: Duration) -> Result<SavedState, SavedStateError> {
    validate_tag(tag)?;
    let mut session = Session::open(vm, wait)?;
    let (states, _) = session.states()?;
    if states.iter().any(|state| state.tag == tag) {
        return Err(SavedStateError::Exists { vm: vm.name().to_string(), tag: tag.to_string() });
    }
    let devices = session.devices()?;
    let arguments = json!({ "tag": tag, "vmstate": STATE_NODE, "devices": devices });
    session.run("save", "snapshot-save", tag, arguments)?;
    let (states, _) = session.states()?;
    states.into_iter().find(|state| state.tag == tag).ok_or_else(|| SavedStateError::Refused {
        vm: vm.name().to_string(),
        action: "save",
        tag: tag.to_string(),
        desc: "the job succeeded but the state disk does not list the state".into(),
        state_after: None,
    })
}

/// Restores `vm` to the state saved as `tag`: RAM (the shared file is rewritten in place, so
/// readers see the restored bytes), devices, vCPUs and writable disks. A running VM runs on
/// from the restored state; a paused one stays paused.
///
/// # Errors
///
/// [`SavedStateError::UnknownTag`] and [`SavedStateError::DiskLacksState`] before anything is touched;
/// [`SavedStateError::Refused`] when QEMU fails (the message says whether the VM was left paused);
/// [`SavedStateError::NoStateDisk`]; QMP errors.
pub fn restore(vm: &Vm, tag: &str, wait: Duration) -> Result<(), SavedStateError> {
    validate_tag(tag)?;
    let mut session = Session::open(vm, wait)?;
    let (states, nodes) = session.states()?;
    require_state(vm, &states, tag)?;
    let devices = session.devices()?;
    for device in &devices {
        if !nodes.iter().any(|node| &node.name == device && node.holds(tag)) {
            return Err(SavedStateError::DiskLacksState {
                vm: vm.name().to_string(),
                node: device.clone(),
                tag: tag.to_string(),
            });
        }
    }
    let arguments = json!({ "tag": tag, "vmstate": STATE_NODE, "devices": devices });
    session.run("restore", "snapshot-load", tag, arguments)
}

/// Deletes the state saved as `tag` from every node that holds it.
///
/// # Errors
///
/// [`SavedStateError::UnknownTag`], [`SavedStateError::NoStateDisk`], [`SavedStateError::Refused`]; QMP errors.
pub fn delete(vm: &Vm, tag: &str, wait: Duration) -> Result<(), SavedStateError> {
    validate_tag(tag)?;
    let mut session = Session::open(vm, wait)?;
    let (states, nodes) = session.states()?;
    require_state(vm, &states, tag)?;
    let devices: Vec<&str> = nodes
        .iter()
        .filter(|node| !node.read_only && node.holds(tag))
        .map(|node| node.name.as_str())
        .collect();
    session.run("delete", "snapshot-delete", tag, json!({ "tag": tag, "devices": devices }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_in_qemu_img_info() {
        let info = br#"{"virtual-size": 1048576, "filename": "d.qcow2", "format": "qcow2",
            "snapshots": [{"id": "1", "name": "before", "vm-state-size": 70000},
                          {"id": "2", "name": "after", "vm-state-size": 70000}]}"#;
        assert_eq!(states_in_image_info(info).unwrap(), ["before", "after"]);
        assert_eq!(states_in_image_info(br#"{"format": "qcow2"}"#).unwrap(), Vec::<String>::new());
        assert!(states_in_image_info(br#"{"snapshots": 3}"#).is_err());
        assert!(states_in_image_info(br#"{"snapshots": [{"id": "1"}]}"#).is_err());
        assert!(states_in_image_info(b"not json").is_err());
    }

    #[test]
    fn tags() {
        for good in ["t1", "before-upgrade", "with space", "ünïcode"] {
            assert!(validate_tag(good).is_ok(), "{good}");
        }
        for bad in ["", "12", "a\nb", &"x".repeat(128)] {
            assert!(matches!(validate_tag(bad), Err(SavedStateError::InvalidTag { .. })), "{bad:?}");
        }
    }

    #[test]
    fn states_from_qemu_snapshot_info() {
        let list = json!([
            {"vm-clock-nsec": 446743954, "name": "t1", "date-sec": 1795492691, "date-nsec": 595568000,
             "vm-clock-sec": 2, "id": "1", "vm-state-size": 721179},
            {"id": "2"}
        ]);
        assert_eq!(
            parse_states(list.as_array().unwrap()),
            vec![SavedState {
                tag: "t1".into(),
                date: 1795492691,
                vm_state_size: 721179,
                vm_clock_ns: 2_446_743_954
            }]
        );
    }

    #[test]
    fn refusal_says_when_the_vm_was_left_paused() {
        let refused = |state_after: Option<RunState>| SavedStateError::Refused {
            vm: "v".into(),
            action: "restore",
            tag: "t".into(),
            desc: "boom".into(),
            state_after,
        };
        assert_eq!(refused(None).to_string(), "VM v: QEMU could not restore state \"t\": boom");
        assert!(refused(Some(RunState::RestoreVm)).to_string().contains("the VM is left restore-vm"));
    }

    #[test]
    fn a_malformed_block_node_list_is_an_error_not_a_missing_state_disk() {
        assert!(matches!(parse_block_nodes(&json!({"oops": 1})), Err(QmpError::UnexpectedReply { .. })));
        let nodes =
            parse_block_nodes(&json!([{"node-name": STATE_NODE, "ro": false}, {"ro": true}])).unwrap();
        assert_eq!(nodes.len(), 1);
        assert!(!nodes[0].read_only);
    }
}
