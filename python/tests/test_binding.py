"""qemu_bridge against real VMs: its bytes equal the RAM file's at the guest-physical addresses
QEMU's map gives, and a Linux guest's kernel read through it equals what the guest printed of
itself on its console."""

from __future__ import annotations

import gc
import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import qemu_bridge

from conftest import require

GIB = 1 << 30
# q35 with 3 GiB: 2 GiB below 4 GiB, the last GiB at 4 GiB, at file offset 2 GiB (facts.md)
ABOVE_4G = 4 * GIB
ABOVE_4G_OFFSET = 2 * GIB


def write_ram(vm: qemu_bridge.Vm, offset: int, data: bytes) -> None:
    """Writes into the RAM file of one of the tests' own paused VMs."""
    fd = os.open(vm.ram_path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def test_list_and_open(big_vm, run_dir):
    rows = {row["name"]: row for row in qemu_bridge.list(str(run_dir.path))}
    row = rows[big_vm.name]
    assert row["status"] == "paused" and row["ram_size"] == 3 * GIB and row["arch"] == "x86_64"
    assert row["tracking"] in ("soft-dirty", "fingerprints")
    assert big_vm.status() == "paused" and big_vm.arch == "x86_64" and big_vm.ram_size == 3 * GIB
    assert repr(big_vm).startswith("<qemu_bridge.Vm")


def test_a_vm_that_is_not_there_is_file_not_found(run_dir):
    with pytest.raises(qemu_bridge.NoSuchVmError) as caught:
        qemu_bridge.open("no-such-vm", str(run_dir.path))
    assert isinstance(caught.value, FileNotFoundError)
    assert "no-such-vm" in str(caught.value)
    with pytest.raises(ValueError):
        qemu_bridge.open("../escape", str(run_dir.path))


def test_reads_equal_the_ram_file_in_every_region(big_vm):
    layout = big_vm.layout()
    assert [(r["start"], r["offset"]) for r in layout][-1] == (ABOVE_4G, ABOVE_4G_OFFSET), layout
    low, high = os.urandom(8192), os.urandom(8192)
    write_ram(big_vm, 0x200000, low)
    write_ram(big_vm, ABOVE_4G_OFFSET + 0x5000, high)
    for gpa, expected in ((0x200000, low), (ABOVE_4G + 0x5000, high)):
        assert big_vm.read(gpa, len(expected)) == expected
        assert big_vm.read(gpa + 3, 5) == expected[3:8]
        buffer = bytearray(len(expected))
        big_vm.read_into(gpa, buffer)
        assert buffer == expected
        view = big_vm.view(gpa, len(expected))
        assert view.readonly and view.nbytes == len(expected) and bytes(view) == expected


def test_holes_raise_or_read_as_zeros(big_vm):
    # the PCI hole below 4 GiB is no RAM, nor is anything past the end
    for gpa in (2 * GIB, 3 * GIB, ABOVE_4G + GIB):
        with pytest.raises(qemu_bridge.AddressError) as caught:
            big_vm.read(gpa, 16)
        assert isinstance(caught.value, ValueError) and f"{gpa:#x}" in str(caught.value).lower()
        with pytest.raises(ValueError):
            big_vm.view(gpa, 16)
    assert big_vm.read(3 * GIB, 4096, zero_holes=True) == bytes(4096)
    write_ram(big_vm, 2 * GIB - 0x1000, b"\xaa" * 0x1000)
    edge = big_vm.read(2 * GIB - 0x1000, 0x2000, zero_holes=True)
    assert edge == b"\xaa" * 0x1000 + bytes(0x1000)
    # a view is one region of the file: a range that crosses the split is refused
    with pytest.raises(ValueError):
        big_vm.view(2 * GIB - 8, 16)
    with pytest.raises(BufferError):
        big_vm.read_into(0x200000, b"read-only bytes")


def test_a_view_is_live_unhashable_and_outlives_its_vm(run_dir):
    name = run_dir.launch("view")
    vm = qemu_bridge.open(name, str(run_dir.path))
    vm.pause()
    write_ram(vm, 0x300000, b"before")
    view = vm.view(0x300000, 6)
    assert bytes(view) == b"before"
    write_ram(vm, 0x300000, b"after!")
    assert bytes(view) == b"after!", "a view is the live memory, not a copy"
    with pytest.raises(TypeError):
        hash(view)
    with pytest.raises(TypeError):
        view[0] = 1  # type: ignore[index]
    del vm
    gc.collect()
    assert bytes(view) == b"after!"
    # the VM goes away (QEMU quits, stop deletes its RAM file): the view still reads, and the
    # interpreter lives on; a new handle cannot be had
    run_dir.stop(name)
    assert bytes(view) == b"after!"
    with pytest.raises(qemu_bridge.NoSuchVmError):
        qemu_bridge.open(name, str(run_dir.path))


def test_changes_see_a_written_page(big_vm):
    changes = big_vm.changes(0.2)
    assert changes.method in ("soft-dirty", "fingerprints")
    write_ram(big_vm, ABOVE_4G_OFFSET + 0x7000, os.urandom(64))
    found = next(changes)
    assert any(start <= ABOVE_4G + 0x7000 < end for start, end in found.ranges), found.ranges
    assert found.pages >= 1
    with pytest.raises(ValueError):
        big_vm.changes(0)


def test_the_gil_is_released_while_changes_wait(big_vm):
    # another Python thread runs while one waits in Changes.__next__ (which sleeps its interval
    # out in Rust): were the GIL held, the counter would not move until next() returned
    changes = big_vm.changes(1.0)
    counted = []
    done = threading.Event()

    def count():
        while not done.is_set():
            counted.append(1)

    thread = threading.Thread(target=count)
    thread.start()
    before = len(counted)
    next(changes)
    during = len(counted) - before
    done.set()
    thread.join()
    assert during > 1000, during


def test_registers_and_virtual_reads_of_the_linux_guest(linux_vm):
    vm, linux = linux_vm.vm, linux_vm.vm.linux
    registers = dict(vm.registers(0))
    assert registers["CR3"] != 0 and registers["RIP"] != 0, registers
    with pytest.raises(ValueError):
        vm.registers(7)
    # the kernel's banner, read at its virtual address through the kernel's own page tables
    # (vCPU 0 may be paused in a process whose tables, with PTI, map little of the kernel):
    # init_top_pgt, at its physical address (__START_KERNEL_map + phys_base from vmcoreinfo)
    info = dict(line.split("=", 1) for line in linux.vmcoreinfo.splitlines() if "=" in line)
    root = linux.symbol("init_top_pgt") - 0xFFFFFFFF80000000 + int(info["NUMBER(phys_base)"])
    banner = linux.symbol("linux_banner")
    text = vm.read_virtual(banner, 256, root=root).split(b"\0")[0].decode()
    assert text.rstrip("\n") == linux.version
    assert linux.version.startswith("Linux version " + linux.release)
    assert vm.read(vm.translate(banner, root=root), 16) == text.encode()[:16]
    with pytest.raises(qemu_bridge.AddressError):
        vm.read_virtual(0x10, 8)
    with pytest.raises(KeyError):
        linux.symbol("no_such_symbol_anywhere")


def test_linux_tasks_equal_the_guests_ps(linux_vm):
    tasks = linux_vm.vm.linux.tasks()
    ours = {task.pid: task for task in tasks}
    theirs = []
    for line in linux_vm.oracle("ps: "):
        pid, ppid, *comm = line.split()
        if not pid.isdigit():
            continue  # ps's header
        theirs.append((int(pid), int(ppid), " ".join(comm).strip("[]")))
    assert len(theirs) > 30
    for pid, ppid, comm in theirs:
        if comm in ("ps", "sed", "sleep") or (comm == "init" and pid != 1):
            continue  # gone by the time the guest was paused
        assert pid in ours, f"{pid} {comm} is not among the tasks"
        # procfs names a kworker with its workqueue ("kworker/0:0-rcu"); comm is the first part
        assert ours[pid].ppid == ppid and comm.startswith(ours[pid].comm), (pid, ppid, comm, ours[pid])
    assert ours[1].state in "SRDI" and ours[1].uid == 0


def test_a_process_equals_the_guests_proc(linux_vm):
    linux = linux_vm.vm.linux
    (sleeper,) = map(int, linux_vm.oracle("sleeper: "))
    process = linux.process(sleeper)
    assert process.pid == sleeper and process.task.comm == "qb-sleeper"
    assert process.maps() == "".join(line + "\n" for line in linux_vm.oracle("maps: "))
    status = process.status()
    assert status.startswith("Name:\tqb-sleeper\n")
    for line in status.splitlines():
        assert line in linux_vm.oracle("status: "), line
    (cmdline,) = linux_vm.oracle("cmdline: ")
    assert process.cmdline() == bytes.fromhex(cmdline).rstrip(b"\0").decode().split("\0")
    (environ,) = linux_vm.oracle("environ: ")
    pairs = [entry.split("=", 1) for entry in bytes.fromhex(environ).rstrip(b"\0").decode().split("\0")]
    assert [list(pair) for pair in process.environ()] == pairs
    assert ("QB_SECRET", "hush-42") in process.environ()
    # its program's first page, through its own page tables: busybox's ELF header
    program = next(line for line in process.maps().splitlines() if line.endswith("/bin/busybox"))
    assert process.read(int(program.split("-")[0], 16), 4) == b"\x7fELF"
    with pytest.raises(ProcessLookupError):
        linux.process(999999)
    assert linux.process(2).maps() == "" and linux.process(2).cmdline() == []


def test_linux_modules_dmesg_kallsyms_and_tables(linux_vm):
    linux = linux_vm.vm.linux
    theirs = [line.split()[0] for line in linux_vm.oracle("modules: ")]
    assert sorted(module.name for module in linux.modules()) == sorted(theirs) and "dummy" in theirs
    dmesg = linux.dmesg()
    for line in linux_vm.oracle("dmesg: "):
        assert line in dmesg, line
    assert "qemu-bridge-test: a line of the guest's own" in dmesg
    symbols = linux.kallsyms()
    (count_and_hash,) = linux_vm.oracle("kallsyms: ")
    assert len(symbols) == int(count_and_hash.split()[0])
    init_task = next(symbol for symbol in symbols if symbol.name == "init_task")
    assert init_task.address == linux.symbol("init_task") and init_task.kind in "dD"
    btf = linux.btf()
    assert btf[:2] == b"\x9f\xeb" and len(btf) == (linux_vm.mount / linux_vm.name / "linux/btf").stat().st_size
    assert linux.isf().startswith("{") and linux.isf_name().startswith(linux.release)
    assert "OSRELEASE=" + linux.release in linux.vmcoreinfo


def test_volatility_lists_the_guests_processes_with_nothing_prepared(linux_vm, tmp_path):
    require(
        subprocess.run([sys.executable, "-c", "import volatility3"], capture_output=True).returncode == 0,
        "volatility3 (pip install volatility3)",
    )
    vol = os.path.join(os.path.dirname(sys.executable), "qemu-bridge-vol")
    cache = tmp_path / "cache"
    done = subprocess.run(
        [vol, "--run-dir", linux_vm.run_dir, linux_vm.name, "-q", "-r", "csv", "linux.pslist.PsList"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("TreeDepth,"))
    columns = lines[header].split(",")
    rows = [dict(zip(columns, line.split(","))) for line in lines[header + 1 :] if line.count(",") == len(columns) - 1]
    listed = {(int(row["PID"]), int(row["PPID"]), row["COMM"]) for row in rows}
    ours = {(task.pid, task.ppid, task.comm) for task in linux_vm.vm.linux.tasks() if task.pid != 0}
    assert len(ours) > 30 and ours <= listed, ours - listed
    # the table is kept for the next run, whole, under a hash of the kernel's BTF
    linux = linux_vm.vm.linux
    kept = list((cache / "qemu-bridge/volatility").glob(f"*/{linux.isf_name()}"))
    assert len(kept) == 1 and kept[0].read_text() == linux.isf(), kept
    assert kept[0].parent.name == hashlib.sha256(linux.btf()).hexdigest()[:16]
    assert [path.name for path in kept[0].parent.iterdir()] == [linux.isf_name()], "no partial file left"


def test_volatility_tables_are_made_once_per_kernel_build(linux_vm, tmp_path, monkeypatch):
    from qemu_bridge import vol

    linux = linux_vm.vm.linux

    class Counted:
        """The guest's Linux, counting the tables made of it."""

        made = 0

        def __getattr__(self, name):
            return getattr(linux, name)

        def isf(self):
            Counted.made += 1
            return linux.isf()

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with vol._symbols(Counted()) as first:
        assert (Path(first) / linux.isf_name()).read_text() == linux.isf()
    with vol._symbols(Counted()) as second:
        assert second == first
    assert Counted.made == 1, "the second run took the kept table"
    # a cache that cannot be written: a temporary directory for the run, gone after it
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    with vol._symbols(Counted()) as temporary:
        assert Path(temporary).name.startswith("qemu-bridge-vol-")
        assert (Path(temporary) / linux.isf_name()).read_text() == linux.isf()
    assert not Path(temporary).exists() and Counted.made == 2


def test_snapshots_equal_the_ram_and_update_in_place(run_dir, tmp_path):
    import hashlib

    name = run_dir.launch("snap")
    vm = qemu_bridge.open(name, str(run_dir.path))
    # pause for the copy: the guest runs again afterwards
    report = vm.snapshot(tmp_path / "paused", pause=True)
    assert report["verdict"] == "paused" and report["size"] == vm.ram_size and report["update"] is None
    assert vm.status() == "running"
    vm.pause()
    report = vm.snapshot(tmp_path / "plain", hash="sha256")
    ram = open(vm.ram_path, "rb").read()
    plain = (tmp_path / "plain").read_bytes()
    assert plain == ram and report["digest"] == hashlib.sha256(ram).hexdigest()
    # the first update has no record to go by: written whole; the next writes what changed
    first = vm.snapshot(tmp_path / "updated", update=True)
    assert first["update"]["full"] is not None
    write_ram(vm, 0x123000, os.urandom(4096))
    second = vm.snapshot(tmp_path / "updated", update=True)
    assert second["update"]["full"] is None and 1 <= second["update"]["pages_written"] < 16, second
    assert (tmp_path / "updated").read_bytes() == open(vm.ram_path, "rb").read()
    with pytest.raises(ValueError):
        vm.snapshot(tmp_path / "both", consistent=True, pause=True)
    with pytest.raises(ValueError):
        vm.snapshot(tmp_path / "md5", hash="md5")
    with pytest.raises(ValueError):
        vm.snapshot(tmp_path / "png", format="png")
    # an ELF core: its header in the first MiB, then the RAM file byte for byte
    vm.resume()
    report = vm.snapshot(tmp_path / "core", format="elf", consistent=True)
    assert report["verdict"] == "consistent" and len(report["passes"]) >= 3 and report["paused_ms"] > 0
    assert vm.status() == "running"
    vm.pause()
    core = (tmp_path / "core").read_bytes()
    assert core[:4] == b"\x7fELF" and core[16:18] == b"\x04\x00"  # ET_CORE
    vm.snapshot(tmp_path / "core", format="elf", update=True)
    assert (tmp_path / "core").read_bytes()[1 << 20 :] == open(vm.ram_path, "rb").read()
    with pytest.raises(OSError):
        vm.snapshot(tmp_path / "no-such-dir" / "file")
    assert not (tmp_path / "both").exists() and not list(tmp_path.glob(".*partial*"))
    assert not (tmp_path / "png").exists()
    run_dir.stop(name)


def test_a_refused_peer_and_a_silent_one_raise_their_own_errors(tmp_path):
    import socket

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # a QMP peer that names a RAM file it does not hold: refused by the trust check
    ram = tmp_path / "ram"
    ram.write_bytes(bytes(1 << 20))
    fake = Path(__file__).resolve().parents[2] / "tests/fixtures/fake_qmp.py"
    server = subprocess.Popen(
        [sys.executable, fake, run_dir / "liar.qmp", ram, str(1 << 20)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout.readline().strip() == "ready"
        with pytest.raises(qemu_bridge.RefusedError) as caught:
            qemu_bridge.open("liar", str(run_dir))
        assert isinstance(caught.value, PermissionError) and "liar" in str(caught.value)
        rows = {row["name"]: row for row in qemu_bridge.list(str(run_dir))}
        assert "refusing" in rows["liar"]["error"]
    finally:
        server.kill()
        server.wait()
    # a peer that accepts and never speaks: QMP's timeout, as a TimeoutError
    silent = socket.socket(socket.AF_UNIX)
    silent.bind(str(run_dir / "mute.qmp"))
    silent.listen(4)
    try:
        with pytest.raises(qemu_bridge.QmpTimeoutError) as caught:
            qemu_bridge.open("mute", str(run_dir))
        assert isinstance(caught.value, TimeoutError) and "mute" in str(caught.value)
    finally:
        silent.close()
