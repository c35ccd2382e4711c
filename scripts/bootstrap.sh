#!/usr/bin/env bash
# Brings a Debian 12 machine (as root) to a state where `npm test` and `npm run demo`
# work: Debian packages, node_modules, the native addon, the test guest image.
# Idempotent; every step is skipped when its inputs did not change, so a second run
# takes well under a second (0.14 s here). Run by npm's "pretest" and "predemo" hooks.
#
# Stamps live in .cache/stamps/ (ignored by git):
#   npm.sha256     package-lock.json + node version the installed node_modules match
#   native.sha256  native sources + binding.gyp + node version of the last good build
# Errors are never hidden: any failed step fails the script with its own output.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
stamps="$root/.cache/stamps"
t_start=$(date +%s%N)

say() { echo "bootstrap: $*"; }
die() { echo "bootstrap: ERROR: $*" >&2; exit 1; }
elapsed() { echo "$(( ($(date +%s%N) - t_start) / 1000000 )) ms"; }

[[ $(id -u) == 0 ]] || die "run as root (elasticmem attaches to QEMU with ptrace, /dev/userfaultfd and libvirt's qemu:///system)"
if [[ -r /etc/os-release ]]; then
  . /etc/os-release
  [[ "${ID:-}" == debian && "${VERSION_ID:-}" == 12 ]] || say "warning: tested on Debian 12, this is ${PRETTY_NAME:-unknown}"
fi

# --- Debian packages ---------------------------------------------------------------
# What each is for: QEMU (TCG) and libvirt run the guests; libvirt-dev for headers;
# busybox-static, cpio, kmod (depmod), xz-utils, zstd and gcc build the test guest;
# redis-server and memcached are store back ends the tests start themselves;
# liblz4-dev, g++, make and python3 (node-gyp) build the native addon; iproute2 gives
# `ss -xlp`, to see who listens on and connects to the control socket (the daemon
# itself checks its clients with SO_PEERCRED and needs no ss); strace: a test watches
# the system calls an injection makes.
PKGS=(
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev
  busybox-static redis-server memcached liblz4-dev cpio zstd xz-utils kmod
  gcc g++ make python3 procps util-linux iproute2 strace
)
declare -A state=()
# One dpkg-query for all; "ii" = installed. (Packages dpkg never heard of are simply absent.)
while read -r name abbrev; do state[$name]="$abbrev"; done \
  < <(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${PKGS[@]}" 2>/dev/null || true)
missing=()
for p in "${PKGS[@]}"; do
  [[ "${state[$p]:-}" == ii ]] || missing+=("$p")
done
if (( ${#missing[@]} )); then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "Debian packages present (${#PKGS[@]})"
fi

# --- Node.js -----------------------------------------------------------------------
command -v node >/dev/null || die "Node.js 20 is required (Debian 12 ships 18: install nodejs 20 from NodeSource, https://github.com/nodesource/distributions)"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
(( node_major >= 20 )) || die "Node.js >= 20 required, found $(node --version) (install nodejs 20 from NodeSource)"
[[ -f /usr/include/node/node_api.h ]] || die "Node headers missing in /usr/include/node (the native build uses --nodedir=/usr; install the nodejs package that ships them, e.g. NodeSource's)"

# --- where built artefacts live --------------------------------------------------------
# QEMU runs as libvirt-qemu and some tests run their target as nobody: both open files
# under .cache (the guest kernel and initramfs, test binaries). In a checkout those
# users cannot reach (root's home is mode 700), .cache becomes a link to a folder of its
# own under /var/cache/elasticmem; the code names such files by the link's target
# (cachePath in backend/vm/guest.ts).
others_reach() {
  local d="$1"
  while [[ "$d" != / ]]; do
    (( 8#$(stat -c %a "$d") & 1 )) || return 1
    d="$(dirname "$d")"
  done
}
if [[ -L .cache && ! -e .cache ]]; then
  mkdir -p "$(readlink .cache)"  # (its folder was removed: start it again, empty)
  chmod 755 "$(readlink .cache)"
fi
if [[ ! -L .cache ]] && ! others_reach "$root"; then
  away="/var/cache/elasticmem/$(printf %s "$root" | sha256sum | cut -c1-12)"
  mkdir -p "$away"
  chmod 755 /var/cache/elasticmem "$away"
  if [[ -d .cache ]]; then cp -a .cache/. "$away"/ && rm -rf .cache; fi
  ln -s "$away" .cache
  say "other users cannot reach $root (QEMU runs as libvirt-qemu): .cache is a link to $away"
fi

mkdir -p "$stamps"

# --- node_modules ------------------------------------------------------------------
npm_hash="$( { cat package-lock.json; node --version; } | sha256sum | cut -d' ' -f1)"
if [[ -d node_modules && "$(cat "$stamps/npm.sha256" 2>/dev/null)" == "$npm_hash" ]]; then
  say "node_modules up to date"
elif [[ -d node_modules ]] && npm ls --all >/dev/null 2>&1; then
  # The lock changed but node_modules already satisfies it (someone ran npm install):
  # no reinstall, which would pull the tree from under other running processes.
  echo "$npm_hash" > "$stamps/npm.sha256"
  say "node_modules consistent with package-lock.json"
else
  say "npm ci"
  flock /tmp/em-npm.lock npm ci --no-audit --no-fund
  echo "$npm_hash" > "$stamps/npm.sha256"
fi

# --- native addon ------------------------------------------------------------------
native_hash() {
  { find native -maxdepth 2 -type f \( -name '*.cc' -o -name '*.c' -o -name '*.h' -o -name '*.hpp' \) -print0 | sort -z | xargs -0 sha256sum
    sha256sum binding.gyp; node --version; } | sha256sum | cut -d' ' -f1
}
nh="$(native_hash)"
if [[ -f build/Release/elasticmem.node && "$(cat "$stamps/native.sha256" 2>/dev/null)" == "$nh" ]]; then
  say "native addon up to date"
else
  say "building native addon (node-gyp rebuild)"
  # Shared lock: several processes may build the same build/ folder.
  flock /tmp/em-build.lock npx node-gyp rebuild --nodedir=/usr --loglevel=warn || die "native build failed (output above)"
  [[ -f build/Release/elasticmem.node ]] || die "native build produced no build/Release/elasticmem.node"
  # The hash taken before the build: an edit made during the build triggers a rebuild next time.
  echo "$nh" > "$stamps/native.sha256"
fi

# --- test guest --------------------------------------------------------------------
if vm-configs/build-guest.sh --check; then
  say "test guest image up to date (.cache/guest)"
else
  say "building test guest image"
  vm-configs/build-guest.sh || die "test guest build failed (output above)"
fi

# --- the elasticmem command ----------------------------------------------------------
# On PATH as /usr/local/bin/elasticmem, a link to this checkout's bin/elasticmem.js;
# one that names another checkout that still exists is left alone.
cmd=/usr/local/bin/elasticmem
if [[ ! -e "$cmd" ]]; then
  ln -sfn "$root/bin/elasticmem.js" "$cmd"
  say "the elasticmem command: $cmd -> $root/bin/elasticmem.js"
elif [[ "$(readlink -f "$cmd")" != "$root/bin/elasticmem.js" ]]; then
  say "note: $cmd is $(readlink -f "$cmd"); this checkout's command is $root/bin/elasticmem.js"
fi

# --- kernel features the monitor needs ---------------------------------------------
[[ -e /dev/userfaultfd ]] || say "warning: /dev/userfaultfd missing (kernel >= 6.1 with CONFIG_USERFAULTFD); attaching to libvirt guests needs it"
[[ -e /dev/kvm ]] || say "no /dev/kvm: guests run under TCG (fine, just slower)"

say "done in $(elapsed)"
