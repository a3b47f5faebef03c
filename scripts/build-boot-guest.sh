#!/usr/bin/env bash
# Assembles the demo/test boot-sector guest (tests/guest/boot.S) into a 1 MiB raw disk image;
# each SYMBOL given is defined for the assembler (WRITER: the guest that writes a known set of
# pages, see boot.S).
# Usage: scripts/build-boot-guest.sh OUTPUT.img [SYMBOL...]
set -euo pipefail
out=${1:?usage: $0 OUTPUT.img}
src="$(cd "$(dirname "$0")/.." && pwd)/tests/guest/boot.S"
defines=()
for symbol in "${@:2}"; do
    defines+=(--defsym "$symbol=1")
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
as --32 "${defines[@]}" "$src" -o "$work/boot.o"
ld -m elf_i386 -Ttext 0x7c00 --oformat binary "$work/boot.o" -o "$work/boot.bin"
[[ $(stat -c %s "$work/boot.bin") -eq 512 ]] || { echo "boot sector is not 512 bytes" >&2; exit 1; }
truncate -s 1M "$work/boot.bin"   # SeaBIOS refuses a 512-byte disk
mkdir -p "$(dirname "$out")"
mv "$work/boot.bin" "$out"
