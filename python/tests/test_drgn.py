"""qemu_bridge.drgn against drgn itself: the same script of drgn's own helpers runs in process on
`program(vm)` (BTF + kallsyms, no DWARF) and, as the oracle, in a `drgn -c core -s vmlinux`
subprocess given the guest kernel's DWARF vmlinux, over the FUSE mount's core of the same paused
guest. Their JSON outputs must agree."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import pytest

drgn = pytest.importorskip("drgn")

from qemu_bridge import _btf  # noqa: E402
from qemu_bridge.drgn import GLOBALS, program  # noqa: E402

# One script, both sides: `collect(prog)` -> a JSON-able dict, one key per helper.
COLLECT = r'''
import json
from drgn import sizeof, offsetof
from drgn.helpers.linux.pid import for_each_task, find_task
from drgn.helpers.linux.module import for_each_module
from drgn.helpers.linux.printk import get_printk_records
from drgn.helpers.linux.mm import for_each_vma
from drgn.helpers.linux.percpu import per_cpu, per_cpu_ptr
from drgn.helpers.linux.cpumask import for_each_possible_cpu, for_each_online_cpu
from drgn.helpers.linux.slab import for_each_slab_cache
from drgn.helpers.linux.sched import task_state_to_char

STRUCTS = ["task_struct", "mm_struct", "module", "page", "kmem_cache", "rq", "vm_area_struct",
           "printk_ringbuffer", "pid_namespace", "list_head", "uts_namespace", "maple_tree"]


def _members(t, base=0):
    out = []
    for m in t.members:
        off = base + m.bit_offset
        if m.name is None:  # anonymous struct/union: flatten, as C names them
            out += _members(m.type.unaliased(), off)
        else:
            out.append([m.name, off, m.bit_field_size, sizeof(m.type) if m.type.is_complete() else None])
    return out


def collect(prog):
    out = {}
    out["release"] = prog["init_uts_ns"].name.release.string_().decode()
    tasks = [[t.pid.value_(), t.tgid.value_(), t.real_parent.pid.value_(), t.comm.string_().decode(errors="replace"),
              t.value_(), task_state_to_char(t)]
             for t in for_each_task(prog)]
    out["tasks"] = sorted(tasks)
    out["find_task"] = {str(t[0]): find_task(prog, t[0]).value_() for t in tasks}
    out["modules"] = sorted([m.name.string_().decode(), m.value_(), m.state.value_()] for m in for_each_module(prog))
    out["printk"] = [[r.seq, r.timestamp, r.level, r.facility, r.text.decode(errors="replace")]
                     for r in get_printk_records(prog)]
    user = [t for t in for_each_task(prog) if t.mm]
    out["vma_pids"] = sorted(t.pid.value_() for t in user)
    out["vmas"] = {str(t.pid.value_()): [[v.vm_start.value_(), v.vm_end.value_(), v.vm_flags.value_()]
                                        for v in for_each_vma(t.mm)] for t in user}
    out["cpus"] = [list(for_each_possible_cpu(prog)), list(for_each_online_cpu(prog))]
    out["percpu"] = [[cpu, per_cpu_ptr(prog["runqueues"].address_of_(), cpu).value_(),
                      per_cpu(prog["runqueues"], cpu).curr.value_(),
                      per_cpu(prog["runqueues"], cpu).nr_running.value_()] for cpu in for_each_possible_cpu(prog)]
    out["slab"] = [[c.name.string_().decode(), c.value_(), c.object_size.value_(), c.size.value_()]
                   for c in for_each_slab_cache(prog)]
    out["layout"] = {}
    for s in STRUCTS:
        try:
            t = prog.type("struct " + s)
        except LookupError:  # maple_tree is 6.1's
            continue
        out["layout"][s] = [sizeof(t), _members(t)]
    globals_ = {}
    for name in NAMES:
        try:
            obj = prog[name]
            t = obj.type_.unaliased()
            # the size, kind and address: the spelling of a type changes with kernel versions
            # (pg_data_t * or struct pglist_data *, const or not)
            globals_[name] = [sizeof(t) if t.is_complete() and t.kind.name != "FUNCTION" else None,
                              t.kind.name, obj.address_]
        except (KeyError, LookupError):
            pass
    out["globals"] = globals_
    out["constants"] = {}
    for n in ["PIDTYPE_PID", "PIDTYPE_TGID", "MM_ANONPAGES", "PG_slab", "PG_head", "PG_locked", "NR_FREE_PAGES"]:
        try:
            out["constants"][n] = prog[n].value_()
        except KeyError:  # PG_slab is gone in 6.10
            pass
    return out
'''

# the globals of qemu_bridge.drgn's table, and the types their declarations give
NAMES = sorted(GLOBALS)
ORACLE = f"NAMES = {NAMES!r}\n" + COLLECT + "\nprint(json.dumps(collect(prog)))\n"


def _collect(prog) -> dict:
    env: dict = {"NAMES": NAMES}
    exec(compile(COLLECT, "<collect>", "exec"), env)
    return env["collect"](prog)


@pytest.fixture(scope="session")
def ours(linux_vm) -> dict:
    return _collect(program(linux_vm.vm))


@pytest.fixture(scope="session")
def oracle(linux_vm, debug_vmlinux) -> dict:
    core = linux_vm.mount / linux_vm.name / "core"
    done = subprocess.run(
        [sys.executable, "-m", "drgn", "-q", "-c", str(core), "-s", str(debug_vmlinux), "-e", ORACLE],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"oracle drgn failed: {done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_release_is_the_guests(linux_vm, ours):
    assert ours["release"] == linux_vm.vm.linux.release
    assert ours["release"] in linux_vm.vm.linux.version


@pytest.mark.parametrize(
    "key", ["release", "tasks", "find_task", "modules", "printk", "vma_pids", "vmas", "cpus", "percpu", "slab",
            "constants"]
)
def test_helper_matches_dwarf_drgn(ours, oracle, key):
    assert ours[key] == oracle[key]


def test_globals_table_matches_dwarf(ours, oracle):
    """Each global of the table that both find has the type and address DWARF gives (names
    DWARF does not know, such as phys_base, an assembler symbol, are left out)."""
    both = set(ours["globals"]) & set(oracle["globals"])
    assert len(both) > 60
    # DWARF may give an array's declaration with no length (6.1's linux_banner): then the
    # kind and address only
    sized = {n: ours["globals"][n][0] if oracle["globals"][n][0] is not None else None for n in both}
    assert {n: [sized[n], *ours["globals"][n][1:]] for n in both} == {n: oracle["globals"][n] for n in both}
    variables = {n for n, (_, kind, _) in oracle["globals"].items() if kind != "FUNCTION"}
    assert variables <= set(ours["globals"]), "a global DWARF has that we miss"


def test_helpers_found_something(ours):
    assert len(ours["tasks"]) > 20 and ours["tasks"][0][0] == 1
    assert ours["modules"], "the guest loads modules (dummy, qemu_fw_cfg)"
    assert len(ours["printk"]) > 10
    assert ours["vmas"] and all(ours["vmas"].values())
    assert ours["percpu"] and ours["slab"]


@pytest.mark.parametrize("struct", ["task_struct", "mm_struct", "module", "page", "kmem_cache", "rq",
                                    "vm_area_struct", "printk_ringbuffer", "pid_namespace", "list_head",
                                    "uts_namespace", "maple_tree"])
def test_btf_layout_matches_dwarf(ours, oracle, struct):
    """Size, and each member's name, bit offset, bit-field size and size, BTF vs DWARF."""
    assert ours["layout"].get(struct) == oracle["layout"].get(struct)


def test_tasks_match_the_guests_own_ps(linux_vm, ours):
    """The guest printed its own `ps -o pid,ppid,comm` on the serial console (`ps: ` lines)."""
    seen = set()
    for line in linux_vm.oracle("ps: "):
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
            seen.add((int(fields[0]), int(fields[1])))
    if not seen:
        pytest.skip("the guest printed no ps lines (an older guest image)")
    ours_pairs = {(t[0], t[2]) for t in ours["tasks"]}
    # ps ran before the pause, from a shell that has exited since with its children: the
    # kernel's threads, init and the sleeper the guest keeps must all still be there
    sleeper = linux_vm.oracle("sleeper: ")
    lasting = {p for p in seen if p[1] in (0, 2) or (sleeper and p[0] == int(sleeper[0]))}
    assert lasting <= ours_pairs, sorted(lasting - ours_pairs)
    assert len(lasting) > 20


def test_vmas_match_the_guests_own_maps(linux_vm, ours):
    """The guest printed /proc/SLEEPER/maps (`maps: ` lines) of a process it keeps alive."""
    sleeper = linux_vm.oracle("sleeper: ")
    if not sleeper:
        pytest.skip("the guest printed no maps (an older guest image)")
    ranges = []
    for line in linux_vm.oracle("maps: "):
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        if start < 1 << 63:  # [vsyscall] is no VMA
            ranges.append([start, end])
    assert [v[:2] for v in ours["vmas"][sleeper[0].strip()]] == ranges


def test_console_command(linux_vm):
    """qemu-bridge-drgn VM -e CODE, drgn's helpers in scope, as `drgn -e` has them."""
    import os

    import qemu_bridge

    code = "print(prog['init_uts_ns'].name.release.string_().decode(), len(list(for_each_task(prog))))"
    # the package as this test imports it, installed or not
    package_parent = os.path.dirname(os.path.dirname(qemu_bridge.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "qemu_bridge.drgn", "--run-dir", linux_vm.run_dir, linux_vm.name, "-e", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    release, count = done.stdout.split()
    assert release == linux_vm.vm.linux.release and int(count) > 20


def test_program_loads_no_dwarf(linux_vm):
    prog = program(linux_vm.vm)
    for module in prog.modules():
        assert module.debug_file_path is None, f"{module.name} has debug info {module.debug_file_path}"
    assert prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL
    assert "qemu-bridge-btf" in prog.enabled_type_finders()
    # the types come from BTF: with our finder off, drgn knows no kernel struct
    prog.type("struct task_struct")
    prog.set_enabled_type_finders([n for n in prog.enabled_type_finders() if n != "qemu-bridge-btf"])
    with pytest.raises(LookupError):
        prog.type("struct task_struct")


def test_symbols_from_kallsyms(linux_vm):
    prog = program(linux_vm.vm)
    linux = linux_vm.vm.linux
    assert prog.symbol("schedule").address == linux.symbol("schedule")
    assert prog.symbol(linux.symbol("schedule") + 1).name == "schedule"
    assert prog["schedule"].address_ == linux.symbol("schedule")
    assert prog["init_task"].address_ == linux.symbol("init_task")


def test_figures(linux_vm, capsys):
    """Not a check: median of 3 of program() and of listing all tasks, printed (pytest -s)."""
    from drgn.helpers.linux.pid import for_each_task

    t_prog, t_tasks = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        prog = program(linux_vm.vm)
        t1 = time.perf_counter()
        n = sum(1 for _ in for_each_task(prog))
        t2 = time.perf_counter()
        t_prog.append(t1 - t0)
        t_tasks.append(t2 - t1)
    with capsys.disabled():
        print(f"\nqemu_bridge.drgn: program() {statistics.median(t_prog) * 1000:.0f} ms, "
              f"{n} tasks in {statistics.median(t_tasks) * 1000:.1f} ms (median of 3)")


# -- the BTF parser on hostile input (no VM) --


def _blob(types: bytes, strs: bytes = b"\0") -> bytes:
    import struct

    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strs)) + types + strs


def test_btf_rejects_garbage():
    import struct

    for bad in [b"", b"\0" * 10, b"\x9f\xeb\x01\0" + b"\xff" * 20, _blob(b"\0" * 8)]:
        with pytest.raises(ValueError):
            _btf.Btf(bad)
    # a pointer to a type beyond the last
    ptr = struct.pack("<III", 0, 2 << 24, 99)
    b = _btf.Btf(_blob(ptr))
    with pytest.raises(ValueError, match="beyond the last"):
        b.get(1)
    # a struct whose members run past the type section
    st = struct.pack("<III", 0, (4 << 24) | 5, 8)
    with pytest.raises(ValueError, match="runs past the types"):
        _btf.Btf(_blob(st))
    # a name beyond the string section
    i = struct.pack("<IIII", 1000, 1 << 24, 4, 32)
    with pytest.raises(ValueError, match="string offset"):
        _btf.Btf(_blob(i)).get(1)
    # a typedef cycle: resolve() is bounded
    td = struct.pack("<III", 1, 8 << 24, 1)
    with pytest.raises(ValueError, match="cycle"):
        _btf.Btf(_blob(td, b"\0t\0")).resolve(1)


def test_btf_pointer_cycle_is_an_error_not_a_crash():
    import struct

    import drgn as d

    ptr = struct.pack("<III", 0, 2 << 24, 1)  # type 1 = pointer to type 1
    btf = _btf.Btf(_blob(ptr))
    from qemu_bridge.drgn import _BtfTypes

    prog = d.Program(d.Platform(d.Architecture.X86_64, d.PlatformFlags.IS_64_BIT | d.PlatformFlags.IS_LITTLE_ENDIAN))
    with pytest.raises(ValueError, match="deeper"):
        _BtfTypes(prog, btf).type(1)
