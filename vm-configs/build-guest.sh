#!/usr/bin/env bash
# Builds the elasticmem test guest from Debian packages only, into .cache/guest/:
#   vmlinuz      - the newest Debian 6.1 kernel (linux-image-6.1.0-*-amd64, apt-get download + dpkg -x)
#   initrd.img   - busybox-static initramfs (cpio newc, gzip) with the virtio/virtio-mem/
#                  virtio-balloon modules, vm-configs/guest/init as /init and the static
#                  workload (vm-configs/guest/workload.c) as /workload
#   kernel.txt   - which kernel package went in
#   recipe.sha256 - hash of this recipe; written last, so its presence means "complete"
#
# Usage: vm-configs/build-guest.sh [--force] [--check]
#   --check  exit 0 if the image is present and built from the current recipe, 1 otherwise
#   --force  rebuild even if up to date
# EM_GUEST_KERNEL_PKG=linux-image-6.1.0-NN-amd64 pins the kernel package.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$root/.cache/guest"
# Modules the guest loads (dependencies are added and ordered by depmod's modules.dep).
WANT_MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_mem virtio_balloon"

recipe_hash() {
  cat "$here/build-guest.sh" "$here/guest/init" "$here/guest/workload.c" | sha256sum | cut -d' ' -f1
}

up_to_date() {
  [[ -s "$out/vmlinuz" && -s "$out/initrd.img" && -f "$out/recipe.sha256" ]] &&
    [[ "$(cat "$out/recipe.sha256")" == "$(recipe_hash)" ]]
}

force=0
case "${1:-}" in
  --check) up_to_date && exit 0 || exit 1 ;;
  --force) force=1 ;;
  "") ;;
  *) echo "build-guest.sh: unknown option '$1' (use --check or --force)" >&2; exit 2 ;;
esac

if [[ $force == 0 ]] && up_to_date; then
  echo "guest image up to date ($out)"
  exit 0
fi

for tool in apt-get apt-cache dpkg depmod cpio gzip gcc /bin/busybox; do
  command -v "$tool" >/dev/null || { echo "build-guest.sh: '$tool' is missing; run scripts/bootstrap.sh (it installs the Debian packages)" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "build-guest.sh: must run as root (mknod /dev/console in the initramfs)" >&2; exit 1; }

pkg="${EM_GUEST_KERNEL_PKG:-}"
kernel_pkg() { apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -1; }
if [[ -z "$pkg" ]]; then
  pkg="$(kernel_pkg)"
  # Package lists cleaned (container images) while every package is installed: fetch them once.
  if [[ -z "$pkg" ]]; then apt-get update -q >&2; pkg="$(kernel_pkg)"; fi
fi
[[ -n "$pkg" ]] || { echo "build-guest.sh: no linux-image-6.1.0-*-amd64 package known to apt; run 'apt-get update' first" >&2; exit 1; }

mkdir -p "$out/deb"
work="$(mktemp -d /tmp/em-guest.XXXXXX)"
trap 'rm -rf "$work"' EXIT

deb="$(ls "$out/deb/${pkg}_"*.deb 2>/dev/null | sort -V | tail -1 || true)"
if [[ -z "$deb" ]]; then
  echo "guest: downloading $pkg"
  # Download as root into our own folder (no _apt sandbox: the folder is root's).
  (cd "$out/deb" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null)
  deb="$(ls "$out/deb/${pkg}_"*.deb | sort -V | tail -1)"
  # Keep only the package in use.
  find "$out/deb" -name '*.deb' ! -path "$deb" -delete
fi
echo "guest: kernel from $(basename "$deb")"

dpkg -x "$deb" "$work/pkg"
kver="$(ls "$work/pkg/lib/modules" | head -1)"
[[ -n "$kver" && -f "$work/pkg/boot/vmlinuz-$kver" ]] || { echo "build-guest.sh: $deb has no vmlinuz/modules" >&2; exit 1; }
depmod -b "$work/pkg" "$kver"
moddir="$work/pkg/lib/modules/$kver"

# Topological order from modules.dep: each module after its dependencies.
declare -A seen=()
order=()
resolve() {
  local name="$1" line path deps d
  # modules.dep lines: "kernel/path/name.ko[.xz]: dep1 dep2 ..."
  line="$(grep -E "(^|/)${name//_/[_-]}\.ko(\.xz|\.zst|\.gz)?:" "$moddir/modules.dep" | head -1 || true)"
  [[ -n "$line" ]] || { echo "build-guest.sh: module $name not in $kver (built in? then drop it from WANT_MODULES)" >&2; exit 1; }
  path="${line%%:*}"
  [[ -n "${seen[$path]:-}" ]] && return 0
  seen[$path]=1
  deps="${line#*:}"
  for d in $deps; do
    d="$(basename "$d")"; d="${d%%.ko*}"
    resolve "$d"
  done
  order+=("$path")
}
for m in $WANT_MODULES; do resolve "$m"; done

rootfs="$work/rootfs"
mkdir -p "$rootfs"/{bin,dev,proc,sys,tmp,lib/modules}
cp /bin/busybox "$rootfs/bin/busybox"
mknod -m 600 "$rootfs/dev/console" c 5 1
mknod -m 666 "$rootfs/dev/null" c 1 3
: > "$rootfs/lib/modules/load-order"
for path in "${order[@]}"; do
  base="$(basename "$path")"
  # busybox insmod takes plain .ko files: decompress whatever the package ships.
  case "$base" in
    *.ko.xz)  xz -dc "$moddir/$path" > "$rootfs/lib/modules/${base%.xz}"; base="${base%.xz}" ;;
    *.ko.zst) zstd -qdc "$moddir/$path" > "$rootfs/lib/modules/${base%.zst}"; base="${base%.zst}" ;;
    *.ko.gz)  gzip -dc "$moddir/$path" > "$rootfs/lib/modules/${base%.gz}"; base="${base%.gz}" ;;
    *)        cp "$moddir/$path" "$rootfs/lib/modules/$base" ;;
  esac
  echo "$base" >> "$rootfs/lib/modules/load-order"
done
install -m 755 "$here/guest/init" "$rootfs/init"
gcc -static -O2 -Wall -Wextra -o "$rootfs/workload" "$here/guest/workload.c" -lm
strip "$rootfs/workload"

(cd "$rootfs" && find . -print0 | sort -z | cpio --null -o -H newc --owner=0:0 --quiet) | gzip -6 > "$work/initrd.img"

# Install: files first, the recipe hash last (its presence marks a complete image).
rm -f "$out/recipe.sha256"
install -m 644 "$work/pkg/boot/vmlinuz-$kver" "$out/vmlinuz"
install -m 644 "$work/initrd.img" "$out/initrd.img"
echo "$(basename "$deb") $kver modules: $(tr '\n' ' ' < "$rootfs/lib/modules/load-order")" > "$out/kernel.txt"
chmod 755 "$root/.cache" "$out"
recipe_hash > "$out/recipe.sha256"
echo "guest: built $out (kernel $kver, initrd $(du -k "$out/initrd.img" | cut -f1) KiB; modules: $(tr '\n' ' ' < "$rootfs/lib/modules/load-order"))"
