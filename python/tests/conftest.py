"""Real VMs for the Python tests: QEMU under TCG launched by the `qemu-bridge` binary of this
checkout, a FUSE mount of their run directory, and the guest kernel's debug `vmlinux` as an
oracle. Under CI=true a missing tool fails the run; elsewhere the tests that need it skip, visibly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import qemu_bridge

CHECKOUT = Path(__file__).resolve().parents[2]
CI = os.environ.get("CI") == "true"


def require(condition: bool, what: str) -> None:
    """A missing device or tool: a failure under CI, a visible skip elsewhere."""
    if condition:
        return
    if CI:
        pytest.fail(f"missing under CI: {what}")
    pytest.skip(f"missing: {what}")


def binary() -> Path:
    """The qemu-bridge binary of this checkout (cargo's build), or $QEMU_BRIDGE_BIN."""
    path = Path(os.environ.get("QEMU_BRIDGE_BIN", CHECKOUT / "target/debug/qemu-bridge"))
    require(path.exists(), f"{path} (cargo build)")
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64")
    return path


def run(*args: str | os.PathLike[str], timeout: float = 300) -> str:
    """Runs the qemu-bridge binary; its failure fails the test, with its stderr."""
    done = subprocess.run([binary(), *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"qemu-bridge {' '.join(map(str, args))}: {done.stderr}"
    return done.stdout


def wait_until(deadline: float, check) -> bool:
    """Polls `check` until it holds or `deadline` seconds have passed."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return check()


@dataclass
class RunDir:
    path: Path
    names: list[str] = field(default_factory=list)

    def launch(self, prefix: str, *args: str) -> str:
        name = f"py-{prefix}-{uuid.uuid4().hex[:8]}"
        run("launch", name, "--run-dir", self.path, *args)
        self.names.append(name)
        return name

    def stop(self, name: str) -> None:
        if name in self.names:
            self.names.remove(name)
            subprocess.run([binary(), "stop", name, "--run-dir", self.path], capture_output=True, timeout=120)

    def close(self) -> None:
        for name in list(self.names):
            self.stop(name)
        shutil.rmtree(self.path, ignore_errors=True)


@pytest.fixture(scope="session")
def run_dir():
    # QEMU may run as another user (launch drops root): the directory must be reachable
    path = Path(tempfile.mkdtemp(prefix="qb-py-"))
    path.chmod(0o755)
    dir = RunDir(path)
    yield dir
    dir.close()


def guest_dir(subdir: str) -> Path:
    """A guest the Rust tests built under target/guest, else the launcher's own cache."""
    return CHECKOUT / "target/guest" / subdir


@dataclass
class LinuxVm:
    name: str
    run_dir: str
    serial: Path
    vm: qemu_bridge.Vm
    mount: Path

    def oracle(self, prefix: str) -> list[str]:
        """The lines the guest printed of itself with this prefix (`ps: `, `maps: `...)."""
        text = self.serial.read_text(errors="replace")
        return [line[len(prefix):].rstrip("\r") for line in text.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="session")
def mount(run_dir):
    require(Path("/dev/fuse").exists(), "/dev/fuse")
    require(shutil.which("fusermount3") is not None, "fusermount3")
    path = Path(tempfile.mkdtemp(prefix="qb-py-mnt-"))
    run("mount", path, "--run-dir", run_dir.path)
    yield path
    subprocess.run(["fusermount3", "-u", path], capture_output=True, timeout=60)
    path.rmdir()


# The kernels the Linux tests run on: where their guest is built under target/guest (the Rust
# tests build them; scripts/build-guest.sh SUITE otherwise), its suite, and QEMU arguments.
KERNELS = {
    "6.1": ("linux", "bookworm", ()),
    # QEMU 7.2's TCG corrupts RFLAGS in CMPXCHG16B with a segment prefix, which SLUB of Linux
    # 6.12 uses: without CX16 SLUB does without it
    "6.12": ("linux-6.12", "bookworm-backports", ("--", "-cpu", "qemu64,-cx16")),
}


def built_guest(subdir: str, suite: str) -> Path:
    image = guest_dir(subdir)
    if not (image / "vmlinuz").exists():
        subprocess.run([CHECKOUT / "scripts/build-guest.sh", image, suite], check=True, timeout=1800)
    return image


@pytest.fixture(scope="session", params=sorted(KERNELS))
def linux_vm(request, run_dir, mount):
    """A Debian cloud kernel (6.1 and 6.12: each test runs on both) with busybox, booted,
    settled and paused."""
    subdir, suite, extra = KERNELS[request.param]
    image = built_guest(subdir, suite)
    name = run_dir.launch("linux", "--linux", str(image), *extra)
    serial = run_dir.path / f"{name}.serial"
    assert wait_until(180, lambda: "QEMU-BRIDGE-ORACLE-END" in serial.read_text(errors="replace")), (
        "the guest printed no view of its own kernel"
    )
    run("pause", name, "--run-dir", run_dir.path)
    linux = LinuxVm(name, str(run_dir.path), serial, qemu_bridge.open(name, str(run_dir.path)), mount)
    assert wait_until(10, lambda: (mount / linux.name / "linux").exists())
    yield linux
    run_dir.stop(linux.name)


@pytest.fixture(scope="session")
def debug_vmlinux(linux_vm):
    """The guest kernel's DWARF vmlinux (Debian's linux-image-RELEASE-dbg), fetched once into
    target/guest/dbg by scripts/debug-vmlinux.sh, where the Rust tests keep it too."""
    require(shutil.which("apt-get") is not None, "apt-get")
    release = linux_vm.vm.linux.release
    done = subprocess.run(
        [CHECKOUT / "scripts/debug-vmlinux.sh", release, CHECKOUT / "target/guest/dbg"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


@pytest.fixture(scope="session")
def big_vm(run_dir):
    """A paused 3 GiB q35 VM with no OS: RAM in two regions, 2 GiB below 4 GiB and 1 GiB above,
    with a pattern of the test's own written into its RAM file on each side of the split."""
    binary()
    name = run_dir.launch("big", "--memory", "3G")
    run("pause", name, "--run-dir", run_dir.path)
    vm = qemu_bridge.open(name, str(run_dir.path))
    yield vm
    run_dir.stop(name)
