#!/usr/bin/env bash
# Installs what qemu-bridge needs to run and to be tested, with apt-get, if missing:
# QEMU (Debian 12's 7.2) and qemu-img, fusermount3, binutils (to assemble the test guest), python3,
# xxd, util-linux (setpriv), gcc, b3sum, chromium, libvirt (daemon and virsh), crash and bpftool. With --runtime only what qemu-bridge needs to
# run (QEMU, qemu-img, fuse3). Idempotent; needs root (or sudo) only when something is missing.
set -euo pipefail

# What is missing, computed afresh each time: installing one package can remove another (Debian's
# qemu-system-x86 7.2 replaces a backported qemu-utils, taking qemu-img with it).
runtime=false
[[ ${1:-} == --runtime ]] && runtime=true   # what qemu-bridge needs to run, not to be tested

missing() {
    need=()
    command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
    command -v qemu-img >/dev/null || need+=(qemu-utils)   # creates the qcow2 state disks
    command -v fusermount3 >/dev/null || need+=(fuse3)
    command -v cc >/dev/null || need+=(gcc)   # the blake3 crate builds its SIMD code with it
    $runtime && return
    command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)   # Arm guests in the tests
    command -v qemu-system-riscv64 >/dev/null || need+=(qemu-system-misc)  # RISC-V guests in the tests
    command -v as >/dev/null && command -v ld >/dev/null || need+=(binutils)
    [[ -x /usr/bin/python3 ]] || need+=(python3)   # the tests run it as another user
    # the Python package is built and tested in a venv of Debian's python3
    /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
    command -v xxd >/dev/null || need+=(xxd)
    command -v setpriv >/dev/null || need+=(util-linux)
    command -v b3sum >/dev/null || need+=(b3sum)   # the oracle of snapshot digests in the tests
    command -v chromium >/dev/null || need+=(chromium)   # the browser of the view's test
    command -v libvirtd >/dev/null || need+=(libvirt-daemon-system)   # the libvirt test's daemon
    command -v virsh >/dev/null || need+=(libvirt-clients)
    command -v script >/dev/null || need+=(bsdutils)   # a terminal for the progress bar's test
    command -v crash >/dev/null || need+=(crash)   # reads the mount's core in the tests
    command -v bpftool >/dev/null || need+=(bpftool)   # reads the mount's linux/btf in the tests
    command -v makedumpfile >/dev/null || need+=(makedumpfile)   # turns ELF captures into kdump files in the tests
}

sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
updated=false
for attempt in 1 2 3; do
    missing
    ((${#need[@]})) || break
    if ((attempt == 3)); then
        echo "error: still missing after installing: ${need[*]}" >&2
        exit 1
    fi
    echo "installing: ${need[*]}" >&2
    if ! $updated; then
        $sudo apt-get update -qq
        updated=true
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
done

# Volatility 3 reads the mount's core and physical files in the tests (from PyPI).
if ! $runtime && ! command -v vol >/dev/null; then
    echo "installing: volatility3 (pip)" >&2
    python3 -m pip install --quiet --root-user-action=ignore volatility3 || pip install --quiet volatility3
fi

# drgn reads the mount's core with no symbol file in the tests (from PyPI).
if ! $runtime && ! command -v drgn >/dev/null; then
    echo "installing: drgn (pip)" >&2
    python3 -m pip install --quiet --root-user-action=ignore drgn || pip install --quiet drgn
fi

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
fi

# /dev/fuse is needed by the mount; under CI its absence is a failure, not a skip.
if [[ ! -c /dev/fuse ]]; then
    if [[ ${CI:-} == true ]]; then
        echo "error: /dev/fuse is missing (CI=true: refusing to skip the mount tests)" >&2
        exit 1
    fi
    echo "warning: /dev/fuse is missing: the mount will not work" >&2
fi
