#!/usr/bin/env bash
# Runs every check and test: installs what is missing, then rustfmt, clippy, unit, integration
# (real QEMU under TCG, real FUSE mounts, real files in /dev/shm) and doc tests, then the fuzz
# targets for 60 s each (FUZZ_SECONDS).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
echo "== QEMU: $(qemu-system-x86_64 --version | head -1)"
echo "== kernel: $(uname -r)"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --locked --all-targets
echo "== doc tests"
cargo test --locked --doc
echo "== fuzzing (bounded)"
scripts/fuzz.sh
