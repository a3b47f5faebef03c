#!/usr/bin/env bash
# One command from a fresh machine to a VM seen as files:
#   installs QEMU and fuse3 if missing, builds qemu-bridge, launches a demo VM (a tiny
#   boot-sector guest that writes a marker and keeps counting), mounts every VM at
#   $QEMU_BRIDGE_MOUNT (default /mnt/qemu) and takes a short tour.
# Environment: QEMU_BRIDGE_MOUNT, QEMU_BRIDGE_RUN_DIR, QEMU_BRIDGE_VM (default demo),
#              QEMU_BRIDGE_BIN (use this binary instead of building one),
#              QEMU_BRIDGE_GUEST=linux (boot a real Linux guest built by scripts/build-guest.sh
#              instead of the boot-sector demo).
set -euo pipefail
cd "$(dirname "$0")/.."

mountpoint=${QEMU_BRIDGE_MOUNT:-/mnt/qemu}
vm=${QEMU_BRIDGE_VM:-demo}

scripts/install-deps.sh
if [[ -n ${QEMU_BRIDGE_BIN:-} ]]; then
    bin=$QEMU_BRIDGE_BIN
else
    cargo build --release --locked --quiet
    bin=target/release/qemu-bridge
fi

linux=${QEMU_BRIDGE_GUEST:-}
if "$bin" status "$vm" >/dev/null 2>&1; then
    echo "VM $vm is already running"
elif [[ $linux == linux ]]; then
    scripts/build-guest.sh target/guest/linux
    "$bin" launch "$vm" --linux target/guest/linux
else
    image=target/guest/boot.img
    [[ -f $image ]] || scripts/build-boot-guest.sh "$image"
    guest_disk=target/guest/$vm.img           # QEMU locks a disk image: one copy per VM
    cp "$image" "$guest_disk"
    "$bin" launch "$vm" --drive "$guest_disk"
fi
mkdir -p "$mountpoint"
if grep -qs " $(realpath "$mountpoint") " /proc/self/mountinfo; then
    echo "$mountpoint is already mounted"
else
    "$bin" mount "$mountpoint"
fi

if [[ $linux == linux ]]; then
    set -x
    ls "$mountpoint"
    cat "$mountpoint/$vm/status"
    grep -a -o -m 1 'QEMU-BRIDGE-LINUX-MARKER:[0-9a-f-]*' "$mountpoint/$vm/ram"
    grep -a -o -m 1 'Linux version [^ ]*' "$mountpoint/$vm/ram"
    cat "$mountpoint/$vm/checksum"
    { set +x; } 2>/dev/null
    echo
    echo "Done. Try: grep -a -o 'QEMU-BRIDGE-COUNTER:[0-9]*' $mountpoint/$vm/ram | tail -1   (live)"
else
    # wait (TCG can take a while on a busy machine) until the guest has written its marker
    for _ in $(seq 600); do
        "$bin" read "$vm" 0x10000 16 --raw 2>/dev/null | grep -qa QEMU-BRIDGE && break
        sleep 0.1
    done
    set -x
    ls "$mountpoint"
    cat "$mountpoint/$vm/status"
    xxd -s 0x10000 -l 32 "$mountpoint/$vm/ram"
    cat "$mountpoint/$vm/checksum"
    { set +x; } 2>/dev/null
    echo
    echo "Done. Try: xxd -s 0x10040 -l 4 $mountpoint/$vm/ram   (the guest's counter, live)"
fi
echo "Pictures: xdg-open $mountpoint/$vm/map.png, or run '$bin view' and open http://127.0.0.1:8077/"
echo "Clean up: $bin umount $mountpoint && $bin stop $vm"
