#!/usr/bin/env bash
# Prints (one argument per line) the plain-QEMU equivalent of vm-configs/libvirt/memfd.xml:
#   - TCG (no KVM on our hosts), q35, direct kernel boot of the test guest
#   - boot RAM from memory-backend-memfd,share=on (the monitor can punch holes in it)
#   - -m <mem>,slots=..,maxmem=<max> and a virtio-mem-pci device (requested-size=0) on a
#     pcie-root-port, backed by its own shared memfd, for hot-add ("elasticmem grow")
#   - QMP on a Unix socket, serial console to a file
# One argument per line so callers can read it into an array without word splitting:
#   mapfile -t args < <(vm-configs/qemu-cmdline.sh --qmp /tmp/q.sock --serial /tmp/c.log)
#   qemu-system-x86_64 "${args[@]}"
# The test helper test/helpers/qemu.ts builds the same command in TypeScript; keep both in step.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
guest="$(cd "$here/.." && pwd)/.cache/guest"

mem=256 maxmem=2048 dimm=0 qmp="" serial="" private=0 name="elasticmem-guest"
cmdline_extra="em.size=64 em.pattern=seq em.write=0.25 em.seed=1 em.passes=0"
# Fixed part of the guest command line: serial console; a panic reboots, and -no-reboot
# turns that into an exit; swiotlb=noforce saves the 64 MiB bounce buffer the kernel
# would reserve because maxmem reaches above 4 GiB (virtio does not need it).
cmdline_base="console=ttyS0 panic=-1 swiotlb=noforce"
cmdline_full=""

usage() {
  cat <<EOF
usage: $0 --qmp SOCKET --serial FILE [--mem MiB] [--maxmem MiB] [--dimm-room MiB] [--private] [--name NAME]
          [--append 'em.size=.. ...' | --cmdline 'FULL KERNEL COMMAND LINE']
  --mem      boot RAM in MiB (default $mem)
  --maxmem   ceiling for hot-add in MiB (default $maxmem); the virtio-mem device may grow to maxmem-mem
  --dimm-room  room for DIMMs (elasticmem grow --dimm) above that, in MiB, a multiple of 128 (default 0)
  --private  boot RAM as private anonymous memory (QEMU's default) instead of a shared memfd
  --append   workload parameters added to "$cmdline_base" (default: $cmdline_extra)
  --cmdline  the whole guest kernel command line instead (test/helpers/qemu.ts uses this)
EOF
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --mem) mem="$2"; shift 2 ;;
    --maxmem) maxmem="$2"; shift 2 ;;
    --dimm-room) dimm="$2"; shift 2 ;;
    --qmp) qmp="$2"; shift 2 ;;
    --serial) serial="$2"; shift 2 ;;
    --private) private=1; shift ;;
    --name) name="$2"; shift 2 ;;
    --append) cmdline_extra="$2"; shift 2 ;;
    --cmdline) cmdline_full="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "qemu-cmdline.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[[ -n "$qmp" && -n "$serial" ]] || { echo "qemu-cmdline.sh: --qmp and --serial are required" >&2; usage >&2; exit 2; }
[[ "$mem" =~ ^[0-9]+$ && "$maxmem" =~ ^[0-9]+$ ]] || { echo "qemu-cmdline.sh: --mem/--maxmem take MiB as a whole number" >&2; exit 2; }
[[ "$dimm" =~ ^[0-9]+$ ]] && (( dimm % 128 == 0 )) || { echo "qemu-cmdline.sh: --dimm-room takes MiB, a multiple of 128 (the x86 hot-add granularity)" >&2; exit 2; }
(( maxmem > mem )) || { echo "qemu-cmdline.sh: --maxmem ($maxmem) must exceed --mem ($mem) to leave room for virtio-mem" >&2; exit 2; }
[[ -s "$guest/vmlinuz" ]] || { echo "qemu-cmdline.sh: no guest image in $guest; run scripts/bootstrap.sh" >&2; exit 1; }

# virtio-mem plugs in 2 MiB blocks (x86 default block size is the THP size); the
# device's region must be a multiple of it. Memory-hotplug regions are 128 MiB aligned
# in Linux, so round the device size down to 128 MiB.
vmem=$(( (maxmem - mem) / 128 * 128 ))

args=(
  -name "$name"
  -machine q35,accel=tcg
  -cpu max
  -smp 1
  -nodefaults -no-user-config -nographic -display none
  -m "${mem}M,slots=2,maxmem=$(( maxmem + dimm ))M"
)
if [[ $private == 1 ]]; then
  args+=(-object "memory-backend-ram,id=ram0,size=${mem}M")
else
  args+=(-object "memory-backend-memfd,id=ram0,size=${mem}M,share=on")
fi
args+=(
  -numa "node,nodeid=0,cpus=0,memdev=ram0"
  -object "memory-backend-memfd,id=vmem0,size=${vmem}M,share=on"
  -device "pcie-root-port,id=rp1,bus=pcie.0,chassis=1"
  -device "virtio-mem-pci,id=vm0,memdev=vmem0,node=0,requested-size=0,bus=rp1"
  -kernel "$guest/vmlinuz"
  -initrd "$guest/initrd.img"
  -append "${cmdline_full:-$cmdline_base $cmdline_extra}"
  -serial "file:$serial"
  -qmp "unix:$qmp,server,nowait"
  -no-reboot
)
printf '%s\n' "${args[@]}"
