#!/usr/bin/env bash
# install-deps.sh — installs the Debian 12 packages that building and
# testing sere needs, with apt-get, and only those that are missing: a
# machine that has them all does no apt work at all (not even an update).
# Run as root (or as a user with sudo). Every package sere needs is listed
# in PACKAGES below and nowhere else.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config              # compiler, build, ctest
  liblua5.4-dev libopenblas-dev libreadline-dev # what the program links
  clang libclang-rt-14-dev libomp-14-dev        # fuzzer and sanitizer builds (clang, its runtimes, its OpenMP)
  libturbojpeg0-dev libpng-dev                  # image decoding (JPEG, PNG)
  python3 python3-pil                           # tests: drives the REPL; writes the image reference data
  libopenmpi-dev openmpi-bin                    # data-parallel training across processes (mpirun), its tests
)

installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done
if [[ ${#missing[@]} == 0 ]]; then
  echo "install-deps: all ${#PACKAGES[@]} packages are installed"
  exit 0
fi

SUDO=()
if [[ $(id -u) != 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root to install: ${missing[*]}" >&2; exit 1; }
  SUDO=(sudo)
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
