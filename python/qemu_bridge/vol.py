"""``qemu-bridge-vol [--run-dir DIR] VM PLUGIN [ARGS...]``: Volatility 3 on a live VM.

Volatility reads the VM's guest-physical memory in process (:mod:`qemu_bridge.volatility`; no
mount, no copy to its cache), with the symbol table made from the guest kernel's own BTF and
kallsyms (no symbol directory to prepare). The table is kept under
``$XDG_CACHE_HOME/qemu-bridge/volatility/`` (``~/.cache/...``), named by a hash of the kernel's
BTF and by its banner: a table depends on the kernel's build alone (its symbols are written at
their link-time addresses), so the next run on any boot of that build reuses it, and
Volatility's own caches of it hold. Where that directory cannot be written, a temporary one
serves the run. Every other argument is Volatility's own (``-r csv``, ``--pid``...): they go to
``vol``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

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
        import volatility3.cli  # type: ignore[import-untyped]  # noqa: F401 -- installed?
    except ImportError:
        print("qemu-bridge-vol: Volatility 3 is not installed (pip install volatility3)", file=sys.stderr)
        return 1
    from qemu_bridge import volatility

    with contextlib.ExitStack() as stack:
        try:
            vm = qemu_bridge.open(args.vm, args.run_dir)
            linux = vm.linux
            if linux is None:
                print(f"qemu-bridge-vol: VM {args.vm}: no Linux kernel in its memory", file=sys.stderr)
                return 1
            symbols = stack.enter_context(_symbols(linux))
        except (OSError, ValueError, RuntimeError) as err:
            print(f"qemu-bridge-vol: {err}", file=sys.stderr)
            return 1
        return _run(args, symbols, volatility)


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "qemu-bridge", "volatility")


@contextlib.contextmanager
def _symbols(linux: qemu_bridge.Linux) -> Iterator[str]:
    """A symbol directory holding the table of ``linux``'s kernel: the cached one (made and
    written, atomically, if it is not there yet), or a temporary one if the cache cannot be
    written."""
    name = linux.isf_name()
    directory = os.path.join(_cache_dir(), hashlib.sha256(linux.btf()).hexdigest()[:16])
    if not os.path.isfile(os.path.join(directory, name)):
        table = linux.isf()
        if not _cache(directory, name, table):
            with tempfile.TemporaryDirectory(prefix="qemu-bridge-vol-") as temporary:
                with open(os.path.join(temporary, name), "w") as file:
                    file.write(table)
                yield temporary
            return
    yield directory


def _cache(directory: str, name: str, table: str) -> bool:
    """Whether ``table`` is now in ``directory`` under ``name`` (written whole, then renamed:
    a reader never sees part of it)."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=directory, prefix=".tmp-", delete=False) as file:
            written = file.name
            file.write(table)
        os.replace(written, os.path.join(directory, name))
        return True
    except OSError:
        with contextlib.suppress(NameError, OSError):
            os.unlink(written)
        return False


def _run(args: argparse.Namespace, symbols: str, volatility: Any) -> int:
    from volatility3.cli import main as volatility_main  # type: ignore[import-untyped]

    sys.argv = ["vol", "--single-location", volatility.location(args.vm, args.run_dir), "-s", symbols, *args.arguments]
    try:
        volatility_main()
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
