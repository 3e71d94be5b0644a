#!/usr/bin/env bash
# Ferry bootstrap: install the Debian 12 build/test dependencies and fetch the
# Debian kernel that the nested-KVM sandbox (tools/kvm-sandbox) boots.
# Idempotent: re-running does nothing when everything is already in place.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: tools/bootstrap.sh [--kernel-only] [--help]

Prepares a Debian 12 machine for building and testing Ferry.

  1. Installs the build/test packages with apt-get (as root; uses sudo when not
     root). Skipped entirely when every package is already installed, so re-runs
     are fast and work offline.
  2. Fetches the Debian kernel used by the nested-KVM sandbox into
       ${FERRY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}/kernel/
     keeping only: vmlinuz, version, modules/*.ko and modules/load-order (the
     sandbox's), guest-modules/*.ko and guest-modules/load-order (the Linux
     test guest's virtio drivers),
     plus vmlinux (vmlinuz decompressed: QEMU boots it via PVH, ~4 s faster).
     Skipped when that cache is already complete. Needs no root.

Options:
  --kernel-only   skip step 1 (package installation)
  -h, --help      show this help

Environment:
  FERRY_CACHE_DIR   cache directory (default: $XDG_CACHE_HOME/ferry or ~/.cache/ferry)
EOF
}

PACKAGES=(
  build-essential cmake pkg-config g++ clang llvm libbpf-dev bpftool
  liburing-dev libspdlog-dev libfmt-dev libgtest-dev libgmock-dev
  nlohmann-json3-dev libcli11-dev libxxhash-dev libzstd-dev libisal-dev libssl-dev
  libmnl-dev  # tests: a client network namespace on a veth (netlink), tests/e2e/netns.cc
  iperf3  # tools/bench-net: TCP throughput to the guest and between namespaces
  qemu-system-x86 busybox-static cpio kmod iproute2 binutils file
  ca-certificates xz-utils
  python3  # tools/bench-vs-qemu, tools/report-to-policy-trace (Debian's interpreter goes into the sandbox)
  chromium  # headless: the HTML report's browser test (ctest e2e.report_html)
  clang-19 libclang-rt-19-dev  # libFuzzer harnesses (tests/fuzz/run; clang 14 cannot compile <expected>)
)

# Modules the sandbox needs, paths relative to lib/modules/<version>/.
# Their load order is computed from `modinfo -F depends` (dependencies first);
# with this list order it starts irqbypass, ccp, kvm, kvm-amd.
SANDBOX_MODULES=(
  kernel/virt/lib/irqbypass.ko
  kernel/drivers/crypto/ccp/ccp.ko
  kernel/arch/x86/kvm/kvm.ko
  kernel/arch/x86/kvm/kvm-amd.ko
  kernel/net/tls/tls.ko
  kernel/crypto/ctr.ko  # kernel TLS's AES-GCM: the gcm template and its parts,
  kernel/crypto/ghash-generic.ko  # and AES-NI's (no modprobe in the sandbox
  kernel/crypto/gcm.ko  # to load them when TLS asks for gcm(aes))
  kernel/arch/x86/crypto/aesni-intel.ko
  kernel/net/sched/sch_netem.ko
  kernel/drivers/net/veth.ko
  kernel/drivers/net/tun.ko
  kernel/net/bridge/bridge.ko
)

# Modules the Linux test guest loads from its initramfs (tools/linux-guest):
# virtio over MMIO (found through the DSDT's LNRO0005 devices) and
# virtio-net. Cached in guest-modules/ with their own load order.
GUEST_MODULES=(
  kernel/drivers/virtio/virtio_mmio.ko
  kernel/drivers/net/virtio_net.ko
)

log() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

kernel_only=0
while (($#)); do
  case $1 in
    --kernel-only) kernel_only=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

# Run a command as root: directly when root, else through sudo.
as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root for: $* (not root and no sudo)"
  fi
}

apt_updated=0
apt_update() {
  if ((apt_updated == 0)); then
    as_root apt-get update -q
    apt_updated=1
  fi
}

# ---------------------------------------------------------------- packages
install_packages() {
  local missing=() p status
  for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    log "packages: all ${#PACKAGES[@]} already installed (apt skipped)"
    return
  fi
  log "packages: installing ${#missing[@]} missing: ${missing[*]}"
  apt_update
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  log "packages: installed"
}

# ------------------------------------------------------------------ kernel
cache_dir=${FERRY_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/ferry}
kernel_dir=$cache_dir/kernel

# The cache is complete when vmlinuz, version and load-order exist, every
# module in load-order is present, and every wanted module is listed.
kernel_cache_complete() {
  local m name
  [[ -s $kernel_dir/vmlinuz && -s $kernel_dir/version && -s $kernel_dir/modules/load-order ]] || return 1
  while IFS= read -r m; do
    [[ -n $m && -s $kernel_dir/modules/$m ]] || return 1
  done <"$kernel_dir/modules/load-order"
  for m in "${SANDBOX_MODULES[@]}"; do
    name=${m##*/}
    grep -qxF -- "$name" "$kernel_dir/modules/load-order" || return 1
  done
  [[ -s $kernel_dir/guest-modules/load-order ]] || return 1
  while IFS= read -r m; do
    [[ -n $m && -s $kernel_dir/guest-modules/$m ]] || return 1
  done <"$kernel_dir/guest-modules/load-order"
  for m in "${GUEST_MODULES[@]}"; do
    name=${m##*/}
    grep -qxF -- "$name" "$kernel_dir/guest-modules/load-order" || return 1
  done
}

# Name of the versioned kernel image package linux-image-amd64 depends on.
kernel_package() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    awk '/Depends: linux-image/{print $2; exit}'
}

tmp=
cleanup() { [[ -z $tmp ]] || rm -rf -- "$tmp"; }
trap cleanup EXIT

fetch_kernel() {
  if kernel_cache_complete; then
    log "kernel: cache complete at $kernel_dir ($(<"$kernel_dir/version")), download skipped"
    return
  fi
  command -v dpkg-deb >/dev/null || die "dpkg-deb not found (Debian/Ubuntu host required)"
  command -v modinfo >/dev/null || die "modinfo not found (install kmod)"

  local pkg
  pkg=$(kernel_package || true)
  if [[ -z $pkg ]]; then
    log "kernel: package lists missing or stale, running apt-get update"
    apt_update
    pkg=$(kernel_package || true)
  fi
  [[ -n $pkg ]] || die "cannot resolve the kernel package behind linux-image-amd64"

  tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bootstrap.XXXXXX")
  mkdir "$tmp/dl" "$tmp/x" "$tmp/out" "$tmp/out/modules" "$tmp/out/guest-modules"
  # apt-get download drops to user _apt when run as root: let it write here.
  chmod 755 "$tmp"
  chmod 777 "$tmp/dl"
  log "kernel: downloading $pkg"
  if ! (cd "$tmp/dl" && apt-get download -q "$pkg"); then
    log "kernel: download failed, retrying after apt-get update"
    apt_update
    (cd "$tmp/dl" && apt-get download -q "$pkg") || die "apt-get download $pkg failed"
  fi
  local deb
  deb=$(find "$tmp/dl" -maxdepth 1 -name '*.deb' -print -quit)
  [[ -n $deb ]] || die "apt-get download produced no .deb"
  dpkg-deb -x "$deb" "$tmp/x"

  local vmlinuz moddir version
  vmlinuz=$(find "$tmp/x/boot" -maxdepth 1 -name 'vmlinuz-*' -print -quit)
  [[ -n $vmlinuz ]] || die "$pkg has no boot/vmlinuz-*"
  moddir=$(find "$tmp/x/lib/modules" "$tmp/x/usr/lib/modules" -mindepth 1 -maxdepth 1 -type d -print -quit 2>/dev/null || true)
  [[ -n $moddir ]] || die "$pkg has no lib/modules/<version>"
  version=${moddir##*/}

  # Resolve each wanted module plus its dependencies, dependencies first,
  # into OUT with OUT/load-order.
  find_module() { # module name (dashes or underscores) -> path under moddir
    local pat=${1//[-_]/[-_]}
    find "$moddir/kernel" -name "$pat.ko" -print -quit
  }
  resolve_modules() { # OUT MODULE...
    local out=$1 m
    shift
    local -A seen=()
    local -a order=()
    add_module() { # path to a .ko
      local path=$1 name dep deps dpath
      name=${path##*/}
      [[ -z ${seen[$name]:-} ]] || return 0
      seen[$name]=1
      deps=$(modinfo -F depends "$path")
      for dep in ${deps//,/ }; do
        dpath=$(find_module "$dep")
        [[ -n $dpath ]] || die "module $name depends on $dep, which is not in $pkg"
        add_module "$dpath"
      done
      order+=("$name")
      cp -- "$path" "$out/$name"
    }
    for m in "$@"; do
      [[ -f $moddir/$m ]] || die "$pkg lacks $m"
      add_module "$moddir/$m"
    done
    printf '%s\n' "${order[@]}" >"$out/load-order"
    log "kernel: modules for ${out##*/} (load order): ${order[*]}"
  }
  resolve_modules "$tmp/out/modules" "${SANDBOX_MODULES[@]}"
  resolve_modules "$tmp/out/guest-modules" "${GUEST_MODULES[@]}"
  cp -- "$vmlinuz" "$tmp/out/vmlinuz"
  printf '%s\n' "$version" >"$tmp/out/version"

  # Replace the cache atomically (as far as a directory swap can be).
  mkdir -p "$cache_dir"
  local staged=$cache_dir/.kernel.new.$$ old=$cache_dir/.kernel.old.$$
  rm -rf -- "$staged" "$old"
  cp -r -- "$tmp/out" "$staged"
  [[ ! -e $kernel_dir ]] || mv -- "$kernel_dir" "$old"
  mv -- "$staged" "$kernel_dir"
  rm -rf -- "$old"
  log "kernel: $version cached in $kernel_dir"
}

# QEMU boots an uncompressed ELF vmlinux through its PVH entry point, which
# skips the kernel's self-decompression: about 4 s per sandbox boot under TCG.
# Derived from vmlinuz (no download); optional, the runner falls back to vmlinuz.
extract_vmlinux() {
  [[ ! -s $kernel_dir/vmlinux ]] || return 0
  local vmlinuz=$kernel_dir/vmlinuz part=$kernel_dir/.vmlinux.tmp.$$ off magic cmd
  for magic in '\xfd7zXZ\x00:xz' '\x1f\x8b\x08:gzip' '\x28\xb5\x2f\xfd:zstd'; do
    cmd=${magic##*:}
    command -v "$cmd" >/dev/null || continue
    while IFS=: read -r off _; do
      if tail -c +"$((off + 1))" -- "$vmlinuz" | "$cmd" -dc 2>/dev/null >"$part" ||
        [[ -s $part ]]; then
        if readelf -n -- "$part" 2>/dev/null | grep -qE 'PHYS32_ENTRY|type: \(0x00000012\)'; then
          mv -f -- "$part" "$kernel_dir/vmlinux"
          log "kernel: extracted vmlinux (PVH entry, boots without decompression)"
          return 0
        fi
      fi
    done < <(LC_ALL=C grep -obUaP -- "${magic%:*}" "$vmlinuz" | head -n 3)
  done
  rm -f -- "$part"
  log "kernel: no PVH-bootable vmlinux inside vmlinuz (sandbox boots vmlinuz, slower)"
}

if ((kernel_only == 0)); then
  install_packages
fi
fetch_kernel
extract_vmlinux
