#!/usr/bin/env bash
# Installs qemu-bridge system-wide (as root), idempotent:
#   $PREFIX/bin/qemu-bridge                                  the command (PREFIX: /usr/local)
#   $PREFIX/share/man/man1/qemu-bridge.1                     its man page (from the clap definitions)
#   $PREFIX/share/bash-completion/completions/qemu-bridge    bash completions
#   $PREFIX/share/zsh/site-functions/_qemu-bridge            zsh completions
#   $PREFIX/share/fish/vendor_completions.d/qemu-bridge.fish fish completions
#   /usr/sbin/mount.fuse.qemu-bridge -> $PREFIX/bin/qemu-bridge
#                      so that `mount -t fuse.qemu-bridge qemu-bridge /mnt/qemu -o run_dir=DIR`
#                      and fstab lines of type fuse.qemu-bridge work (mount(8) runs it)
# It installs QEMU and fuse3 first if they are missing, and builds a release binary (or
# installs $QEMU_BRIDGE_BIN). `scripts/install.sh --uninstall` removes exactly these files.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=${PREFIX:-/usr/local}
helper=/usr/sbin/mount.fuse.qemu-bridge
files=(
    "$prefix/bin/qemu-bridge"
    "$prefix/share/man/man1/qemu-bridge.1"
    "$prefix/share/bash-completion/completions/qemu-bridge"
    "$prefix/share/zsh/site-functions/_qemu-bridge"
    "$prefix/share/fish/vendor_completions.d/qemu-bridge.fish"
    "$helper"
)

if [[ $(id -u) -ne 0 ]]; then
    echo "error: run as root (it writes to $prefix and /usr/sbin)" >&2
    exit 1
fi

if [[ ${1:-} == --uninstall ]]; then
    for file in "${files[@]}"; do
        # the helper only if it is ours (a link to the installed binary)
        if [[ $file == "$helper" && $(readlink "$file" 2>/dev/null) != "$prefix/bin/qemu-bridge" ]]; then
            continue
        fi
        if [[ -e $file || -L $file ]]; then
            rm -f "$file"
            echo "removed $file"
        fi
    done
    exit 0
fi

scripts/install-deps.sh --runtime
if [[ -n ${QEMU_BRIDGE_BIN:-} ]]; then
    binary=$QEMU_BRIDGE_BIN
else
    cargo build --release --locked --quiet
    binary=target/release/qemu-bridge
fi

install -D -m 0755 "$binary" "$prefix/bin/qemu-bridge.new"
mv -f "$prefix/bin/qemu-bridge.new" "$prefix/bin/qemu-bridge"
bin=$prefix/bin/qemu-bridge
install -d "$prefix/share/man/man1" "$prefix/share/bash-completion/completions" \
    "$prefix/share/zsh/site-functions" "$prefix/share/fish/vendor_completions.d"
"$bin" man > "$prefix/share/man/man1/qemu-bridge.1"
"$bin" completions bash > "$prefix/share/bash-completion/completions/qemu-bridge"
"$bin" completions zsh > "$prefix/share/zsh/site-functions/_qemu-bridge"
"$bin" completions fish > "$prefix/share/fish/vendor_completions.d/qemu-bridge.fish"
if [[ -e $helper && $(readlink "$helper" 2>/dev/null) != "$bin" ]]; then
    echo "error: $helper exists and is not a link to $bin: left alone" >&2
    exit 1
fi
ln -sfn "$bin" "$helper"
for file in "${files[@]}"; do
    echo "installed $file"
done
echo "try: man qemu-bridge; mount -t fuse.qemu-bridge qemu-bridge /mnt/qemu -o run_dir=/run/qemu-bridge"
