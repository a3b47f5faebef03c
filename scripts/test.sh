#!/usr/bin/env bash
# Runs every check and test: installs what is missing, then rustfmt, clippy, unit, integration
# (real QEMU under TCG, real FUSE mounts, real files in /dev/shm) and doc tests, the QEMU-facing
# integration tests a second time against QEMU 10.0 (unpacked from bookworm-backports by
# scripts/qemu10.sh; QEMU_BRIDGE_SKIP_QEMU10=1 skips that pass outside CI), then the fuzz targets
# for 50 s each (FUZZ_SECONDS), one per core at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
# each step's line says when it began (minutes into the run): where the time goes, in CI's log
say() { printf '== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

scripts/install-deps.sh
say "QEMU: $(qemu-system-x86_64 --version | head -1)"
say "kernel: $(uname -r)"

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
say "cargo doc (every link resolves)"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps
say "library alone: no clap, fuser, env_logger, png or web server"
cargo build --locked --lib --no-default-features
tree=$(cargo tree --locked --no-default-features --edges normal --prefix none)
for crate in clap clap_complete clap_mangen fuser env_logger png tiny_http tungstenite; do
    if grep -q "^$crate v" <<<"$tree"; then
        echo "error: the library without default features depends on $crate" >&2
        exit 1
    fi
done
say "cargo test (with the tests that need QEMU, FUSE and root)"
cargo test --locked --all-targets -- --include-ignored
say "doc tests"
cargo test --locked --doc
say "Python (scripts/test-python.sh)"
scripts/test-python.sh
if [[ ${QEMU_BRIDGE_SKIP_QEMU10:-} == 1 && ${CI:-} != true ]]; then
    say "QEMU 10.0: SKIPPED (QEMU_BRIDGE_SKIP_QEMU10=1)"
else
    # outside the checkout: tests run QEMU as another user, who may not reach a clone of mode 0700
    qemu10=$(scripts/qemu10.sh /var/cache/qemu-bridge/qemu10)
    say "the QEMU-facing tests again, against $("$qemu10" --version | head -1)"
    # every integration test file runs again, but those named here with their reason; a name
    # here that is no test file is an error, so the list cannot rot
    declare -A not_again=(
        [readme]="the README's commands run Debian's QEMU on purpose: what a new user has"
        [install]="installs and mounts through mount(8); nothing in it depends on QEMU's version"
        [libvirt]="libvirtd starts its own QEMU (Debian's), not the one named here"
        [linux]="boots Linux guests for minutes; the QEMU-facing paths it uses run in the other files"
        [soft_dirty]="boots Debian's kernel, which runs this host's own QEMU inside; the paths it tracks run in the other files"
    )
    again=()
    for name in "${!not_again[@]}"; do
        [[ -f tests/$name.rs ]] || { echo "error: test.sh names tests/$name.rs, which is gone" >&2; exit 1; }
    done
    for file in tests/*.rs; do
        name=$(basename "$file" .rs)
        [[ -v not_again[$name] ]] || again+=(--test "$name")
    done
    echo "   (not again: ${!not_again[*]})"
    QEMU_BRIDGE_QEMU=$qemu10 cargo test --locked "${again[@]}" -- --include-ignored
fi
say "fuzzing (bounded)"
scripts/fuzz.sh
say "all passed"
