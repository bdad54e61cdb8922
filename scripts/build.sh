#!/usr/bin/env bash
# Configures and builds dsv3 with CMake + Ninja. Usage: scripts/build.sh [--sanitize] [cmake args...]
# BUILD_DIR (default: build, or build-asan with --sanitize) sets the build folder.
set -euo pipefail
cd "$(dirname "$0")/.."

extra=()
default_dir=build
if [[ "${1:-}" == "--sanitize" ]]; then
  shift
  # -O1 with line tables only: compiles in less than half the time of -O2 -g (the Highway
  # kernels are compiled once per SIMD target) and still gives symbolized reports.
  extra+=(-DDSV3_SANITIZE=address,undefined -DDSV3_BUILD_BENCH=OFF
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG")
  default_dir=build-asan
fi
BUILD_DIR="${BUILD_DIR:-$default_dir}"
cmake -S . -B "$BUILD_DIR" -G Ninja "${extra[@]}" "$@" >/dev/null
cmake --build "$BUILD_DIR"
