#!/usr/bin/env bash
# Runs the cargo-fuzz targets for a bounded time each (FUZZ_SECONDS, default 50), as many at once
# as there are cores (FUZZ_JOBS):
#   qmp_reply  the QMP client fed arbitrary server bytes
#   layout     guest-physical layout and bounds arithmetic
#   mtree      the parser of QEMU's flat memory map (info mtree -f)
#   paging     the page-table walker (x86_64, RISC-V, AArch64) over arbitrary guest RAM
#   vmcoreinfo the parser of the guest kernel's vmcoreinfo page
#   kallsyms   the decoder of the guest kernel's symbol tables
#   printk     the reader of the guest kernel's log (its ring buffer's indices and blocks)
#   btf        the reader of the guest kernel's types (structs, member paths) and the ISF made of them
#   kernel_walks the walks of the kernel's lists, maple trees and strings over arbitrary memory
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 lets the stable toolchain provide them
# (no other toolchain can be installed here). A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/: turn it into a unit test next to the code, then fix the bug.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-50}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
targets=(qmp_reply layout mtree paging vmcoreinfo kallsyms printk btf kernel_walks record)
# every target built first, its errors shown: the runs below filter their output, and a target
# that no longer compiles must fail the run, not pass it in silence
for target in "${targets[@]}"; do
    cargo fuzz build "$target"
done
# one target per core at a time (libFuzzer runs a target on one thread): the same fuzzing time
# each, in a fraction of the wall-clock time; each target's lines are printed when it ends
jobs=${FUZZ_JOBS:-$(nproc)}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
fuzz_one() {
    local target=$1
    mkdir -p "fuzz/corpus/$target"
    cargo fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
        >"$logs/$target" 2>&1 || true
    echo "== fuzz $target for ${seconds}s"
    grep -E "^(Done|stat::number_of_executed_units|==[0-9]+==|thread '|SUMMARY|.*panicked)" "$logs/$target" || true
}
running=0
for target in "${targets[@]}"; do
    if ((running >= jobs)); then
        wait -n
        running=$((running - 1))
    fi
    fuzz_one "$target" &
    running=$((running + 1))
done
wait
failed=()
for target in "${targets[@]}"; do
    compgen -G "fuzz/artifacts/$target/*" >/dev/null && failed+=("$target")
done
if ((${#failed[@]})); then
    for target in "${failed[@]}"; do
        echo "fuzz target $target failed (crash, leak, timeout or OOM): inputs in fuzz/artifacts/$target/" >&2
        tail -40 "$logs/$target" >&2
    done
    exit 1
fi
