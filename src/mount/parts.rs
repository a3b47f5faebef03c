//! What the mount keeps for each VM beside its RAM: the guest-physical and core views, built
//! once when the [`Watcher`] admits the VM.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A guest whose RAM held no vmcoreinfo is searched again after this long (it may be booting).
const VMCOREINFO_RETRY: Duration = Duration::from_secs(5);

use crate::guest::registers::vcpu_notes_now;
use crate::guest::vmcoreinfo::VmcoreInfo;
use crate::ram::views::{elf_machine, Core, Physical};
use crate::ram::{BridgeError, SharedMemoryBridge};
use crate::vm::{Vm, VmError, VmInfo};
use crate::watcher::{WatchedVm, Watcher};

/// The mount's views of one VM.
#[derive(Debug)]
pub struct MountParts {
    /// The guest-physical address space as a file.
    pub physical: Physical,
    /// The live ELF core of the guest, with the registers of the moment it was admitted.
    pub core: Core,
    /// When the guest kernel's vmcoreinfo was last looked for, and where it was found (checked
    /// again before each use).
    pub vmcoreinfo: Mutex<Option<(Instant, Option<VmcoreInfo>)>>,
    /// The size of the kernel's BTF, for the vmcoreinfo (of one boot) it was found through:
    /// `linux/btf` reports it, because BTF readers take the file's size before they read.
    pub btf_size: Mutex<Option<(VmcoreInfo, u64)>>,
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
    let registers = vcpu_notes_now(info, |ask| vm.with_qmp(ask));
    let core = Core::new(bridge.layout(), elf_machine(&info.arch), &registers, None);
    Ok(MountParts { physical, core, vmcoreinfo: Mutex::new(None), btf_size: Mutex::new(None) })
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

/// The size of the kernel's BTF (`__stop_BTF - __start_BTF`, from its symbols), once per boot;
/// 0 for a guest whose kernel says none.
pub fn btf_size_now(instance: &MountedVm) -> u64 {
    let Ok(Some(info)) = vmcoreinfo_now(instance) else { return 0 };
    let mut cached = instance.parts.btf_size.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((known, size)) = cached.as_ref() {
        if *known == info {
            return *size;
        }
    }
    let size = crate::guest::linux::LinuxKernel::new(info.clone())
        .and_then(|kernel| {
            use crate::guest::linux::kallsyms;
            crate::guest::linux::btf_extent(&kallsyms::parse(&kallsyms::read_tables(
                &kernel,
                &instance.bridge,
            )?)?)
        })
        .map_or(0, |(_, len)| len);
    *cached = Some((info, size));
    size
}

/// The core with the vCPUs' registers as they are now (the RAM in it is live anyway).
pub fn core_now(instance: &MountedVm) -> Core {
    let registers = vcpu_notes_now(&instance.info, |ask| instance.with_qmp(ask));
    let vmcoreinfo = vmcoreinfo_now(instance).unwrap_or_else(|err| {
        log::warn!("no vmcoreinfo in the core of VM {}: {}", instance.info.name, crate::error::chain(&err));
        None
    });
    let text = vmcoreinfo.as_ref().map(|info| info.text.as_str());
    Core::new(instance.bridge.layout(), elf_machine(&instance.info.arch), &registers, text)
}
