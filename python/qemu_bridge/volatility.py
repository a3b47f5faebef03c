"""Volatility 3 on a live VM: a layer that reads guest-physical memory through qemu_bridge.

Importing this module registers a `urllib` handler for the scheme ``qemu-bridge``, which
Volatility's file layer opens like any other location (as its own ``leechcore`` layer does)::

    vol --single-location 'qemu-bridge://web?run_dir=/run/qemu-bridge' -s SYMBOLS linux.pslist.PsList

The location reads as the guest's physical address space (offset = guest-physical address, holes
as zeros), live and never copied to Volatility's cache. ``qemu-bridge-vol`` (:mod:`qemu_bridge.vol`)
does all of it, with the symbol table made from the guest's own BTF and kallsyms.
"""

from __future__ import annotations

import io
import urllib.parse
import urllib.request
from typing import Any

import qemu_bridge

SCHEME = "qemu-bridge"


def location(name: str, run_dir: str | None = None) -> str:
    """The URL Volatility opens for the VM ``name`` of ``run_dir``."""
    query = "" if run_dir is None else "?" + urllib.parse.urlencode({"run_dir": run_dir})
    return f"{SCHEME}://{urllib.parse.quote(name, safe='')}{query}"


def parse_location(url: str) -> tuple[str, str | None]:
    """The VM name and run directory of a ``qemu-bridge://`` URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != SCHEME or not parts.netloc:
        raise ValueError(f"{url!r}: not a {SCHEME}://VM location")
    run_dir = urllib.parse.parse_qs(parts.query).get("run_dir", [None])[0]
    return urllib.parse.unquote(parts.netloc), run_dir


class PhysicalFile(io.RawIOBase):
    """A VM's guest-physical address space as a read-only raw file: offset = guest-physical
    address, holes read as zeros, the end the end of its highest RAM range. Live: every read
    reads the guest's RAM as it is then (unbuffered, so nothing stale is ever served)."""

    def __init__(self, vm: qemu_bridge.Vm):
        super().__init__()
        self.vm = vm
        self._position = 0
        self._end = max((r["start"] + r["size"] for r in vm.layout()), default=0)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._end}[whence]
        if base + offset < 0:
            raise OSError(f"seek to {base + offset}: before the start")
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        size = max(0, min(len(view), self._end - self._position))
        if size:
            view[:size] = self.vm.read(self._position, size, zero_holes=True)
        self._position += size
        return size


class QemuBridgeHandler(urllib.request.BaseHandler):
    """Opens ``qemu-bridge://VM?run_dir=DIR`` as the VM's :class:`PhysicalFile`."""

    @classmethod
    def non_cached_schemes(cls) -> list[str]:
        # the memory is live: Volatility must never copy it to its cache
        return [SCHEME]

    @staticmethod
    def default_open(request: urllib.request.Request) -> Any:
        if request.type != SCHEME:
            return None
        name, run_dir = parse_location(request.full_url)
        return PhysicalFile(qemu_bridge.open(name, run_dir))


def _register() -> None:
    """Makes the handler one of Volatility's (a subclass of its ``VolatilityHandler``, which it
    finds among the loaded classes) when Volatility is installed."""
    global QemuBridgeHandler
    try:
        from volatility3.framework.layers import resources  # type: ignore[import-untyped]
    except ImportError:
        return
    QemuBridgeHandler = type(  # type: ignore[misc,assignment]
        "QemuBridgeHandler",
        (QemuBridgeHandler, resources.VolatilityHandler),
        {"__doc__": QemuBridgeHandler.__doc__, "__module__": __name__},
    )


_register()
