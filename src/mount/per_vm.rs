//! What the mount keeps for each VM beside its RAM: the guest-physical and core dumps, built
//! once when the [`Watcher`] admits the VM.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A guest whose RAM held no vmcoreinfo is searched again after this long (it may be booting).
const VMCOREINFO_RETRY: Duration = Duration::from_secs(5);

use crate::guest::linux::{LinuxError, LinuxGuest};
use crate::guest::vmcoreinfo::VmcoreInfo;
use crate::ram::dump::{Core, Physical};
use crate::ram::{BridgeError, SharedMemoryBridge};
use crate::vm::{vcpu_notes_now, Vm, VmError, VmInfo};
use crate::watcher::{WatchedVm, Watcher};

/// What the mount keeps of one VM.
#[derive(Debug)]
pub struct MountParts {
    /// The guest-physical address space as a file.
    pub physical: Physical,
    /// The live ELF core of the guest, with the registers of the moment it was admitted.
    pub core: Core,
    /// When the guest kernel's vmcoreinfo was last looked for, and where it was found (checked
    /// again before each use).
    pub vmcoreinfo: Mutex<Option<(Instant, Option<VmcoreInfo>)>>,
    /// The guest's kernel (symbols decoded, types parsed), for the vmcoreinfo (of one boot) it
    /// was read through: a new boot has another vmcoreinfo, and is read afresh.
    pub linux: Mutex<Option<(VmcoreInfo, Arc<LinuxGuest>)>>,
}

/// A VM as the mount serves it.
pub type MountedVm = WatchedVm<MountParts>;
/// The mount's watcher of its run directory.
pub type Registry = Watcher<MountParts>;

/// What the mount keeps of a VM being admitted.
///
/// # Errors
///
/// None today (a monitor that fails to give registers gives a core without them); the
/// signature is the watcher's.
pub fn mount_parts(vm: &Vm, bridge: &SharedMemoryBridge, info: &VmInfo) -> Result<MountParts, VmError> {
    let physical = Physical::new(bridge.layout().clone());
    let registers = vcpu_notes_now(info, |ask| vm.with_qmp(ask));
    let core = Core::new(bridge.layout(), info.arch.elf_machine(), &registers, None);
    Ok(MountParts { physical, core, vmcoreinfo: Mutex::new(None), linux: Mutex::new(None) })
}

/// The guest kernel's vmcoreinfo now: where it was found last if it is still there (one page
/// read), else looked for in all of RAM; `None` for a guest that has none.
///
/// # Errors
///
/// As the copy out of RAM.
pub fn vmcoreinfo_now(instance: &MountedVm) -> Result<Option<VmcoreInfo>, BridgeError> {
    let ram = instance.bridge.mapping();
    let mut cached = instance.parts.vmcoreinfo.lock().unwrap_or_else(|e| e.into_inner());
    match cached.as_ref() {
        Some((_, Some(known))) if known.still_in(ram)? => return Ok(Some(known.clone())),
        // none was found a moment ago: a guest that has none is not searched on every open
        Some((when, None)) if when.elapsed() < VMCOREINFO_RETRY => return Ok(None),
        _ => {}
    }
    let found = crate::guest::vmcoreinfo::find(ram)?;
    *cached = Some((Instant::now(), found.clone()));
    Ok(found)
}

/// Why a Linux guest's kernel could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LinuxNowError {
    /// The RAM could not be read.
    #[error("cannot read the RAM")]
    Ram(#[from] BridgeError),
    /// The guest's RAM holds no vmcoreinfo (not Linux, or not booted yet).
    #[error("no vmcoreinfo in the guest's RAM (not a Linux guest, or not booted yet)")]
    NoVmcoreinfo,
    /// The kernel's structures could not be read.
    #[error(transparent)]
    Linux(#[from] LinuxError),
}

/// The guest's kernel now: read once per boot (per vmcoreinfo), its memory live at every use.
///
/// # Errors
///
/// No vmcoreinfo, or a kernel whose page tables or symbols cannot be read (not kept: a
/// booting kernel may be readable a moment later).
pub fn linux_now(instance: &MountedVm) -> Result<Arc<LinuxGuest>, LinuxNowError> {
    // the common case, at every open: the kernel read last, its vmcoreinfo still where it was
    {
        let cached = instance.parts.linux.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((known, guest)) = cached.as_ref() {
            if known.still_in(instance.bridge.mapping())? {
                return Ok(Arc::clone(guest));
            }
        }
    }
    let info = vmcoreinfo_now(instance)?.ok_or(LinuxNowError::NoVmcoreinfo)?;
    let mut cached = instance.parts.linux.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((known, guest)) = cached.as_ref() {
        if *known == info {
            return Ok(Arc::clone(guest));
        }
    }
    let guest = Arc::new(LinuxGuest::read(info.clone(), &instance.bridge)?);
    *cached = Some((info, Arc::clone(&guest)));
    Ok(guest)
}

/// The size of the kernel's BTF (`__stop_BTF - __start_BTF`, from its symbols), once per boot;
/// 0 for a guest whose kernel says none. `linux/btf` reports it: BTF readers take the file's
/// size before they read.
pub fn btf_size_now(instance: &MountedVm) -> u64 {
    linux_now(instance)
        .ok()
        .and_then(|guest| crate::guest::linux::btf_extent(guest.symbols()).ok())
        .map_or(0, |(_, len)| len)
}

/// The core with the vCPUs' registers as they are now (the RAM in it is live anyway).
pub fn core_now(instance: &MountedVm) -> Core {
    let registers = vcpu_notes_now(&instance.info, |ask| instance.with_qmp(ask));
    let vmcoreinfo = vmcoreinfo_now(instance).unwrap_or_else(|err| {
        log::warn!("no vmcoreinfo in the core of VM {}: {}", instance.info.name, crate::error::chain(&err));
        None
    });
    let text = vmcoreinfo.as_ref().map(|info| info.text.as_str());
    Core::new(instance.bridge.layout(), instance.info.arch.elf_machine(), &registers, text)
}
