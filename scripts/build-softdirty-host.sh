#!/usr/bin/env bash
# Builds a VM that runs one command of this host on a kernel with soft-dirty page tracking
# (CONFIG_MEM_SOFT_DIRTY), which a host kernel may lack: Debian's generic kernel
# (linux-image-amd64's dependency; the cloud kernel has no 9p) and an initramfs of busybox-static
# plus the virtio, 9p and FUSE modules of that kernel. Its /init mounts this host's root, shared
# read-only by QEMU over virtio-9p (mount tag `hostroot`), at /host, gives it fresh proc, sys, dev
# and tmpfs on /tmp, /var/tmp, /run and /dev/shm (the share is read-only: anything written goes
# there; `qb.checkout=DIR` on the command line mounts the share tagged `checkout` at DIR on top),
# runs the script named on the kernel command line as `qb.run=PATH` (a host path) with
# `chroot /host /bin/sh`, its output on the console, then prints `QB-NESTED-EXIT:<code>` and
# powers off. `qb.ci=true` on the command line sets CI=true for the script. Boot it with:
#   qemu-system-x86_64 -machine q35,accel=tcg -m 1G -display none -serial file:LOG -no-reboot \
#     -kernel OUTDIR/vmlinuz -initrd OUTDIR/initrd.gz -append "console=ttyS0 quiet panic=-1 qb.run=PATH" \
#     -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap
# (test-support/src/nested.rs does). Output: OUTDIR/vmlinuz, OUTDIR/initrd.gz (default
# target/guest/softdirty-host). Cached: a second run returns at once.
set -euo pipefail
out=$(realpath -m "${1:-$(dirname "$0")/../target/guest/softdirty-host}")
# the build's mark names the script that built it: a changed script builds anew
recipe=$(sha256sum "$0" | cut -d' ' -f1)
if [[ -f $out/vmlinuz && -f $out/initrd.gz && -f $out/.complete ]] && grep -qx "recipe $recipe" "$out/.complete"; then
    echo "$out (cached)"
    exit 0
fi
mkdir -p "$out"   # first: a place that cannot be written fails before any download
for tool in cpio xz; do
    command -v $tool >/dev/null && continue
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$([[ $tool == xz ]] && echo xz-utils || echo $tool)" >/dev/null
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 777 "$work"   # apt-get download drops to the _apt user
kernel=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
if [[ -z $kernel ]]; then
    apt-get update -qq
    kernel=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
fi
(cd "$work" && apt-get download -qq "$kernel" busybox-static 2>/dev/null)
dpkg -x "$work"/linux-image-*.deb "$work/kernel"
dpkg -x "$work"/busybox-static_*.deb "$work/busybox"
if ! grep -q '^CONFIG_MEM_SOFT_DIRTY=y' "$work"/kernel/boot/config-*; then
    echo "error: $kernel has no CONFIG_MEM_SOFT_DIRTY" >&2
    exit 1
fi

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,host,modules}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
# In load order: there is no modules.dep in the unpacked tree, so /init loads them by path. A
# module this kernel has built in (no .ko) is skipped; one compressed is unpacked here.
modules=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
         netfs fscache 9pnet 9pnet_virtio 9p fuse)
loaded=()
for module in "${modules[@]}"; do
    file=$(find "$work"/kernel/lib/modules -name "$module.ko*" | head -1)
    if [[ -z $file ]]; then
        name=$(find "$work"/kernel/lib/modules -name modules.builtin -exec grep -l "/$module.ko\$" {} + || true)
        [[ -n $name ]] || { echo "error: $kernel has no module $module, built in or not" >&2; exit 1; }
        continue
    fi
    case $file in
        *.ko) cp "$file" "$root/modules/$module.ko" ;;
        *.ko.xz) xz -dc "$file" > "$root/modules/$module.ko" ;;
        *.ko.zst) zstd -qdc "$file" > "$root/modules/$module.ko" ;;
        *.ko.gz) gzip -dc "$file" > "$root/modules/$module.ko" ;;
        *) echo "error: cannot load $file" >&2; exit 1 ;;
    esac
    loaded+=("$module")
done

cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
# ends the run: the exit line is written by the last opener of the serial port, whose close
# waits until it has gone out, so that powering off cannot cut it
finish() {
    kill -9 -1 2>/dev/null   # whatever the script left running
    sleep 0.3
    exec </dev/null >/dev/null 2>&1
    echo "QB-NESTED-EXIT:$1" > /dev/ttyS0
    poweroff -f
}
fail() {
    echo "QB-NESTED-SETUP-FAILED: $*"
    finish 255
}
for module in MODULES; do
    insmod /modules/$module.ko || fail "insmod $module"
done
script=""
checkout=""
ci=""
for word in $(cat /proc/cmdline); do
    case $word in
        qb.run=*) script=${word#qb.run=} ;;
        qb.checkout=*) checkout=${word#qb.checkout=} ;;
        qb.ci=true) ci=CI=true ;;
    esac
done
[ -n "$script" ] || fail "no qb.run=SCRIPT on the kernel command line"
# cache=loose: the page cache keeps what was read (binaries start 2-5x faster than with no
# cache); the guest then misses changes made on the host while it runs, which nothing needs
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host ||
    fail "mount the host's root (QEMU's -virtfs ...,mount_tag=hostroot)"
# read before /host/tmp is covered by a tmpfs: the script may lie under the host's /tmp
cp "/host$script" /script || fail "read $script"
mount -t proc proc /host/proc || fail "mount /host/proc"
mount -t sysfs sysfs /host/sys || fail "mount /host/sys"
mount -t devtmpfs devtmpfs /host/dev || fail "mount /host/dev"
mkdir -p /host/dev/shm /host/dev/pts
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /host/dev/pts || fail "mount /host/dev/pts"
ln -sf /proc/self/fd /host/dev/fd
ln -sf /proc/self/fd/0 /host/dev/stdin
ln -sf /proc/self/fd/1 /host/dev/stdout
ln -sf /proc/self/fd/2 /host/dev/stderr
for dir in /dev/shm /tmp /var/tmp /run; do
    # up to 90 % of the VM's memory each (not 50 %): a nested guest's RAM file, or a snapshot of
    # it, may take most of it
    mount -t tmpfs -o mode=1777,size=90% tmpfs "/host$dir" || fail "mount a tmpfs on $dir"
done
# the checkout, shared on its own (mount tag `checkout`), at its path: it may lie under one of
# the directories just covered (a clone in /tmp), and its test binaries must run in here
if [ -n "$checkout" ]; then
    mkdir -p "/host$checkout" 2>/dev/null
    mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose checkout "/host$checkout" ||
        fail "mount the checkout $checkout (QEMU's -virtfs ...,mount_tag=checkout)"
fi
mkdir -p /host/run/qb /host/run/lock
cp /script /host/run/qb/script.sh
ip link set lo up
env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin $ci \
    chroot /host /bin/sh /run/qb/script.sh
finish $?
INIT
sed -i "s/MODULES/${loaded[*]}/" "$root/init"
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$out/initrd.gz"
cp "$work"/kernel/boot/vmlinuz-* "$out/vmlinuz"
printf '%s\nrecipe %s\n' "$kernel" "$recipe" > "$out/.complete"
echo "$out ($kernel)"
