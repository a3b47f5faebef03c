//! What the mount keeps for each VM beside its RAM: the guest-physical and core views, built
//! once when the [`Watcher`] admits the VM.

use crate::guest::registers::prstatus_notes_now;
use crate::ram::views::{elf_machine, Core, Physical};
use crate::ram::SharedMemoryBridge;
use crate::vm::{Vm, VmError, VmInfo};
use crate::watcher::{WatchedVm, Watcher};

/// The mount's views of one VM.
#[derive(Debug)]
pub struct MountParts {
    /// The guest-physical address space as a file.
    pub physical: Physical,
    /// The live ELF core of the guest, with the registers of the moment it was admitted.
    pub core: Core,
}

/// A VM as the mount serves it.
pub type MountedVm = WatchedVm<MountParts>;
/// The mount's watcher of its run directory.
pub type Registry = Watcher<MountParts>;

/// The mount's views of a VM being admitted.
///
/// # Errors
///
/// None today (a monitor that fails to give registers gives a core without them); the
/// signature is the watcher's.
pub fn mount_parts(vm: &Vm, bridge: &SharedMemoryBridge, info: &VmInfo) -> Result<MountParts, VmError> {
    let physical = Physical::new(bridge.layout().clone());
    let registers = prstatus_notes_now(info, |ask| vm.with_qmp(ask));
    let core = Core::new(bridge.layout(), elf_machine(&info.arch), &registers);
    Ok(MountParts { physical, core })
}

/// The core with the vCPUs' registers as they are now (the RAM in it is live anyway).
pub fn core_now(instance: &MountedVm) -> Core {
    let registers = prstatus_notes_now(&instance.info, |ask| instance.with_qmp(ask));
    Core::new(instance.bridge.layout(), elf_machine(&instance.info.arch), &registers)
}
