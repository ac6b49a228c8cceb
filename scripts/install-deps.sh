#!/usr/bin/env bash
# Installs the Debian 12 packages pansurv needs (idempotent; root or sudo).
# Usage: scripts/install-deps.sh [build|test|demo]
set -euo pipefail
want=(build-essential cmake pkg-config git ca-certificates
      libopenmpi-dev openmpi-bin libhdf5-openmpi-dev hdf5-tools
      libyaml-dev libopenblas-dev libopenslide-dev zlib1g-dev gnuplot-nox)
case "${1:-build}" in
  test) want+=(libvips-tools slurm-wlm munge python3 clang libclang-rt-14-dev procps) ;;
  demo|build) ;;
  *) echo "usage: $0 [build|test|demo]" >&2; exit 2 ;;
esac
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
