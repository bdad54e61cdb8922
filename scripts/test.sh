#!/usr/bin/env bash
# Quick start, part two: install dependencies, build, and run every test.
# Usage: scripts/test.sh [--sanitize]   (--sanitize: AddressSanitizer + UBSan build in build-asan)
# Tests read ../shared/testdata (or $DSV3_SHARED); with CI set, missing test data fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build.sh "$@"
if [[ "${1:-}" == "--sanitize" ]]; then BUILD_DIR="${BUILD_DIR:-build-asan}"; else BUILD_DIR="${BUILD_DIR:-build}"; fi
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)"
