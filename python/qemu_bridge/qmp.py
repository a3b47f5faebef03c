#!/usr/bin/env python3
"""Minimal QMP client for qemu-bridge (standard library only): ``qemu_bridge.qmp``.

    from qemu_bridge.qmp import QMPClient
    with QMPClient("/run/qemu-bridge/demo.qmp") as qmp:
        print(qmp.query_status(), qmp.get_shared_memory_path())   # running /dev/shm/...

Run as a script it prints status, memory backends and the RAM file of a VM as JSON:

    python3 -m qemu_bridge.qmp /run/qemu-bridge/demo.qmp

QEMU 7.2 serves one QMP client per socket at a time: connect, ask, close.
"""

import json
import socket
import sys

MAX_LINE = 4 << 20


class QMPError(Exception):
    """A QMP error reply, a timeout, or a peer that does not speak QMP."""


class QMPClient:
    def __init__(self, socket_path, timeout=2.0):
        self.socket_path = str(socket_path)
        self.events = []
        self._next_id = 1
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.socket_path)
            self._file = self._sock.makefile("rb")
            greeting = self._read_message()
            if "QMP" not in greeting:
                raise QMPError(f"{self.socket_path}: expected a QMP greeting, got {greeting!r}")
            self.greeting = greeting["QMP"]
            self.execute("qmp_capabilities")
        except (OSError, ValueError) as err:
            self.close()
            raise QMPError(f"{self.socket_path}: {err}") from err
        except QMPError:
            self.close()
            raise

    def close(self):
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read_message(self):
        line = self._file.readline(MAX_LINE + 1)
        if not line:
            raise QMPError(f"{self.socket_path}: connection closed")
        if len(line) > MAX_LINE:
            raise QMPError(f"{self.socket_path}: line longer than {MAX_LINE} bytes")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise QMPError(f"{self.socket_path}: expected a JSON object, got {message!r}")
        return message

    def execute(self, command, arguments=None):
        """Runs a command and returns its 'return' value; events seen meanwhile go to .events."""
        request_id = self._next_id
        self._next_id += 1
        request = {"execute": command, "id": request_id}
        if arguments is not None:
            request["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
            while True:
                message = self._read_message()
                if "event" in message:
                    self.events.append(message)
                elif message.get("id") == request_id and "return" in message:
                    return message["return"]
                elif "error" in message and message.get("id") in (request_id, None):
                    error = message["error"]
                    raise QMPError(f"{command}: {error.get('class')}: {error.get('desc')}")
        except (OSError, ValueError) as err:
            raise QMPError(f"{self.socket_path}: {command}: {err}") from err

    def query_status(self):
        """The VM's run state as a string: 'running', 'paused', 'prelaunch', 'shutdown', ...

        The whole reply (with 'running' and 'singlestep') is query_status_full().
        """
        return self.query_status_full()["status"]

    def query_status_full(self):
        """QMP query-status's whole reply: {'status': str, 'running': bool, ...}."""
        return self.execute("query-status")

    def query_memdev(self):
        """The memory backends: a list of dicts (id, size, share, ...). QEMU does not include
        the backend's mem-path here: see get_shared_memory_path()."""
        return self.execute("query-memdev")

    def get_shared_memory_path(self):
        """The RAM file's path: the mem-path of the machine's memory backend, found through QOM
        (qom-get /machine memory-backend, then the backend's mem-path). Raises QMPError when
        the VM has no file-backed RAM (private RAM, or a memfd, which has no path)."""
        candidates = []
        try:
            backend = self.execute("qom-get", {"path": "/machine", "property": "memory-backend"})
            if backend:
                candidates.append(backend if backend.startswith("/") else f"/objects/{backend}")
        except QMPError:
            pass
        for memdev in self.query_memdev():
            path = f"/objects/{memdev.get('id')}"
            if memdev.get("id") and path not in candidates:
                candidates.append(path)
        for path in candidates:
            try:
                mem_path = self.execute("qom-get", {"path": path, "property": "mem-path"})
            except QMPError:
                continue
            if mem_path:
                return mem_path
        raise QMPError(f"{self.socket_path}: the VM has no file-backed RAM")


def main(argv):
    if len(argv) != 2:
        print(f"usage: {argv[0]} QMP_SOCKET", file=sys.stderr)
        return 2
    try:
        with QMPClient(argv[1]) as qmp:
            print(json.dumps({
                "status": qmp.query_status(),
                "status_full": qmp.query_status_full(),
                "memdev": qmp.query_memdev(),
                "mem_path": qmp.get_shared_memory_path(),
            }))
    except QMPError as err:
        print(f"qemu_bridge.qmp: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
