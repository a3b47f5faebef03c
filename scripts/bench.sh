#!/usr/bin/env bash
# Runs the benchmark suite: launches a 64 MiB VM under TCG (and two more), mounts them, measures,
# tears everything down, and writes target/bench/results.md (a Markdown table: seed target,
# median, p99, baseline measured in the same run, ratio, verdict).
# BENCH_SECONDS=N shortens the sustained 60 Hz runs (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# the peer measured beside qemu-bridge (its QEMU device ships in the wheel)
python3 -c "import leechcorepyc" 2>/dev/null ||
    python3 -m pip install --quiet --root-user-action=ignore leechcorepyc ||
    echo "warning: leechcorepyc not installed: LeechCore is left out of the table" >&2
cargo bench --locked --bench performance
echo "results: target/bench/results.md"
