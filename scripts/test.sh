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
echo "== library alone: no clap, fuser or env_logger"
cargo build --locked --lib --no-default-features
tree=$(cargo tree --locked --no-default-features --edges normal --prefix none)
for crate in clap fuser env_logger; do
    if grep -q "^$crate v" <<<"$tree"; then
        echo "error: the library without default features depends on $crate" >&2
        exit 1
    fi
done
echo "== cargo test (with the tests that need QEMU, FUSE and root)"
cargo test --locked --all-targets -- --include-ignored
echo "== doc tests"
cargo test --locked --doc
echo "== fuzzing (bounded)"
scripts/fuzz.sh
