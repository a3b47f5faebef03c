#!/usr/bin/env bash
# Builds a small Linux guest from Debian's packages, offline apart from the package registry: the
# cloud kernel (linux-image-*-cloud-amd64 or -arm64) and an initramfs of busybox-static whose /init
#   - prints a marker line to the serial console: QEMU-BRIDGE-LINUX-MARKER:<boot id>
#   - keeps that marker resident in guest memory (a file in the RAM-backed rootfs)
#   - runs a small workload that keeps changing memory (a counter file rewritten 10 times a s)
#   - loads qemu_fw_cfg, so that a VM with -device vmcoreinfo gets the kernel's vmcoreinfo
#   - writes a line of its own into the kernel log and, in the background, prints its own view
#     of its kernel to the console for the tests to compare with (/proc/version, a hash of the kernel's own
#     symbols in /proc/kallsyms, a hash of its BTF, ps, dmesg), between QEMU-BRIDGE-ORACLE-BEGIN
#     and -END
#   - runs a bash (bash-static) with two commands in its history
#   - with qb_tasks=N on the kernel's command line, runs N more processes (for the benchmarks)
# Usage: build-guest.sh [OUTDIR [SUITE [ARCH]]]: SUITE bookworm (the default: Debian 12's 6.1
# kernel, through the system's apt) or bookworm-backports (its 6.12 kernel, through an apt
# directory of the script's own, derived from the system's Debian entry as scripts/qemu10.sh
# does), or bullseye (Debian 11's 5.10 kernel, the same way); ARCH amd64 (the default) or arm64 (linux-image-cloud-arm64 and busybox-static for arm64,
# both through such an apt directory, with neither the system's apt configuration nor dpkg's
# architectures changed; its vmlinuz is the kernel's Image, for qemu-system-aarch64 -M virt
# -kernel, and its /init writes to /dev/ttyAMA0, the console of the virt board).
# Output: OUTDIR/vmlinuz, OUTDIR/initrd.gz (default target/guest/linux). Cached: a second run
# returns at once. Boot it with: qemu-bridge launch NAME --linux OUTDIR. The qemu-bridge binary
# carries this script and runs it for `launch NAME --linux` with no directory (its cache).
# Debian's kernel needs at least 80 MiB of RAM (with 64 MiB QEMU exits at once with no output);
# --linux defaults to 128 MiB.
set -euo pipefail
out=$(realpath -m "${1:-$(dirname "$0")/../target/guest/linux}")
# the initramfs's version: a cache of an older one is built again
initramfs_version=10
suite=${2:-bookworm}
arch=${3:-amd64}
case $suite in
bookworm | bookworm-backports | bullseye) ;;
*) echo "error: unknown suite $suite (bookworm, bookworm-backports or bullseye)" >&2; exit 1 ;;
esac
case $arch in
amd64 | arm64) ;;
*) echo "error: unknown architecture $arch (amd64 or arm64)" >&2; exit 1 ;;
esac
# the build's mark names the architecture (a guest of another one is built again; a mark
# without that line is of an amd64 guest)
if [[ -f $out/vmlinuz && -f $out/initrd.gz && -f $out/.complete ]] &&
    grep -qx "initramfs $initramfs_version" "$out/.complete" &&
    { grep -qx "arch $arch" "$out/.complete" ||
        { [[ $arch == amd64 ]] && ! grep -q '^arch ' "$out/.complete"; }; }; then
    echo "$out (cached)"
    exit 0
fi
mkdir -p "$out"   # first: a place that cannot be written fails before any download
command -v cpio >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cpio >/dev/null; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 777 "$work"   # apt-get download drops to the _apt user
# an apt directory of our own, for the architecture $arch: the system's Debian entry with the
# suites "$1" (the system's apt configuration and dpkg's architectures untouched); its options
# in the array options
private_apt() {
    apt=$work/apt
    mkdir -p "$apt/lists/partial" "$apt/sources" "$apt/cache/archives/partial"
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        awk -v suites="$1" 'BEGIN { RS = ""; ORS = "\n\n" }
             /Suites:[^\n]*bookworm( |\n|$)/ && !/security/ { sub(/Suites:[^\n]*/, "Suites: " suites); print; exit }' \
            /etc/apt/sources.list.d/debian.sources > "$apt/sources/private.sources"
    else
        awk -v suites="$1" '$1 == "deb" && $3 == "bookworm" {
                 n = split(suites, s, " "); for (i = 1; i <= n; i++) { $3 = s[i]; print }; exit }' \
            /etc/apt/sources.list > "$apt/sources/private.list"
    fi
    options=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt/sources"
             -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
             -o "APT::Architecture=$arch" -o "APT::Architectures=$arch")
    apt-get "${options[@]}" update -qq
}
case $arch-$suite in
arm64-*)
    # the kernel of $suite (named as the default release: backports ranks below bookworm),
    # busybox of bookworm
    suites=bookworm
    [[ $suite == bookworm ]] || suites="bookworm $suite"
    private_apt "$suites"
    kernel=$(apt-cache "${options[@]}" -o "APT::Default-Release=$suite" depends linux-image-cloud-arm64 |
        awk '/Depends: linux-image-/ {print $2; exit}')
    if [[ -n $kernel ]]; then
        (cd "$work" && apt-get "${options[@]}" download -qq "$kernel" 2>/dev/null &&
            apt-get "${options[@]}" download -qq busybox-static bash-static 2>/dev/null)
    fi
    ;;
amd64-bookworm)
    kernel=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    if [[ -z $kernel ]]; then
        apt-get update -qq
        kernel=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
    fi
    (cd "$work" && apt-get download -qq "$kernel" busybox-static bash-static 2>/dev/null)
    ;;
amd64-bookworm-backports | amd64-bullseye)
    # an apt directory of our own: the system's Debian entry with that suite (busybox is the
    # system's)
    private_apt "$suite"
    kernel=$(apt-cache "${options[@]}" depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
    (cd "$work" && apt-get "${options[@]}" download -qq "$kernel" 2>/dev/null &&
        apt-get download -qq busybox-static bash-static 2>/dev/null)
    ;;
esac
[[ -n $kernel ]] || { echo "error: no linux-image-cloud-$arch in $suite" >&2; exit 1; }
dpkg -x "$work"/linux-image-*.deb "$work/kernel"
dpkg -x "$work"/busybox-static_*.deb "$work/busybox"
dpkg -x "$work"/bash-static_*.deb "$work/bash"

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
cp "$work/bash/bin/bash-static" "$root/bin/bash"
# a bash of the guest's own with a history (commands and times) in its memory, for the tests'
# Volatility linux.bash
cat > "$root/bin/qb-bash" <<'BASH'
#!/bin/bash
HISTTIMEFORMAT='%F %T '
set -o history
history -s "echo qb-history-one"
history -s "cat /etc/qb-history-two"
while true; do sleep 1000; done
BASH
chmod +x "$root/bin/qb-bash"
# QEMU's fw_cfg driver (no dependencies): with -device vmcoreinfo it hands QEMU the vmcoreinfo
# note; and a module with no part in the guest's work, for the tests' /proc/modules. Newer
# kernels ship them compressed (.ko.xz): unpacked here, so that insmod takes them as they are
for module in qemu_fw_cfg dummy; do
    file=$(find "$work/kernel/lib/modules" -name "$module.ko*" | head -1)
    case $file in
    *.ko) cp "$file" "$root/$module.ko" ;;
    *.ko.xz) xz -dc "$file" > "$root/$module.ko" ;;
    *.ko.zst) zstd -qdc "$file" > "$root/$module.ko" ;;
    *) echo "error: no $module module in $kernel" >&2; exit 1 ;;
    esac
done
# a process of the guest's own, with arguments and an environment of its own (its name is the
# script's: the kernel names a process after the file it executes)
cat > "$root/bin/qb-sleeper" <<'SLEEPER'
#!/bin/busybox sh
while true; do sleep 1000; done
SLEEPER
chmod +x "$root/bin/qb-sleeper"
cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# the serial console: the PL011 of arm64's virt board, else the PC's 16550
console=/dev/ttyS0
[ -c /dev/ttyAMA0 ] && console=/dev/ttyAMA0
insmod /qemu_fw_cfg.ko 2>/dev/null
insmod /dummy.ko 2>/dev/null
QB_SECRET=hush-42 /bin/qb-sleeper alpha "beta gamma" &
sleeper=$!
/bin/bash /bin/qb-bash < /dev/null &
# qb_tasks=N: N more processes, for the benchmarks
tasks=$(sed -n 's/.*qb_tasks=\([0-9]*\).*/\1/p' /proc/cmdline)
i=0
while [ "$i" -lt "${tasks:-0}" ]; do
    sleep 100000 &
    i=$((i + 1))
done
marker="QEMU-BRIDGE-LINUX-MARKER:$(cat /proc/sys/kernel/random/boot_id)"
echo "$marker" > /tmp/marker
echo "$marker" > "$console"
echo "qemu-bridge guest up: $(uname -r)" > "$console"
# then, in the background while the counter runs, its own view of its kernel for the tests
echo "qemu-bridge-test: a line of the guest's own, boot $(cat /proc/sys/kernel/random/boot_id)" > /dev/kmsg
{
    echo "QEMU-BRIDGE-ORACLE-BEGIN"
    echo "version: $(cat /proc/version)"
    # the kernel's own symbols (module, BPF and ftrace lines end in [name])
    echo "kallsyms: $(grep -vc '\[' /proc/kallsyms) $(grep -v '\[' /proc/kallsyms | sha256sum | cut -d' ' -f1)"
    echo "btf: $(sha256sum < /sys/kernel/btf/vmlinux | cut -d' ' -f1)"
    ps -o pid,ppid,comm | sed 's/^/ps: /'
    dmesg | sed 's/^/dmesg: /'
    sed 's/^/modules: /' /proc/modules
    echo "sleeper: $sleeper"
    sed 's/^/maps: /' /proc/$sleeper/maps
    sed 's/^/status: /' /proc/$sleeper/status
    echo "cmdline: $(od -An -v -tx1 /proc/$sleeper/cmdline | tr -d ' \n')"
    echo "environ: $(od -An -v -tx1 /proc/$sleeper/environ | tr -d ' \n')"
    echo "QEMU-BRIDGE-ORACLE-END"
} > "$console" &
counter=0
while true; do
    counter=$((counter + 1))
    echo "QEMU-BRIDGE-COUNTER:$counter" > /tmp/counter
    sleep 0.1
done
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$out/initrd.gz"
cp "$work"/kernel/boot/vmlinuz-* "$out/vmlinuz"
# arm64's vmlinuz is the bare Image (Debian's 6.1); should a kernel ship it gzipped, unpacked here,
# so that vmlinuz is the Image both for QEMU's -kernel and for a reader of the kernel's file
if [[ $arch == arm64 ]] && gzip -t "$out/vmlinuz" 2>/dev/null; then
    gzip -dc "$out/vmlinuz" > "$out/vmlinuz.image" && mv "$out/vmlinuz.image" "$out/vmlinuz"
fi
printf '%s\ninitramfs %s\narch %s\n' "$kernel" "$initramfs_version" "$arch" > "$out/.complete"
echo "$out ($kernel)"
