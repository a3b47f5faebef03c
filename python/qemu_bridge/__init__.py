"""qemu_bridge: the memory of running QEMU virtual machines, read from Python.

    import qemu_bridge
    vm = qemu_bridge.open("web")                   # a VM of the run directory, by name
    print(vm.status(), vm.arch, vm.ram_size)
    print(vm.read(0x1000, 16))                     # guest-physical memory, copied
    page = vm.view(0x1000, 4096)                   # or a read-only memoryview of it, live
    if vm.linux:                                   # a Linux guest's kernel, from its memory
        print(vm.linux.version)
        for task in vm.linux.tasks():
            print(task.pid, task.comm)

The run directory is the one the ``qemu-bridge`` command uses: ``$QEMU_BRIDGE_RUN_DIR``, else
``/run/qemu-bridge`` for root, else ``$XDG_RUNTIME_DIR/qemu-bridge``; every function that finds
VMs takes ``run_dir=`` too. drgn on the live guest: :mod:`qemu_bridge.drgn`; Volatility 3:
:mod:`qemu_bridge.volatility`; the small standard-library QMP client: :mod:`qemu_bridge.qmp`.
"""

from ._native import (
    AddressError,
    ChangeSet,
    Changes,
    GuestError,
    Linux,
    Module,
    NoSuchVmError,
    Process,
    QmpError,
    QmpTimeoutError,
    RamView,
    RefusedError,
    Symbol,
    Task,
    Vm,
    list,
    open,
)

__all__ = [
    "AddressError",
    "ChangeSet",
    "Changes",
    "GuestError",
    "Linux",
    "Module",
    "NoSuchVmError",
    "Process",
    "QmpError",
    "QmpTimeoutError",
    "RamView",
    "RefusedError",
    "Symbol",
    "Task",
    "Vm",
    "list",
    "open",
]
