#!/usr/bin/env bash
# Unpacks QEMU 10.0 from Debian's bookworm-backports into DIR (default target/qemu10) without
# installing it: the system keeps its QEMU (7.2), no apt source is added, no package conflicts
# (Debian's qemu-system-x86 7.2 and backported packages replace each other). Prints the path of a
# qemu-system-x86_64 that runs it with its own firmware and data (the SeaBIOS of the same suite:
# bookworm's 1.16.2 under QEMU 10 stalls about 30 s at every boot, after probing the ports, before
# it reaches the AHCI disk; 1.16.3 boots at once); the tests use it through
# QEMU_BRIDGE_QEMU. Reuses the mirror of the system's own Debian entry (deb822 or one-line).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(realpath -m "${1:-target/qemu10}")
wrapper=$dir/qemu-system-x86_64
if [[ -x $wrapper && -x $dir/root/usr/bin/qemu-system-x86_64 && -f $dir/root/usr/share/seabios/bios-256k.bin ]]; then
    echo "$wrapper"
    exit 0
fi
apt=$dir/apt
mkdir -p "$apt/lists/partial" "$apt/sources" "$apt/cache/archives/partial" "$dir/debs"
# the system's Debian entry, with the backports suite instead of its own
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    awk 'BEGIN { RS = ""; ORS = "\n\n" }
         /Suites:[^\n]*bookworm( |\n|$)/ && !/security/ { sub(/Suites:[^\n]*/, "Suites: bookworm-backports"); print; exit }' \
        /etc/apt/sources.list.d/debian.sources > "$apt/sources/backports.sources"
else
    awk '$1 == "deb" && $3 == "bookworm" { $3 = "bookworm-backports"; print; exit }' /etc/apt/sources.list \
        > "$apt/sources/backports.list"
fi
if [[ ! -s $apt/sources/backports.sources && ! -s $apt/sources/backports.list ]]; then
    echo "error: no Debian bookworm entry in the apt sources to derive bookworm-backports from" >&2
    exit 1
fi
options=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt/sources"
         -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache")
apt-get "${options[@]}" update -qq
chmod 777 "$dir/debs"   # apt-get download drops to the _apt user
(cd "$dir/debs" && apt-get "${options[@]}" download -qq qemu-system-x86 qemu-system-data qemu-system-common seabios)
rm -rf "$dir/root"
for deb in "$dir"/debs/*.deb; do
    dpkg -x "$deb" "$dir/root"
done
missing=$(ldd "$dir/root/usr/bin/qemu-system-x86_64" | awk '/not found/ { print $1 }')
if [[ -n $missing ]]; then
    echo "error: QEMU 10 needs libraries this system lacks: $missing" >&2
    exit 1
fi
cat > "$wrapper" <<WRAPPER
#!/bin/sh
# QEMU 10.0 unpacked by scripts/qemu10.sh: its own data and SeaBIOS first, then the system's
exec "$dir/root/usr/bin/qemu-system-x86_64" -L "$dir/root/usr/share/qemu" -L "$dir/root/usr/share/seabios" -L /usr/share/qemu "\$@"
WRAPPER
chmod +x "$wrapper"
"$wrapper" --version | head -1 >&2
echo "$wrapper"
