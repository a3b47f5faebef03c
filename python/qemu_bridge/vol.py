"""``qemu-bridge-vol [--run-dir DIR] VM PLUGIN [ARGS...]``: Volatility 3 on a live VM.

Volatility reads the VM's guest-physical memory in process (:mod:`qemu_bridge.volatility`; no
mount, no copy to its cache), with the symbol table made from the guest kernel's own BTF and
kallsyms (no symbol directory to prepare; it is written to a temporary directory for the run).
Every other argument is Volatility's own (``-r csv``, ``--pid``...): they go to ``vol``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import qemu_bridge


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="qemu-bridge-vol",
        description="Volatility 3 on a live QEMU VM, with the symbol table made from its own memory",
    )
    parser.add_argument("--run-dir", help="the run directory of the VM's QMP socket")
    parser.add_argument("vm", help="the VM's name")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="Volatility's plugin and its arguments")
    args = parser.parse_args(argv)
    if not args.arguments:
        parser.error("name a Volatility plugin, e.g. linux.pslist.PsList")
    try:
        from volatility3.cli import main as volatility_main  # type: ignore[import-untyped]
    except ImportError:
        print("qemu-bridge-vol: Volatility 3 is not installed (pip install volatility3)", file=sys.stderr)
        return 1
    from qemu_bridge import volatility

    try:
        vm = qemu_bridge.open(args.vm, args.run_dir)
        linux = vm.linux
        if linux is None:
            print(f"qemu-bridge-vol: VM {args.vm}: no Linux kernel in its memory", file=sys.stderr)
            return 1
        table, table_name = linux.isf(), linux.isf_name()
    except OSError as err:
        print(f"qemu-bridge-vol: {err}", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError) as err:
        print(f"qemu-bridge-vol: {err}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="qemu-bridge-vol-") as symbols:
        with open(os.path.join(symbols, table_name), "w") as file:
            file.write(table)
        sys.argv = [
            "vol",
            "--single-location",
            volatility.location(args.vm, args.run_dir),
            "-s",
            symbols,
            *args.arguments,
        ]
        try:
            volatility_main()
        except SystemExit as exit:
            return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
