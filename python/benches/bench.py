"""Benchmarks of the Python package, in one run against baselines measured in the same run:
Vm.read and Vm.view of 8 B, 4 KiB and 1 MiB against a slice of Python's own mmap of the RAM
file (the floor: no QMP, no checks), and drgn listing every task of a Linux guest through
qemu_bridge.drgn.program (BTF, no vmlinux) against `drgn -c MOUNT/VM/core` with no symbols.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qb-bench-py-") as own:
        os.chmod(own, 0o755)
        reads(args.run_dir or own)


if __name__ == "__main__":
    sys.exit(main())
