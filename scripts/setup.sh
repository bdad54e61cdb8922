#!/usr/bin/env bash
# Installs every build and test dependency of dsv3 from Debian packages.
# Idempotent: when everything is present it does nothing (no apt-get update, no network).
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libhwy-dev nlohmann-json3-dev libcli11-dev libfmt-dev libpcre2-dev
  libcpp-httplib-dev libssl-dev zlib1g-dev libbrotli-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  gnuplot-nox clang-format python3
  libopenmpi-dev openmpi-bin
)
# Needed only for the fuzzing build (clang + libFuzzer and the sanitizer runtimes): set by
# scripts/fuzz.sh and .ci/run.
if [[ "${DSV3_WITH_CLANG:-0}" == 1 ]]; then
  PACKAGES+=(clang-14 libclang-rt-14-dev)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
echo "setup: installing ${missing[*]}" >&2
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
