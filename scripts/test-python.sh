#!/usr/bin/env bash
# The Python package: `pip install ./python` into a venv of Debian's python3 (as a user would),
# its type stubs checked against the native module (mypy.stubtest), and its tests (pytest, real
# QEMU, FUSE, drgn and Volatility). Needs the qemu-bridge binary of `cargo build` (the tests
# launch VMs with it) and uses the guests the Rust tests built under target/guest when there.
set -euo pipefail
cd "$(dirname "$0")/.."
python=/usr/bin/python3
[[ -x $python ]] || python=python3
venv=target/python-venv
echo "== Python: the qemu_bridge package in a venv of $("$python" --version)"
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check pytest mypy typing_extensions drgn volatility3
# the dev profile (dependencies optimised, as Cargo.toml sets): it reuses what cargo test built
MATURIN_PEP517_ARGS="--profile dev" "$venv/bin/pip" install --quiet --disable-pip-version-check ./python
cargo build --locked --quiet --bin qemu-bridge
echo "== Python: stubtest"
"$venv/bin/python" -m mypy.stubtest qemu_bridge
echo "== Python: pytest"
# pytest's "no tests ran" (exit 5) fails the run, as any other non-zero exit does
"$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests "$@"
