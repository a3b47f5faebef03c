#!/usr/bin/env bash
# Assembles the demo/test boot-sector guest (tests/guest/boot.S, or SOURCE) into a 1 MiB raw disk
# image.
# Usage: scripts/build-boot-guest.sh OUTPUT.img [SOURCE.S]
set -euo pipefail
out=${1:?usage: $0 OUTPUT.img}
src=${2:-"$(cd "$(dirname "$0")/.." && pwd)/tests/guest/boot.S"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
as --32 "$src" -o "$work/boot.o"
ld -m elf_i386 -Ttext 0x7c00 --oformat binary "$work/boot.o" -o "$work/boot.bin"
[[ $(stat -c %s "$work/boot.bin") -eq 512 ]] || { echo "boot sector is not 512 bytes" >&2; exit 1; }
truncate -s 1M "$work/boot.bin"   # SeaBIOS refuses a 512-byte disk
mkdir -p "$(dirname "$out")"
mv "$work/boot.bin" "$out"
