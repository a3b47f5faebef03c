"""drgn on a live Linux guest, in process, with no debug info package.

    import qemu_bridge
    from qemu_bridge.drgn import program
    from drgn.helpers.linux.pid import for_each_task

    prog = program(qemu_bridge.open("web"))
    print(prog["init_uts_ns"].name.release.string_().decode())
    for task in for_each_task(prog):
        print(task.pid.value_(), task.comm.string_().decode())

How: the guest's RAM ranges become drgn's physical memory segments (read zero-copy through
``vm.view``); ``set_linux_kernel_custom`` sets the kernel up from its vmcoreinfo text (page
tables, KASLR offset); types come from the kernel's own BTF (parsed by :mod:`qemu_bridge._btf`,
turned into drgn types lazily), symbols from its kallsyms. BTF describes types, functions and
per-CPU variables, not other globals: those get their type from a table of the globals drgn's
helpers use (:data:`GLOBALS`), and enumerators are found as constants.

The console command ``qemu-bridge-drgn [--run-dir DIR] VM [-e CODE | SCRIPT [ARGS...]]``
opens drgn's own shell (or runs the code) on such a program, with drgn's helpers imported.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from typing import Any, Callable

import drgn
from drgn import (
    Architecture,
    FindObjectFlags,
    Object,
    Platform,
    PlatformFlags,
    Program,
    Qualifiers,
    Symbol,
    SymbolBinding,
    SymbolIndex,
    SymbolKind,
    TypeEnumerator,
    TypeKind,
    TypeMember,
    TypeParameter,
)

from . import _btf

__all__ = ["program", "main", "GLOBALS"]

_PLATFORMS = {
    "x86_64": Architecture.X86_64,
    "aarch64": Architecture.AARCH64,
    "riscv64": Architecture.RISCV64 if hasattr(Architecture, "RISCV64") else Architecture.UNKNOWN,
}

# Globals the kernel does not describe in BTF (only per-CPU variables are there), with the type
# the kernel declares them with ("A|B": A, else B where A is not in this kernel's BTF; array
# lengths: see _Objects._global_type). Taken from what drgn's helpers (drgn.helpers.linux.*) and
# its C helpers look up by name; each is checked against DWARF by tests/test_drgn.py.
GLOBALS: dict[str, str] = {
    # tasks, pids, namespaces
    "init_task": "struct task_struct",
    "init_pid_ns": "struct pid_namespace",
    "init_uts_ns": "struct uts_namespace",
    "init_user_ns": "struct user_namespace",
    "init_ipc_ns": "struct ipc_namespace",
    "init_nsproxy": "struct nsproxy",
    "init_cred": "struct cred",
    "init_fs": "struct fs_struct",
    "init_files": "struct files_struct",
    "init_net": "struct net",
    "init_mm": "struct mm_struct",
    "init_css_set": "struct css_set",
    "cgrp_dfl_root": "struct cgroup_root",
    "root_task_group": "struct task_group",
    "pid_hash": "struct hlist_head *",
    "pidhash_shift": "unsigned int",
    "pid_max": "int",
    "nr_threads": "int",
    "task_state_array": "const char *const []",
    "task_struct_cachep": "struct kmem_cache *",
    "thread_stack_cache": "struct kmem_cache *",
    "avenrun": "unsigned long [3]",
    "jiffies": "unsigned long",
    "jiffies_64": "u64",
    # modules
    "modules": "struct list_head",
    "mod_tree": "struct mod_tree_root",
    # printk
    "prb": "struct printk_ringbuffer *",
    "printk_rb_static": "struct printk_ringbuffer",
    "printk_rb_dynamic": "struct printk_ringbuffer",
    "clear_seq": "struct latched_seq|u64",
    "log_buf": "char *",
    "log_buf_len": "u32",
    "log_first_idx": "u32",
    "log_next_idx": "u32",
    "log_first_seq": "u64",
    "log_next_seq": "u64",
    # memory
    "page_offset_base": "unsigned long",
    "vmemmap_base": "unsigned long",
    "vmalloc_base": "unsigned long",
    "phys_base": "unsigned long",
    "max_pfn": "unsigned long",
    "max_low_pfn": "unsigned long",
    "min_low_pfn": "unsigned long",
    "max_mapnr": "unsigned long",
    "mem_map": "struct page *",
    "mem_section": "struct mem_section **",
    "node_data": "pg_data_t *[]",
    "contig_page_data": "struct pglist_data",
    "node_states": "nodemask_t []",
    "memblock": "struct memblock",
    "totalram_pages": "unsigned long",
    "_totalram_pages": "atomic_long_t",
    "totalreserve_pages": "unsigned long",
    "total_swap_pages": "long",
    "nr_swapfiles": "unsigned int",
    "swap_info": "struct swap_info_struct *[]",
    "vm_zone_stat": "atomic_long_t [NR_VM_ZONE_STAT_ITEMS]",
    "vm_node_stat": "atomic_long_t [NR_VM_NODE_STAT_ITEMS]",
    "vm_numa_event": "atomic_long_t [NR_VM_NUMA_EVENT_ITEMS]",
    "vm_committed_as": "struct percpu_counter",
    "sysctl_overcommit_ratio": "int",
    "sysctl_overcommit_kbytes": "unsigned long",
    "vmap_area_list": "struct list_head",
    "vmap_area_root": "struct rb_root",
    "vmap_nodes": "struct vmap_node *",
    "nr_vmap_nodes": "unsigned int",
    "vmap_zone_size": "unsigned int",
    "slab_caches": "struct list_head",
    "slab_kset": "struct kset *",
    "memory_subsys": "struct bus_type",
    "sections_per_block": "int",
    "swapper_pg_dir": "pgd_t []",
    "init_top_pgt": "pgd_t []",
    "hugetlb_max_hstate": "int",
    "hstates": "struct hstate []",
    # CPUs
    "__per_cpu_offset": "unsigned long []",
    # per-CPU variables: BTF has them (VAR in .data..percpu) from pahole 1.18 on; Linux 5.10's
    # BTF (Debian 11) does not
    "runqueues": "struct rq",
    "current_task": "struct task_struct *",
    "cpu_number": "int",
    "this_cpu_off": "unsigned long",
    "kstat": "struct kernel_stat",
    "kernel_cpustat": "struct kernel_cpustat",
    "irq_stat": "irq_cpustat_t",
    "cpu_info": "struct cpuinfo_x86",
    "hrtimer_bases": "struct hrtimer_cpu_base",
    "tick_cpu_device": "struct tick_device",
    "softnet_data": "struct softnet_data",
    "vm_event_states": "struct vm_event_state",
    "cpu_hw_events": "struct cpu_hw_events",
    "nr_cpu_ids": "unsigned int",
    "__cpu_possible_mask": "struct cpumask",
    "__cpu_online_mask": "struct cpumask",
    "__cpu_present_mask": "struct cpumask",
    "__cpu_active_mask": "struct cpumask",
    "__cpu_dying_mask": "struct cpumask",
    "cpu_possible_mask": "const struct cpumask *",
    "cpu_online_mask": "const struct cpumask *",
    "cpu_present_mask": "const struct cpumask *",
    "cpu_active_mask": "const struct cpumask *",
    "cpu_bit_bitmap": "const unsigned long [65][]",
    # files, devices, misc
    "super_blocks": "struct list_head",
    "blockdev_superblock": "struct super_block *",
    "block_class": "struct class",
    "devices_kset": "struct kset *",
    "ioport_resource": "struct resource",
    "iomem_resource": "struct resource",
    "pci_root_buses": "struct list_head",
    "net_namespace_list": "struct list_head",
    "prog_idr": "struct idr",
    "map_idr": "struct idr",
    "link_idr": "struct idr",
    "btf_idr": "struct idr",
    "nr_irqs": "int",
    "irq_desc_tree": "struct xarray|struct radix_tree_root",
    "sparse_irqs": "struct maple_tree",
    "panic_cpu": "atomic_t",
    "crashing_cpu": "int",
    "sysctl_panic_on_oops": "int",
    "tainted_mask": "unsigned long",
    "system_state": "enum system_states",
    "saved_command_line": "char *",
    "boot_command_line": "char []",
    "linux_banner": "const char [NUL]",
    "init_thread_union": "union thread_union",
    "userspace_init_fs": "struct fs_struct *",
    "nr_node_ids": "unsigned int",
    "__highest_present_section_nr": "unsigned long",
    "nr_swap_pages": "atomic_long_t",
    "nr_swapper_spaces": "unsigned int [=swap_info]",
    "swapper_spaces": "struct address_space *[=swap_info]",
    "stack_slabs": "void *[]",
    "taint_flags": "const struct taint_flag [~]",
    "vermagic": "const char [NUL]",
    "uidhash_table": "struct hlist_head [128]",
    "softirq_vec": "struct softirq_action [NR_SOFTIRQS]",
    "idt_table": "gate_desc [256]",
    "poll_spurious_irq_timer": "struct timer_list",
    "init_time_ns": "struct time_namespace",
    "ipc_mni_shift": "int",
    "sysfs_root_kn": "struct kernfs_node *",
    "bus_kset": "struct kset *",
    "class_kset": "struct kset *",
    "bus_ktype": "struct kobj_type",
    "class_ktype": "struct kobj_type",
    "device_ktype": "struct kobj_type",
    "driver_ktype": "struct kobj_type",
    "module_ktype": "struct kobj_type",
    "pci_bus_type": "struct bus_type",
    "cdev_map": "struct kobj_map *",
    "chrdevs": "struct char_device_struct *[255]",
    "major_names": "struct blk_major_name *[255]",
    "arp_tbl": "struct neigh_table",
    # a type of its own, unnamed: static struct { seqcount_raw_spinlock_t seq; struct timekeeper
    # timekeeper; } tk_core (kernel/time/timekeeping.c)
    "tk_core": "<tk_core>",
}

_QUALIFIERS = {_btf.CONST: Qualifiers.CONST, _btf.VOLATILE: Qualifiers.VOLATILE, _btf.RESTRICT: Qualifiers.RESTRICT}
_MAX_DEPTH = 64


class _BtfTypes:
    """drgn types made from BTF types, on demand, cached by BTF id. Struct members and function
    parameters are lazy (drgn evaluates them on first use), which also breaks the cycles of
    self-referencing structs; the other kinds are built eagerly, with a depth bound against
    hostile cycles (ptr -> ptr -> ...)."""

    def __init__(self, prog: Program, btf: _btf.Btf):
        self.prog = prog
        self.btf = btf
        self._cache: dict[int, drgn.Type] = {}
        self._complete: dict[tuple[int, str], int | None] = {}

    def type(self, tid: int, depth: int = 0) -> drgn.Type:
        t = self._cache.get(tid)
        if t is not None:
            return t
        if depth > _MAX_DEPTH:
            raise ValueError(f"BTF type {tid}: nested deeper than {_MAX_DEPTH} (a cycle?)")
        t = self._make(tid, depth)
        self._cache[tid] = t
        return t

    def _complete_of(self, kind: int, name: str) -> int | None:
        """The id of the complete struct/union named so, for a forward declaration."""
        key = (kind, name)
        if key not in self._complete:
            found = None
            for cand in self.btf.by_name(name):
                if self.btf.kind(cand) == kind:
                    found = cand
                    break
            self._complete[key] = found
        return self._complete[key]

    def _make(self, tid: int, depth: int) -> drgn.Type:
        prog = self.prog
        b = self.btf.get(tid)
        k = b.kind
        d = depth + 1
        if k == _btf.UNKN:
            return prog.void_type()
        if k == _btf.INT:
            if b.encoding & _btf.INT_BOOL:
                return prog.bool_type(b.name, b.size)
            return prog.int_type(b.name, b.size, bool(b.encoding & _btf.INT_SIGNED))
        if k == _btf.FLOAT:
            return prog.float_type(b.name, b.size)
        if k == _btf.PTR:
            return prog.pointer_type(self.type(b.type, d))
        if k == _btf.ARRAY:
            self._check_object_type(b.type, f"BTF type {tid} (array)")
            return prog.array_type(self.type(b.type, d), b.nelems)
        if k == _btf.TYPEDEF:
            return prog.typedef_type(b.name, self.type(b.type, d))
        if k in _QUALIFIERS:
            inner = self.type(b.type, d)
            return inner.qualified(inner.qualifiers | _QUALIFIERS[k])
        if k in (_btf.TYPE_TAG, _btf.DECL_TAG):
            return self.type(b.type, d)
        if k in (_btf.STRUCT, _btf.UNION):
            for i, m in enumerate(b.members):
                self._check_object_type(m.type, f"BTF type {tid} ({b.name or 'anonymous'}) member {i}")
            last = len(b.members) - 1
            members = [self._member(m, tid, i == last) for i, m in enumerate(b.members)]
            make = prog.struct_type if k == _btf.STRUCT else prog.union_type
            return make(b.name, b.size, members)
        if k in (_btf.ENUM, _btf.ENUM64):
            if not b.enumerators:
                return prog.enum_type(b.name)
            compat = prog.int_type(
                ("" if b.signed else "unsigned ") + {1: "char", 2: "short", 4: "int", 8: "long"}[b.size],
                b.size,
                b.signed,
            )
            return prog.enum_type(b.name, compat, [TypeEnumerator(e.name, e.value) for e in b.enumerators])
        if k == _btf.FWD:
            full_kind = _btf.UNION if b.kind_flag else _btf.STRUCT
            full = self._complete_of(full_kind, b.name) if b.name else None
            if full is not None:
                return self.type(full, d)
            return (prog.union_type if b.kind_flag else prog.struct_type)(b.name)
        if k == _btf.FUNC_PROTO:
            params = [TypeParameter(self._lazy(p.type, tid), p.name) for p in b.params]
            return prog.function_type(self.type(b.type, d), params, b.variadic)
        if k in (_btf.FUNC, _btf.VAR):
            return self.type(b.type, d)
        if k == _btf.DATASEC:
            raise ValueError(f"BTF type {tid}: a DATASEC is not a type")
        raise ValueError(f"BTF type {tid}: unsupported kind {k}")

    _NOT_OBJECTS = (_btf.UNKN, _btf.FUNC, _btf.FUNC_PROTO, _btf.VAR, _btf.DATASEC, _btf.DECL_TAG)

    def _check_object_type(self, ref: int, where: str) -> None:
        """A member or array element must have a size: not void, not a function."""
        kind = self.btf.resolve(ref).kind
        if kind in self._NOT_OBJECTS:
            raise ValueError(f"{where}: of type {ref}, a {_btf.KIND_NAMES.get(kind, 'void')}, which has no size")

    def _lazy(self, ref: int, owner: int) -> Callable[[], drgn.Type]:
        return lambda: self.type(ref)

    def _member(self, m: _btf.Member, owner: int, last: bool) -> TypeMember:
        bit_size = m.bit_size
        if last and self.btf.kind(m.type) == _btf.ARRAY and self.btf.get(m.type).nelems == 0:
            # BTF writes a flexible array member (`T x[]`) as an array of 0 elements: give it no
            # length, as C (and drgn from DWARF) does; a `[0]` elsewhere keeps its 0.
            elem = self.btf.get(m.type).type
            return TypeMember(lambda: self.prog.array_type(self.type(elem)), m.name, m.bit_offset)
        bit_offset = m.bit_offset
        if bit_size:
            ref = m.type
            return TypeMember(lambda: Object(self.prog, self.type(ref), bit_field_size=bit_size), m.name, bit_offset)
        # Without kind_flag, a bit field is a member whose int type has fewer bits than its size.
        target = self.btf.resolve(m.type)
        if target.kind == _btf.INT and target.bits != target.size * 8:
            ref = m.type
            bits = target.bits
            return TypeMember(
                lambda: Object(self.prog, self.type(ref), bit_field_size=bits), m.name, bit_offset + target.int_offset
            )
        return TypeMember(self._lazy(m.type, owner), m.name, bit_offset)

    # -- finders --

    _KINDS = {
        TypeKind.STRUCT: (_btf.STRUCT,),
        TypeKind.UNION: (_btf.UNION,),
        TypeKind.ENUM: (_btf.ENUM, _btf.ENUM64),
        TypeKind.TYPEDEF: (_btf.TYPEDEF,),
        TypeKind.INT: (_btf.INT,),
        TypeKind.BOOL: (_btf.INT,),
        TypeKind.FLOAT: (_btf.FLOAT,),
    }
    _FWD_OF = {TypeKind.STRUCT: False, TypeKind.UNION: True}

    def find_type(self, prog: Program, kinds: Any, name: str, filename: str | None) -> drgn.Type | None:
        ids = self.btf.by_name(name)
        if not ids:
            return None
        fallback = None
        for kind in kinds:
            wanted = self._KINDS.get(kind)
            if not wanted:
                continue
            for tid in ids:
                bk = self.btf.kind(tid)
                if bk in wanted:
                    if bk == _btf.INT:
                        bt = self.btf.get(tid)
                        is_bool = bool(bt.encoding & _btf.INT_BOOL)
                        if is_bool != (kind == TypeKind.BOOL):
                            continue
                    if bk in (_btf.ENUM, _btf.ENUM64) and not self.btf.get(tid).enumerators:
                        fallback = fallback or tid
                        continue
                    return self.type(tid)
                if bk == _btf.FWD and kind in self._FWD_OF:
                    if bool(self.btf.get(tid).kind_flag) == self._FWD_OF[kind]:
                        fallback = fallback or tid
        if fallback is not None:
            return self.type(fallback)
        return None


class _Objects:
    """Objects by name: BTF functions and per-CPU variables, the :data:`GLOBALS` table, and
    enumerators (constants). Addresses come from kallsyms."""

    def __init__(self, types: _BtfTypes, symbols: _Kallsyms, vmcoreinfo: str):
        self.lengths: dict[str, int] = {}
        for line in vmcoreinfo.splitlines():
            if line.startswith("LENGTH(") and ")=" in line:
                key, _, value = line[len("LENGTH("):].partition(")=")
                try:
                    self.lengths[key] = int(value, 10)
                except ValueError:
                    pass
        self.types = types
        self.btf = types.btf
        self.symbols = symbols  # name -> (address, size, kind letter)
        self._unknown_function: drgn.Type | None = None

    def find(self, prog: Program, name: str, flags: FindObjectFlags, filename: str | None) -> Object | None:
        if flags & FindObjectFlags.CONSTANT:
            e = self.btf.enumerator(name)
            if e is not None:
                tid, value = e
                return Object(prog, self.types.type(tid), value=value)
        sym = self.symbols.get(name)
        if sym is None:
            return None
        address, size, letter = sym
        for tid in self.btf.by_name(name):
            kind = self.btf.kind(tid)
            if kind == _btf.FUNC and flags & FindObjectFlags.FUNCTION:
                return Object(prog, self.types.type(tid), address=address)
            if kind == _btf.VAR and flags & FindObjectFlags.VARIABLE:
                return Object(prog, self.types.type(tid), address=address)
        if flags & FindObjectFlags.FUNCTION and letter in "tTwW":
            # a function BTF does not describe (Linux 5.10's BTF leaves out __init functions,
            # which drgn probes: vmemmap_populate): `void ()`, of unknown parameters
            if self._unknown_function is None:
                self._unknown_function = prog.function_type(prog.void_type(), (), True)
            return Object(prog, self._unknown_function, address=address)
        if flags & FindObjectFlags.VARIABLE:
            expr = GLOBALS.get(name)
            if expr is not None:
                for alternative in expr.split("|"):  # the kernel's type changed over versions
                    try:
                        return Object(prog, self._global_type(prog, name, alternative.strip(), address, size),
                                      address=address)
                    except LookupError:
                        continue
        return None

    def _global_type(self, prog: Program, name: str, expr: str, address: int, size: int) -> drgn.Type:
        """The type of a global, from its :data:`GLOBALS` expression:

        - ``T``: as drgn parses it, the kernel's types coming from BTF; ``<tk_core>``: built here;
        - ``T [*]``: an array of unknown length; ``char [NUL]``: up to the first NUL in memory;
        - ``T [ENUMERATOR]``: of the length that enumerator of the kernel's BTF has; ``T [=G]``: as
          long as the global G; ``T [~]``: the symbol's size over the element's, less trailing
          all-zero elements;
        - ``T []``: of the length vmcoreinfo gives (``LENGTH(name)=``), else the symbol's size
          over the element's; ``T [N][]``: N arrays, of that size over N. kallsyms sizes run to
          the next symbol: an array of string pointers is cut after its last non-NULL element
          (the rest is zeroed alignment padding, as after ``task_state_array``).
        """
        if expr == "<tk_core>":
            seq = _first_type(prog, "seqcount_raw_spinlock_t", "seqcount_t")  # 5.10: seqcount_raw_spinlock_t too
            tk = prog.type("struct timekeeper")
            offset = -(-drgn.sizeof(seq) // drgn.alignof(tk)) * drgn.alignof(tk)
            size = -(-(offset + drgn.sizeof(tk)) // drgn.alignof(tk)) * drgn.alignof(tk)
            return prog.struct_type(
                None, size, [TypeMember(seq, "seq", 0), TypeMember(tk, "timekeeper", 8 * offset)]
            )
        if expr.endswith("[*]"):
            return prog.array_type(prog.type(expr[:-3].rstrip()))
        if expr.endswith("[NUL]"):  # a string initialised in place: its length, NUL included
            data = prog.read(address, min(size or 4096, 4096))
            end = data.find(b"\0")
            return prog.array_type(prog.type(expr[:-5].rstrip()), end + 1 if end >= 0 else len(data))
        if expr.endswith("[~]"):  # an array of non-zero entries, then zeroed padding
            elem = prog.type(expr[:-3].rstrip())
            elem_size = drgn.sizeof(elem)
            length = size // elem_size if size and elem_size else 0
            data = prog.read(address, length * elem_size)
            while length and data[(length - 1) * elem_size:length * elem_size].count(0) == elem_size:
                length -= 1
            return prog.array_type(elem, length)
        if expr.endswith("]") and not expr.endswith("[]"):
            at = expr.rindex("[")
            count = expr[at + 1:-1]
            if count.startswith("="):  # as long as another global of the table
                other = self.symbols.get(count[1:])
                expr_other = GLOBALS.get(count[1:])
                if other is None or expr_other is None or count[1:] == name:
                    raise LookupError(f"no global {count[1:]}")
                length = self._global_type(prog, count[1:], expr_other, other[0], other[1]).length
                return prog.array_type(prog.type(expr[:at].rstrip()), length)
            if not count.isdigit():
                found = self.btf.enumerator(count)
                if found is None:
                    raise LookupError(f"no enumerator {count} in BTF")
                return prog.array_type(prog.type(expr[:at].rstrip()), found[1])
        if not expr.endswith("[]"):
            return prog.type(expr)
        base = expr[:-2].rstrip()
        outer = None
        if base.endswith("]"):
            at = base.rindex("[")
            outer = int(base[at + 1:-1])
            base = base[:at].rstrip()
        elem = prog.type(base)
        elem_size = drgn.sizeof(elem)
        length = size // elem_size if size and elem_size else 0
        if outer is None and name in self.lengths:
            return prog.array_type(elem, self.lengths[name])
        if outer is not None:
            return prog.array_type(prog.array_type(elem, length // outer if outer else 0), outer)
        if length and _is_string_pointer(elem):
            try:
                data = prog.read(address, length * elem_size)
            except drgn.FaultError:
                data = b""
            while length and data[(length - 1) * elem_size:length * elem_size].count(0) == elem_size:
                length -= 1
        return prog.array_type(elem, length)


def _first_type(prog: Program, *names: str) -> drgn.Type:
    for name in names[:-1]:
        try:
            return prog.type(name)
        except LookupError:
            continue
    return prog.type(names[-1])


def _is_string_pointer(t: drgn.Type) -> bool:
    t = t.unaliased()
    if t.kind != TypeKind.POINTER:
        return False
    target = t.type.unaliased()
    return target.kind == TypeKind.INT and target.size == 1


_BINDING_KIND = {
    "t": (SymbolBinding.LOCAL, SymbolKind.FUNC),
    "T": (SymbolBinding.GLOBAL, SymbolKind.FUNC),
    "w": (SymbolBinding.WEAK, SymbolKind.FUNC),
    "W": (SymbolBinding.WEAK, SymbolKind.FUNC),
    "v": (SymbolBinding.WEAK, SymbolKind.OBJECT),
    "V": (SymbolBinding.WEAK, SymbolKind.OBJECT),
}


def _binding_kind(letter: str) -> tuple[SymbolBinding, SymbolKind]:
    found = _LETTERS.get(letter)
    if found is not None:
        return found
    if letter in _BINDING_KIND:
        return _BINDING_KIND[letter]
    binding = SymbolBinding.GLOBAL if letter.isupper() else SymbolBinding.LOCAL
    if letter in "aA":
        return binding, SymbolKind.UNKNOWN
    return binding, SymbolKind.OBJECT


_LETTERS: dict[str, tuple[SymbolBinding, SymbolKind]] = {}
_LETTERS.update((c, _binding_kind(c)) for c in "aAbBdDgGrRsStTvVwW?")


class _Kallsyms:
    """The kernel's kallsyms: ``get(name)`` -> ``(address, size, kind letter)`` of the first
    symbol of a name (as readers of /proc/kallsyms do), asked of the library's index, and a drgn
    symbol finder over all of them, built on first use (stack traces, ``prog.symbol``): making
    ~100k drgn ``Symbol`` objects is most of what it costs. Sizes run to the next symbol's
    address."""

    def __init__(self, linux: Any):
        self.get: Callable[[str], tuple[int, int, str] | None] = linux.symbol_info
        self._linux = linux
        self._index: Any = None

    def _build(self) -> Any:
        entries = sorted(((s.address, s.kind, s.name) for s in self._linux.kallsyms()), key=lambda e: e[0])
        sizes: dict[int, int] = {}
        n = len(entries)
        i = 0
        while i < n:
            address = entries[i][0]
            j = i + 1
            while j < n and entries[j][0] == address:
                j += 1
            size = entries[j][0] - address if j < n else 0
            sizes[address] = size if size <= 1 << 30 else 0  # not across areas (percpu, text, modules)
            i = j
        return SymbolIndex([Symbol(nm, a, sizes[a], *_binding_kind(kind)) for a, kind, nm in entries])

    def __call__(self, prog: Program, name: str | None, address: int | None, one: bool) -> Any:
        if self._index is None:
            self._index = self._build()
        return self._index(prog, name, address, one)


def _platform(arch: str) -> Platform:
    a = _PLATFORMS.get(arch)
    if a is None or a == Architecture.UNKNOWN:
        raise ValueError(f"drgn: unsupported guest architecture {arch!r}")
    return Platform(a, PlatformFlags.IS_64_BIT | PlatformFlags.IS_LITTLE_ENDIAN)


def _reader(vm: Any) -> Callable[[int, int, int, bool], Any]:
    view = getattr(vm, "view", None)
    if view is not None:
        return lambda address, count, offset, physical: view(address, count)
    return lambda address, count, offset, physical: vm.read(address, count)


def program(vm: Any, *, load_debug_info: bool = False) -> Program:
    """A drgn :class:`~drgn.Program` of the Linux guest of ``vm`` (a :class:`qemu_bridge.Vm`),
    reading its memory live: types from the kernel's BTF, symbols from its kallsyms, no DWARF
    unless ``load_debug_info`` (then drgn's default search for a vmlinux, best effort)."""
    linux = vm.linux
    if linux is None:
        raise ValueError("drgn: the guest runs no Linux kernel that qemu-bridge recognises")
    vmcoreinfo = linux.vmcoreinfo
    if isinstance(vmcoreinfo, str):
        vmcoreinfo = vmcoreinfo.encode()
    prog = Program(_platform(vm.arch))
    read = _reader(vm)
    for region in vm.layout():
        start, size = int(region["start"]), int(region["size"])
        if size > 0:
            prog.add_memory_segment(start, size, read, physical=True)
    prog.set_linux_kernel_custom(vmcoreinfo, True)

    btf = _btf.Btf(linux.btf())
    types = _BtfTypes(prog, btf)
    kallsyms = _Kallsyms(linux)
    objects = _Objects(types, kallsyms, vmcoreinfo.decode("utf-8", "replace"))

    prog.register_symbol_finder("qemu-bridge-kallsyms", kallsyms, enable_index=0)
    prog.register_type_finder("qemu-bridge-btf", types.find_type, enable_index=-1)
    prog.register_object_finder("qemu-bridge-btf", objects.find, enable_index=-1)
    prog.cache["qemu_bridge_btf"] = btf
    if load_debug_info:
        try:
            prog.load_default_debug_info()
        except drgn.MissingDebugInfoError as e:  # best effort: BTF and kallsyms still serve
            import warnings

            warnings.warn(f"qemu_bridge.drgn: {e}", stacklevel=2)
    return prog


def _interactive_globals(prog: Program) -> dict[str, Any]:
    env: dict[str, Any] = {"prog": prog, "drgn": drgn}
    for name in drgn.__all__:
        env[name] = getattr(drgn, name)
    import importlib
    import pkgutil

    for package in (importlib.import_module("drgn.helpers.common"), importlib.import_module("drgn.helpers.linux")):
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            try:
                module = importlib.import_module(info.name)
            except Exception:  # noqa: BLE001 -- a helper module that needs what we lack
                continue
            for name in getattr(module, "__all__", ()):
                env[name] = getattr(module, name)
    return env


def main(argv: list[str] | None = None) -> int:
    """``qemu-bridge-drgn [--run-dir DIR] VM [-e CODE | SCRIPT [ARGS...]]``"""
    parser = argparse.ArgumentParser(
        prog="qemu-bridge-drgn",
        description="drgn on a live Linux guest of qemu-bridge: types from its BTF, symbols from its kallsyms.",
    )
    parser.add_argument("--run-dir", help="qemu-bridge's run directory")
    parser.add_argument("--debug-info", action="store_true", help="also load DWARF (drgn's default search)")
    parser.add_argument("-e", dest="exec", metavar="CODE", help="run this code, then exit")
    parser.add_argument("vm", help="the VM's name")
    parser.add_argument("script", nargs=argparse.REMAINDER, help="a script and its arguments")
    args = parser.parse_args(argv)
    if args.script and args.script[0] == "-e":  # `VM -e CODE [ARGS]`, as the usage reads
        if len(args.script) < 2:
            parser.error("argument -e: expected one argument")
        args.exec = args.script[1]
        args.script = args.script[2:]
    elif args.script and args.script[0] == "--":
        args.script = args.script[1:]

    import qemu_bridge

    vm = qemu_bridge.open(args.vm, args.run_dir)
    prog = program(vm, load_debug_info=args.debug_info)
    drgn.set_default_prog(prog)
    if args.exec is not None:
        env = _interactive_globals(prog)
        sys.argv = ["-e", *args.script]  # as drgn -e does
        exec(compile(args.exec, "<string>", "exec"), env)
        return 0
    if args.script:
        env = _interactive_globals(prog)
        sys.argv = list(args.script)
        runpy.run_path(args.script[0], init_globals=env, run_name="__main__")
        return 0
    from drgn.cli import run_interactive

    run_interactive(prog)
    return 0


if __name__ == "__main__":
    sys.exit(main())
