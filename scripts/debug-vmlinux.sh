#!/usr/bin/env bash
# Fetches the DWARF vmlinux of Debian's kernel RELEASE (linux-image-RELEASE-dbg: 300-600 MB) into
# DIR/vmlinux-RELEASE, once, and prints its path: the oracle the tests hold drgn and crash to.
# The package is looked up in the system's apt sources and, failing that, in bookworm-backports
# and bullseye through an apt directory of the script's own (as scripts/build-guest.sh does:
# the system's apt configuration is not changed).
# Usage: debug-vmlinux.sh RELEASE DIR
set -euo pipefail
release=${1:?usage: $0 RELEASE DIR}
dir=${2:?usage: $0 RELEASE DIR}
target=$dir/vmlinux-$release
if [[ -s $target ]]; then
    echo "$target"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 777 "$work"   # apt-get download drops to the _apt user
arch=amd64
package=linux-image-$release-dbg
eval "$(sed -n '/^private_apt()/,/^}/p' "$(dirname "$0")/build-guest.sh")"
if ! (cd "$work" && apt-get download -qq "$package" 2>/dev/null); then
    private_apt "bookworm-backports bullseye"
    (cd "$work" && apt-get "${options[@]}" download -qq "$package")
fi
deb=$(ls "$work"/*.deb)
member=./usr/lib/debug/boot/vmlinux-$release
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" "$member"
mkdir -p "$dir"
mv "$work/$member" "$target.partial"
mv "$target.partial" "$target"
echo "$target"
