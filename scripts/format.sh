#!/usr/bin/env bash
# Checks that every C++ file of the repository is formatted as .clang-format says (Google style,
# 100 columns), with Debian's clang-format; `scripts/format.sh --fix` reformats them in place.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang-format >/dev/null; then
  echo "format: clang-format is missing (scripts/setup.sh installs it)" >&2
  exit 1
fi
mapfile -t files < <(git ls-files -- '*.cc' '*.h')
if [[ "${1:-}" == "--fix" ]]; then
  clang-format -i "${files[@]}"
  exit 0
fi
if ! clang-format --dry-run -Werror "${files[@]}"; then
  echo "format: the files above are not clang-formatted; run scripts/format.sh --fix" >&2
  exit 1
fi
echo "format: ${#files[@]} files clang-formatted ($(clang-format --version | head -1))" >&2
