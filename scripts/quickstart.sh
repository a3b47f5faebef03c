#!/usr/bin/env bash
# One command from a fresh machine to a VM seen as files:
#   installs QEMU and fuse3 if missing, builds qemu-bridge, launches a demo VM (a small Linux
#   guest built by scripts/build-guest.sh from Debian's cloud kernel and busybox; where that
#   cannot be had, a tiny boot-sector guest that writes a marker and keeps counting, and it says
#   why), mounts every VM at $QEMU_BRIDGE_MOUNT (default /mnt/qemu) and takes a tour: the VM's
#   status, its kernel's version, processes, log and modules, a vCPU's registers, the kernel's
#   banner read at its virtual address, a checksum, and how to go on (view, drgn, Volatility).
# Environment: QEMU_BRIDGE_MOUNT, QEMU_BRIDGE_RUN_DIR, QEMU_BRIDGE_VM (default demo),
#              QEMU_BRIDGE_BIN (use this binary instead of building one),
#              QEMU_BRIDGE_GUEST=boot (the boot-sector demo instead of the Linux guest).
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

guest=${QEMU_BRIDGE_GUEST:-linux}
if [[ $guest == linux ]] && ! "$bin" status "$vm" >/dev/null 2>&1 &&
    ! scripts/build-guest.sh target/guest/linux >/dev/null; then
    echo "The Linux guest cannot be built here (see the error above: it needs Debian's package" >&2
    echo "registry); the tour goes on with the boot-sector demo guest." >&2
    guest=boot
fi
linux=""
[[ $guest == linux ]] && linux=linux
if "$bin" status "$vm" >/dev/null 2>&1; then
    echo "VM $vm is already running"
elif [[ $linux == linux ]]; then
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
    # the kernel's banner, read at its virtual address through vCPU 0's page tables
    banner=$(grep -m 1 ' linux_banner$' "$mountpoint/$vm/linux/kallsyms" | cut -d ' ' -f 1)
    set -x
    ls "$mountpoint" "$mountpoint/$vm" "$mountpoint/$vm/linux"
    cat "$mountpoint/$vm/status"
    cat "$mountpoint/$vm/linux/version"
    head -n 8 "$mountpoint/$vm/linux/tasks"
    tail -n 5 "$mountpoint/$vm/linux/dmesg"
    cat "$mountpoint/$vm/linux/modules"
    python3 -c 'import json, sys; r = json.load(sys.stdin)["registers"]; print({k: r[k] for k in ("RIP", "RSP", "CR3") if k in r})' \
        < "$mountpoint/$vm/cpus/0/registers"
    "$bin" read "$vm" "0x$banner" 64 --virtual
    cat "$mountpoint/$vm/checksum"
    { set +x; } 2>/dev/null
    echo
    echo "Done. More of the guest, from its memory alone:"
    printf '  %-56s %s\n' \
        "cat $mountpoint/$vm/linux/proc/1/maps" "a process's memory areas (status, cmdline, environ)" \
        "$bin view" "every VM's memory, live, at http://127.0.0.1:8077/" \
        "python3 -m venv ~/qb && ~/qb/bin/pip install ./python" "the Python package, then:" \
        "~/qb/bin/qemu-bridge-drgn $vm" "drgn on the live kernel, its types from its BTF" \
        "~/qb/bin/qemu-bridge-vol $vm linux.pslist.PsList" "Volatility 3, with nothing prepared"
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
