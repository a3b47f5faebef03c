"""Benchmarks of the Python package, in one run against baselines measured in the same run:
Vm.read and Vm.view of 8 B, 4 KiB and 1 MiB against a slice of Python's own mmap of the RAM
file (the floor: no QMP, no checks); drgn listing every task of a Linux guest with about 1,050
processes through qemu_bridge.drgn.program (BTF, no vmlinux) against `drgn --qemu SOCKET` and
`drgn -c MOUNT/VM/core` with Debian's DWARF vmlinux, and drgn's own start-up that all three pay
(the interpreter, its imports, its plugins); qemu-bridge-vol's linux.pslist against
`vol -f MOUNT/VM/core`.

    python python/benches/bench.py [--run-dir DIR]   # launches its VMs with target/debug/qemu-bridge

Prints medians and ratios (a ratio above 1 is slower than the baseline)."""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import qemu_bridge

CHECKOUT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("QEMU_BRIDGE_BIN", CHECKOUT / "target/debug/qemu-bridge"))


def median_ns(work, repeat: int) -> float:
    """The median time of one call of `work`, in nanoseconds, over `repeat` batches."""
    batch = 200
    samples = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(batch):
            work()
        samples.append((time.perf_counter_ns() - start) / batch)
    return statistics.median(samples)


def reads(run_dir: str) -> None:
    name = f"bench-py-{os.getpid()}"
    subprocess.run([BINARY, "launch", name, "--memory", "256M", "--run-dir", run_dir], check=True, capture_output=True)
    try:
        subprocess.run([BINARY, "pause", name, "--run-dir", run_dir], check=True, capture_output=True)
        vm = qemu_bridge.open(name, run_dir)
        with open(vm.ram_path, "rb") as file:
            ram = mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ)
        gpa = 0x100000
        ram[gpa : gpa + (1 << 20)]  # touched once by both, so that neither pays first faults
        print(f"{'read of':<10} {'mmap slice':>12} {'Vm.read':>12} {'ratio':>6} {'Vm.view':>12} {'ratio':>6}")
        for size in (8, 4096, 1 << 20):
            repeat = 50 if size < (1 << 20) else 10
            floor = median_ns(lambda: ram[gpa : gpa + size], repeat)
            ours = median_ns(lambda: vm.read(gpa, size), repeat)
            view = median_ns(lambda: vm.view(gpa, size), repeat)
            print(
                f"{size:>8} B {floor:>10.0f} ns {ours:>10.0f} ns {ours / floor:>5.2f}x {view:>10.0f} ns {view / floor:>5.2f}x"
            )
        ram.close()
    finally:
        subprocess.run([BINARY, "stop", name, "--run-dir", run_dir], capture_output=True)


def median_run(argv: list, repeat: int = 3, env: dict | None = None) -> float:
    """The median wall time of a whole process (its start-up counted), in seconds."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        samples.append(time.perf_counter() - start)
        assert done.returncode == 0, f"{argv}: {done.stderr}"
    return statistics.median(samples)


def tools(run_dir: str) -> None:
    """drgn and Volatility on the Linux guest with about 1,050 processes, paused."""
    image = CHECKOUT / "target/guest/linux"
    name = f"bench-py-linux-{os.getpid()}"
    mount = tempfile.mkdtemp(prefix="qb-bench-py-mnt-")
    subprocess.run(
        [BINARY, "launch", name, "--run-dir", run_dir, "--linux", image, "--memory", "512M",
         "--append", "console=ttyS0 quiet qb_tasks=1000", "--", "-device", "vmcoreinfo"],
        check=True, capture_output=True,
    )
    try:
        serial = Path(run_dir) / f"{name}.serial"
        deadline = time.monotonic() + 600
        while "QEMU-BRIDGE-ORACLE-END" not in serial.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the guest did not settle"
            time.sleep(1)
        subprocess.run([BINARY, "pause", name, "--run-dir", run_dir], check=True)
        subprocess.run([BINARY, "mount", mount, "--run-dir", run_dir], check=True, capture_output=True)
        vm = qemu_bridge.open(name, run_dir)
        release = vm.linux.release
        vmlinux = subprocess.run(
            [CHECKOUT / "scripts/debug-vmlinux.sh", release, CHECKOUT / "target/guest/dbg"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        count = "from drgn.helpers.linux.pid import for_each_task; print(len(list(for_each_task(prog))))"
        ours = median_run([sys.executable, "-m", "qemu_bridge.drgn", "--run-dir", run_dir, name, "-e", count])
        core = f"{mount}/{name}/core"
        qemu = median_run(["drgn", "--qemu", f"{run_dir}/{name}.qmp", "-s", vmlinux, "-q", "-e", count])
        on_core = median_run(["drgn", "-c", core, "-s", vmlinux, "-q", "-e", count])
        # what all three pay before reading anything: the interpreter, drgn's imports and its
        # plugins (loaded when a program becomes a Linux kernel)
        floor = median_run(
            [sys.executable, "-c", "import drgn.cli, qemu_bridge; from _drgn_util.plugins import _load_plugins; _load_plugins()"]
        )
        tasks = len(vm.linux.tasks())
        print(f"\ndrgn listing every task of a guest with {tasks} processes (whole process, median of 3):")
        print(f"  drgn's own start-up (imports, plugins)      {floor:6.2f} s  (paid by each below)")
        print(f"  qemu_bridge.drgn.program (BTF, no vmlinux)  {ours:6.2f} s")
        print(
            f"  drgn --qemu SOCKET -s vmlinux               {qemu:6.2f} s  ({qemu / ours:.2f}x ours;"
            f" {(qemu - floor) / max(ours - floor, 1e-3):.2f}x beyond the start-up)"
        )
        print(f"  drgn -c MOUNT/vm/core -s vmlinux            {on_core:6.2f} s  ({on_core / ours:.2f}x ours)")
        vol = str(Path(sys.executable).parent / "qemu-bridge-vol")
        cache = tempfile.mkdtemp(prefix="qb-bench-py-vol-")
        pslist = ["-q", "-r", "csv", "--cache-path", cache, "linux.pslist.PsList"]
        ours = median_run([vol, "--run-dir", run_dir, name, *pslist])
        on_core = median_run(
            [str(Path(sys.executable).parent / "vol"), "-f", core, "-s", f"{mount}/{name}/linux/volatility", *pslist]
        )
        print("Volatility linux.pslist (whole process, median of 3):")
        print(f"  qemu-bridge-vol VM (in process)             {ours:6.2f} s")
        print(f"  vol -f MOUNT/vm/core                        {on_core:6.2f} s  ({on_core / ours:.2f}x ours)")
    finally:
        subprocess.run(["fusermount3", "-u", mount], capture_output=True)
        os.rmdir(mount)
        subprocess.run([BINARY, "stop", name, "--run-dir", run_dir], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir")
    parser.add_argument("--only", choices=["reads", "tools"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qb-bench-py-") as own:
        os.chmod(own, 0o755)
        if args.only in (None, "reads"):
            reads(args.run_dir or own)
        if args.only in (None, "tools"):
            tools(args.run_dir or own)


if __name__ == "__main__":
    sys.exit(main())
